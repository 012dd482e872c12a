""".github/workflows/ci.yml stays valid and in step with the Makefile and the declared variants."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.machinery import SourceFileLoader
from pathlib import Path

import jinja2
import pytest
import yaml

from scaffold.variants import groups

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
MAKEFILE = ROOT / "Makefile"
TEST_MIN = ROOT / ".ci" / "test-min"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def make_targets() -> dict[str, str]:
    """{target: its recipe} of the Makefile (rules only, not variable assignments)."""
    targets, current = {}, None
    for line in MAKEFILE.read_text().splitlines():
        rule = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![:=])", line)
        if rule and not line.startswith("\t"):
            names = rule.group(1).split()
            current = names
            for name in names:
                targets.setdefault(name, "")
        elif line.startswith("\t") and current:
            for name in current:
                targets[name] += line.strip() + "\n"
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


def make_calls(workflow: dict) -> list[tuple[str, str]]:
    """(job, target) for every `make TARGET...` in a run step (`${{ expressions }}` blanked)."""
    calls = []
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            for command in re.split(r"&&|;|\n", step.get("run", "")):
                words = shlex.split(re.sub(r"\$\{\{.*?\}\}", "EXPR", command))
                if words[:1] == ["make"]:
                    targets = [word for word in words[1:] if "=" not in word and word[0] != "-"]
                    calls += [(job_name, target) for target in targets or ["all"]]
    return calls


def test_the_workflow_is_valid_yaml_with_triggers_and_jobs(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert {"checks", "variants", "gpu", "min-versions"} <= set(workflow["jobs"])
    for name, job in workflow["jobs"].items():
        assert job.get("runs-on"), f"job {name} has no runs-on"
        assert job.get("timeout-minutes"), f"job {name} has no timeout"
        assert job.get("steps"), f"job {name} has no steps"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"job {name}: {step}"


def test_every_make_call_names_a_target_of_the_makefile(workflow):
    targets = make_targets()
    calls = make_calls(workflow)
    assert calls
    missing = [f"{job}: make {target}" for job, target in calls if target not in targets]
    assert not missing, f"targets missing from the Makefile: {missing}"


def test_the_cpu_matrix_covers_every_variant_group(workflow):
    variants = workflow["jobs"]["variants"]
    assert variants["runs-on"] == "ubuntu-latest"
    assert sorted(variants["strategy"]["matrix"]["group"]) == groups()
    assert ("variants", "test-variants") in make_calls(workflow)
    run = " ".join(step.get("run", "") for step in variants["steps"])
    assert "VARIANT_GROUP=${{ matrix.group }}" in run
    assert "SCAFFOLD_VARIANT_GROUP" in make_targets()["test-variants"]


def test_every_test_runs_in_some_job(workflow):
    """`checks` runs `make test` minus the generated suites, `variants` runs those by group."""
    checks = workflow["jobs"]["checks"]
    assert ("checks", "lint") in make_calls(workflow) and ("checks", "test") in make_calls(workflow)
    test_step = next(step for step in checks["steps"] if "make test" in step.get("run", ""))
    assert test_step["env"]["SCAFFOLD_VARIANT_GROUP"] not in {str(g) for g in groups()}


def test_the_gpu_job_runs_make_test_cuda_on_the_self_hosted_gpu_runner(workflow):
    gpu = workflow["jobs"]["gpu"]
    assert set(gpu["runs-on"]) == {"self-hosted", "gpu"}
    assert ("gpu", "test-cuda") in make_calls(workflow)
    recipe = make_targets()["test-cuda"]
    assert "REQUIRE_CUDA=1" in recipe and "-m cuda" in recipe, recipe


def test_make_targets_parser():
    assert {"install", "test", "test-cuda", "lint", "examples"} <= set(make_targets())
    assert "VENV" not in make_targets() and "BIN" not in make_targets()


# ---- make test-min: the lowest declared versions ---------------------------------------------


@pytest.fixture(scope="module")
def ci_test_min():
    """.ci/test-min as a module (it has no .py suffix: it is the script `make test-min` runs)."""
    loader = SourceFileLoader("ci_test_min", str(TEST_MIN))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_the_min_versions_job_runs_make_test_min(workflow):
    job = workflow["jobs"]["min-versions"]
    assert job["runs-on"] == "ubuntu-latest"
    assert ("min-versions", "test-min") in make_calls(workflow)
    assert ".ci/test-min" in make_targets()["test-min"]
    setup = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-"))
    assert setup["with"]["python-version"] == "3.11"


def test_make_test_min_pins_the_declared_floors(ci_test_min):
    """The pins come from pyproject.toml on every run, so every dependency needs one `>=`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins, tools = ci_test_min.scaffold_requirements(project)
    for requirement, pin in zip(project["dependencies"], pins, strict=True):
        name, floor = pin.split("==")
        assert ci_test_min.parse(requirement)[0] == name, (pin, requirement)
        assert f">={floor}" in ci_test_min.parse(requirement)[1], (pin, requirement)
    assert not {ci_test_min.parse(tool)[0] for tool in tools} & ci_test_min.PROJECT_ONLY
    with pytest.raises(ValueError, match="needs exactly one `>=` floor"):
        ci_test_min.floor_pins(["typer<1"])


