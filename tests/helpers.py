"""Helpers shared by the CLI tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from scaffold.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `scaffold ARGS` in this process; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree_hash(root: Path, ignore: tuple[str, ...] = ()) -> str:
    """A hash of every path, mode and file content under root: equal hashes mean nothing changed.

    `ignore`: folder names left out, such as ".git", whose index git may rewrite on a read-only
    command (`git status` refreshes it when file times are too close to tell).
    """
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if ignore and set(path.relative_to(root).parts) & set(ignore):
            continue
        if path.is_file():
            digest.update(f"{relative}\0{path.stat().st_mode:o}\0".encode())
            digest.update(path.read_bytes())
        else:
            digest.update(f"{relative}/\0".encode())
    return digest.hexdigest()
