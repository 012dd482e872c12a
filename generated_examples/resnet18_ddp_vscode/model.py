"""Classification models: small custom networks and torchvision's, adapted to any class count and
channel count. model_from_options() is what train.py, predict.py and export.py call."""

import torch
import torchvision
from torch import nn

from finetune import ModelError, pretrained_state_dict, replace_stem


class LeNet(nn.Module):
    """LeNet-5 as in the PyTorch CIFAR-10 tutorial, sized for any input channels and image size."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        feature_size = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * feature_size * feature_size, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    """Two hidden layers over the flattened image: the simplest baseline."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden: int = 256):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.flatten(x)))
        x = torch.relu(self.fc2(x))
        return self.head(x)


def init_weights(model: nn.Module) -> None:
    """Kaiming init for conv and hidden layers; a small head, so the first loss is ~ln(classes)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    nn.init.normal_(layers[-1].weight, std=0.01)


CUSTOM_MODELS = {"lenet": LeNet, "mlp": MLP}
TORCHVISION_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
]
MODEL_NAMES = [*CUSTOM_MODELS, *TORCHVISION_MODELS]

# The smallest --image-size each model takes (torchvision's: as scaffold's catalog says), and the
# patch size the image size must be a multiple of.
MIN_IMAGE_SIZES = {"lenet": 16, "mlp": 1, "vit_b_16": 16}
PATCH_SIZES = {"vit_b_16": 16}


def model_image_size_problem(name: str, image_size: int) -> str | None:
    """Why model `name` cannot take images of `image_size` pixels, or None when it can."""
    smallest = MIN_IMAGE_SIZES.get(name, 32 if name in TORCHVISION_MODELS else 1)
    if image_size < smallest:
        return f"--model {name} needs --image-size of at least {smallest}, got {image_size}"
    patch = PATCH_SIZES.get(name)
    if patch and image_size % patch:
        return f"--model {name} needs an --image-size divisible by {patch}, got {image_size}"
    return None


# The classifier head of each model, by parameter-name prefix: replaced for a new class count,
# trained when the backbone is frozen.
HEADS = {
    "lenet": "fc3",
    "mlp": "head",
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
    "vit_b_16": "heads.head",
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
    extra = {"image_size": image_size} if name.startswith("vit") else {}
    if weights:
        model = torchvision.models.get_model(name, **extra)
        model.load_state_dict(pretrained_state_dict(name, weights))
        replace_head(model, name, num_classes)
    else:
        if name.startswith("resnet"):
            extra["zero_init_residual"] = True  # each residual block starts as the identity
        model = torchvision.models.get_model(name, num_classes=num_classes, **extra)
    # A small head starts the loss near ln(num_classes) (the default init of some heads starts
    # far from it); not a zero one, which would send the backbone no gradient on the first step.
    head = model.get_submodule(HEADS[name])
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    if in_channels != 3:
        replace_stem(model, in_channels)
    return model


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The parts that --fsdp shards one at a time, so that one part's whole weights are gathered
    at a time (sharded.shard): ViT's encoder layers, ResNet's four stages, the stages of
    `features` (ConvNeXt, EfficientNet, MobileNet, VGG). A model without them (lenet, mlp, one of
    your own) is one part."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return list(model.encoder.layers)
    stages = [getattr(model, f"layer{number}", None) for number in range(1, 5)]
    if all(stage is not None for stage in stages):
        return stages
    features = getattr(model, "features", None)
    return list(features) if isinstance(features, nn.Sequential) else []


def replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    parent_name, _, attribute = HEADS[name].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))
