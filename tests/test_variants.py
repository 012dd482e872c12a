"""Every declared variant (scaffold/variants.py) renders into a clean project whose own tests pass.

Cheap checks, for every variant: exactly the expected files (FILES_BY_OPTION below), no template
syntax left, every Python file compiles, black and ruff are clean, shell scripts parse, and the
answers file records the choices.

Expensive checks (marked slow, one xdist group per variant so that each variant's suite runs on
one worker while others run beside it): the generated project's own test suite on CPU, in full
for variants with suite="full" and a focused part of it (FOCUSED below) for the others; and, for
variants whose dataset cannot be downloaded here, that train.py with its defaults fails with a
message that says how to get the data.

CUDA (marked cuda; `make test-cuda` runs them with REQUIRE_CUDA=1): the generated projects' CUDA
tests, where a machine without a GPU fails instead of skipping.

SCAFFOLD_VARIANT_GROUP=N keeps the generated suites (the slow tests) of group N only: CI runs
one job per group, and its other job sets a value that is no group ("none") to skip them all.
The cheap checks always cover every variant.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from scaffold.cli import main
from scaffold.options import IMAGE_ANSWERS
from scaffold.render import create_project, template_dir
from scaffold.variants import BOOLEAN_OPTIONS, VARIANTS, Variant, check_coverage

GROUP = os.environ.get("SCAFFOLD_VARIANT_GROUP")
SELECTED = [variant for variant in VARIANTS if not GROUP or str(variant.group) == GROUP]

# The files of a generated project, by the option that adds them: the one table to update when the
# template gains a file. A file outside this table, or one for an option not chosen, fails the test.
ALWAYS = (
    ".copier-answers.yml",
    ".gitignore",
    "CHANGELOG.md",
    "README.md",
    "checkpoint.py",
    "compare.py",
    "distributed.py",
    "export.py",
    "files.py",
    "finetune.py",
    "loggers.py",
    "options.py",
    "pipeline.py",
    "plot.py",
    "pyproject.toml",
    "records.py",
    "runs.py",
    "signals.py",
    "summary.py",
    "sweep.py",
    "sweep.yaml",
    "train.py",
    "tests/conftest.py",
    "tests/test_behaviour.py",
    "tests/test_cuda.py",
    "tests/test_loggers.py",
    "tests/test_plot.py",
    "tests/test_records.py",
    "tests/test_resume.py",
    "tests/test_runs.py",
    "tests/test_sweep.py",
    "tests/test_train.py",
)
# Keys: an on/off option ("images": the tasks that learn from images), or "task=NAME" for the
# files of one task (each task has its own task.py, model.py and dataset.py).
FILES_BY_OPTION = {
    "images": (
        "cache.py",
        "image_pipeline.py",
        "predict.py",
        "shapes.py",
        "tests/test_images.py",
    ),
    "task=classification": (
        "dataset.py",
        "model.py",
        "task.py",
        "tests/test_cache.py",
        "tests/test_data.py",
        "tests/test_export.py",
        "tests/test_learning.py",
        "tests/test_model.py",
        "tests/test_predict.py",
        "tests/test_summary.py",
    ),
    "task=segmentation": (
        "dataset.py",
        "model.py",
        "task.py",
        "tests/test_segmentation.py",
    ),
    "task=detection": (
        "dataset.py",
        "model.py",
        "task.py",
        "tests/test_detection.py",
    ),
    "task=lm": (
        "dataset.py",
        "model.py",
        "predict.py",
        "task.py",
        "tests/test_generate.py",
        "tests/test_lm.py",
    ),
    "ddp": (
        "scripts/slurm.sbatch",
        "scripts/sweep.sbatch",
        "scripts/train_ddp.sh",
        "sharded.py",
        "tests/test_cuda_ddp.py",
        "tests/test_ddp.py",
        "tests/test_fsdp.py",
    ),
    "hooks": (
        "hooks/__init__.py",
        "hooks/activations.py",
        "hooks/base.py",
        "hooks/gradients.py",
        "hooks/nan_check.py",
        "tests/test_hooks.py",
    ),
    "vscode": (".vscode/launch.json",),
}

# The focused part of a generated suite (suite="focused"): the model tests, one smoke run, one
# torchrun launch with its checks (ddp), the hook summaries of a run (hooks), and the CUDA tests
# (skipped without a GPU). Paths relative to the project; a name that no longer exists fails.
FOCUSED = {
    "always": (
        "tests/test_train.py::test_smoke_run_logs_metrics_and_writes_checkpoints",
        "tests/test_cuda.py",
    ),
    "task=classification": (
        "tests/test_model.py::test_output_has_one_logit_per_class",
        "tests/test_model.py::test_first_loss_is_near_ln_num_classes",
        "tests/test_model.py::test_gradient_reaches_the_input_and_every_layer_trains",
    ),
    "task=segmentation": ("tests/test_segmentation.py",),
    # The model's own training and validation are the smoke run's; these need no model.
    "task=detection": (
        "tests/test_detection.py::test_a_flip_moves_each_box_with_its_image",
        "tests/test_detection.py::test_the_coco_metrics_of_hand_made_detections_are_exact",
        "tests/test_detection.py::test_a_bad_annotation_is_one_line_naming_the_file",
    ),
    "task=lm": ("tests/test_lm.py", "tests/test_generate.py"),
    "ddp": (
        "tests/test_ddp.py::test_two_processes_write_one_checkpoint_and_one_metrics_file",
        "tests/test_ddp.py::test_two_processes_train_like_one_with_the_same_global_batch",
        "tests/test_ddp.py::test_validation_is_exact_for_an_uneven_split",
        "tests/test_fsdp.py::test_fsdp_without_torchrun_is_refused_in_one_line",
        "tests/test_fsdp.py::test_the_blocks_sharded_one_at_a_time_are_separate_parts_of_the_model",
        "tests/test_cuda_ddp.py",
    ),
    "hooks": ("tests/test_hooks.py::test_training_logs_hook_summaries",),
}

# What train.py, run with its defaults and no data, must tell the user.
HOW_TO_GET_DATA = {
    "folder": "--data-dir",
    "cifar10": "--download",
    "mnist": "--download",
    "text": "--data-dir",
    "coco": "--data-dir",
}

# A file or folder per option ({% if ddp %}) or per task ({% if task == 'segmentation' %}).
CONDITIONAL = re.compile(r"\{% if (\w+)(?: == '(\w+)')? %\}(.*?)\{% endif %\}")
SUITE_TIMEOUT = 900  # seconds for one generated suite; far above the slowest measured
ids = [variant.name for variant in VARIANTS]


def chosen(variant: Variant, key: str) -> bool:
    """Whether the variant has option `key` ("ddp") or is of its task ("task=segmentation")."""
    option, _, value = key.partition("=")
    return getattr(variant, option) == value if value else getattr(variant, option)


def expected_files(variant: Variant) -> set[str]:
    files = set(ALWAYS)
    for key, option_files in FILES_BY_OPTION.items():
        if chosen(variant, key):
            files.update(option_files)
    return files


def focused_tests(variant: Variant) -> list[str]:
    return [
        test
        for key, tests in FOCUSED.items()
        if key == "always" or chosen(variant, key)
        for test in tests
    ]


def project_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """render(variant) -> its project folder, rendered once per worker for the cheap checks."""
    root = tmp_path_factory.mktemp("variants")
    done: dict[str, Path] = {}

    def render(variant: Variant) -> Path:
        if variant.name not in done:
            create_project(variant.project(root), git=False)
            done[variant.name] = root / variant.name
        return done[variant.name]

    return render


def test_the_variants_cover_every_model_dataset_and_pair_of_boolean_options():
    assert check_coverage() == []
    # At least one variant per model (21 of them), and few more.
    assert 8 <= len(VARIANTS) <= 24, "keep the list small: it is not the full product"


def test_the_table_of_files_matches_the_template_folder():
    """Each template file is in ALWAYS, or under the one option its `{% if %}` name depends on."""
    root = template_dir() / "template"
    in_template = set()
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            name = path.relative_to(root).as_posix()
            name = name.replace("{{ _copier_conf.answers_file }}", ".copier-answers.yml")
            keys = sorted({f"{o}={v}" if v else o for o, v, _ in CONDITIONAL.findall(name)})
            in_template.add((CONDITIONAL.sub(r"\3", name).removesuffix(".jinja"), tuple(keys)))
    in_table = {(name, ()) for name in ALWAYS}
    for key, files in FILES_BY_OPTION.items():
        in_table.update((name, (key,)) for name in files)
    listed = [*ALWAYS, *(name for files in FILES_BY_OPTION.values() for name in files)]
    assert len(listed) == len(in_table), "a file is listed twice under one option"
    assert in_table == in_template


def test_list_variants_prints_each_one(capsys):
    main(["list", "variants"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [variant.name for variant in VARIANTS]
    assert all(
        f"suite={variant.suite}" in line for variant, line in zip(VARIANTS, lines, strict=True)
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_exactly_the_expected_files(rendered, variant):
    root = rendered(variant)
    files = {path.relative_to(root).as_posix() for path in project_files(root)}
    expected = expected_files(variant)
    assert not files - expected, f"files for an option not chosen, or not in the table: {files}"
    assert not expected - files, "missing files"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_no_template_syntax_is_left(rendered, variant):
    """No `{%`, `%}`, `{#` or Jinja `{{ expression`; `{{"` is allowed (an escaped str.format brace,
    as in tests/test_ddp.py). No `.jinja` suffix and no braces in file names."""
    root = rendered(variant)
    leftovers = []
    for path in project_files(root):
        name = path.relative_to(root).as_posix()
        if name.endswith(".jinja") or any(mark in name for mark in ("{", "}", "%")):
            leftovers.append(f"{name}: template file name")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(mark in line for mark in ("{%", "%}", "{#")) or has_jinja_expression(line):
                leftovers.append(f"{name}:{number}: {line.strip()}")
    assert not leftovers, "\n".join(leftovers)


def has_jinja_expression(line: str) -> bool:
    start = line.find("{{")
    while start != -1:
        following = line[start + 2 : start + 3]
        if following == "" or following.isspace() or following.isalpha() or following in "_-":
            return True
        start = line.find("{{", start + 2)
    return False


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_python_compiles_and_scripts_parse(rendered, variant):
    root = rendered(variant)
    for path in project_files(root):
        if path.suffix == ".py":
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        elif path.suffix in (".sh", ".sbatch"):
            result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert result.returncode == 0, f"{path.name}: {result.stderr}"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_black_and_ruff_are_clean(rendered, variant):
    root = rendered(variant)
    for tool in (["black", "--check", "--quiet"], ["ruff", "check", "--quiet", "--no-cache"]):
        result = subprocess.run(
            [sys.executable, "-m", *tool, "."], cwd=root, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{tool[0]}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_the_answers_file_records_the_choices(rendered, variant):
    answers = yaml.safe_load((rendered(variant) / ".copier-answers.yml").read_text())
    keys = ["task", "model", "dataset", *BOOLEAN_OPTIONS]
    if variant.images:
        keys += IMAGE_ANSWERS
    else:  # neither asked nor recorded for a task without images
        assert not set(IMAGE_ANSWERS) & answers.keys()
    for key in keys:
        assert answers[key] == getattr(variant, key), key
    assert answers["project_name"] == variant.name


# ---- the generated projects' own tests --------------------------------------------------------


def run_in_project(command: list[str], project: Path, timeout: float, env=None):
    """Run `command` in `project` in its own process group (nothing outlives a timeout)."""
    full_env = dict(os.environ)
    for name in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        full_env.pop(name, None)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    # Each xdist worker gets its share of the cores: more threads than cores slows all of them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    full_env.update(env or {})
    process = subprocess.Popen(
        command,
        cwd=project,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} took over {timeout}s:\n{output[-6000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return process.returncode, output


def generated_pytest(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'pytest'}",
        f"--junitxml={tmp_path / 'report.xml'}",
        "--durations=5",
        *args,
    ]


# Why a generated test may skip: anything else (a test that skips for no good reason, or a suite
# that skips everything) fails the run. On a machine with a GPU, other reasons apply.
CPU_SKIPS = {"no CUDA device", "this project has no hooks/ package", "scripts/ comes with --ddp"}
# The generic tests that cannot apply to a detector, as the generated conftest.py marks them.
CPU_SKIPS |= {
    "a detector samples anchors and proposals per batch and normalizes over the batch",
    "a detector in training mode takes the targets with the images, returns its losses",
    "a detector has several heads (RPN, RoI box head) with 4 box outputs per class",
    "a detector's val_loss is computed in train mode, its BatchNorm layers in eval mode",
}
GPU_SKIPS = {"this machine has a CUDA device", "needs 2 CUDA devices, this machine has 1"}


@dataclass
class Outcomes:
    passed: list[str]
    skipped: dict[str, str]  # test -> reason
    failed: list[str]


def read_report(report: Path) -> Outcomes:
    """What happened to each test of a generated suite, from pytest's JUnit XML report."""
    outcomes = Outcomes([], {}, [])
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes.failed.append(name)
        elif skipped is not None:
            outcomes.skipped[name] = skipped.get("message", "").removeprefix("Skipped: ")
        else:
            outcomes.passed.append(name)
    return outcomes


