"""Segmentation: the synthetic masks lie on their shapes, augmentation moves masks with images,
the IoU metrics are exact (across batches and processes too), a short run learns, the folder
dataset's mistakes are one line each, --cache keeps images and masks and trains as the files do,
and predict.py and export.py work on a trained U-Net."""

import json
import os
import shutil

import numpy
import pytest
import torch
import torchvision
from conftest import assert_same_weights, read_metrics, run_train, tiny_args, train_fails
from PIL import Image
from torch import nn

import cache
import checkpoint
import dataset
import export
import finetune
import predict
import task
import train
from image_pipeline import IGNORE_INDEX, Preprocess
from model import HEADS, build_model
from options import parse_args
from pipeline import DatasetError, ShardedSampler, reads_whole_batches

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


def test_freezing_the_backbone_trains_both_heads_of_a_model_with_an_auxiliary_one():
    """--freeze backbone freezes the backbone alone: the classifier and the auxiliary classifier,
    whose loss is half the training loss, both train; --backbone-lr-mult leaves both at --lr."""
    name = "deeplabv3_mobilenet_v3_large"
    model = build_model(name, 4, 3, 32)
    names = [parameter_name for parameter_name, _ in model.named_parameters()]
    heads = [n for n in names if n.startswith(("classifier.", "aux_classifier."))]
    assert any(n.startswith("aux_classifier.") for n in heads)
    args = parse_args([f"--model={name}", "--optimizer=sgd", "--lr=0.1", "--backbone-lr-mult=0.01"])
    head_group, backbone_group = train.build_optimizer(model, args).param_groups
    parameters = dict(model.named_parameters())
    assert [id(p) for p in head_group["params"]] == [id(parameters[n]) for n in heads]
    assert head_group["lr"] == 0.1 and backbone_group["lr"] == pytest.approx(0.001)
    frozen = finetune.freeze(model, "backbone", HEADS[name])
    assert frozen == [n for n in names if n.startswith("backbone.")]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == heads


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


