"""plot.py: curves.png for one run and several, whatever metrics the task logs, activations.png,
and one-line errors; compare.py's columns and panels, found the same way, on made-up runs."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import SMALL_MODEL, read_metrics, run_train
from PIL import Image

import compare
import plot

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_HOOKS = importlib.util.find_spec("hooks") is not None
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="needs matplotlib: pip install -e .[plot]",
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> str:
    """A real two-epoch run of SMALL_MODEL, with activation statistics where hooks/ exists."""
    run_dir = tmp_path_factory.mktemp("trained")
    hooks = ["--hooks=activations"] if HAS_HOOKS else []
    run_train(run_dir, f"--model={SMALL_MODEL}", "--epochs=2", *hooks)
    return str(run_dir)


CLASSIFICATION = {"val_acc": 0.5}
# A segmentation run's validation metrics: two summaries, and one IoU per class for a table.
SEGMENTATION = {"val_miou": 0.41, "val_pixel_acc": 0.87}
SEGMENTATION |= {"val_iou/background": 0.9, "val_iou/road": 0.3, "val_iou/car": 0.03}


def write_metrics(run_dir, layers: int = 0, steps: int = 20, metrics=None, first=None) -> str:
    """A made-up metrics.jsonl of two epochs, whose epoch lines have `metrics` (CLASSIFICATION by
    default) besides the losses and the rate, and which starts with the line `first` if given;
    with `layers`, activation statistics in which layer 5 dies (its std falls to 0) and the last
    layer explodes."""
    metrics = CLASSIFICATION if metrics is None else metrics
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as file:
        if first is not None:
            file.write(json.dumps(first) + "\n")
        for step in range(1, steps + 1):
            record = {"kind": "step", "epoch": step * 2 // (steps + 1), "step": step}
            record.update(loss=2.3 / step**0.5, lr=0.1 * (1 - step / steps))
            if layers:
                stats = {}
                for layer in range(layers):
                    std = 1.0 + layer / layers
                    if layer == 5:
                        std = max(0.0, 1 - step / 10)
                    if layer == layers - 1:
                        std = math.exp(step)
                    stats[f"block{layer}.conv"] = {"mean": 0.1, "std": std, "absmax": 3 * std}
                record["hooks"] = {"activations": stats}
            file.write(json.dumps(record) + "\n")
            if step in (steps // 2, steps):
                epoch = {"kind": "epoch", "epoch": step * 2 // steps, "step": step}
                epoch.update(train_loss=2.0 / step, val_loss=2.1 / step, lr=0.01)
                epoch.update({name: value * step / steps for name, value in metrics.items()})
                file.write(json.dumps(epoch) + "\n")
    return str(run_dir)


def assert_png(path) -> None:
    assert os.path.getsize(path) > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        image.verify()


def drawn(axes) -> dict[str, tuple[list, list]]:
    """{label: (x, y)} of every line in `axes`."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.lines
    }


def logged(records, kind, key) -> tuple[list, list]:
    chosen = [record for record in records if record["kind"] == kind]
    return [record["step"] for record in chosen], [record[key] for record in chosen]


def logged_validation_metrics(records) -> list[str]:
    """What the task of a real run logged besides val_loss: the val_* numbers of its first epoch
    line, per-class ones ("/") left out; found here without plot.py's help."""
    first = next(record for record in records if record["kind"] == "epoch")
    names = [name for name in first if name.startswith("val_") and name != "val_loss"]
    return [name for name in names if "/" not in name and isinstance(first[name], int | float)]


def texts(axes) -> list[str]:
    return [text.get_text() for text in axes.texts]


