"""Figure 9: the generated loop with --logger mlflow against --logger jsonl (the default).

The generated train.main(argv), unchanged, LeNet, batch 32, --workers 0, every other flag at its
default (a logged step every 10th), once with --logger mlflow and twice with the default jsonl,
on in-memory tensors (dataset.InMemoryImages swapped in for --dataset fake, as in figure 3), in
one worker process, in one session of loops taking turns step by step (common.RoundRobin, as
figure 3). MLflow writes to its default local store, sqlite:///.../mlflow.db in the folder that
holds the run folders: the run folders are in the scratch folder, and so is the store
(MLFLOW_TRACKING_URI is unset in the worker).

A loop's step is timed from the moment it gets its turn back to the end of its next optimizer
step, and train.py writes a logged step's record after that step's optimizer step: so the
record of step 10 is written in the time of step 11, and each 10-step window holds exactly one
step with a record in it and nine without.

Un-logged steps: per window, the nine steps without a record, per second of the thread's CPU
time; mlflow's rate over the geometric mean of the two jsonl loops' rates; the median over
windows and sessions. The trackers run only on logged steps, so the target is 1.00 within the
noise: >= 0.98. A logged step: the median time of the steps that hold a record, with mlflow and
with jsonl, on the thread's CPU time (which other processes' load does not inflate); the
difference is what MLflow adds to each logged step. The wall-clock times, which also count waiting
for the disk (and, on a loaded machine, for a core), are in the notes. All steps: the windows'
whole rates, what MLflow costs in all at the default --log-every 10.

Set-up: the time to the first step of train.main with each logger, in runs one at a time
(mlflow: importing it, opening the store, creating the run, logging the options), after a first
run that created the store, whose time is in the notes.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Context,
    RoundRobin,
    Row,
    StepClock,
    check,
    in_memory_datasets,
    median,
    rate,
    run_worker,
    seconds,
    set_threads,
    spread,
    worker_main,
)
from data_pipeline import MALLOC  # noqa: E402

BATCH = 32
WINDOW = 10  # train.py's default --log-every: one logged step per window
TARGET = 0.98
# quick -> optimizer steps per run, warm-up steps, sessions, first-step runs of each logger
PLAN = {True: (31, 10, 1, 1), False: (221, 20, 4, 3)}
LOGGERS = {"jsonl": "jsonl", "mlflow": "mlflow", "again": "jsonl"}


def measure(ctx: Context) -> list[Row]:
    steps, warmup, sessions, starts = PLAN[ctx.quick]
    ctx.log(f"trackers: lenet, mlflow vs jsonl, {sessions} x {steps} steps")
    for logger in ("jsonl", "mlflow"):
        ctx.record(
            9,
            f"in-process train.main(): --model lenet --dataset fake --batch-size {BATCH} "
            f"--workers 0 --epochs 1 --max-steps {steps} --device cpu --logger {logger} "
            "--output-dir $WORK/runs-.../... (datasets: in-memory; MLflow's store "
            "$WORK/runs-.../mlflow.db)",
        )
    result = run_worker(
        "trackers",
        {
            "project": str(ctx.projects["plain"]),
            "steps": steps,
            "warmup": warmup,
            "sessions": sessions,
            "starts": starts,
            "threads": ctx.threads,
        },
        ctx,
        env=MALLOC,
    )
    name = f"lenet, batch {BATCH}, CPU, default flags"

    def speed(part: str, *kinds) -> str:
        wall = median([v for kind in kinds for v in result["rates"]["wall"][part][kind]])
        cpu = median([v for kind in kinds for v in result["rates"]["cpu"][part][kind]])
        return f"{rate(wall, 'steps/s')} ({rate(cpu, 'per CPU-s')})"

    def note(part: str, kind: str) -> str:
        ratios = result["ratios"]["cpu"][part][kind]
        return (
            f"ratio on CPU time, median of {len(ratios)} ({WINDOW}-step windows, 3 loops taking "
            f"turns step by step); quartiles {spread(ratios)}; on wall time "
            f"{median(result['ratios']['wall'][part][kind]):.3f}"
        )

    unlogged = median(result["ratios"]["cpu"]["unlogged"]["mlflow"])
    logged = {
        clock: {
            "mlflow": median(result["logged"][clock]["mlflow"]) * 1000,
            "jsonl": median(result["logged"][clock]["jsonl"] + result["logged"][clock]["again"])
            * 1000,
        }
        for clock in ("wall", "cpu")
    }
    added = logged["cpu"]["mlflow"] - logged["cpu"]["jsonl"]
    plain_step = 1000 / median(
        result["rates"]["cpu"]["unlogged"]["jsonl"] + result["rates"]["cpu"]["unlogged"]["again"]
    )
    first = {kind: median(values) for kind, values in result["first_step"].items()}
    return [
        Row(
            9,
            f"steps/s on un-logged steps, --logger mlflow vs jsonl, {name}",
            speed("unlogged", "mlflow"),
            speed("unlogged", "jsonl", "again") + " jsonl",
            unlogged,
            f">= {TARGET}",
            check(unlogged, ">=", TARGET),
            note=note("unlogged", "mlflow"),
        ),
        Row(
            9,
            f"one logged step, --logger mlflow vs jsonl, {name}",
            f"{logged['cpu']['mlflow']:.1f} ms CPU",
            f"{logged['cpu']['jsonl']:.1f} ms CPU (jsonl)",
            logged["cpu"]["mlflow"] / logged["cpu"]["jsonl"],
            "",
            "info",
            note=f"MLflow adds {added:.1f} ms of CPU time to each logged step, "
            f"{added / plain_step:.1f} un-logged steps' worth; on the wall clock "
            f"{logged['wall']['mlflow']:.1f} ms against {logged['wall']['jsonl']:.1f} ms "
            f"(+{logged['wall']['mlflow'] - logged['wall']['jsonl']:.1f} ms); medians of "
            f"{len(result['logged']['cpu']['mlflow'])} logged steps",
        ),
        Row(
            9,
            f"steps/s on all steps (every 10th logged), --logger mlflow vs jsonl, {name}",
            speed("all", "mlflow"),
            speed("all", "jsonl", "again") + " jsonl",
            median(result["ratios"]["cpu"]["all"]["mlflow"]),
            "",
            "info",
            note=note("all", "mlflow"),
        ),
        Row(
            9,
            f"noise control, --logger jsonl again / jsonl, un-logged steps, {name}",
            speed("unlogged", "again"),
            speed("unlogged", "jsonl"),
            median(result["ratios"]["cpu"]["unlogged"]["again"]),
            "",
            "info",
            note=note("unlogged", "again") + ": the spread that noise alone gives",
        ),
        Row(
            9,
            f"time to the first step, --logger mlflow vs jsonl, {name}",
            seconds(first["mlflow"]),
            seconds(first["jsonl"]) + " jsonl",
            first["mlflow"] / first["jsonl"],
            "",
            "info",
            note=f"median of {len(result['first_step']['mlflow'])} runs each, the store already "
            f"created; the first mlflow run of the process (importing mlflow, creating the sqlite "
            f"store) took {seconds(result['cold_first_step'])}",
        ),
    ]


def windows(durations: list[tuple[float, float]], warmup: int, clock: int):
    """(un-logged rate, all-steps rate, logged step's duration) of each WINDOW-step window after
    `warmup` steps. durations[i] is step i + 2's, which holds the record of step i + 1: a record
    is in durations[i] where (i + 1) % WINDOW == 0."""
    timed = list(range(warmup, len(durations)))
    result = []
    for start in range(0, len(timed) - WINDOW + 1, WINDOW):
        indices = timed[start : start + WINDOW]
        logged = [i for i in indices if (i + 1) % WINDOW == 0]
        plain = [durations[i][clock] for i in indices if i not in logged]
        whole = sum(durations[i][clock] for i in indices)
        result.append((len(plain) / sum(plain), WINDOW / whole, durations[logged[0]][clock]))
    return result


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the store goes beside the run folders
    import torch

    sys.path.insert(0, config["project"])
    import dataset
    import train

    steps, warmup = config["steps"], config["warmup"]
    in_memory = in_memory_datasets(torch, dataset, BATCH * steps, BATCH * 2)
    train.build_datasets = lambda args: in_memory
    runs = tempfile.mkdtemp(prefix="runs-", dir=os.getcwd())  # in run.py's scratch folder

    def run(kind: str, n_steps: int = steps) -> None:
        train.main([
            "--model", "lenet", "--dataset", "fake", "--fake-size", str(BATCH * steps),
            "--batch-size", str(BATCH), "--workers", "0", "--epochs", "1",
            "--max-steps", str(n_steps), "--device", "cpu", "--logger", LOGGERS[kind],
            "--output-dir", tempfile.mkdtemp(dir=runs),
        ])  # fmt: skip

    def first_step(kind: str) -> float:
        clock = StepClock(1, 2, False)
        try:
            run(kind, 2)
        finally:
            clock.close()
        return clock.first_step_seconds()

    cold = first_step("mlflow")  # creates the store
    assert os.path.exists(os.path.join(runs, "mlflow.db")), "MLflow's store is not in the scratch"
    first_steps = {"jsonl": [], "mlflow": []}
    for rep in range(config["starts"]):
        for kind in ("jsonl", "mlflow") if rep % 2 == 0 else ("mlflow", "jsonl"):
            first_steps[kind].append(first_step(kind))

    kinds = list(LOGGERS)
    parts = ("unlogged", "all")
    result = {
        "rates": {c: {p: {k: [] for k in kinds} for p in parts} for c in ("wall", "cpu")},
        "ratios": {c: {p: {k: [] for k in kinds[1:]} for p in parts} for c in ("wall", "cpu")},
        "logged": {c: {k: [] for k in kinds} for c in ("wall", "cpu")},
    }
    for rep in range(config["sessions"]):
        session = RoundRobin(kinds, steps, seed=rep)
        session.run({kind: (lambda kind=kind: run(kind)) for kind in kinds})
        for index, clock in enumerate(("wall", "cpu")):
            measured = {kind: windows(session.durations[kind], warmup, index) for kind in kinds}
            for window in range(min(len(values) for values in measured.values())):
                for part_index, part in enumerate(parts):
                    values = {kind: measured[kind][window][part_index] for kind in kinds}
                    baseline = math.sqrt(values["jsonl"] * values["again"])
                    for kind in kinds:
                        result["rates"][clock][part][kind].append(values[kind])
                    result["ratios"][clock][part]["mlflow"].append(values["mlflow"] / baseline)
                    result["ratios"][clock][part]["again"].append(values["again"] / values["jsonl"])
                for kind in kinds:
                    result["logged"][clock][kind].append(measured[kind][window][2])
    result["first_step"] = first_steps
    result["cold_first_step"] = cold
    return result


if __name__ == "__main__":
    worker_main(worker)
