"""--fsdp: the model sharded over CPU processes (gloo), started by the real torchrun, and its
sharded checkpoints (sharded.py): exact resume, a save cut short by SIGKILL, loading on another
process count, and consolidation into one file.

Each launch costs seconds, so the runs are few and shared: one uninterrupted run, one killed while
it saves and then resumed, one that loads a checkpoint on 3 processes and stops there, and one that
goes on from it in 1 process, recording the samples it takes.
(A process count that cannot keep the global batch is refused before anything starts, with or
without --fsdp: test_resume.py.)
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import (
    MODEL,
    PER_SAMPLE,
    RANDOM_EVERY_STEP,
    SHAPE_ARGS,
    data_args,
    load_model_state,
    small_model,
    torchrun,
    train_fails,
)
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import runs
from model import fsdp_blocks

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 9  # the runs cross an epoch boundary
STEPS_PER_EPOCH = 6
FOLDERS = ["step_00000003", "step_00000006", "step_00000009"]  # --save-every-steps 3

# 96 training samples, 2 micro-batches of 4 a step in each of 2 processes: a global batch of 16,
# which 1 process keeps with 4 micro-batches. Gradient clipping on the sharded gradients, and
# random numbers drawn every step, which a resume must continue per process.
COMMON = [
    *PER_SAMPLE,
    *data_args(96),
    *SHAPE_ARGS,
    *RANDOM_EVERY_STEP,
    "--batch-size=4",
    "--grad-accum-steps=2",
    "--clip-grad-norm=0.5",
    "--workers=0",
    "--epochs=2",
    f"--max-steps={STEPS}",
    "--save-every-steps=3",
    "--log-every=1",
    "--device=cpu",
    "--deterministic",
    "--dist-timeout=30",
    "--fsdp",
]

# Stands in for train.py: rank 1 dies by SIGKILL as the processes begin to write the step
# folder named KILL_IN (rank 0 has already written its train_state.pt there).
KILLED_IN_SAVE = """
import os, signal, sys

sys.path.insert(0, {project!r})
import distributed
import sharded
import train

save = sharded.dcp.save


def save_or_die(state, checkpoint_id):
    if os.environ["RANK"] == "1" and os.environ["KILL_IN"] in checkpoint_id:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(state, checkpoint_id=checkpoint_id)


sharded.dcp.save = save_or_die
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
"""

# Stands in for train.py. With SAMPLES set, each process appends the training samples it takes,
# as "epoch index" lines, to SAMPLES/rank<R>.txt. With LOADED set, once the checkpoint is restored
# rank 0 writes the whole model and optimizer state (gathered from every process) there, and with
# STOP set every process then exits.
RECORDING_TRAIN = """
import os, sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

sys.path.insert(0, {project!r})
import distributed
import pipeline
import train

resume_from, indices = train.resume_from, pipeline.ShardedSampler.__iter__


def recorded(sampler):
    if not sampler.shuffle:  # validation's sampler
        yield from indices(sampler)
        return
    path = os.path.join(os.environ["SAMPLES"], "rank" + os.environ["RANK"] + ".txt")
    with open(path, "a") as log:
        for index in indices(sampler):
            log.write("%d %d\\n" % (sampler.epoch, index))
            log.flush()
            yield index


def resume_and_write(args, output_dir, checkpointer):
    resumed = resume_from(args, output_dir, checkpointer)
    objects = checkpointer.objects
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model, optimizer = get_state_dict(objects["model"], objects["optimizer"], options=whole)
    if os.environ["RANK"] == "0":
        torch.save({{"model": model, "optimizer": optimizer}}, os.environ["LOADED"])
    if "STOP" in os.environ:
        sys.exit(0)
    return resumed


if "SAMPLES" in os.environ:
    pipeline.ShardedSampler.__iter__ = recorded
if "LOADED" in os.environ:
    train.resume_from = resume_and_write
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
"""


def write_script(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text.format(project=PROJECT))
    return path


def whole(folder) -> dict:
    """A step folder's model and optimizer state, as one process loads them."""
    path = folder.parent / (folder.name + ".whole.pt")
    dcp_to_torch_save(folder, path)
    return torch.load(path, weights_only=True)["app"]


