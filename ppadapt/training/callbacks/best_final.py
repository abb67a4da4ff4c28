"""Best and final weights of a ``paddle.Model.fit`` run, plus a ``run.json`` record.

Files written in ``run_dir`` (local rank 0 only, every write atomic, see
:mod:`ppadapt.runs.checkpoint`):

``best.pdparams``
    the network's state dict after the evaluation with the best ``monitor`` value
    (higher is better, or lower for a monitor whose name contains ``loss``);
``final.pdparams``
    the network's state dict at the end of training (with ``save_format="safetensors"``:
    ``best.safetensors`` and ``final.safetensors``, the same tensors, read without unpickling);
``run.json``
    the run's :class:`~ppadapt.runs.record.RunRecord`: the header given as ``meta``, then
    ``"history": [...], "best": {...}, "final": {...}, "checkpoints": {...}``,
    rewritten after every epoch and evaluation, so an interrupted run keeps its record.

One history entry per epoch: ``epoch`` (0-based), ``train_loss`` (mean over the
epoch's samples), ``train_<metric>`` (the epoch's running metrics from the last
batch), ``lr`` (at the end of the epoch), ``train_seconds``, and, when the epoch
was evaluated, ``eval_loss`` (mean over the eval set), the eval metrics under their
own names (``acc_top1``, ``acc_top5``, ...) and ``epoch_seconds`` (train + eval); other
callbacks add theirs with :meth:`BestAndFinalCheckpoint.add_to_epoch` (``adapt_*``: see
:mod:`.adaptation`). The eval set is ``fit``'s ``eval_data``: the test set in a training run.

With a validation split (``validation``, a :class:`~.validation.ValidationEval` listed
before this callback) each evaluated entry also has ``val_loss``, ``val_acc_top1``, ...,
and ``best`` is the epoch with the best validation value of ``monitor`` (ties: the
earlier epoch); its unprefixed numbers are the test set's at that epoch, the ones a run
reports. Without one, ``best`` is chosen on the eval (test) set itself: run.json says
which (``selected_on``, from the record's header).

Paddle quirks handled here: ``fit`` passes one shared ``logs`` dict to every
callback, overwritten by evaluation batches, so values are copied when seen; the
eval loss is the mean over the eval set (:class:`~.loss.EvalLossMean`, shared with
the VisualDL logger in a training run); and ``fit`` calls the eval callbacks only when given
``eval_data``, so without it the history has train fields only, ``best`` stays
``None`` and ``final.pdparams``/``run.json`` are still written at train end.

Resuming (:mod:`ppadapt.training.resume`): ``state_dict()`` is the record so far (history, best,
final, and the running sums of an epoch stopped part-way); ``set_state_dict`` puts it
back, and ``start_epoch`` offsets ``fit``'s epoch numbers (which restart from 0 in every
``fit`` call), so a resumed run appends to the same history with the right epoch indices.
"""
from __future__ import annotations

import os
import time

import paddle

from ...runs.checkpoint import save_state_dict
from ...runs.record import RUN_RECORD, RunRecord, write_record
from .loss import EvalLossMean, LossMean, eval_loss_source, log_value
from .validation import ValidationEval


def _metrics(logs: dict, names: list[str]) -> dict:
    """The metric values (not the loss) named in ``names`` that ``logs`` holds."""
    values = {name: log_value(logs.get(name)) for name in names if name != "loss"}
    return {k: v for k, v in values.items() if v is not None}


