"""Two CPU processes over gloo, started by the real torchrun through scripts/train_ddp.sh.

Each torchrun launch costs seconds (every process imports torch), so each launch checks several
things. The runs train SMALL_MODEL with no BatchNorm layer normalizing over its batch, and no
dropout (conftest.PER_SAMPLE), so 2 processes x batch 4 must train exactly like 1 process x batch
8: same samples per step, gradients averaged across processes. One more launch trains
conftest.LEARN's short run with gradient accumulation: it must learn as far above chance as in one
process, and all-reduce the gradients once per optimizer step.
"""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    BEST_METRIC,
    LEARN,
    LEARN_BATCH,
    METRIC_TOLERANCE,
    MODEL,
    PER_SAMPLE,
    RANDOM_EVERY_STEP,
    SHAPE_ARGS,
    data_args,
    has_learned,
    load_model_state,
    logged_steps,
    needs_per_sample_loss,
    read_metrics,
    small_model,
)

import checkpoint
import train

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(PROJECT, "scripts", "train_ddp.sh")
SBATCH = os.path.join(PROJECT, "scripts", "slurm.sbatch")
STEPS = 7  # 5 steps per epoch: the runs cross an epoch boundary
LAUNCH_TIMEOUT = 60  # seconds a whole torchrun launch may take, failures included
RECORDS = ["config.json", "env.json"]  # what every run folder holds beside checkpoints

# 36 training samples; 9 validation samples, which 2 processes cannot split evenly. The sizes are
# fixed here, whatever this project's defaults.
COMMON = [
    *PER_SAMPLE,
    *data_args(36),
    *SHAPE_ARGS,
    "--workers=0",
    "--epochs=2",
    f"--max-steps={STEPS}",
    "--log-every=1",
    "--device=cpu",
    "--deterministic",
    "--dist-timeout=30",
]

# Stands in for train.py: records each process, makes rank 1 fail at optimizer step FAULT_STEP
# (FAULT=raise: an exception; FAULT=kill: SIGKILL), and marks the processes that finished.
FAULTY_TRAIN = """
import json, os, signal, sys

sys.path.insert(0, {project!r})
import distributed
import train

rank = os.environ["RANK"]
marks = os.environ["MARKS_DIR"]
with open(os.path.join(marks, "started-" + rank), "w") as file:
    json.dump({{"pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}}, file)
is_logged = train.is_logged


def faulty_is_logged(step, *args):
    # Asked once at the start of every optimizer step, with the step's number.
    if rank == "1" and step == int(os.environ["FAULT_STEP"]):
        if os.environ["FAULT"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("injected fault")
    return is_logged(step, *args)


train.is_logged = faulty_is_logged
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
    open(os.path.join(marks, "finished-" + rank), "w").close()
"""

# Stands in for train.py: every optimizer step takes STEP_SECONDS longer, so that a signal sent
# while the run is going arrives before it ends.
SLOW_TRAIN = """
import os, sys, time

sys.path.insert(0, {project!r})
import distributed
import train

is_logged = train.is_logged


def slow_is_logged(*args):
    time.sleep(float(os.environ["STEP_SECONDS"]))
    return is_logged(*args)


train.is_logged = slow_is_logged
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
"""

# Stands in for train.py: counts, in a DDP communication hook, the all-reduces of each process's
# first gradient bucket (a whole gradient's is one of each bucket), and saves each process's
# final parameters.
COUNTING_TRAIN = """
import json, os, sys

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, {project!r})
import distributed
import train

reductions, models = [], []
wrap_for_training = train.wrap_for_training


def counting_hook(state, bucket):
    reductions.append(bucket.index())
    return allreduce_hook(state, bucket)


def wrap_and_count(model, *args):
    models.append(model)
    wrapped = wrap_for_training(model, *args)
    wrapped.register_comm_hook(None, counting_hook)
    return wrapped


train.wrap_for_training = wrap_and_count
with distributed.exit_without_teardown():
    train.main(sys.argv[1:])
    marks = os.path.join(os.environ["MARKS_DIR"], "rank-" + os.environ["RANK"])
    torch.save(dict(models[0].named_parameters()), marks + ".pt")
    with open(marks + ".json", "w") as file:
        json.dump({{"whole_gradient_reductions": reductions.count(0)}}, file)
"""

# srun on one node: drop srun's own options, run the command once.
FAKE_SRUN = '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'


