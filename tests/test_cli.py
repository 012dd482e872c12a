"""`scaffold new`, `--help`, `--version` and `list` through the real entry point: exit codes,
one-line errors, and nothing written when anything goes wrong."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
import yaml
from helpers import run_cli, tree_hash

import scaffold
from scaffold import cli, render
from scaffold.catalog import MODELS, TASKS, task_datasets, task_models
from scaffold.cli import app
from scaffold.render import Rendered


def test_help_lists_the_commands(capsys):
    code, out, err = run_cli(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("Usage: scaffold [OPTIONS] COMMAND [ARGS]...\n")
    listed = out.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == [
        *("new", "add", "doctor", "update", "check-update", "examples", "list")
    ]


COMMANDS = [
    [],
    ["new"],
    ["add"],
    ["update"],
    ["check-update"],
    ["doctor"],
    ["examples"],
    ["list"],
    ["list", "tasks"],
    ["list", "models"],
    ["list", "datasets"],
    ["list", "variants"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "scaffold" for c in COMMANDS])
def test_dash_h_is_help_everywhere(capsys, command):
    long = run_cli(capsys, *command, "--help")
    assert long[0] == 0 and long[1].startswith(f"Usage: {' '.join(['scaffold', *command])} ")
    assert run_cli(capsys, *command, "-h") == long
    assert "-h, --help Show this message and exit." in words(long[1])


def test_no_arguments_prints_the_help_as_a_usage_error(capsys):
    help_text = run_cli(capsys, "--help")[1]
    assert run_cli(capsys) == (2, "", help_text)


def test_completion_can_be_installed(capsys):
    out = run_cli(capsys, "--help")[1]
    options = [line.split()[0] for line in out.split("Options:\n")[1].split("\n\n")[0].splitlines()]
    assert "--install-completion" in options and "--show-completion" in options
    code, script, err = run_cli(capsys, "--show-completion", "bash")
    assert (code, err) == (0, "")
    assert "_SCAFFOLD_COMPLETE=complete_bash" in script
    assert "complete -o default -F _scaffold_completion scaffold" in script


def words(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


def test_new_help_lists_the_catalog_choices(capsys):
    out = words(run_cli(capsys, "new", "--help")[1])
    assert (
        "--task TASK What the project learns: classification, segmentation, detection, lm "
        "(scaffold list tasks). [default: classification]" in out
    )
    models = "; ".join(
        f"{task}: {', '.join(task_models(task))} (default {spec.default_model})"
        for task, spec in TASKS.items()
    )
    assert f"--model MODEL Default model for train.py, by task: {models}." in out
    datasets = "; ".join(
        f"{task}: {', '.join(task_datasets(task))} (default {spec.default_dataset})"
        for task, spec in TASKS.items()
    )
    assert f"--dataset DATASET Default dataset for train.py, by task: {datasets}." in out
    assert "classification: fake, synthetic, folder, cifar10, mnist (default fake)" in out


HELP_LINES = {
    "new": ["Usage: scaffold new [OPTIONS] DEST", "DEST Where to create the project;"],
    "add": [
        "Usage: scaffold add [OPTIONS] COMPONENT [NAME]",
        "COMPONENT hook, model, dataset, launch or slurm. [required]",
        "NAME Its name",
        "--kind KIND hook only",
        "-C, --directory DIR Use the project at or above DIR, not the current one.",
    ],
    "update": [
        "Usage: scaffold update [OPTIONS]",
        "-C, --directory DIR Use the project at or above DIR, not the current one.",
        "--to VERSION Template version",
        "--set KEY=VALUE Change an answer",
        "--conflict MODE inline:",
    ],
    "check-update": [
        "Usage: scaffold check-update [OPTIONS]",
        "-C, --directory DIR Use the project at or above DIR, not the current one.",
    ],
    "examples": ["Usage: scaffold examples [OPTIONS]", "--into DIR Where"],
}


@pytest.mark.parametrize("command", list(HELP_LINES))
def test_metavars_are_words(capsys, command):
    out = run_cli(capsys, command, "--help")[1]
    for line in HELP_LINES[command]:
        assert line in words(out), line
    assert not set("{}<>") & set(out), out


def test_list_without_a_kind_lists_the_kinds(capsys):
    assert run_cli(capsys, "list") == (
        0,
        "tasks      The tasks `--task` accepts.\n"
        "models     The models `--model` accepts, by task.\n"
        "datasets   The datasets `--dataset` accepts, by task.\n"
        "variants   The option combinations CI renders and tests (scaffold/variants.py).\n"
        "\nRun `scaffold list KIND`, e.g. scaffold list models.\n",
        "",
    )


def all_commands(typer_app) -> list:
    callbacks = [command.callback for command in typer_app.registered_commands]
    if typer_app.registered_callback:
        callbacks.append(typer_app.registered_callback.callback)
    for group in typer_app.registered_groups:
        callbacks += all_commands(group.typer_instance)
    return callbacks


def test_every_parameter_is_declared_with_annotated():
    callbacks = all_commands(app)
    assert len(callbacks) >= 11
    for callback in callbacks:
        hints = typing.get_type_hints(callback, include_extras=True)
        for name, parameter in inspect.signature(callback).parameters.items():
            if hints[name] is typer.Context:
                continue
            assert typing.get_origin(hints[name]) is typing.Annotated, (callback.__name__, name)
            assert not isinstance(parameter.default, typer.models.ParameterInfo), name


def test_the_package_imports_nothing_private_from_typer():
    for path in Path(scaffold.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] in ("typer", "click"):
                    assert not any(part.startswith("_") for part in parts), f"{path}: {module}"


class InterfaceOnly(Exception):
    """An error shaped like Click's, of no Click class: what main() must recognise."""

    def __init__(self, message: str, exit_code: int, **ctx):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code
        if ctx:
            self.ctx = ctx["ctx"]

    def format_message(self) -> str:
        return self.message


