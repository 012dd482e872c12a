"""Hyperparameter sweeps that survive any interruption: Optuna, with its journal on disk.

    python sweep.py init demo --space sweep.yaml --trials 20   # runs/sweeps/demo/
    python sweep.py run demo --parallel 2                      # trials on this machine
    python sweep.py trial demo --index $SLURM_ARRAY_TASK_ID    # one trial per SLURM array task
    python sweep.py status demo                                # the trials, and the best so far
    python sweep.py best demo                                  # the best trial's train.py command
    python sweep.py reap demo --requeue                        # trials whose owner is gone

The study is a journal file in the sweep's folder (Optuna's JournalStorage with the lock meant for
NFS): no server and no database, and any process can open it again, so nothing needs to outlive
the sweep. Each trial is train.py in a run folder of its own, runs/sweeps/NAME/trial_NNNN, always
started with `--resume auto`: a trial that was killed or requeued continues from its last
checkpoint and ends with exactly the weights it would have had, uninterrupted.

How no trial is lost or run twice: a process takes a trial (a new one, or one whose owner is
gone) under the sweep's claim lock, and records itself as the trial's owner (process, host,
SLURM array index) in the study before it trains. `run` takes over the trials of this machine
whose owner died; an array task finds its own trial again after a requeue. A kill in the middle
of a journal write leaves a torn last line, which is cut off, under the journal's lock, before
the study is opened.

An owner on another host (a node of the cluster that was preempted or crashed) cannot be checked
by its process id: `reap` asks SLURM whether the owner's job is still queued or running, where it
recorded one and squeue is there, and otherwise takes the owner for gone once the heartbeat file
of its trial folder, touched every HEARTBEAT_SECONDS while it trains, is older than --stale.
"""

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import yaml

from files import atomic_write, read_json, write_json

SWEEPS_DIR = os.path.join("runs", "sweeps")
JOURNAL = "journal.log"  # the study: Optuna's operations, one JSON line each
SPACE = "sweep.yaml"  # the sweep's copy of its search space
RECORD = "sweep.json"  # how the sweep was started, and its trial count
ARRAY_DIR = "array"  # array/I.json: the trial that SLURM array task I owns
TRIAL_LOG = "trial.log"  # what train.py printed, in each trial folder of `run`
# Options that sweep.py itself gives each trial, or that would make it something else than
# training: not for the search space.
MANAGED = ("output_dir", "resume", "overwrite", "config", "eval_only", "summary", "allow_changes")
PRUNERS = ("median", "none")
NOTHING_LEFT = 3  # exit code of a trial process that found no trial to take
MAX_STARTS = 5  # a trial whose process died this many times is marked FAIL, not started again
# How long a lock file may stay before it is taken for the leftover of a killed process (Optuna's
# default): longer than any journal write on a slow shared file system.
LOCK_GRACE_SECONDS = 30
HEARTBEAT = "heartbeat"  # in each trial folder: touched by the trial's owner while it trains
HEARTBEAT_SECONDS = 30
# `reap`'s default --stale: many missed beats, so that a slow shared file system (attributes
# cached for up to a minute) or clocks a few minutes apart never make a live owner look gone.
STALE_SECONDS = 600
# What squeue says of a job that will not run again; any other state (pending, running,
# requeued, suspended, completing) means the owner is, or will be back, at its trial.
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL")
SLURM_ENDED += ("OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT")


class SweepError(Exception):
    """A sweep that cannot be used as asked; the message says what to do instead. Exit code 2
    for a command or space that cannot work (as train.py's), 1 for the rest."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, where a bad option is one line (as train.py's)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def optuna_module():
    """Optuna, or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps need optuna: pip install -e '.[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---- the search space ------------------------------------------------------------------------


