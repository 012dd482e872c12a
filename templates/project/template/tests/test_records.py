"""Every run explains itself: config.json and env.json in its folder, --config files, and
compare.py over several runs of one setting."""

import json
import statistics

import pytest
from conftest import (
    RANDOM_EVERY_STEP,
    SMALL_MODEL,
    data_args,
    read_metrics,
    run_train,
    tiny_args,
    train_fails,
)

import compare
import records
import train

SHORT = [f"--model={SMALL_MODEL}", "--epochs=2", "--max-steps=6", "--deterministic"]


def read_json(path) -> dict:
    return json.loads(path.read_text())


def test_a_run_records_its_options_and_environment(tmp_path):
    run_train(tmp_path, *SHORT, "--lr=0.02")
    config = read_json(tmp_path / "config.json")
    expected = vars(train.parse_args(tiny_args(tmp_path / "fresh", *SHORT, "--lr=0.02")))
    expected["output_dir"] = str(tmp_path)
    assert config == {key: value for key, value in expected.items() if key not in records.ACTIONS}
    (entry,) = read_json(tmp_path / "env.json")["invocations"]
    fields = {"time", "command", "cwd", "host", "python", "torch", "torchvision", "cuda", "cudnn"}
    fields |= {"gpus", "device", "world_size", "git_commit", "git_dirty", "template_version"}
    fields |= {"scaffold_new", "resumed_from", "changed_options"}
    assert set(entry) == fields
    assert (entry["world_size"], entry["device"]) == (1, "cpu")
    assert entry["template_version"] == train.TEMPLATE_VERSION
    assert entry["resumed_from"] is None and entry["changed_options"] == {}
    assert entry["scaffold_new"].startswith(f"scaffold new {train.PROJECT_NAME} --")


def test_a_resumed_run_adds_its_own_record(tmp_path):
    run_train(tmp_path, *SHORT, "--epochs=1")
    before = read_json(tmp_path / "config.json")
    run_train(tmp_path, *SHORT, "--epochs=2", "--resume=auto", "--allow-changes")
    assert read_json(tmp_path / "config.json") == before, "the run's options stay as they were"
    first, second = read_json(tmp_path / "env.json")["invocations"]
    assert first["resumed_from"] is None
    assert second["resumed_from"] == str(tmp_path / "last.pt")
    assert second["changed_options"] == {"epochs": 2}


def test_config_json_repeats_a_run(tmp_path):
    # RANDOM_EVERY_STEP: the repeat draws the same random numbers too.
    run_train(tmp_path / "first", *SHORT, "--lr=0.02", "--optimizer=adamw", *RANDOM_EVERY_STEP)
    again = train.main(
        ["--config", str(tmp_path / "first" / "config.json"), f"--output-dir={tmp_path / 'again'}"]
    )
    first, second = read_json(tmp_path / "first" / "config.json"), read_json(
        tmp_path / "again" / "config.json"
    )
    assert second == {**first, "output_dir": str(tmp_path / "again")}
    assert read_metrics(tmp_path / "again") == read_metrics(tmp_path / "first")
    assert again["step"] == 6


def test_flags_win_over_a_yaml_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lr: 0.3\nmomentum: 0.5\ndeterministic: true\nbatch-size: 4\n")
    args = train.parse_args(["--config", str(config), "--lr=0.01", f"--output-dir={tmp_path}"])
    assert (args.lr, args.momentum, args.deterministic, args.batch_size) == (0.01, 0.5, True, 4)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"lr": 0.1, "lrr": 1, "colour": 2}', "no such option: colour, lrr"),
        ('{"lr": -1}', "argument --lr: must be above 0, got -1"),
        ('{"config": "other.json"}', "no such option: config"),
        ("[1, 2]", "must hold a mapping of option names to values"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "config.json"
    config.write_text(content)
    code, err = train_fails(capsys, "--config", str(config), f"--output-dir={tmp_path / 'run'}")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_compare_averages_the_repeats_of_a_setting(tmp_path, capsys):
    folders = []
    for seed in range(3):
        folders.append(tmp_path / f"lr1-seed{seed}")
        run_train(folders[-1], *SHORT, f"--seed={seed}", *data_args(16))
    default_lr = train.parse_args([]).lr
    other = tmp_path / "lr2"
    run_train(other, *SHORT, *data_args(16), f"--lr={default_lr * 2}")
    capsys.readouterr()
    rows = compare.main([*map(str, folders), str(other), "--no-figure"])
    groups = [(row["group"], row["runs"]) for row in rows]
    assert groups == [(f"lr={default_lr}", 3), (f"lr={default_lr * 2}", 1)]
    names = compare.metric_names([read_metrics(folder)[-1] for folder in [*folders, other]])
    assert names[:2] == ["train_loss", "val_loss"] and len(names) > 2, "and the task's metrics"
    for name in names:
        finals = [read_metrics(folder)[-1][name] for folder in folders]
        assert rows[0][name] == (statistics.fmean(finals), statistics.stdev(finals))
        assert rows[1][name] == (read_metrics(other)[-1][name], 0.0)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["group", "runs", *names]
    mean, std = rows[0]["val_loss"]
    assert table[1].startswith(f"lr={default_lr}  3") and f"{mean:.4f} ± {std:.4f}" in table[1]


def test_compare_draws_each_settings_mean_over_epochs(tmp_path):
    pytest.importorskip("matplotlib", reason="needs matplotlib: pip install -e .[plot]")
    folders = []
    for seed in range(2):
        folders.append(tmp_path / f"seed{seed}")
        run_train(folders[-1], *SHORT, f"--seed={seed}", *data_args(16))
    figure = compare.plot_groups({"all runs": list(map(str, folders))}, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0
    (val_loss,) = [axes for axes in figure.axes if axes.get_ylabel() == "val_loss"]
    val_loss = val_loss.lines[0]
    per_run = [[r["val_loss"] for r in read_metrics(f) if r["kind"] == "epoch"] for f in folders]
    assert list(val_loss.get_xdata()) == [1, 2]
    assert list(val_loss.get_ydata()) == [
        statistics.fmean(epoch) for epoch in zip(*per_run, strict=True)
    ]
