"""Mixed precision of a training stage: ``amp: off | O1 | O2`` and ``amp_dtype: float16 | bfloat16``.

* **O1**: the weights stay float32; the ops of Paddle's autocast white list (matmul, conv)
  compute in ``amp_dtype``, the others in float32.
* **O2**: the weights of the network are stored in ``amp_dtype`` too, except the ones that
  train as a method's or as the head: a method's parameters and the head stay float32
  (PEFT's fix for its float16 adapter bugs: small, zero-initialised modules lose their
  updates in float16). Backbone weights that train (full fine-tuning, pretraining) keep a
  float32 master copy in the optimizer.
* **float16** scales the loss (``paddle.amp.GradScaler``: dynamic, steps with an infinite
  gradient are skipped); its state goes into the resume checkpoint, so a resumed run goes
  on exactly. **bfloat16** has float32's range and needs no scaling.

Checkpoints stay float32 whatever the level: the O2 network's state dict is cast back to
float32 when it is read (``paddle.amp.decorate(save_dtype="float32")``), and every other
tensor is float32 already.

The autocast itself is part of the model's forward (``VisionTransformer.amp``), so every
forward of the run, evaluation, validation and the adaptation probes included, computes in
the same precision; :class:`ScaledModel` is ``paddle.Model`` with the float16 loss scaling.
Whether the device can run it at all is checked before anything is read
(:func:`ppadapt.utils.device.check_amp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import paddle
import paddle.nn as nn
from paddle.hapi.model import to_list, to_numpy
from paddle.static import InputSpec

from ..config import Config
from ..methods.groups import parameter_groups
from .optim import make_optimizer


@dataclass(frozen=True)
class AmpSpec:
    """The mixed precision of a stage: ``level`` ``"O1"``/``"O2"``, ``dtype`` ``"float16"``/``"bfloat16"``."""

    level: str
    dtype: str

    @property
    def scales_loss(self) -> bool:
        """float16 needs loss scaling; bfloat16 has float32's exponent range and does not."""
        return self.dtype == "float16"


def amp_spec(cfg: Config, stage: str) -> AmpSpec | None:
    """The stage's mixed precision, or None for float32 (``amp: off``)."""
    st = cfg.stage(stage)
    return None if st.amp == "off" else AmpSpec(st.amp, st.amp_dtype)


def keep_float32(model: nn.Layer, names: Iterable[str]) -> list[str]:
    """Mark the layers that hold the parameters ``names`` (and their sublayers that hold no other
    parameter) to stay float32 under O2; returns the marked layers' names.

    The layer holding a kept parameter stays float32 as a whole (a BitFit bias keeps its
    frozen weight in float32 beside it); a sublayer of it that holds weights not in ``names``
    does not (the model itself, when it holds a kept parameter, keeps its blocks in ``amp_dtype``).
    """
    keep = set(names)
    layers = dict(model.named_sublayers(include_self=True))
    owners = {name.rpartition(".")[0] for name in keep}
    marked = []
    for owner in sorted(owners):
        layer = layers[owner]
        for sub_name, sub in layer.named_sublayers(include_self=True):
            full = ".".join(n for n in (owner, sub_name) if n)
            own = [f"{full}.{p}" if full else p for p, v in sub._parameters.items() if v is not None]
            if sub is layer or all(p in keep for p in own):
                # what paddle.amp.decorate(excluded_layers=...) sets, here per layer rather than per subtree
                sub._cast_to_low_precision = False
                marked.append(full)
    return marked


def use_amp(model: nn.Layer, optimizer: paddle.optimizer.Optimizer, spec: AmpSpec,
            float32_params: Sequence[str] = ()) -> paddle.optimizer.Optimizer:
    """Make ``model`` train in ``spec``'s precision; returns the optimizer to train with.

    ``float32_params``: the parameters that stay float32 under O2 (the method's and the head's,
    :func:`float32_parameters`). Call before ``paddle.Model`` wraps the model (with several
    processes it wraps it in ``paddle.DataParallel``, which must see the decorated model).
    """
    model.amp = (spec.level, spec.dtype)
    if spec.level != "O2":
        return optimizer
    keep_float32(model, float32_params)
    _, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=spec.dtype,
                                       master_weight=True, save_dtype="float32")
    return optimizer


