"""Train resnet18_ddp_vscode: `python train.py --help` lists every option.

One process: `python train.py ...`. Several, on CPUs or GPUs of one or many machines:
`torchrun --standalone --nproc-per-node 2 train.py ...` (distributed.py decides at start-up).

main() parses the options and dispatches to fit() (training), evaluate_checkpoint() (--eval-only)
or show_summary() (--summary). fit() builds everything, restores a checkpoint when resuming, and
alternates train_one_epoch() and evaluate(); a Checkpointer saves the whole training state.
"""

import sys

from options import check_quickly, parse_args, parse_list

if __name__ == "__main__":
    # Before the imports below load torch (seconds): a mistyped option answers at once.
    check_quickly(sys.argv[1:])

import functools
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import checkpoint
import distributed
import records
import runs
import sharded
import signals
import task
from dataset import CACHEABLE, build_datasets, checkpoint_metadata, options_from_data
from finetune import ModelError, download_weights, freeze, in_head, set_train_mode
from loggers import RunLog
from model import HEADS, MODEL_OPTIONS, fsdp_blocks, model_from_options
from pipeline import DatasetError, ShardedSampler, build_loader
from summary import count_parameters, format_short, format_summary, summarize

PROJECT_NAME = "resnet18_ddp_vscode"
TEMPLATE_VERSION = "0.3.0"


class ConfigError(Exception):
    """Options that cannot work together; the message says which."""


USER_ERRORS = (
    ConfigError,
    DatasetError,
    checkpoint.CheckpointError,
    distributed.SetupError,
    runs.RunDirError,
    FloatingPointError,
    OSError,
)


