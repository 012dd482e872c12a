"""Figure 7: operators dispatched and host-device synchronisations per step, generated vs bare.

A proxy for the GPU's launch overhead that a CPU measures exactly. On a GPU, every aten operator
the loop dispatches is (about) one kernel launch, paid in Python and in the dispatcher whether
the kernel is big or small, and every synchronisation stalls the host until the GPU has caught up
(the next launches wait too). Neither depends on the machine's load: they are counted, not timed.

In one worker process, the generated train.main(argv), unchanged, and bare_loop.bare_train run
one after the other on the same in-memory uint8 images (as in figure 3: same model, optimizer,
batch and data, default flags), each under a TorchDispatchMode that records every aten operator
by name, and a TorchFunctionMode that records the tensor methods that copy to the host. A step
runs from the moment a loop asks the DataLoader for its batch to the moment it asks for the next
one, so a logged step's read-back of its losses and metrics line count in that step. What the
DataLoader does itself (sampling, indexing, collating, pinning: host work on host tensors) is not
counted.

Synchronisations counted: aten::_local_scalar_dense (`.item()`, `float(t)`, `if t:`), operators
whose output size depends on the data (nonzero, masked_select, unique...), aten::equal, the
methods .tolist(), .numpy() and .cpu(), and on CUDA any copy from the GPU to the host. On a CPU
run a `.to("cpu")` cannot be told from the loop's own copy of a batch to the device, so it is not
counted there; `torch.cuda.set_sync_debug_mode` would catch it on a GPU.

Steps compared: all but the first (which creates the optimizer's state) and the last (which
train.py always logs, and after which it validates). Logged steps are train.py's --log-every
steps (every 10th at default flags); the bare loop has none, so a logged step is compared with
the bare loop's typical step.

    python benchmarks/op_count.py --project DIR [--model lenet] [--device cpu] [--steps 22]

prints the counts and the operators the generated loop adds, by name.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    BENCH_DIR,
    NO_GPU,
    PYTHON,
    Context,
    Row,
    bench_env,
    check,
    gpu_flags,
    in_memory_datasets,
    run_checked,
    set_threads,
    worker_main,
)

BATCH = 32
STEPS = 22  # with --log-every 10: logged steps 10 and 20, un-logged 2-9, 11-19 and 21
LOG_EVERY = 10  # train.py's default
OPS_ALLOWED = 2  # operators train.py may add to an un-logged step: the running loss (detach, add_)
# Operators that make the host wait for the device: a value read back, or an output whose size
# depends on the data.
SYNC_OPERATORS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::equal",
    "aten::_assert_async",
}
HOST_METHODS = {"tolist", "numpy", "cpu"}  # copy a device tensor to the host, waiting for it


def count(
    project: Path,
    model: str = "lenet",
    device: str = "cpu",
    steps: int = STEPS,
    work: Path | None = None,
    threads: int = 1,
) -> dict:
    """Counts of the generated loop and the bare loop (see `summarize`), from a worker process
    of their own: the project's modules and the dispatch modes stay out of the caller."""
    config = {
        "project": str(project),
        "model": model,
        "device": device,
        "steps": steps,
        "log_every": LOG_EVERY,
        "threads": threads,
    }
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        config_path = Path(scratch) / "config.json"
        config["result"] = str(Path(scratch) / "result.json")
        config["scratch"] = scratch
        config_path.write_text(json.dumps(config))
        run_checked(
            [PYTHON, BENCH_DIR / "op_count.py", "--worker", config_path],
            cwd=scratch,
            env=bench_env(threads),
        )
        return json.loads(Path(config["result"]).read_text())


def measure(ctx: Context) -> list[Row]:
    rows = []
    models = ["lenet"] if ctx.quick else ["lenet", "resnet18"]
    for device in ("cpu", "cuda"):
        label = "CPU, default flags" if device == "cpu" else "CUDA, --amp --channels-last"
        for model in models:
            name = f"{model}, {label}"
            if device not in ctx.devices:
                reason = NO_GPU if device == "cuda" and not ctx.cuda_available else "--device"
                for what, target in (
                    ("aten operators per step, un-logged steps", f"<= bare + {OPS_ALLOWED}"),
                    ("host-device synchronisations per step, un-logged steps", "<= bare"),
                ):
                    rows.append(
                        Row(7, f"{what}, {name}", "—", "—", None, target, f"not measured: {reason}")
                    )
                continue
            ctx.log(f"operators per step: {model} on {device}")
            ctx.record(
                7,
                f"python benchmarks/op_count.py --project $WORK/proj_plain --model {model} "
                f"--device {device} --steps {STEPS}   # train.main --log-every {LOG_EVERY} "
                f"{'--amp --channels-last ' if device == 'cuda' else ''}vs bare_train, "
                "in-memory uint8 data",
            )
            result = count(ctx.projects["plain"], model, device, STEPS, ctx.work, ctx.threads)
            ctx.shared[("ops", model, device)] = result
            rows += result_rows(name, result)
    return rows


