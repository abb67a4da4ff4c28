"""A Swin Transformer (Liu et al., 2021, arXiv 2103.14030) whose names match PaddleClas's.

Every sublayer, parameter and buffer is named as in PaddleClas's ``SwinTransformer``
(``ppcls/arch/backbone/legendary_models/swin_transformer.py``): ``patch_embed.proj``,
``patch_embed.norm``, ``layers.N.blocks.M.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``layers.N.blocks.M.attn.relative_position_bias_table`` and its index buffer
``relative_position_index``, ``layers.N.downsample.{norm, reduction}``, ``norm``, ``head``;
so a PaddleClas state dict loads with no renaming, and the tuning methods, which find
their targets by sublayer name (``blocks.M.mlp``, ``attn.qkv``, ``*.bias``), apply as on the ViT.

Two choices differ from PaddleClas's code, not from its function:

* The input must fit the windows: every stage's feature map must divide into whole
  windows (and the patch grid must halve evenly at each merge). PaddleClas pads instead,
  which lets the padding tokens take part in attention; here a size that does not fit is
  one ``ValueError`` line naming the stage and the sizes that work.
* ``shift_single_window``: a stage whose map is exactly one window is still shifted (and
  masked) in PaddleClas 2.6, whose function ppadapt keeps by default; Microsoft's original
  code does not shift there (``shift_single_window=False``). It changes no parameter.

The masks of shifted windows and the relative position index depend only on the geometry,
so they are computed once per feature-map size with NumPy (also under ``paddle.jit``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, TruncatedNormal

from .fast_layers import Conv2D, Dropout, LayerNorm, Linear
from .recompute import run_block
from .vit import DropPath, Mlp, check_head, init_weights, make_head

_trunc_normal = TruncatedNormal(std=0.02)
_zeros = Constant(0.0)
_ones = Constant(1.0)
MASKED = -100.0  # the logit of a pair of tokens a shifted window must keep apart (PaddleClas's, Microsoft's)


@dataclass
class SwinConfig:
    """Architecture of a :class:`SwinTransformer` (PaddleClas's argument names)."""

    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    epsilon: float = 1e-5
    patch_norm: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    shift_single_window: bool = True  # PaddleClas 2.6; False: Microsoft's (see the module docstring)
    head: str = "linear"  # the classifier, as the ViT's (see ppadapt.models.vit.make_head)
    head_init: str = "default"

    def __post_init__(self) -> None:
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)

    @property
    def widths(self) -> tuple[int, ...]:
        """Each stage's token width: the width doubles at every patch merging."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    def validated(self) -> "SwinConfig":
        """The config itself; ``ValueError`` (one line) on a shape that cannot be built."""
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must be "
                             "non-empty and of one length (one entry per stage)")
        for stage, (width, heads) in enumerate(zip(self.widths, self.num_heads)):
            if heads <= 0 or width % heads:
                raise ValueError(f"stage {stage}: width {width} is not divisible by num_heads {heads}")
        check_head(self.head, self.head_init)
        if self.window_size < 1 or self.patch_size < 1:
            raise ValueError(f"window_size and patch_size must be positive, got {self.window_size}, {self.patch_size}")
        stage_sizes(self, self.img_size, self.img_size)
        return self


def stage_sizes(cfg: SwinConfig, height: int, width: int) -> list[tuple[int, int]]:
    """The feature-map size of each stage for an input of ``height x width`` pixels;
    ``ValueError`` (one line) where the input does not fit the patches, merges or windows."""
    multiple = cfg.patch_size * 2 ** (len(cfg.depths) - 1)
    hint = (f"use a side that is a multiple of {multiple * cfg.window_size} "
            f"(patch {cfg.patch_size} x 2^{len(cfg.depths) - 1} merges x window {cfg.window_size})")
    if height % cfg.patch_size or width % cfg.patch_size:
        raise ValueError(f"Swin: a {height}x{width} input is not divisible into {cfg.patch_size}px patches; {hint}")
    h, w = height // cfg.patch_size, width // cfg.patch_size
    sizes = []
    for stage in range(len(cfg.depths)):
        if h % cfg.window_size or w % cfg.window_size:
            raise ValueError(f"Swin: a {height}x{width} input gives a {h}x{w} map at stage {stage}, not divisible "
                             f"into {cfg.window_size}x{cfg.window_size} windows; {hint}")
        sizes.append((h, w))
        if stage < len(cfg.depths) - 1:
            h, w = h // 2, w // 2
    return sizes


def relative_position_index(window: int) -> np.ndarray:
    """``[N, N]`` (N = window^2): the row of the bias table for each pair of tokens of a
    window, by their offset (dy, dx) in [-(W-1), W-1]^2, row-major over the (2W-1)^2 grid."""
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).astype("int64")


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """``[windows, N, N]`` additive mask of shifted windows: after the cyclic shift a window at
    the border holds tokens from opposite sides of the map, which must not attend to each other."""
    region = np.zeros((height, width))
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    per_window = (region.reshape(height // window, window, width // window, window)
                  .transpose(0, 2, 1, 3).reshape(-1, window * window))
    return np.where(per_window[:, None, :] != per_window[:, :, None], MASKED, 0.0).astype("float32")


def window_partition(x: paddle.Tensor, window: int) -> paddle.Tensor:
    """``[B, H, W, C]`` -> ``[B * windows, window^2, C]``, windows in row-major order."""
    _, h, w, c = x.shape
    x = x.reshape([-1, h // window, window, w // window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, window * window, c])


def window_reverse(windows: paddle.Tensor, window: int, height: int, width: int) -> paddle.Tensor:
    """The inverse of :func:`window_partition`: ``[B * windows, window^2, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape([-1, height // window, width // window, window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, height, width, c])


class WindowAttention(nn.Layer):
    """Multi-head self-attention inside each window, with a learned bias per head and
    relative offset (``relative_position_bias_table``: one row per offset of the (2W-1)^2 grid)."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            [(2 * window_size - 1) ** 2, num_heads], default_initializer=_zeros)
        self.register_buffer("relative_position_index", paddle.to_tensor(relative_position_index(window_size)))
        self.qkv = Linear(dim, dim * 3, bias_attr=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        _trunc_normal(self.relative_position_bias_table)

    def no_weight_decay(self) -> set[str]:
        """The bias table holds attention offsets, not weights (timm's and Microsoft's choice)."""
        return {"relative_position_bias_table"}

    def position_bias(self) -> paddle.Tensor:
        """``[1, heads, N, N]``: each pair's row of the table, per head."""
        n = self.window_size ** 2
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index.reshape([-1]))
        return bias.reshape([n, n, self.num_heads]).transpose([2, 0, 1]).unsqueeze(0)

    def forward(self, x: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        """``x``: the (shifted) map ``[B, H, W, C]``; returns ``[B * windows, window^2, C]``.

        ``qkv`` runs on the map, before the windows are cut (per token, so the same): a Linear
        fed straight by the partition's reshape is mis-fused by Paddle Inference 3.3's passes
        (the reshape is dropped and the 6-D input flattened wrongly)."""
        n, c = self.window_size ** 2, x.shape[-1]
        qkv = window_partition(self.qkv(x), self.window_size)
        qkv = qkv.reshape([-1, n, 3, self.num_heads, c // self.num_heads])
        q, k, v = paddle.unbind(qkv.transpose([2, 0, 3, 1, 4]), axis=0)
        attn = paddle.matmul(q * self.scale, k, transpose_y=True) + self.position_bias().astype(q.dtype)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.reshape([-1, windows, self.num_heads, n, n]) + mask.unsqueeze(1).astype(attn.dtype)
            attn = attn.reshape([-1, self.num_heads, n, n])
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, n, c])
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Layer):
    """Window attention (shifted by half a window in every second block) and an MLP, each
    a pre-norm residual branch, as the ViT's block; names ``norm1/attn/norm2/mlp``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: float, epsilon: float,
                 shift_single_window: bool = True):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.shift_single_window = shift_single_window
        self.norm1 = LayerNorm(dim, epsilon=epsilon)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def shift_for(self, height: int, width: int) -> int:
        """The cyclic shift on a ``height x width`` map (0 where one window covers it, unless
        ``shift_single_window``)."""
        if not self.shift_single_window and height == width == self.window_size:
            return 0
        return self.shift_size

    def _mask(self, height: int, width: int, shift: int) -> paddle.Tensor:
        if (height, width) not in self._masks:
            self._masks[(height, width)] = shifted_window_mask(height, width, self.window_size, shift)
        return paddle.to_tensor(self._masks[(height, width)])

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        h, w = size
        c = x.shape[-1]
        shift = self.shift_for(h, w)
        y = self.norm1(x).reshape([-1, h, w, c])
        if shift:
            y = paddle.roll(y, shifts=(-shift, -shift), axis=(1, 2))
        y = self.attn(y, self._mask(h, w, shift) if shift else None)
        y = window_reverse(y, self.window_size, h, w)
        if shift:
            y = paddle.roll(y, shifts=(shift, shift), axis=(1, 2))
        x = x + self.drop_path(y.reshape([-1, h * w, c]))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    """Each 2x2 group of tokens concatenated (4C), normed and projected to 2C without bias."""

    def __init__(self, dim: int, epsilon: float):
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias_attr=False)
        self.norm = LayerNorm(4 * dim, epsilon=epsilon)

    def forward(self, x: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
        h, w = size
        c = x.shape[-1]
        # [B, h/2, dy, w/2, dx, C] -> channels ordered (dy, dx) = (0,0), (1,0), (0,1), (1,1), as PaddleClas's
        x = x.reshape([-1, h // 2, 2, w // 2, 2, c]).transpose([0, 1, 3, 4, 2, 5])
        return self.reduction(self.norm(x.reshape([-1, (h // 2) * (w // 2), 4 * c])))


class BasicLayer(nn.Layer):
    """One stage: ``blocks`` at one width, then (except the last stage) a ``downsample``."""

    def __init__(self, dim: int, depth: int, num_heads: int, cfg: SwinConfig, drop_paths: list[float],
                 downsample: bool):
        super().__init__()
        ws = cfg.window_size
        self.blocks = nn.LayerList([
            SwinTransformerBlock(dim, num_heads, ws, 0 if i % 2 == 0 else ws // 2, cfg.mlp_ratio, cfg.qkv_bias,
                                 cfg.drop_rate, cfg.attn_drop_rate, drop_paths[i], cfg.epsilon,
                                 cfg.shift_single_window)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, cfg.epsilon) if downsample else None

    def forward(self, x: paddle.Tensor, size: tuple[int, int],
                recompute: bool = False) -> tuple[paddle.Tensor, tuple[int, int]]:
        for block in self.blocks:
            x = run_block(block, x, size) if recompute else block(x, size)
        if self.downsample is not None:
            x = self.downsample(x, size)
            size = (size[0] // 2, size[1] // 2)
        return x, size


class PatchEmbed(nn.Layer):
    """Non-overlapping patches by a strided convolution, then (``patch_norm``) a LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool, epsilon: float):
        super().__init__()
        self.patch_size = patch_size
        self.proj = Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim, epsilon=epsilon) if norm else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.proj(x).flatten(2).transpose([0, 2, 1])
        return self.norm(x) if self.norm is not None else x


