"""Train vit_b_16_hooks_vscode. `python train.py --help` lists every option."""

import argparse
import functools
import json
import math
import os
import random
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

import checkpoint
from dataset import DATASETS, DatasetError, ShardedSampler, build_datasets, build_loader
from hooks import HookSet
from model import HEADS, MODEL_NAMES, build_model, download_weights, freeze, set_train_mode
from summary import count_parameters, format_short, format_summary, summarize

TEMPLATE_VERSION = "0.1.0"


class ConfigError(Exception):
    """Options that cannot work together; the message says which."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="fake", choices=list(DATASETS))
    data.add_argument("--data-dir", default="data", help="dataset root (folder, cifar10, mnist)")
    data.add_argument("--download", action="store_true", help="allow downloading data and weights")
    data.add_argument("--fake-size", type=int, default=512, help="training samples of 'fake'")
    data.add_argument("--num-classes", type=int, default=10)
    data.add_argument("--in-channels", type=int, default=3)
    data.add_argument("--image-size", type=int, default=32)
    data.add_argument("--augment", action="store_true", help="random crops and flips")
    data.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping"
    )
    data.add_argument("--batch-size", type=int, default=32, help="per process")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")

    model = parser.add_argument_group("model and fine-tuning")
    model.add_argument("--model", default="vit_b_16", choices=MODEL_NAMES)
    model.add_argument("--weights", help="torchvision pretrained weights: DEFAULT or a name")
    model.add_argument("--init-from", help="start from this checkpoint or state_dict file")
    model.add_argument("--freeze", default="none", help="none, backbone, or parameter-name globs")
    model.add_argument(
        "--backbone-lr-mult", type=float, help="backbone lr = lr * X (head keeps --lr; 0 freezes)"
    )
    model.add_argument(
        "--summary", action="store_true", help="print every layer's shape and parameters, then exit"
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    optim.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    optim.add_argument("--lr", type=float, help="learning rate (default: 0.05 sgd, 0.001 adamw)")
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument(
        "--lr-scheduler", default="cosine", choices=["cosine", "step", "onecycle", "none"]
    )
    optim.add_argument("--lr-step-epochs", type=int, default=30, help="period of 'step'")
    optim.add_argument("--lr-gamma", type=float, default=0.1, help="decay of 'step'")
    optim.add_argument("--warmup-epochs", type=float, default=0.0)
    optim.add_argument("--grad-accum-steps", type=int, default=1)
    optim.add_argument("--clip-grad-norm", type=float, help="clip the gradient norm to this")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="runs/train")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--deterministic", action="store_true", help="bit-reproducible kernels")
    run.add_argument("--amp", action="store_true", help="bfloat16 on CPU, float16 on CUDA")
    run.add_argument("--channels-last", action="store_true")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    run.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps")
    run.add_argument("--keep-last", type=int, default=3, help="step checkpoints to keep")
    run.add_argument("--resume", help="a checkpoint path, or 'auto' for the newest in --output-dir")
    run.add_argument("--eval-only", action="store_true", help="validate the loaded weights, exit")
    run.add_argument("--tensorboard", action="store_true", help="write TensorBoard events")

    hooks = parser.add_argument_group("hooks")
    hooks.add_argument("--hooks", default="", help="comma-separated: activations,gradients,...")
    hooks.add_argument("--hook-modules", default="", help="module-name globs, comma-separated")
    hooks.add_argument("--hook-save-steps", type=int, default=0, help="save N steps' features")

    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "sgd" else 0.001
    if args.keep_last < 1 or args.grad_accum_steps < 1 or args.batch_size < 1:
        parser.error("--keep-last, --grad-accum-steps and --batch-size must be at least 1")
    if args.eval_only and not (args.resume or args.init_from):
        parser.error("--eval-only needs weights: pass --resume PATH or --init-from PATH")
    return args


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA device is visible: use --device cpu")
    return torch.device(choice)


def make_deterministic() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    head = HEADS.get(args.model, "")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if args.backbone_lr_mult is None:
        groups = [{"params": [p for _, p in trainable]}]
    else:
        head_params = [p for n, p in trainable if n.startswith(head + ".")]
        backbone_params = [p for n, p in trainable if not n.startswith(head + ".")]
        groups = [
            {"params": head_params},
            {"params": backbone_params, "lr": args.lr * args.backbone_lr_mult},
        ]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(
        groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )


def build_scheduler(optimizer, args, steps_per_epoch: int, total_steps: int):
    if args.lr_scheduler == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=total_steps)
    warmup = int(args.warmup_epochs * steps_per_epoch)
    step_period = max(args.lr_step_epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.lr_scheduler == "cosine":
            progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if args.lr_scheduler == "step":
            return args.lr_gamma ** (step // step_period)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MetricsLog:
    """OUTPUT_DIR/metrics.jsonl, one JSON object a line; a resumed run first drops lines written
    after its checkpoint, so the file ends up as if the run had never stopped.

    The file stays open for the whole run (opening it for every line cost more than the rest of a
    logged step); each line is flushed as it is written.
    """

    def __init__(self, path: str, keep_lines: int):
        lines = []
        if keep_lines and os.path.exists(path):
            with open(path) as file:
                lines = file.readlines()[:keep_lines]
        self.file = open(path, "w")
        self.file.writelines(lines)
        self.file.flush()
        self.lines = len(lines)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1

    def close(self) -> None:
        self.file.close()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, autocast, channels_last: bool) -> dict:
    """Loss and top-1 accuracy over the whole validation set."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, labels in loader:
        images, labels = to_device(images, labels, device, channels_last)
        with autocast():
            logits = model(images)
        totals[0] += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.numel()
    loss_sum, correct, count = totals.tolist()
    return {"val_loss": loss_sum / max(count, 1), "val_acc": correct / max(count, 1)}