def result_rows(name: str, result: dict) -> list[Row]:
    bare = result["bare"]["unlogged"]
    rows = []
    for kind, label in (("unlogged", "un-logged steps"), ("logged", "logged steps")):
        ours = result["generated"][kind]
        if ours is None:
            continue
        added = ours["ops"] - bare["ops"]
        extra = ", ".join(f"{op} {n:+d}" for op, n in ours["ops_added"].items()) or "none"
        target = f"<= bare + {OPS_ALLOWED}" if kind == "unlogged" else ""
        rows.append(
            Row(
                7,
                f"aten operators per step, {label}, {name}",
                f"{ours['ops']:g} ({added:+g} over bare)",
                f"{bare['ops']:g} (bare loop)",
                ours["ops"] / bare["ops"],
                target,
                check(added, "<=", OPS_ALLOWED) if target else "info",
                note=f"operators train.py adds, by name: {extra}; median of "
                f"{ours['steps']} steps (range {ours['ops_range']})",
            )
        )
        syncs = ", ".join(f"{op} {n}" for op, n in ours["sync_names"].items()) or "none"
        rows.append(
            Row(
                7,
                f"host-device synchronisations per step, {label}, {name}",
                f"{ours['syncs']:g}",
                f"{bare['syncs']:g} (bare loop)",
                None,
                "<= bare" if kind == "unlogged" else "",
                check(ours["syncs"], "<=", bare["syncs"]) if kind == "unlogged" else "info",
                note=f"what synchronises: {syncs}",
            )
        )
    return rows


# ---- the worker -------------------------------------------------------------------------------


class Recorder:
    """Operators and synchronisations of each step of the loop being counted."""

    def __init__(self):
        self.steps: list[tuple[collections.Counter, collections.Counter]] = []
        self.active = False
        self.paused = 0  # inside the DataLoader
        self.in_host_method = 0  # inside .tolist() & co, counted once as the method

    def new_step(self) -> None:
        if self.active:
            self.steps.append((collections.Counter(), collections.Counter()))

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    @property
    def counting(self) -> bool:
        return self.active and bool(self.steps) and not self.paused


def is_device_to_host(name: str, args, out) -> bool:
    """A copy from a GPU to the host: aten::_to_copy(src) or aten::copy_(dst, src)."""
    import torch

    if name == "aten::_to_copy":
        source, destination = args[0], out
    elif name == "aten::copy_":
        destination, source = args[0], args[1]
    else:
        return False
    return (
        isinstance(source, torch.Tensor)
        and isinstance(destination, torch.Tensor)
        and source.device.type != "cpu"
        and destination.device.type == "cpu"
    )


