"""Training hooks: `python train.py --hooks activations,gradients,nan_check`.

train.py builds one HookSet from --hooks, --hook-modules, --hook-save-steps and --output-dir;
each hook's per-step summary lands in the step lines of metrics.jsonl under record["hooks"].
Write a new hook by subclassing hooks.base.Hook (see there) and adding it to HOOKS.
"""

import argparse

from torch import nn

from hooks.activations import ActivationStats
from hooks.base import HookError
from hooks.gradients import GradientNorms
from hooks.nan_check import NanCheck

# --hooks NAME -> hook class. `scaffold add hook` adds its lines here; your own lines stay.
HOOKS = {
    "activations": ActivationStats,
    "gradients": GradientNorms,
    "nan_check": NanCheck,
}


def add_hook_arguments(parser: argparse.ArgumentParser) -> None:
    """train.py's options for hooks."""
    group = parser.add_argument_group("hooks")
    group.add_argument("--hooks", default="", help=f"comma-separated: {', '.join(HOOKS)}")
    group.add_argument("--hook-modules", default="", help="module-name globs, comma-separated")
    group.add_argument("--hook-save-steps", type=int, default=0, help="save N steps' features")


class HookSet:
    """The hooks named in `names` ("a,b"; "" registers nothing), attached to `model`.

    Pass the unwrapped model (not the DDP or torch.compile wrapper). `module_glob`, `output_dir`
    and `save_steps` go to every hook's constructor (see hooks.base.Hook). HookError, with a
    one-line message, for an unknown name or a glob that matches no module.
    """

    def __init__(
        self,
        names: str,
        model: nn.Module,
        module_glob: str = "",
        output_dir: str = ".",
        save_steps: int = 0,
    ):
        wanted = list(dict.fromkeys(name.strip() for name in names.split(",") if name.strip()))
        for name in wanted:
            if name not in HOOKS:
                raise HookError(f"unknown hook {name!r}; valid hooks: {', '.join(HOOKS)}")
        if save_steps < 0:
            raise HookError("--hook-save-steps must be 0 or more")
        if save_steps and "activations" not in wanted:
            raise HookError("--hook-save-steps saves feature maps: add --hooks activations")
        if module_glob and not wanted:
            raise HookError(f"--hook-modules needs --hooks NAME; valid hooks: {', '.join(HOOKS)}")
        self.hooks = {}
        self.record = False
        try:
            for name in wanted:
                hook = HOOKS[name](module_glob, output_dir, save_steps)
                self.hooks[name] = hook
                hook.attach(model)
        except BaseException:
            self.detach()
            raise

    def start_step(self, step: int, record: bool = False) -> None:
        """At the first micro-batch of optimizer step `step`; `record` on steps that are logged."""
        self.record = record
        for hook in self.hooks.values():
            hook.start_step(step, record)

    def end_step(self) -> dict:
        """After the step's last backward: {hook name: summary} when recording, else {}."""
        summary, error = {}, None
        for name, hook in self.hooks.items():
            try:
                result = hook.end_step()
            except FloatingPointError as exception:  # let every hook finish its step first
                error = error or exception
                continue
            if self.record and result:
                summary[name] = result
        if error is not None:
            raise error
        return summary

    def detach(self) -> None:
        """Remove every handle of every hook."""
        for hook in self.hooks.values():
            hook.detach()
