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
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config.tuning import build_options
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, DataError, PPAdaptError, PPAdaptWarning
from ..methods import applied_methods, get_method
from ..methods.base import RECORD, Detached
from ..models.build import build_backbone
from ..models.vit import make_head
from ..runs.backbone import Backbone, load_backbone
from ..runs.checkpoint import load_weights
from ..runs.layout import default_pretrained
from ..runs.loading import config_from_record
from ..runs.tasks import TaskFile, geometry_mismatch, read_task
from .image_inputs import DEFAULT_BATCH, DEFAULT_TOPK, expand_images, to_rgb, top_k

AdapterSpecs = Mapping[str, "str | os.PathLike | TaskFile"] | Iterable[tuple[str, "str | os.PathLike | TaskFile"]]


# --- the model -----------------------------------------------------------------------------

@dataclass
class Task:
    """One registered task: what it adds to the backbone, kept off the model while inactive."""

    name: str
    file: TaskFile  # what was read, without the tensors (the parts below hold them)
    head: nn.Layer
    detached: Detached | None  # its method's modules off the model (None: a method the backbone carries)
    overrides: dict  # backbone tensor name -> this task's value (BitFit's biases, carried branches)
    transform: EvalTransform  # its run's evaluation preprocessing
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
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
    """A task name: a non-empty string without ``,`` or ``=`` (the command lines' separators),
    path separators or a leading ``.`` (export writes a folder per task), or surrounding
    whitespace; ConfigError otherwise."""
    if (not isinstance(name, str) or not name or name != name.strip() or name.startswith(".")
            or any(c in name for c in ",=/\\")):
        raise ConfigError(f"bad task name {name!r}: use a non-empty name without ',', '=', '/', a leading '.' or "
                          "surrounding spaces, e.g. cifar10")
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
        # What the backbone carries is what changes its structure: modules. A method that attaches
        # none (a backbone that is a full or BitFit transfer run records it) is no part of it.
        setattr(self.model, RECORD, {name: options for name, options in applied_methods(self.model).items()
                                     if get_method(name).modules})
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
        self._check_source(name, file)
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

    def logits_per_image(self, batch: np.ndarray, tasks: Sequence[str]) -> list[np.ndarray]:
        """Each image's logits for its own task (a mixed batch): the images are grouped per task
        (in order of first appearance), each group run with its task active, and the rows
        returned in input order."""
        if len(tasks) != len(batch):
            raise ConfigError(f"{len(tasks)} task(s) for {len(batch)} image(s): give one per image")
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(tasks):
            groups.setdefault(name, []).append(i)
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(batch)
        for name, indices in groups.items():
            rows = self.logits(batch[indices], name).numpy()
            for i, row in zip(indices, rows):
                out[i] = row
        return out

    def standalone(self, name: str) -> nn.Layer:
        """Task ``name`` as a separate full model (backbone tensors copied): what export writes,
        and what its own training run would rebuild."""
        task = self.task(name)
        self.deactivate()  # the backbone's tensors hold their own values
        arch = dataclasses.replace(self.backbone.arch, head=task.file.head_kind, head_init="default")
        model = build_backbone(arch, task.num_classes)
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
        if file.carried is not None:  # what its training backbone carried, as recorded
            carried_by_task = {n: o for n, o in own.items() if n in file.carried}
        else:  # every other method it had, and its own if this backbone carries it
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

    def _check_source(self, name: str, file: TaskFile) -> None:
        """A warning when the task's run recorded another pretrained file than the backbone's
        weights: same shapes, other values, so its logits would not be its own model's."""
        weights = self.backbone.weights
        record = file.record
        if weights is None or record is None or not isinstance(record.config, Mapping):
            return
        transfer = record.config.get("transfer") if isinstance(record.config.get("transfer"), Mapping) else {}
        value = transfer.get("pretrained")
        if isinstance(value, str) and (value.lower() == "none" or value.startswith("paddleclas:")):
            return
        if value is None:
            try:
                source = default_pretrained(config_from_record(record.config))
            except PPAdaptError:
                return
        else:
            source = Path(value).expanduser()
        try:
            same = os.path.samefile(source, weights)
        except OSError:  # not here any more (another machine, moved): nothing to compare
            return
        if not same:
            warnings.warn(f"task '{name}' was trained from {source}, not from the backbone's {weights}: if their "
                          "backbone tensors differ, its predictions here are not its run's", PPAdaptWarning)

    def _build(self, name: str, file: TaskFile) -> Task:
        where = f"adapter '{name}' ({file.path})"
        tuner = get_method(file.method)
        carried = file.method in self._carried
        cfg = self._config(file.method, file.options, where)
        head = make_head(file.head_kind, "default", self.backbone.model.num_features, file.num_classes)
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
        return Task(name=name, file=dataclasses.replace(file, tensors={}),  # its parts hold the tensors now
                    head=head, detached=detached, overrides=overrides, transform=transform,
                    mean=tuple(mean), std=tuple(std), carried=carried)  # type: ignore[arg-type]


