"""benchmarks/run.py --quick keeps working: every figure runs and every row it prints has numbers.
And the pieces the figures rest on: the step clock survives steps GradScaler skips, the operator
counter sees what train.py adds to a step, the tracker figure finds the steps that hold a record,
the bare loops train with train.py's defaults (an LM's with its loss and clipping), `make gpu-check`
fails in one line without a GPU, and a GPU run replaces only the GPU rows of BENCHMARKS.md.

No timing is asserted (the figures depend on the machine and its load); BENCHMARKS.md itself is
written only by the full run (`make bench`), so this test writes its report to a temporary file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
FIGURES = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
NUMBER = re.compile(r"\d")
# Rows the quick run must print (the start of their "measurement"), with their targets.
EXPECTED = {
    "--cache: building the cache of": "",
    "--cache: size on disk": "",
    "--cache: opening the built cache": "",
    "--cache: noticing replaced files (inode and ctime checked too)": "<= 1.1",
    "loader alone, --cache vs PNG ImageFolder (today's path), --workers 0": ">= 10",
    "loader alone, --cache vs PNG ImageFolder (today's path), --workers 2": ">= 10",
    "loader alone, --cache vs in-memory tensors, --workers 0": ">= 0.5",
    "loader alone, --cache vs in-memory tensors, --workers 2": ">= 0.5",
    "training lenet, batch 32, on --cache, 0 workers": ">= 0.95: not data-bound",
    "steps/s train.py on --cache vs on in-memory tensors, lenet": ">= 0.9",
    "steps/s train.py on PNGs (today's path) vs on in-memory tensors, lenet": "",
    "images/s, predict.py on": "",
    "where predict.py's time goes per image": "",
    "steps/s on un-logged steps, --logger mlflow vs jsonl": ">= 0.98",
    "one logged step, --logger mlflow vs jsonl": "",
    "steps/s on all steps (every 10th logged), --logger mlflow vs jsonl": "",
    "time to the first step, --logger mlflow vs jsonl": "",
    "sweep.py run vs the same trials' train.py commands, per trial": "<= 5% of a 30 s trial",
    "sweep.py init (once per sweep)": "",
    "tokens/s gpt_tiny, CPU, batch 16 x 64 tokens, default flags, hooks off": ">= 0.98",
    "tokens/s gpt_tiny, CPU, batch 16 x 64 tokens, --hooks activations,gradients": ">= 0.9",
    "steps/s tiny_rcnn, CPU, batch 32, default flags, hooks off": ">= 0.98",
    "steps/s tiny_rcnn, CPU, batch 32, --hooks activations,gradients": ">= 0.9",
}


def table_rows(text: str) -> list[list[str]]:
    """The cells of the results table's body rows (the first Markdown table in `text`)."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("| # |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("| "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif inside:
            break
    return rows


