"""What a run does besides lowering its loss, each a behaviour a broken loop loses while it still
ends with a finite loss and a saved checkpoint: which epoch best.pt holds (also after a resume),
the learning rate at the end of the warm-up, validation in eval mode, which step checkpoints
--keep-last keeps, and the epoch's train_loss under gradient accumulation (the backbone's own
learning rate of image models: test_images.py). Each test here fails when its behaviour is broken
on purpose (scaffold's `make test-mutations` does it, one break at a time)."""

import pytest
import torch
from conftest import (
    BEST_METRIC,
    PER_SAMPLE,
    SMALL_MODEL,
    needs_eval_mode_validation,
    needs_per_sample_loss,
    read_metrics,
    run_train,
)

import checkpoint
import train

STEPS_PER_EPOCH = 4  # conftest.tiny_args: 32 training samples in batches of 8
# A learning rate so small that every update rounds away (float32 weights): the run trains, saves
# and validates as any other, but each epoch validates the same weights to the same metric, which
# therefore never improves after the first epoch.
STANDSTILL = [*PER_SAMPLE, "--optimizer=sgd", "--lr=1e-300"]


def saved_progress(path) -> dict:
    return checkpoint.load_checkpoint(path)["progress"]


def epoch_lines(output_dir) -> list[dict]:
    return [line for line in read_metrics(output_dir) if line["kind"] == "epoch"]


def step_lines(output_dir) -> list[dict]:
    return [line for line in read_metrics(output_dir) if line["kind"] == "step"]


# ---- best.pt -----------------------------------------------------------------------------------


def test_best_pt_is_replaced_only_by_an_epoch_that_improves_the_metric(tmp_path):
    run_train(tmp_path, *STANDSTILL, "--epochs=2")
    epochs = epoch_lines(tmp_path)
    assert len(epochs) == 2 and len({line[BEST_METRIC] for line in epochs}) == 1, epochs
    # The first epoch sets the best; the second, which only equals it, leaves best.pt alone.
    best = saved_progress(tmp_path / "best.pt")
    assert best["step"] == STEPS_PER_EPOCH and best["best"] == epochs[0][BEST_METRIC]
    assert saved_progress(tmp_path / "last.pt")["step"] == 2 * STEPS_PER_EPOCH


class Crash(Exception):
    """Stands in for a process that dies."""


def test_a_resumed_run_keeps_the_best_score_of_the_run_it_continues(tmp_path, monkeypatch):
    options = [*STANDSTILL, "--epochs=2"]
    is_logged = train.is_logged

    def crash_at_the_first_step_of_epoch_2(step, *args):
        # Asked once at the start of every optimizer step, with the step's number.
        if step == STEPS_PER_EPOCH + 1:
            raise Crash
        return is_logged(step, *args)

    with monkeypatch.context() as patch:
        patch.setattr(train, "is_logged", crash_at_the_first_step_of_epoch_2)
        with pytest.raises(Crash):
            run_train(tmp_path, *options)
    assert saved_progress(tmp_path / "best.pt")["step"] == STEPS_PER_EPOCH
    run_train(tmp_path, *options, "--resume=auto")
    epochs = epoch_lines(tmp_path)
    assert [line["epoch"] for line in epochs] == [1, 2]
    assert epochs[0][BEST_METRIC] == epochs[1][BEST_METRIC], epochs
    # Epoch 2 only equals the best of epoch 1, which the resumed run must have restored from its
    # checkpoint: best.pt stays epoch 1's.
    assert saved_progress(tmp_path / "best.pt")["step"] == STEPS_PER_EPOCH
    assert saved_progress(tmp_path / "last.pt")["step"] == 2 * STEPS_PER_EPOCH


# ---- the learning rate -------------------------------------------------------------------------

LR = 0.1


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """One epoch of 4 steps, the first 2 of them warm-up, then cosine; a checkpoint every step."""
    output_dir = tmp_path_factory.mktemp("stepped") / "run"
    run_train(
        output_dir,
        f"--model={SMALL_MODEL}",
        f"--lr={LR}",
        "--lr-scheduler=cosine",
        "--warmup-epochs=0.5",
        "--save-every-steps=1",
        "--keep-last=2",
    )
    return output_dir


def test_the_warm_up_rises_to_the_learning_rate_and_never_above_it(stepped):
    lrs = [line["lr"] for line in step_lines(stepped)]
    # Warm-up steps at 1/2 and 2/2 of --lr; then cosine from its start (--lr itself) to 0 at the
    # end of the run: the step after the warm-up takes cos(0), the last cos(pi / 2).
    assert lrs == pytest.approx([LR / 2, LR, LR, LR / 2])
    assert max(lrs) <= LR


# ---- validation, checkpoints, train_loss -------------------------------------------------------


@needs_eval_mode_validation
def test_validation_runs_in_eval_mode_and_training_in_train_mode(tmp_path, monkeypatch):
    """Dropout and BatchNorm compute otherwise in train mode: every layer must be in eval mode
    while the model validates, and the model back in train mode when the next epoch trains."""
    passes = []  # per forward pass: gradients on (training), the model in train mode, any layer
    build = train.model_from_options

    def record(module, inputs, output):
        layers = any(layer.training for layer in module.modules())
        passes.append((torch.is_grad_enabled(), module.training, layers))

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(record)
        return model

    monkeypatch.setattr(train, "model_from_options", build_and_watch)
    run_train(tmp_path, f"--model={SMALL_MODEL}", "--epochs=2")
    training = [one for one in passes if one[0]]
    validating = [one for one in passes if not one[0]]
    assert len(training) == 2 * STEPS_PER_EPOCH and validating, passes
    assert all(model_training for _, model_training, _ in training), passes
    assert not any(any_layer for _, _, any_layer in validating), passes


def test_keep_last_removes_the_oldest_step_checkpoints_and_keeps_the_newest(stepped):
    kept = sorted(path.name for path in stepped.glob("step_*.pt"))
    assert kept == ["step_00000003.pt", "step_00000004.pt"]
    assert saved_progress(stepped / "step_00000003.pt")["step"] == 3


@needs_per_sample_loss
def test_train_loss_is_the_mean_per_sample_under_gradient_accumulation(tmp_path):
    """An epoch of 2 steps of 2 micro-batches of 8 samples, and one of 2 steps of 16 samples:
    the same samples, the same steps, the same mean loss per sample."""
    options = [*PER_SAMPLE, "--optimizer=sgd", "--momentum=0", "--lr-scheduler=none"]
    accumulated = run_train(
        tmp_path / "accumulated", *options, "--batch-size=8", "--grad-accum-steps=2"
    )
    whole = run_train(tmp_path / "whole", *options, "--batch-size=16")
    assert accumulated["step"] == whole["step"] == 2
    assert accumulated["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)


@needs_per_sample_loss
def test_a_logged_step_loss_is_the_mean_over_its_micro_batches(tmp_path):
    """Two micro-batches of 8 log the loss of the 16 samples, not the last 8's."""
    one_step = [*PER_SAMPLE, "--max-steps=1", "--log-every=1"]
    run_train(tmp_path / "accumulated", *one_step, "--batch-size=8", "--grad-accum-steps=2")
    run_train(tmp_path / "whole", *one_step, "--batch-size=16")
    (accumulated,) = step_lines(tmp_path / "accumulated")
    (whole,) = step_lines(tmp_path / "whole")
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-5)
