"""Predict with a checkpoint of train.py: `python predict.py --help` lists every option.

    python predict.py runs/RUN/best.pt photo.jpg holiday/ 'scans/*.png'

The model is built from the checkpoint's own options and weights, and every image goes through
the pipeline that validation uses (task.input_transform, then image_pipeline.Preprocess on the
device), so predictions match what train.py measured. What is written for each image is the
task's (task.Predictions): one line each, with classes named as the checkpoint names them (a class
index where it names none). Where the task writes one --output file, a folder means
FOLDER/predictions.csv; an --output that would replace a file of a run (its checkpoints and
records, runs.RUN_FILES) is refused.
"""

import glob
import os
import sys
from contextlib import contextmanager

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

import checkpoint
import distributed
import runs
import task
from finetune import ModelError
from image_pipeline import Preprocess, has_image_extension
from model import MODEL_OPTIONS, model_from_options
from options import HelpFormatter, Parser, count
from pipeline import DatasetError, build_loader

DEFAULT_FILE_NAME = "predictions"  # FOLDER/predictions.csv for an --output that is a folder
EXPECTED_ERRORS = (checkpoint.CheckpointError, DatasetError, distributed.SetupError, OSError)


@contextmanager
def one_line_errors(*more_errors: type[Exception]):
    """Expected failures end as train.py's do: `error: ...` on stderr, exit code 1, no traceback."""
    try:
        yield
    except (*EXPECTED_ERRORS, *more_errors) as error:
        sys.exit(f"error: {error}")


def parse_args(argv=None):
    parser = Parser(
        prog="predict.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="a checkpoint written by train.py, such as best.pt")
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, folders (searched through) or globs"
    )
    task.add_predict_arguments(parser)
    parser.add_argument("--batch-size", type=count(1), default=64, help="images per batch")
    parser.add_argument("--workers", type=count(0), default=2, help="image-reading processes")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if any"
    )
    parser.add_argument("--amp", action="store_true", help="bfloat16 on CPU, float16 on CUDA")
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping"
    )
    args = parser.parse_args(argv)
    if args.output:
        args.output = file_in_folder(args.output)
    args.images = find_images(args.paths)
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    return args


def options_problem(args) -> str | None:
    """What makes these options unable to work (checked before the checkpoint is read)."""
    problem = runs.checkpoint_file_problem(args.checkpoint)
    if problem:
        return f"checkpoint {problem}"
    clash = runs.run_file_clash(args.output) if args.output else None
    if clash:
        return f"--output {args.output} {clash}: choose another path"
    problem = task.predict_problem(args)
    if problem:
        return problem
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        return f"--output {args.output}: its folder does not exist"
    for path in args.paths:
        if not os.path.exists(path) and not glob.glob(path, recursive=True):
            return f"{path}: no such file or folder, and no file matches it"
    if not args.images:
        return f"no images in {', '.join(args.paths)} (files ending {', '.join(IMG_EXTENSIONS)})"
    return None


def file_in_folder(output: str) -> str:
    """--output as the task takes it: where the task writes one file (classification's FILE.csv
    or FILE.json, task.OUTPUT_SUFFIXES), a folder means the file FOLDER/predictions.csv in it."""
    suffixes = getattr(task, "OUTPUT_SUFFIXES", None)  # a task that writes a folder has none
    if suffixes and (os.path.isdir(output) or output.endswith(("/", os.sep))):
        return os.path.join(output, DEFAULT_FILE_NAME + suffixes[0])
    return output


def find_images(paths: list[str]) -> list[str]:
    """The images that `paths` name, each once, in the order given: a file as it is, a folder's
    images (at any depth) and a glob's matches sorted by path."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            found += images_under(path)
        else:
            for match in sorted(glob.glob(path, recursive=True)):
                if os.path.isdir(match):
                    found += images_under(match)
                elif has_image_extension(match):
                    found.append(match)
    return list(dict.fromkeys(found))


def images_under(folder: str) -> list[str]:
    pattern = os.path.join(glob.escape(folder), "**", "*")
    matches = glob.glob(pattern, recursive=True)
    return sorted(path for path in matches if has_image_extension(path) and os.path.isfile(path))


def load_trained_model(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a train.py checkpoint, built from the checkpoint's own options, with its
    weights, in eval mode on `device`; and the checkpoint."""
    state = checkpoint.load_checkpoint(path)
    if not is_train_checkpoint(state):
        raise checkpoint.CheckpointError(
            f"{path} is not a checkpoint written by train.py (it lacks the model weights or the "
            "options that built them): pass a last.pt, best.pt or step_*.pt of a run"
        )
    try:
        model = model_from_options(state["args"], pretrained=False)
    except ModelError as error:
        raise checkpoint.CheckpointError(f"cannot build the model of {path}: {error}") from None
    checkpoint.load_weights(model, state, path)
    return model.to(device).eval(), state


