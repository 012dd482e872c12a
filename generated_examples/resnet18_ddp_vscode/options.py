"""train.py's command line: every option with its default and its check, and --config files.

This module imports the project's other modules (which load torch) only where it uses them, so
that train.py can check its command line first (check_quickly).

Every option is checked when it is parsed (ranges, files, folders, what the model and dataset
can take), so that a run that cannot work stops before it writes anything, with one line:
`error: ... (see python train.py --help)` and exit code 2.
"""

import argparse
import json
import math
import os
import sys

# Larger images would not fit in memory with any model here (scaffold new's limit too); a seed
# must fit numpy's generator (below 2**32) with a process's rank and the epoch added to it.
MAX_IMAGE_SIZE = 4096
MAX_SEED = 2**31 - 1


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
        # Under torchrun every process reads the same command line: the first of each machine says
        # what is wrong, the others only exit.
        if os.environ.get("LOCAL_RANK", "0") != "0":
            self.exit(2)
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def count(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number of at least `minimum` (and at most `maximum`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
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


def check_quickly(arguments: list[str]) -> None:
    """Check what the command line says without the project's modules, which load torch (seconds):
    a mistyped number or a value out of range answers at once, before train.py imports them.
    Exits 2 with parse_args's one line; parse_args checks everything else."""
    if not {"-h", "--help"} & set(arguments):
        build_parser(with_catalog=False).parse_known_args(arguments)


def parse_args(argv=None):
    parser = build_parser()
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    if args.config:
        arguments = [*config_arguments(args.config, parser), *arguments]
        args = parser.parse_args(arguments)
    if args.resume:
        continue_run(parser, args, given_options(parser, arguments))
    if args.lr is None:
        # Higher SGD rates made the loss of 6 of the 9 catalog models jump above 2 x ln(classes)
        # in the first steps (resnet50 to 105 at 0.05): see the scaffold's BENCHMARKS.md.
        args.lr = 0.01 if args.optimizer == "sgd" else 0.001
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    cpus = os.cpu_count() or 1
    if args.workers > cpus:
        note(f"note: --workers {args.workers} is more than the {cpus} CPUs here: using {cpus}")
        args.workers = cpus
    return args


def build_parser(with_catalog: bool = True) -> Parser:
    """train.py's options. Without the catalog (the models, data sets, trackers and hooks, whose
    modules load torch), models and data sets are not checked against their lists and the hook
    options are left out: check_quickly's parser."""
    if with_catalog:
        from dataset import DATASETS, DATASETS_HELP
        from loggers import TRACKERS
        from model import MODEL_NAMES
    else:
        DATASETS, DATASETS_HELP, TRACKERS, MODEL_NAMES = None, "", (), None
    parser = Parser(
        prog="train.py",
        description="Train resnet18_ddp_vscode: every option, with its default.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="fake",
        choices=DATASETS and list(DATASETS),
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
    data.add_argument("--image-size", type=count(1, MAX_IMAGE_SIZE), default=32, help="in pixels")
    data.add_argument("--augment", action="store_true", help="random crops and flips")
    data.add_argument(
        "--cache", action="store_true", help="decode the images once into a uint8 array file"
    )
    data.add_argument("--cache-dir", help="where --cache keeps it (default: DATA_DIR-cache)")
    data.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping"
    )
    data.add_argument("--batch-size", type=count(1), default=32, help="per process")
    data.add_argument(
        "--workers", type=count(0), default=2, help="DataLoader worker processes, at most one a CPU"
    )

    model = parser.add_argument_group("model and fine-tuning")
    model.add_argument(
        "--model",
        default="resnet18",
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
    optim.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="update rule")
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
    run.add_argument(
        "--resume",
        help="continue a run with its options: its folder, one of its checkpoints, or 'auto' "
        "(the run in --output-dir, else the newest under runs/)",
    )
    run.add_argument(
        "--allow-changes",
        action="store_true",
        help="let --resume change options that alter the run's course (model, data, batch, "
        "optimizer, schedule); the change is recorded in its env.json",
    )
    run.add_argument("--eval-only", action="store_true", help="validate the loaded weights, exit")
    run.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if any"
    )
    run.add_argument(
        "--seed", type=count(0, MAX_SEED), default=0, help="of every random number generator"
    )
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
    run.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights, gradients and optimizer state over the processes (FSDP2), and "
        "checkpoints into step folders (sharded.py); under torchrun only",
    )
    return parser


