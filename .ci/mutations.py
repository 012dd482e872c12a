#!/usr/bin/env python3
"""`make test-mutations`: break the code on purpose, one named break at a time, and check that the
tests written to catch each break fail.

Each Mutation replaces one snippet (it must occur exactly once: a break that no longer applies is
an error, not a skip) in a file of
  - a generated project (PROJECTS: a lenet project, one made with --ddp, a resnet18 one),
    rendered once into a scratch folder, or
  - a copy of this repository ("repo": the scaffold package, its templates, its tests),
then runs the named tests there and expects them to fail. First, each group of tests runs once
unbroken: a test that fails already proves nothing.

    python .ci/mutations.py            # every mutation; exit 1 if any survives
    python .ci/mutations.py --list     # the names, targets and tests
    python .ci/mutations.py --only resume-disabled,oldest-checkpoint
    python .ci/mutations.py --check    # only that every snippet and test is there (fast, no tests)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `scaffold new` flags of each generated project a mutation can target.
PROJECTS = {
    "project": ["--model", "lenet"],
    "ddp": ["--model", "lenet", "--ddp"],
    "resnet": ["--model", "resnet18", "--no-hooks"],
    "lm": ["--task", "lm", "--model", "gpt_tiny"],
    "detection": ["--task", "detection", "--model", "tiny_rcnn"],
}


@dataclass(frozen=True)
class Mutation:
    name: str
    target: str  # a key of PROJECTS, or "repo"
    path: str  # relative to the project or the repository
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the same folder


TRAIN = "tests/test_train.py::"
RUNS = "tests/test_runs.py::"
LEARNING = "tests/test_learning.py::"
BEHAVIOUR = "tests/test_behaviour.py::"
DDP = "tests/test_ddp.py::"
FSDP = "tests/test_fsdp.py::"
RESUME = "tests/test_resume.py::"
SWEEP = "tests/test_sweep.py::"
LM = "tests/test_lm.py::"
IMAGES = "tests/test_images.py::"
MUTATIONS = (
    # Breaks that leave a finite loss and a saved checkpoint: only a run that must learn sees them.
    Mutation(
        "optimizer-step-skipped",
        "project",
        "train.py",
        "            loop.scaler.step(loop.optimizer)\n",
        "",
        (LEARNING + "test_synthetic_shapes_are_learned_far_above_chance",),
    ),
    Mutation(
        "gradients-cleared-before-the-step",
        "project",
        "train.py",
        "            loop.scaler.step(loop.optimizer)\n",
        "            loop.optimizer.zero_grad()\n            loop.scaler.step(loop.optimizer)\n",
        (LEARNING + "test_synthetic_shapes_are_learned_far_above_chance",),
    ),
    Mutation(
        "labels-shuffled-against-their-images",
        "project",
        "task.py",
        "    return images, labels.to(device, non_blocking=True)\n",
        "    return images, labels[torch.randperm(len(labels))].to(device, non_blocking=True)\n",
        (LEARNING + "test_synthetic_shapes_are_learned_far_above_chance",),
    ),
    Mutation(
        "learning-rate-stuck-at-zero",
        "project",
        "train.py",
        "            return 0.5 * (1.0 + math.cos(math.pi * progress))\n",
        "            return 0.0\n",
        (LEARNING + "test_synthetic_shapes_are_learned_far_above_chance",),
    ),
    Mutation(
        "optimizer-step-skipped-under-ddp",
        "ddp",
        "train.py",
        "            loop.scaler.step(loop.optimizer)\n",
        "",
        (DDP + "test_two_processes_with_gradient_accumulation_learn_far_above_chance",),
    ),
    # Behaviours that leave a run that trains, saves and even learns: tests/test_behaviour.py.
    Mutation(
        "best-score-forgotten-on-resume",
        "project",
        "train.py",
        '        self.best = state.get("best", state.get(old_name))\n',
        "        self.best = None\n",
        (BEHAVIOUR + "test_a_resumed_run_keeps_the_best_score_of_the_run_it_continues",),
    ),
    Mutation(
        "best-pt-saved-every-epoch",
        "project",
        "train.py",
        "        improved = self.best is None or better(value, self.best) != self.best\n",
        "        improved = True\n",
        (BEHAVIOUR + "test_best_pt_is_replaced_only_by_an_epoch_that_improves_the_metric",),
    ),
    Mutation(
        "warm-up-one-step-too-long",
        "project",
        "train.py",
        "        if step < warmup:\n",
        "        if warmup and step <= warmup:\n",
        (BEHAVIOUR + "test_the_warm_up_rises_to_the_learning_rate_and_never_above_it",),
    ),
    Mutation(
        "backbone-lr-mult-ignored",
        "project",
        "train.py",
        '{"params": backbone_params, "lr": args.lr * args.backbone_lr_mult}',
        '{"params": backbone_params}',
        (IMAGES + "test_backbone_lr_mult_scales_the_backbones_step_and_not_the_heads",),
    ),
    Mutation(
        "validation-in-train-mode",
        "project",
        "train.py",
        "    model.eval()\n",
        "",
        (BEHAVIOUR + "test_validation_runs_in_eval_mode_and_training_in_train_mode",),
    ),
    Mutation(
        "keep-last-keeps-the-oldest",
        "project",
        "checkpoint.py",
        "sorted(glob.glob(os.path.join(directory, STEP_PATTERN)))[: -keep or None]",
        "sorted(glob.glob(os.path.join(directory, STEP_PATTERN)), reverse=True)[: -keep or None]",
        (BEHAVIOUR + "test_keep_last_removes_the_oldest_step_checkpoints_and_keeps_the_newest",),
    ),
    Mutation(
        "train-loss-summed-over-micro-batches",
        "project",
        "train.py",
        "return loss_sum / max(self.step_in_epoch * self.micro_batches_per_step, 1)",
        "return loss_sum / max(self.step_in_epoch, 1)",
        (BEHAVIOUR + "test_train_loss_is_the_mean_per_sample_under_gradient_accumulation",),
    ),
    Mutation(
        "gradients-all-reduced-every-micro-batch",
        "ddp",
        "train.py",
        "    if skip_gradient_sync and isinstance(model, DistributedDataParallel):\n",
        "    if False:\n",
        (DDP + "test_gradients_are_all_reduced_once_per_optimizer_step",),
    ),
    Mutation(
        "gradients-all-reduced-on-the-wrong-micro-batch",
        "ddp",
        "train.py",
        "with no_sync(model, micro_step < accumulate - 1):",
        "with no_sync(model, micro_step > 0):",
        (DDP + "test_gradients_are_all_reduced_once_per_optimizer_step",),
    ),
    Mutation(
        "resume-disabled",
        "project",
        "checkpoint.py",
        "    return first_that_loads(directory, checkpoints_in(directory), load_checkpoint)\n",
        "    return first_that_loads(directory, [], load_checkpoint)\n",
        (
            TRAIN + "test_resume_is_bit_exact",
            TRAIN + "test_sigkill_then_resume_auto_matches_uninterrupted",
        ),
    ),
    Mutation(
        "rng-not-restored",
        "project",
        "checkpoint.py",
        '    random.setstate(state["python"])\n    torch.set_rng_state(state["torch"].cpu())\n',
        '    random.setstate(state["python"])\n',
        (TRAIN + "test_resume_is_bit_exact",),
    ),
    Mutation(
        "rng-of-rank-0-for-every-rank",
        "ddp",
        "checkpoint.py",
        "state = per_rank[rank] if len(per_rank) == world_size else per_rank[0]",
        "state = per_rank[0]",
        ("tests/test_ddp.py::test_a_killed_rank_then_resume_auto_ends_like_an_uninterrupted_run",),
    ),
    Mutation(
        "oldest-checkpoint",
        "project",
        "checkpoint.py",
        "key=os.path.getmtime, reverse=True",
        "key=os.path.getmtime",
        (TRAIN + "test_resume_auto_takes_the_newest_checkpoint",),
    ),
    Mutation(
        "save-not-atomic",
        "project",
        "files.py",
        "    temporary = temporary_name(path)\n    try:\n        with open(temporary, mode)",
        "    temporary = path\n    try:\n        with open(temporary, mode)",
        (TRAIN + "test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_previous_one",),
    ),
    Mutation(
        "weights-only-dropped",
        "project",
        "checkpoint.py",
        "torch.load(path, map_location=map_location, weights_only=True)",
        "torch.load(path, map_location=map_location)",
        (TRAIN + "test_a_malicious_checkpoint_is_refused",),
    ),
    Mutation(
        "metrics-not-truncated-on-resume",
        "project",
        "loggers.py",
        '                lines = file.readlines()[: state["lines"]]',
        "                lines = file.readlines()",
        (TRAIN + "test_resume_drops_the_lines_logged_after_its_checkpoint",),
    ),
    Mutation(
        "tracker-resends-steps",
        "project",
        "loggers.py",
        "        if step <= self.logged.get(kind, 0):\n",
        "        if False:\n",
        (
            "tests/test_loggers.py::test_an_interrupted_run_is_one_mlflow_run_with_the_history_of_an_uninterrupted_one",
        ),
    ),
    Mutation(
        "head-initialised-to-zero",
        "resnet",
        "model.py",
        "    nn.init.normal_(head.weight, std=0.01)",
        "    nn.init.zeros_(head.weight)",
        ("tests/test_model.py::test_gradient_reaches_the_input_and_every_layer_trains",),
    ),
    Mutation(
        "augmentation-ignored",
        "project",
        "image_pipeline.py",
        "            if self.augment:\n                images, masks = random_crop_and_flip",
        "            if False:\n                images, masks = random_crop_and_flip",
        (IMAGES + "test_augment_crops_and_flips_each_image",),
    ),
    Mutation(
        "val-classes-unchecked",
        "project",
        "dataset.py",
        "            if val.classes != train.classes:\n",
        "            if False:\n",
        (
            "tests/test_data.py::test_train_and_val_with_different_classes_are_refused_before_caching",
        ),
    ),
    Mutation(
        "stop-signals-ignored",
        "project",
        "signals.py",
        "        self.received = self.received or number\n",
        "        pass\n",
        (RUNS + "test_a_signal_saves_then_stops_and_resume_auto_is_bit_exact",),
    ),
    Mutation(
        "earlier-run-overwritten",
        "project",
        "runs.py",
        "    if existing and not args.overwrite and not continues_run(args):",
        "    if False:",
        (RUNS + "test_an_output_dir_that_holds_a_run_is_refused_then_overwritten_on_request",),
    ),
    Mutation(
        "zero-epochs-accepted",
        "project",
        "options.py",
        'optim.add_argument("--epochs", type=count(1)',
        'optim.add_argument("--epochs", type=count(0)',
        (RUNS + "test_bad_options_are_one_line_and_change_nothing",),
    ),
    Mutation(
        "gradient-accumulation-not-averaged",
        "project",
        "train.py",
        "loss / accumulate if accumulate > 1 else loss",
        "loss",
        (TRAIN + "test_gradient_accumulation_matches_one_big_batch",),
    ),
    Mutation(
        "sharded-rng-not-restored",
        "ddp",
        "sharded.py",
        "        checkpoint.restore_rng_state(state, distributed.get_rank(), "
        "distributed.get_world_size())\n",
        "",
        (FSDP + "test_killed_while_saving_then_resume_auto_ends_like_an_uninterrupted_run",),
    ),
    Mutation(
        "resumed-position-counts-the-old-accumulation",
        "ddp",
        "train.py",
        "        skip = progress.step_in_epoch * args.grad_accum_steps * args.batch_size\n",
        "        skip = progress.step_in_epoch * 2 * args.batch_size\n",
        (FSDP + "test_one_process_resumes_two_with_their_state_and_their_sample_order",),
    ),
    Mutation(
        "sharded-folder-trusted-without-metadata",
        "ddp",
        "sharded.py",
        "    if not os.path.isfile(os.path.join(folder, METADATA)):\n",
        "    if False:\n",
        (FSDP + "test_consolidating_an_incomplete_folder_is_refused",),
    ),
    Mutation(
        "validation-not-summed-across-ranks",
        "ddp",
        "train.py",
        "    return task.metrics(task.gather(totals))\n",
        "    return task.metrics(totals)\n",
        ("tests/test_ddp.py::test_validation_is_exact_for_an_uneven_split",),
    ),
    Mutation(
        "detections-of-other-processes-dropped",
        "detection",
        "task.py",
        '    for shard in distributed.all_gather_object(totals["images"]):\n',
        '    for shard in [totals["images"]]:\n',
        ("tests/test_detection.py::test_two_processes_report_exactly_the_figures_of_one",),
    ),
    Mutation(
        "detection-loss-nan-without-boxes",
        "detection",
        "task.py",
        '    if not any(len(target["boxes"]) for target in targets):\n',
        "    if False:\n",
        (
            "tests/test_detection.py::"
            "test_a_batch_without_boxes_or_proposals_has_box_head_losses_of_zero",
        ),
    ),
    Mutation(
        "option-error-printed-by-every-process",
        "ddp",
        "options.py",
        '        if os.environ.get("LOCAL_RANK", "0") != "0":\n',
        "        if False:\n",
        (
            "tests/test_runs.py::"
            "test_under_torchrun_only_the_first_process_of_a_machine_prints_an_option_error",
        ),
    ),
    Mutation(
        "train-ddp-script-leaves-option-errors-to-torchrun",
        "ddp",
        "scripts/train_ddp.sh",
        '    python "$project_dir/options.py" "$@"\n',
        "    true\n",
        (DDP + "test_a_bad_train_option_is_one_line_and_torchrun_never_starts",),
    ),
    Mutation(
        "stale-cache-trusted",
        "project",
        "cache.py",
        '    if manifest["sources"] != expected["sources"]:',
        "    if False:",
        ("tests/test_cache.py::test_a_changed_image_or_another_size_rebuilds",),
    ),
    Mutation(
        "plot-only-the-first-run",
        "project",
        "plot.py",
        "    for (name, records), color in zip(runs, colors, strict=True):",
        "    for (name, records), color in zip(runs[:1], colors[:1], strict=True):",
        ("tests/test_plot.py::test_curves_of_two_runs_overlaid",),
    ),
    Mutation(
        "export-kept-without-verification",
        "project",
        "export.py",
        "        if not difference <= tolerance:  # also catches NaN\n",
        "        if False:\n",
        ("tests/test_export.py::test_a_failed_verification_leaves_nothing_behind",),
    ),
    Mutation(
        "predict-augments-like-training",
        "project",
        "predict.py",
        "    preprocess, autocast = Preprocess(), ",
        "    preprocess, autocast = Preprocess(True, 4), ",
        ("tests/test_predict.py::test_predictions_are_the_models_on_the_validation_pipeline",),
    ),
    Mutation(
        "project-name-allows-a-trailing-newline",
        "repo",
        "scaffold/options.py",
        r'PROJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")',
        r'PROJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*$")',
        ("tests/test_hostile.py",),
    ),
    Mutation(
        "make-test-deselects-the-slow-tests",
        "repo",
        "Makefile",
        "\t$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=25\n",
        '\t$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=25 -m "not slow"\n',
        ("tests/test_workflow.py::test_make_test_runs_every_test",),
    ),
    Mutation(
        "a-generated-suite-that-skips-everything",
        "repo",
        "templates/project/template/tests/conftest.py.jinja",
        "@pytest.fixture(autouse=True)\ndef cuda_or_skip(request):\n",
        "@pytest.fixture(autouse=True)\ndef cuda_or_skip(request):\n"
        '    pytest.skip("no CUDA device")\n',
        ("tests/test_variants.py::test_the_generated_test_suite_passes_on_cpu[resnet34_cifar10]",),
    ),
    Mutation(
        "step-loss-of-the-last-micro-batch",
        "project",
        "train.py",
        "        values = values.view(len(micro_batches), -1).mean(dim=0)\n",
        "        values = values.view(len(micro_batches), -1)[-1]\n",
        (BEHAVIOUR + "test_a_logged_step_loss_is_the_mean_over_its_micro_batches",),
    ),
    # Resume is one command that loses nothing (tests/test_resume.py).
    Mutation(
        "resume-forgets-the-runs-options",
        "project",
        "options.py",
        "        continue_run(parser, args, given_options(parser, arguments))\n",
        "        pass\n",
        (RESUME + "test_the_printed_command_continues_the_run_with_its_own_options",),
    ),
    Mutation(
        "resume-takes-any-change",
        "project",
        "options.py",
        "    if changed:\n        was = ",
        "    if False:\n        was = ",
        (RESUME + "test_a_change_to_the_runs_course_is_refused_unless_allowed",),
    ),
    Mutation(
        "torn-checkpoints-start-the-run-over",
        "project",
        "checkpoint.py",
        "    if problems:\n        raise CheckpointError(",
        "    if False:\n        raise CheckpointError(",
        (RESUME + "test_a_run_whose_checkpoints_are_all_torn_is_refused_and_left_alone",),
    ),
    Mutation(
        "best-pt-never-a-resume-candidate",
        "project",
        "checkpoint.py",
        "    names = [LAST, STEP_PATTERN, BEST]\n",
        "    names = [LAST, STEP_PATTERN]\n",
        (RESUME + "test_a_good_best_pt_newer_than_a_torn_last_pt_is_resumed",),
    ),
    Mutation(
        "two-processes-train-one-run-folder",
        "project",
        "runs.py",
        "            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        "            pass\n",
        (RESUME + "test_a_run_folder_in_use_is_refused_and_freed_when_its_process_dies",),
    ),
    Mutation(
        "validation-deaf-to-signals",
        "project",
        "train.py",
        "        if stop is not None and stop.received:\n            break\n",
        "",
        (RESUME + "test_a_signal_during_validation_stops_it_and_the_epoch_is_validated_on_resume",),
    ),
    Mutation(
        "fewer-processes-keep-the-micro-batches",
        "project",
        "options.py",
        "    args.grad_accum_steps = micro_batches // world_size\n",
        "",
        (
            RESUME + "test_fewer_processes_keep_the_global_batch_and_more_are_refused_when_they_"
            "cannot",
            RESUME + "test_a_run_of_two_processes_continues_on_one_with_the_same_schedule",
        ),
    ),
    Mutation(
        "outputs-replace-a-runs-files",
        "project",
        "runs.py",
        "        if fnmatch.fnmatch(name, pattern) and run_files(run):\n",
        "        if False:\n",
        (
            "tests/test_export.py::test_an_output_that_would_replace_a_file_of_the_run_is_refused",
            "tests/test_predict.py::test_an_output_that_would_replace_a_file_of_the_run_is_refused",
        ),
    ),
    Mutation(
        "cache-build-deaf-to-signals",
        "project",
        "cache.py",
        "            number = signals.requested()\n            if number:",
        "            number = signals.requested()\n            if False:",
        ("tests/test_cache.py::test_ctrl_c_during_a_build_stops_it_and_keeps_nothing",),
    ),
    Mutation(
        "cache-trusts-a-file-replaced-with-its-size-and-time",
        "project",
        "cache.py",
        '    if manifest.get("replaced") != expected.get("replaced"):',
        "    if False:",
        ("tests/test_cache.py::test_an_image_replaced_with_its_old_size_and_time_rebuilds",),
    ),
    Mutation(
        "options-checked-after-torch-loads",
        "project",
        "train.py",
        "    check_quickly(sys.argv[1:])\n",
        "    pass\n",
        (RUNS + "test_a_mistyped_number_is_answered_before_torch_is_imported",),
    ),
    # Sweeps that survive any interruption (tests/test_sweep.py).
    Mutation(
        "torn-journal-line-kept",
        "project",
        "sweep.py",
        "            file.truncate(end)\n",
        "            file.truncate(size)\n",
        (SWEEP + "test_a_torn_last_journal_line_is_cut_off_before_the_study_opens",),
    ),
    Mutation(
        "orphaned-trials-not-taken-over",
        "project",
        "sweep.py",
        'if trial.state == running and owner_state(trial.user_attrs.get("owner")) == "gone":',
        'if trial.state == running and owner_state(trial.user_attrs.get("owner")) == "elsewhere":',
        (SWEEP + "test_kill_9_of_run_mid_trial_then_run_again_finishes_each_trial_once_exactly",),
    ),
    Mutation(
        "interrupted-trials-start-over",
        "project",
        "sweep.py",
        'f"--output-dir={run_dir}", "--resume=auto"]',
        'f"--output-dir={run_dir}", "--overwrite"]',
        (SWEEP + "test_kill_9_of_run_mid_trial_then_run_again_finishes_each_trial_once_exactly",),
    ),
    Mutation(
        "stale-heartbeat-ignored",
        "project",
        "sweep.py",
        "    if age > stale:\n",
        "    if False:\n",
        (SWEEP + "test_reap_takes_an_owner_elsewhere_for_gone_once_its_heartbeat_is_stale",),
    ),
    Mutation(
        "squeue-not-asked",
        "project",
        "sweep.py",
        "    queued = slurm_job_queued(job)\n",
        "    queued = None\n",
        (SWEEP + "test_reap_asks_squeue_whether_the_job_of_an_owner_elsewhere_still_runs",),
    ),
    Mutation(
        "orphans-of-a-killed-torchrun-train-on",
        "ddp",
        "distributed.py",
        "    stop_when_torchrun_dies()\n",
        "",
        (DDP + "test_kill_9_of_torchrun_alone_makes_its_processes_save_and_stop",),
    ),
    Mutation(
        "torchrun-exit-through-the-teardown",
        "ddp",
        "distributed.py",
        "    os._exit(status or 0)\n",
        "    sys.exit(status)\n",
        (
            DDP
            + "test_a_process_that_joined_a_group_exits_with_mains_status_and_skips_the_teardown",
        ),
    ),
    Mutation(
        "torchrun-exit-loses-buffered-output",
        "ddp",
        "distributed.py",
        "    sys.stdout.flush()\n",
        "",
        (
            DDP
            + "test_a_process_that_joined_a_group_exits_with_mains_status_and_skips_the_teardown",
        ),
    ),
    Mutation(
        "heartbeat-beats-once",
        "project",
        "sweep.py",
        "    thread.start()\n",
        "",
        (SWEEP + "test_a_trial_s_heartbeat_is_touched_while_it_trains_and_stops_after",),
    ),
    Mutation(
        "sweep-record-without-the-template-options",
        "project",
        "sweep.py",
        '            "scaffold_new": records.scaffold_command(project),\n',
        "",
        (SWEEP + "test_the_sweep_records_how_it_started",),
    ),
    Mutation(
        "sweep-plot-drops-a-trial",
        "project",
        "plot.py",
        "    for trial in study.get_trials(deepcopy=False):\n",
        "    for trial in study.get_trials(deepcopy=False)[:-1]:\n",
        (SWEEP + "test_plot_draws_each_trial_s_curve_and_each_parameter_against_the_metric",),
    ),
    Mutation(
        "sweep-plot-drops-a-parameter",
        "project",
        "plot.py",
        '    names = list(space["params"])\n',
        '    names = list(space["params"])[:-1]\n',
        (SWEEP + "test_plot_draws_each_trial_s_curve_and_each_parameter_against_the_metric",),
    ),
    Mutation(
        "new-force-overwrites-uncommitted-edits",
        "repo",
        "scaffold/render.py",
        "    if uncommitted:\n        raise ScaffoldError(",
        "    if False:\n        raise ScaffoldError(",
        ("tests/test_cli.py::test_force_refuses_to_overwrite_uncommitted_changes",),
    ),
    # The language model: attention that sees the future, a last validation window that counts
    # its targets twice, an output layer that is not the embedding.
    Mutation(
        "lm-attention-not-causal",
        "lm",
        "model.py",
        "is_causal=True",
        "is_causal=False",
        (f"{LM}test_gpt_gives_logits_for_every_position_and_each_sees_only_the_past",),
    ),
    Mutation(
        "lm-last-window-counted-twice",
        "lm",
        "dataset.py",
        "        targets[: counted_from - start] = IGNORE_INDEX\n",
        "",
        (f"{LM}test_validation_counts_every_target_once_and_its_loss_is_exact",),
    ),
    Mutation(
        "lm-untied-output-layer",
        "lm",
        "model.py",
        "        self.lm_head.weight = self.token_embedding.weight  # tied: one matrix, both ends"
        "\n",
        "",
        (f"{LM}test_the_output_layer_is_the_token_embedding",),
    ),
)


def render(kind: str, into: Path, scaffold: list[str]) -> Path:
    project = into / kind
    command = [*scaffold, "new", str(project), "--no-git", *PROJECTS[kind]]
    subprocess.run(command, check=True, capture_output=True)
    return project


def copy_repository(into: Path) -> Path:
    """This checkout as it is on disk now: a clone (for the template history that `scaffold
    update` needs) with the working tree's changes and new files copied over it."""
    copy = into / "repo"
    subprocess.run(["git", "clone", "--quiet", "--shared", str(ROOT), str(copy)], check=True)

    def files(*options: str) -> list[str]:
        listing = subprocess.run(
            ["git", "ls-files", "-z", *options], cwd=ROOT, capture_output=True, text=True
        )
        return list(filter(None, listing.stdout.split("\0")))

    for name in files("--cached", "--others", "--exclude-standard"):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for name in files("--deleted"):
        (copy / name).unlink(missing_ok=True)
    return copy


