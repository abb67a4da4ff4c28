"""Reading losses from ``paddle.Model.fit``'s logs, and the true mean over a pass.

Paddle logs the loss as a one-element list and the metrics as numbers; its eval logs
carry only the *last* eval batch's loss, so the mean over the evaluation set is
computed here, once, for every callback that records it.
"""
from __future__ import annotations

import numbers

import paddle


def log_value(value) -> float | None:
    """A loss or metric from ``fit``'s logs as a float (None if absent or not a number)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, numbers.Number):
        return float(value)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class LossMean:
    """The loss averaged over samples (batches weighted by their size)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, total: float = 0.0, samples: int = 0) -> None:
        self.total, self.samples = total, samples

    def add(self, logs: dict) -> None:
        loss = log_value(logs.get("loss"))
        if loss is not None:
            n = int(logs.get("batch_size") or 1)
            self.total += loss * n
            self.samples += n

    @property
    def value(self) -> float | None:
        return self.total / self.samples if self.samples else None


class EvalLossMean(paddle.callbacks.Callback):
    """Averages the eval loss over the whole evaluation, for the callbacks listed after it."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = LossMean()

    def on_eval_begin(self, logs=None) -> None:
        self.mean.reset()

    def on_eval_batch_end(self, step, logs=None) -> None:
        self.mean.add(logs or {})

    @property
    def value(self) -> float | None:
        return self.mean.value


def eval_loss_source(shared: EvalLossMean | None) -> tuple[EvalLossMean, bool]:
    """``(the eval-loss mean to read, whether the caller must feed it itself)``: a callback
    used on its own keeps a private mean; in the engine one shared mean is in the list."""
    return (shared, False) if shared is not None else (EvalLossMean(), True)
