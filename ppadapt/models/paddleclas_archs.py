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
  loading (:func:`ppadapt.runs.pretrained.adapt_state_dict`). The same module's BEiTv2 and
  CLIP ViTs are two more families (their own normalisation) whose architecture switches
  ViTConfig's family options on:

  - ``BEiTv2_*``: per-block layer scale (``gamma_1``/``gamma_2``) and relative position bias,
    no absolute position embedding, epsilon 1e-6. PaddleClas ships no BEiTv2 config with its
    package, so the normalisation is BEiT v2's own fine-tuning default, ImageNet mean/std;
  - ``CLIP_*``: ``ln_pre`` before the blocks, epsilon 1e-5, CLIP's mean/std. The classifier reads
    the normed class token as PaddleClas's classifier does (``proj``, CLIP's image projection, is
    dropped when loading unless ``model.output_dim`` asks for it); ``CLIP_vit_base_patch16_224``
    is marked in PaddleClas as an embedding of the mean of its patch tokens (``pool: mean``).
    PaddleClas's MLPs use the exact GELU, and so does ppadapt (``-o model.act=quick_gelu``: OpenAI's).

``legendary_models/swin_transformer.py``'s ``SwinTransformer_*`` are one more family, a
:class:`~ppadapt.models.swin.SwinConfig` each (:mod:`.swin_archs` holds them).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .build import Architecture, describe_architecture
from .swin_archs import MODULE as SWIN_MODULE, SWIN_URLS, SWINS
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

_FOUNDATION_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/foundation_models/{}.pdparams"
_BEIT = dict(img_size=224, patch_size=16, qkv_bias=True, epsilon=1e-6, abs_pos_embed=False, rel_pos_bias=True)
BEIT_VITS: dict[str, ViTConfig] = {  # layer_scale: BEiT v2's own init (overwritten by the weights)
    "BEiTv2_vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12, layer_scale=0.1, **_BEIT),
    "BEiTv2_vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16, layer_scale=1e-5, **_BEIT),
}
BEIT_URLS: dict[str, str] = {name: _FOUNDATION_URL.format(name) for name in BEIT_VITS}

_CLIP = dict(qkv_bias=True, epsilon=1e-5, pre_norm=True)
_CLIP_B = dict(embed_dim=768, depth=12, num_heads=12, **_CLIP)
_CLIP_L = dict(embed_dim=1024, depth=24, num_heads=16, **_CLIP)
CLIP_VITS: dict[str, ViTConfig] = {
    "CLIP_vit_base_patch16_224": ViTConfig(img_size=224, patch_size=16, pool="mean", **_CLIP_B),
    "CLIP_vit_base_patch32_224": ViTConfig(img_size=224, patch_size=32, **_CLIP_B),
    "CLIP_vit_large_patch14_224": ViTConfig(img_size=224, patch_size=14, **_CLIP_L),
    "CLIP_vit_large_patch14_336": ViTConfig(img_size=336, patch_size=14, **_CLIP_L),
}
CLIP_URLS: dict[str, str] = {name: _FOUNDATION_URL.format(name) for name in CLIP_VITS}

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
NORMALISATION_WORDS = {HALF: "mean = std = 0.5", IMAGENET: "ImageNet mean/std", CLIP: "CLIP mean/std"}


@dataclass(frozen=True)
class Family:
    """Backbones of one PaddleClas module with one normalisation: architectures, weight URLs, mean/std."""

    module: str  # under ppcls/arch/backbone/ (model_zoo/ unless it names its folder)
    archs: dict[str, Architecture]
    urls: dict[str, str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES = (
    Family("vision_transformer", PADDLECLAS_VITS, PADDLECLAS_URLS, *HALF),
    Family("distilled_vision_transformer", DEIT_VITS, DEIT_URLS, *IMAGENET),
    Family("foundation_vit", FOUNDATION_VITS, FOUNDATION_URLS, *IMAGENET),
    Family("foundation_vit", BEIT_VITS, BEIT_URLS, *IMAGENET),
    Family("foundation_vit", CLIP_VITS, CLIP_URLS, *CLIP),
    Family(SWIN_MODULE, SWINS, SWIN_URLS, *IMAGENET),
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


def paddleclas_vit_config(name: str) -> Architecture:
    """The architecture of PaddleClas's constructor ``name`` (a ViTConfig, or a SwinConfig for a
    Swin; a copy, so the registry stays as it is; ``ValueError`` for an unknown one)."""
    return dataclasses.replace(_family(name).archs[name])


def paddleclas_weights_url(name: str) -> str:
    """PaddleClas's URL of the ImageNet weights of constructor ``name``."""
    return _family(name).urls[name]


def paddleclas_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that constructor ``name``'s weights were trained with."""
    family = _family(name)
    return family.mean, family.std


def list_backbones() -> str:
    """One line per backbone: name, input size, patch, width and depth, heads, normalisation, and
    the family options it switches on."""
    lines = []
    for family in FAMILIES:
        norm = NORMALISATION_WORDS[(family.mean, family.std)]
        for name, a in family.archs.items():
            if not isinstance(a, ViTConfig):
                lines.append(f"{name:40s} {describe_architecture(a)}; {norm}; PaddleClas {family.module}")
                continue
            lines.append(f"{name:28s} {a.img_size}px patch {a.patch_size:2d}, width {a.embed_dim:4d} x depth "
                         f"{a.depth:2d}, {a.num_heads:2d} heads, epsilon {a.epsilon:g}; {norm}; "
                         f"PaddleClas {family.module}{family_words(a)}")
    return "\n".join(lines)


def family_words(arch: ViTConfig) -> str:
    """``"; layer scale, relative position bias, ..."``: the family options ``arch`` switches on."""
    words = [word for on, word in ((arch.layer_scale is not None, "layer scale"),
                                   (arch.rel_pos_bias, "relative position bias"),
                                   (not arch.abs_pos_embed, "no absolute position embedding"),
                                   (arch.pre_norm, "ln_pre"), (arch.act != "gelu", arch.act),
                                   (arch.pool != "token", f"{arch.pool} pooling"), (arch.fc_norm, "fc_norm"),
                                   (arch.output_dim > 0, f"proj to {arch.output_dim}")) if on]
    return "; " + ", ".join(words) if words else ""
