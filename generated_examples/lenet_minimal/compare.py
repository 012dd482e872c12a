"""Compare runs, several per setting (seeds): mean and standard deviation of their final metrics,
and of their curves.

    python train.py --seed 0 && python train.py --seed 1 && python train.py --seed 2
    python compare.py runs/*                  # a table, and runs/compare.png
    python compare.py runs/a-* runs/b-* --output both.png

Runs are grouped by their settings (config.json, which train.py writes into every run folder),
leaving out --seed, --output-dir and the options that do not change the training (--logger,
--workers, ...): runs that differ only in those are repeats of one setting.
Each group gets a row of the table (the last epoch line of each run: mean ± sample standard
deviation over the runs) and a curve per panel (the mean per epoch, with a band of ± one standard
deviation). Needs matplotlib for the figure (`pip install -e '.[plot]'`); `--no-figure` prints the
table only.
"""

import argparse
import json
import os
import statistics

from plot import import_matplotlib, read_metrics, save

METRICS = ("train_loss", "val_loss", "val_acc")
# What may differ between repeats of one setting (the seed), or does not change the training.
REPEAT_OPTIONS = ("seed", "output_dir", "logger", "log_every", "save_every_steps", "keep_last")
REPEAT_OPTIONS += ("workers", "dist_timeout")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a train.py --output-dir")
    parser.add_argument("--output", help="the PNG to write (default: compare.png beside the runs)")
    parser.add_argument("--no-figure", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.output is None:
        parent = os.path.dirname(os.path.normpath(args.run_dirs[0]))
        args.output = os.path.join(parent, "compare.png")
    return args


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


def final_metrics(records: list[dict]) -> dict[str, float]:
    epochs = [record for record in records if record.get("kind") == "epoch"]
    if not epochs:
        return {}
    return {name: epochs[-1][name] for name in METRICS if name in epochs[-1]}


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(groups: dict[str, list[str]]) -> list[dict]:
    """One row per group: {"group", "runs", METRIC: (mean, std)} over the runs' last epochs."""
    rows = []
    for label, run_dirs in groups.items():
        finals = [final_metrics(read_metrics(run_dir)) for run_dir in run_dirs]
        row = {"group": label, "runs": len(run_dirs)}
        for name in METRICS:
            values = [final[name] for final in finals if name in final]
            if values:
                row[name] = mean_and_std(values)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["group", "runs", *METRICS]
    lines = [header]
    for row in rows:
        cells = [row["group"], str(row["runs"])]
        for name in METRICS:
            cells.append(f"{row[name][0]:.4f} ± {row[name][1]:.4f}" if name in row else "-")
        lines.append(cells)
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def epoch_curves(run_dirs: list[str], name: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of metric `name` over the runs, at the epochs every run has reached."""
    per_run = []
    for run_dir in run_dirs:
        epochs = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch" and name in r]
        per_run.append({record["epoch"]: record[name] for record in epochs})
    common = sorted(set.intersection(*(set(values) for values in per_run)))
    statistics_per_epoch = [mean_and_std([run[epoch] for run in per_run]) for epoch in common]
    return (
        common,
        [mean for mean, _ in statistics_per_epoch],
        [std for _, std in statistics_per_epoch],
    )


def plot_groups(groups: dict[str, list[str]], output: str):
    """One panel per metric: each group's mean over its runs, with a ± one std band."""
    Figure, FigureCanvasAgg = import_matplotlib()
    figure = Figure(figsize=(12, 4), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, name in zip(figure.subplots(1, len(METRICS)), METRICS, strict=True):
        for index, (label, run_dirs) in enumerate(groups.items()):
            epochs, means, stds = epoch_curves(run_dirs, name)
            color = f"C{index % 10}"
            axes.plot(epochs, means, "o-", color=color, ms=4, label=f"{label} (n={len(run_dirs)})")
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
    rows = summarize(groups)
    print(format_table(rows))
    if not args.no_figure:
        plot_groups(groups, args.output)
        print(f"wrote {args.output}")
    return rows


if __name__ == "__main__":
    main()
