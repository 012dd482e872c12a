"""Datasets fail early and clearly; the sampler shards and resumes exactly."""

import pytest
import torch
from conftest import run_train
from PIL import Image

from pipeline import ShardedSampler


def write_image_folder(root, classes=("cat", "dog"), per_class=4) -> None:
    generator = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{index}.png")


def train_on_folder(tmp_path, *extra):
    return run_train(
        tmp_path / "run", "--dataset=folder", f"--data-dir={tmp_path / 'data'}", "--num-classes=2",
        "--batch-size=2", "--max-steps=1", "--model=lenet", *extra,
    )  # fmt: skip


def test_an_image_folder_trains(tmp_path):
    write_image_folder(tmp_path / "data")
    assert train_on_folder(tmp_path)["step"] == 1


def test_a_corrupt_image_is_named_before_training(tmp_path, capsys):
    write_image_folder(tmp_path / "data")
    broken = tmp_path / "data" / "dog" / "2.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(SystemExit) as exit_info:
        train_on_folder(tmp_path)
    assert f"cannot read image {broken}" in str(exit_info.value)
    assert "--skip-bad-images" in str(exit_info.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert train_on_folder(tmp_path, "--skip-bad-images")["step"] == 1
    assert f"warning: skipping unreadable image {broken}" in capsys.readouterr().err


def test_an_empty_class_folder_is_an_error(tmp_path):
    write_image_folder(tmp_path / "data")
    (tmp_path / "data" / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        train_on_folder(tmp_path, "--num-classes=3")
    assert "Found no valid file for the classes empty" in str(exit_info.value)


def test_a_missing_data_dir_and_a_wrong_class_count_are_errors(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train_on_folder(tmp_path)
    assert f"data directory {tmp_path / 'data'} does not exist" in str(exit_info.value)
    write_image_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        train_on_folder(tmp_path, "--num-classes=5")
    assert str(exit_info.value) == (
        f"error: {tmp_path / 'data'} has 2 class folders but --num-classes is 5: "
        "pass --num-classes 2"
    )


@pytest.mark.parametrize("cache", [[], ["--cache"]])
def test_train_and_val_with_different_classes_are_refused_before_caching(tmp_path, cache):
    write_image_folder(tmp_path / "data" / "train", classes=("cat", "dog"))
    write_image_folder(tmp_path / "data" / "val", classes=("cat", "cow"))
    cache_dir = tmp_path / "cache"
    with pytest.raises(SystemExit) as exit_info:
        train_on_folder(tmp_path, *cache, f"--cache-dir={cache_dir}")
    assert str(exit_info.value) == (
        f"error: {tmp_path / 'data' / 'val'} has the class folders cat, cow but "
        f"{tmp_path / 'data' / 'train'} has cat, dog: give both the same ones"
    )
    assert not cache_dir.exists()


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_missing_downloadable_data_says_how_to_get_it(tmp_path, name):
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "run", f"--dataset={name}", f"--data-dir={tmp_path}")
    assert "files not found in" in str(exit_info.value)
    assert "pass --download" in str(exit_info.value)


def test_validation_shards_cover_every_sample_exactly_once():
    shards = [ShardedSampler(10, False, rank=r, world_size=3, pad=False) for r in range(3)]
    indices = [index for shard in shards for index in shard]
    assert sorted(indices) == list(range(10))
    assert [len(shard) for shard in shards] == [4, 3, 3]


def test_training_shards_are_equal_and_resume_mid_epoch():
    shards = [ShardedSampler(10, True, seed=5, rank=r, world_size=3) for r in range(3)]
    for shard in shards:
        shard.set_epoch(2)
    full = [list(shard) for shard in shards]
    assert [len(indices) for indices in full] == [4, 4, 4]
    assert set().union(*full) == set(range(10))
    shards[1].set_epoch(2, skip=3)
    assert list(shards[1]) == full[1][3:] and len(shards[1]) == 1
    shards[1].set_epoch(3)
    assert list(shards[1]) != full[1]
