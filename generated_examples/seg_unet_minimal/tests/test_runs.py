"""No run is lost: run folders, interrupts that save first, and options refused before anything
is written (one line on stderr, exit 2; earlier runs untouched)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    FILES_DATASET,
    OTHER_MODEL,
    PROJECT,
    RANDOM_EVERY_STEP,
    RESHAPE,
    RESHAPE_NOW,
    RESHAPE_WAS,
    SIZE_OPTION,
    SMALL_MODEL,
    assert_refused_cleanly,
    assert_same_weights,
    data_args,
    files_of,
    logged_steps,
    run_train,
    start_train,
    tiny_args,
    train_fails,
)

import checkpoint
import train
from dataset import build_datasets
from pipeline import DatasetError

# Stands in for train.py: each optimizer step takes STEP_SECONDS longer, so that a signal arrives
# while the run is going; with SAVE_SECONDS, a checkpoint write waits that long inside the write
# (its temporary file open), after creating the file SAVING.
SLOW_TRAIN = """
import os, sys, time

sys.path.insert(0, {project!r})
import torch
import train

is_logged, save = train.is_logged, torch.save


def slow_is_logged(*args):
    time.sleep(float(os.environ.get("STEP_SECONDS", "0")))
    return is_logged(*args)


def slow_save(*args, **kwargs):
    save(*args, **kwargs)
    if os.environ.get("SAVE_SECONDS"):
        open(os.environ["SAVING"], "w").close()
        time.sleep(float(os.environ["SAVE_SECONDS"]))