def main(argv=None, on_epoch=None) -> dict:
    """Parse, set up, dispatch. Every expected failure ends as one line on stderr: exit 2 for
    options that cannot work, 1 for the rest; a signal that stopped training exits 128 + it.
    `on_epoch(metrics)`, if given, is called after each epoch's validation and checkpoint (a
    sweep reports to its study there; an exception it raises ends the run, the epoch saved)."""
    args = parse_args(argv)
    try:
        ctx = distributed.setup(args.device, args.dist_timeout)
        if args.summary:
            return show_summary(args)
        if args.eval_only:
            return evaluate_checkpoint(args, ctx)
        # From here on SIGINT and SIGTERM only ask training to stop after a step and save.
        with signals.StopSignals() as stop:
            return fit(args, ctx, stop, on_epoch)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
    except signals.Stopped as stop:
        print(stop, file=sys.stderr)
        sys.exit(128 + stop.number)
    except KeyboardInterrupt:  # Ctrl-C outside training: nothing to save
        print("stopped by SIGINT", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.cleanup()


@dataclass
class Progress:
    """Where training stands. Checkpoints hold it, so a resumed run goes on from the same place."""

    loss_sum: torch.Tensor  # this epoch's training losses, summed on the device: no sync a step
    micro_batches_per_step: int = 1  # --grad-accum-steps: how many losses a step adds to loss_sum
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0  # optimizer steps taken in the current epoch
    best: float | None = None  # the best task.BEST_METRIC so far

    def state_dict(self) -> dict:
        """Collective under torchrun: the saved loss sum is the average of every process's."""
        loss_sum = distributed.all_reduce_mean(self.loss_sum.clone()).item()
        return {
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "best": self.best,
            "loss_sum": loss_sum,
            "micro_batches_per_step": self.micro_batches_per_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        # Template 0.2 kept the best score under "best_" and the metric's name without "val_".
        old_name = "best_" + task.BEST_METRIC.removeprefix("val_")
        self.step_in_epoch = state["step_in_epoch"]
        self.best = state.get("best", state.get(old_name))
        # Resumed by another process count, a step adds another number of losses (train.py
        # keeps the global batch with --grad-accum-steps): the sum so far scales with it.
        saved_per_step = state.get("micro_batches_per_step", self.micro_batches_per_step)
        self.loss_sum.fill_(state["loss_sum"] * self.micro_batches_per_step / saved_per_step)

    def train_loss(self) -> float:
        """This epoch's mean training loss so far (a collective under torchrun)."""
        loss_sum = distributed.all_reduce_mean(self.loss_sum.clone()).item()
        return loss_sum / max(self.step_in_epoch * self.micro_batches_per_step, 1)

    def improves(self, value: float) -> bool:
        """Whether `value` of task.BEST_METRIC beats the best so far (and becomes it)."""
        better = max if task.BEST_MODE == "max" else min
        improved = self.best is None or better(value, self.best) != self.best
        if improved:
            self.best = value
        return improved

    def end_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum.zero_()


@dataclass
class Loop:
    """What train_one_epoch needs besides the model: built once by fit()."""

    loader: torch.utils.data.DataLoader
    preprocess: Callable | None  # task.preprocessor(): what task.prepare applies to a batch
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: functools.partial
    steps_per_epoch: int
    total_steps: int
    log: RunLog
    checkpointer: checkpoint.Checkpointer
    stop: signals.StopSignals


def train_one_epoch(model: nn.Module, progress: Progress, loop: Loop, args) -> None:
    """Optimizer steps until the epoch ends, --max-steps is reached or a signal asks to stop."""
    device = progress.loss_sum.device
    accumulate = args.grad_accum_steps
    batches = iter(loop.loader)
    progress_bar = tqdm(
        total=loop.steps_per_epoch,
        initial=progress.step_in_epoch,
        desc=f"epoch {progress.epoch + 1}/{args.epochs}",
        leave=False,
        # Only on a terminal: in a log file (SLURM's, say) every refresh would be a new line.
        disable=not (distributed.is_main_process() and sys.stderr.isatty()),
    )
    set_train_mode(model)
    with progress_bar as bar:
        while progress.step_in_epoch < loop.steps_per_epoch and progress.step < loop.total_steps:
            logged = is_logged(progress.step + 1, args.log_every, loop.total_steps)
            micro_batch_losses = []  # of a logged step: each micro-batch's loss and its parts
            for micro_step in range(accumulate):
                batch = task.prepare(next(batches), device, loop.preprocess)
                # Under DDP, gradients are averaged once per optimizer step, not every micro-batch.
                with no_sync(model, micro_step < accumulate - 1):
                    with loop.autocast():
                        loss, parts = task.loss(model, batch)
                    loop.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
                progress.loss_sum += loss.detach()
                if logged:
                    named = {f"loss_{name}": part for name, part in parts.items()}
                    micro_batch_losses.append({"loss": loss, **named})
            if args.clip_grad_norm:
                loop.scaler.unscale_(loop.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            lr = loop.optimizer.param_groups[0]["lr"]  # the rate this step used, logged below
            loop.scaler.step(loop.optimizer)
            loop.scaler.update()
            loop.optimizer.zero_grad(set_to_none=True)
            loop.scheduler.step()
            progress.step += 1
            progress.step_in_epoch += 1
            bar.update()

            if logged:
                # The one host-device sync of a logged step; un-logged steps have none.
                means = step_means(micro_batch_losses)
                step_loss = means["loss"]
                if not math.isfinite(step_loss):
                    raise FloatingPointError(
                        f"loss is {step_loss} at step {progress.step}: lower --lr"
                    )
                record = {"kind": "step", "epoch": progress.epoch, "step": progress.step}
                record |= {**means, "lr": lr}
                loop.log.write(record)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.3g}", refresh=False)
            if args.save_every_steps and progress.step % args.save_every_steps == 0:
                loop.checkpointer.save(f"step_{progress.step:08d}.pt", aliases=(checkpoint.LAST,))
            if loop.stop.agreed():
                break


def step_means(micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The step's losses, averaged over its micro-batches and over processes, as numbers (one
    sync for all of them)."""
    values = torch.stack(
        [loss.detach().float() for losses in micro_batches for loss in losses.values()]
    )
    if len(micro_batches) > 1:
        values = values.view(len(micro_batches), -1).mean(dim=0)
    return dict(zip(micro_batches[0], distributed.all_reduce_mean(values).tolist(), strict=True))


def is_logged(step: int, log_every: int, last_step: int) -> bool:
    """Every --log-every steps, and the run's last step (so a short run still logs a line)."""
    return step % log_every == 0 or step == last_step


def no_sync(model: nn.Module, skip_gradient_sync: bool):
    """DDP's no_sync() on micro-batches before the last of an optimizer step; else nothing."""
    if sharded.is_sharded(model):
        sharded.set_gradient_sync(model, not skip_gradient_sync)
        return nullcontext()
    if skip_gradient_sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader, preprocess, autocast, stop=None) -> dict:
    """The task's validation metrics over the whole validation set, exact across processes: each
    process validates its own unpadded shard, and the task gathers its totals from every process
    (sums: added up in one all_reduce).
    A signal stops it between batches: with `stop` (signals.StopSignals), {} if all agree to."""
    model.eval()
    device = next(model.parameters()).device
    totals: dict = {}
    # A sharded model's forward pass gathers weights from every process: all take part in each.
    lockstep = sharded.is_sharded(model)
    for batch in loader:
        if stop is not None and stop.received and not lockstep:
            break
        batch = task.prepare(batch, device, preprocess)
        with autocast():
            task.accumulate(totals, task.validation_sums(model, batch))
    if lockstep:
        # A shorter shard repeats its last batch, uncounted, while the others finish theirs.
        for _ in range(sharded.most_batches(len(loader), device) - len(loader)):
            with autocast():
                task.validation_sums(model, batch)
    # Shards differ in length, so a signal is agreed on once, after every process is done.
    if stop is not None and stop.agreed():
        return {}
    return task.metrics(task.gather(totals))


def fit(args, ctx: distributed.Context, stop: signals.StopSignals, on_epoch=None) -> dict:
    """Train as `args` say, resuming when asked, until the end or until `stop` says so; return
    the last epoch's metrics."""
    output_dir = runs.choose_output_dir(args)
    print(f"run folder: {output_dir}")
    # The data first: a task may learn a model option from it (a vocabulary's size).
    data = build_data(args, ctx)
    model = make_model(args, ctx, data.model_options)
    print(format_short(args.model, count_parameters(model)))
    amp = args.amp
    if args.fsdp:
        # Before the optimizer, which must hold the sharded parameters.
        sharded.shard(model, fsdp_blocks(model), ctx.device, args.amp)
        amp = False  # the sharding's mixed-precision policy casts instead
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, data.steps_per_epoch, data.total_steps)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp and ctx.device.type == "cuda")
    progress = Progress(
        torch.zeros((), dtype=torch.float64, device=ctx.device), args.grad_accum_steps
    )
    params = {"project": PROJECT_NAME, "args": vars(args)}
    log = RunLog(output_dir, parse_list(args.logger), params, enabled=distributed.is_main_process())
    checkpointer = (sharded.ShardedCheckpointer if args.fsdp else checkpoint.Checkpointer)(
        output_dir,
        {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "scaler": scaler,
            "progress": progress,
            "log": log,
        },
        {
            "args": {**vars(args), **data.model_options},
            "template_version": TEMPLATE_VERSION,
            **data.metadata,
            "steps_per_epoch": data.steps_per_epoch,
        },
        args.keep_last,
    )
    autocast = distributed.autocast_for(amp, ctx.device)
    loop = Loop(
        loader=data.train_loader,
        preprocess=task.preprocessor(vars(args), training=True),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        autocast=autocast,
        steps_per_epoch=data.steps_per_epoch,
        total_steps=data.total_steps,
        log=log,
        checkpointer=checkpointer,
        stop=stop,
    )
    resumed = resume_from(args, output_dir, checkpointer)
    # Everything that could refuse the options or the checkpoint has run: now write.
    with runs.claim_output_dir(output_dir, args):
        records.record_invocation(output_dir, args, ctx, TEMPLATE_VERSION, resumed)
        log.open()
        train_model = wrap_for_training(model, ctx, args)
        try:
            metrics = train_epochs(model, train_model, progress, loop, data, args, on_epoch)
        except BaseException:
            log.close()
            raise
        log.close(checkpointer.path(checkpoint.LAST))
    print_where_it_went(checkpointer, progress)
    return metrics


