"""LoRA (Hu et al., 2021, arXiv 2106.09685) on a plain ViT.

A frozen linear layer ``y = x W + b`` gets a trainable low-rank update::

    y = x W + b + dropout(x) A B * (alpha / rank)

with ``A`` of shape ``[in, rank]`` (Kaiming-uniform, a=sqrt(5)) and ``B`` of
shape ``[rank, out]`` (zeros), so the adapted model equals the plain one
exactly until the first update.

Targets (``LoRAConfig.targets``):

* a string made only of the letters ``q``, ``k``, ``v`` (default ``"qv"``,
  the authors' choice): the named parts of every fused ``attn.qkv`` layer. Each
  part gets its own ``A``/``B`` pair acting on its third of the qkv output; the
  other parts are untouched.
* anything else is a regular expression searched (``re.search``) in the
  sublayer names; every ``nn.Linear`` that matches gets a full-width update,
  e.g. ``r"attn\\.proj|mlp\\.fc\\d"``.

The ViT is not forked: the update of the layer ``parent.child`` is registered
as the sublayer ``parent.child_lora`` (parameters ``lora_A``/``lora_B``, or
``lora_A_q``, ``lora_B_q``, ... for the fused qkv) and added to the layer's
output by a forward post-hook. Every backbone parameter keeps its PaddleClas
name, so a backbone checkpoint still loads. :func:`merge_lora` folds the
update into ``W`` and removes the sublayers and hooks, giving back a plain ViT.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, KaimingUniform

from .base import Tuner

SUFFIX = "_lora"
QKV_PARTS = "qkv"
_FUSED_QKV = re.compile(r"(^|\.)attn\.qkv$")


@dataclass
class LoRAConfig:
    """Options of LoRA (the authors' defaults)."""

    rank: int = 8  # r, the rank of the update (the paper's ViT-style setups use 4 or 8)
    # Scaling is alpha / rank (authors' convention; alpha=rank gives scale 1).
    # Several ViT PETL codebases (e.g. NOAH / V-PETL Bench style LoRA) add the
    # update unscaled: set alpha=rank to reproduce them for any rank.
    alpha: float = 8.0
    dropout: float = 0.0  # dropout on the LoRA input only (the frozen path sees x unchanged)
    # "qv" (default) / "q" / "qkv" ...: parts of the fused attn.qkv; otherwise a
    # regex over sublayer names selecting nn.Linear layers for full-width LoRA.
    targets: str = "qv"

    def validated(self) -> "LoRAConfig":
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.targets, str) or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty string, got {self.targets!r}")
        if not self.is_qkv_parts():
            try:
                re.compile(self.targets)
            except re.error as err:
                raise ValueError(f"lora.targets is not a valid regex: {self.targets!r} ({err})") from err
        return self

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    def is_qkv_parts(self) -> bool:
        return bool(re.fullmatch(r"[qkv]+", self.targets)) and len(set(self.targets)) == len(self.targets)


def _kaiming_a(param) -> None:
    # Paddle's weight layout is [in, out]: fan_in = shape[0] = in, so the bound is
    # 1/sqrt(in) exactly as torch's kaiming_uniform_(A[rank, in], a=sqrt(5)).
    KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")(param)