def to_device(images, labels, device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def open_tensorboard(output_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(os.path.join(output_dir, "tensorboard"))


def train(args) -> dict:
    """Run training (or evaluation) as `args` say; return the last metrics."""
    device = pick_device(args.device)
    if args.deterministic:
        make_deterministic()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.compile and not torch._dynamo.is_dynamo_supported():
        raise ConfigError("torch.compile is not supported on this platform: drop --compile")
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    if args.download and args.weights:
        download_weights(args.model, args.weights)
    if args.backbone_lr_mult == 0:
        args.freeze = "backbone"
    try:
        model = build_model(
            args.model, args.num_classes, args.in_channels, args.image_size, args.weights
        )
        frozen = freeze(model, args.freeze, HEADS.get(args.model, ""))
    except (ValueError, AssertionError, FileNotFoundError) as error:
        # torchvision checks some sizes with assert (vit_b_16: image size divisible by 16)
        raise ConfigError(str(error) or f"{args.model} cannot take these options") from None
    if args.init_from:
        print(checkpoint.init_from(model, args.init_from))
    if frozen:
        print(f"froze {len(frozen)} parameter tensors ({args.freeze})")
    totals = count_parameters(model)
    if args.summary:
        try:
            summary = summarize(model, (1, args.in_channels, args.image_size, args.image_size))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        print(format_summary(summary, args.model))
        return {"params": totals.params, "trainable": totals.trainable, "frozen": totals.frozen}
    print(format_short(args.model, totals))
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)

    train_set, val_set = build_datasets(args)
    train_sampler = ShardedSampler(len(train_set), shuffle=True, seed=args.seed)
    val_sampler = ShardedSampler(len(val_set), shuffle=False, pad=False)
    loader = functools.partial(
        build_loader,
        batch_size=args.batch_size,
        workers=args.workers,
        pin_memory=device.type == "cuda",
        seed=args.seed,
    )
    train_loader = loader(train_set, train_sampler)
    val_loader = loader(val_set, val_sampler)

    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = functools.partial(torch.autocast, device.type, amp_dtype, enabled=args.amp)
    if args.eval_only:
        if args.resume:
            model.load_state_dict(checkpoint.load_checkpoint(args.resume, device)["model"])
        metrics = evaluate(model, val_loader, device, autocast, args.channels_last)
        print(json.dumps(metrics))
        return metrics

    steps_per_epoch = len(train_loader) // args.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(train_set)} training samples give no optimizer step with --batch-size "
            f"{args.batch_size} and --grad-accum-steps {args.grad_accum_steps}"
        )
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)

    def is_logged(step: int) -> bool:
        """Every --log-every steps, and the run's last step (so a short run still logs a line)."""
        return step % args.log_every == 0 or step == total_steps

    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    criterion = nn.CrossEntropyLoss()
    train_model = model
    if args.compile:
        train_model = torch.compile(train_model)

    os.makedirs(args.output_dir, exist_ok=True)
    epoch, step, step_in_epoch, best_acc, metrics_lines = 0, 0, 0, -1.0, 0
    epoch_loss = torch.zeros((), dtype=torch.float64, device=device)  # sum over this epoch's steps
    resume_path = args.resume
    state = None
    if args.resume == "auto":
        found = checkpoint.find_resume_checkpoint(args.output_dir)
        resume_path, state = found if found else (None, None)
    elif args.resume:
        state = checkpoint.load_checkpoint(args.resume)
    if state is not None:
        checkpoint.check_compatible(model, state, resume_path, vars(args))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            # A run resumed with more --epochs or --max-steps follows its own, longer schedule.
            groups = optimizer.param_groups
            factors = zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
            for group, base_lr, factor in factors:
                group["lr"] = base_lr * factor(scheduler.last_epoch)
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        epoch, step, step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        best_acc, metrics_lines = state["best_acc"], state["metrics_lines"]
        epoch_loss.fill_(state["epoch_loss"])
        # Last, after everything that draws random numbers has been built.
        checkpoint.restore_rng_state(state["rng"])
        print(f"resumed from {resume_path} at epoch {epoch}, step {step}")
    metrics_log = MetricsLog(os.path.join(args.output_dir, "metrics.jsonl"), metrics_lines)
    writer = open_tensorboard(args.output_dir) if args.tensorboard else None
    try:
        hooks = HookSet(args.hooks, model, args.hook_modules, args.output_dir, args.hook_save_steps)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    def log(record: dict) -> None:
        metrics_log.write(record)
        if writer:
            for name, value in record.items():
                if isinstance(value, float):
                    writer.add_scalar(f"{record['kind']}/{name}", value, record["step"])

    def save(name: str, completed_epochs: int, aliases=()) -> None:
        """Checkpoint to OUTPUT_DIR/name and point each alias (last.pt, best.pt) at it."""
        path = os.path.join(args.output_dir, name)
        finished_epoch = completed_epochs > epoch
        loss_sum = 0.0 if finished_epoch else epoch_loss.item()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": completed_epochs,
            "step": step,
            "step_in_epoch": 0 if finished_epoch else step_in_epoch,
            "epoch_loss": loss_sum,
            "best_acc": best_acc,
            "metrics_lines": metrics_log.lines,
            "args": vars(args),
            "rng": checkpoint.rng_state(),
            "template_version": TEMPLATE_VERSION,
        }
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        checkpoint.save_checkpoint(state, path)
        for alias in aliases:
            checkpoint.publish(path, os.path.join(args.output_dir, alias))
        checkpoint.prune_step_checkpoints(args.output_dir, args.keep_last)

    metrics = {}
    start = time.perf_counter()
    while epoch < args.epochs and (args.max_steps is None or step < args.max_steps):
        skip = step_in_epoch * args.grad_accum_steps * args.batch_size
        train_sampler.set_epoch(epoch, skip)
        set_train_mode(train_model)
        progress = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            initial=step_in_epoch * args.grad_accum_steps,
            total=steps_per_epoch * args.grad_accum_steps,
            leave=False,
        )
        for micro_step, (images, labels) in enumerate(progress):
            if step_in_epoch == steps_per_epoch:
                break  # micro-batches left over when --grad-accum-steps does not divide them
            last_micro_step = (micro_step + 1) % args.grad_accum_steps == 0
            if micro_step % args.grad_accum_steps == 0:
                hooks.start_step(step + 1, record=is_logged(step + 1))
            images, labels = to_device(images, labels, device, args.channels_last)
            with autocast():
                loss = criterion(train_model(images), labels) / args.grad_accum_steps
            scaler.scale(loss).backward()
            epoch_loss += loss.detach()
            if not last_micro_step:
                continue
            if args.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            hook_summary = hooks.end_step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used, logged below
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            step_in_epoch += 1

            if is_logged(step):
                step_loss = loss.item() * args.grad_accum_steps
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"loss is {step_loss} at step {step}: lower --lr")
                record = {"kind": "step", "epoch": epoch, "step": step, "loss": step_loss, "lr": lr}
                if hook_summary:
                    record["hooks"] = hook_summary
                log(record)
                # refresh=False: shown at the bar's next redraw rather than forcing one now
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}", refresh=False)
            if args.save_every_steps and step % args.save_every_steps == 0:
                save(f"step_{step:08d}.pt", epoch, aliases=[checkpoint.LAST])
            if args.max_steps is not None and step >= args.max_steps:
                break
        progress.close()

        completed = step_in_epoch == steps_per_epoch
        train_loss = epoch_loss.item() / max(step_in_epoch, 1)
        metrics = {"kind": "epoch", "epoch": epoch + 1, "step": step, "train_loss": train_loss}
        metrics.update(evaluate(model, val_loader, device, autocast, args.channels_last))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        log(metrics)
        print(
            f"epoch {epoch + 1}: train_loss {train_loss:.4f} val_loss {metrics['val_loss']:.4f} "
            f"val_acc {metrics['val_acc']:.4f} ({time.perf_counter() - start:.1f}s)"
        )
        aliases = [checkpoint.BEST] if metrics["val_acc"] > best_acc else []
        best_acc = max(best_acc, metrics["val_acc"])
        save(checkpoint.LAST, epoch + 1 if completed else epoch, aliases)
        if completed:
            epoch, step_in_epoch = epoch + 1, 0
            epoch_loss.zero_()
    hooks.detach()
    metrics_log.close()
    if writer:
        writer.close()
    return metrics


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        return train(args)
    except (ConfigError, DatasetError, checkpoint.CheckpointError, FloatingPointError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