@needs_matplotlib
def test_curves_of_one_run(trained_run, tmp_path):
    records = read_metrics(trained_run)
    assert {record["kind"] for record in records} == {"step", "epoch"}
    output = plot.main([trained_run])
    assert output == os.path.join(trained_run, "curves.png")
    assert_png(output)
    figure = plot.plot_curves([("trained", records)], str(tmp_path / "curves.png"))
    losses, metrics, rates = (drawn(axes) for axes in figure.axes[:3])
    assert losses == {
        "train": logged(records, "step", "loss"),
        "train (epoch mean)": logged(records, "epoch", "train_loss"),
        "validation": logged(records, "epoch", "val_loss"),
    }
    names = logged_validation_metrics(records)
    assert names, "the task logs a validation metric besides the loss"
    assert metrics == {name: logged(records, "epoch", name) for name in names}
    assert rates == {"trained": logged(records, "step", "lr")}


@needs_matplotlib
def test_curves_of_two_runs_overlaid(trained_run, tmp_path):
    other = write_metrics(tmp_path / "other")
    output = plot.main([trained_run, other, "--output", str(tmp_path / "both" / "curves.png")])
    assert_png(output)
    runs = [("trained", read_metrics(trained_run)), ("other", read_metrics(other))]
    figure = plot.plot_curves(runs, str(tmp_path / "again.png"))
    losses, metrics, _ = (drawn(axes) for axes in figure.axes[:3])
    for name, records in runs:
        assert losses[f"{name}: train"] == logged(records, "step", "loss")
        assert losses[f"{name}: validation"] == logged(records, "epoch", "val_loss")
        for metric in logged_validation_metrics(records):
            assert metrics[f"{name}: {metric}"] == logged(records, "epoch", metric)
    assert metrics["other: val_acc"] == logged(runs[1][1], "epoch", "val_acc")
    colors = {line.get_color() for line in figure.axes[1].lines}
    assert len(colors) == 2, "each run has its own colour"


