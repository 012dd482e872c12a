"""Run folders, and how a run stops: no run is overwritten by accident, and an interrupted run
saves before it goes.

Without --output-dir each run gets a new folder, runs/YYYYmmdd-HHMMSS-MODEL, so running the same
command twice keeps both runs. `--resume auto` continues the newest run under runs/ (or the one in
--output-dir). An --output-dir that already holds a run is refused unless the run is resumed, or
--overwrite says to start over there.
"""

import glob
import os
import signal
import threading
import time

import distributed

RUNS_DIR = "runs"
# What marks a folder as holding a run, and what --overwrite deletes (nothing else).
RUN_FILES = ("last.pt", "best.pt", "step_*.pt", "metrics.jsonl", "features/step_*.pt")


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
