"""Per-image transforms: one HWC uint8 RGB image in, one normalised float32 CHW array out.

Written directly with numpy and OpenCV rather than ``paddle.vision.transforms``
because on a CPU the data pipeline competes with the model for the same cores:
one call does the whole chain on a 32x32 image in tens of microseconds.

Training pipelines (a stage's ``augmentation``, built by :class:`Pipeline`):

* ``tutorial``: :class:`TrainTransform`, the AI Studio tutorial's chain (the default);
* ``crop_flip``: :class:`CropFlipTransform`, zero-pad and random crop plus a horizontal
  flip (the CIFAR classic); with BiT's resolution rule, resize up and random crop instead;
* ``rrc_flip``: :class:`RandomResizedCropFlip`, Inception-style random-resized crop plus
  a flip (the official AdaptFormer image recipe);
* ``none``: the evaluation transform.

Evaluation (``eval_resize``): ``none`` resizes to the model's size (squashing a
non-square image), ``resize_center_crop`` resizes the shorter side to ``img_size / 0.875``
and takes the centre ``img_size`` square, as ImageNet recipes evaluate.

Randomness: by default the draws come from numpy's global RNG (``np.random``),
so ``np.random.seed`` makes a run reproducible, and Paddle's ``DataLoader``
reseeds it differently in each worker process. Pass ``rng`` (a
``np.random.Generator``) to use a private stream instead, or give each call its own
generator (``transform(image, rng=...)``): training does, with one generator per
(seed, epoch, sample) (:mod:`ppadapt.data.sampler`), so that a resumed run augments
every sample exactly as the uninterrupted run did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .arrays import resize_image

# ITU-R 601 luma weights, as used to find the mean grey level for contrast.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
AUGMENTATIONS = ("tutorial", "crop_flip", "rrc_flip", "none")  # a stage's ``augmentation`` (config/schema.py)
EVAL_RESIZES = ("none", "resize_center_crop")  # a stage's ``eval_resize``
# ``resize_center_crop``: the crop keeps this fraction of the resized shorter side (224 of 256).
CENTER_CROP_FRACTION = 0.875


class EvalTransform:
    """Normalise only: ``(x / 255 - mean) / std`` per channel, HWC to CHW.

    Deterministic, so evaluation of the same checkpoint always gives the same numbers.
    With ``img_size``, an image of another size is first resized to it, per item, so that
    a dataset kept at its stored size (CIFAR's 32 px) can feed a 224 px model without
    holding the upsampled copies in memory. ``center_crop=True`` (``eval_resize:
    resize_center_crop``) resizes the shorter side to ``img_size / 0.875`` and keeps the
    centre ``img_size`` square instead (:func:`resize_center_crop`).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], img_size: int | None = None, *,
                 center_crop: bool = False) -> None:
        if img_size is not None and img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if center_crop and img_size is None:
            raise ValueError("center_crop needs img_size")
        self.img_size = img_size
        self.center_crop = center_crop
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
        if self.center_crop:
            image = resize_center_crop(image, self.img_size)
        elif self.img_size is not None and image.shape[:2] != (self.img_size, self.img_size):
            image = resize_image(image, self.img_size)
        return self.normalise(image)


class RandomTransform:
    """A training transform whose draws come from the generator it is called with
    (``transform(image, rng=...)``): :class:`~ppadapt.data.sampler.SeededDataset` passes
    each sample's own generator to every subclass, so augmentation is a function of
    (seed, epoch, index) and a resumed run repeats it exactly.

    Without ``rng`` the transform's own generator is used, else numpy's global one. Draws
    are only ``source.random(n)`` (uniform in [0, 1)), which both a
    ``np.random.Generator`` and the ``np.random`` module provide.
    """

    rng: np.random.Generator | None = None

    def _source(self, rng: np.random.Generator | None):
        return rng if rng is not None else (np.random if self.rng is None else self.rng)


class TrainTransform(RandomTransform):
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
        return self._source(rng).random(6)

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


