"""Per-image transforms: one HWC uint8 RGB image in, one normalised float32 CHW array out.

Written directly with numpy and OpenCV rather than ``paddle.vision.transforms``
because on a CPU the data pipeline competes with the model for the same cores:
one call does the whole chain on a 32x32 image in tens of microseconds.

Randomness: by default the draws come from numpy's global RNG (``np.random``),
so ``np.random.seed`` makes a run reproducible, and Paddle's ``DataLoader``
reseeds it differently in each worker process. Pass ``rng`` (a
``np.random.Generator``) to use a private stream instead, or give each call its own
generator (``transform(image, rng=...)``): training does, with one generator per
(seed, epoch, sample) (:mod:`ppadapt.data.sampler`), so that a resumed run augments
every sample exactly as the uninterrupted run did.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .arrays import resize_image

# ITU-R 601 luma weights, as used to find the mean grey level for contrast.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class EvalTransform:
    """Normalise only: ``(x / 255 - mean) / std`` per channel, HWC to CHW.

    Deterministic, so evaluation of the same checkpoint always gives the same numbers.
    With ``img_size``, an image of another size is first resized to it, per item, so that
    a dataset kept at its stored size (CIFAR's 32 px) can feed a 224 px model without
    holding the upsampled copies in memory.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], img_size: int | None = None) -> None:
        if img_size is not None and img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = img_size
        mean_arr = np.asarray(mean, dtype=np.float32)
        std_arr = np.asarray(std, dtype=np.float32)
        if mean_arr.shape != (3,) or std_arr.shape != (3,) or np.any(std_arr <= 0):
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        # Folded into one multiply-add per pixel.
        self.scale = 1.0 / (255.0 * std_arr)
        self.offset = -mean_arr / std_arr

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Normalise an HWC image with values in 0..255 (any dtype) to float32 CHW."""
        out = image.astype(np.float32)  # always a copy: the caller's array stays untouched
        out *= self.scale
        out += self.offset
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.img_size is not None and image.shape[:2] != (self.img_size, self.img_size):
            image = resize_image(image, self.img_size)
        return self.normalise(image)


class TrainTransform:
    """The AI Studio tutorial's augmentation, in its order.

    1. random crop of ``img_size`` after zero padding of ``img_size // 8`` pixels
       (4 at 32x32, as in ``RandomCrop(32, padding=4)``);
    2. random brightness and contrast, each a factor in [1 - 0.2, 1 + 0.2];
    3. random horizontal flip with probability 0.5, unless ``flip=False``
       (mirrored digits are other symbols);
    4. random rotation within +-15 degrees, bilinear, corners filled with 0;
    5. mean/std normalisation as in :class:`EvalTransform`.

    An image of another size is first resized to ``img_size``.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], flip: bool = True,
                 rng: np.random.Generator | None = None, *, brightness: float = 0.2,
                 contrast: float = 0.2, degrees: float = 15.0) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = img_size
        self.padding = img_size // 8
        self.flip = flip
        self.brightness = brightness
        self.contrast = contrast
        self.degrees = degrees
        self.rng = rng
        self._normalise = EvalTransform(mean, std).normalise

    def _draws(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Six uniform numbers in [0, 1): crop y, crop x, brightness, contrast, flip, angle.

        One call per image keeps the RNG overhead negligible.
        """
        source = rng if rng is not None else (np.random if self.rng is None else self.rng)
        return source.random(6)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Augment ``image``; ``rng`` (this sample's own generator, see
        :class:`ppadapt.data.sampler.SeededDataset`) overrides the transform's source."""
        size, pad = self.img_size, self.padding
        u = self._draws(rng)
        if image.shape[:2] != (size, size):
            image = resize_image(image, size)

        if pad:
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            top, left = int(u[0] * (2 * pad + 1)), int(u[1] * (2 * pad + 1))
            image = padded[top:top + size, left:left + size]

        out = image.astype(np.float32)
        out *= 1.0 + self.brightness * (2.0 * u[2] - 1.0)
        np.clip(out, 0.0, 255.0, out=out)
        factor = 1.0 + self.contrast * (2.0 * u[3] - 1.0)
        grey = float((out @ _LUMA).mean())
        out *= factor
        out += (1.0 - factor) * grey
        np.clip(out, 0.0, 255.0, out=out)

        if self.flip and u[4] < 0.5:
            out = out[:, ::-1]

        angle = self.degrees * (2.0 * u[5] - 1.0)
        matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, 1.0)
        rotated = cv2.warpAffine(np.ascontiguousarray(out), matrix, (size, size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return self._normalise(rotated)
