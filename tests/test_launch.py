"""The generated .vscode/launch.json: strict JSON, valid debugpy configurations, and every one runs.

Each configuration is turned into the command line VS Code would start (`python PROGRAM ARGS` or
`python -m MODULE ARGS`, with its env and cwd, variables filled in) and run for two steps.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from scaffold.options import NewProject
from scaffold.render import create_project

SCHEMA_PATH = Path(__file__).resolve().parent / "debugpy_launch_schema.json"

COMMON_NAMES = ["Train", "Train: resume last", "Fine-tune from checkpoint", "Evaluate"]
PYTEST_NAME = "Pytest: current file"
TORCHRUN_NAME = "Train: torchrun 2 procs"
COMPOUND_NAME = "Train: 2 ranks, one debug session each"
RANK_NAMES = ["Train: rank 0 of 2", "Train: rank 1 of 2"]

# Appended to every train.py command line (argparse: the last value wins): two steps of 8 images.
SHORT = ["--max-steps", "2", "--fake-size", "32", "--batch-size", "8"]
# "Train" stops at step 2 of 4, mid-epoch; resuming it runs steps 3 and 4 (a longer run than it
# was started as: a change of its course, which --resume accepts with --allow-changes).
EXTRA = {"Train: resume last": ["--max-steps", "4", "--allow-changes"]}
# What each run must print, beyond exiting 0.
EVIDENCE = {
    "Train": "epoch 1: train_loss",
    "Train: resume last": "resumed from runs/debug/last.pt at epoch 0, step 2\n",
    "Fine-tune from checkpoint": "init-from runs/debug/best.pt: loaded",
    "Evaluate": '"val_acc"',
    TORCHRUN_NAME: "epoch 1: train_loss",
    PYTEST_NAME: "1 passed",
}
# Used as ${file} by "Pytest: current file": a test that trains two steps in-process.
PROBE_TEST = """\
import train


def test_two_steps(tmp_path):
    metrics = train.main([
        "--dataset", "fake", "--fake-size", "32", "--batch-size", "8", "--workers", "0",
        "--epochs", "1", "--max-steps", "2", "--output-dir", str(tmp_path),
    ])
    assert metrics["step"] == 2
