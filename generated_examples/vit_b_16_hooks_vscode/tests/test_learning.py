"""Training learns: short runs on --dataset synthetic (shapes drawn in code, one kind per class)
end far above chance, also with gradient accumulation and with --augment.

A loop that skips optimizer.step(), clears the gradients before it, pairs labels with the wrong
images or never raises the learning rate above zero still ends with a finite loss and a saved
checkpoint, which is all a smoke test checks; it stays at chance here.
"""

import math

import pytest
from conftest import LEARN, LEARN_BATCH, LEARNED, run_train

CHANCE = 1 / 10  # LEARNED (conftest.py) is 2.5 times it


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> dict:
    output_dir = tmp_path_factory.mktemp("learn") / "run"
    return run_train(output_dir, *LEARN, f"--batch-size={LEARN_BATCH}")


def test_synthetic_shapes_are_learned_far_above_chance(learned):
    assert learned["val_acc"] >= LEARNED, learned
    assert learned["val_loss"] < 0.75 * math.log(1 / CHANCE), learned  # measured: 1.31 < 2.30


def test_accumulated_micro_batches_learn_like_one_batch(learned, tmp_path):
    """Two micro-batches of 16 per step take the same steps as one batch of 32."""
    micro_batch = f"--batch-size={LEARN_BATCH // 2}"
    accumulated = run_train(tmp_path, *LEARN, micro_batch, "--grad-accum-steps=2")
    assert accumulated["val_acc"] >= LEARNED, accumulated
    assert accumulated["val_acc"] == pytest.approx(learned["val_acc"], abs=0.02)


def test_augmented_training_learns(tmp_path):
    augmented = run_train(tmp_path, *LEARN, f"--batch-size={LEARN_BATCH}", "--augment")
    assert augmented["val_acc"] >= LEARNED, augmented
