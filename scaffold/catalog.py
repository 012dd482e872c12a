"""What a user can choose. Plain data: importing this module must stay cheap (no torch).

A project learns one task (`scaffold new --task`); each task has its own models and datasets and
its own default of each. Model names are unique across tasks, so MODELS maps a name to its spec;
dataset names are not (every task has `synthetic`, and two have `folder`, which mean different
files), so a dataset is named by its task and its name.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
DETECTION = "detection"
LM = "lm"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    default_model: str
    default_dataset: str
    images: bool = True  # False: no image options (--image-size, --in-channels, --num-classes)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            CLASSIFICATION,
            "one class per image: cross-entropy over the logits, top-1 accuracy",
            "resnet18",
            "fake",
        ),
        TaskSpec(
            SEGMENTATION,
            "one class per pixel: per-pixel cross-entropy, pixel accuracy and mean IoU",
            "unet",
            "synthetic",
        ),
        TaskSpec(
            DETECTION,
            "boxes and their classes: the detector's own losses, COCO mAP",
            "tiny_rcnn",
            "synthetic",
        ),
        TaskSpec(
            LM,
            "the next token of text: cross-entropy, perplexity and bits per byte",
            "gpt_mini",
            "synthetic",
            images=False,
        ),
    ]
}
DEFAULT_TASK = CLASSIFICATION


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # a key of TASKS
    source: str  # "custom" (defined in the generated model.py) or "torchvision"
    min_image_size: int
    description: str
    patch_size: int | None = None  # image_size must be a multiple of this (ViT patches)
    # image_size must be a multiple of this: an encoder-decoder that halves the resolution
    # log2(stride) times and doubles it back, joining each level to its skip connection.
    stride: int | None = None
    # Another size of this model: the same code with other numbers (gpt_mini of gpt_tiny).
    size_of: str | None = None

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
        if self.stride and image_size % self.stride:
            halvings = self.stride.bit_length() - 1
            return (
                f"model {self.name} halves the resolution {halvings} times and doubles it back: "
                f"--image-size must be a multiple of {self.stride}, got {image_size}"
            )
        return None

    @property
    def size_multiple(self) -> int | None:
        """What image_size must be a multiple of, if anything."""
        return self.patch_size or self.stride


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("lenet", CLASSIFICATION, "custom", 16, "LeNet-5 style CNN, 62k parameters"),
        ModelSpec("mlp", CLASSIFICATION, "custom", 1, "two hidden layers over flattened pixels"),
        ModelSpec("resnet18", CLASSIFICATION, "torchvision", 32, "ResNet-18, 11M parameters"),
        ModelSpec("resnet34", CLASSIFICATION, "torchvision", 32, "ResNet-34, 21M parameters"),
        ModelSpec("resnet50", CLASSIFICATION, "torchvision", 32, "ResNet-50, 24M parameters"),
        ModelSpec(
            "mobilenet_v3_small",
            CLASSIFICATION,
            "torchvision",
            32,
            "MobileNetV3-Small, 1.5M parameters",
        ),
        ModelSpec(
            "efficientnet_b0", CLASSIFICATION, "torchvision", 32, "EfficientNet-B0, 4M parameters"
        ),
        ModelSpec(
            "convnext_tiny", CLASSIFICATION, "torchvision", 32, "ConvNeXt-Tiny, 28M parameters"
        ),
        ModelSpec(
            "vit_b_16",
            CLASSIFICATION,
            "torchvision",
            16,
            "ViT-B/16, 86M parameters",
            patch_size=16,
        ),
        ModelSpec(
            "unet",
            SEGMENTATION,
            "custom",
            16,
            "a small U-Net of our own, for CPU work",
            stride=8,
        ),
        ModelSpec(
            "lraspp_mobilenet_v3_large",
            SEGMENTATION,
            "torchvision",
            32,
            "LR-ASPP MobileNetV3-Large, 3.2M parameters",
        ),
        ModelSpec(
            "deeplabv3_mobilenet_v3_large",
            SEGMENTATION,
            "torchvision",
            32,
            "DeepLabV3 MobileNetV3-Large, 11.0M parameters",
        ),
        ModelSpec(
            "fcn_resnet50", SEGMENTATION, "torchvision", 32, "FCN ResNet-50, 32.9M parameters"
        ),
        ModelSpec(
            "deeplabv3_resnet50",
            SEGMENTATION,
            "torchvision",
            32,
            "DeepLabV3 ResNet-50, 39.6M parameters",
        ),
        ModelSpec(
            "tiny_rcnn",
            DETECTION,
            "custom",
            32,
            "a small Faster R-CNN of our own (four convolutions), 0.25M parameters, for CPU work",
        ),
        ModelSpec(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            DETECTION,
            "torchvision",
            32,
            "Faster R-CNN MobileNetV3-Large 320 FPN, 19.0M parameters",
        ),
        ModelSpec(
            "fasterrcnn_resnet50_fpn_v2",
            DETECTION,
            "torchvision",
            32,
            "Faster R-CNN ResNet-50 FPN v2, 43.3M parameters",
        ),
        ModelSpec(
            "retinanet_resnet50_fpn_v2",
            DETECTION,
            "torchvision",
            32,
            "RetinaNet ResNet-50 FPN v2, 36.5M parameters",
        ),
        ModelSpec(
            "fcos_resnet50_fpn",
            DETECTION,
            "torchvision",
            32,
            "FCOS ResNet-50 FPN, 32.1M parameters",
        ),
        ModelSpec(
            "ssdlite320_mobilenet_v3_large",
            DETECTION,
            "torchvision",
            32,
            "SSDlite320 MobileNetV3-Large (always 320x320), 2.3M parameters",
        ),
        # Language models take no images: min_image_size 0 is never checked (TaskSpec.images).
        ModelSpec("gpt_tiny", LM, "custom", 0, "GPT, 2 layers of 64, 121k parameters (tests)"),
        ModelSpec(
            "gpt_mini", LM, "custom", 0, "GPT, 4 layers of 256, 3.3M parameters", size_of="gpt_tiny"
        ),
        ModelSpec(
            "gpt_small",
            LM,
            "custom",
            0,
            "GPT, 6 layers of 384, 10.8M parameters",
            size_of="gpt_tiny",
        ),
        ModelSpec(
            "gpt2",
            LM,
            "custom",
            0,
            "GPT-2 small's shape, 12 layers of 768, 86M parameters",
            size_of="gpt_tiny",
        ),
    ]
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # a key of TASKS
    description: str


DATASET_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "fake", CLASSIFICATION, "torchvision FakeData, deterministic by seed (no files needed)"
    ),
    DatasetSpec(
        "synthetic",
        CLASSIFICATION,
        "shapes drawn in code, one class per shape kind; seeded and learnable, no files",
    ),
    DatasetSpec(
        "folder", CLASSIFICATION, "an ImageFolder tree at --data-dir (one subfolder per class)"
    ),
    DatasetSpec("cifar10", CLASSIFICATION, "CIFAR-10 from --data-dir (--download to fetch it)"),
    DatasetSpec("mnist", CLASSIFICATION, "MNIST from --data-dir (--download to fetch it)"),
    DatasetSpec(
        "synthetic",
        SEGMENTATION,
        "shapes drawn in code on a background, with their masks; seeded, learnable, no files",
    ),
    DatasetSpec(
        "folder",
        SEGMENTATION,
        "DATA_DIR/train/images + train/masks (+ val/...): PNG class-index masks with the same "
        "stem, 255 = ignore",
    ),
    DatasetSpec(
        "voc", SEGMENTATION, "Pascal VOC 2012 layout read from a local folder (no download)"
    ),
    DatasetSpec(
        "synthetic",
        DETECTION,
        "shapes drawn in code with their boxes (some images have none); seeded, learnable",
    ),
    DatasetSpec(
        "coco",
        DETECTION,
        "the COCO layout read from --data-dir: train/ and val/ image folders with "
        "annotations/instances_train.json and instances_val.json (no download)",
    ),
    DatasetSpec("synthetic", LM, "a seeded synthetic language drawn in code: learnable, no files"),
    DatasetSpec(
        "text",
        LM,
        "text files at --data-dir: train.txt and val.txt, a folder of files, or one file",
    ),
)

# Every dataset name of every task, each once, in the order above (the choices of copier.yml).
DATASETS: tuple[str, ...] = tuple(dict.fromkeys(spec.name for spec in DATASET_SPECS))


def task_models(task: str) -> dict[str, ModelSpec]:
    """{name: spec} of the models of `task`, in catalog order (empty for an unknown task)."""
    return {name: spec for name, spec in MODELS.items() if spec.task == task}


def task_datasets(task: str) -> dict[str, DatasetSpec]:
    """{name: spec} of the datasets of `task`, in catalog order (empty for an unknown task)."""
    return {spec.name: spec for spec in DATASET_SPECS if spec.task == task}


def dataset_tasks(dataset: str) -> list[str]:
    """The tasks that have a dataset called `dataset`, in TASKS order."""
    return [task for task in TASKS if dataset in task_datasets(task)]