def check_outcomes(report: Path, allowed_skips: set[str], min_passed: int, output: str) -> None:
    outcomes = read_report(report)
    assert not outcomes.failed, f"failed: {outcomes.failed}\n{output[-8000:]}"
    unexpected = {name: why for name, why in outcomes.skipped.items() if why not in allowed_skips}
    assert not unexpected, f"skipped without a reason allowed here: {unexpected}"
    assert len(outcomes.passed) >= min_passed, (
        f"only {len(outcomes.passed)} tests passed (at least {min_passed} expected):\n"
        f"{output[-3000:]}"
    )


def slow_variant(variant: Variant):
    return pytest.param(
        variant,
        id=variant.name,
        marks=[pytest.mark.slow, pytest.mark.xdist_group(variant.name)],
    )


# Files of the generated suite whose tests do not depend on the variant beyond the file's presence:
# they train SMALL_MODEL on data drawn in code, whatever the variant's model and dataset, through
# code no other option changes (train.py's DDP code is the same with or without hooks). Each runs
# in full in the suites of the variants named here; the other full suites run only its FOCUSED
# tests, if it has any.
RUN_LOOP_FILES = {
    "mlp_mnist_ddp_hooks",
    "seg_unet_minimal",
    "det_tiny_rcnn_ddp_hooks",
    "lm_gpt_tiny_ddp_hooks",
}
FULL_IN = {
    "tests/test_behaviour.py": RUN_LOOP_FILES,
    "tests/test_resume.py": RUN_LOOP_FILES,
    "tests/test_sweep.py": RUN_LOOP_FILES,
    "tests/test_ddp.py": {
        "mlp_mnist_ddp_hooks",
        "det_tiny_rcnn_ddp_hooks",
        "lm_gpt_tiny_ddp_hooks",
    },
    "tests/test_fsdp.py": {
        "mlp_mnist_ddp_hooks",
        "det_tiny_rcnn_ddp_hooks",
        "lm_gpt_tiny_ddp_hooks",
    },
}


