"""NewProject (scaffold/options.py) is the one declaration of the choices of `scaffold new`: the
project template asks the same questions with the same defaults, the command line has an option
for each, and the variants are spelled from it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import jinja2.sandbox
import pytest
import yaml
from helpers import run_cli

from scaffold import render
from scaffold.catalog import DATASETS, MODELS, TASKS, task_datasets, task_models
from scaffold.errors import UsageError
from scaffold.options import (
    IMAGE_ANSWERS,
    PROJECT_MODULES,
    NewProject,
    answer_fields,
    answer_names,
    answer_types,
    default_answer,
    shadowing,
)
from scaffold.render import Rendered, create_project, template_dir
from scaffold.variants import VARIANTS, Variant, check_coverage


@pytest.fixture(scope="module")
def questions() -> dict:
    config = yaml.safe_load((template_dir("project") / "copier.yml").read_text(encoding="utf-8"))
    return {key: spec for key, spec in config.items() if not key.startswith("_")}


def render_jinja(text: object, **answers) -> object:
    """A copier.yml default or validator as copier renders it (sandboxed, strict); a value that
    is not text is returned as it is."""
    if not isinstance(text, str):
        return text
    environment = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return environment.from_string(text).render(**answers).strip()


def test_copier_choices_are_the_catalog(questions):
    """Every task's models and datasets: which go with which task is the validators' job."""
    assert questions["task"]["choices"] == list(TASKS)
    assert questions["model"]["choices"] == list(MODELS)
    assert questions["dataset"]["choices"] == list(DATASETS)


def test_every_answer_is_a_question_with_the_same_default(questions):
    """The same default for every task: copier renders its Jinja defaults with the task chosen."""
    assert answer_names(), "NewProject declares no answers"
    assert answer_names()[:3] == ["task", "model", "dataset"]
    assert list(questions).index("task") < list(questions).index("model")
    for item in answer_fields():
        assert item.name in questions, f"copier.yml has no question {item.name!r}"
        for task in TASKS:
            default = render_jinja(questions[item.name].get("default"), task=task)
            assert default == default_answer(item.name, task), (item.name, task)
            answers = NewProject(dest=Path("p"), task=task).answers()
            if item.name in IMAGE_ANSWERS and not TASKS[task].images:
                # Neither asked nor recorded: copier's `when` is false for such a task.
                assert item.name not in answers
                images = render_jinja(questions["images"]["default"], task=task)
                assert render_jinja(questions[item.name]["when"], images=images) == "False"
            elif item.name != "task":
                assert default == answers[item.name]
        kind = {bool: "bool", int: "int", str: "str"}[answer_types()[item.name]]
        assert questions[item.name].get("type", "str") == kind, item.name


def test_the_defaults_of_model_and_dataset_are_the_tasks():
    assert default_answer("task") == "classification"
    models = ["resnet18", "unet", "tiny_rcnn", "gpt_mini"]
    assert [default_answer("model", task) for task in TASKS] == models
    datasets = ["fake", "synthetic", "synthetic", "synthetic"]
    assert [default_answer("dataset", task) for task in TASKS] == datasets
    assert [default_answer("num_classes", task) for task in TASKS] == [10, 10, 10, 10]
    for task, spec in TASKS.items():
        assert spec.default_model in task_models(task), task
        assert spec.default_dataset in task_datasets(task), task


def test_copier_validators_accept_exactly_what_the_catalog_allows(questions):
    """copier.yml's validators (what plain `copier copy` checks) say what validate() says."""

    def complaint(question: str, **answers) -> str:
        return render_jinja(questions[question].get("validator", ""), **answers)

    for task in TASKS:
        for model, spec in MODELS.items():
            assert bool(complaint("model", task=task, model=model)) == (spec.task != task)
            if not TASKS[spec.task].images:  # --image-size is not asked (copier's `when`)
                continue
            for size in range(1, 70):
                assert bool(complaint("image_size", model=model, image_size=size)) == bool(
                    spec.image_size_problem(size)
                ), (model, size)
        for dataset in DATASETS:
            expected = dataset not in task_datasets(task)
            assert bool(complaint("dataset", task=task, dataset=dataset)) == expected
    assert complaint("model", task="segmentation", model="resnet18") == (
        "resnet18 is not a segmentation model"
    )


