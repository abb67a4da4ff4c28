"""Image files: which names count as images, and decoding one to RGB.

One list of suffixes serves training on an image folder (:mod:`.folder`) and
``predict.py``'s folders and glob patterns, so a folder laid out for training gives
prediction exactly the files training read. A file named explicitly to
``predict.py`` is read whatever its suffix (GIF and TIFF decode too).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
IMAGE_SUFFIX_TEXT = ", ".join(sorted(IMAGE_SUFFIXES))  # ".bmp, .jpeg, .jpg, .png, .webp", for messages


def is_image_name(path: str | Path) -> bool:
    """True for a visible file name with an image suffix (any case): what folders and
    patterns pick up."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def first_paths(paths: Sequence[Path], limit: int = 3) -> str:
    """``"a.png, b.png, c.png, ..."``: the files a skip warning or error names."""
    return ", ".join(str(p) for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def decode_image(path: str | Path) -> np.ndarray | None:
    """The image at ``path`` as uint8 H x W x 3 RGB, or None when it cannot be decoded.

    OpenCV first (fast; grey, alpha and 16-bit are converted to 8-bit colour),
    Pillow as the fallback for what this OpenCV build cannot read.
    """
    try:
        encoded = np.fromfile(str(path), dtype=np.uint8)  # unlike cv2.imread, handles any path name
    except OSError:
        return None
    with _native_stderr_silenced():  # libpng prints "libpng error: ..." for a corrupt PNG
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    if image is not None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(path) as pil:
            return np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


@contextlib.contextmanager
def _native_stderr_silenced():
    """Discard what C libraries write straight to file descriptor 2 during the block: an
    unreadable image is reported once, by the caller, not also by the decoder."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebook kernels): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
