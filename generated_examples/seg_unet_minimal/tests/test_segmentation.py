"""Segmentation: the synthetic masks lie on their shapes, augmentation moves masks with images,
the IoU metrics are exact (across batches and processes too), a short run learns, the folder
dataset's mistakes are one line each, and predict.py and export.py work on a trained U-Net."""

import json
import shutil

import numpy
import pytest
import torch
import torchvision
from conftest import read_metrics, run_train, tiny_args, train_fails
from PIL import Image
from torch import nn

import checkpoint
import dataset
import export
import finetune
import predict
import task
import train
from model import build_model
from options import parse_args
from pipeline import IGNORE_INDEX, DatasetError, Preprocess, ShardedSampler

CLASSES = 3  # background and two shape kinds: a run of seconds learns them


def options(*extra: str):
    """train.py's options for the synthetic shapes (later options override earlier ones)."""
    return parse_args(
        ["--dataset=synthetic", "--model=unet", "--image-size=32", "--synthetic-size=8", *extra]
    )


# ---- data --------------------------------------------------------------------------------------


def test_synthetic_samples_are_seeded_and_their_masks_lie_on_the_shapes():
    train_set, val_set = dataset.build_datasets(options("--num-classes=5"))
    assert (len(train_set), len(val_set)) == (8, 2)
    for index in range(len(train_set)):
        image, mask = train_set[index]
        again_image, again_mask = train_set[index]
        assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert mask.shape == (32, 32) and mask.dtype == torch.int64
        kinds = set(mask.unique().tolist()) - {0}
        assert kinds and kinds <= {1, 2, 3, 4}
        # Shape colours are at least 0.35 x 0.8 of full scale in every channel; the background
        # noise at most 0.25: every pixel's class shows in the image.
        assert image[:, mask > 0].min() >= 71
        assert image[:, mask == 0].max() <= 64
    assert not torch.equal(train_set[0][0], val_set[0][0])
    assert dataset.class_names(train_set) == ["background", "shape1", "shape2", "shape3", "shape4"]


def test_augmentation_moves_each_mask_with_its_image():
    torch.manual_seed(0)
    count, size = 32, 16
    images = torch.full((count, 3, size, size), 100, dtype=torch.uint8)
    masks = torch.zeros(count, size, size, dtype=torch.int64)
    # An L-shaped marker of class 1, which any crop or flip moves visibly and never cuts off
    # (padding 4): a vertical arm 7 pixels high and a horizontal foot 2 pixels thick.
    for marker in (images[:, :, 5:12, 5:7], images[:, :, 10:12, 5:10]):
        marker.fill_(255)
    masks[images[:, 0] == 255] = 1
    augmented, moved = Preprocess(augment=True, padding=4)(images, masks)
    assert moved.dtype == torch.int64 and moved.shape == masks.shape
    # Normalized: the marker is 1, the background 100 / 127.5 - 1, the padding (0) -1.
    assert torch.equal(moved == 1, augmented[:, 0] == 1)
    assert torch.equal(moved == IGNORE_INDEX, augmented[:, 0] == -1)
    assert (moved == IGNORE_INDEX).any(), "no crop reached the padding"
    flipped, corners = [], set()
    for mask in moved:
        per_column = (mask == 1).sum(dim=0)
        columns = per_column.nonzero().flatten()
        assert per_column.sum() == 7 * 2 + 2 * 3 and per_column.max() == 7  # whole
        flipped.append(per_column[columns.max()].item() == 7)  # the arm on the right
        corners.add(((mask == 1).any(dim=1).nonzero().min().item(), columns.min().item()))
    assert any(flipped) and not all(flipped)
    assert len(corners) > 5, "the crops hardly move the images"


class Fixed(nn.Module):
    """A stand-in model that returns the logits it was given (and an auxiliary output)."""

    def __init__(self, logits: torch.Tensor, aux: torch.Tensor | None = None):
        super().__init__()
        self.logits, self.aux = logits, aux

    def forward(self, images: torch.Tensor):
        if self.aux is None:
            return self.logits
        return {"out": self.logits, "aux": self.aux}


