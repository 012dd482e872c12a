"""The segmentation datasets: --dataset NAME -> (training set, validation set).

A sample is (uint8 image (channels, size, size), int64 mask (size, size)) at --image-size: each
mask pixel holds the class index of its image pixel, or IGNORE_INDEX (255) where no loss or metric
counts it. image_pipeline.py augments and normalizes them on the device, moving each
mask with its image. DATASETS lists the names --dataset takes: add your own lines there.

With --cache, the datasets read from files (CACHEABLE) decode every image and mask once into
uint8 arrays (cache.py) and read whole batches from them; their masks come as uint8 (class indices
fit: 255 is IGNORE_INDEX), which task.prepare turns into int64 on the device. The checks of the
masks run when the cache is built, and again only when a file or --num-classes changes.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, random_split
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

import shapes
from cache import CacheError, cached
from image_pipeline import IGNORE_INDEX, has_image_extension, image_checker
from pipeline import DatasetError


def input_transform(in_channels: int, image_size: int):
    """PIL image -> uint8 tensor (in_channels, image_size, image_size): converted to grayscale
    or RGB and resized to the square, bilinear, without a crop, so that a predicted mask resized
    back to the image's own size lies on its pixels. (Only 1 and 3 channels come from files.)"""
    resize = transforms.Resize((image_size, image_size), transforms.InterpolationMode.BILINEAR)
    return transforms.Compose([ConvertMode(in_channels), resize, transforms.PILToTensor()])


class ConvertMode:
    """PIL image -> grayscale (1 channel) or RGB (any other count: 3)."""

    def __init__(self, in_channels: int):
        self.mode = "L" if in_channels == 1 else "RGB"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert(self.mode)


class MaskTransform:
    """PIL class-index mask (mode L or P) -> int64 tensor (image_size, image_size), resized
    nearest so that every pixel keeps a class index (or IGNORE_INDEX) of the original."""

    def __init__(self, image_size: int):
        self.size = (image_size, image_size)

    def __call__(self, mask: Image.Image) -> torch.Tensor:
        mask = mask.resize(self.size, Image.Resampling.NEAREST)
        return torch.from_numpy(numpy.array(mask, dtype=numpy.int64))


class PairTransform:
    """(PIL image, PIL mask) -> (uint8 image, int64 mask) of --in-channels and --image-size: the
    `transform` each builder of DATASETS gets, for datasets of image and mask files."""

    def __init__(self, in_channels: int, image_size: int):
        self.image = input_transform(in_channels, image_size)
        self.mask = MaskTransform(image_size)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.mask(mask)


class ImageMaskFiles(Dataset):
    """Pairs of image and mask files: copy it for your own data.

    A Dataset needs only `__len__` and `__getitem__(index) -> (image, mask)`: a uint8 image
    (channels, size, size) and an int64 mask (size, size) of class indices and IGNORE_INDEX.
    """

    def __init__(self, pairs: list[tuple[str, str]], transform, classes: list[str]):
        self.pairs = pairs
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            return self.transform(image, mask)


class SyntheticShapes(Dataset):
    """`size` images of 1 to 3 shapes (shapes.py draws them) on a background; the mask holds, at
    each pixel, the kind of the shape on top there (1 to num_classes - 1), or 0 (background).
    Learnable, and needs no files. Sample i always comes from seed + i."""

    def __init__(self, size: int, num_classes: int, in_channels: int, image_size: int, seed: int):
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        self.colours = shapes.palette(num_classes, in_channels)
        self.classes = ["background", *(f"shape{kind}" for kind in range(1, num_classes))]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + index)
        count = int(torch.randint(1, 4, (), generator=generator))
        kinds = torch.randint(1, self.num_classes, (count,), generator=generator).tolist()
        channels = self.colours.shape[1]
        image, masks, _ = shapes.draw(kinds, self.image_size, channels, self.colours, generator)
        target = torch.zeros(self.image_size, self.image_size, dtype=torch.int64)
        for kind, mask in zip(kinds, masks, strict=True):  # later shapes lie over earlier ones
            target[mask] = kind
        return image, target