def is_train_checkpoint(state: dict) -> bool:
    """Whether `state` holds model weights and the options that built the model."""
    options = state.get("args")
    return (
        isinstance(state.get("model"), dict)
        and isinstance(options, dict)
        and all(name in options for name in MODEL_OPTIONS)
    )


class ImageFiles(Dataset):
    """Image files as validation reads them: (uint8 image, index, (width, height), problem), where
    the size is the file's own and `problem` is "" or why the file could not be read, so that an
    unreadable file is reported by name and not as a DataLoader worker's traceback."""

    def __init__(self, paths: list[str], in_channels: int, image_size: int):
        self.paths = paths
        self.mode = "L" if in_channels == 1 else "RGB"
        self.transform = task.input_transform(in_channels, image_size)
        self.blank = torch.zeros(in_channels, image_size, image_size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor, str]:
        try:
            with Image.open(self.paths[index]) as image:
                size = torch.tensor(image.size)
                return self.transform(image.convert(self.mode)), index, size, ""
        except (OSError, SyntaxError, ValueError) as error:  # how PIL says a file is unreadable
            return self.blank, index, torch.zeros(2, dtype=torch.int64), str(error) or "unreadable"


@torch.no_grad()
def predict(args) -> list[dict]:
    """Predict every image of `args.images`; print one line per image, and return the records
    of task.Predictions (for classification: [{"path", "predictions": [...]}], most likely
    class first)."""
    ctx = distributed.setup(args.device)
    model, state = load_trained_model(args.checkpoint, ctx.device)
    in_channels, image_size = state["args"]["in_channels"], state["args"]["image_size"]
    if in_channels not in (1, 3):
        raise checkpoint.CheckpointError(
            f"{args.checkpoint} takes {in_channels}-channel images; image files give 1 or 3"
        )
    predictions = task.Predictions(args, task.class_names(state))
    files = ImageFiles(args.images, in_channels, image_size)
    loader = build_loader(
        files, None, args.batch_size, args.workers, ctx.device.type == "cuda", seed=0
    )
    preprocess, autocast = Preprocess(), distributed.autocast_for(args.amp, ctx.device)
    run = task.inference_model(model)
    skipped = []
    try:
        for images, indices, sizes, problems in loader:
            readable = check_readable(args.images, indices, problems, args.skip_bad_images, skipped)
            if not readable.any():
                continue
            with autocast():
                outputs = run(preprocess(images[readable].to(ctx.device, non_blocking=True)))
            paths = [args.images[index] for index in indices[readable].tolist()]
            predictions.add(paths, outputs, [tuple(size) for size in sizes[readable].tolist()])
    finally:
        # The worker processes end with the loader: now, also when an error stops the loop, and
        # not whenever the error's traceback (which holds this frame) is freed.
        del loader
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}",
            file=sys.stderr,
        )
    return predictions.close()


def check_readable(paths, indices, problems, skip_bad_images: bool, skipped: list) -> torch.Tensor:
    """Which images of a batch were read. An unreadable one stops prediction, naming the file;
    with --skip-bad-images it is added to `skipped` instead."""
    for index, problem in zip(indices.tolist(), problems, strict=True):
        if problem and not skip_bad_images:
            raise DatasetError(
                f"cannot read image {paths[index]} ({problem}): fix or delete it, or pass "
                "--skip-bad-images"
            )
        if problem:
            skipped.append(paths[index])
    return torch.tensor([not problem for problem in problems])


def main(argv=None) -> list[dict]:
    """Parse, predict, write what the task writes. Bad options exit 2, other failures 1: one
    line each."""
    args = parse_args(argv)
    with one_line_errors():
        return predict(args)


if __name__ == "__main__":
    main()
