"""The model trains at all: right output shape, a sane first loss, and it can memorize a batch."""

import math

import torch
from conftest import MODEL
from torch import nn

import train
from model import build_model

DEFAULTS = train.parse_args([])


def fresh_model() -> nn.Module:
    """The default model in training mode, but without randomness (dropout, stochastic depth)."""
    torch.manual_seed(0)
    model = build_model(MODEL, DEFAULTS.num_classes, DEFAULTS.in_channels, DEFAULTS.image_size)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.eval()
    return model


def random_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (size, DEFAULTS.in_channels, DEFAULTS.image_size, DEFAULTS.image_size)
    images = torch.randn(shape, generator=generator)
    labels = torch.randint(DEFAULTS.num_classes, (size,), generator=generator)
    return images, labels


def test_output_has_one_logit_per_class():
    images, _ = random_batch(2)
    with torch.no_grad():
        assert fresh_model()(images).shape == (2, DEFAULTS.num_classes)


def test_first_loss_is_near_ln_num_classes():
    images, labels = random_batch(16)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(fresh_model()(images), labels).item()
    assert abs(loss - math.log(DEFAULTS.num_classes)) < 0.5, loss


def test_gradient_reaches_the_input_and_every_layer_trains():
    """The gradient reaches the input layer on the first step (a zero-initialized head would stop
    it), and every parameter gets some within three steps (ResNets' zero-initialized last
    BatchNorm of each block lets gradient into its block from the second step on)."""
    model = fresh_model()
    images, labels = random_batch(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reached = set()
    for step in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        if step == 0:
            first = next(p for p in model.parameters() if p.requires_grad)
            assert first.grad is not None and first.grad.any(), "no gradient reaches the input"
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
        optimizer.step()
    without = [name for name, _ in model.named_parameters() if name not in reached]
    assert not without, f"no gradient in 3 steps: {without[:5]}"


def test_overfits_one_small_batch():
    model = fresh_model()
    images, labels = random_batch(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(60):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        if loss.item() < 0.05:
            break
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
