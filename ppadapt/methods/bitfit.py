"""BitFit (Ben Zaken et al., 2021, arXiv 2106.10199) on a plain ViT.

BitFit trains only the bias terms of the backbone (plus the new head). Nothing
is injected, so :func:`apply_bitfit` only validates and records the choice; the
method lives entirely in :func:`is_bitfit_parameter`, the parameters it trains.

"Every bias" means every parameter whose name ends in ``.bias``: the patch
embedding convolution, each block's qkv / attention projection / fc1 / fc2
linears, and the LayerNorm biases (``norm1``, ``norm2`` and the final
``norm``), as in the paper, which tunes all additive bias terms. On ViT-B/16
with ``qkv_bias=True`` that is 102,912 parameters, head excluded.

Note on the key part of ``attn.qkv.bias``: softmax is invariant to a vector
added to every key, so that slice gets a zero gradient mathematically; it is
still counted, as in every BitFit ViT implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

import paddle.nn as nn

from .base import Tuner


@dataclass
class BitFitConfig:
    """BitFit has no options: the authors tune every bias term of the backbone."""


class BitFitTuner(Tuner):
    """Attaches nothing: the method is which parameters train."""

    name = "bitfit"
    summary = "BitFit (Ben Zaken et al. 2021): only the biases"
    title = "BitFit"
    config = BitFitConfig

    def check_model(self, model, cfg):
        if not any(is_bitfit_parameter(name) for name, _ in model.named_parameters()):
            raise ValueError("the model has no bias parameters for BitFit to train")

    def owns(self, name: str) -> bool:
        return is_bitfit_parameter(name)


def apply_bitfit(model: nn.Layer, config: BitFitConfig | None = None) -> list[nn.Layer]:
    """Record BitFit on ``model`` (nothing is injected); returns ``[]``.

    Raises ``ValueError`` if BitFit was already applied or the model has no bias.
    """
    return BITFIT.apply(model, config)


def is_bitfit_parameter(name: str) -> bool:
    """True for every backbone bias (``*.bias``), LayerNorm and patch embedding included.

    The classifier is not the method's: ``head.*`` is left to the caller, like
    for every other method, so ``head.bias`` is False here.
    """
    if name.startswith("head.") or ".head." in name:
        return False
    return name == "bias" or name.endswith(".bias")


BITFIT = BitFitTuner()
