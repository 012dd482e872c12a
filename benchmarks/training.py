"""Figure 3: the generated train.py against the bare loop, steps per second after warm-up.

One worker process per (model, device), torch threads fixed (run.py --threads, default 1). The
loops compared are the generated train.main(argv), unchanged, and bare_loop.bare_train: the same
model, optimizer, batch size, data and number of steps, and the same work on the data (uint8
batches converted to float and normalized on the training device), nothing else.

A step is one iteration of a loop: an optimizer step, or a step that GradScaler skipped because
float16 gradients overflowed (CUDA --amp, while the loss scale settles), so a run with skipped
steps still reaches its count (common.StepHooks). Time to the first step is timed on its own,
from the call of the loop to the end of its first iteration, in runs one at a time.

CPU: the loops run in one session, each in its own thread, taking turns one step at a time in a
random order per round (common.RoundRobin): while one runs its step the others wait, so every
step runs alone and all loops see the same load from the rest of the machine, step by step. A
loop's step is timed from the moment it gets its turn back to the end of its next step, on the
thread's CPU time and on the wall clock: everything the loop does per step, data loading, the
progress bar and logging included. train.py draws its progress bar only on a terminal; here the
default variants draw it (into /dev/null) as on a terminal, the costlier case, and the "no bar"
variants leave it off, as train.py does when its output goes to a log file. The timed steps
(after a warm-up) are cut into windows of 10 steps, train.py's default --log-every, so every
window holds exactly one logged step with its losses read back, metrics line and progress-bar
update. For each window the ratio is the generated loop's rate over the geometric mean of two bare
loops' rates (bare and "again", both in the session); the figure is the median over windows and
sessions. "Again" over bare is an A/A control: what noise alone gives. The ratio is quoted on CPU
time, which waiting for a core on a shared machine does not inflate; the wall-time ratio is in
the notes.

Taking turns changes two things, both corrected: the progress bar redraws every 0.1 s of wall time,
and with N loops taking turns 0.1 s holds N times fewer of one loop's steps, so tqdm gets
mininterval 0.1 x N (in each loop's own time, the 0.1 s of a run alone); and threads get their own
malloc arenas, whose memory the C library keeps giving back and faulting in again on some threads
and not others (up to 100 page faults a step), so the worker runs with MALLOC_ARENA_MAX=1 and fixed
mmap and trim thresholds (the steady state of a long single-threaded run).

Attribution (full run, LeNet): the same session also runs train.py with pieces taken out (no logged
steps; no progress bar; no LR scheduler) and with hooks on but never recording; the differences
between their rates give each piece's cost per step, measured in place rather than in a
micro-benchmark (whose warm caches make Python code look several times cheaper than it is between
the tensor work of real steps).

CUDA: the device is not shared, so the loops run one after the other (bare, the variants, bare
again), --amp --channels-last, the device synchronised at the two ends of the timed part; ratios
are on wall time, medians over repetitions.

Checkpoint: the per-epoch checkpoint (torch.save to a temporary file, fsync, rename, directory
fsync) is timed in short runs of train.py one at a time, outside the sessions.

Data: all loops read the same in-memory tensors (the project's dataset.InMemoryImages, swapped in
for train.build_datasets) with --workers 0, so that image decoding does not hide the loop's own
cost; figure 4 measures the data pipeline by itself.

Segmentation: the same comparison for a segmentation project (scaffold new --task segmentation
--model unet), CPU only: the U-Net (0.5M parameters, 10 classes) on 32x32 images, each with its
int64 mask (random 4x4-pixel blocks of class indices; common.in_memory_masks, TensorDatasets
swapped in as above). train.py runs as generated, through the segmentation task.py (task.prepare
moves each mask with its image, task.loss is the per-pixel cross-entropy over the pixels that are
not 255, the optimizer AdamW, a segmentation project's default); the bare loop trains the same
U-Net with nn.CrossEntropyLoss(ignore_index=255) and the same AdamW.

Language model: the same comparison for a language-model project (scaffold new --task lm --model
gpt_tiny), CPU only, quoted in tokens per second (optimizer steps x batch x block size, the
targets a step trains on): the GPT (0.11M parameters, byte-level vocabulary of 256) on windows of
64 tokens of the project's synthetic language (--dataset synthetic: dataset.build_datasets builds
its TrainingWindows of (inputs, targets) int64 windows once, in memory, swapped in as above).
train.py runs as generated, through the LM task.py (task.prepare moves both windows, task.loss is
token_cross_entropy: the mean next-token cross-entropy over the targets that are not -100), with
an LM project's defaults: AdamW, cosine schedule, --clip-grad-norm 1.0. The bare loop
(bare_lm_train, nanoGPT's loop without its extras) trains the same GPT, seeded as train.py seeds
it, on a plain DataLoader over the same windows: F.cross_entropy of the flattened logits, the same
AdamW, and clip_grad_norm_ to 1.0 too, the same work. The pieces of train.py's step are not
timed apart for it: they cost what they cost LeNet's loop (about 0.1 ms a step in all), and a
step of gpt_tiny takes 20 to 28 ms of CPU time on the 2-core machine these figures come from, so
they are well below the noise of its windows; the hooks' cost is its own row.

Detection: the same comparison for a detection project (scaffold new --task detection --model
tiny_rcnn), CPU only: the small Faster R-CNN (0.25M parameters, 10 classes counting the
background) on 32x32 images of the project's synthetic shapes (--dataset synthetic: 0 to 3 shapes
an image, each with its box and class; the samples dataset.build_datasets gives, drawn once into
a list in memory and swapped in as above). train.py runs as generated, through the detection
task.py (task.COLLATE stacks the images and keeps each image's targets in a list, task.prepare
moves them and scales the uint8 images to [0, 1], task.loss is the sum of the losses the detector
returns in train mode), with a detection project's defaults (AdamW, cosine schedule, no clipping)
but in batches of 32, as every CPU image row (the project's default is 8).
The bare loop (bare_detection_train, torchvision's reference detection loop without its extras)
trains the same detector, seeded as train.py seeds it (before building it, and again before the
first step: the detector samples anchors and proposals from the global generator; in a session
the loops' threads share it, so their draws differ, but not their number, fixed per image), on a
plain DataLoader over the same samples in the same order (train.py's first-epoch permutation):
images.float().div_(255), the sum of model(list(images), targets)'s losses, the same AdamW, the
same work. A step of tiny_rcnn at batch 32 takes about 0.2 s of CPU time, so the pieces of
train.py's step (about 0.1 ms in all for LeNet) are not timed apart for it either; the hooks'
cost is its own row.
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
    RoundRobin,
    Row,
    StepClock,
    check,
    gpu_flags,
    in_memory_datasets,
    in_memory_masks,
    median,
    rate,
    run_worker,
    seconds,
    set_threads,
    spread,
    worker_main,
)

EPOCH_SAMPLES = 50_000  # a CIFAR-10-sized epoch (windows, for an LM), to size the checkpoint cost
WINDOW = 10  # steps per timed window: train.py's default --log-every
NEVER = ["--log-every", "1000000000"]  # no logged step within a run
HOOKS = ["--hooks", "activations,gradients"]

# (model, device) -> batch size, optimizer steps per run, warm-up steps, repetitions. On CPU a
# repetition is one session of all loops taking turns; its timed steps (the steps after the first,
# less the warm-up) make whole 10-step windows.
FULL = {
    ("lenet", "cpu"): (32, 221, 20, 4),
    ("resnet18", "cpu"): (32, 36, 5, 2),
    ("unet", "cpu"): (32, 36, 5, 3),
    ("gpt_tiny", "cpu"): (16, 61, 10, 3),
    ("tiny_rcnn", "cpu"): (32, 33, 2, 2),
    ("lenet", "cuda"): (32, 420, 20, 7),
    ("resnet18", "cuda"): (32, 220, 20, 5),
}
QUICK = {
    ("lenet", "cpu"): (32, 31, 10, 1),
    ("resnet18", "cpu"): (32, 12, 1, 1),
    ("unet", "cpu"): (32, 12, 1, 1),
    ("gpt_tiny", "cpu"): (16, 21, 10, 1),
    ("tiny_rcnn", "cpu"): (32, 12, 1, 1),
    ("lenet", "cuda"): (32, 120, 20, 1),
    ("resnet18", "cuda"): (32, 60, 20, 1),
}
# variant -> (train.py flags, progress bar disabled as train.py does when stderr is no terminal)
VARIANTS = {
    "default": ([], False),
    "hooks": (HOOKS, False),
    "no logged steps": (NEVER, False),
    "hooks, no logged steps": (HOOKS + NEVER, False),
    "no logged steps, no bar": (NEVER, True),
    "no logged steps, no bar, no scheduler": (NEVER + ["--lr-scheduler", "none"], True),
}
MAIN = ["default", "hooks"]
# model -> the project it trains in (run.render_projects); each device's models, in order
PROJECTS = {
    "lenet": "plain",
    "resnet18": "plain",
    "unet": "segmentation",
    "gpt_tiny": "lm",
    "tiny_rcnn": "detection",
}
MODELS = {
    "cpu": ("lenet", "resnet18", "unet", "gpt_tiny", "tiny_rcnn"),
    "cuda": ("lenet", "resnet18"),
}
BLOCK_SIZE = 64  # tokens of a language model's window (gpt_tiny's own block size)
# A language-model project's defaults (tests/test_benchmarks.py checks them against its options.py)
LM_LR, LM_WEIGHT_DECAY, LM_CLIP_GRAD_NORM = 0.001, 1e-4, 1.0
# A detection project's defaults (checked by tests/test_benchmarks.py too): AdamW, no clipping
DETECTION_LR, DETECTION_WEIGHT_DECAY = 0.001, 1e-4
TARGETS = {"default": 0.98, "hooks": 0.90}
# piece -> (variant with it, variant without it): its cost per step is the difference
PIECES = {
    "logged steps (every 10th): losses read back, metrics.jsonl line, bar postfix": (
        "default",
        "no logged steps",
    ),
    "progress bar (tqdm) on every step": ("no logged steps", "no logged steps, no bar"),
    "LR scheduler (cosine LambdaLR) step": (
        "no logged steps, no bar",
        "no logged steps, no bar, no scheduler",
    ),
    "the rest: float64 running loss, task.prepare and task.loss calls, GradScaler and autocast "
    "(off), sampler, hooks and stop-signal calls": (
        "no logged steps, no bar, no scheduler",
        "bare",
    ),
    "hooks activations,gradients attached (forward hooks on every step)": (
        "hooks, no logged steps",
        "no logged steps",
    ),
}
# The statistics hooks compute on logged steps: (hooks - hooks without logged steps) less what
# logged steps cost without hooks.
MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(2**30),
    "MALLOC_TRIM_THRESHOLD_": str(2**31),
}


def measure(ctx: Context) -> list[Row]:
    rows = []
    for device in ("cpu", "cuda"):
        label = "CPU" if device == "cpu" else "CUDA --amp --channels-last"
        for model in MODELS[device]:
            batch, steps, warmup, reps = (QUICK if ctx.quick else FULL)[(model, device)]
            project = PROJECTS[model]
            data_name = "fake" if project == "plain" else "synthetic"
            lm = project == "lm"
            name = f"{model}, {label}, batch {batch}" + (f" x {BLOCK_SIZE} tokens" if lm else "")
            unit = "tokens/s" if lm else "steps/s"
            if device not in ctx.devices:
                reason = NO_GPU if device == "cuda" and not ctx.cuda_available else "--device"
                for variant, flags in (("default", "default flags"), ("hooks", "hooks on")):
                    rows.append(
                        Row(3, f"{unit} {name}, {flags}", "—", "—", None,
                            f">= {TARGETS[variant]}", f"not measured: {reason}")
                    )  # fmt: skip
                if device == "cuda":
                    rows.append(
                        Row(3, f"time to the first step, {name}, default flags", "—", "—", None,
                            "", f"not measured: {reason}")
                    )  # fmt: skip
                continue
            variants = list(VARIANTS) if model == "lenet" and not ctx.quick else MAIN
            if device == "cuda":
                variants = MAIN
            ctx.log(f"training loop: {model} on {device}, {reps} x {steps} steps, {variants}")
            flags = " ".join(gpu_flags(device))
            where = {
                "plain": "",
                "segmentation": " (segmentation project; images and masks)",
                "lm": " (LM project; token windows)",
                "detection": " (detection project; images and boxes)",
            }[project]
            size = f" --synthetic-size {lm_text_size(batch, steps)} --block-size {BLOCK_SIZE}"
            ctx.record(
                3,
                f"in-process train.main(): --model {model} --dataset {data_name}"
                + (size if lm else "")
                + f" --batch-size {batch} --workers 0 --epochs 1 --max-steps {steps} --device "
                f"{device} {flags} [--hooks activations,gradients] --output-dir $WORK/... "
                "(datasets: in-memory)" + where,
            )
            if lm:
                ctx.record(
                    3,
                    f"in-process training.bare_lm_train(model_from_options(model={model!r}, "
                    f"vocab_size=256, block_size={BLOCK_SIZE}), DataLoader(the same "
                    f"TrainingWindows, batch_size={batch}, shuffle=True), {steps}, {device!r})",
                )
            elif project == "detection":
                ctx.record(
                    3,
                    f"in-process training.bare_detection_train(build_model({model!r}, 10, 3, 32), "
                    f"DataLoader(the same shapes, batch_size={batch}, sampler=train.py's "
                    f"first-epoch order, collate_fn=detection_collate), {steps}, {device!r})",
                )
            else:
                ctx.record(
                    3,
                    f"in-process bare_loop.bare_train(build_model({model!r}, 10, 3, 32), "
                    f"DataLoader(in-memory, batch_size={batch}, shuffle=True), {steps}, "
                    f"{device!r})",
                )
            result = run_worker(
                "training",
                {
                    "project": str(ctx.projects[project]),
                    "segmentation": project == "segmentation",
                    "lm": lm,
                    "detection": project == "detection",
                    "model": model,
                    "device": device,
                    "batch": batch,
                    "steps": steps,
                    "warmup": warmup,
                    "reps": reps,
                    "threads": ctx.threads,
                    "variants": variants,
                    "interleave": device == "cpu",
                    "save_runs": 1 if ctx.quick else 3,
                },
                ctx,
                env=MALLOC,
            )
            ctx.shared[("train", model, device)] = result
            rows += result_rows(name, batch, result, BLOCK_SIZE if lm else None)
    return rows


def lm_text_size(batch: int, steps: int) -> int:
    """--synthetic-size of a language-model run: `steps` batches of windows and the last target."""
    return batch * steps * BLOCK_SIZE + 1


def result_rows(name: str, batch: int, result: dict, block_size: int | None = None) -> list[Row]:
    """The rows of one (model, device); with `block_size` (a language model) in tokens/s."""
    clock = result["clock"]
    basis = "CPU time" if clock == "cpu" else "wall time"
    unit, per_step = ("tokens/s", batch * block_size) if block_size else ("steps/s", 1)
    rows = []

    def speed(*kinds) -> str:
        """Median steps/s (tokens/s) of these loops, wall clock (and per CPU-second on CPU)."""
        wall = median([value for kind in kinds for value in result["rates"]["wall"][kind]])
        text = rate(wall * per_step, unit)
        if clock == "cpu":
            cpu = median([value for kind in kinds for value in result["rates"]["cpu"][kind]])
            text += f" ({rate(cpu * per_step, 'per CPU-s')})"
        return text

    for variant, flags in (
        ("default", "default flags, hooks off"),
        ("hooks", "--hooks activations,gradients"),
    ):
        ratios = result["ratios"][clock][variant]
        ratio = median(ratios)
        note = f"ratio on {basis}, median of {len(ratios)} ({result['method']}); quartiles " + (
            spread(ratios)
        )
        if clock == "cpu":
            note += f"; on wall time {median(result['ratios']['wall'][variant]):.3f}"
        rows.append(
            Row(
                3,
                f"{unit} {name}, {flags}",
                speed(variant),
                speed("bare", "again") + " bare",
                ratio,
                f">= {TARGETS[variant]}",
                check(ratio, ">=", TARGETS[variant]),
                note=note,
            )
        )
    first = result["first_step"]
    ours, theirs = median(first["generated"]), median(first["bare"])
    rows.append(
        Row(
            3,
            f"time to the first step, {name}, default flags",
            seconds(ours),
            seconds(theirs) + " bare",
            ours / theirs,
            "",
            "info",
            note=f"median of {len(first['generated'])} and {len(first['bare'])} runs in a warm "
            f"process (model, data, output folder, first step); the first run of the process "
            f"(imports, {'CUDA context, ' if 'CUDA' in name else ''}hooks on) took "
            f"{seconds(result['cold_first_step'])}; GradScaler skipped "
            f"{result['skipped_steps']} optimizer steps in the timed runs",
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
            note=f"A/A ratio on {basis}, median of {len(control)}; quartiles {spread(control)}: "
            "the spread that noise alone gives",
        )
    )
    save = median(result["save_seconds"])
    epoch = EPOCH_SAMPLES / batch / median(result["rates"]["wall"]["default"])
    rows.append(
        Row(
            3,
            f"checkpoint per epoch, {name} ({result['checkpoint_mib']:.1f} MiB)",
            f"{save * 1000:.0f} ms",
            f"{epoch:.0f} s epoch of {EPOCH_SAMPLES:,} {'windows' if block_size else 'samples'}",
            None,
            "",
            "info",
            note=f"{100 * save / epoch:.3f}% of such an epoch (write, fsync, rename)",
        )
    )
    return rows


def attribution(result: dict) -> dict[str, float] | None:
    """{piece: µs per step} from the variants of one session, on CPU time; None without them."""
    ratios = {kind: median(values) for kind, values in result["ratios"]["cpu"].items()}
    if not all(kind in ratios for kind in VARIANTS):
        return None
    bare_step = 1e6 / median(result["rates"]["cpu"]["bare"] + result["rates"]["cpu"]["again"])
    ratios["bare"] = 1.0

    def step(kind: str) -> float:  # µs per step of a variant
        return bare_step / ratios[kind]

    costs = {"bare loop step": bare_step, "generated loop step": step("default")}
    for piece, (with_it, without_it) in PIECES.items():
        costs[piece] = step(with_it) - step(without_it)
    costs["hooks activations,gradients: statistics on logged steps, per step"] = (
        step("hooks") - step("hooks, no logged steps") - (step("default") - step("no logged steps"))
    )
    return costs


def bare_lm_train(model, loader, steps: int, device: str = "cpu") -> None:
    """The plainest loop that trains a language model as an LM project's train.py does, at its
    defaults: `steps` optimizer steps of `model` over `loader`'s (inputs, targets) windows
    (epochs repeat as needed), the mean next-token cross-entropy, AdamW and gradients clipped to
    norm 1.0. Nothing else: no task module, schedule, running loss, bar, metrics or checkpoint."""
    import torch
    from torch import nn
    from torch.nn import functional

    device = torch.device(device)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LM_LR, weight_decay=LM_WEIGHT_DECAY)
    step = 0
    while step < steps:
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = model(inputs)
            loss = functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), LM_CLIP_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break


def detection_collate(samples: list) -> tuple:
    """Detection samples -> (images stacked, targets as a list: each image has its own number of
    boxes), as torchvision's reference detection scripts batch them (there as tuples)."""
    import torch

    images, targets = zip(*samples, strict=True)
    return torch.stack(images), list(targets)


