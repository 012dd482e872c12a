"""--hooks nan_check: stop at the first NaN or Inf in a watched module's output or gradient.

Checks every training step (not validation). In each forward and backward it queues, for every
watched module, whether its output and the gradient of its output are all finite; end_step
(before optimizer.step(), so the weights stay clean) looks at them with one device sync and
raises FloatingPointError naming the first bad one in the order they were computed, with the step:

    NaN or Inf in the output of module 'layer1.0.conv2' at step 12

It then checks the watched modules' parameter gradients, which under DDP are averaged over the
processes: a process whose own batch was fine stops as well instead of waiting for the one that
stopped. Gradients are not checked in a step that ran in float16 (CUDA --amp): GradScaler's
overflow steps hold Inf gradients by design and it skips them itself.
"""

import functools

import torch
from torch import nn
from torch.distributed.tensor import DTensor

import distributed
from hooks.base import Hook, module_parameters


class NanCheck(Hook):
    def __init__(self, module_glob: str = "", output_dir: str = ".", save_steps: int = 0):
        super().__init__(module_glob, output_dir, save_steps)
        self.checks: list[tuple[bool, str, torch.Tensor]] = []  # (is a gradient, what, all finite)
        self.float16 = False

    def start_step(self, step: int, record: bool) -> None:
        super().start_step(step, record)
        self.active = True
        self.checks = []
        self.float16 = False

    def on_output(self, name: str, module: nn.Module, output: torch.Tensor) -> None:
        self.float16 |= output.dtype == torch.float16
        self.checks.append((False, f"the output of module {name!r}", torch.isfinite(output).all()))
        if output.requires_grad:
            self.step_handles.append(output.register_hook(functools.partial(self.on_grad, name)))

    def on_grad(self, name: str, grad: torch.Tensor) -> None:
        what = f"the gradient of the output of module {name!r}"
        self.checks.append((True, what, torch.isfinite(grad).all()))

    def end_step(self) -> dict:
        super().end_step()
        checks, self.checks = self.checks, []
        if self.float16:
            checks = [check for check in checks if not check[0]]
        else:
            for name, param_name, param in module_parameters(self.modules):
                if param.grad is not None:
                    what = f"the gradient of parameter '{name}.{param_name}'"
                    checks.append((True, what, all_finite(param.grad)))
        if checks:
            finite = torch.stack([check[2] for check in checks]).tolist()  # one device sync
            for (_, what, _), ok in zip(checks, finite, strict=True):
                if not ok:
                    hint = ""
                    averaged = what.startswith("the gradient of parameter")
                    if averaged and distributed.get_world_size() > 1:
                        hint = " (averaged over processes: another one may have the first NaN)"
                    raise FloatingPointError(f"NaN or Inf in {what} at step {self.step}{hint}")
        return {}


def all_finite(grad: torch.Tensor) -> torch.Tensor:
    """Whether every value of a parameter's gradient is finite; of all of it when --fsdp shards
    it over the processes (a collective then), so that every process stops at the same step."""
    finite = torch.isfinite(grad).all()
    return finite.full_tensor() if isinstance(finite, DTensor) else finite
