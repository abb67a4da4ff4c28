"""After every batch and epoch: stop safely, and make the run resumable.

After every batch: a NaN/Inf loss stops training with a one-line
:class:`~ppadapt.errors.TrainingError` naming the step and the LR; Ctrl-C (see
:func:`ppadapt.training.signals.stop_on_sigint`) saves a checkpoint at the batch boundary
and raises :class:`~ppadapt.errors.TrainingInterrupted`. After every epoch: the trainable
weights are checked finite, then (after the evaluation, so the best metric is in it) the
resumable checkpoint is written. Nothing is ever written from non-finite weights: the
error is raised before any write, so the previous checkpoint stays.

With several processes, the loss check and the stop request are agreed by an all-reduce
(max) of two flags after every batch, so that every rank stops at the same batch; only
rank 0 writes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import paddle

from ...errors import CheckpointWriteError, TrainingError, TrainingInterrupted
from ...runs.checkpoint import atomic_save
from ..resume import gather_rng_states
from ..signals import StopRequest
from .loss import log_value


def fmt_lr(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def non_finite_weight(network: paddle.nn.Layer) -> str | None:
    """The name of the first trainable parameter holding a NaN or Inf, or None."""
    for name, param in network.named_parameters():
        if not param.stop_gradient and not bool(paddle.isfinite(param).all()):
            return name
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

    def kept(self) -> str:
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
        return TrainingError(f"{exc.problem}; {self.kept()}; {how}")

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
                                f"training stopped, nothing written from these weights; {self.kept()} "
                                "(lower the learning rate and start again)")

    # -- fit hooks --------------------------------------------------------------
    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = self.start_epoch + (epoch or 0)
        self.batch = self.skip if self._first else 0
        self._first = False

    def on_train_batch_end(self, step, logs=None) -> None:
        self.batch += 1
        loss = log_value((logs or {}).get("loss"))
        bad, stop = self._sync(loss is not None and not math.isfinite(loss), self.stop.requested)
        if bad:
            what = f"loss is {loss:g}" if loss is not None and not math.isfinite(loss) else \
                "loss is not finite on another process"
            raise TrainingError(
                f"{what} at epoch {self.epoch + 1}/{self.epochs}, batch {self.batch}/{self.steps_per_epoch} "
                f"(global step {self._global_step()}), lr {fmt_lr(self._lr())}: training stopped, nothing "
                f"written from these weights; {self.kept()} (lower the learning rate and start again)")
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
        return f"interrupted at once: {self.kept()}{hint}"
