"""--logger: TensorBoard, MLflow and W&B get the numbers metrics.jsonl gets, whichever metrics the
task logs, and a resumed run continues the same tracker run without duplicated or missing steps."""

import importlib.util
import json
import os

import pytest
from conftest import BEST_METRIC, SMALL_MODEL, read_metrics, run_train, tiny_args, train_fails

import loggers
import train

# Two epochs of four steps, a checkpoint every three; every step logged.
RUN = [f"--model={SMALL_MODEL}", "--epochs=2", "--save-every-steps=3", "--deterministic"]


class Crash(Exception):
    """Stands in for a process that dies at the start of a step."""


def crash_at_step(monkeypatch, step: int) -> None:
    is_logged = train.is_logged

    def crashing(number, *args):
        if number == step:
            raise Crash
        return is_logged(number, *args)

    monkeypatch.setattr(train, "is_logged", crashing)


def interrupted_then_resumed(tmp_path, monkeypatch, *options) -> None:
    """Crash at step 6 (last checkpoint: step 3, so steps 4-5 were logged after it), resume."""
    with monkeypatch.context() as patch:
        crash_at_step(patch, 6)
        with pytest.raises(Crash):
            run_train(tmp_path, *RUN, *options)
    run_train(tmp_path, *RUN, *options, "--resume=auto")


def logged(records: list[dict], kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if r["kind"] == kind]


