"""Figure 4: the generated DataLoader over an ImageFolder of small PNGs, against in-memory tensors.

In one worker process: a folder of 32x32 RGB PNGs in 10 class folders (train/ and val/), read
through the project's own dataset.build_datasets (--dataset folder: ImageFolder, decode, resize,
crop, uint8 tensor) and dataset.build_loader, for 0, 1, 2... worker processes; the baseline is the
same build_loader over dataset.InMemoryImages (uint8 tensors, no decoding). Training normalizes
each batch after the loader, as train.py does, so the loaders deliver the same kind of images.

Loader alone: samples per second over whole epochs after a first, untimed epoch (which starts
the persistent workers). Training: the bare loop (bare_loop.py) fed by each loader, optimizer steps
per second after warm-up; training is data-bound at a worker count when it reaches less than 95%
of the in-memory rate.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Context,
    Row,
    StepClock,
    in_memory_sets,
    median,
    rate,
    run_worker,
    set_threads,
    worker_main,
)

BOUND = 0.95  # training at or above this share of the in-memory rate is not data-bound
BATCH = 32


def measure(ctx: Context) -> list[Row]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = [0, 1] if ctx.quick else list(range(0, max(cores, 2) + 2))
    config = {
        "project": str(ctx.projects["plain"]),
        "images": 128 if ctx.quick else 512,
        "workers": workers,
        "threads": ctx.threads,
        "folder": str(ctx.work / "images"),
        # model -> (optimizer steps, warm-up steps) of each training run
        "models": {"lenet": (20, 5)} if ctx.quick else {"lenet": (80, 20), "resnet18": (12, 3)},
        "repeats": 1 if ctx.quick else 2,
    }
    ctx.log(f"data pipeline: {config['images']} PNGs, workers {workers}")
    ctx.record(
        4,
        "in-process dataset.build_loader(build_datasets(--dataset folder --data-dir $WORK/images), "
        f"ShardedSampler, batch_size={BATCH}, workers=W, pin_memory=False, seed=0) "
        "vs build_loader(InMemoryImages(tensors), ..., workers=0)",
    )
    ctx.record(4, "in-process bare_loop.bare_train(model, each loader above, steps)")
    result = run_worker("data_pipeline", config, ctx)
    memory = median(result["loader"]["memory"])
    rows = [
        Row(
            4,
            f"scanning the ImageFolder ({config['images']} PNGs, every image verified)",
            f"{result['scan_seconds']:.3f} s",
            "",
            None,
            "",
            "info",
        )
    ]
    for count in workers:
        value = median(result["loader"][str(count)])
        rows.append(
            Row(
                4,
                f"loader alone, PNG ImageFolder, {count} workers",
                rate(value, "samples/s"),
                rate(memory, "samples/s") + " (in-memory, 0 workers)",
                value / memory,
                "",
                "info",
            )
        )
    for model in config["models"]:
        baseline = median(result["train"][model]["memory"])
        first_free = None
        for count in workers:
            value = median(result["train"][model][str(count)])
            ratio = value / baseline
            bound = ratio < BOUND
            if not bound and first_free is None:
                first_free = count
            rows.append(
                Row(
                    4,
                    f"training {model}, batch {BATCH}, on PNGs, {count} workers",
                    rate(value * BATCH, "samples/s"),
                    rate(baseline * BATCH, "samples/s") + " (in-memory)",
                    ratio,
                    f">= {BOUND}: not data-bound",
                    "data-bound" if bound else "not data-bound",
                )
            )
        rows.append(
            Row(
                4,
                f"workers at which training {model} stops being data-bound ({cores} cores)",
                str(first_free) if first_free is not None else f"none of 0-{workers[-1]}",
                "",
                None,
                "",
                "info",
            )
        )
    return rows


def make_images(folder: Path, count: int) -> None:
    """`count` training PNGs and count/8 validation PNGs, 32x32 RGB noise, in 10 classes."""
    import numpy
    from PIL import Image

    generator = numpy.random.default_rng(0)
    for split, size in (("train", count), ("val", max(count // 8, 10))):
        for index in range(size):
            target = folder / split / f"class{index % 10}"
            target.mkdir(parents=True, exist_ok=True)
            pixels = generator.integers(0, 256, (32, 32, 3), dtype=numpy.uint8)
            Image.fromarray(pixels).save(target / f"{index:05d}.png")


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import dataset
    from bare_loop import DataOptions, bare_train
    from model import build_model

    folder = Path(config["folder"])
    make_images(folder, config["images"])
    args = DataOptions(
        dataset="folder", data_dir=str(folder), num_classes=10, in_channels=3, image_size=32,
        augment=False, skip_bad_images=False, seed=0, fake_size=0,
    )  # fmt: skip
    start = time.perf_counter()
    png_set, _ = dataset.build_datasets(args)
    scan_seconds = time.perf_counter() - start
    (images, labels), _ = in_memory_sets(torch, len(png_set), 0)
    memory_set = dataset.InMemoryImages(images, labels)

    def loader(data, workers):
        sampler = dataset.ShardedSampler(len(data), shuffle=True, seed=0)
        return dataset.build_loader(data, sampler, BATCH, workers, False, 0)

    def loader_rate(data, workers, epochs) -> float:
        batches = loader(data, workers)
        for _ in batches:  # starts the persistent workers
            pass
        start, samples = time.perf_counter(), 0
        for _ in range(epochs):
            for images, _ in batches:
                samples += len(images)
        elapsed = time.perf_counter() - start
        del batches
        return samples / elapsed

    def train_rate(model_name, data, workers, steps, warmup) -> float:
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3, 32)
        clock = StepClock(warmup, steps, False)
        try:
            bare_train(model, loader(data, workers), steps)
        finally:
            clock.close()
        return clock.steps_per_second()

    result = {"scan_seconds": scan_seconds, "loader": {"memory": []}, "train": {}}
    for count in config["workers"]:
        result["loader"][str(count)] = []
    for rep in range(config["repeats"]):
        order = ["memory", *config["workers"]]
        for key in order if rep % 2 == 0 else reversed(order):
            data, workers = (memory_set, 0) if key == "memory" else (png_set, key)
            result["loader"][str(key)].append(loader_rate(data, workers, 2))
    for model_name, (steps, warmup) in config["models"].items():
        runs = result["train"][model_name] = {"memory": []}
        for count in config["workers"]:
            runs[str(count)] = []
        for rep in range(config["repeats"]):
            order = ["memory", *config["workers"]]
            for key in order if rep % 2 == 0 else reversed(order):
                data, workers = (memory_set, 0) if key == "memory" else (png_set, key)
                runs[str(key)].append(train_rate(model_name, data, workers, steps, warmup))
    return result


if __name__ == "__main__":
    worker_main(worker)