"""


def render(root: Path, name: str, *, ddp: bool, vscode: bool = True) -> Path:
    dest = root / name
    # hooks=False: launch.json does not depend on it, and the runs stay as small as possible.
    project = NewProject(dest=dest, model="lenet", ddp=ddp, vscode=vscode, hooks=False)
    create_project(project, git=False)
    return dest


def load_launch(project: Path) -> dict:
    with open(project / ".vscode" / "launch.json", encoding="utf-8") as file:
        return json.load(file)  # strict JSON: no comments, no trailing commas


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("launch")
    return {ddp: render(root, "ddp" if ddp else "plain", ddp=ddp) for ddp in (False, True)}


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp"])
def test_launch_json_is_valid(projects, schema, ddp):
    launch = load_launch(projects[ddp])
    configs = launch["configurations"]
    names = [config["name"] for config in configs]
    expected = COMMON_NAMES + ([TORCHRUN_NAME, *RANK_NAMES] if ddp else []) + [PYTEST_NAME]
    assert names == expected

    validator = jsonschema.Draft7Validator(schema)
    for config in configs:
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(config)]
        assert not errors, f"{config['name']}: {errors}"
        assert config["type"] == "debugpy"
        assert config["request"] == "launch"
        assert config["cwd"] == "${workspaceFolder}"
        assert isinstance(config["args"], list)
        assert all(isinstance(value, str) for value in config.get("env", {}).values())

    # Every ${input:ID} has its prompt, and every prompt is used.
    used = set(re.findall(r"\$\{input:([^}]+)\}", json.dumps(configs)))
    declared = {entry["id"]: entry for entry in launch.get("inputs", [])}
    assert used == set(declared) == {"checkpoint"}
    assert declared["checkpoint"]["type"] == "promptString"
    assert "--init-from" in by_name(configs)["Fine-tune from checkpoint"]["args"]

    compounds = launch.get("compounds", [])
    assert [c["name"] for c in compounds] == ([COMPOUND_NAME] if ddp else [])
    for compound in compounds:
        assert set(compound["configurations"]) <= set(names)


def test_ddp_configurations(projects):
    configs = by_name(load_launch(projects[True])["configurations"])
    torchrun = configs[TORCHRUN_NAME]
    assert torchrun["module"] == "torch.distributed.run" and "program" not in torchrun
    assert torchrun["subProcess"] is True and torchrun["justMyCode"] is False
    args = torchrun["args"]
    script = args.index("train.py")
    assert "--nproc-per-node" in args[:script], "torchrun's own flags come before the script"
    assert "--dist-timeout" in args[script:], "train.py's flags come after it"

    (compound,) = load_launch(projects[True])["compounds"]
    ranks = [configs[name] for name in compound["configurations"]]
    assert sorted(int(rank["env"]["RANK"]) for rank in ranks) == list(range(len(ranks)))
    for rank in ranks:
        env = rank["env"]
        assert env["WORLD_SIZE"] == str(len(ranks))
        assert {"LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} <= set(env)
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (
            ranks[0]["env"]["MASTER_ADDR"],
            ranks[0]["env"]["MASTER_PORT"],
        )
        # A rank paused at a breakpoint must not time the others out.
        assert int(flag_value(rank["args"], "--dist-timeout")) >= 1800
    assert int(flag_value(torchrun["args"], "--dist-timeout")) >= 1800


def test_the_same_debug_configurations_in_both_variants(projects):
    plain = by_name(load_launch(projects[False])["configurations"])
    ddp = by_name(load_launch(projects[True])["configurations"])
    for name in COMMON_NAMES + [PYTEST_NAME]:
        assert plain[name] == ddp[name]


def test_no_vscode_and_readme(tmp_path, projects):
    project = render(tmp_path, "novscode", ddp=False, vscode=False)
    assert not (project / ".vscode").exists()
    readme = (project / "README.md").read_text()
    assert "## Debug in VS Code" not in readme
    assert "\n\n## Files" in readme and "\n\n\n## Files" not in readme

    sections = {}
    for ddp, path in projects.items():
        readme = (path / "README.md").read_text()
        section = readme[readme.index("\n## Debug in VS Code\n") : readme.index("\n## Files\n")]
        assert section.startswith("\n## Debug in VS Code\n\n`.vscode/launch.json`")
        assert section.endswith(".\n") and "\n\n\n" not in section
        assert not readme.split("\n## Debug in VS Code\n")[0].endswith("\n\n")
        sections[ddp] = section
    assert TORCHRUN_NAME not in sections[False] and COMPOUND_NAME not in sections[False]
    assert TORCHRUN_NAME in sections[True] and COMPOUND_NAME in sections[True]


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp"])
def test_every_configuration_runs(projects, ddp):
    """Run each configuration as VS Code would, in file order: Train first makes the checkpoints."""
    project = projects[ddp]
    launch = load_launch(project)
    configs = by_name(launch["configurations"])
    inputs = {entry["id"]: entry["default"] for entry in launch.get("inputs", [])}
    probe = project / "tests" / "test_debug_probe.py"
    probe.write_text(PROBE_TEST)
    in_compounds = {name for c in launch.get("compounds", []) for name in c["configurations"]}

    # The configurations both variants share are identical (test above), so the ddp project
    # runs only its own ones, which need no checkpoint from "Train".
    shared = set(COMMON_NAMES + [PYTEST_NAME]) if ddp else set()
    started = set()
    for name, config in configs.items():
        if name in shared:
            continue
        if name in in_compounds:
            continue  # a rank alone would wait for the others: started with its compound below
        command, env, cwd = command_line(config, project, inputs, probe)
        if name != PYTEST_NAME:
            command += SHORT + EXTRA.get(name, [])
        output = run_all([(command, env, cwd)], name)[0]
        assert EVIDENCE[name] in output, f"{name}: {EVIDENCE[name]!r} not in\n{output[-3000:]}"
        started.add(name)

    for compound in launch.get("compounds", []):
        port = str(free_port())
        runs = []
        for name in compound["configurations"]:
            command, env, cwd = command_line(configs[name], project, inputs, probe)
            env["MASTER_PORT"] = port
            runs.append((command + SHORT, env, cwd))
        outputs = run_all(runs, compound["name"])
        assert "epoch 1: train_loss" in outputs[0], outputs[0][-3000:]
        started.update(compound["configurations"])

    assert started | shared == set(configs)
    if not ddp:
        lines = (project / "runs/debug-finetune/metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["step"] == 2


def by_name(configs: list[dict]) -> dict[str, dict]:
    return {config["name"]: config for config in configs}


def flag_value(args: list[str], flag: str) -> str:
    """The value of the last `flag` in `args`, the one argparse keeps."""
    last = max(index for index, arg in enumerate(args) if arg == flag)
    return args[last + 1]


def command_line(
    config: dict, workspace: Path, inputs: dict[str, str], file: Path
) -> tuple[list[str], dict[str, str], str]:
    """The command, environment and working directory VS Code's debugpy launch would use."""

    def fill(text: str) -> str:
        text = text.replace("${workspaceFolder}", str(workspace)).replace("${file}", str(file))
        text = re.sub(r"\$\{input:([^}]+)\}", lambda match: inputs[match.group(1)], text)
        assert "${" not in text, f"{config['name']}: unknown variable in {text!r}"
        return text

    args = [fill(arg) for arg in config.get("args", [])]
    if "module" in config:
        command = [sys.executable, "-m", config["module"], *args]
    else:
        command = [sys.executable, fill(config["program"]), *args]
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # CPU and gloo, any machine
    env.update({key: fill(value) for key, value in config.get("env", {}).items()})
    return command, env, fill(config.get("cwd", "${workspaceFolder}"))


def run_all(runs: list[tuple[list[str], dict, str]], name: str, timeout: int = 240) -> list[str]:
    """Start all `runs` together, wait for all; each must exit 0. Returns their outputs."""
    processes = [
        subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command, env, cwd in runs
    ]
    outputs = []
    try:
        for process, (command, _, _) in zip(processes, runs, strict=True):
            output, _ = process.communicate(timeout=timeout)
            outputs.append(output)
            assert (
                process.returncode == 0
            ), f"{name}: exit {process.returncode}\n$ {' '.join(command)}\n{output[-3000:]}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
