"""`scaffold doctor`: what it reports; exit 1 naming the missing piece when projects can't run."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
from helpers import run_cli

from scaffold import doctor

HEALTHY = {
    "packages": {
        "torch": {"version": "2.14.1"},
        "torchvision": {"version": "0.29.1"},
        "tqdm": {"version": "4.67.1"},
    },
    "cuda": {"available": False, "version": None, "devices": []},
    "backends": {"distributed": True, "nccl": False, "gloo": True},
}
GIT = {"version": "2.39.5", "user.name": "Ada", "user.email": "ada@example.org"}


def fake_package(root, name: str, body: str) -> None:
    """A package `name` on PYTHONPATH that shadows the installed one."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body)


def test_doctor_on_this_machine(capsys):
    code, out, err = run_cli(capsys, "doctor")
    assert code == 0, err
    assert f"\ntorch        {version('torch')}" in out
    assert f"\ntorchvision  {version('torchvision')}" in out
    assert f"python       {sys.version.split()[0]} " in out
    assert "training runs on CPU" in out or "cuda:0 " in out
    assert "gloo         available" in out
    assert "\nnccl " in out
    assert "\ngit " in out
    assert out.endswith("ok: generated projects can run here\n")


def test_missing_torch_is_named(capsys, tmp_path, monkeypatch):
    fake_package(tmp_path, "torch", "raise ImportError(\"No module named 'torch'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert "torch        MISSING: No module named 'torch'" in out
    assert "torchvision  MISSING:" in out  # it imports torch
    assert "cuda" not in out  # nothing to ask without torch
    assert err.startswith("error: generated projects cannot run here: torch cannot be imported")
    assert "pip install torch torchvision" in err
    assert err.count("\n") == 1


def test_missing_torchvision_is_named(capsys, monkeypatch):
    found = dict(HEALTHY, packages=dict(HEALTHY["packages"], torchvision={"error": "No module"}))
    monkeypatch.setattr(doctor, "run_probe", lambda: found)
    monkeypatch.setattr(doctor, "git_status", lambda: GIT)
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert "torchvision cannot be imported" in err and "torch cannot" not in err


def test_torch_that_crashes_on_import(capsys, tmp_path, monkeypatch):
    body = "import os, sys\nsys.stderr.write('Illegal instruction\\n')\nos._exit(132)\n"
    fake_package(tmp_path, "torch", body)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert "torch        importing it crashed: Illegal instruction (exit status 132)" in out
    assert "torch crashes on import" in err


def test_missing_git_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "run_probe", lambda: HEALTHY)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    code, out, err = run_cli(capsys, "doctor")
    assert code == 1
    assert "git          MISSING" in out
    assert (
        err == "error: generated projects cannot run here: git is not installed "
        "(or pass --no-git to `scaffold new`)\n"
    )


def test_git_without_identity_is_a_note(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "run_probe", lambda: HEALTHY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run_cli(capsys, "doctor")
    assert code == 0, err
    assert "user.name/user.email not set" in out
    assert "training runs on CPU" in out


@pytest.mark.parametrize(
    "cuda, expected",
    [
        (
            {"available": True, "version": "12.8", "devices": ["NVIDIA H100", "NVIDIA A100"]},
            ["cuda         12.8, 2 devices", "cuda:0 NVIDIA H100", "cuda:1 NVIDIA A100"],
        ),
        (
            {"available": False, "version": "12.8", "devices": []},
            ["cuda         not available (torch built with CUDA 12.8): training runs on CPU"],
        ),
        (
            {"available": False, "version": None, "devices": [], "error": "driver too old"},
            ["cuda         error: driver too old; training runs on CPU"],
        ),
    ],
)
def test_cuda_lines(cuda, expected):
    report = doctor.diagnose(dict(HEALTHY, cuda=cuda), GIT)
    text = "\n".join(report.lines)
    for line in expected:
        assert line in text
    assert report.problems == []  # no CUDA is fine


def test_backends_lines():
    report = doctor.diagnose(HEALTHY, GIT)
    assert "nccl         not available" in report.lines
    assert "gloo         available" in report.lines
    assert "git          2.39.5, user Ada <ada@example.org>" in report.lines
    no_dist = dict(HEALTHY, backends={"distributed": False, "nccl": False, "gloo": False})
    report = doctor.diagnose(no_dist, GIT)
    assert any("distributed  not available in this torch" in line for line in report.lines)
    assert report.problems == []


def test_the_cli_does_not_import_torch():
    code = "import sys, scaffold.cli, scaffold.doctor; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
