"""sweep.py: a sweep survives kill -9 of `run` and SLURM's stop-and-requeue, every trial number is
used once, an interrupted trial ends with the weights of an uninterrupted one, a torn journal line
is repaired, and a search space that cannot work is one line. Tiny trials of SMALL_MODEL on data
drawn in code."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna", reason="sweeps need optuna: pip install -e '.[sweep]'")

from conftest import (  # noqa: E402  (after the skip: no optuna, no sweep tests)
    BEST_METRIC,
    DATASET,
    PROJECT,
    SIZE_OPTION,
    SMALL_MODEL,
    assert_same_weights,
    logged_steps,
    read_metrics,
    signal_at_step,
)

import checkpoint  # noqa: E402
import compare  # noqa: E402
import sweep  # noqa: E402
import train  # noqa: E402
from files import read_json  # noqa: E402

# 32 samples in batches of 8 for 2 epochs: 8 steps, a checkpoint after each epoch.
FIXED = {
    "model": SMALL_MODEL,
    "dataset": DATASET,
    SIZE_OPTION.removeprefix("--").replace("-", "_"): 32,
    "batch_size": 8,
    "workers": 0,
    "epochs": 2,
    "device": "cpu",
    "log_every": 1,
    "deterministic": True,  # what bit-exact resumes take
}
# No pruner: every trial trains to its end, so that the test knows what each one does.
SPACE = {"pruner": "none", "params": {"lr": {"low": 0.001, "high": 0.01, "log": True}}}


def write_space(path, **changes) -> str:
    with open(path, "w") as file:
        json.dump({**SPACE, "fixed": FIXED, **changes}, file)  # JSON is YAML
    return str(path)


def new_sweep(tmp_path, name: str, trials: int, **fixed) -> str:
    space = write_space(tmp_path / "space.yaml", fixed={**FIXED, **fixed})
    assert sweep.main(["init", name, "--space", space, "--trials", str(trials)]) == 0
    return os.path.join("runs", "sweeps", name)


def trials_of(folder: str) -> list:
    return sweep.open_study(folder).get_trials(deepcopy=False)


def start_sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(PROJECT, "sweep.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def has_logged_a_step(run_dir: str) -> bool:
    try:
        return bool(logged_steps(run_dir))
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or a line being written
        return False


def in_second_epoch(run_dir: str) -> bool:
    """Whether the run has logged a step of its second epoch (its first is saved and reported)."""
    try:
        return any(line["kind"] == "step" and line["epoch"] == 1 for line in read_metrics(run_dir))
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or a line being written
        return False


def test_kill_9_of_run_mid_trial_then_run_again_finishes_each_trial_once_exactly(tmp_path, capsys):
    folder = new_sweep(tmp_path, "demo", 3)
    first = start_sweep("run", "demo", "--parallel", "2")
    killed = os.path.join(folder, "trial_0000")
    wait_until(lambda: in_second_epoch(killed) or first.poll() is not None)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    owner = trials_of(folder)[0].user_attrs["owner"]
    # Its trial processes went with it (not left training a trial that `run` takes over).
    wait_until(lambda: sweep.owner_state(owner) == "gone", seconds=10)
    assert trials_of(folder)[0].state == optuna.trial.TrialState.RUNNING

    second = start_sweep("run", "demo", "--parallel", "2")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "trial 0: continues in" in out
    trials = trials_of(folder)
    assert [trial.number for trial in trials] == [0, 1, 2]
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    # Trial 0 was resumed (a second invocation in its run), and ended as if it never stopped.
    invocations = read_json(os.path.join(killed, "env.json"))["invocations"]
    assert len(invocations) == 2 and invocations[1]["resumed_from"]
    space = read_json(os.path.join(folder, "sweep.json"))["space"]
    whole = tmp_path / "whole"
    train.main([*sweep.train_arguments(space, trials[0].params), f"--output-dir={whole}"])
    assert_same_weights(whole / "last.pt", os.path.join(killed, "last.pt"))
    # Its value is its last epoch's, each epoch reported once.
    metrics = read_metrics(killed)
    epochs = {line["epoch"]: line[space["metric"]] for line in metrics if line["kind"] == "epoch"}
    assert trials[0].intermediate_values == epochs and trials[0].value == epochs[2]

    capsys.readouterr()
    assert sweep.main(["status", "demo"]) == 0
    out = capsys.readouterr().out
    best = max(trials, key=lambda trial: trial.value)
    assert f"best: trial {best.number}, {space['metric']} {best.value:.4f}" in out
    assert sweep.main(["best", "demo"]) == 0
    command = shlex.split(capsys.readouterr().out)
    assert command[:2] == ["python", "train.py"] and f"--lr={best.params['lr']}" in command
    # compare.py takes the sweep's folder: a row per trial, named by its lr.
    rows = compare.main([folder, "--no-figure"])
    assert sorted(row["group"] for row in rows) == sorted(f"lr={t.params['lr']}" for t in trials)


def test_an_array_task_takes_its_own_trial_back_after_a_requeue(tmp_path, monkeypatch, capsys):
    folder = new_sweep(tmp_path, "array", 2)
    with monkeypatch.context() as patch:  # (undo() would also undo the fixture's chdir)
        signal_at_step(patch, 3, signal.SIGTERM)
        assert sweep.main(["trial", "array", "--index", "1"]) == 128 + signal.SIGTERM
    assert read_json(os.path.join(folder, "array", "1.json")) == {"trial": 0}
    assert trials_of(folder)[0].state == optuna.trial.TrialState.RUNNING

    assert sweep.main(["trial", "array", "--index", "0"]) == 0  # another task: another trial
    capsys.readouterr()
    assert sweep.main(["trial", "array", "--index", "1"]) == 0  # requeued: its trial again
    assert "trial 0: continues in" in capsys.readouterr().out
    trials = trials_of(folder)
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    steps = logged_steps(os.path.join(folder, "trial_0000"))
    assert steps == sorted(set(steps)) and steps[-1] == 8  # continued, not started over
    assert sweep.main(["trial", "array", "--index", "1"]) == 0  # once more: nothing to do
    assert "is COMPLETE: nothing to do" in capsys.readouterr().out
    assert len(trials_of(folder)) == 2


def test_a_pruned_trial_stops_after_its_epoch_is_saved(tmp_path, monkeypatch):
    folder = new_sweep(tmp_path, "prune", 1)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda trial: True)
    assert sweep.main(["trial", "prune", "--index", "0"]) == 0
    (trial,) = trials_of(folder)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    saved = checkpoint.load_checkpoint(os.path.join(folder, "trial_0000", "last.pt"))
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 4)


def test_reap_fails_the_trials_whose_process_is_gone_and_can_enqueue_them(tmp_path, capsys):
    folder = new_sweep(tmp_path, "reap", 3)
    study = sweep.open_study(folder)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone, alive = study.ask(), study.ask()
    gone.suggest_float("lr", 0.001, 0.01, log=True)
    gone.set_user_attr("owner", {**sweep.this_owner(), "pid": int(dead.stdout), "start": None})
    alive.set_user_attr("owner", sweep.this_owner())
    assert sweep.main(["reap", "reap", "--requeue"]) == 0
    assert "trial 0: FAIL" in capsys.readouterr().out
    states = [trial.state for trial in trials_of(folder)]
    TrialState = optuna.trial.TrialState
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    # Trial 0 no longer counts: the enqueued trial 2 takes its place, with its lr, and trial 3
    # is the sweep's third.
    space = read_json(os.path.join(folder, "sweep.json"))["space"]
    taken = [sweep.take_trial(sweep.open_study(folder), folder, 3, None) for _ in range(3)]
    assert [trial.number for trial in taken[:2]] == [2, 3] and taken[2] is None
    assert sweep.suggest(taken[0], space["params"]) == gone.params


def test_a_torn_last_journal_line_is_cut_off_before_the_study_opens(tmp_path, capsys):
    folder = new_sweep(tmp_path, "torn", 3)
    journal = os.path.join(folder, "journal.log")
    with open(journal, "ab") as file:  # a kill in the middle of Optuna's append
        file.write(b'{"op_code":4,"worker_id":"a')
    for _ in range(2):  # unrepaired, the second ask() fails to read the study
        study = sweep.open_study(folder)
        study.tell(study.ask(), 0.5)
    assert "cut off the torn last line" in capsys.readouterr().err
    assert [trial.number for trial in trials_of(folder)] == [0, 1]
    with open(journal, "rb") as file:
        assert all(json.loads(line) for line in file)


def test_the_sweep_records_how_it_started(tmp_path):
    folder = new_sweep(tmp_path, "record", 3)
    record = read_json(os.path.join(folder, "sweep.json"))
    assert record["template_version"] == train.TEMPLATE_VERSION and record["trials"] == 3
    assert record["space"]["metric"] == BEST_METRIC and record["space"]["fixed"] == FIXED
    with open(tmp_path / "space.yaml") as space, open(os.path.join(folder, "sweep.yaml")) as copy:
        assert copy.read() == space.read()


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"params": {"learning_rate": {"low": 0.1, "high": 1.0}}},
            "train.py has no option --learning-rate",
        ),
        ({"params": {"lr": {"low": 0.1, "high": 0.01}}}, "--lr: low must be below high"),
        (
            {"params": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
            "log scale needs low above 0",
        ),
        (
            {"params": {"momentum": {"low": 0.5, "high": 1.5}}},
            "--momentum 1.5: argument --momentum",
        ),
        (
            {"params": {"optimizer": {"choices": ["sgd", "adam"]}}},
            "--optimizer adam: argument --optimizer: invalid choice",
        ),
        ({"params": {"lr": {"low": 0.1}}}, "--lr: high must be a number"),
        ({"fixed": {"output_dir": "elsewhere"}}, "--output-dir is set by sweep.py"),
        ({"direction": "up"}, "direction must be maximize or minimize"),
    ],
)
def test_a_space_that_cannot_work_is_one_line(tmp_path, capsys, changes, message):
    path = write_space(tmp_path / "space.yaml", **changes)
    assert sweep.main(["init", "bad", "--space", path, "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not os.path.exists(os.path.join("runs", "sweeps", "bad"))


def test_a_space_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("params: [lr\n")
    assert (
        sweep.main(["init", "bad", "--space", str(tmp_path / "space.yaml"), "--trials", "2"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is not valid YAML at line" in err


SWEEP_SBATCH = os.path.join(PROJECT, "scripts", "sweep.sbatch")
# srun on one node: drop srun's own options, run the command once.
FAKE_SRUN = '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'


@pytest.mark.skipif(not os.path.exists(SWEEP_SBATCH), reason="scripts/ comes with --ddp")
def test_sweep_sbatch_saves_on_the_time_limit_signal_and_the_requeued_task_continues(tmp_path):
    """scripts/sweep.sbatch as array task 3, with stand-ins for srun and scontrol: SLURM's USR1
    becomes a SIGTERM for the trial, which saves; the task requeues itself, and the requeued task
    takes back its trial and finishes it."""
    size = SIZE_OPTION.removeprefix("--").replace("-", "_")
    folder = new_sweep(tmp_path, "slurm", 1, epochs=1, **{size: 256})  # 32 steps to stop in
    os.symlink(os.path.join(PROJECT, "sweep.py"), "sweep.py")  # submitted from here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "SLURM_SUBMIT_DIR": os.getcwd(), "SLURM_JOB_ID": "4242"}
    env |= {"SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "3"}
    run_dir = os.path.join(folder, "trial_0000")
    job = subprocess.Popen(
        ["bash", SWEEP_SBATCH, "slurm"], env=env, text=True, stdout=subprocess.PIPE
    )
    wait_until(lambda: has_logged_a_step(run_dir) or job.poll() is not None)
    job.send_signal(signal.SIGUSR1)  # what SLURM sends before the time limit
    assert job.wait(timeout=120) == 0
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    saved = checkpoint.load_checkpoint(os.path.join(run_dir, "last.pt"))["progress"]["step"]
    assert 1 <= saved < 32 and trials_of(folder)[0].state == optuna.trial.TrialState.RUNNING

    requeued = subprocess.run(
        ["bash", SWEEP_SBATCH, "slurm"], env=env, text=True, capture_output=True
    )
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "trial 0: continues in" in requeued.stdout
    assert f"resumed from {run_dir}/last.pt at epoch 0, step {saved}" in requeued.stdout
    assert logged_steps(run_dir) == list(range(1, 33))
    assert [trial.state for trial in trials_of(folder)] == [optuna.trial.TrialState.COMPLETE]
    assert read_json(os.path.join(folder, "array", "3.json")) == {"trial": 0}
