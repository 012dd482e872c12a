"""`scaffold new`, `--help`, `--version` and `list` through the real entry point: exit codes,
one-line errors, and nothing written when anything goes wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from helpers import run_cli, tree_hash
from typer.testing import CliRunner

import scaffold
from scaffold import render
from scaffold.catalog import MODELS
from scaffold.cli import app


def test_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("new", "list", "add", "update", "check-update", "doctor"):
        assert command in result.output


def test_version(capsys):
    assert run_cli(capsys, "--version") == (0, f"scaffold {scaffold.__version__}\n", "")


def test_list_models_names_every_model():
    result = CliRunner().invoke(app, ["list", "models"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(MODELS)


def test_importing_the_cli_loads_neither_torch_nor_copier():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import scaffold.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert "typer" in imported
    assert not imported & {"torch", "copier", "torchvision"}


def test_new_writes_a_committed_project_with_every_answer(tmp_path, capsys):
    dest = tmp_path / "myproj"
    code, out, err = run_cli(capsys, "new", str(dest), "--model", "lenet", "--num-classes", "4")
    assert (code, err) == (0, "")
    assert "      create  train.py" in out.splitlines()
    answers = yaml.safe_load((dest / ".copier-answers.yml").read_text())
    expected = {"project_name": "myproj", "model": "lenet", "num_classes": 4, "in_channels": 3}
    expected |= {"image_size": 32, "dataset": "fake", "ddp": False, "vscode": True, "hooks": True}
    expected["template_version"] = scaffold.__version__
    assert {key: answers[key] for key in expected} == expected
    assert 'default="lenet"' in (dest / "train.py").read_text()
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
    log = subprocess.run(["git", "log", "--oneline"], cwd=dest, capture_output=True, text=True)
    assert f"Generate myproj with scaffold {scaffold.__version__}" in log.stdout


def test_dry_run_prints_the_files_and_writes_nothing(tmp_path, capsys):
    before = tree_hash(tmp_path)
    code, out, _ = run_cli(capsys, "new", str(tmp_path / "p"), "--dry-run", "--no-hooks")
    assert code == 0
    assert "would create  train.py" in out and "hooks/__init__.py" not in out
    assert tree_hash(tmp_path) == before


def test_no_git_leaves_no_repository(tmp_path, capsys):
    assert run_cli(capsys, "new", str(tmp_path / "p"), "--no-git")[0] == 0
    assert not (tmp_path / "p" / ".git").exists()


def test_force_renders_into_a_non_empty_directory_and_keeps_other_files(tmp_path, capsys):
    dest = tmp_path / "p"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "new", str(dest))
    assert code == 2 and err == f"error: {dest} is not empty: choose another DEST or pass --force\n"
    assert run_cli(capsys, "new", str(dest), "--force", "--no-git")[0] == 0
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "train.py").is_file()


BAD_INPUTS = [
    (["1abc"], "invalid project name '1abc'"),
    (["a b"], "invalid project name 'a b'"),
    (["class"], "it is a Python keyword"),
    (["x/.."], "invalid project name '..'"),
    (["p", "--model", "resnet"], "unknown model 'resnet'; choose one of: lenet, mlp,"),
    (["p", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: fake,"),
    (["p", "--num-classes", "1"], "--num-classes must be between 2 and 1000000, got 1"),
    (["p", "--in-channels", "0"], "--in-channels must be between 1 and 64, got 0"),
    (["p", "--model", "lenet", "--image-size", "8"], "needs --image-size of at least 16, got 8"),
    (["p", "--model", "vit_b_16", "--image-size", "40"], "must be a multiple of 16, got 40"),
    (["p", "--image-size", "big"], "Invalid value for '--image-size'"),
    (["p", "--bogus"], "No such option: --bogus"),
    (["p", "--interactive"], "--interactive needs a terminal"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    before = tree_hash(tmp_path)
    code, out, err = run_cli(capsys, "new", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in out + err
    assert tree_hash(tmp_path) == before


def test_dest_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "p").write_text("")
    code, _, err = run_cli(capsys, "new", str(tmp_path / "p"))
    assert (code, err) == (
        2,
        f"error: {tmp_path / 'p'} exists and is not a directory: choose another DEST\n",
    )


def test_an_empty_name_is_refused(capsys):
    code, _, err = run_cli(capsys, "new", "")
    assert code == 2 and "the project name is empty" in err


def test_missing_git_is_a_runtime_error_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    code, _, err = run_cli(capsys, "new", str(tmp_path / "p"))
    assert (code, err) == (1, "error: git is not installed: install it, or pass --no-git\n")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_rendering_leaves_no_directory_behind(tmp_path, capsys, monkeypatch):
    def half_render(data, into, interactive):
        (into / "tests").mkdir(parents=True)
        (into / "train.py").write_text("partial")
        raise render.ScaffoldError("rendering failed: injected")

    monkeypatch.setattr(render, "copier_copy", half_render)
    dest = tmp_path / "deep" / "er" / "p"
    code, _, err = run_cli(capsys, "new", str(dest))
    assert (code, err) == (1, "error: rendering failed: injected\n")
    assert list(tmp_path.iterdir()) == []


def test_a_git_failure_after_rendering_leaves_no_directory_behind(tmp_path, capsys, monkeypatch):
    def failing_git(args, cwd):
        raise render.ScaffoldError("git commit failed: injected")

    monkeypatch.setattr(render, "run_git", failing_git)
    code, _, err = run_cli(capsys, "new", str(tmp_path / "p"))
    assert (code, err) == (1, "error: git commit failed: injected\n")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_destination_is_a_runtime_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render.os, "access", lambda path, mode: False)  # as if not root
    code, _, err = run_cli(capsys, "new", str(tmp_path / "p"))
    message = f"error: cannot write to {tmp_path}: Permission denied; choose another DEST\n"
    assert (code, err) == (1, message)


def test_system_directories_are_refused(capsys):
    for dest in ("/etc/p", "/usr/local/lib/p", "/proc/p", "/sys/x/y/p"):
        code, _, err = run_cli(capsys, "new", dest)
        assert code == 2 and err.startswith("error: refusing to write into the system directory")
