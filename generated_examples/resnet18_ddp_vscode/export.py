"""Export a checkpoint of train.py for deployment: `python export.py --help` lists every option.

    python export.py runs/RUN/best.pt --format torchscript  # runs/RUN/best.torchscript.pt
    python export.py runs/RUN/best.pt --format exported     # torch.export's runs/RUN/best.pt2
    python export.py runs/RUN/best.pt --format onnx         # runs/RUN/best.onnx

ONNX needs onnx, onnxscript and onnxruntime (`pip install -e '.[export]'`). `--output FOLDER`
writes FOLDER/best.torchscript.pt (the default name); an --output that would replace a file of a
run, such as its last.pt or config.json, is refused.

The exported model takes what pipeline.Preprocess returns, a float batch of normalized images of
any batch size, and returns the task's output tensor (task.inference_model: logits for
classification). Beside it, PATH.json says how to make that batch (size,
channels, normalization) and names the classes. Every export is loaded back and compared with the
checkpoint's model on a batch of another size before it is kept: until then the files have
temporary names, and a failed export leaves nothing behind.
"""

import importlib
import inspect
import os
import re
import warnings
from contextlib import contextmanager

import torch
from torch import nn

import files
import runs
import task
from options import HelpFormatter, Parser, real
from pipeline import MEAN, STD
from predict import class_names, load_trained_model, one_line_errors

SUFFIXES = {"torchscript": ".torchscript.pt", "exported": ".pt2", "onnx": ".onnx"}
FORMATS = {fmt: SUFFIXES[fmt] for fmt in task.EXPORT_FORMATS}  # the formats this task's models take
# The largest absolute difference from the eager model's logits that passes (float32). Exporters
# and runtimes may fold and reorder operations: an ONNX resnet50 with logits near 10 differs by
# about 3e-4, and then --tolerance must be raised to keep it.
TOLERANCE = 1e-4
# The batch size traced, and the one verified: another size proves the batch dimension dynamic.
# Not 1, which torch.export would take for a constant.
TRACE_BATCH, CHECK_BATCH = 2, 3
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# How exporters name an operator in their errors, most specific first: torch.onnx, torch.export
# (custom operators), torch.ops (torch.ops.aten.conv2d.default), TorchScript (aten::conv2d).
OPERATOR_PATTERNS = (
    r"OpOverload\(op='([\w.:]+)'",
    r"CustomOpDef\(([\w.:]+)\)",
    r"torch\.ops\.([\w.]+)",
    r"\b([A-Za-z_]\w*::\w+)",
)


class ExportError(Exception):
    """An export that failed or does not match the model; the message says which and why."""


