"""Run a generated project's train.main with a step clock; rank 0 writes the steps per second.

    python benchmarks/timed_train.py --project DIR --times OUT.json --steps S --warmup W \
        [--memory-data] -- TRAIN.PY OPTIONS

Works under torchrun too (`python -m torch.distributed.run ... benchmarks/timed_train.py ...`).
With --memory-data, train.build_datasets is replaced by in-memory tensors, the same on every
process (as in figure 3), so that image decoding does not stand in for the loop being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import StepClock, in_memory_datasets  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--times", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--memory-data", type=int, default=0, help="training samples in memory")
    args = parser.parse_args(argv[:split])
    train_argv = argv[split + 1 :]

    import torch

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    sys.path.insert(0, args.project)
    import dataset
    import train

    if args.memory_data:
        sets = in_memory_datasets(torch, dataset, args.memory_data, 64)
        train.build_datasets = lambda options: sets
    clock = StepClock(args.warmup, args.steps, "--device=cuda" in train_argv)
    start = time.perf_counter()
    train.main(train_argv)
    total = time.perf_counter() - start
    if os.environ.get("RANK", "0") == "0":
        result = {
            "steps_per_second": clock.steps_per_second(),
            "steps": len(clock.times),
            "train_main_seconds": total,
            "threads": torch.get_num_threads(),
        }
        with open(args.times, "w") as file:
            json.dump(result, file)


if __name__ == "__main__":
    main()
