"""Render the project template with copier into a staging folder, then move it into place.

Nothing is written at DEST until the whole project has rendered (and been committed, with --git),
so a failure at any point leaves no directory behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scaffold import __version__
from scaffold.errors import ScaffoldError, UsageError
from scaffold.options import NewProject

PACKAGE_DIR = Path(__file__).resolve().parent


def template_dir(name: str = "project") -> Path:
    """The copier template `name`: inside the installed wheel, or at the top of a source checkout."""
    for root in (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates"):
        if (root / name / "copier.yml").is_file():
            return root / name
    raise ScaffoldError(f"template {name!r} is missing from this installation: reinstall scaffold")


def nearest_existing_dir(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory: choose another DEST")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UsageError(f"{dest} is not empty: choose another DEST or pass --force")
    anchor = nearest_existing_dir(dest)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise ScaffoldError(f"cannot write to {anchor}: permission denied, choose another DEST")


def list_files(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(root).parts
    )


def copier_copy(data: dict[str, object], into: Path, interactive: bool) -> None:
    from copier import run_copy  # imported here so that `scaffold --help` stays instant

    try:
        run_copy(
            str(template_dir()),
            into,
            data=data,
            defaults=not interactive,
            overwrite=True,
            quiet=True,
            unsafe=False,
        )
    except (KeyboardInterrupt, EOFError):
        raise ScaffoldError("cancelled: nothing was written") from None
    except Exception as error:  # copier reports template problems as many different types
        message = str(error).strip().splitlines()
        raise ScaffoldError(f"rendering failed: {message[0] if message else type(error).__name__}")


def run_git(args: list[str], cwd: Path) -> None:
    identity = []
    probe = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True, text=True)
    if not probe.stdout.strip():
        identity = ["-c", "user.name=scaffold", "-c", "user.email=scaffold@localhost"]
    result = subprocess.run(["git", *identity, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ScaffoldError(f"git {args[0]} failed: {lines[-1] if lines else 'no output'}")


def commit_project(root: Path, files: list[str], name: str) -> None:
    if not (root / ".git").exists():
        run_git(["init", "--quiet"], root)
    run_git(["add", "--", *files], root)
    run_git(["commit", "--quiet", "-m", f"Generate {name} with scaffold {__version__}"], root)


def move_into(staging: Path, dest: Path) -> None:
    """Move the staged tree to `dest`: one rename for a new DEST, file by file with --force."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, dest)
        return
    if not any(dest.iterdir()):
        dest.rmdir()
        os.rename(staging, dest)
        return
    for source in sorted(staging.rglob("*")):
        target = dest / source.relative_to(staging)
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(source, target)


def create_project(
    project: NewProject,
    *,
    force: bool = False,
    git: bool = True,
    dry_run: bool = False,
    interactive: bool = False,
) -> list[str]:
    """Render `project` at its destination and return the relative paths of its files."""
    project.validate()
    dest = Path(os.path.abspath(project.dest))
    check_destination(dest, force)
    if interactive and not sys.stdin.isatty():
        raise UsageError("--interactive needs a terminal: drop it and pass the options as flags")
    if git and not dry_run and shutil.which("git") is None:
        raise ScaffoldError("git is not installed: install it, or pass --no-git")

    work_root = Path(tempfile.mkdtemp(prefix=".scaffold-", dir=nearest_existing_dir(dest.parent)))
    staging = work_root / project.name
    created_parents = []
    try:
        copier_copy(project.to_data(), staging, interactive)
        files = list_files(staging)
        if dry_run:
            return files
        forced_into_repo = (dest / ".git").exists()
        if git and not forced_into_repo:
            commit_project(staging, files, project.name)
        for parent in reversed(dest.parents):
            if not parent.exists():
                created_parents.append(parent)
        existed = dest.exists()
        move_into(staging, dest)
        if git and forced_into_repo:
            try:
                commit_project(dest, files, project.name)
            except ScaffoldError:
                if not existed:
                    shutil.rmtree(dest, ignore_errors=True)
                raise
        return files
    except BaseException:
        for parent in reversed(created_parents):
            shutil.rmtree(parent, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
