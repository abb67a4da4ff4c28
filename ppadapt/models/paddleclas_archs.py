"""The architectures of PaddleClas's plain-ViT constructors, as ppadapt ``ViTConfig`` values.

``--backbone ViT_base_patch16_224`` builds ppadapt's ViT with exactly the shapes
of PaddleClas's model of that name, so its ``.pdparams`` load. Three PaddleClas
modules hold plain ViTs, each a family here with its weights' URLs (copies of the
module's ``MODEL_URLS``, kept here because importing ``paddleclas`` takes seconds;
a test checks they agree) and the normalisation its training configs use:

* ``vision_transformer.py``: ``ViT_*`` (mean = std = 0.5);
* ``distilled_vision_transformer.py``: the plain (not distilled) ``DeiT_*_patch16_224``
  (ImageNet mean/std, as ``ppcls/configs/ImageNet/DeiT/*.yaml``);
* ``foundation_vit.py``: ``MAE_vit_base_patch16``, AdaptFormer's backbone (ImageNet
  mean/std, MAE's own). PaddleClas's constructor leaves the LayerNorm epsilon at its
  1e-5 default; MAE trained these weights with 1e-6, which ppadapt uses
  (``-o model.epsilon=1e-5`` gives PaddleClas's numerics). Its classifier reads the
  normed class token, like every ViT here (the average pool + ``fc_norm`` path is
  only its ViT-H's), and the two tensors that differ from a plain ViT are handled when
  loading (:func:`ppadapt.runs.pretrained.adapt_state_dict`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

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

_DEIT = dict(img_size=224, patch_size=16, mlp_ratio=4.0, qkv_bias=True, epsilon=1e-6)
DEIT_VITS: dict[str, ViTConfig] = {
    "DeiT_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3, **_DEIT),
    "DeiT_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6, **_DEIT),
    "DeiT_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12, **_DEIT),
}
DEIT_URLS: dict[str, str] = {name: _URL.format(name) for name in DEIT_VITS}

FOUNDATION_VITS: dict[str, ViTConfig] = {
    "MAE_vit_base_patch16": ViTConfig(img_size=224, patch_size=16, **_BASE),
}
FOUNDATION_URLS: dict[str, str] = {
    name: f"https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/foundation_models/{name}.pdparams"
    for name in FOUNDATION_VITS}

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Family:
    """The ViTs of one PaddleClas module: architectures, weight URLs, normalisation."""

    module: str  # under ppcls/arch/backbone/model_zoo/
    archs: dict[str, ViTConfig]
    urls: dict[str, str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES = (
    Family("vision_transformer", PADDLECLAS_VITS, PADDLECLAS_URLS, *HALF),
    Family("distilled_vision_transformer", DEIT_VITS, DEIT_URLS, *IMAGENET),
    Family("foundation_vit", FOUNDATION_VITS, FOUNDATION_URLS, *IMAGENET),
)


def backbone_names() -> list[str]:
    """Every backbone ``--backbone`` accepts, family by family."""
    return [name for family in FAMILIES for name in family.archs]


def _family(name: str) -> Family:
    for family in FAMILIES:
        if name in family.archs:
            return family
    names = backbone_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(names)}"
    raise ValueError(f"unknown backbone '{name}'; {hint} (transfer.py --list-backbones lists them)")


def paddleclas_vit_config(name: str) -> ViTConfig:
    """The architecture of PaddleClas's constructor ``name`` (``ValueError`` for an unknown one)."""
    return _family(name).archs[name]


def paddleclas_weights_url(name: str) -> str:
    """PaddleClas's URL of the ImageNet weights of constructor ``name``."""
    return _family(name).urls[name]


def paddleclas_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that constructor ``name``'s weights were trained with."""
    family = _family(name)
    return family.mean, family.std


def list_backbones() -> str:
    """One line per backbone: name, input size, patch, width x depth, heads, normalisation."""
    lines = []
    for family in FAMILIES:
        norm = "mean = std = 0.5" if (family.mean, family.std) == HALF else "ImageNet mean/std"
        for name, a in family.archs.items():
            lines.append(f"{name:24s} {a.img_size}px patch {a.patch_size:2d}, width {a.embed_dim:4d} x depth "
                         f"{a.depth:2d}, {a.num_heads:2d} heads, epsilon {a.epsilon:g}; {norm}; "
                         f"PaddleClas {family.module}")
    return "\n".join(lines)
