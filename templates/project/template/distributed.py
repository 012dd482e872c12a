"""One process or many: decided when train.py starts, from torchrun's environment.

torchrun starts one process per device and tells each who it is through environment variables:
RANK (0..WORLD_SIZE-1 over all nodes), LOCAL_RANK (0..N-1 on this node), WORLD_SIZE, and
MASTER_ADDR/MASTER_PORT where rank 0 listens. Without RANK (`python train.py`) there is one
process and no process group, and every collective below returns its input unchanged, so the same
train.py runs either way:

    python train.py ...                                          # one process
    torchrun --standalone --nproc-per-node 2 train.py ...        # two, on CPUs or GPUs
"""

import atexit
import builtins
import contextlib
import ctypes
import functools
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_original_print = builtins.print
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
_joined_process_group = False  # set by setup(): exit_without_teardown() then skips the teardown


class SetupError(Exception):
    """The device or the torchrun environment cannot work as asked; the message says why."""


@dataclass(frozen=True)
class Context:
    """Where this process trains, and which of how many processes it is."""

    device: torch.device
    rank: int = 0  # over all nodes; rank 0 prints, logs and saves
    local_rank: int = 0  # on this node; picks the GPU
    world_size: int = 1


def setup(device: str = "auto", timeout_seconds: float = 600) -> Context:
    """Choose the device and, under torchrun, join the process group: the one place either is
    decided. NCCL when the processes train on GPUs, gloo on CPUs. `timeout_seconds` bounds every
    collective, so a process whose peer died fails instead of waiting forever."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda, but no CUDA device is visible: use --device cpu")
    if "RANK" not in os.environ:
        return Context(torch.device(device))
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError) as error:
        raise SetupError(
            f"RANK is set but the torchrun environment is incomplete ({error}): "
            "start with torchrun, or unset RANK for one process"
        ) from None
    stop_when_torchrun_dies()
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SetupError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                "visible: lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=timeout_seconds)
    )
    global _joined_process_group
    _joined_process_group = True
    atexit.register(cleanup)  # also on paths that skip train.main's `finally`
    if rank != 0:
        silence_print()
    index = local_rank if device == "cuda" else None
    return Context(torch.device(device, index), rank, local_rank, world_size)


def stop_when_torchrun_dies() -> None:
    """torchrun starts each process in a session of its own: a kill -9 of torchrun alone would
    leave them training, orphaned. On Linux they get SIGTERM when it dies instead, and save and
    stop as on any SIGTERM (signals.py)."""
    if sys.platform == "linux" and "TORCHELASTIC_RUN_ID" in os.environ:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def silence_print() -> None:
    """Only rank 0 prints; print(..., force=True) still prints from any rank."""

    def print_if_forced(*args, force=False, **kwargs):
        if force:
            _original_print(*args, **kwargs)

    builtins.print = print_if_forced


def cleanup() -> None:
    """Leave the process group (safe to call twice, or when it was never joined)."""
    builtins.print = _original_print
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def exit_without_teardown():
    """Around a script's whole main: a process that joined a process group ends here, with the
    status that main ended with, once the atexit functions have run and the output is flushed.

    Python's teardown can abort a torchrun process whose run succeeded ("terminate called
    without an active exception", exit -6): a process group that outlives destroy_process_group
    (FSDP's DTensor caches keep one) has gloo threads that may drop the last collective's tensors
    while the interpreter is being torn down. Nothing is left to do by then, so os._exit skips it.
    A process without a process group exits as usual."""
    try:
        yield
        status = 0
    except SystemExit as stop:
        if not _joined_process_group:
            raise
        status = stop.code
    if not _joined_process_group:
        return
    if isinstance(status, str):  # sys.exit("error: ...")
        print(status, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


def is_main_process() -> bool:
    """Rank 0 of all nodes: the one process that prints, logs and saves checkpoints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def is_local_main_process() -> bool:
    """The first process of this machine (LOCAL_RANK 0): the one that prepares what the
    processes of a machine share, such as the image cache."""
    return not dist.is_initialized() or int(os.environ.get("LOCAL_RANK", "0")) == 0


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def autocast_for(amp: bool, device: torch.device) -> functools.partial:
    """torch.autocast for --amp: float16 on CUDA (with a GradScaler), bfloat16 on CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return functools.partial(torch.autocast, device.type, dtype, enabled=amp)


def add_sums(totals: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]) -> None:
    """Add each tensor of `sums` to its total in `totals` (as float64: counts stay exact up to
    2**53)."""
    for name, value in sums.items():
        totals[name] = totals.get(name, 0) + value.double()


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum every tensor of `sums` over all processes, in one all_reduce of them laid end to end
    (as float64: counts stay exact up to 2**53)."""
    if not dist.is_initialized():
        return sums
    flat = torch.cat([value.reshape(-1).double() for value in sums.values()])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    parts = flat.split([value.numel() for value in sums.values()])
    return {
        name: part.reshape(value.shape).to(value.dtype)
        for (name, value), part in zip(sums.items(), parts, strict=True)
    }


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over all processes, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_object(value) -> list:
    """Every process's `value` (any picklable object), in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm's running statistics): each process updated
    its own in its last training step, and rank 0's are the ones a checkpoint saves. DDP itself
    sends them from rank 0 only at the start of each training forward pass."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(value):
    """Rank 0's `value`, on every process (for choices only rank 0 may make, such as a name)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class Agreement:
    """A small integer that every process learns the largest value of, once per call: how all
    processes agree to stop at the same optimizer step. Over gloo on the CPU even when training
    uses NCCL, so that asking never waits for the GPU."""

    def __init__(self):
        self.group = None
        if dist.is_initialized() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def largest(self, value: int) -> int:
        if not dist.is_initialized():
            return value
        tensor = torch.tensor([value])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return int(tensor.item())