# Generated tests of what no task changes: the launch scripts' signals and requeues, a second
# Ctrl-C, the sweep journal's survival of kill -9, the sample order and the refusals of sharded
# checkpoints. They train through task.py like any other, but what they check is the same code for
# every task (each task's own exact resume, and its sharded save and load, are checked by the other
# tests of every full suite). Full suites of classification run them; the other tasks' full suites
# deselect them.
TASK_INDEPENDENT = (
    "tests/test_ddp.py::test_a_failing_rank_stops_every_process",
    "tests/test_fsdp.py::test_one_process_resumes_two_with_their_state_and_their_sample_order",
    "tests/test_fsdp.py::test_consolidating_an_incomplete_folder_is_refused",
    "tests/test_fsdp.py::test_a_step_folder_given_for_a_checkpoint_file_says_how_to_make_one",
    "tests/test_ddp.py::test_the_time_limit_signal_saves_then_requeues_and_the_requeued_job_resumes",
    "tests/test_ddp.py::test_kill_9_of_torchrun_alone_makes_its_processes_save_and_stop",
    "tests/test_ddp.py::"
    "test_a_process_that_joined_a_group_exits_with_mains_status_and_skips_the_teardown",
    "tests/test_runs.py::test_a_second_sigint_stops_at_once_and_keeps_the_last_checkpoint",
    "tests/test_sweep.py::test_kill_9_of_run_mid_trial_then_run_again_finishes_each_trial_once_exactly",
    "tests/test_sweep.py::"
    "test_sweep_sbatch_saves_on_the_time_limit_signal_and_the_requeued_task_continues",
)


