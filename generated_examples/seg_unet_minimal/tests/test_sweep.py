"""sweep.py: a sweep survives kill -9 of `run` and SLURM's stop-and-requeue, every trial number is
used once, an interrupted trial ends with the weights of an uninterrupted one, a torn journal line
is repaired, and a search space that cannot work is one line. Tiny trials of SMALL_MODEL on data
drawn in code."""

import importlib.util
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
    BEST_MODE,
    PROJECT,
    SMALL_MODEL,
    assert_same_weights,
    data_options,
    logged_steps,
    read_metrics,
    signal_at_step,
)

import checkpoint  # noqa: E402
import compare  # noqa: E402
import plot  # noqa: E402
import records  # noqa: E402
import sweep  # noqa: E402
import train  # noqa: E402
from files import read_json  # noqa: E402

# 32 samples in batches of 8 for 2 epochs: 8 steps, a checkpoint after each epoch.
FIXED = {
    "model": SMALL_MODEL,
    **data_options(32),
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
    best = (max if BEST_MODE == "max" else min)(trials, key=lambda trial: trial.value)
    assert f"best: trial {best.number}, {space['metric']} {best.value:.4f}" in out
    assert sweep.main(["best", "demo"]) == 0
    command = shlex.split(capsys.readouterr().out)
    assert command[:2] == ["python", "train.py"] and f"--lr={best.params['lr']}" in command
    # compare.py takes the sweep's folder: a row per trial, named by its lr.
    rows = compare.main([folder, "--no-figure"])
    assert sorted(row["group"] for row in rows) == sorted(f"lr={t.params['lr']}" for t in trials)
    # And plot.py: the interrupted trial's curve is whole, each epoch once.
    if importlib.util.find_spec("matplotlib"):
        assert plot.main([folder]) == os.path.join(folder, "sweep.png")
        curves = plot.plot_sweep(folder, str(tmp_path / "sweep.png")).axes[0]
        assert list(curves.get_lines()[0].get_ydata()) == list(epochs.values())


def test_an_array_task_takes_its_own_trial_back_after_a_requeue(tmp_path, monkeypatch, capsys):
    folder = new_sweep(tmp_path, "array", 2)
    with monkeypatch.context() as patch:  # (undo() would also undo the fixture's chdir)
        signal_at_step(patch, 3, signal.SIGTERM)
        assert sweep.main(["trial", "array", "--index", "1"]) == 128 + signal.SIGTERM
    assert read_json(os.path.join(folder, "array", "1.json")) == {"trial": 0}
    assert trials_of(folder)[0].state == optuna.trial.TrialState.RUNNING

    assert sweep.main(["trial", "array", "--index", "0"]) == 0  # another task: another trial
    assert os.path.isfile(os.path.join(folder, "trial_0001", sweep.HEARTBEAT))
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


def test_plot_draws_each_trial_s_curve_and_each_parameter_against_the_metric(tmp_path):
    """Four trials made by hand (no training): two complete, one pruned, one still running."""
    pytest.importorskip("matplotlib")
    params = {
        "lr": {"low": 0.001, "high": 0.01, "log": True},
        "optimizer": {"choices": ["sgd", "adamw"]},
        "momentum": {"low": 0.8, "high": 0.99},
    }
    fixed = {key: value for key, value in FIXED.items() if key != "epochs"}
    space = write_space(tmp_path / "space.yaml", params=params, fixed=fixed)
    assert sweep.main(["init", "drawn", "--space", space, "--trials", "4"]) == 0
    folder = os.path.join("runs", "sweeps", "drawn")
    study = sweep.open_study(folder)
    curves = {}
    for number in range(4):
        trial = study.ask()
        sweep.suggest(trial, params)
        curves[number] = {1: 0.1 * number + 0.01, 2: 0.1 * number + 0.02}
        run_dir = sweep.trial_folder(folder, number)
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as file:
            for epoch, value in curves[number].items():
                file.write(json.dumps({"kind": "epoch", "epoch": epoch, BEST_METRIC: value}) + "\n")
                trial.report(value, epoch)
        if number < 2:
            study.tell(trial, curves[number][2])
        elif number == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    trials = trials_of(folder)

    figure = plot.plot_sweep(folder, str(tmp_path / "sweep.png"))
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == [f"trial {number}" for number in range(4)]
    assert [list(line.get_ydata()) for line in lines] == [list(c.values()) for c in curves.values()]
    assert [axes.get_xlabel() for axes in figure.axes[1:]] == ["--lr", "--optimizer", "--momentum"]
    assert [axes.get_xscale() for axes in figure.axes[1:]] == ["log", "linear", "linear"]
    for axes, name in zip(figure.axes[1:], params, strict=True):
        complete, pruned = axes.collections  # trial 3 has no value yet: not drawn
        for points, drawn in ((complete, trials[:2]), (pruned, trials[2:3])):
            xs = [axes.xaxis.convert_units(trial.params[name]) for trial in drawn]
            expected = [[x, curves[trial.number][2]] for x, trial in zip(xs, drawn, strict=True)]
            assert points.get_offsets().tolist() == expected, name
    assert os.path.getsize(tmp_path / "sweep.png") > 0


def elsewhere(slurm_job=None) -> dict:
    """An owner on another host (pid 12345 on node-7), in SLURM job `slurm_job`."""
    return {**sweep.this_owner(), "host": "node-7", "pid": 12345, "slurm_job": slurm_job}


def running_trials(folder: str, owners: list[dict], beats: list[float]) -> list:
    """A running trial per owner, with an lr, its heartbeat touched `beats[i]` seconds ago."""
    study = sweep.open_study(folder)
    trials = []
    for owner, age in zip(owners, beats, strict=True):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.01, log=True)
        trial.set_user_attr("owner", owner)
        run_dir = sweep.trial_folder(folder, trial.number)
        os.makedirs(run_dir)
        sweep.touch(os.path.join(run_dir, sweep.HEARTBEAT))
        then = time.time() - age
        os.utime(os.path.join(run_dir, sweep.HEARTBEAT), (then, then))
        trials.append(trial)
    return trials