class CropFlipTransform(RandomTransform):
    """``crop_flip``: a random ``img_size`` crop, then a horizontal flip with probability 0.5
    (unless ``flip=False``), then normalisation; nothing else, so it is the plain geometric
    baseline the papers use.

    The crop is taken from the image resized to ``resize_to`` (default ``img_size``) and
    zero-padded by ``padding`` pixels (default ``img_size // 8``: the CIFAR classic
    ``RandomCrop(32, padding=4)``). BiT's resolution rule passes ``resize_to=160, padding=0``
    for a 128 crop: resize up, then crop.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], flip: bool = True,
                 rng: np.random.Generator | None = None, *, resize_to: int | None = None,
                 padding: int | None = None) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = img_size
        self.resize_to = img_size if resize_to is None else resize_to
        self.padding = img_size // 8 if padding is None else padding
        if self.resize_to + 2 * self.padding < img_size or self.padding < 0:
            raise ValueError(f"cannot crop {img_size} from {self.resize_to} padded by {self.padding}")
        self.flip = flip
        self.rng = rng
        self._normalise = EvalTransform(mean, std).normalise

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        u = self._source(rng).random(3)  # crop y, crop x, flip
        base, pad, size = self.resize_to, self.padding, self.img_size
        if image.shape[:2] != (base, base):
            image = resize_image(image, base)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        room = base + 2 * pad - size + 1
        top, left = int(u[0] * room), int(u[1] * room)
        image = image[top:top + size, left:left + size]
        if self.flip and u[2] < 0.5:
            image = image[:, ::-1]
        return self._normalise(image)


class RandomResizedCropFlip(RandomTransform):
    """``rrc_flip``: Inception's random-resized crop to ``img_size`` (a box of ``scale`` of
    the image's area and aspect ratio in ``ratio``, log-uniform), then a horizontal flip with
    probability 0.5 (unless ``flip=False``), then normalisation: the official AdaptFormer
    recipe for images (``RandomResizedCrop(224, scale=(0.08, 1))`` + flip).

    The box is cut from the image as stored (CIFAR's 32 px) and resized once to ``img_size``.
    """

    ATTEMPTS = 10

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], flip: bool = True,
                 rng: np.random.Generator | None = None, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        self.img_size = img_size
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.rng = rng
        self._normalise = EvalTransform(mean, std).normalise

    def crop_box(self, height: int, width: int, source) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop: up to ``ATTEMPTS`` draws of an area fraction and a
        log-uniform aspect ratio until the box fits; otherwise the centre box of the whole image
        with the aspect ratio clamped to ``ratio``."""
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.ATTEMPTS):
            u = source.random(4)
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(lo + (hi - lo) * u[1])
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        source = self._source(rng)
        top, left, h, w = self.crop_box(image.shape[0], image.shape[1], source)
        flip = source.random(1)[0] < 0.5
        image = resize_hw(image[top:top + h, left:left + w], self.img_size, self.img_size)
        if self.flip and flip:
            image = image[:, ::-1]
        return self._normalise(image)


def resize_hw(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` x ``width`` as :func:`~ppadapt.data.arrays.resize_image` does:
    area averaging to shrink both sides, bilinear otherwise."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if height < h and width < w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)


def center_crop_shorter_side(size: int, fraction: float = CENTER_CROP_FRACTION) -> int:
    """The shorter side :func:`resize_center_crop` resizes to before cropping ``size``."""
    return max(size, int(math.floor(size / fraction)))


def resize_center_crop(image: np.ndarray, size: int, fraction: float = CENTER_CROP_FRACTION) -> np.ndarray:
    """The shorter side resized to ``floor(size / fraction)`` (aspect kept), then the centre
    ``size`` x ``size`` square: ImageNet-style evaluation (224 from 256 at 0.875)."""
    h, w = image.shape[:2]
    short = center_crop_shorter_side(size, fraction)
    if h <= w:
        new_h, new_w = short, max(short, int(round(w * short / h)))
    else:
        new_h, new_w = max(short, int(round(h * short / w))), short
    image = resize_hw(image, new_h, new_w)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image[top:top + size, left:left + size]


@dataclass(frozen=True)
class Pipeline:
    """A stage's choice of preprocessing (its ``augmentation`` and ``eval_resize`` keys), and
    ``train_resize``: with BiT's resolution rule, the size ``crop_flip`` crops ``img_size``
    from (:mod:`ppadapt.data.resolution`). The default is today's: the tutorial chain for
    training, a plain resize for evaluation."""

    augmentation: str = "tutorial"
    eval_resize: str = "none"
    train_resize: int | None = None

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if self.eval_resize not in EVAL_RESIZES:
            raise ValueError(f"eval_resize must be one of {EVAL_RESIZES}, got {self.eval_resize!r}")

    def decode_size(self, img_size: int) -> int:
        """The size to decode images to when a loader must pick one (image folders): large
        enough for the training crop."""
        return max(img_size, self.train_resize or 0)

    def transforms(self, img_size: int, mean: Sequence[float], std: Sequence[float], *, flip: bool = True,
                   augment: bool = True) -> tuple:
        """``(train, eval)`` transforms; ``augment=False`` (the older key) or ``augmentation:
        none`` gives the train split the eval transform. ``flip=False`` (digits) never mirrors."""
        eval_transform = EvalTransform(mean, std, img_size, center_crop=self.eval_resize == "resize_center_crop")
        if not augment or self.augmentation == "none":
            return eval_transform, eval_transform
        if self.augmentation == "tutorial":
            return TrainTransform(img_size, mean, std, flip=flip), eval_transform
        if self.augmentation == "rrc_flip":
            return RandomResizedCropFlip(img_size, mean, std, flip=flip), eval_transform
        if self.train_resize is None:  # crop_flip
            return CropFlipTransform(img_size, mean, std, flip=flip), eval_transform
        return CropFlipTransform(img_size, mean, std, flip=flip, resize_to=self.train_resize, padding=0), eval_transform


