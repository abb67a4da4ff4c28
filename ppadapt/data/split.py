"""A validation set carved out of the training images, so the best epoch (and any
hyper-parameter) can be chosen without looking at the test set.

The split is stratified (each class gives ``round(n_class * fraction)`` of its images)
and a function of ``(labels, fraction, seed)`` only: its own generator, never the
global one, so the same config gives the same split in a fresh, a resumed or a
distributed run, and nothing else a run draws shifts.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import DataError

_SPLIT_KEY = 0x76616C  # "val": keeps this generator apart from the other uses of the seed


def val_count(n: int, fraction: float) -> int:
    """Validation images of a class with ``n`` images: ``n * fraction`` rounded half up."""
    return int(math.floor(n * fraction + 0.5))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)`` of ``labels``, both sorted (the data keep their order).

    Each class's validation images are drawn by ``np.random.default_rng([seed, key, class])``.
    """
    labels = np.asarray(labels)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = val_count(len(members), fraction)
        rng = np.random.default_rng([int(seed), _SPLIT_KEY, int(label)])
        val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def check_split(labels: np.ndarray, fraction: float, class_names: Sequence[str], key: str) -> None:
    """DataError (one line) when ``fraction`` leaves a class without validation images or
    without training images; ``key`` is the config key to fix (``transfer.val_split``)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    no_val = [c for c, n in enumerate(counts) if val_count(int(n), fraction) == 0]
    if no_val:
        need = max(0.5 / max(int(counts[c]), 1) for c in no_val)
        shown = _classes(no_val, class_names, counts)
        raise DataError(f"{key}={fraction:g} leaves no validation images for class(es) {shown}: each class "
                        f"gives round(images * {key.rsplit('.', 1)[-1]}); set {key} to at least "
                        f"{math.ceil(need * 100) / 100:g}, or use more training images")
    no_train = [c for c, n in enumerate(counts) if int(n) - val_count(int(n), fraction) < 1]
    if no_train:
        shown = _classes(no_train, class_names, counts)
        raise DataError(f"{key}={fraction:g} leaves no training images for class(es) {shown}: the dataset is "
                        f"too small to hold out a validation share (lower {key}, or use more training images)")


def _classes(indices: list[int], class_names: Sequence[str], counts: np.ndarray, shown: int = 5) -> str:
    parts = [f"{class_names[c]} ({int(counts[c])} image{'s' if counts[c] != 1 else ''})" for c in indices[:shown]]
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(parts) + more
