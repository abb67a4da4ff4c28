"""Checks a type check cannot express: ranges, the model's geometry, the methods' options.

Each failure is one :class:`~ppadapt.errors.ConfigError` line, raised before any data is
read or any model is built.
"""
from __future__ import annotations

import dataclasses
import difflib

from ..errors import ConfigError
from ..models.paddleclas_archs import paddleclas_vit_config
from ..models.vit import ACTS, HEAD_INITS, HEADS, POOLS, ViTConfig, check_family_options
from ..models.fast_layers import LAYER_CHOICES
from .schema import (AMP_DTYPES, AMP_LEVELS, ARCHS, AUGMENTATIONS, DEVICES, EVAL_RESIZES, LR_SCALES, NO_DECAY,
                     OPTIMIZERS, RESOLUTIONS, SAVE_FORMATS, SCHEDULES, STAGES, SWIN_KEYS, SWIN_SHARED, Config,
                     ModelSection, StageConfig)
from .recipes import checked_recipes
from .tuning import check_methods


def validate(cfg: Config) -> None:
    """Range checks that a type check cannot express (ConfigError)."""
    for name in STAGES:
        st = cfg.stage(name)
        for key in ("epochs", "batch_size"):
            if getattr(st, key) <= 0:
                raise ConfigError(f"{name}.{key} must be positive, got {getattr(st, key)} (give a whole number "
                                  f">= 1: --{key.replace('_', '-')} N or -o {name}.{key}=N)")
        if not st.lr > 0:
            raise ConfigError(f"{name}.lr must be positive, got {st.lr} (give a number > 0, e.g. --lr 0.01 "
                              f"or -o {name}.lr=0.01)")
        for key in ("warmup_steps", "num_workers", "weight_decay", "min_lr", "momentum"):
            if (getattr(st, key) or 0) < 0:
                raise ConfigError(f"{name}.{key} must not be negative, got {getattr(st, key)}")
        if st.schedule not in SCHEDULES:
            raise ConfigError(f"{name}.schedule must be one of {SCHEDULES}, got {st.schedule!r}")
        check_augmentation(name, st)
        check_optimization(name, st)
        check_validation(st, name)
        check_precision(name, st)
    if cfg.save_format not in SAVE_FORMATS:
        raise ConfigError(f"save_format must be one of {SAVE_FORMATS}, got {cfg.save_format!r} "
                          "(e.g. -o save_format=safetensors)")
    if cfg.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r} (e.g. --device gpu; "
                          "auto: what this Paddle was built for)")
    if cfg.model.layers not in LAYER_CHOICES:
        raise ConfigError(f"model.layers must be one of {', '.join(LAYER_CHOICES)}, got {cfg.model.layers!r} "
                          "(auto: the fast CPU backward on the CPU, Paddle's own kernels on a GPU)")
    checked_recipes(cfg.transfer.by_method)
    check_arch(cfg.model)
    if cfg.model.arch == "swin":
        check_swin_geometry(cfg.model)
    else:
        check_geometry(cfg.model)
    check_head_and_backbone(cfg.model)
    check_methods(cfg)


def check_precision(name: str, st: StageConfig) -> None:
    """``amp`` and ``amp_dtype`` are known choices (whether this machine can run them is checked
    when training starts: :func:`ppadapt.utils.device.check_amp`)."""
    if st.amp not in AMP_LEVELS:
        raise ConfigError(f"{name}.amp must be one of {', '.join(AMP_LEVELS)}, got {st.amp!r} "
                          f"(e.g. -o {name}.amp=O1)")
    if st.amp_dtype not in AMP_DTYPES:
        raise ConfigError(f"{name}.amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {st.amp_dtype!r} "
                          f"(e.g. -o {name}.amp_dtype=bfloat16)")


def check_validation(st: StageConfig, name: str) -> None:
    """``val_split`` a share in [0, 1) (0: off); ``val_dir`` only for image folders, and not with it."""
    if not 0.0 <= st.val_split < 1.0:
        raise ConfigError(f"{name}.val_split must be in [0, 1), got {st.val_split:g} (0 = off, the best epoch is "
                          f"chosen on test; e.g. -o {name}.val_split=0.1 holds out 10% of each class's training "
                          "images)")
    if st.val_dir is not None:
        if st.dataset != "folder":
            raise ConfigError(f"{name}.val_dir is for image folders (--data-dir DIR); for {st.dataset} use "
                              f"-o {name}.val_split=0.1")
        if st.val_split:
            raise ConfigError(f"{name}.val_split and {name}.val_dir both give a validation set: set only one")


