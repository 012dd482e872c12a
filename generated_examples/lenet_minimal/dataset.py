"""The classification datasets: --dataset NAME -> (training set, validation set).

A sample is (uint8 image (channels, height, width), class index); image_pipeline.py augments and
normalizes them on the device. DATASETS lists the names --dataset takes: `scaffold add dataset`
adds its own lines there, and so can you.
"""

import glob
import hashlib
import os

import torch
from torch.utils.data import Dataset, Subset, random_split
from torchvision import datasets

import shapes
from cache import CachedImages, CacheError, cached
from image_pipeline import has_image_extension, image_checker, image_transform
from pipeline import DatasetError


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


class SyntheticShapes(Dataset):
    """`size` images of one shape each, its kind the label (shapes.py draws them): learnable,
    unlike FakeData's random labels, and needs no files. Sample i always comes from seed + i."""

    def __init__(self, size: int, num_classes: int, in_channels: int, image_size: int, seed: int):
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.colours = shapes.palette(num_classes, in_channels)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed + index)
        label = int(torch.randint(self.num_classes, (), generator=generator))
        image, _, _ = shapes.draw(
            [label], self.image_size, len(self.colours[0]), self.colours, generator
        )
        return image, label


def synthetic_datasets(args, transform):
    """Shapes drawn in code: --synthetic-size training images and a quarter as many to validate."""
    shape = (args.num_classes, args.in_channels, args.image_size)
    train = SyntheticShapes(args.synthetic_size, *shape, seed=args.seed)
    val = SyntheticShapes(max(args.synthetic_size // 4, 1), *shape, seed=args.seed + 10**6)
    return train, val


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
# into the uint8 tensor the model's batches are made of (image_pipeline.image_transform).
CACHEABLE = ("folder", "cifar10", "mnist")  # the datasets --cache can keep decoded
DATASETS = {
    "synthetic": synthetic_datasets,
    "fake": fake_datasets,
    "folder": folder_datasets,
    "cifar10": cifar10_datasets,
    "mnist": mnist_datasets,
}
DATASETS_HELP = (
    "synthetic (shapes drawn in code, one class per kind: learnable, no files), "
    "fake (random images and labels), folder (DATA_DIR/CLASS/IMAGE, or DATA_DIR/train and "
    "DATA_DIR/val so), cifar10 and mnist (torchvision's files in DATA_DIR)"
)
# Channels each dataset's images have before the transform converts them to --in-channels.
NATIVE_CHANNELS = {"synthetic": None, "fake": None, "mnist": 1}


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


def options_from_data(dataset: Dataset) -> dict:
    """The model options that the data decides: none here (--num-classes is an option)."""
    return {}


def checkpoint_metadata(dataset: Dataset) -> dict:
    """What each checkpoint keeps of the data: the class names (predict.py prints them)."""
    return {"class_names": class_names(dataset)}
