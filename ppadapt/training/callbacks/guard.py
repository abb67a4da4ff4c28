"""``paddle.Model.fit`` callbacks that make a run resumable and stop it safely.

:class:`EpochProgBar`
    Paddle's progress bar, numbering the epochs of a resumed run as the whole run's
    (``Epoch 3/4``, not ``Epoch 1/2``).
:class:`EpochSetup`
    Before each epoch: the batch sampler's epoch (and, for a run resumed part-way
    through an epoch, the batches to skip), and Paddle's generator (dropout, drop path)
    reseeded from (seed, epoch, rank), or restored from the checkpoint when continuing
    an epoch part-way.
:class:`TrainingGuard`
    After every batch: a NaN/Inf loss stops training with a one-line
    :class:`~ppadapt.training.resume.TrainingError` naming the step and the LR; Ctrl-C (see
    :func:`ppadapt.training.resume.stop_on_sigint`) saves a checkpoint at the batch boundary and
    raises :class:`~ppadapt.training.resume.TrainingInterrupted`. After every epoch: the trainable
    weights are checked finite, then (after the evaluation, so the best metric is in it)
    the resumable checkpoint is written. Nothing is ever written from non-finite weights:
    the error is raised before any write, so the previous checkpoint stays.

With several processes, the loss check and the stop request are agreed by an
all-reduce (max) of two flags after every batch, so that every rank stops at the same
batch; only rank 0 writes.

Test-only hooks (environment): ``PPADAPT_TEST_PAUSE_AT=E:B`` makes training wait before
batch ``B`` of epoch ``E`` (0-based) until Ctrl-C, after creating the file named by
``PPADAPT_TEST_PAUSE_FILE``: a test can then kill or interrupt the process at a known step.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import paddle

from ...runs.checkpoint import atomic_save
from ...data.sampler import EpochBatchSampler, derived_seed
from ...errors import CheckpointWriteError
from ..resume import (StopRequest, TrainingError, TrainingInterrupted, fmt_lr, gather_rng_states,
                      non_finite_weight, set_metric_states, set_paddle_rng)


class EpochProgBar(paddle.callbacks.ProgBarLogger):
    """``ProgBarLogger`` with the run's epoch numbers when ``fit`` runs only the remaining ones."""

    def __init__(self, log_freq: int = 1, verbose: int = 2, *, epochs: int, start_epoch: int = 0) -> None:
        super().__init__(log_freq=log_freq, verbose=verbose)
        self.total_epochs = epochs
        self.start_epoch = start_epoch

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        self.epochs = self.total_epochs

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        super().on_epoch_begin(self.start_epoch + (epoch or 0), logs)


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


