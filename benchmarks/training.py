"""Figure 3: the generated train.py against the bare loop, steps per second after warm-up.

One worker process per (model, device), torch threads fixed (run.py --threads, default 1). In it,
train.main(argv) of a generated project and bare_loop.bare_train run in turns, alternating which
goes first, repeated. Every run is timed by the same global optimizer step post-hook
(common.StepClock): a timestamp after each optimizer step, wall clock and this process's CPU time.
The timed part is the steps after warm-up, cut into windows of 10 steps (train.py's default
--log-every, so each window holds exactly one logged step with its .item(), metrics line and
progress-bar update); a run's rate is 10 steps over the median window. A repetition runs the bare
loop, the generated variants (default flags; --hooks activations,gradients) and the bare loop
again; a variant's ratio is its rate over the geometric mean of the two bare runs around it, and
the figure is the median over repetitions. The second bare run over the first is an A/A control:
the ratio that noise alone produces. Each window holds everything a training
step costs in either loop: data loading, forward, backward, the optimizer, and in train.py the
progress bar, loss accumulation, LR scheduler, hooks and logging. It holds no set-up, validation
or checkpoint: they come after the last step, and the checkpoint is timed on its own.

On CPU the ratio is taken on CPU time: on a machine shared with other work, wall time also counts
the time spent waiting for a core, which has nothing to do with either loop (both are reported).
On CUDA it is taken on wall time (the device is synchronised at the two ends of the timed part).

Data: both loops read the same in-memory tensors (the project's dataset.InMemoryImages, swapped
in for train.build_datasets) with --workers 0, so that image decoding does not hide the loop's own
cost; figure 4 measures the data pipeline by itself.

With attribution on, the pieces the generated loop adds are also timed one by one in isolation
(per-call CPU time, medians), which says what costs what without the noise of whole runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    NO_GPU,
    Context,
    RoundRobin,
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
WINDOW = 10  # steps per timed window: train.py's default --log-every

# (model, device) -> batch size, optimizer steps per run, warm-up steps, repetitions. On CPU a
# repetition is one session of the four loops taking turns; its timed steps (the steps after the
# first, less the warm-up) make whole 10-step windows.
FULL = {
    ("lenet", "cpu"): (32, 221, 20, 4),
    ("resnet18", "cpu"): (32, 36, 5, 2),
    ("lenet", "cuda"): (32, 520, 20, 9),
    ("resnet18", "cuda"): (32, 220, 20, 7),
}
QUICK = {
    ("lenet", "cpu"): (32, 31, 10, 1),
    ("resnet18", "cpu"): (32, 12, 1, 1),
    ("lenet", "cuda"): (32, 120, 20, 1),
    ("resnet18", "cuda"): (32, 60, 20, 1),
}
VARIANTS = {"default": [], "hooks": ["--hooks", "activations,gradients"]}
TARGETS = {"default": 0.98, "hooks": 0.90}


def spread(values: list[float]) -> str:
    """The quartiles of `values`, '0.970-1.010' (the values themselves when there are few)."""
    if len(values) < 4:
        return " ".join(f"{value:.3f}" for value in values)
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.3f}-{high:.3f}"


def gpu_flags(device: str) -> list[str]:
    return ["--amp", "--channels-last"] if device == "cuda" else []


def measure(ctx: Context) -> list[Row]:
    rows = []
    for device in ("cpu", "cuda"):
        label = "CPU" if device == "cpu" else "CUDA --amp --channels-last"
        for model in ("lenet", "resnet18"):
            batch, steps, warmup, reps = (QUICK if ctx.quick else FULL)[(model, device)]
            name = f"{model}, {label}, batch {batch}"
            if device not in ctx.devices:
                reason = NO_GPU if device == "cuda" and not ctx.cuda_available else "--device"
                for variant, flags in (("default", "default flags"), ("hooks", "hooks on")):
                    rows.append(
                        Row(3, f"steps/s {name}, {flags}", "—", "—", None,
                            f">= {TARGETS[variant]}", f"not measured: {reason}")
                    )  # fmt: skip
                continue
            ctx.log(f"training loop: {model} on {device} ({reps} x 4 loops of {steps} steps)")
            flags = " ".join(gpu_flags(device))
            ctx.record(
                3,
                f"in-process train.main(): --model {model} --dataset fake --batch-size {batch} "
                f"--workers 0 --epochs 1 --max-steps {steps} --device {device} {flags} "
                "[--hooks activations,gradients] --output-dir $WORK/... (datasets: in-memory)",
            )
            ctx.record(
                3,
                f"in-process bare_loop.bare_train(build_model({model!r}, 10, 3, 32), "
                f"DataLoader(in-memory, batch_size={batch}, shuffle=True), {steps}, {device!r})",
            )
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
                    "attribute": not ctx.quick,
                    "interleave": device == "cpu",
                    "save_runs": 1 if ctx.quick else 3,
                },
                ctx,
            )
            ctx.shared[("train", model, device)] = result
            clock = "cpu" if device == "cpu" else "wall"
            basis = "CPU time" if clock == "cpu" else "wall time"

            def speed(*kinds, result=result, clock=clock) -> str:
                """Median steps/s of these runs, wall clock (and per CPU-second on CPU)."""
                wall = median([value for kind in kinds for value in result["wall"][kind]])
                text = rate(wall, "steps/s")
                if clock == "cpu":
                    cpu = median([value for kind in kinds for value in result["cpu"][kind]])
                    text += f" ({rate(cpu, 'per CPU-s')})"
                return text

            for variant, flags in (
                ("default", "default flags, hooks off"),
                ("hooks", "--hooks activations,gradients"),
            ):
                ratios = result["ratios"][clock][variant]
                ratio = median(ratios)
                note = (
                    f"ratio on {basis}, median of {len(ratios)} ({result['method']}); "
                    f"quartiles {spread(ratios)}"
                )
                if clock == "cpu":
                    note += f"; on wall time {median(result['ratios']['wall'][variant]):.3f}"
                rows.append(
                    Row(
                        3,
                        f"steps/s {name}, {flags}",
                        speed(variant),
                        speed("bare", "again") + " bare",
                        ratio,
                        f">= {TARGETS[variant]}",
                        check(ratio, ">=", TARGETS[variant]),
                        note=note,
                    )
                )
            control = result["ratios"][clock]["again"]
            rows.append(
                Row(
                    3,
                    f"noise control, {name}: bare loop again / bare loop",
                    speed("again"),
                    speed("bare"),
                    median(control),
                    "",
                    "info",
                    note=f"A/A ratio on {basis}, median of {len(control)}; quartiles "
                    f"{spread(control)}: the spread that noise alone gives on this machine",
                )
            )
            save = median(result["save_seconds"])
            epoch = EPOCH_SAMPLES / batch / median(result["wall"]["default"])
            rows.append(
                Row(
                    3,
                    f"checkpoint per epoch, {name} ({result['checkpoint_mib']:.1f} MiB)",
                    f"{save * 1000:.0f} ms",
                    f"{epoch:.0f} s epoch of {EPOCH_SAMPLES:,} samples",
                    None,
                    "",
                    "info",
                    note=f"{100 * save / epoch:.3f}% of such an epoch (write, fsync, rename)",
                )
            )
            if "attribution" in result:
                predicted = result["attribution"]["predicted ratio, hooks off"]
                rows.append(
                    Row(
                        3,
                        f"predicted from per-piece costs, {name}, default flags",
                        f"{result['attribution']['pieces, hooks off']:.0f} µs/step added",
                        f"{result['attribution']['bare loop step']:.0f} µs/step (bare)",
                        predicted,
                        ">= 0.98",
                        check(predicted, ">=", 0.98),
                        note="see 'Per-step costs' below",
                    )
                )
    return rows


# ---- the worker -------------------------------------------------------------------------------


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

    scratch = tempfile.mkdtemp(prefix="bench-train-")

    timing_saves = [False]

    def timed_save(state, path):
        start = time.perf_counter()
        original_save(state, path)
        if timing_saves[0]:
            save_seconds.append(time.perf_counter() - start)
            checkpoint_bytes.append(os.path.getsize(path))

    checkpoint.save_checkpoint = timed_save

    def run_generated(flags: list[str], n_steps: int) -> None:
        out = tempfile.mkdtemp(dir=scratch)
        train.main([
            "--model", model_name, "--dataset", "fake", "--fake-size", str(batch * steps),
            "--batch-size", str(batch), "--workers", "0", "--epochs", "1",
            "--max-steps", str(n_steps), "--device", device, "--output-dir", out,
            *gpu_flags(device), *flags,
        ])  # fmt: skip

    def run_bare(n_steps: int) -> None:
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3, 32)
        loader = plain_loader(train_set, batch, 0, cuda)
        bare_train(model, loader, n_steps, device, cuda, cuda)

    def clocked(function, *args, n_steps: int = steps, n_warmup: int = warmup):
        clock = StepClock(n_warmup, n_steps, cuda)
        try:
            function(*args, n_steps)
        finally:
            clock.close()
        return clock.window_rate(WINDOW), clock.window_rate(WINDOW, cpu=True)

    # Warm-up (lazy imports, allocator growth, kernel selection), then the checkpoint cost: short
    # runs of train.py one at a time, each ending with its per-epoch checkpoint.
    short = max(warmup // 2, 2)
    clocked(run_generated, VARIANTS["hooks"], n_steps=short + 1, n_warmup=short)
    clocked(run_bare, n_steps=short + 1, n_warmup=short)
    timing_saves[0] = True
    for _ in range(config["save_runs"]):
        clocked(run_generated, [], n_steps=short + 1, n_warmup=short)
    timing_saves[0] = False

    kinds = ["bare", *VARIANTS, "again"]
    results = {clock: {kind: [] for kind in kinds} for clock in ("wall", "cpu")}
    results["ratios"] = {
        clock: {kind: [] for kind in [*VARIANTS, "again"]} for clock in ("wall", "cpu")
    }

    def add(measured: dict) -> None:
        """One comparison: {kind: (wall rate, cpu rate)} of the bare loop, the variants and the
        bare loop again; ratios to the geometric mean of the two bare rates."""
        for index, clock in enumerate(("wall", "cpu")):
            for kind in kinds:
                results[clock][kind].append(measured[kind][index])
            baseline = (measured["bare"][index] * measured["again"][index]) ** 0.5
            for kind in VARIANTS:
                results["ratios"][clock][kind].append(measured[kind][index] / baseline)
            results["ratios"][clock]["again"].append(
                measured["again"][index] / measured["bare"][index]
            )

    for rep in range(config["reps"]):
        variants = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        if config["interleave"]:
            # All four loops in one session, taking turns step by step; compared window by window.
            order = ["bare", *variants, "again"]
            session = RoundRobin(order, steps)
            session.run({
                kind: (lambda: run_bare(steps)) if kind in ("bare", "again")
                else (lambda flags=VARIANTS[kind]: run_generated(flags, steps))
                for kind in order
            })  # fmt: skip
            rates = {}
            for kind in order:
                wall = session.window_rates(kind, warmup, WINDOW, cpu=False)
                cpu = session.window_rates(kind, warmup, WINDOW, cpu=True)
                rates[kind] = list(zip(wall, cpu, strict=True))
            for window in range(min(len(values) for values in rates.values())):
                add({kind: rates[kind][window] for kind in order})
        else:
            # One loop after the other: bare, the variants, bare again.
            measured = {}
            for kind in ["bare", *variants, "again"]:
                if kind in ("bare", "again"):
                    measured[kind] = clocked(run_bare)
                else:
                    measured[kind] = clocked(run_generated, VARIANTS[kind])
            add(measured)
    results["method"] = (
        f"{WINDOW}-step windows of loops taking turns step by step"
        if config["interleave"]
        else "whole runs one after the other"
    )
    results["save_seconds"] = save_seconds
    results["checkpoint_mib"] = median(checkpoint_bytes) / 2**20
    if config["attribute"]:
        results["attribution"] = attribute(config, torch, train, train_set, build_model)
    return results


def per_call_us(function, count: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean CPU time of one call, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(count):
            function()
        samples.append((time.process_time() - start) / count * 1e6)
    return statistics.median(samples)


def attribute(config, torch, train, train_set, build_model) -> dict:
    """What each piece that train.py adds to a training step costs, timed in isolation (µs of
    CPU time per step; the pieces that run on logged steps only are divided by --log-every)."""
    import argparse

    from hooks import HookSet

    device = torch.device(config["device"])
    batch = config["batch"]
    costs: dict[str, float] = {}

    # The bare step and the hooks: forward, backward and optimizer step on one fixed batch.
    torch.manual_seed(0)
    model = build_model(config["model"], 10, 3, 32).to(device)
    images = torch.stack([train_set[i][0] for i in range(batch)]).to(device)
    labels = torch.tensor([train_set[i][1] for i in range(batch)], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    n = 40 if config["model"] == "lenet" else 6

    def steps(hook_set=None, record=False) -> float:
        times = []
        for index in range(n):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.process_time() if device.type == "cpu" else time.perf_counter()
            if hook_set:
                hook_set.start_step(index + 1, record=record)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            if hook_set:
                hook_set.end_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.process_time() if device.type == "cpu" else time.perf_counter()
            times.append(end - start)
        return statistics.median(times) * 1e6

    steps()  # warm-up
    hook_set = HookSet("activations,gradients", model)
    plain, quiet, recording = [], [], []
    for _ in range(3):  # interleaved
        hook_set.detach()
        plain.append(steps())
        hook_set = HookSet("activations,gradients", model)
        quiet.append(steps(hook_set))
        recording.append(steps(hook_set, record=True))
    hook_set.detach()
    bare_step = statistics.median(plain)
    costs["bare loop step"] = bare_step

    pieces: dict[str, float] = {}
    log_every = WINDOW
    with open(os.devnull, "w") as sink:
        count = 5000
        bar = train.tqdm(range(count * 6), file=sink, leave=False)
        iterator = iter(bar)
        pieces["tqdm progress bar, per iteration"] = per_call_us(lambda: next(iterator), count)
        pieces["tqdm set_postfix (logged steps) / 10"] = (
            per_call_us(lambda: bar.set_postfix(loss="2.3026", lr="0.05"), 100) / log_every
        )
        bar.close()
    args = argparse.Namespace(
        model=config["model"], lr=0.05, momentum=0.9, weight_decay=1e-4, optimizer="sgd",
        backbone_lr_mult=None, lr_scheduler="cosine", warmup_epochs=0.0, lr_step_epochs=30,
        lr_gamma=0.1,
    )  # fmt: skip
    tiny = torch.nn.Linear(2, 2)
    tiny_optimizer = train.build_optimizer(tiny, args)
    scheduler = train.build_scheduler(tiny_optimizer, args, 10**8, 10**8)
    pieces["scheduler.step() (cosine LambdaLR)"] = per_call_us(scheduler.step, 2000)
    loss = torch.ones((), device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)

    def accumulate():
        total.add_(loss.detach())  # what `epoch_loss += loss.detach()` does

    pieces["epoch_loss += loss.detach()"] = per_call_us(accumulate, 2000)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    pieces["GradScaler (disabled) scale() + update()"] = per_call_us(
        lambda: (scaler.scale(loss), scaler.update()), 2000
    )
    empty = HookSet("", tiny)
    pieces["HookSet with no hooks: start_step() + end_step()"] = per_call_us(
        lambda: (empty.start_step(1, False), empty.end_step()), 2000
    )
    pieces["optimizer.param_groups[0]['lr']"] = per_call_us(
        lambda: tiny_optimizer.param_groups[0]["lr"], 2000
    )
    pieces["loss.item() (logged steps) / 10"] = per_call_us(loss.item, 2000) / log_every
    with tempfile.TemporaryDirectory() as folder:
        log = train.MetricsLog(os.path.join(folder, "metrics.jsonl"), 0)
        record = {"kind": "step", "epoch": 0, "step": 10, "loss": 2.3, "lr": 0.05}
        pieces["metrics.jsonl line: open, json.dumps, append, close (logged) / 10"] = (
            per_call_us(lambda: log.write(record), 200) / log_every
        )
    costs.update(pieces)
    added = sum(pieces.values())
    costs["pieces, hooks off"] = added
    costs["predicted ratio, hooks off"] = bare_step / (bare_step + added)
    hooks_quiet = statistics.median(quiet) - bare_step
    hooks_recording = (statistics.median(recording) - bare_step) / log_every
    costs["hooks activations,gradients: every step (forward hooks that return at once)"] = (
        hooks_quiet
    )
    costs["hooks activations,gradients: statistics of logged steps / 10"] = hooks_recording
    costs["predicted ratio, hooks on"] = bare_step / (
        bare_step + added + hooks_quiet + hooks_recording
    )
    costs["clock"] = "CPU time" if device.type == "cpu" else "wall time, synchronised"
    return costs


if __name__ == "__main__":
    worker_main(worker)