def check_arch(m: ModelSection) -> None:
    """``model.arch`` is known, and only its own keys are set: a Swin's stages are ``depths``,
    ``stage_heads`` and ``window_size``; a ViT's ``depth``, ``num_heads`` and family options."""
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {m.arch!r}")
    if m.arch == "vit":
        for key in SWIN_KEYS:
            if getattr(m, key) is not None:
                raise ConfigError(f"model.{key} is a Swin key but model.arch is vit (a ViT has model.depth and "
                                  "model.num_heads; for a Swin use --backbone SwinTransformer_... or "
                                  "-o model.arch=swin)")
        return
    plain = ModelSection()
    vit_only = [f.name for f in dataclasses.fields(ViTConfig) if f.name not in SWIN_SHARED]
    for key in [*vit_only, "drop_border"]:
        if getattr(m, key) != getattr(plain, key):
            raise ConfigError(f"model.{key} is a ViT key but model.arch is swin: drop it (a Swin's stages are "
                              "model.depths, model.stage_heads and model.window_size)")


def check_swin_geometry(m: ModelSection) -> None:
    """A Swin that can be built: one depth and one head count per stage, widths divisible by the
    heads, and an image size that the patches, merges and windows tile."""
    for key in SWIN_KEYS:
        if getattr(m, key) is None:
            raise ConfigError(f"model.{key} is missing: a Swin needs model.depths, model.stage_heads and "
                              "model.window_size (--backbone SwinTransformer_... sets them)")
    for key in ("img_size", "patch_size", "embed_dim", "window_size"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}")
    if m.in_chans != 3:
        raise ConfigError(f"model.in_chans must be 3, got {m.in_chans} (every dataset is read as RGB images)")
    try:
        m.architecture().validated()
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None


def check_geometry(m: ModelSection) -> None:
    """A ViT that can be built and fed: sizes positive, heads dividing the width, RGB input,
    and patches tiling the image (unless ``drop_border`` accepts a dropped border)."""
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}")
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"model.embed_dim ({m.embed_dim}) must be divisible by model.num_heads ({m.num_heads})")
    if m.patch_size > m.img_size:
        raise ConfigError(f"model.patch_size ({m.patch_size}) is larger than model.img_size ({m.img_size})")
    left = m.img_size % m.patch_size
    if left and not m.drop_border:
        grid = m.img_size // m.patch_size
        fits = [p for p in range(1, m.img_size + 1) if m.img_size % p == 0]
        near = sorted(fits, key=lambda p: (abs(p - m.patch_size), p))[:2]
        raise ConfigError(
            f"model.patch_size ({m.patch_size}) does not divide model.img_size ({m.img_size}): its {grid}x{grid} "
            f"patch grid would drop the last {left} pixel rows and columns of every image; use a patch size that "
            f"divides {m.img_size} (e.g. {' or '.join(map(str, sorted(near)))}), or set model.drop_border: true "
            "to drop them")
    if m.in_chans != 3:
        raise ConfigError(f"model.in_chans must be 3, got {m.in_chans} (every dataset is read as RGB images)")
    if not m.mlp_ratio > 0 or int(m.embed_dim * m.mlp_ratio) < 1:
        raise ConfigError(f"model.mlp_ratio must be positive (a hidden width of at least 1), got {m.mlp_ratio}")
    if not m.epsilon > 0:
        raise ConfigError(f"model.epsilon must be positive, got {m.epsilon}")
    for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        if not 0.0 <= getattr(m, key) < 1.0:
            raise ConfigError(f"model.{key} must be in [0, 1), got {getattr(m, key)}")


