"""Figure 2: `scaffold new` against copier rendering the same template with the same answers.

End to end: `scaffold new DEST --model lenet --no-git` (the installed entry point, a fresh
process) against a fresh process that calls copier.run_copy(template folder, DEST,
data=NewProject(...).to_data(), defaults=True, quiet=True): what scaffold calls, without its
validation, staging folder, template-version lookup and cache refresh. Both pay for Python and
their imports; they run in turns (ABAB), repeated; the ratio is of the medians. `scaffold new`
with git (init, add, commit) runs in the same rotation and is reported on its own.

Per model: the same comparison in one process (imports already paid), create_project(...,
git=False) against run_copy, for every model of the catalog.

Ratios are medians of the ratios of pairs, on CPU time (user + system, of the process and of the
git processes copier starts and waits for): on a machine shared with other work, wall time mostly
measures the others (the wall-time ratios are in the notes).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    BIN,
    PYTHON,
    Context,
    Row,
    bench_env,
    check,
    compile_scaffold,
    median,
    run_checked,
    run_worker,
    worker_main,
)

TARGET = 1.1

COPIER_BASELINE = """
import sys
from pathlib import Path
from copier import run_copy
from scaffold.options import NewProject
from scaffold.render import template_dir
dest = Path(sys.argv[1])
data = NewProject(dest=dest, model=sys.argv[2]).to_data()
run_copy(str(template_dir("project")), dest, data=data, defaults=True, quiet=True)
"""


def measure(ctx: Context) -> list[Row]:
    import json

    from scaffold.catalog import MODELS
    from scaffold.options import NewProject
    from scaffold.render import template_dir, template_source

    compile_scaffold()
    source = template_source("project")
    origin = "the template folder" if source.folder_is_release else "the git bundle (a clone)"
    reps = 2 if ctx.quick else 9
    folder = ctx.work / "generation"
    folder.mkdir()
    env = bench_env()
    # The same answers for copier's own command line; project_name defaults to DEST's name.
    answers = NewProject(dest=folder / "x", model="lenet").to_data()
    del answers["project_name"]
    answers_file = ctx.work / "answers.json"  # JSON is YAML
    answers_file.write_text(json.dumps(answers))
    template = template_dir("project")
    commands = {
        "scaffold": lambda dest: [BIN / "scaffold", "new", dest, "--model", "lenet", "--no-git"],
        "copier": lambda dest: [PYTHON, "-c", COPIER_BASELINE, dest, "lenet"],
        "git": lambda dest: [BIN / "scaffold", "new", dest, "--model", "lenet"],
        "copier CLI": lambda dest: [BIN / "copier", "copy", "--defaults", "--quiet",
                                    "--data-file", answers_file, template, dest],
    }  # fmt: skip
    runs = {name: [] for name in commands}
    run_checked(commands["scaffold"](folder / "warm"), env=env, cwd=folder)
    ctx.record(2, commands["scaffold"]("DEST"))
    ctx.record(
        2,
        'python -c \'run_copy(str(template_dir("project")), DEST, '
        'data=NewProject(dest=DEST, model="lenet").to_data(), defaults=True, quiet=True)\'',
    )
    ctx.record(2, commands["git"]("DEST"))
    ctx.record(2, commands["copier CLI"]("DEST"))
    ctx.log(f"generation: {reps} x {len(commands)} renders in fresh processes")
    counter = 0
    for rep in range(reps):
        order = list(commands) if rep % 2 == 0 else list(reversed(commands))
        for name in order:
            counter += 1
            dest = folder / f"p{counter}"
            runs[name].append(run_checked(commands[name](dest), env=env, cwd=folder))
            shutil.rmtree(dest)

    def ratios(ours: str, theirs: str, clock: str) -> list[float]:
        return [
            getattr(a, clock) / getattr(b, clock)
            for a, b in zip(runs[ours], runs[theirs], strict=True)
        ]

    cpu = {name: median([run.cpu for run in runs[name]]) for name in commands}
    wall = {name: median([run.wall for run in runs[name]]) for name in commands}
    ratio = median(ratios("scaffold", "copier", "cpu"))
    rows = [
        Row(
            2,
            "`scaffold new --no-git` vs copier run_copy, lenet (fresh processes, CPU time)",
            f"{cpu['scaffold']:.3f} s CPU, {wall['scaffold']:.3f} s wall",
            f"{cpu['copier']:.3f} s CPU, {wall['copier']:.3f} s wall",
            ratio,
            f"<= {TARGET}",
            check(ratio, "<=", TARGET),
            note=f"median of {reps} pairs on CPU time (the process and the git calls it waits "
            f"for); on wall time {median(ratios('scaffold', 'copier', 'wall')):.3f}; scaffold "
            f"rendered from {origin}",
        ),
        Row(
            2,
            "`scaffold new` with git init + commit vs --no-git, lenet (CPU time)",
            f"{cpu['git']:.3f} s CPU, {wall['git']:.3f} s wall",
            f"{cpu['scaffold']:.3f} s CPU, {wall['scaffold']:.3f} s wall",
            median(ratios("git", "scaffold", "cpu")),
            "",
            "info",
            note=f"git adds {cpu['git'] - cpu['scaffold']:+.3f} s of CPU time, "
            f"{wall['git'] - wall['scaffold']:+.3f} s of wall time",
        ),
    ]

    rows.append(
        Row(
            2,
            "`scaffold new --no-git` vs `copier copy` (copier's command line), lenet (CPU time)",
            f"{cpu['scaffold']:.3f} s CPU, {wall['scaffold']:.3f} s wall",
            f"{cpu['copier CLI']:.3f} s CPU, {wall['copier CLI']:.3f} s wall",
            median(ratios("scaffold", "copier CLI", "cpu")),
            f"<= {TARGET}",
            check(median(ratios("scaffold", "copier CLI", "cpu")), "<=", TARGET),
            note=f"on wall time {median(ratios('scaffold', 'copier CLI', 'wall')):.3f}",
        )
    )

    models = ["lenet"] if ctx.quick else list(MODELS)
    pairs = 1 if ctx.quick else 5
    ctx.log(f"generation per model, in one process: {len(models)} models x {pairs} pairs")
    result = run_worker(
        "generation",
        {"models": models, "pairs": pairs, "folder": str(folder / "inproc")},
        ctx,
    )
    for model in models:
        ours, theirs = result[model]["scaffold"], result[model]["copier"]
        cpu_ratio = median([a[1] / b[1] for a, b in zip(ours, theirs, strict=True)])
        wall_ratio = median([a[0] / b[0] for a, b in zip(ours, theirs, strict=True)])
        rows.append(
            Row(
                2,
                f"create_project(git=False) vs run_copy, {model} (in-process, CPU time)",
                f"{median([run[1] for run in ours]):.3f} s CPU",
                f"{median([run[1] for run in theirs]):.3f} s CPU",
                cpu_ratio,
                f"<= {TARGET}",
                check(cpu_ratio, "<=", TARGET),
                note=f"median of {pairs} pairs; on wall time {wall_ratio:.3f}",
            )
        )
    commit = median(result["commit"])
    rows.append(
        Row(
            2,
            "git init + add + commit of a rendered project (in-process, wall time)",
            f"{commit:.3f} s",
            "",
            None,
            "",
            "info",
        )
    )
    return rows


def cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (copier runs git)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def worker(config: dict) -> dict:
    from copier import run_copy

    from scaffold.catalog import MODELS
    from scaffold.options import NewProject
    from scaffold.render import commit_project, create_project, list_files, template_dir

    folder = Path(config["folder"])
    folder.mkdir(parents=True)
    template = str(template_dir("project"))
    counter = 0

    def fresh() -> Path:
        nonlocal counter
        counter += 1
        return folder / f"p{counter}"

    def timed(function, *args) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        function(*args)
        return time.perf_counter() - wall, cpu_seconds() - cpu

    def project(dest: Path, model: str) -> NewProject:
        return NewProject(dest=dest, task=MODELS[model].task, model=model)

    def ours(model: str) -> tuple[float, float]:
        dest = fresh()
        elapsed = timed(lambda: create_project(project(dest, model), git=False))
        shutil.rmtree(dest)
        return elapsed

    def render(dest: Path, model: str) -> None:
        data = project(dest, model).to_data()
        run_copy(template, dest, data=data, defaults=True, quiet=True)

    def theirs(model: str) -> tuple[float, float]:
        dest = fresh()
        elapsed = timed(render, dest, model)
        shutil.rmtree(dest)
        return elapsed

    ours("lenet"), theirs("lenet")  # warm-up: imports, template cache
    result = {}
    for model in config["models"]:
        result[model] = {"scaffold": [], "copier": []}
        for pair in range(config["pairs"]):
            if pair % 2 == 0:
                result[model]["scaffold"].append(ours(model))
                result[model]["copier"].append(theirs(model))
            else:
                result[model]["copier"].append(theirs(model))
                result[model]["scaffold"].append(ours(model))
    result["commit"] = []
    for _ in range(max(config["pairs"], 1)):
        dest = fresh()
        render(dest, "lenet")
        files = list_files(dest)
        start = time.perf_counter()
        commit_project(dest, files, dest.name)
        result["commit"].append(time.perf_counter() - start)
        shutil.rmtree(dest)
    return result


if __name__ == "__main__":
    worker_main(worker)