def parse_args(argv=None):
    parser = Parser(
        prog="export.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="a checkpoint written by train.py, such as best.pt")
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="what to write")
    parser.add_argument(
        "--output",
        help="the exported model's path, or a folder for it (default: beside the checkpoint)",
    )
    parser.add_argument(
        "--tolerance",
        type=real(0, low_inclusive=False),
        default=TOLERANCE,
        help="largest difference from the model's logits that the check lets through",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = default_output(args.checkpoint, args.format)
    elif os.path.isdir(args.output) or args.output.endswith(("/", os.sep)):
        name = os.path.basename(default_output(args.checkpoint, args.format))
        args.output = os.path.join(args.output, name)
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    return args


def default_output(checkpoint_path: str, fmt: str) -> str:
    """runs/RUN/best.pt -> runs/RUN/best.torchscript.pt, best.pt2 or best.onnx."""
    return os.path.splitext(checkpoint_path)[0] + FORMATS[fmt]


def options_problem(args) -> str | None:
    if not os.path.isfile(args.checkpoint):
        return f"checkpoint {args.checkpoint}: no such file"
    if os.path.abspath(args.output) == os.path.abspath(args.checkpoint):
        return f"--output {args.output} is the checkpoint itself: choose another path"
    for path in (args.output, args.output + ".json"):  # the model, and its metadata
        clash = runs.run_file_clash(path)
        if clash:
            return f"--output {args.output} {clash}: choose another path"
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        return f"--output {args.output}: folder {folder} does not exist"
    return None


def main(argv=None) -> dict:
    """Parse, export, verify. Bad options exit 2, other failures 1: one line each."""
    args = parse_args(argv)
    with one_line_errors(ExportError):
        return export_checkpoint(args.checkpoint, args.format, args.output, args.tolerance)


def export_checkpoint(path: str, fmt: str, output: str, tolerance: float = TOLERANCE) -> dict:
    """Export the model of checkpoint `path` to `output` in format `fmt`, with its metadata in
    OUTPUT.json, both verified; return the metadata."""
    if fmt == "onnx":
        require_onnx_packages()
    model, state = load_trained_model(path)
    model = task.inference_model(model)
    options = state["args"]
    metadata = describe(state, path, fmt)
    shape = options["in_channels"], options["image_size"]
    how, difference = export_verified(model, fmt, output, *shape, metadata, tolerance)
    print(
        f"{how}: wrote {output} and {output}.json; largest difference from the checkpoint's "
        f"model on a batch of {CHECK_BATCH}: {difference:.2e} (at most {tolerance:g})"
    )
    return {**metadata, "max_abs_difference": difference}


def require_onnx_packages() -> None:
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"ONNX export needs {', '.join(missing)} (to write and to check the file): "
            "pip install -e '.[export]'"
        )


def describe(state: dict, path: str, fmt: str) -> dict:
    """What a program that runs the exported model needs to know besides the file."""
    options = state["args"]
    channels, size = options["in_channels"], options["image_size"]
    io = task.describe_io(options)
    return {
        "format": fmt,
        "model": options["model"],
        "checkpoint": os.path.abspath(path),
        "class_names": class_names(state),
        "num_classes": options["num_classes"],
        "image_size": size,
        "in_channels": channels,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "image_mode": "L" if channels == 1 else "RGB",
            "resize": io["resize"],
            "scale": "uint8 pixel values / 255, to [0, 1]",
            "mean": [MEAN] * channels,
            "std": [STD] * channels,
            "normalize": "(scaled - mean) / std, per channel",
        },
        "output": {"name": OUTPUT_NAME, "shape": io["output_shape"]},
    }


