"""--fsdp: the model sharded over the processes with FSDP2, and its checkpoints sharded with
torch.distributed.checkpoint (DCP).

Each process keeps 1/N of every weight, gradient and optimizer state, and gathers a block's whole
weights only while that block runs: models whose AdamW state does not fit one device under DDP.
model.py says which blocks to shard one at a time (fsdp_blocks); the rest goes with the root.

A sharded checkpoint is a folder, `step_00000006/`: every process writes its own shards, rank 0
writes train_state.pt beside them (progress, scheduler, every process's random state, options),
and DCP writes `.metadata` last. It is written as `step_00000006.partial/` and renamed only when
whole, so an interrupted save leaves the previous checkpoints as they were. DCP reshards on load:
a run saved by 2 processes continues on 1 or 3 (options.keep_global_batch keeps its batch).

    python sharded.py consolidate runs/RUN/step_00000006 model.pt   # one file, for predict.py
"""

import argparse
import glob
import os
import re
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

import checkpoint
import distributed

TRAIN_STATE = "train_state.pt"  # rank 0's file: all but the model's and optimizer's tensors
METADATA = ".metadata"  # written by DCP after every shard: a folder without it is incomplete
BEST = "best"
PARTIAL = ".partial"  # a folder being written
TRAINING_STATE = ("progress", "scheduler", "scaler", "log", "rng_per_rank")
REPLACED = ".replaced"  # a whole folder of the same step, about to make way for a newer save
FOLDER = re.compile(r"step_(\d{8})(\.replaced)?")  # the folders that can be resumed from