def synthetic_datasets(args, transform):
    """Shapes drawn in code: --synthetic-size training images and a quarter as many to validate."""
    shape = (args.num_classes, args.in_channels, args.image_size)
    train = SyntheticShapes(args.synthetic_size, *shape, seed=args.seed)
    val = SyntheticShapes(max(args.synthetic_size // 4, 1), *shape, seed=args.seed + 10**6)
    return train, val


def folder_datasets(args, transform):
    """DATA_DIR/train/images and train/masks (and val/ so, or train/ split 90/10 by seed)."""
    data_dir = args.data_dir
    train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
    if not os.path.isdir(os.path.join(train_dir, "images")):
        raise DatasetError(
            f"no folder {os.path.join(train_dir, 'images')}: put the images in DATA_DIR/train/"
            "images and their masks (PNGs of the same names) in DATA_DIR/train/masks, and pass "
            "that DATA_DIR as --data-dir"
        )
    classes = folder_classes(data_dir, args.num_classes)
    # With --cache, the images are decoded (and so checked) when the cache is built.
    verify = not args.cache
    train_pairs = folder_pairs(train_dir, args.skip_bad_images, verify)
    if os.path.isdir(val_dir):
        val_pairs = folder_pairs(val_dir, args.skip_bad_images, verify)
        if not args.cache:
            check_pairs(train_pairs + val_pairs, args.num_classes)
        train = ImageMaskFiles(train_pairs, transform, classes)
        val = ImageMaskFiles(val_pairs, transform, classes)
        if args.cache:
            train, val = cached_folder(train, "train", args), cached_folder(val, "val", args)
        return train, val
    if not args.cache:
        check_pairs(train_pairs, args.num_classes)
    if len(train_pairs) < 2:
        raise DatasetError(
            f"{train_dir} has {len(train_pairs)} image: a 90/10 split needs 2 or more, or "
            f"give {val_dir} its own images and masks"
        )
    full = ImageMaskFiles(train_pairs, transform, classes)
    if args.cache:
        full = cached_folder(full, "all", args)
    val_size = max(len(full) // 10, 1)
    generator = torch.Generator().manual_seed(args.seed)
    train, val = random_split(full, [len(full) - val_size, val_size], generator)
    return train, val


def cached_folder(files: ImageMaskFiles, split: str, args):
    """`files` through the cache, its masks checked (check_pairs) only when it is built: the
    cache is rebuilt when a file or --num-classes changes."""
    digest = hashlib.sha1(os.path.abspath(args.data_dir).encode()).hexdigest()[:8]
    return cached(
        files,
        [path for pair in files.pairs for path in pair],
        f"folder-{split}-{digest}",
        args,
        masks=True,
        key={"num_classes": args.num_classes},
        before_build=lambda: check_pairs(files.pairs, args.num_classes, args.skip_bad_images),
    )


def folder_classes(data_dir: str, num_classes: int) -> list[str]:
    """The names in DATA_DIR/classes.txt (one a line, in class index order), else numbers."""
    path = os.path.join(data_dir, "classes.txt")
    if not os.path.isfile(path):
        return [str(index) for index in range(num_classes)]
    with open(path) as file:
        names = [line.strip() for line in file if line.strip()]
    if len(names) != num_classes:
        raise DatasetError(
            f"{path} names {len(names)} classes but --num-classes is {num_classes}: pass "
            f"--num-classes {len(names)}"
        )
    return names


def folder_pairs(
    split_dir: str, skip_bad_images: bool, verify: bool = True
) -> list[tuple[str, str]]:
    """(image, mask) paths of SPLIT/images/NAME.ext and SPLIT/masks/NAME.png, by stem; every
    image needs its mask and every mask its image. `verify`: open every image (image_checker),
    unreadable ones stopping the run or, with `skip_bad_images`, left out."""
    image_dir, mask_dir = os.path.join(split_dir, "images"), os.path.join(split_dir, "masks")
    if not os.path.isdir(mask_dir):
        raise DatasetError(
            f"no folder {mask_dir}: put the masks of {image_dir} there (PNGs of the same names)"
        )
    images = {}
    for name in sorted(os.listdir(image_dir)):
        path = os.path.join(image_dir, name)
        if has_image_extension(name) and os.path.isfile(path):
            stem = os.path.splitext(name)[0]
            if stem in images:
                raise DatasetError(
                    f"{images[stem]} and {path} share the name {stem}: their masks would be one "
                    "file; rename one of them (and its mask)"
                )
            images[stem] = path
    masks = {
        os.path.splitext(name)[0]: os.path.join(mask_dir, name)
        for name in sorted(os.listdir(mask_dir))
        if name.lower().endswith(".png")
    }
    for stem, path in images.items():
        if stem not in masks:
            raise DatasetError(
                f"image {path} has no mask {os.path.join(mask_dir, stem + '.png')}: add it (a "
                "class-index PNG of the same name) or remove the image"
            )
    for stem, path in masks.items():
        if stem not in images:
            raise DatasetError(
                f"mask {path} has no image {os.path.join(image_dir, stem)}.* (same name, any "
                "image extension): rename it to its image's name or remove it"
            )
    is_valid = image_checker(skip_bad_images) if verify else has_image_extension
    pairs = [(images[stem], masks[stem]) for stem in images if is_valid(images[stem])]
    if not pairs:
        raise DatasetError(
            f"no readable images in {image_dir}: put the images there (files ending "
            f"{', '.join(IMG_EXTENSIONS)}) and their masks in {mask_dir}"
        )
    return pairs


def check_pairs(
    pairs: list[tuple[str, str]], num_classes: int, skip_bad_images: bool = False
) -> None:
    """Before training: every mask single-channel, of its image's size, and with no class index
    of --num-classes or more (IGNORE_INDEX aside). Reads every mask once (in threads). An image
    that cannot be opened stops it too, unless `skip_bad_images` (the cache leaves it out)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = list(
            pool.map(lambda pair: mask_problem(*pair, num_classes, skip_bad_images), pairs)
        )
    problems = [problem for problem in found if problem]
    if problems:
        raise DatasetError(problems[0])


def mask_problem(
    image_path: str, mask_path: str, num_classes: int, skip_bad_images: bool = False
) -> str | None:
    """What is wrong with one mask, or None."""
    try:
        with Image.open(image_path) as image:
            image_size = image.size
    except (OSError, SyntaxError) as error:  # what PIL raises for unreadable files
        if skip_bad_images:
            return None
        return (
            f"cannot read image {image_path} ({error}): fix or delete it, or pass "
            "--skip-bad-images"
        )
    try:
        with Image.open(mask_path) as mask:
            if mask.mode not in ("L", "P"):
                return (
                    f"mask {mask_path} is a mode {mask.mode} image: save masks as single-channel "
                    "PNGs of class indices (mode L or P), 255 for pixels to ignore"
                )
            if mask.size != image_size:
                return (
                    f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                    f"{image_path} is {image_size[0]}x{image_size[1]}: give each mask its "
                    "image's size"
                )
            counts = mask.histogram()
    except (OSError, SyntaxError) as error:  # what PIL raises for unreadable files
        return f"cannot read mask {mask_path} ({error}): fix or delete it"
    largest = max(
        (value for value in range(len(counts)) if counts[value] and value != IGNORE_INDEX),
        default=0,
    )
    if largest >= num_classes:
        return (
            f"mask {mask_path} has class index {largest} but --num-classes is {num_classes}: "
            f"pass --num-classes {largest + 1}, or mark those pixels {IGNORE_INDEX} (ignored)"
        )
    return None


VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def voc_datasets(args, transform):
    """Pascal VOC 2012 segmentation from local files: DATA_DIR/VOCdevkit/VOC2012 (as the tar
    unpacks) or DATA_DIR itself being VOC2012. Never downloaded: fetch VOCtrainval_11-May-2012.tar
    from the Pascal VOC site and unpack it into DATA_DIR."""
    candidates = [os.path.join(args.data_dir, "VOCdevkit", "VOC2012"), args.data_dir]
    needed = ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation"))
    root = next(
        (path for path in candidates if all(os.path.isdir(os.path.join(path, n)) for n in needed)),
        None,
    )
    if root is None:
        raise DatasetError(
            f"Pascal VOC 2012 not found in {args.data_dir}: unpack VOCtrainval_11-May-2012.tar "
            f"there, so that {candidates[0]} holds JPEGImages, SegmentationClass and ImageSets "
            "(it is never downloaded)"
        )
    if args.num_classes != len(VOC_CLASSES):
        raise DatasetError(
            f"voc has {len(VOC_CLASSES)} classes but --num-classes is {args.num_classes}: "
            f"pass --num-classes {len(VOC_CLASSES)}"
        )
    splits = []
    for split in ("train", "val"):
        listing = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(listing):
            raise DatasetError(f"{listing} is missing: the VOC 2012 files are incomplete")
        with open(listing) as file:
            names = [line.strip() for line in file if line.strip()]
        pairs = [
            (
                os.path.join(root, "JPEGImages", f"{name}.jpg"),
                os.path.join(root, "SegmentationClass", f"{name}.png"),
            )
            for name in names
        ]
        for image_path, mask_path in pairs:
            for path in (image_path, mask_path):
                if not os.path.isfile(path):
                    raise DatasetError(
                        f"{path} is missing ({listing} lists it): the VOC 2012 files are "
                        "incomplete; unpack VOCtrainval_11-May-2012.tar again"
                    )
        files = ImageMaskFiles(pairs, transform, VOC_CLASSES)
        if args.cache:
            digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:8]
            sources = [path for pair in pairs for path in pair]
            files = cached(files, sources, f"voc-{split}-{digest}", args, masks=True)
        splits.append(files)
    return splits[0], splits[1]


# --dataset NAME -> builder(args, transform) -> (train_set, val_set); `transform` turns a PIL
# image and its PIL mask into the tensors a sample is made of (PairTransform).
CACHEABLE = ("folder", "voc")  # the datasets --cache can keep decoded, images and masks
DATASETS = {
    "synthetic": synthetic_datasets,
    "folder": folder_datasets,
    "voc": voc_datasets,
}
DATASETS_HELP = (
    "synthetic (1 to 3 shapes drawn in code on a background, class 0: learnable, no files), "
    "folder (DATA_DIR/train/images/NAME.jpg or .png etc. with DATA_DIR/train/masks/NAME.png, "
    "single-channel class-index PNGs, 255 = ignore; DATA_DIR/val likewise, or train is split "
    "90/10; class names from DATA_DIR/classes.txt, one a line), voc (Pascal VOC 2012 unpacked "
    "in DATA_DIR: DATA_DIR/VOCdevkit/VOC2012/JPEGImages, SegmentationClass and ImageSets)"
)
# Channels each dataset's images have before the transform converts them to --in-channels.
NATIVE_CHANNELS = {"synthetic": None}


def dataset_channels_problem(dataset: str, in_channels: int) -> str | None:
    """Why --dataset cannot give images of `in_channels` channels, or None when it can."""
    native = NATIVE_CHANNELS.get(dataset, 3)
    if native is not None and in_channels not in (1, 3, native):
        return f"--dataset {dataset} gives 1- or 3-channel images, not {in_channels}-channel ones"
    return None


def build_datasets(args) -> tuple[Dataset, Dataset]:
    """The training and validation sets of --dataset: uint8 images and int64 masks of
    --image-size."""
    if args.dataset not in DATASETS:
        raise DatasetError(
            f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}"
        )
    transform = PairTransform(args.in_channels, args.image_size)
    try:
        return DATASETS[args.dataset](args, transform)
    except CacheError as error:
        raise DatasetError(str(error)) from None


def class_names(dataset: Dataset) -> list[str] | None:
    """The names of the classes, in class index order, where the dataset knows them."""
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
