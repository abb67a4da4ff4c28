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
  would plot the loss of one (possibly tiny) batch;
* :meth:`VisualDLLogger.add_scalars`: other callbacks' scalars in the same file (one
  log file per run: VisualDL shows only a directory's newest), e.g. ``adapt/*`` and the
  validation split's ``val/*`` per epoch.

Resuming: ``start_epoch`` and ``start_step`` (epochs and batches done before this
``fit`` call) continue the eval and train step numbers of the interrupted run in the same
log directory. VisualDL shows only the newest record file of a directory, so the new
file (named to sort after the old ones) starts with a copy of the earlier files' scalars
up to the resume point (train steps <= ``start_step``, eval epochs < ``start_epoch``):
the curves show the whole run, without the steps an interrupted process logged after its
last checkpoint. The writer is flushed after every epoch, so what a checkpoint covers
is on disk when the checkpoint is.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Mapping

import paddle
from visualdl import LogReader, LogWriter

from ...methods.trainable import ParamCount, count_parameters
from .loss import EvalLossMean, eval_loss_source

PER_EPOCH = ("eval/", "val/", "adapt/")  # tags logged at step = epoch (0-based); train/* at step = batch


class VisualDLLogger(paddle.callbacks.VisualDL):
    """Paddle's ``VisualDL`` callback plus ``train/lr``, parameter counts and a true mean eval loss."""

    def __init__(self, log_dir: str, param_count: ParamCount | None = None, *,
                 start_epoch: int = 0, start_step: int = 0, eval_loss: EvalLossMean | None = None) -> None:
        super().__init__(log_dir)
        self.param_count = param_count
        self.start_epoch = start_epoch
        self.start_step = start_step
        self._eval_loss, self._feeds_eval_loss = eval_loss_source(eval_loss)

    def _ensure_writer(self):
        # Same attribute and construction as the parent's lazy writer, so the
        # parent's close at train end covers it.
        if not hasattr(self, "writer"):
            if self.start_step or self.start_epoch:
                earlier, name = self._earlier_scalars()
                self.writer = LogWriter(self.log_dir, file_name=name)
                for tag, step, value in earlier:
                    self.writer.add_scalar(tag=tag, step=step, value=value)
            else:
                self.writer = LogWriter(self.log_dir)
        return self.writer

    def _earlier_scalars(self) -> tuple[list[tuple[str, int, float]], str]:
        """The interrupted run's scalars up to the resume point, merged over its record
        files (a step in a later file wins), and a file name that sorts after them."""
        files = sorted(Path(self.log_dir).glob("vdlrecords.*")) if Path(self.log_dir).is_dir() else []
        merged: dict[tuple[str, int], float] = {}
        for path in files:
            try:
                reader = LogReader(file_path=str(path))
                for tag in reader.get_tags().get("scalar", []):
                    for record in reader.get_data("scalar", tag):
                        step = int(record.id)
                        keep = (step <= self.start_step if tag.startswith("train/")
                                else step < self.start_epoch if tag.startswith(PER_EPOCH) else True)
                        if keep:
                            merged[(tag, step)] = float(record.value)
            except Exception:  # a file cut short by a kill: keep what the others have
                continue
        stamps = [int(m.group(1)) for p in files if (m := re.match(r"vdlrecords\.(\d+)\.log", p.name))]
        stamp = max([int(time.time())] + [t + 1 for t in stamps])
        return [(tag, step, value) for (tag, step), value in sorted(merged.items())], f"vdlrecords.{stamp:010d}.log"

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        self.train_step = self.start_step  # the parent starts from 0
        if not self._is_write():
            return
        if self.start_step or self.start_epoch:  # resumed: earlier scalars copied, counts included
            self._ensure_writer()
            return
        count = self.param_count or count_parameters(self.model.network)
        writer = self._ensure_writer()
        writer.add_scalar(tag="model/trainable_params", step=0, value=count.trainable)
        writer.add_scalar(tag="model/total_params", step=0, value=count.total)

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        super().on_epoch_begin(self.start_epoch + (epoch or 0), logs)  # eval/* step = absolute epoch

    def on_train_batch_end(self, step, logs=None) -> None:
        super().on_train_batch_end(step, logs)  # advances self.train_step, writes train/<metric>
        if self._is_write():
            lr = float(self.model._optimizer.get_lr())
            self._ensure_writer().add_scalar(tag="train/lr", step=self.train_step, value=lr)

    def on_eval_begin(self, logs=None) -> None:
        super().on_eval_begin(logs)
        if self._feeds_eval_loss:
            self._eval_loss.on_eval_begin(logs)

    def on_eval_batch_end(self, step, logs=None) -> None:
        if self._feeds_eval_loss:
            self._eval_loss.on_eval_batch_end(step, logs)

    def on_eval_end(self, logs=None) -> None:
        logs = dict(logs or {})
        if self._eval_loss.value is not None and "loss" in logs:
            logs["loss"] = [self._eval_loss.value]
        super().on_eval_end(logs)
        self._flush()

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        super().on_epoch_end(epoch, logs)
        self._flush()

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars another callback measured (per epoch: ``step`` = the epoch index), written
        on the main process only."""
        if self._is_write():
            writer = self._ensure_writer()
            for tag, value in values.items():
                writer.add_scalar(tag=tag, step=step, value=value)

    def _flush(self) -> None:
        """On disk before the epoch's resumable checkpoint is (see the module doc)."""
        if self._is_write() and hasattr(self, "writer"):
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the log file; also when training stopped with an error, where
        Paddle's own close at train end never ran."""
        if hasattr(self, "writer"):
            self.writer.close()
            del self.writer
