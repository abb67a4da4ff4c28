"""Learning-rate warmup followed by cosine decay, as ``paddle.Model.fit`` callbacks.

Two schedules, each a pure function of the global batch index (plus the epoch for
the first) and a callback that applies it:

``warmup_epoch_cosine_lr`` / :class:`WarmupEpochCosine` (the AI Studio tutorial's
schedule)
    Linear warmup stepped per batch for ``warmup_steps`` batches, then cosine decay
    stepped per *epoch*: every batch of epoch ``e`` uses
    ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * e / epochs))``.

``warmup_step_cosine_lr`` / :class:`WarmupStepCosine`
    The same warmup, then cosine decay stepped per *batch* over the remaining
    ``total_steps - warmup_steps`` batches (smooth, no staircase).

``warmup_step_decay_lr`` / :class:`WarmupStepDecay`
    The same warmup, then ``base_lr`` multiplied by ``decay_factor`` at each fraction
    ``decay_at`` of the ``total_steps`` batches (BiT's HyperRule: /10 at 30%, 60% and
    90%), never below ``min_lr``.

Warmup: batch ``step`` (0-based, counted over the whole run) uses
``base_lr * (step + 1) / warmup_steps`` while ``step < warmup_steps``, so the first
batch already trains (non-zero LR) and batch ``warmup_steps - 1`` reaches
``base_lr``. ``warmup_steps=0`` disables warmup. Past the end of the cosine
schedules (epoch >= epochs, step >= total_steps) the LR stays at ``min_lr``.

The callbacks set the LR of the prepared optimizer (``self.model._optimizer``,
created with a *float* learning rate, not an ``LRScheduler``) with ``set_lr`` in
``on_train_batch_begin``, so the LR that updates batch ``step`` is exactly the
function's value. They count batches and epochs themselves (``global_step``,
``epoch``) instead of trusting ``fit``'s per-call counters, and
``state_dict()``/``set_state_dict()`` carry those counters so a resumed ``fit``
(with the remaining epochs) continues the schedule where it stopped.
"""
from __future__ import annotations

import math
from typing import Sequence

import paddle


def _check(base_lr: float, warmup_steps: int, length: int, length_name: str, min_lr: float) -> None:
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if length < 1:
        raise ValueError(f"{length_name} must be >= 1, got {length}")
    if not 0 <= min_lr <= base_lr:
        raise ValueError(f"min_lr must be in [0, base_lr={base_lr}], got {min_lr}")


def _warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    return base_lr * (step + 1) / warmup_steps


