"""Figure 3: the generated train.py against the bare loop, steps per second after warm-up.

One worker process per (model, device). In it, train.main(argv) of a generated project and
bare_loop.bare_train run in turns, alternating which goes first (ABBA...), repeated; each run is
timed by the same global optimizer step post-hook (common.StepClock): the time from the end of
optimizer step `warmup` to the end of the last step, divided by the steps in between. That window
holds everything a training step costs in either loop (data loading, forward, backward, the
optimizer, and in train.py the progress bar, loss accumulation, LR scheduler, hooks and the
metrics lines of logged steps); it holds no set-up, no validation and no checkpoint, which come
after the last step and are timed separately (per-epoch checkpoint cost).

Data: both loops read the same in-memory tensors (the project's dataset.InMemoryImages, swapped
in for train.build_datasets), with --workers 0, so that neither image decoding nor worker processes
hide the loop's own cost; figure 4 measures the data pipeline by itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    NO_GPU,
    Context,
    Row,
    StepClock,
    check,
    in_memory_sets,
    median,
    rate,
    run_worker,
    set_threads,
    worker_main,
)

EPOCH_SAMPLES = 50_000  # a CIFAR-10-sized epoch, to put the checkpoint cost in proportion

# (model, device) -> batch size, optimizer steps per run, warm-up steps, repetitions
FULL = {
    ("lenet", "cpu"): (32, 200, 20, 5),
    ("resnet18", "cpu"): (32, 24, 4, 3),
    ("lenet", "cuda"): (32, 400, 50, 5),
    ("resnet18", "cuda"): (32, 200, 30, 5),
}
QUICK = {
    ("lenet", "cpu"): (32, 40, 8, 1),
    ("resnet18", "cpu"): (32, 5, 2, 1),
    ("lenet", "cuda"): (32, 60, 20, 1),
    ("resnet18", "cuda"): (32, 40, 10, 1),
}
VARIANTS = {"default": [], "hooks": ["--hooks", "activations,gradients"]}


def gpu_flags(device: str) -> list[str]:
    return ["--amp", "--channels-last"] if device == "cuda" else []


def measure(ctx: Context) -> list[Row]:
    rows = []
    for device in ("cpu", "cuda"):
        label = "CPU" if device == "cpu" else "CUDA, --amp --channels-last"
        for model in ("lenet", "resnet18"):
            batch, steps, warmup, reps = (QUICK if ctx.quick else FULL)[(model, device)]
            name = f"{model}, {label}, batch {batch}"
            if device not in ctx.devices:
                reason = NO_GPU if device == "cuda" and not ctx.cuda_available else "--device"
                for variant, target in (("default flags", ">= 0.98"), ("hooks on", ">= 0.90")):
                    rows.append(
                        Row(3, f"steps/s {name}, {variant}", "—", "—", None, target,
                            f"not measured: {reason}")
                    )
                continue
            ctx.log(f"training loop: {model} on {device} ({reps} x {steps} steps)")
            result = run_worker(
                "training",
                {
                    "project": str(ctx.projects["plain"]),
                    "model": model,
                    "device": device,
                    "batch": batch,
                    "steps": steps,
                    "warmup": warmup,
                    "reps": reps,
                    "threads": ctx.threads,
                    "attribute": model == "lenet" and not ctx.quick,
                },
                ctx,
            )
            ctx.shared[("train", model, device)] = result
            bare = median(result["bare"])
            for variant, flags, op, limit in (
                ("default", "default flags, hooks off", ">=", 0.98),
                ("hooks", "--hooks activations,gradients", ">=", 0.90),
            ):
                ratio = median(result["ratios"][variant])
                rows.append(
                    Row(
                        3,
                        f"steps/s {name}, {flags}",
                        rate(median(result[variant]), "steps/s"),
                        rate(bare, "steps/s") + " (bare loop)",
                        ratio,
                        f"{op} {limit}",
                        check(ratio, op, limit),
                        note=f"{len(result['ratios'][variant])} pairs, ratios "
                        + " ".join(f"{r:.3f}" for r in result["ratios"][variant]),
                    )
                )
            save = median(result["save_seconds"])
            epoch = EPOCH_SAMPLES / batch / median(result["default"])
            rows.append(
                Row(
                    3,
                    f"checkpoint per epoch, {name} ({result['checkpoint_mib']:.1f} MiB)",
                    f"{save * 1000:.0f} ms",
                    f"{epoch:.0f} s epoch of {EPOCH_SAMPLES:,} samples",
                    None,
                    "",
                    "info",
                    note=f"{100 * save / epoch:.3f}% of such an epoch",
                )
            )
    return rows


# ---- the worker -------------------------------------------------------------------------------


class NoBar:
    """Stands in for tqdm when measuring what the progress bar costs."""

    def __init__(self, iterable, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import checkpoint
    import dataset
    import train
    from bare_loop import bare_train, plain_loader
    from model import build_model

    model_name, device = config["model"], config["device"]
    batch, steps, warmup = config["batch"], config["steps"], config["warmup"]
    cuda = device == "cuda"
    (train_x, train_y), (val_x, val_y) = in_memory_sets(torch, batch * steps, batch * 2)
    train_set = dataset.InMemoryImages(train_x, train_y)
    val_set = dataset.InMemoryImages(val_x, val_y)
    train.build_datasets = lambda args: (train_set, val_set)

    save_seconds, checkpoint_bytes = [], []
    original_save = checkpoint.save_checkpoint

    def timed_save(state, path):
        start = time.perf_counter()
        original_save(state, path)
        save_seconds.append(time.perf_counter() - start)
        checkpoint_bytes.append(os.path.getsize(path))

    checkpoint.save_checkpoint = timed_save
    scratch = tempfile.mkdtemp(prefix="bench-train-")

    def generated(flags: list[str], n_steps: int = steps, n_warmup: int = warmup) -> float:
        out = tempfile.mkdtemp(dir=scratch)
        argv = [
            "--model", model_name, "--dataset", "fake", "--fake-size", str(batch * steps),
            "--batch-size", str(batch), "--workers", "0", "--epochs", "1",
            "--max-steps", str(n_steps), "--device", device, "--output-dir", out,
            *gpu_flags(device), *flags,
        ]  # fmt: skip
        clock = StepClock(n_warmup, n_steps, cuda)
        try:
            train.main(argv)
        finally:
            clock.close()
        return clock.steps_per_second()

    def bare(n_steps: int = steps, n_warmup: int = warmup) -> float:
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3, 32)
        loader = plain_loader(train_set, batch, 0, cuda)
        clock = StepClock(n_warmup, n_steps, cuda)
        try:
            bare_train(model, loader, n_steps, device, cuda, cuda)
        finally:
            clock.close()
        return clock.steps_per_second()

    # Warm-up: first calls pay for lazy imports, allocator growth, kernel selection.
    short = max(warmup // 2, 2)
    generated(VARIANTS["hooks"], short + 1, short)
    bare(short + 1, short)
    save_seconds.clear()

    results = {"bare": [], "ratios": {name: [] for name in VARIANTS}}
    results.update({name: [] for name in VARIANTS})
    for rep in range(config["reps"]):
        order = ["bare", *VARIANTS] if rep % 2 == 0 else [*reversed(VARIANTS), "bare"]
        measured = {}
        for name in order:
            measured[name] = bare() if name == "bare" else generated(VARIANTS[name])
        results["bare"].append(measured["bare"])
        for name in VARIANTS:
            results[name].append(measured[name])
            results["ratios"][name].append(measured[name] / measured["bare"])
    results["save_seconds"] = save_seconds
    results["checkpoint_mib"] = median(checkpoint_bytes) / 2**20
    if config["attribute"]:
        results["attribution"] = attribute(config, train, torch, generated, bare, NoBar)
    return results


def attribute(config, train, torch, generated, bare, no_bar) -> dict:
    """What each piece of the generated loop costs per step, in microseconds.

    Two ways: the generated loop with one convenience taken out (whole-loop steps/s again, paired
    with the full loop), and the pieces timed one by one in isolation.
    """
    costs = {}
    repeats = 3
    step_time = 1 / median([bare() for _ in range(repeats)])
    costs["bare loop step"] = step_time * 1e6

    full, without_bar, without_logs = [], [], []
    original_tqdm = train.tqdm
    for _ in range(repeats):
        full.append(1 / generated([]))
        train.tqdm = no_bar
        try:
            without_bar.append(1 / generated([]))
        finally:
            train.tqdm = original_tqdm
        without_logs.append(1 / generated(["--log-every", "1000000"]))
    costs["generated loop step"] = median(full) * 1e6
    costs["progress bar (tqdm), by removal"] = (median(full) - median(without_bar)) * 1e6
    costs["logged steps (.item, metrics line, bar postfix), by removal"] = (
        median(full) - median(without_logs)
    ) * 1e6

    # The pieces in isolation.
    import argparse
    import json
    import tempfile

    n = 2000

    def per_call(function, count=n) -> float:
        start = time.perf_counter()
        for _ in range(count):
            function()
        return (time.perf_counter() - start) / count * 1e6

    device = torch.device(config["device"])
    model = torch.nn.Linear(4, 4).to(device)
    args = argparse.Namespace(
        model=config["model"], lr=0.05, momentum=0.9, weight_decay=1e-4, optimizer="sgd",
        backbone_lr_mult=None, lr_scheduler="cosine", warmup_epochs=0.0, lr_step_epochs=30,
        lr_gamma=0.1,
    )  # fmt: skip
    optimizer = train.build_optimizer(model, args)
    scheduler = train.build_scheduler(optimizer, args, 10**7, 10**7)
    costs["scheduler.step() (cosine LambdaLR)"] = per_call(scheduler.step)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss = torch.ones((), device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)

    def accumulate():
        total.add_(loss.detach())

    costs["epoch_loss += loss.detach()"] = per_call(accumulate)
    costs["GradScaler (disabled) scale + update"] = per_call(
        lambda: (scaler.scale(loss), scaler.update())
    )
    with open(os.devnull, "w") as sink:
        bar = original_tqdm(range(n), file=sink, leave=False)
        start = time.perf_counter()
        for _ in bar:
            pass
        costs["tqdm, per iteration"] = (time.perf_counter() - start) / n * 1e6
        bar = original_tqdm(range(n), file=sink, leave=False)
        costs["tqdm set_postfix (logged steps)"] = per_call(
            lambda: bar.set_postfix(loss="2.3026", lr="0.05"), 200
        )
    with tempfile.TemporaryDirectory() as folder:
        log = train.MetricsLog(os.path.join(folder, "metrics.jsonl"), 0)
        record = {"kind": "step", "epoch": 0, "step": 10, "loss": 2.3, "lr": 0.05}
        costs["metrics line (open, json, append, close)"] = per_call(
            lambda: log.write(record), 200
        )
        json.dumps(record)
    costs["loss.item()"] = per_call(loss.item)
    costs["log_every"] = 10
    return costs


if __name__ == "__main__":
    worker_main(worker)
