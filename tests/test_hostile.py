"""Hostile and mistaken input to `new`, `add` and `update`: each gets one line, exit code 1 or 2,
no traceback, and leaves every file exactly as it was."""

from __future__ import annotations

import subprocess

import pytest
from helpers import run_cli, tree_hash

from scaffold.options import NewProject
from scaffold.render import create_project

NEW = [
    (["it's"], 2, 'invalid project name "it\'s"'),
    (['a"b'], 2, "invalid project name 'a\"b'"),
    (["a\nb"], 2, "invalid project name 'a\\nb'"),
    (["abc\n"], 2, "invalid project name 'abc\\n'"),  # a regex $ would let this through
    (["{{ 7*7 }}"], 2, "invalid project name '{{ 7*7 }}'"),
    (["{% raw %}x"], 2, "invalid project name '{% raw %}x'"),
    (["${HOME}"], 2, "invalid project name '${HOME}'"),
    (["$(touch pwned)"], 2, "invalid project name '$(touch pwned)'"),
    (["\u0430bc"], 2, "invalid project name '\u0430bc'"),  # Cyrillic a
    (["\uff50roj"], 2, "invalid project name '\uff50roj'"),  # fullwidth p
    (["import"], 2, "it is a Python keyword"),
    (["match"], 2, "it is a Python keyword"),
    (["a" * 300], 2, "the project name is longer than 64 characters"),
    (["/etc/evil"], 2, "refusing to write into the system directory /etc"),
    (["/proc/self/evil"], 2, "refusing to write into the system directory /proc"),
    (["existing_file"], 2, "exists and is not a directory"),
    (["p", "--model", ""], 2, "unknown model ''"),
    (["p", "--model", "resnet18; rm -rf /"], 2, "unknown model 'resnet18; rm -rf /'"),
    (["p", "--dataset", "../../etc"], 2, "unknown dataset '../../etc'"),
    (["p", "--num-classes", "-5"], 2, "--num-classes must be between 2 and 1000000, got -5"),
    (["p", "--num-classes", "1e3"], 2, "Invalid value for '--num-classes'"),
    (["p", "--image-size", "99999999999"], 2, "--image-size must be between 1 and 4096"),
    (["p", "--in-channels", "3.5"], 2, "Invalid value for '--in-channels'"),
    # Click words this one differently from version to version: "No such option: --gpu".
    (["p", "--gpu"], 2, ("No such option", "--gpu")),
    (["p", "--ddp=maybe"], 2, "Option '--ddp' does not take a value"),
    ([], 2, "Missing argument 'DEST'"),
    # Names that would shadow what the project imports: the distributions it depends on or
    # offers as extras, its own modules, and Python's standard modules (any case, '-' as '_').
    (
        ["torch"],
        2,
        "invalid project name 'torch': it would shadow the torch package the project depends on;"
        " choose another name",
    ),
    (["TorchVision"], 2, "'TorchVision': it would shadow the torchvision package the project"),
    (["PyYAML"], 2, "'PyYAML': it would shadow the pyyaml package the project depends on;"),
    (["yaml"], 2, "'yaml': it would shadow the yaml package the project depends on;"),
    (["Pillow"], 2, "'Pillow': it would shadow the pillow package the project depends on;"),
    (["tensorboard"], 2, "it would shadow the tensorboard package the project depends on"),
    (["onnxruntime"], 2, "it would shadow the onnxruntime package the project depends on"),
    (["pytest"], 2, "it would shadow the pytest package the project depends on"),
    (["scaffold"], 2, "'scaffold': it would shadow the scaffold package that writes it;"),
    (
        ["train"],
        2,
        "invalid project name 'train': it would shadow the project's own train module;"
        " choose another name",
    ),
    (["Model"], 2, "'Model': it would shadow the project's own model module;"),
    (["hooks"], 2, "it would shadow the project's own hooks module"),
    (["tests"], 2, "it would shadow the project's own tests module"),
    (["conftest"], 2, "it would shadow the project's own conftest module"),
    (
        ["json"],
        2,
        "invalid project name 'json': it would shadow Python's standard json module;"
        " choose another name",
    ),
    (["Sys"], 2, "'Sys': it would shadow Python's standard sys module; choose another name"),
    (["py-compile"], 2, "'py-compile': it would shadow Python's standard py_compile module;"),
    (["logging"], 2, "it would shadow Python's standard logging module"),
]

