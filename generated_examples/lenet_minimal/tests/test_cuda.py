"""CUDA smoke tests: two steps on the GPU with float16 autocast, GradScaler and the memory layout
of GPU_LAYOUT (channels-last for images), then a resume from the checkpoint.

Marked `cuda`: skipped with "no CUDA device" on a machine without one, and a failure instead when
REQUIRE_CUDA=1 is set (see conftest.py), so a GPU job cannot pass without running them.
"""

import math

import pytest
import torch
from conftest import GPU_LAYOUT, MODEL, logged_steps, model_input, run_train, watch_forward

import checkpoint

pytestmark = pytest.mark.cuda

GPU = ["--device=cuda", "--amp", *GPU_LAYOUT]


def test_two_steps_with_float16_autocast_and_the_gpu_layout(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    metrics = run_train(tmp_path, *GPU, "--max-steps=2")
    assert metrics["step"] == 2 and math.isfinite(metrics["train_loss"])
    assert math.isfinite(metrics["val_loss"])
    inputs, output = seen[0]
    assert inputs.is_cuda and inputs.dtype == model_input(1).dtype  # float32 images, int64 tokens
    if inputs.dim() == 4:  # images, channels-last
        assert inputs.is_contiguous(memory_format=torch.channels_last)
    assert output.dtype == torch.float16, "autocast did not run the forward pass in float16"
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert state["args"]["model"] == MODEL and state["progress"]["step"] == 2
    # GradScaler starts at 2**16 and halves on every step whose float16 gradients overflow.
    assert state["scaler"]["scale"] in {2.0**16, 2.0**15, 2.0**14}, state["scaler"]
    assert all(tensor.device.type == "cpu" for tensor in state["model"].values())
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_resume_on_the_gpu_continues_with_the_saved_grad_scaler(tmp_path, capsys):
    whole = run_train(tmp_path / "whole", *GPU, "--max-steps=4")
    run_train(tmp_path / "split", *GPU, "--max-steps=2")
    capsys.readouterr()
    resumed = run_train(tmp_path / "split", *GPU, "--max-steps=4", "--resume=auto")
    assert f"resumed from {tmp_path / 'split' / 'last.pt'} at epoch 0, step 2\n" in (
        capsys.readouterr().out
    )
    assert resumed["step"] == whole["step"] == 4
    assert logged_steps(tmp_path / "split") == logged_steps(tmp_path / "whole") == [1, 2, 3, 4]
    # The scaler's scale and growth counter continue where the first half stopped: a resume
    # that dropped the GradScaler state would restart them.
    expected = checkpoint.load_checkpoint(tmp_path / "whole" / "last.pt")["scaler"]
    assert checkpoint.load_checkpoint(tmp_path / "split" / "last.pt")["scaler"] == expected
