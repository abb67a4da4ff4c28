"""One task for a shared backbone: an adapter file and what serving it needs besides its tensors.

An adapter file holds the tensors a method trained (and the head) plus its metadata
(:mod:`.adapter_file`). To serve it on a backbone loaded once, a task also needs its
class names, the normalisation and evaluation resize it was trained with, and the
geometry of the backbone it was made for. A file that records them (``class_names``,
``num_classes``, ``model``, ``mean``, ``std`` in its ``adapter_config.json``) is enough on its
own; for one that does not (an older ``adapter.pdparams``), they come from the ``run.json``
beside it, which every ppadapt transfer writes in the same folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..models.vit import ViTConfig
from .adapter_file import (FIT, GEOMETRY_WORDS, backbone_geometry, find_adapter, geometry_differences,
                           read_adapter)
from .loading import rgb_triple
from .record import RUN_RECORD, RunRecord, read_record

# What must agree between an adapter and the backbone that serves it: the backbone's fit
# (adapter_file.FIT), and for serving also the input size and the LayerNorm epsilon.
SERVING_FIT = (*FIT, "img_size", "epsilon")


@dataclass
class TaskFile:
    """An adapter file read for serving: tensors, method, and what the task's predictions need."""

    path: Path  # the adapter file (or folder) that was read
    tensors: dict  # name -> array, the method's trained tensors and the head's
    method: str
    options: dict  # the method's options, as recorded
    methods: dict  # every method the trained model had (carried ones and ``method``): {name: options}
    model: dict  # the architecture it was trained on (ViTConfig keys; more keys are ignored)
    class_names: list[str]
    mean: tuple[float, float, float] | None = None  # None: not recorded, the backbone's
    std: tuple[float, float, float] | None = None
    eval_resize: str = "none"  # how evaluation resized images ("resize_center_crop" or "none")
    carried: list[str] | None = None  # the methods its backbone carried (None: not recorded)
    record: RunRecord | None = None  # the run.json beside it, when there is one
    run_dir: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def head_kind(self) -> str:
        return str(self.model.get("head", "linear"))

    def geometry(self) -> dict:
        """The geometry of the architecture it was trained on (the keys recorded)."""
        return backbone_geometry(dict(self.model))


def _record_beside(path: Path) -> Path | None:
    """The run folder of an adapter: the folder holding it (or holding its folder)."""
    for folder in (path.parent, path.parent.parent):
        if (folder / RUN_RECORD).is_file():
            return folder
    return None


def _triple(values: Any, what: str, where: Path) -> tuple[float, float, float] | None:
    return None if values is None else rgb_triple(values, what, prefix=f"{where}: ")


def read_task(path: str | Path) -> TaskFile:
    """The adapter at ``path`` (a file, or a transfer run folder holding one) as a :class:`TaskFile`.

    Anything its metadata lacks comes from the run.json beside it; a one-line
    CheckpointError when the file cannot be read or neither says what the task needs.
    """
    path = Path(path).expanduser()
    run_dir = path if path.is_dir() and (path / RUN_RECORD).is_file() else None
    path = find_adapter(path)
    if run_dir is None:
        run_dir = _record_beside(path)
    try:
        tensors, meta = read_adapter(path)
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged metadata entry, or a file that is no adapter at all
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"adapter file {path} cannot be read: it is corrupt or not an adapter file "
                              f"({type(exc).__name__}: {reason})") from None
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"adapter file {path} is corrupt: its metadata is not an object")
    record = read_record(run_dir) if run_dir is not None else None
    config = (record.config or {}) if record is not None else {}
    method = meta.get("method") or (record.method if record is not None else None)
    if not isinstance(method, str) or not method:
        raise CheckpointError(f"adapter file {path} does not say which method made it")
    model = meta.get("model") if isinstance(meta.get("model"), Mapping) else config.get("model")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"adapter file {path} records no model geometry and has no {RUN_RECORD} beside it "
                              "(keep the adapter in its run folder)")
    methods = meta.get("methods")
    if not isinstance(methods, Mapping):  # an older file: the run's carried methods and its own
        methods = {**(model.get("carry") or {}), method: dict(meta.get("options") or {})}
    class_names = meta.get("class_names") or (record.class_names if record is not None else None)
    if not isinstance(class_names, list) or not class_names:
        raise CheckpointError(f"adapter file {path} records no class names and has no {RUN_RECORD} beside it "
                              "(keep the adapter in its run folder)")
    count = meta.get("num_classes")
    if count is not None and count != len(class_names):
        raise CheckpointError(f"adapter file {path} is inconsistent: num_classes {count} but "
                              f"{len(class_names)} class names")
    mean = meta.get("mean", record.mean if record is not None else None)
    std = meta.get("std", record.std if record is not None else None)
    carry = model.get("carry")
    if not isinstance(carry, Mapping) and isinstance(config.get("model"), Mapping):
        carry = config["model"].get("carry")
    stage = config.get("transfer") if isinstance(config.get("transfer"), Mapping) else {}
    eval_resize = str(meta.get("eval_resize") or stage.get("eval_resize") or "none")
    return TaskFile(path=path, tensors=dict(tensors), method=method, options=dict(meta.get("options") or {}),
                    methods={str(k): dict(v or {}) for k, v in methods.items()}, model=dict(model),
                    class_names=[str(c) for c in class_names], mean=_triple(mean, "mean", path),
                    std=_triple(std, "std", path), eval_resize=eval_resize,
                    carried=[str(k) for k in carry] if isinstance(carry, Mapping) else None, record=record,
                    run_dir=run_dir,
                    meta=dict(meta))


def geometry_mismatch(task: TaskFile, arch: ViTConfig) -> list[str]:
    """How the architecture ``task`` was trained on differs from ``arch``, in words
    (``["width 64 (the backbone: 32)", ...]``); empty when it fits."""
    have, want = task.geometry(), backbone_geometry(arch)
    return [f"{GEOMETRY_WORDS[k]} {have[k]} (the backbone: {want[k]})"
            for k in geometry_differences(have, want, SERVING_FIT)]


__all__ = ["SERVING_FIT", "TaskFile", "find_adapter", "geometry_mismatch", "read_task"]
