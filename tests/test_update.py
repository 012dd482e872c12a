"""`scaffold update` and `check-update` over a template history built here (issue 7).

A throwaway "scaffold repository" gets two releases: v1.0.0 is the installed project template as
it is, v1.1.0 changes the default learning rate (one line of options.py), its --help text (another
line) and adds tests/test_defaults.py. scaffold.release turns each release into bundles (as the
release step does), and SCAFFOLD_BUNDLE_DIR points the scaffold under test at them: v1 "before
pip install -U", v2 after. HOME is a temporary folder, so ~/.cache/scaffold is too.

Everything runs `python -m scaffold` in a subprocess, so the scaffold under test is whichever
this interpreter imports: the source tree, or a wheel installed into a fresh venv.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import tree_hash

import scaffold
from scaffold import release
from scaffold.render import template_dir

# Tests that share the updated project run on one xdist worker (make test: --dist loadgroup);
# the others spread out, each worker building the two-release history once (about 2 s).
SHARED_UPDATE = pytest.mark.xdist_group("update-shared")

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def options_line(pattern: str) -> str:
    """The one line of the template's options.py matching `pattern`, stripped: found, not spelled
    here, so that rewording options.py does not break these tests (only removing the setting)."""
    text = (template_dir("project") / "template" / "options.py.jinja").read_text()
    found = [line.strip() for line in text.splitlines() if re.search(pattern, line)]
    assert len(found) == 1, f"options.py.jinja has {len(found)} lines matching {pattern!r}"
    return found[0]


# v1.1.0 changes two lines of options.py (the default learning rate and its --help text); the user
# changes a third, and in conflicting_project the first.
LR_V1 = options_line(r"args\.lr = 0\.01 if")
LR_V2 = LR_V1.replace("0.01", "0.1")
LR_USER = LR_V1.replace("0.01", "0.02")
HELP_V1 = options_line(r"help=.*default: 0\.01")
HELP_V2 = HELP_V1.replace("0.01", "0.1")
USER_V1 = options_line(r'"--log-every".*default=10\b')
USER_V2 = USER_V1.replace("default=10", "default=25")
NEW_TEST = '''"""Added by template v1.1.0."""

import train


def test_default_learning_rate():
    assert train.parse_args([]).lr == 0.1
'''
# A stand-in for the components `scaffold add` writes: its own template and answers file.
EXTRA_COPIER_YML = """_subdirectory: template
_answers_file: ".copier-answers.extra-{{ name }}.yml"
_envops:
  undefined: jinja2.StrictUndefined
name:
  type: str
  default: thing
template_version:
  type: str
  default: "0.0.0"
  when: false
