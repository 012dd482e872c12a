"""An existing generated project: where its root is and how it was made (its copier answers)."""

from __future__ import annotations

import os
from pathlib import Path

from scaffold.errors import ScaffoldError, UsageError

ANSWERS_FILE = ".copier-answers.yml"


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the current one) with the answers file."""
    start = Path(os.path.abspath(start if start is not None else Path.cwd()))
    if not start.is_dir():
        raise UsageError(f"{start} is not a directory")
    for folder in (start, *start.parents):
        if (folder / ANSWERS_FILE).is_file():
            return folder
    raise UsageError(
        f"not inside a scaffold project: no {ANSWERS_FILE} in {start} or above "
        "(cd into a project or pass -C DIR)"
    )


def read_answers(root: Path) -> dict[str, object]:
    """The answers `scaffold new` recorded in ROOT/.copier-answers.yml."""
    import yaml  # a dependency of copier; imported here so that `scaffold --help` stays instant

    path = root / ANSWERS_FILE
    try:
        answers = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()
        raise ScaffoldError(
            f"cannot read {path}: {reason[0] if reason else type(error).__name__}"
        ) from None
    if not isinstance(answers, dict) or "project_name" not in answers:
        raise ScaffoldError(f"{path} was not written by scaffold: it has no project_name")
    return answers
