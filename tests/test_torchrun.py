"""Every project trains under torchrun, not only those made with --ddp: distributed.py decides at
start-up whether the run is one process or many."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scaffold.options import NewProject
from scaffold.render import create_project


@pytest.mark.slow
def test_a_project_made_without_ddp_trains_under_torchrun(tmp_path):
    import torch

    project = tmp_path / "plain"
    create_project(NewProject(dest=project, model="lenet", ddp=False, hooks=False), git=False)
    assert not (project / "scripts").exists() and (project / "distributed.py").is_file()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "train.py", "--device=cpu", "--max-steps=3", "--epochs=1"]
    command += [
        "--workers=0",
        "--fake-size=64",
        "--batch-size=8",
        "--log-every=1",
        "--output-dir=run",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = ["best.pt", "config.json", "env.json", "last.pt", "metrics.jsonl"]
    assert sorted(os.listdir(project / "run")) == files
    lines = [
        json.loads(line) for line in (project / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [line["step"] for line in lines if line["kind"] == "step"] == [1, 2, 3]
    assert result.stdout.count("epoch 1: train_loss") == 1, "rank 0 alone prints"
    state = torch.load(project / "run" / "last.pt", weights_only=True)
    assert len(state["rng_per_rank"]) == 2, "two processes took part"
    (record,) = json.loads((project / "run" / "env.json").read_text())["invocations"]
    assert record["world_size"] == 2
