"""FLOPs of one training step, counted analytically from the model's actual forward.

Why analytic and hook-based: the tuning methods change the network by hooks
(AdaptFormer's ``blocks.N.adaptmlp``, LoRA's ``*_lora`` updates, VPT's extra
tokens), so the only reliable source of the shapes is one real forward pass.
Forward post-hooks record, for every matrix multiply:

* ``nn.Linear``: ``2 * M * K * N`` (``M`` = rows of the input, ``K`` in, ``N`` out);
* ``nn.Conv2D``: ``2 * B * H_out * W_out * C_out * (C_in / groups) * k_h * k_w``;
* attention (a layer with ``num_heads`` and a ``qkv`` sublayer): the score
  ``Q K^T`` and value ``A V`` matmuls, each ``2 * B * T^2 * D`` (``T`` tokens,
  ``D`` = heads x head width);
* LoRA updates (:class:`ppadapt.methods.lora.LoRA`): ``x A`` and ``(x A) B``.

The backward pass of a matmul ``Y = X W`` costs one more matmul of the same
size per operand whose gradient is needed:

* **input gradient** ``dX = dY W^T``: needed when ``X`` requires a gradient,
  i.e. when ``X`` depends on some trainable parameter. This is read from
  Paddle itself (``X.stop_gradient``), so a fully frozen prefix of the network
  (e.g. the patch embedding, or everything before the head of a linear probe)
  costs no backward at all;
* **weight gradient** ``dW = X^T dY``: needed when ``W`` is trainable.
  For the two attention matmuls both operands are activations: each needs its
  gradient when the ``qkv`` output requires one.

So full fine-tuning costs about 3x the forward (a little less: the patch
embedding's input is the image and needs no gradient), a linear probe the
forward plus the head's weight gradient, and a method with trainable
parameters deep in the network ~2x the forward plus its own weight gradients.

This is an approximation, on purpose: element-wise work (LayerNorm, GELU,
softmax, residual adds, biases, dropout, SSF's scale and shift, the optimizer
update) and data movement are ignored; they are a few percent of the FLOPs of a
ViT but can be a large share of the *time* on a CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import paddle
import paddle.nn as nn

from ...methods.lora import LoRA


@dataclass(frozen=True)
class MatmulFlops:
    """One matmul (or a group of them) recorded during the forward."""

    name: str
    kind: str  # linear | conv2d | attention | lora
    forward: int
    input_grad: int
    weight_grad: int


@dataclass
class StepFlops:
    """FLOPs of one training step on one batch: forward + backward (no optimizer)."""

    forward: int = 0
    input_grad: int = 0
    weight_grad: int = 0
    ops: list[MatmulFlops] = field(default_factory=list)

    @property
    def backward(self) -> int:
        return self.input_grad + self.weight_grad

    @property
    def train(self) -> int:
        """Forward + input gradients + weight gradients."""
        return self.forward + self.backward

    def add(self, op: MatmulFlops) -> None:
        self.ops.append(op)
        self.forward += op.forward
        self.input_grad += op.input_grad
        self.weight_grad += op.weight_grad

    def to_dict(self, ops: bool = False) -> dict:
        out = {"forward": self.forward, "input_grad": self.input_grad, "weight_grad": self.weight_grad,
               "train": self.train, "train_over_forward": self.train / self.forward if self.forward else 0.0}
        if ops:
            out["ops"] = [asdict(o) for o in self.ops]
        return out


def _trainable(param) -> bool:
    return param is not None and not param.stop_gradient


def _needs_grad(tensor) -> bool:
    return isinstance(tensor, paddle.Tensor) and not tensor.stop_gradient


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _is_attention(layer: nn.Layer) -> bool:
    return hasattr(layer, "num_heads") and isinstance(getattr(layer, "qkv", None), nn.Layer)


class _Counter:
    """Registers the hooks on a model and accumulates a :class:`StepFlops`."""

    def __init__(self, model: nn.Layer):
        self.flops = StepFlops()
        self.handles = []
        self.qkv_grad: dict[int, bool] = {}  # id(attention layer) -> its qkv output needs a gradient
        for name, layer in model.named_sublayers(include_self=True):
            if isinstance(layer, nn.Linear):
                self.handles.append(layer.register_forward_post_hook(self._linear(name)))
            elif isinstance(layer, nn.Conv2D):
                self.handles.append(layer.register_forward_post_hook(self._conv(name)))
            elif isinstance(layer, LoRA):
                self.handles.append(layer.register_forward_post_hook(self._lora(name)))
            if _is_attention(layer):
                # Registered after the methods' own hooks on qkv (LoRA, SSF), so it sees
                # the final qkv output and whether it requires a gradient.
                self.handles.append(layer.qkv.register_forward_post_hook(self._qkv(layer)))
                self.handles.append(layer.register_forward_post_hook(self._attention(name)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _linear(self, name: str):
        def hook(layer, inputs, output):
            x, w = inputs[0], layer.weight
            k, n = int(w.shape[0]), int(w.shape[1])
            f = 2 * (_numel(x.shape) // k) * k * n
            self.flops.add(MatmulFlops(name, "linear", f, f if _needs_grad(x) else 0, f if _trainable(w) else 0))
        return hook

    def _conv(self, name: str):
        def hook(layer, inputs, output):
            x, w = inputs[0], layer.weight
            c_out, c_in_per_group, kh, kw = (int(s) for s in w.shape)
            out_shape = output.shape  # NCHW or NHWC: batch * spatial * C_out elements either way
            f = 2 * _numel(out_shape) * c_in_per_group * kh * kw
            self.flops.add(MatmulFlops(name, "conv2d", f, f if _needs_grad(x) else 0, f if _trainable(w) else 0))
        return hook

    def _lora(self, name: str):
        def hook(layer, inputs, output):
            x = inputs[0]
            for _slice, a, b in layer.pairs():
                k, r, n = int(a.shape[0]), int(a.shape[1]), int(b.shape[1])
                m = _numel(x.shape) // k
                fa, fb = 2 * m * k * r, 2 * m * r * n
                h_grad = _needs_grad(x) or _trainable(a)  # does x A require a gradient?
                self.flops.add(MatmulFlops(f"{name}.A", "lora", fa, fa if _needs_grad(x) else 0,
                                           fa if _trainable(a) else 0))
                self.flops.add(MatmulFlops(f"{name}.B", "lora", fb, fb if h_grad else 0,
                                           fb if _trainable(b) else 0))
        return hook

    def _qkv(self, attention: nn.Layer):
        def hook(layer, inputs, output):
            self.qkv_grad[id(attention)] = _needs_grad(output)
        return hook

    def _attention(self, name: str):
        def hook(layer, inputs, output):
            x = inputs[0]
            b, t, d = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
            queries = int(output.shape[1])  # fewer than t where only the first tokens' outputs are computed
            f = 2 * (2 * b * queries * t * d)  # Q K^T and A V, summed over the heads
            grad = self.qkv_grad.pop(id(layer), None)
            if grad is None:  # qkv not called as a sublayer: fall back on the layer's own state
                grad = _needs_grad(x) or any(not p.stop_gradient for p in layer.parameters())
            # Both operands of both matmuls are activations: two gradient matmuls each.
            self.flops.add(MatmulFlops(name, "attention", f, 2 * f if grad else 0, 0))
        return hook


def train_step_flops(model: nn.Layer, x: paddle.Tensor) -> StepFlops:
    """Count the matmul FLOPs of one training step of ``model`` on the batch ``x``.

    Runs one forward with gradients enabled (so Paddle marks which activations
    need a gradient, exactly as in training), in training mode, and discards
    its output; the model's parameters and mode are left as they were.
    """
    counter = _Counter(model)
    was_training = model.training
    try:
        model.train()
        with paddle.set_grad_enabled(True):
            out = model(x)
        del out
    finally:
        counter.remove()
        if not was_training:
            model.eval()
    return counter.flops


def forward_flops(model: nn.Layer, x: paddle.Tensor) -> int:
    """Matmul FLOPs of one forward (inference) pass on ``x``."""
    return train_step_flops(model, x).forward
