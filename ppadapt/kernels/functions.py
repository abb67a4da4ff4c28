"""The fused CPU kernels as Paddle functions with their gradients (PyLayers): GELU, scaled
softmax, LayerNorm, dropout, ReLU+dropout, the residual add, a convolution's bias, and moving q/k/v
into heads and back.

Each function takes float32 CPU tensors in dygraph mode (:func:`usable` says whether one can);
the layers of :mod:`ppadapt.models.fast_layers`, the ViT and AdaptFormer's branch call them on
the ``fused`` path and take Paddle's ops otherwise (export, mixed precision, other devices and
dtypes). Only the gradients that are needed are computed (a frozen LayerNorm's scale and shift
get none); a call that needs none runs the forward kernel alone.
"""
from __future__ import annotations

import paddle
from paddle.autograd import PyLayer

from .build import load


def kernels():
    """The compiled kernels module, or None where it cannot be built (see :mod:`.build`)."""
    return load()


def usable(x: paddle.Tensor) -> bool:
    """Whether ``x`` can go through the fused kernels: float32 on the CPU, in dygraph mode."""
    # ``0 not in x.shape``, not ``x.size > 0``: Paddle computes ``size`` through NumPy, ~50x slower
    return (paddle.in_dynamic_mode() and 0 not in x.shape and x.dtype == paddle.float32
            and x.place.is_cpu_place() and kernels() is not None)


def _dense(t: paddle.Tensor) -> paddle.Tensor:
    """The kernels read raw row-major memory: a strided view is copied first."""
    return t if t.is_contiguous() else t.contiguous()