def bare_detection_train(model, loader, steps: int, device: str = "cpu", seed: int = 0) -> None:
    """The plainest loop that trains a detector as a detection project's train.py does, at its
    defaults: `steps` optimizer steps of `model` over `loader`'s (uint8 images, targets) batches
    (epochs repeat as needed), images scaled to [0, 1] (the detector normalizes them itself), the
    sum of the losses the detector returns in train mode, and AdamW. Nothing else: no task
    module, schedule, running loss, bar, metrics or checkpoint. The global generator is seeded
    with `seed` before the first step, as train.py seeds it after building the model: the
    detector samples its anchors and proposals from it."""
    import torch

    device = torch.device(device)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=DETECTION_LR, weight_decay=DETECTION_WEIGHT_DECAY
    )
    torch.manual_seed(seed)
    step = 0
    while step < steps:
        for images, targets in loader:
            images = images.to(device, non_blocking=True).float().div_(255)
            targets = [{name: value.to(device) for name, value in t.items()} for t in targets]
            loss = sum(model(list(images), targets).values())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break


def in_memory_samples(dataset, size: int | None = None) -> list:
    """The first `size` samples of `dataset` (all of them with None), drawn once into a list."""
    count = len(dataset) if size is None else min(size, len(dataset))
    return [dataset[index] for index in range(count)]


