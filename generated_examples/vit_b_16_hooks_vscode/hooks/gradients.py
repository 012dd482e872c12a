"""--hooks gradients: gradient norms of each watched module's output and of its parameters.

Summary on recorded steps: {module: {"grad_output": .., "weight": .., "bias": ..}}, where
grad_output is the L2 norm of d(loss)/d(module output), what register_full_backward_hook would
see as grad_output[0] (summed in squares over the step's micro-batches and calls), and the other
keys are the L2 norms of the .grad of the parameters the module owns, by name, read at end_step:
after the last backward and --clip-grad-norm, before optimizer.step().

The output gradient comes from a tensor hook (`output.register_hook`) set by a forward hook,
not from register_full_backward_hook, which fails when the output is then modified in place
(resnet's ReLU(inplace=True) after bn1); a tensor hook set before the in-place op gets the
gradient of the value the module returned. Tensor hooks are only set on recorded steps.

Under DDP the parameter gradients are the averaged ones (DDP has synced them when backward
returns), grad_output is this process's own. Under float16 --amp on CUDA both are multiplied by
GradScaler's scale unless --clip-grad-norm (which unscales first) is on.
"""

import functools
import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hooks.base import Hook, module_parameters


class GradientNorms(Hook):
    def __init__(self, module_glob: str = "", output_dir: str = ".", save_steps: int = 0):
        super().__init__(module_glob, output_dir, save_steps)
        self.squares: dict[str, list[torch.Tensor]] = {}  # module -> squared norm per call

    def start_step(self, step: int, record: bool) -> None:
        super().start_step(step, record)
        self.squares = {}

    def on_output(self, name: str, module: nn.Module, output: torch.Tensor) -> None:
        if output.requires_grad:
            hook = functools.partial(self.on_grad, name)
            self.step_handles.append(output.register_hook(hook))

    def on_grad(self, name: str, grad: torch.Tensor) -> None:
        self.squares.setdefault(name, []).append(torch.linalg.vector_norm(grad.float()).square())

    def end_step(self) -> dict:
        super().end_step()
        if not self.record:
            return {}
        params = [
            (name, param_name, param.grad)
            for name, param_name, param in module_parameters(self.modules)
            if param.grad is not None
        ]
        pieces = [square for squares in self.squares.values() for square in squares]
        pieces += [whole_norm(grad) for _, _, grad in params]
        if not pieces:
            return {}
        values = iter(torch.stack(pieces).tolist())  # one device sync
        summary: dict[str, dict[str, float]] = {name: {} for name, _ in self.modules}
        for name, squares in self.squares.items():
            summary[name]["grad_output"] = math.sqrt(sum(next(values) for _ in squares))
        for name, param_name, _ in params:
            summary[name][param_name] = next(values)
        return {name: norms for name, norms in summary.items() if norms}


def whole_norm(grad: torch.Tensor) -> torch.Tensor:
    """The L2 norm of a parameter's gradient; of all of it when --fsdp shards it over the
    processes (a collective then: every process reads its hooks at the same step)."""
    norm = torch.linalg.vector_norm(grad.detach().float())
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