train.is_logged, torch.save = slow_is_logged, slow_save
train.main(sys.argv[1:])
"""
SMALL = f"--model={SMALL_MODEL}"
LONG_RUN = [SMALL, "--epochs=3", "--deterministic", *RANDOM_EVERY_STEP]


def start_slow(tmp_path, args, **env):
    wrapper = tmp_path / "slow_train.py"
    wrapper.write_text(SLOW_TRAIN.format(project=PROJECT))
    return start_train(args, script=wrapper, env={**os.environ, **env})


def wait_for_step(process, output_dir, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (output_dir / "metrics.jsonl").exists() and step in logged_steps(output_dir):
            return
        time.sleep(0.02)
    pytest.fail(f"step {step} was not logged in {timeout}s")


# ---- run folders -------------------------------------------------------------------------------


def test_the_same_command_twice_keeps_both_runs(tmp_path, capsys):
    command = [*data_args(16), "--batch-size=8", "--workers=0"]
    command += ["--epochs=1", "--device=cpu", SMALL]
    train.main(command)
    (first,) = os.listdir("runs")
    before = files_of(os.path.join("runs", first))
    train.main(command)
    second = [name for name in os.listdir("runs") if name != first]
    assert len(second) == 1 and re.fullmatch(
        rf"\d{{8}}-\d{{6}}-{SMALL_MODEL}(-\d+)?", second[0]
    ), second
    assert files_of(os.path.join("runs", first)) == before, "the first run was changed"
    assert sorted(files_of(os.path.join("runs", second[0]))) == sorted(before)


def test_resume_auto_without_an_output_dir_continues_the_newest_run(tmp_path, capsys):
    command = [*data_args(16), "--batch-size=8", "--workers=0", "--device=cpu", SMALL]
    command += ["--log-every=1"]
    train.main([*command, "--epochs=1"])
    train.main([*command, "--epochs=1"])
    newest = sorted(os.listdir("runs"))[-1]
    os.utime(os.path.join("runs", newest, "last.pt"))
    capsys.readouterr()
    train.main([*command, "--epochs=2", "--resume=auto", "--allow-changes"])
    out = capsys.readouterr().out
    assert f"resuming the newest run under runs/: runs/{newest}\n" in out
    assert f"resumed from runs/{newest}/last.pt at epoch 1, step 2\n" in out
    assert len(os.listdir("runs")) == 2
    assert logged_steps(os.path.join("runs", newest)) == [1, 2, 3, 4]


def test_an_output_dir_that_holds_a_run_is_refused_then_overwritten_on_request(tmp_path, capsys):
    run_train(tmp_path, SMALL, "--max-steps=2")
    before = files_of(tmp_path)
    code, err = train_fails(capsys, *tiny_args(tmp_path, SMALL, "--max-steps=2"))
    assert code == 2
    assert err == (
        f"error: {tmp_path} already holds a run (best.pt): continue it with --resume {tmp_path}, "
        "start over there with --overwrite, or choose another --output-dir (see python train.py "
        "--help)\n"
    )
    assert files_of(tmp_path) == before
    (tmp_path / "notes.txt").write_text("mine")
    run_train(tmp_path, SMALL, "--max-steps=1", "--overwrite")
    assert logged_steps(tmp_path) == [1]
    assert (tmp_path / "notes.txt").read_text() == "mine", "--overwrite deletes run files only"


# ---- interrupts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run_train(output_dir, *LONG_RUN)
    return output_dir


@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_then_stops_and_resume_auto_is_bit_exact(
    tmp_path, uninterrupted, number, code
):
    process = start_slow(tmp_path, tiny_args(tmp_path, *LONG_RUN), STEP_SECONDS="0.1")
    wait_for_step(process, tmp_path, 3)
    process.send_signal(number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    again = " (press Ctrl-C again to stop at once, without saving)"
    stopped = re.fullmatch(
        rf"{number.name}: stopping after this step to save a checkpoint"
        rf"{re.escape(again) if number == signal.SIGINT else ''}\n"
        rf"stopped by {number.name} at step (\d+): saved {re.escape(str(tmp_path))}/last.pt; "
        rf"continue with: python \S*train.py --resume {re.escape(str(tmp_path))}",
        err.strip(),
    )
    assert stopped, err
    step = int(stopped.group(1))
    assert (
        step >= 3 and checkpoint.load_checkpoint(tmp_path / "last.pt")["progress"]["step"] == step
    )
    assert "Traceback" not in err
    run_train(tmp_path, *LONG_RUN, "--resume=auto")
    assert_same_weights(uninterrupted / "last.pt", tmp_path / "last.pt")
    assert logged_steps(tmp_path) == logged_steps(uninterrupted)


def test_a_second_sigint_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    saving = tmp_path / "saving"
    args = tiny_args(tmp_path / "run", *LONG_RUN, "--save-every-steps=2")
    process = start_slow(tmp_path, args, STEP_SECONDS="0.1")
    wait_for_step(process, tmp_path / "run", 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = (tmp_path / "run" / "last.pt").read_bytes()

    # Resumed, its next checkpoint write takes 30 s: both signals arrive in the middle of it.
    resumed = start_slow(tmp_path, [*args, "--resume=auto"], SAVE_SECONDS="30", SAVING=str(saving))
    deadline = time.monotonic() + 120
    while not saving.exists() and time.monotonic() < deadline:
        assert resumed.poll() is None, resumed.communicate()
        time.sleep(0.02)
    resumed.send_signal(signal.SIGINT)  # asks to save and stop: training is saving already
    time.sleep(0.5)
    resumed.send_signal(signal.SIGINT)  # the second one: stop now
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 130, err
    assert err.strip().splitlines() == [
        "SIGINT: stopping after this step to save a checkpoint (press Ctrl-C again to stop at "
        "once, without saving)",
        "stopped by a second SIGINT: not saved",
    ]
    assert "Traceback" not in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert not [name for name in os.listdir(tmp_path / "run") if ".tmp-" in name]


# ---- options checked before anything runs ------------------------------------------------------

# (options, exit code, the start of the one line on stderr after "error: "); EARLIER stands for
# the folder of an earlier run. Those of image options: test_images.py.
BAD_OPTIONS = [
    (["--lr=-1"], 2, "argument --lr: must be above 0, got -1"),
    (["--lr=0"], 2, "argument --lr: must be above 0, got 0"),
    (["--lr=nan"], 2, "argument --lr: must be above 0, got nan"),
    (["--lr=inf"], 2, "argument --lr: must be above 0, got inf"),
    (["--lr=fast"], 2, "argument --lr: expected a number, got 'fast'"),
    (["--momentum=-1"], 2, "argument --momentum: must be at least 0 and below 1, got -1"),
    (["--momentum=1"], 2, "argument --momentum: must be at least 0 and below 1, got 1"),
    (["--weight-decay=-0.1"], 2, "argument --weight-decay: must be at least 0, got -0.1"),
    (["--log-every=0"], 2, "argument --log-every: must be at least 1, got 0"),
    (["--workers=-1"], 2, "argument --workers: must be at least 0, got -1"),
    (["--epochs=0"], 2, "argument --epochs: must be at least 1, got 0"),
    (["--epochs=two"], 2, "argument --epochs: expected a whole number, got 'two'"),
    (["--max-steps=0"], 2, "argument --max-steps: must be at least 1, got 0"),
    (["--batch-size=0"], 2, "argument --batch-size: must be at least 1, got 0"),
    (["--grad-accum-steps=0"], 2, "argument --grad-accum-steps: must be at least 1, got 0"),
    ([f"{SIZE_OPTION}=0"], 2, f"argument {SIZE_OPTION}: must be at least 1, got 0"),
    (["--clip-grad-norm=-1"], 2, "argument --clip-grad-norm: must be above 0, got -1"),
    (["--clip-grad-norm=0"], 2, "argument --clip-grad-norm: must be above 0, got 0"),
    (["--warmup-epochs=-1"], 2, "argument --warmup-epochs: must be at least 0, got -1"),
    (["--save-every-steps=0"], 2, "argument --save-every-steps: must be at least 1, got 0"),
    (["--keep-last=0"], 2, "argument --keep-last: must be at least 1, got 0"),
    (["--lr-gamma=0"], 2, "argument --lr-gamma: must be above 0, got 0"),
    (["--lr-step-epochs=0"], 2, "argument --lr-step-epochs: must be at least 1, got 0"),
    (["--dist-timeout=0"], 2, "argument --dist-timeout: must be at least 1, got 0"),
    (["--model=resnet9000"], 2, "argument --model: invalid choice: 'resnet9000'"),
    (["--dataset=imagenet"], 2, "argument --dataset: invalid choice: 'imagenet'"),
    (["--device=tpu"], 2, "argument --device: invalid choice: 'tpu'"),
    (["--optimizer=adam"], 2, "argument --optimizer: invalid choice: 'adam'"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--freeze=*"], 2, "--freeze * freezes every parameter: nothing would train"),
    (["--freeze=nothing*"], 2, "--freeze nothing* matches no parameter name"),
    (["--logger=csv"], 2, "unknown --logger csv; choose from: jsonl"),
    (["--eval-only"], 2, "--eval-only needs weights: pass --resume PATH (or auto)"),
    (["--overwrite", "--resume=auto"], 2, "--overwrite starts the run over, --resume continues"),
    (["--resume=missing.pt"], 2, "--resume missing.pt: no such run folder or checkpoint"),
    (["--seed=-1"], 2, "argument --seed: must be at least 0, got -1"),
    ([f"--seed={2**70}"], 2, f"argument --seed: must be at most 2147483647, got {2**70}"),
    (["--init-from=missing.pt"], 2, "--init-from missing.pt: no such file"),
    (["--output-dir=notes.txt"], 2, "--output-dir notes.txt is a file, not a folder"),
    (["--output-dir=notes.txt/run"], 2, "--output-dir notes.txt/run is inside a file"),
    (["--output-dir=EARLIER"], 2, "EARLIER already holds a run (best.pt)"),
    (["--batch-size=8", "--grad-accum-steps=9"], 2, "32 training samples give no optimizer step"),
    (
        ["--resume=EARLIER/last.pt", RESHAPE],
        2,
        f"EARLIER was trained with {RESHAPE_WAS}; this command changes that to {RESHAPE_NOW}",
    ),
    (
        ["--eval-only", "--resume=EARLIER/last.pt", f"--model={OTHER_MODEL}"],
        1,
        f"EARLIER/last.pt was saved with --model {SMALL_MODEL}, this run uses {OTHER_MODEL}",
    ),
    (
        ["--init-from=EARLIER/last.pt", f"--model={OTHER_MODEL}"],
        1,
        f"EARLIER/last.pt holds a {SMALL_MODEL} model",
    ),
    (
        ["--resume=EARLIER/metrics.jsonl"],
        1,
        "cannot load checkpoint EARLIER/metrics.jsonl: not a complete file written by torch.save",
    ),
]


@pytest.mark.parametrize(
    "options, code, message", BAD_OPTIONS, ids=[" ".join(case[0]) for case in BAD_OPTIONS]
)
def test_bad_options_are_one_line_and_change_nothing(
    tmp_path, capsys, earlier_run, options, code, message
):
    assert_refused_cleanly(tmp_path, capsys, earlier_run, options, code, message)


MISTYPED_LR_ERROR = (
    "error: argument --lr: expected a number, got 'abc' (see python train.py --help)\n"
)


def test_a_mistyped_number_is_answered_before_torch_is_imported(tmp_path):
    """With torch made unimportable, train.py still answers a bad --lr: it never got that far."""
    no_torch = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "sys.argv = ['train.py', '--lr=abc']\n"
        f"runpy.run_path({os.path.join(PROJECT, 'train.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", no_torch], cwd=PROJECT, capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (2, MISTYPED_LR_ERROR)


def test_under_torchrun_only_the_first_process_of_a_machine_prints_an_option_error():
    """Every process torchrun starts reads the same command line: the one of LOCAL_RANK 0 says
    what is wrong, the others exit 2 in silence."""
    for local_rank, printed in (("0", MISTYPED_LR_ERROR), ("1", "")):
        done = subprocess.run(
            [sys.executable, "train.py", "--lr=abc"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            env={**os.environ, "LOCAL_RANK": local_rank},
        )
        assert (done.returncode, done.stderr) == (2, printed)


def test_the_table_is_long_enough():
    assert len(BAD_OPTIONS) >= 40


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: ")
    assert "(default: None)" not in text and "(default: False)" not in text
    lr_help = re.search(r"--lr LR (.*?) --", text).group(1)
    assert lr_help.count("default") == 1 and "for sgd" in lr_help
    assert "--momentum MOMENTUM SGD momentum (default: 0.9)" in text


def test_nothing_is_written_when_a_run_stops_on_bad_data(tmp_path, capsys):
    missing = f"--data-dir={tmp_path / 'no'}"
    args = tiny_args(tmp_path / "run", f"--dataset={FILES_DATASET}", missing)
    code, err = train_fails(capsys, *args)
    with pytest.raises(DatasetError) as problem:  # what the folder is missing: dataset.py says
        build_datasets(train.parse_args(args))
    assert code == 1 and err == f"error: {problem.value}\n" and str(tmp_path / "no") in err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, err = train_fails(capsys, *tiny_args(tmp_path, "--device=cuda"))
    assert code == 1
    assert err == "error: --device cuda, but no CUDA device is visible: use --device cpu\n"


def test_stderr_of_a_real_process_is_one_line(tmp_path):
    process = start_train(["--lr=-1", f"--output-dir={tmp_path}"])
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err == "error: argument --lr: must be above 0, got -1 (see python train.py --help)\n"