def full_suite(variant: Variant, project: Path) -> list[str]:
    """The generated test files a full suite runs, and the focused tests of those it leaves out."""
    left_out = {path for path, variants in FULL_IN.items() if variant.name not in variants}
    files = sorted(
        path.relative_to(project).as_posix() for path in (project / "tests").glob("test_*.py")
    )
    focused = [test for test in focused_tests(variant) if test.split("::")[0] in left_out]
    selection = [path for path in files if path not in left_out] + focused
    if variant.task != "classification":
        selection += [f"--deselect={test}" for test in TASK_INDEPENDENT]
    return selection


def test_the_task_independent_tests_exist_and_run_in_a_classification_suite():
    """A renamed test would be deselected silently, and so run nowhere."""
    root = template_dir() / "template" / "tests"
    sources = {
        CONDITIONAL.sub(r"\3", file.name).removesuffix(".jinja"): file for file in root.iterdir()
    }
    for test in TASK_INDEPENDENT:
        path, name = test.split("::")
        assert f"def {name}(" in sources[path.removeprefix("tests/")].read_text(), test
        assert any(
            variant.task == "classification"
            and path in expected_files(variant)
            and variant.name in FULL_IN.get(path, {variant.name})
            for variant in VARIANTS
            if variant.suite == "full"
        ), test


