"""Run every benchmark of scaffold side by side, print the table and rewrite BENCHMARKS.md.

    python benchmarks/run.py                # everything (`make bench`), about 7 minutes
    python benchmarks/run.py --quick        # the same rows, fewer repetitions (`make bench-quick`)
    python benchmarks/run.py --device cuda --only 3,7 --output BENCHMARKS.md
                                            # the GPU rows (`make gpu-check`), --amp --channels-last

Figures are medians of repeated, interleaved runs, quoted as ratios against a baseline measured in
the same session. The quick mode keeps the scripts working (tests/test_benchmarks.py); its numbers
are too short to quote. Nothing here asserts a time: a missed target shows as MISSED in the table.

A run on the GPU alone writes only its rows (and its "GPU run" section) into the report already
there, every other row kept; any other run writes the whole report but keeps the GPU rows of an
earlier GPU run where it measured none itself, and the section first_losses.py writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The scaffold of this checkout, before any copy the venv installed (an editable install of
# another checkout, a worktree's main): the projects measured are rendered from these templates.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli_startup  # noqa: E402
import data_pipeline  # noqa: E402
import ddp  # noqa: E402
import generation  # noqa: E402
import memory  # noqa: E402
import op_count  # noqa: E402
import prediction  # noqa: E402
import sweep_overhead  # noqa: E402
import trackers  # noqa: E402
import training  # noqa: E402
from common import ROOT, Context, Row, load_average, machine  # noqa: E402

FIGURES = {
    1: ("CLI start-up", cli_startup),
    2: ("Generation", generation),
    3: ("Training-loop overhead", training),
    4: ("Data pipeline", data_pipeline),
    5: ("DDP on CPU", ddp),
    6: ("Memory", memory),
    7: ("Operators per step", op_count),
    8: ("predict.py throughput", prediction),
    9: ("Experiment trackers", trackers),
    10: ("Sweep overhead", sweep_overhead),
}
# Written by first_losses.py, and by hand from `time make demo` in a fresh clone: kept by every run.
KEPT_SECTIONS = ["losses at default flags", "make demo"]
HEADER = ["#", "measurement", "scaffold / generated", "baseline", "ratio", "target", "result"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (under 2 minutes)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the training figures run; auto: CPU, and CUDA too when a GPU is visible",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of single-process CPU runs"
    )
    parser.add_argument(
        "--output",
        help="the Markdown report to write (default: BENCHMARKS.md, not written with --quick)",
    )
    parser.add_argument("--only", help="comma-separated figure numbers, e.g. 1,3")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if args.output is None and not args.quick and not args.only:
        args.output = str(ROOT / "BENCHMARKS.md")
    return args


def cuda_available() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() == "True"


def render_projects(work: Path) -> dict[str, Path]:
    """The projects the training figures run: the default one (hooks on), a --ddp one, a
    segmentation one (figure 3's U-Net), a language-model one (figure 3's GPT) and a detection
    one (figure 3's Faster R-CNN)."""
    from scaffold.options import NewProject
    from scaffold.render import create_project

    projects = {}
    for key, task, model, ddp_on in (
        ("plain", "classification", "lenet", False),
        ("ddp", "classification", "lenet", True),
        ("segmentation", "segmentation", "unet", False),
        ("lm", "lm", "gpt_tiny", False),
        ("detection", "detection", "tiny_rcnn", False),
    ):
        dest = work / f"proj_{key}"
        create_project(NewProject(dest=dest, task=task, model=model, ddp=ddp_on), git=False)
        projects[key] = dest
    return projects


def format_ratio(row: Row) -> str:
    return "—" if row.ratio is None else f"{row.ratio:.3f}"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        result = row.verdict if row.verdict != "MISSED" else "**MISSED**"
        cells = [
            str(row.figure),
            row.what,
            row.value,
            row.baseline or "—",
            format_ratio(row),
            row.target or "—",
            result,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    return "\n".join(
        f"- {row.figure}, {row.what}: {row.note}" for row in rows if row.note and row.measured
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="scaffold-bench-"))
    has_cuda = cuda_available()
    if args.device == "cuda" and not has_cuda:
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    devices = {"auto": ["cpu", "cuda"] if has_cuda else ["cpu"], "cpu": ["cpu"]}.get(
        args.device, ["cuda"]
    )
    ctx = Context(
        quick=args.quick, devices=devices, threads=args.threads, work=work, cuda_available=has_cuda
    )
    chosen = [int(part) for part in args.only.split(",")] if args.only else list(FIGURES)
    rows: list[Row] = []
    timings = {}
    try:
        ctx.projects = render_projects(work)
        for number in chosen:
            title, module = FIGURES[number]
            print(f"[{number}] {title}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            rows += module.measure(ctx)
            timings[number] = time.perf_counter() - start
            print(f"    {timings[number]:.0f} s", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = load_average()
    rendered = table(rows)
    print(rendered)
    print(
        f"\n{'quick' if args.quick else 'full'} run, {elapsed:.0f} s; load average "
        f"{load_before} before, {load_after} after"
    )
    if args.output:
        info = machine()
        report = render_report(args, rows, info, elapsed, timings, load_before, load_after, ctx)
        output = Path(args.output)
        old = output.read_text(encoding="utf-8") if output.exists() else None
        report = keep_other_runs(report, old, args, info, elapsed, timings, ctx)
        output.write_text(report, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def keep_other_runs(report: str, old: str | None, args, info, elapsed, timings, ctx) -> str:
    """What to write over `old`, the report already there. A GPU-only run (`make gpu-check`)
    puts its measured rows and its section into the old report and changes nothing else; any
    other run writes its whole report, but keeps the GPU rows and section of an earlier GPU run
    when it measured none itself, and first_losses.py's section."""
    import report as reporting

    gpu_only = ctx.devices == ["cuda"]
    names = {number: FIGURES[number][0] for number in timings}
    if "cuda" in ctx.devices:
        gpu = reporting.gpu_section(
            command_line(args),
            info,
            elapsed,
            {names[n]: t for n, t in timings.items()},
            reporting.commands_text(FIGURES, ctx),
        )
    else:
        gpu = reporting.no_gpu_section()
    if old is None or "| # |" not in old:
        return reporting.put_section(report, reporting.GPU_SECTION, gpu)
    if gpu_only:
        merged = reporting.merge_rows(old, report, overwrite_measured=True)
        return reporting.put_section(merged, reporting.GPU_SECTION, gpu)
    merged = reporting.put_section(report, reporting.GPU_SECTION, gpu)
    if "cuda" not in ctx.devices:
        merged = reporting.merge_rows(merged, old, overwrite_measured=False)
        earlier = reporting.find_section(old, reporting.GPU_SECTION)
        if earlier and "Not measured: no GPU" not in earlier:
            merged = reporting.put_section(merged, reporting.GPU_SECTION, earlier)
    for name in KEPT_SECTIONS:
        earlier = reporting.find_section(old, name)
        if earlier:
            merged = reporting.put_section(merged, name, earlier)
    return merged


def command_line(args) -> str:
    parts = ["python benchmarks/run.py"]
    if args.quick:
        parts.append("--quick")
    if args.device != "auto":
        parts.append(f"--device {args.device}")
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    if args.only:
        parts.append(f"--only {args.only}")
    return " ".join(parts)


def render_report(args, rows, info, elapsed, timings, load_before, load_after, ctx) -> str:
    import report

    return report.render(
        figures=FIGURES,
        command=command_line(args),
        table=table(rows),
        notes=notes(rows),
        rows=rows,
        info=info,
        elapsed=elapsed,
        timings={FIGURES[n][0]: t for n, t in timings.items()},
        load=(load_before, load_after),
        ctx=ctx,
    )


if __name__ == "__main__":
    sys.exit(main())
