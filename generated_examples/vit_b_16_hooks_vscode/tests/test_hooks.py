"""The hooks/ package: handles, statistics, gradient norms, NaN checks, and a run with hooks.

The tests watch SMALL_MODEL (conftest.py); the modules they name are found in it by position:
the default ones are those that own parameters, in model order (lenet: conv1, conv2, fc1, fc2,
fc3; gpt_tiny: token_embedding, position_embedding, the layers of each block, final_norm,
lm_head). The models take conftest.model_input's batches: images, or token ids.
"""

import copy
import os
import re

import pytest
import torch
import torchvision
from conftest import (
    HOOKED_MODELS,
    MODEL,
    SHAPE_ARGS,
    SMALL_MODEL,
    model_input,
    needs_inputs_alone,
    read_metrics,
    run_train,
    small_model,
    tiny_args,
    train_fails,
)
from torch import nn

import train
from hooks import HOOKS, HookSet
from hooks.base import select_modules
from model import model_from_options

ALL_HOOKS = ",".join(HOOKS)
SMALL = f"--model={SMALL_MODEL}"


def tiny_model(name: str = SMALL_MODEL) -> nn.Module:
    torch.manual_seed(0)
    return small_model(name)


def watched(model: nn.Module) -> list[str]:
    """The names of the modules the hooks watch by default."""
    return [name for name, _ in select_modules(model)]


def watched_by(model: nn.Module, module_glob: str) -> list[str]:
    return [name for name, _ in select_modules(model, module_glob)]


def inputs(batch: int = 2) -> torch.Tensor:
    """A batch for SMALL_MODEL and HOOKED_MODELS (the same each call)."""
    return model_input(batch)


def images(batch: int = 2) -> torch.Tensor:
    """A batch for torchvision's resnet18, whatever this project's task."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def probe_loss(logits: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient reaches every logit, different for each: the logits weighted by a
    fixed random tensor of their shape (any task's output: per image, per pixel, per token)."""
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    return (logits * probe).sum()


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(module._forward_hooks)
        + len(module._forward_pre_hooks)
        + len(module._backward_hooks)
        + len(module._backward_pre_hooks)
        for module in model.modules()
    )


def capture_outputs(model: nn.Module, names) -> tuple[dict, list]:
    """Each named module's output of the next forward (cloned before any in-place op)."""
    outputs, handles = {}, []
    for name in names:

        def hook(module, inputs, output, name=name):
            outputs[name] = output.detach().clone()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return outputs, handles


@needs_inputs_alone
def test_attach_and_detach_leave_no_handles(tmp_path):
    model = tiny_model()
    assert hook_counts(model) == 0
    hooks = HookSet("", model)
    assert hook_counts(model) == 0 and hooks.end_step() == {}
    hooks = HookSet(ALL_HOOKS, model, "", str(tmp_path))
    assert hook_counts(model) == len(HOOKS) * len(select_modules(model))
    hooks.start_step(1, record=True)
    model(inputs()).sum().backward()
    hooks.end_step()
    hooks.start_step(2, record=True)
    model(inputs())  # a step left without backward leaves its tensor hooks behind, until detach
    hooks.detach()
    assert hook_counts(model) == 0
    assert all(not hook.handles and not hook.step_handles for hook in hooks.hooks.values())


def test_default_modules_and_globs():
    model = tiny_model()
    layers = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    layers += (nn.Embedding, nn.LayerNorm)
    names = watched(model)
    assert names == [name for name, module in model.named_modules() if isinstance(module, layers)]
    # Two globs, out of model order: the names that begin as the last module's (lenet: fc*), and
    # one name (lenet: conv2). The modules come in model order.
    prefix, second = names[-1][:-1], names[1]
    expected = [second, *(name for name, _ in model.named_modules() if name.startswith(prefix))]
    assert watched_by(model, f"{prefix}*, {second}") == expected
    # lenet: "module names: conv1, conv2"
    first_two = ", ".join(name for name, _ in list(model.named_modules())[1:3])
    with pytest.raises(
        ValueError, match=re.escape(f"matches no module; module names: {first_two}")
    ):
        select_modules(model, "layer9.*")
    with pytest.raises(ValueError, match="unknown hook 'bogus'; valid hooks: activations"):
        HookSet("activations,bogus", model)