# ---- the worker -------------------------------------------------------------------------------


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import threading

    import torch

    sys.path.insert(0, config["project"])
    import checkpoint
    import dataset
    import model as project_model
    import train
    from bare_loop import bare_train, plain_loader

    model_name, device = config["model"], config["device"]
    batch, steps, warmup = config["batch"], config["steps"], config["warmup"]
    cuda = device == "cuda"
    optimizer = "sgd"  # train.py's default in a classification project
    if config.get("lm"):
        import options

        data_flags = [
            "--dataset", "synthetic", "--synthetic-size", str(lm_text_size(batch, steps)),
            "--block-size", str(BLOCK_SIZE),
        ]  # fmt: skip
        train_set, val_set = dataset.build_datasets(options.parse_args(data_flags))
        vocab_size = dataset.options_from_data(train_set)["vocab_size"]
    elif config.get("detection"):
        import options

        data_flags = ["--dataset", "synthetic", "--synthetic-size", str(batch * steps)]
        shapes_train, shapes_val = dataset.build_datasets(options.parse_args(data_flags))
        train_set = in_memory_samples(shapes_train)
        val_set = in_memory_samples(shapes_val, batch)  # validated at the end of each run
        optimizer = "adamw"  # a detection project's default
    elif config.get("segmentation"):
        train_set, val_set = in_memory_masks(torch, batch * steps, batch * 2)
        data_flags = ["--dataset", "synthetic", "--synthetic-size", str(batch * steps)]
        optimizer = "adamw"  # and in a segmentation one
    else:
        train_set, val_set = in_memory_datasets(torch, dataset, batch * steps, batch * 2)
        data_flags = ["--dataset", "fake", "--fake-size", str(batch * steps)]
    train.build_datasets = lambda args: (train_set, val_set)

    # The progress bar: train.py shows it only when stderr is a terminal, which a worker's is
    # not. The default variants draw it as on a terminal (into /dev/null), with mininterval
    # scaled to the number of loops taking turns (see the module docstring); the variants
    # without a bar leave it disabled, as train.py does when its output goes to a log file.
    real_tqdm, local = train.tqdm, threading.local()
    bar_interval = [0.1]
    null = open(os.devnull, "w")  # for the whole worker process

    def progress_bar(*args, **kwargs):
        kwargs["disable"] = getattr(local, "no_bar", False)
        return real_tqdm(*args, file=null, mininterval=bar_interval[0], **kwargs)

    train.tqdm = progress_bar

    save_seconds, checkpoint_bytes = [], []
    original_save = checkpoint.save_checkpoint
    timing_saves = [False]

    def timed_save(state, path):
        start = time.perf_counter()
        original_save(state, path)
        if timing_saves[0]:
            save_seconds.append(time.perf_counter() - start)
            checkpoint_bytes.append(os.path.getsize(path))

    checkpoint.save_checkpoint = timed_save
    scratch = tempfile.mkdtemp(prefix="train-", dir=os.getcwd())  # in run.py's scratch folder

    def run_generated(variant: str, n_steps: int) -> None:
        flags, no_bar = VARIANTS[variant]
        local.no_bar = no_bar
        out = tempfile.mkdtemp(dir=scratch)
        train.main([
            "--model", model_name, *data_flags,
            "--batch-size", str(batch), "--workers", "0", "--epochs", "1",
            "--max-steps", str(n_steps), "--device", device, "--output-dir", out,
            *gpu_flags(device), *flags,
        ])  # fmt: skip

    def run_bare(n_steps: int) -> None:
        torch.manual_seed(0)  # train.py's --seed, before it builds the model
        loader = plain_loader(train_set, batch, 0, cuda)
        if config.get("lm"):
            sizes = dict.fromkeys(project_model.OVERRIDABLE) | {"block_size": BLOCK_SIZE}
            chosen = {"model": model_name, "vocab_size": vocab_size, **sizes}
            bare_lm_train(project_model.model_from_options(chosen), loader, n_steps, device)
            return
        if config.get("detection"):
            from torch.utils.data import DataLoader

            # train.py's ShardedSampler order for epoch 0 of one process: the same batches.
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
            loader = DataLoader(
                train_set, batch_size=batch, sampler=order.tolist(), collate_fn=detection_collate
            )
            model = project_model.build_model(model_name, 10, 3, 32)
            bare_detection_train(model, loader, n_steps, device)
            return
        model = project_model.build_model(model_name, 10, 3, 32)
        bare_train(model, loader, n_steps, device, cuda, cuda, optimizer)

    def run(kind: str, n_steps: int) -> None:
        if kind in ("bare", "again"):
            run_bare(n_steps)
        else:
            run_generated(kind, n_steps)

    first_steps = {"generated": [], "bare": []}  # seconds to the first step, warm process

    def clocked(kind: str, n_steps: int = steps, n_warmup: int = warmup):
        clock = StepClock(n_warmup, n_steps, cuda)
        try:
            run(kind, n_steps)
        finally:
            clock.close()
        first_steps["bare" if kind in ("bare", "again") else "generated"].append(
            clock.first_step_seconds()
        )
        skipped[0] += clock.skipped
        return clock.window_rate(WINDOW), clock.window_rate(WINDOW, cpu=True)

    skipped = [0]

    # Warm-up (lazy imports, allocator growth, kernel selection), then the checkpoint cost: short
    # runs of train.py one at a time, each ending with its per-epoch checkpoint.
    short = max(warmup // 2, 2)
    clocked("hooks", short + 1, short)
    cold_start = first_steps["generated"].pop()  # lazy imports, CUDA context
    clocked("bare", short + 1, short)
    timing_saves[0] = True
    for _ in range(config["save_runs"]):
        clocked("default", short + 1, short)
    timing_saves[0] = False

    kinds = ["bare", *config["variants"], "again"]
    result = {
        "rates": {clock: {kind: [] for kind in kinds} for clock in ("wall", "cpu")},
        "ratios": {clock: {kind: [] for kind in kinds[1:]} for clock in ("wall", "cpu")},
        "clock": "cpu" if config["interleave"] else "wall",
    }

    def add(measured: dict) -> None:
        """One comparison, {kind: (wall rate, cpu rate)}: ratios to the geometric mean of the
        two bare loops' rates, and again / bare."""
        for index, clock in enumerate(("wall", "cpu")):
            for kind in kinds:
                result["rates"][clock][kind].append(measured[kind][index])
            baseline = (measured["bare"][index] * measured["again"][index]) ** 0.5
            for kind in config["variants"]:
                result["ratios"][clock][kind].append(measured[kind][index] / baseline)
            result["ratios"][clock]["again"].append(
                measured["again"][index] / measured["bare"][index]
            )

    for rep in range(config["reps"]):
        if config["interleave"]:
            bar_interval[0] = 0.1 * len(kinds)
            session = RoundRobin(kinds, steps, seed=rep)
            session.run({kind: (lambda kind=kind: run(kind, steps)) for kind in kinds})
            bar_interval[0] = 0.1
            rates = {}
            for kind in kinds:
                wall = session.window_rates(kind, warmup, WINDOW, cpu=False)
                cpu = session.window_rates(kind, warmup, WINDOW, cpu=True)
                rates[kind] = list(zip(wall, cpu, strict=True))
            for window in range(min(len(values) for values in rates.values())):
                add({kind: rates[kind][window] for kind in kinds})
        else:
            variants = config["variants"] if rep % 2 == 0 else config["variants"][::-1]
            add({kind: clocked(kind) for kind in ["bare", *variants, "again"]})
    result["method"] = (
        f"{WINDOW}-step windows, {len(kinds)} loops taking turns step by step"
        if config["interleave"]
        else "whole runs one after the other"
    )
    result["save_seconds"] = save_seconds
    result["first_step"] = first_steps
    result["cold_first_step"] = cold_start
    result["skipped_steps"] = skipped[0]
    result["checkpoint_mib"] = median(checkpoint_bytes) / 2**20
    return result


if __name__ == "__main__":
    worker_main(worker)
