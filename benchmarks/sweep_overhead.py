"""Figure 10: what sweep.py adds to each trial, against running its train.py commands directly.

A tiny sweep in the lenet project: LeNet on --dataset fake (--fake-size 64, batch 32, 2 epochs
of 2 steps, --deterministic, CPU), `pruner: none`, lr on a log scale. The same lr values are
enqueued in every sweep (untimed), so that `python sweep.py run NAME` (one trial process at a
time) trains exactly the trials whose train.py commands (sweep.py's own train_arguments, with an
--output-dir of their own) then run one after the other as fresh processes. In turns (the order
reversed every other repeat), a new sweep each time; wall and CPU time (of the processes and the
children they waited for); medians over the repeats of the per-trial difference.

What the difference holds: starting `run`, each trial process importing Optuna, opening the
study (the journal's lock, the check for a torn line), taking its trial under the claim lock,
reporting each epoch to the study, the heartbeat, telling the result, run's polling of its
trial processes (every 0.2 s), and the one trial process more that finds nothing left to take
(spread over the sweep's trials). None of it grows with a trial's length, so the target is set
against a 30-second trial: at most 5% of it (1.5 s per trial). `init` (once per sweep, not per
trial) is timed too. Both ways must train the same trials: the benchmark fails when a trial of
the sweep did not complete with its enqueued lr, or its value differs from the last epoch's
metric of the same command run directly.

    python benchmarks/sweep_overhead.py --project DIR [--trials 4] [--repeats 3]

(DIR: a generated project with optuna installed, the `sweep` extra.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PYTHON, Context, Row, bench_env, check, run_checked  # noqa: E402

TRIAL_SECONDS = 30  # the trial length the target is set against
TARGET_PERCENT = 5  # sweep.py's overhead per trial, at most, in % of TRIAL_SECONDS
LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)  # the trials' lr, the first --trials of them
FIXED = {
    "model": "lenet",
    "dataset": "fake",
    "fake_size": 64,
    "batch_size": 32,
    "workers": 0,
    "epochs": 2,
    "device": "cpu",
    "deterministic": True,
}
SPACE = {"pruner": "none", "params": {"lr": {"low": 0.0001, "high": 1.0, "log": True}}}

# Run in the project: enqueue the trials' lr into the new sweep, and print their train.py
# arguments as sweep.py makes them.
ENQUEUE = """
import json, os, sys
import sweep
from files import read_json
folder = sweep.sweep_folder(sys.argv[1])
space = read_json(os.path.join(folder, sweep.RECORD))["space"]
study = sweep.open_study(folder)
lrs = json.loads(sys.argv[2])
for lr in lrs:
    study.enqueue_trial({"lr": lr})
print("ARGS " + json.dumps([sweep.train_arguments(space, {"lr": lr}) for lr in lrs]))
"""
# Run in the project: each trial of each sweep, as [lr, state, value], and the sweep's metric.
TRIALS = """
import json, os, sys
import sweep
from files import read_json
found = {}
for name in sys.argv[1:]:
    folder = sweep.sweep_folder(name)
    trials = sweep.open_study(folder).get_trials(deepcopy=False)
    metric = read_json(os.path.join(folder, sweep.RECORD))["space"]["metric"]
    found[name] = [[t.params.get("lr"), t.state.name, t.value] for t in trials]