class LoRA(nn.Layer):
    """The low-rank update of one linear layer ``in_features -> out_features``.

    ``parts=None``: one full-width pair ``lora_A`` [in, r], ``lora_B`` [r, out].
    ``parts="qv"`` etc.: the layer is a fused qkv of width ``3 * d``; each named
    part gets ``lora_A_<p>`` [in, r], ``lora_B_<p>`` [r, d] acting on its slice.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 8.0,
                 dropout: float = 0.0, parts: str | None = None):
        super().__init__()
        self.rank = rank
        self.scaling = float(alpha) / rank
        self.dropout = dropout
        self.parts = parts
        self.out_features = out_features
        if parts is None:
            self.lora_A = self.create_parameter([in_features, rank])
            self.lora_B = self.create_parameter([rank, out_features], default_initializer=Constant(0.0))
            _kaiming_a(self.lora_A)
        else:
            if out_features % 3:
                raise ValueError(f"fused qkv width {out_features} is not divisible by 3")
            width = out_features // 3
            for p in parts:
                a = self.create_parameter([in_features, rank])
                _kaiming_a(a)
                b = self.create_parameter([rank, width], default_initializer=Constant(0.0))
                self.add_parameter(f"lora_A_{p}", a)
                self.add_parameter(f"lora_B_{p}", b)

    def pairs(self):
        """``(slice of the output or None, A, B)`` for each update."""
        if self.parts is None:
            return [(None, self.lora_A, self.lora_B)]
        width = self.out_features // 3
        return [(slice(i * width, (i + 1) * width), getattr(self, f"lora_A_{p}"), getattr(self, f"lora_B_{p}"))
                for i, p in enumerate(QKV_PARTS) if p in self.parts]

    def forward(self, x):
        x = F.dropout(x, p=self.dropout, training=self.training)
        if self.parts is None:
            return paddle.matmul(paddle.matmul(x, self.lora_A), self.lora_B) * self.scaling
        pieces, zeros = [], None
        for p in QKV_PARTS:
            if p in self.parts:
                a, b = getattr(self, f"lora_A_{p}"), getattr(self, f"lora_B_{p}")
                pieces.append(paddle.matmul(paddle.matmul(x, a), b) * self.scaling)
            else:
                if zeros is None:
                    zeros = paddle.zeros(list(x.shape[:-1]) + [self.out_features // 3], dtype=x.dtype)
                pieces.append(zeros)
        return paddle.concat(pieces, axis=-1)

    def delta_weight(self) -> np.ndarray:
        """The update as a dense ``[in, out]`` matrix (float64)."""
        in_features = (self.lora_A if self.parts is None else getattr(self, f"lora_A_{self.parts[0]}")).shape[0]
        delta = np.zeros((in_features, self.out_features), dtype=np.float64)
        for sl, a, b in self.pairs():
            d = a.numpy().astype(np.float64) @ b.numpy().astype(np.float64) * self.scaling
            if sl is None:
                delta += d
            else:
                delta[:, sl] += d
        return delta


class _AddUpdate:
    """Forward post-hook of the target layer: adds the LoRA update to its output."""

    def __init__(self, lora: LoRA):
        self.lora = lora

    def __call__(self, layer, inputs, output):
        return output + self.lora(inputs[0])


def _find_targets(model: nn.Layer, cfg: LoRAConfig) -> list[tuple[str, nn.Linear]]:
    linears = [(n, l) for n, l in model.named_sublayers() if isinstance(l, nn.Linear)]
    if cfg.is_qkv_parts():
        found = [(n, l) for n, l in linears if _FUSED_QKV.search(n)]
        what = "no fused attn.qkv nn.Linear layer"
    else:
        pattern = re.compile(cfg.targets)
        found = [(n, l) for n, l in linears if pattern.search(n)]
        what = f"lora.targets {cfg.targets!r} matches no nn.Linear sublayer"
    if not found:
        raise ValueError(f"cannot apply LoRA: {what} in this model")
    return found


class LoRATuner(Tuner):
    """The update of ``parent.child`` is the sublayer ``parent.child_lora``, added by a post-hook."""

    name = "lora"
    summary = "LoRA (Hu et al. 2021): low-rank updates of chosen linear layers (mergeable)"
    title = "LoRA"
    modules = "LoRA updates"
    config = LoRAConfig

    def targets(self, model, cfg):
        return _find_targets(model, cfg)

    def module_path(self, target: str) -> str:
        return target + SUFFIX

    def create(self, model, target, linear, cfg):
        in_features, out_features = linear.weight.shape
        parts = cfg.targets if cfg.is_qkv_parts() else None
        return LoRA(in_features, out_features, cfg.rank, cfg.alpha, cfg.dropout, parts)

    def wire(self, model, target, linear, lora, cfg):
        return [linear.register_forward_post_hook(_AddUpdate(lora))]

    def owns(self, name: str) -> bool:
        return is_lora_parameter(name)

    def fold(self, model, target, linear, lora):
        """``W += A B * scaling``: the layer alone then computes what it did with the update."""
        w = linear.weight
        merged = w.numpy().astype(np.float64) + lora.delta_weight()
        w.set_value(merged.astype(w.numpy().dtype))


def apply_lora(model: nn.Layer, cfg: LoRAConfig | None = None) -> list[LoRA]:
    """Add LoRA to the target linear layers of ``model`` (in place); returns the LoRA modules."""
    return LORA.apply(model, cfg)


def is_lora_parameter(name: str) -> bool:
    """True for parameters that belong to a LoRA update (``..._lora.lora_*``)."""
    return f"{SUFFIX}." in name


def merge_lora(model: nn.Layer) -> None:
    """Fold every LoRA update into its layer's weight and remove the LoRA modules and hooks.

    Afterwards ``model`` is a plain ViT (same state-dict keys) computing, in
    eval mode, the same function as the adapted model did.
    """
    LORA._merge(model)


LORA = LoRATuner()
