"""A plain Vision Transformer whose parameter names match PaddleClas's.

Every sublayer and parameter is named as in PaddleClas's ``VisionTransformer``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``,
``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``, ``head``), so a PaddleClas
state dict loads with no renaming. The model knows nothing of any tuning method:
those are applied on top of it (see :mod:`ppadapt.methods`).

The classifier (``head``) is a plain ``Linear`` by default; ``head="bn_linear"`` puts a
BatchNorm without scale and shift in front of it (AdaptFormer's head, from MAE's linear
probe), whose running statistics are buffers of ``head.norm`` so the Linear keeps the
names ``head.weight`` / ``head.bias``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, TruncatedNormal

from ..kernels import functions as fused
from .fast_layers import GELU, Dropout, LayerNorm, Linear, ScaledSoftmax, Switchable, runs_fused
from .recompute import run_block

_trunc_normal = TruncatedNormal(std=0.02)
_zeros = Constant(0.0)
_ones = Constant(1.0)

HEADS = ("linear", "bn_linear")
# default: the head's own (linear: trunc-normal std 0.02, PaddleClas's; bn_linear: std 0.01,
# AdaptFormer's / MAE's linear probe); zero: weight and bias zero (BiT's).
HEAD_INITS = ("default", "zero", "trunc_normal_0.01", "trunc_normal_0.02")
HEAD_BN_EPSILON = 1e-6  # MAE's linear-probe BatchNorm1d(affine=False, eps=1e-6)


@dataclass
class ViTConfig:
    """Architecture of a :class:`VisionTransformer` (PaddleClas argument names; ``head`` and
    ``head_init`` are ppadapt's: the classifier on top, see :func:`make_head`)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    epsilon: float = 1e-5
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head: str = "linear"  # one of HEADS
    head_init: str = "default"  # one of HEAD_INITS


class DropPath(nn.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        mask = paddle.floor(keep + paddle.rand(shape, dtype=x.dtype))
        return x / keep * mask


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(Switchable, nn.Layer):
    """Multi-head self-attention with one fused qkv projection. On the ``fused`` layer path
    (:func:`~ppadapt.models.fast_layers.use_layers`) the moves of q, k, v into heads and back
    run on ppadapt's C++ kernels, one pass each instead of a transpose and a copy."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.softmax = ScaledSoftmax(self.scale)
        self.qkv = Linear(dim, dim * 3, bias_attr=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x):
        if runs_fused(self, x):
            q, k, v = fused.split_heads(self.qkv(x), self.num_heads)
            attn = self.attn_drop(self.softmax(paddle.matmul(q, k, transpose_y=True)))
            return self.proj_drop(self.proj(fused.heads_to_tokens(paddle.matmul(attn, v))))
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape([-1, n, 3, self.num_heads, c // self.num_heads])
        # unbind, not qkv[0]/qkv[1]/qkv[2]: indexing costs three slice kernels and
        # three slice-gradient kernels per block, and is measurably slower on CPU.
        q, k, v = paddle.unbind(qkv.transpose([2, 0, 3, 1, 4]), axis=0)
        attn = self.softmax(paddle.matmul(q, k, transpose_y=True))
        attn = self.attn_drop(attn)
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, n, c])
        return self.proj_drop(self.proj(x))


class Block(nn.Layer):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, epsilon: float = 1e-5):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=epsilon)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    """Non-overlapping patches by a strided convolution (border pixels that do not
    fill a whole patch are dropped, as in PaddleClas: 32 px with patch 3 gives 10x10)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class FeatureBatchNorm(nn.Layer):
    """BatchNorm over the features of ``[N, C]`` without scale and shift (``affine=False``).

    Paddle's ``BatchNorm1D(weight_attr=False, bias_attr=False)`` computes the same, but keeps
    its running mean and variance as parameters, which freezing by name would make
    trainable (and count); here they are buffers: saved and loaded with the state dict
    (``_mean``, ``_variance``, Paddle's names), never trained. Momentum 0.9 is PyTorch's 0.1;
    as in all of Paddle's BatchNorms the running variance averages the batches' biased
    variances (PyTorch's the unbiased ones: a factor n/(n-1), 1% at batch 100).
    """

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = HEAD_BN_EPSILON):
        super().__init__()
        self.momentum, self.epsilon = momentum, epsilon
        self.register_buffer("_mean", paddle.zeros([num_features]))
        self.register_buffer("_variance", paddle.ones([num_features]))

    def forward(self, x):
        if self.training:  # batch statistics; the running ones are updated in place
            return F.batch_norm(x, self._mean, self._variance, training=True, momentum=self.momentum,
                                epsilon=self.epsilon, data_format="NC")
        # Written out rather than batch_norm: Paddle Inference (3.3) crashes on an exported
        # batch_norm without scale and shift (Paddle's own BatchNorm1D's too).
        return (x - self._mean) * paddle.rsqrt(self._variance + self.epsilon)


class BNLinear(Linear):
    """``Linear(FeatureBatchNorm(x))``: AdaptFormer's classifier (MAE's linear-probe head).
    A ``Linear`` subclass, so its parameters keep the names ``weight`` and ``bias``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.norm = FeatureBatchNorm(in_features)

    def forward(self, x):
        return super().forward(self.norm(x))


def check_head(kind: str, init: str) -> None:
    """``ValueError`` unless ``kind`` is one of :data:`HEADS` and ``init`` one of :data:`HEAD_INITS`."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r} (choose one of {', '.join(HEADS)})")
    if init not in HEAD_INITS:
        raise ValueError(f"unknown head_init {init!r} (choose one of {', '.join(HEAD_INITS)})")