def config_arguments(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The option values in the YAML or JSON file `path` (keys as the options' names, with "_"
    or "-"), as command-line arguments that go before the real ones, which then win. So a config
    file's values are checked exactly like flags; an unknown key is an error that names it."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError as error:
        parser.error(f"--config {path}: {error.strerror}")
    except UnicodeDecodeError:
        parser.error(f"--config {path} is not a text file: pass a YAML or JSON file")
    if path.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            parser.error(f"--config {path} is not valid YAML{yaml_problem(error)}")
    else:
        try:
            values = json.loads(text)
        except ValueError as error:
            parser.error(f"--config {path} is not valid JSON: {error}")
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


# What --resume may change freely: how a run logs, saves, reads its data and where it runs, not
# what it computes. Every other option is the run's course, kept unless --allow-changes.
FREE_OPTIONS = {
    "output_dir",
    "device",
    "workers",
    "download",
    "cache",
    "cache_dir",
    "skip_bad_images",
    "log_every",
    "logger",
    "save_every_steps",
    "keep_last",
    "dist_timeout",
    "deterministic",
    "compile",
    "hooks",
    "hook_modules",
    "hook_save_steps",
}


def given_options(parser: argparse.ArgumentParser, arguments: list[str]) -> set[str]:
    """The options that `arguments` set, as opposed to those left at their defaults."""
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    parser.parse_args(arguments, namespace=namespace)
    return {name for name, value in vars(namespace).items() if value is not unset}


def resumed_folder(resume: str, output_dir: str | None) -> str | None:
    """The run folder --resume names: the folder itself, a checkpoint's folder, or for 'auto'
    --output-dir, else the newest run under runs/ (None when there is none yet)."""
    import runs

    if resume == "auto":
        return output_dir or runs.newest_run()
    if os.path.isdir(resume):
        return resume
    return os.path.dirname(resume) or "."


def continue_run(parser: argparse.ArgumentParser, args, given: set[str]) -> None:
    """--resume of a run folder that records its options: every option not given here takes the
    run's value. For training, a given option that changes the run's course needs
    --allow-changes (--eval-only may evaluate on other data: that is a question, not a change)."""
    import records
    import runs

    folder = resumed_folder(args.resume, args.output_dir)
    saved = records.run_options(folder) if folder else None
    if saved is None:  # nothing recorded: the options are this command's
        return
    if args.resume == "auto" and not args.output_dir:
        note(f"resuming the newest run under {runs.RUNS_DIR}/: {folder}")
    if "output_dir" not in given:
        args.output_dir = folder
    # Options added to train.py since the run started keep their defaults.
    run_args = {name: value for name, value in saved.items() if name in vars(args)}
    changed = sorted(
        name
        for name in given
        if name in run_args
        and name not in {*FREE_OPTIONS, *records.ACTIONS}
        and run_args[name] != getattr(args, name)
    )
    for name, value in run_args.items():
        if name not in given:
            setattr(args, name, value)
    if args.eval_only or args.allow_changes:
        return
    if changed:
        was = " ".join(option_text(name, run_args[name]) for name in changed)
        now = " ".join(option_text(name, getattr(args, name)) for name in changed)
        parser.error(
            f"{folder} was trained with {was}; this command changes that to {now}: drop those "
            "options to continue the run as it was, or add --allow-changes"
        )
    keep_global_batch(parser, args, folder)


def keep_global_batch(parser: argparse.ArgumentParser, args, folder: str) -> None:
    """Resumed by another number of processes (a requeue onto fewer GPUs, say), the run keeps
    its global batch, and with it the course of its epochs and learning rate: --grad-accum-steps
    makes up the difference. Where no whole number of micro-batches can, it is refused."""
    import records

    trained_by = records.run_world_size(folder) or 1
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == trained_by:
        return
    micro_batches = trained_by * args.grad_accum_steps
    global_batch = micro_batches * args.batch_size
    if micro_batches % world_size:
        parser.error(
            f"{folder} was trained by {trained_by} processes with --grad-accum-steps "
            f"{args.grad_accum_steps}: {world_size} cannot keep its global batch of "
            f"{global_batch}; resume it with {trained_by} processes, or add --allow-changes"
        )
    args.grad_accum_steps = micro_batches // world_size
    note(
        f"note: {world_size} processes instead of {trained_by}: --grad-accum-steps "
        f"{args.grad_accum_steps} keeps the run's global batch of {global_batch}"
    )


def note(text: str) -> None:
    """Print `text` once (from the first process under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


def option_text(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if value is True:
        return option
    if value is False or value is None:
        return f"{option}=<unset>"
    return f"{option} {value}"


def yaml_problem(error) -> str:
    """A yaml.YAMLError in one line (its message spans several): where, and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{place}: {getattr(error, 'problem', None) or str(error).splitlines()[0]}"


def options_problem(args) -> str | None:
    """What makes these options unable to work together (checked before anything runs)."""
    import runs
    from dataset import CACHEABLE, dataset_channels_problem
    from loggers import trackers_problem
    from model import model_image_size_problem

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
    if args.resume and args.resume != "auto" and not os.path.exists(args.resume):
        return f"--resume {args.resume}: no such run folder or checkpoint"
    problem = args.init_from and runs.checkpoint_file_problem(args.init_from)
    if problem:
        return f"--init-from {problem}"
    fsdp = fsdp_problem(args)
    if fsdp:
        return fsdp
    return runs.output_dir_problem(args)


def fsdp_problem(args) -> str | None:
    """What --fsdp cannot work with (--eval-only validates one file, unsharded: anything)."""
    if not args.fsdp or args.eval_only:
        return None
    if "RANK" not in os.environ:
        return "--fsdp shards the model over processes: launch with torchrun (scripts/train_ddp.sh)"
    if args.compile:
        return "--fsdp does not work with --compile here: drop one of them"
    if args.sync_bn:
        return "--fsdp does not work with --sync-bn: drop one of them"
    return None


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


if __name__ == "__main__":  # python options.py ARGS: check train.py's command line without torch
    check_quickly(sys.argv[1:])