def export_verified(
    model: nn.Module,
    fmt: str,
    path: str,
    in_channels: int,
    image_size: int,
    metadata: dict | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[str, float]:
    """Export eval-mode `model` to `path` (and `metadata` to PATH.json), load it back and
    compare it with `model` on a batch of another size; only then move the files into place.
    Return how it was exported and the largest absolute difference."""
    temporary = files.temporary_name(path, keep_suffix=True)  # torch.export.save insists on .pt2
    try:
        traced = example_batch(TRACE_BATCH, in_channels, image_size)
        how = run_exporter(fmt, model, traced, temporary)
        checked = example_batch(CHECK_BATCH, in_channels, image_size, seed=1)
        difference, largest = compare(model, load_exported(fmt, temporary), checked)
        if not difference <= tolerance:  # also catches NaN
            raise ExportError(
                f"the {fmt} export differs from the model by {difference:.2e} on a batch of "
                f"{CHECK_BATCH} (logits up to {largest:.3g}), more than --tolerance {tolerance:g}: "
                "nothing written"
            )
        if metadata is not None:
            files.write_json(path + ".json", {**metadata, "max_abs_difference": difference})
        # The model last: a model file always has its metadata beside it.
        files.replace(temporary, path)
    finally:
        files.remove_quietly(temporary)
    return how, difference


def example_batch(size: int, in_channels: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """A batch as the model sees one (task.example_input)."""
    options = {"in_channels": in_channels, "image_size": image_size}
    return task.example_input(options, size, seed)


def run_exporter(fmt: str, model: nn.Module, batch: torch.Tensor, path: str) -> str:
    """Write `model` to `path` in format `fmt`; return how. An exporter's failure becomes one
    line naming the format and, where the error names one, the operator."""
    try:
        return EXPORTERS[fmt](model, batch, path)
    except Exception as error:
        raise ExportError(export_failure(fmt, error)) from None


def export_failure(fmt: str, error: BaseException) -> str:
    """One line from an exporter's exception, naming the operator where the error does."""
    text = "\n".join(str(cause) for cause in causes(error))
    for pattern in OPERATOR_PATTERNS:
        found = re.search(pattern, text)
        if found:
            return f"cannot export to {fmt}: operator {found.group(1)} failed ({one_line(error)})"
    return f"cannot export to {fmt}: {one_line(error)}"


def causes(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from, outermost first."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def one_line(error: BaseException) -> str:
    """The first line of the innermost cause: the exporters wrap the error that says what went
    wrong in pages of advice, with terminal colours."""
    innermost = causes(error)[-1]
    lines = [line.strip() for line in str(innermost).splitlines() if line.strip()]
    if not lines:
        return type(innermost).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[0])[:300]


@contextmanager
def torchscript_warnings_off():
    # TorchScript is deprecated in favour of torch.export, but libtorch (C++) and older runtimes
    # still load it; its deprecation warnings would bury the one line export.py prints.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def to_torchscript(model: nn.Module, batch: torch.Tensor, path: str) -> str:
    with torchscript_warnings_off():
        try:
            program, how = torch.jit.script(model), "scripted"
        except Exception:
            # Python that TorchScript cannot compile: trace instead. The check on a batch of
            # another size finds a trace that fixed the batch size.
            program, how = torch.jit.trace(model, batch, check_trace=False), "traced"
        program.save(path)
    return f"TorchScript ({how})"


def dynamic_batch() -> tuple[dict, ...]:
    return ({0: torch.export.Dim("batch")},)


def to_exported(model: nn.Module, batch: torch.Tensor, path: str) -> str:
    program = torch.export.export(model, (batch,), dynamic_shapes=dynamic_batch())
    torch.export.save(program, path)
    return "torch.export ExportedProgram"


def to_onnx(model: nn.Module, batch: torch.Tensor, path: str) -> str:
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch before 2.5
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(model, (batch,), path, dynamic_axes=axes, **names)
        return "ONNX (TorchScript-based exporter)"
    torch.onnx.export(
        model,
        (batch,),
        path,
        dynamo=True,
        dynamic_shapes=dynamic_batch(),
        external_data=False,  # one file, which the rename after verification moves whole
        verbose=False,
        **names,
    )
    return "ONNX (torch.export-based exporter)"


EXPORTERS = {"torchscript": to_torchscript, "exported": to_exported, "onnx": to_onnx}


def load_exported(fmt: str, path: str):
    """The exported file at `path`, loaded back as a function of a float batch."""
    try:
        if fmt == "torchscript":
            with torchscript_warnings_off():
                return torch.jit.load(path, map_location="cpu")
        if fmt == "exported":
            return torch.export.load(path).module()
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda batch: torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])
    except Exception as error:
        raise ExportError(f"the {fmt} export does not load back: {one_line(error)}") from None


@torch.no_grad()
def compare(model: nn.Module, exported, batch: torch.Tensor) -> tuple[float, float]:
    """The largest absolute difference between the logits of `exported` and eval-mode `model`,
    and the largest absolute logit of `model`, which puts the difference in proportion."""
    model.eval()
    try:
        logits = exported(batch)
    except Exception as error:  # such as a batch size fixed when the model was traced
        raise ExportError(
            f"the exported model fails on a batch of {len(batch)}: {one_line(error)}"
        ) from None
    expected = model(batch)
    return (logits.float() - expected).abs().max().item(), expected.abs().max().item()


if __name__ == "__main__":
    main()
