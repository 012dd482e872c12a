"""Writing files so that nothing half-written is ever left: the one place that does it.

Every file a run keeps (checkpoints, config.json and env.json, trackers' state, the image cache,
exported models) is written under a temporary name beside its path, flushed and fsynced, then
renamed over the path, and the folder synced: a reader, a kill or a power cut finds the old file
or the new one, whole, never a mix. A write that fails removes its temporary file.

    with atomic_write(path) as file:      # bytes; atomic_write(path, "w") for text
        torch.save(state, file)
    replace(temporary, path)              # a file another writer made (torch.export.save, onnx)
    write_json(path, value)

fingerprint(paths) tells whether files changed since (the caches of images and of tokens keep it
in their manifests).
"""

import hashlib
import json
import os
import shutil
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

WAIT_SECONDS = 2  # how often processes look for a file that another process builds (a cache)


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


def fingerprint(paths: list[str]) -> dict:
    """What tells whether the source files changed: "sources", [path, size, modification time
    in ns] of each file in order, and "replaced", a digest of each file's inode and status change
    time (ctime). The digest catches what size and modification time miss: a file rewritten in
    place or replaced with its old time put back (cp -p, rsync -a, a restored backup) has a new
    ctime, which the system sets on every write, rename and utime and no program can set back
    (and rsync's rename gives it a new inode). Both come from the os.stat the check makes anyway,
    and one digest keeps the manifest as small as before: opening a cache costs a few percent
    more (benchmarks/cache_check.py). The price: a data set copied elsewhere, its cache with it,
    is decoded again there, and a chmod or chown of its files rebuilds the cache too."""
    sources, inodes, ctimes = [], array("Q"), array("q")
    for path in paths:
        stat = os.stat(path)
        sources.append([path, stat.st_size, stat.st_mtime_ns])
        inodes.append(stat.st_ino)
        ctimes.append(stat.st_ctime_ns)
    digest = hashlib.sha1(inodes)
    digest.update(ctimes)
    return {"sources": sources, "replaced": digest.hexdigest()}
