"""predict.py: a checkpoint's model on image files through the validation pipeline; CSV and JSON
output; class names; unreadable images and wrong inputs each stop with one line."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import MODEL, PROJECT, run_train
from PIL import Image
from test_data import write_image_folder

import checkpoint
import predict
from image_pipeline import Preprocess, image_transform
from model import build_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-class image folder, one-step runs on it ({model name: last.pt} for lenet and
    MODEL), and a lenet run on FakeData, whose checkpoint names no classes."""
    root = tmp_path_factory.mktemp("predict")
    write_image_folder(root / "data")
    trained = {}
    for name in sorted({"lenet", MODEL}):
        run_train(
            root / name, "--dataset=folder", f"--data-dir={root / 'data'}", "--num-classes=2",
            "--batch-size=4", "--max-steps=1", f"--model={name}",
        )  # fmt: skip
        trained[name] = root / name / "last.pt"
    run_train(root / "fake", "--model=lenet", "--max-steps=1")
    trained["fake"] = root / "fake" / "last.pt"
    return root / "data", trained


def reference_model(path) -> torch.nn.Module:
    """The checkpoint's model in eval mode, built here by hand from its options."""
    state = checkpoint.load_checkpoint(path)
    options = state["args"]
    shape = options["num_classes"], options["in_channels"], options["image_size"]
    model = build_model(options["model"], *shape)
    checkpoint.load_weights(model, state, path)
    return model.eval()


@torch.no_grad()
def reference_probabilities(path, images: list[str]) -> torch.Tensor:
    """What validation would compute for these files: all of them in one batch, through
    image_transform and Preprocess, into the model in eval mode."""
    options = checkpoint.load_checkpoint(path)["args"]
    channels = options["in_channels"]
    transform = image_transform(channels, channels, options["image_size"])
    mode = "L" if channels == 1 else "RGB"
    batch = torch.stack([transform(Image.open(image).convert(mode)) for image in images])
    return reference_model(path)(Preprocess()(batch)).softmax(dim=1)


def one_line_failure(capsys, main, *args: str) -> tuple[int, str]:
    """main(args) must stop with one line on stderr and no traceback: (exit code, that line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    code, err = stopped.value.code, capsys.readouterr().err
    if isinstance(code, str):  # sys.exit(message): Python prints it and exits with 1
        code, err = 1, err + code + "\n"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err.strip()


def files_in(folder) -> dict[str, bytes]:
    """Every file under `folder`: {path relative to it: its bytes}."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


def png_paths(folder) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*.png"))


@pytest.mark.parametrize("name", sorted({"lenet", MODEL}))
def test_predictions_are_the_models_on_the_validation_pipeline(runs, capsys, name):
    data, trained = runs
    # Batches of 3 for 8 images: the last one is short, and the paths must stay with their rows.
    results = predict.main([str(trained[name]), str(data), "--batch-size=3", "--device=cpu"])
    images = png_paths(data)
    assert [result["path"] for result in results] == images
    expected = reference_probabilities(trained[name], images)
    top1 = [result["predictions"][0]["index"] for result in results]
    assert top1 == expected.argmax(dim=1).tolist()
    for result, probabilities in zip(results, expected, strict=True):
        assert [p["index"] for p in result["predictions"]] == probabilities.argsort(
            descending=True
        ).tolist()
        for prediction in result["predictions"]:
            assert prediction["probability"] == pytest.approx(
                probabilities[prediction["index"]].item(), abs=1e-5
            )
    first = results[0]["predictions"]
    line = f"{images[0]}: {first[0]['class']} {first[0]['probability']:.4f}, "
    line += f"{first[1]['class']} {first[1]['probability']:.4f}"
    assert capsys.readouterr().out.splitlines()[0] == line


def test_class_names_come_from_the_checkpoint_or_are_indices(runs, capsys):
    data, trained = runs
    results = predict.main([str(trained["lenet"]), str(data / "cat" / "0.png"), "--workers=0"])
    predictions = results[0]["predictions"]
    assert [p["class"] for p in predictions] == [["cat", "dog"][p["index"]] for p in predictions]
    assert sorted(p["class"] for p in predictions) == ["cat", "dog"]
    options = checkpoint.load_checkpoint(trained["fake"])["args"]
    results = predict.main([str(trained["fake"]), str(data / "cat" / "0.png"), "--workers=0"])
    predictions = results[0]["predictions"]
    assert len(predictions) == min(5, options["num_classes"])  # the default --top-k
    assert [p["class"] for p in predictions] == [str(p["index"]) for p in predictions]
    results = predict.main([str(trained["fake"]), str(data / "cat" / "0.png"), "--top-k=1"])
    assert len(results[0]["predictions"]) == 1


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_the_output_file_holds_exactly_the_predictions(runs, tmp_path, capsys, suffix):
    data, trained = runs
    output = tmp_path / f"predictions{suffix}"
    results = predict.main([str(trained["lenet"]), str(data), f"--output={output}"])
    assert capsys.readouterr().out.endswith(f"wrote 8 predictions to {output}\n")
    if suffix == ".json":
        assert json.loads(output.read_text()) == results
        return
    with open(output, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["path", "rank", "class", "index", "probability"]
    expected = [
        [result["path"], str(rank), p["class"], str(p["index"]), repr(p["probability"])]
        for result in results
        for rank, p in enumerate(result["predictions"], start=1)
    ]
    assert rows[1:] == expected
    assert [float(row[4]) for row in rows[1:3]] == [
        p["probability"] for p in results[0]["predictions"]
    ]


def test_folders_globs_and_files_each_image_once(runs, tmp_path, capsys):
    data, trained = runs
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "cat" / "deeper").mkdir()
    shutil.copy(data / "dog" / "0.png", tmp_path / "data" / "cat" / "deeper" / "x.PNG")
    paths = [str(tmp_path / "data" / "cat"), str(tmp_path / "data" / "*" / "1.png")]
    paths.append(str(tmp_path / "data" / "cat" / "0.png"))  # already found in the folder
    results = predict.main([str(trained["lenet"]), *paths, "--top-k=1"])
    cat = tmp_path / "data" / "cat"
    expected = [cat / f"{index}.png" for index in range(4)]  # a folder's files, sorted
    expected += [cat / "deeper" / "x.PNG", tmp_path / "data" / "dog" / "1.png"]
    assert [result["path"] for result in results] == [str(path) for path in expected]


