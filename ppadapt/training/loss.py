"""The training loss of a stage, built from its config section.

:func:`make_loss` is the one place that decides it, so a loss on soft targets (MixUp,
CutMix) plugs in here: :class:`SmoothedCrossEntropy` already takes soft targets
(``[N, classes]`` floats, e.g. mixed one-hot vectors) besides class indices.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..config import Config


class SmoothedCrossEntropy(paddle.nn.Layer):
    """Cross-entropy against smoothed targets ``(1 - smoothing) * t + smoothing / classes``
    (Szegedy et al. 2016), averaged over the batch.

    ``t`` is the one-hot vector of an index label (``[N, 1]`` or ``[N]`` int64) or a soft
    target (``[N, classes]`` float). Written here rather than with
    ``paddle.nn.CrossEntropyLoss(label_smoothing=...)``, which Paddle 3.3 cannot run on CPU
    with index labels (no int64 ``label_smooth`` kernel).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        logp = F.log_softmax(logits, axis=-1)
        if paddle.is_floating_point(label):  # soft targets
            nll = -(label.astype(logp.dtype) * logp).sum(axis=-1)
        else:
            nll = -paddle.take_along_axis(logp, label.reshape([-1, 1]), axis=-1).squeeze(-1)
        uniform = -logp.mean(axis=-1)  # cross-entropy against the uniform distribution
        return ((1.0 - self.smoothing) * nll + self.smoothing * uniform).mean()


def make_loss(cfg: Config, stage: str) -> paddle.nn.Layer:
    """The loss of ``stage``: Paddle's cross-entropy (as before), or with ``label_smoothing``
    above 0 :class:`SmoothedCrossEntropy`."""
    st = cfg.stage(stage)
    if st.label_smoothing == 0.0:
        return paddle.nn.CrossEntropyLoss()
    return SmoothedCrossEntropy(st.label_smoothing)