@pytest.mark.slow
def test_quick_benchmarks_print_and_write_a_complete_table(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--output", str(report)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for text in (result.stdout, report.read_text()):
        rows = table_rows(text)
        assert {int(row[0]) for row in rows} == FIGURES, "every figure has rows"
        for row in rows:
            assert len(row) == 7, row
            figure, what, value, baseline, ratio, target, verdict = row
            if verdict.startswith("not measured"):
                # Only the GPU rows may be left out, and only on a machine without a GPU.
                assert "CUDA" in what and verdict == "not measured: no GPU", row
                continue
            assert NUMBER.search(value), f"no number measured: {row}"
            assert verdict in {"met", "**MISSED**", "info", "data-bound", "not data-bound"}, row
            if target.startswith((">=", "<=", "<")):
                assert verdict in {"met", "**MISSED**"} or "data-bound" in verdict, row
            if ratio != "—":
                assert float(ratio) > 0, row
        for start, target in EXPECTED.items():
            found = [row for row in rows if row[1].startswith(start)]
            assert found, f"no row {start!r}"
            assert all(row[5] == (target or "—") for row in found), found
        predictions = [row for row in rows if row[1].startswith("images/s, predict.py on")]
        assert len(predictions) == 2 and all("bare model(x)" in row[3] for row in predictions)
        assert len({row[1] for row in rows}) == len(rows), "every measurement has its own name"

    written = report.read_text()
    for section in ("## Machine", "## Commands", "## Results", "## What is timed"):
        assert section in written
    assert "load average" in written and "torch: " in written
    assert "scaffold new DEST --model lenet --no-git" in written
    assert any("operators per step" in row[1] for row in table_rows(written))
    assert "## GPU run" in written
    for title in ("### 8. predict.py throughput", "### 9. Experiment trackers", "### 10. Sweep"):
        assert title in written
    assert "train.main(): --model lenet" in written and "--cache --cache-dir $WORK" in written
    assert "--logger mlflow" in written and "predict.predict(" in written


# ---- the step clock and skipped steps ---------------------------------------------------------


def test_the_step_clock_counts_steps_that_grad_scaler_skipped():
    """With float16 autocast, GradScaler skips optimizer.step() where the gradients overflowed
    (CUDA --amp, while the loss scale settles). The clock counts loop iterations, so a run with
    skipped steps still reaches its count. Here the first 3 losses are infinite, on the CPU."""
    import torch
    from common import StepClock, StepHooks

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    taken = []
    optimizer.register_step_post_hook(lambda *args: taken.append(1))
    clock = StepClock(warmup=2, steps=10, cuda=False)
    try:
        for step in range(10):
            loss = model(torch.randn(16, 8)).square().mean()
            if step < 3:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    finally:
        clock.close()
    assert len(taken) == 7, "the first 3 optimizer steps were skipped"
    assert len(clock.times) == 10 and clock.skipped == 3
    assert clock.steps_per_second() > 0 and clock.first_step_seconds() > 0
    assert not StepHooks.callbacks
    assert "scaler_step" not in torch.amp.GradScaler.step.__name__, "the patch is undone"


@pytest.fixture(scope="module")
def lenet_project(tmp_path_factory):
    from scaffold.options import NewProject
    from scaffold.render import create_project

    dest = tmp_path_factory.mktemp("ops") / "proj"
    create_project(NewProject(dest=dest, model="lenet"), git=False)
    return dest


# ---- the tracker figure: which steps hold a record ----------------------------------------------


def test_tracker_windows_put_the_record_of_step_10_in_step_11():
    """durations[i] is step i + 2's; a logged step's record is written after its optimizer step,
    so in the next step's time: the long steps here are 11, 21, 31..."""
    import trackers

    durations = [(0.001, 0.001)] * 60
    for i in range(len(durations)):
        if (i + 2) % 10 == 1:
            durations[i] = (0.009, 0.004)
    windows = trackers.windows(durations, warmup=5, clock=0)
    assert len(windows) == 5
    for unlogged, whole, logged in windows:
        assert unlogged == pytest.approx(1000) and logged == 0.009
        assert whole == pytest.approx(10 / 0.018)
    assert {round(w[2], 3) for w in trackers.windows(durations, 5, clock=1)} == {0.004}


@pytest.mark.slow
def test_train_py_writes_a_record_between_its_step_and_the_next(lenet_project, tmp_path):
    """What the tracker figure assumes of the generated loop: the record of step k is written
    after k optimizer steps and before the next one (with --log-every 10: steps 10, 20, 23)."""
    script = f"""
import json, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from common import StepHooks
import loggers, train
steps, written = [0], []
StepHooks.add(lambda skipped: steps.__setitem__(0, steps[0] + 1))
original = loggers.RunLog.write
def write(self, record):
    if record["kind"] == "step":
        written.append([record["step"], steps[0]])
    original(self, record)
loggers.RunLog.write = write
train.main(["--max-steps", "23", "--workers", "0", "--device", "cpu", "--fake-size", "800",
            "--epochs", "1", "--output-dir", {str(tmp_path / "run")!r}])
print(json.dumps(written))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=lenet_project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(result.stdout.strip().splitlines()[-1])
    assert written == [[10, 10], [20, 20], [23, 23]]


def test_the_bare_loop_trains_with_train_py_optimizer_defaults(lenet_project):
    import bare_loop

    probe = "import json, options; a = options.parse_args([]); "
    probe += "print(json.dumps([a.optimizer, a.lr, a.momentum, a.weight_decay]))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=lenet_project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    defaults = json.loads(result.stdout.strip().splitlines()[-1])
    assert defaults == ["sgd", bare_loop.LR, bare_loop.MOMENTUM, bare_loop.WEIGHT_DECAY]


def test_the_bare_loop_trains_a_segmentation_model_with_its_optimizer_defaults(tmp_path):
    """Figure 3's U-Net row: a segmentation project trains with AdamW by default, and so does the
    bare loop there."""
    import bare_loop

    from scaffold.options import NewProject
    from scaffold.render import create_project

    project = tmp_path / "seg"
    create_project(NewProject(dest=project, task="segmentation", model="unet"), git=False)
    probe = "import json, options; a = options.parse_args([]); "
    probe += "print(json.dumps([a.optimizer, a.lr, a.weight_decay]))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    defaults = json.loads(result.stdout.strip().splitlines()[-1])
    assert defaults == ["adamw", bare_loop.ADAMW_LR, bare_loop.WEIGHT_DECAY]


def test_the_bare_lm_loop_trains_with_an_lm_project_s_defaults_and_loss(tmp_path):
    """Figure 3's GPT row: an LM project trains with AdamW and gradients clipped to norm 1.0 by
    default, and so does training.bare_lm_train, with gpt_tiny's own block size; its plain
    F.cross_entropy is task.loss on a training batch (no target there is IGNORE_INDEX)."""
    import training

    from scaffold.options import NewProject
    from scaffold.render import create_project

    project = tmp_path / "lm"
    create_project(NewProject(dest=project, task="lm", model="gpt_tiny"), git=False)
    probe = f"""
import json, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
import torch
import dataset, model, options, task, training
from bare_loop import plain_loader
a = options.parse_args(["--dataset", "synthetic", "--synthetic-size", "5000"])
train_set, _ = dataset.build_datasets(a)
torch.manual_seed(0)
gpt = model.build_model(a.model, 256)
inputs, targets = next(iter(plain_loader(train_set, 4, 0, False)))
ours = task.loss(gpt, (inputs, targets))[0]
bare = torch.nn.functional.cross_entropy(gpt(inputs).flatten(0, 1), targets.flatten())
training.bare_lm_train(gpt, plain_loader(train_set, 4, 0, False), 2)
print(json.dumps([a.optimizer, a.lr, a.weight_decay, a.clip_grad_norm, a.model, a.batch_size,
                  model.block_size_of(a.model, a.block_size), list(inputs.shape),
                  torch.allclose(ours, bare), bool(torch.isfinite(ours))]))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    block = training.BLOCK_SIZE
    assert found[:4] == ["adamw", training.LM_LR, training.LM_WEIGHT_DECAY, 1.0]
    assert training.LM_CLIP_GRAD_NORM == 1.0
    assert found[4:] == ["gpt_tiny", 16, block, [4, block], True, True]
    assert training.FULL[("gpt_tiny", "cpu")][0] == 16, "train.py's default batch size"


def test_the_bare_detection_loop_trains_with_a_detection_project_s_defaults_and_loss(tmp_path):
    """Figure 3's Faster R-CNN row: a detection project trains tiny_rcnn with AdamW and no
    clipping by default, and so does training.bare_detection_train; its batches are
    task.COLLATE's, in the order of train.py's first epoch, and the sum of the detector's losses
    on images scaled to [0, 1] is task.loss on task.prepare's batch (the same random draws)."""
    import training

    from scaffold.options import NewProject
    from scaffold.render import create_project

    project = tmp_path / "detection"
    create_project(NewProject(dest=project, task="detection", model="tiny_rcnn"), git=False)
    probe = f"""
import json, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
import torch
from torch.utils.data import DataLoader
import dataset, model, options, pipeline, task, training
a = options.parse_args(["--dataset", "synthetic", "--synthetic-size", "8"])
samples = training.in_memory_samples(dataset.build_datasets(a)[0])
torch.manual_seed(0)
detector = model.build_model(a.model, 10, 3, 32)
ours_batch, bare_batch = task.COLLATE(samples[:4]), training.detection_collate(samples[:4])
same_batch = torch.equal(ours_batch[0], bare_batch[0]) and ours_batch[1] == bare_batch[1]
torch.manual_seed(1)
prepared = task.prepare(ours_batch, torch.device("cpu"), task.preprocessor(vars(a), training=True))
ours = task.loss(detector, prepared)[0]
torch.manual_seed(1)
images, targets = bare_batch
bare = sum(detector(list(images.float().div_(255)), targets).values())
order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
same_order = list(pipeline.ShardedSampler(len(samples), True, a.seed)) == order
loader = DataLoader(samples, batch_size=4, sampler=order, collate_fn=training.detection_collate)
training.bare_detection_train(detector, loader, 3)
print(json.dumps([a.optimizer, a.lr, a.weight_decay, a.clip_grad_norm, a.model, a.batch_size,
                  a.num_classes, a.in_channels, a.image_size, a.augment, same_batch, same_order,
                  torch.allclose(ours, bare), bool(torch.isfinite(ours))]))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found[:4] == ["adamw", training.DETECTION_LR, training.DETECTION_WEIGHT_DECAY, None]
    assert found[4:10] == ["tiny_rcnn", 8, 10, 3, 32, False], "what the worker builds"
    assert found[10:] == [True, True, True, True]
    # The row's batch is the 32 of every CPU image row, given to train.py as --batch-size.
    assert training.FULL[("tiny_rcnn", "cpu")][0] == 32


# ---- the sweep figure: the same trials both ways ------------------------------------------------


def test_sweep_overhead_is_the_median_per_trial_difference_of_each_pair():
    import sweep_overhead

    result = {"sweep": [(10.0, 8.0), (14.0, 9.0)], "direct": [(8.0, 7.0), (11.0, 8.0)]}
    figures = sweep_overhead.summary({**result, "init": [3.0, 5.0]}, trials=2)
    assert figures["sweep_wall_per_trial_s"] == 6.0 and figures["direct_wall_per_trial_s"] == 4.75
    assert figures["overhead_wall_per_trial_s"] == 1.25  # the median of 1.0 and 1.5
    assert figures["overhead_cpu_per_trial_s"] == 0.5
    assert figures["overhead_percent_of_30s_trial"] == pytest.approx(100 * 1.25 / 30)
    assert figures["init_s"] == 4.0


@pytest.mark.slow
def test_the_sweep_figure_times_the_same_trials_both_ways(lenet_project, tmp_path):
    """sweep.py's trials and the train.py commands timed against them train the same runs: the
    enqueued lr values, to the same metric; and the project is left without the sweeps."""
    import sweep_overhead
    from common import bench_env

    result = sweep_overhead.compare(lenet_project, tmp_path, 2, 1, bench_env(1))
    assert len(result["sweep"]) == len(result["direct"]) == len(result["init"]) == 1
    values = result["values"]
    assert len(values["sweep"]) == 2 and values["sweep"] == values["direct"]
    assert not list((lenet_project / "runs" / "sweeps").glob("overhead*"))


# ---- operators and synchronisations per step ---------------------------------------------------


@pytest.mark.slow
def test_ops_per_step_of_the_generated_loop_against_the_bare_loop(lenet_project, tmp_path):
    """A proxy for GPU launch overhead: at default flags train.py dispatches at most 2 aten
    operators more than the bare loop per un-logged step (its running loss: detach, add_), and
    never waits for the device on an un-logged step."""
    import op_count

    result = op_count.count(lenet_project, "lenet", "cpu", work=tmp_path)
    ours, bare = result["generated"]["unlogged"], result["bare"]["unlogged"]
    added = ours["ops_added"]
    assert ours["ops"] - bare["ops"] <= op_count.OPS_ALLOWED, f"train.py adds {added}"
    assert ours["syncs"] == 0, ours["sync_names"]
    assert bare["ops"] > 50 and bare["syncs"] == 0
    logged = result["generated"]["logged"]
    # One read-back of the logged losses, all at once (train.step_means: .tolist(); an .item()
    # would count as aten::_local_scalar_dense).
    assert logged["syncs"] == 1, logged["sync_names"]
    assert set(logged["sync_names"]) <= {"Tensor.tolist()", "aten::_local_scalar_dense"}


@pytest.mark.slow
def test_ops_per_step_counter_sees_an_added_sync(lenet_project, tmp_path):
    """The counter is not blind: one `.item()` and one `.tolist()` slipped into every step of a
    copy of train.py show up as 2 synchronisations and 2 more operators per un-logged step."""
    import op_count

    project = tmp_path / "proj"
    shutil.copytree(lenet_project, project)
    train = project / "train.py"
    text = train.read_text()
    line = re.search(r"^( *)progress\.loss_sum \+= loss\.detach\(\)\n", text, re.M)
    assert line, "the running loss of every step"
    extra = f"{line[1]}loss.item(), loss.detach().reshape(1).tolist()\n"
    train.write_text(text.replace(line[0], line[0] + extra))
    result = op_count.count(project, "lenet", "cpu", work=tmp_path)
    ours = result["generated"]["unlogged"]
    assert ours["syncs"] == 2, ours["sync_names"]
    assert set(ours["sync_names"]) == {"aten::_local_scalar_dense", "Tensor.tolist()"}


# ---- make gpu-check ----------------------------------------------------------------------------


def test_gpu_check_fails_in_one_line_without_a_gpu():
    probe = "import torch; print(torch.cuda.is_available())"
    has_gpu = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if has_gpu.stdout.strip() == "True":
        pytest.skip("this machine has a GPU: make gpu-check would run")
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable)
    result = subprocess.run(
        [str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no GPU: torch "), result.stderr
    assert "sees no CUDA device" in lines[0]


def test_make_gpu_check_calls_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:(.|\n)*?\bgpu-check\b", makefile, re.M)
    assert "\ngpu-check:\n\t@benchmarks/gpu_check.sh\n" in makefile


# ---- BENCHMARKS.md: a GPU run writes the GPU rows, a CPU run keeps them -------------------------


def report_text(rows, notes: list[str]) -> str:
    import run

    return "\n".join(
        ["# Benchmarks", "", "## Results", "", run.table(rows), "", "Notes:", ""]
        + (notes or ["- none"])
        + ["", "Missed targets:", "", "- none", "", "## What is timed", ""]
    )


def test_a_gpu_run_replaces_the_gpu_rows_and_a_cpu_run_keeps_them():
    import report
    from common import Row

    cpu = Row(3, "steps/s lenet, CPU", "100 steps/s", "101 steps/s", 0.99, ">= 0.98", "met", "n1")
    gpu_missing = Row(3, "steps/s lenet, CUDA", "—", "—", None, ">= 0.98", "not measured: no GPU")
    ops_missing = Row(7, "operators per step, CUDA", "—", "—", None, "", "not measured: no GPU")
    on_cpu = report_text([cpu, gpu_missing, ops_missing], ["- 3, steps/s lenet, CPU: n1"])
    cpu_skipped = Row(3, "steps/s lenet, CPU", "—", "—", None, ">= 0.98", "not measured: --device")
    gpu = Row(3, "steps/s lenet, CUDA", "900 steps/s", "1000 steps/s", 0.9, ">= 0.98", "MISSED")
    first = Row(3, "time to the first step, lenet, CUDA", "2 s", "1.5 s", 1.3, "", "info")
    on_gpu = report_text(
        [cpu_skipped, gpu, first], ["- 3, steps/s lenet, CUDA: g1", "- 3, time to the first: x"]
    )

    merged = report.merge_rows(on_cpu, on_gpu, overwrite_measured=True)
    rows = {row[1]: row for row in table_rows(merged)}
    assert list(rows) == [
        "steps/s lenet, CPU",
        "steps/s lenet, CUDA",
        "time to the first step, lenet, CUDA",
        "operators per step, CUDA",
    ]
    assert rows["steps/s lenet, CPU"][2] == "100 steps/s", "the CPU row is kept"
    assert rows["steps/s lenet, CUDA"][2] == "900 steps/s"
    assert rows["operators per step, CUDA"][-1] == "not measured: no GPU"
    assert "- 3, steps/s lenet, CPU: n1" in merged and "- 3, steps/s lenet, CUDA: g1" in merged
    assert "- 3: steps/s lenet, CUDA: 0.900 (target >= 0.98)" in merged

    # A later CPU run measures no GPU: it keeps the measured GPU rows, and its own CPU rows.
    cpu_again = Row(3, "steps/s lenet, CPU", "99 steps/s", "98 steps/s", 1.01, ">= 0.98", "met")
    fresh = report_text([cpu_again, gpu_missing, ops_missing], [])
    kept = report.merge_rows(fresh, merged, overwrite_measured=False)
    rows = {row[1]: row for row in table_rows(kept)}
    assert rows["steps/s lenet, CPU"][2] == "99 steps/s"
    assert rows["steps/s lenet, CUDA"][2] == "900 steps/s"
    assert "time to the first step, lenet, CUDA" not in rows, "rows no run makes any more go"

    block = report.section(report.GPU_SECTION, "## GPU run\n\nmeasured")
    placed = report.put_section(on_cpu, report.GPU_SECTION, block, before="## What is timed")
    assert placed.index("## GPU run") < placed.index("## What is timed")
    again = report.put_section(placed, report.GPU_SECTION, report.no_gpu_section())
    assert again.count("## GPU run") == 1 and "Not measured: no GPU" in again