"""
EXTRA_ANSWERS = "{{ dict(_copier_answers, template_version=template_version) | to_nice_yaml -}}\n"


@dataclass
class History:
    repo: Path
    v1: Path  # bundles of a scaffold 1.0.0 wheel
    v2: Path  # bundles of a scaffold 1.1.0 wheel


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env or {**os.environ, **IDENTITY},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} no longer has exactly one {old!r}: update this test"
    path.write_text(text.replace(old, new))


def release_version(repo: Path, version: str) -> None:
    """The release step's edits: __version__, and the templates' template_version default."""
    (repo / "scaffold" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    for config in (repo / "templates").glob("*/copier.yml"):
        text = config.read_text()
        block = re.search(r"^template_version:\n(?:[ \t]+.*\n)*", text, re.MULTILINE)
        new_block = re.sub(r"default: .*", f'default: "{version}"', block.group(0))
        config.write_text(text.replace(block.group(0), new_block))


def build_bundles(repo: Path, out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scaffold.release",
            "--repo",
            str(repo),
            "--out",
            str(out),
            "--release",
        ],
        env={**os.environ, **IDENTITY},
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> History:
    base = tmp_path_factory.mktemp("history")
    repo = base / "scaffold"
    shutil.copytree(
        template_dir("project"),
        repo / "templates" / "project",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    extra = repo / "templates" / "extra"
    (extra / "template" / "extras").mkdir(parents=True)
    (extra / "copier.yml").write_text(EXTRA_COPIER_YML)
    (extra / "template" / "{{ _copier_conf.answers_file }}.jinja").write_text(EXTRA_ANSWERS)
    (extra / "template" / "extras" / "{{ name }}.py.jinja").write_text("VALUE = 1\n")
    (repo / "scaffold").mkdir()
    release_version(repo, "1.0.0")
    git("init", "--quiet", cwd=repo)
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "-m", "Release 1.0.0", cwd=repo)
    git("tag", "v1.0.0", cwd=repo)
    build_bundles(repo, base / "v1")

    options = repo / "templates" / "project" / "template" / "options.py.jinja"
    replace_once(options, LR_V1, LR_V2)
    replace_once(options, HELP_V1, HELP_V2)
    (repo / "templates" / "project" / "template" / "tests" / "test_defaults.py").write_text(
        NEW_TEST
    )
    (extra / "template" / "extras" / "{{ name }}.py.jinja").write_text("VALUE = 2\n")
    release_version(repo, "1.1.0")
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "-m", "Release 1.1.0", cwd=repo)
    git("tag", "v1.1.0", cwd=repo)
    build_bundles(repo, base / "v2")
    return History(repo, base / "v1", base / "v2")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


def environment(home: Path, bundles: Path) -> dict[str, str]:
    return {
        **os.environ,
        **IDENTITY,
        "HOME": str(home),
        "SCAFFOLD_BUNDLE_DIR": str(bundles),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def scaffold_cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scaffold", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def new_project(where: Path, home: Path, bundles: Path, *flags: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    result = scaffold_cli(
        "new", "proj", "--model", "lenet", *flags, cwd=where, env=environment(home, bundles)
    )
    assert result.returncode == 0, result.stderr
    return where / "proj"


def commit_all(project: Path, message: str) -> None:
    git("add", "--all", cwd=project)
    git("commit", "--quiet", "-m", message, cwd=project)


def answers(project: Path, name: str = ".copier-answers.yml") -> dict:
    return yaml.safe_load((project / name).read_text())


def status(project: Path) -> str:
    return git("status", "--porcelain", cwd=project)


def user_edits(project: Path) -> None:
    replace_once(project / "options.py", USER_V1, USER_V2)
    (project / "my_notes.md").write_text("my own file\n")
    commit_all(project, "My changes")


def add_extra_component(project: Path, home: Path, bundles: Path, monkeypatch) -> None:
    """What `scaffold add` does for a component, with the stand-in template."""
    from scaffold import render

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SCAFFOLD_BUNDLE_DIR", str(bundles))
    staging = project.parent / "staging-extra"
    render.copier_copy({"name": "thing"}, staging, name="extra")
    shutil.copytree(staging, project, dirs_exist_ok=True)
    shutil.rmtree(staging)
    commit_all(project, "Add the extra component")


# ---- the release step -----------------------------------------------------------------------


def test_release_bundles_hold_every_version(history):
    manifest = json.loads((history.v2 / "manifest.json").read_text())
    assert manifest["version"] == "1.1.0"
    assert manifest["templates"]["project"]["versions"] == ["1.0.0", "1.1.0"]
    heads = git("bundle", "list-heads", str(history.v2 / "project.bundle"), cwd=history.repo)
    assert "refs/tags/v1.0.0" in heads and "refs/tags/v1.1.0" in heads
    # Deterministic: the 1.0.0 release is the same commit in the 1.0.0 and the 1.1.0 bundles.
    old = git("bundle", "list-heads", str(history.v1 / "project.bundle"), cwd=history.repo)
    tag = {line.split()[1]: line.split()[0] for line in heads.splitlines()}
    assert f"{tag['refs/tags/v1.0.0']} refs/tags/v1.0.0" in old


def test_release_mode_refuses_an_untagged_version(history, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(history.repo, repo)
    (repo / "scaffold" / "__init__.py").write_text('__version__ = "1.2.0"\n')
    with pytest.raises(release.ReleaseError, match="v1.2.0 is not tagged"):
        release.build_bundles(repo, tmp_path / "out", release=True)
    # A development build bundles the working tree as the coming version instead.
    manifest = release.build_bundles(repo, tmp_path / "out", warn=lambda message: None)
    assert manifest["templates"]["project"]["versions"] == ["1.0.0", "1.1.0", "1.2.0"]
    assert release.stale_templates(repo, tmp_path / "out") == []


# ---- scaffold new records the version -------------------------------------------------------


def test_new_records_the_version_and_a_stable_source(history, home, tmp_path):
    project = new_project(tmp_path, home, history.v1)
    recorded = answers(project)
    assert recorded["_commit"] == "v1.0.0"
    assert recorded["_src_path"] == "~/.cache/scaffold/project.bundle"
    assert recorded["template_version"] == "1.0.0"
    assert 'TEMPLATE_VERSION = "1.0.0"' in (project / "train.py").read_text()
    cached = home / ".cache" / "scaffold" / "project.bundle"
    assert cached.read_bytes() == (history.v1 / "project.bundle").read_bytes()


def files(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(root).parts
    )


def test_fast_path_renders_exactly_like_the_bundle(tmp_path, monkeypatch):
    """`scaffold new` renders this installation's template folder and stamps the answers file;
    that must give what copier gives from the bundle at the installed tag, byte for byte."""
    from copier import run_copy

    from scaffold import render
    from scaffold.options import NewProject

    monkeypatch.delenv("SCAFFOLD_BUNDLE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    source = render.template_source("project")
    assert source.folder_is_release
    data = NewProject(dest=Path("proj"), model="lenet", ddp=True).to_data()
    render.copier_copy(data, tmp_path / "fast" / "proj")
    render.refresh_caches()
    reference = tmp_path / "bundle" / "proj"
    run_copy(
        "~/.cache/scaffold/project.bundle",
        reference,
        data=data,
        vcs_ref=source.tag,
        defaults=True,
        overwrite=True,
        quiet=True,
    )
    fast = tmp_path / "fast" / "proj"
    assert files(fast) == files(reference)
    for name in files(reference):
        assert (fast / name).read_bytes() == (reference / name).read_bytes(), name
    assert answers(fast)["_commit"] == source.tag


# ---- update ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def updated(history, home, tmp_path_factory):
    """A v1 project with the user's edit, own file and a component, updated to v2."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = new_project(tmp_path_factory.mktemp("updated"), home, history.v1)
        user_edits(project)
        add_extra_component(project, home, history.v1, monkeypatch)
    env = environment(home, history.v2)
    check_before = scaffold_cli("check-update", cwd=project, env=env)
    head = git("rev-parse", "HEAD", cwd=project)
    result = scaffold_cli("update", cwd=project, env=env)
    return project, result, check_before, head


