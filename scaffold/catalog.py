"""What a user can choose. Plain data: importing this module must stay cheap (no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "custom" (defined in the generated model.py) or "torchvision"
    min_image_size: int
    description: str
    patch_size: int | None = None  # image_size must be a multiple of this

    def image_size_problem(self, image_size: int) -> str | None:
        """Why `image_size` cannot work for this model, or None when it can."""
        if image_size < self.min_image_size:
            return (
                f"model {self.name} needs --image-size of at least {self.min_image_size}, "
                f"got {image_size}"
            )
        if self.patch_size and image_size % self.patch_size:
            return (
                f"model {self.name} cuts images into {self.patch_size}x{self.patch_size} "
                f"patches: --image-size must be a multiple of {self.patch_size}, got {image_size}"
            )
        return None


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("lenet", "custom", 16, "LeNet-5 style CNN, 62k parameters"),
        ModelSpec("mlp", "custom", 1, "two hidden layers over flattened pixels"),
        ModelSpec("resnet18", "torchvision", 32, "ResNet-18, 11M parameters"),
        ModelSpec("resnet34", "torchvision", 32, "ResNet-34, 21M parameters"),
        ModelSpec("resnet50", "torchvision", 32, "ResNet-50, 24M parameters"),
        ModelSpec("mobilenet_v3_small", "torchvision", 32, "MobileNetV3-Small, 1.5M parameters"),
        ModelSpec("efficientnet_b0", "torchvision", 32, "EfficientNet-B0, 4M parameters"),
        ModelSpec("convnext_tiny", "torchvision", 32, "ConvNeXt-Tiny, 28M parameters"),
        ModelSpec("vit_b_16", "torchvision", 16, "ViT-B/16, 86M parameters", patch_size=16),
    ]
}

DATASETS: dict[str, str] = {
    "fake": "torchvision FakeData, deterministic by seed (no files needed)",
    "folder": "an ImageFolder tree at --data-dir (one subfolder per class)",
    "cifar10": "CIFAR-10 from --data-dir (--download to fetch it)",
    "mnist": "MNIST from --data-dir (--download to fetch it)",
}

DEFAULT_MODEL = "resnet18"
DEFAULT_DATASET = "fake"
