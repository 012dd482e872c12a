"""plot.py: curves.png for one run and several, activations.png, and one-line errors."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import read_metrics, run_train
from PIL import Image

import plot

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_HOOKS = importlib.util.find_spec("hooks") is not None
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="needs matplotlib: pip install -e .[plot]",
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> str:
    """A real two-epoch run of LeNet, with activation statistics where hooks/ exists."""
    run_dir = tmp_path_factory.mktemp("trained")
    run_train(
        run_dir, "--model=lenet", "--epochs=2", *(["--hooks=activations"] if HAS_HOOKS else [])
    )
    return str(run_dir)


def write_metrics(run_dir, layers: int = 0, steps: int = 20) -> str:
    """A made-up metrics.jsonl of two epochs; with `layers`, activation statistics in which
    layer 5 dies (its std falls to 0) and the last layer explodes."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as file:
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
                epoch.update(train_loss=2.0 / step, val_loss=2.1 / step, val_acc=0.5, lr=0.01)
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


@needs_matplotlib
def test_curves_of_one_run(trained_run, tmp_path):
    records = read_metrics(trained_run)
    assert {record["kind"] for record in records} == {"step", "epoch"}
    output = plot.main([trained_run])
    assert output == os.path.join(trained_run, "curves.png")
    assert_png(output)
    figure = plot.plot_curves([("trained", records)], str(tmp_path / "curves.png"))
    losses, accuracies, rates = (drawn(axes) for axes in figure.axes[:3])
    assert losses == {
        "train": logged(records, "step", "loss"),
        "train (epoch mean)": logged(records, "epoch", "train_loss"),
        "validation": logged(records, "epoch", "val_loss"),
    }
    assert accuracies == {"trained": logged(records, "epoch", "val_acc")}
    assert rates == {"trained": logged(records, "step", "lr")}


@needs_matplotlib
def test_curves_of_two_runs_overlaid(trained_run, tmp_path):
    other = write_metrics(tmp_path / "other")
    output = plot.main([trained_run, other, "--output", str(tmp_path / "both" / "curves.png")])
    assert_png(output)
    runs = [("trained", read_metrics(trained_run)), ("other", read_metrics(other))]
    figure = plot.plot_curves(runs, str(tmp_path / "again.png"))
    losses, accuracies, _ = (drawn(axes) for axes in figure.axes[:3])
    for name, records in runs:
        assert losses[f"{name}: train"] == logged(records, "step", "loss")
        assert losses[f"{name}: validation"] == logged(records, "epoch", "val_loss")
        assert accuracies[name] == logged(records, "epoch", "val_acc")
    colors = {line.get_color() for line in figure.axes[1].lines}
    assert len(colors) == 2, "each run has its own colour"


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