class Context:
    command_path = "scaffold new"


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            InterfaceOnly("Bad thing", 2, ctx=Context()),
            (2, "error: Bad thing (see 'scaffold new --help')\n"),
        ),
        (
            InterfaceOnly("Bad thing", 2, ctx=None),
            (2, "error: Bad thing (see 'scaffold --help')\n"),
        ),
        (InterfaceOnly("Cannot open x", 1), (1, "error: Cannot open x\n")),
    ],
)
def test_command_line_errors_are_recognised_by_their_interface(
    capsys, monkeypatch, error, expected
):
    def raising(**kwargs):
        raise error

    monkeypatch.setattr(cli, "app", raising)
    code, out, err = run_cli(capsys, "new", "p")
    assert (code, err) == expected and out == ""


def test_other_errors_are_not_mistaken_for_command_line_errors(capsys, monkeypatch):
    def raising(**kwargs):
        raise LookupError("a bug")

    monkeypatch.setattr(cli, "app", raising)
    with pytest.raises(LookupError):
        run_cli(capsys, "new", "p")


def test_version(capsys):
    assert run_cli(capsys, "--version") == (0, f"scaffold {scaffold.__version__}\n", "")


def test_list_models_names_every_model(capsys):
    code, out, _ = run_cli(capsys, "list", "models")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(MODELS)
    assert [line.split()[1] for line in out.splitlines()] == [spec.task for spec in MODELS.values()]


def test_list_tasks_describes_each_task(capsys):
    assert run_cli(capsys, "list", "tasks") == (
        0,
        "classification  one class per image: cross-entropy over the logits, top-1 accuracy\n"
        "segmentation    one class per pixel: per-pixel cross-entropy, pixel accuracy and mean "
        "IoU\n"
        "detection       boxes and their classes: the detector's own losses, COCO mAP\n"
        "lm              the next token of text: cross-entropy, perplexity and bits per byte\n",
        "",
    )


