"""The task this project trains: semantic segmentation, one class per pixel. The one module that
knows it.

train.py, predict.py and export.py know nothing of masks, losses or IoU; they call this:

    BEST_METRIC, BEST_MODE     the validation metric that chooses best.pt, and "max" or "min"
    SHOWN                      the metrics printed on each epoch's line
    COLLATE                    how samples become a batch (None: stacked); the data sets
                               themselves are in dataset.py
    preprocessor(options, training) what prepare() applies on the device (augments in training)
    prepare(batch, device, preprocess) -> (inputs, targets) on the device, augmented together
    loss(model, batch)         -> (loss, parts): the training loss, the one definition of it
    validation_sums(model, batch) -> {name: tensor}, added up over every batch and process
    accumulate(totals, sums), gather(totals) how evaluate() adds them up over batches, then
                               over processes
    metrics(sums)              -> {name: number}, from the sums of the whole validation set
    example_input(options, batch_size) a normalized batch the model takes (summary, export)
    inference_model(model)     the model as predict.py and export.py run it: images -> tensor
    EXPORT_FORMATS, describe_io(options), export_metadata(state) for export.py
    class_names(state), add_predict_arguments(parser), Predictions for predict.py

A batch is (images, masks): masks (batch, size, size) of class indices, IGNORE_INDEX (255) where
no loss or metric counts (unlabelled pixels, the padding of augmentation crops). The loss is
per-pixel cross-entropy; torchvision's models with an auxiliary head add 0.5 x its cross-entropy,
as torchvision's reference training does, and log both terms (loss_out, loss_aux). The metrics
come from one confusion matrix of the whole validation set: mean IoU over the classes that occur
in the targets or the predictions, pixel accuracy, and each class's IoU (val_iou/<class index>).

Validation is exact under torchrun: each process validates its own unpadded shard, and the sums
(the confusion matrix too) are added up across processes in one all_reduce before metrics()
divides them.

Example: a Dice term in the loss, and the mean Dice score as a metric. Add the term where the
loss's parts are made, which training and validation share, give it a weight, and compute the
metric from the confusion matrix (no new sum needed):

    LOSS_WEIGHTS = {"out": 1.0, "aux": 0.5, "dice": 1.0}

    # in loss_parts, before the return:
    probabilities = main_output(outputs).float().softmax(dim=1)
    valid = masks != IGNORE_INDEX
    one_hot = nn.functional.one_hot(masks.where(valid, 0), probabilities.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2) * valid[:, None]
    overlap = (probabilities * one_hot).sum(dim=(0, 2, 3))
    total = (probabilities * valid[:, None]).sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    parts["dice"] = 1 - (2 * overlap / total.clamp(min=1)).mean()
    if reduction == "sum":  # validation adds up per-pixel sums: keep val_loss a per-pixel mean
        parts["dice"] = parts["dice"] * valid.sum()

    # in metrics:
    "val_dice": (2 * true / (predicted + actual).clamp(min=1))[present].mean().item(),

The new term is logged as loss_dice on each step line; the new metric reaches metrics.jsonl, the
trackers, plot.py and compare.py by itself; set BEST_METRIC = "val_dice" to choose best.pt by it.
"""

import json
import os
import sys

import numpy
import torch
from PIL import Image
from torch import nn

import dataset
import distributed
from image_pipeline import IGNORE_INDEX, MEAN, STD, Preprocess

BEST_METRIC, BEST_MODE = "val_miou", "max"
SHOWN = ("val_loss", "val_miou", "val_pixel_acc")
COLLATE = None
EXPORT_FORMATS = ("torchscript", "exported", "onnx")
# The weight of each part of the loss: the main output's cross-entropy, and the auxiliary head's
# (torchvision's fcn and deeplabv3 models) as in torchvision's reference training.
LOSS_WEIGHTS = {"out": 1.0, "aux": 0.5}


