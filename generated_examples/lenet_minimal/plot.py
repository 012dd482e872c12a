"""Plot a run's metrics.jsonl: losses, the validation metrics it logged and the learning rate
against the step.

    python plot.py runs/RUN                          # writes runs/RUN/curves.png
    python plot.py runs/A runs/B                     # both runs in one figure: ./curves.png
    python plot.py --activations runs/RUN            # a --hooks activations run: each layer's
                                                     # output mean and std over the steps
    python plot.py runs/RUN --output /tmp/c.png
    python plot.py runs/sweeps/NAME                  # a sweep: runs/sweeps/NAME/sweep.png

curves.png has three panels: the losses (the logged steps' loss, each epoch's mean training loss
and its validation loss), the other validation metrics, and the learning rate. The metrics panel
draws whatever the task logged, found in the epoch lines: every number named val_* but val_loss
(val_acc for classification, val_miou and val_pixel_acc for segmentation, ...). Per-class metrics
(names with a "/", such as val_iou/3) are left out: there can be dozens of them. Epoch metrics
are drawn at the step where their epoch ended. --activations draws at most --max-layers layers
(12): the third whose std drifted most (a dying or exploding layer) and the rest evenly spaced;
--layers picks by name.

A sweep's folder (sweep.py's runs/sweeps/NAME) draws the sweep instead: each trial's curve of the
sweep's metric against the epoch, labelled by its number, and for each parameter of the search
space a panel of the trials' values against the metric (each trial's value in the study; a
pruned trial's last reported one, hollow; a log axis for a log-scale parameter). The trials are
read from the sweep's study (needs optuna, as sweep.py) and their run folders.

Needs matplotlib (`pip install -e '.[plot]'`). Draws with the Agg backend into a file and never
opens a window, so it works on a headless machine, and on a run still training.
"""

import argparse
import fnmatch
import glob
import json
import math
import os

MAX_LAYERS = 12  # --activations draws at most this many layers by default (see pick_layers)
METRIC_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per validation metric, in turn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="a train.py --output-dir, or a sweep folder"
    )
    parser.add_argument(
        "--output", help="the PNG to write (default RUN_DIR/curves.png, ./curves.png for several)"
    )
    parser.add_argument(
        "--activations",
        action="store_true",
        help="per-layer activation mean/std of one --hooks activations run (activations.png)",
    )
    parser.add_argument(
        "--layers", default="", help="--activations: module-name globs, comma-separated"
    )
    parser.add_argument(
        "--max-layers",
        type=int,
        default=MAX_LAYERS,
        help=f"--activations: draw at most this many layers (default {MAX_LAYERS})",
    )
    args = parser.parse_args(argv)
    if args.activations and len(args.run_dirs) > 1:
        parser.error("--activations plots one run at a time")
    if args.max_layers < 1:
        parser.error("--max-layers must be at least 1")
    sweeps = [path for path in args.run_dirs if is_sweep(path)]
    if sweeps and (len(args.run_dirs) > 1 or args.activations):
        parser.error(f"{sweeps[0]} is a sweep: plot it alone, without --activations")
    if args.output is None:
        name = "activations.png" if args.activations else "curves.png"
        name = "sweep.png" if sweeps else name
        folder = args.run_dirs[0] if len(args.run_dirs) == 1 else "."
        args.output = os.path.join(folder, name)
    return args


def import_matplotlib():
    """matplotlib's Figure and Agg canvas: no pyplot, so no window and no global figure state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit(
            "error: plot.py needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')"
        ) from None
    return Figure, FigureCanvasAgg


def read_metrics(run_dir: str) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl; SystemExit with one line when there are none.

    A last line without its newline (being written by a running train.py) is skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: pass the --output-dir of a train.py run")
    with open(path) as file:
        lines = file.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the unfinished last line
                break
            raise SystemExit(f"error: {path} line {number} is not JSON: {error}") from None
    if not records:
        raise SystemExit(f"error: {path} is empty: the run has logged nothing yet")
    return records


def run_labels(run_dirs: list[str]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a folder name."""
    names = [os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(run_dir) for run_dir in run_dirs]
    return names


def series(records: list[dict], kind: str, key: str) -> tuple[list, list]:
    """(steps, values) of `key` in the records of `kind` ("step" or "epoch") that have it."""
    chosen = [r for r in records if r.get("kind") == kind and r.get(key) is not None]
    return [r["step"] for r in chosen], [r[key] for r in chosen]