def test_list_models_and_datasets_of_one_task(capsys):
    code, out, err = run_cli(capsys, "list", "models", "--task", "segmentation")
    assert (code, err) == (0, "")
    assert [line.split()[:2] for line in out.splitlines()] == [
        [model, "segmentation"] for model in task_models("segmentation")
    ]
    assert out.splitlines()[0] == (
        "unet                                   segmentation    custom       min image 16   "
        "a small U-Net of our own, for CPU work; --image-size a multiple of 8"
    )
    code, out, err = run_cli(capsys, "list", "datasets", "--task", "segmentation")
    assert (code, err) == (0, "")
    assert out == (
        "synthetic  segmentation    shapes drawn in code on a background, with their masks; "
        "seeded, learnable, no files\n"
        "folder     segmentation    DATA_DIR/train/images + train/masks (+ val/...): PNG "
        "class-index masks with the same stem, 255 = ignore\n"
        "voc        segmentation    Pascal VOC 2012 layout read from a local folder (no download)\n"
    )


def test_list_datasets_groups_them_by_task(capsys):
    code, out, _ = run_cli(capsys, "list", "datasets")
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()] == [
        [dataset, task] for task in TASKS for dataset in task_datasets(task)
    ]


@pytest.mark.parametrize("kind", ["models", "datasets"])
def test_list_of_an_unknown_task_is_a_usage_error(capsys, kind):
    assert run_cli(capsys, "list", kind, "--task", "pose") == (
        2,
        "",
        "error: unknown task 'pose'; choose one of: classification, segmentation, detection, lm\n",
    )


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
    assert 'default="lenet"' in (dest / "options.py").read_text()
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


def git_out(*args: str, cwd) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def plan(out: str) -> dict[str, str]:
    """{path: verb} from the `{verb:>N}  {path}` lines `scaffold new` prints."""
    lines = [line.strip().rsplit("  ", 1) for line in out.splitlines() if "  " in line.strip()]
    return {path: verb.strip() for verb, path in lines}


def test_force_over_a_clean_project_overwrites_and_says_so(tmp_path, capsys):
    dest = tmp_path / "p"
    assert run_cli(capsys, "new", str(dest), "--model", "lenet")[0] == 0
    first = set(git_out("ls-files", cwd=dest).split())
    code, out, err = run_cli(capsys, "new", str(dest), "--force", "--ddp", "--dry-run")
    assert (code, err) == (0, "")
    dry = plan(out)
    assert {path for path, verb in dry.items() if verb == "would overwrite"} == first
    assert set(dry.values()) == {"would overwrite", "would create"}
    assert "would overwrite  train.py" in out.splitlines()

    code, out, err = run_cli(capsys, "new", str(dest), "--force", "--ddp")
    assert (code, err) == (0, "")
    done = plan(out.split("\n\nCreated ")[0])
    assert {path for path, verb in done.items() if verb == "overwrite"} == first
    assert {path for path, verb in done.items() if verb == "create"} == set(done) - first
    assert "   overwrite  train.py" in out.splitlines()
    assert git_out("status", "--porcelain", cwd=dest) == ""
    assert yaml.safe_load((dest / ".copier-answers.yml").read_text())["ddp"] is True
    # The same again changes nothing, and there is nothing to commit: not an error.
    assert run_cli(capsys, "new", str(dest), "--force", "--ddp")[0] == 0
    assert git_out("status", "--porcelain", cwd=dest) == ""
    assert len(git_out("log", "--oneline", cwd=dest).splitlines()) == 2


def refused(capsys, dest, *args: str) -> tuple[int, str]:
    def state():
        if not (dest / ".git").is_dir():
            return tree_hash(dest)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True).stdout
        return tree_hash(dest, ignore=(".git",)), head, git_out("status", "--porcelain", cwd=dest)

    before = state()
    code, out, err = run_cli(capsys, "new", str(dest), "--force", *args)
    assert out == "" and err.count("\n") == 1, out + err
    assert state() == before
    return code, err


def test_force_refuses_to_overwrite_uncommitted_changes(tmp_path, capsys):
    dest = tmp_path / "p"
    assert run_cli(capsys, "new", str(dest), "--model", "lenet")[0] == 0
    (dest / "train.py").write_text("# my edit\n")
    message = "has uncommitted changes that --force could overwrite"
    expected = f"error: {dest} {message} (train.py): commit or stash them (git stash -u) first\n"
    assert refused(capsys, dest) == (1, expected)
    assert refused(capsys, dest, "--dry-run") == (1, expected)
    for name in ("model.py", "dataset.py", "checkpoint.py", "summary.py"):
        (dest / name).write_text("# mine\n")
    code, err = refused(capsys, dest)
    assert (code, err) == (
        1,
        f"error: {dest} {message} (checkpoint.py, dataset.py, model.py and 2 more): "
        "commit or stash them (git stash -u) first\n",
    )


