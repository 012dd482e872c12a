"""Classify images with a checkpoint of train.py: `python predict.py --help` lists every option.

    python predict.py runs/RUN/best.pt photo.jpg holiday/ 'scans/*.png' --top-k 3 --output out.csv

The model is built from the checkpoint's own options and weights, and every image goes through
the pipeline that validation uses (dataset.image_transform, then dataset.Preprocess on the device),
so predictions match what train.py measured. Each image gets one line: its top-k classes, named as
the checkpoint names them (a class index where it names none), with their probabilities.
"""

import csv
import glob
import json
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
import train
from dataset import (
    DatasetError,
    Preprocess,
    build_loader,
    has_image_extension,
    image_transform,
)
from model import build_model
from options import HelpFormatter, Parser, count

OUTPUT_SUFFIXES = (".csv", ".json")
DEFAULT_TOP_K = 5
MODEL_OPTIONS = ("model", "num_classes", "in_channels", "image_size")  # what builds the model
CSV_COLUMNS = ("path", "rank", "class", "index", "probability")


@contextmanager
def one_line_errors(*more_errors: type[Exception]):
    """Expected failures end as train.py's do: `error: ...` on stderr, exit code 1, no traceback."""
    try:
        yield
    except (*train.USER_ERRORS, *more_errors) as error:
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
    parser.add_argument(
        "--top-k",
        type=count(1),
        help=f"classes per image (default: {DEFAULT_TOP_K}, or every class if fewer)",
    )
    parser.add_argument("--output", help="also write the predictions to FILE.csv or FILE.json")
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
    args.images = find_images(args.paths)
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    return args


def options_problem(args) -> str | None:
    """What makes these options unable to work (checked before the checkpoint is read)."""
    if not os.path.isfile(args.checkpoint):
        return f"checkpoint {args.checkpoint}: no such file"
    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        return f"--output {args.output}: name a .csv or a .json file (the suffix picks the format)"
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        return f"--output {args.output}: its folder does not exist"
    for path in args.paths:
        if not os.path.exists(path) and not glob.glob(path, recursive=True):
            return f"{path}: no such file or folder, and no file matches it"
    if not args.images:
        return f"no images in {', '.join(args.paths)} (files ending {', '.join(IMG_EXTENSIONS)})"
    return None


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
        model = build_model(*(state["args"][name] for name in MODEL_OPTIONS))
    except (ValueError, AssertionError) as error:
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


def class_names(state: dict) -> list[str]:
    """The checkpoint's names of the classes, in label order; the class indices where it has
    none (a FakeData run) or not one per class."""
    count = state["args"]["num_classes"]
    names = state.get("class_names")
    if names is None or len(names) != count:
        return [str(index) for index in range(count)]
    return [str(name) for name in names]


class ImageFiles(Dataset):
    """Image files as validation reads them: (uint8 image, index, problem), where `problem` is ""
    or why the file could not be read, so that an unreadable file is reported by name and not as
    a DataLoader worker's traceback."""

    def __init__(self, paths: list[str], in_channels: int, image_size: int):
        self.paths = paths
        self.mode = "L" if in_channels == 1 else "RGB"
        self.transform = image_transform(1 if in_channels == 1 else 3, in_channels, image_size)
        self.blank = torch.zeros(in_channels, image_size, image_size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert(self.mode)), index, ""
        except (OSError, SyntaxError, ValueError) as error:  # how PIL says a file is unreadable
            return self.blank, index, str(error) or type(error).__name__


@torch.no_grad()
def predict(args) -> list[dict]:
    """Predict every image of `args.images`; print one line per image, and return
    [{"path", "predictions": [{"class", "index", "probability"}, ...]}] (most likely first)."""
    ctx = distributed.setup(args.device)
    model, state = load_trained_model(args.checkpoint, ctx.device)
    in_channels, image_size = state["args"]["in_channels"], state["args"]["image_size"]
    if in_channels not in (1, 3):
        raise checkpoint.CheckpointError(
            f"{args.checkpoint} takes {in_channels}-channel images; image files give 1 or 3"
        )
    names = class_names(state)
    top_k = min(args.top_k or DEFAULT_TOP_K, len(names))
    files = ImageFiles(args.images, in_channels, image_size)
    loader = build_loader(
        files, None, args.batch_size, args.workers, ctx.device.type == "cuda", seed=0
    )
    preprocess, autocast = Preprocess(), train.autocast_for(args, ctx)
    results, skipped = [], []
    try:
        for images, indices, problems in loader:
            readable = check_readable(args.images, indices, problems, args.skip_bad_images, skipped)
            if not readable.any():
                continue
            with autocast():
                logits = model(preprocess(images[readable].to(ctx.device, non_blocking=True)))
            rows = zip(indices[readable].tolist(), top_classes(logits, top_k, names), strict=True)
            for index, predictions in rows:
                results.append({"path": args.images[index], "predictions": predictions})
                print(format_line(results[-1]))
    finally:
        # The worker processes end with the loader: now, also when an error stops the loop, and
        # not whenever the error's traceback (which holds this frame) is freed.
        del loader
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}",
            file=sys.stderr,
        )
    return results


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


def top_classes(logits: torch.Tensor, top_k: int, names: list[str]) -> list[list[dict]]:
    """Per image, the `top_k` most likely classes with their probabilities, most likely first."""
    top = logits.float().softmax(dim=1).topk(top_k, dim=1)
    return [
        [
            {"class": names[label], "index": label, "probability": probability}
            for label, probability in zip(labels, probabilities, strict=True)
        ]
        for labels, probabilities in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


def format_line(result: dict) -> str:
    classes = ", ".join(f"{p['class']} {p['probability']:.4f}" for p in result["predictions"])
    return f"{result['path']}: {classes}"


def write_predictions(path: str, results: list[dict]) -> None:
    """JSON: the results as predict() returns them. CSV: one row per image and rank."""
    with open(path, "w", newline="") as file:
        if path.lower().endswith(".json"):
            json.dump(results, file, indent=2)
            return
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            for rank, prediction in enumerate(result["predictions"], start=1):
                row = (prediction["class"], prediction["index"], prediction["probability"])
                writer.writerow((result["path"], rank, *row))


def main(argv=None) -> list[dict]:
    """Parse, predict, write --output. Bad options exit 2, other failures 1: one line each."""
    args = parse_args(argv)
    with one_line_errors():
        results = predict(args)
        if args.output:
            write_predictions(args.output, results)
            print(f"wrote {len(results)} predictions to {args.output}")
    return results


if __name__ == "__main__":
    main()