def test_reap_takes_an_owner_elsewhere_for_gone_once_its_heartbeat_is_stale(
    tmp_path, monkeypatch, capsys
):
    folder = new_sweep(tmp_path, "remote", 3)
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue: the heartbeats decide
    stale, fresh = running_trials(folder, [elsewhere(), elsewhere()], [700, 5])
    capsys.readouterr()
    assert sweep.main(["reap", "remote", "--stale", "800"]) == 0  # 700 s is not stale yet
    assert capsys.readouterr().out == ""
    assert sweep.main(["reap", "remote", "--requeue"]) == 0  # the default: 600 s
    out = capsys.readouterr().out
    assert out.startswith("trial 0: FAIL (process 12345 on node-7: no heartbeat for 70")
    assert out.count("\n") == 1 and out.endswith("): parameters enqueued again\n")
    TrialState = optuna.trial.TrialState
    trials = trials_of(folder)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[0].user_attrs["error"].endswith(" (reaped)")
    assert sweep.owner_state(fresh.user_attrs["owner"]) == "elsewhere"  # `run` leaves it alone


def test_reap_asks_squeue_whether_the_job_of_an_owner_elsewhere_still_runs(
    tmp_path, monkeypatch, capsys
):
    """SLURM's word wins over the heartbeat: a running or requeued (pending) job keeps its trial
    however old the heartbeat; an ended job, or one squeue no longer knows, loses it however
    fresh. Where squeue cannot answer (the controller is down), the heartbeat decides."""
    folder = new_sweep(tmp_path, "slurm", 6)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(
        "#!/bin/sh\n"  # squeue --noheader --jobs JOB --format %T
        'case "$3" in\n'
        "  40_1) echo RUNNING ;;\n"
        "  40_2) echo PENDING ;;\n"
        "  40_3) echo COMPLETED ;;\n"
        "  50) echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1 ;;\n"
        "  *) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;\n"
        "esac\n"
    )
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    jobs = ["40_1", "40_2", "40_3", "41", "50", "50"]
    running_trials(folder, [elsewhere(job) for job in jobs], [9000, 9000, 5, 5, 5, 9000])
    capsys.readouterr()
    assert sweep.main(["reap", "slurm"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:2] == [
        "trial 2: FAIL (process 12345 on node-7: job 40_3 has ended)",
        "trial 3: FAIL (process 12345 on node-7: job 41 has ended)",
    ]
    assert lines[2:] == [lines[2]] and "trial 5: FAIL (process 12345 on node-7: no heart" in out
    states = [trial.state.name for trial in trials_of(folder)]
    assert states == ["RUNNING", "RUNNING", "FAIL", "FAIL", "RUNNING", "FAIL"]


def test_the_owner_records_the_id_squeue_knows_its_task_by(monkeypatch):
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert sweep.this_owner()["slurm_job"] == "4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert sweep.this_owner(3)["slurm_job"] == "4240_3"


def test_a_trial_s_heartbeat_is_touched_while_it_trains_and_stops_after(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "HEARTBEAT_SECONDS", 0.01)
    path = tmp_path / sweep.HEARTBEAT

    def age() -> float:
        return time.time() - os.stat(path).st_mtime

    with sweep.heartbeat(str(tmp_path)):
        assert age() < 5  # at once
        os.utime(path, (1, 1))
        wait_until(lambda: age() < 5, seconds=10)  # and again
    os.utime(path, (1, 1))
    time.sleep(0.1)
    assert age() > 1000, "no beat after the trial"


def test_reap_refuses_a_stale_time_a_live_owner_could_miss(capsys):
    with pytest.raises(SystemExit) as ended:
        sweep.main(["reap", "any", "--stale", "30"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --stale must be at least 60 s") and err.count("\n") == 1


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
    assert record["scaffold_new"] == records.scaffold_command(PROJECT)
    assert record["scaffold_new"].startswith(f"scaffold new {train.PROJECT_NAME} --")
    assert record["git_commit"] == records.git(PROJECT, "rev-parse", "HEAD")
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


def test_the_projects_sweep_yaml_names_the_metric_that_chooses_best_pt():
    with open(os.path.join(PROJECT, "sweep.yaml")) as file:
        text = file.read()
    direction = {"max": "maximize", "min": "minimize"}[BEST_MODE]
    assert f"best.pt ({BEST_METRIC}, {direction})" in text


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
    folder = new_sweep(tmp_path, "slurm", 1, epochs=1, **data_options(256))  # 32 steps to stop in
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