@needs_inputs_alone
@pytest.mark.parametrize("name", HOOKED_MODELS)
def test_activation_stats_match_a_real_forward(tmp_path, name):
    model = tiny_model(name)
    names = [module_name for module_name, _ in select_modules(model)]
    hooks = HookSet("activations", model, "", str(tmp_path))
    outputs, handles = capture_outputs(model, names)
    hooks.start_step(1, record=True)
    model(inputs())
    summary = hooks.end_step()["activations"]
    assert list(summary) == names
    for module_name, output in outputs.items():
        stats = summary[module_name]
        assert stats["mean"] == pytest.approx(output.mean().item(), rel=1e-4, abs=1e-5)
        assert stats["std"] == pytest.approx(output.std().item(), rel=1e-4)
        assert stats["absmax"] == pytest.approx(output.abs().max().item(), rel=1e-6)
    if name == "resnet18":
        # bn1 is followed by ReLU(inplace=True): its stats are of what bn1 returned.
        assert summary["bn1"]["mean"] == pytest.approx(0.0, abs=1e-4)
    for handle in handles:
        handle.remove()
    hooks.start_step(2, record=False)
    model(inputs())
    assert hooks.end_step() == {}


@needs_inputs_alone
def test_activation_stats_over_micro_batches_and_amp():
    model = tiny_model()
    model.eval()  # BatchNorm layers, if any, then see each sample alone: halves add up to the batch
    middle = watched(model)[len(watched(model)) // 2]  # lenet: fc1
    batch = inputs(4)
    outputs, handles = capture_outputs(model, [middle])
    model(batch)
    handles[0].remove()
    hooks = HookSet("activations,gradients", model, middle)
    hooks.start_step(1, record=True)
    for half in batch.chunk(2):
        model(half).sum().backward()
    stats = hooks.end_step()["activations"][middle]
    # abs: a mean of about 0 (gpt_tiny's middle module is a LayerNorm) differs by rounding alone
    assert stats["mean"] == pytest.approx(outputs[middle].mean().item(), rel=1e-4, abs=1e-5)
    assert stats["std"] == pytest.approx(outputs[middle].std().item(), rel=1e-4)
    hooks.start_step(2, record=True)
    with torch.autocast("cpu", torch.bfloat16):
        model(batch).float().sum().backward()
    summary = hooks.end_step()
    assert summary["activations"][middle]["mean"] == pytest.approx(
        stats["mean"], abs=0.05 * stats["std"]
    )
    assert all(type(value) is float for value in summary["gradients"][middle].values())


@needs_inputs_alone
def test_gradient_norms_match_autograd_and_grad():
    model = tiny_model()
    for module in model.modules():
        if isinstance(module, nn.ReLU):  # autograd.grad needs the outputs kept as returned
            module.inplace = False  # (in-place ReLUs: the next test)
    names = watched(model)
    outputs, handles = {}, []
    for name in names:

        def keep(module, inputs, output, name=name):
            outputs[name] = output

        handles.append(model.get_submodule(name).register_forward_hook(keep))
    logits = model(inputs())
    loss = probe_loss(logits)
    expected = torch.autograd.grad(loss, [outputs[name] for name in names])
    for handle in handles:
        handle.remove()

    hooks = HookSet("gradients", model)
    hooks.start_step(1, record=True)
    probe_loss(model(inputs())).backward()
    summary = hooks.end_step()["gradients"]
    for name, grad in zip(names, expected, strict=True):
        norms = summary[name]
        assert norms["grad_output"] == pytest.approx(grad.norm().item(), rel=1e-5)
        parameters = dict(model.get_submodule(name).named_parameters(recurse=False))
        assert set(norms) == {"grad_output", *parameters}  # lenet: weight and bias
        for parameter_name, parameter in parameters.items():
            expected_norm = parameter.grad.norm().item()
            assert norms[parameter_name] == pytest.approx(expected_norm, rel=1e-6)


def test_gradient_norms_with_in_place_relu_match_full_backward_hooks():
    """resnet18's ReLU(inplace=True) after bn1 breaks register_full_backward_hook; the tensor hooks
    give the same numbers as full backward hooks on a copy without in-place ReLUs. (torchvision's
    resnet18, which every project has, whatever its own models.)"""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10, zero_init_residual=True)
    nn.init.normal_(model.fc.weight)  # a large head: gradients well above rounding
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    expected = {}
    for name in ["conv1", "bn1", "layer1.0.conv2", "fc"]:
        reference.get_submodule(name).register_full_backward_hook(
            lambda module, grad_in, grad_out, name=name: expected.__setitem__(
                name, grad_out[0].norm().item()
            )
        )
    reference(images().requires_grad_()).square().mean().backward()

    # layer1.0.bn2 is followed by `out += identity`, in place too (full backward hooks fail there).
    hooks = HookSet("gradients", model, "conv1,bn1,layer1.0.conv2,layer1.0.bn2,fc")
    hooks.start_step(1, record=True)
    model(images()).square().mean().backward()
    summary = hooks.end_step()["gradients"]
    got = {name: norms["grad_output"] for name, norms in summary.items()}
    assert got.pop("layer1.0.bn2") > 0
    assert got == pytest.approx(expected, rel=1e-4)
    assert summary["bn1"]["weight"] == pytest.approx(model.bn1.weight.grad.norm().item())