def test_each_file_runs_in_full_somewhere_for_every_task_that_has_it():
    full = [variant for variant in VARIANTS if variant.suite == "full"]
    for path, names in FULL_IN.items():
        assert names <= {variant.name for variant in full}, f"{path}: not a full suite in {names}"
        runners = [variant for variant in full if variant.name in names]
        has_file = [variant for variant in full if path in expected_files(variant)]
        assert {variant.task for variant in runners} == {variant.task for variant in has_file}
        assert all(path in expected_files(variant) for variant in runners)
    assert any(
        variant.ddp for variant in full if variant.name in FULL_IN["tests/test_sweep.py"]
    ), "sweep.sbatch's test needs --ddp"


@pytest.mark.parametrize("variant", [slow_variant(variant) for variant in SELECTED])
def test_the_generated_test_suite_passes_on_cpu(tmp_path, variant):
    create_project(variant.project(tmp_path), git=False)
    project = tmp_path / variant.name
    selection = full_suite(variant, project) if variant.suite == "full" else focused_tests(variant)
    code, output = run_in_project(generated_pytest(tmp_path, *selection), project, SUITE_TIMEOUT)
    if code == 4 and "not found" in output:
        pytest.fail(
            f"FOCUSED names a test that does not exist (rename it there):\n{output[-3000:]}"
        )
    assert code == 0, f"{variant.suite} suite of {variant.name} failed:\n{output[-8000:]}"
    # A full suite has 140 tests or more; a focused one, at least each test it names.
    min_passed = (
        100 if variant.suite == "full" else len([name for name in selection if "::" in name])
    )
    check_outcomes(tmp_path / "report.xml", CPU_SKIPS, min_passed, output)
    print(output[-1500:])  # shown with -rP: the slowest generated tests


