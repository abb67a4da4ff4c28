"""Training data order and augmentation that depend only on (seed, epoch): resumable and
the same on any number of processes.

:class:`EpochBatchSampler` replaces ``DataLoader(shuffle=True)``: the order of epoch ``e``
is ``np.random.default_rng([seed, e]).permutation(N)``, whatever happened before, so a
run resumed at epoch ``e`` (or at batch ``b`` of it, with ``skip``) sees exactly the
batches the uninterrupted run saw. With several processes the permutation is split by
rank the way ``paddle.io.DistributedBatchSampler`` splits it: padded to a multiple of
the process count, then global step ``i`` is the slice ``[i*B*n, (i+1)*B*n)`` of the
permutation, rank ``r`` taking its ``B`` consecutive samples; every rank has the same
number of batches.

The sampler yields keys ``(epoch, index)`` rather than bare indices, and
:class:`SeededDataset` gives each sample its own generator
``np.random.default_rng([seed, epoch, index])`` for the augmentation: the random crop,
flip, ... of a sample depend on nothing else (not on the worker process that loads it,
the loader's prefetching, the batch size or the number of ranks).

For a batch-level transform (MixUp/CutMix, :mod:`ppadapt.data.mixing`) the sampler made
with ``batch_keys=True`` yields ``(epoch, index, batch)`` keys, ``batch`` being the
batch's position in this rank's epoch, and :class:`SeededDataset` then adds
``[epoch, batch]`` to each item: the loader's ``collate_fn`` sees which batch it builds,
in whichever worker process it runs, and can seed its draws from that alone.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import paddle

from .arrays import ArrayDataset
from .transforms import RandomTransform


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training samples in ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)


def batches_per_epoch(num_samples: int, batch_size: int, num_replicas: int = 1, drop_last: bool = False) -> int:
    """Batches of one process in an epoch of :class:`EpochBatchSampler` (every process has as
    many; the padded share ``ceil(num_samples / num_replicas)`` each): known before the loaders
    exist, for a schedule decided from the training set."""
    share = math.ceil(num_samples / num_replicas)
    return share // batch_size if drop_last else math.ceil(share / batch_size)


def derived_seed(*keys: int) -> int:
    """A 62-bit seed derived from integers, e.g. (seed, epoch, rank) for Paddle's generator."""
    return int(np.random.default_rng([int(k) for k in keys]).integers(1, 2 ** 62))


class EpochBatchSampler:
    """Batches of ``(epoch, index)`` keys in the (seed, epoch) order, split by rank: a
    ``batch_sampler`` for ``paddle.io.DataLoader``.

    ``set_epoch(epoch, skip)`` before each epoch (a callback does it); ``skip`` leaves out
    the first ``skip`` batches of that epoch (a run resumed mid-epoch). ``len()`` is
    always the full number of batches per epoch of this rank. ``batch_keys=True``: keys
    ``(epoch, index, batch)``, the batch counted from the start of the epoch, skip or not.

    Not a ``paddle.io.BatchSampler`` subclass on purpose: the DataLoader's optional
    num_workers auto-tuning rebuilds those from their ``sampler``, which would lose the
    order and the keys; it leaves other batch samplers alone.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0,
                 batch_keys: bool = False) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_samples_total = num_samples
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.nranks = num_replicas
        self.local_rank = rank
        self.batch_keys = batch_keys
        self.epoch = 0
        self.skip = 0
        self.num_samples = math.ceil(num_samples / num_replicas)  # per rank, padding included
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices of ``epoch``, in training order."""
        n = self.num_samples_total
        order = epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
        if self.total_size > n:  # pad like DistributedBatchSampler: repeat from the start
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        if self.nranks == 1:
            return order.tolist()
        step = self.batch_size * self.nranks
        full = (self.total_size // step) * step
        mine = [order[i + self.local_rank * self.batch_size: i + (self.local_rank + 1) * self.batch_size]
                for i in range(0, full, step)]
        tail = order[full:]
        per_rank = len(tail) // self.nranks
        mine.append(tail[self.local_rank * per_rank:(self.local_rank + 1) * per_rank])
        return np.concatenate(mine).tolist()

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of sample indices in ``epoch`` (without ``skip``)."""
        indices = self.rank_indices(epoch)
        out = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        epoch = self.epoch
        for position, batch in enumerate(self.batches(epoch)[self.skip:], start=self.skip):
            if self.batch_keys:
                yield [(epoch, int(i), position) for i in batch]
            else:
                yield [(epoch, int(i)) for i in batch]

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples_total, self.batch_size, self.nranks, self.drop_last)


class SeededDataset(paddle.io.Dataset):
    """``base`` indexed by the sampler's ``(epoch, index)`` keys, each sample's augmentation
    drawn from ``np.random.default_rng([seed, epoch, index])``.

    ``base`` is an :class:`~ppadapt.data.arrays.ArrayDataset`; its
    :class:`~ppadapt.data.transforms.RandomTransform` (every training pipeline) gets the
    sample's generator. Any other transform is called as it is (it should then be
    deterministic). A bare integer key means epoch 0. A key ``(epoch, index, batch)``
    (a sampler with ``batch_keys``) adds a third field to the item, int64 ``[epoch, batch]``,
    for the loader's batch-level ``collate_fn``.
    """

    def __init__(self, base: paddle.io.Dataset, seed: int) -> None:
        super().__init__()
        self.base = base
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key[:2] if isinstance(key, (tuple, list)) else (0, key)
        base = self.base
        if isinstance(base, ArrayDataset) and isinstance(base.transform, RandomTransform):
            rng = np.random.default_rng([self.seed, int(epoch), int(index)])
            image = base.transform(base.images[index], rng=rng)
            item = image, np.array([base.labels[index]], dtype=np.int64)
        else:
            item = base[index]
        if isinstance(key, (tuple, list)) and len(key) == 3:
            return (*item, np.array([epoch, key[2]], dtype=np.int64))
        return item
