"""Segmentation models: a small U-Net of our own and torchvision's, adapted to any class count and
channel count. model_from_options() is what train.py, predict.py and export.py call.

A model maps normalized images (batch, channels, size, size) to per-pixel logits (batch, classes,
size, size): the U-Net as a plain tensor, torchvision's as a dict {"out": logits, "aux": logits of
the auxiliary head} (task.py trains both heads; task.inference_model keeps "out" alone).
"""

import torch
import torchvision
from torch import nn

from finetune import ModelError, pretrained_state_dict, replace_stem


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU: one U-Net level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """One U-Net decoder level: double the resolution, join the encoder's features of that
    resolution (the skip connection), and convolve them together."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al., 2015): three halvings of the resolution and three
    doublings back, each level joined to its encoder's features (about 0.5M parameters with the
    default width). The image size must be a multiple of 8, so that every level lines up."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        inputs = [in_channels, *widths[:-1]]
        self.downs = nn.ModuleList(
            DoubleConv(low, high) for low, high in zip(inputs, widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-1], 2 * widths[-1])
        self.ups = nn.ModuleList(Up(2 * high, high) for high in reversed(widths))
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


def init_weights(model: nn.Module) -> None:
    """Kaiming init for every convolution, the head's too. (Not the small head of classification:
    with every class's logits near zero, the classes of the foreground pixels get near-identical
    gradients and move together, and the model takes hundreds of steps longer to tell them apart;
    measured on --dataset synthetic. The first loss is a little above ln(classes) instead.)"""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


CUSTOM_MODELS = {"unet": UNet}
TORCHVISION_MODELS = [
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50",
    "deeplabv3_resnet50",
]
MODEL_NAMES = [*CUSTOM_MODELS, *TORCHVISION_MODELS]
# The torchvision models with an auxiliary head (torchvision's reference trains it, weight 0.5).
AUX_MODELS = {"deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"}

# The smallest --image-size each model takes (as scaffold's catalog says), and what the image
# size must be a multiple of: the U-Net halves the resolution 3 times and doubles it back.
MIN_IMAGE_SIZES = {"unet": 16}
SIZE_MULTIPLES = {"unet": 8}


def model_image_size_problem(name: str, image_size: int) -> str | None:
    """Why model `name` cannot take images of `image_size` pixels, or None when it can."""
    smallest = MIN_IMAGE_SIZES.get(name, 32 if name in TORCHVISION_MODELS else 1)
    if image_size < smallest:
        return f"--model {name} needs --image-size of at least {smallest}, got {image_size}"
    multiple = SIZE_MULTIPLES.get(name)
    if multiple and image_size % multiple:
        halvings = multiple.bit_length() - 1
        return (
            f"--model {name} halves the resolution {halvings} times and doubles it back: "
            f"--image-size must be a multiple of {multiple}, got {image_size}"
        )
    return None


# The segmentation head(s) of each model, by parameter-name prefix: what --freeze backbone leaves
# training and --backbone-lr-mult leaves at --lr (finetune.in_head). torchvision's auxiliary head,
# "aux_classifier", is a head: its loss is part of the training loss (task.py), and torchvision's
# reference training trains it at the head's learning rate.
HEADS = {
    "unet": "head",
    "lraspp_mobilenet_v3_large": "classifier",
    "deeplabv3_mobilenet_v3_large": ("classifier", "aux_classifier"),
    "fcn_resnet50": ("classifier", "aux_classifier"),
    "deeplabv3_resnet50": ("classifier", "aux_classifier"),
}


# The options of train.py that build a model: a checkpoint without them cannot be rebuilt.
MODEL_OPTIONS = ("model", "num_classes", "in_channels", "image_size")


def model_from_options(options: dict, pretrained: bool = True) -> nn.Module:
    """The model that train.py's options describe (vars(args), or a checkpoint's "args"); with
    `pretrained`, its --weights from the hub cache (predict.py loads a checkpoint's instead)."""
    weights = options.get("weights") if pretrained else None
    return build_model(*(options[name] for name in MODEL_OPTIONS), weights)


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, weights: str | None = None
) -> nn.Module:
    """Build model `name`; `weights` names torchvision pretrained weights from the hub cache."""
    if name in CUSTOM_MODELS:
        if weights:
            raise ModelError(
                f"--weights is for torchvision models; {name} has no pretrained weights"
            )
        return CUSTOM_MODELS[name](num_classes, in_channels, image_size)
    if name not in TORCHVISION_MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    # weights_backbone=None: torchvision would otherwise download ImageNet backbone weights.
    # Pretrained weights come from --weights alone, read from the hub cache.
    extra = {"weights": None, "weights_backbone": None}
    if name in AUX_MODELS:
        extra["aux_loss"] = True
    if weights:
        enum = torchvision.models.get_model_weights(name)
        if weights != "DEFAULT" and weights not in enum.__members__:
            raise ModelError(
                f"--weights {weights} is not a weight of {name}: pass DEFAULT or one of "
                f"{', '.join(enum.__members__)}"
            )
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        pretrained_classes = len(chosen.meta["categories"])
        model = torchvision.models.get_model(name, num_classes=pretrained_classes, **extra)
        model.load_state_dict(pretrained_state_dict(name, weights))
        for parent, attribute in final_convs(model):
            old = getattr(parent, attribute)
            setattr(parent, attribute, nn.Conv2d(old.in_channels, num_classes, kernel_size=1))
    else:
        model = torchvision.models.get_model(name, num_classes=num_classes, **extra)
        # MobileNetV3's BatchNorm keeps 1% of each batch's statistics (momentum 0.01, tuned for
        # long ImageNet runs): from random weights its running statistics would still be near
        # their start after hundreds of steps, and the model in eval mode far from the one
        # trained. 0.1, PyTorch's default, follows the training within tens of steps.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
    if in_channels != 3:
        replace_stem(model, in_channels)
    return model


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The parts that --fsdp shards one at a time, so that one part's whole weights are gathered
    at a time (sharded.shard): the U-Net's levels; torchvision's models are one part."""
    if isinstance(model, UNet):
        return [*model.downs, *model.ups]
    return []


def final_convs(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of each 1x1 convolution that outputs the class logits: the last layer
    of the classifier and of the auxiliary classifier; LR-ASPP's two, whose outputs are added."""
    if isinstance(model, torchvision.models.segmentation.LRASPP):
        return [(model.classifier, "low_classifier"), (model.classifier, "high_classifier")]
    heads = [model.classifier, model.aux_classifier]
    return [(head, str(len(head) - 1)) for head in heads if head is not None]
