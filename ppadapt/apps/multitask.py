"""Many tasks on one frozen backbone: :class:`MultiTaskModel`, :class:`MultiTaskPredictor`,
and ``predict.py --backbone ... --adapter NAME=PATH``.

A parameter-efficient task is its adapter file: the tensors its method trained and its
head. The backbone is built and loaded once (:func:`ppadapt.runs.backbone.load_backbone`);
each task registered on it keeps, apart from the backbone,

* its **modules** (AdaptFormer branches, LoRA updates, SSF factors, VPT prompts, ...):
  applied once when the task is added, loaded, then taken off the model
  (:meth:`ppadapt.methods.Tuner.detach`) and kept; activating the task wires them back
  in (:meth:`~ppadapt.methods.Tuner.attach`: hooks only, no tensor is copied);
* its **head** (and class names, normalisation, evaluation resize): swapped in as
  ``model.head``;
* its **overrides**: the backbone tensors its method trained in place (BitFit's biases,
  branches the backbone carries from pretraining). These are copied into the backbone
  tensors when the task is activated; a pristine copy of exactly those tensors, kept
  once for all tasks, is copied back when it is deactivated, so no task sees another's
  values. Switching tasks therefore costs the overridden tensors' size plus rewiring a
  few hooks.

So the backbone's tensors exist once in memory, whatever the number of tasks, and a task's
logits are those of its own single model (the same network with the same weights). A
mixed batch is split per task (in order of first appearance), each group run with its
task active, and the results are put back in input order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config.tuning import build_options
from ..data.images import IMAGE_SUFFIX_TEXT, decode_image, first_paths
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, DataError, PPAdaptError
from ..methods import applied_methods, get_method
from ..methods.base import Detached
from ..models.vit import VisionTransformer, make_head
from ..runs.backbone import Backbone, load_backbone
from ..runs.checkpoint import load_weights
from ..runs.tasks import TaskFile, geometry_mismatch, read_task
from .predict import DEFAULT_BATCH, DEFAULT_TOPK, Predictor, expand_images, format_result, top_k

AdapterSpecs = Mapping[str, "str | os.PathLike | TaskFile"] | Iterable[tuple[str, "str | os.PathLike | TaskFile"]]


# --- the model -----------------------------------------------------------------------------

@dataclass
class Task:
    """One registered task: what it adds to the backbone, kept off the model while inactive."""

    name: str
    file: TaskFile  # its tensors are dropped once loaded into the parts below
    head: nn.Layer
    detached: Detached | None  # its method's modules off the model (None: a method the backbone carries)
    overrides: dict  # backbone tensor name -> this task's value (BitFit's biases, carried branches)
    transform: EvalTransform
    carried: bool  # its method is one the backbone carries: no modules of its own, only overrides

    @property
    def method(self) -> str:
        return self.file.method

    @property
    def class_names(self) -> list[str]:
        return self.file.class_names

    @property
    def num_classes(self) -> int:
        return self.file.num_classes

    def state(self) -> dict:
        """Every tensor the task adds or changes, by its name in the task's full model."""
        out = dict(self.overrides)
        if self.detached is not None:
            out.update(self.detached.state())
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return out

    def nbytes(self) -> int:
        """Bytes of the tensors the task holds (modules, head, overrides)."""
        return sum(int(np.prod(v.shape)) * v.element_size() for v in self.state().values())

    def describe(self) -> str:
        return (f"task {self.name}: {self.method} adapter {self.file.path}, {self.num_classes} classes "
                f"({', '.join(self.class_names[:3])}{', ...' if self.num_classes > 3 else ''})")


def check_task_name(name: Any) -> str:
    """A task name: a non-empty string without ``,`` or ``=`` (the command lines' separators)
    or surrounding whitespace; ConfigError otherwise."""
    if not isinstance(name, str) or not name or name != name.strip() or "," in name or "=" in name:
        raise ConfigError(f"bad task name {name!r}: use a non-empty name without ',', '=' or surrounding spaces, "
                          "e.g. cifar10")
    return name


