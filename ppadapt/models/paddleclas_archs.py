"""The architectures of PaddleClas's ViT constructors, as ppadapt ``ViTConfig`` values.

``--backbone ViT_base_patch16_224`` builds ppadapt's ViT with exactly the shapes
of PaddleClas's model of that name, so its ``.pdparams`` load, and
:data:`PADDLECLAS_URLS` is where PaddleClas downloads those weights from (a copy of
``MODEL_URLS`` in ``ppcls/arch/backbone/model_zoo/vision_transformer.py``, kept here
because importing ``paddleclas`` takes seconds; a test checks they agree).
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


_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{}_pretrained.pdparams"
PADDLECLAS_URLS: dict[str, str] = {name: _URL.format(name) for name in PADDLECLAS_VITS}


def _check(name: str) -> None:
    if name not in PADDLECLAS_VITS:
        raise ValueError(f"unknown backbone '{name}' (choose one of {', '.join(PADDLECLAS_VITS)})")


def paddleclas_vit_config(name: str) -> ViTConfig:
    _check(name)
    return PADDLECLAS_VITS[name]


def paddleclas_weights_url(name: str) -> str:
    """PaddleClas's URL of the ImageNet weights of constructor ``name``."""
    _check(name)
    return PADDLECLAS_URLS[name]
