"""--cache: every image of a dataset decoded once (resized, channels converted) into one uint8 file.

The first run with --cache decodes the dataset, in --workers processes and with a progress bar,
into CACHE_DIR/NAME.u8, a (count, channels, size, size) uint8 array, and NAME.json, its manifest:
the source files with their sizes and modification times, the image size, the channels, the class
names and the labels. Later runs check the manifest against the files and read whole batches
straight from the array: no PIL, and no Python per image. A cache whose files changed, or one built
for another image size or channel count, is rebuilt, with one line saying why.

Both files are written under temporary names and renamed at the end (files.py), the manifest last,
so a full disk or a kill while building leaves no cache that a later run would trust. Under
torchrun the first process of each machine builds (distributed.is_local_main_process), and the
others wait for its manifest.
"""

import glob
import json
import os
import sys
import time

import numpy
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import distributed
import files

FORMAT = 1  # of the manifest; a cache of another format is rebuilt
WAIT_SECONDS = 2  # how often the processes that do not build look for the finished cache


class CacheError(Exception):
    """A cache that cannot be built; the message says what to do."""


class CachedImages(Dataset):
    """The images of a cache, read a batch at a time (DataLoader calls __getitems__ with all of a
    batch's indices; pass collate_fn=whole_batch)."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.shape = tuple(manifest["shape"])
        self.labels = torch.tensor(manifest["labels"], dtype=torch.int64)
        self.classes = manifest["classes"]
        self._images = None

    @property
    def images(self) -> numpy.ndarray:
        if self._images is None:  # opened in each DataLoader worker, never pickled
            self._images = numpy.memmap(self.path, numpy.uint8, mode="r", shape=self.shape)
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(numpy.array(self.images[index])), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[indices]), self.labels[indices]


def whole_batch(batch):
    """DataLoader's collate_fn for CachedImages, whose __getitems__ returns whole batches."""
    return batch


def cached(dataset: Dataset, sources: list[str], name: str, args) -> CachedImages:
    """`dataset` (uint8 images, labels in `dataset.targets`) through the cache NAME in --cache-dir
    (default: beside --data-dir, DATA_DIR-cache). `sources` are the files it is read from."""
    folder = args.cache_dir or f"{os.path.normpath(args.data_dir)}-cache"
    path = os.path.join(folder, f"{name}-{args.image_size}px-{args.in_channels}ch.u8")
    expected = {
        "format": FORMAT,
        "image_size": args.image_size,
        "in_channels": args.in_channels,
        "sources": fingerprint(sources),
    }
    if distributed.is_local_main_process():
        problem = stale(path, expected)
        if problem:
            print(f"{problem}: building it", file=sys.stderr)
            build(dataset, path, expected, args)
    else:
        while stale(path, expected):
            time.sleep(WAIT_SECONDS)
    distributed.barrier()
    return CachedImages(path, read_manifest(path))


def fingerprint(paths: list[str]) -> list[list]:
    """[path, size, modification time in ns] of each file, in order."""
    stats = [(path, os.stat(path)) for path in paths]
    return [[path, stat.st_size, stat.st_mtime_ns] for path, stat in stats]


def manifest_path(path: str) -> str:
    return path.removesuffix(".u8") + ".json"


def read_manifest(path: str) -> dict | None:
    try:
        with open(manifest_path(path)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def stale(path: str, expected: dict) -> str | None:
    """Why the cache at `path` cannot be used as it is, or None when it can."""
    manifest = read_manifest(path)
    if manifest is None or not os.path.isfile(path):
        return f"no image cache at {path} yet"
    for key in ("format", "image_size", "in_channels"):
        if manifest.get(key) != expected[key]:
            return f"the image cache {path} has {key} {manifest.get(key)}, not {expected[key]}"
    if manifest["sources"] != expected["sources"]:
        old = {tuple(source) for source in manifest["sources"]}
        changed = sum(tuple(source) not in old for source in expected["sources"])
        now = {source[0] for source in expected["sources"]}
        gone = sum(source[0] not in now for source in manifest["sources"])
        return f"the image cache {path} is stale ({changed} files new or changed, {gone} gone)"
    if os.path.getsize(path) != numpy.prod(manifest["shape"]):
        return f"the image cache {path} is not the size its manifest says"
    return None


def build(dataset: Dataset, path: str, expected: dict, args) -> None:
    """Decode every image into PATH and write the manifest; unreadable images stop the build
    with their name, or with --skip-bad-images are left out and counted."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for leftover in glob.glob(f"{path}.tmp-*") + glob.glob(f"{manifest_path(path)}.tmp-*"):
        os.remove(leftover)  # from a build that was killed
    temporary = files.temporary_name(path)
    shape = (len(dataset), args.in_channels, args.image_size, args.image_size)
    # Its own generator: a loader without one draws from the global RNG, and a run that builds
    # the cache would then train on other random numbers than one that reads it.
    loader = DataLoader(
        Decoding(dataset, shape[1:]),
        batch_size=256,
        num_workers=args.workers,
        generator=torch.Generator(),
    )
    labels, skipped, kept = [], [], 0
    try:
        images = numpy.memmap(temporary, numpy.uint8, mode="w+", shape=shape)
        for batch, batch_labels, readable, paths in tqdm(loader, desc="caching", unit="batch"):
            for path_index in (~readable).nonzero().flatten().tolist():
                if not args.skip_bad_images:
                    raise CacheError(
                        f"cannot read image {paths[path_index]}: fix or delete it, or pass "
                        "--skip-bad-images"
                    )
                skipped.append(paths[path_index])
            good = batch[readable].numpy()
            images[kept : kept + len(good)] = good
            labels += batch_labels[readable].tolist()
            kept += len(good)
        images.flush()
        del images
        os.truncate(temporary, kept * int(numpy.prod(shape[1:])))
        manifest = {**expected, "shape": [kept, *shape[1:]], "labels": labels}
        manifest |= {"classes": getattr(dataset, "classes", None), "skipped": skipped}
        publish(temporary, path, manifest)
    except OSError as error:
        raise CacheError(
            f"could not write the image cache {path}: {error.strerror or error}; pass "
            "--cache-dir to put it elsewhere"
        ) from None
    finally:
        files.remove_quietly(temporary)
    if skipped:
        print(
            f"warning: left out {len(skipped)} unreadable images: {skipped[0]}...", file=sys.stderr
        )
    size = os.path.getsize(path) / 2**20
    print(f"cached {kept} images in {path} ({size:.1f} MB)", file=sys.stderr)


def publish(temporary: str, path: str, manifest: dict) -> None:
    """Move the finished array into place, then write its manifest; the old manifest goes first,
    so that a kill in between leaves a cache without a manifest, which is rebuilt."""
    files.remove_quietly(manifest_path(path))
    files.replace(temporary, path)
    files.write_json(manifest_path(path), manifest)


class Decoding(Dataset):
    """Each image of `dataset` with its label, whether it could be read, and its file."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...]):
        self.dataset = dataset
        self.shape = shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        path = self.dataset.samples[index][0] if hasattr(self.dataset, "samples") else ""
        label = int(self.dataset.targets[index])
        try:
            image, _ = self.dataset[index]
        except (OSError, SyntaxError):  # what PIL raises for unreadable files
            return torch.zeros(self.shape, dtype=torch.uint8), label, False, path
        return image, label, True, path
