"""Run folders: no run is overwritten by accident.

Without --output-dir each run gets a new folder, runs/YYYYmmdd-HHMMSS-MODEL, so running the same
command twice keeps both runs. `--resume auto` continues the newest run under runs/ (or the one in
--output-dir). An --output-dir that already holds a run is refused unless the run is resumed, or
--overwrite says to start over there.

How a run stops on a signal is in signals.py; what it records about itself (config.json,
env.json) in records.py.
"""

import fnmatch
import glob
import os
import shlex
import shutil
import socket
import sys
import time
from contextlib import contextmanager

import distributed
from files import remove_quietly

RUNS_DIR = "runs"
LOCK_FILE = "train.lock"  # held by the process training in the folder (see lock_run)
# What marks a folder as holding a run, and what --overwrite deletes (nothing else).
RUN_FILES = (
    "last.pt",
    "best.pt",
    "step_*.pt",
    # --fsdp's checkpoints are folders (sharded.py), and so are the saves it cut short.
    "step_[0-9]*[0-9]",
    "step_*.partial",
    "step_*.replaced",
    "best",
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


def run_file_clash(path: str) -> str | None:
    """How writing `path` would harm a run, or None: in a folder that holds a run, `path` is the
    name of one of the run's checkpoints or records (RUN_FILES), which it would replace, or
    which train.py would take for the run's own (and --overwrite delete)."""
    path = os.path.normpath(path)
    for pattern in RUN_FILES:
        run = path
        for _ in range(pattern.count("/") + 1):  # features/step_*.pt: the run is two folders up
            run = os.path.dirname(run) or "."
        name = os.path.relpath(path, run).replace(os.sep, "/")
        if fnmatch.fnmatch(name, pattern) and run_files(run):
            if os.path.exists(path):
                return f"would replace {name} of the run in {run}"
            return f"would be taken for one of the run's files ({pattern}) in {run}"
    return None


def checkpoint_file_problem(path: str) -> str | None:
    """Why `path` is not a checkpoint file, as the end of a sentence that starts with the option
    that names it; None when it is one."""
    if os.path.isfile(path):
        return None
    if os.path.isfile(os.path.join(path, ".metadata")):  # a step folder of a --fsdp run
        return (
            f"{path} is a sharded checkpoint: make it one file with "
            f"python sharded.py consolidate {path} FILE"
        )
    return f"{path}: no such file"


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
        checkpoints = glob.glob(os.path.join(folder, "*.pt"))
        checkpoints += glob.glob(os.path.join(folder, "step_*", ".metadata"))  # --fsdp's
        for path in checkpoints:
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
            f"--resume {folder}, start over there with --overwrite, or choose another --output-dir"
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
            return (
                args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume) or "."
            )
        return new_run_dir(args.model)
    return args.output_dir


class RunLock:
    """This process's claim on a run folder: while it holds the lock, no other process trains
    there. The lock is the kernel's (flock), so it goes when the process does, SIGKILL included;
    the file only says who holds it."""

    def __init__(self, folder: str):
        import fcntl

        self.file = open(os.path.join(folder, LOCK_FILE), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirError(
                f"{folder} is being trained by {holder}: wait for it to end, or choose another "
                "--output-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        command = " ".join(shlex.quote(part) for part in sys.orig_argv)
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} ({command})\n")
        self.file.flush()

    def release(self) -> None:
        """Remove the file, then close it, which releases the lock (a process that opened the
        file in between fails to take the lock of a file that is gone, and nothing is lost)."""
        remove_quietly(self.file.name)
        self.file.close()


@contextmanager
def claim_output_dir(output_dir: str, args):
    """Make the folder and hold it while the run trains (rank 0 holds its RunLock); with
    --overwrite, delete the run it held (its files only)."""
    lock, problem = None, None
    if distributed.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        try:
            lock = RunLock(output_dir)
        except RunDirError as error:
            problem = str(error)
        if lock and args.overwrite:
            for path in run_files(output_dir):
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    problem = distributed.broadcast_object(problem)
    if problem:
        raise RunDirError(problem)
    try:
        yield
    finally:
        if lock:
            lock.release()


def continues_run(args) -> bool:
    """Whether --resume continues the run in --output-dir (not one from elsewhere)."""
    if args.resume == "auto":
        return True
    if not args.resume:
        return False
    folder = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
    return os.path.abspath(folder) == os.path.abspath(args.output_dir)


def find_run_to_evaluate(args) -> str:
    """The folder `--eval-only --resume auto` reads: --output-dir, or the newest run."""
    folder = args.output_dir or newest_run()
    if folder is None:
        raise RunDirError(f"no run under {RUNS_DIR}/ to evaluate: pass --resume PATH")
    return folder


def resume_command(output_dir: str) -> str:
    """The command that continues the run in `output_dir`, ready to paste: with torchrun's
    process counts when there are several processes, as a new job under SLURM."""
    folder = shlex.quote(output_dir)
    script = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return f"python {script} --resume {folder}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = world_size // per_node
    if "SLURM_JOB_ID" in os.environ and os.path.exists(os.path.join("scripts", "slurm.sbatch")):
        return f"OUTPUT_DIR={folder} sbatch --nodes={nodes} scripts/slurm.sbatch"
    if nodes == 1:
        return f"torchrun --standalone --nproc-per-node {per_node} {script} --resume {folder}"
    return (
        f"torchrun --nnodes {nodes} --nproc-per-node {per_node} --rdzv-backend c10d "
        f"--rdzv-endpoint HOST:PORT {script} --resume {folder}  (on each node)"
    )
