"""export.py: every format loads back and matches the model on another batch size, with its
metadata beside it; a failed export names the format (and operator) and leaves no file."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import MODEL, PROJECT, run_train
from test_data import write_image_folder
from test_predict import files_in, one_line_failure, reference_model

import checkpoint
import export
from image_pipeline import MEAN, STD, Preprocess

FORMAT_SUFFIXES = {"torchscript": ".torchscript.pt", "exported": ".pt2", "onnx": ".onnx"}


# An operator without a fake (meta) implementation, which torch.export cannot trace, and one
# with it but without an ONNX translation, which torch.export takes and ONNX cannot.
@torch.library.custom_op("export_test::untraceable", mutates_args=())
def untraceable(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@torch.library.custom_op("export_test::no_onnx", mutates_args=())
def no_onnx(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@no_onnx.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Custom(torch.nn.Module):
    def __init__(self, operator):
        super().__init__()
        self.operator = operator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{model name: last.pt} of one-step runs: lenet on a two-class image folder (so that its
    checkpoint names the classes), MODEL on FakeData."""
    root = tmp_path_factory.mktemp("export")
    write_image_folder(root / "data")
    run_train(
        root / "lenet", "--dataset=folder", f"--data-dir={root / 'data'}", "--num-classes=2",
        "--batch-size=4", "--max-steps=1", "--model=lenet",
    )  # fmt: skip
    runs = {"lenet": root / "lenet" / "last.pt"}
    if MODEL != "lenet":
        run_train(root / MODEL, f"--model={MODEL}", "--max-steps=1")
        runs[MODEL] = root / MODEL / "last.pt"
    return runs


def needs_onnx(fmt: str) -> None:
    if fmt == "onnx":
        for name in export.ONNX_PACKAGES:
            pytest.importorskip(name, reason=f"needs {name}: pip install -e '.[export]'")


def normalized_batch(size: int, channels: int, image_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    shape = (size, channels, image_size, image_size)
    return Preprocess()(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))


@torch.no_grad()
def run_exported(fmt: str, path, metadata: dict, batch: torch.Tensor) -> torch.Tensor:
    """The exported file, loaded as a deployment would load it, on `batch`."""
    if fmt == "torchscript":
        with export.torchscript_warnings_off():
            return torch.jit.load(str(path))(batch)
    if fmt == "exported":
        return torch.export.load(str(path)).module()(batch)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {metadata["input"]["name"]: batch.numpy()}
    return torch.from_numpy(session.run([metadata["output"]["name"]], inputs)[0])


# Every format for lenet; the PyTorch formats for MODEL too (its ONNX export is checked with
# every catalog model's by scaffold's own tests, and takes long for the large ones).
CASES = [("lenet", fmt) for fmt in FORMAT_SUFFIXES]
CASES += [(MODEL, fmt) for fmt in ("torchscript", "exported") if MODEL != "lenet"]


@pytest.mark.parametrize("name, fmt", CASES)
def test_each_format_loads_back_and_matches_the_model(trained, capsys, name, fmt):
    needs_onnx(fmt)
    path = trained[name]
    export.main([str(path), f"--format={fmt}"])
    output = path.with_name(f"last{FORMAT_SUFFIXES[fmt]}")  # beside the checkpoint
    metadata = json.loads(output.with_name(output.name + ".json").read_text())
    assert metadata["max_abs_difference"] <= 1e-4
    assert f"wrote {output} and {output}.json" in capsys.readouterr().out
    # 5 images: neither the batch size traced (2) nor the one export.py checked (3).
    batch = normalized_batch(5, metadata["in_channels"], metadata["image_size"])
    with torch.no_grad():
        expected = reference_model(path)(batch)
    logits = run_exported(fmt, output, metadata, batch)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-4
    assert not [item.name for item in path.parent.iterdir() if ".tmp-" in item.name]