def test_validation_metrics_are_the_val_numbers_of_the_epoch_lines_in_the_order_first_seen():
    records = [
        {"kind": "run", "val_chosen_by": 1.0},  # a line of another kind: none of its keys
        {"kind": "step", "epoch": 0, "step": 5, "loss": 1.0, "val_step_only": 2.0, "lr": 0.1},
        {"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.0, "val_loss": 1.1, "lr": 0.1}
        | {"val_map": 0.2, "val_iou/road": 0.3, "val_count": 7, "val_ok": True}
        | {"val_name": "best", "val_parts": {"a": 1.0}, "val_missing": None, "train_acc": 0.4},
        {"kind": "epoch", "epoch": 2, "step": 20, "val_map50": 0.5, "val_map": 0.25},
    ]
    # ints are metrics, bools and strings and dicts are not; val_map50 appears in epoch 2
    assert plot.validation_metrics(records) == ["val_map", "val_count", "val_map50"]
    assert plot.validation_metrics(records[:2]) == []


@needs_matplotlib
def test_curves_of_a_segmentation_run_draw_its_metrics_and_leave_the_per_class_ones_out(tmp_path):
    run_dir = write_metrics(
        tmp_path / "seg", metrics=SEGMENTATION, first={"kind": "run", "best": "val_miou"}
    )
    records = plot.read_metrics(run_dir)
    assert plot.validation_metrics(records) == ["val_miou", "val_pixel_acc"]
    figure = plot.plot_curves([("seg", records)], str(tmp_path / "curves.png"))
    losses, metrics, rates = (drawn(axes) for axes in figure.axes[:3])
    assert losses == {
        "train": logged(records[1:], "step", "loss"),
        "train (epoch mean)": logged(records[1:], "epoch", "train_loss"),
        "validation": logged(records[1:], "epoch", "val_loss"),
    }
    assert metrics == {
        "val_miou": ([10, 20], [pytest.approx(0.205), pytest.approx(0.41)]),
        "val_pixel_acc": ([10, 20], [pytest.approx(0.435), pytest.approx(0.87)]),
    }
    assert rates == {"seg": logged(records[1:], "step", "lr")}
    metric_axes = figure.axes[1]
    assert metric_axes.get_ylabel() == "validation metrics"
    legend = [text.get_text() for text in metric_axes.get_legend().get_texts()]
    assert legend == ["val_miou", "val_pixel_acc"]
    assert len({line.get_color() for line in metric_axes.lines}) == 2, "a colour per metric"
    assert texts(metric_axes) == []
    assert_png(plot.main([run_dir]))


@needs_matplotlib
def test_runs_of_different_tasks_share_the_metrics_panel(tmp_path):
    runs = [
        ("cls", plot.read_metrics(write_metrics(tmp_path / "cls"))),
        ("seg", plot.read_metrics(write_metrics(tmp_path / "seg", metrics=SEGMENTATION))),
    ]
    figure = plot.plot_curves(runs, str(tmp_path / "both.png"))
    metrics = drawn(figure.axes[1])
    assert list(metrics) == ["cls: val_acc", "seg: val_miou", "seg: val_pixel_acc"]
    assert metrics["seg: val_miou"] == logged(runs[1][1], "epoch", "val_miou")
    colors = [line.get_color() for line in figure.axes[1].lines]
    assert colors[1] == colors[2] != colors[0], "a colour per run"
    markers = [line.get_marker() for line in figure.axes[1].lines]
    assert markers[1] != markers[2], "and a marker per metric"


@needs_matplotlib
def test_a_single_metric_names_its_panel(tmp_path):
    records = plot.read_metrics(write_metrics(tmp_path, metrics={"val_perplexity": 30.0}))
    figure = plot.plot_curves([("lm", records)], str(tmp_path / "curves.png"))
    assert figure.axes[1].get_ylabel() == "val_perplexity"
    assert drawn(figure.axes[1]) == {"val_perplexity": logged(records, "epoch", "val_perplexity")}


@needs_matplotlib
@pytest.mark.parametrize("epochs", [False, True], ids=["before-the-first-epoch", "losses-only"])
def test_a_run_without_validation_metrics_says_so(tmp_path, epochs):
    records = plot.read_metrics(write_metrics(tmp_path, metrics={"val_iou/road": 0.3}))
    if not epochs:
        records = [record for record in records if record["kind"] == "step"]
    figure = plot.plot_curves([("run", records)], str(tmp_path / "curves.png"))
    loss_axes, metric_axes, lr_axes = figure.axes[:3]
    assert len(metric_axes.lines) == 0 and texts(metric_axes) == ["nothing logged yet"]
    assert metric_axes.get_ylabel() == "validation metrics"
    assert len(loss_axes.lines) == (3 if epochs else 1) and texts(loss_axes) == []
    assert texts(lr_axes) == []


def test_runs_are_labelled_by_folder_name_or_path_when_those_clash():
    assert plot.run_labels(["runs/a/", "runs/b"]) == ["a", "b"]
    assert plot.run_labels(["x/train", "y/train"]) == ["x/train", "y/train"]


@needs_matplotlib
def test_activations_of_a_real_run(trained_run, tmp_path):
    if not HAS_HOOKS:
        pytest.skip("this project has no hooks/ package")
    output = plot.main(["--activations", trained_run, "--output", str(tmp_path / "a.png")])
    assert_png(output)
    records = read_metrics(trained_run)
    figure = plot.plot_activations(trained_run, records, "", plot.MAX_LAYERS, output)
    means = drawn(figure.axes[0])
    steps = [record for record in records if record["kind"] == "step"]
    assert means and set(means) <= set(steps[0]["hooks"]["activations"])
    for layer, (x, y) in means.items():
        assert x == [record["step"] for record in steps]
        assert y == [record["hooks"]["activations"][layer]["mean"] for record in steps]


@needs_matplotlib
def test_activations_keep_a_readable_number_of_layers(tmp_path):
    run_dir = write_metrics(tmp_path / "deep", layers=40)
    stats = plot.activation_series(plot.read_metrics(run_dir))
    chosen, matched, drifting = plot.pick_layers(stats, "", plot.MAX_LAYERS)
    assert len(chosen) == plot.MAX_LAYERS and matched == 40 and drifting == plot.MAX_LAYERS // 3
    assert {"block0.conv", "block5.conv", "block39.conv"} <= set(chosen)  # first, dying, exploding
    assert chosen == sorted(chosen, key=list(stats).index)  # in model order
    assert plot.pick_layers(stats, "block1*", 100)[0] == ["block1.conv"] + [
        f"block{index}.conv" for index in range(10, 20)
    ]
    assert_png(plot.main(["--activations", run_dir]))
    assert os.path.exists(os.path.join(run_dir, "activations.png"))


@pytest.mark.parametrize("content", [None, "", "\n\n"], ids=["missing", "empty", "blank"])
def test_no_metrics_is_one_clear_line(tmp_path, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(SystemExit) as error:
        plot.main([str(tmp_path)])
    message = str(error.value.code)
    assert message.startswith("error: ") and "metrics.jsonl" in message and "\n" not in message
    assert ("not found" if content is None else "is empty") in message


def test_a_line_being_written_is_skipped_and_a_broken_one_named(tmp_path):
    line = json.dumps({"kind": "step", "epoch": 0, "step": 1, "loss": 2.3, "lr": 0.1})
    (tmp_path / "metrics.jsonl").write_text(line + "\n" + line[:20])  # train.py mid-write
    assert len(plot.read_metrics(str(tmp_path))) == 1
    (tmp_path / "metrics.jsonl").write_text(line[:20] + "\n" + line + "\n")
    with pytest.raises(SystemExit, match=r"metrics.jsonl line 1 is not JSON"):
        plot.read_metrics(str(tmp_path))


def test_activations_of_a_run_without_them_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="no activation statistics: train with --hooks"):
        plot.main(["--activations", write_metrics(tmp_path)])


def test_missing_matplotlib_is_one_clear_line(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as error:
        plot.main([write_metrics(tmp_path)])
    message = str(error.value.code)
    assert "needs matplotlib: pip install" in message and "\n" not in message


def test_the_command_line_exits_1_with_the_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "plot.py", str(tmp_path / "nowhere")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere' / 'metrics.jsonl'} not found: pass the --output-dir of a "
        "train.py run"
    ]


# ---- compare.py: its columns and panels are the metrics the runs logged -------------------------


def write_run(run_dir, config: dict, epochs: list[dict]) -> str:
    """A made-up run folder: config.json, and a metrics.jsonl of one step line and the epoch lines
    `epochs` (epoch and step numbered here)."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        json.dump({"model": "unet", "lr": 0.1, "seed": 0, **config}, file)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as file:
        file.write(json.dumps({"kind": "step", "epoch": 0, "step": 1, "loss": 2.0, "lr": 0.1}))
        for number, metrics in enumerate(epochs, start=1):
            record = {"kind": "epoch", "epoch": number, "step": 10 * number, **metrics}
            file.write("\n" + json.dumps(record))
        file.write("\n")
    return str(run_dir)


def segmentation_epoch(miou: float, **extra) -> dict:
    return {"train_loss": 1 - miou, "val_loss": 1.1 - miou, "val_miou": miou, "lr": 0.01} | {
        "val_pixel_acc": 0.5 + miou,
        "val_iou/background": 0.9,
        "val_iou/road": miou / 2,
        **extra,
    }


@pytest.fixture
def segmentation_runs(tmp_path) -> dict[str, list[str]]:
    """Two seeds of lr=0.1 and one run of lr=0.2; only the last epoch of the lr=0.2 run has
    val_boundary_f1, and only the first epochs have val_warmup."""
    first = segmentation_epoch(0.2, val_warmup=1.0)
    return {
        "lr=0.1": [
            write_run(tmp_path / "a0", {"seed": 0}, [first, segmentation_epoch(0.4)]),
            write_run(tmp_path / "a1", {"seed": 1}, [first, segmentation_epoch(0.5)]),
        ],
        "lr=0.2": [
            write_run(
                tmp_path / "b0",
                {"lr": 0.2},
                [first, segmentation_epoch(0.6, val_boundary_f1=0.25, val_count=3)],
            )
        ],
    }


SEGMENTATION_COLUMNS = ["train_loss", "val_loss", "val_miou", "val_pixel_acc"]
SEGMENTATION_COLUMNS += ["val_boundary_f1", "val_count"]


def test_compare_columns_are_the_metrics_of_the_last_epochs(segmentation_runs, capsys):
    groups = compare.group_runs([run for runs in segmentation_runs.values() for run in runs])
    assert groups == segmentation_runs
    finals = compare.last_epochs(groups)
    names = compare.metric_names([final for records in finals.values() for final in records])
    assert names == SEGMENTATION_COLUMNS  # no lr, no val_iou/*, no val_warmup (not in the last)

    capsys.readouterr()
    rows = compare.main([*segmentation_runs["lr=0.1"], *segmentation_runs["lr=0.2"], "--no-figure"])
    assert rows[0] == {
        "group": "lr=0.1",
        "runs": 2,
        "train_loss": (pytest.approx(0.55), pytest.approx(0.0707106781)),
        "val_loss": (pytest.approx(0.65), pytest.approx(0.0707106781)),
        "val_miou": (pytest.approx(0.45), pytest.approx(0.0707106781)),
        "val_pixel_acc": (pytest.approx(0.95), pytest.approx(0.0707106781)),
    }
    assert rows[1]["val_boundary_f1"] == (0.25, 0.0) and rows[1]["val_count"] == (3, 0.0)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["group", "runs", *SEGMENTATION_COLUMNS]
    assert table[1].split()[-2:] == ["-", "-"], "lr=0.1 has no val_boundary_f1 nor val_count"
    assert "0.2500 ± 0.0000" in table[2] and "3.0000 ± 0.0000" in table[2]


def test_compare_columns_of_classification_runs(tmp_path, capsys):
    epoch = {"train_loss": 0.5, "val_loss": 0.6, "val_acc": 0.8, "lr": 0.01}
    run = write_run(tmp_path / "cls", {"model": "lenet"}, [epoch])
    unfinished = write_run(tmp_path / "new", {"model": "lenet", "seed": 1}, [])  # no epoch yet
    capsys.readouterr()
    rows = compare.main([run, unfinished, "--no-figure"])
    assert rows == [
        {
            "group": "all runs",
            "runs": 2,
            "train_loss": (0.5, 0.0),
            "val_loss": (0.6, 0.0),
            "val_acc": (0.8, 0.0),
        }
    ]
    assert capsys.readouterr().out.splitlines()[0].split() == [
        "group",
        "runs",
        "train_loss",
        "val_loss",
        "val_acc",
    ]


@needs_matplotlib
def test_compare_draws_a_panel_per_column(segmentation_runs, tmp_path):
    figure = compare.plot_groups(segmentation_runs, str(tmp_path / "c.png"))
    assert_png(tmp_path / "c.png")
    assert [axes.get_ylabel() for axes in figure.axes] == SEGMENTATION_COLUMNS
    panels = dict(zip(SEGMENTATION_COLUMNS, figure.axes, strict=True))
    seeds, other = panels["val_miou"].lines
    assert seeds.get_label() == "lr=0.1 (n=2)" and other.get_label() == "lr=0.2 (n=1)"
    assert list(seeds.get_xdata()) == [1, 2]
    assert list(seeds.get_ydata()) == [pytest.approx(0.2), pytest.approx(0.45)]
    assert list(other.get_ydata()) == [pytest.approx(0.2), pytest.approx(0.6)]
    seeds, other = panels["val_boundary_f1"].lines
    assert list(seeds.get_xdata()) == [] and list(other.get_xdata()) == [2]
    assert list(other.get_ydata()) == [0.25]
    names = ["val_loss", "val_pixel_acc"]
    figure = compare.plot_groups(segmentation_runs, str(tmp_path / "two.png"), names)
    assert [axes.get_ylabel() for axes in figure.axes] == names