def read_space(path: str) -> dict:
    """The search space in the YAML file `path`, checked against train.py's own options: every
    problem is a SweepError of one line. Returns {"metric", "direction", "pruner", "params",
    "fixed"} with the defaults filled in (the metric that chooses best.pt, and its direction)."""
    try:
        with open(path) as file:
            space = yaml.safe_load(file)
    except OSError as error:
        raise SweepError(f"{path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path} is not a text file: pass a YAML file") from None
    except yaml.YAMLError as error:
        from options import yaml_problem

        raise SweepError(f"{path} is not valid YAML{yaml_problem(error)}") from None
    if not isinstance(space, dict):
        raise SweepError(f"{path} must hold a mapping: metric, direction, pruner, params, fixed")
    unknown = sorted(set(space) - {"metric", "direction", "pruner", "params", "fixed"})
    if unknown:
        raise SweepError(
            f"{path}: unknown key {unknown[0]!r} (metric, direction, pruner, params, fixed)"
        )
    import task

    metric = space.get("metric") or task.BEST_METRIC
    default_direction = "maximize" if task.BEST_MODE == "max" else "minimize"
    if metric != task.BEST_METRIC and not space.get("direction"):
        raise SweepError(f"{path}: metric {metric} needs a direction: maximize or minimize")
    direction = space.get("direction") or default_direction
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    pruner = space.get("pruner", "median")
    if pruner not in PRUNERS:
        raise SweepError(f"{path}: pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    params = option_names(path, "params", space.get("params") or {})
    fixed = option_names(path, "fixed", space.get("fixed") or {})
    if not params:
        raise SweepError(f"{path}: params is empty: give at least one option a range or choices")
    both = sorted(set(params) & set(fixed))
    if both:
        raise SweepError(f"{path}: {flag(both[0])} is both in params and fixed: keep one")
    for name, spec in params.items():
        check_spec(path, name, spec)
    check_with_train_options(path, params, fixed)
    return {
        "metric": metric,
        "direction": direction,
        "pruner": pruner,
        "params": params,
        "fixed": fixed,
    }


def option_names(path: str, section: str, values) -> dict:
    """`values` with train.py's option names as keys ("weight-decay" and "weight_decay" alike)."""
    if not isinstance(values, dict):
        raise SweepError(f"{path}: {section} must be a mapping of train.py options")
    names = {str(key).replace("-", "_"): value for key, value in values.items()}
    known = train_option_defaults()
    for name in names:
        if name not in known:
            raise SweepError(f"{path}: {section}: train.py has no option {flag(name)}")
        if name in MANAGED:
            raise SweepError(f"{path}: {section}: {flag(name)} is set by sweep.py for each trial")
    return names


def check_spec(path: str, name: str, spec) -> None:
    """A parameter is {low, high} (with log: true, or a step) or {choices: [...]}."""
    where = f"{path}: params: {flag(name)}"
    if not isinstance(spec, dict):
        raise SweepError(
            f"{where}: give low and high (with log: true or step: S), or choices: [...]"
        )
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise SweepError(f"{where}: choices go alone, not with {extra[0]}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: choices must be a list of at least one value")
        for choice in choices:
            if not isinstance(choice, bool | int | float | str):
                raise SweepError(f"{where}: choice {choice!r} is not a number, a string or a bool")
        return
    extra = sorted(set(spec) - {"low", "high", "log", "step"})
    if extra:
        raise SweepError(f"{where}: unknown key {extra[0]!r} (low, high, log, step, or choices)")
    for key in ("low", "high"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SweepError(f"{where}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SweepError(f"{where}: {key} must be finite, got {value}")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise SweepError(f"{where}: low must be below high, got {low} and {high}")
    if spec.get("log", False) not in (True, False):
        raise SweepError(f"{where}: log must be true or false, got {spec['log']!r}")
    if spec.get("log") and low <= 0:
        raise SweepError(f"{where}: a log scale needs low above 0, got {low}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise SweepError(f"{where}: step must be a number above 0, got {step!r}")
        if spec.get("log"):
            raise SweepError(f"{where}: pass log or step, not both")


def is_int_range(spec: dict) -> bool:
    """Whole-number ranges are written without a point (1, 8); 1.0 makes a range of reals."""
    values = (spec["low"], spec["high"], spec.get("step", 1))
    return all(isinstance(value, int) for value in values)


def check_with_train_options(path: str, params: dict, fixed: dict) -> None:
    """Each end of each range, and each choice, with the fixed options, must be options that
    train.py takes: its own checks (ranges, models, data) say what is wrong."""
    problem = train_options_problem(option_arguments(fixed))
    if problem:
        raise SweepError(f"{path}: fixed: {problem}")
    for name, spec in params.items():
        values = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in values:
            problem = train_options_problem(option_arguments({**fixed, name: value}))
            if problem:
                raise SweepError(f"{path}: params: {flag(name)} {value}: {problem}")


def train_options_problem(arguments: list[str]) -> str | None:
    """What train.py's options parser says of `arguments` (its one line, without the pointer to
    --help), or None when it takes them."""
    import options

    error = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(error):
            options.parse_args(arguments)
    except SystemExit:
        message = error.getvalue().strip().removeprefix("error: ")
        return message.split(" (see python")[0] or "train.py refused these options"
    return None


def train_option_defaults() -> dict:
    """Every option of train.py, with its value when none is given."""
    import options

    with contextlib.redirect_stdout(io.StringIO()):
        return vars(options.parse_args([]))


def option_arguments(values: dict) -> list[str]:
    """train.py arguments for option values: True is the bare flag, False and None leave the
    option out."""
    arguments = []
    for name, value in values.items():
        if value is True:
            arguments.append(flag(name))
        elif value is not False and value is not None:
            arguments.append(f"{flag(name)}={value}")
    return arguments


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---- the sweep's folder and its study ----------------------------------------------------------


def sweep_folder(name: str) -> str:
    folder = os.path.join(SWEEPS_DIR, name)
    if not os.path.isfile(os.path.join(folder, RECORD)):
        raise SweepError(f"no sweep {name} in {SWEEPS_DIR}: start one with python sweep.py init")
    return folder


def trial_folder(folder: str, number: int) -> str:
    return os.path.join(folder, f"trial_{number:04d}")


@contextlib.contextmanager
def file_lock(path: str):
    """Hold the lock of `path`: a file PATH.lock created with O_EXCL, which works on NFS (Optuna's
    JournalFileOpenLock); one left by a killed process is taken over after LOCK_GRACE_SECONDS."""
    optuna = optuna_module()
    lock = optuna.storages.journal.JournalFileOpenLock(path, grace_period=LOCK_GRACE_SECONDS)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def repair_journal(path: str) -> bool:
    """Cut off a torn last line of the journal (a process killed in the middle of a write, a full
    disk), under the journal's lock so that no write is under way. Left there, the next write
    would be appended to it and Optuna could no longer read the study. Returns whether it cut."""
    with file_lock(path):
        with open(path, "rb+") as file:
            size = file.seek(0, os.SEEK_END)
            if size == 0:
                return False
            file.seek(size - 1)
            if file.read(1) == b"\n":
                return False
            # The last line break (reading backwards in blocks: journals grow large).
            end = size
            while end > 0:
                start = max(end - 65536, 0)
                file.seek(start)
                block = file.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            file.truncate(end)
            file.flush()
            os.fsync(file.fileno())
    print(
        f"note: cut off the torn last line of {path} (a write interrupted by a kill)",
        file=sys.stderr,
    )
    return True


def open_study(folder: str):
    """The sweep's study, its journal repaired first."""
    optuna = optuna_module()
    journal = os.path.join(folder, JOURNAL)
    repair_journal(journal)
    record = read_json(os.path.join(folder, RECORD))
    space = record["space"]
    journal_lock = optuna.storages.journal.JournalFileOpenLock(journal, LOCK_GRACE_SECONDS)
    backend = optuna.storages.journal.JournalFileBackend(journal, lock_obj=journal_lock)
    # The pruner is not part of the study's journal: each process makes it from the space.
    if space["pruner"] == "median":
        pruner = optuna.pruners.MedianPruner()
    else:
        pruner = optuna.pruners.NopPruner()
    storage = optuna.storages.JournalStorage(backend)
    return optuna.load_study(study_name=record["name"], storage=storage, pruner=pruner)


def init(name: str, space_path: str, trials: int) -> str:
    """Create runs/sweeps/NAME: the study's journal, a copy of the space, and sweep.json (how it
    was started). The folder is made under a temporary name and renamed: never half made."""
    if not name.replace("-", "_").isidentifier() or name.startswith(("-", "_")):
        raise SweepError(
            f"sweep name {name!r}: use letters, digits, '-' and '_', starting with a letter"
        )
    folder = os.path.join(SWEEPS_DIR, name)
    if os.path.exists(folder):
        raise SweepError(f"{folder} already exists: continue it with python sweep.py run {name}")
    optuna_module()
    space = read_space(space_path)
    os.makedirs(SWEEPS_DIR, exist_ok=True)
    building = f"{folder}.tmp-{os.getpid()}"
    os.makedirs(building)
    try:
        make_sweep(building, name, space_path, space, trials)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    os.rename(building, folder)
    return folder


def make_sweep(building: str, name: str, space_path: str, space: dict, trials: int) -> None:
    optuna = optuna_module()
    import records
    import train

    with open(space_path, "rb") as source, atomic_write(os.path.join(building, SPACE)) as copy:
        copy.write(source.read())
    journal = os.path.join(building, JOURNAL)
    lock = optuna.storages.journal.JournalFileOpenLock(journal, LOCK_GRACE_SECONDS)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal, lock_obj=lock)
    )
    optuna.create_study(study_name=name, storage=storage, direction=space["direction"])
    project = os.path.dirname(os.path.abspath(__file__))
    commit = records.git(project, "rev-parse", "HEAD")
    write_json(
        os.path.join(building, RECORD),
        {
            "name": name,
            "trials": trials,
            "space": space,
            "space_file": os.path.abspath(space_path),
            "command": sys.orig_argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            # What made the code that trains: the template, its options, the project's commit.
            "template_version": train.TEMPLATE_VERSION,
            "scaffold_new": records.scaffold_command(project),
            "git_commit": commit,
            "git_dirty": bool(records.git(project, "status", "--porcelain")) if commit else None,
            "optuna": optuna.__version__,
        },
    )


# ---- owners: which process runs which trial -----------------------------------------------------


def process_start(pid: int) -> str | None:
    """When process `pid` started (in clock ticks since boot, from /proc), "exited" for a process
    that has ended but not been waited for, or None where /proc cannot tell. With the pid, the
    start tells a process apart from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    except OSError:
        return None
    return "exited" if fields[0] in "ZX" else fields[19]


def this_owner(index: int | None = None) -> dict:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": process_start(os.getpid()),
        "index": index,
        "job": array or os.environ.get("SLURM_JOB_ID"),
        # The id squeue knows this very task by (an array task's own, 4240_3).
        "slurm_job": f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def owner_state(owner: dict | None, run_dir: str | None = None, stale: float | None = None) -> str:
    """Whether the process that owns a trial is "alive", "gone", or "elsewhere" (on another
    host). With the trial's `run_dir` and `stale` seconds, an owner elsewhere is "alive" or
    "gone" too, as remote_owner tells."""
    if not owner:  # its process was killed between taking the trial and recording itself
        return "gone"
    if owner["host"] != socket.gethostname():
        if run_dir is None or stale is None:
            return "elsewhere"
        return remote_owner(owner, run_dir, stale)[0]
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # someone else's process: alive
        pass
    started = process_start(owner["pid"])
    if started == "exited" or (owner.get("start") and started != owner["start"]):
        return "gone"  # ended (a zombie), or the pid now belongs to another process
    return "alive"


def remote_owner(owner: dict, run_dir: str, stale: float) -> tuple[str, str]:
    """("alive" or "gone", why) of an owner on another host: what SLURM says of its job where it
    can tell, else whether the heartbeat of its trial folder (or, before the first beat, its
    claim) is older than `stale` seconds."""
    job = owner.get("slurm_job")
    queued = slurm_job_queued(job)
    if queued is not None:
        return ("alive", f"job {job} is queued") if queued else ("gone", f"job {job} has ended")
    try:
        beat = os.stat(os.path.join(run_dir, HEARTBEAT)).st_mtime
    except OSError:
        beat = time.mktime(time.strptime(owner["since"], "%Y-%m-%dT%H:%M:%S%z"))
    age = time.time() - beat
    if age > stale:
        return "gone", f"no heartbeat for {age:.0f} s"
    return "alive", f"heartbeat {age:.0f} s ago"


def slurm_job_queued(job: str | None) -> bool | None:
    """Whether SLURM still has job `job` pending or running (a requeued task counts: it comes
    back to its trial); None where it cannot tell: no job recorded, no squeue, squeue failed."""
    if not job or shutil.which("squeue") is None:
        return None
    command = ["squeue", "--noheader", "--jobs", job, "--format", "%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:  # a job SLURM has forgotten is an error, so is a controller down
        return False if "invalid job id" in done.stderr.lower() else None
    states = done.stdout.split()
    return any(state not in SLURM_ENDED for state in states)


def touch(path: str) -> None:
    with open(path, "a"):
        os.utime(path)


@contextlib.contextmanager
def heartbeat(run_dir: str):
    """Touch RUN_DIR/heartbeat now and every HEARTBEAT_SECONDS until the block ends, from a
    thread: a node that dies stops it, which is how `reap` on another host knows."""
    path = os.path.join(run_dir, HEARTBEAT)
    touch(path)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):  # a file system that hiccups: the next beat
                touch(path)

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()  # a beat under way ends before the block does: none comes after it


def counted(trials) -> list:
    """The trials that count toward the sweep's total: all but the failed ones that were
    enqueued again (their parameters are a new trial)."""
    return [trial for trial in trials if "requeued_as" not in trial.user_attrs]


def take_trial(study, folder: str, total: int, index: int | None):
    """Under the sweep's claim lock: the trial this process is to run, now recorded as its owner,
    or None when the study has all its trials and none is left without a live owner. An array
    task (`index`) takes back the trial it owned before a requeue (a FrozenTrial if that one has
    finished since), else a new one; `run` takes a trial of this machine whose owner died, else
    a new one."""
    with file_lock(os.path.join(folder, "claim")):
        while True:  # until a trial is taken, or none is left
            taken = take_unlocked(study, folder, total, index)
            if taken is not True:
                return taken


def take_unlocked(study, folder: str, total: int, index: int | None):
    """take_trial's one try, under its lock: True when it failed a trial started too often, and
    should look again."""
    optuna = optuna_module()
    running = optuna.trial.TrialState.RUNNING
    trials = study.get_trials(deepcopy=False)
    mine = None
    if index is not None:
        owned = read_json(os.path.join(folder, ARRAY_DIR, f"{index}.json"))
        job = this_owner()["job"]
        for trial in trials:
            owner = trial.user_attrs.get("owner") or {}
            # Its file says so; or the task was killed before it wrote its file.
            if trial.number == owned.get("trial") or (
                trial.state == running and owner.get("index") == index and owner.get("job") == job
            ):
                mine = trial
        if mine is not None and mine.state != running:
            return mine  # finished before the requeue: nothing to do
        owner = (mine.user_attrs.get("owner") or {}) if mine else {}
        if mine is not None and owner_state(owner) == "alive" and owner["pid"] != os.getpid():
            raise SweepError(
                f"trial {mine.number} of array task {index} is run by process {owner['pid']} "
                "here: one task per index at a time",
                code=1,
            )
    else:
        for trial in trials:
            if trial.state == running and owner_state(trial.user_attrs.get("owner")) == "gone":
                mine = trial
                break
    if mine is not None:
        trial = optuna.trial.Trial(study, mine._trial_id)  # Optuna's way back into a trial
        starts = mine.user_attrs.get("starts", 1)
        if starts >= MAX_STARTS:  # a trial that kills its process (out of memory, say)
            trial.set_user_attr("error", f"its process died {starts} times")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return True if index is None else None
        trial.set_user_attr("starts", starts + 1)
    else:
        waiting = optuna.trial.TrialState.WAITING
        if len(counted(trials)) >= total and not any(t.state == waiting for t in trials):
            return None
        trial = study.ask()  # an enqueued trial (reap --requeue) first, else a new one
        trial.set_user_attr("starts", 1)
    trial.set_user_attr("owner", this_owner(index))
    # A claim is a beat: the owner is not taken for gone before its heartbeat starts.
    os.makedirs(trial_folder(folder, trial.number), exist_ok=True)
    touch(os.path.join(trial_folder(folder, trial.number), HEARTBEAT))
    if index is not None:
        os.makedirs(os.path.join(folder, ARRAY_DIR), exist_ok=True)
        write_json(os.path.join(folder, ARRAY_DIR, f"{index}.json"), {"trial": trial.number})
    return trial


# ---- one trial ---------------------------------------------------------------------------------


def suggest(trial, params: dict) -> dict:
    """The trial's value of each parameter (those suggested before a restart come back)."""
    values = {}
    for name, spec in params.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif is_int_range(spec):
            step = spec.get("step", 1)
            values[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=step, log=spec.get("log", False)
            )
        else:
            values[name] = trial.suggest_float(
                name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
            )
    return values


def train_arguments(space: dict, params: dict) -> list[str]:
    return option_arguments({**space["fixed"], **params})


def epoch_values(run_dir: str, metric: str) -> dict[int, float]:
    """{epoch: the metric} of the epochs the run in `run_dir` has logged."""
    values = {}
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as file:
            for line in file:
                record = json.loads(line)
                if record.get("kind") == "epoch" and metric in record:
                    values[record["epoch"]] = record[metric]
    except (FileNotFoundError, json.JSONDecodeError):  # a last line cut by a kill: resumed over
        pass
    return values


def run_trial(study, trial, space: dict, folder: str) -> int:
    """Train the trial in its folder (continuing what is there), report each epoch's metric and
    stop when the pruner says so; tell the study how it ended. Returns the exit code: 0 when
    the trial ended (complete, pruned, or failed on its options), 128 + N when a signal stopped
    it (the trial stays the process's, to continue)."""
    optuna = optuna_module()
    import runs
    import train

    run_dir = trial_folder(folder, trial.number)
    os.makedirs(run_dir, exist_ok=True)
    try:  # a process still training there (not this trial's owner): leave the trial alone
        runs.RunLock(run_dir).release()
    except runs.RunDirError as error:
        raise SweepError(str(error), code=1) from None
    write_json(os.path.join(run_dir, "owner.json"), this_owner())
    params = suggest(trial, space["params"])
    trial.set_user_attr("run_dir", run_dir)
    metric = space["metric"]
    (frozen,) = [past for past in study.get_trials(deepcopy=False) if past.number == trial.number]
    reported = set(frozen.intermediate_values)

    def report(epoch: int, value: float) -> None:
        if epoch in reported:  # before a restart (the epoch trained again: to the same value)
            return
        trial.report(value, epoch)
        reported.add(epoch)

    # Epochs trained before a restart whose reports were lost with the process: report them now,
    # and stop here if the pruner would have.
    trained = epoch_values(run_dir, metric)
    for epoch, value in sorted(trained.items()):
        report(epoch, value)
    if trained and trial.should_prune():
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return 0

    def on_epoch(metrics: dict) -> None:
        if metric not in metrics:
            raise SweepError(f"the metric {metric} is not among the run's: {', '.join(metrics)}")
        report(metrics["epoch"], metrics[metric])
        if trial.should_prune():
            raise optuna.TrialPruned()

    arguments = [*train_arguments(space, params), f"--output-dir={run_dir}", "--resume=auto"]
    try:
        train.main(arguments, on_epoch=on_epoch)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return 0
    except SweepError as error:
        return fail(study, trial, str(error))
    except SystemExit as ended:  # train.py's errors, and its stops on a signal
        code = ended.code if isinstance(ended.code, int) else 1
        if code >= 128:  # stopped by SIGTERM or SIGINT, saved: the next start continues it
            return code
        message = ended.code if isinstance(ended.code, str) else f"train.py exited {code}"
        log = os.path.join(run_dir, TRIAL_LOG)
        return fail(study, trial, f"{message} (see {log})" if os.path.exists(log) else message)
    values = epoch_values(run_dir, metric)
    if not values:
        return fail(study, trial, f"the run logged no {metric}")
    study.tell(trial, values[max(values)])  # the last epoch's: what the pruner compared
    return 0


def fail(study, trial, message: str) -> int:
    """The trial ends as FAIL (its options could not train: a loss that became NaN, say); the
    sweep goes on with the others, so the process's work is done: 0."""
    optuna = optuna_module()
    trial.set_user_attr("error", message)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    print(f"trial {trial.number} failed: {message}", file=sys.stderr)
    return 0


def die_with_parent(parent: int) -> None:
    """Make this process end when `parent` (sweep.py run) does, SIGKILL included: a trial left
    training after its `run` is gone would hold its trial while the next `run` takes it over."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def trial_process(name: str, index: int | None, parent: int | None) -> int:
    """Take a trial and run it: the body of each of `run`'s processes, and of `trial --index`."""
    if parent is not None:
        die_with_parent(parent)
    folder = sweep_folder(name)
    space = read_json(os.path.join(folder, RECORD))
    study = open_study(folder)
    trial = take_trial(study, folder, space["trials"], index)
    if trial is None:
        if parent is not None:  # tell `run`, which says it once for all its processes
            return NOTHING_LEFT
        print(f"sweep {name} has all its {space['trials']} trials: nothing to take")
        return 0  # an array task with nothing to do has succeeded
    if isinstance(trial, optuna_module().trial.FrozenTrial):  # finished before a requeue
        print(f"trial {trial.number} of array task {index} is {trial.state.name}: nothing to do")
        return 0
    run_dir = trial_folder(folder, trial.number)
    again = trial.user_attrs.get("starts", 1) > 1  # taken over, or back after a requeue
    print(f"trial {trial.number}: {'continues' if again else 'starts'} in {run_dir}", flush=True)
    console = sys.stdout
    if parent is not None:  # under `run`: train.py's lines go to the trial's log
        os.makedirs(run_dir, exist_ok=True)
        console = os.fdopen(os.dup(1), "w")
        log = os.open(os.path.join(run_dir, TRIAL_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
    with heartbeat(run_dir):
        code = run_trial(study, trial, space["space"], folder)
    (ended,) = [past for past in study.get_trials(deepcopy=False) if past.number == trial.number]
    value = "" if ended.value is None else f" {space['space']['metric']} {ended.value:.4f}"
    print(f"trial {trial.number}: {ended.state.name}{value}", file=console, flush=True)
    return code


# ---- run: trials on this machine ---------------------------------------------------------------


def run(name: str, parallel: int) -> int:
    """Keep `parallel` trial processes busy until none finds a trial to take. A trial process
    that died (killed, out of memory) leaves its trial to the next one, which continues it."""
    folder = sweep_folder(name)
    script = os.path.abspath(__file__)
    command = [sys.executable, script, "_trial", name, "--parent", str(os.getpid())]
    processes: list[subprocess.Popen] = []
    nothing_left, broken = False, None
    stopping = []

    def stop(number, frame):  # pass SIGINT/SIGTERM on: each trial saves, then it exits
        stopping.append(number)
        for process in processes:
            process.send_signal(number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)
    while True:
        while not stopping and not nothing_left and not broken and len(processes) < parallel:
            # A session of its own: Ctrl-C reaches the trial once, passed on by stop() (twice,
            # train.py would stop without saving); die_with_parent ends it with this process.
            processes.append(subprocess.Popen(command, start_new_session=True))
        if not processes:
            break
        time.sleep(0.2)
        for process in [process for process in processes if process.poll() is not None]:
            processes.remove(process)
            # Nothing left: the others finish what they hold. A trial done, or a process killed
            # with its trial (a signal), may leave work: look again. Anything else is a problem
            # that another process would meet too: stop starting them.
            code = process.returncode
            nothing_left = code == NOTHING_LEFT
            if code not in (0, NOTHING_LEFT) and 0 < code < 128:
                broken = (
                    f"a trial process exited with {code}: see its error above or its {TRIAL_LOG}"
                )
    if stopping:
        name_of_signal = signal.Signals(stopping[0]).name
        print(f"stopped by {name_of_signal}: continue with python sweep.py run {name}")
        return 128 + stopping[0]
    if broken:
        raise SweepError(broken, code=1)
    return print_summary(open_study(folder), folder)


def print_summary(study, folder: str) -> int:
    """One line for the sweep; exit code 1 while some of its trials are not finished."""
    optuna = optuna_module()
    record = read_json(os.path.join(folder, RECORD))
    trials = counted(study.get_trials(deepcopy=False))
    states = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    print(f"sweep {record['name']}: {len(trials)} of {record['trials']} trials ({summary})")
    unfinished = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    return 1 if unfinished or len(trials) < record["trials"] else 0


# ---- status, best, reap ------------------------------------------------------------------------


def best_trial(study):
    optuna = optuna_module()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda trial: trial.value)


def status(name: str) -> int:
    folder = sweep_folder(name)
    study = open_study(folder)
    record = read_json(os.path.join(folder, RECORD))
    metric = record["space"]["metric"]
    print(f"{'trial':>5}  {'state':8}  {metric:>10}  {'run folder':24}  parameters")
    for trial in study.get_trials(deepcopy=False):
        value = "" if trial.value is None else f"{trial.value:.4f}"
        params = " ".join(f"{flag(key)}={setting}" for key, setting in trial.params.items())
        state = trial.state.name
        owner = trial.user_attrs.get("owner")
        run_dir = trial_folder(folder, trial.number)
        if state == "RUNNING" and owner:
            alive = owner_state(owner, run_dir, STALE_SECONDS)
            params += f"  (process {owner['pid']} on {owner['host']}: {alive})"
        if "error" in trial.user_attrs:
            params += f"  ({trial.user_attrs['error']})"
        print(f"{trial.number:>5}  {state:8}  {value:>10}  {run_dir:24}  {params}")
    best = best_trial(study)
    if best is not None:
        run_dir = trial_folder(folder, best.number)
        print(f"best: trial {best.number}, {metric} {best.value:.4f}, {run_dir}")
    return print_summary(study, folder)


def best(name: str) -> int:
    folder = sweep_folder(name)
    study = open_study(folder)
    trial = best_trial(study)
    if trial is None:
        raise SweepError(f"sweep {name} has no complete trial yet", code=1)
    space = read_json(os.path.join(folder, RECORD))["space"]
    arguments = train_arguments(space, trial.params)
    print(" ".join(["python", "train.py", *(shlex.quote(argument) for argument in arguments)]))
    return 0


def reap(name: str, requeue: bool, stale: float = STALE_SECONDS) -> int:
    """Mark FAIL the running trials whose owner is gone: a process of this machine that ended,
    or an owner on another host whose SLURM job has ended or, where SLURM cannot tell, whose
    heartbeat is older than `stale` seconds. With `requeue`, enqueue their parameters again as
    new trials."""
    optuna = optuna_module()
    folder = sweep_folder(name)
    study = open_study(folder)
    with file_lock(os.path.join(folder, "claim")):
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = frozen.user_attrs.get("owner")
            why = "its process was gone"
            state = owner_state(owner)
            if state == "elsewhere":
                state, why = remote_owner(owner, trial_folder(folder, frozen.number), stale)
                why = f"process {owner['pid']} on {owner['host']}: {why}"
            if state == "alive":
                continue
            trial = optuna.trial.Trial(study, frozen._trial_id)
            trial.set_user_attr("error", f"{why} (reaped)")
            # Marked before it is enqueued: a kill in between loses the requeue, not the count
            # (a requeued trial does not count toward the total: `run` asks a new one instead),
            # and a second reap does not enqueue it twice.
            if requeue and "requeued_as" not in frozen.user_attrs:
                trial.set_user_attr("requeued_as", "a new trial")
                study.enqueue_trial(frozen.params, skip_if_exists=False)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            again = ": parameters enqueued again" if requeue else ""
            print(f"trial {frozen.number}: FAIL ({why}){again}")
    return 0


# ---- the command line --------------------------------------------------------------------------


def parse_args(argv=None):
    parser = Parser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    start = commands.add_parser("init", help="create the sweep runs/sweeps/NAME")
    start.add_argument("name")
    start.add_argument("--space", default="sweep.yaml", help="the search space (YAML)")
    start.add_argument("--trials", type=positive, required=True, help="how many trials in all")
    go = commands.add_parser("run", help="run trials here until the sweep has all of them")
    go.add_argument("name")
    go.add_argument("--parallel", type=positive, default=1, help="trial processes at a time")
    array = commands.add_parser(
        "trial", help="one SLURM array task's trial (taken back after a requeue)"
    )
    array.add_argument("name")
    array.add_argument(
        "--index",
        type=int,
        default=os.environ.get("SLURM_ARRAY_TASK_ID"),
        help="the array task's index (default: $SLURM_ARRAY_TASK_ID)",
    )
    for command, text in (
        ("status", "the trials and the best so far"),
        ("best", "the best trial's train.py command"),
    ):
        commands.add_parser(command, help=text).add_argument("name")
    again = commands.add_parser("reap", help="mark FAIL the trials whose owner is gone")
    again.add_argument("name")
    again.add_argument("--requeue", action="store_true", help="and run their parameters again")
    again.add_argument(
        "--stale",
        type=positive,
        default=STALE_SECONDS,
        metavar="SECONDS",
        help="an owner on another host is gone when its heartbeat (touched every "
        f"{HEARTBEAT_SECONDS} s) is older than this, unless squeue says its job is queued "
        f"(default {STALE_SECONDS})",
    )
    hidden = commands.add_parser("_trial")  # one process of `run`
    hidden.add_argument("name")
    hidden.add_argument("--parent", type=int)
    args = parser.parse_args(argv)
    if args.command == "trial" and args.index is None:
        parser.error("trial needs --index I (or $SLURM_ARRAY_TASK_ID)")
    if args.command == "reap" and args.stale < 2 * HEARTBEAT_SECONDS:
        parser.error(
            f"--stale must be at least {2 * HEARTBEAT_SECONDS} s: owners beat every "
            f"{HEARTBEAT_SECONDS} s"
        )
    return args


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    """Exit codes as train.py's: 2 for a command or space that cannot work, 1 for the rest."""
    args = parse_args(argv)
    try:
        if args.command == "init":
            folder = init(args.name, args.space, args.trials)
            print(f"sweep {args.name}: {folder} ({args.trials} trials)")
            print(f"run it: python sweep.py run {args.name} [--parallel N]")
            return 0
        if args.command == "run":
            return run(args.name, args.parallel)
        if args.command == "trial":
            return trial_process(args.name, args.index, None)
        if args.command == "_trial":
            return trial_process(args.name, None, args.parent)
        if args.command == "status":
            return status(args.name)
        if args.command == "best":
            return best(args.name)
        return reap(args.name, args.requeue, args.stale)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
