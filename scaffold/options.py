"""The user's choices for each command, their validation, and where they become template data."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from scaffold import __version__
from scaffold.catalog import DATASETS, DEFAULT_DATASET, DEFAULT_MODEL, MODELS
from scaffold.errors import UsageError

PROJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
MAX_NAME_LENGTH = 64
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
MAX_IMAGE_SIZE = 4096


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


@dataclass(frozen=True)
class NewProject:
    dest: Path
    model: str = DEFAULT_MODEL
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dataset: str = DEFAULT_DATASET
    ddp: bool = False
    vscode: bool = True
    hooks: bool = True
    # The answers to pass to copier; the others it asks (`scaffold new --interactive`).
    answered: frozenset[str] = frozenset(
        ["model", "num_classes", "in_channels", "image_size", "dataset", "ddp", "vscode", "hooks"]
    )

    @property
    def name(self) -> str:
        return self.dest.name

    def validate(self) -> None:
        check_project_name(self.name)
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise UsageError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
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
        answers = {
            "project_name": self.name,
            "model": self.model,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "dataset": self.dataset,
            "ddp": self.ddp,
            "vscode": self.vscode,
            "hooks": self.hooks,
            "template_version": __version__,
        }
        return {
            key: value
            for key, value in answers.items()
            if key in self.answered or key in ("project_name", "template_version")
        }