@SHARED_UPDATE
def test_update_applies_the_template_and_keeps_user_edits(updated, history, home):
    project, result, check_before, head = updated
    assert result.returncode == 0, result.stderr
    options = (project / "options.py").read_text()
    assert LR_V2 in options and HELP_V2 in options  # the template's changes
    assert USER_V2 in options  # the user's edit
    assert (project / "my_notes.md").read_text() == "my own file\n"
    assert (project / "tests" / "test_defaults.py").read_text() == NEW_TEST
    recorded = answers(project)
    assert recorded["_commit"] == "v1.1.0" and recorded["template_version"] == "1.1.0"
    assert recorded["_src_path"] == "~/.cache/scaffold/project.bundle"
    assert 'TEMPLATE_VERSION = "1.1.0"' in (project / "train.py").read_text()
    # the component was updated too
    assert (project / "extras" / "thing.py").read_text() == "VALUE = 2\n"
    assert answers(project, ".copier-answers.extra-thing.yml")["_commit"] == "v1.1.0"
    # one line per file; nothing committed for the user (HEAD unchanged, changes unstaged)
    lines = result.stdout.splitlines()
    for verb, path in [
        ("updated", "options.py"),
        ("created", "tests/test_defaults.py"),
        ("updated", ".copier-answers.yml"),
        ("updated", "extras/thing.py"),
    ]:
        assert any(line.split() == [verb, path] for line in lines), result.stdout
    assert not any("my_notes.md" in line for line in lines)
    assert git("rev-parse", "HEAD", cwd=project) == head
    assert git("diff", "--cached", "--name-only", cwd=project) == ""
    # check-update, before and after (one test: xdist's loadgroup does not group under pytest 9)
    assert check_before.returncode == 1, check_before.stdout + check_before.stderr
    assert "project: template 1.0.0, installed 1.1.0 (update available)" in check_before.stdout
    assert "extra-thing: template 1.0.0, installed 1.1.0" in check_before.stdout
    after = scaffold_cli("check-update", cwd=project, env=environment(home, history.v2))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "project: template 1.1.0, installed 1.1.0 (up to date)" in after.stdout


@SHARED_UPDATE
@pytest.mark.slow
def test_updated_project_tests_pass(updated):
    """Every test module of the updated project imports (pytest collects them all) and a run
    trains through the updated options.py. The rest of its suite is lenet_minimal's, which
    test_variants.py runs in full: running it again here would test the template, not update."""
    project, result, _, _ = updated
    assert result.returncode == 0
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "smoke_run"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\b1 passed, \d+ deselected", tests.stdout), tests.stdout[-3000:]


def conflicting_project(tmp_path: Path, history: History, home: Path) -> Path:
    project = new_project(tmp_path, home, history.v1)
    replace_once(project / "options.py", LR_V1, LR_USER)
    commit_all(project, "My learning rate")
    return project


def test_conflict_inline(history, home, tmp_path):
    project = conflicting_project(tmp_path, history, home)
    result = scaffold_cli("update", cwd=project, env=environment(home, history.v2))
    assert result.returncode == 1
    assert any(line.split() == ["conflict", "options.py"] for line in result.stdout.splitlines())
    assert result.stderr.startswith("error: conflicts in options.py")
    assert len(result.stderr.strip().splitlines()) == 1
    options = (project / "options.py").read_text()
    assert "<<<<<<< before updating" in options and ">>>>>>> after updating" in options
    assert LR_USER in options and LR_V2 in options
    assert HELP_V2 in options  # the rest of the update went in
    assert "options.py" in git("diff", "--name-only", "--diff-filter=U", cwd=project)


