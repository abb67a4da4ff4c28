"""The architectures of PaddleClas's Swin constructors, as ppadapt ``SwinConfig`` values.

``SwinTransformer_tiny_patch4_window7_224`` and its siblings in
``ppcls/arch/backbone/legendary_models/swin_transformer.py``: the shapes, the weights' URLs
(copies of that module's ``MODEL_URLS``, kept here because importing ``paddleclas`` takes
seconds; a test checks they agree) and ImageNet's mean/std, which PaddleClas's Swin
configs (``ppcls/configs/ImageNet/SwinTransformer/*.yaml``) normalise with.

PaddleClas's constructors set a stochastic-depth rate for ImageNet training from scratch
(0.2 tiny, 0.3 small, 0.5 base); it is no architecture (no parameter depends on it), and
for transfer ppadapt leaves it at 0 as for its ViTs (``SwinConfig.drop_path_rate``).
"""
from __future__ import annotations

import difflib
from dataclasses import replace

from .swin import SwinConfig, SwinTransformer

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HEADS_96, _HEADS_128, _HEADS_192 = (3, 6, 12, 24), (4, 8, 16, 32), (6, 12, 24, 48)

SWINS: dict[str, SwinConfig] = {
    "SwinTransformer_tiny_patch4_window7_224": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=_HEADS_96),
    "SwinTransformer_small_patch4_window7_224": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=_HEADS_96),
    "SwinTransformer_base_patch4_window7_224": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=_HEADS_128),
    "SwinTransformer_base_patch4_window12_384": SwinConfig(img_size=384, window_size=12, embed_dim=128,
                                                           depths=(2, 2, 18, 2), num_heads=_HEADS_128),
    "SwinTransformer_large_patch4_window7_224": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=_HEADS_192),
    "SwinTransformer_large_patch4_window12_384": SwinConfig(img_size=384, window_size=12, embed_dim=192,
                                                            depths=(2, 2, 18, 2), num_heads=_HEADS_192),
}

_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/{}_pretrained.pdparams"
SWIN_URLS: dict[str, str] = {name: _URL.format(name) for name in SWINS}
MODULE = "legendary_models/swin_transformer"  # under ppcls/arch/backbone/


def swin_names() -> list[str]:
    """Every PaddleClas Swin constructor name ppadapt builds."""
    return list(SWINS)


def is_swin(name: str) -> bool:
    return name in SWINS


def _known(name: str) -> str:
    if name in SWINS:
        return name
    close = difflib.get_close_matches(name, SWINS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(SWINS)}"
    raise ValueError(f"unknown Swin backbone '{name}'; {hint}")


def swin_config(name: str) -> SwinConfig:
    """The architecture of PaddleClas's constructor ``name`` (a copy; ``ValueError`` for an unknown one)."""
    return replace(SWINS[_known(name)])


def swin_weights_url(name: str) -> str:
    """PaddleClas's URL of the ImageNet weights of constructor ``name``."""
    return SWIN_URLS[_known(name)]


def swin_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that constructor ``name``'s weights were trained with: ImageNet's."""
    _known(name)
    return IMAGENET


def list_swin_backbones() -> str:
    """One line per Swin backbone: name, input size, window, width x depths, heads, normalisation."""
    lines = []
    for name, a in SWINS.items():
        lines.append(f"{name:42s} {a.img_size}px patch {a.patch_size}, window {a.window_size:2d}, width "
                     f"{a.embed_dim:3d}, depths {'-'.join(map(str, a.depths))}, heads "
                     f"{'-'.join(map(str, a.num_heads))}; ImageNet mean/std; PaddleClas {MODULE}")
    return "\n".join(lines)


def build_swin(name_or_config: str | SwinConfig, class_num: int = 1000, **overrides) -> SwinTransformer:
    """A randomly initialised Swin of PaddleClas's constructor name (or of a config), with
    ``class_num`` classes (0: no head); ``overrides`` change config fields (``drop_path_rate=0.1``)."""
    cfg = swin_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return SwinTransformer(cfg, class_num=class_num, **overrides)