@needs_inputs_alone
def test_nan_check_names_module_and_step():
    model = tiny_model()
    *_, second_last, last = watched(model)  # lenet: fc2, fc3
    hooks = HookSet("nan_check", model)
    hooks.start_step(3, record=False)
    model(inputs()).sum().backward()
    assert hooks.end_step() == {}
    hooks.start_step(4, record=False)
    (model(inputs()) * float("nan")).sum().backward()  # finite outputs, NaN gradients
    with pytest.raises(
        FloatingPointError, match=f"gradient of the output of module '{last}' at step 4"
    ):
        hooks.end_step()
    with torch.no_grad():
        model.get_submodule(second_last).weight.view(-1)[0] = float("inf")
    hooks.start_step(5, record=False)
    model(inputs()).sum().backward()
    with pytest.raises(FloatingPointError, match=f"output of module '{second_last}' at step 5"):
        hooks.end_step()


def test_nan_check_stops_training(tmp_path, monkeypatch):
    poisoned = watched(tiny_model())[-2]  # lenet: fc2

    def build_poisoned_model(*args, **kwargs):
        model = model_from_options(*args, **kwargs)
        calls = []

        def poison(module, inputs):  # NaN into the module on the second training step
            calls.append(len(calls) + 1)
            return (inputs[0] * float("nan"),) if len(calls) == 2 else None

        model.get_submodule(poisoned).register_forward_pre_hook(poison)
        return model

    monkeypatch.setattr(train, "model_from_options", build_poisoned_model)
    with pytest.raises(
        SystemExit, match=rf"error: NaN or Inf in the output of module '{poisoned}' at step 2"
    ):
        run_train(tmp_path, SMALL, "--hooks=nan_check", "--max-steps=3")


def test_training_logs_hook_summaries(tmp_path):
    run_train(tmp_path, "--hooks", ALL_HOOKS, "--max-steps=2", "--log-every=1")
    steps = [record for record in read_metrics(tmp_path) if record["kind"] == "step"]
    assert [record["step"] for record in steps] == [1, 2]
    model = small_model(MODEL)  # the model of a run without --model, as tiny_args shapes it
    names = [name for name, _ in select_modules(model)]
    for record in steps:
        summary = record["hooks"]
        assert {"activations", "gradients"} <= set(summary) <= set(HOOKS)
        # Every watched module that ran (ViT's attention out_proj owns parameters but never runs).
        assert names[0] in summary["activations"] and set(summary["activations"]) <= set(names)
        assert set(summary["activations"][names[0]]) == {"mean", "std", "absmax"}
        assert "weight" in summary["gradients"][names[-1]]
        assert "grad_output" in summary["gradients"][names[-1]]
    assert not os.path.exists(tmp_path / "features")


@needs_inputs_alone
def test_hooks_only_on_logged_steps_and_feature_maps(tmp_path):
    model = tiny_model()
    first_two = watched(model)[:2]  # lenet: conv1, conv2
    run_train(
        tmp_path,
        SMALL,
        *SHAPE_ARGS,
        "--hooks=activations",
        f"--hook-modules={','.join(first_two)}",
        "--hook-save-steps=1",
        "--max-steps=2",
        "--log-every=2",
    )
    steps = [record for record in read_metrics(tmp_path) if record["kind"] == "step"]
    assert [(record["step"], list(record["hooks"]["activations"])) for record in steps] == [
        (2, first_two)
    ]
    assert os.listdir(tmp_path / "features") == ["step_00000001.pt"]
    features = torch.load(tmp_path / "features" / "step_00000001.pt", weights_only=True)
    outputs, _ = capture_outputs(model, first_two)
    model(inputs(8))  # a batch of the run's size: its feature maps have the saved shapes
    assert {name: tensor.shape for name, tensor in features.items()} == {
        name: output.shape for name, output in outputs.items()
    }  # lenet: (8, 6, 28, 28) and (8, 16, 10, 10)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hooks=activations,bogus"], "error: unknown hook 'bogus'; valid hooks: activations"),
        (["--hooks=gradients", "--hook-modules=nothing*"], "error: --hook-modules 'nothing"),
        (["--hook-save-steps=1"], "error: --hook-save-steps saves feature maps"),
    ],
)
def test_bad_hook_options_exit_with_a_message(tmp_path, capsys, extra, message):
    code, err = train_fails(capsys, *tiny_args(tmp_path, SMALL, "--max-steps=1", *extra))
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
