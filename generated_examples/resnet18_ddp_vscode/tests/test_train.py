"""train.py end to end on tiny FakeData runs: logging, checkpoints, resume, fine-tuning, flags."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import MODEL, load_model_state, read_metrics, run_train, tiny_args, watch_forward

import checkpoint
import train
from model import HEADS, build_model

DEFAULTS = train.parse_args([])
LENET_SHAPE = (DEFAULTS.num_classes, DEFAULTS.in_channels, DEFAULTS.image_size)

# Two epochs of two steps, checkpoints at step 3 (mid-epoch) and at the end of each epoch.
RESUME_ARGS = ["--fake-size=16", "--epochs=2", "--save-every-steps=3", "--deterministic"]
RESUME_ARGS += ["--lr-scheduler=cosine", "--warmup-epochs=0.5", "--momentum=0.9"]


class Crash(Exception):
    """Stands in for a process dying right after a checkpoint was written."""


def crash_after_save(monkeypatch, should_crash) -> None:
    save = checkpoint.save_checkpoint

    def save_then_crash(state, path):
        save(state, path)
        if should_crash(state):
            raise Crash

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_crash)


def assert_same_weights(path_a, path_b) -> None:
    a, b = load_model_state(path_a), load_model_state(path_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different[:5]}"


def test_smoke_run_logs_metrics_and_writes_checkpoints(tmp_path):
    metrics = run_train(tmp_path, "--max-steps=3")
    assert metrics["step"] == 3 and math.isfinite(metrics["train_loss"])
    lines = read_metrics(tmp_path)
    assert [line["step"] for line in lines if line["kind"] == "step"] == [1, 2, 3]
    assert [line["kind"] for line in lines].count("epoch") == 1
    assert lines[-1] == metrics
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 0, 3)
    assert state["template_version"] == train.TEMPLATE_VERSION
    assert state["args"]["model"] == MODEL
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in state["model"])
    assert (tmp_path / "best.pt").is_file()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run_train(output_dir, *RESUME_ARGS)
    return output_dir


@pytest.mark.parametrize(
    "crash_point",
    [
        pytest.param(lambda state: state["step"] == 3, id="mid-epoch"),
        pytest.param(lambda state: state["epoch"] == 1 and state["step_in_epoch"] == 0, id="epoch"),
    ],
)
def test_resume_is_bit_exact(tmp_path, monkeypatch, uninterrupted, crash_point):
    with monkeypatch.context() as patch:
        crash_after_save(patch, crash_point)
        with pytest.raises(Crash):
            run_train(tmp_path, *RESUME_ARGS)
    run_train(tmp_path, *RESUME_ARGS, "--resume=auto")
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")
    assert read_metrics(tmp_path) == read_metrics(uninterrupted)


def test_sigkill_then_resume_auto_matches_uninterrupted(tmp_path):
    options = ["--model=lenet", "--epochs=2", "--max-steps=6", "--save-every-steps=2"]
    options.append("--deterministic")
    run_train(tmp_path / "whole", *options)
    command = [sys.executable, "train.py", *tiny_args(tmp_path / "killed", *options)]
    project_root = os.path.dirname(train.__file__)
    process = subprocess.Popen(command, cwd=project_root, stdout=subprocess.DEVNULL)
    metrics_path = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics_path.exists() and '"step": 3,' in metrics_path.read_text():
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    subprocess.run([*command, "--resume=auto"], cwd=project_root, check=True, capture_output=True)
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "killed" / "last.pt")


@pytest.mark.parametrize("model_name", sorted({MODEL, "lenet", "resnet18"}))
def test_finetune_freezes_the_backbone_and_replaces_the_head(tmp_path, capsys, model_name):
    pretrained, finetuned = tmp_path / "pretrained", tmp_path / "finetuned"
    run_train(pretrained, f"--model={model_name}", "--max-steps=2")
    capsys.readouterr()
    run_train(
        finetuned,
        f"--model={model_name}",
        "--num-classes=3",
        f"--init-from={pretrained / 'last.pt'}",
        "--freeze=backbone",
        "--max-steps=2",
    )
    head = HEADS[model_name]
    summary = next(line for line in capsys.readouterr().out.splitlines() if "init-from" in line)
    assert f"skipped 2 with other shapes [{head}.bias, {head}.weight]" in summary
    before, after = load_model_state(pretrained / "last.pt"), load_model_state(
        finetuned / "last.pt"
    )
    backbone = [key for key in after if not key.startswith(head + ".")]
    assert backbone and all(torch.equal(before[key], after[key]) for key in backbone)
    torch.manual_seed(0)
    shape = (DEFAULTS.in_channels, DEFAULTS.image_size)
    initial_head = build_model(model_name, 3, *shape).get_submodule(head).weight
    assert after[f"{head}.weight"].shape[0] == 3
    assert not torch.equal(after[f"{head}.weight"], initial_head.detach())


def test_eval_only_reports_the_checkpoint_metrics(tmp_path, capsys):
    trained = run_train(tmp_path, "--model=lenet", "--max-steps=2")
    evaluated = run_train(
        tmp_path / "eval", "--model=lenet", "--eval-only", "--resume", str(tmp_path / "last.pt")
    )
    assert evaluated == {"val_loss": trained["val_loss"], "val_acc": trained["val_acc"]}


def test_amp_runs_the_forward_pass_in_bfloat16_on_cpu(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, "--model=lenet", "--amp", "--max-steps=1")
    assert seen and all(output.dtype == torch.bfloat16 for _, output in seen)


def test_channels_last_reaches_the_model(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, "--model=lenet", "--channels-last", "--in-channels=3", "--max-steps=1")
    images = seen[0][0]
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_compile_wraps_the_model_and_saves_plain_keys(tmp_path, monkeypatch):
    compiled = []
    compile_eagerly = torch.compile

    def compile_and_record(model, **kwargs):
        compiled.append(model)
        return compile_eagerly(model, backend="eager")  # no C++ toolchain needed for the test

    monkeypatch.setattr(torch, "compile", compile_and_record)
    run_train(tmp_path, "--model=lenet", "--compile", "--max-steps=1")
    assert len(compiled) == 1
    keys = load_model_state(tmp_path / "last.pt").keys()
    assert keys and not any(key.startswith("_orig_mod.") for key in keys)


SGD_ONE_STEP = ["--model=lenet", "--momentum=0", "--weight-decay=0", "--lr-scheduler=none"]
SGD_ONE_STEP += ["--max-steps=1", "--fake-size=32"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    run_train(tmp_path / "accumulated", *SGD_ONE_STEP, "--batch-size=8", "--grad-accum-steps=2")
    run_train(tmp_path / "big", *SGD_ONE_STEP, "--batch-size=16")
    accumulated = load_model_state(tmp_path / "accumulated" / "last.pt")
    big = load_model_state(tmp_path / "big" / "last.pt")
    torch.manual_seed(0)
    initial = build_model("lenet", *LENET_SHAPE).state_dict()
    for key in big:
        assert not torch.equal(big[key], initial[key]), key
        torch.testing.assert_close(accumulated[key], big[key], rtol=0, atol=1e-6)


def test_clip_grad_norm_bounds_the_update(tmp_path):
    run_train(tmp_path, *SGD_ONE_STEP, "--clip-grad-norm=0.001", "--lr=0.1")
    after = load_model_state(tmp_path / "last.pt")
    torch.manual_seed(0)
    initial = build_model("lenet", *LENET_SHAPE).state_dict()
    update = torch.cat([(after[key] - initial[key]).flatten() for key in after])
    assert update.norm().item() == pytest.approx(0.1 * 0.001, rel=1e-3)


def test_warmup_then_onecycle_schedules_reach_the_optimizer(tmp_path):
    run_train(
        tmp_path / "warmup", "--model=lenet", "--lr=0.1", "--lr-scheduler=none", "--warmup-epochs=1"
    )
    lrs = [line["lr"] for line in read_metrics(tmp_path / "warmup") if line["kind"] == "step"]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1])
    run_train(
        tmp_path / "onecycle", "--model=lenet", "--lr=0.1", "--lr-scheduler=onecycle", "--epochs=3"
    )
    lrs = [line["lr"] for line in read_metrics(tmp_path / "onecycle") if line["kind"] == "step"]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(0.1, rel=0.01)
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)


class WritesAFile:
    """Unpickling this calls open(path, "w"): what a malicious checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("flags", [["--resume"], ["--init-from"], ["--eval-only", "--resume"]])
