"""A plain Vision Transformer whose parameter names match PaddleClas's.

Every sublayer and parameter is named as in PaddleClas's ``VisionTransformer``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``,
``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``, ``head``), so a PaddleClas
state dict loads with no renaming. The model knows nothing of any tuning method:
those are applied on top of it (see :mod:`ppadapt.methods`).

PaddleClas's foundation ViTs of other families are the same class with options of
:class:`ViTConfig` on (each off by default, so a plain ViT builds the same parameters with
the same random draws and runs the same ops): BEiTv2's layer scale (``blocks.N.gamma_1``,
``gamma_2``), relative position bias (``blocks.N.attn.relative_position_bias_table`` and the
buffer ``relative_position_index``) and no ``pos_embed``; CLIP's ``ln_pre`` and image
projection ``proj``; QuickGELU, mean pooling and ``fc_norm``. One class rather than one per
family, so every method finds the same sublayers on each.

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
from paddle.nn.initializer import Constant, Normal, TruncatedNormal

from ..kernels import functions as fused
from .fast_layers import GELU, Conv2D, Dropout, LayerNorm, Linear, ScaledSoftmax, Switchable, residual_add, runs_fused
from .recompute import run_block

_trunc_normal = TruncatedNormal(std=0.02)
_zeros = Constant(0.0)
_ones = Constant(1.0)

HEADS = ("linear", "bn_linear")
# default: the head's own (linear: trunc-normal std 0.02, PaddleClas's; bn_linear: std 0.01,
# AdaptFormer's / MAE's linear probe); zero: weight and bias zero (BiT's).
HEAD_INITS = ("default", "zero", "trunc_normal_0.01", "trunc_normal_0.02")
HEAD_BN_EPSILON = 1e-6  # MAE's linear-probe BatchNorm1d(affine=False, eps=1e-6)
# ViTConfig's family options (BEiTv2, CLIP); a plain ViT has each at its default.
FAMILY_OPTIONS = ("abs_pos_embed", "rel_pos_bias", "layer_scale", "pre_norm", "act", "pool", "fc_norm", "output_dim")
ACTS = ("gelu", "quick_gelu")
POOLS = ("token", "mean")
# PaddleClas's foundation_vit builds ln_pre and the Head's fc_norm as nn.LayerNorm(dim): epsilon 1e-5 whatever the model's
FAMILY_NORM_EPSILON = 1e-5


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
    # The ViT family (PaddleClas's foundation_vit: BEiTv2, CLIP); all off for a plain ViT.
    abs_pos_embed: bool = True  # false: no ``pos_embed`` (BEiTv2: position comes from rel_pos_bias)
    rel_pos_bias: bool = False  # per block ``attn.relative_position_bias_table`` (BEiT)
    layer_scale: float | None = None  # init of per-block ``gamma_1``/``gamma_2`` (BEiT); None: none
    pre_norm: bool = False  # ``ln_pre``: a LayerNorm on the embedded tokens before the blocks (CLIP)
    act: str = "gelu"  # one of ACTS: the MLP's activation (quick_gelu: OpenAI CLIP's)
    pool: str = "token"  # one of POOLS: the class token, or the mean of the patch tokens, after ``norm``
    fc_norm: bool = False  # a LayerNorm ``fc_norm`` on the pooled feature (PaddleClas Head's, epsilon 1e-5)
    output_dim: int = 0  # > 0: the features are projected by ``proj`` [embed_dim, output_dim] (CLIP's image embedding)


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


class QuickGELU(nn.Layer):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * F.sigmoid(1.702 * x)


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: str = "gelu"):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def relative_position_index(grid: int) -> np.ndarray:
    """BEiT's ``[T, T]`` index (``T = grid**2 + 1``, class token first) into a table of
    ``(2 grid - 1)**2 + 3`` biases: one per 2-D offset between two patches, then three for
    class token -> patch, patch -> class token and class token -> itself (PaddleClas's layout)."""
    span = 2 * grid - 1
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    offsets = (rows[:, None] - rows[None, :] + grid - 1) * span + (cols[:, None] - cols[None, :] + grid - 1)
    count = span * span + 3
    index = np.empty((grid * grid + 1,) * 2, dtype=np.int64)
    index[1:, 1:] = offsets
    index[0, :], index[:, 0], index[0, 0] = count - 3, count - 2, count - 1
    return index


class Attention(Switchable, nn.Layer):
    """Multi-head self-attention with one fused qkv projection. On the ``fused`` layer path
    (:func:`~ppadapt.models.fast_layers.use_layers`) the moves of q, k, v into heads and back
    run on ppadapt's C++ kernels, one pass each instead of a transpose and a copy.

    ``grid`` (the patch grid's side) adds BEiT's relative position bias, a learnt bias per
    head and 2-D offset, to the scaled scores before the softmax (PaddleClas's names:
    ``relative_position_bias_table`` and the buffer ``relative_position_index``). Tokens beyond
    the table's, which sit right after the class token (VPT's prompts), get no bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, grid: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.softmax = ScaledSoftmax(self.scale)
        if grid is not None:  # created first, as PaddleClas does; zeros, so no random draw
            index = relative_position_index(grid)
            self.relative_position_bias_table = self.create_parameter(
                [int(index.max()) + 1, num_heads], default_initializer=_zeros)
            self.register_buffer("relative_position_index", paddle.to_tensor(index))
            self.biased_softmax = ScaledSoftmax(1.0)  # the scale goes on before the bias
        self.qkv = Linear(dim, dim * 3, bias_attr=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def has_position_bias(self) -> bool:
        """Whether the scores take BEiT's relative position bias."""
        return getattr(self, "relative_position_bias_table", None) is not None

    def position_bias(self, n: int) -> paddle.Tensor:
        """The ``[heads, n, n]`` bias of ``n`` tokens; tokens beyond the table's (VPT prompts at
        1 .. n - T) get zero rows and columns."""
        tokens = self.relative_position_index.shape[0]
        bias = paddle.gather(self.relative_position_bias_table, self.relative_position_index.flatten())
        bias = bias.reshape([tokens, tokens, -1]).transpose([2, 0, 1])
        extra = n - tokens
        if extra > 0:
            heads = bias.shape[0]
            rows = paddle.zeros([heads, extra, tokens], dtype=bias.dtype)
            bias = paddle.concat([bias[:, :1], rows, bias[:, 1:]], axis=1)
            cols = paddle.zeros([heads, n, extra], dtype=bias.dtype)
            bias = paddle.concat([bias[:, :, :1], cols, bias[:, :, 1:]], axis=2)
        return bias

    def scores_to_weights(self, scores: paddle.Tensor) -> paddle.Tensor:
        """``softmax(scores * scale [+ bias])``: the attention weights of ``q @ k^T`` (the queries
        may be the first rows only)."""
        if not self.has_position_bias():
            return self.softmax(scores)
        bias = self.position_bias(scores.shape[-1])
        if scores.shape[-2] != bias.shape[-2]:  # the first queries only
            bias = bias[:, :scores.shape[-2]]
        return self.biased_softmax(scores * self.scale + bias.astype(scores.dtype))  # float16 scores under AMP

    def forward(self, x, queries: int | None = None):
        """``queries``: only the first ``queries`` tokens' outputs (``attention(x)[:, :queries]``); the
        keys and values are still every token's."""
        if runs_fused(self, x):
            q, k, v = fused.split_heads(self.qkv(x), self.num_heads)
            q = q if queries is None else q[:, :, :queries]
            attn = self.attn_drop(self.scores_to_weights(paddle.matmul(q, k, transpose_y=True)))
            return self.proj_drop(self.proj(fused.heads_to_tokens(paddle.matmul(attn, v))))
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape([-1, n, 3, self.num_heads, c // self.num_heads])
        # unbind, not qkv[0]/qkv[1]/qkv[2]: indexing costs three slice kernels and
        # three slice-gradient kernels per block, and is measurably slower on CPU.
        q, k, v = paddle.unbind(qkv.transpose([2, 0, 3, 1, 4]), axis=0)
        if queries is not None:
            q, n = q[:, :, :queries], min(n, queries)
        attn = self.scores_to_weights(paddle.matmul(q, k, transpose_y=True))
        attn = self.attn_drop(attn)
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, n, c])
        return self.proj_drop(self.proj(x))


class Block(Switchable, nn.Layer):
    """Pre-norm transformer block. ``layer_scale`` (BEiT's, an init value) multiplies each
    branch by a learnt per-channel ``gamma_1`` / ``gamma_2``; a method's branch that joins the
    MLP's output (AdaptFormer) is scaled by ``gamma_2`` with it. On the ``fused`` layer path the
    residual adds run on ppadapt's C++ kernel (the same values)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, epsilon: float = 1e-5, *, grid: int | None = None,
                 layer_scale: float | None = None, act: str = "gelu"):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=epsilon)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale is not None:
            self.gamma_1 = self.create_parameter([dim], default_initializer=Constant(layer_scale))
            self.gamma_2 = self.create_parameter([dim], default_initializer=Constant(layer_scale))
        self.norm2 = LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, act)

    def forward(self, x, first_tokens: int | None = None):
        """``first_tokens``: only the first tokens' outputs, ``block(x)[:, :first_tokens]``, without
        computing the others (their keys and values still enter the attention)."""
        if first_tokens is None:
            shortcut, mixed = x, self.attn(self.norm1(x))
        else:  # a keyword, so that a method's pre-hook returning new inputs keeps it
            shortcut, mixed = x[:, :first_tokens], self.attn(self.norm1(x), queries=first_tokens)
        if getattr(self, "gamma_1", None) is not None:
            x = shortcut + self.drop_path(self.gamma_1 * mixed)
            return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        x = residual_add(self, shortcut, self.drop_path(mixed))
        return residual_add(self, x, self.drop_path(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Layer):
    """Non-overlapping patches by a strided convolution (border pixels that do not
    fill a whole patch are dropped, as in PaddleClas: 32 px with patch 3 gives 10x10)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

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


def check_family_options(cfg: ViTConfig) -> None:
    """``ValueError`` for a family option (``act``, ``pool``, ``output_dim``, ``layer_scale``) out of range."""
    if cfg.act not in ACTS:
        raise ValueError(f"unknown act {cfg.act!r} (choose one of {', '.join(ACTS)})")
    if cfg.pool not in POOLS:
        raise ValueError(f"unknown pool {cfg.pool!r} (choose one of {', '.join(POOLS)})")
    if isinstance(cfg.output_dim, bool) or not isinstance(cfg.output_dim, int) or cfg.output_dim < 0:
        raise ValueError(f"output_dim must be 0 (no projection) or a positive integer, got {cfg.output_dim!r}")
    if cfg.layer_scale is not None and (isinstance(cfg.layer_scale, bool)
                                        or not isinstance(cfg.layer_scale, (int, float))):
        raise ValueError(f"layer_scale must be null (none) or a number (gamma's init), got {cfg.layer_scale!r}")


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
        check_family_options(cfg)
        self.config = cfg
        self.class_num = class_num
        self.embed_dim = cfg.embed_dim
        self.num_features = cfg.output_dim or cfg.embed_dim  # what the head reads

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        tokens = self.patch_embed.num_patches + 1
        self.pos_embed = (self.create_parameter([1, tokens, cfg.embed_dim], default_initializer=_zeros)
                          if cfg.abs_pos_embed else None)
        self.cls_token = self.create_parameter([1, 1, cfg.embed_dim], default_initializer=_zeros)
        if cfg.pre_norm:
            self.ln_pre = LayerNorm(cfg.embed_dim, epsilon=FAMILY_NORM_EPSILON)
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = np.linspace(0, cfg.drop_path_rate, cfg.depth)
        grid = self.patch_embed.grid_size if cfg.rel_pos_bias else None
        self.blocks = nn.LayerList([
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate,
                  cfg.attn_drop_rate, float(rates[i]), cfg.epsilon, grid=grid, layer_scale=cfg.layer_scale,
                  act=cfg.act)
            for i in range(cfg.depth)
        ])
        self.norm = LayerNorm(cfg.embed_dim, epsilon=cfg.epsilon)
        if cfg.fc_norm:
            self.fc_norm = LayerNorm(cfg.embed_dim, epsilon=FAMILY_NORM_EPSILON)
        plain = cfg.head == "linear" and cfg.head_init == "default"
        # today's head is built here and drawn by apply() below, so default models stay bit-identical
        self.head = Linear(self.num_features, class_num) if plain and class_num > 0 else nn.Identity()

        if self.pos_embed is not None:
            _trunc_normal(self.pos_embed)
        _trunc_normal(self.cls_token)
        self.apply(init_weights)
        if cfg.output_dim:  # drawn last, so the other tensors draw as without it; CLIP's scale
            self.proj = self.create_parameter([cfg.embed_dim, cfg.output_dim], default_initializer=Normal(
                0.0, cfg.embed_dim ** -0.5))
        if not plain:
            self.head = make_head(cfg.head, cfg.head_init, self.num_features, class_num)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls = self.cls_token.expand([x.shape[0], -1, -1]).astype(x.dtype)
        x = paddle.concat([cls, x], axis=1)
        if self.pos_embed is not None:
            # [T, D], not [1, T, D]: Paddle's CPU broadcast over a size-1 axis is ~8x slower (see fast_layers)
            x = x + self.pos_embed.reshape(self.pos_embed.shape[1:])
        if self.config.pre_norm:
            x = self.ln_pre(x)
        x = self.pos_drop(x)
        recompute = self.recompute and self.training and paddle.is_grad_enabled()
        last = len(self.blocks) - 1
        first_tokens = self.class_token_only(x)
        for i, block in enumerate(self.blocks):
            if i == last and first_tokens:
                x = run_block(block, x, first_tokens) if recompute else block(x, first_tokens=first_tokens)
            else:
                x = run_block(block, x) if recompute else block(x)
        if self.config.pool == "token" and not self.config.fc_norm and not self.config.output_dim:
            return self.norm(x[:, 0])  # = norm(x)[:, 0]: LayerNorm is per token
        return self.pooled(x)

    def class_token_only(self, x: paddle.Tensor) -> int | None:
        """1 where the last block need only compute the class token's output, else None: the feature
        reads the class token alone (``pool: token``), and a training step on the ``fused`` path runs
        (its values may differ from the other paths' in the last bits, which ``fast`` keeps)."""
        if (self.config.pool == "token" and len(self.blocks) and self.training and paddle.is_grad_enabled()
                and runs_fused(self.blocks[-1], x)):
            return 1
        return None

    def pooled(self, x: paddle.Tensor) -> paddle.Tensor:
        """The feature of a family ViT: ``norm``, then the class token or the mean of the patch
        tokens (any VPT prompts excluded), then ``fc_norm`` and ``proj`` where the config has them."""
        if self.config.pool == "token":
            x = self.norm(x[:, 0])
        else:
            patches = self.patch_embed.num_patches
            x = self.norm(x[:, x.shape[1] - patches:]).mean(axis=1)
        if self.config.fc_norm:
            x = self.fc_norm(x)
        if self.config.output_dim:
            x = paddle.matmul(x, self.proj.astype(x.dtype))
        return x

    def forward(self, x):
        if self.amp is None:
            return self.head(self.forward_features(x))
        level, dtype = self.amp
        with paddle.amp.auto_cast(level=level, dtype=dtype):
            out = self.head(self.forward_features(x))
        return out.astype("float32")  # the loss and the metrics in float32

    def no_weight_decay(self) -> set[str]:
        """Parameters weight decay should skip besides biases and norms (timm's convention): the
        tokens are offsets, not weights, and decay would only pull them towards zero; so are
        BEiT's relative position biases (its fine-tuning skips them too)."""
        names = {"pos_embed", "cls_token"} if self.pos_embed is not None else {"cls_token"}
        if self.config.rel_pos_bias:
            names.update(f"blocks.{i}.attn.relative_position_bias_table" for i in range(len(self.blocks)))
        return names

    def layer_id(self, name: str) -> int:
        """The depth of parameter ``name`` for layer-wise LR decay (BEiT/MAE numbering): 0 the
        embedding (``patch_embed``, ``cls_token``, ``pos_embed``, ``ln_pre``), i + 1 ``blocks.i``
        (with any module a method attached inside it), depth + 1 everything after (``norm``,
        ``fc_norm``, ``proj``, ``head``, and a method's parameters outside the blocks, e.g. VPT prompts)."""
        if name in ("cls_token", "pos_embed") or name.startswith(("patch_embed.", "ln_pre.")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def reset_head(self, class_num: int) -> None:
        """Replace the classifier by a freshly initialised one (of the config's kind and
        init) for ``class_num`` classes."""
        self.class_num = class_num
        self.head = make_head(self.config.head, self.config.head_init, self.num_features, class_num)


def init_weights(layer: nn.Layer) -> None:
    """PaddleClas's init of a transformer's Linear (truncated normal, std 0.02, zero bias) and
    LayerNorm (ones, zeros) layers; ``model.apply(init_weights)``."""
    if isinstance(layer, nn.Linear):
        _trunc_normal(layer.weight)
        if layer.bias is not None:
            _zeros(layer.bias)
    elif isinstance(layer, nn.LayerNorm):
        _ones(layer.weight)
        _zeros(layer.bias)