def shard(model: nn.Module, blocks: list[nn.Module], device: torch.device, amp: bool) -> None:
    """Shard `model` in place over every process: each of `blocks`, then the rest (the root).
    With `amp`, the blocks compute in bfloat16 while the sharded weights, and the gradients'
    reduction, stay float32 (FSDP2's MixedPrecisionPolicy replaces autocast and GradScaler)."""
    mesh = init_device_mesh(device.type, (distributed.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if amp:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP's no_sync(): micro-batches before a step's last keep their gradients unreduced."""
    model.set_requires_gradient_sync(sync)


def most_batches(count: int, device: torch.device) -> int:
    """The largest `count` of any process."""
    tensor = torch.tensor([count], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


class ModelAndOptimizer(Stateful):
    """The sharded tensors, as DCP saves and loads them. Through get_state_dict/set_state_dict,
    which name the optimizer's state by parameter name: its own state_dict() numbers them, and
    those numbers do not survive resharding."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )


class ShardedCheckpointer(checkpoint.Checkpointer):
    """checkpoint.Checkpointer for a sharded model: the same objects and calls, but every save is
    the step folder of the current step (last.pt is the newest folder; best.pt is `best/`)."""

    def __init__(self, output_dir: str, objects: dict, metadata: dict, keep_last: int = 3):
        super().__init__(output_dir, objects, metadata, keep_last)
        self.last = None

    def state(self) -> dict:
        """train_state.pt's contents (a collective: every process calls it)."""
        state = {
            name: value.state_dict()
            for name, value in self.objects.items()
            if name not in ("model", "optimizer")
        }
        state["rng_per_rank"] = distributed.all_gather_object(checkpoint.rng_state())
        return {**state, **self.metadata}

    def tensors(self) -> dict:
        return {"app": ModelAndOptimizer(self.objects["model"], self.objects["optimizer"])}

    def path(self, name: str) -> str:
        if name == checkpoint.LAST:
            return self.last or os.path.join(self.output_dir, "step_<none yet>")
        if name == checkpoint.BEST:
            return os.path.join(self.output_dir, BEST)
        return os.path.join(self.output_dir, name.removesuffix(".pt"))

    def save(self, name: str, aliases: tuple[str, ...] = ()) -> str:
        """Write the step folder of the current step (whatever `name`), and `best/` when BEST
        is among `aliases`; return the folder."""
        state = self.state()
        folder = os.path.join(self.output_dir, f"step_{self.objects['progress'].step:08d}")
        partial = folder + PARTIAL
        try:
            if distributed.is_main_process():
                shutil.rmtree(partial, ignore_errors=True)  # left by a save that was cut short
                os.makedirs(partial)
                torch.save(state, os.path.join(partial, TRAIN_STATE))
            distributed.barrier()
            dcp.save(self.tensors(), checkpoint_id=partial)
            distributed.barrier()
            if distributed.is_main_process():
                publish(partial, folder)
                if checkpoint.BEST in aliases:
                    link_copy(folder, self.path(checkpoint.BEST))
                prune_step_folders(self.output_dir, self.keep_last)
        except OSError as error:
            raise checkpoint.CheckpointError(
                f"could not save checkpoint {folder}: {error.strerror or error}; "
                "the previous checkpoints are intact"
            ) from None
        distributed.barrier()
        self.last = folder
        return folder

    def load(self, path: str) -> dict:
        return load_train_state(path)

    def find_resume(self, directory: str) -> tuple[str, dict] | None:
        """The newest whole step folder of `directory` (`best/` if none), as find_resume does."""
        return checkpoint.first_that_loads(directory, folders_in(directory), self.load)

    def restore(self, state: dict, path: str) -> None:
        """Load the shards of `path` into this run's sharding (whatever the process count that
        saved them), then the rest from `state`, random number generators last."""
        checkpoint.check_options(state, path, self.metadata["args"])
        dcp.load(self.tensors(), checkpoint_id=path)
        for name, value in self.objects.items():
            if name not in ("model", "optimizer") and state.get(name):
                value.load_state_dict(state[name])
        checkpoint.restore_rng_state(state, distributed.get_rank(), distributed.get_world_size())
        self.last = path


def load_train_state(folder: str) -> dict:
    """train_state.pt of the step folder `folder`, if the folder is whole."""
    if not os.path.isfile(os.path.join(folder, METADATA)):
        raise checkpoint.CheckpointError(
            f"{folder} is not a whole sharded checkpoint (no {METADATA}: its save was cut short)",
            f"no {METADATA}",
        )
    return checkpoint.load_checkpoint(os.path.join(folder, TRAIN_STATE))


def folders_in(directory: str) -> list[str]:
    """The step folders of `directory`, newest step first, then `best/`."""
    steps = []
    for path in glob.glob(os.path.join(directory, "step_*")):
        match = FOLDER.fullmatch(os.path.basename(path))
        if match and os.path.isdir(path):
            steps.append((int(match.group(1)), not match.group(2), path))
    newest_first = [path for *_, path in sorted(steps, reverse=True)]
    best = os.path.join(directory, BEST)
    return newest_first + ([best] if os.path.isdir(best) else [])


def publish(partial: str, folder: str) -> None:
    """Rename the whole folder `partial` to `folder`. A folder of the same step (saved within the
    epoch, now saved again at its end) is renamed aside first and removed last: a process killed
    in between leaves it for --resume to find."""
    replaced = folder + REPLACED
    if os.path.exists(folder):
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(folder, replaced)
    os.rename(partial, folder)
    shutil.rmtree(replaced, ignore_errors=True)


def link_copy(source: str, target: str) -> None:
    """Make `target` a folder of hard links to the files of `source`, swapped in whole."""
    partial = target + PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=link_or_copy)
    publish(partial, target)


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, target)


def prune_step_folders(directory: str, keep: int) -> None:
    steps = sorted(glob.glob(os.path.join(directory, "step_" + "[0-9]" * 8)))
    for path in steps[:-keep]:
        shutil.rmtree(path)


def consolidate(folder: str, path: str) -> str:
    """Write the sharded checkpoint `folder` as one file `path` that loads with weights_only:
    the model's whole weights and the options, which predict.py, export.py, --eval-only and
    --init-from take. Not resumable: the optimizer's state stays in the folder."""
    state = load_train_state(folder)
    with tempfile.TemporaryDirectory() as scratch:
        whole = os.path.join(scratch, "whole.pt")
        dcp_to_torch_save(folder, whole)
        weights = torch.load(whole, weights_only=True)["app"]["model"]
    # The options and the data's metadata; no training state, so that --resume refuses the file.
    kept = {k: v for k, v in state.items() if k not in TRAINING_STATE}
    checkpoint.save_checkpoint({"model": weights, **kept}, path)
    return f"wrote {path}: {len(weights)} tensors of {folder}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="sharded.py", description="Sharded (--fsdp) checkpoints as one file."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("consolidate", help="write a step folder as one checkpoint file")
    merge.add_argument("folder", help="a step folder of a --fsdp run (runs/RUN/step_00000006)")
    merge.add_argument("file", help="the checkpoint file to write (model.pt)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        parser.error(f"{args.folder}: no such folder")
    try:
        print(consolidate(args.folder, args.file))
    except checkpoint.CheckpointError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
