"""Figure 1: wall time of `scaffold --help` and `scaffold --version`, and what they import.

Each command runs as a fresh process through the installed `scaffold` entry point, in turns with
a bare `python -c pass` (the interpreter's own start-up, for scale), repeated; medians.
"""

from __future__ import annotations

import json
import os
import sys

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
)

TARGET = 0.3  # seconds, median
HEAVY = ("torch", "copier", "jinja2", "git", "yaml")

# Runs the real entry point in-process and reports which heavy modules it loaded.
IMPORT_PROBE = """
import json, sys
from scaffold.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = {heavy!r}
loaded = sorted(name for name in heavy if name in sys.modules)
print("PROBE " + json.dumps({{"loaded": loaded, "modules": len(sys.modules)}}))
"""


def measure(ctx: Context) -> list[Row]:
    reps = 3 if ctx.quick else 15
    scaffold = BIN / "scaffold"
    commands = {
        "--help": [scaffold, "--help"],
        "--version": [scaffold, "--version"],
        "python": [PYTHON, "-c", "pass"],
    }
    compile_scaffold()
    env = bench_env()
    times = {name: [] for name in commands}
    for command in commands.values():  # warm the file cache
        run_checked(command, env=env)
        ctx.record(1, command)
    ctx.log(f"CLI start-up: {reps} x {len(commands)} commands")
    for rep in range(reps):
        order = list(commands) if rep % 2 == 0 else list(reversed(commands))
        for name in order:
            times[name].append(run_checked(commands[name], env=env).wall)
    python = median(times["python"])
    rows = []
    for name in ("--help", "--version"):
        value = median(times[name])
        rows.append(
            Row(
                1,
                f"`scaffold {name}` wall time (median of {reps})",
                f"{value:.3f} s",
                f"{python:.3f} s (`python -c pass`)",
                None,
                f"< {TARGET} s",
                check(value, "<", TARGET),
                note=f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s",
            )
        )
    for name in ("--help", "--version"):
        probe = run_checked([PYTHON, "-c", IMPORT_PROBE.format(heavy=HEAVY), name], env=env).output
        found = json.loads(probe.split("PROBE ", 1)[1].splitlines()[0])
        loaded = found["loaded"]
        forbidden = [name for name in loaded if name in ("torch", "copier")]
        rows.append(
            Row(
                1,
                f"heavy modules `scaffold {name}` imports",
                ", ".join(loaded) if loaded else f"none of {len(HEAVY)} ({', '.join(HEAVY)})",
                f"{found['modules']} modules in all",
                None,
                "no torch, no copier",
                "MISSED" if forbidden else "met",
            )
        )
    return rows
