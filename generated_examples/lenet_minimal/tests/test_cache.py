"""--cache: images decoded once into a uint8 array, rebuilt when stale, never half-written, and
training on it is the same training, bit for bit, as on the image files."""

import json
import os
import re
import signal

import pytest
import torch
from conftest import assert_same_weights, read_metrics, run_train, tiny_args, train_fails
from PIL import Image
from test_data import write_image_folder

import cache
import checkpoint
import dataset
from options import parse_args

FOLDER = ["--dataset=folder", "--num-classes=2", "--model=lenet", "--batch-size=4", "--epochs=2"]
FOLDER += ["--image-size=32", "--in-channels=3"]  # the images write_image_folder writes


@pytest.fixture
def images(tmp_path):
    write_image_folder(tmp_path / "data", per_class=12)
    return tmp_path / "data"


def train_on(tmp_path, images, name, *extra):
    return run_train(tmp_path / name, *FOLDER, f"--data-dir={images}", *extra)


def cache_files(images) -> list[str]:
    return sorted(os.listdir(f"{images}-cache"))


def test_the_first_run_builds_the_cache_and_later_runs_read_it(tmp_path, images, capsys):
    train_on(tmp_path, images, "files", "--deterministic")
    capsys.readouterr()
    train_on(tmp_path, images, "built", "--deterministic", "--cache")
    err = capsys.readouterr().err
    assert "no image cache at" in err and "yet: building it" in err
    assert "cached 24 images in" in err
    (array,) = [name for name in cache_files(images) if name.endswith(".u8")]
    assert (
        array.endswith("-32px-3ch.u8")
        and os.path.getsize(f"{images}-cache/{array}") == 24 * 3 * 32 * 32
    )
    manifest = json.loads(open(f"{images}-cache/{array[:-3]}.json").read())
    assert manifest["classes"] == ["cat", "dog"] and len(manifest["labels"]) == 24
    assert [source[0] for source in manifest["sources"]] == sorted(
        str(path) for path in images.rglob("*.png")
    )
    train_on(tmp_path, images, "reused", "--deterministic", "--cache")
    assert "building" not in capsys.readouterr().err
    # The same pixels in the same order: the same training as from the image files.
    for name in ("built", "reused"):
        assert read_metrics(tmp_path / name) == read_metrics(tmp_path / "files")
        assert_same_weights(tmp_path / name / "last.pt", tmp_path / "files" / "last.pt")


def test_batches_come_whole_from_the_array(tmp_path, images, monkeypatch):
    train_on(tmp_path, images, "built", "--cache", "--max-steps=1")

    def one_image_at_a_time(self, index):
        raise AssertionError("read one image at a time")

    monkeypatch.setattr(cache.CachedImages, "__getitem__", one_image_at_a_time)
    assert train_on(tmp_path, images, "reused", "--cache", "--max-steps=2")["step"] == 2


def test_a_changed_image_or_another_size_rebuilds(tmp_path, images, capsys):
    train_on(tmp_path, images, "first", "--cache", "--max-steps=1")
    (images / "cat" / "0.png").write_bytes((images / "dog" / "0.png").read_bytes())
    capsys.readouterr()
    train_on(tmp_path, images, "changed", "--cache", "--max-steps=1")
    assert "is stale (1 files new or changed, 0 gone): building it" in capsys.readouterr().err
    train_on(tmp_path, images, "smaller", "--cache", "--max-steps=1", "--image-size=16")
    assert "yet: building it" in capsys.readouterr().err
    assert len([name for name in cache_files(images) if name.endswith(".u8")]) == 2
    # A manifest that says another size than the file's name is not trusted either.
    (manifest,) = [name for name in cache_files(images) if name.endswith("-16px-3ch.json")]
    path = f"{images}-cache/{manifest}"
    record = json.loads(open(path).read())
    json.dump({**record, "image_size": 32}, open(path, "w"))
    train_on(tmp_path, images, "checked", "--cache", "--max-steps=1", "--image-size=16")
    assert "has image_size 32, not 16: building it" in capsys.readouterr().err


