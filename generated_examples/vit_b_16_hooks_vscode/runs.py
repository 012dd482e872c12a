"""Run folders: no run is overwritten by accident.

Without --output-dir each run gets a new folder, runs/YYYYmmdd-HHMMSS-MODEL, so running the same
command twice keeps both runs. `--resume auto` continues the newest run under runs/ (or the one in
--output-dir). An --output-dir that already holds a run is refused unless the run is resumed, or
--overwrite says to start over there.

How a run stops on a signal is in signals.py; what it records about itself (config.json,
env.json) in records.py.
"""

import glob
import os
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


class RunDirError(Exception):
    """An output folder that cannot be used as asked; the message says what to do instead."""


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
