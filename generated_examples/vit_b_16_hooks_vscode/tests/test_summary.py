"""summary.py and `train.py --summary`: parameter totals, output shapes, frozen layers."""

import pytest
import torch
from conftest import run_train
from torch import nn

import train
from finetune import freeze
from model import HEADS, MODEL_NAMES, LeNet, build_model
from summary import count_parameters, format_summary, outputs_text, summarize

DEFAULTS = train.parse_args([])
LENET = ["--model=lenet", "--num-classes=10", "--in-channels=3", "--image-size=32"]  # 62,006 params


def leaf_outputs_of_a_real_forward(model: nn.Module, batch: torch.Tensor) -> dict[str, list]:
    """{leaf module: [output shape of each call]}, each computed again from the inputs the
    module got in an ordinary forward pass (in eval mode; the model is left in train mode)."""
    inputs, handles = {}, []
    for name, module in model.named_modules():
        if not list(module.children()):

            def keep(module, args, kwargs, name=name):
                inputs.setdefault(name, []).append((args, kwargs))

            handles.append(module.register_forward_pre_hook(keep, with_kwargs=True))
    model.eval()
    with torch.no_grad():
        model(batch)
        for handle in handles:
            handle.remove()
        shapes = {
            name: [model.get_submodule(name)(*args, **kwargs).shape for args, kwargs in calls]
            for name, calls in inputs.items()
        }
    model.train()
    return shapes


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_every_model_after_freezing_the_backbone(model_name):
    """Totals equal sum(p.numel()) split by requires_grad, the head alone trains, the output
    shapes are a real forward's, and the model comes back unchanged (train mode, no hooks)."""
    torch.manual_seed(0)
    model = build_model(model_name, DEFAULTS.num_classes, DEFAULTS.in_channels, 32)
    head = HEADS[model_name]
    freeze(model, "backbone", head)
    model.train()
    batch = torch.randn(1, DEFAULTS.in_channels, 32, 32)

    summary = summarize(model, batch.shape)
    assert all(module.training for module in model.modules())  # modes and hooks as they were
    assert not any(module._forward_hooks for module in model.modules())

    parameters = list(model.parameters())
    totals = summary.totals
    assert totals.trainable == sum(p.numel() for p in parameters if p.requires_grad)
    assert totals.frozen == sum(p.numel() for p in parameters if not p.requires_grad)
    assert totals.trainable == sum(p.numel() for p in model.get_submodule(head).parameters())
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert totals.size_mb == pytest.approx(state_bytes / 2**20)

    rows = {row.name: row for row in summary.rows}
    assert list(rows) == [name for name, _ in model.named_modules()]
    assert rows[""].params == totals.params and rows[""].status == "partly"
    assert rows[head].status == "yes"
    for name, row in rows.items():
        in_head = name == head or name.startswith(head + ".")
        holds_head = name == "" or head.startswith(name + ".")
        if row.params and not in_head and not holds_head:
            assert row.status == "frozen", name
    assert rows[""].outputs == [torch.Size([1, DEFAULTS.num_classes])]
    assert rows[head].outputs == [torch.Size([1, DEFAULTS.num_classes])]
    real = leaf_outputs_of_a_real_forward(model, batch)
    for name, module in model.named_modules():
        if not list(module.children()):  # a leaf no forward reaches has no output shape
            assert rows[name].outputs == real.get(name, []), name

    table = format_summary(summary, model_name)
    assert f"{totals.trainable:,} trainable, {totals.frozen:,} frozen" in table


def test_lenet_shapes_and_the_table():
    model = LeNet(num_classes=10, in_channels=3, image_size=32)
    summary = summarize(model, (2, 3, 32, 32))
    rows = {row.name: row for row in summary.rows}
    assert rows["conv1"].outputs == [(2, 6, 28, 28)]
    assert rows["pool"].outputs == [(2, 6, 14, 14), (2, 16, 5, 5)]  # called twice
    assert rows["fc1"].outputs == [(2, 120)] and rows["fc3"].outputs == [(2, 10)]
    assert rows["conv1"].params == 3 * 6 * 5 * 5 + 6 and rows["pool"].params == 0

    lines = format_summary(summary, "lenet").splitlines()
    conv1 = next(line for line in lines if line.split()[0] == "conv1")
    assert conv1.split()[1:] == ["Conv2d", "[2,", "6,", "28,", "28]", "456", "yes"]
    assert any("[2, 6, 14, 14], [2, 16, 5, 5]" in line for line in lines)
    assert "parameters: 62,006 total, 62,006 trainable, 0 frozen" in lines
    table = lines[lines.index(lines[1], 2) + 1 : lines.index(lines[1], 4)]  # between the rules
    assert len(table) == 7 and table[0].startswith("(lenet)")
    assert len({len(line) - len(line.split()[-1]) for line in table}) == 1  # aligned columns


class Recurrent(nn.Module):
    """A layer called twice and one that returns a tuple, with a parameter shared by two names."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.same_linear = self.linear
        self.gru = nn.GRU(4, 3, batch_first=True)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        out, _ = self.gru(self.linear(self.linear(x)))
        return out


def test_repeated_calls_tuples_shared_and_unused_modules():
    model = Recurrent()
    summary = summarize(model, (1, 5, 4))
    rows = {row.name: row for row in summary.rows}
    assert "same_linear" not in rows  # named_modules() lists a shared module once
    assert outputs_text(rows["linear"].outputs) == "[1, 5, 4] x2"
    assert outputs_text(rows["gru"].outputs) == "([1, 5, 3], [1, 1, 3])"
    assert outputs_text(rows["unused"].outputs) == "-"
    assert summary.totals.params == sum(p.numel() for p in model.parameters())
    assert summary.totals == count_parameters(model)


def test_a_failing_forward_is_a_value_error_and_leaves_no_hooks():
    model = LeNet(num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"forward pass of a \[1, 3, 8, 8\] batch failed"):
        summarize(model, (1, 3, 8, 8))
    assert not any(module._forward_hooks for module in model.modules())
    assert model.training


def test_train_summary_shows_the_frozen_backbone_and_does_not_train(tmp_path, capsys):
    totals = run_train(tmp_path / "run", *LENET, "--freeze=backbone", "--summary")
    out = capsys.readouterr().out
    assert totals == {"params": 62_006, "trainable": 850, "frozen": 61_156}
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["conv1"][-1] == "frozen" and rows["fc3"][-1] == "yes"
    assert "parameters: 62,006 total, 850 trainable, 61,156 frozen" in out
    assert not (tmp_path / "run").exists()


def test_every_run_starts_with_the_short_summary(tmp_path, capsys):
    run_train(tmp_path, *LENET, "--max-steps=1")
    lines = capsys.readouterr().out.splitlines()
    assert "model lenet: 62,006 parameters (62,006 trainable, 0 frozen), 0.24 MB" in lines
