"""Before each epoch: the batch sampler's epoch (and, for a run resumed part-way through an
epoch, the batches to skip), and Paddle's generator (dropout, drop path) reseeded from
(seed, epoch, rank), or restored from the checkpoint when continuing an epoch part-way.
Data order and augmentation then depend only on (seed, epoch, sample), so a resumed run
is the uninterrupted one (:mod:`ppadapt.data.sampler`)."""
from __future__ import annotations

import paddle

from ...data.sampler import EpochBatchSampler, derived_seed
from ..resume import set_metric_states, set_paddle_rng


class EpochSetup(paddle.callbacks.Callback):
    """Sets the sampler's epoch and Paddle's generator at the start of every epoch."""

    def __init__(self, sampler: EpochBatchSampler, seed: int, rank: int = 0, *, start_epoch: int = 0,
                 skip: int = 0, paddle_rng=None, metric_states: list | None = None) -> None:
        super().__init__()
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.start_epoch = start_epoch
        self.skip = skip
        self.paddle_rng = paddle_rng  # this rank's generator state where a stopped epoch resumes
        self.metric_states = metric_states
        self._first = True

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        absolute = self.start_epoch + (epoch or 0)
        continuing = self._first and self.skip > 0
        self._first = False
        self.sampler.set_epoch(absolute, self.skip if continuing else 0)
        if continuing and self.paddle_rng is not None:
            set_paddle_rng(self.paddle_rng)
        else:
            paddle.seed(derived_seed(self.seed, absolute, self.rank))
        if continuing:
            set_metric_states(self.model._metrics, self.metric_states)
