"""Figure 6: peak resident memory of the generated train.py against the bare loop.

Each run is its own process (`python train.py ...` in the generated project, against
`python benchmarks/bare_loop.py ...`), both on the project's --dataset fake with the same model,
batch size, steps and thread count; the peak RSS of exactly that process comes from os.wait4.
They alternate, repeated; the ratio is of the medians. train.py also validates and checkpoints
once at the end (its epoch ends at --max-steps), which the bare loop does not.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    BENCH_DIR,
    PYTHON,
    Context,
    Row,
    bench_env,
    check,
    median,
    mib,
    run_checked,
    shell_line,
)

TARGET = 1.05
BATCH = 32


def measure(ctx: Context) -> list[Row]:
    plan = {"lenet": 10} if ctx.quick else {"lenet": 60, "resnet18": 8}
    reps = 1 if ctx.quick else 2
    project = ctx.projects["plain"]
    env = bench_env(ctx.threads)
    floor = None
    if not ctx.quick:
        floor = run_checked([PYTHON, "-c", "import torch, torchvision"], env=env).maxrss_kib
    rows = []
    for model, steps in plan.items():
        ctx.log(f"memory: {model}, {reps} x 2 processes, {steps} steps")
        common = [f"--model={model}", f"--fake-size={BATCH * steps}", f"--batch-size={BATCH}",
                  "--workers=0", "--device=cpu"]  # fmt: skip
        generated = [PYTHON, project / "train.py", *common, "--dataset=fake", "--epochs=1",
                     f"--max-steps={steps}"]  # fmt: skip
        bare = [PYTHON, BENCH_DIR / "bare_loop.py", f"--project={project}", *common,
                f"--steps={steps}"]  # fmt: skip
        peaks = {"generated": [], "bare": []}
        for rep in range(reps):
            order = ["generated", "bare"] if rep % 2 == 0 else ["bare", "generated"]
            for kind in order:
                out = ctx.work / "memory" / f"{model}-{rep}"
                command = generated + [f"--output-dir={out}"] if kind == "generated" else bare
                shown = shell_line(command).replace(str(out), "$RUN")
                ctx.record(6, f"OMP_NUM_THREADS={ctx.threads} {shown}")
                peaks[kind].append(run_checked(command, env=env, cwd=project).maxrss_kib)
        ours, theirs = median(peaks["generated"]), median(peaks["bare"])
        ratio = ours / theirs
        rows.append(
            Row(
                6,
                f"peak RSS, {model}, batch {BATCH}, {steps} steps, CPU",
                mib(ours),
                mib(theirs) + " (bare loop)",
                ratio,
                f"<= {TARGET}",
                check(ratio, "<=", TARGET),
                note=(f"`import torch, torchvision` alone peaks at {mib(floor)}; " if floor else "")
                + f"difference {(ours - theirs) / 1024:+.1f} MiB",
            )
        )
    return rows
