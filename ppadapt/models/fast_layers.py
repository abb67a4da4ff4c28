"""``nn.Linear`` and ``nn.LayerNorm`` with faster training gradients on the CPU.

Both are drop-in subclasses: same parameters, names and initialisation, so
checkpoints (PaddleClas's included) are unaffected. Their hand-written backward
computes only the gradients that are needed (nothing for a frozen weight or
bias, no input gradient below a frozen prefix), which Paddle's own kernels do
not always skip, and moves slow CPU reductions onto matrix-vector products.
The fast path is only taken in dygraph mode with gradients enabled; inference,
``paddle.no_grad()`` and ``paddle.jit.to_static`` export use Paddle's own ops.
Values equal Paddle's up to float summation order (tests check this).

Linear. Paddle computes a linear layer's bias gradient as a column sum of the output
gradient (``reduce_sum`` over every token), and its CPU reduction over the
leading axis is slow: for the CPU preset's ``fc1`` (4,160 tokens x 768) it takes
~9 ms, where the same sum as a matrix-vector product ``ones @ dout`` takes
~0.7 ms. Over a training step that was the largest cost after the matrix
multiplies. :class:`Linear` is ``nn.Linear`` (same parameters, names and
initialisation) whose training backward does that.

LayerNorm. Paddle's ``layer_norm_grad`` always computes the scale and shift
gradients, also for a frozen LayerNorm, with the same slow column reductions:
~9.5 ms per call on 4,160 x 192. Recomputing the statistics in the backward and
doing the row and column means as matrix-vector products takes ~6.5 ms with all
gradients and ~5.7 ms for the input gradient alone.

Broadcasts. Paddle's CPU kernels are slow when an operand broadcasts along an axis
of size 1 (``[4160, 192] * [4160, 1]``: 0.5 ms; ``[64, 65, 192] + [1, 65, 192]``:
5.6 ms), while materialising the operand with ``expand`` and doing a same-shape
operation costs ~0.2 ms. The values are the same, so the LayerNorm backward expands
its per-row statistics (6.7 -> 4.7 ms per call) and the ViT adds its position
embedding without the leading size-1 axis.

Fused CPU kernels. ``model.layers: fused`` runs LayerNorm, GELU and the attention softmax
(with its scale) on ppadapt's own C++ kernels (:mod:`ppadapt.kernels`: one pass over memory
on all of Paddle's threads, where Paddle's CPU kernels for these take one thread and several
passes), and the patch convolution's bias; the Linear layers keep the fast backward and put the
bias inside the GEMM also where no gradient is needed. Their values agree with Paddle's within float
tolerance but not to the bit, so it is an option: ``fast`` stays the CPU default and keeps
earlier runs reproducible. Where the kernels cannot be compiled, the fast path runs instead.

Where each path runs. The hand-written backward was measured to help on the CPU only; on
a GPU Paddle's fused kernels are the better bet. :func:`layer_path` decides, in this one
place, which path a model trains with (``model.layers``: ``auto`` = fast on the CPU,
native elsewhere; ``fused`` is CPU-only), and :func:`use_layers` switches a built model's
layers (:class:`Linear`, :class:`LayerNorm`, :class:`Conv2D`, :class:`GELU`, :class:`ScaledSoftmax`, ...). A native
layer is the same object with the same parameters (checkpoints are interchangeable); it
calls Paddle's ``F.linear`` / ``F.layer_norm``, except for a LayerNorm whose scale is
frozen while its input needs a gradient: that is the case Paddle 3.3.1's CPU kernel gets
wrong (README, "A Paddle bug this works around"), not known to be fixed on any device,
so it is computed as Paddle's LayerNorm without scale and shift (the case the kernel gets
right) times the scale plus the shift. Under ``paddle.amp.auto_cast`` both paths take
Paddle's own ops (the hand-written backward is float32 code), the workaround included.
"""
from __future__ import annotations

from typing import Callable

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ..kernels import build as kernel_build, functions as fused

LAYER_CHOICES = ("auto", "fast", "native", "fused")  # model.layers
PATHS = ("fast", "native", "fused")  # what a choice resolves to
# paddle.amp.is_autocast_enabled is recent; without it (an early 3.x) autocast is taken to be off.
_autocast_on = getattr(paddle.amp, "is_autocast_enabled", None) or (lambda: False)