def train_epochs(model, train_model, progress: Progress, loop: Loop, data, args, on_epoch) -> dict:
    """Train and validate epoch after epoch until the run's end; return the last metrics. On a
    signal, save last.pt and raise signals.Stopped with the command that continues the run."""
    val_preprocess = task.preprocessor(vars(args))
    metrics, start = {}, time.perf_counter()
    while progress.epoch < args.epochs and progress.step < data.total_steps:
        skip = progress.step_in_epoch * args.grad_accum_steps * args.batch_size
        data.train_sampler.set_epoch(progress.epoch, skip)
        train_one_epoch(train_model, progress, loop, args)
        if not loop.stop.agreed():
            metrics = end_of_epoch(model, progress, loop, data.val_loader, val_preprocess, args)
        signal_number = loop.stop.agreed()
        if signal_number:
            path = loop.checkpointer.save(checkpoint.LAST)
            raise signals.Stopped(
                signal_number,
                f"stopped by {signals.signal_name(signal_number)} at step {progress.step}: "
                f"saved {path}; continue with: {runs.resume_command(loop.checkpointer.output_dir)}",
            )
        shown = " ".join(f"{name} {metrics[name]:.4f}" for name in ("train_loss", *task.SHOWN))
        print(f"epoch {metrics['epoch']}: {shown} ({time.perf_counter() - start:.1f}s)")
        if on_epoch:
            on_epoch(metrics)
    return metrics


