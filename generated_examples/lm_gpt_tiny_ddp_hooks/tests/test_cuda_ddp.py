"""Two processes on two GPUs over NCCL, started by torchrun, with float16 autocast and the memory
layout of GPU_LAYOUT (channels-last for images).

Marked `cuda` like tests/test_cuda.py; needs 2 CUDA devices and is skipped with fewer.
"""

import os

import pytest
import torch
from conftest import GPU_LAYOUT, logged_steps, tiny_args, torchrun

import checkpoint

pytestmark = pytest.mark.cuda

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT = 300  # seconds, NCCL start-up and CUDA initialisation included

# Stands in for train.py: records the backend each process joins the process group with.
RECORD_BACKEND = """
import os, sys

import torch.distributed as dist

sys.path.insert(0, {project!r})
import distributed
import train

init_process_group = dist.init_process_group


def init_and_record(backend, *args, **kwargs):
    with open(os.path.join({marks!r}, "backend-" + os.environ["RANK"]), "w") as file:
        file.write(str(backend))
    return init_process_group(backend, *args, **kwargs)


dist.init_process_group = init_and_record
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
"""


def test_two_gpus_train_over_nccl(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices, this machine has {torch.cuda.device_count()}")
    marks = tmp_path / "marks"
    marks.mkdir()
    wrapper = tmp_path / "record_backend.py"
    wrapper.write_text(RECORD_BACKEND.format(project=PROJECT, marks=str(marks)))
    output_dir = tmp_path / "run"
    options = ["--device=cuda", "--amp", *GPU_LAYOUT, "--batch-size=4", "--max-steps=2"]
    args = [*tiny_args(output_dir, *options), "--dist-timeout=60"]
    result = torchrun(2, *args, script=wrapper, timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:]
    backends = {path.name: path.read_text() for path in marks.iterdir()}
    assert backends == {"backend-0": "nccl", "backend-1": "nccl"}, result.stdout[-3000:]
    assert logged_steps(output_dir) == [1, 2]
    state = checkpoint.load_checkpoint(output_dir / "last.pt")
    assert state["progress"]["step"] == 2 and state["scaler"], "float16 without a GradScaler"
    assert not any(key.startswith("module.") for key in state["model"])
