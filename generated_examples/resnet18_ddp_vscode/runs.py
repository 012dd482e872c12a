"""Run folders, and how a run stops: no run is overwritten by accident, and an interrupted run
saves before it goes.

Without --output-dir each run gets a new folder, runs/YYYYmmdd-HHMMSS-MODEL, so running the same
command twice keeps both runs. `--resume auto` continues the newest run under runs/ (or the one in
--output-dir). An --output-dir that already holds a run is refused unless the run is resumed, or
--overwrite says to start over there.
"""

import glob
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time

import distributed

RUNS_DIR = "runs"
# What marks a folder as holding a run, and what --overwrite deletes (nothing else).
RUN_FILES = (
    "last.pt",
    "best.pt",
    "step_*.pt",
    "metrics.jsonl",
    "config.json",
    "env.json",
    "mlflow.json",
    "wandb.json",
    "features/step_*.pt",
    "tensorboard/events.out.tfevents.*",
)
# What an invocation does rather than how the run trains: left out of config.json, so that
# `--config RUN/config.json` repeats the run's settings without resuming or overwriting anything.
ACTIONS = ("config", "resume", "overwrite", "eval_only", "summary")


class RunDirError(Exception):
    """An output folder that cannot be used as asked; the message says what to do instead."""


def signal_name(number: int) -> str:
    return signal.Signals(number).name


class Stopped(Exception):
    """Training stopped on a signal; train.py prints the message and exits 128 + the number."""

    def __init__(self, number: int, message: str = ""):
        super().__init__(message or f"stopped by {signal_name(number)}")
        self.number = number


def run_files(directory: str) -> list[str]:
    paths = (glob.glob(os.path.join(directory, pattern)) for pattern in RUN_FILES)
    return sorted(path for matches in paths for path in matches)


def new_run_dir(model: str, root: str = RUNS_DIR) -> str:
    """A folder name under `root` that no run has taken: the time now, then the model."""
    base = os.path.join(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{model}")
    path, number = base, 1
    while os.path.exists(path):
        number += 1
        path = f"{base}-{number}"
    return path


def newest_run(root: str = RUNS_DIR) -> str | None:
    """The run under `root` whose newest checkpoint is the newest of all, or None."""
    newest, newest_time = None, 0.0
    for folder in glob.glob(os.path.join(root, "*", "")):
        for path in glob.glob(os.path.join(folder, "*.pt")):
            if os.path.getmtime(path) > newest_time:
                newest, newest_time = folder.rstrip(os.sep), os.path.getmtime(path)
    return newest


def output_dir_problem(args) -> str | None:
    """Why the run cannot write where it would (checked when the options are parsed)."""
    folder = args.output_dir or RUNS_DIR
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"--output-dir {folder} is a file, not a folder: choose another --output-dir"
    anchor = os.path.abspath(folder)
    while not os.path.exists(anchor):
        anchor = os.path.dirname(anchor)
    if not os.path.isdir(anchor):
        return f"--output-dir {folder} is inside a file ({anchor}): choose another --output-dir"
    if not args.eval_only and not os.access(anchor, os.W_OK | os.X_OK):
        return f"cannot write in {anchor}: choose another --output-dir"
    existing = run_files(folder) if args.output_dir and not args.eval_only else []
    if existing and not args.overwrite and not continues_run(args):
        return (
            f"{folder} already holds a run ({os.path.basename(existing[0])}): continue it with "
            "--resume auto, start over there with --overwrite, or choose another --output-dir"
        )
    return None


def choose_output_dir(args) -> str:
    """Where this run writes (rank 0 decides, every process gets the same answer)."""
    return distributed.broadcast_object(_choose(args) if distributed.is_main_process() else None)


def _choose(args) -> str:
    if args.output_dir is None:
        newest = newest_run() if args.resume == "auto" else None
        if newest:
            print(f"resuming the newest run under {RUNS_DIR}/: {newest}")
            return newest
        if args.resume and args.resume != "auto":
            return os.path.dirname(args.resume) or "."
        return new_run_dir(args.model)
    return args.output_dir


def prepare_output_dir(output_dir: str, args) -> None:
    """Make the folder; with --overwrite, delete the run it held (its files only)."""
    if distributed.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        if args.overwrite:
            for path in run_files(output_dir):
                os.remove(path)
    distributed.barrier()


def continues_run(args) -> bool:
    """Whether --resume continues the run in --output-dir (not one from elsewhere)."""
    if args.resume == "auto":
        return True
    folder = os.path.dirname(os.path.abspath(args.resume)) if args.resume else None
    return folder == os.path.abspath(args.output_dir)


def record_invocation(output_dir: str, args, ctx, template_version: str, resumed: str | None):
    """OUTPUT_DIR/config.json: every option of the run (written by its first invocation), and
    OUTPUT_DIR/env.json: one entry per invocation (a resumed run adds its own), saying where and
    with what it ran, which code, and which options differed from config.json."""
    if not ctx.is_main:
        return
    options = {key: value for key, value in vars(args).items() if key not in ACTIONS}
    config_path = os.path.join(output_dir, "config.json")
    if not os.path.exists(config_path):
        write_json(config_path, options)
    first = read_json(config_path)
    entry = environment(ctx, template_version)
    entry["resumed_from"] = resumed
    entry["changed_options"] = {
        key: value for key, value in options.items() if first.get(key) != value
    }
    env_path = os.path.join(output_dir, "env.json")
    invocations = read_json(env_path).get("invocations", [])
    write_json(env_path, {"invocations": [*invocations, entry]})


def environment(ctx, template_version: str) -> dict:
    """Where this process runs and with what: versions, devices, the project's code and how it
    was made."""
    import torch
    import torchvision

    project = os.path.dirname(os.path.abspath(__file__))
    cuda = torch.cuda.is_available()
    commit = git(project, "rev-parse", "HEAD")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.orig_argv,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "git_commit": commit,
        "git_dirty": bool(git(project, "status", "--porcelain")) if commit else None,
        "template_version": template_version,
        "scaffold_new": scaffold_command(project),
    }