def print_where_it_went(checkpointer: checkpoint.Checkpointer, progress: Progress) -> None:
    """The run's last lines: its checkpoints, and the commands that use them."""
    best, last = checkpointer.path(checkpoint.BEST), checkpointer.path(checkpoint.LAST)
    print(f"saved {last} at step {progress.step}; {best} has the best {task.BEST_METRIC}")
    if isinstance(checkpointer, sharded.ShardedCheckpointer):
        # Evaluation, prediction and export take one file.
        folder, best = best, best + ".pt"
        print(f"one file: python sharded.py consolidate {folder} {best}")
    print(f"evaluate: python train.py --eval-only --resume {best}")
    print(f"predict:  python predict.py {best} IMAGES...")
    print(f"continue: {runs.resume_command(checkpointer.output_dir)} --epochs N --allow-changes")


def end_of_epoch(model, progress: Progress, loop: Loop, val_loader, preprocess, args) -> dict:
    """Validate, log the epoch's line, save last.pt (and best.pt); also at --max-steps. A signal
    during validation leaves the epoch to validate again when the run resumes: {}."""
    metrics = {"kind": "epoch", "epoch": progress.epoch + 1, "step": progress.step}
    metrics["train_loss"] = progress.train_loss()
    # Validate what last.pt will hold, on every process alike.
    distributed.broadcast_buffers(model)
    validation = evaluate(model, val_loader, preprocess, loop.autocast, loop.stop)
    if not validation:
        return {}
    metrics.update(validation)
    metrics["lr"] = loop.optimizer.param_groups[0]["lr"]
    loop.log.write(metrics)
    improved = progress.improves(metrics[task.BEST_METRIC])
    if progress.step_in_epoch == loop.steps_per_epoch:
        progress.end_epoch()
    loop.checkpointer.save(checkpoint.LAST, aliases=(checkpoint.BEST,) if improved else ())
    return metrics