def counting_modes(recorder: Recorder):
    """(TorchFunctionMode, TorchDispatchMode) that record into `recorder`."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Methods(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name not in HOST_METHODS or not recorder.counting:
                return func(*args, **kwargs)
            recorder.steps[-1][1][f"Tensor.{name}()"] += 1
            recorder.in_host_method += 1
            try:
                return func(*args, **kwargs)
            finally:
                recorder.in_host_method -= 1

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if recorder.counting:
                name = func._schema.name
                ops, syncs = recorder.steps[-1]
                ops[name] += 1
                if not recorder.in_host_method and (
                    name in SYNC_OPERATORS or is_device_to_host(name, args, out)
                ):
                    syncs[name] += 1
            return out

    return Methods(), Operators()


def step_boundaries(recorder: Recorder):
    """DataLoader.__iter__ patched: each batch asked for starts a step, and the DataLoader's own
    work is left out. A context manager; the patch is undone on leaving."""
    from torch.utils.data import DataLoader

    original = DataLoader.__iter__

    class Batches:
        def __init__(self, iterator):
            self.iterator = iterator

        def __iter__(self):
            return self

        def __next__(self):
            recorder.new_step()
            with recorder.pause():
                return next(self.iterator)

        def __len__(self):
            return len(self.iterator)

    def counted_iter(loader):
        with recorder.pause():
            return Batches(original(loader))

    @contextlib.contextmanager
    def patched():
        DataLoader.__iter__ = counted_iter
        try:
            yield
        finally:
            DataLoader.__iter__ = original

    return patched()


def summarize(steps, logged: set[int]) -> dict:
    """{"unlogged": stats, "logged": stats or None} over steps 2 .. N-1 (1-based)."""
    chosen = {"unlogged": [], "logged": []}
    for number, counters in enumerate(steps, start=1):
        if 1 < number < len(steps):
            chosen["logged" if number in logged else "unlogged"].append(counters)
    summary = {}
    for kind, picked in chosen.items():
        if not picked:
            summary[kind] = None
            continue
        totals = [sum(ops.values()) for ops, _ in picked]
        sync_totals = [sum(syncs.values()) for _, syncs in picked]
        typical = picked[totals.index(sorted(totals)[len(totals) // 2])]
        summary[kind] = {
            "steps": len(picked),
            "ops": statistics.median(totals),
            "ops_range": f"{min(totals)}-{max(totals)}",
            "syncs": statistics.median(sync_totals),
            "op_names": dict(typical[0]),
            "sync_names": dict(typical[1]),
        }
    return summary


def added_ops(ours: dict, bare: dict) -> dict[str, int]:
    """{operator: how many more (or fewer) the generated loop's step dispatches}, nonzero only."""
    names = sorted(set(ours) | set(bare))
    return {n: ours.get(n, 0) - bare.get(n, 0) for n in names if ours.get(n, 0) != bare.get(n, 0)}


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import dataset
    import train
    from bare_loop import bare_train, plain_loader
    from model import build_model

    model_name, device, steps = config["model"], config["device"], config["steps"]
    cuda = device == "cuda"
    train_set, val_set = in_memory_datasets(torch, dataset, BATCH * steps, BATCH * 2)
    train.build_datasets = lambda args: (train_set, val_set)

    def generated() -> None:
        train.main([
            "--model", model_name, "--batch-size", str(BATCH), "--workers", "0",
            "--epochs", "1", "--max-steps", str(steps), "--device", device,
            "--log-every", str(config["log_every"]),
            "--output-dir", tempfile.mkdtemp(dir=config["scratch"]), *gpu_flags(device),
        ])  # fmt: skip

    def bare() -> None:
        torch.manual_seed(0)
        model = build_model(model_name, 10, 3, 32)
        bare_train(model, plain_loader(train_set, BATCH, 0, cuda), steps, device, cuda, cuda)

    # Once each uncounted first: lazy imports and first-call set-up are not the loop's.
    generated()
    bare()
    counted = {}
    for name, loop in (("generated", generated), ("bare", bare)):
        recorder = Recorder()
        methods, operators = counting_modes(recorder)
        with step_boundaries(recorder), methods, operators:
            recorder.active = True
            loop()
            recorder.active = False
        counted[name] = recorder.steps[:steps]
    if len(counted["bare"]) < steps or len(counted["generated"]) < steps:
        counts = {name: len(steps_of) for name, steps_of in counted.items()}
        raise RuntimeError(f"fewer than {steps} steps counted: {counts}")
    log_every = config["log_every"]
    logged = {n for n in range(1, steps + 1) if n % log_every == 0 or n == steps}
    result = {
        "generated": summarize(counted["generated"], logged),
        "bare": summarize(counted["bare"], set()),
        "steps": steps,
        "log_every": log_every,
    }
    bare_names = result["bare"]["unlogged"]["op_names"]
    for kind in ("unlogged", "logged"):
        if result["generated"][kind] is not None:
            ours = result["generated"][kind]["op_names"]
            result["generated"][kind]["ops_added"] = added_ops(ours, bare_names)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="a generated project")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    result = count(Path(args.project).resolve(), args.model, args.device, args.steps)
    for row in result_rows(f"{args.model}, {args.device}", result):
        print(f"{row.what}: {row.value} vs {row.baseline} [{row.verdict}]\n    {row.note}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(worker)
    else:
        main()