ADD = [
    (["hook", "{{7*7}}"], 2, "invalid hook name '{{7*7}}'"),
    (["hook", "a\nb"], 2, "invalid hook name 'a\\nb'"),
    (["hook", "class"], 2, "invalid hook name 'class': it is a Python keyword"),
    (["hook", "x" * 31], 2, "invalid hook name"),
    (["model", "resnet18"], 2, "model 'resnet18' is already built in"),
    (["model", "\ufb01le"], 2, "invalid model name"),  # the fi ligature
    (["dataset", "../evil"], 2, "invalid dataset name '../evil'"),
    (["widget"], 2, "unknown component 'widget'"),
    (["hook", "x", "--kind", "weird"], 2, "unknown hook kind 'weird'"),
    (["hook", "-C", "/nonexistent"], 2, "/nonexistent is not a directory"),
    (["hook", "--bogus"], 2, ("No such option", "--bogus")),
]

UPDATE = [
    (["--set", "nonsense"], 2, "--set takes KEY=VALUE, got 'nonsense'"),
    (["--set", "project_name={{ 7*7 }}"], 2, "invalid project name '{{ 7*7 }}'"),
    (["--set", "model=bogus"], 2, "unknown model 'bogus'"),
    (["--set", "num_classes=abc"], 2, "--set num_classes: expected a number, got 'abc'"),
    (["--set", "_src_path=/tmp/evil"], 2, "--set _src_path: no such answer"),
    (["--conflict", "maybe"], 2, "--conflict must be inline or rej, got 'maybe'"),
    (["--to", "v99.0.0"], 2, "template version 99.0.0 is not in this scaffold's history"),
    (["-C", "/nonexistent"], 2, "/nonexistent is not a directory"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    create_project(NewProject(dest=root / "proj", model="lenet"), git=True)
    return root / "proj"


def check(capsys, root, args, code, message):
    before = tree_hash(root)
    got_code, out, err = run_cli(capsys, *args)
    assert got_code == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for part in message if isinstance(message, tuple) else (message,):
        assert part in err
    assert "Traceback" not in out + err
    assert tree_hash(root) == before


@pytest.mark.parametrize("args, code, message", NEW, ids=[repr(a) for a, _, _ in NEW])
def test_new(tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_file").write_text("")
    check(capsys, tmp_path, ["new", *args], code, message)


@pytest.mark.parametrize("args, code, message", ADD, ids=[repr(a) for a, _, _ in ADD])
def test_add(project, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(project)
    check(capsys, project, ["add", *args], code, message)


@pytest.mark.parametrize("args, code, message", UPDATE, ids=[repr(a) for a, _, _ in UPDATE])
def test_update(project, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(project)
    check(capsys, project, ["update", *args], code, message)


def test_outside_a_project(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["add", "hook"], ["update"], ["check-update"]):
        check(capsys, tmp_path, command, 2, "not inside a scaffold project")


def test_runtime_refusals_exit_1_and_change_nothing(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    (project / "train.py").write_text((project / "train.py").read_text() + "# mine\n")
    check(capsys, project, ["update"], 1, "uncommitted changes")
    subprocess.run(["git", "checkout", "train.py"], cwd=project, check=True)
    (project / "hooks" / "my_hook.py").write_text("# my own file of that name\n")
    check(capsys, project, ["add", "hook"], 1, "hooks/my_hook.py")
    (project / "hooks" / "my_hook.py").unlink()
