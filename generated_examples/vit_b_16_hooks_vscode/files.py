"""Writing files so that nothing half-written is ever left: the one place that does it.

Every file a run keeps (checkpoints, config.json and env.json, trackers' state, the image cache,
exported models) is written under a temporary name beside its path, flushed and fsynced, then
renamed over the path, and the folder synced: a reader, a kill or a power cut finds the old file
or the new one, whole, never a mix. A write that fails removes its temporary file.

    with atomic_write(path) as file:      # bytes; atomic_write(path, "w") for text
        torch.save(state, file)
    replace(temporary, path)              # a file another writer made (torch.export.save, onnx)
    write_json(path, value)
"""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def temporary_name(path: str, keep_suffix: bool = False) -> str:
    """A name beside `path` for its next version: PATH.tmp-PID, or with `keep_suffix`
    STEM.tmp-PID.SUFFIX, for writers that insist on their suffix (torch.export.save on .pt2)."""
    if keep_suffix:
        stem, suffix = os.path.splitext(path)
        return f"{stem}.tmp-{os.getpid()}{suffix}"
    return f"{path}.tmp-{os.getpid()}"


@contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """A file to write `path` through: it takes `path`'s place, durably, when the block ends,
    and is removed if the block (or the write) raises anything, `path` left as it was."""
    temporary = temporary_name(path)
    try:
        with open(temporary, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        sync_directory(os.path.dirname(path))
    except BaseException:
        remove_quietly(temporary)
        raise


def replace(temporary: str, path: str) -> None:
    """Move the finished file `temporary` (written by some other code) over `path`, durably."""
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    sync_directory(os.path.dirname(path))


def publish(source: str, path: str) -> None:
    """Make `path` a second name for the finished file `source` (a hard link, or a copy where
    the file system has none), atomically."""
    temporary = temporary_name(path)
    remove_quietly(temporary)
    try:
        try:
            os.link(source, temporary)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, temporary)
        replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise


def write_json(path: str, value) -> None:
    """Replace `path` with `value` as indented JSON, atomically (see atomic_write)."""
    with atomic_write(path, "w") as file:
        json.dump(value, file, indent=2)


def read_json(path: str) -> dict:
    """The JSON in `path`, or {} when there is no such file."""
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return {}


def sync_directory(directory: str) -> None:
    """Make the names in `directory` (a rename into it) survive a power cut."""
    descriptor = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_quietly(path: str) -> None:
    """Remove `path` if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
