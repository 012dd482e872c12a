"""The declared variants: named combinations of `scaffold new` options that CI renders and tests.

Not the full product (the models of 4 tasks x their datasets x 2^3 booleans), but a small list
chosen so that
    - every model of every task appears once (each variant has its own model; the sizes of one
      network, such as gpt_tiny ... gpt2, count as one model),
    - every dataset of every task (a task's `folder` is not another's), and both values of every
      boolean option, appear at least once,
    - every pair of the boolean options ddp, vscode and hooks takes all four value combinations
      (pairwise: rows FFF, TTF, FTT, TFT below, in the order ddp/vscode/hooks).
`check_coverage()` proves those properties; tests/test_variants.py calls it.

For every variant the test suite renders the project, lints it and compares its files with the
expected set. The generated project's own test suite is the expensive part (each process imports
torch, DDP tests launch torchrun, vit_b_16 checkpoints are ~700 MB), so `suite` says how much of it
runs: "full" for a few representative variants, "focused" (model tests, a smoke run, and one launch
per feature: see tests/test_variants.py) for the others. `group` splits the variants into CI jobs
(.github/workflows/ci.yml runs one job per group).

Variants that train on data which cannot be downloaded in CI (folder, cifar10, mnist) still run
their generated tests, which pass --dataset=fake explicitly; a separate test checks that their
train.py, run with its defaults, fails with a message that says how to get the data.

`scaffold list variants` prints this list; `scaffold examples` renders the ones in EXAMPLES into
generated_examples/.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from scaffold.catalog import DATASETS, MODELS, TASKS, task_datasets, task_models
from scaffold.options import NewProject, answer_fields, answer_types, option_name

# The on/off choices of `scaffold new` (ddp, vscode, hooks), from NewProject.
BOOLEAN_OPTIONS = tuple(name for name, kind in answer_types().items() if kind is bool)
SUITES = ("full", "focused")


@dataclass(frozen=True)
class Variant:
    """A variant's choices: a choice NewProject has and this class does not declare takes
    NewProject's default, so a new `scaffold new` option needs no change here."""

    name: str  # also the project name (and the folder name under generated_examples/)
    model: str
    task: str = "classification"
    dataset: str | None = None  # None: the task's default dataset (set by __post_init__)
    ddp: bool = False
    vscode: bool = False
    hooks: bool = False
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    suite: str = "focused"
    group: int = 1

    def __post_init__(self) -> None:
        if self.dataset is None:
            object.__setattr__(self, "dataset", self.options()["dataset"])

    def options(self) -> dict[str, object]:
        """{answer: value} for every choice of `scaffold new`, in NewProject's order; a choice
        left to its task's default (catalog.TASKS) gets it from NewProject, as `scaffold new`
        does."""
        chosen = {item.name: getattr(self, item.name, item.default) for item in answer_fields()}
        return NewProject(dest=Path(self.name), **chosen).answers()

    def project(self, parent: Path) -> NewProject:
        """The options of `scaffold new PARENT/NAME ...` for this variant."""
        return NewProject(dest=Path(parent) / self.name, **self.options())

    def flags(self) -> list[str]:
        """The same choices as `scaffold new` flags (every option spelled out)."""
        flags = []
        for name, value in self.options().items():
            option = option_name(name)
            if isinstance(value, bool):
                flags.append(option if value else f"--no-{option.removeprefix('--')}")
            else:
                flags.append(f"{option}={value}")
        return flags

    @property
    def images(self) -> bool:
        """Whether the variant's task learns from images (the files of the `images` key)."""
        return TASKS[self.task].images

    def shape(self) -> str:
        """The images the variant's models take ("32px 3ch"); "-" for a task without images."""
        if self.images:
            return f"{self.image_size:>3}px {self.in_channels}ch"
        return "-"

    def summary(self, width: int = 0) -> str:
        options = self.options()
        features = [name for name in BOOLEAN_OPTIONS if options[name]] or ["minimal"]
        return (
            f"{self.name:<{width}}  {options['task']:<{max(map(len, TASKS))}}  "
            f"{self.model:<{max(map(len, MODELS))}}  {self.dataset:<{max(map(len, DATASETS))}}  "
            f"{self.shape():<9}  {'+'.join(features):<16}  "
            f"suite={self.suite:<7}  group={self.group}"
        )