def test_conflict_rej(history, home, tmp_path):
    project = conflicting_project(tmp_path, history, home)
    result = scaffold_cli(
        "update", "--conflict", "rej", cwd=project, env=environment(home, history.v2)
    )
    assert result.returncode == 1
    assert any(line.split() == ["conflict", "options.py"] for line in result.stdout.splitlines())
    # copier's rej mode: the file takes the template's version, the user's hunk goes to .rej
    assert LR_USER in (project / "options.py.rej").read_text()
    assert LR_V2 in (project / "options.py").read_text()


def test_refuses_a_dirty_tree_or_no_git(history, home, tmp_path):
    project = new_project(tmp_path / "dirty", home, history.v1)
    (project / "options.py").write_text((project / "options.py").read_text() + "# wip\n")
    before = status(project)
    result = scaffold_cli("update", cwd=project, env=environment(home, history.v2))
    assert result.returncode == 1
    assert "uncommitted changes" in result.stderr and "commit or stash" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert status(project) == before and answers(project)["_commit"] == "v1.0.0"

    bare = new_project(tmp_path / "nogit", home, history.v1, "--no-git")
    result = scaffold_cli(
        "update", "-C", str(bare), cwd=tmp_path, env=environment(home, history.v2)
    )
    assert result.returncode == 1
    assert "not in a git repository" in result.stderr and "git init" in result.stderr


def test_dry_run_changes_nothing(history, home, tmp_path):
    project = new_project(tmp_path, home, history.v1)
    head = git("rev-parse", "HEAD", cwd=project)
    result = scaffold_cli("update", "--dry-run", cwd=project, env=environment(home, history.v2))
    assert result.returncode == 0, result.stderr
    assert any(
        line.split() == ["would", "update", "options.py"] for line in result.stdout.splitlines()
    )
    assert any(
        line.split() == ["would", "create", "tests/test_defaults.py"]
        for line in result.stdout.splitlines()
    )
    assert status(project) == "" and git("rev-parse", "HEAD", cwd=project) == head
    assert answers(project)["_commit"] == "v1.0.0"


def test_up_to_date_and_bad_requests(history, home, tmp_path):
    project = new_project(tmp_path, home, history.v2)
    env = environment(home, history.v2)
    result = scaffold_cli("update", cwd=project, env=env)
    assert result.returncode == 0 and "Up to date" in result.stdout
    result = scaffold_cli("update", "--to", "9.9.9", cwd=project, env=env)
    assert result.returncode == 2 and "not in this scaffold's history" in result.stderr
    result = scaffold_cli("update", "--to", "1.0.0", cwd=project, env=env)
    assert result.returncode == 1 and "downgrades are not supported" in result.stderr
    result = scaffold_cli("update", "--set", "colour=red", cwd=project, env=env)
    assert result.returncode == 2 and "no such answer" in result.stderr
    result = scaffold_cli("update", "--set", "ddp=maybe", cwd=project, env=env)
    assert result.returncode == 2 and "expected true or false" in result.stderr
    result = scaffold_cli("update", "--conflict", "ours", cwd=project, env=env)
    assert result.returncode == 2
    assert status(project) == ""


def test_update_to_an_explicit_version(history, home, tmp_path):
    project = new_project(tmp_path, home, history.v1)
    result = scaffold_cli(
        "update", "--to", "v1.1.0", cwd=project, env=environment(home, history.v2)
    )
    assert result.returncode == 0, result.stderr
    assert answers(project)["_commit"] == "v1.1.0"


