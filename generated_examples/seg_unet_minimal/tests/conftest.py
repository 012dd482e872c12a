"""Helpers for this project's tests: tiny training runs, in this process or another; and the one
place the tests learn this project's task from: the models and data of their runs, and the metric
that chooses best.pt."""

import hashlib
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
from model import model_from_options

MODEL = "unet"
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL_MODEL = "unet"  # the quickest to train: the tiny runs that need no particular model
TORCHVISION_MODEL = "lraspp_mobilenet_v3_large"  # the quickest of torchvision's (pretrained, heads)
OTHER_MODEL = TORCHVISION_MODEL  # not SMALL_MODEL: checkpoints of another model are refused
DATASET, SIZE_OPTION = "synthetic", "--synthetic-size"  # no files; a quarter as many to validate
# A model whose --image-size must be a multiple of a number, and a size that is none.
SIZE_MULTIPLE_MODEL, NOT_A_MULTIPLE = "unet", 20
FILES_DATASET = "folder"  # a dataset read from --data-dir
BEST_METRIC, BEST_MODE = task.BEST_METRIC, task.BEST_MODE  # the metric that chooses best.pt


def needs_per_sample_loss(test):
    """Marks a test that needs a step's loss to be the mean of its samples' own losses (every
    model of this task's has one)."""
    return test


def needs_inputs_alone(test):
    """Marks a test that calls the model on a batch of inputs alone (as every model here takes)."""
    return test


def needs_one_head(test):
    """Marks a test of a head of one output per class (as every model here has)."""
    return test


def needs_eval_mode_validation(test):
    """Marks a test that every layer validates in eval mode (as every model here does)."""
    return test


MODEL_SHAPE = {"num_classes": 10, "in_channels": 3, "image_size": 32}  # of small_model()
HOOKED_MODELS = [SMALL_MODEL, TORCHVISION_MODEL]  # the models whose activations the hooks check
# Options that make every training step draw random numbers: the crops and flips of --augment.
# A resume that lost a process's random state would train on other images after it.
RANDOM_EVERY_STEP = ["--augment"]
GPU_LAYOUT = ["--channels-last"]  # the memory layout the GPU runs ask for
METRIC_TOLERANCE = 0  # BEST_METRIC is counted: two processes validate exactly like one
PREDICT_INPUT = "IMAGES..."  # what predict.py takes after the checkpoint, as a run's end shows it
SHAPE_ARGS = ["--num-classes=10", "--in-channels=3", "--image-size=32"]  # MODEL_SHAPE, as options
# An option that changes the shape of the weights of a tiny_args run: how options.continue_run
# names the change, and how a checkpoint of the tiny run refuses a run with it.
RESHAPE = "--num-classes=3"
RESHAPE_WAS, RESHAPE_NOW = "--num-classes 10", "--num-classes 3"
MISFIT = "was saved with --num-classes 10, this run uses 3"


def data_options(size: int) -> dict:
    """train.py's options (as names of config.json) for `size` training samples drawn in code,
    and size // 4 to validate."""
    return {"dataset": DATASET, SIZE_OPTION.removeprefix("--").replace("-", "_"): size}


def data_args(size: int) -> list[str]:
    """Options for `size` training samples drawn in code (and size // 4 to validate)."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in data_options(size).items()]


def small_model(name: str = SMALL_MODEL) -> nn.Module:
    """Model `name` as train.py builds it for MODEL_SHAPE, without pretrained weights."""
    return model_from_options({"model": name, **MODEL_SHAPE}, pretrained=False)


def model_input(batch_size: int) -> torch.Tensor:
    """A batch as small_model() takes it (task.example_input): images, or token ids."""
    return task.example_input({"model": SMALL_MODEL, **MODEL_SHAPE}, batch_size, seed=1)


def batch_norm_layers(model_name: str) -> tuple[str, ...]:
    """The names of the BatchNorm layers of `model_name`."""
    model = small_model(model_name)
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
    """Arguments for a run of a few steps of 8 samples; later options override earlier ones."""
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


def torchrun(processes: int, *args: str, script=None, env=None, timeout: float = 120):
    """train.py (or a `script` standing in for it) started by torchrun in `processes` processes in
    the project folder, one thread each; stdout and stderr together. Never leaves one running."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", str(script or os.path.join(PROJECT, "train.py"))]
    process = subprocess.Popen(
        [*command, *args],
        cwd=PROJECT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


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


def files_of(folder) -> dict[str, str]:
    """{name: sha256} of every file under `folder`."""
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(folder)
        for name in names
    }


EARLIER = "EARLIER"  # stands for earlier_run's folder in the options of assert_refused_cleanly


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """The folder of a finished tiny run, for options that name an earlier run."""
    folder = tmp_path_factory.mktemp("earlier")
    run_train(folder, f"--model={SMALL_MODEL}", "--max-steps=2")
    return folder


def assert_refused_cleanly(tmp_path, capsys, earlier_run, options, code: int, message: str):
    """train.py with tiny_args and `options` (EARLIER: earlier_run's folder) stops with exit
    `code` and one line on stderr that starts "error: " + `message`, and writes nothing: neither
    its output folder, nor in the current folder, nor in the earlier run."""
    (tmp_path / "notes.txt").write_text("not a folder")
    os.chdir(tmp_path)
    before = files_of(earlier_run)
    output_dir = tmp_path / "new-run"
    options = [option.replace(EARLIER, str(earlier_run)) for option in options]
    got_code, err = train_fails(capsys, *tiny_args(output_dir, f"--model={SMALL_MODEL}", *options))
    assert got_code == code
    assert err.startswith("error: " + message.replace(EARLIER, str(earlier_run))), err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err
    assert files_of(earlier_run) == before
    assert not output_dir.exists()
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


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
    build = train.model_from_options

    def record(module, inputs, output):
        seen.append((inputs[0], output["out"] if isinstance(output, dict) else output))

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(record)
        return model

    monkeypatch.setattr(train, "model_from_options", build_and_watch)
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
# LEARN trains on --dataset synthetic (drawn in code) with LEARN_BATCH samples per optimizer step
# (give --batch-size): BEST_METRIC must end at LEARNED or better (has_learned), far from what
# guessing gets. A loop that skips optimizer.step() or pairs the wrong targets with the inputs
# does not get there.
# A U-Net on 160 32x32 images of 2 kinds of shape, 3 epochs of 10 steps: about 0.72 mean IoU,
# where predicting background everywhere gets 0.29.
LEARN = [
    "--model=unet",
    "--dataset=synthetic",
    "--synthetic-size=160",
    "--num-classes=3",
    "--in-channels=3",
    "--image-size=32",
    "--epochs=3",
    "--optimizer=adamw",
    "--lr=0.003",
    "--log-every=1000",
]
LEARN_BATCH = 16
LEARNED = 0.5


def has_learned(value: float) -> bool:
    """Whether BEST_METRIC `value` is LEARNED or better: above it, or below a loss."""
    return value >= LEARNED if BEST_MODE == "max" else value <= LEARNED
