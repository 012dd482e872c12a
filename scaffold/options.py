"""The user's choices for each command, their validation, and where they become template data.

NewProject is the one declaration of the choices of `scaffold new`: every field other than `dest`
and `answered` is an answer of templates/project/copier.yml, with the same name and default.
Adding a choice means a field here, its question in copier.yml and its Typer parameter in
scaffold/cli.py; to_data(), the variants (scaffold/variants.py) and `scaffold update --set`
derive from the fields (tests/test_options.py checks copier.yml against them).

`model` and `dataset` default to their task's (catalog.TASKS): None until NewProject is made,
when __post_init__ fills them in, so that `scaffold new --task segmentation` gets a segmentation
model without naming one. default_answer() says what each answer defaults to for a task, which is
also what copier.yml's Jinja defaults render to.
"""

from __future__ import annotations

import keyword
import re
import sys
import typing
from dataclasses import Field, dataclass, field, fields
from pathlib import Path

from scaffold import __version__
from scaffold.catalog import (
    DEFAULT_TASK,
    MODELS,
    TASKS,
    dataset_tasks,
    task_datasets,
    task_models,
)
from scaffold.errors import UsageError

PROJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
MAX_NAME_LENGTH = 64
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
MAX_IMAGE_SIZE = 4096

# A project named like a module it imports would be imported in that module's place (the
# project's folder is on sys.path when its tests and scripts run, and pip would see two
# distributions of one name), so these names are refused. Spelled as pip and Python spell them.
DEPENDENCIES = (
    "torch torchvision tqdm numpy pillow pyyaml yaml matplotlib tensorboard mlflow wandb onnx "
    "onnxruntime onnxscript optuna pycocotools pytest black ruff typer copier"
).split()
# tests/test_options.py checks that every top-level module the template writes is here.
PROJECT_MODULES = (
    "train options model dataset cache checkpoint distributed hooks summary plot compare predict "
    "export loggers runs tests conftest task pipeline image_pipeline finetune shapes files signals "
    "records sweep sharded"
).split()


def normalised(name: str) -> str:
    """Names as pip and the import system confuse them: case-insensitive, '-' the same as '_'."""
    return name.lower().replace("-", "_")


def shadowing(name: str) -> str | None:
    """What a project called `name` would shadow, as the end of a sentence; None when nothing."""
    key = normalised(name)
    if key == "scaffold":
        return "the scaffold package that writes it"
    for dependency in DEPENDENCIES:
        if normalised(dependency) == key:
            return f"the {dependency} package the project depends on"
    for module in PROJECT_MODULES:
        if module == key:
            return f"the project's own {module} module"
    for module in sys.stdlib_module_names:
        if normalised(module) == key:
            return f"Python's standard {module} module"
    return None