def preprocessor(options: dict, training: bool = False) -> Preprocess:
    """What prepare() applies to a batch of train.py's `options`: with `training`, --augment's
    crops (padded by an eighth of the image) and flips."""
    if training:
        return Preprocess(options["augment"], options["image_size"] // 8, options["channels_last"])
    return Preprocess(channels_last=options["channels_last"])


def prepare(batch, device: torch.device, preprocess: Preprocess):
    """A batch from the loader -> (normalized images, int64 masks) on `device`, augmented
    together. (Masks from the --cache arrays are uint8: an eighth of the bytes to move.)"""
    images, masks = batch
    images = images.to(device, non_blocking=True)
    return preprocess(images, masks.to(device, non_blocking=True).long())


def main_output(outputs) -> torch.Tensor:
    """The logits (batch, classes, height, width) of a model's output: torchvision's models
    return {"out": logits, "aux": logits of the auxiliary head}, the U-Net the logits alone."""
    return outputs["out"] if isinstance(outputs, dict) else outputs


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy over the pixels that are not IGNORE_INDEX: their sum ("sum") or mean (0 for
    a batch with none, where cross_entropy's own mean would be NaN)."""
    summed = nn.functional.cross_entropy(
        logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if reduction == "sum":
        return summed
    return summed / (masks != IGNORE_INDEX).sum().clamp(min=1)


def loss_parts(outputs, masks: torch.Tensor, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """Each term of the loss, unweighted: "out" (and "aux" for a model with an auxiliary head)."""
    heads = outputs if isinstance(outputs, dict) else {"out": outputs}
    parts = {name: pixel_cross_entropy(logits, masks, reduction) for name, logits in heads.items()}
    return parts


def criterion(outputs, masks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The loss: the parts weighted by LOSS_WEIGHTS. reduction "sum": summed over the pixels that
    count (validation divides by their number), "mean": averaged over them."""
    return weighted(loss_parts(outputs, masks, reduction))


def weighted(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(LOSS_WEIGHTS[name] * part for name, part in parts.items())


def loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to minimize, and its named parts to log (none when it has only one)."""
    images, masks = batch
    parts = loss_parts(model(images), masks)
    return weighted(parts), parts if len(parts) > 1 else {}


def validation_sums(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """One batch's share of the validation metrics, as sums: the loss over the pixels that count,
    their number, and the confusion matrix (row: target class, column: predicted class) of the
    main output."""
    images, masks = batch
    outputs = model(images)
    logits = main_output(outputs)
    classes = logits.shape[1]
    valid = masks != IGNORE_INDEX
    pairs = masks[valid] * classes + logits.argmax(dim=1)[valid]
    return {
        "loss": criterion(outputs, masks, reduction="sum"),
        "pixels": valid.sum(),
        "confusion": torch.bincount(pairs, minlength=classes * classes).view(classes, classes),
    }


def metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """val_loss per pixel; val_miou: the mean IoU of the classes that occur (in the targets or the
    predictions); val_pixel_acc; and val_iou/<class index> of each class that occurs."""
    confusion = sums["confusion"].double()
    true = confusion.diagonal()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    union = predicted + actual - true
    present = union > 0
    iou = true / union.clamp(min=1)
    results = {
        "val_loss": sums["loss"].item() / max(sums["pixels"].item(), 1),
        "val_miou": iou[present].mean().item() if present.any() else 0.0,
        "val_pixel_acc": true.sum().item() / max(confusion.sum().item(), 1),
    }
    for index in present.nonzero().flatten().tolist():
        results[f"val_iou/{index}"] = iou[index].item()
    return results


# evaluate() adds up validation_sums over the batches, then over the processes (all_reduce).
accumulate, gather = distributed.add_sums, distributed.all_reduce_sums


def example_input(options: dict, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A batch as the model sees one: random uint8 images through Preprocess."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, options["in_channels"], options["image_size"], options["image_size"])
    return Preprocess()(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))


class MainOutput(nn.Module):
    """A segmentation model that returns the main output's logits alone, as a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.model(images)
        # torch.jit.isinstance, unlike isinstance, is one that TorchScript can compile.
        if torch.jit.isinstance(outputs, dict[str, torch.Tensor]):
            return outputs["out"]
        return outputs


def inference_model(model: nn.Module) -> nn.Module:
    """The model as predict.py and export.py run it: images -> logits (batch, classes, height,
    width), without torchvision's dict and its auxiliary output; in the mode `model` is in."""
    return MainOutput(model).train(model.training)


def input_transform(in_channels: int, image_size: int):
    """An image file's PIL image -> the uint8 tensor a sample's image is (dataset.py): resized to
    the square without a crop, so that a predicted mask resized back lies on the image."""
    return dataset.input_transform(in_channels, image_size)


def describe_io(options: dict) -> dict:
    """What an exported model takes and returns (export.py's metadata): how its input is made
    from an image, and the shape of its logits. A name in a shape ("batch") is a dimension of
    any size."""
    channels, size = options["in_channels"], options["image_size"]
    return {
        "input": {
            "name": "images",
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "image_mode": "L" if channels == 1 else "RGB",
            "resize": f"to {size}x{size} (no crop), bilinear",
            "scale": "uint8 pixel values / 255, to [0, 1]",
            "mean": [MEAN] * channels,
            "std": [STD] * channels,
            "normalize": "(scaled - mean) / std, per channel",
        },
        "output": {"name": "logits", "shape": ["batch", options["num_classes"], size, size]},
    }


def export_metadata(state: dict) -> dict:
    """What export.py's metadata says of checkpoint `state` besides its input and output: the
    classes, by name, and the shape of the images."""
    options = state["args"]
    return {
        "class_names": class_names(state),
        "num_classes": options["num_classes"],
        "image_size": options["image_size"],
        "in_channels": options["in_channels"],
    }


def class_names(state: dict) -> list[str]:
    """The checkpoint's names of the classes, in label order; the class indices where it has
    none (a FakeData run) or not one per class."""
    classes = state["args"]["num_classes"]
    names = state.get("class_names")
    if names is None or len(names) != classes:
        return [str(index) for index in range(classes)]
    return [str(name) for name in names]


# ---- predict.py --------------------------------------------------------------------------------

DEFAULT_OUTPUT = "predictions"
RECORDS_FILE = "predictions.jsonl"


def add_predict_arguments(parser) -> None:
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help=f"the folder for the masks (FOLDER/NAME.png, palette PNGs of class indices, each "
        f"the size of its image) and {RECORDS_FILE}; created if missing",
    )


def predict_problem(args) -> str | None:
    """What makes predict.py's task options unable to work."""
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        return f"--output {args.output} is a file: name a folder for the masks"
    return None


def palette() -> list[int]:
    """Pascal VOC's colour map: class 0 black, then distinct colours; 255 (ignore) light."""
    colours = []
    for index in range(256):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        colours += [red, green, blue]
    return colours


class Predictions:
    """Each image's mask: written to FOLDER/NAME.png as it comes, the size of the image, with a
    JSON line printed for it; every line also goes to FOLDER/predictions.jsonl at the end."""

    def __init__(self, args, names: list[str]):
        self.names = names
        self.folder = args.output
        os.makedirs(self.folder, exist_ok=True)
        # A palette holds 256 colours: more classes are written as 16-bit grayscale PNGs.
        self.palette = palette() if len(names) <= 256 else None
        self.taken: set[str] = set()
        self.results = []

    def add(self, paths: list[str], logits: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        """One batch: the images' paths, the model's logits, the images' own (width, height)."""
        classes = logits.argmax(dim=1).cpu()
        for path, mask, size in zip(paths, classes, sizes, strict=True):
            image = mask_image(mask, self.palette).resize(size, Image.Resampling.NEAREST)
            output = os.path.join(self.folder, self.file_name(path))
            image.save(output)
            counts = numpy.bincount(numpy.asarray(image).ravel(), minlength=len(self.names))
            fractions = {
                self.names[index]: round(count / counts.sum(), 6)
                for index, count in enumerate(counts.tolist())
                if count
            }
            self.results.append({"path": path, "mask": output, "pixel_fraction": fractions})
            print(json.dumps(self.results[-1]))

    def file_name(self, path: str) -> str:
        """NAME.png for an image NAME.ext; NAME-2.png, NAME-3.png, ... for later images of the same
        name (from other folders, or other extensions), so that no mask overwrites another."""
        stem = os.path.splitext(os.path.basename(path))[0]
        name, number = f"{stem}.png", 1
        while name.lower() in self.taken:  # lower: on some file systems A.png is a.png
            number += 1
            name = f"{stem}-{number}.png"
        self.taken.add(name.lower())
        return name

    def close(self) -> list[dict]:
        path = os.path.join(self.folder, RECORDS_FILE)
        with open(path, "w") as file:
            file.writelines(json.dumps(result) + "\n" for result in self.results)
        masks = f"{len(self.results)} mask{'' if len(self.results) == 1 else 's'}"
        print(f"wrote {masks} and {path}", file=sys.stderr)
        return self.results


def mask_image(mask: torch.Tensor, colours: list[int] | None) -> Image.Image:
    """A (height, width) tensor of class indices as a palette image of `colours`; without them
    a 16-bit grayscale one."""
    if colours is None:
        return Image.fromarray(mask.numpy().astype(numpy.uint16))
    image = Image.fromarray(mask.numpy().astype(numpy.uint8))
    image.putpalette(colours)
    return image
