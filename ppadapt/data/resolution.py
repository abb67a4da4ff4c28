"""BiT's resolution rule (Kolesnikov et al. 2020, "BiT-HyperRule") as a stage option.

``resolution: bit``: images smaller than 96 x 96 pixels (by area) are trained at 128 px
(resized to 160, random crop of 128) and evaluated resized to 128; larger ones at 384
(resize 448, crop 384; evaluation resized to 384). ``resolution: fixed`` (the default)
uses ``model.img_size`` as it is.

The rule decides the model's input size, so it is applied to the config once, when a
fresh run is planned (:func:`resolve_resolution`): ``model.img_size`` becomes the crop
size, and run.json, the resume checkpoint, predict and export all see that size. A
checkpoint of another size (the pretraining run, PaddleClas weights) loads with its
position embedding resampled to the new patch grid
(:func:`ppadapt.runs.pretrained.adapt_state_dict`). The size of a dataset's images is
known for CIFAR (32) and digits (8); for an image folder it is the median of the first
few training images.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Config, check_geometry
from ..errors import ConfigError, DataError
from .images import decode_image, is_image_name

BIT_SMALL_AREA = 96 * 96
STORED_SIZES = {"cifar10": (32, 32), "cifar100": (32, 32), "digits": (8, 8)}
FOLDER_SAMPLE = 16  # images of an image folder looked at to find its size


@dataclass(frozen=True)
class BitSizes:
    resize: int  # training images are resized to this ...
    crop: int  # ... and randomly cropped to this, the model's input size (evaluation: resized to it)


def bit_sizes(height: int, width: int) -> BitSizes:
    """BiT's sizes for images of ``height`` x ``width``."""
    return BitSizes(160, 128) if height * width < BIT_SMALL_AREA else BitSizes(448, 384)


def stored_image_size(name: str, data_dir: str | Path | None = None) -> tuple[int, int]:
    """``(height, width)`` of dataset ``name``'s images as stored, without loading it."""
    if name in STORED_SIZES:
        return STORED_SIZES[name]
    train = Path(data_dir or "").expanduser() / "train"
    if not data_dir or not train.is_dir():
        raise DataError(f"image folder {train} not found (pass --data-dir DIR with DIR/train/<class>/*)")
    sizes = []
    for path in sorted(p for p in train.glob("*/*") if p.is_file() and is_image_name(p)):
        image = decode_image(path)
        if image is not None:
            sizes.append(image.shape[:2])
        if len(sizes) == FOLDER_SAMPLE:
            break
    if not sizes:
        raise DataError(f"no readable images in {train} to apply resolution: bit to (add images, or use "
                        "resolution: fixed)")
    height, width = np.median(np.asarray(sizes), axis=0)
    return int(height), int(width)


def stage_bit_sizes(cfg: Config, stage: str) -> BitSizes | None:
    """The stage's BiT sizes, or None with ``resolution: fixed``."""
    st = cfg.stage(stage)
    if st.resolution != "bit":
        return None
    return bit_sizes(*stored_image_size(st.dataset, st.data_dir))


def resolve_resolution(cfg: Config, stage: str, log: Callable[[str], None] = print) -> Config:
    """``cfg`` itself with ``resolution: fixed``; with ``bit``, a copy whose ``model.img_size``
    is BiT's crop size for the stage's images (ConfigError if the patch size does not fit it)."""
    sizes = stage_bit_sizes(cfg, stage)
    if sizes is None:
        return cfg
    st = cfg.stage(stage)
    height, width = stored_image_size(st.dataset, st.data_dir)
    out = copy.deepcopy(cfg)
    out.model.img_size = sizes.crop
    try:
        check_geometry(out.model)
    except ConfigError as exc:
        raise ConfigError(f"{stage}.resolution bit sets model.img_size to {sizes.crop}: {exc}") from None
    side = "below" if height * width < BIT_SMALL_AREA else "at least"
    log(f"{stage}.resolution bit: {st.dataset} images are {height}x{width}, {side} 96x96: model.img_size "
        f"{sizes.crop} (training: resize {sizes.resize}, random crop {sizes.crop}; evaluation: resize {sizes.crop})")
    return out