class BestAndFinalCheckpoint(paddle.callbacks.Callback):
    """Save ``best.pdparams`` on improvement, ``final.pdparams`` at the end (or ``.safetensors``),
    and ``run.json``."""

    def __init__(self, run_dir: str, meta: RunRecord | dict | None = None, monitor: str = "acc_top1", *,
                 start_epoch: int = 0, resume_path: str | None = None,
                 eval_loss: EvalLossMean | None = None, validation: ValidationEval | None = None,
                 save_format: str = "pdparams") -> None:
        """``start_epoch``: epochs done before this ``fit`` call (a resumed run);
        ``resume_path``: the run's resumable checkpoint, listed in run.json;
        ``eval_loss``: the shared eval-loss mean (None: this callback keeps its own);
        ``validation``: the validation split's evaluation; best is then chosen on its
        ``val_<monitor>``; ``save_format``: ``pdparams`` or ``safetensors``, the best and
        final files' suffix and format."""
        super().__init__()
        self.run_dir = run_dir
        # the record's header (RunRecord.header), or a resume checkpoint's meta dict
        self.header = meta if isinstance(meta, RunRecord) else RunRecord.from_dict(meta or {})
        self.validation = validation
        self.monitor = monitor if validation is None else f"val_{monitor.removeprefix('eval_')}"
        self.best_path = os.path.join(run_dir, f"best.{save_format}")
        self.final_path = os.path.join(run_dir, f"final.{save_format}")
        self.json_path = os.path.join(run_dir, RUN_RECORD)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.final: dict | None = None
        self._entry: dict | None = None  # the epoch awaiting its evaluation
        self._epoch = 0
        self._epoch_start = 0.0
        self._train_loss = LossMean()
        self._eval_loss, self._feeds_eval_loss = eval_loss_source(eval_loss)
        self._eval_names: list[str] = []
        self._train_metrics: dict = {}
        self.start_epoch = start_epoch
        self.resume_path = resume_path
        self._partial: dict | None = None  # an epoch resumed part-way: its sums so far

    # -- helpers ---------------------------------------------------------------
    def _is_write(self) -> bool:
        return paddle.distributed.ParallelEnv().local_rank == 0

    def _improved(self, value: float) -> bool:
        if self.best is None or self.best.get(self.monitor) is None:
            return True
        if "loss" in self.monitor:
            return value < self.best[self.monitor]
        return value > self.best[self.monitor]

    @property
    def meta(self) -> dict:
        """The record's header as a dict (what a resume checkpoint keeps)."""
        return self.header.meta()

    def _record(self) -> RunRecord:
        checkpoints = {"best": self.best_path if self.best is not None else None,
                       "final": self.final_path if self.final is not None else None}
        if self.resume_path is not None:
            checkpoints["resume"] = self.resume_path
        return self.header.with_progress(history=self.history, best=self.best, final=self.final,
                                         checkpoints=checkpoints)

    # -- resuming --------------------------------------------------------------
    def state_dict(self) -> dict:
        """The record so far, plus the running sums of the current epoch (for a stop mid-epoch)."""
        return {"history": [dict(e) for e in self.history], "best": self.best, "final": self.final,
                "epoch_sums": [self._train_loss.total, self._train_loss.samples],
                "train_metrics": dict(self._train_metrics),
                "epoch_elapsed": time.perf_counter() - self._epoch_start if self._epoch_start else 0.0}

    def set_state_dict(self, state: dict, mid_epoch: bool = False) -> None:
        """Restore :meth:`state_dict`; ``mid_epoch``: the next epoch continues a stopped one."""
        self.history = [dict(e) for e in state.get("history") or []]
        self.best = state.get("best")
        self.final = state.get("final")
        self._partial = ({"sums": list(state.get("epoch_sums") or [0.0, 0]),
                          "metrics": dict(state.get("train_metrics") or {}),
                          "elapsed": float(state.get("epoch_elapsed") or 0.0)} if mid_epoch else None)

    def _write_record(self) -> None:
        if self._is_write():
            write_record(self._record(), self.json_path)

    # -- train -----------------------------------------------------------------
    def on_train_begin(self, logs=None) -> None:
        if self._is_write():
            os.makedirs(self.run_dir, exist_ok=True)

    def on_epoch_begin(self, epoch=None, logs=None) -> None:
        self._epoch = self.start_epoch + (epoch or 0)
        self._epoch_start = time.perf_counter()
        self._train_loss.reset()
        self._train_metrics = {}
        self._entry = None
        if self._partial is not None:  # continuing an epoch that was stopped part-way
            partial, self._partial = self._partial, None
            self._train_loss.reset(*partial["sums"])
            self._train_metrics = partial["metrics"]
            self._epoch_start -= partial["elapsed"]

    def on_train_batch_end(self, step, logs=None) -> None:
        logs = logs or {}
        self._train_loss.add(logs)
        self._train_metrics = _metrics(logs, self.params.get("metrics") or [])

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        entry = {"epoch": self._epoch,
                 "train_loss": self._train_loss.value,
                 **{f"train_{k}": v for k, v in self._train_metrics.items()},
                 "lr": float(self.model._optimizer.get_lr()) if self.model._optimizer else None,
                 "train_seconds": round(time.perf_counter() - self._epoch_start, 3)}
        self.history.append(entry)
        self._entry = entry
        self._write_record()

    def add_to_epoch(self, fields: dict) -> None:
        """Fields another callback measured at the end of this epoch (after this callback's
        ``on_epoch_end``), into the epoch's history entry and run.json."""
        if self.history and fields:
            self.history[-1].update(fields)
            self._write_record()

    # -- eval ------------------------------------------------------------------
    def on_eval_begin(self, logs=None) -> None:
        if self._feeds_eval_loss:
            self._eval_loss.on_eval_begin(logs)
        self._eval_names = (logs or {}).get("metrics") or self.params.get("metrics") or []

    def on_eval_batch_end(self, step, logs=None) -> None:
        if self._feeds_eval_loss:
            self._eval_loss.on_eval_batch_end(step, logs)

    def on_eval_end(self, logs=None) -> None:
        entry, self._entry = self._entry, None
        if entry is None:  # an evaluate() outside fit: nothing to record
            return
        logs = logs or {}
        eval_loss = self._eval_loss.value
        if eval_loss is None:
            eval_loss = log_value(logs.get("loss"))
        metrics = _metrics(logs, self._eval_names)
        if self.validation is not None:
            metrics.update(self.validation.last or {})
        entry.update({"eval_loss": eval_loss, **metrics,
                      "epoch_seconds": round(time.perf_counter() - self._epoch_start, 3)})
        value = eval_loss if self.monitor in ("loss", "eval_loss") else metrics.get(self.monitor)
        if value is not None and self._improved(value):
            self.best = {"epoch": entry["epoch"], "eval_loss": eval_loss, **metrics,
                         self.monitor: value}
            if self._is_write():
                save_state_dict(self.model.network.state_dict(), self.best_path)
        self._write_record()

    # -- end -------------------------------------------------------------------
    def on_train_end(self, logs=None) -> None:
        self.finish(self.model.network)

    def finish(self, network: paddle.nn.Layer) -> None:
        """Write ``final.pdparams`` from ``network`` and the final record (also used when a
        resumed run finds every epoch done but the final files not yet written)."""
        last = self.history[-1] if self.history else {}
        self.final = {k: v for k, v in last.items() if not k.endswith("_seconds")}
        if self._is_write():
            save_state_dict(network.state_dict(), self.final_path)
        self._write_record()
