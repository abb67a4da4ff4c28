"""Is the method adapting? Once per epoch, how far each group of trainable weights moved
from where the run started, and what each method's own probe says.

A frozen run whose method barely moves is a linear probe in disguise, and its accuracy
alone does not say so. After every epoch, for each group of trainable parameters
(:func:`ppadapt.methods.groups.parameter_groups`: a method's, ``head``, ``backbone``) and
for each kind of tensor in it (a parameter name without its block index):

``rel_change``  ``||theta - theta0|| / (||theta0|| + eps)`` over the tensors that did not
                start at zero (norms over all their entries together);
``abs_norm``    ``||theta||`` over the tensors that started at exactly zero (AdaptFormer's
                up-projection, LoRA's B, zero biases), where a relative change is undefined;

plus each method's :meth:`~ppadapt.methods.base.Tuner.probe` on a fixed batch (the first
test images, in eval mode, without gradients; e.g. AdaptFormer's ``branch_to_mlp``).

Where it goes: VisualDL scalars at step = epoch (0-based, like ``eval/*``)
``adapt/<group>/rel_change``, ``adapt/<group>/abs_norm``, ``adapt/<group>/<kind>/rel_change``
(or ``abs_norm``) and ``adapt/<method>/<probe>``; and run.json's history entry of the
epoch: ``adapt_rel_change`` and ``adapt_abs_norm`` (``{group: value}``) and ``adapt_probe``
(``{method: {probe: value}}``), so a report can plot them without VisualDL.

Cost and exactness: nothing here draws random numbers or changes a weight, so a run
trains exactly as it would without it. ``theta0`` is kept once, at train begin, for the
tensors that do not start at zero: whole for tensors of up to :data:`SAMPLE` entries (every
method's tensors at ViT-B sizes), and on a fixed strided sample of at most :data:`SAMPLE`
entries for larger ones (the backbone matrices of full fine-tuning and pretraining), whose
sums are scaled up to the whole tensor: an estimate there, so the snapshot stays small.

Resuming: ``theta0`` is the run's start, not the resume point. :meth:`state_dict` (kept in
the resume checkpoint as ``adaptation``) holds the snapshot; a resumed run measures from
it and logs exactly what the uninterrupted run logs. A checkpoint without it (an older
ppadapt) measures from the resume point, with a note.

Only the main process measures (the weights are the same on every rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import paddle

from ...methods.groups import tensor_kind
from ...methods.registry import METHODS

PREFIX = "adapt/"  # the VisualDL tags; per epoch, like eval/*
SAMPLE = 1 << 16  # entries of theta0 kept per tensor at most
PROBE_IMAGES = 32  # the probe batch: the first test images
EPS = 1e-12
STATE_VERSION = 1


@dataclass
class _Tensor:
    """One followed parameter: its group, kind, and the start it is compared with."""

    name: str
    group: str
    kind: str
    stride: int  # theta0 and the current values are read at flat[::stride]
    start: np.ndarray | None  # None: it started at exactly zero

    def sample(self, param: paddle.Tensor) -> np.ndarray:
        return np.asarray(param.numpy(), dtype=np.float32).reshape(-1)[::self.stride]


class _Sums:
    """Sums of squares over a set of tensors, each scaled to its whole size."""

    def __init__(self) -> None:
        self.change = self.start = self.zero_norm = 0.0
        self.moved = self.zeros = 0  # tensors that did not start at zero / did

    def add(self, tensor: _Tensor, now: np.ndarray, size: int) -> None:
        weight = size / now.size
        if tensor.start is None:
            self.zero_norm += weight * float(np.square(now, dtype=np.float64).sum())
            self.zeros += 1
        else:
            diff = now.astype(np.float64) - tensor.start
            self.change += weight * float(np.square(diff).sum())
            self.start += weight * float(np.square(tensor.start, dtype=np.float64).sum())
            self.moved += 1

    def values(self) -> dict[str, float]:
        out = {}
        if self.moved:
            out["rel_change"] = math.sqrt(self.change) / (math.sqrt(self.start) + EPS)
        if self.zeros:
            out["abs_norm"] = math.sqrt(self.zero_norm)
        return out


@dataclass
class Measurement:
    """One epoch's values: ``groups`` ``{group: {"rel_change"/"abs_norm": value}}``, ``kinds``
    the same by ``(group, kind)``, ``probes`` ``{method: {probe: value}}``."""

    groups: dict[str, dict[str, float]]
    kinds: dict[tuple[str, str], dict[str, float]]
    probes: dict[str, dict[str, float]]

    def tags(self) -> dict[str, float]:
        """The VisualDL scalars, by tag."""
        out = {f"{PREFIX}{g}/{k}": v for g, values in self.groups.items() for k, v in values.items()}
        out.update({f"{PREFIX}{g}/{kind}/{k}": v for (g, kind), values in self.kinds.items()
                    for k, v in values.items()})
        out.update({f"{PREFIX}{m}/{k}": v for m, values in self.probes.items() for k, v in values.items()})
        return out

    def history_fields(self) -> dict:
        """run.json's fields of the epoch: groups and probes (the kinds stay in VisualDL)."""
        fields = {f"adapt_{what}": {g: values[what] for g, values in self.groups.items() if what in values}
                  for what in ("rel_change", "abs_norm")}
        fields["adapt_probe"] = {m: dict(values) for m, values in self.probes.items()}
        return {k: v for k, v in fields.items() if v}