class MultiTaskModel:
    """A backbone loaded once and any number of tasks on it, one active at a time.

    See the module docstring for what a task keeps and what switching does. Every method
    that writes an adapter file can be a task, and tasks of different methods mix freely.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.tasks: dict[str, Task] = {}
        self.active: str | None = None
        self._tensors = dict(self.model.state_dict())  # the backbone's own tensors (the live parameters)
        self._pristine: dict[str, paddle.Tensor] = {}  # backbone values of the tensors some task overrides
        self._carried = {name: self._normalised(name, options, "the backbone")
                         for name, options in applied_methods(self.model).items()}

    # --- tasks ---------------------------------------------------------------------------

    def add_task(self, name: str, adapter: str | os.PathLike | TaskFile) -> Task:
        """Register the adapter at ``adapter`` (file, folder, or its run folder) as task ``name``.

        One-line errors: a name already taken (ConfigError), a file that cannot be read or
        was made for another backbone (CheckpointError, naming what differs).
        """
        check_task_name(name)
        if name in self.tasks:
            raise ConfigError(f"two tasks named '{name}' (the first from {self.tasks[name].file.path}): give each "
                              "adapter its own name")
        file = adapter if isinstance(adapter, TaskFile) else read_task(adapter)
        self._check_fits(name, file)
        self.deactivate()  # the backbone's own values while the new task's parts are built
        task = self._build(name, file)
        self.tasks[name] = task
        return task

    def remove_task(self, name: str) -> None:
        """Unregister task ``name``; its tensors (and pristine copies no other task needs) are freed."""
        self.task(name)
        if self.active == name:
            self.deactivate()
        del self.tasks[name]
        needed = {k for t in self.tasks.values() for k in t.overrides}
        self._pristine = {k: v for k, v in self._pristine.items() if k in needed}

    def task(self, name: str) -> Task:
        """The task ``name``; ConfigError naming the registered ones if there is none."""
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none yet"
            raise ConfigError(f"unknown task '{name}' (tasks: {known})")
        return self.tasks[name]

    # --- switching -----------------------------------------------------------------------

    def activate(self, name: str) -> None:
        """Make task ``name`` the one the model computes (nothing happens if it already is)."""
        new = self.task(name)
        if self.active == name:
            return
        self._deactivate(keep=new.overrides)
        for key, value in new.overrides.items():
            self._tensors[key].set_value(value)
        if new.detached is not None:
            new.detached.tuner.attach(self.model, new.detached)
        self.model.head = new.head
        self.active = name

    def deactivate(self) -> None:
        """Back to the bare backbone: the active task's modules off, its overrides restored."""
        self._deactivate(keep={})

    def _deactivate(self, keep: Mapping) -> None:
        if self.active is None:
            return
        old = self.tasks[self.active]
        if old.detached is not None:
            old.detached = old.detached.tuner.detach(self.model, old.detached.config)
        for key in old.overrides:
            if key not in keep:  # the next task writes its own value there anyway
                self._tensors[key].set_value(self._pristine[key])
        self.model.head = nn.Identity()
        self.active = None

    # --- computing -----------------------------------------------------------------------

    @paddle.no_grad()
    def logits(self, batch: np.ndarray | paddle.Tensor, task: str) -> paddle.Tensor:
        """Task ``task``'s logits of a preprocessed N x 3 x H x W float32 batch."""
        self.activate(task)
        return self.model(batch if isinstance(batch, paddle.Tensor) else paddle.to_tensor(batch))

    def standalone(self, name: str) -> VisionTransformer:
        """Task ``name`` as a separate full model (backbone tensors copied): what export writes,
        and what its own training run would rebuild."""
        task = self.task(name)
        self.deactivate()  # the backbone's tensors hold their own values
        arch = dataclasses.replace(self.backbone.arch, head=task.file.head_kind, head_init="default")
        model = VisionTransformer(arch, class_num=task.num_classes)
        for carried, options in applied_methods(self.model).items():
            get_method(carried).apply(model, self._config(carried, options, "the backbone"))
        if task.detached is not None:
            task.detached.tuner.apply(model, task.detached.config)
        load_weights(model, {**self._tensors, **task.state()})
        model.eval()
        for param in model.parameters():
            param.stop_gradient = True
        return model

    def nbytes(self) -> dict[str, int]:
        """Bytes held: ``backbone`` (its tensors, once), ``tasks`` (every task's own tensors),
        ``pristine`` (the copies of overridden backbone tensors)."""
        def size(tensors: Iterable) -> int:
            return sum(int(np.prod(t.shape)) * t.element_size() for t in tensors)
        return {"backbone": size(self._tensors.values()), "tasks": sum(t.nbytes() for t in self.tasks.values()),
                "pristine": size(self._pristine.values())}

    # --- building a task -----------------------------------------------------------------

    @staticmethod
    def _config(name: str, options: Mapping, whose: str) -> Any:
        """The checked config of method ``name`` from recorded options (pinned ones dropped)."""
        try:
            tuner = get_method(name)
        except ValueError as exc:
            raise CheckpointError(f"{whose}: {exc}") from None
        try:
            return build_options(tuner, {k: v for k, v in options.items() if k not in tuner.fixed})
        except ConfigError as exc:
            raise CheckpointError(f"{whose} records options of {name} this ppadapt cannot apply ({exc})") from None

    @classmethod
    def _normalised(cls, name: str, options: Mapping, whose: str) -> dict:
        cfg = cls._config(name, options, whose)
        return dataclasses.asdict(cfg) if cfg is not None else {}

    def _check_fits(self, name: str, file: TaskFile) -> None:
        where = f"adapter '{name}' ({file.path})"
        bad = geometry_mismatch(file, self.backbone.arch)
        if bad:
            raise CheckpointError(f"{where} was made for another backbone: {'; '.join(bad)}")
        if file.method == "full":
            raise CheckpointError(f"{where} is a full fine-tuning, which has no adapter to share a backbone")
        own = {n: self._normalised(n, o, where) for n, o in file.methods.items()}
        carried_by_task = {n: o for n, o in own.items() if n != file.method or n in self._carried}
        if set(carried_by_task) != set(self._carried):
            def words(names: Iterable[str]) -> str:
                mods = [get_method(n).modules or n for n in names]
                return ", ".join(mods) if mods else "nothing"
            raise CheckpointError(f"{where} was trained on a backbone carrying {words(carried_by_task)}; this "
                                  f"backbone carries {words(self._carried)}")
        for carried, options in carried_by_task.items():
            diff = [k for k in options if options[k] != self._carried[carried].get(k)]
            if diff:
                k = diff[0]
                raise CheckpointError(f"{where} was trained on a backbone whose {carried} modules have {k}="
                                      f"{options[k]!r}; this backbone's have {k}={self._carried[carried].get(k)!r}")

    def _build(self, name: str, file: TaskFile) -> Task:
        where = f"adapter '{name}' ({file.path})"
        tuner = get_method(file.method)
        carried = file.method in self._carried
        cfg = self._config(file.method, file.options, where)
        head = make_head(file.head_kind, "default", self.backbone.arch.embed_dim, file.num_classes)
        before = set(self._tensors)
        applied = False
        try:
            if not carried:
                try:
                    tuner.apply(self.model, cfg)
                except ValueError as exc:
                    raise CheckpointError(f"{where}: cannot apply its method {file.method} to the backbone ({exc})"
                                          ) from None
                applied = True
            self.model.head = head
            own = self.model.state_dict()
            added = {k for k in own if k not in before}  # its modules' tensors and the head's
            tensors = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in file.tensors.items()}
            unknown = sorted(k for k in tensors if k not in own)
            wrong = sorted(f"{k} {list(tensors[k].shape)} (the model: {list(own[k].shape)})"
                           for k in tensors if k in own and list(tensors[k].shape) != list(own[k].shape))
            lacking = sorted(k for k in added if k not in tensors)
            if unknown or wrong or lacking:
                parts = [f"{len(items)} {what}, e.g. {items[0]}" for items, what in
                         ((unknown, "unknown tensors"), (wrong, "mis-shaped tensors"), (lacking, "missing tensors"))
                         if items]
                raise CheckpointError(f"{where} does not fit the backbone ({'; '.join(parts)}): it was made for "
                                      f"another model or method options")
            for key in added:
                own[key].set_value(tensors[key].astype(own[key].numpy().dtype, copy=False))
            overrides = {}
            for key in (k for k in tensors if k in before):
                target = self._tensors[key]
                overrides[key] = paddle.to_tensor(tensors[key], dtype=target.dtype, place=target.place)
                if key not in self._pristine:  # no task is active: the backbone's own value
                    self._pristine[key] = target.detach().clone()
            detached = tuner.detach(self.model, cfg) if not carried else None
            applied = False
        finally:
            if applied:
                tuner.detach(self.model, cfg)
            self.model.head = nn.Identity()
        for layer in [head, *(detached.modules if detached is not None else [])]:
            layer.eval()  # dropout off, a bn_linear head on its running statistics
            for param in layer.parameters():
                param.stop_gradient = True
        mean = file.mean or self.backbone.mean
        std = file.std or self.backbone.std
        center_crop = file.eval_resize == "resize_center_crop"
        transform = EvalTransform(mean, std, self.backbone.img_size, center_crop=center_crop)
        file.tensors = {}  # loaded: the task's parts hold them now
        return Task(name=name, file=file, head=head, detached=detached, overrides=overrides, transform=transform,
                    carried=carried)