def test_the_metadata_says_how_to_feed_the_model(trained, tmp_path):
    output = tmp_path / "model.pt2"
    export.main([str(trained["lenet"]), "--format=exported", f"--output={output}"])
    metadata = json.loads((tmp_path / "model.pt2.json").read_text())
    options = checkpoint.load_checkpoint(trained["lenet"])["args"]
    channels, size = options["in_channels"], options["image_size"]
    assert metadata["format"] == "exported" and metadata["model"] == "lenet"
    assert metadata["checkpoint"] == str(trained["lenet"].resolve())
    assert metadata["class_names"] == ["cat", "dog"]
    assert (metadata["in_channels"], metadata["image_size"]) == (channels, size)
    assert metadata["input"]["shape"] == ["batch", channels, size, size]
    assert metadata["output"]["shape"] == ["batch", 2]
    assert metadata["input"]["mean"] == [MEAN] * channels
    assert metadata["input"]["std"] == [STD] * channels
    # The recipe it states (uint8 / 255, then (x - mean) / std) is what the model was given.
    pixels = torch.randint(0, 256, (1, channels, size, size), dtype=torch.uint8)
    mean = torch.tensor(metadata["input"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(metadata["input"]["std"]).view(1, -1, 1, 1)
    assert torch.allclose((pixels / 255 - mean) / std, Preprocess()(pixels), atol=1e-6)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model.pt2", "model.pt2.json"]


@pytest.mark.parametrize("fmt", ["torchscript", "exported"])
def test_a_failed_verification_leaves_nothing_behind(trained, tmp_path, capsys, monkeypatch, fmt):
    load = export.load_exported
    monkeypatch.setattr(
        export, "load_exported", lambda *args: lambda batch: load(*args)(batch) + 1e-3
    )
    output = tmp_path / f"model{FORMAT_SUFFIXES[fmt]}"
    code, line = one_line_failure(
        capsys, export.main, str(trained["lenet"]), f"--format={fmt}", f"--output={output}"
    )
    assert code == 1
    assert line.startswith(
        f"error: the {fmt} export differs from the model by 1.00e-03 on a batch of 3 (logits up to "
    )
    assert line.endswith("), more than --tolerance 0.0001: nothing written")
    assert list(tmp_path.iterdir()) == []
    # A difference the user accepts passes.
    export.main(
        [str(trained["lenet"]), f"--format={fmt}", f"--output={output}", "--tolerance=2e-3"]
    )
    assert output.is_file() and output.with_name(output.name + ".json").is_file()


@pytest.mark.parametrize(
    "fmt, operator, message",
    [
        ("exported", untraceable, "operator export_test::untraceable failed (There was no fake"),
        ("onnx", no_onnx, "operator export_test.no_onnx failed (No ONNX function found for"),
    ],
)
def test_an_operator_the_format_cannot_take_is_named(tmp_path, fmt, operator, message):
    needs_onnx(fmt)
    output = tmp_path / f"custom{FORMAT_SUFFIXES[fmt]}"
    options = {"in_channels": 3, "image_size": 8, "num_classes": 3}  # Custom's input and output
    with pytest.raises(export.ExportError) as failed:
        export.export_verified(Custom(operator).eval(), fmt, str(output), options)
    assert str(failed.value).startswith(f"cannot export to {fmt}: {message}")
    assert "\n" not in str(failed.value)
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_onnxruntime_says_how_to_install_it(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    output = tmp_path / "model.onnx"
    code, line = one_line_failure(
        capsys, export.main, str(trained["lenet"]), "--format=onnx", f"--output={output}"
    )
    assert code == 1
    assert line.startswith("error: ONNX export needs ")
    assert "onnxruntime" in line and line.endswith("pip install -e '.[export]'")
    assert list(tmp_path.iterdir()) == []


def test_a_file_not_written_by_train_is_one_line(trained, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save({"model": checkpoint.load_checkpoint(trained["lenet"])["model"]}, weights)
    code, line = one_line_failure(capsys, export.main, str(weights), "--format=exported")
    assert code == 1
    assert line.startswith(f"error: {weights} is not a checkpoint written by train.py")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["weights.pt"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{lenet}"], "the following arguments are required: --format"),
        (["{lenet}", "--format=tflite"], "argument --format: invalid choice: 'tflite'"),
        (["{missing}", "--format=onnx"], "checkpoint {missing}: no such file"),
        (["{lenet}", "--format=exported", "--output={lenet}"], "--output {lenet} is the checkp"),
        (["{lenet}", "--format=exported", "--output={missing}/m.pt2"], "--output {missing}/m.pt2"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(trained, tmp_path, capsys, arguments, message):
    names = {"lenet": trained["lenet"], "missing": tmp_path / "missing"}
    code, line = one_line_failure(
        capsys, export.main, *(argument.format(**names) for argument in arguments)
    )
    assert code == 2
    assert line.startswith(f"error: {message.format(**names)}")
    assert line.endswith(" (see python export.py --help)")


@pytest.mark.parametrize(
    "output, clash",
    [
        ("last.pt", "would replace last.pt of the run in {run}"),
        ("best.pt", "would replace best.pt of the run in {run}"),
        ("config", "would replace config.json of the run in {run}"),  # beside it: config.json
        ("metrics.jsonl", "would replace metrics.jsonl of the run in {run}"),
        ("step_00000005.pt", "would be taken for one of the run's files (step_*.pt) in {run}"),
    ],
)
def test_an_output_that_would_replace_a_file_of_the_run_is_refused(
    trained, tmp_path, capsys, output, clash
):
    run = tmp_path / "run"
    shutil.copytree(trained["lenet"].parent, run)
    before = files_in(run)
    source = run / ("last.pt" if output == "best.pt" else "best.pt")
    arguments = [str(source), "--format=torchscript", f"--output={run}/{output}"]
    code, line = one_line_failure(capsys, export.main, *arguments)
    assert code == 2
    assert line == (
        f"error: --output {run}/{output} {clash.format(run=run)}: choose another path "
        "(see python export.py --help)"
    )
    assert files_in(run) == before  # nothing written, nothing replaced


def test_an_output_folder_gets_the_default_name_inside_it(trained, tmp_path, capsys):
    export.main([str(trained["lenet"]), "--format=torchscript", f"--output={tmp_path}"])
    assert sorted(item.name for item in tmp_path.iterdir()) == [
        "last.torchscript.pt",
        "last.torchscript.pt.json",
    ]
    assert f"wrote {tmp_path / 'last.torchscript.pt'} and " in capsys.readouterr().out
    # The run's own folder is a folder too: the export goes beside the checkpoint.
    run = tmp_path / "run"
    shutil.copytree(trained["lenet"].parent, run)
    before = files_in(run)
    export.main([str(run / "best.pt"), "--format=exported", f"--output={run}/"])
    assert files_in(run).keys() - before.keys() == {"best.pt2", "best.pt2.json"}
    assert all(files_in(run)[name] == data for name, data in before.items())


def test_export_runs_as_a_script_without_warnings(trained, tmp_path):
    output = tmp_path / "model.pt"
    command = [sys.executable, "export.py", str(trained["lenet"]), "--format=torchscript"]
    command.append(f"--output={output}")
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # TorchScript's deprecation warnings are not the user's business
    assert done.stdout.startswith(f"TorchScript (scripted): wrote {output} and {output}.json")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]