# ddp/vscode/hooks:       F F F, T T F, F T T, T F T are the four pairwise rows; the rest vary.
VARIANTS: tuple[Variant, ...] = (
    Variant("lenet_minimal", "lenet", dataset="synthetic", suite="full", group=1),
    Variant("resnet18_ddp_vscode", "resnet18", ddp=True, vscode=True, group=2),
    Variant("vit_b_16_hooks_vscode", "vit_b_16", vscode=True, hooks=True, group=1),
    Variant(
        "mlp_mnist_ddp_hooks",
        "mlp",
        dataset="mnist",
        ddp=True,
        hooks=True,
        image_size=28,
        in_channels=1,
        suite="full",
        group=3,
    ),
    Variant("resnet34_cifar10", "resnet34", dataset="cifar10", hooks=True, group=1),
    Variant("mobilenet_v3_small_folder", "mobilenet_v3_small", dataset="folder", vscode=True),
    Variant("resnet50_defaults", "resnet50", vscode=True, hooks=True, group=2),
    Variant(
        "efficientnet_b0_everything",
        "efficientnet_b0",
        ddp=True,
        vscode=True,
        hooks=True,
        group=2,
    ),
    Variant("convnext_tiny_ddp", "convnext_tiny", ddp=True, num_classes=100, group=3),
    Variant(
        "seg_unet_minimal",
        "unet",
        task="segmentation",
        dataset="synthetic",
        image_size=32,
        suite="full",
        group=3,
    ),
    Variant(
        "seg_lraspp_ddp_vscode",
        "lraspp_mobilenet_v3_large",
        task="segmentation",
        ddp=True,
        vscode=True,
        group=1,
    ),
    Variant(
        "seg_deeplabv3_mobilenet_hooks",
        "deeplabv3_mobilenet_v3_large",
        task="segmentation",
        hooks=True,
        group=2,
    ),
    Variant(
        "seg_fcn_resnet50_folder",
        "fcn_resnet50",
        task="segmentation",
        dataset="folder",
        group=3,
    ),
    Variant(
        "seg_deeplabv3_resnet50_voc",
        "deeplabv3_resnet50",
        task="segmentation",
        dataset="voc",
        num_classes=21,
        group=2,
    ),
    Variant(
        "det_tiny_rcnn_ddp_hooks",
        "tiny_rcnn",
        task="detection",
        ddp=True,
        hooks=True,
        suite="full",
        group=3,
    ),
    Variant(
        "det_fasterrcnn_mobilenet_coco",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        task="detection",
        dataset="coco",
        vscode=True,
        group=1,
    ),
    Variant(
        "det_fasterrcnn_resnet50_hooks",
        "fasterrcnn_resnet50_fpn_v2",
        task="detection",
        hooks=True,
        group=2,
    ),
    Variant("det_retinanet_ddp", "retinanet_resnet50_fpn_v2", task="detection", ddp=True, group=3),
    Variant("det_fcos_vscode", "fcos_resnet50_fpn", task="detection", vscode=True, group=1),
    Variant("det_ssdlite_minimal", "ssdlite320_mobilenet_v3_large", task="detection", group=2),
    Variant("lm_gpt_tiny_ddp_hooks", "gpt_tiny", task="lm", ddp=True, hooks=True, suite="full"),
    Variant("lm_gpt_mini_text", "gpt_mini", task="lm", dataset="text", vscode=True, group=2),
)

# Rendered in full under generated_examples/ by `scaffold examples`, and checked by a test.
EXAMPLES: tuple[str, ...] = (
    "lenet_minimal",
    "resnet18_ddp_vscode",
    "vit_b_16_hooks_vscode",
    "seg_unet_minimal",
    "lm_gpt_tiny_ddp_hooks",
)

BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}


def groups() -> list[int]:
    return sorted({variant.group for variant in VARIANTS})


def check_coverage(variants: tuple[Variant, ...] = VARIANTS) -> list[str]:
    """What the list fails to cover or gets wrong, one line each (empty when it is complete)."""
    problems = []
    names = [variant.name for variant in variants]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"variant name {name!r} is used twice")
    for variant in variants:
        try:
            variant.project(Path("variants")).validate()
        except Exception as error:  # UsageError: an invalid combination
            problems.append(f"{variant.name}: {error}")
        if variant.suite not in SUITES:
            problems.append(f"{variant.name}: suite must be one of {SUITES}, not {variant.suite!r}")
    for task in TASKS:
        chosen = [variant for variant in variants if variant.options()["task"] == task]
        for model, spec in task_models(task).items():
            # The sizes of one network (gpt_tiny ... gpt2) are one model: its tests check each
            # size's shape, and a variant of the smallest runs the code they share.
            if not {model, spec.size_of} & {variant.model for variant in chosen}:
                problems.append(f"no variant uses {task} model {spec.size_of or model}")
        for dataset in task_datasets(task):
            if dataset not in {variant.dataset for variant in chosen}:
                problems.append(f"no variant uses {task} dataset {dataset}")
    for first, second in itertools.combinations(BOOLEAN_OPTIONS, 2):
        seen = {(variant.options()[first], variant.options()[second]) for variant in variants}
        for pair in itertools.product((False, True), repeat=2):
            if pair not in seen:
                problems.append(f"no variant has {first}={pair[0]} with {second}={pair[1]}")
    for name in EXAMPLES:
        if name not in names:
            problems.append(f"example {name!r} is not a declared variant")
    return problems


def describe() -> list[str]:
    """The lines `scaffold list variants` prints."""
    width = max(len(variant.name) for variant in VARIANTS)
    return [variant.summary(width) for variant in VARIANTS]
