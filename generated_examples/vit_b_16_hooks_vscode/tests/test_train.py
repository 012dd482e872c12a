"""train.py end to end on tiny runs: logging, checkpoints, resume, fine-tuning, flags."""

import errno
import math
import os
import re
import signal
import time

import pytest
import torch
from conftest import (
    DATASET,
    MODEL,
    NORM_LAYERS,
    OTHER_MODEL,
    PER_SAMPLE,
    SMALL_MODEL,
    TORCHVISION_MODEL,
    assert_same_weights,
    data_args,
    load_model_state,
    logged_steps,
    read_metrics,
    run_train,
    start_train,
    tiny_args,
    train_fails,
    watch_forward,
)

import checkpoint
import train
from finetune import in_head
from model import HEADS, build_model, model_image_size_problem

DEFAULTS = train.parse_args([])
SHAPE = (DEFAULTS.num_classes, DEFAULTS.in_channels, DEFAULTS.image_size)
# torchvision's models take images of 32 pixels or more (model.MIN_IMAGE_SIZES)
TORCHVISION_SIZE = max(DEFAULTS.image_size, 32)
SMALL = f"--model={SMALL_MODEL}"

# Two epochs of two steps, checkpoints at step 3 (mid-epoch) and at the end of each epoch. The
# crops and flips of --augment draw random numbers every step: a resume that lost the random
# number generators' states would train on other images.
RESUME_ARGS = [*data_args(16), "--epochs=2", "--save-every-steps=3", "--deterministic"]
RESUME_ARGS += ["--lr-scheduler=cosine", "--warmup-epochs=0.5", "--momentum=0.9", "--augment"]


class Crash(Exception):
    """Stands in for a process dying right after a checkpoint was written."""


def crash_after_save(monkeypatch, should_crash) -> None:
    save = checkpoint.save_checkpoint

    def save_then_crash(state, path):
        save(state, path)
        if should_crash(state["progress"]):
            raise Crash

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_crash)


def test_smoke_run_logs_metrics_and_writes_checkpoints(tmp_path):
    metrics = run_train(tmp_path, "--max-steps=3")
    assert metrics["step"] == 3 and math.isfinite(metrics["train_loss"])
    lines = read_metrics(tmp_path)
    assert [line["step"] for line in lines if line["kind"] == "step"] == [1, 2, 3]
    assert [line["kind"] for line in lines].count("epoch") == 1
    assert lines[-1] == metrics
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")
    progress = state["progress"]
    assert (progress["step"], progress["epoch"], progress["step_in_epoch"]) == (3, 0, 3)
    assert state["log"]["jsonl"] == {"lines": len(lines)}
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
    "crash_point, resumed_line",
    [
        pytest.param(
            lambda progress: progress["step"] == 3,
            "step_00000003.pt at epoch 1, step 3",
            id="mid-epoch",
        ),
        pytest.param(
            lambda progress: progress["epoch"] == 1 and progress["step_in_epoch"] == 0,
            "last.pt at epoch 1, step 2",
            id="epoch",
        ),
    ],
)
def test_resume_is_bit_exact(
    tmp_path, monkeypatch, capsys, uninterrupted, crash_point, resumed_line
):
    with monkeypatch.context() as patch:
        crash_after_save(patch, crash_point)
        with pytest.raises(Crash):
            run_train(tmp_path, *RESUME_ARGS)
    capsys.readouterr()
    run_train(tmp_path, *RESUME_ARGS, "--resume=auto")
    assert f"resumed from {tmp_path / resumed_line}\n" in capsys.readouterr().out
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")
    assert read_metrics(tmp_path) == read_metrics(uninterrupted)