def git(folder: str, *args: str) -> str | None:
    """The output of a git command in `folder`, or None (no git, or not a repository)."""
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def scaffold_command(project: str) -> str | None:
    """The `scaffold new` command that makes this project again (from its copier answers)."""
    import yaml

    try:
        with open(os.path.join(project, ".copier-answers.yml")) as file:
            answers = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return None
    flags = []
    for key, value in answers.items():
        if key.startswith("_") or key in ("project_name", "template_version"):
            continue
        option = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{option}" if value else f"--no-{option}")
        else:
            flags.append(f"--{option} {value}")
    return " ".join(["scaffold new", str(answers["project_name"]), *flags])


def read_json(path: str) -> dict:
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return {}


def write_json(path: str, value: dict) -> None:
    """Replace `path` atomically: a reader, or a run killed half-way, never sees half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(value, file, indent=2)
    os.replace(temporary, path)


def find_run_to_evaluate(args) -> str:
    """The folder `--eval-only --resume auto` reads: --output-dir, or the newest run."""
    folder = args.output_dir or newest_run()
    if folder is None:
        raise RunDirError(f"no run under {RUNS_DIR}/ to evaluate: pass --resume PATH")
    return folder


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers send before they end a job) ask training to
    stop: the loop finishes its optimizer step, every process agrees on that step, train.py saves
    a checkpoint and exits 130 or 143. A second SIGINT stops at once, without saving; the last
    checkpoint stays intact (checkpoints are written to a temporary file, then renamed).

    Use as a context manager around the training; `agreed()` after each optimizer step.
    """

    NUMBERS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = 0
        self.previous = {}
        self.agreement = None

    def __enter__(self):
        self.agreement = distributed.Agreement()
        if threading.current_thread() is threading.main_thread():
            for number in self.NUMBERS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number: int, frame) -> None:
        if number == signal.SIGINT and self.received == signal.SIGINT:
            raise Stopped(number, "stopped by a second SIGINT: not saved")
        self.received = self.received or number

    def agreed(self) -> int:
        """The signal that all processes stop for now, or 0 to go on (a collective)."""
        return self.agreement.largest(self.received)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the training process, which stops them
    itself after saving (Ctrl-C reaches every process of the terminal's foreground group)."""
    for number in StopSignals.NUMBERS:
        signal.signal(number, signal.SIG_IGN)
