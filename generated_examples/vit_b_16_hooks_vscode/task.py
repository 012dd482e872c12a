"""The task this project trains: image classification. The one module that knows it.

train.py, predict.py and export.py know nothing of labels, losses or accuracy; they call this:

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
    input_transform(in_channels, image_size) an image file -> a sample's uint8 image (predict)
    EXPORT_FORMATS, describe_io(options), export_metadata(state) for export.py
    class_names(state), add_predict_arguments(parser), Predictions for predict.py

Validation is exact under torchrun: each process validates its own unpadded shard, and the sums
are added up across processes in one all_reduce before metrics() divides them.

Example: label smoothing and top-5 accuracy. Change `criterion`, which training and validation
share, and add a sum and a metric:

    def criterion(logits, labels, reduction="mean"):
        return nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction=...)

    # in validation_sums:
    "top5": (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum(),
    # in metrics:
    "val_top5": sums["top5"].item() / count,

The new metric reaches metrics.jsonl, the trackers, plot.py and compare.py by itself; set
BEST_METRIC = "val_top5" to choose best.pt by it.
"""

import csv
import json

import torch
from torch import nn

import distributed
from image_pipeline import MEAN, STD, Preprocess, image_transform
from options import count

BEST_METRIC, BEST_MODE = "val_acc", "max"
SHOWN = ("val_loss", "val_acc")
COLLATE = None
EXPORT_FORMATS = ("torchscript", "exported", "onnx")


def preprocessor(options: dict, training: bool = False) -> Preprocess:
    """What prepare() applies to a batch of train.py's `options`: with `training`, --augment's
    crops (padded by an eighth of the image) and flips."""
    if training:
        return Preprocess(options["augment"], options["image_size"] // 8, options["channels_last"])
    return Preprocess(channels_last=options["channels_last"])


def prepare(batch, device: torch.device, preprocess: Preprocess):
    """A batch from the loader -> (normalized images, labels) on `device`."""
    images, labels = batch
    images = preprocess(images.to(device, non_blocking=True))
    return images, labels.to(device, non_blocking=True)


def criterion(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)


def loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to minimize, and its named parts to log (none here: it has one)."""
    images, labels = batch
    return criterion(model(images), labels), {}


def validation_sums(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """One batch's share of the validation metrics, as sums."""
    images, labels = batch
    logits = model(images)
    return {
        "loss": criterion(logits, labels, reduction="sum"),
        "correct": (logits.argmax(dim=1) == labels).sum(),
        "count": torch.tensor(labels.numel(), device=labels.device),
    }


def metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    count = max(sums["count"].item(), 1)
    return {"val_loss": sums["loss"].item() / count, "val_acc": sums["correct"].item() / count}


# evaluate() adds up validation_sums over the batches, then over the processes (all_reduce).
accumulate, gather = distributed.add_sums, distributed.all_reduce_sums


def example_input(options: dict, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A batch as the model sees one: random uint8 images through Preprocess."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, options["in_channels"], options["image_size"], options["image_size"])
    return Preprocess()(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))


def inference_model(model: nn.Module) -> nn.Module:
    """The model as predict.py and export.py run it: it already maps images to logits."""
    return model


def input_transform(in_channels: int, image_size: int):
    """An image file's PIL image (RGB, or L for one channel) -> the uint8 tensor of a sample, as
    validation makes it: the shorter side resized, the centre cropped."""
    return image_transform(1 if in_channels == 1 else 3, in_channels, image_size)


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
            "resize": f"shorter side to {size} pixels, then the centre {size}x{size}",
            "scale": "uint8 pixel values / 255, to [0, 1]",
            "mean": [MEAN] * channels,
            "std": [STD] * channels,
            "normalize": "(scaled - mean) / std, per channel",
        },
        "output": {"name": "logits", "shape": ["batch", options["num_classes"]]},
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

DEFAULT_TOP_K = 5
OUTPUT_SUFFIXES = (".csv", ".json")
CSV_COLUMNS = ("path", "rank", "class", "index", "probability")


def add_predict_arguments(parser) -> None:
    parser.add_argument(
        "--top-k",
        type=count(1),
        help=f"classes per image (default: {DEFAULT_TOP_K}, or every class if fewer)",
    )
    parser.add_argument("--output", help="also write the predictions to FILE.csv or FILE.json")


def predict_problem(args) -> str | None:
    """What makes predict.py's task options unable to work."""
    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        return f"--output {args.output}: name a .csv or a .json file (the suffix picks the format)"
    return None


class Predictions:
    """Each image's top-k classes: printed as they come, written to --output at the end."""

    def __init__(self, args, names: list[str]):
        self.names = names
        self.top_k = min(args.top_k or DEFAULT_TOP_K, len(names))
        self.output = args.output
        self.results = []

    def add(self, paths: list[str], logits: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        """One batch: the images' paths, the model's logits, the images' own (width, height)."""
        top = top_classes(logits, self.top_k, self.names)
        for path, predictions in zip(paths, top, strict=True):
            self.results.append({"path": path, "predictions": predictions})
            print(format_line(self.results[-1]))

    def close(self) -> list[dict]:
        if self.output:
            write_predictions(self.output, self.results)
            print(f"wrote {len(self.results)} predictions to {self.output}")
        return self.results


def top_classes(logits: torch.Tensor, top_k: int, names: list[str]) -> list[list[dict]]:
    """Per image, the `top_k` most likely classes with their probabilities, most likely first."""
    top = logits.float().softmax(dim=1).topk(top_k, dim=1)
    return [
        [
            {"class": names[label], "index": label, "probability": probability}
            for label, probability in zip(labels, probabilities, strict=True)
        ]
        for labels, probabilities in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


def format_line(result: dict) -> str:
    classes = ", ".join(f"{p['class']} {p['probability']:.4f}" for p in result["predictions"])
    return f"{result['path']}: {classes}"


def write_predictions(path: str, results: list[dict]) -> None:
    """JSON: the results as predict.main() returns them. CSV: one row per image and rank."""
    with open(path, "w", newline="") as file:
        if path.lower().endswith(".json"):
            json.dump(results, file, indent=2)
            return
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            for rank, prediction in enumerate(result["predictions"], start=1):
                row = (prediction["class"], prediction["index"], prediction["probability"])
                writer.writerow((result["path"], rank, *row))