def start(command, env=None) -> subprocess.Popen:
    """`command` in the project folder, in its own process group, output in one text pipe."""
    full_env = dict(os.environ)
    full_env.pop("OMP_NUM_THREADS", None)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    full_env.update(env or {})
    return subprocess.Popen(
        command,
        cwd=PROJECT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, tmp_path) -> subprocess.CompletedProcess:
    """Wait for `process` (at most LAUNCH_TIMEOUT); never leave any of its group running."""
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"{process.args} did not finish in {LAUNCH_TIMEOUT}s:\n{output[-3000:]}")
    finally:
        kill_group(process.pid)
    with open(tmp_path / "launch.log", "a") as log:
        log.write(output)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def launch(command, tmp_path, env=None) -> subprocess.CompletedProcess:
    return finish(start(command, env), tmp_path)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, exited but not yet reaped, does not count)."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as file:
                return file.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_ddp(tmp_path, *args: str, env=None):
    return launch(["bash", SCRIPT, "2", *COMMON, "--batch-size=4", *args], tmp_path, env)


def run_faulty(tmp_path, fault: str, step: int, *args: str):
    """A 2-process run whose rank 1 fails at `step`; check that every process is gone in time."""
    marks = tmp_path / f"marks-{fault}"
    marks.mkdir()
    wrapper = tmp_path / f"faulty_{fault}.py"
    wrapper.write_text(FAULTY_TRAIN.format(project=PROJECT))
    env = {"TRAIN_SCRIPT": str(wrapper), "MARKS_DIR": str(marks), "FAULT": fault}
    env["FAULT_STEP"] = str(step)
    result = run_ddp(tmp_path, *args, env=env)
    assert result.returncode != 0, result.stdout[-3000:]
    started = {path.name: json.loads(path.read_text()) for path in marks.glob("started-*")}
    assert sorted(started) == ["started-0", "started-1"], result.stdout[-3000:]
    assert not list(marks.glob("finished-*")), "a process finished although rank 1 failed"
    # torchrun starts each process in its own session: check them one by one.
    pids = [record["pid"] for record in started.values()]
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left_behind = [pid for pid in pids if alive(pid)]
    for pid in left_behind:
        os.kill(pid, signal.SIGKILL)
    assert not left_behind, f"processes left behind: {left_behind}\n{result.stdout[-3000:]}"
    return result, started


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run through scripts/train_ddp.sh (shared by several tests)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    output_dir = tmp_path / "run"
    init = tmp_path / "init.pt"
    # Fine-tuning under DDP: start from a state dict saved with DDP's `module.` prefix.
    torch.manual_seed(123)
    model = small_model()
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, init)
    result = run_ddp(tmp_path, f"--output-dir={output_dir}", f"--init-from={init}")
    assert result.returncode == 0, result.stdout[-3000:]
    return output_dir, init, result.stdout


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    """An uninterrupted 2-process run with RANDOM_EVERY_STEP (--augment: each process draws its
    own random crops), so a resumed run ends equal to it only if every process gets its own
    random state back."""
    tmp_path = tmp_path_factory.mktemp("augmented")
    result = run_ddp(tmp_path, f"--output-dir={tmp_path / 'run'}", *RANDOM_EVERY_STEP)
    assert result.returncode == 0, result.stdout[-3000:]
    return tmp_path / "run"


