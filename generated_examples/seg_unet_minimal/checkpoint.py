"""Checkpoints: the whole training state saved and restored in one place, written atomically
(files.py), loaded safely, finding the one to resume from, and fine-tuning weights.

A checkpoint is a dict: one entry per stateful object of the run (model, optimizer, scheduler,
scaler, progress, log: whatever train.py hands to Checkpointer), `rng_per_rank` (every process's
random number generators) and metadata (`args`, `template_version`, `class_names`). It loads with
`torch.load(path, weights_only=True)`: tensors and plain data only.
"""

import glob
import os
import random
import sys
import zipfile

import torch
from torch import nn

import distributed
import files

LAST = "last.pt"
BEST = "best.pt"
STEP_PATTERN = "step_*.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile
IDENTITY_OPTIONS = ("model", "num_classes", "in_channels")  # a checkpoint fits only these


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used; the message names the file, and `reason`
    says what is wrong with it in a few words."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class Checkpointer:
    """Saves `objects` (name -> anything with state_dict() and load_state_dict()) into
    `output_dir`, and restores them; every process calls both, only rank 0 writes.

    Pass the plain model, not the DDP or torch.compile wrapper, so that checkpoints load the same
    way in one process or many.
    """

    def __init__(self, output_dir: str, objects: dict, metadata: dict, keep_last: int = 3):
        self.output_dir = output_dir
        self.objects = objects
        self.metadata = metadata
        self.keep_last = keep_last

    def state(self) -> dict:
        """The checkpoint as a dict (a collective under torchrun: every process calls it)."""
        state = {name: value.state_dict() for name, value in self.objects.items()}
        state["rng_per_rank"] = distributed.all_gather_object(rng_state())
        return {**state, **self.metadata}

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def save(self, name: str, aliases: tuple[str, ...] = ()) -> str:
        """Write OUTPUT_DIR/name and point each alias (last.pt, best.pt) at it; return its path."""
        state = self.state()
        path = os.path.join(self.output_dir, name)
        if distributed.is_main_process():
            save_checkpoint(state, path)
            for alias in aliases:
                files.publish(path, os.path.join(self.output_dir, alias))
            prune_step_checkpoints(self.output_dir, self.keep_last)
        distributed.barrier()
        return path

    def load(self, path: str) -> dict:
        """The checkpoint at `path` (a file here; a folder for sharded.ShardedCheckpointer)."""
        return load_checkpoint(path)

    def find_resume(self, directory: str) -> tuple[str, dict] | None:
        """The newest checkpoint of `directory` that loads: find_resume_checkpoint."""
        return find_resume_checkpoint(directory)

    def restore(self, state: dict, path: str) -> None:
        """Load every object from `state` (read from `path`), random number generators last.
        A Checkpointer of the model alone (evaluation) loads the weights only."""
        check_compatible(state, path, self.metadata["args"])
        training = set(self.objects) != {"model"}
        if training and not ("progress" in state and "rng_per_rank" in state):
            version = state.get("template_version", "0.1")
            raise CheckpointError(
                f"{path} was saved by template {version}, whose training state this version "
                "cannot continue: evaluate, predict or export it, or fine-tune from it with "
                "--init-from"
            )
        load_weights(self.objects["model"], state, path)
        if not training:
            return
        for name, value in self.objects.items():
            # An empty state (a disabled GradScaler's) leaves the object as it was built.
            if name != "model" and state.get(name):
                value.load_state_dict(state[name])
        restore_rng_state(state, distributed.get_rank(), distributed.get_world_size())