def _scalar(value) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class TrainingGuard(paddle.callbacks.Callback):
    """NaN guard, Ctrl-C handling and the resumable checkpoint of every epoch (see the module doc).

    ``capture(epoch, batch, reason, paddle_rng)`` builds the checkpoint dict
    (:func:`ppadapt.training.resume.capture`); ``resume_hint`` is the command that continues the run.
    """

    def __init__(self, path: str | Path, capture: Callable[..., dict], *, epochs: int, steps_per_epoch: int,
                 stop: StopRequest, resume_hint: str, start_epoch: int = 0, skip: int = 0, nranks: int = 1,
                 is_main: bool = True, after_eval: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.capture = capture
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.stop = stop
        self.resume_hint = resume_hint
        self.start_epoch = start_epoch
        self.skip = skip
        self.nranks = nranks
        self.is_main = is_main
        self.after_eval = after_eval
        # where the last good checkpoint is, for messages: a resumed run starts at one
        self.last_saved = self._position(start_epoch, skip) if (start_epoch or skip) else None
        self.epoch = start_epoch  # current epoch (0-based, whole run)
        self.batch = skip  # batches of the current epoch done
        self._first = True
        pause = os.environ.get("PPADAPT_TEST_PAUSE_AT", "")
        self._pause_at = tuple(int(v) for v in pause.split(":")) if pause else None

    # -- helpers ----------------------------------------------------------------
    def _lr(self) -> float | None:
        optimizer = getattr(self.model, "_optimizer", None)
        return float(optimizer.get_lr()) if optimizer is not None else None

    def _global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.batch  # batches done, whole run

    def _sync(self, *flags: bool) -> list[bool]:
        """Each flag true on any rank (one all-reduce of a tiny tensor when distributed)."""
        if self.nranks < 2:
            return list(flags)
        values = paddle.to_tensor([1.0 if f else 0.0 for f in flags], dtype="float32")
        paddle.distributed.all_reduce(values, op=paddle.distributed.ReduceOp.MAX)
        return [bool(v > 0) for v in values.numpy().tolist()]

    def _position(self, epoch: int, batch: int) -> str:
        """A checkpoint's place in the run: ``batch`` batches into epoch ``epoch`` (0-based)."""
        if batch == 0:
            return f"end of epoch {epoch}/{self.epochs}"
        return f"epoch {epoch + 1}/{self.epochs}, batch {batch}/{self.steps_per_epoch}"

    def _kept(self) -> str:
        if self.last_saved:
            return f"the last good resumable checkpoint is {self.path} ({self.last_saved})"
        return "no resumable checkpoint was written yet"

    def save_failed(self, exc: CheckpointWriteError) -> TrainingError:
        """The one-line error of a run whose checkpoint file could not be written: what failed
        (the file there is intact), the last good resumable checkpoint, and how to go on."""
        if self.last_saved:
            how = f"free some space or fix the permissions, then continue with: {self.resume_hint}"
        else:
            how = "free some space or fix the permissions, then start the run again"
        return TrainingError(f"{exc.problem}; {self._kept()}; {how}")

    def _save(self, epoch: int, batch: int, reason: str, paddle_rng: list) -> None:
        if self.is_main:
            try:
                atomic_save(self.capture(epoch=epoch, batch=batch, reason=reason, paddle_rng=paddle_rng),
                            str(self.path))
            except CheckpointWriteError as exc:
                raise self.save_failed(exc) from None
        self.last_saved = self._position(epoch, batch)

    def _check_weights(self, when: str) -> None:
        name = non_finite_weight(self.model.network)
        if name is not None:
            raise TrainingError(f"weights became non-finite ({name}) {when}, lr {fmt_lr(self._lr())}: "
                                f"training stopped, nothing written from these weights; {self._kept()} "
                                "(lower the learning rate and start again)")

    # -- fit hooks --------------------------------------------------------------
    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = self.start_epoch + (epoch or 0)
        self.batch = self.skip if self._first else 0
        self._first = False

    def on_train_batch_begin(self, step, logs=None) -> None:
        if self._pause_at == (self.epoch, self.batch):
            marker = os.environ.get("PPADAPT_TEST_PAUSE_FILE")
            if marker:
                Path(marker).write_text(f"{os.getpid()}\n")
            while not self.stop.requested:  # until Ctrl-C (or a kill)
                time.sleep(0.02)

    def on_train_batch_end(self, step, logs=None) -> None:
        self.batch += 1
        loss = _scalar((logs or {}).get("loss"))
        bad, stop = self._sync(loss is not None and not math.isfinite(loss), self.stop.requested)
        if bad:
            what = f"loss is {loss:g}" if loss is not None and not math.isfinite(loss) else \
                "loss is not finite on another process"
            raise TrainingError(
                f"{what} at epoch {self.epoch + 1}/{self.epochs}, batch {self.batch}/{self.steps_per_epoch} "
                f"(global step {self._global_step()}), lr {fmt_lr(self._lr())}: training stopped, nothing "
                f"written from these weights; {self._kept()} (lower the learning rate and start again)")
        if stop and self.batch < self.steps_per_epoch:  # the epoch's last batch: stop after its eval
            self._check_weights(f"at epoch {self.epoch + 1}/{self.epochs}, batch {self.batch}")
            self._save(self.epoch, self.batch, "interrupt", gather_rng_states(self.nranks))
            raise TrainingInterrupted(
                f"interrupted: saved a resumable checkpoint at epoch {self.epoch + 1}/{self.epochs}, batch "
                f"{self.batch}/{self.steps_per_epoch} (global step {self._global_step()}) in {self.path}; "
                f"continue with: {self.resume_hint}")

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        self._check_weights(f"by the end of epoch {self.epoch + 1}/{self.epochs} "
                            f"(global step {self._global_step()})")
        if not self.after_eval:
            self._epoch_done()

    def on_eval_end(self, logs=None) -> None:
        if self.after_eval:
            self._epoch_done()

    def _epoch_done(self) -> None:
        self._save(self.epoch + 1, 0, "epoch", gather_rng_states(1))
        (stop,) = self._sync(self.stop.requested)
        if stop and self.epoch + 1 < self.epochs:
            raise TrainingInterrupted(
                f"interrupted: saved a resumable checkpoint after epoch {self.epoch + 1}/{self.epochs} "
                f"(global step {self._global_step()}) in {self.path}; continue with: {self.resume_hint}")

    def interrupted_message(self) -> str:
        """For a Ctrl-C that could not wait for the end of the batch (a second one)."""
        hint = f"; continue with: {self.resume_hint}" if self.last_saved else ""
        return f"interrupted at once: {self._kept()}{hint}"
