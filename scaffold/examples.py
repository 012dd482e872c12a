"""generated_examples/: a few declared variants rendered in full and committed.

Why: a template change then shows up in review as a diff of real, generated code, and a test
(tests/test_examples.py) fails until the committed examples are regenerated:

    scaffold examples            # or: make examples; rewrites generated_examples/
    scaffold examples --check    # render afresh into a temporary folder, compare, change nothing

Which variants: scaffold.variants.EXAMPLES. Each is rendered exactly as `scaffold new` would (same
code path, create_project), so the folders are what a user gets.

Deterministic by construction:
  - rendered with git=False: no .git folder, no commit, no dates or author anywhere;
  - the project name is the variant name, never the temporary folder's;
  - the one machine-specific spot, the answers file (.copier-answers.yml), is normalised to what
    an installed scaffold writes: `_src_path: ~/.cache/scaffold/project.bundle` and
    `_commit: v<template_version>`. Today a source checkout already writes exactly that (a no-op);
    it matters where the template history cannot be built (a checkout without git renders from
    the folder and writes the folder's absolute path and no `_commit`);
  - caches that running an example's tests leaves behind (__pycache__, .pytest_cache,
    .ruff_cache) are ignored when comparing, and never written;
  - files are compared byte for byte, plus the executable bit (scripts/*.sh).
"""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from scaffold.errors import UsageError
from scaffold.render import CACHE_URL, SOURCE_ROOT, create_project
from scaffold.variants import BY_NAME, EXAMPLES

FOLDER = "generated_examples"
IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".git"}
ANSWERS = ".copier-answers.yml"
MAX_DIFF_LINES = 60  # per file, in a failure message


def default_dir() -> Path:
    """generated_examples/ at the top of this source checkout."""
    if not (SOURCE_ROOT / "templates").is_dir() or not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise UsageError(
            "not running from a scaffold source checkout: pass --into DIR to say where to write"
        )
    return SOURCE_ROOT / FOLDER


# How every README.md of an examples folder starts: what tells `scaffold examples --into DIR`
# that it wrote DIR, and may replace it.
README_START = "# Generated examples\n\nWritten by `scaffold examples`"


def readme() -> str:
    lines = [
        "# Generated examples",
        "",
        "Written by `scaffold examples` (`make examples`); do not edit by hand. A test renders",
        "them afresh and fails when they differ from what is committed, so a template change",
        "shows up here, in review, as a change of real code. See scaffold/examples.py.",
        "",
    ]
    for name in EXAMPLES:
        flags = " ".join(BY_NAME[name].flags())
        lines.append(f"- `{name}/`: `scaffold new {name} {flags} --no-git`")
    return "\n".join(lines) + "\n"


def normalise_answers(text: str) -> str:
    """The answers file as an installed scaffold writes it (see the module docstring)."""
    version = next(
        (
            line.partition(":")[2].strip().strip("'\"")
            for line in text.splitlines()
            if line.startswith("template_version:")
        ),
        None,
    )
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("_commit:"):
            continue
        if line.startswith("_src_path:"):
            if version:
                lines.append(f"_commit: v{version}\n")
            line = f"_src_path: {CACHE_URL}/project.bundle\n"
        lines.append(line)
    return "".join(lines)


def render_examples(into: Path, names: tuple[str, ...] = EXAMPLES) -> None:
    """Render the examples `names` into the folder `into` (which must not exist yet)."""
    into = Path(into)
    into.mkdir(parents=True)
    for name in names:
        create_project(BY_NAME[name].project(into), git=False)
        answers = into / name / ANSWERS
        answers.write_text(normalise_answers(answers.read_text(encoding="utf-8")), encoding="utf-8")
    (into / "README.md").write_text(readme(), encoding="utf-8")


def written_by_scaffold(folder: Path) -> bool:
    """Whether `folder` holds examples this command wrote: its README.md starts as readme()'s."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return text.startswith(README_START)


def check_target(target: Path) -> None:
    """Refuse a target that write_examples would replace without having written it."""
    if target.is_symlink():
        raise UsageError(f"{target} is a symbolic link: give the folder itself as --into DIR")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is not a folder: choose another --into DIR")
    if target.is_dir() and any(target.iterdir()) and not written_by_scaffold(target):
        raise UsageError(
            f"{target} is not empty and holds no examples written by `scaffold examples` "
            "(no README.md from it), so it is not replaced: choose another --into DIR"
        )


def write_examples(target: Path | None = None) -> list[str]:
    """Replace `target` (default: generated_examples/ of this checkout) with a fresh render.

    Only a folder that does not exist yet, an empty one, or one this function wrote before (see
    check_target) is replaced: anything else is refused, never deleted. Rendered next to it
    first, then swapped in, so a failed render leaves the old examples alone.
    Returns the relative paths written.
    """
    target = Path(target) if target else default_dir()
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".scaffold-examples-", dir=target.parent))
    try:
        fresh = work / "fresh"
        render_examples(fresh)
        if target.exists():
            os.rename(target, work / "old")
        os.rename(fresh, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sorted(tree(target))


def check_examples(target: Path | None = None) -> list[str]:
    """Differences between `target` and a fresh render, one readable block each ([] if none)."""
    target = Path(target) if target else default_dir()
    with tempfile.TemporaryDirectory(prefix="scaffold-examples-") as work:
        fresh = Path(work) / "fresh"
        render_examples(fresh)
        return compare(fresh, target)


def tree(root: Path) -> dict[str, Path]:
    """{relative posix path: path} of the files under `root`, caches left out."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if name not in IGNORED_DIRS)
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / name
            files[path.relative_to(root).as_posix()] = path
    return files


def executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def compare(expected_root: Path, actual_root: Path) -> list[str]:
    """How `actual_root` (committed) differs from `expected_root` (fresh), file by file."""
    expected, actual = tree(expected_root), tree(actual_root)
    problems = []
    for name in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing: {name} (a fresh render writes it)")
    for name in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected: {name} (a fresh render does not write it)")
    for name in sorted(expected.keys() & actual.keys()):
        want, have = expected[name].read_bytes(), actual[name].read_bytes()
        if want != have:
            problems.append(f"differs: {name}\n{text_diff(have, want, name)}")
        elif executable(expected[name]) != executable(actual[name]):
            mode = "executable" if executable(expected[name]) else "not executable"
            problems.append(f"mode differs: {name} should be {mode}")
    return problems


def text_diff(committed: bytes, fresh: bytes, name: str) -> str:
    try:
        old, new = committed.decode("utf-8"), fresh.decode("utf-8")
    except UnicodeDecodeError:
        return f"  (binary: {len(committed)} bytes committed, {len(fresh)} bytes fresh)"
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"committed/{name}",
            tofile=f"fresh/{name}",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... {len(lines) - MAX_DIFF_LINES} more diff lines\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip("\n")
