"""What every task's data goes through: the resumable sampler and the DataLoader. The task's own
datasets, and how their samples are made, are in dataset.py.
"""

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from signals import ignore_stop_signals


class DatasetError(Exception):
    """A dataset that cannot be used as asked; the message says what to do."""


class ShardedSampler(Sampler[int]):
    """One rank's share of the indices for one epoch, shuffled by (seed, epoch), from any position.

    Unlike DistributedSampler it can start mid-epoch (exact resume), and with pad=False it shards
    without repeating samples, so validation sums across ranks count every sample exactly once.
    """

    def __init__(self, length, shuffle, seed=0, rank=0, world_size=1, pad=True):
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch `epoch`, leaving out the first `skip` samples of this rank's share."""
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.pad:
            padded = math.ceil(self.length / self.world_size) * self.world_size
            order += order[: padded - self.length]
        return order[self.rank :: self.world_size][self.skip :]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        if self.pad:
            share = math.ceil(self.length / self.world_size)
        else:
            share = len(range(self.rank, self.length, self.world_size))
        return max(share - self.skip, 0)


def reads_whole_batches(dataset: Dataset) -> bool:
    """Whether `dataset` (or the dataset a Subset takes from) reads a whole batch in one call of
    __getitems__, as the image cache does (its `whole_batches`): its batches need no collating."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return getattr(base, "whole_batches", False)


def whole_batch(batch):
    """DataLoader's collate_fn for a dataset that reads whole batches: the batch as it came."""
    return batch


def build_loader(dataset, sampler, batch_size, workers, pin_memory, seed, collate=None):
    """The DataLoader of `dataset`; `collate` makes a batch of samples (default: stack them)."""
    whole = reads_whole_batches(dataset)
    if whole:
        # A cached batch is read in tens of microseconds; handing it over from a worker process
        # costs ten times that (measured: benchmarks/data_pipeline.py).
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
        collate_fn=whole_batch if whole else collate,
        # Its own generator: otherwise each new iterator draws from the global RNG and a resumed
        # run would see different random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
