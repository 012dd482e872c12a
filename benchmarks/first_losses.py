"""Losses at default flags: the logged training loss of the first steps of every catalog model.

What a new user sees first. `python train.py --model NAME --log-every 1` with every other flag
at its default (fake data, batch 32, SGD momentum 0.9, weight decay 1e-4, cosine over 10 epochs,
no warm-up; template 0.2.0's lr is 0.05), on the CPU; the loss of each of the first 30 steps, as
metrics.jsonl logs it. The run is stopped after those steps without --max-steps, which would
shorten the cosine schedule and lower the learning rate of the very steps measured.

Target: from the second logged step on (the first is the initial weights' loss), every logged
loss below 2 x ln(classes), twice the loss of a uniform guess: 4.61 for 10 classes. Fake data
has random labels, so nothing can be learnt quickly; a loss far above ln(classes) means the
first updates were too large for the model, not that it is learning.

Variants emulate a change to the template without editing it: flags (a warm-up, a lower lr), or
a change to the freshly built model (zero-initialised residual branches), applied in the worker
to the project's own model.build_model. Each sets what it compares explicitly, so the columns
mean the same before and after the template changes; "default" alone takes the template as is.

    python benchmarks/first_losses.py              # every model, the variants of the table; prints
    python benchmarks/first_losses.py --write      # and rewrites its section of BENCHMARKS.md
    python benchmarks/first_losses.py --models resnet18 --variants "0.2.0 defaults,proposed"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PYTHON,
    ROOT,
    Context,
    bench_env,
    run_checked,
    run_worker,
    set_threads,
    worker_main,
)

STEPS = 30
CLASSES = 10
LIMIT = 2 * math.log(CLASSES)
SECTION = "losses at default flags"
# variant -> (train.py flags, change to the built model or None, what it stands for). Each sets
# what it compares explicitly, so that the table means the same before and after a change to the
# template's defaults; "default" alone takes the template as it is.
OLD = ["--lr", "0.05"]  # template 0.2.0's SGD lr
VARIANTS = {
    "0.2.0 defaults": (
        OLD,
        "resnet_norms_at_one",
        "before: lr 0.05, no warm-up, torchvision's init (no zero-init), as in template 0.2.0",
    ),
    "warm-up": (
        OLD + ["--warmup-epochs", "1"],
        "resnet_norms_at_one",
        "0.2.0 defaults and --warmup-epochs 1 (a linear warm-up over 16 steps here)",
    ),
    "zero-init": (
        OLD,
        "zero_init_residual",
        "0.2.0 defaults with every residual branch starting at zero: the last norm of each block "
        "of ResNet, MobileNet and EfficientNet, the last linear layers of ViT's",
    ),
    "lr 0.01": (["--lr", "0.01"], "resnet_norms_at_one", "--lr 0.01 instead of 0.05"),
    "proposed": (
        ["--lr", "0.01"],
        "zero_init_resnets",
        "--lr 0.01, and ResNets built with zero_init_residual=True",
    ),
    "default": (
        [],
        None,
        "after: the template as it is now, no flags: SGD lr 0.01, ResNets built with "
        "zero_init_residual=True",
    ),
    # Also measured while looking for the change:
    "warm-up + zero-init": (
        OLD + ["--warmup-epochs", "1"],
        "zero_init_residual",
        "both warm-up and zero-init",
    ),
    "lr 0.02": (["--lr", "0.02"], "resnet_norms_at_one", "--lr 0.02"),
    "lr 0.005": (["--lr", "0.005"], "resnet_norms_at_one", "--lr 0.005"),
    "zero-init + lr 0.02": (["--lr", "0.02"], "zero_init_residual", "zero-init and --lr 0.02"),
    "zero-init + lr 0.01": (["--lr", "0.01"], "zero_init_residual", "zero-init and --lr 0.01"),
}
SHOWN = ["0.2.0 defaults", "warm-up", "zero-init", "lr 0.01", "proposed", "default"]


def model_names(project: Path) -> list[str]:
    """The project's model.MODEL_NAMES (asked in a child process: run.py never imports torch)."""
    probe = "import json, model; print(json.dumps(model.MODEL_NAMES))"
    answer = run_checked([PYTHON, "-c", probe], cwd=project, env=bench_env(1))
    return json.loads(answer.output.strip().splitlines()[-1])


