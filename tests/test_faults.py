"""A generated project's training survives SIGKILL anywhere, checkpoint writes included:
`--resume auto` always finds a valid checkpoint and the run ends bit-identical to one that
never stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaffold.options import NewProject
from scaffold.render import create_project

# Runs train.py with every fsync slowed down, which holds the window between writing a checkpoint's
# temporary file and renaming it open long enough to kill the process inside it.
SLOW_WRITES = """
import os, sys, time
sys.path.insert(0, os.getcwd())
delay = float(os.environ["CHECKPOINT_WRITE_DELAY"])
fsync = os.fsync
os.fsync = lambda fd: (time.sleep(delay), fsync(fd))[1]
import train
train.main(sys.argv[1:])
"""

TRAIN_ARGS = ["--model=lenet", "--dataset=fake", "--fake-size=64", "--batch-size=8", "--epochs=2"]
TRAIN_ARGS += ["--workers=0", "--device=cpu", "--log-every=1", "--save-every-steps=1"]
TRAIN_ARGS += ["--deterministic", "--keep-last=2"]

# (what to wait for, step): kill once the run has logged that step, or once it is inside the
# checkpoint write that follows that step.
KILL_POINTS = [("step", 3), ("write", 5), ("step", 8), ("write", 11), ("step", 14)]


def last_logged_step(output_dir: Path) -> int:
    metrics = output_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
    return max(steps, default=0)


def start(project: Path, wrapper: Path, output_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(wrapper), *TRAIN_ARGS, f"--output-dir={output_dir}", *extra]
    return subprocess.Popen(
        command,
        cwd=project,
        env={"CHECKPOINT_WRITE_DELAY": "0.3", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at(process: subprocess.Popen, output_dir: Path, kind: str, step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before the kill point"
        reached = last_logged_step(output_dir) >= step
        if reached and (kind == "step" or list(output_dir.glob("*.tmp-*"))):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume_auto_is_bit_exact(tmp_path):
    import torch

    project = tmp_path / "faults"
    create_project(NewProject(dest=project, hooks=False, vscode=False), git=False)
    wrapper = tmp_path / "slow_writes.py"
    wrapper.write_text(SLOW_WRITES)

    whole = start(project, wrapper, tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.communicate()[1]

    killed_dir = tmp_path / "killed"
    process = start(project, wrapper, killed_dir)
    for kind, step in KILL_POINTS:
        kill_at(process, killed_dir, kind, step)
        process = start(project, wrapper, killed_dir, "--resume=auto")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "resumed from" in out

    def weights(output_dir):
        return torch.load(output_dir / "last.pt", weights_only=True)["model"]

    expected, actual = weights(tmp_path / "whole"), weights(killed_dir)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    metrics = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert (killed_dir / "metrics.jsonl").read_text() == metrics