def test_an_image_replaced_with_its_old_size_and_time_rebuilds(tmp_path, images, capsys):
    """cp -p and rsync -a leave a replaced file with its old size and modification time: the
    cache sees it changed all the same (its ctime moved) and holds the new pixels."""
    image = images / "cat" / "0.png"

    def write_uncompressed(seed: int) -> torch.Tensor:
        """Random pixels as a PNG of the same number of bytes whatever they are."""
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(image, compress_level=0)
        return pixels.permute(2, 0, 1)

    old = write_uncompressed(1)
    args = parse_args([*FOLDER, f"--data-dir={images}", "--cache", "--workers=0"])
    train_set, _ = dataset.build_datasets(args)
    assert torch.equal(train_set.dataset[0][0], old)  # sample 0 of the folder: cat/0.png
    before = os.stat(image)
    new = write_uncompressed(2)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(image)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    capsys.readouterr()
    train_set, _ = dataset.build_datasets(args)
    assert (
        "is stale (files changed or replaced, keeping their size and modification time): "
        "building it" in capsys.readouterr().err
    )
    assert torch.equal(train_set.dataset[0][0], new)


def test_an_unreadable_image_is_named_or_left_out_and_counted(tmp_path, images, capsys):
    broken = images / "dog" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])
    code, err = train_fails(capsys, *tiny(tmp_path / "run", images, "--cache"))
    assert code == 1
    assert err.splitlines()[-1] == (
        f"error: cannot read image {broken}: fix or delete it, or pass --skip-bad-images"
    )
    assert cache_files(images) == [], "no array, no manifest, no temporary file"
    train_on(tmp_path, images, "skipping", "--cache", "--skip-bad-images", "--max-steps=1")
    err = capsys.readouterr().err
    assert f"warning: left out 1 unreadable images: {broken}" in err
    assert "cached 23 images in" in err


def tiny(output_dir, images, *extra) -> list[str]:
    return tiny_args(output_dir, *FOLDER, f"--data-dir={images}", *extra)


def test_a_build_that_fails_half_way_leaves_nothing_to_trust(tmp_path, images, capsys, monkeypatch):
    decode = cache.Decoding.__getitem__

    def disk_full_at_image_10(self, index):
        if index == 10:
            raise OSError(28, "No space left on device")
        return decode(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(cache.Decoding, "__getitem__", disk_full_at_image_10)
        code, err = train_fails(capsys, *tiny(tmp_path / "run", images, "--cache", "--workers=0"))
    assert code == 1
    assert "could not write the image cache" in err and "No space left on device" in err
    assert cache_files(images) == [], "no array, no manifest, no temporary file"
    train_on(tmp_path, images, "again", "--cache", "--max-steps=1")
    assert "yet: building it" in capsys.readouterr().err


def test_ctrl_c_during_a_build_stops_it_and_keeps_nothing(tmp_path, images, capsys, monkeypatch):
    decode = cache.Decoding.__getitem__

    def interrupted_at_image_10(self, index):
        if index == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return decode(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(cache.Decoding, "__getitem__", interrupted_at_image_10)
        code, err = train_fails(capsys, *tiny(tmp_path / "run", images, "--cache", "--workers=0"))
    assert code == 130
    assert re.fullmatch(
        rf"stopped by SIGINT while building the cache {re.escape(str(images))}-cache/\S+\.u8: "
        "nothing kept; the next run builds it",
        err.strip().splitlines()[-1],
    ), err
    assert cache_files(images) == []
    assert not (tmp_path / "run").exists()


def test_resume_with_cache_augment_and_workers_is_bit_exact(tmp_path, images, monkeypatch):
    options = ["--cache", "--augment", "--workers=2", "--deterministic", "--save-every-steps=4"]
    train_on(tmp_path, images, "whole", *options)
    save = checkpoint.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(state, path):
        save(state, path)
        if state["progress"]["step"] == 4:
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            train_on(tmp_path, images, "split", *options)
    train_on(tmp_path, images, "split", *options, "--resume=auto")
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "split" / "last.pt")
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "whole")
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["progress"]["step"] > 4


def test_cache_is_for_datasets_read_from_files(tmp_path, capsys):
    code, err = train_fails(capsys, "--dataset=fake", "--cache", f"--output-dir={tmp_path}")
    assert code == 2
    assert err.startswith("error: --cache is for the datasets read from files (folder, cifar10")