def test_an_unreadable_image_is_named_or_skipped_and_counted(runs, tmp_path, capsys):
    data, trained = runs
    shutil.copytree(data, tmp_path / "data")
    broken = tmp_path / "data" / "dog" / "2.png"
    broken.write_bytes(broken.read_bytes()[:60])
    arguments = [str(trained["lenet"]), str(tmp_path / "data")]
    code, line = one_line_failure(capsys, predict.main, *arguments)
    assert code == 1
    assert line.startswith(f"error: cannot read image {broken} (")
    assert line.endswith("): fix or delete it, or pass --skip-bad-images")
    # A worker process reads the images here: it must report the file, not raise.
    results = predict.main([*arguments, "--skip-bad-images", "--workers=1"])
    assert [result["path"] for result in results] == [
        path for path in png_paths(tmp_path / "data") if path != str(broken)
    ]
    assert capsys.readouterr().err == f"warning: skipped 1 unreadable image(s): {broken}\n"


def test_a_file_not_written_by_train_is_one_line(runs, tmp_path, capsys):
    data, trained = runs
    weights = tmp_path / "weights.pt"
    torch.save(checkpoint.load_checkpoint(trained["lenet"])["model"], weights)
    code, line = one_line_failure(capsys, predict.main, str(weights), str(data))
    assert code == 1
    assert line == (
        f"error: {weights} is not a checkpoint written by train.py (it lacks the model weights or "
        "the options that built them): pass a last.pt, best.pt or step_*.pt of a run"
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{missing}", "{data}"], "checkpoint {missing}: no such file"),
        (["{lenet}", "{data}", "--output=p.txt"], "--output p.txt: name a .csv or a .json file"),
        (["{lenet}", "{data}", "--output={empty}/no/p.csv"], "--output {empty}/no/p.csv: its fo"),
        (["{lenet}", "{data}/nothing*"], "{data}/nothing*: no such file or folder"),
        (["{lenet}", "{empty}"], "no images in {empty} (files ending .jpg"),
        (["{lenet}", "{data}", "--top-k=0"], "argument --top-k: must be at least 1, got 0"),
        (["{lenet}", "{data}", "--device=tpu"], "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(runs, tmp_path, capsys, arguments, message):
    data, trained = runs
    (tmp_path / "empty").mkdir()
    names = {"data": data, "lenet": trained["lenet"], "missing": tmp_path / "missing.pt"}
    names["empty"] = tmp_path / "empty"
    code, line = one_line_failure(
        capsys, predict.main, *(argument.format(**names) for argument in arguments)
    )
    assert code == 2
    assert line.startswith(f"error: {message.format(**names)}")
    assert line.endswith(" (see python predict.py --help)")


@pytest.mark.parametrize("name", ["config.json", "env.json"])
def test_an_output_that_would_replace_a_file_of_the_run_is_refused(runs, tmp_path, capsys, name):
    data, trained = runs
    run = tmp_path / "run"
    shutil.copytree(trained["lenet"].parent, run)
    before = files_in(run)
    arguments = [str(run / "last.pt"), str(data), f"--output={run / name}"]
    code, line = one_line_failure(capsys, predict.main, *arguments)
    assert code == 2
    assert line == (
        f"error: --output {run / name} would replace {name} of the run in {run}: "
        "choose another path (see python predict.py --help)"
    )
    assert files_in(run) == before  # nothing written, nothing replaced


def test_an_output_folder_gets_predictions_csv_inside_it(runs, tmp_path, capsys):
    data, trained = runs
    predict.main([str(trained["lenet"]), str(data), f"--output={tmp_path}"])
    output = tmp_path / "predictions.csv"
    assert capsys.readouterr().out.endswith(f"wrote 8 predictions to {output}\n")
    assert [item.name for item in tmp_path.iterdir()] == ["predictions.csv"]
    assert output.read_text().startswith("path,rank,class,index,probability")


def test_amp_runs_the_model_in_bfloat16(runs, monkeypatch, capsys):
    data, trained = runs
    dtypes = []
    build = predict.model_from_options

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        return model

    monkeypatch.setattr(predict, "model_from_options", build_and_watch)
    image = str(data / "cat" / "0.png")
    plain = predict.main([str(trained["lenet"]), image])
    mixed = predict.main([str(trained["lenet"]), image, "--amp"])
    assert dtypes == [torch.float32, torch.bfloat16]
    for results in (plain, mixed):
        assert sum(p["probability"] for p in results[0]["predictions"]) == pytest.approx(1, 1e-2)


def test_predict_runs_as_a_script(runs):
    data, trained = runs
    glob = str(data / "*" / "3.png")
    command = [sys.executable, "predict.py", str(trained["lenet"]), glob, "--top-k=1"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(data / "cat" / "3.png"),
        str(data / "dog" / "3.png"),
    ]
    assert all(line.split(": ")[1].split()[0] in ("cat", "dog") for line in lines)
