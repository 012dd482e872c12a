"""`scaffold doctor`: can the projects scaffold generates run on this machine?

torch is imported in a child process of the same Python (`probe()` below, sent as source), so the
CLI itself never imports it and a torch that crashes on import is reported instead of fatal.
"""

from __future__ import annotations

import inspect
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from scaffold.errors import ScaffoldError

PROBE_TIMEOUT_S = 300
# What the generated pyproject.toml requires.
MIN_PYTHON = (3, 11)
REQUIRED_PACKAGES = ("torch", "torchvision", "tqdm")
INSTALL_HINT = "pip install torch torchvision tqdm"


def probe() -> dict:
    """Runs in the child process: versions, CUDA devices and torch.distributed backends.

    Self-contained (its imports are local): its source is what the child runs.
    """
    import importlib

    result = {"packages": {}, "cuda": None, "backends": None}
    modules = {}
    for name in ("torch", "torchvision", "tqdm"):
        try:
            modules[name] = importlib.import_module(name)
            result["packages"][name] = {"version": getattr(modules[name], "__version__", "?")}
        except Exception as error:  # ImportError, OSError (missing libraries), RuntimeError
            lines = str(error).strip().splitlines()
            result["packages"][name] = {"error": lines[0] if lines else type(error).__name__}
    torch = modules.get("torch")
    if torch is None:
        return result

    cuda = {"available": False, "version": torch.version.cuda, "devices": []}
    try:
        cuda["available"] = torch.cuda.is_available()
        for index in range(torch.cuda.device_count() if cuda["available"] else 0):
            cuda["devices"].append(torch.cuda.get_device_name(index))
    except Exception as error:
        cuda["error"] = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    result["cuda"] = cuda

    import torch.distributed as dist

    backends = {"distributed": dist.is_available(), "nccl": False, "gloo": False}
    if backends["distributed"]:
        backends["nccl"] = dist.is_nccl_available()
        backends["gloo"] = dist.is_gloo_available()
    result["backends"] = backends
    return result


def run_probe(python: str = sys.executable) -> dict:
    """Run `probe()` in a child `python` and return its findings."""
    source = inspect.getsource(probe) + "\nimport json\nprint(json.dumps(probe()))\n"
    try:
        done = subprocess.run(
            [python, "-c", source], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        message = f"importing torch took over {PROBE_TIMEOUT_S} s: check the install"
        raise ScaffoldError(message) from None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        lines = (done.stderr or done.stdout).strip().splitlines()
        last = lines[-1] if lines else "no output"
        return {"crashed": f"{last} (exit status {done.returncode})"}


def git_status() -> dict:
    """git's version and the identity commits get (None where unset); {} without git."""
    git = shutil.which("git")
    if git is None:
        return {}

    def read(*args: str) -> str | None:
        # Outside any repository: the system and global settings a new project's commit sees.
        done = subprocess.run(
            [git, *args], capture_output=True, text=True, cwd=tempfile.gettempdir()
        )
        if done.returncode != 0:
            return None
        return done.stdout.strip() or None

    version = read("--version") or "git"
    return {
        "version": version.removeprefix("git version "),
        "user.name": read("config", "--get", "user.name"),
        "user.email": read("config", "--get", "user.email"),
    }


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.lines.append(f"{label:<12} {text}")

    def summary(self) -> str:
        return "generated projects cannot run here: " + "; ".join(self.problems)


def diagnose(found: dict, git: dict) -> Report:
    """Report lines from the probe's and git's findings, and the problems that stop a project."""
    report = Report()
    python = sys.version_info
    report.add("python", f"{platform.python_version()} ({sys.executable})")
    if python < MIN_PYTHON:
        report.problems.append(f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed")

    if "crashed" in found:
        report.add("torch", f"importing it crashed: {found['crashed']}")
        report.problems.append(f"torch crashes on import ({found['crashed']})")
    for name in REQUIRED_PACKAGES:
        package = found.get("packages", {}).get(name)
        if package is None:
            continue
        if "error" in package:
            report.add(name, f"MISSING: {package['error']}")
            report.problems.append(f"{name} cannot be imported ({INSTALL_HINT})")
        else:
            report.add(name, package["version"])

    cuda = found.get("cuda")
    if cuda is not None:
        devices = cuda["devices"]
        if cuda.get("error"):
            report.add("cuda", f"error: {cuda['error']}; training runs on CPU")
        elif not cuda["available"]:
            built = f" (torch built with CUDA {cuda['version']})" if cuda["version"] else ""
            report.add("cuda", f"not available{built}: training runs on CPU")
        else:
            count = f"{len(devices)} device{'s' if len(devices) != 1 else ''}"
            report.add("cuda", f"{cuda['version']}, {count}")
            for index, device in enumerate(devices):
                report.add("", f"cuda:{index} {device}")

    backends = found.get("backends")
    if backends is not None:
        if not backends["distributed"]:
            report.add("distributed", "not available in this torch: --ddp projects cannot run")
        else:
            for name in ("nccl", "gloo"):
                report.add(name, "available" if backends[name] else "not available")

    if not git:
        report.add("git", "MISSING")
        report.problems.append("git is not installed (or pass --no-git to `scaffold new`)")
    else:
        name, email = git["user.name"], git["user.email"]
        if name and email:
            report.add("git", f"{git['version']}, user {name} <{email}>")
        else:
            report.add(
                "git",
                f"{git['version']}, user.name/user.email not set: `scaffold new` commits as "
                "scaffold <scaffold@localhost> (git config --global user.name/user.email)",
            )
    return report


def check() -> Report:
    """Probe this machine. The caller prints `lines`; any `problems` mean exit 1."""
    return diagnose(run_probe(), git_status())