def check_project_name(name: str) -> None:
    if not name:
        raise UsageError("the project name is empty: give DEST a last path part such as 'myproj'")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"the project name is longer than {MAX_NAME_LENGTH} characters")
    if not PROJECT_NAME.match(name):
        raise UsageError(
            f"invalid project name {name!r}: "
            "use letters, digits, '-' and '_', starting with a letter"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise UsageError(f"invalid project name {name!r}: it is a Python keyword")
    shadowed = shadowing(name)
    if shadowed:
        raise UsageError(
            f"invalid project name {name!r}: it would shadow {shadowed}; choose another name"
        )


NOT_AN_ANSWER = {"answer": False}
# The answers about images, which a task without them (catalog.TaskSpec.images) neither asks nor
# records.
IMAGE_ANSWERS = ("image_size", "in_channels", "num_classes")


@dataclass(frozen=True)
class NewProject:
    dest: Path = field(metadata=NOT_AN_ANSWER)
    # The answers, in the order `Variant.flags()` spells them (generated_examples/README.md).
    task: str = DEFAULT_TASK
    # None: the task's default (TASK_DEFAULTS), filled in by __post_init__.
    model: str | None = None
    dataset: str | None = None
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    ddp: bool = False
    vscode: bool = True
    hooks: bool = True
    # The answers to pass to copier; copier asks for the others (`scaffold new --interactive`).
    # None: all of them.
    answered: frozenset[str] | None = field(default=None, metadata=NOT_AN_ANSWER)

    def __post_init__(self) -> None:
        if self.answered is None:
            object.__setattr__(self, "answered", frozenset(answer_names()))
        # The one place an answer takes its task's default. An unknown task has none: the
        # answer stays None and validate() names the tasks.
        for name in TASK_DEFAULTS:
            if getattr(self, name) is None and self.task in TASKS:
                object.__setattr__(self, name, default_answer(name, self.task))
        # Model names are Python names; `gpt-tiny` means gpt_tiny, as pip reads package names.
        spelled = self.model.replace("-", "_") if isinstance(self.model, str) else None
        if self.model not in MODELS and spelled in MODELS:
            object.__setattr__(self, "model", spelled)

    @property
    def name(self) -> str:
        return self.dest.name

    def answers(self) -> dict[str, object]:
        """{answer: value} of every choice of the project's task, in declaration order."""
        images = self.task not in TASKS or TASKS[self.task].images
        return {
            name: getattr(self, name)
            for name in answer_names()
            if images or name not in IMAGE_ANSWERS
        }

    def validate(self) -> None:
        check_project_name(self.name)
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        models = task_models(self.task)
        if self.model not in models:
            if self.model in MODELS:
                raise UsageError(
                    f"model {self.model} is for --task {MODELS[self.model].task}; "
                    f"choose one of: {', '.join(models)}"
                )
            raise UsageError(f"unknown model {self.model!r}; choose one of: {', '.join(models)}")
        datasets = task_datasets(self.task)
        if self.dataset not in datasets:
            tasks = dataset_tasks(self.dataset)
            if tasks:
                raise UsageError(
                    f"dataset {self.dataset} is for --task {' or '.join(tasks)}; "
                    f"choose one of: {', '.join(datasets)}"
                )
            raise UsageError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(datasets)}"
            )
        if not TASKS[self.task].images:
            for name in IMAGE_ANSWERS:
                if getattr(self, name) != default_answer(name):
                    raise UsageError(
                        f"{option_name(name)} is for the image tasks, not --task {self.task}: "
                        "drop it"
                    )
            return
        for option, value, low, high in [
            ("--num-classes", self.num_classes, 2, MAX_CLASSES),
            ("--in-channels", self.in_channels, 1, MAX_CHANNELS),
            ("--image-size", self.image_size, 1, MAX_IMAGE_SIZE),
        ]:
            if not low <= value <= high:
                raise UsageError(f"{option} must be between {low} and {high}, got {value}")
        problem = MODELS[self.model].image_size_problem(self.image_size)
        if problem:
            raise UsageError(problem)

    def to_data(self) -> dict[str, object]:
        """The copier answers for templates/project/copier.yml."""
        data: dict[str, object] = {"project_name": self.name}
        data.update((key, value) for key, value in self.answers().items() if key in self.answered)
        data["template_version"] = __version__
        return data


# The answers whose default is their task's: {answer: the TaskSpec attribute that holds it}.
TASK_DEFAULTS = {"model": "default_model", "dataset": "default_dataset"}


def default_answer(name: str, task: str = DEFAULT_TASK) -> object:
    """What answer `name` defaults to in a project of `task` (a key of TASKS)."""
    if name in TASK_DEFAULTS:
        return getattr(TASKS[task], TASK_DEFAULTS[name])
    return next(item.default for item in answer_fields() if item.name == name)


def answer_fields() -> list[Field]:
    """The fields of NewProject that are answers of the project template, in order."""
    return [item for item in fields(NewProject) if item.metadata.get("answer", True)]


def answer_names() -> list[str]:
    return [item.name for item in answer_fields()]


def answer_types() -> dict[str, type]:
    """{answer: its Python type} (bool, int or str; `str | None` is str: None is a default)."""
    hints = typing.get_type_hints(NewProject)
    types = {}
    for name in answer_names():
        kinds = [kind for kind in typing.get_args(hints[name]) if kind is not type(None)]
        types[name] = kinds[0] if kinds else hints[name]
    return types


def option_name(answer: str) -> str:
    """The `scaffold new` option of an answer: num_classes -> --num-classes."""
    return "--" + answer.replace("_", "-")
