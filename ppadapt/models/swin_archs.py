"""The architectures of PaddleClas's Swin constructors, as ppadapt ``SwinConfig`` values (looked
up, with their URLs and normalisation, through :mod:`.paddleclas_archs` like every backbone).

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

from .swin import SwinConfig

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
