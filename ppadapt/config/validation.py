"""Checks a type check cannot express: ranges, the model's geometry, the methods' options.

Each failure is one :class:`~ppadapt.errors.ConfigError` line, raised before any data is
read or any model is built.
"""
from __future__ import annotations

from ..errors import ConfigError
from .schema import STAGES, SCHEDULES, Config, ModelSection, StageConfig
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
            if getattr(st, key) < 0:
                raise ConfigError(f"{name}.{key} must not be negative, got {getattr(st, key)}")
        if st.schedule not in SCHEDULES:
            raise ConfigError(f"{name}.schedule must be one of {SCHEDULES}, got {st.schedule!r}")
        check_validation(st, name)
    check_geometry(cfg.model)
    check_methods(cfg)


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
