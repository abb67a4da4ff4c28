"""Resizing on a grid for checkpoints of another geometry: the one resize matrix (bicubic or
bilinear, PIL-style antialiased when shrinking) and a grid of relative offsets resized with it
(BEiTv2's and Swin's relative position bias tables)."""
from __future__ import annotations

import math

import numpy as np


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _linear(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


def resize_matrix(old: int, new: int, mode: str = "bicubic") -> np.ndarray:
    """The ``new x old`` matrix of resizing a 1-D signal (float64); separable for 2-D.

    Enlarging (or equal size) reproduces ``paddle.nn.functional.interpolate(mode,
    align_corners=False)``; shrinking is antialiased like PIL / ``antialias=True``.
    """
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    if old < 1 or new < 1:
        raise ValueError(f"sizes must be positive, got {old} -> {new}")
    scale = old / new
    mat = np.zeros((new, old))
    if new >= old:
        taps = np.arange(-1, 3) if mode == "bicubic" else np.arange(0, 2)
        for i in range(new):
            x = (i + 0.5) * scale - 0.5
            x0 = math.floor(x)
            for j in x0 + taps:
                w = _cubic(np.array(x - j), -0.75) if mode == "bicubic" else _linear(np.array(x - j))
                mat[i, min(max(j, 0), old - 1)] += float(w)
    else:
        j = np.arange(old) + 0.5
        for i in range(new):
            t = (j - (i + 0.5) * scale) / scale
            w = _cubic(t, -0.5) if mode == "bicubic" else _linear(t)
            mat[i] = w / w.sum()
    return mat


def resample_offset_grid(grid: np.ndarray, new_side: int, mode: str = "bicubic") -> np.ndarray:
    """``[side * side, C]`` values on a square grid (a relative position bias table's offsets,
    per head) resized to ``new_side`` a side; the same array when the side is the same."""
    g = np.asarray(grid)
    side = math.isqrt(g.shape[0])
    if g.ndim != 2 or side * side != g.shape[0]:
        raise ValueError(f"a grid of offsets must be [side**2, C], got {list(g.shape)}")
    if side == new_side:
        return grid
    a = resize_matrix(side, new_side, mode)
    out = np.einsum("ij,jkc,lk->ilc", a, g.astype(np.float64).reshape(side, side, -1), a)
    return out.reshape(new_side * new_side, -1).astype(g.dtype)
