"""Figure 5: DDP on CPU, 2 processes (gloo, 1 thread each) against 1 process with 2 threads.

The same --ddp project, the same global batch (2 x B/2 against 1 x B), the same in-memory data
(benchmarks/timed_train.py), default flags. The DDP run is started by
`python -m torch.distributed.run --standalone --nproc-per-node 2` with OMP_NUM_THREADS=1, the
single process by `python` with OMP_NUM_THREADS=2 (and, in the full run, with 1 thread too:
what the second core adds at all); they alternate, repeated. Throughput is global
optimizer steps per second after warm-up, read on rank 0. Loss equivalence: the step losses that
metrics.jsonl logs (every 10th step) and the final validation loss of both runs, for LeNet (no
BatchNorm, so 2 x B/2 must train exactly like 1 x B; generated tests/test_ddp.py asserts it).
"""

from __future__ import annotations

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    BENCH_DIR,
    PYTHON,
    Context,
    Row,
    bench_env,
    median,
    rate,
    run_checked,
    shell_line,
)

GLOBAL_BATCH = 64
# kind -> (processes, threads per process)
KINDS = {"ddp": (2, 1), "single": (1, 2), "single1": (1, 1)}


def launch(ctx: Context, model: str, kind: str, steps: int, warmup: int, name: str):
    """One run of KINDS[kind]; its rank-0 step rate, wall time and metrics lines."""
    processes, threads = KINDS[kind]
    out = ctx.work / "ddp" / name
    out.mkdir(parents=True)
    times = out / "times.json"
    wrapper = [
        BENCH_DIR / "timed_train.py",
        "--project", ctx.projects["ddp"], "--times", times, "--steps", steps,
        "--warmup", warmup, "--memory-data", GLOBAL_BATCH * steps, "--",
        f"--model={model}", "--dataset=fake", f"--batch-size={GLOBAL_BATCH // processes}",
        "--workers=0", "--epochs=1", f"--max-steps={steps}", "--device=cpu",
        f"--output-dir={out / 'run'}",
    ]  # fmt: skip
    if processes == 1:
        command = [PYTHON, *wrapper]
    else:
        command = [
            PYTHON, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", *wrapper,
        ]  # fmt: skip
    ctx.record(5, f"OMP_NUM_THREADS={threads} " + shell_line(command).replace(str(out), "$RUN"))
    finished = run_checked(command, env=bench_env(threads), cwd=ctx.projects["ddp"])
    result = json.loads(times.read_text())
    result["wall"] = finished.wall
    result["metrics"] = [
        json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    return result


def relative_differences(first: list[dict], second: list[dict]) -> list[tuple[str, float]]:
    """(what, relative difference) for every loss both metrics files logged, in order."""

    def losses(records):
        values = []
        for record in records:
            for key in ("loss", "val_loss", "train_loss"):
                if key in record:
                    values.append((record["kind"], record["step"], key, record[key]))
        return values

    differences = []
    for (kind_a, step_a, key_a, a), (kind_b, step_b, key_b, b) in zip(
        losses(first), losses(second), strict=True
    ):
        if (kind_a, step_a, key_a) != (kind_b, step_b, key_b):
            raise RuntimeError("the two runs logged different steps")
        differences.append((f"{key_a} at step {step_a}", abs(a - b) / max(abs(b), 1e-12)))
    return differences


def measure(ctx: Context) -> list[Row]:
    # model -> (optimizer steps, warm-up steps, repetitions)
    plan = {"lenet": (30, 10, 1)} if ctx.quick else {"lenet": (80, 20, 2), "resnet18": (10, 3, 2)}
    kinds = ["ddp", "single"] if ctx.quick else list(KINDS)
    rows = []
    for model, (steps, warmup, reps) in plan.items():
        ctx.log(f"DDP: {model}, {reps} x {kinds}, {steps} steps")
        runs = {kind: [] for kind in kinds}
        for rep in range(reps):
            for kind in kinds if rep % 2 == 0 else list(reversed(kinds)):
                runs[kind].append(launch(ctx, model, kind, steps, warmup, f"{model}-{kind}-{rep}"))

        def rate_of(kind, runs=runs):
            return median([run["steps_per_second"] for run in runs[kind]])

        for baseline in kinds[1:]:
            ratios = [
                d["steps_per_second"] / s["steps_per_second"]
                for d, s in zip(runs["ddp"], runs[baseline], strict=True)
            ]
            processes, threads = KINDS[baseline]
            walls = [median([run["wall"] for run in runs[kind]]) for kind in ("ddp", baseline)]
            rows.append(
                Row(
                    5,
                    f"{model}, global batch {GLOBAL_BATCH}: 2 processes x 1 thread (gloo) "
                    f"vs 1 process x {threads} thread{'s' if threads > 1 else ''}",
                    rate(rate_of("ddp") * GLOBAL_BATCH, "samples/s"),
                    rate(rate_of(baseline) * GLOBAL_BATCH, "samples/s"),
                    median(ratios),
                    "report",
                    "info",
                    note=f"whole launch {walls[0]:.1f} s (torchrun) vs {walls[1]:.1f} s; "
                    f"ratios {' '.join(f'{r:.3f}' for r in ratios)}",
                )
            )
        if model == "lenet":
            differences = relative_differences(
                runs["ddp"][0]["metrics"], runs["single"][0]["metrics"]
            )
            what, first = differences[0]
            worst = max(value for _, value in differences)
            rows.append(
                Row(
                    5,
                    f"{model}: loss equivalence, DDP vs 1 process, first logged loss ({what})",
                    f"relative difference {first:.1e}",
                    "",
                    None,
                    "<= 1e-5",
                    "met" if first <= 1e-5 and not math.isnan(first) else "MISSED",
                    note=f"the generated tests/test_ddp.py asserts 1e-5 over 7 steps; rounding "
                    f"(one batch of 64 against two of 32 averaged) grows as training goes on: "
                    f"largest of {len(differences)} logged losses over {steps} steps {worst:.1e}",
                )
            )
    return rows