class _Gelu(PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return kernels().ppadapt_gelu_fwd(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensor()
        return kernels().ppadapt_gelu_bwd(x, _dense(dy))


class _ScaledSoftmax(PyLayer):
    @staticmethod
    def forward(ctx, x, scale):
        y = kernels().ppadapt_softmax_fwd(x, scale)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensor()
        return kernels().ppadapt_softmax_bwd(y, _dense(dy), ctx.scale)


class _LayerNorm(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        y, mean, rstd = kernels().ppadapt_layer_norm_fwd(x, weight, bias, epsilon)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensor()
        need_x, need_w, need_b = ctx.needs
        dx, dw, db = kernels().ppadapt_layer_norm_bwd(x, weight, mean, rstd, _dense(dy), need_x, need_w, need_b)
        return dx if need_x else None, dw if need_w else None, db if need_b else None


def _tracks(*tensors: paddle.Tensor) -> bool:
    return paddle.is_grad_enabled() and not all(t.stop_gradient for t in tensors)


def gelu(x: paddle.Tensor) -> paddle.Tensor:
    """Exact (erf) GELU of a float32 CPU tensor."""
    x = _dense(x)
    return _Gelu.apply(x) if _tracks(x) else kernels().ppadapt_gelu_fwd(x)


def scaled_softmax(x: paddle.Tensor, scale: float) -> paddle.Tensor:
    """``softmax(x * scale)`` over the last axis of a float32 CPU tensor."""
    x = _dense(x)
    return _ScaledSoftmax.apply(x, float(scale)) if _tracks(x) else kernels().ppadapt_softmax_fwd(x, float(scale))


def layer_norm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, epsilon: float) -> paddle.Tensor:
    """LayerNorm over the last axis of a float32 CPU tensor, with a scale and a shift."""
    x = _dense(x)
    if _tracks(x, weight, bias):
        return _LayerNorm.apply(x, weight, bias, float(epsilon))
    return kernels().ppadapt_layer_norm_fwd(x, weight, bias, float(epsilon))[0]


def _seed() -> int:
    """A 62-bit seed for one dropout mask, from Paddle's generator."""
    high, low = (int(v) for v in paddle.randint(0, 2 ** 31 - 1, [2], dtype="int64").numpy())
    return (high << 31) | low


class _Dropout(PyLayer):
    @staticmethod
    def forward(ctx, x, seed, p):
        ctx.seed, ctx.p = seed, p
        return kernels().ppadapt_dropout_fwd(x, seed, p)

    @staticmethod
    def backward(ctx, dy):
        return kernels().ppadapt_dropout_bwd(_dense(dy), ctx.seed, ctx.p)


def dropout(x: paddle.Tensor, p: float) -> paddle.Tensor:
    """Inverted dropout (``upscale_in_train``) of a float32 CPU tensor while training. Its mask
    comes from a seed drawn from Paddle's generator (so ``paddle.seed`` reproduces it), but it
    is not the mask Paddle's dropout would draw."""
    seed = _seed()
    x = _dense(x)
    return _Dropout.apply(x, seed, float(p)) if _tracks(x) else kernels().ppadapt_dropout_fwd(x, seed, float(p))


class _SplitHeads(PyLayer):
    @staticmethod
    def forward(ctx, qkv, heads):
        return tuple(kernels().ppadapt_split_heads(qkv, heads))

    @staticmethod
    def backward(ctx, dq, dk, dv):
        return kernels().ppadapt_merge_heads(*(_dense(g) for g in _filled(dq, dk, dv)))


class _HeadsToTokens(PyLayer):
    @staticmethod
    def forward(ctx, x):
        ctx.heads = x.shape[1]
        return kernels().ppadapt_heads_to_tokens(x)

    @staticmethod
    def backward(ctx, dy):
        return kernels().ppadapt_tokens_to_heads(_dense(dy), ctx.heads)


def _filled(*grads):
    """Gradients with a zero tensor for any output that got none."""
    like = next(g for g in grads if g is not None)
    return [g if g is not None else paddle.zeros_like(like) for g in grads]


def split_heads(qkv: paddle.Tensor, heads: int) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """A qkv projection's output ``[B, N, 3 * C]`` as q, k, v of shape ``[B, heads, N, C / heads]``
    (``reshape([B, N, 3, heads, -1]).transpose([2, 0, 3, 1, 4])`` and ``unbind``, in one pass)."""
    qkv = _dense(qkv)
    if _tracks(qkv):
        return _SplitHeads.apply(qkv, int(heads))
    return tuple(kernels().ppadapt_split_heads(qkv, int(heads)))


def heads_to_tokens(x: paddle.Tensor) -> paddle.Tensor:
    """``[B, H, N, D]`` as ``[B, N, H * D]`` (``transpose([0, 2, 1, 3])`` and ``reshape``, in one pass)."""
    x = _dense(x)
    return _HeadsToTokens.apply(x) if _tracks(x) else kernels().ppadapt_heads_to_tokens(x)


class _ReluDropout(PyLayer):
    @staticmethod
    def forward(ctx, x, seed, p):
        ctx.save_for_backward(x)
        ctx.seed, ctx.p = seed, p
        return kernels().ppadapt_relu_dropout_fwd(x, seed, p)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensor()
        return kernels().ppadapt_relu_dropout_bwd(x, _dense(dy), ctx.seed, ctx.p)


def relu_dropout(x: paddle.Tensor, p: float) -> paddle.Tensor:
    """``dropout(relu(x), p)`` in one pass (AdaptFormer's branch), with :func:`dropout`'s mask;
    ``p = 0``: the ReLU alone."""
    seed = _seed() if p > 0 else 0
    x = _dense(x)
    return _ReluDropout.apply(x, seed, float(p)) if _tracks(x) else kernels().ppadapt_relu_dropout_fwd(x, seed, float(p))


class _Add(PyLayer):
    @staticmethod
    def forward(ctx, a, b):
        ctx.needs = (not a.stop_gradient, not b.stop_gradient)
        return kernels().ppadapt_add(a, b)

    @staticmethod
    def backward(ctx, dy):
        return tuple(dy if need else None for need in ctx.needs)


def add(a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
    """``a + b`` for two float32 CPU tensors of one shape (the same values as Paddle's add)."""
    a, b = _dense(a), _dense(b)
    return _Add.apply(a, b) if _tracks(a, b) else kernels().ppadapt_add(a, b)


class _ChannelBias(PyLayer):
    @staticmethod
    def forward(ctx, x, bias):
        ctx.needs = (not x.stop_gradient, not bias.stop_gradient)
        return kernels().ppadapt_channel_bias(x, bias)

    @staticmethod
    def backward(ctx, dy):
        need_x, need_b = ctx.needs
        return dy if need_x else None, kernels().ppadapt_channel_sum(_dense(dy)) if need_b else None


def channel_bias(x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """``x + bias`` with one bias value per channel of ``x``'s axis 1 (an NCHW convolution's bias)."""
    x = _dense(x)
    return _ChannelBias.apply(x, bias) if _tracks(x, bias) else kernels().ppadapt_channel_bias(x, bias)