def assert_equal_tensors(a, b, where: str = "") -> None:
    """`a` and `b` (nested dicts and lists of tensors and numbers) hold equal values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_tensors(x, y, f"{where}/{index}")
    else:
        assert a == b, where


def samples_by_step(records, per_process: int, resumed_at: int = 0) -> dict[int, list[int]]:
    """{step: the sorted samples all processes took in it}, from the SAMPLES records of a run that
    resumed after step `resumed_at`, in which each process took `per_process` samples a step."""
    by_step = collections.defaultdict(list)
    for path in records.glob("rank*.txt"):
        taken = collections.defaultdict(list)
        for line in path.read_text().splitlines():
            epoch, index = map(int, line.split())
            taken[epoch].append(index)
        for epoch, indices in taken.items():
            first = max(epoch * STEPS_PER_EPOCH, resumed_at)
            for position, index in enumerate(indices):
                by_step[first + position // per_process + 1].append(index)
    return {step: sorted(by_step[step]) for step in range(resumed_at + 1, STEPS + 1)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One 2-process --fsdp run of STEPS steps, saving every 3; its samples in ../samples."""
    tmp_path = tmp_path_factory.mktemp("fsdp")
    script = write_script(tmp_path, "recording_train.py", RECORDING_TRAIN)
    (tmp_path / "samples").mkdir()
    output_dir = tmp_path / "run"
    env = {"SAMPLES": str(tmp_path / "samples")}
    result = torchrun(2, *COMMON, f"--output-dir={output_dir}", script=script, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    return output_dir


def test_a_sharded_run_saves_whole_step_folders_and_keeps_the_last_three(uninterrupted):
    names = sorted(os.listdir(uninterrupted))
    assert names == sorted(["best", "config.json", "env.json", "metrics.jsonl", *FOLDERS])
    for name in [*FOLDERS, "best"]:
        # Every process's shards, rank 0's train_state.pt, DCP's metadata last.
        contents = sorted(os.listdir(uninterrupted / name))
        assert contents == [".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.pt"]


def test_consolidate_writes_one_file_that_the_plain_model_loads(uninterrupted, tmp_path):
    folder, path = uninterrupted / FOLDERS[-1], tmp_path / "model.pt"
    result = subprocess.run(
        [sys.executable, "sharded.py", "consolidate", str(folder), str(path)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    weights = load_model_state(path)  # weights_only
    model = small_model()
    model.load_state_dict(weights)  # strict: every tensor, the plain model's names
    assert_equal_tensors(weights, whole(folder)["model"])
    state = torch.load(path, weights_only=True)
    assert "optimizer" not in state and "rng_per_rank" not in state  # not resumable by mistake


def test_consolidating_an_incomplete_folder_is_refused(uninterrupted, tmp_path):
    torn = tmp_path / "step_00000009"
    shutil.copytree(uninterrupted / FOLDERS[-1], torn)
    os.remove(torn / ".metadata")
    result = subprocess.run(
        [sys.executable, "sharded.py", "consolidate", str(torn), str(tmp_path / "model.pt")],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "not a whole sharded checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "model.pt").exists()


def test_killed_while_saving_then_resume_auto_ends_like_an_uninterrupted_run(
    uninterrupted, tmp_path
):
    output_dir = tmp_path / "run"
    args = [*COMMON, f"--output-dir={output_dir}"]
    script = write_script(tmp_path, "killed_in_save.py", KILLED_IN_SAVE)
    killed = torchrun(2, *args, script=script, env={"KILL_IN": "step_00000006"})
    assert killed.returncode != 0, killed.stdout[-3000:]
    # The cut-short save left its temporary folder (no .metadata), never a step folder.
    assert not (output_dir / "step_00000006").exists()
    assert not (output_dir / "step_00000006.partial" / ".metadata").exists()
    assert (output_dir / "step_00000003" / ".metadata").exists()

    result = torchrun(2, *args, "--resume=auto")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"resumed from {output_dir / 'step_00000003'} at epoch 0, step 3" in result.stdout
    assert not (output_dir / "step_00000006.partial").exists()
    for name in FOLDERS:
        assert_equal_tensors(whole(output_dir / name), whole(uninterrupted / name), name)


def test_a_checkpoint_of_two_processes_loads_into_three(uninterrupted, tmp_path):
    """Resharded on load: the whole model and optimizer state that 3 processes hold after
    --resume equal what 2 processes saved."""
    output_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, output_dir)
    shutil.rmtree(output_dir / FOLDERS[-1])  # resume from step 6
    script = write_script(tmp_path, "recording_train.py", RECORDING_TRAIN)
    loaded = tmp_path / "loaded.pt"
    # 3 processes cannot keep the global batch of 16 (2 x 2 x 4): --allow-changes lets them load.
    args = ["--resume=auto", f"--output-dir={output_dir}", "--allow-changes"]
    env = {"LOADED": str(loaded), "STOP": "1"}
    result = torchrun(3, *args, script=script, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    loaded, saved = torch.load(loaded, weights_only=True), whole(output_dir / FOLDERS[1])
    assert_equal_tensors(loaded["model"], saved["model"])
    assert_equal_tensors(loaded["optimizer"]["state"], saved["optimizer"]["state"])


def test_one_process_resumes_two_with_their_state_and_their_sample_order(uninterrupted, tmp_path):
    """Saved by 2 processes at step 3, resumed by 1: it loads what was saved, keeps the global
    batch with twice the accumulation, and takes in each step exactly the samples that the two
    processes took in theirs: none skipped, none twice, across the epoch's end."""
    output_dir, samples, loaded = tmp_path / "run", tmp_path / "samples", tmp_path / "loaded.pt"
    shutil.copytree(uninterrupted, output_dir)
    for name in FOLDERS[1:]:
        shutil.rmtree(output_dir / name)
    samples.mkdir()
    script = write_script(tmp_path, "recording_train.py", RECORDING_TRAIN)
    env = {"LOADED": str(loaded), "SAMPLES": str(samples)}
    args = ["--resume=auto", f"--output-dir={output_dir}"]
    result = torchrun(1, *args, script=script, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "--grad-accum-steps 4 keeps the run's global batch of 16" in result.stdout
    # The same global batch, so the same schedule: the learning rate too.
    assert_equal_tensors(torch.load(loaded, weights_only=True), whole(output_dir / FOLDERS[0]))

    two = samples_by_step(uninterrupted.parent / "samples", per_process=8)
    first_epoch = [index for step in range(1, STEPS_PER_EPOCH + 1) for index in two[step]]
    assert len(first_epoch) == len(set(first_epoch)) == 96
    assert samples_by_step(samples, per_process=16, resumed_at=3) == {
        step: two[step] for step in range(4, STEPS + 1)
    }


def test_overwrite_deletes_the_step_folders_and_leaves_other_files(uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, output_dir)
    os.rename(output_dir / FOLDERS[0], output_dir / (FOLDERS[0] + ".partial"))
    (output_dir / "notes.txt").write_text("not the run's")
    with runs.claim_output_dir(str(output_dir), argparse.Namespace(overwrite=True)):
        pass
    assert sorted(os.listdir(output_dir)) == ["notes.txt"]


def test_fsdp_without_torchrun_is_refused_in_one_line(capsys, tmp_path):
    code, err = train_fails(capsys, *COMMON, f"--output-dir={tmp_path / 'run'}")
    assert code == 2 and "--fsdp shards the model over processes: launch with torchrun" in err
    assert not (tmp_path / "run").exists()


def test_the_blocks_sharded_one_at_a_time_are_separate_parts_of_the_model():
    """model.fsdp_blocks of this project's model: parts of it, none inside another (FSDP2 would
    refuse to shard a parameter twice), never the whole model (which the root's sharding is)."""
    model = small_model(MODEL)
    blocks = fsdp_blocks(model)
    parts = [id(module) for block in blocks for module in block.modules()]
    assert len(parts) == len(set(parts))
    assert id(model) not in parts
    assert set(parts) <= {id(module) for module in model.modules()}


def test_a_step_folder_given_for_a_checkpoint_file_says_how_to_make_one(
    uninterrupted, tmp_path, capsys
):
    folder = uninterrupted / FOLDERS[-1]
    hint = f"{folder} is a sharded checkpoint: make it one file with python sharded.py consolidate"
    code, err = train_fails(
        capsys, *data_args(16), *SHAPE_ARGS, f"--init-from={folder}", f"--output-dir={tmp_path}"
    )
    assert code == 2
    assert err == f"error: --init-from {hint} {folder} FILE (see python train.py --help)\n"
    best = uninterrupted / "best"
    code, err = train_fails(capsys, *data_args(16), *SHAPE_ARGS, "--eval-only", f"--resume={best}")
    assert code == 1
    assert err == (
        f"error: --eval-only takes one file: {best} is a sharded checkpoint: make it one file "
        f"with python sharded.py consolidate {best} FILE\n"
    )
    result = subprocess.run(
        [sys.executable, "export.py", str(folder), "--format=torchscript"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and f"error: checkpoint {hint} {folder} FILE" in result.stderr
    assert result.stderr.count("\n") == 1