def one_hot_logits(classes: torch.Tensor, count: int) -> torch.Tensor:
    return nn.functional.one_hot(classes, count).permute(0, 3, 1, 2).float() * 10


def test_the_metrics_of_a_hand_made_batch_are_exact():
    masks = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    sums = task.validation_sums(Fixed(one_hot_logits(predicted, 4)), (None, masks))
    # Rows: target class; columns: predicted class; the ignored pixel is not counted.
    assert sums["confusion"].tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert sums["pixels"].item() == 7
    metrics = task.metrics(sums)
    # IoU = true / (predicted + actual - true): class 0 2/4, class 1 2/3, class 2 1/2; class 3
    # occurs nowhere, and counts for nothing.
    assert metrics["val_iou/0"] == pytest.approx(2 / 4)
    assert metrics["val_iou/1"] == pytest.approx(2 / 3)
    assert metrics["val_iou/2"] == pytest.approx(1 / 2)
    assert "val_iou/3" not in metrics
    assert metrics["val_miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert metrics["val_pixel_acc"] == pytest.approx(5 / 7)
    expected_loss = nn.functional.cross_entropy(
        one_hot_logits(predicted, 4), masks, ignore_index=IGNORE_INDEX
    )
    assert metrics["val_loss"] == pytest.approx(expected_loss.item())


def test_an_auxiliary_head_adds_half_its_loss_and_is_logged_apart():
    masks = torch.tensor([[[0, 1], [1, 255]]])
    out, aux = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    loss, parts = task.loss(Fixed(out, aux), (None, masks))
    expected = {
        name: nn.functional.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        for name, logits in (("out", out), ("aux", aux))
    }
    assert parts.keys() == {"out", "aux"}
    assert parts["out"].item() == pytest.approx(expected["out"].item())
    assert loss.item() == pytest.approx((expected["out"] + 0.5 * expected["aux"]).item())
    sums = task.validation_sums(Fixed(out, aux), (None, masks))
    assert sums["loss"].item() == pytest.approx(3 * loss.item())  # summed over 3 pixels
    assert task.loss(Fixed(out), (None, masks))[1] == {}
    assert torch.equal(task.inference_model(Fixed(out, aux))(None), out)


def test_validation_sums_of_batches_and_shards_equal_one_pass():
    """9 samples: batches of 4, 4 and 1, and two processes' unpadded shards of 5 and 4, add up
    to the metrics of one batch of all 9."""
    args = options("--num-classes=4", "--synthetic-size=36")
    _, val_set = dataset.build_datasets(args)
    assert len(val_set) == 9
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, kernel_size=1).eval()  # per pixel: no sum depends on the batch
    preprocess = Preprocess()

    def sums_of(indices, batch_size):
        totals = {}
        for start in range(0, len(indices), batch_size):
            samples = [val_set[i] for i in indices[start : start + batch_size]]
            batch = tuple(torch.stack(items) for items in zip(*samples, strict=True))
            with torch.no_grad():
                sums = task.validation_sums(model, task.prepare(batch, "cpu", preprocess))
            for name, value in sums.items():
                totals[name] = totals.get(name, 0) + value.double()
        return totals

    one_pass = task.metrics(sums_of(list(range(9)), 9))
    batched = task.metrics(sums_of(list(range(9)), 4))
    shards = [list(ShardedSampler(9, False, rank=r, world_size=2, pad=False)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(9))
    shard_sums = [sums_of(shard, 4) for shard in shards]
    sharded = task.metrics(
        {name: shard_sums[0][name] + shard_sums[1][name] for name in shard_sums[0]}
    )
    for metrics in (batched, sharded):
        assert metrics.keys() == one_pass.keys()
        # The counts are exact; the float32 loss sums are added in another order.
        assert {k: v for k, v in metrics.items() if k != "val_loss"} == {
            k: v for k, v in one_pass.items() if k != "val_loss"
        }
        assert metrics["val_loss"] == pytest.approx(one_pass["val_loss"], rel=1e-6)


# ---- a short run that learns -------------------------------------------------------------------

TRAINED_OPTIONS = (
    "--model=unet", f"--num-classes={CLASSES}", "--image-size=32", "--synthetic-size=160",
    "--batch-size=16", "--epochs=3", "--optimizer=adamw", "--lr=3e-3", "--log-every=5",
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A U-Net trained for 30 steps on synthetic shapes: its run folder."""
    run = tmp_path_factory.mktemp("segmentation") / "run"
    run_train(run, *TRAINED_OPTIONS)
    return run


def background_only_miou(args) -> float:
    """The mean IoU of a model that predicts background everywhere, on the validation set."""
    _, val_set = dataset.build_datasets(args)
    masks = torch.stack([val_set[i][1] for i in range(len(val_set))])
    present = len(masks.unique())
    return (masks == 0).float().mean().item() / present


def test_a_short_run_learns_the_shapes(trained):
    epochs = [line for line in read_metrics(trained) if line["kind"] == "epoch"]
    assert len(epochs) == 3
    trivial = background_only_miou(options(*TRAINED_OPTIONS))
    assert epochs[-1]["val_miou"] > trivial + 0.25, (epochs[-1], trivial)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert {f"val_iou/{index}" for index in range(CLASSES)} <= epochs[-1].keys()


def test_best_pt_is_the_epoch_of_the_highest_miou(trained, capsys):
    epochs = [line for line in read_metrics(trained) if line["kind"] == "epoch"]
    best = max(epochs, key=lambda line: line["val_miou"])  # the first of equals
    state = checkpoint.load_checkpoint(trained / "best.pt")
    assert state["progress"]["best"] == best["val_miou"]
    assert state["progress"]["epoch"] == best["epoch"]
    evaluated = train.main(
        tiny_args(trained, *TRAINED_OPTIONS, "--eval-only", f"--resume={trained / 'best.pt'}")
    )
    assert evaluated == pytest.approx({k: v for k, v in best.items() if k.startswith("val_")})


def test_a_model_with_an_auxiliary_head_logs_both_losses(tmp_path):
    run_train(
        tmp_path / "run", "--model=deeplabv3_mobilenet_v3_large", "--synthetic-size=16",
        "--max-steps=1", "--in-channels=1", "--image-size=32",
    )  # fmt: skip
    step = next(line for line in read_metrics(tmp_path / "run") if line["kind"] == "step")
    assert step["loss"] == pytest.approx(step["loss_out"] + 0.5 * step["loss_aux"], rel=1e-5)


def test_pretrained_weights_come_from_the_hub_cache_with_a_new_last_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    name = "lraspp_mobilenet_v3_large"
    with pytest.raises(finetune.ModelError, match="not in the hub cache"):
        build_model(name, 4, 3, 32, "DEFAULT")
    pretrained = build_model(name, 21, 3, 32)
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(pretrained.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
    model = build_model(name, 4, 3, 32, "DEFAULT")
    assert torch.equal(
        model.state_dict()["backbone.0.0.weight"], pretrained.state_dict()["backbone.0.0.weight"]
    )
    assert model.classifier.low_classifier.out_channels == 4
    assert model.classifier.high_classifier.out_channels == 4
    with pytest.raises(finetune.ModelError, match="not a weight of"):
        build_model(name, 4, 3, 32, "IMAGENET")


# ---- the folder dataset ------------------------------------------------------------------------


def write_mask_folder(root, count=4, size=(40, 30)) -> None:
    """DATA_DIR/train/images/N.png and masks/N.png: a bright box of class 1 on class 0, its
    edges on even pixels."""
    for folder in ("images", "masks"):
        (root / "train" / folder).mkdir(parents=True)
    for index in range(count):
        mask = torch.zeros(size[1], size[0], dtype=torch.uint8)
        mask[2 * (index % 5) + 2 : 20, 10:30] = 1
        image = (mask * 200 + 20)[:, :, None].expand(-1, -1, 3).contiguous()
        Image.fromarray(image.numpy()).save(root / "train" / "images" / f"{index}.png")
        Image.fromarray(mask.numpy()).save(root / "train" / "masks" / f"{index}.png")


FOLDER_OPTIONS = ("--dataset=folder", "--model=unet", "--image-size=32", "--num-classes=2")


def folder_run_fails(capsys, tmp_path, *extra) -> str:
    """A run on DATA_DIR tmp_path/data, which must stop before training with one line."""
    args = tiny_args(tmp_path / "run", *FOLDER_OPTIONS, f"--data-dir={tmp_path / 'data'}")
    code, err = train_fails(capsys, *args, *extra)
    assert code == 1 and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    return err.strip()


def test_a_mask_folder_trains_with_its_class_names(tmp_path):
    write_mask_folder(tmp_path / "data", count=10, size=(64, 64))
    (tmp_path / "data" / "classes.txt").write_text("sky\nbox\n")
    data_dir = f"--data-dir={tmp_path / 'data'}"
    run_train(tmp_path / "run", *FOLDER_OPTIONS, data_dir, "--batch-size=3", "--max-steps=1")
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["class_names"] == [
        "sky",
        "box",
    ]
    train_set, val_set = dataset.build_datasets(parse_args([*FOLDER_OPTIONS, data_dir]))
    assert (len(train_set), len(val_set)) == (9, 1)
    image, mask = train_set[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) == {0, 1}
    # Halved alike (bilinear and nearest), the box stays on its pixels.
    assert torch.equal(mask == 1, image[0] > 100)


def test_an_image_without_its_mask_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    write_mask_folder(data)
    (data / "train" / "masks" / "2.png").rename(data / "train" / "masks" / "two.png")
    assert folder_run_fails(capsys, tmp_path) == (
        f"error: image {data / 'train' / 'images' / '2.png'} has no mask "
        f"{data / 'train' / 'masks' / '2.png'}: add it (a class-index PNG of the same name) or "
        "remove the image"
    )


def test_a_mask_without_its_image_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    write_mask_folder(data)
    shutil.copy(data / "train" / "masks" / "0.png", data / "train" / "masks" / "extra.png")
    assert folder_run_fails(capsys, tmp_path) == (
        f"error: mask {data / 'train' / 'masks' / 'extra.png'} has no image "
        f"{data / 'train' / 'images' / 'extra'}.* (same name, any image extension): rename it to "
        "its image's name or remove it"
    )


def test_a_mask_of_another_size_than_its_image_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    write_mask_folder(data)
    mask = data / "train" / "masks" / "1.png"
    Image.new("L", (20, 15)).save(mask)
    assert folder_run_fails(capsys, tmp_path) == (
        f"error: mask {mask} is 20x15 but its image {data / 'train' / 'images' / '1.png'} is "
        "40x30: give each mask its image's size"
    )


def test_a_class_index_beyond_num_classes_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    write_mask_folder(data)
    mask = data / "train" / "masks" / "3.png"
    pixels = torch.zeros(30, 40, dtype=torch.uint8)
    pixels[0, 0], pixels[1, 1] = 4, IGNORE_INDEX  # 255 is allowed: ignored
    Image.fromarray(pixels.numpy()).save(mask)
    assert folder_run_fails(capsys, tmp_path) == (
        f"error: mask {mask} has class index 4 but --num-classes is 2: pass --num-classes 5, "
        "or mark those pixels 255 (ignored)"
    )


def test_missing_voc_files_say_where_they_must_be(tmp_path, capsys):
    args = tiny_args(tmp_path / "run", "--dataset=voc", "--model=unet", "--image-size=32")
    code, err = train_fails(capsys, *args, f"--data-dir={tmp_path}", "--num-classes=21")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: Pascal VOC 2012 not found in {tmp_path}: unpack")
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in err


def test_a_voc_folder_is_read_from_its_files(tmp_path):
    """DATA_DIR may be VOC2012 itself: JPEGImages, SegmentationClass, ImageSets/Segmentation."""
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (50, 40), (200, 10, 10)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = Image.new("P", (50, 40), 15)  # person
        mask.paste(IGNORE_INDEX, (0, 0, 50, 2))  # VOC's ignored borders
        mask.putpalette(task.palette())  # without one, PIL would renumber the indices
        mask.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    args = options("--dataset=voc", f"--data-dir={root}", "--num-classes=21")
    train_set, val_set = dataset.build_datasets(args)
    assert (len(train_set), len(val_set)) == (2, 1)
    assert dataset.class_names(val_set)[15] == "person"
    image, mask = val_set[0]
    assert image.shape == (3, 32, 32) and set(mask.unique().tolist()) == {15, IGNORE_INDEX}
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=f"{root / 'JPEGImages' / 'b.jpg'} is missing"):
        dataset.build_datasets(args)


# ---- predict.py and export.py ------------------------------------------------------------------


def test_predict_writes_a_mask_the_size_of_each_image(trained, tmp_path, capsys):
    _, val_set = dataset.build_datasets(options(*TRAINED_OPTIONS))
    image, _ = val_set[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    square = tmp_path / "a" / "shapes.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(square)
    wide = tmp_path / "b" / "shapes.jpg"  # the same name as the first, in another folder
    Image.fromarray(image.permute(1, 2, 0).numpy()).resize((50, 37)).save(wide)
    output = tmp_path / "masks"
    capsys.readouterr()
    records = predict.main(
        [str(trained / "best.pt"), str(square), str(wide), f"--output={output}", "--workers=0"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert [record["mask"] for record in records] == [
        str(output / "shapes.png"),
        str(output / "shapes-2.png"),
    ]
    with Image.open(output / "shapes.png") as written:
        assert written.mode == "P" and written.size == (32, 32)
        pixels = torch.from_numpy(numpy.array(written)).long()
    with Image.open(output / "shapes-2.png") as written:
        assert written.mode == "P" and written.size == (50, 37)
    # The mask is the model's on the validation pipeline.
    model, _ = predict.load_trained_model(str(trained / "best.pt"))
    with torch.no_grad():
        expected = model(Preprocess()(image[None])).argmax(dim=1)[0]
    assert torch.equal(pixels, expected)
    fractions = records[0]["pixel_fraction"]
    names = ["background", "shape1", "shape2"]
    assert set(fractions) <= set(names)
    counts = torch.bincount(expected.flatten(), minlength=CLASSES)
    assert fractions == {
        names[i]: pytest.approx(count / expected.numel(), abs=1e-6)
        for i, count in enumerate(counts.tolist())
        if count
    }
    saved = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert saved == records


@pytest.mark.parametrize("fmt", task.EXPORT_FORMATS)
def test_each_export_format_of_the_unet_matches_the_model(trained, tmp_path, fmt):
    if fmt == "onnx":
        for name in export.ONNX_PACKAGES:
            pytest.importorskip(name, reason=f"needs {name}: pip install -e '.[export]'")
    output = tmp_path / f"model{export.SUFFIXES[fmt]}"
    result = export.main([str(trained / "best.pt"), f"--format={fmt}", f"--output={output}"])
    assert result["max_abs_difference"] <= 1e-4
    metadata = json.loads((tmp_path / f"{output.name}.json").read_text())
    assert metadata["output"]["shape"] == ["batch", CLASSES, 32, 32]
    assert metadata["input"]["resize"] == "to 32x32 (no crop), bilinear"
    assert metadata["class_names"] == ["background", "shape1", "shape2"]