def is_number(value) -> bool:
    """An int or a float, but not a bool (to Python, True is the int 1; to a run, not a metric)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def validation_metrics(records: list[dict]) -> list[str]:
    """The validation metrics of the epoch lines in `records`, in the order first seen: every
    number named val_* except val_loss (a loss, drawn with the others) and the per-class metrics,
    whose names hold a "/" (val_iou/3): one a class, too many for a plot."""
    names: dict[str, None] = {}
    for record in records:
        if record.get("kind") != "epoch":
            continue
        for key, value in record.items():
            if key.startswith("val_") and key != "val_loss" and "/" not in key:
                if is_number(value):
                    names[key] = None
    return list(names)


def plot_curves(runs: list[tuple[str, list[dict]]], output: str):
    """Three panels sharing the step axis: losses, the validation metrics that the runs logged
    (validation_metrics), learning rate; `runs` holds (label, records) pairs. Each run has its
    colour and each metric its marker; a single run's metrics have a colour each. Saves the figure
    to `output` and returns it."""
    Figure, FigureCanvasAgg = import_matplotlib()
    figure = Figure(figsize=(10, 10), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, metric_axes, lr_axes = figure.subplots(3, 1, sharex=True)
    several = len(runs) > 1
    colors = [f"C{index % 10}" for index in range(len(runs))]
    metrics = validation_metrics([record for _, records in runs for record in records])
    for (name, records), color in zip(runs, colors, strict=True):
        prefix = f"{name}: " if several else ""
        steps, losses = series(records, "step", "loss")
        if steps:
            loss_axes.plot(steps, losses, color=color, alpha=0.35, lw=1, label=f"{prefix}train")
        steps, losses = series(records, "epoch", "train_loss")
        if steps:
            loss_axes.plot(
                steps, losses, "o-", color=color, ms=4, label=f"{prefix}train (epoch mean)"
            )
        steps, losses = series(records, "epoch", "val_loss")
        if steps:
            loss_axes.plot(steps, losses, "s--", color=color, ms=4, label=f"{prefix}validation")
        for index, metric in enumerate(metrics):
            steps, values = series(records, "epoch", metric)
            if steps:
                marker = METRIC_MARKERS[index % len(METRIC_MARKERS)]
                metric_color = color if several else f"C{index % 10}"
                metric_axes.plot(
                    steps, values, f"{marker}-", color=metric_color, ms=4, label=prefix + metric
                )
        steps, rates = series(records, "step", "lr")
        if not steps:  # logged less often than once an epoch: the epoch lines' rate
            steps, rates = series(records, "epoch", "lr")
        if steps:
            lr_axes.plot(steps, rates, color=color, label=name)

    loss_axes.set_ylabel("loss")
    metric_axes.set_ylabel(metrics[0] if len(metrics) == 1 else "validation metrics")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    for axes in (loss_axes, metric_axes, lr_axes):
        axes.grid(alpha=0.3)
        named = axes is loss_axes or (axes is metric_axes and len(metrics) > 1)
        if axes.lines and (several or named):
            axes.legend(fontsize="small")
        elif not axes.lines:
            axes.text(0.5, 0.5, "nothing logged yet", ha="center", transform=axes.transAxes)
    title = ", ".join(name for name, _ in runs) if len(runs) <= 3 else f"{len(runs)} runs"
    figure.suptitle(f"training curves: {title}")
    save(figure, output)
    return figure


def activation_series(records: list[dict]) -> dict[str, dict[str, list]]:
    """{module: {"step": [...], "mean": [...], "std": [...]}} in the order modules ran."""
    layers: dict[str, dict[str, list]] = {}
    for record in records:
        if record.get("kind") != "step":
            continue
        stats = (record.get("hooks") or {}).get("activations") or {}
        for module, values in stats.items():
            layer = layers.setdefault(module, {"step": [], "mean": [], "std": []})
            layer["step"].append(record["step"])
            layer["mean"].append(values["mean"])
            layer["std"].append(values["std"])
    return layers


def drift(stds: list[float]) -> float:
    """How far a layer's std strayed from its first value: the largest |ln(std / first std)|;
    inf for a NaN or infinite std."""
    if not stds or any(not math.isfinite(s) for s in stds):
        return math.inf
    tiny = 1e-12
    first = math.log(max(stds[0], tiny))
    return max(abs(math.log(max(s, tiny)) - first) for s in stds)


def pick_layers(stats: dict, globs: str, limit: int) -> tuple[list[str], int, int]:
    """(chosen, matched, drifting): the layers matching `globs` (all for "") in model order; when
    more than `limit` match, the limit // 3 whose std drifted most (dying or exploding) and the rest
    evenly spaced over the others (the first and the last among them)."""
    names = list(stats)
    if globs:
        patterns = [glob.strip() for glob in globs.split(",") if glob.strip()]
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if len(names) <= limit:
        return names, len(names), 0
    drifting = sorted(names, key=lambda name: drift(stats[name]["std"]), reverse=True)
    drifting = drifting[: limit // 3]
    others = [name for name in names if name not in drifting]
    count = limit - len(drifting)
    if count == 1:
        spaced = others[:1]
    else:
        step = (len(others) - 1) / (count - 1)
        spaced = [others[round(index * step)] for index in range(count)]
    chosen = set(drifting) | set(spaced)
    return [name for name in names if name in chosen], len(names), len(drifting)


def plot_activations(run_dir: str, records: list[dict], layers: str, limit: int, output):
    """Mean (linear scale) and std (log scale) of each chosen layer's output over the steps: a
    dying layer's std falls towards 0, an exploding one's grows by orders of magnitude. Saves the
    figure to `output` and returns it."""
    stats = activation_series(records)
    path = os.path.join(run_dir, "metrics.jsonl")
    if not stats:
        raise SystemExit(
            f"error: {path} has no activation statistics: train with --hooks activations"
        )
    chosen, matched, drifting = pick_layers(stats, layers, limit)
    if not chosen:
        raise SystemExit(f"error: --layers {layers} matches none of the {len(stats)} layers")
    Figure, FigureCanvasAgg = import_matplotlib()
    from matplotlib import colormaps

    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    mean_axes, std_axes = figure.subplots(2, 1, sharex=True)
    colormap = colormaps["viridis"]
    # Log scale for std, where a std of exactly 0 (a dead layer) is drawn at a floor below the rest.
    positive = [s for name in chosen for s in stats[name]["std"] if s > 0]
    floor = min(positive, default=1.0) / 10
    zeros = any(s == 0 for name in chosen for s in stats[name]["std"])
    for index, name in enumerate(chosen):
        color = colormap(index / max(len(chosen) - 1, 1))  # early layers dark, late ones light
        layer = stats[name]
        stds = [max(s, floor) if s == s else s for s in layer["std"]]  # s != s: NaN, left a gap
        mean_axes.plot(layer["step"], layer["mean"], "-", color=color, marker=".", label=name)
        std_axes.plot(layer["step"], stds, "-", color=color, marker=".", label=name)
    mean_axes.set_ylabel("activation mean")
    std_axes.set_yscale("log")
    std_axes.set_ylabel(f"activation std (log{f'; 0 drawn at {floor:.1e}' if zeros else ''})")
    std_axes.set_xlabel("step")
    for axes in (mean_axes, std_axes):
        axes.grid(alpha=0.3)
    title = "layers"
    if len(chosen) < matched:
        title = f"{len(chosen)} of {matched} layers:\n{drifting} whose std drifted most,\n"
        title += f"{len(chosen) - drifting} evenly spaced"
    figure.legend(
        *mean_axes.get_legend_handles_labels(),
        loc="outside right upper",
        fontsize="small",
        title=title,
    )
    figure.suptitle(f"activations: {os.path.basename(os.path.normpath(run_dir))}")
    save(figure, output)
    return figure


def is_sweep(path: str) -> bool:
    """Whether `path` is a sweep's folder (sweep.py's runs/sweeps/NAME: it holds sweep.json)."""
    return os.path.isfile(os.path.join(path, "sweep.json"))


def sweep_run_dirs(folder: str) -> list[str]:
    """The run folders of the sweep's trials that have started (train.py wrote config.json)."""
    configs = sorted(glob.glob(os.path.join(folder, "trial_*", "config.json")))
    if not configs:
        raise SystemExit(f"error: no trial of the sweep in {folder} has started yet")
    return [os.path.dirname(config) for config in configs]