def measure_all(project: Path, models: list[str], variants: list[str], work: Path, threads: int):
    """{model: {variant: result}} from one worker process per model."""
    ctx = Context(quick=False, devices=["cpu"], threads=threads, work=work)
    results = {}
    for model in models:
        start = time.perf_counter()
        config = {"project": str(project), "model": model, "variants": variants}
        config["threads"] = threads
        results[model] = run_worker("first_losses", config, ctx)
        print(f"  {model}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def summary(losses: list[float | None]) -> dict:
    """The first logged loss, the largest after it (and its step), the last one."""
    later = [(loss, step) for step, loss in enumerate(losses[1:], start=2)]
    bad = [(step, loss) for loss, step in later if loss is None or not math.isfinite(loss)]
    finite = [(loss, step) for loss, step in later if loss is not None and math.isfinite(loss)]
    worst, at = max(finite) if finite else (math.inf, None)
    if bad:
        worst, at = math.inf, bad[0][0]
    return {"first": losses[0], "max": worst, "max_step": at, "last": losses[-1]}


def cell(result: dict) -> str:
    if result.get("error"):
        return f"stopped: {result['error']}"
    info = summary(result["losses"])
    mark = "" if info["max"] < LIMIT else " **over**"
    if not math.isfinite(info["max"]):
        return f"diverged at step {info['max_step']}{mark}"
    return f"{info['max']:.2f} (step {info['max_step']}){mark}"


def table(results: dict, variants: list[str]) -> str:
    header = ["model", f"step 1 ({variants[0]})", *variants]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_variant in results.items():
        first = by_variant[variants[0]]
        start = f"{first['losses'][0]:.2f}" if first.get("losses") else "—"
        cells = [model, start, *(cell(by_variant[variant]) for variant in variants)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def over(results: dict, variant: str) -> list[str]:
    return [
        model
        for model, by_variant in results.items()
        if by_variant[variant].get("error")
        or summary(by_variant[variant]["losses"])["max"] >= LIMIT
    ]


def render(run: dict) -> str:
    """The BENCHMARKS.md section of one run: {"results", "variants", "command", "elapsed",
    "date"}."""
    import report

    results, variants = run["results"], run["variants"]
    shown = [variant for variant in variants if variant in SHOWN]
    others = [variant for variant in variants if variant not in SHOWN]
    legend = "\n".join(f"- {name}: {VARIANTS[name][2]}" for name in variants)
    tables = table(results, shown or variants)
    if shown and others:
        tables += "\n\nAlso measured, on the way to the proposal:\n\n" + table(results, others)
    verdicts = []
    for variant in variants:
        above = over(results, variant)
        verdicts.append(
            f"- {variant}: "
            + ("every model under the line" if not above else "over the line: " + ", ".join(above))
        )
    body = f"""## Losses at default flags

Written by `{run["command"]}`
on {run["date"]}, in {run["elapsed"]:.0f} s (CPU, 1 thread); `make bench` keeps this section.
{run.get("origin", "")}
The logged training loss of each of the first {STEPS} steps of `train.py --model NAME
--log-every 1`, every other flag at its default but those a column names: fake data with random
labels, batch 32, SGD momentum 0.9, cosine over 10 epochs of 16 steps, no warm-up. Each cell is
the largest loss from step 2 on (step 1 is the initial weights' loss) and its step; **over**
marks one at or above 2 x ln({CLASSES}) = {LIMIT:.2f}, twice a uniform guess's loss. Losses are
the same from run to run (seeded, one thread).

{legend}

{tables}

{chr(10).join(verdicts)}

`--json FILE` writes every loss, step by step; `--from-json FILE` writes this section again
from such a file without training."""
    return report.section(SECTION, body)


# ---- the worker -------------------------------------------------------------------------------


class Enough(Exception):
    """Raised after the last measured step: stops train.py without touching its schedule."""


def zero_init_residual(model) -> None:
    """Zero the last normalization of every residual branch, so each block starts as the
    identity (torchvision's zero_init_residual for ResNets; the same for the inverted residual
    blocks of MobileNet and EfficientNet; ConvNeXt's layer scale already starts at 1e-6). ViT
    has no norm at the end of its branches: the last linear layer of each is zeroed instead."""
    from torch import nn
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock

    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
        elif isinstance(module, (InvertedResidual, MBConv)) and module.use_res_connect:
            norms = [m for m in module.block.modules() if isinstance(m, nn.BatchNorm2d)]
            nn.init.zeros_(norms[-1].weight)
        elif isinstance(module, EncoderBlock):
            for layer in (module.self_attention.out_proj, module.mlp[-2]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)


def resnet_blocks(model):
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for module in model.modules():
        if isinstance(module, Bottleneck):
            yield module.bn3
        elif isinstance(module, BasicBlock):
            yield module.bn2


def zero_init_resnets(model) -> None:
    """What torchvision's resnet(zero_init_residual=True) does: each block starts as the
    identity."""
    from torch import nn

    for norm in resnet_blocks(model):
        nn.init.zeros_(norm.weight)


def resnet_norms_at_one(model) -> None:
    """torchvision's own init of those norms (and template 0.2.0's): weight 1."""
    from torch import nn

    for norm in resnet_blocks(model):
        nn.init.ones_(norm.weight)


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    sys.path.insert(0, config["project"])
    import model as model_module
    import train

    original_build = model_module.build_model
    changes = {
        "zero_init_residual": zero_init_residual,
        "zero_init_resnets": zero_init_resnets,
        "resnet_norms_at_one": resnet_norms_at_one,
    }
    results = {}
    for variant in config["variants"]:
        flags, change, _ = VARIANTS[variant]

        def build(*args, change=change, **kwargs):
            built = original_build(*args, **kwargs)
            if change:
                with torch.no_grad():
                    changes[change](built)
            return built

        train.build_model = build
        steps = [0]

        def stop_after(optimizer, args, kwargs, steps=steps):
            steps[0] += 1
            if steps[0] > STEPS:
                raise Enough

        handle = register_optimizer_step_post_hook(stop_after)
        out = tempfile.mkdtemp(dir=os.getcwd())
        error = None
        try:
            train.main([
                "--model", config["model"], "--log-every", "1", "--workers", "0",
                "--device", "cpu", "--output-dir", out, *flags,
            ])  # fmt: skip
        except Enough:
            pass
        except SystemExit as stopped:  # train.py's own one-line errors: a non-finite loss
            error = str(stopped.code)
        finally:
            handle.remove()
        lines = Path(out, "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        losses = [r["loss"] for r in records if r.get("kind") == "step"][:STEPS]
        results[variant] = {"losses": losses, "error": error}
        if error and len(losses) < STEPS:
            results[variant]["losses"] = losses + [None] * (STEPS - len(losses))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated (default: every catalog model)")
    parser.add_argument("--variants", default=",".join(SHOWN), help="comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="rewrite the BENCHMARKS.md section")
    parser.add_argument("--json", help="also write every loss to this JSON file")
    parser.add_argument("--from-json", help="no training: the section of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        run = json.loads(Path(args.from_json).read_text())
    else:
        run = measure_run(args)
    block = render(run)
    print(block)
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    if args.write:
        import report

        path = ROOT / "BENCHMARKS.md"
        path.write_text(report.put_section(path.read_text(), SECTION, block), encoding="utf-8")
        print(f"wrote {path}")
    return 0


def measure_run(args) -> dict:
    from scaffold.options import NewProject
    from scaffold.render import create_project

    started = time.perf_counter()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="scaffold-losses-") as scratch:
        work = Path(scratch)
        project = work / "proj"
        create_project(NewProject(dest=project, model="lenet"), git=False)
        models = args.models.split(",") if args.models else model_names(project)
        results = measure_all(project, models, variants, work, args.threads)
    command = "python benchmarks/first_losses.py" + (" --write" if args.write else "")
    if args.models:
        command += f" --models {args.models}"
    if args.variants != ",".join(SHOWN):
        command += f' --variants "{args.variants}"'
    return {
        "results": results,
        "variants": variants,
        "command": command,
        "elapsed": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(worker)
    else:
        sys.exit(main())