def evaluate_checkpoint(args, ctx: distributed.Context) -> dict:
    """--eval-only: validate the weights of --resume (or --init-from) and print the metrics."""
    data = build_data(args, ctx)
    model = make_model(args, ctx, data.model_options)
    if args.resume:
        path = args.resume
        if os.path.isfile(path):
            state = checkpoint.load_checkpoint(path)
        else:
            folder = path if os.path.isdir(path) else runs.find_run_to_evaluate(args)
            found = checkpoint.find_resume_checkpoint(folder)
            for sharded in (folder, os.path.join(folder, "best")):  # a --fsdp run's step folders
                if found is None and os.path.isfile(os.path.join(sharded, ".metadata")):
                    problem = runs.checkpoint_file_problem(sharded)
                    raise checkpoint.CheckpointError(f"--eval-only takes one file: {problem}")
            if found is None:
                raise checkpoint.CheckpointError(f"no checkpoint in {folder} to evaluate")
            path, state = found
        options = {**vars(args), **data.model_options}
        checkpoint.Checkpointer(None, {"model": model}, {"args": options}).restore(state, path)
    else:
        path = args.init_from
    samples = len(data.val_loader.dataset)
    print(f"evaluating {path} on {samples} validation samples of {describe_data(args)}")
    preprocess = task.preprocessor(vars(args))
    autocast = distributed.autocast_for(args.amp, ctx.device)
    metrics = evaluate(model, data.val_loader, preprocess, autocast)
    print(json.dumps(metrics))
    return metrics


def describe_data(args) -> str:
    """--dataset and, when it reads files, --data-dir, as options."""
    where = f" --data-dir {args.data_dir}" if args.dataset in CACHEABLE else ""
    return f"--dataset {args.dataset}{where}"


def show_summary(args) -> dict:
    """--summary: every layer's output shape and parameters, then the totals."""
    learned = {}
    if not set(MODEL_OPTIONS) <= vars(args).keys():  # the data decides some (a vocabulary)
        learned = options_from_data(build_datasets(args)[0])
    model = make_model(args, distributed.Context(torch.device("cpu")), learned)
    example = task.example_input({**vars(args), **learned}, batch_size=1)
    try:
        summary = summarize(model, example)
    except ValueError as error:  # summarize's own one-line account of a failed forward pass
        raise ConfigError(str(error)) from None
    print(format_summary(summary, args.model))
    totals = count_parameters(model)
    return {"params": totals.params, "trainable": totals.trainable, "frozen": totals.frozen}


# ---- building blocks ---------------------------------------------------------------------------


def make_model(args, ctx: distributed.Context, learned: dict) -> nn.Module:
    """The model of --model on the device: pretrained or --init-from weights, frozen parts.
    `learned`: the model options the data decided (Data.model_options)."""
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.compile and not torch._dynamo.is_dynamo_supported():
        raise ConfigError("torch.compile is not supported on this platform: drop --compile")
    # Every process builds identical initial weights from --seed ...
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.download and args.weights:
        download_weights(args.model, args.weights)
    if args.backbone_lr_mult == 0:
        args.freeze = "backbone"
    try:
        model = model_from_options({**vars(args), **learned})
        frozen = freeze(model, args.freeze, HEADS.get(args.model, ""))
    except ModelError as error:
        raise ConfigError(str(error)) from None
    if args.init_from:
        print(checkpoint.init_from(model, args.init_from, args.model))
    if frozen:
        print(f"froze {len(frozen)} parameter tensors ({args.freeze})")
    if args.sync_bn and ctx.world_size > 1:
        if ctx.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU version)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    model.to(ctx.device, memory_format=memory_format)
    # ... and then its own random streams (dropout, augmentation).
    random.seed(args.seed + ctx.rank)
    torch.manual_seed(args.seed + ctx.rank)
    return model