def save_checkpoint(state: dict, path: str) -> None:
    """Write `state` so that `path` always holds either the old or the new checkpoint, whole."""
    try:
        with files.atomic_write(path) as file:
            torch.save(state, file)
    except BaseException as error:
        cause = os_error_in(error)
        if cause is None:
            raise
        raise CheckpointError(
            f"could not save checkpoint {path}: {cause.strerror or cause}; "
            "the previous checkpoint is intact"
        ) from None


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error` (torch.save reports a full disk as a RuntimeError raised
    while it handles the OSError), or None."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def prune_step_checkpoints(directory: str, keep: int) -> None:
    for path in sorted(glob.glob(os.path.join(directory, STEP_PATTERN)))[: -keep or None]:
        os.remove(path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load tensors and plain data only (weights_only), so a crafted file cannot run code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        text = str(error).strip()
        if not zipfile.is_zipfile(path):  # what torch.save has written since torch 1.6
            reason = "not a complete file written by torch.save (cut short, or another format)"
        elif "weights_only" in text or "Unsupported global" in text:
            reason = "it holds objects other than tensors and plain data; refusing to unpickle it"
        else:
            reason = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}", reason) from None
    if not isinstance(state, dict):
        reason = f"it holds a {type(state).__name__}, not a checkpoint dict"
        raise CheckpointError(f"{path}: {reason}", reason)
    return state


def checkpoints_in(directory: str) -> list[str]:
    """The checkpoints in `directory`, newest first: last.pt, the step checkpoints and best.pt
    (which a torn last.pt may leave as the newest whole one)."""
    names = [LAST, STEP_PATTERN, BEST]
    paths = [path for name in names for path in glob.glob(os.path.join(directory, name))]
    return sorted(paths, key=os.path.getmtime, reverse=True)  # a stable sort: last.pt first


def find_resume_checkpoint(directory: str) -> tuple[str, dict] | None:
    """The newest checkpoint in `directory` that loads, with a warning for each newer one that
    does not; None if there is none. If there are checkpoints but none loads, a CheckpointError
    names each with its problem: a resumed run never silently starts over."""
    return first_that_loads(directory, checkpoints_in(directory), load_checkpoint)


def first_that_loads(directory: str, paths: list[str], load) -> tuple[str, dict] | None:
    """find_resume_checkpoint over `paths`, each read by `load(path)`."""
    problems = []
    for path in paths:
        try:
            found = path, load(path)
        except CheckpointError as error:
            problems.append(f"{os.path.basename(path)}: {error.reason}")
            continue
        for problem in problems:
            print(f"warning: skipped {problem}", file=sys.stderr)
        return found
    if problems:
        raise CheckpointError(
            f"no checkpoint in {directory} loads ({'; '.join(problems)}): resume from a good copy "
            "with --resume PATH, or start the run over with --overwrite"
        )
    return None


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def check_compatible(state: dict, path: str, args: dict) -> None:
    """Refuse a checkpoint of another model, class count or channel count, naming both."""
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} holds no model weights (no 'model' entry)")
    check_options(state, path, args)


def check_options(state: dict, path: str, args: dict) -> None:
    """Refuse a checkpoint saved with another model, class count or channel count."""
    saved = state.get("args", {})
    for option in IDENTITY_OPTIONS:
        if option in saved and saved[option] != args[option]:
            raise CheckpointError(
                f"{path} was saved with --{option.replace('_', '-')} {saved[option]}, this run "
                f"uses {args[option]}: pass the same option, or fine-tune with --init-from"
            )


def load_weights(model: nn.Module, state: dict, path: str) -> None:
    """Load a checkpoint's model weights into `model`, all of them, with shapes that fit."""
    weights = strip_wrapper_prefixes(state["model"])
    expected = model.state_dict()
    misfits = [k for k, v in weights.items() if k not in expected or expected[k].shape != v.shape]
    missing = [key for key in expected if key not in weights]
    if misfits or missing:
        names = ", ".join((misfits + missing)[:5])
        raise CheckpointError(f"{path} does not fit this model (differs at {names})")
    model.load_state_dict(weights)


def init_from(model: nn.Module, path: str, model_name: str) -> str:
    """Load every tensor of `path` that fits `model`; return one line naming what was skipped."""
    state = load_checkpoint(path)
    saved_model = state.get("args", {}).get("model")
    if saved_model is not None and saved_model != model_name:
        raise CheckpointError(
            f"{path} holds a {saved_model} model, this run builds {model_name}: "
            f"pass --model {saved_model}, or a checkpoint of {model_name}"
        )
    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = strip_wrapper_prefixes(state)
    expected = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in expected and expected[k].shape == v.shape}
    if not loadable:
        raise CheckpointError(
            f"no tensor of {path} fits {model_name} (no name and shape in common): "
            "is it a checkpoint of this model?"
        )
    shape_mismatch = sorted(k for k in state if k in expected and k not in loadable)
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state)
    model.load_state_dict(loadable, strict=False)
    return (
        f"init-from {path}: loaded {len(loadable)} tensors; skipped "
        f"{len(shape_mismatch)} with other shapes [{', '.join(shape_mismatch)}], "
        f"{len(missing)} missing [{', '.join(missing)}], "
        f"{len(unexpected)} unexpected [{', '.join(unexpected)}]"
    )


def rng_state() -> dict:
    """This process's random number generators: Python's, torch's (CPU and CUDA), NumPy's."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        import numpy

        kind, keys, position, has_gauss, cached_gauss = numpy.random.get_state()
        # As plain lists and numbers: weights_only loading accepts no numpy arrays.
        state["numpy"] = [kind, keys.tolist(), position, has_gauss, cached_gauss]
    return state


def restore_rng_state(checkpoint: dict, rank: int, world_size: int) -> None:
    """Each process continues its own random streams; saved by another number of processes,
    each starts a new stream from rank 0's, so that the processes still differ."""
    per_rank = checkpoint["rng_per_rank"]
    state = per_rank[rank] if len(per_rank) == world_size else per_rank[0]
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        import numpy

        kind, keys, position, has_gauss, cached_gauss = state["numpy"]
        keys = numpy.array(keys, dtype=numpy.uint32)
        numpy.random.set_state((kind, keys, position, has_gauss, cached_gauss))
    if len(per_rank) != world_size and rank:
        seed = random.getrandbits(32) + rank
        random.seed(seed)
        torch.manual_seed(seed)