print("TRIALS " + json.dumps({"metric": metric, "sweeps": found}))
"""


def last_epoch_value(run_dir: Path, metric: str) -> float | None:
    value = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "epoch" and metric in record:
            value = record[metric]
    return value


def compare(project: Path, work: Path, trials: int, repeats: int, env: dict, ctx=None) -> dict:
    """Time `repeats` sweeps of `trials` trials against their train.py commands, in turns.
    Returns {"sweep", "direct": [(wall, cpu) per repeat], "init": [wall], "values": {"sweep",
    "direct": [the trials' metric]}}; RuntimeError when both ways did not train the same trials."""
    lrs = list(LRS[:trials])
    space_file = work / "space.yaml"
    space_file.write_text(json.dumps({**SPACE, "fixed": FIXED}))  # JSON is YAML
    times = {"sweep": [], "direct": [], "init": []}
    names, direct_dirs = [], []
    for rep in range(repeats):
        name = f"overhead{rep}-{os.getpid()}"
        names.append(name)
        init = [PYTHON, "sweep.py", "init", name, "--space", space_file, "--trials", trials]
        times["init"].append(run_checked(init, cwd=project, env=env).wall)
        enqueued = run_checked([PYTHON, "-c", ENQUEUE, name, json.dumps(lrs)], cwd=project, env=env)
        arguments = json.loads(enqueued.output.split("ARGS ", 1)[1].splitlines()[0])
        sweep_command = [PYTHON, "sweep.py", "run", name]
        direct_commands = []
        for index, args in enumerate(arguments):
            run_dir = work / f"direct-{rep}-{index}"
            direct_dirs.append(run_dir)
            direct_commands.append([PYTHON, "train.py", *args, f"--output-dir={run_dir}"])
        if ctx is not None and rep == 0:
            ctx.record(10, init)
            ctx.record(10, sweep_command)
            ctx.record(10, direct_commands[0])
        order = ["sweep", "direct"] if rep % 2 == 0 else ["direct", "sweep"]
        for way in order:
            if way == "sweep":
                done = run_checked(sweep_command, cwd=project, env=env)
                times["sweep"].append((done.wall, done.cpu))
            else:
                finished = [run_checked(c, cwd=project, env=env) for c in direct_commands]
                times["direct"].append(
                    (sum(done.wall for done in finished), sum(done.cpu for done in finished))
                )
    listed = run_checked([PYTHON, "-c", TRIALS, *names], cwd=project, env=env).output
    for name in names:  # the project is left as it was
        shutil.rmtree(project / "runs" / "sweeps" / name, ignore_errors=True)
    found = json.loads(listed.split("TRIALS ", 1)[1].splitlines()[0])
    sweep_values = []
    for name in names:
        ran = found["sweeps"][name]
        if [lr for lr, _, _ in ran] != lrs or any(state != "COMPLETE" for _, state, _ in ran):
            raise RuntimeError(f"sweep {name} did not complete the enqueued trials: {ran}")
        sweep_values += [value for _, _, value in ran]
    direct_values = [last_epoch_value(run_dir, found["metric"]) for run_dir in direct_dirs]
    if sweep_values != direct_values:
        raise RuntimeError(f"the sweep's values {sweep_values} != train.py's {direct_values}")
    times["values"] = {"sweep": sweep_values, "direct": direct_values}
    return times


def summary(result: dict, trials: int) -> dict:
    """Medians per trial, and the overhead: the median over repeats of the per-trial difference
    of each pair (wall and CPU)."""
    pairs = list(zip(result["sweep"], result["direct"], strict=True))
    figures = {"trials": trials, "repeats": len(pairs)}
    for index, clock in enumerate(("wall", "cpu")):
        figures[f"sweep_{clock}_per_trial_s"] = statistics.median(
            sweep[index] / trials for sweep, _ in pairs
        )
        figures[f"direct_{clock}_per_trial_s"] = statistics.median(
            direct[index] / trials for _, direct in pairs
        )
        figures[f"overhead_{clock}_per_trial_s"] = statistics.median(
            (sweep[index] - direct[index]) / trials for sweep, direct in pairs
        )
    figures["overhead_percent_of_30s_trial"] = (
        100 * figures["overhead_wall_per_trial_s"] / TRIAL_SECONDS
    )
    figures["init_s"] = statistics.median(result["init"])
    return figures


def measure(ctx: Context) -> list[Row]:
    trials, repeats = (2, 1) if ctx.quick else (4, 3)
    project = ctx.projects["plain"]
    work = ctx.work / "sweep-overhead"
    work.mkdir()
    ctx.log(f"sweep overhead: {repeats} x ({trials} trials by sweep.py, {trials} by train.py)")
    result = compare(project, work, trials, repeats, bench_env(ctx.threads), ctx)
    figures = summary(result, trials)
    overhead = figures["overhead_wall_per_trial_s"]
    percent = figures["overhead_percent_of_30s_trial"]
    steps = FIXED["epochs"] * FIXED["fake_size"] // FIXED["batch_size"]
    return [
        Row(
            10,
            f"sweep.py run vs the same trials' train.py commands, per trial (lenet, {trials} "
            f"trials of {steps} steps, CPU, median of {repeats})",
            f"{figures['sweep_wall_per_trial_s']:.2f} s per trial: {overhead:+.2f} s, "
            f"{percent:.1f}% of a {TRIAL_SECONDS} s trial",
            f"{figures['direct_wall_per_trial_s']:.2f} s per trial (train.py alone)",
            None,
            f"<= {TARGET_PERCENT}% of a {TRIAL_SECONDS} s trial",
            check(percent, "<=", TARGET_PERCENT),
            note=f"CPU time: {figures['overhead_cpu_per_trial_s']:+.2f} s per trial "
            f"({figures['sweep_cpu_per_trial_s']:.2f} s against "
            f"{figures['direct_cpu_per_trial_s']:.2f} s)",
        ),
        Row(10, "sweep.py init (once per sweep)", f"{figures['init_s']:.2f} s"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="a generated project with optuna")
    parser.add_argument("--trials", type=int, default=4, help=f"trials per sweep (<= {len(LRS)})")
    parser.add_argument("--repeats", type=int, default=3, help="sweeps, each against train.py")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    args = parser.parse_args(argv)
    if not 1 <= args.trials <= len(LRS):
        parser.error(f"--trials must be between 1 and {len(LRS)}")
    project = Path(args.project).resolve()
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as work:
        result = compare(project, Path(work), args.trials, args.repeats, bench_env(args.threads))
    figures = summary(result, args.trials)
    print(json.dumps(figures, indent=2))
    percent = figures["overhead_percent_of_30s_trial"]
    verdict = check(percent, "<=", TARGET_PERCENT)
    print(f"overhead {percent:.1f}% of a 30 s trial (target <= {TARGET_PERCENT}%): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