def test_resume_drops_the_lines_logged_after_its_checkpoint(tmp_path, monkeypatch):
    """Killed at the start of step 7: steps 5 and 6 were logged after the last checkpoint (the
    end of epoch 1, step 4). The resumed run logs them again, once, as if it had never stopped."""
    options = [SMALL, "--epochs=2", "--deterministic", "--augment"]
    run_train(tmp_path / "whole", *options)
    is_logged = train.is_logged

    def crash_at_step_7(step, *args):
        if step == 7:
            raise Crash
        return is_logged(step, *args)

    with monkeypatch.context() as patch:
        patch.setattr(train, "is_logged", crash_at_step_7)
        with pytest.raises(Crash):
            run_train(tmp_path / "split", *options)
    assert logged_steps(tmp_path / "split") == [1, 2, 3, 4, 5, 6]
    run_train(tmp_path / "split", *options, "--resume=auto")
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "whole")


def test_resume_auto_takes_the_newest_checkpoint(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=3", "--save-every-steps=1", "--keep-last=3")
    # The newest by time is the one to continue, whatever the names say.
    for age, name in enumerate(["last.pt", "step_00000003.pt", "step_00000001.pt"]):
        os.utime(tmp_path / name, (time.time() - 100 * age, time.time() - 100 * age))
    os.utime(tmp_path / "step_00000002.pt", (time.time() - 1000, time.time() - 1000))
    capsys.readouterr()
    run_train(tmp_path, SMALL, "--max-steps=4", "--resume=auto", "--allow-changes")
    assert f"resumed from {tmp_path / 'last.pt'} at epoch 0, step 3\n" in capsys.readouterr().out
    assert logged_steps(tmp_path) == [1, 2, 3, 4]


def test_sigkill_then_resume_auto_matches_uninterrupted(tmp_path):
    options = [SMALL, "--epochs=2", "--max-steps=6", "--save-every-steps=2"]
    options += ["--deterministic", "--augment"]
    run_train(tmp_path / "whole", *options)
    killed = tmp_path / "killed"
    process = start_train(tiny_args(killed, *options))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (killed / "metrics.jsonl").exists() and 3 in logged_steps(killed):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    resumed = start_train([*tiny_args(killed, *options), "--resume=auto"])
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    # Killed after step 3 was logged: the newest checkpoint is of step 2 or, if the kill came a
    # little late, a later one; never a run from scratch.
    resumed_step = re.search(
        rf"resumed from {re.escape(str(killed))}/\S+ at epoch \d, step (\d)\n", out
    )
    assert resumed_step and int(resumed_step.group(1)) >= 2, out
    assert_same_weights(tmp_path / "whole" / "last.pt", killed / "last.pt")


def image_size_for(model_name: str) -> int:
    """This project's --image-size, or torchvision's smallest where the model cannot take it."""
    problem = model_image_size_problem(model_name, DEFAULTS.image_size)
    return TORCHVISION_SIZE if problem else DEFAULTS.image_size


def replaced_tensors(model_name: str, size: int, num_classes: int) -> list[str]:
    """The names of the tensors of `model_name` whose shape depends on the class count (the
    head's last layer, and the auxiliary head's where the model has one), sorted."""
    ours = build_model(model_name, DEFAULTS.num_classes, DEFAULTS.in_channels, size).state_dict()
    other = build_model(model_name, num_classes, DEFAULTS.in_channels, size).state_dict()
    return sorted(key for key in ours if ours[key].shape != other[key].shape)


@pytest.mark.parametrize("model_name", sorted({MODEL, SMALL_MODEL, TORCHVISION_MODEL}))
def test_finetune_freezes_the_backbone_and_replaces_the_head(tmp_path, capsys, model_name):
    pretrained, finetuned = tmp_path / "pretrained", tmp_path / "finetuned"
    size = image_size_for(model_name)
    run_train(pretrained, f"--model={model_name}", "--max-steps=2", f"--image-size={size}")
    capsys.readouterr()
    run_train(
        finetuned,
        f"--model={model_name}",
        f"--image-size={size}",
        "--num-classes=3",
        f"--init-from={pretrained / 'last.pt'}",
        "--freeze=backbone",
        "--max-steps=2",
    )
    head = HEADS[model_name]
    replaced = replaced_tensors(model_name, size, 3)
    summary = next(line for line in capsys.readouterr().out.splitlines() if "init-from" in line)
    assert f"skipped {len(replaced)} with other shapes [{', '.join(replaced)}]" in summary
    before, after = load_model_state(pretrained / "last.pt"), load_model_state(
        finetuned / "last.pt"
    )
    # The backbone as trained before, and the head's new last layer (an auxiliary head's too)
    # trained from its initial weights.
    backbone = [key for key in after if not in_head(key, head) and key not in replaced]
    assert backbone and all(torch.equal(before[key], after[key]) for key in backbone)
    torch.manual_seed(0)
    initial = build_model(model_name, 3, DEFAULTS.in_channels, size).state_dict()
    assert all(after[key].shape[0] == 3 for key in replaced)
    assert all(in_head(key, head) for key in replaced)
    new_weights = [key for key in replaced if "weight" in key]
    assert new_weights and not any(torch.equal(after[key], initial[key]) for key in new_weights)


def test_init_from_a_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    other = tmp_path / OTHER_MODEL / "last.pt"
    run_train(other.parent, f"--model={OTHER_MODEL}", "--max-steps=1")
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", SMALL, f"--init-from={other}"))
    assert code == 1
    assert err == (
        f"error: {other} holds a {OTHER_MODEL} model, this run builds {SMALL_MODEL}: "
        f"pass --model {OTHER_MODEL}, or a checkpoint of {SMALL_MODEL}\n"
    )
    weights = {"unrelated.weight": torch.zeros(3)}
    torch.save(weights, tmp_path / "other.pt")
    code, err = train_fails(
        capsys,
        *tiny_args(tmp_path / "run", SMALL, f"--init-from={tmp_path / 'other.pt'}"),
    )
    assert code == 1 and "no tensor of" in err and f"fits {SMALL_MODEL}" in err
    assert not (tmp_path / "run").exists()


def test_eval_only_reports_the_checkpoint_metrics(tmp_path, capsys):
    trained = run_train(tmp_path, SMALL, "--max-steps=2")
    expected = {name: value for name, value in trained.items() if name.startswith("val_")}
    assert "val_loss" in expected and len(expected) > 1, "and the task's metrics"
    before = sorted(os.listdir(tmp_path))
    resumed = run_train(tmp_path, SMALL, "--eval-only", f"--resume={tmp_path / 'last.pt'}")
    capsys.readouterr()
    auto = run_train(tmp_path, SMALL, "--eval-only", "--resume=auto")
    assert resumed == auto == expected
    evaluating = f"evaluating {tmp_path / 'last.pt'} on 8 validation samples of --dataset {DATASET}"
    assert evaluating + "\n" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before, "evaluation writes nothing"


def test_eval_only_with_a_checkpoint_of_another_class_count_names_both(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=1")
    code, err = train_fails(
        capsys,
        *tiny_args(tmp_path, SMALL, "--num-classes=3", "--eval-only", "--resume=auto"),
    )
    assert code == 1
    assert f"{tmp_path / 'last.pt'} was saved with --num-classes 10, this run uses 3" in err


def test_amp_runs_the_forward_pass_in_bfloat16_on_cpu(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, SMALL, "--amp", "--max-steps=1")
    assert seen and all(output.dtype == torch.bfloat16 for _, output in seen)


def test_channels_last_reaches_the_model(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, SMALL, "--channels-last", "--in-channels=3", "--max-steps=1")
    images = seen[0][0]
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_augment_crops_and_flips_each_image(tmp_path, monkeypatch):
    """The model sees the images of a plain run, each shifted by up to 4 pixels and maybe
    mirrored: the same pixels where the crop overlaps the image."""
    seen = watch_forward(monkeypatch)
    run_train(tmp_path / "plain", SMALL, "--max-steps=1")
    plain = seen[0][0].clone()
    seen.clear()
    run_train(tmp_path / "augmented", SMALL, "--max-steps=1", "--augment")
    augmented = seen[0][0]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    background = -1.0  # zero padding, normalized
    for image, original in zip(augmented, plain, strict=True):
        matches = [
            torch.equal(window[mask], shifted[mask])
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            for shifted in [shift(original.flip(-1) if flip else original, dy, dx, background)]
            for window, mask in [(image, shifted != background)]
        ]
        assert any(matches), "an augmented image is no crop or flip of the original"


def shift(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, [4] * 4, value=fill)
    height, width = image.shape[-2:]
    return padded[:, 4 + dy : 4 + dy + height, 4 + dx : 4 + dx + width]


def test_compile_wraps_the_model_and_saves_plain_keys(tmp_path, monkeypatch):
    compiled = []
    compile_eagerly = torch.compile

    def compile_and_record(model, **kwargs):
        compiled.append(model)
        return compile_eagerly(model, backend="eager")  # no C++ toolchain needed for the test

    monkeypatch.setattr(torch, "compile", compile_and_record)
    run_train(tmp_path, SMALL, "--compile", "--max-steps=1")
    assert len(compiled) == 1
    keys = load_model_state(tmp_path / "last.pt").keys()
    assert keys and not any(key.startswith("_orig_mod.") for key in keys)


SGD_ONE_STEP = [*PER_SAMPLE, "--optimizer=sgd", "--momentum=0", "--weight-decay=0"]
SGD_ONE_STEP += ["--lr-scheduler=none", "--max-steps=1", *data_args(32)]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    run_train(tmp_path / "accumulated", *SGD_ONE_STEP, "--batch-size=8", "--grad-accum-steps=2")
    run_train(tmp_path / "big", *SGD_ONE_STEP, "--batch-size=16")
    accumulated = load_model_state(tmp_path / "accumulated" / "last.pt")
    big = load_model_state(tmp_path / "big" / "last.pt")
    torch.manual_seed(0)
    initial = build_model(SMALL_MODEL, *SHAPE).state_dict()
    for key in big:
        if key.rpartition(".")[0] not in NORM_LAYERS:  # frozen by PER_SAMPLE
            assert not torch.equal(big[key], initial[key]), key
        torch.testing.assert_close(accumulated[key], big[key], rtol=0, atol=1e-6)


def test_clip_grad_norm_bounds_the_update(tmp_path):
    run_train(tmp_path, *SGD_ONE_STEP, "--clip-grad-norm=0.001", "--lr=0.1")
    after = load_model_state(tmp_path / "last.pt")
    torch.manual_seed(0)
    initial = build_model(SMALL_MODEL, *SHAPE).state_dict()
    update = torch.cat([(after[key] - initial[key]).flatten() for key in after])
    assert update.norm().item() == pytest.approx(0.1 * 0.001, rel=1e-3)


def test_warmup_then_onecycle_schedules_reach_the_optimizer(tmp_path):
    run_train(tmp_path / "warmup", SMALL, "--lr=0.1", "--lr-scheduler=none", "--warmup-epochs=1")
    lrs = [line["lr"] for line in read_metrics(tmp_path / "warmup") if line["kind"] == "step"]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1])
    run_train(tmp_path / "onecycle", SMALL, "--lr=0.1", "--lr-scheduler=onecycle", "--epochs=3")
    lrs = [line["lr"] for line in read_metrics(tmp_path / "onecycle") if line["kind"] == "step"]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(0.1, rel=0.01)
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)