# --- the predictor -------------------------------------------------------------------------

def _pairs(adapters: AdapterSpecs | None) -> list[tuple[str, Any]]:
    if adapters is None:
        return []
    if isinstance(adapters, Mapping):
        return list(adapters.items())
    out = []
    for item in adapters:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ConfigError(f"adapters must be a mapping of task name to adapter path, or (name, path) pairs; "
                              f"got {item!r}")
        out.append((item[0], item[1]))
    return out


class MultiTaskPredictor:
    """Top-k classification for many tasks on one backbone: :class:`ppadapt.Predictor`'s
    output, per task.

    ``backbone``: a ppadapt run folder (its ``final.pdparams``, what transfer.py loads by
    default; ``weights="best"`` for the other) or checkpoint, ``paddleclas:NAME`` / ``NAME``
    (PaddleClas's weights; ``weights_file`` for a local copy, ``img_size``/``patch_size`` to
    resample them as the transfer did), or a loaded :class:`~ppadapt.runs.backbone.Backbone`.
    ``adapters``: ``{task name: adapter file, folder or its transfer run folder}`` (or
    ``(name, path)`` pairs); more with :meth:`add_task`, fewer with :meth:`remove_task`.

    ``predictor(images, task="cifar10")`` classifies every image for one task;
    ``predictor(images, tasks=[...])`` gives each image its own task. With one task
    registered, ``task`` may be left out. Images are what :class:`~ppadapt.Predictor` takes;
    one image gives one dict, a list a list of dicts in the same order. Each task
    preprocesses with its own run's normalisation and resize.
    """

    def __init__(self, backbone: str | os.PathLike | Backbone, adapters: AdapterSpecs | None = None,
                 topk: int = DEFAULT_TOPK, *, weights: str | None = None, weights_file: str | os.PathLike | None = None,
                 img_size: int | None = None, patch_size: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, got {topk!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        pairs = _pairs(adapters)
        names = [name for name, _ in pairs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # before the backbone is loaded: a typo fails fast
            raise ConfigError(f"two tasks named '{twice[0]}': give each adapter its own name")
        for name in names:
            check_task_name(name)
        self.backbone = backbone if isinstance(backbone, Backbone) else load_backbone(
            backbone, weights=weights, weights_file=weights_file, img_size=img_size, patch_size=patch_size)
        self.model = MultiTaskModel(self.backbone)
        self.topk = topk
        self.batch_size = batch_size
        for name, path in pairs:
            self.add_task(name, path)

    # -- tasks ----------------------------------------------------------------------------
    def add_task(self, name: str, adapter: str | os.PathLike | TaskFile) -> Task:
        """Register an adapter as task ``name`` (no restart; see :meth:`MultiTaskModel.add_task`)."""
        return self.model.add_task(name, adapter)

    def remove_task(self, name: str) -> None:
        """Unregister task ``name`` and free what it held."""
        self.model.remove_task(name)

    @property
    def tasks(self) -> list[str]:
        """The registered task names, in the order added."""
        return list(self.model.tasks)

    def class_names(self, task: str) -> list[str]:
        return list(self.model.task(task).class_names)

    def task_list(self, count: int, task: str | None = None, tasks: Sequence[str] | None = None) -> list[str]:
        """The task of each of ``count`` images from a call's ``task`` / ``tasks``; ConfigError
        for both, neither (with several tasks), a wrong length or an unknown name."""
        if task is not None and tasks is not None:
            raise ConfigError("pass task= (one task for every image) or tasks= (one per image), not both")
        if tasks is None:
            if task is None:
                if len(self.model.tasks) != 1:
                    raise ConfigError(f"name the task: task=NAME or tasks=[one per image] (tasks: "
                                      f"{', '.join(self.model.tasks) or 'none yet'})")
                task = next(iter(self.model.tasks))
            self.model.task(task)
            return [task] * count
        if isinstance(tasks, str):
            raise ConfigError(f"tasks= is one task name per image; for one task for all, pass task={tasks!r}")
        tasks = list(tasks)
        if len(tasks) != count:
            raise ConfigError(f"tasks= names {len(tasks)} task(s) for {count} image(s): give one per image")
        for name in dict.fromkeys(tasks):
            self.model.task(name)
        return tasks

    # -- outputs --------------------------------------------------------------------------
    def logits(self, images: Sequence[Any], task: str | None = None, *,
               tasks: Sequence[str] | None = None) -> list[np.ndarray]:
        """Each image's logits (float32, its task's class count), in input order."""
        return self._run(images, task, tasks, softmax=False)

    def probabilities(self, images: Sequence[Any], task: str | None = None, *,
                      tasks: Sequence[str] | None = None) -> list[np.ndarray]:
        """Each image's softmax probabilities over its task's classes, in input order."""
        return self._run(images, task, tasks, softmax=True)

    def _run(self, images: Sequence[Any], task: str | None, tasks: Sequence[str] | None,
             softmax: bool) -> list[np.ndarray]:
        images = list(images)
        names = self.task_list(len(images), task, tasks)
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(images)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):  # per task, in order of first appearance
            groups.setdefault(name, []).append(i)
        for name, indices in groups.items():
            transform = self.model.task(name).transform
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = np.stack([transform(to_rgb(images[i])) for i in chunk])
                logits = self.model.logits(batch, name)
                rows = (F.softmax(logits, axis=-1) if softmax else logits).numpy()
                for i, row in zip(chunk, rows):
                    out[i] = row
        return out

    def predict(self, images: Sequence[Any], task: str | None = None, *,
                tasks: Sequence[str] | None = None) -> list[dict]:
        """Top-k of each image of a list, for its task, in input order."""
        images = list(images)
        names = self.task_list(len(images), task, tasks)
        probabilities = self.probabilities(images, tasks=names) if images else []
        return [top_k(p[None], self.class_names(name), min(self.topk, len(p)))[0]
                for p, name in zip(probabilities, names)]

    def __call__(self, images: Any, task: str | None = None, *, tasks: Sequence[str] | None = None
                 ) -> dict | list[dict]:
        if isinstance(images, (list, tuple)):
            return self.predict(images, task, tasks=tasks)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self.predict(list(images), task, tasks=tasks)
        return self.predict([images], task, tasks=tasks)[0]

    def __repr__(self) -> str:
        return (f"MultiTaskPredictor({self.backbone.source!r}, tasks={self.tasks}, topk={self.topk}, "
                f"img_size={self.backbone.img_size})")


# --- command lines ---------------------------------------------------------------------------

def add_backbone_arguments(p: argparse.ArgumentParser, *, weights: bool = False) -> None:
    """``--backbone``, ``--backbone-file``, ``--img-size``, ``--patch-size``, ``--adapter NAME=PATH``
    (and ``--weights`` when the tool has none): the shared backbone and its tasks."""
    g = p.add_argument_group("many tasks on one backbone")
    g.add_argument("--backbone", metavar="RUN_OR_NAME",
                   help="the shared backbone: a ppadapt run folder (its final.pdparams, what transfer.py loads "
                        "by default; --weights best for the other) or checkpoint, or paddleclas:NAME (PaddleClas's "
                        "ImageNet weights, as transfer.py --backbone NAME)")
    g.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="a task: its name and its adapter file (or the transfer run folder holding it); "
                        "repeat for more tasks")
    g.add_argument("--backbone-file", metavar="PATH",
                   help="with paddleclas:NAME: a local copy of its weights (default: PaddleClas's cache or a download)")
    g.add_argument("--img-size", type=int, metavar="PX",
                   help="with paddleclas:NAME: the input size the tasks were trained at (-o model.img_size)")
    g.add_argument("--patch-size", type=int, metavar="PX",
                   help="with paddleclas:NAME: the patch size the tasks were trained with (-o model.patch_size)")
    if weights:
        g.add_argument("--weights", choices=("best", "final"),
                       help="with a run folder as --backbone: best.pdparams or final.pdparams (default)")


def parse_adapter_args(values: Sequence[str]) -> list[tuple[str, str]]:
    """``["cifar10=PATH", ...]`` as ``[("cifar10", "PATH"), ...]``; ConfigError for a malformed
    entry or a name given twice."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--adapter {value!r}: expected NAME=PATH, e.g. "
                              "--adapter cifar10=output/RUN/adapter")
        name = check_task_name(name.strip())
        if any(name == known for known, _ in pairs):
            raise ConfigError(f"two tasks named '{name}' (--adapter {name}=... is given twice): give each adapter "
                              "its own name")
        pairs.append((name, path.strip()))
    return pairs


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    """The backbone the command line names (``--backbone`` and its options)."""
    return load_backbone(args.backbone, weights=getattr(args, "weights", None), weights_file=args.backbone_file,
                         img_size=args.img_size, patch_size=args.patch_size,
                         log=lambda line: print(line, file=sys.stderr))


def check_many_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``--adapter`` pairs, once ``--backbone`` and ``--adapter`` are checked to come together."""
    pairs = parse_adapter_args(args.adapter)
    if args.backbone is None:
        raise ConfigError("--adapter needs --backbone: the backbone the adapters were trained on")
    if not pairs:
        raise ConfigError("--backbone needs at least one --adapter NAME=PATH (the tasks to serve on it)")
    return pairs


def read_task_file(path: str | os.PathLike, tasks: Sequence[str]) -> list[tuple[Path, str]]:
    """The ``image,task`` lines of a task file as ``(image, task)``, in order.

    Blank lines and lines starting with ``#`` are skipped; the last comma separates the
    task (an image path may hold commas); relative image paths are from the current folder.
    One-line errors name the file and line: a malformed line (ConfigError), an unknown task
    (ConfigError), a missing image (DataError).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read task file {path} ({' '.join(str(exc).split())})") from None
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        image, sep, task = line.rpartition(",")
        image, task = image.strip(), task.strip()
        where = f"task file {path} line {number}"
        if not sep or not image or not task:
            raise ConfigError(f"{where}: expected IMAGE,TASK, got {line!r}")
        if task not in tasks:
            raise ConfigError(f"{where}: unknown task '{task}' (tasks: {', '.join(tasks)})")
        file = Path(image).expanduser()
        if not file.is_file():
            raise DataError(f"{where}: image not found: {file}")
        out.append((file, task))
    if not out:
        raise DataError(f"task file {path} lists no image (expected lines IMAGE,TASK)")
    return out


def prepare_many(args: argparse.Namespace) -> tuple[list[Path], list[str], MultiTaskPredictor]:
    """``predict.py --backbone ... --adapter ...``: the images, each one's task, and the predictor
    (everything a typo could break is checked before the backbone is loaded)."""
    pairs = check_many_args(args)
    names = [name for name, _ in pairs]
    if args.task is not None and args.task_file is not None:
        raise ConfigError("pass --task (one task for every image) or --task-file (a task per image), not both")
    if args.task_file is not None:
        if args.images:
            raise ConfigError("with --task-file the images come from the file: pass no IMAGE arguments")
        entries = read_task_file(args.task_file, names)
        files, tasks = [file for file, _ in entries], [task for _, task in entries]
    else:
        if not args.images:
            raise ConfigError("no images given: pass image files, folders or patterns (or --task-file)")
        task = args.task
        if task is None:
            if len(names) > 1:
                raise ConfigError(f"name the task with --task NAME, or give each image its own with --task-file "
                                  f"(tasks: {', '.join(names)})")
            task = names[0]
        if task not in names:
            raise ConfigError(f"unknown task '{task}' (tasks: {', '.join(names)})")
        files = expand_images(args.images)
        tasks = [task] * len(files)
    predictor = MultiTaskPredictor(backbone_from_args(args), pairs, args.topk, batch_size=args.batch_size)
    return files, tasks, predictor


def describe_many(predictor: MultiTaskPredictor) -> str:
    """What was loaded: the backbone, then one line per task."""
    return "\n".join([f"loaded {predictor.backbone.describe()}"]
                     + [f"  {t.describe()}" for t in predictor.model.tasks.values()])
