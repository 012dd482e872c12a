"""Datasets, the image pipeline, the resumable sampler and the DataLoader.

Images travel as uint8 tensors (channels, height, width) at --image-size and --in-channels:
`image_transform` decodes and resizes one image at a time (in the DataLoader's workers), and
`Preprocess` augments and normalizes a whole batch at a time on the training device. Preprocess
is the one definition of what the model sees; train.py, predict.py and export.py all use it.
"""

import glob
import hashlib
import math
import os
import sys

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, random_split
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from cache import CachedImages, CacheError, cached, whole_batch
from runs import ignore_stop_signals

MEAN, STD = 0.5, 0.5  # of every channel, for pixel values scaled to [0, 1]


class DatasetError(Exception):
    """A dataset that cannot be used as asked; the message says what to do."""


class InMemoryImages(Dataset):
    """An example Dataset: images and labels held in tensors. Copy it for your own data.

    A Dataset needs only `__len__` and `__getitem__(index) -> (image, label)`. Return uint8
    images (channels, height, width), as the built-in datasets do, and train.py augments and
    normalizes them on the device; float images are taken as already normalized.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def image_transform(native_channels: int | None, in_channels: int, image_size: int):
    """PIL image -> uint8 tensor (in_channels, image_size, image_size): the short side resized,
    the centre cropped, the channels converted. native_channels None: images are already so."""
    steps = []
    if native_channels is not None:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        if in_channels != native_channels:
            steps.append(transforms.Grayscale(num_output_channels=in_channels))
    steps.append(transforms.PILToTensor())
    return transforms.Compose(steps)


class Preprocess:
    """A batch of uint8 images on the training device -> what the model takes: random crops with
    padding and horizontal flips when augmenting, floats normalized by MEAN and STD, and the
    channels-last memory format when asked.

    The random draws come from the device's default generator, whose state every checkpoint
    holds, so a resumed run augments exactly as an uninterrupted one, whatever --workers.
    Batches that are not uint8 (a dataset of your own that normalizes itself) pass unchanged.
    """

    def __init__(self, augment: bool = False, padding: int = 0, channels_last: bool = False):
        self.augment = augment
        self.padding = padding
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if self.augment:
            images = random_crop_and_flip(images, self.padding)
        images = images.float().mul_(1 / (255 * STD)).sub_(MEAN / STD)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def random_crop_and_flip(images: torch.Tensor, padding: int) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip, for a whole batch:
    each image gets its own crop offset and coin flip, in a few batched operations."""
    count, _, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, [padding] * 4).permute(0, 2, 3, 1)
    offsets = torch.randint(0, 2 * padding + 1, (2, count, 1), device=device)
    rows = offsets[0] + torch.arange(height, device=device)
    columns = offsets[1] + torch.arange(width, device=device)
    flipped = torch.rand(count, 1, device=device) < 0.5
    columns = torch.where(flipped, columns.flip(1), columns)
    batch = torch.arange(count, device=device)[:, None, None]
    return padded[batch, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


def fake_datasets(args, transform):
    """Random images and labels; sample i always comes from seed random_offset + i."""
    shape = (args.in_channels, args.image_size, args.image_size)
    train = datasets.FakeData(
        args.fake_size, shape, args.num_classes, transform, random_offset=args.seed
    )
    val_size = max(args.fake_size // 4, 1)
    val = datasets.FakeData(
        val_size, shape, args.num_classes, transform, random_offset=args.seed + 10**6
    )
    return train, val


def folder_datasets(args, transform):
    """DATA_DIR/train and DATA_DIR/val, or one DATA_DIR split 90/10 by seed."""
    data_dir, num_classes = args.data_dir, args.num_classes
    if not os.path.isdir(data_dir):
        raise DatasetError(
            f"data directory {data_dir} does not exist: pass --data-dir with one folder per class"
        )
    split_dirs = [os.path.join(data_dir, part) for part in ("train", "val")]
    # With --cache, the images are decoded (and so checked) when the cache is built.
    is_valid = has_image_extension if args.cache else image_checker(args.skip_bad_images)
    try:
        if all(os.path.isdir(path) for path in split_dirs):
            train = datasets.ImageFolder(split_dirs[0], transform, is_valid_file=is_valid)
            val = datasets.ImageFolder(split_dirs[1], transform, is_valid_file=is_valid)
            check_classes(split_dirs[0], train.classes, num_classes)
            if val.classes != train.classes:
                # ImageFolder numbers classes by sorted folder name: val's labels would be wrong.
                raise DatasetError(
                    f"{split_dirs[1]} has the class folders {', '.join(val.classes)} but "
                    f"{split_dirs[0]} has {', '.join(train.classes)}: give both the same ones"
                )
            if args.cache:
                train, val = cached_folder(train, "train", args), cached_folder(val, "val", args)
        else:
            full = datasets.ImageFolder(data_dir, transform, is_valid_file=is_valid)
            check_classes(data_dir, full.classes, num_classes)
            if args.cache:
                full = cached_folder(full, "all", args)
            val_size = max(len(full) // 10, 1)
            generator = torch.Generator().manual_seed(args.seed)
            train, val = random_split(full, [len(full) - val_size, val_size], generator)
    except FileNotFoundError as error:
        raise DatasetError(f"{data_dir}: {error}") from None
    return train, val


def check_classes(folder: str, classes: list[str], num_classes: int) -> None:
    if len(classes) != num_classes:
        raise DatasetError(
            f"{folder} has {len(classes)} class folders but --num-classes is {num_classes}: "
            f"pass --num-classes {len(classes)}"
        )


def cached_folder(folder: datasets.ImageFolder, split: str, args) -> CachedImages:
    name = f"folder-{split}-{hashlib.sha1(os.path.abspath(args.data_dir).encode()).hexdigest()[:8]}"
    return cached(folder, [path for path, _ in folder.samples], name, args)


def has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def image_checker(skip_bad_images: bool):
    """An ImageFolder `is_valid_file` that opens every image once, so a broken file is found
    before training starts instead of hours into it."""

    def is_valid_image(path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            with Image.open(path) as image:
                image.verify()
            return True
        except (OSError, SyntaxError) as error:  # what PIL raises for unreadable files
            if not skip_bad_images:
                raise DatasetError(
                    f"cannot read image {path} ({error}): fix or delete it, or pass "
                    "--skip-bad-images"
                ) from None
            print(f"warning: skipping unreadable image {path}", file=sys.stderr)
            return False

    return is_valid_image


def cifar10_datasets(args, transform):
    return torchvision_datasets(datasets.CIFAR10, "cifar-10-batches-py", args, transform)


def mnist_datasets(args, transform):
    return torchvision_datasets(datasets.MNIST, "MNIST/raw", args, transform)


def torchvision_datasets(dataset_class, folder, args, transform):
    """A torchvision dataset from --data-dir; fetched only with --download."""
    try:
        train = dataset_class(
            args.data_dir, train=True, transform=transform, download=args.download
        )
        val = dataset_class(args.data_dir, train=False, transform=transform, download=args.download)
    except RuntimeError:
        raise DatasetError(
            f"{dataset_class.__name__} files not found in {os.path.join(args.data_dir, folder)}: "
            "put them there or pass --download"
        ) from None
    if args.cache:
        sources = sorted(glob.glob(os.path.join(args.data_dir, folder, "*")))
        name = dataset_class.__name__.lower()
        train = cached(train, sources, f"{name}-train", args)
        val = cached(val, sources, f"{name}-val", args)
    return train, val


# --dataset NAME -> builder(args, transform) -> (train_set, val_set); `transform` turns an image
# into the uint8 tensor the model's batches are made of (image_transform).
CACHEABLE = ("folder", "cifar10", "mnist")  # the datasets --cache can keep decoded
DATASETS = {
    "fake": fake_datasets,
    "folder": folder_datasets,
    "cifar10": cifar10_datasets,
    "mnist": mnist_datasets,
}
# Channels each dataset's images have before the transform converts them to --in-channels.
NATIVE_CHANNELS = {"fake": None, "mnist": 1}


def dataset_channels_problem(dataset: str, in_channels: int) -> str | None:
    """Why --dataset cannot give images of `in_channels` channels, or None when it can."""
    native = NATIVE_CHANNELS.get(dataset, 3)
    if native is not None and in_channels not in (1, 3, native):
        return f"--dataset {dataset} gives 1- or 3-channel images, not {in_channels}-channel ones"
    return None


def build_datasets(args) -> tuple[Dataset, Dataset]:
    """The training and validation sets of --dataset, as uint8 images of --image-size."""
    if args.dataset not in DATASETS:
        raise DatasetError(
            f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}"
        )
    native_channels = NATIVE_CHANNELS.get(args.dataset, 3)
    transform = image_transform(native_channels, args.in_channels, args.image_size)
    try:
        return DATASETS[args.dataset](args, transform)
    except CacheError as error:
        raise DatasetError(str(error)) from None


def class_names(dataset: Dataset) -> list[str] | None:
    """The names of the classes, in label order, where the dataset knows them (not FakeData)."""
    if isinstance(dataset, Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    return [str(name) for name in names] if names is not None else None


class ShardedSampler(Sampler[int]):
    """One rank's share of the indices for one epoch, shuffled by (seed, epoch), from any position.

    Unlike DistributedSampler it can start mid-epoch (exact resume), and with pad=False it shards
    without repeating samples, so validation sums across ranks count every sample exactly once.
    """

    def __init__(self, length, shuffle, seed=0, rank=0, world_size=1, pad=True):
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch `epoch`, leaving out the first `skip` samples of this rank's share."""
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.pad:
            padded = math.ceil(self.length / self.world_size) * self.world_size
            order += order[: padded - self.length]
        return order[self.rank :: self.world_size][self.skip :]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        if self.pad:
            share = math.ceil(self.length / self.world_size)
        else:
            share = len(range(self.rank, self.length, self.world_size))
        return max(share - self.skip, 0)


def is_cached(dataset: Dataset) -> bool:
    return isinstance(dataset.dataset if isinstance(dataset, Subset) else dataset, CachedImages)


def build_loader(dataset, sampler, batch_size, workers, pin_memory, seed):
    if is_cached(dataset):
        # A cached batch is read in tens of microseconds; handing it over from a worker process
        # costs ten times that (measured: benchmarks/data_pipeline.py).
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
        collate_fn=whole_batch if is_cached(dataset) else None,
        # Its own generator: otherwise each new iterator draws from the global RNG and a resumed
        # run would see different random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
