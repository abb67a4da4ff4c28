"""MixUp and CutMix: a batch-level transform, the training loader's ``collate_fn``.

MixUp (Zhang et al. 2018) blends every image of a batch with another one of the same
batch, ``lam * x + (1 - lam) * x[perm]``; CutMix (Yun et al. 2019) pastes a box of the
other image instead, ``lam`` being the part of the image left as it was. The targets
become the same mix of the two one-hot labels, ``lam * onehot(y) + (1 - lam) *
onehot(y[perm])``, so the loss must take soft targets
(:class:`ppadapt.training.mixing.SoftTargetLoss`).

``lam`` is drawn from Beta(alpha, alpha); with both alphas positive each batch is MixUp or
CutMix with probability 0.5 each (as timm's ``Mixup``), and ``mix_prob`` is the chance
that a batch is mixed at all. The CutMix box is clipped to the image and ``lam`` is then
corrected to the area actually kept.

Every draw of a batch comes from ``np.random.default_rng([seed, epoch, batch, rank, tag])``
(the batch's position in this rank's epoch, which the seeded sampler hands over with
each item, see :mod:`ppadapt.data.sampler`): a function of where the batch is in the run
and nothing else, so a resumed run mixes exactly as the uninterrupted one, whichever
worker process collates the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Last entry of the seed of a batch's generator: keeps these streams apart from the
# per-sample ones ([seed, epoch, index]) whatever the numbers.
_STREAM = 0x6D6978  # "mix"


@dataclass(frozen=True)
class MixDraw:
    """What happens to one batch: ``kind`` ("none", "mixup" or "cutmix"), the weight
    ``lam`` of each image's own label, the partner of each image (``perm``) and, for CutMix,
    the pasted box ``(top, left, bottom, right)`` (exclusive ends)."""

    kind: str
    lam: float
    perm: np.ndarray
    box: tuple[int, int, int, int] | None = None


class BatchMixer:
    """A ``collate_fn`` that stacks a batch of ``(image, label, [epoch, batch])`` items and
    mixes it: returns ``[images float32 [N, 3, H, W], targets float32 [N, num_classes]]``.

    A batch that the draw leaves unmixed still gets one-hot float targets, so every
    training batch has the same form.
    """

    SWITCH_PROB = 0.5  # with both alphas > 0: the chance of CutMix rather than MixUp

    def __init__(self, num_classes: int, seed: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mix_prob: float = 1.0, rank: int = 0) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"need alphas >= 0 and mix_prob in [0, 1], got {mixup_alpha}, {cutmix_alpha}, {mix_prob}")
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.mix_prob = float(mix_prob)
        self.rank = int(rank)

    def generator(self, epoch: int, batch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(batch), self.rank, _STREAM])

    def draw(self, epoch: int, batch: int, size: int, height: int, width: int) -> MixDraw:
        """The mixing of batch ``batch`` of ``epoch`` (``size`` images of ``height`` x ``width``)."""
        rng = self.generator(epoch, batch)
        u = rng.random(2)  # mix or not; CutMix or MixUp
        identity = np.arange(size)
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or u[0] >= self.mix_prob:
            return MixDraw("none", 1.0, identity)
        cutmix = use_cutmix and (not use_mixup or u[1] < self.SWITCH_PROB)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if cutmix else self.mixup_alpha])))
        perm = rng.permutation(size)
        if not cutmix:
            return MixDraw("mixup", lam, perm)
        box = cutmix_box(lam, height, width, rng)
        top, left, bottom, right = box
        kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return MixDraw("cutmix", kept, perm, box)

    def one_hot(self, labels: np.ndarray) -> np.ndarray:
        out = np.zeros((len(labels), self.num_classes), dtype=np.float32)
        out[np.arange(len(labels)), labels] = 1.0
        return out

    def mix(self, images: np.ndarray, labels: np.ndarray, draw: MixDraw) -> tuple[np.ndarray, np.ndarray]:
        """``(images, soft targets)`` of a batch (images N x C x H x W float32, labels [N] ints)."""
        targets = self.one_hot(labels)
        if draw.kind == "none":
            return images, targets
        lam, perm = np.float32(draw.lam), draw.perm
        targets = lam * targets + (np.float32(1.0) - lam) * targets[perm]
        if draw.kind == "mixup":
            images = lam * images + (np.float32(1.0) - lam) * images[perm]
        else:
            top, left, bottom, right = draw.box
            images = images.copy()
            images[:, :, top:bottom, left:right] = images[perm][:, :, top:bottom, left:right]
        return images.astype(np.float32, copy=False), targets.astype(np.float32, copy=False)

    def __call__(self, samples: list) -> list[np.ndarray]:
        images = np.stack([s[0] for s in samples]).astype(np.float32, copy=False)
        labels = np.concatenate([np.asarray(s[1], dtype=np.int64).reshape(-1) for s in samples])
        epoch, batch = (int(v) for v in samples[0][2])
        draw = self.draw(epoch, batch, len(samples), images.shape[2], images.shape[3])
        return list(self.mix(images, labels, draw))


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about ``1 - lam`` of the image's area (sides ``sqrt(1 - lam)`` of the image's),
    centred on a uniform random pixel and clipped to the image: ``(top, left, bottom, right)``."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom, right
