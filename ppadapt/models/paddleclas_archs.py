"""The architectures of PaddleClas's ViT constructors, as ppadapt ``ViTConfig`` values.

``--backbone ViT_base_patch16_224`` builds ppadapt's ViT with exactly the shapes
of PaddleClas's model of that name, so its ``.pdparams`` load (issue: weights).
"""
from __future__ import annotations

from .vit import ViTConfig

_BASE = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, epsilon=1e-6)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True, epsilon=1e-6)

PADDLECLAS_VITS: dict[str, ViTConfig] = {
    "ViT_base_patch16_224": ViTConfig(img_size=224, patch_size=16, **_BASE),
    "ViT_base_patch16_384": ViTConfig(img_size=384, patch_size=16, **_BASE),
    "ViT_base_patch32_384": ViTConfig(img_size=384, patch_size=32, **_BASE),
    "ViT_large_patch16_224": ViTConfig(img_size=224, patch_size=16, **_LARGE),
    "ViT_large_patch16_384": ViTConfig(img_size=384, patch_size=16, **_LARGE),
    "ViT_large_patch32_384": ViTConfig(img_size=384, patch_size=32, **_LARGE),
}


def paddleclas_vit_config(name: str) -> ViTConfig:
    if name not in PADDLECLAS_VITS:
        raise ValueError(f"unknown backbone '{name}' (choose one of {', '.join(PADDLECLAS_VITS)})")
    return PADDLECLAS_VITS[name]
