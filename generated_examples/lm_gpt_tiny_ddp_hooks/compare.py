"""Compare runs, several per setting (seeds): mean and standard deviation of their final metrics,
and of their curves.

    python train.py --seed 0 && python train.py --seed 1 && python train.py --seed 2
    python compare.py runs/*                  # a table, and runs/compare.png
    python compare.py runs/a-* runs/b-* --output both.png
    python compare.py runs/sweeps/demo        # a sweep's trials, and runs/sweeps/demo/compare.png

Runs are grouped by their settings (config.json, which train.py writes into every run folder),
leaving out --seed, --output-dir and the options that do not change the training (--logger,
--workers, ...): runs that differ only in those are repeats of one setting.
Each group gets a row of the table (the last epoch line of each run: mean ± sample standard
deviation over the runs) and a curve per panel (the mean per epoch, with a band of ± one standard
deviation). The metrics are the ones the runs logged, found in their last epoch lines:
train_loss, val_loss, then every other number named val_* in the order first seen (val_acc for
classification; val_miou, val_pixel_acc for segmentation; ...), except the per-class metrics,
whose names hold a "/" (val_iou/3). Needs matplotlib for the figure (`pip install -e
'.[plot]'`); `--no-figure` prints the table only.
"""

import argparse
import json
import math
import os
import statistics

from plot import (
    import_matplotlib,
    is_number,
    is_sweep,
    read_metrics,
    save,
    sweep_run_dirs,
    validation_metrics,
)

LOSSES = ("train_loss", "val_loss")  # the first columns: every task logs them
# What may differ between repeats of one setting (the seed), or does not change the training.
REPEAT_OPTIONS = ("seed", "output_dir", "logger", "log_every", "save_every_steps", "keep_last")
REPEAT_OPTIONS += ("workers", "dist_timeout")
PANELS_PER_ROW = 3  # the figure's panels wrap after this many


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="a train.py --output-dir, or a sweep folder"
    )
    parser.add_argument("--output", help="the PNG to write (default: compare.png beside the runs)")
    parser.add_argument("--no-figure", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    args.run_dirs = run_folders(args.run_dirs)
    if args.output is None:
        parent = os.path.dirname(os.path.normpath(args.run_dirs[0]))
        args.output = os.path.join(parent, "compare.png")
    return args


def run_folders(paths: list[str]) -> list[str]:
    """The run folders to compare: each path, or for a sweep's folder (sweep.py's
    runs/sweeps/NAME, which holds sweep.json) every trial in it that has started."""
    folders = []
    for path in paths:
        folders += sweep_run_dirs(path) if is_sweep(path) else [path]
    return folders


def read_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        raise SystemExit(f"error: {path} not found: pass run folders that train.py wrote") from None


def group_runs(run_dirs: list[str]) -> dict[str, list[str]]:
    """{label: run folders} of runs with the same settings but for REPEAT_OPTIONS; the label
    names the settings in which the groups differ ("all runs" when there is one group)."""
    settings = {}
    for run_dir in run_dirs:
        config = read_config(run_dir)
        settings[run_dir] = {k: v for k, v in config.items() if k not in REPEAT_OPTIONS}
    keys = sorted({key for config in settings.values() for key in config})
    differing = [
        key for key in keys if len({json.dumps(c.get(key)) for c in settings.values()}) > 1
    ]
    groups: dict[str, list[str]] = {}
    for run_dir, config in settings.items():
        label = ", ".join(f"{key}={config.get(key)}" for key in differing) or "all runs"
        groups.setdefault(label, []).append(run_dir)
    return groups


def epoch_records(run_dir: str) -> list[dict]:
    """The epoch lines of a run's metrics.jsonl."""
    return [record for record in read_metrics(run_dir) if record.get("kind") == "epoch"]


def last_epochs(groups: dict[str, list[str]]) -> dict[str, list[dict]]:
    """{label: the last epoch line of each run} ({} for a run that has not finished an epoch)."""
    return {
        label: [(epoch_records(run_dir) or [{}])[-1] for run_dir in run_dirs]
        for label, run_dirs in groups.items()
    }


def metric_names(finals: list[dict]) -> list[str]:
    """The metrics to compare, from the runs' last epoch lines: train_loss and val_loss, then the
    validation metrics (plot.validation_metrics: every number named val_*, but the per-class ones
    with a "/" in the name) in the order first seen."""
    return [*LOSSES, *validation_metrics(finals)]


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(finals: dict[str, list[dict]], names: list[str]) -> list[dict]:
    """One row per group: {"group", "runs", NAME: (mean, std)} over the last epoch lines (see
    last_epochs) of its runs that have metric NAME; a metric none of them has is left out."""
    rows = []
    for label, records in finals.items():
        row = {"group": label, "runs": len(records)}
        for name in names:
            values = [record[name] for record in records if is_number(record.get(name))]
            if values:
                row[name] = mean_and_std(values)
        rows.append(row)
    return rows


def format_table(rows: list[dict], names: list[str]) -> str:
    header = ["group", "runs", *names]
    lines = [header]
    for row in rows:
        cells = [row["group"], str(row["runs"])]
        for name in names:
            cells.append(f"{row[name][0]:.4f} ± {row[name][1]:.4f}" if name in row else "-")
        lines.append(cells)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def epoch_curves(runs: list[list[dict]], name: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of metric `name` over the runs (each its epoch lines), at the epochs
    every run has reached."""
    per_run = [
        {record["epoch"]: record[name] for record in records if is_number(record.get(name))}
        for records in runs
    ]
    common = sorted(set.intersection(*(set(values) for values in per_run)))
    statistics_per_epoch = [mean_and_std([run[epoch] for run in per_run]) for epoch in common]
    return (
        common,
        [mean for mean, _ in statistics_per_epoch],
        [std for _, std in statistics_per_epoch],
    )


def plot_groups(groups: dict[str, list[str]], output: str, names: list[str] | None = None):
    """One panel per metric (`names`; by default metric_names of the runs, like the table's
    columns), in rows of PANELS_PER_ROW: each group's mean over its runs, with a ± one std band."""
    if names is None:
        names = metric_names([final for finals in last_epochs(groups).values() for final in finals])
    runs = {label: [epoch_records(run_dir) for run_dir in dirs] for label, dirs in groups.items()}
    Figure, FigureCanvasAgg = import_matplotlib()
    columns = min(len(names), PANELS_PER_ROW)
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4 * columns, 4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in panels[len(names) :]:
        unused.remove()
    for axes, name in zip(panels[: len(names)], names, strict=True):
        for index, (label, records) in enumerate(runs.items()):
            epochs, means, stds = epoch_curves(records, name)
            color = f"C{index % 10}"
            axes.plot(epochs, means, "o-", color=color, ms=4, label=f"{label} (n={len(records)})")
            low = [mean - std for mean, std in zip(means, stds, strict=True)]
            high = [mean + std for mean, std in zip(means, stds, strict=True)]
            axes.fill_between(epochs, low, high, color=color, alpha=0.2)
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize="small")
    save(figure, output)
    return figure


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    groups = group_runs(args.run_dirs)
    finals = last_epochs(groups)
    names = metric_names([final for records in finals.values() for final in records])
    rows = summarize(finals, names)
    print(format_table(rows, names))
    if not args.no_figure:
        plot_groups(groups, args.output, names)
        print(f"wrote {args.output}")
    return rows


if __name__ == "__main__":
    main()
