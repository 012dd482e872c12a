"""Checkpoints: atomic saves, safe loading, finding the one to resume from, fine-tuning weights."""

import glob
import os
import random
import shutil
import sys

import torch
from torch import nn

LAST = "last.pt"
BEST = "best.pt"
STEP_PATTERN = "step_*.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used; the message names the file."""


def save_checkpoint(state: dict, path: str) -> None:
    """Write `state` so that `path` always holds either the old or the new checkpoint, whole."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        sync_directory(os.path.dirname(path))
    except OSError as error:
        remove_quietly(temporary)
        raise CheckpointError(
            f"could not save checkpoint {path}: {error.strerror or error}; "
            "the previous checkpoint is intact"
        ) from None
    except BaseException:
        remove_quietly(temporary)
        raise


def publish(source: str, path: str) -> None:
    """Make `path` a second name for the finished checkpoint `source`, atomically."""
    temporary = f"{path}.tmp-{os.getpid()}"
    remove_quietly(temporary)
    try:
        os.link(source, temporary)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, temporary)
    os.replace(temporary, path)


def sync_directory(directory: str) -> None:
    descriptor = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def prune_step_checkpoints(directory: str, keep: int) -> None:
    for path in sorted(glob.glob(os.path.join(directory, STEP_PATTERN)))[: -keep or None]:
        os.remove(path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load tensors and plain data only (weights_only), so a crafted file cannot run code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds objects other than tensors and plain data; refusing to unpickle it"
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from None


def find_resume_checkpoint(directory: str) -> tuple[str, dict] | None:
    """The newest loadable checkpoint in `directory`, skipping broken ones with a warning."""
    candidates = glob.glob(os.path.join(directory, LAST)) + glob.glob(
        os.path.join(directory, STEP_PATTERN)
    )
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            print(f"warning: {error}; trying an older one", file=sys.stderr)
    return None


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def check_compatible(model: nn.Module, state: dict, path: str, args: dict) -> None:
    """Refuse a checkpoint of another model or class count with a message naming the difference."""
    saved = state.get("args", {})
    for option in ("model", "num_classes", "in_channels"):
        if option in saved and saved[option] != args[option]:
            raise CheckpointError(
                f"{path} was saved with --{option.replace('_', '-')} {saved[option]}, this run "
                f"uses {args[option]}: resume with the same options, or fine-tune with --init-from"
            )
    expected = model.state_dict()
    mismatched = [
        key
        for key, value in state["model"].items()
        if key not in expected or expected[key].shape != value.shape
    ]
    missing = [key for key in expected if key not in state["model"]]
    if mismatched or missing:
        names = ", ".join((mismatched + missing)[:5])
        raise CheckpointError(f"{path} does not fit this model (differs at {names})")


def init_from(model: nn.Module, path: str) -> str:
    """Load every tensor of `path` that fits `model`; return one line naming what was skipped."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = strip_wrapper_prefixes(state)
    expected = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in expected and expected[k].shape == v.shape}
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
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        import numpy

        kind, keys, position, has_gauss, cached_gauss = numpy.random.get_state()
        # As plain lists and numbers: weights_only loading accepts no numpy arrays.
        state["numpy"] = [kind, keys.tolist(), position, has_gauss, cached_gauss]
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        import numpy

        kind, keys, position, has_gauss, cached_gauss = state["numpy"]
        keys = numpy.array(keys, dtype=numpy.uint32)
        numpy.random.set_state((kind, keys, position, has_gauss, cached_gauss))