def test_force_refuses_to_overwrite_a_file_git_does_not_track(tmp_path, capsys):
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    git_out("init", "--quiet", cwd=dest)
    git_out("add", "notes.txt", cwd=dest)
    git_out("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "notes", cwd=dest)
    (dest / "model.py").write_text("# my model, never committed\n")
    assert refused(capsys, dest) == (
        1,
        f"error: {dest} has uncommitted changes that --force could overwrite (model.py): "
        "commit or stash them (git stash -u) first\n",
    )
    (dest / "model.py").unlink()
    (dest / "scratch.txt").write_text("not in the project: neither refused nor touched\n")
    code, out, err = run_cli(capsys, "new", str(dest), "--force")
    assert (code, err) == (0, "")
    assert (dest / "notes.txt").read_text() == "mine\n"
    assert (dest / "scratch.txt").read_text().startswith("not in the project")
    assert git_out("status", "--porcelain", cwd=dest) == "?? scratch.txt\n"


def test_force_outside_git_refuses_to_overwrite_a_different_file(tmp_path, capsys):
    dest = tmp_path / "p"
    dest.mkdir()
    (dest / "train.py").write_text("# mine\n")
    assert refused(capsys, dest, "--no-git") == (
        1,
        f"error: {dest} is not in a git work tree and --force would overwrite train.py: "
        "move it away (or commit it to git) first\n",
    )
    (dest / "hooks").write_text("a file where the project needs a folder\n")
    (dest / "train.py").unlink()
    code, err = refused(capsys, dest, "--no-git")
    assert code == 1
    assert err.startswith(f"error: {dest / 'hooks'} is in the way of hooks/")


BAD_INPUTS = [
    (["1abc"], "invalid project name '1abc'"),
    (["a b"], "invalid project name 'a b'"),
    (["class"], "it is a Python keyword"),
    (["x/.."], "invalid project name '..'"),
    (["p", "--model", "resnet"], "unknown model 'resnet'; choose one of: lenet, mlp,"),
    (["p", "--model", "resnet-99"], "unknown model 'resnet-99'; choose one of: lenet, mlp,"),
    (["p", "--task", "pose"], "unknown task 'pose'; choose one of: classification,"),
    (["p", "--model", "unet"], "model unet is for --task segmentation; choose one of: lenet,"),
    (["p", "--dataset", "voc"], "dataset voc is for --task segmentation; choose one of: fake,"),
    (["p", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: fake,"),
    (["p", "--num-classes", "1"], "--num-classes must be between 2 and 1000000, got 1"),
    (["p", "--in-channels", "0"], "--in-channels must be between 1 and 64, got 0"),
    (["p", "--model", "lenet", "--image-size", "8"], "needs --image-size of at least 16, got 8"),
    (["p", "--model", "vit_b_16", "--image-size", "40"], "must be a multiple of 16, got 40"),
    (["p", "--image-size", "big"], "Invalid value for '--image-size'"),
    (["p", "--bogus"], ("No such option", "--bogus")),  # Click's wording varies
    (["numpy"], "it would shadow the numpy package the project depends on; choose another name"),
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
    assert err.startswith("error: ") and err.count("\n") == 1
    for part in message if isinstance(message, tuple) else (message,):
        assert part in err
    assert "Traceback" not in out + err
    assert tree_hash(tmp_path) == before


TASK_MISMATCHES = [
    (
        ["--model", "unet"],
        "error: model unet is for --task segmentation; choose one of: lenet, mlp, resnet18, "
        "resnet34, resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny, vit_b_16\n",
    ),
    (
        ["--task", "segmentation", "--model", "resnet18"],
        "error: model resnet18 is for --task classification; choose one of: unet, "
        "lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large, fcn_resnet50, "
        "deeplabv3_resnet50\n",
    ),
    (
        ["--dataset", "voc"],
        "error: dataset voc is for --task segmentation; choose one of: fake, synthetic, folder, "
        "cifar10, mnist\n",
    ),
    (
        ["--task", "segmentation", "--dataset", "fake"],
        "error: dataset fake is for --task classification; choose one of: synthetic, folder, "
        "voc\n",
    ),
    (
        ["--task", "pose"],
        "error: unknown task 'pose'; choose one of: classification, segmentation, detection, lm\n",
    ),
    (
        ["--task", "lm", "--image-size", "64"],
        "error: --image-size is for the image tasks, not --task lm: drop it\n",
    ),
    (
        ["--task", "lm", "--model", "lenet"],
        "error: model lenet is for --task classification; choose one of: gpt_tiny, gpt_mini, "
        "gpt_small, gpt2\n",
    ),
]


@pytest.mark.parametrize(
    "args, expected", TASK_MISMATCHES, ids=[" ".join(args) for args, _ in TASK_MISMATCHES]
)
def test_a_choice_of_another_task_is_one_exact_line_exit_2(tmp_path, capsys, args, expected):
    before = tree_hash(tmp_path)
    for dry_run in ([], ["--dry-run"]):
        assert run_cli(capsys, "new", str(tmp_path / "p"), *args, *dry_run) == (2, "", expected)
    assert tree_hash(tmp_path) == before


def recorded_projects(monkeypatch) -> list:
    """What `scaffold new` asks render.create_project for, instead of rendering it."""
    seen = []

    def record(project, **options):
        project.validate()
        seen.append(project)
        return Rendered([])

    monkeypatch.setattr(render, "create_project", record)
    return seen


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], ("classification", "resnet18", "fake")),
        (["--task", "classification"], ("classification", "resnet18", "fake")),
        (["--task", "segmentation"], ("segmentation", "unet", "synthetic")),
        (
            ["--task", "segmentation", "--model", "fcn_resnet50"],
            ("segmentation", "fcn_resnet50", "synthetic"),
        ),
        (["--task", "segmentation", "--dataset", "voc"], ("segmentation", "unet", "voc")),
        (["--model", "lenet", "--dataset", "synthetic"], ("classification", "lenet", "synthetic")),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_new_takes_the_tasks_default_model_and_dataset(
    tmp_path, capsys, monkeypatch, args, expected
):
    seen = recorded_projects(monkeypatch)
    code, _, err = run_cli(capsys, "new", str(tmp_path / "x"), *args, "--dry-run")
    assert (code, err) == (0, "")
    [project] = seen
    data = project.to_data()
    assert (data["task"], data["model"], data["dataset"]) == expected
    assert data["num_classes"] == 10 and data["image_size"] == 32
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, model",
    [
        (["--task", "lm", "--model", "gpt-tiny"], "gpt_tiny"),
        (["--model", "convnext-tiny"], "convnext_tiny"),
    ],
)
def test_a_model_name_spelled_with_hyphens_is_the_one_with_underscores(
    tmp_path, capsys, monkeypatch, args, model
):
    seen = recorded_projects(monkeypatch)
    code, _, err = run_cli(capsys, "new", str(tmp_path / "x"), *args, "--dry-run")
    assert (code, err) == (0, "")
    assert seen[0].to_data()["model"] == model


def test_segmentation_takes_the_number_of_classes_given(tmp_path, capsys, monkeypatch):
    seen = recorded_projects(monkeypatch)
    args = ["--task", "segmentation", "--num-classes", "2", "--dry-run"]
    assert run_cli(capsys, "new", str(tmp_path / "x"), *args)[0] == 0
    assert seen[0].to_data()["num_classes"] == 2


def test_interactively_copier_asks_for_the_model_of_the_task_answered(
    tmp_path, capsys, monkeypatch
):
    """Without --model, --interactive leaves the model to copier's question, whose default
    follows the task (copier.yml)."""
    seen = recorded_projects(monkeypatch)
    args = ["--task", "segmentation", "--interactive", "--dry-run"]
    assert run_cli(capsys, "new", str(tmp_path / "x"), *args)[0] == 0
    assert seen[0].to_data() == {
        "project_name": "x",
        "task": "segmentation",
        "template_version": scaffold.__version__,
    }


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
