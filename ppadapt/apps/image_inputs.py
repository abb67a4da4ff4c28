"""What the predictors take and give: images in any form as uint8 RGB, image paths from
files, folders and patterns, and the top-k output form. Shared by :class:`~.predict.Predictor`,
the multi-task predictor and the command lines, below both so neither imports the other's
module for it."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..data.images import IMAGE_SUFFIX_TEXT, IMAGE_SUFFIXES, decode_image, is_image_name
from ..errors import DataError

DEFAULT_TOPK = 5
DEFAULT_BATCH = 32


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image file at ``path`` as uint8 H x W x 3 RGB; DataError if it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    image = decode_image(path)
    if image is None:
        raise DataError(f"cannot read image {path}: not an image file, or corrupt")
    return image


def to_rgb(image: Any) -> np.ndarray:
    """A path, PIL image or numpy array as uint8 H x W x 3 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise TypeError(f"an image must be a path, a PIL image or a numpy array, got {type(image).__name__}")


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict]:
    """``{"labels", "scores"}`` of each row of ``probabilities``: the ``k`` most probable
    classes first (ties in class order), the one output form of every predictor."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [{"labels": [class_names[i] for i in row], "scores": [float(p[i]) for i in row]}
            for p, row in zip(probabilities, order)]


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise DataError(f"an image array must be uint8 (0..255), got {image.dtype}; convert it, e.g. "
                        "(x * 255).round().astype('uint8') for values in 0..1")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        if image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"an image array must be H x W x 3 RGB (or H x W grey, H x W x 4 RGBA), "
                    f"got shape {tuple(image.shape)}")


def expand_images(specs: Iterable[str]) -> list[Path]:
    """Files, folders (searched recursively) and glob patterns (``**`` recursive), as files.

    A file named explicitly is taken whatever its name; folders and patterns give
    only files with an image suffix (:data:`ppadapt.data.images.IMAGE_SUFFIXES`), hidden ones left out.
    Order: as given; a folder's images and a pattern's matches sorted by path.
    Duplicates are kept once. A path that does not exist, a pattern that matches
    nothing and a folder without images are DataErrors.
    """
    out: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise DataError(f"no images ({IMAGE_SUFFIX_TEXT}) in folder {path}")
            out += found
        elif path.is_file():
            out.append(path)
        elif any(c in spec for c in "*?["):  # a pattern: expanded here, so quoting it works
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            found = []
            for match in map(Path, matches):
                if match.is_dir():
                    found += _folder_images(match)
                elif match.is_file() and match.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(match)
            if not found:
                raise DataError(f"no image file matches {spec!r}")
            out += found
        else:
            raise DataError(f"image not found: {path}")
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if is_image_name(f)]
    return found
