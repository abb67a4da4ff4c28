"""SSF: Scaling & Shifting your Features (Lian et al., 2022, arXiv 2210.08823) on a plain ViT.

A learnable per-channel scale ``gamma`` and shift ``beta`` are applied to the
output of every ``nn.Linear`` and ``nn.LayerNorm`` inside the blocks
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``),
and, as in the authors' ViT, to the patch-embedding convolution's output (per
channel) and to the final ``norm``: ``y' = y * gamma + beta``.

The ViT is not forked: the factors of the layer ``parent.child`` are the
sublayer ``parent.child_ssf`` (parameters ``scale`` and ``shift``), applied by a
forward post-hook on the layer, so every backbone parameter keeps its
PaddleClas name and a backbone checkpoint still loads.

Since the factors act linearly on a linear layer's output, :func:`merge_ssf`
folds them exactly into that layer (``W' = W * gamma`` per output channel,
``b' = b * gamma + beta``) and removes the sublayers and hooks, giving back a
plain ViT with zero inference overhead.

A layer without a bias (``attn.qkv`` when ``qkv_bias=False``) cannot absorb
the shift otherwise, so :func:`merge_ssf` *creates* the bias parameter there
(frozen like the weight) and sets ``model.config.qkv_bias = True``: the merged
model is a plain ViT with qkv biases, i.e. its state dict loads into
``VisionTransformer(..., qkv_bias=True)``. Any other layer without a bias (Swin's
patch-merging ``reduction``, which PaddleClas builds without one) cannot take the shift:
merging then fails in one line before anything is folded.

Targets are found by type and name, so the same rule fits Swin: every Linear/LayerNorm but
the head's (its blocks, patch norm, patch merging, final norm) and the patch convolution.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import paddle.nn as nn
from paddle.nn.initializer import Constant, Normal

from ..errors import MethodDoesNotFit
from .base import Tuner

SUFFIX = "_ssf"
_TYPES = (nn.Linear, nn.LayerNorm)
PATCH_CONV = "patch_embed.proj"
_IN_BLOCK = re.compile(r"(^|\.)blocks\.\d+\.")


@dataclass
class SSFConfig:
    """Options of SSF (the authors' defaults)."""

    # Std of the init: scale ~ N(1, init_std), shift ~ N(0, init_std) (authors: 0.02).
    # init_std=0 starts from scale 1, shift 0: an exact no-op.
    init_std: float = 0.02
    # Also scale/shift the patch-embedding output and the final norm (authors' ViT).
    include_embed_and_final_norm: bool = True

    def validated(self) -> "SSFConfig":
        if self.init_std < 0:
            raise ValueError(f"ssf.init_std must be >= 0, got {self.init_std}")
        return self


class SSF(nn.Layer):
    """Per-channel ``x * scale + shift`` over ``channels``; ``channel_axis`` -1 or 1 (NCHW)."""

    def __init__(self, channels: int, init_std: float = 0.02, channel_axis: int = -1):
        super().__init__()
        self.channel_axis = channel_axis
        if init_std > 0:
            scale_init, shift_init = Normal(1.0, init_std), Normal(0.0, init_std)
        else:
            scale_init, shift_init = Constant(1.0), Constant(0.0)
        self.scale = self.create_parameter([channels], default_initializer=scale_init)
        self.shift = self.create_parameter([channels], default_initializer=shift_init)

    def forward(self, x):
        if self.channel_axis == -1:
            return x * self.scale + self.shift
        shape = [1] * x.ndim
        shape[self.channel_axis] = -1
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


class _ScaleShift:
    """Forward post-hook of the target layer: scales and shifts its output."""

    def __init__(self, ssf: SSF):
        self.ssf = ssf

    def __call__(self, layer, inputs, output):
        return self.ssf(output)


def _targets(model: nn.Layer, cfg: SSFConfig) -> list[tuple[str, nn.Layer]]:
    """Every Linear/LayerNorm but the head's, and the patch-embedding convolution, in model order;
    without ``include_embed_and_final_norm`` only those inside the blocks (``blocks.N.*``)."""
    found = []
    for path, layer in model.named_sublayers():
        if path == "head" or path.startswith("head."):
            continue
        if not cfg.include_embed_and_final_norm and not _IN_BLOCK.search(path):
            continue
        if isinstance(layer, _TYPES) or (path == PATCH_CONV and isinstance(layer, nn.Conv2D)):
            found.append((path, layer))
    return found


def _channels(layer: nn.Layer) -> int:
    if isinstance(layer, nn.Linear):
        return layer.weight.shape[1]
    if isinstance(layer, nn.Conv2D):
        return layer.weight.shape[0]
    return layer._normalized_shape[-1]  # LayerNorm over the last axis


def _set(layer: nn.Layer, attr: str, value: np.ndarray, like) -> None:
    """Write ``value`` into ``layer.<attr>``, creating the parameter if it is None."""
    param = getattr(layer, attr)
    if param is None:
        param = layer.create_parameter(list(value.shape), dtype=like.dtype, is_bias=True,
                                       default_initializer=Constant(0.0))
        param.stop_gradient = like.stop_gradient
        setattr(layer, attr, param)
    param.set_value(value.astype(like.numpy().dtype))


class SSFTuner(Tuner):
    """The factors of ``parent.child`` are the sublayer ``parent.child_ssf``, applied by a post-hook."""

    name = "ssf"
    summary = "SSF (Lian et al. 2022): scale and shift after each linear and LayerNorm (mergeable)"
    title = "SSF"
    modules = "SSF scales and shifts"
    config = SSFConfig

    def check_model(self, model, cfg):
        for name, layer in _targets(model, cfg):
            if isinstance(layer, nn.Conv2D) and layer._data_format != "NCHW":
                raise ValueError(f"SSF supports only an NCHW patch embedding, {name} is {layer._data_format}")

    def targets(self, model, cfg):
        return _targets(model, cfg)

    def module_path(self, target: str) -> str:
        return target + SUFFIX

    def create(self, model, target, layer, cfg):
        return SSF(_channels(layer), cfg.init_std, channel_axis=1 if isinstance(layer, nn.Conv2D) else -1)

    def wire(self, model, target, layer, ssf, cfg):
        return [layer.register_forward_post_hook(_ScaleShift(ssf))]

    def owns(self, name: str) -> bool:
        return is_ssf_parameter(name)

    def check_fold(self, model, target, layer, ssf):
        """Only a fused qkv may lack the bias that takes the shift: the config can give it one
        (``qkv_bias``). Elsewhere (Swin's patch-merging ``reduction``) the architecture has none."""
        if layer.bias is None and not (isinstance(layer, nn.Linear) and target.endswith("attn.qkv")):
            raise MethodDoesNotFit(f"cannot merge SSF: {target} has no bias to take the shift and its architecture has "
                             "none there; keep SSF unmerged (export without merging)")

    def fold(self, model, target, layer, ssf):
        """Exact for Linear (``W[:, j] *= g_j``), LayerNorm (``weight * g``) and the
        patch-embedding Conv2D (``weight[j] *= g_j``); biases become ``b * g + beta``.
        A missing bias is created (see the module docstring)."""
        g = ssf.scale.numpy().astype(np.float64)
        beta = ssf.shift.numpy().astype(np.float64)
        like = layer.weight
        if like is None:
            raise ValueError(f"cannot merge SSF into {target}: the layer has no weight")
        w = like.numpy().astype(np.float64)
        if isinstance(layer, nn.Linear):
            w = w * g[None, :]
        elif isinstance(layer, nn.Conv2D):
            w = w * g.reshape([-1] + [1] * (w.ndim - 1))
        else:  # LayerNorm: y = norm(x) * weight + bias
            w = w * g
        b = np.zeros_like(g) if layer.bias is None else layer.bias.numpy().astype(np.float64)
        created_qkv_bias = layer.bias is None and isinstance(layer, nn.Linear) and target.endswith("attn.qkv")
        like.set_value(w.astype(like.numpy().dtype))
        _set(layer, "bias", b * g + beta, like)
        if created_qkv_bias and hasattr(model, "config") and hasattr(model.config, "qkv_bias"):
            model.config.qkv_bias = True


def apply_ssf(model: nn.Layer, cfg: SSFConfig | None = None) -> list[SSF]:
    """Add SSF after every Linear/LayerNorm of the blocks (+ patch embed, final norm); in place."""
    return SSF_TUNER.apply(model, cfg)


def is_ssf_parameter(name: str) -> bool:
    """True for SSF's own parameters (``..._ssf.scale`` / ``..._ssf.shift``)."""
    return f"{SUFFIX}." in name


def merge_ssf(model: nn.Layer) -> None:
    """Fold every SSF scale/shift into the layer before it and remove SSF's modules and hooks."""
    SSF_TUNER._merge(model)


SSF_TUNER = SSFTuner()
