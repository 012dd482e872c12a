"""The image pipeline every task shares: decoding, device-side augmentation, the resumable sampler
and the DataLoader.

Images travel as uint8 tensors (channels, height, width) at --image-size and --in-channels:
`image_transform` decodes and resizes one image at a time (in the DataLoader's workers), and
`Preprocess` augments and normalizes a whole batch at a time on the training device, moving dense
targets (masks) with their pixels. Preprocess is the one definition of what the model sees;
train.py, predict.py and export.py all use it. The task's own datasets are in dataset.py.
"""

import math
import sys

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from cache import CachedImages, whole_batch
from signals import ignore_stop_signals

MEAN, STD = 0.5, 0.5  # of every channel, for pixel values scaled to [0, 1]
IGNORE_INDEX = 255  # a mask value that no loss or metric counts: padding, unlabelled pixels


class DatasetError(Exception):
    """A dataset that cannot be used as asked; the message says what to do."""


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
    channels-last memory format when asked. Masks given with the images get the same crops and
    flips (padding marked IGNORE_INDEX), so every label stays on its pixel.

    The random draws come from the device's default generator, whose state every checkpoint
    holds, so a resumed run augments exactly as an uninterrupted one, whatever --workers.
    Batches that are not uint8 (a dataset of your own that normalizes itself) pass unchanged.
    """

    def __init__(self, augment: bool = False, padding: int = 0, channels_last: bool = False):
        self.augment = augment
        self.padding = padding
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        """The model's input; with `masks` (batch, height, width), the pair (input, masks)."""
        if images.dtype == torch.uint8:
            if self.augment:
                images, masks = random_crop_and_flip(images, self.padding, masks)
            images = images.float().mul_(1 / (255 * STD)).sub_(MEAN / STD)
            if self.channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
        return images if masks is None else (images, masks)


def random_crop_and_flip(images: torch.Tensor, padding: int, masks: torch.Tensor | None = None):
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip, for a whole batch:
    each image gets its own crop offset and coin flip, in a few batched operations; its mask, if
    any, the same ones. Returns (images, masks)."""
    count, _, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, [padding] * 4).permute(0, 2, 3, 1)
    offsets = torch.randint(0, 2 * padding + 1, (2, count, 1), device=device)
    rows = offsets[0] + torch.arange(height, device=device)
    columns = offsets[1] + torch.arange(width, device=device)
    flipped = torch.rand(count, 1, device=device) < 0.5
    columns = torch.where(flipped, columns.flip(1), columns)
    batch = torch.arange(count, device=device)[:, None, None]
    pixels = (batch, rows[:, :, None], columns[:, None, :])
    images = padded[pixels].permute(0, 3, 1, 2)
    if masks is not None:
        masks = torch.nn.functional.pad(masks, [padding] * 4, value=IGNORE_INDEX)[pixels]
    return images, masks


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


def build_loader(dataset, sampler, batch_size, workers, pin_memory, seed, collate=None):
    """The DataLoader of `dataset`; `collate` makes a batch of samples (default: stack them)."""
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
        collate_fn=whole_batch if is_cached(dataset) else collate,
        # Its own generator: otherwise each new iterator draws from the global RNG and a resumed
        # run would see different random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