def probe_batch(dataset, count: int = PROBE_IMAGES) -> np.ndarray | None:
    """The first ``count`` images of ``dataset`` (a test set: its transform draws nothing)."""
    n = min(count, len(dataset))
    return np.stack([np.asarray(dataset[i][0], dtype=np.float32) for i in range(n)]) if n else None


class AdaptationMonitor(paddle.callbacks.Callback):
    """Logs how far each group of trainable weights moved, and the methods' probes, per epoch.

    ``groups``: ``{group: [parameter names]}`` of ``network``; ``probes``: the methods whose
    :meth:`~ppadapt.methods.base.Tuner.probe` to run (group names that are methods, by
    default); ``vdl`` gets the scalars (``add_scalars(values, step)``), ``saver`` the history
    fields (``add_to_epoch(fields)``); ``resumed``: the run continues an interrupted one, whose
    :meth:`state_dict` is ``state``; ``active``: False on all but the main process.
    """

    def __init__(self, network: paddle.nn.Layer, groups: Mapping[str, Sequence[str]], *,
                 probe_images: np.ndarray | None = None, probes: Sequence[str] | None = None,
                 vdl=None, saver=None, start_epoch: int = 0, resumed: bool = False,
                 state: dict | None = None, active: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.network = network
        self.groups = {g: list(names) for g, names in groups.items() if names}
        self.probes = [g for g in self.groups if g in METHODS] if probes is None else list(probes)
        self.probe_images = probe_images
        self.vdl, self.saver = vdl, saver
        self.start_epoch = start_epoch
        self.resumed = resumed
        self.active = active
        self.log = log
        self._state = state
        self._tensors: list[_Tensor] | None = None
        self.latest: Measurement | None = None  # the last epoch's

    # -- the start ---------------------------------------------------------------
    def _snapshot(self, saved: Mapping | None) -> list[_Tensor]:
        """theta0 of every followed tensor: from ``saved`` (the interrupted run's) where it
        has it, else the weights now."""
        params = dict(self.network.named_parameters())
        saved = dict((saved or {}).get("tensors") or {})
        tensors = []
        for group, names in self.groups.items():
            for name in names:
                if name in saved:
                    entry = saved[name]
                    start = entry.get("start")
                    tensors.append(_Tensor(name, group, tensor_kind(name), int(entry["stride"]),
                                           None if start is None else np.asarray(start, dtype=np.float32)))
                    continue
                param = params[name]
                stride = max(1, -(-int(param.size) // SAMPLE))
                start = np.asarray(param.numpy(), dtype=np.float32).reshape(-1)
                start = start[::stride].copy() if np.any(start) else None
                tensors.append(_Tensor(name, group, tensor_kind(name), stride, start))
        return tensors

    def _ensure_started(self) -> None:
        if self._tensors is None:
            if self._state is None and self.resumed and self.log is not None:
                self.log("note: this resume checkpoint holds no start weights for the adapt/* curves "
                         "(an older ppadapt): they measure change from the resume point")
            self._tensors = self._snapshot(self._state)

    def state_dict(self) -> dict:
        """theta0 as the resume checkpoint keeps it (see the module doc)."""
        if not self.active:
            return {}
        self._ensure_started()
        return {"version": STATE_VERSION,
                "tensors": {t.name: {"stride": t.stride, "start": t.start} for t in self._tensors}}

    # -- measuring ---------------------------------------------------------------
    def measure(self) -> Measurement:
        """The weights' change now, by group and by kind, and the methods' probes."""
        self._ensure_started()
        params = dict(self.network.named_parameters())
        groups: dict[str, _Sums] = {}
        kinds: dict[tuple[str, str], _Sums] = {}
        for tensor in self._tensors:
            param = params[tensor.name]
            now = tensor.sample(param)
            for sums in (groups.setdefault(tensor.group, _Sums()),
                         kinds.setdefault((tensor.group, tensor.kind), _Sums())):
                sums.add(tensor, now, int(param.size))
        return Measurement(groups={g: s.values() for g, s in groups.items()},
                           kinds={k: s.values() for k, s in kinds.items()}, probes=self.probe())

    def probe(self) -> dict[str, dict[str, float]]:
        """Each method's probe on the fixed batch, in eval mode, without gradients."""
        if self.probe_images is None or not self.probes:
            return {}
        was_training = self.network.training
        self.network.eval()
        try:
            with paddle.no_grad():
                images = paddle.to_tensor(self.probe_images)
                results = {m: METHODS[m].probe(self.network, images) for m in self.probes}
        finally:
            if was_training:
                self.network.train()
        return {m: {k: float(v) for k, v in values.items()} for m, values in results.items() if values}

    # -- fit hooks ---------------------------------------------------------------
    def on_train_begin(self, logs=None) -> None:
        if self.active:
            self._ensure_started()

    def on_epoch_end(self, epoch=None, logs=None) -> None:
        if not self.active:
            return
        self.latest = self.measure()
        if self.vdl is not None:
            self.vdl.add_scalars(self.latest.tags(), self.start_epoch + (epoch or 0))
        if self.saver is not None:
            self.saver.add_to_epoch(self.latest.history_fields())