def wrap_for_training(model: nn.Module, ctx: distributed.Context, args) -> nn.Module:
    """DDP across processes, then torch.compile; checkpoints and hooks keep the plain model."""
    if sharded.is_sharded(model):  # sharded by fit() already
        return model
    if ctx.world_size > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(model) if args.compile else model


@dataclass
class Data:
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_sampler: ShardedSampler
    steps_per_epoch: int
    total_steps: int  # the run's last optimizer step: --epochs, or --max-steps if sooner
    metadata: dict  # what checkpoints keep of the data (class names, a tokenizer)
    # Model options that the data decides (a vocabulary's size): not options of the command
    # line, so not in config.json; checkpoints keep them with the options.
    model_options: dict


def build_data(args, ctx: distributed.Context) -> Data:
    """The loaders of --dataset: every process its own shard, shuffled per epoch."""
    train_set, val_set = build_datasets(args)
    train_sampler = ShardedSampler(len(train_set), True, args.seed, ctx.rank, ctx.world_size)
    val_sampler = ShardedSampler(len(val_set), False, 0, ctx.rank, ctx.world_size, pad=False)
    loader = functools.partial(
        build_loader,
        batch_size=args.batch_size,
        workers=args.workers,
        pin_memory=ctx.device.type == "cuda",
        seed=args.seed,
        collate=task.COLLATE,
    )
    train_loader = loader(train_set, train_sampler)
    steps_per_epoch = len(train_loader) // args.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(train_set)} training samples give no optimizer step with --batch-size "
            f"{args.batch_size} and --grad-accum-steps {args.grad_accum_steps}"
        )
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    return Data(
        train_loader,
        loader(val_set, val_sampler),
        train_sampler,
        steps_per_epoch,
        total_steps,
        checkpoint_metadata(train_set),
        options_from_data(train_set),
    )


def resume_from(args, output_dir: str, checkpointer: checkpoint.Checkpointer) -> str | None:
    """Restore the training state from --resume: a checkpoint file, or the newest checkpoint of
    the run folder that loads ("auto" in a folder with none yet: the run starts at step 0).
    Returns the path."""
    if not args.resume:
        return None
    if os.path.isfile(args.resume):
        path, state = args.resume, checkpointer.load(args.resume)
    else:
        found = checkpointer.find_resume(output_dir)
        if found is None and args.resume != "auto":
            raise checkpoint.CheckpointError(
                f"no checkpoint in {output_dir} to resume: start a run there with --overwrite"
            )
        if found is None:
            print(f"no checkpoint in {output_dir} yet: starting at step 0")
            return None
        path, state = found
    steps_per_epoch = checkpointer.metadata["steps_per_epoch"]
    saved_steps = state.get("steps_per_epoch", steps_per_epoch)
    if saved_steps != steps_per_epoch and not args.allow_changes:
        raise checkpoint.CheckpointError(
            f"{path} was trained with {saved_steps} steps an epoch, these options make "
            f"{steps_per_epoch}: resume with the run's process count and options, or add "
            "--allow-changes"
        )
    checkpointer.restore(state, path)
    progress = state["progress"]
    print(f"resumed from {path} at epoch {progress['epoch']}, step {progress['step']}")
    return path


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    head = HEADS.get(args.model, "")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if args.backbone_lr_mult is None:
        groups = [{"params": [p for _, p in trainable]}]
    else:
        head_params = [p for n, p in trainable if in_head(n, head)]
        backbone_params = [p for n, p in trainable if not in_head(n, head)]
        groups = [
            {"params": head_params},
            {"params": backbone_params, "lr": args.lr * args.backbone_lr_mult},
        ]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(
        groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose restored state follows this run's schedule: a run resumed with more
    --epochs or --max-steps takes the learning rate of its own, longer schedule."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        factors = zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas, strict=True)
        for group, base_lr, factor in factors:
            group["lr"] = base_lr * factor(self.last_epoch)


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

    return Schedule(optimizer, factor)


if __name__ == "__main__":
    with distributed.exit_without_teardown():
        main()
