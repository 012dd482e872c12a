"""What a run records about itself: OUTPUT_DIR/config.json, every option of the run, and
OUTPUT_DIR/env.json, one entry per invocation saying where, with what and with which code it ran.

`python train.py --config RUN/config.json` repeats a run's settings; compare.py groups runs by
their config.json.
"""

import os
import platform
import socket
import subprocess
import sys
import time

import distributed
from files import read_json, write_json

# What an invocation does rather than how the run trains: left out of config.json, so that
# `--config RUN/config.json` repeats the run's settings without resuming or overwriting anything.
ACTIONS = ("config", "resume", "overwrite", "eval_only", "summary", "allow_changes")


def record_invocation(output_dir: str, args, ctx, template_version: str, resumed: str | None):
    """OUTPUT_DIR/config.json: every option of the run (written by its first invocation), and
    OUTPUT_DIR/env.json: one entry per invocation (a resumed run adds its own), saying where and
    with what it ran, which code, and which options differed from config.json."""
    if not distributed.is_main_process():
        return
    options = {key: value for key, value in vars(args).items() if key not in ACTIONS}
    config_path = os.path.join(output_dir, "config.json")
    if not os.path.exists(config_path):
        write_json(config_path, options)
    first = read_json(config_path)
    entry = environment(ctx, template_version)
    entry["resumed_from"] = resumed
    entry["changed_options"] = {
        key: value for key, value in options.items() if first.get(key) != value
    }
    env_path = os.path.join(output_dir, "env.json")
    invocations = read_json(env_path).get("invocations", [])
    write_json(env_path, {"invocations": [*invocations, entry]})


def run_options(folder: str) -> dict | None:
    """The options the run in `folder` last trained with: config.json, with the changes its
    latest invocation made (env.json); None if the folder records no run."""
    first = read_json(os.path.join(folder, "config.json"))
    if not first:
        return None
    invocations = read_json(os.path.join(folder, "env.json")).get("invocations", [])
    return {**first, **(invocations[-1].get("changed_options", {}) if invocations else {})}


def run_world_size(folder: str) -> int | None:
    """How many processes the latest invocation of the run in `folder` trained with."""
    invocations = read_json(os.path.join(folder, "env.json")).get("invocations", [])
    return invocations[-1].get("world_size") if invocations else None


def environment(ctx, template_version: str) -> dict:
    """Where this process runs and with what: versions, devices, the project's code and how it
    was made."""
    import torch
    import torchvision

    project = os.path.dirname(os.path.abspath(__file__))
    cuda = torch.cuda.is_available()
    commit = git(project, "rev-parse", "HEAD")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.orig_argv,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "git_commit": commit,
        "git_dirty": bool(git(project, "status", "--porcelain")) if commit else None,
        "template_version": template_version,
        "scaffold_new": scaffold_command(project),
    }


def git(folder: str, *args: str) -> str | None:
    """The output of a git command in `folder`, or None (no git, or not a repository)."""
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def scaffold_command(project: str) -> str | None:
    """The `scaffold new` command that makes this project again (from its copier answers)."""
    import yaml

    try:
        with open(os.path.join(project, ".copier-answers.yml")) as file:
            answers = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return None
    flags = []
    for key, value in answers.items():
        if key.startswith("_") or key in ("project_name", "template_version"):
            continue
        option = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{option}" if value else f"--no-{option}")
        else:
            flags.append(f"--{option} {value}")
    return " ".join(["scaffold new", str(answers["project_name"]), *flags])
