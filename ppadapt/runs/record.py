"""``run.json``: the record of a training run. One typed :class:`RunRecord`, one writer
(:func:`write_record`), one reader (:func:`read_record`).

A run directory's ``run.json`` is written by
:class:`ppadapt.training.callbacks.BestAndFinalCheckpoint` after every epoch and
evaluation, atomically. Its keys, in this order:

================  =====================================================================
``stage``         ``"pretrain"`` or ``"transfer"``
``dataset``       the stage's dataset name
``method``        the tuning method (``"full"`` for pretraining)
``class_names``   the classes, in label order
``mean``, ``std`` the per-channel normalisation the run used (3 numbers each)
``config``        the run's full config (``Config.to_dict()``)
``params``        ``trainable``, ``total``, ``head``, ``without_head`` parameter counts
``selected_on``   the split that chose ``best``: ``"val"`` (``val_split``/``val_dir``: the
                  best validation epoch; its test numbers are the ones reported) or
                  ``"test"`` (no validation split: chosen on the test set itself)
``schedule_rule`` only in a run whose schedule was a rule (``schedule: bit_hyperrule``): the
                  rule, the training images it was decided from and what it chose
                  (:mod:`ppadapt.training.hyperrule`); ``config`` holds the plain schedule
``history``       one entry per epoch (see :mod:`ppadapt.training.callbacks.best_final`)
``best``          the best evaluation (null before the first), ``final``: the last epoch's
                  (null until the run finished)
``checkpoints``   paths of ``best``/``final`` (null until written) and ``resume``
================  =====================================================================

The first eight, the *header*, ``selected_on`` and ``schedule_rule`` are known when training starts
(:meth:`RunRecord.header`) and are what resume checkpoints keep as ``meta``
(:meth:`RunRecord.meta`). Older records lack some of them (``method``,
``params.head``, ``mean``/``std``; ``selected_on``: their best was chosen on test); the
reader takes any JSON object and checks only the keys its caller names, so each caller
keeps its own leniency: the report reads old and unfinished records, rebuilding a model
needs ``config``, ``class_names``, ``mean`` and ``std``, and the pretrained-weights
normalisation only ``mean``/``std``.

This module does not import Paddle (the report reads records without it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..errors import CheckpointError
from .checkpoint import atomic_write_json

if TYPE_CHECKING:
    from ..methods.trainable import ParamCount

RUN_RECORD = "run.json"
HEADER = ("stage", "dataset", "method", "class_names", "mean", "std", "config", "params")
SELECTION = "selected_on"  # after the header; not in HEADER, which older records have in full
RULE = "schedule_rule"  # after it, only in the runs of a schedule rule
BODY = ("history", "best", "final", "checkpoints")

_KINDS = {"stage": str, "dataset": str, "method": str, "class_names": list, "mean": list, "std": list,
          "config": dict, "params": dict, "selected_on": str, "schedule_rule": dict, "history": list,
          "best": dict, "final": dict, "checkpoints": dict}
_JSON_KIND = {str: "a string", list: "a list", dict: "an object"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _JSON_KIND.get(type(value), type(value).__name__)


@dataclass
class RunRecord:
    """The content of a ``run.json`` (see the module doc). A header field that is None is
    not written (an older record without it stays without it); ``extra`` holds keys this
    ppadapt does not know, kept and written back as they were."""

    stage: str | None = None
    dataset: str | None = None
    method: str | None = None
    class_names: list | None = None
    mean: list | None = None
    std: list | None = None
    config: dict | None = None
    params: dict | None = None
    selected_on: str | None = None
    schedule_rule: dict | None = None
    history: list = field(default_factory=list)
    best: dict | None = None
    final: dict | None = None
    checkpoints: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def header(cls, *, stage: str, dataset: str, method: str, class_names: Sequence[str],
               mean: Iterable[float], std: Iterable[float], config: dict, params: ParamCount,
               selected_on: str | None = None, schedule_rule: dict | None = None) -> RunRecord:
        """The record of a run about to train: what it trains on and with, nothing trained yet."""
        return cls(stage=stage, dataset=dataset, method=method, class_names=class_names, mean=list(mean),
                   std=list(std), config=config,
                   params={"trainable": params.trainable, "total": params.total, "head": params.head,
                           "without_head": params.without_head}, selected_on=selected_on,
                   schedule_rule=schedule_rule)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """The record of a ``run.json`` object (or of a resume checkpoint's ``meta``), as it is:
        nothing is checked (:func:`read_record` checks what its caller needs)."""
        fields = HEADER + (SELECTION, RULE) + BODY
        known = {k: data[k] for k in fields if k in data}
        if known.get("history") is None:
            known.pop("history", None)
        return cls(**known, extra={k: v for k, v in data.items() if k not in fields})

    @property
    def best_selected_on(self) -> str:
        """``selected_on``; a record written before it had its best chosen on test."""
        return self.selected_on or "test"

    def meta(self) -> dict:
        """The header as a dict (``run.json`` without the body; a resume checkpoint's ``meta``)."""
        out = {k: getattr(self, k) for k in HEADER + (SELECTION, RULE) if getattr(self, k) is not None}
        out.update(self.extra)
        return out

    def to_dict(self) -> dict:
        """The ``run.json`` object, keys in the order written."""
        return {**self.meta(), "history": self.history, "best": self.best, "final": self.final,
                "checkpoints": self.checkpoints}

    def with_progress(self, *, history: list, best: dict | None, final: dict | None,
                      checkpoints: dict | None) -> RunRecord:
        """This header with a run's progress so far."""
        return replace(self, history=history, best=best, final=final, checkpoints=checkpoints)


def record_path(run: str | os.PathLike) -> Path:
    """``run.json`` of a run directory (a path to the file itself is taken as is)."""
    path = Path(run)
    return path if path.name == RUN_RECORD and not path.is_dir() else path / RUN_RECORD


def write_record(record: RunRecord, path: str | os.PathLike) -> None:
    """Write ``record`` to ``path`` (a ``run.json``) atomically, as indented JSON."""
    atomic_write_json(record.to_dict(), os.fspath(path))


def read_record(run: str | os.PathLike, *, require: Sequence[str] = ()) -> RunRecord:
    """The :class:`RunRecord` of a run directory (or of its ``run.json``).

    Any JSON object is a record; the keys in ``require`` must be present with the kind of
    value ppadapt writes there (a list of class names, an object of params, ...).
    Otherwise one-line CheckpointError: unreadable, not JSON, not an object, or lacking
    (or mistyping) a required key.
    """
    path = record_path(run)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"cannot read run record {path} ({type(exc).__name__}: {reason}); is the run "
                              "directory intact?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a ppadapt run record: it holds {_json_kind(data)}, not a JSON "
                              "object (pass the run directory that train.py / transfer.py wrote)")
    missing = [k for k in require if data.get(k) is None]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it was not written by a ppadapt training "
                              "run (or by an older ppadapt that did not record them)")
    wrong = [k for k in require if k in _KINDS and not isinstance(data[k], _KINDS[k])]
    if wrong:
        raise CheckpointError(f"{path} is not a ppadapt run record: "
                              + ", ".join(f"{k} is {_json_kind(data[k])}, not {_JSON_KIND[_KINDS[k]]}" for k in wrong))
    return RunRecord.from_dict(data)


__all__ = ["BODY", "HEADER", "RULE", "RUN_RECORD", "SELECTION", "RunRecord", "read_record", "record_path",
           "write_record"]