def _cosine(base_lr: float, min_lr: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_epoch_cosine_lr(base_lr: float, step: int, epoch: int, *, warmup_steps: int,
                           epochs: int, min_lr: float = 0.0) -> float:
    """LR of global batch ``step`` (0-based) in epoch ``epoch`` (0-based): per-batch
    linear warmup, then per-epoch cosine decay over ``epochs`` epochs."""
    _check(base_lr, warmup_steps, epochs, "epochs", min_lr)
    if step < warmup_steps:
        return _warmup_lr(base_lr, step, warmup_steps)
    return _cosine(base_lr, min_lr, epoch / epochs)


def warmup_step_cosine_lr(base_lr: float, step: int, *, warmup_steps: int, total_steps: int,
                          min_lr: float = 0.0) -> float:
    """LR of global batch ``step`` (0-based): per-batch linear warmup, then per-batch
    cosine decay over the remaining ``total_steps - warmup_steps`` batches."""
    _check(base_lr, warmup_steps, total_steps, "total_steps", min_lr)
    if step < warmup_steps:
        return _warmup_lr(base_lr, step, warmup_steps)
    return _cosine(base_lr, min_lr, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def decay_steps(total_steps: int, decay_at: Sequence[float]) -> list[int]:
    """The batches at which a step decay multiplies the LR: ``round(f * total_steps)`` for each
    fraction ``f`` of ``decay_at`` (increasing, in (0, 1))."""
    if any(not 0.0 < f < 1.0 for f in decay_at) or any(a >= b for a, b in zip(decay_at, decay_at[1:])):
        raise ValueError(f"decay_at must be increasing fractions in (0, 1), got {list(decay_at)}")
    return [round(f * total_steps) for f in decay_at]


def warmup_step_decay_lr(base_lr: float, step: int, *, warmup_steps: int, total_steps: int,
                         decay_at: Sequence[float] = (0.3, 0.6, 0.9), decay_factor: float = 0.1,
                         min_lr: float = 0.0) -> float:
    """LR of global batch ``step`` (0-based): per-batch linear warmup, then ``base_lr`` times
    ``decay_factor`` once for every boundary of :func:`decay_steps` that ``step`` has reached,
    never below ``min_lr``."""
    _check(base_lr, warmup_steps, total_steps, "total_steps", min_lr)
    if not 0.0 < decay_factor <= 1.0:
        raise ValueError(f"decay_factor must be in (0, 1], got {decay_factor}")
    boundaries = decay_steps(total_steps, decay_at)
    if step < warmup_steps:
        return _warmup_lr(base_lr, step, warmup_steps)
    drops = sum(step >= boundary for boundary in boundaries)
    return max(min_lr, base_lr * decay_factor ** drops)


class _ScheduleCallback(paddle.callbacks.Callback):
    """Counts batches/epochs across the run and pushes ``_lr_at`` into the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.global_step = 0  # batches completed = index of the next batch
        self.epoch = 0  # index of the current (or next) epoch
        self.last_lr: float | None = None
        self._first_epoch = 0

    def _lr_at(self, step: int, epoch: int) -> float:
        raise NotImplementedError

    def _optimizer(self):
        optimizer = getattr(self.model, "_optimizer", None)
        if optimizer is None:
            raise RuntimeError(f"{type(self).__name__} needs a model prepared with an optimizer")
        if isinstance(optimizer._learning_rate, paddle.optimizer.lr.LRScheduler):
            raise RuntimeError(f"{type(self).__name__} sets the LR itself: create the optimizer "
                               "with a float learning_rate, not an LRScheduler")
        return optimizer

    def _apply(self) -> None:
        self.last_lr = self._lr_at(self.global_step, self.epoch)
        self._optimizer().set_lr(self.last_lr)

    def on_train_begin(self, logs=None) -> None:
        # fit numbers its epochs from 0 on every call: offset them by the epochs
        # already done, so that a resumed run continues the schedule.
        self._first_epoch = self.epoch
        self._apply()

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self.epoch = self._first_epoch + (epoch or 0)

    def on_train_batch_begin(self, step, logs=None) -> None:
        self._apply()

    def on_train_batch_end(self, step, logs=None) -> None:
        self.global_step += 1

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        """Counters to resume from: batches done and the index of the next epoch."""
        return {"global_step": self.global_step, "epoch": self.epoch}

    def set_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])


class WarmupEpochCosine(_ScheduleCallback):
    """The tutorial's schedule: linear warmup per batch, then cosine per epoch
    (see :func:`warmup_epoch_cosine_lr`)."""

    def __init__(self, base_lr: float, warmup_steps: int, epochs: int, min_lr: float = 0.0) -> None:
        super().__init__()
        _check(base_lr, warmup_steps, epochs, "epochs", min_lr)
        self.base_lr, self.warmup_steps, self.epochs, self.min_lr = base_lr, warmup_steps, epochs, min_lr

    def _lr_at(self, step: int, epoch: int) -> float:
        return warmup_epoch_cosine_lr(self.base_lr, step, epoch, warmup_steps=self.warmup_steps,
                                      epochs=self.epochs, min_lr=self.min_lr)


class WarmupStepCosine(_ScheduleCallback):
    """Linear warmup then cosine, both per batch (see :func:`warmup_step_cosine_lr`)."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> None:
        super().__init__()
        _check(base_lr, warmup_steps, total_steps, "total_steps", min_lr)
        self.base_lr, self.warmup_steps, self.total_steps, self.min_lr = (
            base_lr, warmup_steps, total_steps, min_lr)

    def _lr_at(self, step: int, epoch: int) -> float:
        return warmup_step_cosine_lr(self.base_lr, step, warmup_steps=self.warmup_steps,
                                     total_steps=self.total_steps, min_lr=self.min_lr)


class WarmupStepDecay(_ScheduleCallback):
    """Linear warmup per batch, then step decay at fractions of the run
    (see :func:`warmup_step_decay_lr`)."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int,
                 decay_at: Sequence[float] = (0.3, 0.6, 0.9), decay_factor: float = 0.1,
                 min_lr: float = 0.0) -> None:
        super().__init__()
        warmup_step_decay_lr(base_lr, 0, warmup_steps=warmup_steps, total_steps=total_steps,
                             decay_at=decay_at, decay_factor=decay_factor, min_lr=min_lr)  # checks the arguments
        self.base_lr, self.warmup_steps, self.total_steps, self.min_lr = base_lr, warmup_steps, total_steps, min_lr
        self.decay_at, self.decay_factor = tuple(decay_at), decay_factor

    def _lr_at(self, step: int, epoch: int) -> float:
        return warmup_step_decay_lr(self.base_lr, step, warmup_steps=self.warmup_steps,
                                    total_steps=self.total_steps, decay_at=self.decay_at,
                                    decay_factor=self.decay_factor, min_lr=self.min_lr)
