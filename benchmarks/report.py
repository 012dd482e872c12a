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


def commands_text(figures, ctx) -> str:
    """What each figure ran, indented as a code block."""
    commands = []
    for number, (title, _) in figures.items():
        if ctx.commands.get(number):
            commands.append(f"    # {number}. {title}")
            commands += [f"    {line}" for line in ctx.commands[number]]
            commands.append("")
    return "\n".join(commands).rstrip() or "    (none)"


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
            make gpu-check      # on a GPU machine: the generated CUDA tests, then the GPU rows
                                # (benchmarks/gpu_check.sh; run.py --device cuda --only 3,7)
            python benchmarks/first_losses.py   # the losses at default flags (its own section)

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
        commands=commands_text(figures, ctx),
        table=table,
        notes=notes or "- none",
        missed=missed_text,
        attribution=attribution,
        how="\n\n".join(how),
    )


# ---- sections written by other runs, and rows merged from them ---------------------------------
#
# BENCHMARKS.md has parts that different runs write: the full CPU run (everything), the GPU run
# (`make gpu-check` on a GPU machine: the CUDA rows and a section of its own) and
# first_losses.py (a section of its own). Each run rewrites only its part and keeps the others.

GPU_SECTION = "gpu run"
BEFORE = "## Per-step costs of the generated loop"  # where a missing section goes


def section(name: str, body: str) -> str:
    return f"<!-- begin {name} -->\n{body.strip()}\n<!-- end {name} -->"


def find_section(text: str, name: str) -> str | None:
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if begin not in text or end not in text:
        return None
    return text[text.index(begin) : text.index(end) + len(end)]


def put_section(text: str, name: str, block: str, before: str = BEFORE) -> str:
    """`text` with section `name` replaced by `block` (made by section()), or inserted before the
    heading `before` (at the end when there is none)."""
    old = find_section(text, name)
    if old is not None:
        return text.replace(old, block)
    if before in text:
        return text.replace(before, block + "\n\n" + before, 1)
    return text.rstrip() + "\n\n" + block + "\n"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def _results(lines: list[str]) -> tuple[int, int]:
    """[start, end) of the results table's body rows."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| # |")) + 2
    end = start
    while end < len(lines) and lines[end].startswith("| "):
        end += 1
    return start, end


def _measured(line: str) -> bool:
    return not _cells(line)[-1].startswith("not measured")


def _note_index(lines: list[str], figure: str, what: str) -> int | None:
    prefix = f"- {figure}, {what}: "
    return next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)


def merge_rows(base: str, donor: str, overwrite_measured: bool) -> str:
    """`base` with the measured rows of `donor` (and their notes) taken in. With
    `overwrite_measured` the donor is the newer run: its rows replace those of the same
    measurement, and a row `base` lacks goes after the last row of its figure. Without, the donor
    is an older report: its rows only fill in rows `base` has but did not measure. The list of
    missed targets is made again from the merged table."""
    lines, donor_lines = base.splitlines(), donor.splitlines()
    start, end = _results(lines)
    donor_start, donor_end = _results(donor_lines)
    rows = lines[start:end]
    taken = []
    for line in donor_lines[donor_start:donor_end]:
        if not _measured(line):
            continue
        figure, what = _cells(line)[:2]
        same = [i for i, row in enumerate(rows) if _cells(row)[1] == what]
        if not overwrite_measured and (not same or _measured(rows[same[0]])):
            continue
        if same:
            rows[same[0]] = line
        else:
            earlier = [i for i, row in enumerate(rows) if int(_cells(row)[0]) <= int(figure)]
            rows.insert(max(earlier, default=-1) + 1, line)
        taken.append((figure, what))
    lines[start:end] = rows
    # Notes: the donor's note of each row taken replaces the base's (or follows the notes).
    notes_end = lines.index("Missed targets:") - 1
    for figure, what in taken:
        old = _note_index(lines, figure, what)
        new = _note_index(donor_lines, figure, what)
        if old is not None:
            del lines[old]
            notes_end -= 1
        if new is not None:
            lines.insert(old if old is not None else notes_end, donor_lines[new])
            notes_end += 1
    if lines[lines.index("Notes:") + 2] == "- none" and taken:
        del lines[lines.index("Notes:") + 2]
    missed_at = lines.index("Missed targets:") + 2
    missed_end = missed_at
    while missed_end < len(lines) and lines[missed_end].startswith("- "):
        missed_end += 1
    missed = []
    for row in lines[start : start + len(rows)]:
        figure, what, value, _, ratio, target, verdict = _cells(row)
        if verdict == "**MISSED**":
            shown = ratio if ratio != "—" else value
            missed.append(f"- {figure}: {what}: {shown} (target {target})")
    lines[missed_at:missed_end] = missed or ["- none"]
    return "\n".join(lines) + "\n"


def gpu_section(command: str, info: dict, elapsed: float, timings: dict, commands: str) -> str:
    """The GPU run's own part of the report: when, where, what it ran."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    per_figure = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    machine = "\n".join(f"- {key}: {value}" for key, value in info.items())
    return section(
        GPU_SECTION,
        f"""## GPU run

The CUDA rows of the table come from `make gpu-check`:
`{command}`, on {now}, in {elapsed:.0f} s ({per_figure}).
The other rows come from the run named at the top.

{machine}

{commands}""",
    )


def no_gpu_section() -> str:
    return section(
        GPU_SECTION,
        """## GPU run

Not measured: no GPU. The CUDA rows fill in, and this section with them, when `make gpu-check`
runs on a machine with an NVIDIA GPU (benchmarks/gpu_check.sh says how).""",
    )
