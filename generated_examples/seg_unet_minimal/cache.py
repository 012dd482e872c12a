"""--cache: every image of a dataset decoded once (resized, channels converted) into one uint8 file,
and for segmentation every mask into a second.

The first run with --cache decodes the dataset, in --workers processes and with a progress bar,
into CACHE_DIR/NAME.u8, a (count, channels, size, size) uint8 array, and NAME.json, its manifest:
the source files (with what tells that one changed: see files.fingerprint), the image size, the
channels, the class names and the labels. A dataset of masks (cached(..., masks=True)) has no
labels: its masks, class indices with 255 for ignored pixels, go into NAME.masks.u8, a (count,
size, size) uint8 array beside the images. Later runs check the manifest against the files and
read whole batches straight from the arrays: no PIL, and no Python per image. A cache whose files
changed, or one built for another image size or channel count (or whatever else its dataset asks
for: `key`), is rebuilt, with one line saying why.

Every array is written under a temporary name and renamed at the end (files.py), the manifest
last, so a full disk or a kill while building leaves no cache that a later run would trust. Under
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
import signals
from files import WAIT_SECONDS, fingerprint

FORMAT = 2  # of the manifest (2: "replaced" and "masks" added); another format is rebuilt


class CacheError(Exception):
    """A cache that cannot be built; the message says what to do."""


class CachedImages(Dataset):
    """The samples of a cache: (uint8 image, label), or (uint8 image, uint8 mask) for a cache of
    masks; read a batch at a time (DataLoader calls __getitems__ with all of a batch's indices:
    pipeline.build_loader sees `whole_batches` and collates nothing)."""

    whole_batches = True

    def __init__(self, path: str, manifest: dict, classes: list[str] | None = None):
        self.path = path
        self.shape = tuple(manifest["shape"])
        self.has_masks = manifest["masks"]
        labels = manifest["labels"]
        self.labels = None if self.has_masks else torch.tensor(labels, dtype=torch.int64)
        # The dataset's own names where it has them: a segmentation folder's classes.txt can
        # change without its images.
        self.classes = classes if classes is not None else manifest["classes"]
        self._images = self._masks = None

    @property
    def images(self) -> numpy.ndarray:
        if self._images is None:  # opened in each DataLoader worker, never pickled
            self._images = numpy.memmap(self.path, numpy.uint8, mode="r", shape=self.shape)
        return self._images

    @property
    def masks(self) -> numpy.ndarray:
        if self._masks is None:
            shape = (self.shape[0], *self.shape[2:])
            self._masks = numpy.memmap(masks_path(self.path), numpy.uint8, mode="r", shape=shape)
        return self._masks

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_masks": None}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        image = torch.from_numpy(numpy.array(self.images[index]))
        if self.has_masks:
            return image, torch.from_numpy(numpy.array(self.masks[index]))
        return image, int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(self.images[indices])
        if self.has_masks:
            return images, torch.from_numpy(self.masks[indices])
        return images, self.labels[indices]


def cached(
    dataset: Dataset,
    sources: list[str],
    name: str,
    args,
    masks: bool = False,
    key: dict | None = None,
    before_build=None,
) -> CachedImages:
    """`dataset` through the cache NAME in --cache-dir (default: beside --data-dir,
    DATA_DIR-cache). Its samples are (uint8 image, label), or with `masks` (uint8 image, mask of
    class indices below 256). `sources` are the files it is read from; `key` more values the
    cache holds only for (rebuilt when one differs); `before_build()` is called by the process
    that builds, before it does: checks of the files that a valid cache makes unnecessary."""
    folder = args.cache_dir or f"{os.path.normpath(args.data_dir)}-cache"
    path = os.path.join(folder, f"{name}-{args.image_size}px-{args.in_channels}ch.u8")
    expected = {
        "format": FORMAT,
        "image_size": args.image_size,
        "in_channels": args.in_channels,
        "masks": masks,
        **(key or {}),
        **fingerprint(sources),
    }
    manifest = read_manifest(path)
    if distributed.is_local_main_process():
        problem = stale(path, expected, manifest)
        if problem:
            if before_build is not None:
                before_build()
            print(f"{problem}: building it", file=sys.stderr)
            manifest = build(dataset, path, expected, args)
    else:
        while stale(path, expected, manifest):
            time.sleep(WAIT_SECONDS)
            manifest = read_manifest(path)
    distributed.barrier()
    return CachedImages(path, manifest, dataset_classes(dataset))


def dataset_classes(dataset: Dataset) -> list[str] | None:
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None


def manifest_path(path: str) -> str:
    return path.removesuffix(".u8") + ".json"


def masks_path(path: str) -> str:
    return path.removesuffix(".u8") + ".masks.u8"


def read_manifest(path: str) -> dict | None:
    try:
        with open(manifest_path(path)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def stale(path: str, expected: dict, manifest: dict | None) -> str | None:
    """Why the cache at `path`, whose manifest reads `manifest`, cannot be used as it is, or None
    when it can."""
    if manifest is None or not os.path.isfile(path):
        return f"no image cache at {path} yet"
    for key in [key for key in expected if key not in ("sources", "replaced")]:
        if manifest.get(key) != expected[key]:
            return f"the image cache {path} has {key} {manifest.get(key)}, not {expected[key]}"
    if manifest["sources"] != expected["sources"]:
        old = {tuple(source) for source in manifest["sources"]}
        changed = sum(tuple(source) not in old for source in expected["sources"])
        now = {source[0] for source in expected["sources"]}
        gone = sum(source[0] not in now for source in manifest["sources"])
        return f"the image cache {path} is stale ({changed} files new or changed, {gone} gone)"
    if manifest.get("replaced") != expected.get("replaced"):
        return (
            f"the image cache {path} is stale (files changed or replaced, keeping their size "
            "and modification time)"
        )
    count, _, height, width = manifest["shape"]
    sizes = {path: numpy.prod(manifest["shape"])}
    if manifest["masks"]:
        sizes[masks_path(path)] = count * height * width
    for file, size in sizes.items():
        if not os.path.isfile(file) or os.path.getsize(file) != size:
            return f"the image cache {file} is not the size its manifest says"
    return None


def build(dataset: Dataset, path: str, expected: dict, args) -> dict:
    """Decode every sample into PATH (and its masks into PATH's masks file) and write the
    manifest, which it returns; unreadable images stop the build with their name, or with
    --skip-bad-images are left out and counted."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    outputs = [path, masks_path(path), manifest_path(path)]
    for leftover in [name for output in outputs for name in glob.glob(f"{output}.tmp-*")]:
        os.remove(leftover)  # from a build that was killed
    has_masks = expected["masks"]
    temporary = files.temporary_name(path)
    masks_temporary = files.temporary_name(masks_path(path))
    shape = (len(dataset), args.in_channels, args.image_size, args.image_size)
    # Its own generator: a loader without one draws from the global RNG, and a run that builds
    # the cache would then train on other random numbers than one that reads it.
    loader = DataLoader(
        Decoding(dataset, shape[1:], has_masks),
        batch_size=256,
        num_workers=args.workers,
        generator=torch.Generator(),
    )
    labels, skipped, kept = [], [], 0
    try:
        images = numpy.memmap(temporary, numpy.uint8, mode="w+", shape=shape)
        if has_masks:
            mask_shape = (shape[0], *shape[2:])
            masks = numpy.memmap(masks_temporary, numpy.uint8, mode="w+", shape=mask_shape)
        for batch, targets, readable, paths in tqdm(loader, desc="caching", unit="batch"):
            number = signals.requested()
            if number:  # the finally below removes what was written
                raise signals.Stopped(
                    number,
                    f"stopped by {signals.signal_name(number)} while building the cache {path}: "
                    "nothing kept; the next run builds it",
                )
            for path_index in (~readable).nonzero().flatten().tolist():
                if not args.skip_bad_images:
                    raise CacheError(
                        f"cannot read image {paths[path_index]}: fix or delete it, or pass "
                        "--skip-bad-images"
                    )
                skipped.append(paths[path_index])
            good = batch[readable].numpy()
            images[kept : kept + len(good)] = good
            if has_masks:
                masks[kept : kept + len(good)] = targets[readable].numpy()
            else:
                labels += targets[readable].tolist()
            kept += len(good)
        images.flush()
        del images
        os.truncate(temporary, kept * int(numpy.prod(shape[1:])))
        if has_masks:
            masks.flush()
            del masks
            os.truncate(masks_temporary, kept * int(numpy.prod(shape[2:])))
        manifest = {**expected, "shape": [kept, *shape[1:]], "classes": dataset_classes(dataset)}
        manifest |= {"labels": None if has_masks else labels, "skipped": skipped}
        publish(temporary, path, manifest, masks_temporary if has_masks else None)
    except OSError as error:
        raise CacheError(
            f"could not write the image cache {path}: {error.strerror or error}; pass "
            "--cache-dir to put it elsewhere"
        ) from None
    finally:
        files.remove_quietly(temporary)
        files.remove_quietly(masks_temporary)
    if skipped:
        print(
            f"warning: left out {len(skipped)} unreadable images: {skipped[0]}...", file=sys.stderr
        )
    size = sum(os.path.getsize(output) for output in outputs[: 2 if has_masks else 1]) / 2**20
    what = "images and masks" if has_masks else "images"
    print(f"cached {kept} {what} in {path} ({size:.1f} MB)", file=sys.stderr)
    return manifest


def publish(temporary: str, path: str, manifest: dict, masks_temporary: str | None) -> None:
    """Move the finished arrays into place, then write their manifest; the old manifest goes
    first, so that a kill in between leaves a cache without a manifest, which is rebuilt."""
    files.remove_quietly(manifest_path(path))
    if masks_temporary is not None:
        files.replace(masks_temporary, masks_path(path))
    files.replace(temporary, path)
    files.write_json(manifest_path(path), manifest)


class Decoding(Dataset):
    """Each sample of `dataset`: its image, its label (or uint8 mask), whether it could be read,
    and its file."""

    def __init__(self, dataset: Dataset, shape: tuple[int, ...], masks: bool = False):
        self.dataset = dataset
        self.shape = shape
        self.masks = masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        path = source_file(self.dataset, index)
        try:
            image, target = self.dataset[index]
        except (OSError, SyntaxError):  # what PIL raises for unreadable files
            target = torch.zeros(self.shape[1:], dtype=torch.uint8) if self.masks else -1
            return torch.zeros(self.shape, dtype=torch.uint8), target, False, path
        if self.masks:
            target = target.to(torch.uint8)
        return image, target, True, path


def source_file(dataset: Dataset, index: int) -> str:
    """The image file of sample `index`, to name it in a message ("" where it is not known):
    ImageFolder's `samples` hold (image, label), dataset.py's ImageMaskFiles' `pairs` (image,
    mask)."""
    for attribute in ("samples", "pairs"):
        if hasattr(dataset, attribute):
            return getattr(dataset, attribute)[index][0]
    return ""