def test_a_malicious_checkpoint_is_refused(tmp_path, flags):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": WritesAFile(str(marker))}, evil)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "run", "--model=lenet", *flags, str(evil))
    assert "refusing" in str(exit_info.value) and str(evil) in str(exit_info.value)
    assert not marker.exists()


def test_resume_auto_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys):
    run_train(tmp_path, "--model=lenet", "--max-steps=3", "--save-every-steps=2")
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # a torn write from some other tool
    run_train(tmp_path, "--model=lenet", "--max-steps=4", "--save-every-steps=2", "--resume=auto")
    captured = capsys.readouterr()
    assert f"warning: cannot load checkpoint {last}" in captured.err
    assert f"resumed from {tmp_path / 'step_00000002.pt'} at epoch 0, step 2" in captured.out


def test_resuming_another_model_names_the_mismatch(tmp_path):
    run_train(tmp_path, "--model=lenet", "--max-steps=1")
    with pytest.raises(SystemExit) as exit_info:
        run_train(
            tmp_path / "other",
            "--model=lenet",
            "--num-classes=3",
            "--resume",
            str(tmp_path / "last.pt"),
        )
    assert "--num-classes 10, this run uses 3" in str(exit_info.value)


def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_previous_one(tmp_path, monkeypatch):
    run_train(tmp_path, "--model=lenet", "--max-steps=1")
    before = (tmp_path / "last.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path, "--model=lenet", "--max-steps=2", "--resume=auto")
    assert "could not save checkpoint" in str(exit_info.value)
    assert "No space left on device" in str(exit_info.value)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_tensorboard_writes_events_or_says_how_to_install_it(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as exit_info:
            run_train(tmp_path, "--model=lenet", "--max-steps=1", "--tensorboard")
        assert "pip install tensorboard" in str(exit_info.value)
        return
    run_train(tmp_path, "--model=lenet", "--max-steps=1", "--tensorboard")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_pretrained_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(url)
    args = ["--model=resnet18", "--weights=DEFAULT", "--freeze=backbone", "--max-steps=1"]
    args += ["--in-channels=3"]
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "run", *args)
    assert f"put the file at {cached}" in str(exit_info.value)
    assert "--download" in str(exit_info.value)

    torch.manual_seed(1)
    pretrained = torchvision.models.resnet18().state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(pretrained, cached)
    run_train(tmp_path / "run", *args)
    trained = load_model_state(tmp_path / "run" / "last.pt")
    backbone = [key for key in trained if not key.startswith("fc.")]
    assert all(torch.equal(trained[key], pretrained[key]) for key in backbone)
    assert trained["fc.weight"].shape[0] == DEFAULTS.num_classes
