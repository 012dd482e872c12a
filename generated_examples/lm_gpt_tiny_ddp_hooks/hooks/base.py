"""The base class of every hook, and how hooks choose their modules.

A hook watches modules of the model during training steps. train.py drives it through a HookSet
(hooks/__init__.py), once per optimizer step:

    start_step(step, record)  at the first micro-batch of the step; `record` on logged steps only
    ... forward and backward of every micro-batch ...
    end_step() -> dict        after the last backward, before optimizer.step() and zero_grad()

What end_step returns on a recorded step goes into that step's line of metrics.jsonl, under
record["hooks"][NAME] where NAME is the hook's --hooks name; it must be JSON-serialisable (plain
floats, strings, lists, dicts). Return {} when there is nothing to report.

A new hook subclasses Hook, overrides what it needs and is added to HOOKS in hooks/__init__.py
(`scaffold add hook NAME` writes the skeleton and the registry lines):

    class OutputNorms(Hook):
        def start_step(self, step, record):
            super().start_step(step, record)  # sets self.step, self.record, self.active
            self.norms = {}

        def on_output(self, name, module, output):  # only called while self.active
            self.norms[name] = torch.linalg.vector_norm(output.detach().float())

        def end_step(self):
            super().end_step()
            if not self.record or not self.norms:
                return {}
            values = torch.stack(list(self.norms.values())).tolist()  # one device sync
            return dict(zip(self.norms, values))
"""

import fnmatch

import torch
from torch import nn


class HookError(ValueError):
    """Hook options that cannot work; the message says what to do. (Errors raised inside a
    hook's own code are not this: they keep their traceback.)"""


class Hook:
    """Per-module instrumentation for training steps.

    Args:
        module_glob: which modules to watch: comma-separated fnmatch globs over the names of
            `model.named_modules()` (e.g. "conv*,layer1.*"); "" means the default set, the
            modules that own parameters (convolutions, linear layers, norms). See select_modules.
        output_dir: the run's --output-dir, for hooks that write files.
        save_steps: --hook-save-steps, the number of first steps whose data a hook may save
            (the activations hook saves feature maps); hooks that save nothing ignore it.

    attach(model) registers a forward hook on every chosen module that calls
    `on_output(name, module, output)` while `self.active` is true, and nothing at all otherwise;
    start_step sets `self.active = record` (a subclass that works on every step sets it to True).
    Every handle registered must go into `self.handles` (or `self.step_handles` for tensor hooks
    that live for one step), so that detach() removes them all.
    """

    def __init__(self, module_glob: str = "", output_dir: str = ".", save_steps: int = 0):
        self.module_glob = module_glob
        self.output_dir = output_dir
        self.save_steps = save_steps
        self.modules: list[tuple[str, nn.Module]] = []
        self.handles: list = []  # module hooks: removed by detach()
        self.step_handles: list = []  # tensor hooks of the current step: removed by end_step()
        self.step = 0
        self.record = False
        self.active = False

    def attach(self, model: nn.Module) -> None:
        """Choose the modules (ValueError when the glob matches none) and hook their outputs."""
        self.modules = select_modules(model, self.module_glob)
        for name, module in self.modules:
            self.handles.append(module.register_forward_hook(self._forward_hook(name)))

    def detach(self) -> None:
        """Remove every handle this hook registered."""
        for handle in self.handles + self.step_handles:
            handle.remove()
        self.handles.clear()
        self.step_handles.clear()
        self.active = False

    def start_step(self, step: int, record: bool) -> None:
        self.step = step
        self.record = record
        self.active = record
        self._remove_step_handles()

    def on_output(self, name: str, module: nn.Module, output: torch.Tensor) -> None:
        """Called with a module's output tensor (the first tensor of a tuple) while active."""

    def end_step(self) -> dict:
        """Finish the step; return its summary (JSON-serialisable), {} when not recording."""
        self.active = False
        self._remove_step_handles()
        return {}

    def _remove_step_handles(self) -> None:
        for handle in self.step_handles:
            handle.remove()
        self.step_handles.clear()

    def _forward_hook(self, name: str):
        # compiler.disable: under --compile the hook runs eagerly (a graph break) instead of being
        # traced once with whatever self.active held then. Costs well under a microsecond.
        @torch.compiler.disable
        def hook(module, inputs, output):
            if self.active:
                tensor = first_tensor(output)
                if tensor is not None:
                    self.on_output(name, module, tensor)

        return hook


def select_modules(model: nn.Module, module_glob: str = "") -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to watch, in model order (the model itself is never included).

    "" chooses the modules that own parameters themselves: convolutions, linear and norm layers,
    and blocks with parameters of their own (ViT's attention and encoder, ConvNeXt's blocks).
    Otherwise comma-separated fnmatch globs over module names, e.g. "layer1.*", "conv*,fc".
    ValueError when nothing matches.
    """
    named = [(name, module) for name, module in model.named_modules() if name]
    if not module_glob.strip():
        chosen = [(name, module) for name, module in named if owns_parameters(module)]
        if not chosen:
            raise HookError("no module of the model owns parameters: pass --hook-modules GLOB")
        return chosen
    patterns = [pattern.strip() for pattern in module_glob.split(",") if pattern.strip()]
    chosen = [
        (name, module)
        for name, module in named
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    ]
    if not chosen:
        shown = ", ".join(name for name, _ in named[:12])
        more = f" and {len(named) - 12} more" if len(named) > 12 else ""
        raise HookError(
            f"--hook-modules {module_glob!r} matches no module; module names: {shown}{more}"
        )
    return chosen


def first_tensor(output) -> torch.Tensor | None:
    """The floating-point tensor in a module's output: itself, or the first one of a tuple/list."""
    if isinstance(output, (tuple, list)):
        output = next((item for item in output if isinstance(item, torch.Tensor)), None)
    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
        return output
    return None


def owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def module_parameters(modules: list[tuple[str, nn.Module]]) -> list[tuple[str, str, nn.Parameter]]:
    """(module name, parameter name, parameter) for the parameters the chosen modules own
    themselves (a container's children's parameters belong to the children)."""
    return [
        (name, param_name, param)
        for name, module in modules
        for param_name, param in module.named_parameters(recurse=False)
    ]
