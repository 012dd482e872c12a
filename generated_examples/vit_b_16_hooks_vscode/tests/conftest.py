"""Helpers for this project's tests: tiny training runs, in this process or another; and the one
place the tests learn this project's task from: the models and data of their runs, and the metric
that chooses best.pt."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import task
import train
from model import build_model

MODEL = "vit_b_16"
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL_MODEL = "lenet"  # the quickest to train: the tiny runs that need no particular model
TORCHVISION_MODEL = "resnet18"  # the quickest of torchvision's (pretrained weights, heads)
OTHER_MODEL = "mlp"  # not SMALL_MODEL: checkpoints of another model are refused
DATASET, SIZE_OPTION = "fake", "--fake-size"  # no files; a quarter as many to validate
# A model whose --image-size must be a multiple of a number, and a size that is none.
SIZE_MULTIPLE_MODEL, NOT_A_MULTIPLE = "vit_b_16", 40
BEST_METRIC = task.BEST_METRIC  # the validation metric that chooses best.pt


def data_args(size: int) -> list[str]:
    """Options for `size` training samples drawn in code (and size // 4 to validate)."""
    return [f"--dataset={DATASET}", f"{SIZE_OPTION}={size}"]


def batch_norm_layers(model_name: str) -> tuple[str, ...]:
    """The names of the BatchNorm layers of `model_name`."""
    model = build_model(model_name, 10, 3, 32)
    norms = nn.modules.batchnorm._BatchNorm
    return tuple(name for name, module in model.named_modules() if isinstance(module, norms))


# SMALL_MODEL, each sample's gradient independent of the others in its batch: its BatchNorm layers
# (if any) frozen, so that they normalize with their running statistics (finetune.set_train_mode),
# not the batch's. 2 micro-batches or 2 processes of 4 samples then train exactly like 8 at once.
NORM_LAYERS = batch_norm_layers(SMALL_MODEL)
PER_SAMPLE = [f"--model={SMALL_MODEL}"]
if NORM_LAYERS:
    PER_SAMPLE.append("--freeze=" + ",".join(f"{name}.*" for name in NORM_LAYERS))


def tiny_args(output_dir, *extra: str) -> list[str]:
    """Arguments for a run of a few steps of 8 images; later options override earlier ones."""
    return [
        *data_args(32),
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


def train_fails(capsys, *args: str) -> tuple[int, str]:
    """Run train.main(args), which must stop with SystemExit; return (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(list(args))
    code = exit_info.value.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # sys.exit("message"): printed to stderr, exit code 1
        return 1, err + code + "\n"
    return code, err


def start_train(args: list[str], script=None, **popen) -> subprocess.Popen:
    """train.py (or a `script` standing in for it) in a process of its own, in the current
    folder, with text pipes."""
    return subprocess.Popen(
        [sys.executable, str(script or os.path.join(PROJECT, "train.py")), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def signal_at_step(monkeypatch, step: int, number: int = signal.SIGINT) -> None:
    """Send this process `number` once optimizer step `step` is done: Ctrl-C (SIGINT), or what
    SLURM sends before a requeue (SIGTERM)."""
    is_logged = train.is_logged

    def signal_after(step_number, *args):
        if step_number == step + 1:
            os.kill(os.getpid(), number)
        return is_logged(step_number, *args)

    monkeypatch.setattr(train, "is_logged", signal_after)


def read_metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


def logged_steps(output_dir) -> list[int]:
    return [line["step"] for line in read_metrics(output_dir) if line["kind"] == "step"]


def load_model_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(path_a, path_b) -> None:
    a, b = load_model_state(path_a), load_model_state(path_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different[:5]}"


def watch_forward(monkeypatch) -> list:
    """Record (input, output) of every forward pass of the model a run builds; the output as one
    tensor (torchvision's segmentation models return {"out": tensor, ...})."""
    seen = []
    build = train.build_model

    def record(module, inputs, output):
        seen.append((inputs[0], output["out"] if isinstance(output, dict) else output))

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(record)
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


@pytest.fixture(autouse=True)
def in_a_temporary_folder(tmp_path_factory, monkeypatch):
    """Runs without --output-dir write under runs/ of the current folder: keep it temporary."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# ---- a short run that learns -------------------------------------------------------------------
# LEARN trains on --dataset synthetic (shapes drawn in code) with LEARN_BATCH samples per optimizer
# step (give --batch-size): BEST_METRIC must end at LEARNED or above, far above what guessing gets.
# A loop that skips optimizer.step() or pairs the wrong labels with the images stays below it.
# LeNet on 1,024 32x32 images of 10 kinds of shape, 4 epochs of 32 steps: about 0.43 validation
# accuracy (0.38 with --augment), where guessing gets 0.1.
LEARN = [
    "--model=lenet",
    "--dataset=synthetic",
    "--synthetic-size=1024",
    "--num-classes=10",
    "--in-channels=3",
    "--image-size=32",
    "--epochs=4",
    "--optimizer=adamw",
    "--lr=0.003",
    "--log-every=1000",
]
LEARN_BATCH = 32
LEARNED = 0.25