def test_a_resumed_run_follows_its_own_longer_schedule(tmp_path):
    options = [SMALL, "--lr=0.1", "--lr-scheduler=cosine"]
    run_train(tmp_path / "short", *options, "--epochs=1")
    run_train(tmp_path / "short", *options, "--epochs=2", "--resume=auto", "--allow-changes")
    run_train(tmp_path / "long", *options, "--epochs=2")
    lrs = [line["lr"] for line in read_metrics(tmp_path / "long") if line["kind"] == "step"]
    resumed = [line["lr"] for line in read_metrics(tmp_path / "short") if line["kind"] == "step"]
    assert resumed[4:] == pytest.approx(lrs[4:]) and resumed[4] == pytest.approx(0.05)


class WritesAFile:
    """Unpickling this calls open(path, "w"): what a malicious checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("flags", [["--resume"], ["--init-from"], ["--eval-only", "--resume"]])
def test_a_malicious_checkpoint_is_refused(tmp_path, monkeypatch, capsys, flags):
    # As on torch < 2.6, where torch.load unpickles anything unless told weights_only=True.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": WritesAFile(str(marker))}, evil)
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", SMALL, *flags, str(evil)))
    assert code == 1
    assert f"cannot load checkpoint {evil}: it holds objects other than tensors" in err
    assert "refusing to unpickle it" in err and err.count("\n") == 1
    assert not marker.exists()


def test_resume_auto_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=3", "--save-every-steps=2")
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # a torn write from some other tool
    run_train(tmp_path, SMALL, "--max-steps=3", "--save-every-steps=2", "--resume=auto")
    captured = capsys.readouterr()
    assert (
        "warning: skipped last.pt: not a complete file written by torch.save "
        "(cut short, or another format)\n"
    ) in captured.err
    assert f"resumed from {tmp_path / 'step_00000002.pt'} at epoch 0, step 2\n" in captured.out


def test_resuming_a_checkpoint_of_another_class_count_names_the_mismatch(tmp_path, capsys):
    run_train(tmp_path / "run", SMALL, "--max-steps=1")
    # A checkpoint without its run folder's records: only the checkpoint can say what it holds.
    copied = tmp_path / "copied.pt"
    copied.write_bytes((tmp_path / "run" / "last.pt").read_bytes())
    args = tiny_args(tmp_path / "other", SMALL, "--num-classes=3", f"--resume={copied}")
    code, err = train_fails(capsys, *args)
    assert code == 1 and "--num-classes 10, this run uses 3" in err


def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_previous_one(
    tmp_path, monkeypatch, capsys
):
    run_train(tmp_path, SMALL, "--max-steps=1")
    before = (tmp_path / "last.pt").read_bytes()
    save = torch.save

    def disk_full_half_way(state, target, *args, **kwargs):
        """torch.save into a file that takes 1000 bytes, then fails as a full disk does."""
        file = open(target, "wb") if isinstance(target, str | os.PathLike) else target
        write, written = file.write, []

        def write_until_full(data):
            if sum(written) + len(data) > 1000:
                write(bytes(data)[: 1000 - sum(written)])
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(len(data))
            return write(data)

        file.write = write_until_full
        try:
            save(state, file, *args, **kwargs)
        finally:
            file.write = write
            if file is not target:
                file.close()

    monkeypatch.setattr(torch, "save", disk_full_half_way)
    args = tiny_args(tmp_path, SMALL, "--max-steps=2", "--resume=auto", "--allow-changes")
    code, err = train_fails(capsys, *args)
    assert code == 1
    assert err == (
        f"error: could not save checkpoint {tmp_path / 'last.pt'}: No space left on device; "
        "the previous checkpoint is intact\n"
    )
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_pretrained_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch, capsys):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    default = torchvision.models.get_model_weights(TORCHVISION_MODEL).DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(default.url)
    args = [f"--model={TORCHVISION_MODEL}", "--weights=DEFAULT", "--freeze=backbone"]
    args += ["--max-steps=1", "--in-channels=3", f"--image-size={TORCHVISION_SIZE}"]
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", *args))
    assert code == 2 and f"put the file at {cached}" in err and "--download" in err

    # Made-up pretrained weights: the model with the pretrained class count.
    torch.manual_seed(1)
    pretrained_classes = len(default.meta["categories"])
    model = build_model(TORCHVISION_MODEL, pretrained_classes, 3, TORCHVISION_SIZE)
    pretrained = model.state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(pretrained, cached)
    run_train(tmp_path / "run", *args)
    trained = load_model_state(tmp_path / "run" / "last.pt")
    head = HEADS[TORCHVISION_MODEL]
    backbone = [key for key in trained if not in_head(key, head)]
    assert backbone and all(torch.equal(trained[key], pretrained[key]) for key in backbone)
    replaced = [key for key in trained if trained[key].shape != pretrained[key].shape]
    assert replaced and all(in_head(key, head) for key in replaced)
    assert all(trained[key].shape[0] == DEFAULTS.num_classes for key in replaced)
