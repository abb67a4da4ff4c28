"""scikit-learn's bundled handwritten digits: the offline demo dataset.

1,797 real 8x8 scans ship inside scikit-learn, so the whole pretrain-then-transfer
pipeline runs with no download: pretraining sees digits 0-4, the transfer stage
digits 5-9 (a new task for the same backbone).
"""
from __future__ import annotations

import numpy as np

from .arrays import Splits

ROLES = ("pretrain", "transfer")
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0  # fixed: the split never depends on the run's seed or the global RNG


def load_digits_splits(role: str = "pretrain") -> Splits:
    """Digits 0-4 (``role="pretrain"``) or 5-9 (``"transfer"``, relabelled 0-4).

    The 80/20 train/test split is stratified and always the same. Images come back
    as uint8 8x8x3 (grey replicated to RGB), 0..16 scaled to 0..255.
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import
    from sklearn.model_selection import train_test_split  # sklearn, as above

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    first = 0 if role == "pretrain" else 5
    digits = load_digits()
    keep = (digits.target >= first) & (digits.target < first + 5)
    labels = digits.target[keep].astype(np.int64) - first
    grey = np.rint(digits.images[keep] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(grey[:, :, :, None], 3, axis=3)

    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=_TEST_FRACTION,
                                           stratify=labels, random_state=_SPLIT_SEED)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return Splits(train_images=images[train_idx], train_labels=labels[train_idx],
                  test_images=images[test_idx], test_labels=labels[test_idx],
                  class_names=[str(d) for d in range(first, first + 5)])