def mutation_problem(mutation: Mutation, folder: Path) -> str | None:
    """Why `mutation` cannot be tried in `folder`: its file, its snippet or one of its tests is
    missing (a test renamed or moved would otherwise stop the whole run); None when it can."""
    path = folder / mutation.path
    if not path.is_file():
        return f"{mutation.name}: {mutation.path} does not exist"
    count = path.read_text().count(mutation.old)
    if count != 1:
        return f"{mutation.name}: its snippet occurs {count} times in {mutation.path}, not once"
    for test in mutation.tests:
        test_path, _, name = test.partition("::")
        source = folder / test_path
        if not source.is_file() or (
            name and f"def {name.split('[')[0]}(" not in source.read_text()
        ):
            return f"{mutation.name}: no test {test}"
    return None


def run_tests(folder: Path, tests: tuple[str, ...], env: dict) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="only check that each can be tried")
    args = parser.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {mutation.name for mutation in MUTATIONS}
        if unknown:
            parser.error(f"no mutation named {', '.join(sorted(unknown))}")
        chosen = [mutation for mutation in MUTATIONS if mutation.name in names]
    if args.list:
        for mutation in chosen:
            tests = ", ".join(mutation.tests)
            print(f"{mutation.name:<45} {mutation.target:<8} {mutation.path}: {tests}")
        return 0

    scaffold = [sys.executable, "-m", "scaffold"]
    with tempfile.TemporaryDirectory(prefix="scaffold-mutations-") as scratch:
        scratch = Path(scratch)
        repo = copy_repository(scratch)
        env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
        folders = {"repo": repo}
        for kind in sorted({mutation.target for mutation in chosen} - {"repo"}):
            folders[kind] = render(kind, scratch, scaffold)
        problems = [p for m in chosen if (p := mutation_problem(m, folders[m.target]))]
        if problems:
            print("\n".join(problems) + "\nupdate .ci/mutations.py: the code has moved")
            return 1
        if args.check:
            print(f"all {len(chosen)} mutations apply")
            return 0

        for target, folder in folders.items():
            tests = tuple(dict.fromkeys(t for m in chosen if m.target == target for t in m.tests))
            if not tests:
                continue
            print(f"unbroken {target}: {len(tests)} test selections ...", flush=True)
            code, output = run_tests(folder, tests, env)
            if code != 0:
                print(output[-3000:] + f"\nthe tests fail in the unbroken {target}: fix that first")
                return 1

        survivors = []
        for mutation in chosen:
            path = folders[mutation.target] / mutation.path
            original = path.read_text()
            path.write_text(original.replace(mutation.old, mutation.new))
            start = time.monotonic()
            try:
                code, output = run_tests(folders[mutation.target], mutation.tests, env)
            finally:
                path.write_text(original)
            seconds = time.monotonic() - start
            if code == 1:
                print(f"caught    {mutation.name} ({seconds:.0f} s)", flush=True)
            else:
                survivors.append(mutation.name)
                why = "the tests passed" if code == 0 else f"pytest exited {code}"
                print(f"SURVIVED  {mutation.name}: {why}\n{output[-1500:]}", flush=True)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} caught")
    if survivors:
        print(f"survived: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
