"""The one place that turns an architecture into a network: a ViT or a Swin Transformer.

Everything that builds a backbone from a config, a run's record or an adapter file goes
through :func:`build_backbone`, so a new family is added here and in its ``*_archs`` registry.
"""
from __future__ import annotations

from typing import Union

import paddle.nn as nn

from .swin import SwinConfig, SwinTransformer
from .vit import VisionTransformer, ViTConfig

Architecture = Union[ViTConfig, SwinConfig]  # (3.9 has no X | Y at run time)


def build_backbone(arch: Architecture, class_num: int) -> nn.Layer:
    """A randomly initialised network of ``arch`` with ``class_num`` classes (0: no head)."""
    if isinstance(arch, SwinConfig):
        return SwinTransformer(arch, class_num=class_num)
    return VisionTransformer(arch, class_num=class_num)


def describe_architecture(arch: Architecture) -> str:
    """``"ViT 224px patch 16, width 768, depth 12"`` / ``"Swin Transformer 224px patch 4, window 7,
    width 96, depths 2-2-6-2, heads 3-6-12-24"``: an architecture in the words messages use."""
    if isinstance(arch, SwinConfig):
        return (f"Swin Transformer {arch.img_size}px patch {arch.patch_size}, window {arch.window_size}, width "
                f"{arch.embed_dim}, depths {'-'.join(map(str, arch.depths))}, heads {'-'.join(map(str, arch.num_heads))}")
    return f"ViT {arch.img_size}px patch {arch.patch_size}, width {arch.embed_dim}, depth {arch.depth}"
