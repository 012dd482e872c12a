"""The scaffold package, its tests, benchmarks and mutations are black- and ruff-clean (generated
projects are checked per variant in test_variants.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["scaffold", "tests", "benchmarks", ".ci/mutations.py"]


@pytest.mark.parametrize(
    "command",
    [["black", "--check", "--quiet", *PATHS], ["ruff", "check", "--quiet", *PATHS]],
    ids=["black", "ruff"],
)
def test_the_repository_is_lint_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
