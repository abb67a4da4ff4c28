"""MixUp / CutMix in a training stage: the loader's mixing ``collate_fn`` and the loss that
takes its soft targets.

The mixing itself is :class:`ppadapt.data.mixing.BatchMixer`, run by the training
``DataLoader`` as its ``collate_fn`` (it sees the whole batch, and which batch it is), so
``paddle.Model`` is used as it is: its ``train_batch`` gets images and float targets
``[N, classes]``. The eval loader is untouched (hard int64 labels ``[N, 1]``), so the one
loss ``paddle.Model.prepare`` takes must accept both: :class:`SoftTargetLoss`.

Train accuracy with mixed targets: ``paddle.metric.Accuracy`` takes a target with more
than one column as one-hot and compares with its argmax, so a prediction counts as right
when its top class is the label with the larger share of the mix (``lam >= 0.5``: the
image's own). Evaluation accuracy is unchanged.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..config import StageConfig
from ..data.mixing import BatchMixer


def mixing_enabled(st: StageConfig) -> bool:
    return st.mixup_alpha > 0 or st.cutmix_alpha > 0


def make_mixer(st: StageConfig, num_classes: int, seed: int, rank: int) -> BatchMixer | None:
    """The stage's mixing ``collate_fn``, or None when MixUp and CutMix are off."""
    if not mixing_enabled(st):
        return None
    return BatchMixer(num_classes, seed, mixup_alpha=st.mixup_alpha, cutmix_alpha=st.cutmix_alpha,
                      mix_prob=st.mix_prob, rank=rank)


class SoftTargetLoss(paddle.nn.Layer):
    """Cross-entropy against soft targets (float ``[N, classes]``: the mixed batches), and
    ``hard`` (the stage's loss) for hard int64 labels (evaluation).

    ``smoothing``: label smoothing folded into the soft targets, ``t * (1 - s) + s / classes``
    (the same as mixing smoothed one-hot labels, as timm does); the hard path keeps whatever
    ``hard`` does.
    """

    def __init__(self, hard: paddle.nn.Layer, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.hard = hard
        self.smoothing = float(smoothing)

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        if not paddle.is_floating_point(label):
            return self.hard(logits, label)
        if self.smoothing:
            label = label * (1.0 - self.smoothing) + self.smoothing / label.shape[-1]
        return F.cross_entropy(logits, label, soft_label=True)


def soft_target_loss(loss: paddle.nn.Layer, st: StageConfig, smoothing: float = 0.0) -> paddle.nn.Layer:
    """The loss ``paddle.Model`` trains with: ``loss`` itself unless the stage mixes batches,
    then ``loss`` wrapped to take the mixed soft targets as well."""
    return SoftTargetLoss(loss, smoothing) if mixing_enabled(st) else loss
