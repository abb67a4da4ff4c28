"""VisualDL logging of a ``paddle.Model.fit`` run, LR and parameter counts included.

A subclass of Paddle's ``VisualDL`` callback (the tutorial monkey-patched it to get
the LR in). What the parent already does, and is kept:

* ``train/<metric>`` for every name in ``params['metrics']`` (``loss``,
  ``acc_top1``, ``acc_top5``, ...) once per batch, at steps 1, 2, ... over the run;
* ``eval/<metric>`` once per evaluation, at step = epoch index (0-based);
* the writer is created lazily, only on local rank 0, and closed at train end.

What this class adds:

* ``train/lr`` per batch, at the same step as ``train/loss``, read from the
  optimizer after the batch (the LR that batch was trained with);
* ``model/trainable_params`` and ``model/total_params`` once, at step 0;
* ``eval/loss`` is the mean over the evaluation set, weighted by batch size. Paddle
  passes only the *last* eval batch's loss in the eval logs, so the parent alone
  would plot the loss of one (possibly tiny) batch.
"""
from __future__ import annotations

import numbers

import paddle

from ..freeze import ParamCount, count_parameters


def _first(value) -> float | None:
    """Paddle logs a loss as a one-element list and metrics as numbers."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return float(value) if isinstance(value, numbers.Number) else None


class VisualDLLogger(paddle.callbacks.VisualDL):
    """Paddle's ``VisualDL`` callback plus ``train/lr``, parameter counts and a true mean eval loss."""

    def __init__(self, log_dir: str, param_count: ParamCount | None = None) -> None:
        super().__init__(log_dir)
        self.param_count = param_count
        self._eval_loss_sum = 0.0
        self._eval_samples = 0

    def _ensure_writer(self):
        # Same attribute and construction as the parent's lazy writer, so the
        # parent's close at train end covers it.
        if not hasattr(self, "writer"):
            from visualdl import LogWriter

            self.writer = LogWriter(self.log_dir)
        return self.writer

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if not self._is_write():
            return
        count = self.param_count or count_parameters(self.model.network)
        writer = self._ensure_writer()
        writer.add_scalar(tag="model/trainable_params", step=0, value=count.trainable)
        writer.add_scalar(tag="model/total_params", step=0, value=count.total)

    def on_train_batch_end(self, step, logs=None) -> None:
        super().on_train_batch_end(step, logs)  # advances self.train_step, writes train/<metric>
        if self._is_write():
            lr = float(self.model._optimizer.get_lr())
            self._ensure_writer().add_scalar(tag="train/lr", step=self.train_step, value=lr)

    def on_eval_begin(self, logs=None) -> None:
        super().on_eval_begin(logs)
        self._eval_loss_sum, self._eval_samples = 0.0, 0

    def on_eval_batch_end(self, step, logs=None) -> None:
        logs = logs or {}
        loss = _first(logs.get("loss"))
        if loss is not None:
            n = int(logs.get("batch_size", 1))
            self._eval_loss_sum += loss * n
            self._eval_samples += n

    def on_eval_end(self, logs=None) -> None:
        logs = dict(logs or {})
        if self._eval_samples and "loss" in logs:
            logs["loss"] = [self._eval_loss_sum / self._eval_samples]
        super().on_eval_end(logs)