class SwinTransformer(nn.Layer):
    """Swin with PaddleClas's names; ``class_num=0`` drops the head. The classifier (``head``, of
    the config's kind: see :func:`~ppadapt.models.vit.make_head`) reads the average of the last
    stage's normed tokens. ``amp`` as on :class:`~ppadapt.models.vit.VisionTransformer`."""

    recompute: bool = False  # recompute each block's activations in the backward (models/recompute.py)
    amp: tuple[str, str] | None = None

    def __init__(self, config: SwinConfig | None = None, class_num: int = 1000, **overrides):
        super().__init__()
        cfg = SwinConfig(**{**asdict(config or SwinConfig()), **overrides}).validated()
        self.config = cfg
        self.class_num = class_num
        self.embed_dim = cfg.embed_dim
        self.num_features = cfg.widths[-1]
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.patch_norm, cfg.epsilon)
        self.pos_drop = Dropout(cfg.drop_rate)
        rates = np.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0,) + cfg.depths).tolist()
        self.layers = nn.LayerList([
            BasicLayer(cfg.widths[i], depth, cfg.num_heads[i], cfg, rates[starts[i]:starts[i + 1]],
                       downsample=i < len(cfg.depths) - 1)
            for i, depth in enumerate(cfg.depths)])
        self.norm = LayerNorm(self.num_features, epsilon=cfg.epsilon)
        self.apply(init_weights)
        self.head = make_head(cfg.head, cfg.head_init, self.num_features, class_num)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        sizes = stage_sizes(self.config, x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed(x))
        size = sizes[0]
        recompute = self.recompute and self.training and paddle.is_grad_enabled()
        for layer in self.layers:
            x, size = layer(x, size, recompute)
        return self.norm(x).mean(axis=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.amp is None:
            return self.head(self.forward_features(x))
        level, dtype = self.amp
        with paddle.amp.auto_cast(level=level, dtype=dtype):
            out = self.head(self.forward_features(x))
        return out.astype("float32")

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise LR decay: 0 the patch embedding, then one
        per block across the stages (a stage's ``downsample`` with its last block), and
        ``sum(depths) + 1`` for ``norm``, ``head`` and anything outside the stages."""
        if name.startswith("patch_embed."):
            return 0
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) > 2:
            stage = int(parts[1])
            before = sum(self.config.depths[:stage])
            if parts[2] == "blocks":
                return before + int(parts[3]) + 1
            return before + self.config.depths[stage]
        return sum(self.config.depths) + 1

    def reset_head(self, class_num: int) -> None:
        """Replace the classifier by a freshly initialised one (the config's kind and init)."""
        self.class_num = class_num
        self.head = make_head(self.config.head, self.config.head_init, self.num_features, class_num)
