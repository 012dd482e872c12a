"""Helpers for this project's tests: tiny training runs on FakeData, in this process."""

import json
import os

import pytest
import torch

import train

MODEL = "lenet"


def tiny_args(output_dir, *extra: str) -> list[str]:
    """Arguments for a run of a few steps of 8 images; later options override earlier ones."""
    return [
        "--dataset=fake",
        "--fake-size=32",
        "--batch-size=8",
        "--workers=0",
        "--epochs=1",
        "--device=cpu",
        "--log-every=1",
        f"--output-dir={output_dir}",
        *extra,
    ]


def run_train(output_dir, *extra: str) -> dict:
    return train.main(tiny_args(output_dir, *extra))


def read_metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


def load_model_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(autouse=True)
def cuda_or_skip(request):
    """`cuda` tests skip without a GPU, and fail instead under REQUIRE_CUDA=1 (make test-cuda)."""
    if request.node.get_closest_marker("cuda") and not torch.cuda.is_available():
        if os.environ.get("REQUIRE_CUDA") == "1":
            pytest.fail("REQUIRE_CUDA=1 but no CUDA device is visible")
        pytest.skip("no CUDA device")
