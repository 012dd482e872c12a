"""Figure 2: `scaffold new` against copier rendering the same template with the same answers.

End to end: `scaffold new DEST --model lenet --no-git` (the installed entry point, a fresh
process) against a fresh process that calls copier.run_copy(template folder, DEST,
data=NewProject(...).to_data(), defaults=True, quiet=True): what scaffold calls, without its
validation, staging folder, template-version lookup and cache refresh. Both pay for Python and
their imports; they run in turns (ABAB), repeated; the ratio is of the medians. `scaffold new`
with git (init, add, commit) runs in the same rotation and is reported on its own.

Per model: the same comparison in one process (imports already paid), create_project(...,
git=False) against run_copy, for every model of the catalog.
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
    from scaffold.catalog import MODELS
    from scaffold.render import template_source

    source = template_source("project")
    origin = "the template folder" if source.folder_is_release else "the git bundle (a clone)"
    reps = 1 if ctx.quick else 7
    folder = ctx.work / "generation"
    folder.mkdir()
    env = bench_env()
    commands = {
        "scaffold": lambda dest: [BIN / "scaffold", "new", dest, "--model", "lenet", "--no-git"],
        "copier": lambda dest: [PYTHON, "-c", COPIER_BASELINE, dest, "lenet"],
        "git": lambda dest: [BIN / "scaffold", "new", dest, "--model", "lenet"],
    }
    times = {name: [] for name in commands}
    run_checked(commands["scaffold"](folder / "warm"), env=env, cwd=folder)
    ctx.record(2, commands["scaffold"]("DEST"))
    ctx.record(
        2,
        'python -c \'run_copy(str(template_dir("project")), DEST, '
        'data=NewProject(dest=DEST, model="lenet").to_data(), defaults=True, quiet=True)\'',
    )
    ctx.record(2, commands["git"]("DEST"))
    ctx.log(f"generation: {reps} x {len(commands)} renders in fresh processes")
    counter = 0
    for rep in range(reps):
        order = list(commands) if rep % 2 == 0 else list(reversed(commands))
        for name in order:
            counter += 1
            dest = folder / f"p{counter}"
            times[name].append(run_checked(commands[name](dest), env=env, cwd=folder).wall)
            shutil.rmtree(dest)
    scaffold, copier, with_git = (median(times[name]) for name in commands)
    ratio = scaffold / copier
    rows = [
        Row(
            2,
            "`scaffold new --no-git` vs copier run_copy, lenet (fresh processes)",
            f"{scaffold:.3f} s",
            f"{copier:.3f} s (run_copy)",
            ratio,
            f"<= {TARGET}",
            check(ratio, "<=", TARGET),
            note=f"{reps} runs each; scaffold rendered from {origin}",
        ),
        Row(
            2,
            "`scaffold new` with git init + commit, lenet",
            f"{with_git:.3f} s",
            f"{scaffold:.3f} s (--no-git)",
            with_git / scaffold,
            "",
            "info",
            note=f"git costs {with_git - scaffold:+.3f} s",
        ),
    ]

    models = ["lenet"] if ctx.quick else list(MODELS)
    pairs = 1 if ctx.quick else 3
    ctx.log(f"generation per model, in one process: {len(models)} models x {pairs} pairs")
    result = run_worker(
        "generation",
        {"models": models, "pairs": pairs, "folder": str(folder / "inproc")},
        ctx,
    )
    for model in models:
        ours, theirs = median(result[model]["scaffold"]), median(result[model]["copier"])
        ratio = ours / theirs
        rows.append(
            Row(
                2,
                f"create_project(git=False) vs run_copy, {model} (in-process)",
                f"{ours:.3f} s",
                f"{theirs:.3f} s",
                ratio,
                f"<= {TARGET}",
                check(ratio, "<=", TARGET),
            )
        )
    commit = median(result["commit"])
    rows.append(
        Row(
            2,
            "git init + add + commit of a rendered project (in-process)",
            f"{commit:.3f} s",
            "",
            None,
            "",
            "info",
        )
    )
    return rows


def worker(config: dict) -> dict:
    from copier import run_copy

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

    def ours(model: str) -> float:
        dest = fresh()
        start = time.perf_counter()
        create_project(NewProject(dest=dest, model=model), git=False)
        elapsed = time.perf_counter() - start
        shutil.rmtree(dest)
        return elapsed

    def theirs(model: str) -> float:
        dest = fresh()
        data = NewProject(dest=dest, model=model).to_data()
        start = time.perf_counter()
        run_copy(template, dest, data=data, defaults=True, quiet=True)
        elapsed = time.perf_counter() - start
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
        run_copy(template, dest, data=NewProject(dest=dest).to_data(), defaults=True, quiet=True)
        files = list_files(dest)
        start = time.perf_counter()
        commit_project(dest, files, dest.name)
        result["commit"].append(time.perf_counter() - start)
        shutil.rmtree(dest)
    return result


if __name__ == "__main__":
    worker_main(worker)
