"""train.py's command line: every option with its default and its check, and --config files.

Every option is checked when it is parsed (ranges, files, folders, what the model and dataset
can take), so that a run that cannot work stops before it writes anything, with one line:
`error: ... (see python train.py --help)` and exit code 2.
"""

import argparse
import json
import math
import os
import sys

import runs
from dataset import CACHEABLE, DATASETS, DATASETS_HELP, dataset_channels_problem
from loggers import TRACKERS, trackers_problem
from model import MODEL_NAMES, model_image_size_problem


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in --help, unless it has none to show (None, or an off switch)."""

    def _get_help_string(self, action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, where a bad option is one line: what is wrong and where the options are listed
    (the full usage stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def count(minimum: int):
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def real(low: float, high: float = math.inf, low_inclusive: bool = True):
    """An argparse type: a finite number from `low` (included or not) up to `high` (excluded)."""
    bounds = f"{'at least' if low_inclusive else 'above'} {low:g}"
    if high < math.inf:
        bounds += f" and below {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if low_inclusive else value <= low
        if not math.isfinite(value) or too_low or value >= high:
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def parse_args(argv=None):
    parser = Parser(
        prog="train.py",
        description="Train seg_unet_minimal: every option, with its default.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="synthetic",
        choices=list(DATASETS),
        help=f"where the images come from: {DATASETS_HELP}",
    )
    data.add_argument("--data-dir", default="data", help="dataset root (folder, cifar10, mnist)")
    data.add_argument("--download", action="store_true", help="allow downloading data and weights")
    data.add_argument(
        "--synthetic-size", type=count(1), default=1024, help="training samples of 'synthetic'"
    )
    data.add_argument("--fake-size", type=count(1), default=512, help="training samples of 'fake'")
    data.add_argument("--num-classes", type=count(2), default=10, help="classes")
    data.add_argument("--in-channels", type=count(1), default=3, help="channels")
    data.add_argument("--image-size", type=count(1), default=32, help="in pixels")
    data.add_argument("--augment", action="store_true", help="random crops and flips")
    data.add_argument(
        "--cache", action="store_true", help="decode the images once into a uint8 array file"
    )
    data.add_argument("--cache-dir", help="where --cache keeps it (default: DATA_DIR-cache)")
    data.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping"
    )
    data.add_argument("--batch-size", type=count(1), default=32, help="per process")
    data.add_argument("--workers", type=count(0), default=2, help="DataLoader worker processes")

    model = parser.add_argument_group("model and fine-tuning")
    model.add_argument(
        "--model",
        default="unet",
        choices=MODEL_NAMES,
        help="the network to train",
    )
    model.add_argument("--weights", help="torchvision pretrained weights: DEFAULT or a name")
    model.add_argument("--init-from", help="start from this checkpoint or state_dict file")
    model.add_argument("--freeze", default="none", help="none, backbone, or parameter-name globs")
    model.add_argument(
        "--backbone-lr-mult",
        type=real(0),
        help="backbone lr = lr * X (head keeps --lr; 0 freezes)",
    )
    model.add_argument(
        "--summary", action="store_true", help="print every layer's shape and parameters, then exit"
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=count(1), default=10, help="passes over the data")
    optim.add_argument("--max-steps", type=count(1), help="stop after this many optimizer steps")
    # From random weights, SGD at 0.01 took a U-Net 10 epochs of --dataset synthetic to a mean
    # IoU of 0.20, AdamW at 0.001 to 0.52.
    optim.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"], help="update rule")
    optim.add_argument(
        "--lr", type=real(0, low_inclusive=False), help="default: 0.01 for sgd, 0.001 for adamw"
    )
    optim.add_argument("--momentum", type=real(0, 1), default=0.9, help="SGD momentum")
    optim.add_argument("--weight-decay", type=real(0), default=1e-4, help="L2 penalty")
    optim.add_argument(
        "--lr-scheduler",
        default="cosine",
        choices=["cosine", "step", "onecycle", "none"],
        help="learning rate over the run",
    )
    optim.add_argument("--lr-step-epochs", type=count(1), default=30, help="period of 'step'")
    optim.add_argument(
        "--lr-gamma", type=real(0, low_inclusive=False), default=0.1, help="decay of 'step'"
    )
    optim.add_argument(
        "--warmup-epochs", type=real(0), default=0.0, help="linear warm-up, in epochs"
    )
    optim.add_argument(
        "--grad-accum-steps", type=count(1), default=1, help="micro-batches per optimizer step"
    )
    optim.add_argument(
        "--clip-grad-norm", type=real(0, low_inclusive=False), help="clip the gradient norm to this"
    )

    run = parser.add_argument_group("run")
    run.add_argument("--config", help="YAML or JSON file of option values; flags given here win")
    run.add_argument("--output-dir", help="default: a new folder under runs/ for every run")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    run.add_argument("--resume", help="a checkpoint path, or 'auto': the newest one of the run")
    run.add_argument("--eval-only", action="store_true", help="validate the loaded weights, exit")
    run.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if any"
    )
    run.add_argument("--seed", type=int, default=0, help="of every random number generator")
    run.add_argument("--deterministic", action="store_true", help="bit-reproducible kernels")
    run.add_argument("--amp", action="store_true", help="bfloat16 on CPU, float16 on CUDA")
    run.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format (fast with --amp on GPUs)"
    )
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--log-every", type=count(1), default=10, help="steps between log lines")
    run.add_argument("--logger", default="jsonl", help=f"comma-separated: {', '.join(TRACKERS)}")
    run.add_argument("--save-every-steps", type=count(1), help="also checkpoint every N steps")
    run.add_argument("--keep-last", type=count(1), default=3, help="step checkpoints to keep")
    run.add_argument(
        "--dist-timeout", type=count(1), default=600, help="seconds a collective may wait"
    )
    run.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics across processes")

    args = parser.parse_args(argv)
    if args.config:
        command_line = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args([*config_arguments(args.config, parser), *command_line])
    if args.lr is None:
        # Higher SGD rates made the loss of 6 of the 9 catalog models jump above 2 x ln(classes)
        # in the first steps (resnet50 to 105 at 0.05): see the scaffold's BENCHMARKS.md.
        args.lr = 0.01 if args.optimizer == "sgd" else 0.001
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    return args


def config_arguments(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The option values in the YAML or JSON file `path` (keys as the options' names, with "_"
    or "-"), as command-line arguments that go before the real ones, which then win. So a config
    file's values are checked exactly like flags; an unknown key is an error that names it."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError as error:
        parser.error(f"--config {path}: {error.strerror}")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError and yaml.YAMLError are ValueErrors
        parser.error(f"--config {path} is not valid {path.rsplit('.', 1)[-1].upper()}: {error}")
    if not isinstance(values, dict):
        parser.error(f"--config {path} must hold a mapping of option names to values")
    known = vars(parser.parse_known_args([])[0])
    names = {key: key.replace("-", "_") for key in values}
    unknown = sorted(key for key, name in names.items() if name not in known or name == "config")
    if unknown:
        parser.error(f"--config {path}: no such option: {', '.join(unknown)}")
    arguments = []
    for key, value in values.items():
        option = "--" + names[key].replace("_", "-")
        if value is True:
            arguments.append(option)
        elif value is not None and value is not False:
            arguments.append(f"{option}={value}")
    return arguments


def options_problem(args) -> str | None:
    """What makes these options unable to work together (checked before anything runs)."""
    image_size_problem = model_image_size_problem(args.model, args.image_size)
    if image_size_problem:
        return image_size_problem
    if args.cache and args.dataset not in CACHEABLE:
        if not CACHEABLE:
            return "--cache is not available for this task's datasets: drop it"
        return f"--cache is for the datasets read from files ({', '.join(CACHEABLE)})"
    channels_problem = dataset_channels_problem(args.dataset, args.in_channels)
    if channels_problem:
        return channels_problem
    trackers = trackers_problem(parse_list(args.logger))
    if trackers:
        return trackers
    if args.eval_only and not (args.resume or args.init_from):
        return "--eval-only needs weights: pass --resume PATH (or auto) or --init-from PATH"
    if args.overwrite and args.resume:
        return "--overwrite starts the run over, --resume continues it: pass one of them"
    for option, path in (("--resume", args.resume), ("--init-from", args.init_from)):
        if path and path != "auto" and not os.path.isfile(path):
            return f"{option} {path}: no such file"
    return runs.output_dir_problem(args)


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