def float32_parameters(groups: dict[str, list[str]]) -> list[str]:
    """The trainable parameters that stay float32 under O2: every group of
    :func:`ppadapt.methods.groups.parameter_groups` but the backbone's (which keeps a float32
    master copy in the optimizer instead)."""
    from ..methods.groups import BACKBONE
    return [name for group, names in groups.items() if group != BACKBONE for name in names]


def make_scaler(spec: AmpSpec | None) -> paddle.amp.GradScaler | None:
    """Paddle's dynamic loss scaler for float16 (its default settings), None otherwise."""
    return paddle.amp.GradScaler() if spec is not None and spec.scales_loss else None


class ScaledModel(paddle.Model):
    """``paddle.Model`` whose training step scales the loss with ``scaler`` (float16 AMP).

    Its ``train_batch`` is Paddle's dygraph one with :class:`paddle.amp.GradScaler` in the
    backward and the step; the forward's autocast is the model's own (``VisionTransformer.amp``).
    """

    def __init__(self, network: nn.Layer, inputs: Any = None, labels: Any = None, *,
                 scaler: paddle.amp.GradScaler) -> None:
        super().__init__(network, inputs=inputs, labels=labels)
        self.scaler = scaler

    def train_batch(self, inputs: Any, labels: Any = None, update: bool = True) -> Any:
        adapter = self._adapter
        self.network.train()
        adapter.mode = "train"
        inputs = [paddle.to_tensor(x) for x in to_list(inputs)]
        labels = [paddle.to_tensor(y) for y in to_list(labels) or []]
        forward = adapter.ddp_model if adapter._nranks > 1 else self.network
        outputs = to_list(forward(*inputs))
        losses = to_list(self._loss(*(outputs + labels)))
        scaled = self.scaler.scale(paddle.add_n(losses))
        scaled.backward()
        if update:
            self.scaler.minimize(self._optimizer, scaled)  # unscales, skips a step with inf/nan gradients
            self.network.clear_gradients()
        metrics = []
        for metric in self._metrics:
            values = metric.compute(*(outputs + labels))
            metrics.append(metric.update(*[to_numpy(v) for v in to_list(values)]))
        out = [to_numpy(loss) for loss in losses]
        return (out, metrics) if metrics else out


def make_network(model: nn.Layer, optimizer: paddle.optimizer.Optimizer, spec: AmpSpec | None, *,
                 inputs: list, labels: list, float32_params: Sequence[str] = ()
                 ) -> tuple[paddle.Model, paddle.optimizer.Optimizer]:
    """``paddle.Model`` over ``model`` in ``spec``'s precision (None: float32, exactly as before
    mixed precision existed), and the optimizer to prepare it with."""
    if spec is None:
        return paddle.Model(model, inputs=inputs, labels=labels), optimizer
    optimizer = use_amp(model, optimizer, spec, float32_params)
    scaler = make_scaler(spec)
    if scaler is None:
        return paddle.Model(model, inputs=inputs, labels=labels), optimizer
    return ScaledModel(model, inputs=inputs, labels=labels, scaler=scaler), optimizer


def stage_network(model: nn.Layer, cfg: Config, stage: str, method: str, *, nranks: int = 1
                  ) -> tuple[paddle.Model, paddle.optimizer.Optimizer, AmpSpec | None]:
    """The stage's optimizer and the ``paddle.Model`` it trains ``model`` with (``method``'s
    parameters and the head kept float32 under mixed precision), and the precision: as the
    trainer and bench.py build them."""
    amp = amp_spec(cfg, stage)
    size = cfg.model.img_size
    net, optimizer = make_network(
        model, make_optimizer(model, cfg, stage, nranks=nranks), amp,
        inputs=[InputSpec([None, cfg.model.in_chans, size, size], "float32", "image")],
        labels=[InputSpec([None, 1], "int64", "label")],
        float32_params=float32_parameters(parameter_groups(model, method)) if amp else ())
    return net, optimizer, amp


def scaler_state(net: paddle.Model) -> dict:
    """The loss scaler's state for the resume checkpoint (empty without one)."""
    scaler = getattr(net, "scaler", None)
    return dict(scaler.state_dict()) if scaler is not None else {}


def restore_scaler(net: paddle.Model, state: dict | None) -> None:
    """Put a resume checkpoint's loss-scaler state back (a run with one saved it)."""
    scaler = getattr(net, "scaler", None)
    if scaler is not None and state:
        scaler.load_state_dict(dict(state))