def test_to_data_holds_every_answer_and_nothing_else(questions):
    data = NewProject(dest=Path("somewhere") / "proj").to_data()
    assert set(data) == {"project_name", "template_version", *answer_names()}
    assert set(data) <= set(questions)
    assert data["project_name"] == "proj"


@pytest.mark.parametrize(
    "task, model, dataset",
    [("classification", "resnet18", "fake"), ("segmentation", "unet", "synthetic")],
)
def test_to_data_holds_the_tasks_defaults(task, model, dataset):
    project = NewProject(dest=Path("proj"), task=task)
    project.validate()
    data = project.to_data()
    assert (data["task"], data["model"], data["dataset"]) == (task, model, dataset)
    assert data["num_classes"] == 10


def test_to_data_keeps_a_model_and_dataset_that_were_chosen():
    project = NewProject(
        dest=Path("proj"), task="segmentation", model="fcn_resnet50", dataset="voc", num_classes=21
    )
    project.validate()
    data = project.to_data()
    assert (data["task"], data["model"], data["dataset"], data["num_classes"]) == (
        *("segmentation", "fcn_resnet50", "voc"),
        21,
    )
    assert NewProject(dest=Path("proj")).to_data()["task"] == "classification"


def test_a_default_is_filled_in_as_the_project_is_made():
    """None is how the command line says "the task's default": NewProject never keeps it."""
    assert NewProject(dest=Path("p"), task="segmentation", model=None, dataset=None) == NewProject(
        dest=Path("p"), task="segmentation", model="unet", dataset="synthetic"
    )


def invalid(dest: Path = Path("p"), **options) -> str:
    with pytest.raises(UsageError) as raised:
        NewProject(dest=dest, **options).validate()
    assert raised.value.exit_code == 2
    return str(raised.value)


CLASSIFICATION_MODELS = (
    "lenet, mlp, resnet18, resnet34, resnet50, mobilenet_v3_small, efficientnet_b0, "
    "convnext_tiny, vit_b_16"
)
SEGMENTATION_MODELS = (
    "unet, lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large, fcn_resnet50, "
    "deeplabv3_resnet50"
)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"model": "unet"},
            f"model unet is for --task segmentation; choose one of: {CLASSIFICATION_MODELS}",
        ),
        (
            {"task": "segmentation", "model": "resnet18"},
            f"model resnet18 is for --task classification; choose one of: {SEGMENTATION_MODELS}",
        ),
        (
            {"task": "segmentation", "model": "resnet"},
            f"unknown model 'resnet'; choose one of: {SEGMENTATION_MODELS}",
        ),
        (
            {"dataset": "voc"},
            "dataset voc is for --task segmentation; "
            "choose one of: fake, synthetic, folder, cifar10, mnist",
        ),
        (
            {"task": "segmentation", "dataset": "cifar10"},
            "dataset cifar10 is for --task classification; choose one of: synthetic, folder, voc",
        ),
        (
            {"task": "segmentation", "dataset": "imagenet"},
            "unknown dataset 'imagenet'; choose one of: synthetic, folder, voc",
        ),
        (
            {"task": "pose"},
            "unknown task 'pose'; choose one of: classification, segmentation, detection, lm",
        ),
        (
            {"task": "pose", "model": "unet"},
            "unknown task 'pose'; choose one of: classification, segmentation, detection, lm",
        ),
        (
            {"task": "segmentation", "image_size": 36},
            "model unet halves the resolution 3 times and doubles it back: "
            "--image-size must be a multiple of 8, got 36",
        ),
        (
            {"task": "segmentation", "image_size": 8},
            "model unet needs --image-size of at least 16, got 8",
        ),
        (
            {"task": "segmentation", "model": "fcn_resnet50", "image_size": 24},
            "model fcn_resnet50 needs --image-size of at least 32, got 24",
        ),
        (
            {"task": "segmentation", "num_classes": 1},
            "--num-classes must be between 2 and 1000000, got 1",
        ),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_a_model_or_dataset_of_another_task_is_refused(options, message):
    assert invalid(**options) == message


