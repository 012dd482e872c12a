"""Figure 4, one row: what noticing a replaced image costs each time the cache is opened.

Besides each source file's size and modification time, the image cache's manifest holds one
digest of every file's inode and status-change time (st_ino, st_ctime_ns: cache.fingerprint), so
that a file replaced with its old size and modification time put back (`cp -p`, `rsync -a`, a
restored backup) still rebuilds the cache (issue 26, item 11): the system sets a file's ctime on
every write, rename and utime, and no program can set it back. Both numbers come from the
os.stat per file the check made already; what is added is reading them and hashing them, and
one string in the manifest. (Kept per file instead, as two more numbers on each file's line,
they made the manifest 40% larger and opening the cache about 10% slower here: at the target.)

Measured: opening the cache as train.py does (the project's dataset.build_datasets with --cache:
listing the folder, os.stat of every file, reading the manifest, comparing), with the project's
cache.fingerprint, against the same with a fingerprint of size and modification time alone (the
check before; a second cache built with it, so that neither is stale), on CPU time, in turns
(the order reversed every other pair), repeated; medians. Target: the added check costs under 10%
of opening the cache (ratio <= 1.1).

For scale, the other way the issue allows: a cheap content hash (blake2b of each file's first and
last 4 KiB) of the same files, warm in the page cache, timed alone: one more open, read and close
per file on every start.

    python benchmarks/cache_check.py --project DIR [--images 7168] [--repeats 21]

(DIR: a generated classification project; the images are written into a scratch folder.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.1  # opening with the full check / opening with size and time alone, at most
EDGE = 4096  # bytes read from each end of a file by the content hash of the comparison


def size_and_time(paths: list[str]) -> dict:
    """cache.fingerprint as it was before issue 26 (in one pass over the files, as now): [path,
    size, modification time in ns] of each file, no digest of inodes and ctimes."""
    sources = []
    for path in paths:
        stat = os.stat(path)
        sources.append([path, stat.st_size, stat.st_mtime_ns])
    return {"sources": sources}


def edge_digests(paths: list[str]) -> list[str]:
    """blake2b of each file's first and last EDGE bytes: a cheap content hash."""
    digests = []
    for path in paths:
        with open(path, "rb") as file:
            digest = hashlib.blake2b(file.read(EDGE))
            size = os.fstat(file.fileno()).st_size
            if size > EDGE:
                file.seek(max(size - EDGE, EDGE))
                digest.update(file.read(EDGE))
        digests.append(digest.hexdigest())
    return digests


def compare(cache, dataset, full_args, old_args, repeats: int) -> dict:
    """Seconds to open the cache of `full_args` (the project's fingerprint) and of `old_args`
    (size and time alone), `repeats` times each in turns; each cache is built first if needed.
    `cache` and `dataset` are the project's modules."""
    fingerprint = cache.fingerprint
    variants = {"full": (fingerprint, full_args), "old": (size_and_time, old_args)}

    def open_cache(name: str) -> tuple[float, list]:
        cache.fingerprint, args = variants[name]
        try:
            start = time.process_time()
            sets = dataset.build_datasets(args)
            return time.process_time() - start, sets
        finally:
            cache.fingerprint = fingerprint

    _, sets = open_cache("full")
    open_cache("old")
    paths = sorted(path for data in sets for path, *_ in cached_sources(data))
    times = {name: [] for name in variants}
    for rep in range(repeats):
        order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
        for name in order:
            times[name].append(open_cache(name)[0])
    hashing = []
    for _ in range(max(repeats // 3, 3)):
        start = time.process_time()
        edge_digests(paths)
        hashing.append(time.process_time() - start)
    return {"files": len(paths), "open": times, "hash": hashing}


def cached_sources(data) -> list[list]:
    """The manifest's sources of a cached dataset (or of the cache under a random_split)."""
    cached = getattr(data, "dataset", data)
    with open(cached.path.removesuffix(".u8") + ".json") as file:
        return json.load(file)["sources"]


def summary(result: dict) -> dict:
    """The figures of a compare() result: medians, the ratio and the per-file cost."""
    full, old = (statistics.median(result["open"][name]) for name in ("full", "old"))
    hashing = statistics.median(result["hash"])
    return {
        "files": result["files"],
        "repeats": len(result["open"]["full"]),
        "open_full_s": full,
        "open_size_and_time_s": old,
        "ratio": full / old,
        "added_us_per_file": (full - old) / result["files"] * 1e6,
        "edge_hash_s": hashing,
        "edge_hash_share_of_open": hashing / full,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="a generated classification project")
    parser.add_argument("--images", type=int, default=7168, help="training PNGs (and an 8th more)")
    parser.add_argument("--repeats", type=int, default=21, help="opens of each cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import set_threads
    from data_pipeline import BUILD_WORKERS, data_options, make_images

    set_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.project))
    import cache
    import dataset

    work = Path(tempfile.mkdtemp(prefix="cache-check-"))
    try:
        folder = work / "images"
        make_images(folder, args.images)
        full_args, old_args = (
            data_options(folder, cache=True, cache_dir=str(work / name), workers=BUILD_WORKERS)
            for name in ("cache-full", "cache-size-and-time")
        )
        result = summary(compare(cache, dataset, full_args, old_args, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    verdict = "met" if result["ratio"] <= TARGET else "MISSED"
    print(f"ratio {result['ratio']:.3f} (target <= {TARGET}): {verdict}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