class _LinearFunction(PyLayer):
    """``x @ weight + bias`` with hand-written gradients (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        # The input is kept only for a weight gradient: behind a frozen weight it is freed at once.
        ctx.save_for_backward(*((x, weight) if ctx.needs[1] else (weight,)))
        return _addmm(x, weight, bias)

    @staticmethod
    def backward(ctx, dout):
        need_x, need_w, need_b = ctx.needs
        x, weight = ctx.saved_tensor() if need_w else (None, *ctx.saved_tensor())
        dout2d = dout.reshape([-1, dout.shape[-1]])
        dx = paddle.matmul(dout, weight, transpose_y=True) if need_x else None
        dw = paddle.matmul(x.reshape([-1, x.shape[-1]]), dout2d, transpose_x=True) if need_w else None
        db = None
        if need_b:
            ones = paddle.ones([1, dout2d.shape[0]], dtype=dout.dtype)
            db = paddle.matmul(ones, dout2d).reshape([-1])
        return dx, dw, db


def _addmm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """``x @ weight + bias`` as one GEMM with the bias inside (~1 ms less than matmul + broadcast
    add at 4,160 x 768), on ``x`` flattened to 2-D."""
    out = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return out.reshape(x.shape[:-1] + weight.shape[-1:])


def _wants_fast_path(*tensors) -> bool:
    return (paddle.in_dynamic_mode() and paddle.is_grad_enabled() and not _autocast_on()
            and not all(t.stop_gradient for t in tensors))


def layer_path(choice: str = "auto", device: str | None = None) -> str:
    """``"fast"``, ``"native"`` or ``"fused"``: the layers a model trains with, for ``model.layers`` = ``choice``
    on ``device`` (``"cpu"``, ``"gpu"``, ...; default: Paddle's current device). ``auto`` takes the
    fast backward only where it was measured to help, the CPU."""
    if choice not in LAYER_CHOICES:
        raise ValueError(f"unknown layer path {choice!r} (choose one of {', '.join(LAYER_CHOICES)})")
    on_cpu = (device or paddle.device.get_device()).split(":")[0] == "cpu"
    if choice == "fused" and not on_cpu:
        raise ValueError("model.layers=fused runs on the CPU only; use auto or native on this device")
    if choice != "auto":
        return choice
    return "fast" if on_cpu else "native"


class Switchable:
    """A layer whose code follows ``model.layers`` (its ``path``, set by :func:`use_layers`)."""

    path: str = "fast"


def use_layers(model: nn.Layer, path: str) -> int:
    """Switch every :class:`Switchable` layer of ``model`` (Linear, LayerNorm, Conv2D, GELU, softmax,
    dropout, attention) to ``path`` (one of ``PATHS``, see :func:`layer_path`); returns how many layers it
    set. Parameters, names and values are untouched."""
    if path not in PATHS:
        raise ValueError(f"layer path must be one of {', '.join(PATHS)}, got {path!r}")
    count = 0
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Switchable):
            layer.path = path
            count += 1
    return count


def runs_fused(layer: Switchable, x: paddle.Tensor) -> bool:
    """Whether ``layer`` takes ppadapt's C++ kernels for ``x``: on the ``fused`` path, outside
    mixed precision, for a float32 CPU tensor in dygraph mode (export uses Paddle's ops)."""
    return layer.path == "fused" and not _autocast_on() and fused.usable(x)


def residual_add(layer: Switchable, a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
    """``a + b`` (a residual connection); where ``layer`` runs fused, in one C++ pass with the
    same values."""
    if runs_fused(layer, a) and a.shape == b.shape and b.dtype == a.dtype and b.place.is_cpu_place():
        return fused.add(a, b)
    return a + b


def fused_kernels_problem(log: Callable[[str], None] | None = None) -> str | None:
    """Why ``model.layers=fused`` cannot run here (one line), or None when it can; the kernels are
    compiled here on first use (``log`` gets one line then)."""
    if kernel_build.load(log=log) is not None:
        return None
    return kernel_build.failure() or "the fused kernels are unavailable"


def native_layer_norm(x: paddle.Tensor, weight: paddle.Tensor | None, bias: paddle.Tensor | None,
                      epsilon: float) -> paddle.Tensor:
    """Paddle's ``layer_norm`` over the last axis, correct where Paddle's CPU kernel is not: with a
    frozen scale and an input that needs a gradient it normalises without scale and shift (the
    case the kernel gets right) and applies them after."""
    shape = x.shape[-1:]
    if (weight is not None and weight.stop_gradient and not x.stop_gradient
            and paddle.in_dynamic_mode() and paddle.is_grad_enabled()):
        out = F.layer_norm(x, shape, None, None, epsilon) * weight
        return out + bias if bias is not None else out
    return F.layer_norm(x, shape, weight, bias, epsilon)


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None) -> paddle.Tensor:
    """``F.linear`` whose training backward is fast on the CPU (see the module docstring)."""
    if bias is None or not _wants_fast_path(x, weight, bias):
        return F.linear(x, weight, bias)
    return _LinearFunction.apply(x, weight, bias)


def fused_linear(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None) -> paddle.Tensor:
    """:func:`linear` on the ``fused`` path: one GEMM with the bias inside also where no gradient is
    needed (a frozen prefix, inference), where ``F.linear`` takes a matmul and a broadcast add."""
    if bias is None:
        return F.linear(x, weight)
    if _wants_fast_path(x, weight, bias):
        return _LinearFunction.apply(x, weight, bias)
    return _addmm(x, weight, bias)


class _LayerNormFunction(PyLayer):
    """LayerNorm over the last axis with hand-written gradients (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        ctx.save_for_backward(x, weight)
        ctx.epsilon = epsilon
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        return F.layer_norm(x, x.shape[-1:], weight, bias, epsilon)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        need_x, need_w, need_b = ctx.needs
        c = x.shape[-1]
        x2d, dy2d = x.reshape([-1, c]), dy.reshape([-1, c])
        rows = x2d.shape[0]
        row_mean = paddle.full([c, 1], 1.0 / c, dtype=x.dtype)  # x @ row_mean: mean over the last axis

        def per_row(stat):  # [rows, 1] -> [rows, c]: see "Broadcasts" in the module docstring
            return stat.expand([rows, c])

        centred = x2d - per_row(paddle.matmul(x2d, row_mean))
        rstd = per_row(paddle.rsqrt(paddle.matmul(centred * centred, row_mean) + ctx.epsilon))
        xhat = centred * rstd
        dx = dw = db = None
        if need_x:
            dxhat = dy2d * weight.expand([rows, c])
            dx = (dxhat - per_row(paddle.matmul(dxhat, row_mean))
                  - xhat * per_row(paddle.matmul(dxhat * xhat, row_mean))) * rstd
            dx = dx.reshape(x.shape)
        if need_w or need_b:
            ones = paddle.ones([1, x2d.shape[0]], dtype=x.dtype)
            dw = paddle.matmul(ones, dy2d * xhat).reshape([-1]) if need_w else None
            db = paddle.matmul(ones, dy2d).reshape([-1]) if need_b else None
        return dx, dw, db


class LayerNorm(Switchable, nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis with a faster training backward; same parameters.
    ``path`` (see :func:`use_layers`): ``native`` is Paddle's own kernel (with the frozen-scale
    workaround), ``fused`` ppadapt's C++ kernel."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if len(self._normalized_shape) != 1:
            return super().forward(x)
        if self.path == "native" or _autocast_on():
            return native_layer_norm(x, self.weight, self.bias, self._epsilon)
        if runs_fused(self, x) and self.weight is not None and self.bias is not None:
            return fused.layer_norm(x, self.weight, self.bias, self._epsilon)
        if self.weight is None or self.bias is None or not _wants_fast_path(x, self.weight, self.bias):
            return super().forward(x)
        return _LayerNormFunction.apply(x, self.weight, self.bias, self._epsilon)


class Linear(Switchable, nn.Linear):
    """``nn.Linear`` with :func:`linear`'s fast bias gradient; same parameters and names.
    ``path``: ``native`` is Paddle's own ``F.linear`` (see :func:`use_layers`); ``fused`` is
    :func:`fused_linear`, one GEMM each way with the bias inside."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.path == "native":
            return F.linear(x, self.weight, self.bias)
        if runs_fused(self, x):
            return fused_linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)


class Conv2D(Switchable, nn.Conv2D):
    """``nn.Conv2D`` (the patch embedding's); same parameters and names. On the ``fused`` path (see
    :func:`use_layers`) an NCHW convolution adds its bias with ppadapt's C++ kernel: Paddle's
    broadcast add along the channel axis is the slow CPU case of "Broadcasts" above."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if (self.bias is None or self._data_format != "NCHW" or self._padding_mode != "zeros"
                or not runs_fused(self, x)):
            return super().forward(x)
        out = F.conv2d(x, self.weight, None, stride=self._stride, padding=self._padding,
                       dilation=self._dilation, groups=self._groups, data_format="NCHW")
        return fused.channel_bias(out, self.bias)


class GELU(Switchable, nn.GELU):
    """``nn.GELU``; on the ``fused`` path (see :func:`use_layers`) the exact GELU runs on
    ppadapt's C++ kernel."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if runs_fused(self, x) and not self._approximate:
            return fused.gelu(x)
        return super().forward(x)


class ScaledSoftmax(Switchable, nn.Layer):
    """``softmax(x * scale)`` over the last axis (attention's); on the ``fused`` path (see
    :func:`use_layers`) in one C++ kernel. No parameters."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if runs_fused(self, x):
            return fused.scaled_softmax(x, self.scale)
        return F.softmax(x * self.scale, axis=-1)


class Dropout(Switchable, nn.Dropout):
    """``nn.Dropout``; on the ``fused`` path (see :func:`use_layers`) ``upscale_in_train`` dropout
    over all elements runs on ppadapt's C++ kernel, whose random mask differs from Paddle's (same
    distribution, seeded from Paddle's generator). Other paths draw exactly Paddle's mask."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if (self.training and 0.0 < self.p < 1.0 and self.axis is None and self.mode == "upscale_in_train"
                and runs_fused(self, x)):
            return fused.dropout(x, self.p)
        return super().forward(x)
