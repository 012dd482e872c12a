"""The image pipeline of the tasks that learn from images: decoding, and augmentation on the
training device.

Images travel as uint8 tensors (channels, height, width) at --image-size and --in-channels:
`image_transform` decodes and resizes one image at a time (in the DataLoader's workers), and
`Preprocess` augments and normalizes a whole batch at a time on the training device, moving dense
targets (masks) with their pixels. Preprocess is the one definition of what the model sees;
train.py (through task.py), predict.py and export.py all use it. The task's own datasets are in
dataset.py; the sampler and the DataLoader every task shares, in pipeline.py.
"""

import sys

import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from pipeline import DatasetError

MEAN, STD = 0.5, 0.5  # of every channel, for pixel values scaled to [0, 1]
IGNORE_INDEX = 255  # a mask value that no loss or metric counts: padding, unlabelled pixels


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