# ---- MLflow ------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_client():
    pytest.importorskip("mlflow", reason="needs mlflow: pip install -e .[mlflow]")
    from mlflow.tracking import MlflowClient

    return lambda folder: MlflowClient(f"sqlite:///{folder.parent / 'mlflow.db'}")


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_gets_the_options_and_every_logged_number(tmp_path, mlflow_client):
    output_dir = tmp_path / "run"
    run_train(output_dir, *RUN, "--logger=mlflow")
    client = mlflow_client(output_dir)
    run_id = json.loads((output_dir / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    args = vars(train.parse_args(tiny_args(tmp_path / "fresh", *RUN, "--logger=mlflow")))
    args["output_dir"] = str(output_dir)
    assert run.data.params == {key: str(value) for key, value in args.items()}
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["checkpoint"] == str(output_dir / "last.pt")
    records = read_metrics(output_dir)
    for kind, key in [("step", "loss"), ("step", "lr"), ("epoch", BEST_METRIC), ("epoch", "lr")]:
        assert mlflow_history(client, run_id, f"{kind}/{key}") == logged(records, kind, key)


def test_an_interrupted_run_is_one_mlflow_run_with_the_history_of_an_uninterrupted_one(
    tmp_path, monkeypatch, mlflow_client
):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_train(whole, *RUN, "--logger=mlflow")
    interrupted_then_resumed(split, monkeypatch, "--logger=mlflow")
    client = mlflow_client(split)
    ids = {
        folder: json.loads((folder / "mlflow.json").read_text())["run_id"]
        for folder in (whole, split)
    }
    runs = client.search_runs([client.get_experiment_by_name(train.PROJECT_NAME).experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["split", "whole"], "one run per folder"
    for key in ("step/loss", "step/lr", "epoch/val_loss", "epoch/train_loss"):
        assert mlflow_history(client, ids[split], key) == mlflow_history(client, ids[whole], key)
    assert client.get_run(ids[split]).info.status == "FINISHED"


# ---- TensorBoard and W&B -----------------------------------------------------------------------


def tensorboard_scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]


def test_tensorboard_events_hold_each_step_once_after_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="needs tensorboard: pip install -e .[tensorboard]")
    interrupted_then_resumed(tmp_path, monkeypatch, "--logger=tensorboard")
    records = read_metrics(tmp_path)
    assert tensorboard_scalars(tmp_path, "step/loss") == logged(records, "step", "loss")
    best = tensorboard_scalars(tmp_path, f"epoch/{BEST_METRIC}")
    assert best == logged(records, "epoch", BEST_METRIC)


def test_wandb_runs_offline_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="needs wandb: pip install -e .[wandb]")
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_SILENT", "true")
    output_dir = tmp_path / "run"
    interrupted_then_resumed(output_dir, monkeypatch, "--logger=wandb")
    record = json.loads((output_dir / "wandb.json").read_text())
    run_id = record["run_id"]
    assert record["logged"] == {"step": 8, "epoch": 8}
    offline = sorted(path.name for path in (output_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(f"-{run_id}" in name for name in offline), offline
    for name in offline:
        assert (output_dir / "wandb" / name / f"run-{run_id}.wandb").stat().st_size > 0


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else find_spec(name, *a),
    )
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", "--logger=jsonl,mlflow"))
    assert code == 2
    assert err.startswith("error: --logger mlflow needs the mlflow package: pip install mlflow")
    assert not os.path.exists(tmp_path / "run")


# ---- What the trackers get of a record: loggers.numbers ----------------------------------------

# A segmentation-like epoch line with an int metric, a flag, a string, a nested dict and a null.
EPOCH = {"kind": "epoch", "epoch": 3, "step": 120, "train_loss": 0.5, "val_loss": 0.6}
EPOCH |= {"val_miou": 0.4, "val_iou/road": 0.7, "val_iou/car": 0, "val_boxes": 17, "lr": 0.01}
EPOCH |= {"improved": True, "best_metric": "val_miou", "hooks": {"a": 1.0}, "val_f1": None}
EPOCH_NUMBERS = {
    "epoch/train_loss": 0.5,
    "epoch/val_loss": 0.6,
    "epoch/val_miou": 0.4,
    "epoch/val_iou/road": 0.7,
    "epoch/val_iou/car": 0.0,
    "epoch/val_boxes": 17.0,
    "epoch/lr": 0.01,
}
STEP = {"kind": "step", "epoch": 2, "step": 100, "loss": 1.5, "loss_classifier": 1.0, "lr": 0.1}
STEP |= {"tokens": 4096, "hooks": {"activations": {"conv1": {"mean": 0.1, "std": 1.0}}}}
STEP_NUMBERS = {"step/loss": 1.5, "step/loss_classifier": 1.0, "step/lr": 0.1, "step/tokens": 4096}


def test_trackers_get_every_int_and_float_but_the_axes_flags_and_hook_summaries():
    numbers = loggers.numbers(EPOCH)
    assert numbers == EPOCH_NUMBERS
    assert all(type(value) is float for value in numbers.values()), "ints arrive as floats"
    assert loggers.numbers(STEP) == STEP_NUMBERS
    assert loggers.numbers({"kind": "epoch", "epoch": 1, "step": 0}) == {}


def test_tensorboard_gets_an_int_metric_and_not_the_step_epoch_or_flags(tmp_path):
    pytest.importorskip("tensorboard", reason="needs tensorboard: pip install -e .[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = loggers.TensorBoard(str(tmp_path), {}, {"project": "p", "args": {}})
    tracker.write(STEP)
    tracker.write(EPOCH)
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted([*STEP_NUMBERS, *EPOCH_NUMBERS])
    assert tensorboard_scalars(tmp_path, "epoch/val_boxes") == [(120, 17)]
    assert tensorboard_scalars(tmp_path, "epoch/val_iou/road") == [(120, 0.7)]
    assert tensorboard_scalars(tmp_path, "step/tokens") == [(100, 4096)]


def test_mlflow_gets_an_int_metric_and_not_the_step_epoch_or_flags(tmp_path, mlflow_client):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    tracker = loggers.MLflow(str(output_dir), {}, {"project": "ints", "args": {"lr": 0.1}})
    tracker.write(STEP)
    tracker.write(EPOCH)
    tracker.close(str(output_dir / "last.pt"))
    run = mlflow_client(output_dir).get_run(tracker.run_id)
    assert run.data.metrics == {**STEP_NUMBERS, **EPOCH_NUMBERS}


def test_wandb_gets_an_int_metric_and_not_the_step_epoch_or_flags(tmp_path):
    class Run:  # stands in for wandb's run: what log() got
        def __init__(self):
            self.logged = []

        def log(self, data: dict, step: int) -> None:
            self.logged.append((step, data))

    tracker = loggers.WandB.__new__(loggers.WandB)  # without wandb.init
    loggers.ResumableTracker.__init__(tracker, str(tmp_path), {}, {})
    tracker.run_id, tracker.run = "r", Run()
    tracker.write(STEP)
    tracker.write(EPOCH)
    assert tracker.run.logged == [(100, STEP_NUMBERS), (120, EPOCH_NUMBERS)]