def test_generated_projects_declare_floors_for_make_test_min(ci_test_min):
    template = ROOT / "templates" / "project" / "template" / "pyproject.toml.jinja"
    text = jinja2.Environment().from_string(template.read_text()).render(project_name="p")
    pins = ci_test_min.floor_pins(tomllib.loads(text)["project"]["dependencies"])
    assert {pin.split("==")[0] for pin in pins} >= {"torch", "torchvision", "tqdm"}


def test_the_tests_make_test_min_leaves_out_exist(ci_test_min):
    """pytest ignores a --deselect that names no test: a renamed one would run there, and fail."""
    for node in ci_test_min.NEEDS_TORCH:
        path, name = node.split("::")
        assert f"\ndef {name}(" in (ROOT / path).read_text(), node


def test_make_test_runs_every_test():
    """`make test` is the whole suite: nothing in its pytest call or pytest's configuration
    selects tests away (the slow generated suites, test_faults, the benchmarks all run)."""
    dry_run = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    calls = [shlex.split(line) for line in dry_run.stdout.splitlines() if "-m pytest" in line]
    assert len(calls) == 1, dry_run.stdout
    words = calls[0][calls[0].index("pytest") + 1 :]
    selecting = ("-m", "-k", "--deselect", "--ignore", "--ignore-glob", "--lf", "--last-failed")
    assert not [w for w in words if w.split("=")[0] in selecting or w.startswith("-m")], words
    paths = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "-n"]
    assert not paths, f"make test runs only {paths}"
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    addopts = shlex.split(options["ini_options"].get("addopts", ""))
    assert not [w for w in addopts if w.split("=")[0] in selecting or w.startswith("-m")]
    assert options["ini_options"]["testpaths"] == ["tests"]


def test_every_mutation_still_applies_and_runs_in_ci(workflow, monkeypatch):
    """`make test-mutations` lists at least 15 breaks, each of whose snippets is still in the code
    (checked here in `make test`, so that moving code shows up before the mutation job runs)."""
    spec = importlib.util.spec_from_file_location("mutations", ROOT / ".ci" / "mutations.py")
    mutations = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutations", mutations)  # its dataclasses look it up
    spec.loader.exec_module(mutations)
    assert len(mutations.MUTATIONS) >= 15
    assert len({mutation.name for mutation in mutations.MUTATIONS}) == len(mutations.MUTATIONS)
    assert mutations.main(["--check"]) == 0
    assert ("mutations", "test-mutations") in make_calls(workflow)
    assert ".ci/mutations.py" in make_targets()["test-mutations"]
