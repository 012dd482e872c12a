"""What only image projects have: fine-tuning from a run or from torchvision's pretrained weights
(the backbone frozen, the head replaced, the backbone's own learning rate), the image options
and their checks, --augment and --channels-last. The generic tests (test_train.py, test_runs.py,
test_behaviour.py) hold what every task's runs do."""

import os

import pytest
import torch
from conftest import (
    MODEL,
    NOT_A_MULTIPLE,
    PER_SAMPLE,
    SIZE_MULTIPLE_MODEL,
    SMALL_MODEL,
    TORCHVISION_MODEL,
    assert_refused_cleanly,
    load_model_state,
    needs_one_head,
    run_train,
    tiny_args,
    train_fails,
    watch_forward,
)

import train
from finetune import in_head
from model import HEADS, build_model, model_image_size_problem

DEFAULTS = train.parse_args([])
# torchvision's models take images of 32 pixels or more (model.MIN_IMAGE_SIZES)
TORCHVISION_SIZE = max(DEFAULTS.image_size, 32)
SMALL = f"--model={SMALL_MODEL}"


# ---- fine-tuning -------------------------------------------------------------------------------


def image_size_for(model_name: str) -> int:
    """This project's --image-size, or torchvision's smallest where the model cannot take it."""
    problem = model_image_size_problem(model_name, DEFAULTS.image_size)
    return TORCHVISION_SIZE if problem else DEFAULTS.image_size


def replaced_tensors(model_name: str, size: int, num_classes: int) -> list[str]:
    """The names of the tensors of `model_name` whose shape depends on the class count (the
    head's last layer, and the auxiliary head's where the model has one), sorted."""
    ours = build_model(model_name, DEFAULTS.num_classes, DEFAULTS.in_channels, size).state_dict()
    other = build_model(model_name, num_classes, DEFAULTS.in_channels, size).state_dict()
    return sorted(key for key in ours if ours[key].shape != other[key].shape)


@needs_one_head
@pytest.mark.parametrize("model_name", sorted({MODEL, SMALL_MODEL, TORCHVISION_MODEL}))
def test_finetune_freezes_the_backbone_and_replaces_the_head(tmp_path, capsys, model_name):
    pretrained, finetuned = tmp_path / "pretrained", tmp_path / "finetuned"
    size = image_size_for(model_name)
    run_train(pretrained, f"--model={model_name}", "--max-steps=2", f"--image-size={size}")
    capsys.readouterr()
    run_train(
        finetuned,
        f"--model={model_name}",
        f"--image-size={size}",
        "--num-classes=3",
        f"--init-from={pretrained / 'last.pt'}",
        "--freeze=backbone",
        "--max-steps=2",
    )
    head = HEADS[model_name]
    replaced = replaced_tensors(model_name, size, 3)
    summary = next(line for line in capsys.readouterr().out.splitlines() if "init-from" in line)
    assert f"skipped {len(replaced)} with other shapes [{', '.join(replaced)}]" in summary
    before, after = load_model_state(pretrained / "last.pt"), load_model_state(
        finetuned / "last.pt"
    )
    # The backbone as trained before, and the head's new last layer (an auxiliary head's too)
    # trained from its initial weights.
    backbone = [key for key in after if not in_head(key, head) and key not in replaced]
    assert backbone and all(torch.equal(before[key], after[key]) for key in backbone)
    torch.manual_seed(0)
    initial = build_model(model_name, 3, DEFAULTS.in_channels, size).state_dict()
    assert all(after[key].shape[0] == 3 for key in replaced)
    assert all(in_head(key, head) for key in replaced)
    new_weights = [key for key in replaced if "weight" in key]
    assert new_weights and not any(torch.equal(after[key], initial[key]) for key in new_weights)


@needs_one_head
def test_pretrained_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch, capsys):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    default = torchvision.models.get_model_weights(TORCHVISION_MODEL).DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(default.url)
    args = [f"--model={TORCHVISION_MODEL}", "--weights=DEFAULT", "--freeze=backbone"]
    args += ["--max-steps=1", "--in-channels=3", f"--image-size={TORCHVISION_SIZE}"]
    code, err = train_fails(capsys, *tiny_args(tmp_path / "run", *args))
    assert code == 2 and f"put the file at {cached}" in err and "--download" in err

    # Made-up pretrained weights: the model with the pretrained class count.
    torch.manual_seed(1)
    pretrained_classes = len(default.meta["categories"])
    model = build_model(TORCHVISION_MODEL, pretrained_classes, 3, TORCHVISION_SIZE)
    pretrained = model.state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(pretrained, cached)
    run_train(tmp_path / "run", *args)
    trained = load_model_state(tmp_path / "run" / "last.pt")
    head = HEADS[TORCHVISION_MODEL]
    backbone = [key for key in trained if not in_head(key, head)]
    assert backbone and all(torch.equal(trained[key], pretrained[key]) for key in backbone)
    replaced = [key for key in trained if trained[key].shape != pretrained[key].shape]
    assert replaced and all(in_head(key, head) for key in replaced)
    assert all(trained[key].shape[0] == DEFAULTS.num_classes for key in replaced)