def sweep_trials(folder: str) -> tuple[dict, list[dict]]:
    """The sweep's record (sweep.json) and its trials, read from its study by sweep.py:
    [{"number", "state", "params", "value", "curve": {epoch: metric}}]. A trial's value is the
    study's (complete), else its last reported one (pruned), else None."""
    import sweep

    try:
        study = sweep.open_study(folder)
    except sweep.SweepError as error:
        raise SystemExit(f"error: {error}") from None
    with open(os.path.join(folder, sweep.RECORD)) as file:
        record = json.load(file)
    metric = record["space"]["metric"]
    trials = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value
        if value is None and trial.state.name == "PRUNED" and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        curve = sweep.epoch_values(sweep.trial_folder(folder, trial.number), metric)
        trials.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": trial.params,
                "value": value,
                "curve": dict(sorted(curve.items())),
            }
        )
    return record, trials


def plot_sweep(folder: str, output: str):
    """A sweep's figure: a panel of every trial's metric against the epoch, then one panel per
    parameter of the space with the trials' values of it against their value (sweep_trials).
    Saves the figure to `output` and returns it."""
    record, trials = sweep_trials(folder)
    space, metric = record["space"], record["space"]["metric"]
    names = list(space["params"])
    Figure, FigureCanvasAgg = import_matplotlib()
    panels = 1 + len(names)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(4.5 * columns, 4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in axes_list[panels:]:
        unused.remove()
    curves = axes_list[0]
    for trial in trials:
        if trial["curve"]:
            color = f"C{trial['number'] % 10}"
            epochs, values = list(trial["curve"]), list(trial["curve"].values())
            curves.plot(epochs, values, "o-", color=color, ms=3, label=f"trial {trial['number']}")
    curves.set_xlabel("epoch")
    curves.set_ylabel(metric)
    curves.set_title("each trial")
    if curves.lines:
        curves.legend(fontsize="small", ncol=max(1, len(curves.lines) // 12))
    valued = [trial for trial in trials if trial["value"] is not None and trial["params"]]
    for axes, name in zip(axes_list[1:panels], names, strict=True):
        spec = space["params"][name]
        categorical = "choices" in spec and not all(is_number(c) for c in spec["choices"])
        if categorical:  # every choice on the axis, in the space's order, drawn or not
            axes.xaxis.update_units([str(choice) for choice in spec["choices"]])
        for pruned in (False, True):
            chosen = [
                trial
                for trial in valued
                if name in trial["params"] and (trial["state"] == "PRUNED") == pruned
            ]
            if not chosen:
                continue
            xs = [trial["params"][name] for trial in chosen]
            xs = [str(x) for x in xs] if categorical else xs
            ys = [trial["value"] for trial in chosen]
            style = {"facecolors": "none", "edgecolors": "C0"} if pruned else {"color": "C0"}
            label = "pruned (last report)" if pruned else "complete"
            axes.scatter(xs, ys, label=label, **style)
            for x, y, trial in zip(xs, ys, chosen, strict=True):
                axes.annotate(str(trial["number"]), (x, y), fontsize="x-small", alpha=0.7)
        if spec.get("log"):
            axes.set_xscale("log")
        if categorical:
            axes.set_xlim(-0.5, len(spec["choices"]) - 0.5)
        axes.set_xlabel("--" + name.replace("_", "-"))
        axes.set_ylabel(metric)
        if len(axes.collections) > 1:
            axes.legend(fontsize="small")
    for axes in axes_list[:panels]:
        axes.grid(alpha=0.3)
        if not axes.lines and not axes.collections:
            axes.text(0.5, 0.5, "nothing logged yet", ha="center", transform=axes.transAxes)
    direction = space["direction"]
    figure.suptitle(f"sweep {record['name']}: {metric} ({direction}), {len(trials)} trials")
    save(figure, output)
    return figure


def save(figure, output: str) -> None:
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(output, dpi=100)


def main(argv=None) -> str:
    """Write the figure that `argv` asks for; return its path."""
    args = parse_args(argv)
    if is_sweep(args.run_dirs[0]):
        plot_sweep(args.run_dirs[0], args.output)
        print(f"wrote {args.output}")
        return args.output
    labels = run_labels(args.run_dirs)
    runs = [(label, read_metrics(path)) for label, path in zip(labels, args.run_dirs, strict=True)]
    if args.activations:
        records = runs[0][1]
        plot_activations(args.run_dirs[0], records, args.layers, args.max_layers, args.output)
    else:
        plot_curves(runs, args.output)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
