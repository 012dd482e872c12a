"""train.py end to end on tiny runs: logging, checkpoints, resume, --init-from, flags. (Fine-tuning
image models from pretrained weights: test_images.py.)"""

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
    MISFIT,
    MODEL,
    NORM_LAYERS,
    OTHER_MODEL,
    PER_SAMPLE,
    RANDOM_EVERY_STEP,
    RESHAPE,
    SHAPE_ARGS,
    SMALL_MODEL,
    assert_same_weights,
    data_args,
    load_model_state,
    logged_steps,
    needs_per_sample_loss,
    read_metrics,
    run_train,
    small_model,
    start_train,
    tiny_args,
    train_fails,
    watch_forward,
)

import checkpoint
import train

SMALL = f"--model={SMALL_MODEL}"

# Two epochs of two steps, checkpoints at step 3 (mid-epoch) and at the end of each epoch. With
# RANDOM_EVERY_STEP every step draws random numbers: a resume that lost the random number
# generators' states would train otherwise.
RESUME_ARGS = [*data_args(16), "--epochs=2", "--save-every-steps=3", "--deterministic"]
RESUME_ARGS += ["--lr-scheduler=cosine", "--warmup-epochs=0.5", "--momentum=0.9"]
RESUME_ARGS += RANDOM_EVERY_STEP


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
    options = [SMALL, "--epochs=2", "--deterministic", *RANDOM_EVERY_STEP]
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
    options += ["--deterministic", *RANDOM_EVERY_STEP]
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


def test_eval_only_with_a_checkpoint_of_another_shape_names_the_misfit(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=1")
    code, err = train_fails(
        capsys, *tiny_args(tmp_path, SMALL, RESHAPE, "--eval-only", "--resume=auto")
    )
    assert code == 1
    assert f"{tmp_path / 'last.pt'} {MISFIT}" in err


def test_amp_runs_the_forward_pass_in_bfloat16_on_cpu(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, SMALL, "--amp", "--max-steps=1")
    assert seen and all(output.dtype == torch.bfloat16 for _, output in seen)


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
SGD_ONE_STEP += ["--lr-scheduler=none", "--max-steps=1", *data_args(32), *SHAPE_ARGS]


@needs_per_sample_loss
def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    run_train(tmp_path / "accumulated", *SGD_ONE_STEP, "--batch-size=8", "--grad-accum-steps=2")
    run_train(tmp_path / "big", *SGD_ONE_STEP, "--batch-size=16")
    accumulated = load_model_state(tmp_path / "accumulated" / "last.pt")
    big = load_model_state(tmp_path / "big" / "last.pt")
    torch.manual_seed(0)
    initial = small_model().state_dict()
    for key in big:
        if key.rpartition(".")[0] not in NORM_LAYERS:  # frozen by PER_SAMPLE
            assert not torch.equal(big[key], initial[key]), key
        torch.testing.assert_close(accumulated[key], big[key], rtol=0, atol=1e-6)


def test_clip_grad_norm_bounds_the_update(tmp_path):
    run_train(tmp_path, *SGD_ONE_STEP, "--clip-grad-norm=0.001", "--lr=0.1")
    after = load_model_state(tmp_path / "last.pt")
    torch.manual_seed(0)
    model = small_model()
    initial = model.state_dict()
    # Each parameter once: state_dict() repeats a tied one (a GPT's lm_head is its embedding).
    names = [name for name, _ in model.named_parameters()]
    update = torch.cat([(after[name] - initial[name]).flatten() for name in names])
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


def test_resuming_a_checkpoint_of_another_shape_names_the_misfit(tmp_path, capsys):
    run_train(tmp_path / "run", SMALL, "--max-steps=1")
    # A checkpoint without its run folder's records: only the checkpoint can say what it holds.
    copied = tmp_path / "copied.pt"
    copied.write_bytes((tmp_path / "run" / "last.pt").read_bytes())
    args = tiny_args(tmp_path / "other", SMALL, RESHAPE, f"--resume={copied}")
    code, err = train_fails(capsys, *args)
    assert code == 1 and f"{copied} {MISFIT}" in err


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