def test_plain_copier_update_works(history, home, tmp_path):
    project = new_project(tmp_path, home, history.v1)
    # `scaffold check-update` (any scaffold command) with the new install refreshes the cache.
    env = environment(home, history.v2)
    assert scaffold_cli("check-update", cwd=project, env=env).returncode == 1
    copier = Path(sys.executable).with_name("copier")
    command = [str(copier)] if copier.exists() else [sys.executable, "-m", "copier"]
    result = subprocess.run(
        [*command, "update", "--defaults", "--quiet"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert answers(project)["_commit"] == "v1.1.0"
    assert answers(project)["template_version"] == "1.1.0"  # from the released default
    assert LR_V2 in (project / "options.py").read_text()


@pytest.mark.slow
def test_set_ddp_adds_distributed_training(history, home, tmp_path):
    """Every project can train under torchrun; --set ddp=true adds the scripts and tests for it."""
    project = new_project(tmp_path, home, history.v2, "--no-ddp")
    assert (project / "distributed.py").is_file() and not (project / "scripts").exists()
    result = scaffold_cli(
        "update", "--set", "ddp=true", cwd=project, env=environment(home, history.v2)
    )
    assert result.returncode == 0, result.stderr
    assert "re-rendered with ddp=true" in result.stdout
    assert answers(project)["ddp"] is True
    created = {line.split()[1] for line in result.stdout.splitlines() if "created" in line.split()}
    assert {"scripts/train_ddp.sh", "scripts/slurm.sbatch", "tests/test_ddp.py"} <= created
    command = ["bash", "scripts/train_ddp.sh", "2", "--epochs=1", "--max-steps=2", "--device=cpu"]
    command += ["--workers=0", "--dataset=fake", "--fake-size=32", "--batch-size=8"]
    command += ["--output-dir=runs/ddp"]
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    run = subprocess.run(
        command,
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PATH": path},  # torchrun
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (project / "runs" / "ddp" / "last.pt").is_file()


# ---- --set that deletes files ---------------------------------------------------------------


def dry_run_files(where: Path, env: dict, *flags: str) -> set[str]:
    """The files `scaffold new proj FLAGS` would write."""
    where.mkdir(parents=True, exist_ok=True)
    result = scaffold_cli(
        "new", "proj", "--model", "lenet", *flags, "--dry-run", cwd=where, env=env
    )
    assert result.returncode == 0, result.stderr
    return {
        line.split()[-1] for line in result.stdout.splitlines() if line.split()[:1] == ["would"]
    }


def untouched(project: Path) -> tuple:
    """The project's files, its HEAD and its git status: equal means the command changed nothing."""
    return (
        tree_hash(project, ignore=(".git",)),
        git("rev-parse", "HEAD", cwd=project),
        status(project),
    )


def test_set_refuses_to_delete_a_changed_file_until_force(history, home, tmp_path):
    env = environment(home, history.v2)
    ddp_only = sorted(
        dry_run_files(tmp_path / "with", env, "--ddp")
        - dry_run_files(tmp_path / "without", env, "--no-ddp")
    )
    assert ddp_only, "the template writes no file only for --ddp: give this test another option"
    project = new_project(tmp_path, home, history.v2, "--ddp")
    changed = ddp_only[0]
    with open(project / changed, "a") as file:
        file.write("# my change\n")
    commit_all(project, "My change to a --ddp file")
    before = untouched(project)

    for flags in ([], ["--dry-run"]):
        result = scaffold_cli("update", "--set", "ddp=false", *flags, cwd=project, env=env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"error: --set ddp=false would delete {changed}, which you changed since scaffold "
            "wrote it: pass --force to delete it anyway\n"
        )
        assert untouched(project) == before

    result = scaffold_cli("update", "--set", "ddp=false", "--force", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    for name in ddp_only:
        assert not (project / name).exists(), name
        assert ["deleted", name] in lines
    assert answers(project)["ddp"] is False


def test_set_hooks_false_refuses_while_added_hooks_import_the_package(home, tmp_path):
    """Even with --force: the hooks `scaffold add hook` wrote import hooks.base."""
    env = {**environment(home, tmp_path), "HOME": str(tmp_path / "home")}
    del env["SCAFFOLD_BUNDLE_DIR"]  # this installation's bundles: they hold the hook template
    project = tmp_path / "proj"
    for command in (
        ["new", "proj", "--model", "lenet", "--hooks"],
        ["add", "hook", "-C", "proj"],
        ["add", "hook", "grad_watch", "--kind", "gradients", "-C", "proj"],
    ):
        result = scaffold_cli(*command, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
    commit_all(project, "Two hooks of my own")
    before = untouched(project)
    for flags in ([], ["--force"]):
        result = scaffold_cli("update", "--set", "hooks=false", *flags, cwd=project, env=env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            "error: --set hooks=false would delete hooks/, which the hooks you added with "
            "`scaffold add hook` import (grad_watch, my_hook): remove them first (hooks/NAME.py, "
            "their HOOKS entry and .copier-answers.hook-NAME.yml), or keep hooks on\n"
        )
        assert untouched(project) == before


# ---- the installation itself ----------------------------------------------------------------


def test_installation_carries_its_template_history(tmp_path, monkeypatch):
    """The bundles of this installation (wheel, or a checkout that builds them) hold the
    installed version, and `scaffold new` renders from the folder when it is that version."""
    from scaffold import render

    monkeypatch.delenv("SCAFFOLD_BUNDLE_DIR", raising=False)
    if os.environ.get("SCAFFOLD_TEST_WHEEL"):  # make test-wheel: prove what is under test
        assert "site-packages" in scaffold.__file__, scaffold.__file__
    source = render.template_source("project")
    assert source.version == scaffold.__version__
    assert source.versions[-1] == scaffold.__version__
    assert f"refs/tags/v{scaffold.__version__}" in git(
        "bundle", "list-heads", str(source.bundle), cwd=tmp_path
    )
    assert source.folder_is_release


# ---- the real upgrades: 0.1.0 and 0.2.0 projects to this template -----------------------------

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZER_LINE = (
    "        return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)\n"
)
LOOP_LINE = "            epoch_loss += loss.detach()\n"  # 0.1.0's loop, rewritten in 0.2.0
LOSS_LINE = "                        loss = criterion(model(images), labels)\n"  # task.py in 0.3.0
EPOCHS_LINE = '    optim.add_argument("--epochs", type=int, default=10)\n'  # options.py since 0.2.0
STEP_LINE = "            scaler.step(optimizer)\n"  # 0.1.0's train(); train_one_epoch() since 0.2.0


def release_bundles(base: Path, version: str) -> Path:
    """Bundles of release `version` as its own wheel would carry them, built from its commit in
    RELEASES; the test skips in a clone that lacks the commit."""
    commit = release.recorded_releases(ROOT)[version]
    probe = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT)
    if probe.returncode:
        pytest.skip(
            f"this clone lacks the {version} release commit {commit}: git fetch --unshallow"
        )
    old = base / f"scaffold-{version}"
    old.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    git("init", "--quiet", cwd=old)
    git("add", "--all", cwd=old)
    git("commit", "--quiet", "-m", f"Release {version}", cwd=old)
    git("tag", f"v{version}", cwd=old)
    build_bundles(old, base / f"v{version}")
    return base / f"v{version}"


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> History:
    """Bundles of the 0.1.0 release and of this checkout."""
    base = tmp_path_factory.mktemp("releases")
    old = release_bundles(base, "0.1.0")
    manifest = release.build_bundles(ROOT, base / "current", warn=lambda message: None)
    assert manifest["templates"]["project"]["versions"][:2] == ["0.1.0", "0.2.0"]
    return History(ROOT, old, base / "current")


@pytest.fixture(scope="module")
def release_0_2_0(tmp_path_factory, releases) -> History:
    """Bundles of the 0.2.0 release and of this checkout."""
    return History(ROOT, release_bundles(tmp_path_factory.mktemp("releases"), "0.2.0"), releases.v2)


def edited_project(tmp_path: Path, home: Path, history: History, old: str, new: str) -> Path:
    """A project of the old release in `history`, with train.py's `old` line edited to `new`."""
    project = new_project(tmp_path, home, history.v1)
    replace_once(project / "train.py", old, new)
    commit_all(project, "My change")
    return project


def project_of_0_1_0(tmp_path: Path, home: Path, releases: History, old: str, new: str) -> Path:
    project = edited_project(tmp_path, home, releases, old, new)
    assert answers(project)["_commit"] == "v0.1.0"
    return project


def trains_briefly(project: Path) -> subprocess.CompletedProcess:
    """Two steps of the updated project's train.py, into run/."""
    return subprocess.run(
        [sys.executable, "train.py", "--max-steps=2", "--epochs=1", "--workers=0", "--device=cpu"]
        + ["--fake-size=16", "--batch-size=8", "--optimizer=adamw", "--output-dir=run"],
        cwd=project,
        capture_output=True,
        text=True,
    )


def test_a_0_1_0_project_updates_and_keeps_an_edit_where_train_py_did_not_move(
    releases, home, tmp_path
):
    edited = OPTIMIZER_LINE.replace("lr=args.lr,", "lr=args.lr, betas=(0.9, 0.95),")
    project = project_of_0_1_0(tmp_path, home, releases, OPTIMIZER_LINE, edited)
    result = scaffold_cli("update", cwd=project, env=environment(home, releases.v2))
    assert result.returncode == 0, result.stderr
    assert f"project: template 0.1.0 -> {scaffold.__version__}" in result.stdout
    assert "created  distributed.py" in result.stdout and "conflict" not in result.stdout
    train = (project / "train.py").read_text()
    assert edited in train and "<<<<<<<" not in train
    assert "def train_one_epoch(" in train
    assert answers(project)["_commit"] == f"v{scaffold.__version__}"
    run = trains_briefly(project)
    assert run.returncode == 0, run.stderr
    assert (project / "run" / "last.pt").is_file()


def test_an_edit_where_train_py_moved_gives_conflict_markers_and_exit_1(releases, home, tmp_path):
    edited = LOOP_LINE.replace("\n", "  # my change\n")
    project = project_of_0_1_0(tmp_path, home, releases, LOOP_LINE, edited)
    result = scaffold_cli("update", cwd=project, env=environment(home, releases.v2))
    assert result.returncode == 1
    assert result.stderr == (
        "error: conflicts in train.py: resolve the <<<<<<< markers, then commit\n"
    )
    train = (project / "train.py").read_text()
    assert "<<<<<<< before updating" in train and ">>>>>>> after updating" in train
    assert edited in train, "the user's line is kept, inside the markers"


def project_of_0_2_0(tmp_path: Path, home: Path, history: History, old: str, new: str) -> Path:
    project = edited_project(tmp_path, home, history, old, new)
    assert answers(project)["_commit"] == "v0.2.0"
    return project


def test_a_0_2_0_project_updates_keeping_an_edit_where_train_py_did_not_move(
    release_0_2_0, home, tmp_path
):
    edited = OPTIMIZER_LINE.replace("lr=args.lr,", "lr=args.lr, betas=(0.9, 0.95),")
    project = project_of_0_2_0(tmp_path, home, release_0_2_0, OPTIMIZER_LINE, edited)
    result = scaffold_cli("update", cwd=project, env=environment(home, release_0_2_0.v2))
    assert result.returncode == 0, result.stderr
    assert f"project: template 0.2.0 -> {scaffold.__version__}" in result.stdout
    assert "created  task.py" in result.stdout and "conflict" not in result.stdout
    train = (project / "train.py").read_text()
    assert edited in train and "<<<<<<<" not in train and "task.loss(model, batch)" in train
    run = trains_briefly(project)
    assert run.returncode == 0, run.stderr
    assert (project / "run" / "best.pt").is_file()


def test_a_0_2_0_edit_of_the_loss_that_moved_to_task_py_is_a_conflict(
    release_0_2_0, home, tmp_path
):
    edited = LOSS_LINE.replace("labels)", "labels) * 2  # my loss")
    project = project_of_0_2_0(tmp_path, home, release_0_2_0, LOSS_LINE, edited)
    result = scaffold_cli("update", cwd=project, env=environment(home, release_0_2_0.v2))
    assert result.returncode == 1
    assert result.stderr == (
        "error: conflicts in train.py: resolve the <<<<<<< markers, then commit\n"
    )
    train = (project / "train.py").read_text()
    assert "<<<<<<< before updating" in train and edited in train
    # The conflict, and the summary printed, say where the loss is now (CHANGELOG.md's table).
    loss = f"task.py loss() (line {definition_line(project / 'task.py', 'loss')})"
    assert f"<<<<<<< before updating: your edit to train_one_epoch() belongs in {loss}\n" in train
    assert f"      -> the loss: {loss}" in result.stdout.splitlines()


def definition_line(path: Path, name: str) -> int:
    """The line of `def NAME(` in the file, which must have exactly one."""
    lines = path.read_text().splitlines()
    found = [number for number, line in enumerate(lines, 1) if line.startswith(f"def {name}(")]
    assert len(found) == 1, f"{path.name} defines {name} {len(found)} times"
    return found[0]


def defined_at(project: Path, file: str, name: str) -> str:
    """How the update names a function's place: "options.py parse_args() (line 74)"."""
    return f"{file} {name}() (line {definition_line(project / file, name)})"


def conflict_blocks(lines: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(first marker line, side before updating, side after updating) of each conflict."""
    blocks = []
    for index, line in enumerate(lines):
        if line.startswith("<<<<<<<"):
            middle = lines.index("=======", index)
            end = next(i for i in range(middle, len(lines)) if lines[i].startswith(">>>>>>>"))
            blocks.append((line, lines[index + 1 : middle], lines[middle + 1 : end]))
    return blocks


def after_updating(lines: list[str]) -> str:
    """The file with each conflict resolved to its side after updating."""
    kept, side = [], None
    for line in lines:
        if line.startswith("<<<<<<<"):
            side = "before"
        elif line == "=======" and side == "before":
            side = "after"
        elif line.startswith(">>>>>>>") and side == "after":
            side = None
        elif side != "before":
            kept.append(line)
    return "\n".join(kept) + "\n"


def test_three_edits_to_a_0_1_0_train_py_end_in_conflicts_that_say_where_the_code_is(
    releases, home, tmp_path
):
    """Issue 26: an optimizer change, a changed default and a line added to the training loop.
    Between 0.1.0 and now train.py was split up (options.py, train_one_epoch(), ...): the edit to
    build_optimizer(), which did not move, merges; each of the others is in a conflict of its own
    whose marker names the file and function where that code is now, and the update prints the
    same for every edit, with the line of the file where the edit is."""
    optimizer = OPTIMIZER_LINE.replace("lr=args.lr,", "lr=args.lr, betas=(0.9, 0.95),")
    epochs = EPOCHS_LINE.replace("default=10", "default=30")
    clip = "            nn.utils.clip_grad_value_(model.parameters(), 1.0)  # my clipping\n"
    project = new_project(tmp_path, home, releases.v1)
    assert answers(project)["_commit"] == "v0.1.0"
    replace_once(project / "train.py", OPTIMIZER_LINE, optimizer)
    replace_once(project / "train.py", EPOCHS_LINE, epochs)
    replace_once(project / "train.py", STEP_LINE, clip + STEP_LINE)
    commit_all(project, "My optimizer, my default, my clipping")

    result = scaffold_cli("update", cwd=project, env=environment(home, releases.v2))
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "error: conflicts in train.py: resolve the <<<<<<< markers, then commit\n"
    )
    options_at = defined_at(project, "options.py", "parse_args")
    optimizer_at = defined_at(project, "train.py", "build_optimizer")
    loop_at = defined_at(project, "train.py", "train_one_epoch")
    lines = (project / "train.py").read_text().splitlines()
    blocks = conflict_blocks(lines)
    assert [marker for marker, _, _ in blocks] == [
        f"<<<<<<< before updating: your edit to parse_args() belongs in {options_at}",
        f"<<<<<<< before updating: your edit to train() belongs in {loop_at}",
    ]
    # Each block holds its edit, in 0.1.0 code that train.py no longer has, against nothing.
    assert epochs.rstrip("\n") in blocks[0][1] and blocks[0][2] == []
    assert clip.rstrip("\n") in blocks[1][1] and blocks[1][2] == []
    # The optimizer edit merged into build_optimizer(), outside any conflict.
    start = definition_line(project / "train.py", "build_optimizer")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("def ", "class ")))
    assert optimizer.rstrip("\n") in lines[start:end]

    # The summary: each edit, its line in train.py now, and where its code is.
    printed = result.stdout.splitlines()
    version = scaffold.__version__
    assert (
        f'train.py: your edits, and where that code is in template {version} (CHANGELOG.md, "What '
        'moved where"):'
    ) in printed
    for edit, state, name, where in [
        (epochs, "conflict", "parse_args", f"the options, their checks and defaults: {options_at}"),
        (optimizer, "merged", "build_optimizer", f"the optimizer: {optimizer_at}"),
        (clip, "conflict", "train", f"the training loop: {loop_at}"),
    ]:
        found = [number for number, line in enumerate(printed) if f" ({state}) {name}(): " in line]
        assert len(found) == 1, result.stdout
        at = re.match(r"  train\.py:(\d+) ", printed[found[0]])
        assert at and lines[int(at.group(1)) - 1] == edit.rstrip("\n"), printed[found[0]]
        assert printed[found[0] + 1] == f"      -> {where}"

    # Once each edit is made where its code is now, keeping the side after updating of every
    # conflict leaves the new template's train.py with the optimizer edit in it.
    resolved = after_updating(lines)
    ast.parse(resolved)
    assert resolved == git("show", ":3:train.py", cwd=project).replace(OPTIMIZER_LINE, optimizer)


def test_the_what_moved_where_tables_name_places_that_exist():
    """Every place a row of CHANGELOG.md's tables names exists in its version: where the code
    was, in the release before the one that moved it; where it is, in that release (this tree
    for the coming one). `file.py` alone means the same names in that file."""
    from scaffold.conflicts import read_moves, span

    moves = read_moves((template_dir("project") / "template" / "CHANGELOG.md").read_text())
    assert {move.version for move in moves} >= {"0.2.0", "0.3.0"}
    commits: dict[str, str | None] = {**release.recorded_releases(ROOT)}
    commits.setdefault(scaffold.__version__, None)  # the coming release: this tree
    versions = list(commits)
    for move in moves:
        before = versions[versions.index(move.version) - 1]
        for version, places in ((before, move.old), (move.version, move.new)):
            for place in places:
                text = template_file(commits[version], place.file)
                assert text is not None, f"{move.what}: template {version} has no {place.file}"
                names = [place.name] if place.name else [old.name for old in move.old]
                for name in names:
                    found = span(text.splitlines(), name)
                    assert found, f"{move.what}: template {version} has no {place.file} {name}"


def template_file(commit: str | None, name: str) -> str | None:
    """The project template's file that renders to `name` (train.py, hooks/base.py, ...) at the
    release `commit`, or in this tree (None); None if it has none."""
    folder = "templates/project/template"
    if commit is None:
        files = [path for path in (ROOT / folder).rglob("*") if path.is_file()]
        paths = [path.relative_to(ROOT).as_posix() for path in files]
    else:
        if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT).returncode:
            pytest.skip(f"this clone lacks the release commit {commit}: git fetch --unshallow")
        paths = git("ls-tree", "-r", "--name-only", commit, folder, cwd=ROOT).splitlines()
    for path in paths:
        rendered = re.sub(r"\{%[^%]*%\}", "", path.removeprefix(folder + "/"))
        if rendered.removesuffix(".jinja") == name:
            if commit is None:
                return (ROOT / path).read_text()
            return git("show", f"{commit}:{path}", cwd=ROOT)
    return None
