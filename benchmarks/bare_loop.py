"""The baseline: the plainest PyTorch loop that trains the same thing as a generated train.py.

Same model (the project's own model.build_model, seeded as train.py seeds it), same optimizer
(train.py's defaults: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 in a classification project;
AdamW, lr 0.001, weight decay 1e-4 in a segmentation one), same batch size, a plain
torch DataLoader over the same dataset, the same number of optimizer steps; with --amp and
--channels-last the same autocast, GradScaler and memory format. The same essential work on the
data too: the datasets yield uint8 images, and both loops convert and normalize whole batches on
the training device with the same three operators (to float, multiply, subtract), as the
project's image_pipeline.Preprocess does without --augment. The loss is the same cross-entropy,
written in place: where the generated loop goes through task.prepare and task.loss (the task
module of the project), this one stays a plain PyTorch loop; for a segmentation project (batches
of images and masks) the per-pixel cross-entropy that skips the ignore value 255,
nn.CrossEntropyLoss's own. Nothing else: no progress bar, no metrics, no running loss, no LR
schedule, no validation, no checkpoint, no hooks.

As a script (for peak-RSS measurements, figure 6):

    python benchmarks/bare_loop.py --project DIR --model lenet --fake-size 2048 --steps 64
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

MEAN, STD = 0.5, 0.5  # the project's image_pipeline.MEAN and STD
IGNORE_INDEX = 255  # a segmentation project's image_pipeline.IGNORE_INDEX: pixels no loss counts
# train.py's SGD defaults (tests/test_benchmarks.py checks them against a generated options.py)
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
ADAMW_LR = 0.001  # and with --optimizer adamw, a segmentation project's default


class DataOptions(argparse.Namespace):
    """The options the project's dataset.build_datasets reads. Any other option, one added to
    train.py since, reads as None: off, as train.py's switches are by default."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats normalized by MEAN and STD; other batches pass unchanged."""
    if images.dtype != torch.uint8:
        return images
    return images.float().mul_(1 / (255 * STD)).sub_(MEAN / STD)


def plain_loader(dataset, batch_size: int, workers: int, pin_memory: bool, seed: int = 0):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def bare_train(
    model: nn.Module,
    loader,
    steps: int,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    optimizer_name: str = "sgd",
) -> None:
    """`steps` optimizer steps of `model` over `loader` (epochs repeat as needed). Its batches are
    (images, labels), or (images, masks) for a segmentation model: the loss is the same."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py does
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    model.train()
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=ADAMW_LR, weight_decay=WEIGHT_DECAY)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)  # no label is 255 but in masks
    scaler = torch.amp.GradScaler(device.type) if amp and device.type == "cuda" else None
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    step = 0
    while step < steps:
        for images, labels in loader:
            images = normalize(images.to(device, non_blocking=True))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, amp_dtype, enabled=amp):
                loss = criterion(model(images), labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="a generated project (its model.py)")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--dataset", default="fake", help="the project's --dataset")
    parser.add_argument("--fake-size", type=int, default=2048)
    parser.add_argument("--synthetic-size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.project)
    from dataset import build_datasets
    from model import build_model

    torch.manual_seed(0)
    model = build_model(args.model, 10, 3, 32)
    data_args = DataOptions(
        dataset=args.dataset,
        fake_size=args.fake_size,
        synthetic_size=args.synthetic_size,
        num_classes=10,
        in_channels=3,
        image_size=32,
        augment=False,
        seed=0,
    )
    train_set, _ = build_datasets(data_args)
    loader = plain_loader(train_set, args.batch_size, args.workers, args.device == "cuda")
    bare_train(model, loader, args.steps, args.device, args.amp, args.channels_last)


if __name__ == "__main__":
    main()
