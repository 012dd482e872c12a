"""Figure 4: the generated DataLoader over PNGs, with and without --cache, against tensors.

The data: 32x32 RGB PNGs of random pixels in 10 class folders, train/ (as many images as one epoch
of the training session below needs) and val/ (an eighth as many). Three ways to read them, each
through the project's own dataset.build_datasets and pipeline.build_loader (batch 32,
pipeline.ShardedSampler, no pinning):

- today's path (--dataset folder): ImageFolder, every image verified at start-up, then each image
  decoded by PIL, resized, cropped and turned into a uint8 tensor one at a time (in the
  DataLoader's workers, or in the loop's own thread with 0 workers), and the batch collated;
- --cache (cache.py): the same build_datasets with cache=True and --cache-dir in the scratch
  folder. The first call decodes every image once (with train.py's default of 2 workers) into a
  uint8 array file and a JSON manifest; its time and its size on disk are reported. Later calls
  check the manifest against the files, and batches come whole from the memory-mapped array
  (CachedImages.__getitems__, collate_fn whole_batch), read in the training process whatever
  --workers says (pipeline.build_loader: handing a batch over from a worker cost ten times reading
  it, measured here before that rule);
- in-memory tensors: dataset.InMemoryImages over uint8 tensors of the same shape, the baseline.

Loader alone: samples per second of each way, for 0, 1, 2... worker processes, in one worker
process, taking turns (the order reversed every other round): after a few batches that start the
persistent workers, whole epochs until at least 0.3 s have passed. The notes give the main
process's CPU time per batch, which with workers is what receiving a batch from another process
costs. Targets, at the same worker count: --cache at least 10x today's path and at least half
the rate of in-memory tensors.

Training, bare loop: bare_loop.py fed by each loader, optimizer steps per second after warm-up,
runs one after the other; training is data-bound at a worker count when it reaches less than 95%
of the rate on in-memory tensors (0 workers).

Training, generated loop: train.main(argv), unchanged, LeNet, batch 32, --workers 0, every other
flag at its default, on --cache (the cache built above), on the PNGs (today's path) and twice on
in-memory tensors (--dataset fake with dataset.InMemoryImages swapped in, as figure 3 does), in
one session of loops taking turns step by step (common.RoundRobin, as figure 3: each 10-step
window's rate over the geometric mean of the two in-memory loops' rates, on the thread's CPU
time; medians over windows and sessions). With --workers 0 all the data work runs on the timed
thread; with workers it would run in other processes during the other loops' turns and escape
the timing (the bare-loop rows above measure worker counts). Target: --cache at least 0.9 of
in-memory tensors, no longer data-bound.

Noticing replaced files (cache_check.py): opening the cache built above, as train.py does, with
the project's check of the source files (size and modification time of each, and one digest of
their inodes and ctimes, which catches a file replaced with its old size and time) against the
same with size and modification time alone (a second cache built so), on CPU time, in turns;
medians. Target: the digest adds at most 10% (ratio <= 1.1).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cache_check  # noqa: E402
from common import (  # noqa: E402
    Context,
    RoundRobin,
    Row,
    StepClock,
    check,
    in_memory_datasets,
    in_memory_sets,
    median,
    rate,
    run_worker,
    seconds,
    set_threads,
    spread,
    worker_main,
)

BOUND = 0.95  # training at or above this share of the in-memory rate is not data-bound
BATCH = 32
FASTER = 10  # target: --cache over today's path, loader alone
NEAR_MEMORY = 0.5  # target: --cache over in-memory tensors, loader alone
TRAINING = 0.9  # target: train.py on --cache over train.py on in-memory tensors
MIN_SECONDS = 0.3  # timed part of one loader measurement, at least
BUILD_WORKERS = 2  # train.py's default --workers, with which the cache is built
WINDOW = 10  # steps per timed window of the session: train.py's default --log-every
# quick -> optimizer steps per run, warm-up steps, sessions: figure 3's LeNet plan
SESSION = {True: (31, 10, 1), False: (221, 20, 4)}
MALLOC = {  # as figure 3: loops in threads share one malloc arena, with fixed thresholds
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(2**30),
    "MALLOC_TRIM_THRESHOLD_": str(2**31),
}


def measure(ctx: Context) -> list[Row]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = [0, 2] if ctx.quick else list(range(0, max(cores, 2) + 2))
    steps, warmup, sessions = SESSION[ctx.quick]
    config = {
        "project": str(ctx.projects["plain"]),
        # one epoch of the session's steps, rounded up to a multiple of 1024
        "images": -(-steps * BATCH // 1024) * 1024,
        "workers": workers,
        "threads": ctx.threads,
        "folder": str(ctx.work / "images"),
        "cache_dir": str(ctx.work / "images-cache"),
        # the second cache of cache_check.compare: files checked by size and time alone
        "old_cache_dir": str(ctx.work / "images-cache-size-and-time"),
        "check_repeats": 5 if ctx.quick else 21,
        # model -> (optimizer steps, warm-up steps) of each bare-loop training run
        "models": {"lenet": (20, 5)} if ctx.quick else {"lenet": (80, 20), "resnet18": (12, 3)},
        "repeats": 1 if ctx.quick else 2,
        "steps": steps,
        "warmup": warmup,
        "sessions": sessions,
    }
    ctx.log(f"data pipeline: {config['images']} PNGs, workers {workers}")
    ctx.record(
        4,
        "in-process pipeline.build_loader(dataset.build_datasets(--dataset folder "
        f"--data-dir $WORK/images), ShardedSampler, batch_size={BATCH}, workers=W, "
        "pin_memory=False, seed=0) vs the same with --cache --cache-dir $WORK/images-cache "
        "vs build_loader(InMemoryImages(tensors), ..., workers=W)",
    )
    ctx.record(4, "in-process bare_loop.bare_train(model, each loader above, steps)")
    ctx.record(
        4,
        "in-process cache_check.compare(): dataset.build_datasets(--dataset folder --data-dir "
        "$WORK/images --cache --cache-dir $WORK/images-cache) vs the same with cache.fingerprint "
        "of size and mtime alone and --cache-dir $WORK/images-cache-size-and-time, in turns",
    )
    result = run_worker("data_pipeline", {**config, "mode": "pipeline"}, ctx)
    ctx.log(f"data pipeline: train.py on --cache, PNGs, in-memory: {sessions} x {steps} steps")
    common = (
        f"--model lenet --batch-size {BATCH} --workers 0 --epochs 1 --max-steps {steps} "
        "--device cpu --output-dir $WORK/..."
    )
    ctx.record(
        4,
        f"in-process train.main(): {common} --dataset folder --data-dir $WORK/images --cache "
        "--cache-dir $WORK/images-cache",
    )
    ctx.record(4, f"in-process train.main(): {common} --dataset folder --data-dir $WORK/images")
    ctx.record(4, f"in-process train.main(): {common} --dataset fake (datasets: in-memory)")
    session = run_worker("data_pipeline", {**config, "mode": "session"}, ctx, env=MALLOC)
    return pipeline_rows(config, result, cores) + session_rows(session)


def pipeline_rows(config: dict, result: dict, cores: int) -> list[Row]:
    workers, loader = config["workers"], result["loader"]
    images = result["images"]

    def speed(kind: str, count: int) -> float:
        return median(loader[f"{kind}-{count}"])

    def cpu_per_batch(kind: str, count: int) -> str:
        return f"{median(result['loader_cpu'][f'{kind}-{count}']) * 1e6:,.0f} µs"

    memory = speed("memory", 0)
    best_png = max(speed("png", count) for count in workers)
    rows = [
        Row(
            4,
            f"scanning the ImageFolder ({images['train']} PNGs, every image verified)",
            seconds(result["scan_seconds"]),
        ),
        Row(
            4,
            f"--cache: building the cache of {images['train'] + images['val']} PNGs "
            f"(train/ and val/, {BUILD_WORKERS} workers)",
            seconds(result["build_seconds"]),
            f"{(images['train'] + images['val']) / best_png:.3f} s (one pass over the same PNGs, "
            "today's path, at its best worker count)",
            result["build_seconds"] * best_png / (images["train"] + images["val"]),
            "",
            "info",
            note=f"{result['build_seconds'] / (images['train'] + images['val']) * 1e6:.0f} µs per "
            "image: listing the files, decoding, writing the array and the manifest",
        ),
        Row(
            4,
            "--cache: size on disk (uint8 arrays and manifests, train/ and val/)",
            f"{result['cache_bytes'] / 2**20:.1f} MiB",
            f"{result['png_bytes'] / 2**20:.1f} MiB (the PNGs)",
            result["cache_bytes"] / result["png_bytes"],
            "",
            "info",
            note=f"{result['array_bytes'] / 2**20:.1f} MiB of pixels (3 x 32 x 32 bytes an image), "
            f"{(result['cache_bytes'] - result['array_bytes']) / 2**10:.0f} KiB of manifests; "
            "PNGs of random pixels do not compress, photographs would",
        ),
        Row(
            4,
            f"--cache: opening the built cache ({images['train']} files checked against the "
            "manifest)",
            seconds(result["open_seconds"]),
            seconds(result["scan_seconds"]) + " (scanning and verifying the ImageFolder)",
            result["open_seconds"] / result["scan_seconds"],
            "",
            "info",
        ),
        check_row(result["check"]),
    ]
    for count in workers:
        value = speed("png", count)
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
    for count in workers:
        cached, png, in_memory = speed("cache", count), speed("png", count), speed("memory", count)
        cpu = (
            f"main process CPU per batch: {cpu_per_batch('cache', count)} with --cache, "
            f"{cpu_per_batch('png', count)} on PNGs, {cpu_per_batch('memory', count)} in-memory"
        )
        rows.append(
            Row(
                4,
                f"loader alone, --cache vs PNG ImageFolder (today's path), --workers {count}",
                rate(cached, "samples/s"),
                rate(png, "samples/s") + " (PNGs)",
                cached / png,
                f">= {FASTER}",
                check(cached / png, ">=", FASTER),
                note=cpu,
            )
        )
        rows.append(
            Row(
                4,
                f"loader alone, --cache vs in-memory tensors, --workers {count}",
                rate(cached, "samples/s"),
                rate(in_memory, "samples/s") + f" (in-memory, {count} workers)",
                cached / in_memory,
                f">= {NEAR_MEMORY}",
                check(cached / in_memory, ">=", NEAR_MEMORY),
                note=(
                    f"in-memory tensors with 0 workers: {rate(memory, 'samples/s')}"
                    if count
                    else ""
                ),
            )
        )
    for model, runs in result["train"].items():
        baseline = median(runs["memory"])
        for kind, label in (("png", "on PNGs"), ("cache", "on --cache")):
            if f"{kind}-0" not in runs:
                continue
            first_free = None
            for count in workers:
                value = median(runs[f"{kind}-{count}"])
                ratio = value / baseline
                bound = ratio < BOUND
                if not bound and first_free is None:
                    first_free = count
                rows.append(
                    Row(
                        4,
                        f"training {model}, batch {BATCH}, {label}, {count} workers",
                        rate(value * BATCH, "samples/s"),
                        rate(baseline * BATCH, "samples/s") + " (in-memory)",
                        ratio,
                        f">= {BOUND}: not data-bound",
                        "data-bound" if bound else "not data-bound",
                    )
                )
            where = "" if kind == "png" else " on --cache"
            rows.append(
                Row(
                    4,
                    f"workers at which training {model}{where} stops being data-bound "
                    f"({cores} cores)",
                    str(first_free) if first_free is not None else f"none of 0-{workers[-1]}",
                )
            )
    return rows


def session_rows(session: dict) -> list[Row]:
    def speed(*kinds) -> str:
        wall = median([value for kind in kinds for value in session["rates"]["wall"][kind]])
        cpu = median([value for kind in kinds for value in session["rates"]["cpu"][kind]])
        return f"{rate(wall, 'steps/s')} ({rate(cpu, 'per CPU-s')})"

    def note(kind: str) -> str:
        ratios = session["ratios"]["cpu"][kind]
        return (
            f"ratio on CPU time, median of {len(ratios)} ({WINDOW}-step windows, 4 loops taking "
            f"turns step by step); quartiles {spread(ratios)}; on wall time "
            f"{median(session['ratios']['wall'][kind]):.3f}"
        )

    name = f"lenet, batch {BATCH}, --workers 0, default flags"
    cached = median(session["ratios"]["cpu"]["cache"])
    png = median(session["ratios"]["cpu"]["png"])
    control = median(session["ratios"]["cpu"]["again"])
    return [
        Row(
            4,
            f"steps/s train.py on --cache vs on in-memory tensors, {name}",
            speed("cache"),
            speed("memory", "again") + " in-memory",
            cached,
            f">= {TRAINING}",
            check(cached, ">=", TRAINING),
            note=note("cache"),
        ),
        Row(
            4,
            f"steps/s train.py on PNGs (today's path) vs on in-memory tensors, {name}",
            speed("png"),
            speed("memory", "again") + " in-memory",
            png,
            "",
            "info",
            note=note("png"),
        ),
        Row(
            4,
            f"noise control, train.py on in-memory tensors again / in-memory, {name}",
            speed("again"),
            speed("memory"),
            control,
            "",
            "info",
            note=note("again") + ": the spread that noise alone gives",
        ),
    ]


def check_row(figures: dict) -> Row:
    """What checking each file's inode and ctime too costs when the cache is opened."""
    ratio = figures["ratio"]
    return Row(
        4,
        f"--cache: noticing replaced files (inode and ctime checked too) vs size and mtime "
        f"alone, opening the cache ({figures['files']} files)",
        seconds(figures["open_full_s"]),
        seconds(figures["open_size_and_time_s"]) + " (size and mtime alone)",
        ratio,
        f"<= {cache_check.TARGET}",
        check(ratio, "<=", cache_check.TARGET),
        note=f"CPU time, median of {figures['repeats']} opens of each, in turns: "
        f"{figures['added_us_per_file']:+.2f} µs a file; a cheap content hash instead (blake2b "
        f"of each file's first and last {cache_check.EDGE // 1024} KiB) takes "
        f"{seconds(figures['edge_hash_s'])} by itself, "
        f"{figures['edge_hash_share_of_open']:.1f} x opening the cache",
    )