def check_augmentation(name: str, st: StageConfig) -> None:
    """The data pipeline's choices and MixUp/CutMix's ranges, one line each with the fix."""
    for key, choices in (("augmentation", AUGMENTATIONS), ("eval_resize", EVAL_RESIZES),
                         ("resolution", RESOLUTIONS)):
        if getattr(st, key) not in choices:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(choices)}, got {getattr(st, key)!r} "
                              f"(-o {name}.{key}={choices[0]})")
    if not st.augment and st.augmentation not in ("tutorial", "none"):
        raise ConfigError(f"{name}.augment is false (no augmentation) but {name}.augmentation is "
                          f"{st.augmentation!r}: drop augment: false, or set {name}.augmentation: none")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not getattr(st, key) >= 0:
            raise ConfigError(f"{name}.{key} must not be negative, got {getattr(st, key)} (0 turns it off; "
                              f"e.g. -o {name}.{key}=0.8)")
    if not 0.0 <= st.mix_prob <= 1.0:
        raise ConfigError(f"{name}.mix_prob must be in [0, 1], got {st.mix_prob} (the chance that a batch is "
                          f"mixed; e.g. -o {name}.mix_prob=1.0)")
    if (st.mixup_alpha > 0 or st.cutmix_alpha > 0) and st.batch_size < 2:
        raise ConfigError(f"MixUp needs at least 2 images per batch: {name}.batch_size is {st.batch_size} "
                          f"(raise it, or set {name}.mixup_alpha and {name}.cutmix_alpha to 0)")


def check_optimization(name: str, st: StageConfig) -> None:
    """The optimizer, weight-decay, LR-multiplier, clipping, schedule and loss keys of stage ``name``."""
    for key, choices in (("optimizer", OPTIMIZERS), ("no_decay", NO_DECAY), ("lr_scale", LR_SCALES)):
        if getattr(st, key) not in choices:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(choices)}, got {getattr(st, key)!r}")
    if len(st.betas) != 2 or not all(0.0 <= b < 1.0 for b in st.betas):
        raise ConfigError(f"{name}.betas must be two numbers in [0, 1), got {st.betas} (e.g. [0.9, 0.999])")
    if not st.eps > 0:
        raise ConfigError(f"{name}.eps must be positive, got {st.eps} (e.g. 1e-8)")
    if not 0.0 < st.layer_decay <= 1.0:
        raise ConfigError(f"{name}.layer_decay must be in (0, 1], got {st.layer_decay} (e.g. 0.75; 1 turns it off)")
    if not st.head_lr_mult > 0:
        raise ConfigError(f"{name}.head_lr_mult must be positive, got {st.head_lr_mult} (1 keeps the base LR)")
    if st.clip_grad_norm is not None and not st.clip_grad_norm > 0:
        raise ConfigError(f"{name}.clip_grad_norm must be positive, got {st.clip_grad_norm} "
                          "(e.g. 1.0, or null for no clipping)")
    if st.warmup_epochs is not None:
        if st.warmup_steps is not None:
            raise ConfigError(f"{name}.warmup_steps ({st.warmup_steps}) and {name}.warmup_epochs "
                              f"({st.warmup_epochs}) are both set: give one (-o {name}.warmup_steps=null "
                              "to give the warm-up in epochs)")
        if st.warmup_epochs < 0:
            raise ConfigError(f"{name}.warmup_epochs must not be negative, got {st.warmup_epochs}")
    if not all(0.0 < f < 1.0 for f in st.decay_at) or any(a >= b for a, b in zip(st.decay_at, st.decay_at[1:])):
        raise ConfigError(f"{name}.decay_at must be increasing fractions of the run in (0, 1), got {st.decay_at} "
                          "(e.g. [0.3, 0.6, 0.9])")
    if not 0.0 < st.decay_factor <= 1.0:
        raise ConfigError(f"{name}.decay_factor must be in (0, 1], got {st.decay_factor} (e.g. 0.1)")
    if not 0.0 <= st.label_smoothing < 1.0:
        raise ConfigError(f"{name}.label_smoothing must be in [0, 1), got {st.label_smoothing} (e.g. 0.1; 0 is off)")
    if st.lr_scale == "none" and st.min_lr > st.lr:
        raise ConfigError(f"{name}.min_lr ({st.min_lr}) must not exceed {name}.lr ({st.lr})")


def check_head_and_backbone(m: ModelSection) -> None:
    """``model.head`` / ``model.head_init`` / ``model.act`` / ``model.pool`` are known kinds, the family
    options in range, ``model.backbone`` a known name."""
    for key, choices in (("head", HEADS), ("head_init", HEAD_INITS), ("act", ACTS), ("pool", POOLS)):
        value = getattr(m, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(choices)}"
            raise ConfigError(f"model.{key}: unknown {key} {value!r}; {hint}")
    try:
        check_family_options(m)  # output_dim, layer_scale
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    if m.backbone is not None:
        try:
            paddleclas_vit_config(m.backbone)
        except ValueError as exc:
            raise ConfigError(f"model.backbone: {exc}") from None
