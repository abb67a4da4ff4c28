"""In-memory image arrays shared by every dataset: splits, class subsets, resizing.

All loaders decode to one common form, uint8 HWC images plus int64 labels, so
that class selection, resizing and the Paddle ``Dataset`` wrapper exist once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import paddle

from ..errors import DataError


@dataclass(frozen=True)
class Splits:
    """Decoded train and test images (uint8, N x H x W x 3) with int64 labels; ``val_*``: a
    given validation split (an image folder's ``val_dir``), None when there is none."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one HWC image to ``size`` x ``size``: bilinear to enlarge, area to shrink
    (area averaging avoids the aliasing that bilinear gives when downsampling)."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def select_classes(splits: Splits, classes: Sequence[int] | None) -> Splits:
    """Keep only ``classes`` (original indices), relabelled 0..k-1 in the given order.

    ``None`` or an empty list keeps every class, matching the config's meaning of
    an empty ``classes`` key.
    """
    if not classes:
        return splits
    count = len(splits.class_names)
    wanted = list(classes)
    bad = [c for c in wanted if isinstance(c, bool) or not isinstance(c, (int, np.integer))
           or not 0 <= c < count]
    if bad:
        raise DataError(f"classes {bad} out of range: this dataset has {count} classes, indices 0..{count - 1} "
                        "(fix the classes list)")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"classes {wanted} lists a class twice (give each class index once)")
    if len(wanted) < 2:
        raise DataError(f"classes {wanted} selects fewer than 2 classes (a classifier needs at least 2)")
    mapping = np.full(count, -1, dtype=np.int64)
    mapping[wanted] = np.arange(len(wanted))

    def pick(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = mapping[labels] >= 0
        return images[keep], mapping[labels[keep]]

    train_images, train_labels = pick(splits.train_images, splits.train_labels)
    test_images, test_labels = pick(splits.test_images, splits.test_labels)
    val_images, val_labels = (None, None) if splits.val_labels is None else pick(splits.val_images,
                                                                                 splits.val_labels)
    return Splits(train_images, train_labels, test_images, test_labels,
                  [splits.class_names[c] for c in wanted], val_images, val_labels)


class ArrayDataset(paddle.io.Dataset):
    """Images held in memory, transformed per item.

    Items are ``(image, label)``: the transform's float32 CHW array and an int64
    array of shape [1], so a ``DataLoader`` batch has labels of shape [B, 1] as
    ``paddle.nn.CrossEntropyLoss`` and ``paddle.metric.Accuracy`` expect.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 transform: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.transform(self.images[index]), np.array([self.labels[index]], dtype=np.int64)