@pytest.mark.parametrize(
    "variant", [slow_variant(variant) for variant in SELECTED if variant.dataset in HOW_TO_GET_DATA]
)
def test_without_data_train_py_says_how_to_get_it(tmp_path, variant):
    create_project(variant.project(tmp_path), git=False)
    project = tmp_path / variant.name
    command = [sys.executable, "train.py", "--max-steps=1", "--device=cpu", "--workers=0"]
    code, output = run_in_project([*command, f"--output-dir={tmp_path / 'run'}"], project, 300)
    assert code == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: ") and HOW_TO_GET_DATA[variant.dataset] in last, output[-3000:]
    assert "Traceback" not in output


# ---- CUDA: `make test-cuda` --------------------------------------------------------------------

REQUIRE_CUDA = os.environ.get("REQUIRE_CUDA") == "1"


@pytest.fixture(scope="session")
def cuda_devices() -> int:
    """How many CUDA devices torch sees (asked in a child process: scaffold never imports torch)."""
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    count = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    if count == 0 and REQUIRE_CUDA:
        pytest.exit(
            "REQUIRE_CUDA=1 (make test-cuda) but torch sees no CUDA device: run it on a machine "
            f"with an NVIDIA GPU and a CUDA build of torch. {result.stderr.strip()[-500:]}",
            returncode=1,
        )
    return count


@pytest.mark.cuda
@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_the_generated_cuda_tests_pass_on_the_gpu(tmp_path, variant, request):
    if not REQUIRE_CUDA:
        pytest.skip(
            "run by `make test-cuda` (REQUIRE_CUDA=1); on a GPU machine the generated suites "
            "above run the same tests"
        )
    request.getfixturevalue("cuda_devices")
    create_project(variant.project(tmp_path), git=False)
    project = tmp_path / variant.name
    command = generated_pytest(tmp_path, "-m", "cuda")
    code, output = run_in_project(command, project, SUITE_TIMEOUT, env={"REQUIRE_CUDA": "1"})
    assert code == 0, f"CUDA tests of {variant.name} failed:\n{output[-8000:]}"
    check_outcomes(tmp_path / "report.xml", GPU_SKIPS, 2, output)
    print(output[-1500:])


@pytest.mark.slow
@pytest.mark.xdist_group("lenet_minimal")
def test_required_cuda_tests_fail_rather_than_skip_without_a_gpu(tmp_path, request):
    """What `make test-cuda` needs: REQUIRE_CUDA=1 turns "no CUDA device" skips into failures."""
    if GROUP and GROUP != str(VARIANTS[0].group):
        pytest.skip(f"runs with the variants of group {VARIANTS[0].group}")
    if request.getfixturevalue("cuda_devices"):
        pytest.skip("this machine has a CUDA device")
    variant = VARIANTS[0]
    create_project(variant.project(tmp_path), git=False)
    project = tmp_path / variant.name
    command = generated_pytest(tmp_path, "-m", "cuda")
    code, output = run_in_project(command, project, 300, env={"REQUIRE_CUDA": "1"})
    assert code == 1, output[-3000:]
    assert "REQUIRE_CUDA=1 but no CUDA device is visible" in output
    assert " passed" not in output and "skipped" not in output, output[-3000:]
    code, output = run_in_project(command, project, 300, env={"REQUIRE_CUDA": ""})
    assert code == 0 and "no CUDA device" in output and " skipped" in output, output[-3000:]
