"""torch.distributed set-up from torchrun's environment, and the few collectives train.py uses.

torchrun starts one process per device and tells each who it is through environment variables:
RANK (0..WORLD_SIZE-1 over all nodes), LOCAL_RANK (0..N-1 on this node), WORLD_SIZE, and
MASTER_ADDR/MASTER_PORT where rank 0 listens. Without torchrun (no RANK in the environment)
everything here is a no-op for a single process, so `python train.py` keeps working.
"""

import atexit
import builtins
import os
from datetime import timedelta

import torch
import torch.distributed as dist

_original_print = builtins.print


def setup(timeout: timedelta, device: str = "auto") -> tuple[int, int, int]:
    """Join the process group torchrun describes; return (rank, local_rank, world_size).

    The backend is NCCL when this process trains on a CUDA device and gloo on CPU. `timeout` bounds
    every collective: a process whose peer died fails after it instead of hanging forever.
    """
    if "RANK" not in os.environ:
        return 0, 0, 1
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError) as error:
        raise RuntimeError(
            f"RANK is set but the torchrun environment is incomplete ({error}): "
            "start with torchrun (see scripts/train_ddp.sh)"
        ) from None
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                "visible: lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timeout)
    atexit.register(cleanup)  # also on paths that skip train.main's `finally`
    if rank != 0:
        silence_print()
    return rank, local_rank, world_size


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


def is_main_process() -> bool:
    """Rank 0 of all nodes: the one process that prints, logs and saves checkpoints."""
    return not dist.is_initialized() or dist.get_rank() == 0


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