@needs_one_head
def test_backbone_lr_mult_scales_the_backbones_step_and_not_the_heads(tmp_path):
    """One plain SGD step from the same weights, with and without --backbone-lr-mult 0.1: the
    head moves as far in both, every backbone weight a tenth as far with it."""
    defaults = train.parse_args([])
    torch.manual_seed(1)
    initial = train.model_from_options({**vars(defaults), "model": SMALL_MODEL}).state_dict()
    torch.save(initial, tmp_path / "init.pt")
    one_step = [*PER_SAMPLE, "--optimizer=sgd", "--momentum=0", "--weight-decay=0", "--lr=0.5"]
    one_step += ["--lr-scheduler=none", "--max-steps=1", f"--init-from={tmp_path / 'init.pt'}"]
    run_train(tmp_path / "plain", *one_step)
    run_train(tmp_path / "mult", *one_step, "--backbone-lr-mult=0.1")
    plain = load_model_state(tmp_path / "plain" / "last.pt")
    mult = load_model_state(tmp_path / "mult" / "last.pt")
    head = HEADS[SMALL_MODEL] + "."
    largest = {"head": 0.0, "backbone": 0.0}  # the largest step of a weight of each
    wrong = []
    for key, before in initial.items():
        if not before.is_floating_point():
            continue
        plain_step, mult_step = plain[key] - before, mult[key] - before
        part = "head" if key.startswith(head) else "backbone"
        expected = plain_step if part == "head" else 0.1 * plain_step
        if not torch.allclose(mult_step, expected, rtol=1e-3, atol=1e-6):
            moved, due = mult_step.abs().max(), expected.abs().max()
            wrong.append(f"{part} {key}: moved {moved:.3g}, not {due:.3g}")
        largest[part] = max(largest[part], plain_step.abs().max().item())
    assert not wrong, wrong
    assert min(largest.values()) > 1e-3, largest  # both parts moved: the check above means much


# ---- image options, checked before anything runs -----------------------------------------------

# (options, exit code, the start of the one line on stderr after "error: "), as test_runs.py's
# BAD_OPTIONS
BAD_IMAGE_OPTIONS = [
    (["--num-classes=0"], 2, "argument --num-classes: must be at least 2, got 0"),
    (["--num-classes=-3"], 2, "argument --num-classes: must be at least 2, got -3"),
    (["--num-classes=1"], 2, "argument --num-classes: must be at least 2, got 1"),
    (["--in-channels=0"], 2, "argument --in-channels: must be at least 1, got 0"),
    (["--image-size=0"], 2, "argument --image-size: must be at least 1, got 0"),
    (["--image-size=1"], 2, model_image_size_problem(SMALL_MODEL, 1)),
    (
        [f"--model={SIZE_MULTIPLE_MODEL}", f"--image-size={NOT_A_MULTIPLE}"],
        2,
        model_image_size_problem(SIZE_MULTIPLE_MODEL, NOT_A_MULTIPLE),
    ),
    (["--image-size=100000"], 2, "argument --image-size: must be at most 4096, got 100000"),
    (["--backbone-lr-mult=-1"], 2, "argument --backbone-lr-mult: must be at least 0, got -1"),
    (["--dataset=folder", "--in-channels=4"], 2, "--dataset folder gives 1- or 3-channel"),
]


@pytest.mark.parametrize(
    "options, code, message",
    BAD_IMAGE_OPTIONS,
    ids=[" ".join(case[0]) for case in BAD_IMAGE_OPTIONS],
)
def test_bad_image_options_are_one_line_and_change_nothing(
    tmp_path, capsys, earlier_run, options, code, message
):
    assert_refused_cleanly(tmp_path, capsys, earlier_run, options, code, message)


# ---- the images a run sees ---------------------------------------------------------------------


def test_channels_last_reaches_the_model(tmp_path, monkeypatch):
    seen = watch_forward(monkeypatch)
    run_train(tmp_path, SMALL, "--channels-last", "--in-channels=3", "--max-steps=1")
    images = seen[0][0]
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_augment_crops_and_flips_each_image(tmp_path, monkeypatch):
    """The model sees the images of a plain run, each shifted by up to 4 pixels and maybe
    mirrored: the same pixels where the crop overlaps the image."""
    seen = watch_forward(monkeypatch)
    run_train(tmp_path / "plain", SMALL, "--max-steps=1")
    plain = seen[0][0].clone()
    seen.clear()
    run_train(tmp_path / "augmented", SMALL, "--max-steps=1", "--augment")
    augmented = seen[0][0]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    background = -1.0  # zero padding, normalized
    for image, original in zip(augmented, plain, strict=True):
        matches = [
            torch.equal(window[mask], shifted[mask])
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            for shifted in [shift(original.flip(-1) if flip else original, dy, dx, background)]
            for window, mask in [(image, shifted != background)]
        ]
        assert any(matches), "an augmented image is no crop or flip of the original"


def shift(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, [4] * 4, value=fill)
    height, width = image.shape[-2:]
    return padded[:, 4 + dy : 4 + dy + height, 4 + dx : 4 + dx + width]