def test_every_model_and_dataset_of_a_task_is_valid_with_it():
    for task in TASKS:
        for model, spec in task_models(task).items():
            size = max(32, spec.size_multiple or 1)
            NewProject(dest=Path("p"), task=task, model=model, image_size=size).validate()
        for dataset in task_datasets(task):
            NewProject(dest=Path("p"), task=task, dataset=dataset).validate()
    NewProject(dest=Path("p"), task="segmentation", image_size=16).validate()
    NewProject(dest=Path("p"), task="segmentation", num_classes=2).validate()


def test_the_new_modules_of_0_3_0_are_refused_as_project_names():
    for module in ("task", "pipeline", "finetune"):
        assert module in PROJECT_MODULES
        assert shadowing(module) == f"the project's own {module} module"
        assert invalid(dest=Path(module)) == (
            f"invalid project name {module!r}: it would shadow the project's own {module} "
            "module; choose another name"
        )


def test_to_data_leaves_out_what_copier_should_ask():
    project = NewProject(dest=Path("proj"), model="lenet", answered=frozenset({"model"}))
    assert project.to_data().keys() == {"project_name", "model", "template_version"}


def test_dest_and_answered_are_not_answers():
    assert {item.name for item in fields(NewProject)} - set(answer_names()) == {
        "dest",
        "answered",
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_variant_flags_parse_back_to_the_same_project(tmp_path, capsys, monkeypatch, variant):
    """`scaffold new DEST <Variant.flags()> --dry-run` builds exactly Variant.project()."""
    seen = []

    def record(project, **options):
        seen.append((project, options))
        return Rendered([])

    monkeypatch.setattr(render, "create_project", record)
    code, _, err = run_cli(
        capsys, "new", str(tmp_path / variant.name), *variant.flags(), "--dry-run"
    )
    assert (code, err) == (0, "")
    [(project, options)] = seen
    assert project == variant.project(tmp_path)
    assert options["dry_run"] is True


def test_a_variant_takes_newprojects_default_for_a_choice_it_does_not_declare():
    """What lets a new `scaffold new` option need no change in scaffold/variants.py."""
    assert list(Variant("v", "lenet").options()) == answer_names()
    declares_only_its_model = SimpleNamespace(name="v", model="lenet")
    assert Variant.options(declares_only_its_model) == {
        **NewProject(dest=Path("v")).answers(),
        "model": "lenet",
    }
    segmentation = SimpleNamespace(name="v", model="unet", task="segmentation")
    assert (
        Variant.options(segmentation) == NewProject(dest=Path("v"), task="segmentation").answers()
    )


def test_a_variant_is_for_classification_unless_it_says_otherwise():
    assert Variant("v", "lenet").task == "classification"
    assert Variant("v", "lenet").dataset == "fake"
    variant = Variant("v", "unet", task="segmentation")
    assert (variant.dataset, variant.options()["dataset"]) == ("synthetic", "synthetic")
    assert variant.summary().split()[:4] == ["v", "segmentation", "unet", "synthetic"]
    assert {variant.task for variant in VARIANTS} == set(TASKS)


def test_coverage_counts_models_and_datasets_per_task():
    classification = tuple(variant for variant in VARIANTS if variant.task == "classification")
    missing = check_coverage(classification)
    for model in task_models("segmentation"):
        assert f"no variant uses segmentation model {model}" in missing
    for dataset in task_datasets("segmentation"):
        # A classification variant with dataset=folder does not cover segmentation's folder.
        assert f"no variant uses segmentation dataset {dataset}" in missing
    wrong = Variant("seg_fake", "unet", task="segmentation", dataset="fake")
    assert (
        "seg_fake: dataset fake is for --task classification; choose one of: synthetic, folder, "
        "voc" in check_coverage((*VARIANTS, wrong))
    )


def test_every_module_the_project_has_is_refused_as_its_name(tmp_path):
    everything = NewProject(dest=tmp_path / "p", ddp=True, vscode=True, hooks=True)
    files = create_project(everything, git=False, dry_run=True).files
    modules = {
        Path(name).parts[0].removesuffix(".py")
        for name in files
        if name.endswith(".py") and not Path(name).parts[0].startswith(".")
    }
    assert {"train", "model", "tests"} <= modules
    for module in sorted(modules):
        assert shadowing(module) == f"the project's own {module} module", module