def write_voc(root) -> None:
    """A VOC2012 folder of three images (a and b to train, c to validate): each a red image with
    a person (class 15) mask, its top two rows ignored (255), and a box of class 1 in b."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (50, 40), (200, 10, 10)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = Image.new("P", (50, 40), 15)  # person
        mask.paste(IGNORE_INDEX, (0, 0, 50, 2))  # VOC's ignored borders
        if name == "b":
            mask.paste(1, (10, 10, 30, 30))
        mask.putpalette(task.palette())  # without one, PIL would renumber the indices
        mask.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")


def test_a_voc_folder_is_read_from_its_files(tmp_path):
    """DATA_DIR may be VOC2012 itself: JPEGImages, SegmentationClass, ImageSets/Segmentation."""
    root = tmp_path / "VOC2012"
    write_voc(root)
    args = options("--dataset=voc", f"--data-dir={root}", "--num-classes=21")
    train_set, val_set = dataset.build_datasets(args)
    assert (len(train_set), len(val_set)) == (2, 1)
    assert dataset.class_names(val_set)[15] == "person"
    image, mask = val_set[0]
    assert image.shape == (3, 32, 32) and set(mask.unique().tolist()) == {15, IGNORE_INDEX}
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=f"{root / 'JPEGImages' / 'b.jpg'} is missing"):
        dataset.build_datasets(args)


# ---- --cache -----------------------------------------------------------------------------------


def cache_files(data) -> list[str]:
    return sorted(os.listdir(f"{data}-cache")) if os.path.isdir(f"{data}-cache") else []


def assert_same_samples(cached_set, files_set) -> None:
    """The same images and masks, in the same order (cached masks are uint8, the files' int64)."""
    assert reads_whole_batches(cached_set) and not reads_whole_batches(files_set)
    assert len(cached_set) == len(files_set)
    for index in range(len(files_set)):
        (image, mask), (file_image, file_mask) = cached_set[index], files_set[index]
        assert mask.dtype == torch.uint8
        assert torch.equal(image, file_image) and torch.equal(mask.long(), file_mask)


def test_cache_keeps_images_and_masks_and_trains_as_the_files_do(tmp_path, capsys):
    data = tmp_path / "data"
    write_mask_folder(data, count=10, size=(64, 64))
    (data / "classes.txt").write_text("sky\nbox\n")
    run_options = [*FOLDER_OPTIONS, f"--data-dir={data}", "--batch-size=3", "--epochs=2"]
    run_options += ["--augment", "--deterministic"]
    run_train(tmp_path / "files", *run_options)
    capsys.readouterr()
    run_train(tmp_path / "built", *run_options, "--cache")
    err = capsys.readouterr().err
    assert "no image cache at" in err and "yet: building it" in err
    assert "cached 10 images and masks in" in err
    (images,) = [name for name in cache_files(data) if name.endswith("-32px-3ch.u8")]
    stem = images.removesuffix(".u8")
    assert cache_files(data) == sorted([images, f"{stem}.masks.u8", f"{stem}.json"])
    assert os.path.getsize(data.parent / "data-cache" / images) == 10 * 3 * 32 * 32
    assert os.path.getsize(data.parent / "data-cache" / f"{stem}.masks.u8") == 10 * 32 * 32
    run_train(tmp_path / "reused", *run_options, "--cache")
    assert "building" not in capsys.readouterr().err
    # The same pixels and masks in the same order: the same training as from the files.
    for name in ("built", "reused"):
        assert read_metrics(tmp_path / name) == read_metrics(tmp_path / "files")
        assert_same_weights(tmp_path / name / "last.pt", tmp_path / "files" / "last.pt")
    assert checkpoint.load_checkpoint(tmp_path / "reused" / "last.pt")["class_names"] == [
        "sky",
        "box",
    ]
    files_args = parse_args([*FOLDER_OPTIONS, f"--data-dir={data}"])
    cached_args = parse_args([*FOLDER_OPTIONS, f"--data-dir={data}", "--cache"])
    from_cache, from_files = dataset.build_datasets(cached_args), dataset.build_datasets(files_args)
    for cached_set, files_set in zip(from_cache, from_files, strict=True):
        assert_same_samples(cached_set, files_set)
    # Names come from classes.txt as it is now, not as it was when the cache was built.
    (data / "classes.txt").write_text("ground\nbox\n")
    assert dataset.class_names(dataset.build_datasets(cached_args)[0]) == ["ground", "box"]


def uncompressed_mask(path, top: int) -> torch.Tensor:
    """Write a mask PNG, a box of class 1 from row `top` down, uncompressed: the same number of
    bytes whatever the box. Returns the mask a sample holds at --image-size 32."""
    pixels = torch.zeros(30, 40, dtype=torch.uint8)
    pixels[top:20, 10:30] = 1
    mask = Image.fromarray(pixels.numpy())
    mask.save(path, compress_level=0)
    return dataset.MaskTransform(32)(mask)


def test_a_mask_replaced_with_its_old_size_and_time_rebuilds_the_cache(tmp_path, capsys):
    """cp -p and rsync -a leave a replaced file with its old size and modification time."""
    data = tmp_path / "data"
    write_mask_folder(data)
    mask_file = data / "train" / "masks" / "0.png"
    old = uncompressed_mask(mask_file, top=2)
    args = parse_args([*FOLDER_OPTIONS, f"--data-dir={data}", "--cache", "--workers=0"])
    train_set, _ = dataset.build_datasets(args)
    assert torch.equal(train_set.dataset[0][1].long(), old)  # sample 0 of the folder: 0.png
    before = os.stat(mask_file)
    new = uncompressed_mask(mask_file, top=12)
    os.utime(mask_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(mask_file)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not torch.equal(new, old)
    capsys.readouterr()
    train_set, _ = dataset.build_datasets(args)
    assert (
        "is stale (files changed or replaced, keeping their size and modification time): "
        "building it" in capsys.readouterr().err
    )
    assert torch.equal(train_set.dataset[0][1].long(), new)


def test_with_cache_masks_are_checked_when_it_is_built_for_the_class_count(tmp_path, capsys):
    """A class index beyond --num-classes stops the run in one line, leaving no cache; a cache
    built for more classes is not trusted for fewer: its masks are checked again."""
    data = tmp_path / "data"
    write_mask_folder(data)
    mask = data / "train" / "masks" / "3.png"
    pixels = torch.zeros(30, 40, dtype=torch.uint8)
    pixels[5:9, 5:9] = 2
    Image.fromarray(pixels.numpy()).save(mask)
    expected = (
        f"error: mask {mask} has class index 2 but --num-classes is 2: pass --num-classes 3, "
        "or mark those pixels 255 (ignored)"
    )
    assert folder_run_fails(capsys, tmp_path, "--cache") == expected
    assert cache_files(data) == []
    run_train(
        tmp_path / "three", *FOLDER_OPTIONS, f"--data-dir={data}", "--cache", "--num-classes=3"
    )
    assert len(cache_files(data)) == 3
    assert folder_run_fails(capsys, tmp_path, "--cache") == expected


def test_a_cache_build_that_fails_half_way_leaves_nothing(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    write_mask_folder(data, count=6)
    decode = cache.Decoding.__getitem__

    def disk_full_at_sample_3(self, index):
        if index == 3:
            raise OSError(28, "No space left on device")
        return decode(self, index)

    monkeypatch.setattr(cache.Decoding, "__getitem__", disk_full_at_sample_3)
    args = tiny_args(tmp_path / "run", *FOLDER_OPTIONS, f"--data-dir={data}", "--cache")
    code, err = train_fails(capsys, *args, "--workers=0")
    assert code == 1
    assert err.splitlines()[-1].startswith("error: could not write the image cache")
    assert "No space left on device" in err
    assert cache_files(data) == [], "no arrays, no manifest, no temporary files"


def test_voc_with_cache_gives_the_samples_of_its_files(tmp_path, capsys):
    root = tmp_path / "VOC2012"
    write_voc(root)
    voc = ["--dataset=voc", f"--data-dir={root}", "--num-classes=21", "--workers=0"]
    from_files = dataset.build_datasets(options(*voc))
    capsys.readouterr()
    for _ in range(2):  # built, then read
        from_cache = dataset.build_datasets(options(*voc, "--cache"))
        for cached_set, files_set in zip(from_cache, from_files, strict=True):
            assert_same_samples(cached_set, files_set)
            assert dataset.class_names(cached_set)[15] == "person"
    err = capsys.readouterr().err
    assert err.count("yet: building it") == 2  # train and val, once
    assert "cached 2 images and masks in" in err and "cached 1 images and masks in" in err
    assert {1, 15, IGNORE_INDEX} == set(from_cache[0][1][1].unique().tolist())


def test_cache_is_for_the_datasets_read_from_files(tmp_path, capsys):
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", "--cache"))
    assert code == 2
    assert err.startswith("error: --cache is for the datasets read from files (folder, voc)")


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


def test_predict_and_export_refuse_to_write_a_file_of_the_run(trained, tmp_path, capsys):
    """A mask folder or an export under the name of a run's checkpoint or record (runs.RUN_FILES)
    would replace it, or be taken for it: refused, nothing written."""
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(image)
    before = {path.name: path.read_bytes() for path in trained.iterdir() if path.is_file()}
    step = trained / "step_00000099.pt"
    for main, arguments, line in [
        (
            predict.main,
            [str(image), f"--output={step}"],
            f"--output {step} would be taken for one of the run's files (step_*.pt) in {trained}",
        ),
        (
            export.main,
            ["--format=exported", f"--output={trained / 'last.pt'}"],
            f"--output {trained / 'last.pt'} would replace last.pt of the run in {trained}",
        ),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main([str(trained / "best.pt"), *arguments])
        assert stopped.value.code == 2
        program = "predict.py" if main is predict.main else "export.py"
        assert capsys.readouterr().err == (
            f"error: {line}: choose another path (see python {program} --help)\n"
        )
    after = {path.name: path.read_bytes() for path in trained.iterdir() if path.is_file()}
    assert after == before and not step.exists()
