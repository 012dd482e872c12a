"""Resuming is one command that loses nothing: `--resume RUN` brings back the run's options,
refuses changes to its course unless asked, never starts a run with checkpoints over, keeps the
global batch on another process count, and one process at a time trains in a run folder."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    DATASET,
    PER_SAMPLE,
    PREDICT_INPUT,
    PROJECT,
    SMALL_MODEL,
    assert_same_weights,
    data_args,
    logged_steps,
    needs_per_sample_loss,
    read_metrics,
    run_train,
    signal_at_step,
    tiny_args,
    train_fails,
)

import checkpoint
import options
import runs
import task
import train
from files import read_json, write_json

SMALL = f"--model={SMALL_MODEL}"
# A run with options of its own, not train.py's defaults.
OWN_OPTIONS = [SMALL, "--optimizer=sgd", "--lr=0.05", "--batch-size=4", "--epochs=2"]


def files_of(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_the_printed_command_continues_the_run_with_its_own_options(tmp_path, monkeypatch, capsys):
    run_train(tmp_path / "whole", *OWN_OPTIONS)
    signal_at_step(monkeypatch, 3)
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", *OWN_OPTIONS))
    monkeypatch.undo()
    assert code == 130
    command = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    program, script, *arguments = shlex.split(command)
    assert (program, os.path.basename(script)) == ("python", "train.py")
    assert arguments == ["--resume", str(tmp_path / "run")]
    train.main(arguments)
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["args"]
    assert (saved["lr"], saved["batch_size"], saved["epochs"]) == (0.05, 4, 2)
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "run" / "last.pt")
    assert logged_steps(tmp_path / "run") == logged_steps(tmp_path / "whole")


def test_a_change_to_the_runs_course_is_refused_unless_allowed(tmp_path, capsys):
    run_train(tmp_path, *OWN_OPTIONS, "--max-steps=2")
    before = files_of(tmp_path)
    code, err = train_fails(capsys, "--resume", str(tmp_path), "--lr=0.1", "--batch-size=8")
    assert code == 2
    assert err == (
        f"error: {tmp_path} was trained with --batch-size 4 --lr 0.05; this command changes "
        "that to --batch-size 8 --lr 0.1: drop those options to continue the run as it was, or "
        "add --allow-changes (see python train.py --help)\n"
    )
    assert files_of(tmp_path) == before
    # Options that do not change what is computed need no permission.
    train.main(["--resume", str(tmp_path), "--log-every=2", "--workers=0"])
    train.main(["--resume", str(tmp_path), "--max-steps=3", "--allow-changes"])
    assert checkpoint.load_checkpoint(tmp_path / "last.pt")["progress"]["step"] == 3
    invocations = read_json(tmp_path / "env.json")["invocations"]
    changes = [invocation["changed_options"] for invocation in invocations]
    assert changes[1] == {"log_every": 2}
    assert changes[2] == {"log_every": 2, "max_steps": 3}, "an accepted change is recorded"


def test_resume_auto_of_the_newest_run_brings_its_options(tmp_path, capsys):
    os.chdir(tmp_path)
    arguments = tiny_args(tmp_path, *OWN_OPTIONS, "--max-steps=2")
    train.main([argument for argument in arguments if not argument.startswith("--output-dir")])
    (run,) = os.listdir("runs")
    capsys.readouterr()
    train.main(["--resume=auto", "--max-steps=3", "--allow-changes"])
    out = capsys.readouterr().out
    assert out.startswith(f"resuming the newest run under runs/: runs/{run}\n")
    assert f"\nrun folder: runs/{run}\n" in out
    assert checkpoint.load_checkpoint(f"runs/{run}/last.pt")["args"]["lr"] == 0.05


def test_the_last_lines_say_where_the_run_went(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=2")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run folder: {tmp_path}"
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    assert out[-4:] == [
        f"saved {last} at step 2; {best} has the best {task.BEST_METRIC}",
        f"evaluate: python train.py --eval-only --resume {best}",
        f"predict:  python predict.py {best} {PREDICT_INPUT}",
        f"continue: python {os.path.relpath(PROJECT)}/train.py --resume {tmp_path} --epochs N "
        "--allow-changes",
    ]


# ---- checkpoints that do not load --------------------------------------------------------------


def test_a_run_whose_checkpoints_are_all_torn_is_refused_and_left_alone(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=2")
    os.truncate(tmp_path / "last.pt", 1000)  # best.pt is the same file: torn too
    before = files_of(tmp_path)
    code, err = train_fails(capsys, "--resume", str(tmp_path))
    assert code == 1
    torn = "not a complete file written by torch.save (cut short, or another format)"
    assert err == (
        f"error: no checkpoint in {tmp_path} loads (last.pt: {torn}; best.pt: {torn}): resume "
        "from a good copy with --resume PATH, or start the run over with --overwrite\n"
    )
    assert files_of(tmp_path) == before


def test_a_good_best_pt_newer_than_a_torn_last_pt_is_resumed(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=2")
    best = tmp_path / "best.pt"
    good = best.read_bytes()
    best.unlink()
    best.write_bytes(good)  # a file of its own now, not a second name of last.pt
    os.truncate(tmp_path / "last.pt", 1000)
    os.utime(tmp_path / "last.pt", (time.time() - 60, time.time() - 60))
    capsys.readouterr()
    train.main(["--resume", str(tmp_path)])
    captured = capsys.readouterr()
    assert f"resumed from {best} at epoch 0, step 2\n" in captured.out


def test_a_checkpoint_of_template_0_1_evaluates_but_does_not_resume(tmp_path, capsys):
    run_train(tmp_path / "run", SMALL, "--max-steps=2")
    state = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")
    old = tmp_path / "old" / "last.pt"  # a run folder of 0.1.0: no records
    old.parent.mkdir()
    progress = state["progress"]
    torch.save(
        {
            "model": state["model"],
            "optimizer": state["optimizer"],
            "scheduler": state["scheduler"],
            "epoch": progress["epoch"],
            "step": progress["step"],
            "step_in_epoch": progress["step_in_epoch"],
            "epoch_loss": 0.0,
            "best_acc": 0.5,
            "metrics_lines": 3,
            "args": state["args"],
            "rng": state["rng_per_rank"][0],
            "template_version": "0.1.0",
        },
        old,
    )
    expected = run_train(tmp_path / "run", SMALL, "--eval-only", "--resume=auto")
    assert run_train(old.parent, SMALL, "--eval-only", f"--resume={old}") == expected
    code, err = train_fails(capsys, *tiny_args(old.parent, SMALL, f"--resume={old}"))
    assert code == 1
    assert err == (
        f"error: {old} was saved by template 0.1.0, whose training state this version cannot "
        "continue: evaluate, predict or export it, or fine-tune from it with --init-from\n"
    )
    assert sorted(os.listdir(old.parent)) == ["last.pt"]


def test_eval_only_takes_the_runs_data_and_says_which(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=1", *data_args(48))
    capsys.readouterr()
    train.main(["--eval-only", "--resume", str(tmp_path), "--workers=0"])
    out = capsys.readouterr().out
    # 48 training samples and a quarter as many to validate, not the default size's quarter.
    assert f" on 12 validation samples of --dataset {DATASET}\n" in out


# ---- one writer per run folder -----------------------------------------------------------------


def test_a_run_folder_in_use_is_refused_and_freed_when_its_process_dies(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=1")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "lock = open(sys.argv[1], 'a+')\n"
            "fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "lock.seek(0); lock.truncate(); lock.write('process 4242 on node7 (train.py)')\n"
            "lock.flush(); print('held', flush=True); time.sleep(120)\n",
            str(tmp_path / runs.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        before = files_of(tmp_path)
        resume = ["--resume", str(tmp_path), "--max-steps=2", "--allow-changes"]
        code, err = train_fails(capsys, *resume)
        assert code == 1
        assert err == (
            f"error: {tmp_path} is being trained by process 4242 on node7 (train.py): wait for "
            "it to end, or choose another --output-dir\n"
        )
        assert files_of(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train.main(["--resume", str(tmp_path), "--max-steps=2", "--allow-changes"])
    assert logged_steps(tmp_path) == [1, 2]


# ---- signals answer at once --------------------------------------------------------------------


def test_a_signal_during_validation_stops_it_and_the_epoch_is_validated_on_resume(
    tmp_path, monkeypatch, capsys
):
    options = [SMALL, "--epochs=2", "--batch-size=4"]  # two validation batches
    run_train(tmp_path / "whole", *options)
    validation_sums = task.validation_sums
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return validation_sums(*args)

    monkeypatch.setattr(task, "validation_sums", interrupted)
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", *options))
    monkeypatch.undo()
    assert code == 130 and "stopped by SIGINT at step 8" in err
    assert len(calls) == 1, "validation stopped after the batch it was in"
    assert [line["kind"] for line in read_metrics(tmp_path / "run")].count("epoch") == 0
    train.main(["--resume", str(tmp_path / "run")])
    assert read_metrics(tmp_path / "run") == read_metrics(tmp_path / "whole")
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "run" / "last.pt")


# ---- options: limits, config files, process counts ---------------------------------------------


def test_more_workers_than_cpus_are_capped_with_a_note(capsys):
    args = options.parse_args(["--workers=1000", "--output-dir=run"])
    cpus = os.cpu_count()
    assert args.workers == cpus
    assert capsys.readouterr().out == (
        f"note: --workers 1000 is more than the {cpus} CPUs here: using {cpus}\n"
    )


def test_a_config_file_that_is_not_valid_yaml_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text("lr: 0.1\nepochs: [2\n")
    code, err = train_fails(capsys, f"--config={config}")
    assert code == 2
    assert err.startswith(f"error: --config {config} is not valid YAML at line 3, column 1: ")
    assert err.count("\n") == 1


def test_an_upper_case_yaml_extension_is_read_as_yaml(tmp_path):
    config = tmp_path / "RUN.YAML"
    config.write_text("lr: 0.125\nepochs: 3\n")
    args = options.parse_args([f"--config={config}", "--output-dir=run"])
    assert (args.lr, args.epochs) == (0.125, 3)


def recorded_run(folder, world_size: int, grad_accum_steps: int) -> None:
    """The records of a run of `world_size` processes (what options read of a run)."""
    folder.mkdir()
    write_json(folder / "config.json", {"grad_accum_steps": grad_accum_steps, "batch_size": 8})
    write_json(folder / "env.json", {"invocations": [{"world_size": world_size}]})


def test_fewer_processes_keep_the_global_batch_and_more_are_refused_when_they_cannot(
    tmp_path, monkeypatch, capsys
):
    recorded_run(tmp_path / "two", world_size=2, grad_accum_steps=1)
    args = options.parse_args(["--resume", str(tmp_path / "two")])
    assert args.grad_accum_steps == 2
    assert capsys.readouterr().out == (
        "note: 1 processes instead of 2: --grad-accum-steps 2 keeps the run's global batch of 16\n"
    )
    recorded_run(tmp_path / "one", world_size=1, grad_accum_steps=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args(["--resume", str(tmp_path / "one")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'one'} was trained by 1 processes with --grad-accum-steps 1: 2 "
        "cannot keep its global batch of 8; resume it with 1 processes, or add --allow-changes "
        "(see python train.py --help)\n"
    )


@needs_per_sample_loss
def test_a_run_of_two_processes_continues_on_one_with_the_same_schedule(tmp_path):
    """What a requeue onto fewer GPUs does: the same steps, learning rates and epoch ends, and
    weights equal up to the order of floating-point sums."""
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", os.path.join(PROJECT, "train.py")]
    arguments = tiny_args(two, *PER_SAMPLE, "--epochs=2", "--save-every-steps=1", "--keep-last=100")
    done = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("config.json", "env.json", "metrics.jsonl", "step_00000001.pt"):
        (resumed / name).write_bytes((two / name).read_bytes())
    config = read_json(resumed / "config.json")
    write_json(resumed / "config.json", {**config, "output_dir": str(resumed)})
    train.main(["--resume", str(resumed)])
    steps = [line for line in read_metrics(two) if line["kind"] == "step"]
    again = [line for line in read_metrics(resumed) if line["kind"] == "step"]
    assert [line["step"] for line in again] == [line["step"] for line in steps]
    assert [line["lr"] for line in again] == pytest.approx([line["lr"] for line in steps])
    epochs = [line["step"] for line in read_metrics(resumed) if line["kind"] == "epoch"]
    assert epochs == [line["step"] for line in read_metrics(two) if line["kind"] == "epoch"]
    saved, continued = (checkpoint.load_checkpoint(path / "last.pt") for path in (two, resumed))
    for key, tensor in saved["model"].items():
        torch.testing.assert_close(continued["model"][key], tensor, rtol=1e-3, atol=1e-4)
    assert continued["args"]["grad_accum_steps"] == 2
