"""What every benchmark module shares: rows of the table, timing, subprocesses, workers.

Nothing here imports torch: run.py stays light, and every measurement that needs torch runs in a
worker process of its own (`python benchmarks/MODULE.py --worker CONFIG.json`), so that thread
settings, imports and memory of one measurement never leak into another.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
PYTHON = sys.executable
BIN = Path(sys.executable).parent
NO_GPU = "no GPU"


@dataclass
class Row:
    """One line of the table. `value` and `baseline` are what was measured, already formatted."""

    figure: int
    what: str
    value: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    verdict: str = "info"  # met, MISSED, info, or why nothing was measured
    note: str = ""

    @property
    def measured(self) -> bool:
        return not self.verdict.startswith("not measured")


@dataclass
class Context:
    """Settings of one run of the benchmarks, handed to every module's `measure`."""

    quick: bool
    devices: list[str]  # "cpu" and/or "cuda": where the training figures run
    threads: int  # torch threads of every single-process CPU measurement
    work: Path  # a scratch folder, removed at the end
    projects: dict[str, Path] = field(default_factory=dict)  # "plain", "ddp" -> rendered project
    cuda_available: bool = False
    shared: dict = field(default_factory=dict)  # results one figure hands to a later one
    commands: dict[int, list[str]] = field(default_factory=dict)  # figure -> what it ran

    def log(self, message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    def record(self, figure: int, command) -> None:
        """Remember one command a figure ran, for the report (paths shortened)."""
        if not isinstance(command, str):
            command = shell_line(command)
        command = command.replace(PYTHON, "python").replace(str(BIN) + "/", "")
        command = command.replace(str(self.work), "$WORK").replace(str(ROOT) + "/", "")
        if command not in self.commands.setdefault(figure, []):
            self.commands[figure].append(command)


def shell_line(command) -> str:
    import shlex

    return " ".join(shlex.quote(str(part)) for part in command)


def median(values) -> float:
    return statistics.median(values)


def check(value: float, op: str, limit: float) -> str:
    """'met' or 'MISSED' for `value OP limit`."""
    ok = {"<": value < limit, "<=": value <= limit, ">=": value >= limit}[op]
    return "met" if ok else "MISSED"


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def rate(value: float, unit: str) -> str:
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def compile_scaffold() -> None:
    """Byte-compile scaffold's modules, as pip does when it installs the wheel.

    Run from a checkout (an editable install) with PYTHONDONTWRITEBYTECODE set, as on this
    machine, every `scaffold` process would compile them from source again: a cost no installed
    copy pays, and copier's modules (installed by pip) do not pay it either.
    """
    import compileall

    compileall.compile_dir(ROOT / "scaffold", quiet=1)


def bench_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a measured subprocess: the venv first on PATH, fixed thread counts."""
    env = dict(os.environ)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


@dataclass
class Finished:
    wall: float  # seconds from start to exit
    cpu: float  # user + system CPU seconds of the process and the children it waited for
    maxrss_kib: int  # peak resident set of the process itself (not of its children)
    returncode: int
    output: str


def run_measured(cmd, *, cwd=None, env=None, timeout: float = 600) -> Finished:
    """Run `cmd`; its wall time and its own peak RSS (os.wait4 on exactly this child)."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}-{time.time_ns()}.log"
    with open(log_path, "w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [str(part) for part in cmd],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(process.pid, 9)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    log_path.unlink(missing_ok=True)
    cpu = usage.ru_utime + usage.ru_stime
    return Finished(wall, cpu, usage.ru_maxrss, process.returncode, output)


def run_checked(cmd, **kwargs) -> Finished:
    finished = run_measured(cmd, **kwargs)
    if finished.returncode != 0:
        shown = " ".join(str(part) for part in cmd)
        raise RuntimeError(f"{shown} exited {finished.returncode}:\n{finished.output[-3000:]}")
    return finished


def run_worker(
    module: str, config: dict, ctx: Context, threads: int | None = None, env: dict | None = None
) -> dict:
    """Run `python benchmarks/MODULE.py --worker CONFIG` and return the JSON it wrote."""
    config = dict(config)
    stamp = time.time_ns()
    config_path = ctx.work / f"{module}-{stamp}.json"
    config["result"] = str(ctx.work / f"{module}-{stamp}.result.json")
    config_path.write_text(json.dumps(config))
    threads = ctx.threads if threads is None else threads
    run_checked(
        [PYTHON, BENCH_DIR / f"{module}.py", "--worker", config_path],
        cwd=ctx.work,
        env=bench_env(threads, **(env or {})),
    )
    return json.loads(Path(config["result"]).read_text())


def worker_main(measure) -> None:
    """The `--worker CONFIG.json` entry point of a module: measure(config) -> JSON result."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(f"usage: {sys.argv[0]} --worker CONFIG.json (benchmarks/run.py starts workers)")
    config = json.loads(Path(sys.argv[2]).read_text())
    result = measure(config)
    Path(config["result"]).write_text(json.dumps(result))


def set_threads(threads: int) -> None:
    """The same torch thread count in every worker (OMP_NUM_THREADS is set too)."""
    import torch

    torch.set_num_threads(threads)


class StepHooks:
    """Calls every registered `callback(skipped)` once per training-loop iteration, on the thread
    that ran it: at the end of each optimizer step (torch.optim's global step post-hook), and
    where GradScaler skipped optimizer.step() because float16 gradients overflowed, at the end of
    scaler.step() with skipped=True. Counting optimizer steps alone would lose those iterations:
    a CUDA run with --amp skips a few of its first steps while the loss scale settles.

    Patching GradScaler.step (the class, for as long as a callback is registered) leaves both
    loops unchanged; a disabled scaler calls optimizer.step() itself and is not counted twice.
    """

    callbacks: list = []
    _handle = None
    _original_scaler_step = None
    _local = threading.local()

    @classmethod
    def add(cls, callback) -> None:
        if not cls.callbacks:
            cls._install()
        cls.callbacks.append(callback)

    @classmethod
    def remove(cls, callback) -> None:
        cls.callbacks.remove(callback)
        if not cls.callbacks:
            cls._uninstall()

    @classmethod
    def _fire(cls, skipped: bool) -> None:
        for callback in list(cls.callbacks):
            callback(skipped)

    @classmethod
    def _install(cls) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def after_step(optimizer, args, kwargs) -> None:
            cls._local.steps = getattr(cls._local, "steps", 0) + 1
            cls._fire(False)

        original = torch.amp.GradScaler.step

        def scaler_step(scaler, optimizer, *args, **kwargs):
            before = getattr(cls._local, "steps", 0)
            result = original(scaler, optimizer, *args, **kwargs)
            if getattr(cls._local, "steps", 0) == before:
                cls._fire(True)
            return result

        cls._handle = register_optimizer_step_post_hook(after_step)
        cls._original_scaler_step = original
        torch.amp.GradScaler.step = scaler_step

    @classmethod
    def _uninstall(cls) -> None:
        import torch

        cls._handle.remove()
        torch.amp.GradScaler.step = cls._original_scaler_step
        cls._handle = cls._original_scaler_step = None


class StepClock:
    """perf_counter() at the end of every training-loop iteration in this process (StepHooks):
    every optimizer step, and every step GradScaler skipped, so the generated train.py and the
    bare loop are timed by the same code without touching either. On CUDA, the device is
    synchronised only at the two iterations that bound the timed window (not on every one, which
    would hide the generated loop's own synchronisations). `skipped` counts the skipped steps.
    """

    def __init__(self, warmup: int, steps: int, cuda: bool):
        import torch

        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU time, all threads
        self.skipped = 0
        self.started = time.perf_counter()  # time to the first step counts from here
        self._torch = torch
        StepHooks.add(self._tick)

    def _tick(self, skipped: bool) -> None:
        if self.cuda and len(self.times) + 1 in (1, self.warmup, self.steps):
            self._torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        self.skipped += skipped

    def first_step_seconds(self) -> float:
        """From the clock's creation to the end of the first iteration: set-up (model, data,
        CUDA context, cuDNN's choice of kernels) and one step."""
        if not self.times:
            raise RuntimeError("no training-loop iteration ran")
        return self.times[0] - self.started

    def steps_per_second(self, cpu: bool = False) -> float:
        """Iterations per second from the end of iteration `warmup` to the end of the last one;
        with `cpu`, per second of this process's CPU time (robust when other processes load the
        machine: time spent waiting for a core is not counted)."""
        if len(self.times) < self.warmup + 1:
            raise RuntimeError(
                f"only {len(self.times)} training-loop iterations ran "
                f"({self.skipped} of them skipped by GradScaler)"
            )
        timed = (self.cpu_times if cpu else self.times)[self.warmup - 1 :]
        return (len(timed) - 1) / (timed[-1] - timed[0])

    def window_rate(self, window: int, cpu: bool = False) -> float:
        """Iterations per second from the median duration of consecutive `window`-iteration
        windows after warm-up: a burst of load from another process spoils a few windows, not
        the figure. With window = train.py's --log-every each window holds exactly one logged
        step."""
        timed = (self.cpu_times if cpu else self.times)[self.warmup - 1 :]
        durations = [timed[i + window] - timed[i] for i in range(0, len(timed) - window, window)]
        if not durations:
            return self.steps_per_second(cpu)
        return window / statistics.median(durations)

    def close(self) -> None:
        StepHooks.remove(self._tick)


class RoundRobin:
    """Several training loops in threads of one process, taking turns one optimizer step at a
    time, each step timed on its own thread. Every round (one step of each loop) goes in a new
    random order, so that no loop always follows the same other one (which would give it the
    same caches and the same core every time: a bias of several percent for small models).

    The turn passes at the end of each iteration (StepHooks), so the loops run unchanged: the
    generated train.main() and the bare loop alike. While one loop runs its step the others wait
    on a condition (holding neither the GIL nor a core), so every step runs alone, and the steps
    of all loops see the same load from the rest of the machine, step by step. Step k of a loop
    is timed from the moment it got its turn back after step k-1 to the end of its optimizer
    step k: everything the loop does per step, data loading and logging included. Wall time and
    the thread's CPU time are recorded. All loops start taking turns once every one of them has
    finished its set-up and first step, and none goes on past its last step (to validation,
    checkpoints) until all have finished theirs.
    """

    def __init__(self, names: list[str], steps: int, timeout: float = 600, seed: int = 0):
        import random

        self.threading = threading
        self.order = list(names)
        self.steps = steps
        self.timeout = timeout
        self.random = random.Random(seed)
        self.round: list[str] = []  # who takes the next turns of the current round, in order
        self.cond = threading.Condition()
        self.turn = self.order[0]
        self.done = dict.fromkeys(names, 0)
        self.finished: set[str] = set()
        self.durations: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        self.resumed: dict[str, tuple[float, float]] = {}
        self.thread_names: dict[int, str] = {}
        self.start = threading.Barrier(len(names), timeout=timeout)
        self.end = threading.Barrier(len(names), timeout=timeout)
        self.errors: dict[str, BaseException] = {}
        StepHooks.add(self._hook)

    def run(self, loops: dict) -> None:
        """Run {name: function} in threads, taking turns; re-raise the first error."""
        threads = [
            self.threading.Thread(target=self._target, args=(name, loops[name]), name=name)
            for name in self.order
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            StepHooks.remove(self._hook)
        if self.errors:
            name, error = next(iter(self.errors.items()))
            raise RuntimeError(f"loop {name} failed: {error!r}") from error

    def _target(self, name: str, function) -> None:
        self.thread_names[self.threading.get_ident()] = name
        try:
            function()
        except BaseException as error:  # noqa: B036 - reported by run()
            self.errors[name] = error
            self.start.abort()
            self.end.abort()
        finally:
            with self.cond:
                self.finished.add(name)
                self._pass_turn(name)
                self.cond.notify_all()

    def _pass_turn(self, name: str) -> None:
        self.round = [other for other in self.round if other not in self.finished]
        if not self.round:
            self.round = [other for other in self.order if other not in self.finished]
            self.random.shuffle(self.round)
        if self.round:
            self.turn = self.round.pop(0)

    def _hook(self, skipped: bool) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        name = self.thread_names.get(self.threading.get_ident())
        if name is None:
            return
        if name in self.resumed:
            started_wall, started_cpu = self.resumed[name]
            self.durations[name].append((wall - started_wall, cpu - started_cpu))
        self.done[name] += 1
        if self.done[name] == 1:
            self.start.wait()  # every loop has been set up and has taken its first step
        elif self.done[name] >= self.steps:
            with self.cond:
                self.finished.add(name)
                self._pass_turn(name)
                self.cond.notify_all()
            self.end.wait()
            return
        else:
            with self.cond:
                self._pass_turn(name)
                self.cond.notify_all()
        with self.cond:
            if not self.cond.wait_for(
                lambda: self.turn == name or self.errors, timeout=self.timeout
            ):
                raise RuntimeError(f"loop {name} waited {self.timeout} s for its turn")
        self.resumed[name] = (time.perf_counter(), time.thread_time())

    def window_rates(self, name: str, warmup: int, window: int, cpu: bool) -> list[float]:
        """Steps per second of each `window`-step window after the first `warmup` timed steps."""
        durations = [pair[1 if cpu else 0] for pair in self.durations[name][warmup:]]
        return [
            window / sum(durations[i : i + window])
            for i in range(0, len(durations) - window + 1, window)
        ]


def in_memory_sets(torch, size: int, val_size: int, classes: int = 10, image_size: int = 32):
    """Random uint8 images and labels as tensors (the same for a given size on every process):
    what the project's datasets yield, so both loops convert and normalize on the device."""
    generator = torch.Generator().manual_seed(1234)
    shape = (3, image_size, image_size)
    images = torch.randint(
        0, 256, (size + val_size, *shape), generator=generator, dtype=torch.uint8
    )
    labels = torch.randint(0, classes, (size + val_size,), generator=generator)
    return (images[:size], labels[:size]), (images[size:], labels[size:])


def in_memory_datasets(torch, dataset, size: int, val_size: int) -> tuple:
    """in_memory_sets as the project's own dataset.InMemoryImages: (train, val)."""
    (train_x, train_y), (val_x, val_y) = in_memory_sets(torch, size, val_size)
    return dataset.InMemoryImages(train_x, train_y), dataset.InMemoryImages(val_x, val_y)


def in_memory_masks(torch, size: int, val_size: int, classes: int = 10, image_size: int = 32):
    """What a segmentation project's datasets yield, held in tensors: random uint8 images with
    int64 masks of random 4x4-pixel blocks of class indices (the same on every process), as
    TensorDatasets: (train, val)."""
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(1234)
    total = size + val_size
    images = torch.randint(
        0, 256, (total, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    )
    blocks = torch.randint(
        0, classes, (total, image_size // 4, image_size // 4), generator=generator
    )
    masks = blocks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    return TensorDataset(images[:size], masks[:size]), TensorDataset(images[size:], masks[size:])


def spread(values: list[float]) -> str:
    """The quartiles of `values`, '0.970-1.010' (the values themselves when there are few)."""
    if len(values) < 4:
        return " ".join(f"{value:.3f}" for value in values)
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.3f}-{high:.3f}"


def gpu_flags(device: str) -> list[str]:
    """What every CUDA figure runs with."""
    return ["--amp", "--channels-last"] if device == "cuda" else []


def machine() -> dict[str, str]:
    """Cores, CPU model, memory, Python and torch versions, GPU: for the header of the report."""
    info = {"cores": str(os.cpu_count())}
    if hasattr(os, "sched_getaffinity"):
        info["cores"] = f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
                break
    except OSError:
        pass
    info["python"] = sys.version.split()[0]
    probe = subprocess.run(
        [
            PYTHON,
            "-c",
            "import json, torch, torchvision, copier; print(json.dumps([torch.__version__, "
            "torchvision.__version__, copier.__version__, torch.cuda.is_available() and "
            "torch.cuda.get_device_name(0), torch.get_num_threads()]))",
        ],
        capture_output=True,
        text=True,
    )
    torch_version, vision_version, copier_version, gpu, threads = json.loads(probe.stdout)
    info["torch"] = torch_version
    info["torchvision"] = vision_version
    info["copier"] = copier_version
    info["gpu"] = gpu or "none"
    info["torch default threads"] = str(threads)
    return info


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"