def make_images(folder: Path, count: int) -> dict[str, int]:
    """`count` training PNGs and count/8 validation PNGs, 32x32 RGB noise, in 10 classes."""
    import numpy
    from PIL import Image

    generator = numpy.random.default_rng(0)
    sizes = {"train": count, "val": max(count // 8, 10)}
    for split, size in sizes.items():
        for index in range(size):
            target = folder / split / f"class{index % 10}"
            target.mkdir(parents=True, exist_ok=True)
            pixels = generator.integers(0, 256, (32, 32, 3), dtype=numpy.uint8)
            Image.fromarray(pixels).save(target / f"{index:05d}.png")
    return sizes


def data_options(folder: Path, **more):
    from bare_loop import DataOptions

    return DataOptions(
        dataset="folder", data_dir=str(folder), num_classes=10, in_channels=3, image_size=32,
        augment=False, skip_bad_images=False, seed=0, fake_size=0, **more,
    )  # fmt: skip


def folder_bytes(folder: Path, suffix: str = "") -> int:
    return sum(path.stat().st_size for path in folder.rglob(f"*{suffix}") if path.is_file())


def pipeline_worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import dataset
    import pipeline
    from bare_loop import bare_train
    from model import build_model

    folder, cache_dir = Path(config["folder"]), Path(config["cache_dir"])
    images = make_images(folder, config["images"])
    start = time.perf_counter()
    png_set, _ = dataset.build_datasets(data_options(folder))
    scan_seconds = time.perf_counter() - start
    cache_args = data_options(folder, cache=True, cache_dir=str(cache_dir), workers=BUILD_WORKERS)
    start = time.perf_counter()
    dataset.build_datasets(cache_args)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cache_set, _ = dataset.build_datasets(cache_args)
    open_seconds = time.perf_counter() - start
    assert pipeline.reads_whole_batches(
        cache_set
    ), "build_datasets(cache=True) gave no CachedImages"
    import cache

    old_args = data_options(
        folder, cache=True, cache_dir=config["old_cache_dir"], workers=BUILD_WORKERS
    )
    check = cache_check.compare(cache, dataset, cache_args, old_args, config["check_repeats"])
    (memory_images, labels), _ = in_memory_sets(torch, len(png_set), 0)
    memory_set = dataset.InMemoryImages(memory_images, labels)
    sets = {"memory": memory_set, "png": png_set, "cache": cache_set}

    def loader(data, workers):
        sampler = pipeline.ShardedSampler(len(data), shuffle=True, seed=0)
        return pipeline.build_loader(data, sampler, BATCH, workers, False, 0)

    def loader_rate(data, workers) -> tuple[float, float]:
        """Samples per second, and the main process's CPU seconds per batch."""
        batches = loader(data, workers)
        for index, _ in enumerate(batches):  # starts the persistent workers
            if index > 2 * workers:
                break
        start, cpu, samples, count = time.perf_counter(), time.process_time(), 0, 0
        while True:
            for images, _ in batches:
                samples += len(images)
                count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= MIN_SECONDS:
                break
        cpu = time.process_time() - cpu
        del batches  # its worker processes end here, not at exit
        return samples / elapsed, cpu / count

    def train_rate(model_name, data, workers, steps, warmup) -> float:
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3, 32)
        clock = StepClock(warmup, steps, False)
        try:
            bare_train(model, loader(data, workers), steps)
        finally:
            clock.close()
        return clock.steps_per_second()

    keys = [(kind, count) for count in config["workers"] for kind in sets]
    result = {
        "images": images,
        "scan_seconds": scan_seconds,
        "build_seconds": build_seconds,
        "open_seconds": open_seconds,
        "check": cache_check.summary(check),
        "png_bytes": folder_bytes(folder, ".png"),
        "cache_bytes": folder_bytes(cache_dir),
        "array_bytes": folder_bytes(cache_dir, ".u8"),
        "loader": {f"{kind}-{count}": [] for kind, count in keys},
        "loader_cpu": {f"{kind}-{count}": [] for kind, count in keys},
        "train": {},
    }
    for rep in range(config["repeats"]):
        for kind, count in keys if rep % 2 == 0 else reversed(keys):
            samples, cpu = loader_rate(sets[kind], count)
            result["loader"][f"{kind}-{count}"].append(samples)
            result["loader_cpu"][f"{kind}-{count}"].append(cpu)
    for model_name, (steps, warmup) in config["models"].items():
        kinds = ["png", "cache"] if model_name == "lenet" else ["png"]
        order = ["memory"] + [f"{kind}-{count}" for kind in kinds for count in config["workers"]]
        runs = result["train"][model_name] = {key: [] for key in order}
        for rep in range(config["repeats"]):
            for key in order if rep % 2 == 0 else reversed(order):
                kind, _, count = key.partition("-")
                data, workers = sets[kind], int(count or 0)
                runs[key].append(train_rate(model_name, data, workers, steps, warmup))
    return result


def session_worker(config: dict) -> dict:
    """train.main on --cache, on the PNGs and twice on in-memory tensors, taking turns."""
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import dataset
    import train

    steps, warmup = config["steps"], config["warmup"]
    in_memory = in_memory_datasets(torch, dataset, BATCH * steps, BATCH * 2)
    from_files = train.build_datasets
    train.build_datasets = lambda args: in_memory if args.dataset == "fake" else from_files(args)
    scratch = tempfile.mkdtemp(prefix="train-", dir=os.getcwd())  # in run.py's scratch folder
    folder = ["--dataset", "folder", "--data-dir", config["folder"]]
    data = {
        "memory": ["--dataset", "fake", "--fake-size", str(BATCH * steps)],
        "cache": [*folder, "--cache", "--cache-dir", config["cache_dir"]],
        "png": folder,
    }
    data["again"] = data["memory"]

    def run(kind: str) -> None:
        train.main([
            "--model", "lenet", "--batch-size", str(BATCH), "--workers", "0", "--epochs", "1",
            "--max-steps", str(steps), "--device", "cpu", "--output-dir",
            tempfile.mkdtemp(dir=scratch), *data[kind],
        ])  # fmt: skip

    kinds = ["memory", "cache", "png", "again"]
    result = {
        "rates": {clock: {kind: [] for kind in kinds} for clock in ("wall", "cpu")},
        "ratios": {clock: {kind: [] for kind in kinds[1:]} for clock in ("wall", "cpu")},
    }
    for rep in range(config["sessions"]):
        session = RoundRobin(kinds, steps, seed=rep)
        session.run({kind: (lambda kind=kind: run(kind)) for kind in kinds})
        for clock in ("wall", "cpu"):
            rates = {
                kind: session.window_rates(kind, warmup, WINDOW, cpu=clock == "cpu")
                for kind in kinds
            }
            for window in range(min(len(values) for values in rates.values())):
                measured = {kind: rates[kind][window] for kind in kinds}
                baseline = math.sqrt(measured["memory"] * measured["again"])
                for kind in kinds:
                    result["rates"][clock][kind].append(measured[kind])
                for kind in ("cache", "png"):
                    result["ratios"][clock][kind].append(measured[kind] / baseline)
                result["ratios"][clock]["again"].append(measured["again"] / measured["memory"])
    return result


def worker(config: dict) -> dict:
    return (pipeline_worker if config["mode"] == "pipeline" else session_worker)(config)


if __name__ == "__main__":
    worker_main(worker)
