"""Export a checkpoint of train.py for deployment: `python export.py --help` lists every option.

    python export.py runs/RUN/best.pt --format torchscript  # runs/RUN/best.torchscript.pt
    python export.py runs/RUN/best.pt --format exported     # torch.export's runs/RUN/best.pt2
    python export.py runs/RUN/best.pt --format onnx         # runs/RUN/best.onnx

ONNX needs onnx, onnxscript and onnxruntime (`pip install -e '.[export]'`). `--output FOLDER`
writes FOLDER/best.torchscript.pt (the default name); an --output that would replace a file of a
run, such as its last.pt or config.json, is refused.

The exported model is the task's (task.inference_model): for images, a float batch of normalized
images (what image_pipeline.Preprocess returns) of any batch size to the task's output tensor,
logits for classification; for a language model, int64 token ids (batch, T), T up to its block
size, to the next token's logits at every position. Beside it, PATH.json says how to make its input
and read its output (task.describe_io, task.export_metadata: an image's size, channels and
normalization and the class names; a language model's tokenizer). Every export is loaded back and
compared with the checkpoint's model on an input of another batch size (and another length T)
before it is kept: until then the files have temporary names, and a failed export leaves nothing
behind.
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
from predict import load_trained_model, one_line_errors

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
    parser.add_argument("--format", required=True, choices=list(SUFFIXES), help="what to write")
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
    return os.path.splitext(checkpoint_path)[0] + SUFFIXES[fmt]


def options_problem(args) -> str | None:
    if args.format not in FORMATS:
        return task.FORMAT_REFUSALS[args.format]
    problem = runs.checkpoint_file_problem(args.checkpoint)
    if problem:
        return f"checkpoint {problem}"
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
    metadata = describe(state, path, fmt)
    how, difference = export_verified(model, fmt, output, state["args"], metadata, tolerance)
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
    return {
        "format": fmt,
        "model": options["model"],
        "checkpoint": os.path.abspath(path),
        **task.export_metadata(state),
        **task.describe_io(options),
    }


def export_verified(
    model: nn.Module,
    fmt: str,
    path: str,
    options: dict,
    metadata: dict | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[str, float]:
    """Export eval-mode `model`, which takes the input that train.py's `options` describe
    (task.example_input, task.describe_io), to `path` (and `metadata` to PATH.json), load it back
    and compare it with `model` on an input of another size; only then move the files into
    place. Return how it was exported and the largest absolute difference."""
    io = task.describe_io(options)
    temporary = files.temporary_name(path, keep_suffix=True)  # torch.export.save insists on .pt2
    try:
        traced = task.example_input(options, TRACE_BATCH)
        how = run_exporter(fmt, model, traced, temporary, io)
        checked = check_input(options, io)
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


def check_input(options: dict, io: dict) -> torch.Tensor:
    """An input unlike the traced one in every dimension the exported model lets change:
    CHECK_BATCH samples, and any other such dimension (a language model's T) cut to half, so
    that a file that fixed one of them when it was traced fails the check."""
    batch = task.example_input(options, CHECK_BATCH, seed=1)
    for dim, size in enumerate(io["input"]["shape"]):
        if dim > 0 and isinstance(size, str):
            batch = batch.narrow(dim, 0, max(batch.shape[dim] // 2, 1))
    return batch


def run_exporter(fmt: str, model: nn.Module, batch: torch.Tensor, path: str, io: dict) -> str:
    """Write `model`, traced on `batch`, to `path` in format `fmt`, with the names and sizes of
    its input and output that `io` (task.describe_io) gives; return how. An exporter's failure
    becomes one line naming the format and, where the error names one, the operator."""
    try:
        return EXPORTERS[fmt](model, batch, path, io)
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


def to_torchscript(model: nn.Module, batch: torch.Tensor, path: str, io: dict) -> str:
    # A scripted model takes any size the Python code takes: no names or sizes to declare.
    with torchscript_warnings_off():
        try:
            program, how = torch.jit.script(model), "scripted"
        except Exception:
            # Python that TorchScript cannot compile: trace instead. The check on an input of
            # another size finds a trace that fixed a size.
            program, how = torch.jit.trace(model, batch, check_trace=False), "traced"
        program.save(path)
    return f"TorchScript ({how})"


def dynamic_axes(shape: list) -> dict[int, str]:
    """The dimensions of a shape in task.describe_io that may change size, by index: those it
    names ("batch", a language model's "T") instead of giving their size."""
    return {dim: size for dim, size in enumerate(shape) if isinstance(size, str)}


def dynamic_shapes(io: dict) -> tuple[dict, ...]:
    """torch.export's declaration of the input's dimensions that may change, each at most its
    size in io["input"]["max_sizes"] where that names one (a language model's block size). One
    that can only be 1 (a block size of 1) stays fixed: torch.export takes a 1 for a constant."""
    limits = io["input"].get("max_sizes", {})
    dims = {}
    for dim, name in dynamic_axes(io["input"]["shape"]).items():
        if limits.get(name) != 1:
            dims[dim] = torch.export.Dim(name, max=limits.get(name))
    return (dims,)


def to_exported(model: nn.Module, batch: torch.Tensor, path: str, io: dict) -> str:
    program = torch.export.export(model, (batch,), dynamic_shapes=dynamic_shapes(io))
    torch.export.save(program, path)
    return "torch.export ExportedProgram"


def to_onnx(model: nn.Module, batch: torch.Tensor, path: str, io: dict) -> str:
    names = {"input_names": [io["input"]["name"]], "output_names": [io["output"]["name"]]}
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch before 2.5
        axes = {part["name"]: dynamic_axes(part["shape"]) for part in (io["input"], io["output"])}
        torch.onnx.export(model, (batch,), path, dynamic_axes=axes, **names)
        return "ONNX (TorchScript-based exporter)"
    torch.onnx.export(
        model,
        (batch,),
        path,
        dynamo=True,
        dynamic_shapes=dynamic_shapes(io),
        external_data=False,  # one file, which the rename after verification moves whole
        verbose=False,
        **names,
    )
    return "ONNX (torch.export-based exporter)"


EXPORTERS = {"torchscript": to_torchscript, "exported": to_exported, "onnx": to_onnx}


def load_exported(fmt: str, path: str):
    """The exported file at `path`, loaded back as a function of an input batch."""
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
