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


def watch_forward(monkeypatch) -> list:
    """Record (input, output) of every forward pass of the model a run builds."""
    seen = []
    build = train.build_model

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
        return model

    monkeypatch.setattr(train, "build_model", build_and_watch)
    return seen


@pytest.fixture(autouse=True)
def cuda_or_skip(request):
    """`cuda` tests skip without a GPU, and fail instead under REQUIRE_CUDA=1 (make test-cuda)."""
    if request.node.get_closest_marker("cuda") and not torch.cuda.is_available():
        if os.environ.get("REQUIRE_CUDA") == "1":
            pytest.fail("REQUIRE_CUDA=1 but no CUDA device is visible")
        pytest.skip("no CUDA device")
