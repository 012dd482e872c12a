"""BENCHMARKS.md: the table, the machine, the load, the exact commands, what each figure times."""

from __future__ import annotations

import datetime
import inspect
import textwrap


def attribution_table(ctx) -> str:
    import training

    sections = []
    for key, result in ctx.shared.items():
        if not (isinstance(key, tuple) and key[0] == "train"):
            continue
        costs = training.attribution(result)
        if costs is None:
            continue
        _, model, device = key
        bare = costs.pop("bare loop step")
        generated = costs.pop("generated loop step")
        lines = [
            f"**{model} on {device}**: the bare loop's step takes {bare:,.0f} µs of CPU time, "
            f"train.py's {generated:,.0f} µs (default flags).",
            "",
            "| piece of train.py's step | µs per step | share of the bare step |",
            "|---|---|---|",
        ]
        for name, value in costs.items():
            lines.append(f"| {name} | {value:,.1f} | {100 * value / bare:.2f}% |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def render(*, figures, command, table, notes, rows, info, elapsed, timings, load, ctx) -> str:
    """The whole report; `figures` is run.FIGURES, {number: (title, module)}."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = "\n".join(f"- {key}: {value}" for key, value in info.items())
    missed = [row for row in rows if row.verdict == "MISSED"]
    missed_text = (
        "\n".join(
            f"- {row.figure}: {row.what}: "
            + (f"{row.ratio:.3f}" if row.ratio is not None else row.value)
            + f" (target {row.target})"
            for row in missed
        )
        if missed
        else "- none"
    )
    commands = []
    for number, (title, _) in figures.items():
        if ctx.commands.get(number):
            commands.append(f"    # {number}. {title}")
            commands += [f"    {line}" for line in ctx.commands[number]]
            commands.append("")
    how = []
    for number, (title, module) in figures.items():
        doc = inspect.getdoc(module) or ""
        body = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
        how.append(f"### {number}. {title}\n\n{doc.splitlines()[0]}\n\n{body}".rstrip())
    per_figure = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    attribution = attribution_table(ctx) or "(not measured in this run: it needs the full mode)"
    return textwrap.dedent("""\
        # Benchmarks

        Written by `{command}` on {now}, in {elapsed:.0f} s ({per_figure}).
        Do not edit by hand: `make bench` rewrites this file. Targets come from issue 9; a missed
        target shows as **MISSED**, and README.md ("Performance") says why and what would fix it.

        ## Machine

        {machine}
        - load average (1, 5, 15 min) when the run started: {load_before}; when it ended:
          {load_after}. The machine is shared: the load counts other people's processes too.
        - torch threads: {threads} in every single-process CPU measurement (`--threads`); DDP
          compares 2 processes x 1 thread with 1 process x 2 threads.
        - training figures on: {devices}

        ## Commands

            make bench          # .venv/bin/python benchmarks/run.py        (this file)
            make bench-quick    # .venv/bin/python benchmarks/run.py --quick (prints only)
            python benchmarks/run.py --device cuda   # the GPU rows, with --amp --channels-last

        What each figure ran ($WORK is a scratch folder; DEST a new project folder):

        {commands}

        ## Results

        Ratios are generated (or scaffold) / baseline; medians of repeated runs, taken in turns.

        {table}

        Notes:

        {notes}

        Missed targets:

        {missed}

        ## Per-step costs of the generated loop

        What each piece that train.py adds costs per step, in place: the same session of loops
        taking turns also runs train.py with pieces taken out, and each piece's cost is the
        difference of two medians (so a small negative value means "less than the noise").
        Pieces that run only on logged steps are spread over the 10 steps of a window.

        {attribution}

        ## What is timed

        {how}
        """).format(
        command=command,
        now=now,
        elapsed=elapsed,
        per_figure=per_figure,
        machine=machine,
        load_before=load[0],
        load_after=load[1],
        threads=ctx.threads,
        devices=", ".join(ctx.devices),
        commands="\n".join(commands).rstrip() or "    (none)",
        table=table,
        notes=notes or "- none",
        missed=missed_text,
        attribution=attribution,
        how="\n\n".join(how),
    )