@pytest.fixture(scope="module")
def learned_by_two(tmp_path_factory):
    """conftest.LEARN's run in 2 processes of 2 micro-batches a step (the same global batch as one
    process: LEARN_BATCH), through scripts/train_ddp.sh with COUNTING_TRAIN for train.py."""
    tmp_path = tmp_path_factory.mktemp("learn")
    marks = tmp_path / "marks"
    marks.mkdir()
    wrapper = tmp_path / "counting_train.py"
    wrapper.write_text(COUNTING_TRAIN.format(project=PROJECT))
    args = [*LEARN, f"--batch-size={LEARN_BATCH // 4}", "--grad-accum-steps=2", "--workers=0"]
    args += ["--device=cpu", "--dist-timeout=30", f"--output-dir={tmp_path / 'run'}"]
    env = {"TRAIN_SCRIPT": str(wrapper), "MARKS_DIR": str(marks)}
    result = launch(["bash", SCRIPT, "2", *args], tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:]
    counted = [json.loads((marks / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    weights = [torch.load(marks / f"rank-{rank}.pt", weights_only=True) for rank in (0, 1)]
    return tmp_path / "run", counted, weights


def test_two_processes_with_gradient_accumulation_learn_far_above_chance(learned_by_two):
    output_dir, _, _ = learned_by_two
    final = read_metrics(output_dir)[-1]
    assert final["kind"] == "epoch" and has_learned(final[BEST_METRIC]), final


def test_gradients_are_all_reduced_once_per_optimizer_step(learned_by_two):
    """Under DDP, the micro-batches before a step's last skip the all-reduce (no_sync): their
    gradients add up in each process and are averaged with the last one's, once."""
    output_dir, counted, weights = learned_by_two
    steps = read_metrics(output_dir)[-1]["step"]
    assert [count["whole_gradient_reductions"] for count in counted] == [steps, steps]
    # Every micro-batch's gradient reached both processes: they end with the same weights.
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name
    saved = load_model_state(output_dir / "last.pt")
    assert all(torch.equal(saved[name], value) for name, value in weights[0].items())


def test_two_processes_write_one_checkpoint_and_one_metrics_file(ddp_run):
    output_dir, _, output = ddp_run
    # Rank 0 alone writes: no second metrics file, no checkpoint per process, no temporary files.
    assert sorted(os.listdir(output_dir)) == sorted(
        RECORDS + ["best.pt", "last.pt", "metrics.jsonl"]
    )
    records = read_metrics(output_dir)
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, STEPS + 1))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    state = load_model_state(output_dir / "last.pt")
    assert not any(key.startswith("module.") for key in state)
    model = small_model()
    model.load_state_dict(state)  # strict: the plain model's names
    assert output.count("epoch 1: train_loss") == 1, "only rank 0 prints"
    assert output.count("epoch 2: train_loss") == 1
    assert "init-from" in output and f"loaded {len(state)} tensors" in output


@needs_per_sample_loss
def test_two_processes_train_like_one_with_the_same_global_batch(ddp_run, tmp_path):
    output_dir, init, _ = ddp_run
    single_dir = tmp_path / "single"
    final = train.main(
        [*COMMON, "--batch-size=8", f"--output-dir={single_dir}", f"--init-from={init}"]
    )
    ddp_records, single_records = read_metrics(output_dir), read_metrics(single_dir)
    ddp_losses = [r["loss"] for r in ddp_records if r["kind"] == "step"]
    single_losses = [r["loss"] for r in single_records if r["kind"] == "step"]
    assert len(ddp_losses) == len(single_losses) == STEPS
    for ddp_loss, single_loss in zip(ddp_losses, single_losses, strict=True):
        assert math.isclose(ddp_loss, single_loss, rel_tol=1e-5), (ddp_losses, single_losses)
    ddp_final = ddp_records[-1]
    assert ddp_final[BEST_METRIC] == pytest.approx(final[BEST_METRIC], rel=METRIC_TOLERANCE, abs=0)
    assert math.isclose(ddp_final["val_loss"], final["val_loss"], rel_tol=1e-5)


def test_validation_is_exact_for_an_uneven_split(ddp_run, tmp_path):
    output_dir, _, _ = ddp_run
    logged = read_metrics(output_dir)[-1]
    # The same weights validated by one process over all 9 samples.
    alone = train.main(
        [*COMMON, "--batch-size=4", f"--output-dir={tmp_path}", "--eval-only"]
        + [f"--resume={output_dir / 'last.pt'}"]
    )
    assert logged[BEST_METRIC] == pytest.approx(alone[BEST_METRIC], rel=METRIC_TOLERANCE, abs=0)
    assert math.isclose(logged["val_loss"], alone["val_loss"], rel_tol=1e-6)


def test_a_failing_rank_stops_every_process(tmp_path):
    # The project's own model, none of its layers frozen (COMMON freezes SMALL_MODEL's norms).
    model = [f"--model={MODEL}", "--freeze=none"]
    result, started = run_faulty(tmp_path, "raise", 2, *model, f"--output-dir={tmp_path / 'run'}")
    assert "injected fault" in result.stdout
    # scripts/train_ddp.sh gives each of the 2 processes half of the cores.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {record["omp"] for record in started.values()} == {str(max(cores // 2, 1))}


# Ends as train.py's main does, in a process group of one when JOIN is set: the exit status and
# message of `sys.exit(EXIT)`, after an atexit function, with output still unflushed, and a
# global whose finalizer says whether Python's teardown ran.
EXITING = """
import atexit, os, sys

sys.path.insert(0, {project!r})
import distributed


class TornDown:
    def __del__(self):
        print("torn down", file=sys.stderr, flush=True)


torn_down = TornDown()
atexit.register(print, "atexit ran", file=sys.stderr)
with distributed.exit_without_teardown():
    if "JOIN" in os.environ:
        distributed.setup("cpu")
    print("unflushed", end="")
    distributed.cleanup()
    sys.exit(int(os.environ["EXIT"]) if os.environ["EXIT"].isdigit() else os.environ["EXIT"])
"""


def test_a_process_that_joined_a_group_exits_with_mains_status_and_skips_the_teardown(tmp_path):
    """Python's teardown can abort a torchrun process that succeeded (distributed.py says why):
    one that joined a process group ends before it, yet with the same status, messages and
    atexit functions. Without a process group, the teardown is Python's usual one."""
    script = tmp_path / "exiting.py"
    script.write_text(EXITING.format(project=PROJECT))
    group = {"JOIN": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    group |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    # Output buffered, as it is when torchrun's processes write to a pipe or a file.
    inherited = {key: value for key, value in os.environ.items() if key not in group}
    inherited.pop("PYTHONUNBUFFERED", None)
    ended = {}
    for name, env in {
        "error": {**group, "EXIT": "error: bad input"},
        "stopped": {**group, "EXIT": "143"},
        "alone": {"EXIT": "error: bad input"},
    }.items():
        environment = inherited | env
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=environment
        )
        ended[name] = (result.returncode, result.stdout, result.stderr.splitlines())
    assert ended["error"] == (1, "unflushed", ["error: bad input", "atexit ran"])
    assert ended["stopped"] == (143, "unflushed", ["atexit ran"])
    assert ended["alone"] == (1, "unflushed", ["error: bad input", "atexit ran", "torn down"])


def test_a_killed_rank_then_resume_auto_ends_like_an_uninterrupted_run(augmented_run, tmp_path):
    resumed_dir = tmp_path / "run"
    args = [f"--output-dir={resumed_dir}", "--save-every-steps=2", *RANDOM_EVERY_STEP]
    run_faulty(tmp_path, "kill", 3, *args)
    assert sorted(os.listdir(resumed_dir)) == RECORDS + [
        "last.pt",
        "metrics.jsonl",
        "step_00000002.pt",
    ]

    result = run_ddp(tmp_path, *args, "--resume=auto")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"resumed from {resumed_dir / 'last.pt'} at epoch 0, step 2\n" in result.stdout
    assert_same_run(resumed_dir, augmented_run)


def test_the_time_limit_signal_saves_then_requeues_and_the_requeued_job_resumes(
    augmented_run, tmp_path
):
    """slurm.sbatch on one node, with stand-ins for srun and scontrol: SLURM's USR1 becomes a
    SIGTERM for torchrun, which passes it to both processes; they stop at one step, rank 0 saves,
    the job requeues itself, and the requeued job continues to the same end."""
    output_dir = tmp_path / "run"
    args = [*COMMON, "--batch-size=4", *RANDOM_EVERY_STEP, f"--output-dir={output_dir}"]
    wrapper = tmp_path / "slow_train.py"
    wrapper.write_text(SLOW_TRAIN.format(project=PROJECT))
    env = fake_slurm(tmp_path, FAKE_SRUN) | {"TRAIN_SCRIPT": str(wrapper), "STEP_SECONDS": "0.3"}
    job = start(["bash", SBATCH, *args], env)
    wait_for_step_two(job, output_dir)
    job.send_signal(signal.SIGUSR1)  # what SLURM sends before the time limit (--signal=B:USR1@180)
    result = finish(job, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    step = stopped_and_saved(result, output_dir)
    assert (tmp_path / "scontrol.log").read_text().splitlines()[-1] == "requeue 4242"

    env["STEP_SECONDS"] = "0"
    requeued = launch(["bash", SBATCH, *args], tmp_path, env)
    assert requeued.returncode == 0, requeued.stdout[-3000:]
    assert f"resumed from {output_dir / 'last.pt'} at epoch {step // 5}, step {step}\n" in (
        requeued.stdout
    )
    assert "--rdzv-backend c10d" in requeued.stdout
    assert_same_run(output_dir, augmented_run)


def test_kill_9_of_torchrun_alone_makes_its_processes_save_and_stop(augmented_run, tmp_path):
    """torchrun starts each process in a session of its own; killed by SIGKILL, it can pass
    nothing on. Linux sends them SIGTERM instead (distributed.stop_when_torchrun_dies): they stop
    at one step, rank 0 saves, and --resume auto continues to the same end."""
    output_dir = tmp_path / "run"
    args = [*COMMON, "--batch-size=4", *RANDOM_EVERY_STEP, f"--output-dir={output_dir}"]
    wrapper = tmp_path / "slow_train.py"
    wrapper.write_text(SLOW_TRAIN.format(project=PROJECT))
    env = {"TRAIN_SCRIPT": str(wrapper), "STEP_SECONDS": "0.3"}
    job = start(["bash", SCRIPT, "2", *args], env)  # the script execs torchrun: job.pid is it
    wait_for_step_two(job, output_dir)
    os.kill(job.pid, signal.SIGKILL)
    result = finish(job, tmp_path)  # the processes hold its output pipe until they exit
    step = stopped_and_saved(result, output_dir)

    resumed = launch(["bash", SCRIPT, "2", *args, "--resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resumed from {output_dir / 'last.pt'} at epoch {step // 5}, step {step}\n" in (
        resumed.stdout
    )
    assert_same_run(output_dir, augmented_run)


def wait_for_step_two(job: subprocess.Popen, output_dir) -> None:
    """Until the run of `job` has logged step 2 (or `job` has ended, or LAUNCH_TIMEOUT)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline and job.poll() is None:
        if (output_dir / "metrics.jsonl").exists() and 2 in logged_steps(output_dir):
            return
        time.sleep(0.05)


def stopped_and_saved(result: subprocess.CompletedProcess, output_dir) -> int:
    """The step at which a run stopped on SIGTERM, checked: after step 2, before its end, with
    last.pt saved at that step."""
    stopped = re.search(r"stopped by SIGTERM at step (\d+): saved (\S+); continue", result.stdout)
    assert stopped, result.stdout[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < STEPS and stopped.group(2) == str(output_dir / "last.pt")
    assert checkpoint.load_checkpoint(output_dir / "last.pt")["progress"]["step"] == step
    return step


def assert_same_run(resumed_dir, uninterrupted_dir) -> None:
    """The same metrics lines and bit-identical weights."""
    resumed, uninterrupted = read_metrics(resumed_dir), read_metrics(uninterrupted_dir)
    assert len(resumed) == len(uninterrupted)
    for resumed_record, record in zip(resumed, uninterrupted, strict=True):
        # An epoch's mean train loss is summed in another order after a resume; all else is exact.
        if "train_loss" in record:
            resumed_loss, loss = resumed_record.pop("train_loss"), record.pop("train_loss")
            assert math.isclose(resumed_loss, loss, rel_tol=1e-12)
        assert resumed_record == record
    resumed_state = load_model_state(resumed_dir / "last.pt")
    for key, value in load_model_state(uninterrupted_dir / "last.pt").items():
        assert torch.equal(resumed_state[key], value), key


def fake_slurm(tmp_path, srun: str) -> dict:
    """The environment of a one-node job, with `srun` (a script) and a recording `scontrol`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(srun)
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\necho localhost\n'
    )
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}"
        + os.environ.get("PATH", ""),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_SUBMIT_DIR": PROJECT,
        "NPROC_PER_NODE": "2",
        "RDZV_PORT": str(free_port()),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_time_limit_signal_reaches_srun_before_the_requeue(tmp_path):
    log = tmp_path / "scontrol.log"
    # The trap ends the sleep too: left running, it would hold the job's output open for 30 s.
    srun = f"#!/bin/sh\ntrap 'echo srun got TERM >> {log}; kill $sleeper; exit 143' TERM\n"
    srun += f"touch {tmp_path}/started\nsleep 30 &\nsleeper=$!\nwait $sleeper\n"
    job = start(["bash", SBATCH], fake_slurm(tmp_path, srun))
    deadline = time.monotonic() + 10
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    result = finish(job, tmp_path)
    assert result.returncode == 0, result.stdout
    assert log.read_text().splitlines()[-2:] == ["srun got TERM", "requeue 4242"]


@pytest.mark.parametrize("script", [SCRIPT, SBATCH])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", script]).returncode == 0


def test_script_usage_errors():
    result = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    result = subprocess.run(["bash", SCRIPT, "two"], capture_output=True, text=True)
    assert result.returncode == 2 and "NPROC" in result.stderr
    env = {**os.environ, "NNODES": "2", "RDZV_ENDPOINT": ""}
    result = subprocess.run(["bash", SCRIPT, "2"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "RDZV_ENDPOINT" in result.stderr


def test_a_bad_train_option_is_one_line_and_torchrun_never_starts(tmp_path):
    result = launch(["bash", SCRIPT, "2", "--lr=abc"], tmp_path)
    assert (result.returncode, result.stdout) == (
        2,
        "error: argument --lr: expected a number, got 'abc' (see python train.py --help)\n",
    )
