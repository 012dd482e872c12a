"""What a model is made of: every named module's type, output shape and parameters.

    python train.py --summary        # the full table for the configured model, then exit

Every run also prints the one-line form (format_short) at its start. From Python:

    from summary import format_summary, summarize
    print(format_summary(summarize(model, (1, 3, 32, 32)), "resnet18"))

Output shapes come from forward hooks on every module during one forward pass of a random batch,
in eval mode and without gradients; the hooks are removed and each module's train/eval mode is
restored afterwards. A module's parameter count includes its submodules', so the root row holds the
model's total; a parameter shared by two modules counts once in the totals.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

MAX_SHAPE_TEXT = 48  # longer output descriptions (tuples of many tensors) are cut with "..."


@dataclass
class Row:
    """One module: `name` is its dotted name from named_modules() ("" for the model itself)."""

    name: str
    type: str
    outputs: list = field(default_factory=list)  # one output structure per call (see describe)
    trainable: int = 0  # parameter elements of this module and its submodules that train
    frozen: int = 0  # ... and that do not (requires_grad False)

    @property
    def params(self) -> int:
        return self.trainable + self.frozen

    @property
    def depth(self) -> int:
        return self.name.count(".") + 1 if self.name else 0

    @property
    def status(self) -> str:
        if not self.params:
            return "-"
        if not self.frozen:
            return "yes"
        return "frozen" if not self.trainable else "partly"


@dataclass
class Totals:
    trainable: int
    frozen: int
    param_bytes: int
    buffer_bytes: int

    @property
    def params(self) -> int:
        return self.trainable + self.frozen

    @property
    def size_mb(self) -> float:
        """Parameters and buffers, in MB of 2**20 bytes (as torchvision's model docs count)."""
        return (self.param_bytes + self.buffer_bytes) / 2**20


@dataclass
class Summary:
    rows: list[Row]
    totals: Totals
    input_shape: tuple[int, ...]


def count_parameters(model: nn.Module) -> Totals:
    """Parameter elements split by requires_grad, and the bytes of parameters and buffers."""
    parameters = list(model.parameters())
    buffers = list(model.buffers())
    return Totals(
        trainable=sum(p.numel() for p in parameters if p.requires_grad),
        frozen=sum(p.numel() for p in parameters if not p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in parameters),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
    )


def describe(output):
    """The shape structure of a module's output: torch.Size for a tensor; the same tuple, list or
    dict structure for containers; None; or the type name of anything else."""
    if isinstance(output, torch.Tensor):
        return output.shape
    if isinstance(output, list):
        return [describe(item) for item in output]
    if isinstance(output, tuple):  # named tuples too
        return tuple(describe(item) for item in output)
    if isinstance(output, dict):
        return {key: describe(value) for key, value in output.items()}
    if output is None:
        return None
    return type(output).__name__


def summarize(model: nn.Module, example, device=None) -> Summary:
    """One row per named module (containers too, the model itself first) after one forward pass
    on the model's device of `example`: a batch (a tensor, such as token ids), or the shape of a
    random one (batch dimension included).

    ValueError, with a one-line message, when that forward pass fails (a wrong image size)."""
    first = next(model.parameters(), None)
    first = first if first is not None else next(model.buffers(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    if isinstance(example, torch.Tensor):
        batch = example
    else:
        generator = torch.Generator().manual_seed(0)  # leaves the global random state alone
        batch = torch.randn(tuple(example), generator=generator)
    batch = batch.to(device, dtype) if batch.is_floating_point() else batch.to(device)
    input_shape = tuple(batch.shape)

    rows, handles = [], []
    for name, module in model.named_modules():
        row = Row(name=name, type=type(module).__name__)
        for parameter in module.parameters():
            if parameter.requires_grad:
                row.trainable += parameter.numel()
            else:
                row.frozen += parameter.numel()
        rows.append(row)
        handles.append(module.register_forward_hook(record_output(row)))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    except (RuntimeError, AssertionError, ValueError) as error:  # shape errors of the layers
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(
            f"a forward pass of a {list(input_shape)} batch failed: {message}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return Summary(rows, count_parameters(model), input_shape)


def record_output(row: Row):
    def hook(module, inputs, output):
        row.outputs.append(describe(output))

    return hook


def shape_text(shape) -> str:
    """[1, 64, 8, 8] for a tensor; (.., ..) [.., ..] {key: ..} for containers."""
    if isinstance(shape, torch.Size):
        return str(list(shape))
    if isinstance(shape, tuple):
        return "(" + ", ".join(shape_text(item) for item in shape) + ")"
    if isinstance(shape, list):
        return "[" + ", ".join(shape_text(item) for item in shape) + "]"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{key}: {shape_text(value)}" for key, value in shape.items()) + "}"
    return str(shape)


def outputs_text(outputs: list) -> str:
    """A module's outputs over its calls: "-" when never called (a layer the forward pass does not
    use, or one called through its weights), "SHAPE x3" when called 3 times with the same shape,
    "SHAPE, SHAPE" for different shapes."""
    if not outputs:
        return "-"
    distinct = []
    for output in outputs:
        if output not in distinct:
            distinct.append(output)
    if len(distinct) == 1:
        text = shape_text(distinct[0])
        text = text if len(outputs) == 1 else f"{text} x{len(outputs)}"
    else:
        text = ", ".join(shape_text(output) for output in distinct)
        text = f"{text} ({len(outputs)} calls)" if len(outputs) > len(distinct) else text
    return text if len(text) <= MAX_SHAPE_TEXT else text[: MAX_SHAPE_TEXT - 3] + "..."


def format_short(name: str, totals: Totals) -> str:
    """One line for the start of a run: parameters, how many train, the size in memory."""
    return (
        f"model {name}: {totals.params:,} parameters ({totals.trainable:,} trainable, "
        f"{totals.frozen:,} frozen), {totals.size_mb:.2f} MB"
    )


def format_summary(summary: Summary, name: str = "model") -> str:
    """The table: module (indented by depth), type, output shape, parameters, trainable; then the
    totals."""
    header = ("module", "type", "output shape", "params", "trainable")
    table = [
        (
            "  " * row.depth + (row.name or f"({name})"),
            row.type,
            outputs_text(row.outputs),
            f"{row.params:,}" if row.params else "-",
            row.status,
        )
        for row in summary.rows
    ]
    widths = [max(len(line[column]) for line in [header, *table]) for column in range(5)]

    def line(cells) -> str:
        left = [cell.ljust(width) for cell, width in zip(cells[:3], widths, strict=False)]
        return "  ".join([*left, cells[3].rjust(widths[3]), cells[4]]).rstrip()

    totals = summary.totals
    rule = "-" * len(line(["x" * width for width in widths]))
    lines = [
        f"{name}: input {list(summary.input_shape)}, {len(summary.rows)} modules",
        rule,
        line(header),
        rule,
        *(line(cells) for cells in table),
        rule,
        f"parameters: {totals.params:,} total, {totals.trainable:,} trainable, "
        f"{totals.frozen:,} frozen",
        f"size: {totals.size_mb:.2f} MB (parameters {totals.param_bytes / 2**20:.2f} MB, "
        f"buffers {totals.buffer_bytes / 2**20:.2f} MB)",
    ]
    return "\n".join(lines)
