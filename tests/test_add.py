"""`scaffold add`: plans, registry edits, conflicts, dry runs, and the added code at work.

Each test works on a copy of a project rendered once per session. The slow test adds every
component to a hand-edited project, then runs that project's own tests and two short trainings.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import black
import pytest
import yaml
from helpers import run_cli, tree_hash

from scaffold import add as add_module
from scaffold.add import Registration, RegistryError, register
from scaffold.options import NewProject
from scaffold.render import create_project

PYTHON = sys.executable
RUFF = [PYTHON, "-m", "ruff"]


def render(root: Path, name: str, **options) -> Path:
    dest = root / name
    create_project(NewProject(dest=dest, **options), git=False)
    return dest


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """A project as `scaffold new` writes it (lenet: the project's own tests run fast)."""
    return render(tmp_path_factory.mktemp("pristine"), "proj", model="lenet")


@pytest.fixture
def project(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "proj"))


def actions(out: str) -> list[tuple[str, str]]:
    """[(action, path)] from the plan on stdout: `{action:>12}  {path}` lines ('Next:' left out)."""
    return [(line[:12].strip(), line[14:]) for line in out.splitlines() if line[12:14] == "  "]


def check_clean(root: Path, files: list[str]) -> None:
    """black- and ruff-clean under the project's own pyproject.toml (line length 100)."""
    mode = black.Mode(line_length=100)
    for name in files:
        text = (root / name).read_text()
        assert black.format_str(text, mode=mode) == text, f"black would reformat {name}"
        assert "{{" not in text and "{%" not in text, name
    result = subprocess.run(
        [*RUFF, "check", "--no-cache", *files], cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The environment of the generated projects' own processes: one thread each, no bytecode files.
PROJECT_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def run_python(project: Path, script: str) -> subprocess.CompletedProcess:
    """`script` run by Python in the project folder; it must succeed."""
    run = subprocess.run(
        [PYTHON, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        env=PROJECT_ENV,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def last_json(run: subprocess.CompletedProcess) -> dict:
    """The JSON object a script printed on its last line."""
    return json.loads(run.stdout.strip().splitlines()[-1])


def add_model(project: Path, capsys, name: str) -> set[str]:
    """`scaffold add model NAME` in `project`, checked: the files it wrote, black- and ruff-clean;
    returns the lines it added to model.py."""
    before = (project / "model.py").read_text()
    code, out, err = run_cli(capsys, "add", "model", name, "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [
        ("create", f"model_{name}.py"),
        ("create", f".copier-answers.model-{name}.yml"),
        ("update", "model.py"),
    ]
    check_clean(project, [f"model_{name}.py", "model.py"])
    return set((project / "model.py").read_text().splitlines()) - set(before.splitlines())


# ---- each component on a fresh project ---------------------------------------------------


ADDS = {
    "hook": (
        ["hook"],
        [
            ("create", "hooks/my_hook.py"),
            ("create", ".copier-answers.hook-my_hook.yml"),
            ("update", "hooks/__init__.py"),
        ],
    ),
    "hook-gradients": (
        ["hook", "grad_watch", "--kind", "gradients"],
        [
            ("create", "hooks/grad_watch.py"),
            ("create", ".copier-answers.hook-grad_watch.yml"),
            ("update", "hooks/__init__.py"),
        ],
    ),
    "model": (
        ["model", "tiny_cnn"],
        [
            ("create", "model_tiny_cnn.py"),
            ("create", ".copier-answers.model-tiny_cnn.yml"),
            ("update", "model.py"),
        ],
    ),
    "dataset": (
        ["dataset", "my_images"],
        [
            ("create", "dataset_my_images.py"),
            ("create", ".copier-answers.dataset-my_images.yml"),
            ("update", "dataset.py"),
        ],
    ),
}


@pytest.mark.parametrize("which", list(ADDS))
def test_add_to_fresh_project(project, capsys, which):
    args, expected = ADDS[which]
    code, out, err = run_cli(capsys, "add", *args, "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == expected
    assert out.splitlines()[0] == f"{'create':>12}  {expected[0][1]}"
    option = {"hook": "--hooks", "model": "--model", "dataset": "--dataset"}[args[0]]
    name = Path(expected[0][1]).stem.removeprefix(f"{args[0]}_")
    assert out.endswith(f"\n\nNext: python train.py {option} {name} --max-steps 20\n")
    check_clean(project, [path for _, path in expected if path.endswith(".py")])

    # The same add again changes nothing and says so.
    before = tree_hash(project)
    code, out, err = run_cli(capsys, "add", *args, "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [("identical", path) for _, path in expected]
    assert "Next:" not in out
    assert tree_hash(project) == before


def test_registry_lines_and_answers(project, capsys):
    for args, _ in ADDS.values():
        assert run_cli(capsys, "add", *args, "-C", str(project))[0] == 0
    hooks = (project / "hooks/__init__.py").read_text()
    assert "from hooks.grad_watch import GradWatch\nfrom hooks.gradients import" in hooks
    assert '    "my_hook": MyHook,\n    "grad_watch": GradWatch,\n}' in hooks
    model = (project / "model.py").read_text()
    assert "replace_stem\nfrom model_tiny_cnn import TinyCnn\n\n\n" in model
    assert '"mlp": MLP, "tiny_cnn": TinyCnn}' in model
    assert '    "tiny_cnn": "head",\n}' in model
    dataset = (project / "dataset.py").read_text()
    assert "from dataset_my_images import my_images_datasets\n" in dataset
    assert '    "my_images": my_images_datasets,\n}' in dataset
    assert "class GradWatch(GradientNorms):" in (project / "hooks/grad_watch.py").read_text()
    assert "class MyHook(Hook):" in (project / "hooks/my_hook.py").read_text()

    answers = yaml.safe_load((project / ".copier-answers.hook-grad_watch.yml").read_text())
    # Where `scaffold update` finds the template, and the version to merge from.
    assert answers.pop("_src_path") == "~/.cache/scaffold/hook.bundle"
    assert answers.pop("_commit") == "v" + answers["template_version"]
    assert answers == {
        "name": "grad_watch",
        "class_name": "GradWatch",
        "kind": "gradients",
        "template_version": answers["template_version"],
    }
    answers = yaml.safe_load((project / ".copier-answers.model-tiny_cnn.yml").read_text())
    assert (answers["name"], answers["class_name"]) == ("tiny_cnn", "TinyCnn")


@pytest.mark.parametrize("kind", ["activations", "nan_check"])
def test_hook_kinds_subclass_the_builtin(project, capsys, kind):
    code, out, _ = run_cli(capsys, "add", "hook", "--kind", kind, "-C", str(project))
    assert code == 0
    path = f"hooks/my_{kind}.py"
    assert ("create", path) in actions(out)
    base = {"activations": "ActivationStats", "nan_check": "NanCheck"}[kind]
    text = (project / path).read_text()
    assert f"from hooks.{kind} import {base}\n" in text
    assert f"class My{camel(kind)}({base}):" in text
    check_clean(project, [path, "hooks/__init__.py"])


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_generated_code_is_clean_for_short_and_long_names(project, capsys):
    """Every template, with 1- and 30-character names: black- and ruff-clean, nothing left over."""
    longest = "abcdefghijklmnopqrstuvwxyzabc"
    adds = [["model", "m"], ["model", longest + "m"], ["dataset", "d"], ["dataset", longest + "d"]]
    for letter, kind in zip("wxyz", add_module.HOOK_KINDS, strict=True):
        adds += [["hook", letter, "--kind", kind], ["hook", longest + letter, "--kind", kind]]
    changed = set()
    for args in adds:
        code, out, err = run_cli(capsys, "add", *args, "-C", str(project))
        assert (code, err) == (0, ""), args
        changed |= {path for action, path in actions(out) if path.endswith(".py")}
    assert len(changed) == 3 + len(adds)
    assert len(longest + "m") == add_module.MAX_NAME_LENGTH
    check_clean(project, sorted(changed))


def test_plan_is_relative_to_the_root_found_from_a_subfolder(project, capsys, monkeypatch):
    monkeypatch.chdir(project / "hooks")
    code, out, _ = run_cli(capsys, "add", "hook", "probe")
    assert code == 0
    assert "      create  hooks/probe.py\n" in out
    assert (project / "hooks/probe.py").is_file()


# ---- dry runs, conflicts, --force --------------------------------------------------------


@pytest.mark.parametrize("which", list(ADDS))
def test_dry_run_writes_nothing(project, capsys, which):
    args, expected = ADDS[which]
    before = tree_hash(project)
    code, out, err = run_cli(capsys, "add", *args, "--dry-run", "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [(f"would {action}", path) for action, path in expected]
    assert tree_hash(project) == before


def test_changed_file_is_a_conflict_until_force(project, capsys):
    assert run_cli(capsys, "add", "hook", "-C", str(project))[0] == 0
    hook = project / "hooks/my_hook.py"
    hook.write_text(hook.read_text() + "# mine\n")
    before = tree_hash(project)

    code, out, err = run_cli(capsys, "add", "hook", "-C", str(project))
    assert code == 1
    assert ("conflict", "hooks/my_hook.py") in actions(out)
    assert err.count("\n") == 1 and err.startswith("error: nothing was written: hooks/my_hook.py")
    assert "--force" in err
    assert tree_hash(project) == before

    # Another kind under the same name changes the file too: still a conflict.
    code, _, err = run_cli(
        capsys, "add", "hook", "my_hook", "--kind", "gradients", "-C", str(project)
    )
    assert code == 1 and "hooks/my_hook.py" in err
    assert tree_hash(project) == before

    code, out, err = run_cli(capsys, "add", "hook", "--force", "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [
        ("update", "hooks/my_hook.py"),
        ("identical", ".copier-answers.hook-my_hook.yml"),
        ("identical", "hooks/__init__.py"),
    ]
    assert "# mine" not in hook.read_text()


def test_conflict_writes_none_of_the_other_files(project, capsys):
    """A new hook file would be created, but its registry is gone: nothing is written."""
    registry = project / "hooks/__init__.py"
    registry.write_text(registry.read_text().replace("HOOKS = {", "HOOK_TABLE = {"))
    before = tree_hash(project)
    code, out, err = run_cli(capsys, "add", "hook", "-C", str(project))
    assert code == 1
    assert actions(out) == [
        ("would create", "hooks/my_hook.py"),
        ("would create", ".copier-answers.hook-my_hook.yml"),
        ("conflict", "hooks/__init__.py"),
    ]
    assert err.startswith("error: nothing was written: hooks/__init__.py has no `HOOKS = {...}`")
    assert tree_hash(project) == before
    # --force never rewrites a registry it cannot find its way around.
    assert run_cli(capsys, "add", "hook", "--force", "-C", str(project))[0] == 1
    assert tree_hash(project) == before


def test_registry_taken_by_another_class_is_a_conflict(project, capsys):
    registry = project / "hooks/__init__.py"
    text = registry.read_text().replace(
        '    "nan_check": NanCheck,\n', '    "nan_check": NanCheck,\n    "mine": NanCheck,\n'
    )
    registry.write_text(text)
    code, out, err = run_cli(capsys, "add", "hook", "mine", "-C", str(project))
    assert code == 1
    assert "hooks/__init__.py already maps 'mine' to NanCheck in HOOKS" in err
    assert not (project / "hooks/mine.py").exists()


def test_failed_write_puts_everything_back(project, capsys, monkeypatch):
    before = tree_hash(project)
    real_write = add_module.write_file
    calls = []

    def failing_write(target, content, mode):
        calls.append(target)
        if len(calls) == 3:  # the registry, after the hook file and its answers
            raise OSError(28, "No space left on device", str(target))
        real_write(target, content, mode)

    monkeypatch.setattr(add_module, "write_file", failing_write)
    code, _, err = run_cli(capsys, "add", "hook", "-C", str(project))
    assert code == 1 and "No space left on device" in err
    assert tree_hash(project) == before


# ---- usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["widget", "x"], "unknown component 'widget'; choose one of: hook, model"),
        (["model"], "`scaffold add model` needs a NAME"),
        (["launch", "x"], "`scaffold add launch` takes no NAME"),
        (["model", "x", "--kind", "gradients"], "--kind is for `scaffold add hook` only"),
        (["hook", "--kind", "weights"], "unknown hook kind 'weights'; choose one of: activations"),
        (["hook", "GradWatch"], "invalid hook name 'GradWatch': use lowercase letters"),
        (["model", "2d_net"], "invalid model name '2d_net'"),
        (["model", "n" * 31], "(at most 30 characters)"),
        (["dataset", "my-images"], "invalid dataset name 'my-images'"),
        (["hook", "class"], "invalid hook name 'class': it is a Python keyword"),
        (["model", "match"], "invalid model name 'match': it is a Python keyword"),
        (["model", "resnet18"], "model 'resnet18' is already built in"),
        (["model", "lenet"], "model 'lenet' is already built in"),
        (["dataset", "cifar10"], "dataset 'cifar10' is already built in"),
        (["hook", "activations"], "hook 'activations' is already built in"),
        (["hook", "base"], "hook 'base' is already built in"),
        (["model", "le_net"], "model.py already defines LeNet"),
        (["hook", "hook_set"], "hooks/__init__.py already defines HookSet"),
        (["dataset", "torchvision"], "dataset.py already defines torchvision_datasets"),
        (["hook", "hook"], "would define Hook, a name its module imports"),
        (["slurm"], "this project was generated without --ddp"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(project, capsys, args, message):
    before = tree_hash(project)
    code, out, err = run_cli(capsys, "add", *args, "-C", str(project))
    assert code == 2, err
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert tree_hash(project) == before


def test_outside_a_project(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "add", "hook")
    assert (code, out) == (2, "")
    assert err.startswith("error: not inside a scaffold project: no .copier-answers.yml in")
    assert err.count("\n") == 1
    code, _, err = run_cli(capsys, "add", "hook", "-C", str(tmp_path / "missing"))
    assert code == 2 and "is not a directory" in err


# ---- launch and slurm: files from the project template -----------------------------------


@pytest.fixture(scope="session")
def bare(tmp_path_factory) -> Path:
    """No launch.json and no hooks/: what `add launch` and `add hook` refuse or fill in."""
    return render(tmp_path_factory.mktemp("bare"), "bare", model="lenet", vscode=False, hooks=False)


def test_add_launch_to_project_without_one(bare, tmp_path, capsys):
    project = Path(shutil.copytree(bare, tmp_path / "bare"))
    code, out, err = run_cli(capsys, "add", "launch", "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [("create", ".vscode/launch.json"), ("update", ".copier-answers.yml")]
    json.loads((project / ".vscode/launch.json").read_text())
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["vscode"] is True
    # The same file `scaffold new` writes with the same answers.
    fresh = render(tmp_path, "fresh", model="lenet", vscode=True, hooks=False)
    launch = (project / ".vscode/launch.json").read_text()
    assert launch == (fresh / ".vscode/launch.json").read_text()

    code, out, _ = run_cli(capsys, "add", "launch", "-C", str(project))
    assert (code, actions(out)) == (0, [("identical", ".vscode/launch.json")])

    (project / ".vscode/launch.json").write_text(launch.replace('"Train"', '"Mine"'))
    code, out, err = run_cli(capsys, "add", "launch", "-C", str(project))
    assert code == 1 and "error: nothing was written: .vscode/launch.json differs" in err
    assert "Mine" in (project / ".vscode/launch.json").read_text()


def test_add_launch_dry_run(bare, capsys):
    before = tree_hash(bare)
    code, out, _ = run_cli(capsys, "add", "launch", "--dry-run", "-C", str(bare))
    assert code == 0
    assert actions(out) == [
        ("would create", ".vscode/launch.json"),
        ("would update", ".copier-answers.yml"),
    ]
    assert tree_hash(bare) == before


def test_add_hook_needs_the_hooks_package(bare, tmp_path, capsys):
    project = Path(shutil.copytree(bare, tmp_path / "bare"))
    code, _, err = run_cli(capsys, "add", "hook", "-C", str(project))
    assert code == 2 and "generated with --no-hooks" in err


def test_add_slurm_restores_the_script(tmp_path, capsys):
    project = render(tmp_path, "ddp", model="lenet", ddp=True, vscode=False, hooks=False)
    script = project / "scripts/slurm.sbatch"
    original = script.read_text()
    script.unlink()
    code, out, err = run_cli(capsys, "add", "slurm", "-C", str(project))
    assert (code, err) == (0, "")
    assert actions(out) == [("create", "scripts/slurm.sbatch")]
    assert script.read_text() == original
    assert script.stat().st_mode & stat.S_IXUSR
    code, out, _ = run_cli(capsys, "add", "slurm", "-C", str(project))
    assert (code, actions(out)) == (0, [("identical", "scripts/slurm.sbatch")])


# ---- registry edits on their own ----------------------------------------------------------


MODEL_ENTRY = Registration("model.py", "model_x", "X", [("MODELS", "x", "X")])


def registered(text: str, registration: Registration = MODEL_ENTRY, root: Path = Path("/")) -> str:
    result = register(text, registration, root)
    assert register(result, registration, root) == result  # idempotent
    return result


def test_register_into_a_one_line_dict_that_grows_too_long():
    text = "import os\n\nMODELS = {" + ", ".join(f'"m{i}": M{i}' for i in range(9)) + "}\n"
    result = registered(text)
    assert result.startswith("import os\n\nfrom model_x import X\n\nMODELS = {\n")
    assert '    "m8": M8,\n    "x": X,\n}\n' in result
    assert black.format_str(result, mode=black.Mode(line_length=100)) == result


@pytest.mark.parametrize("width, lines", [(100, 1), (101, 4)])
def test_one_line_dict_stays_one_line_up_to_100_characters(width, lines):
    key = "k" * (width - len('M = {"": A, "x": X}'))
    registration = Registration("model.py", "model_x", "X", [("M", "x", "X")])
    result = registered(f'"""Doc."""\n\nM = {{"{key}": A}}\n', registration)
    assert result.startswith('"""Doc."""\n\nfrom model_x import X\n\nM = {')
    assert len(result.split("\n\n")[2].splitlines()) == lines
    assert black.format_str(result, mode=black.Mode(line_length=100)) == result


def test_register_keeps_layout_comments_and_line_endings():
    text = (
        '"""Doc."""\r\n\r\nMODELS = {\r\n    "a": A,  # the first\r\n    # more below\r\n'
        '    "b": B  # no comma\r\n}\r\nOTHER = 1\r\n'
    )
    result = registered(text)
    assert result == (
        '"""Doc."""\r\n\r\nfrom model_x import X\r\n\r\nMODELS = {\r\n    "a": A,  # the first\r\n'
        '    # more below\r\n    "b": B,  # no comma\r\n    "x": X,\r\n}\r\nOTHER = 1\r\n'
    )


def test_register_sorts_into_the_projects_own_imports(tmp_path):
    (tmp_path / "hooks").mkdir()
    text = (
        "from torch import nn\n\nfrom hooks.activations import A\nfrom hooks.zeta import Z\n\n"
        'HOOKS = {\n    "a": A,\n}\n'
    )
    registration = Registration("hooks/__init__.py", "hooks.gamma2", "G", [("HOOKS", "g", "G")])
    result = registered(text, registration, tmp_path)
    assert "import A\nfrom hooks.gamma2 import G\nfrom hooks.zeta import Z\n" in result
    registration = Registration("hooks/__init__.py", "hooks.zz", "ZZ", [("HOOKS", "zz", "ZZ")])
    assert "import Z\nfrom hooks.zz import ZZ\n\n" in registered(result, registration, tmp_path)


def test_register_refuses_what_it_cannot_edit():
    with pytest.raises(RegistryError, match="has no `MODELS = {...}`"):
        register("MODELS = dict(a=A)\n", MODEL_ENTRY, Path("/"))
    with pytest.raises(RegistryError, match="is not valid Python"):
        register("MODELS = {\n", MODEL_ENTRY, Path("/"))
    with pytest.raises(RegistryError, match="already maps 'x' to Y in MODELS"):
        register('MODELS = {"x": Y}\n', MODEL_ENTRY, Path("/"))


def test_many_models_stay_black_and_ruff_clean(project, capsys):
    names = ["tiny_cnn", "wide_net", "net2", "net10", "another_model_with_a_long_name"]
    for name in names:
        assert run_cli(capsys, "add", "model", name, "-C", str(project))[0] == 0
    text = (project / "model.py").read_text()
    assert "CUSTOM_MODELS = {\n" in text  # grew past 100 characters: one item a line
    files = ["model.py", *(f"model_{name}.py" for name in names)]
    check_clean(project, files)


# ---- the added code at work (slow: imports torch in subprocesses) -------------------------


def hand_edit(project: Path) -> None:
    """What a user does before running `scaffold add`: own code in train.py and the registry."""
    train = project / "train.py"
    text = train.read_text()
    marker = "\n\ndef main("
    assert marker in text
    train.write_text(text.replace(marker, '\n\nUSER_NOTE = "kept"' + marker, 1))
    registry = project / "hooks/__init__.py"
    text = registry.read_text()
    text = text.replace(
        "from hooks.nan_check import NanCheck\n",
        "from hooks.nan_check import NanCheck\nfrom hooks.zzz_mine import Mine\n",
    )
    text = text.replace(
        '    "nan_check": NanCheck,\n', '    "nan_check": NanCheck,\n    "mine": Mine,\n'
    )
    registry.write_text(text)
    (project / "hooks/zzz_mine.py").write_text(
        '"""A hook of my own."""\n\nfrom hooks.nan_check import NanCheck\n\n\n'
        "class Mine(NanCheck):\n    pass\n"
    )


def test_hand_edited_project_keeps_its_lines(project, capsys):
    hand_edit(project)
    train_before = (project / "train.py").read_text()
    registry_before = (project / "hooks/__init__.py").read_text()
    code, out, _ = run_cli(
        capsys, "add", "hook", "grad_watch", "--kind", "gradients", "-C", str(project)
    )
    assert code == 0 and ("update", "hooks/__init__.py") in actions(out)
    registry = (project / "hooks/__init__.py").read_text()
    added = set(registry.splitlines()) - set(registry_before.splitlines())
    assert added == {"from hooks.grad_watch import GradWatch", '    "grad_watch": GradWatch,'}
    assert "from hooks.zzz_mine import Mine\n" in registry and '    "mine": Mine,\n' in registry
    assert (project / "train.py").read_text() == train_before
    check_clean(project, ["hooks/__init__.py", "hooks/grad_watch.py"])


@pytest.mark.slow
def test_added_components_work_in_a_hand_edited_project(project, capsys):
    hand_edit(project)
    train_before = (project / "train.py").read_text()
    for args in [
        ["hook"],
        ["hook", "grad_watch", "--kind", "gradients"],
        ["hook", "--kind", "activations"],
        ["model", "tiny_cnn"],
        ["dataset", "my_images"],
    ]:
        code, _, err = run_cli(capsys, "add", *args, "-C", str(project))
        assert (code, err) == (0, "")
    registry = (project / "hooks/__init__.py").read_text()
    assert "from hooks.zzz_mine import Mine\n" in registry and '"mine": Mine,' in registry
    assert (project / "train.py").read_text() == train_before

    # The generated tests that go through the registries (every hook of HOOKS, every model of
    # MODEL_NAMES) and those of the data. The rest of the suite does not depend on what was
    # added, and test_variants.py runs it.
    registry_tests = ["tests/test_hooks.py", "tests/test_summary.py", "tests/test_data.py"]
    tests = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *registry_tests],
        cwd=project,
        capture_output=True,
        text=True,
        env=PROJECT_ENV,
        timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]

    # The acceptance run (resnet18, the new hooks) and one with the new model and dataset.
    script = """
import train
common = ["--epochs", "1", "--max-steps", "2", "--log-every", "1", "--device", "cpu",
          "--workers", "0", "--fake-size", "32", "--batch-size", "8"]
train.main([*common, "--model", "resnet18", "--hooks", "activations,grad_watch",
            "--output-dir", "runs/acceptance"])
train.main([*common, "--model", "tiny_cnn", "--dataset", "my_images",
            "--hooks", "my_hook,my_activations", "--output-dir", "runs/added"])
"""
    run_python(project, script)
    for folder, hooks, module in [
        ("acceptance", ["activations", "grad_watch"], "layer1.0.conv1"),
        ("added", ["my_hook", "my_activations"], "features.0"),
    ]:
        lines = (project / "runs" / folder / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line) for line in lines if '"kind": "step"' in line]
        assert [record["step"] for record in steps] == [1, 2]
        for record in steps:
            assert sorted(record["hooks"]) == sorted(hooks)
            for hook in hooks:
                assert module in record["hooks"][hook], (hook, sorted(record["hooks"][hook]))
    first = (project / "runs/acceptance/metrics.jsonl").read_text().splitlines()[0]
    grad_watch = json.loads(first)["hooks"]["grad_watch"]
    assert set(grad_watch["layer1.0.conv1"]) == {"grad_output", "weight"}


@pytest.fixture(scope="session")
def segmentation(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("seg"), "seg", task="segmentation", model="unet")


def test_segmentation_projects_get_segmentation_components(segmentation, tmp_path, capsys):
    """A model that maps images to per-pixel logits, a dataset of (image, mask) pairs: both train
    in the segmentation project as added, without an edit."""
    project = Path(shutil.copytree(segmentation, tmp_path / "seg"))
    for args in [["model", "tiny_seg"], ["dataset", "squares"]]:
        code, _, err = run_cli(capsys, "add", *args, "-C", str(project))
        assert (code, err) == (0, "")
    assert "class TinySeg(nn.Module):" in (project / "model_tiny_seg.py").read_text()
    assert "(image, mask)" in (project / "dataset_squares.py").read_text()
    assert yaml.safe_load((project / ".copier-answers.model-tiny_seg.yml").read_text())["task"] == (
        "segmentation"
    )
    check_clean(project, ["model_tiny_seg.py", "dataset_squares.py", "model.py", "dataset.py"])
    script = """
import json, train
metrics = train.main(["--model", "tiny_seg", "--dataset", "squares", "--num-classes", "2",
                      "--synthetic-size", "16", "--batch-size", "8", "--epochs", "1",
                      "--device", "cpu", "--workers", "0", "--output-dir", "runs/added"])
print(json.dumps(metrics))
"""
    run = run_python(project, script)
    metrics = last_json(run)
    assert metrics["step"] == 2 and 0 <= metrics["val_miou"] <= 1
    assert set(metrics) >= {"val_loss", "val_miou", "val_pixel_acc", "val_iou/0"}


def test_a_language_model_project_gets_a_language_model(tmp_path, capsys):
    """The added model is causal (later tokens change no earlier logit), trains on the synthetic
    language without an edit, and predict.py generates with it from its checkpoint alone."""
    project = render(tmp_path, "words", task="lm", model="gpt_tiny")
    assert add_model(project, capsys, "byte_conv") == {
        "from model_byte_conv import ByteConv",
        'CUSTOM_MODELS: dict[str, type[nn.Module]] = {"byte_conv": ByteConv}',
    }
    script = """
import json, math, torch, model, predict, train
net = model.build_model("byte_conv", 256, {"n_layer": None, "n_head": None, "n_embd": 32,
                                            "block_size": None, "dropout": None})
tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
changed = tokens.clone()
changed[:, 40:] = (changed[:, 40:] + 1) % 256
with torch.no_grad():
    before, after = net(tokens), net(changed)
assert before.shape == (2, 64, 256)
assert torch.equal(before[:, :40], after[:, :40]) and not torch.equal(before[:, 40:], after[:, 40:])
metrics = train.main(["--model", "byte_conv", "--dataset", "synthetic", "--tokenizer", "byte",
                      "--synthetic-size", "20000", "--max-steps", "40", "--epochs", "1",
                      "--lr", "0.003", "--device", "cpu", "--workers", "0",
                      "--output-dir", "runs/added"])
texts = predict.main(["runs/added/best.pt", "The dog", "--max-new-tokens", "8", "--seed", "1"])
print(json.dumps({"val_loss": metrics["val_loss"], "chance": math.log(256), "texts": texts}))
"""
    run = run_python(project, script)
    result = last_json(run)
    assert result["val_loss"] < result["chance"] - 2  # learnt far more than the byte frequencies
    [text] = result["texts"]
    assert text.startswith("The dog") and len(text) > len("The dog")


def test_a_detection_project_gets_a_detector(tmp_path, capsys):
    """The added detector is registered with its detection heads, trains on the synthetic shapes
    without an edit, and --freeze backbone leaves exactly its heads training."""
    project = render(tmp_path, "boxes", task="detection", model="tiny_rcnn")
    assert add_model(project, capsys, "small_rcnn") == {
        "from model_small_rcnn import SmallRcnn",
        'CUSTOM_MODELS = {"tiny_rcnn": tiny_rcnn, "small_rcnn": SmallRcnn}',
        '    "small_rcnn": ("rpn", "roi_heads"),',
    }
    script = """
import json, train
args = ["--model", "small_rcnn", "--dataset", "synthetic", "--num-classes", "3",
        "--synthetic-size", "16", "--image-size", "64", "--batch-size", "8", "--epochs", "1",
        "--device", "cpu", "--workers", "0"]
metrics = train.main([*args, "--output-dir", "runs/added"])
frozen = train.main([*args, "--freeze", "backbone", "--output-dir", "runs/frozen"])
print(json.dumps(metrics))
"""
    run = run_python(project, script)
    metrics = last_json(run)
    assert metrics["step"] == 2 and 0 <= metrics["val_map"] <= 1
    assert set(metrics) >= {"val_loss", "val_map", "val_map50", "val_map75"}
    assert "froze 15 parameter tensors (backbone)" in run.stdout


@pytest.mark.parametrize("task, model", [("lm", "gpt_tiny"), ("detection", "tiny_rcnn")])
def test_a_project_of_another_task_gets_no_dataset(tmp_path, capsys, task, model):
    project = render(tmp_path, "other", task=task, model=model)
    before = tree_hash(project)
    code, out, err = run_cli(capsys, "add", "dataset", "mine", "-C", str(project))
    assert (code, out) == (2, "")
    assert err == (
        "error: `scaffold add dataset` writes classification and segmentation datasets; for "
        f'--task {task}, edit dataset.py (its README\'s "Where to change what" says where)\n'
    )
    assert tree_hash(project) == before
