"""Fine-tuning helpers every task's model.py and train.py share: pretrained weights from the local
hub cache, a stem for another channel count, freezing, and train mode that respects frozen layers.
"""

import fnmatch
import os

import torch
import torchvision
from torch import nn


class ModelError(ValueError):
    """A model that cannot be built, loaded or frozen as asked; the message says what to do.
    (Errors raised inside a model's own code are not this: they keep their traceback.)"""


def pretrained_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """Pretrained weights from the local torch hub cache; never downloads (see --download)."""
    enum = torchvision.models.get_model_weights(name)
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
    if not os.path.isfile(path):
        raise ModelError(
            f"pretrained weights {name}.{chosen.name} are not in the hub cache: put the file at "
            f"{path} (from {chosen.url}) or pass --download"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def download_weights(name: str, weights: str) -> None:
    """Fetch pretrained weights into the hub cache (the only code here that uses the network)."""
    enum = torchvision.models.get_model_weights(name)
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    chosen.get_state_dict(progress=True)


def replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one that takes `in_channels` channels."""
    parent, attribute, old = next(
        (parent, attribute, child)
        for parent in model.modules()
        for attribute, child in parent.named_children()
        if isinstance(child, nn.Conv2d)
    )
    setattr(
        parent,
        attribute,
        nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=old.bias is not None,
        ),
    )


def in_head(name: str, head: str | tuple[str, ...]) -> bool:
    """Whether parameter `name` is in the head: `head` is the model's entry in model.HEADS, the
    name of its head module, or a tuple of names for a model of several heads."""
    heads = (head,) if isinstance(head, str) else head
    return name.startswith(tuple(f"{module}." for module in heads))


def freeze(model: nn.Module, spec: str, head: str | tuple[str, ...]) -> list[str]:
    """Freeze parameters: "none", "backbone" (all but the head(s) `head`, see in_head) or name
    globs."""
    if spec == "none":
        return []
    if spec == "backbone":
        frozen = [n for n, _ in model.named_parameters() if not in_head(n, head)]
    else:
        patterns = spec.split(",")
        frozen = [
            n for n, _ in model.named_parameters() if any(fnmatch.fnmatch(n, p) for p in patterns)
        ]
        if not frozen:
            raise ModelError(f"--freeze {spec} matches no parameter name")
    if len(frozen) == len(list(model.parameters())):
        raise ModelError(f"--freeze {spec} freezes every parameter: nothing would train")
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but BatchNorm layers whose parameters are all frozen keep their statistics."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and parameters:
            if not any(p.requires_grad for p in parameters):
                module.eval()