def make_head(kind: str, init: str, dim: int, class_num: int) -> nn.Layer:
    """The classifier of ``class_num`` classes (none for 0); bias zero, weight by ``init``."""
    check_head(kind, init)
    if class_num <= 0:
        return nn.Identity()
    head = Linear(dim, class_num) if kind == "linear" else BNLinear(dim, class_num)
    std = {"zero": 0.0, "trunc_normal_0.01": 0.01, "trunc_normal_0.02": 0.02}.get(
        init, 0.01 if kind == "bn_linear" else 0.02)
    if std == 0.02:
        _trunc_normal(head.weight)
    elif std:
        TruncatedNormal(std=std)(head.weight)
    else:
        _zeros(head.weight)
    _zeros(head.bias)
    return head


class VisionTransformer(nn.Layer):
    """ViT (Dosovitskiy et al.) with PaddleClas parameter names; ``class_num=0`` drops the head.

    Two training settings that are not architecture (no parameter depends on them):
    ``recompute`` (each block's activations recomputed in the backward, see
    :mod:`.recompute`) and ``amp`` (``(level, dtype)``: the forward runs under
    ``paddle.amp.auto_cast`` and returns float32 logits, so every caller, evaluation and
    probes included, computes as training does; set by ``ppadapt.training.precision``).
    """

    recompute: bool = False
    amp: tuple[str, str] | None = None

    def __init__(self, config: ViTConfig | None = None, class_num: int = 1000, **overrides):
        super().__init__()
        cfg = ViTConfig(**{**asdict(config or ViTConfig()), **overrides})
        if cfg.img_size < cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is smaller than patch_size {cfg.patch_size}")
        check_head(cfg.head, cfg.head_init)
        self.config = cfg
        self.class_num = class_num
        self.num_features = self.embed_dim = cfg.embed_dim

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        tokens = self.patch_embed.num_patches + 1
        self.pos_embed = self.create_parameter([1, tokens, cfg.embed_dim], default_initializer=_zeros)
        self.cls_token = self.create_parameter([1, 1, cfg.embed_dim], default_initializer=_zeros)
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = np.linspace(0, cfg.drop_path_rate, cfg.depth)
        self.blocks = nn.LayerList([
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate,
                  cfg.attn_drop_rate, float(rates[i]), cfg.epsilon)
            for i in range(cfg.depth)
        ])
        self.norm = LayerNorm(cfg.embed_dim, epsilon=cfg.epsilon)
        plain = cfg.head == "linear" and cfg.head_init == "default"
        # today's head is built here and drawn by apply() below, so default models stay bit-identical
        self.head = Linear(cfg.embed_dim, class_num) if plain and class_num > 0 else nn.Identity()

        _trunc_normal(self.pos_embed)
        _trunc_normal(self.cls_token)
        self.apply(_init_weights)
        if not plain:
            self.head = make_head(cfg.head, cfg.head_init, cfg.embed_dim, class_num)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls = self.cls_token.expand([x.shape[0], -1, -1]).astype(x.dtype)
        # [T, D], not [1, T, D]: Paddle's CPU broadcast over a size-1 axis is ~8x slower (see fast_layers)
        x = self.pos_drop(paddle.concat([cls, x], axis=1) + self.pos_embed.reshape(self.pos_embed.shape[1:]))
        recompute = self.recompute and self.training and paddle.is_grad_enabled()
        for block in self.blocks:
            x = run_block(block, x) if recompute else block(x)
        return self.norm(x[:, 0])  # = norm(x)[:, 0]: LayerNorm is per token

    def forward(self, x):
        if self.amp is None:
            return self.head(self.forward_features(x))
        level, dtype = self.amp
        with paddle.amp.auto_cast(level=level, dtype=dtype):
            out = self.head(self.forward_features(x))
        return out.astype("float32")  # the loss and the metrics in float32

    def no_weight_decay(self) -> set[str]:
        """Parameters weight decay should skip besides biases and norms (timm's convention): the
        tokens are offsets, not weights, and decay would only pull them towards zero."""
        return {"pos_embed", "cls_token"}

    def layer_id(self, name: str) -> int:
        """The depth of parameter ``name`` for layer-wise LR decay (BEiT/MAE numbering): 0 the
        embedding (``patch_embed``, ``cls_token``, ``pos_embed``), i + 1 ``blocks.i`` (with any
        module a method attached inside it), depth + 1 everything after (``norm``, ``head``, and a
        method's parameters outside the blocks, e.g. VPT prompts)."""
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def reset_head(self, class_num: int) -> None:
        """Replace the classifier by a freshly initialised one (of the config's kind and
        init) for ``class_num`` classes."""
        self.class_num = class_num
        self.head = make_head(self.config.head, self.config.head_init, self.embed_dim, class_num)


def _init_weights(layer: nn.Layer) -> None:
    if isinstance(layer, nn.Linear):
        _trunc_normal(layer.weight)
        if layer.bias is not None:
            _zeros(layer.bias)
    elif isinstance(layer, nn.LayerNorm):
        _ones(layer.weight)
        _zeros(layer.bias)
