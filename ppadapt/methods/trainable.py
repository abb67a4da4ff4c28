"""Freezing by parameter, and the trainable-parameter summary.

``stop_gradient`` is a property of each *parameter*: setting it on an
``nn.Layer`` only adds an unused Python attribute and freezes nothing (the bug
in the AI Studio tutorial). Everything here works parameter by parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import paddle.nn as nn

from ..utils.formatting import format_size


def set_trainable(model: nn.Layer, is_trainable: Callable[[str], bool]) -> None:
    """Mark each parameter of ``model`` trainable iff ``is_trainable(name)``."""
    for name, param in model.named_parameters():
        param.stop_gradient = not is_trainable(name)


def trainable_parameters(model: nn.Layer) -> list:
    """The parameters an optimizer should receive: the ones not frozen."""
    return [p for p in model.parameters() if not p.stop_gradient]


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int
    trainable_bytes: int
    head: int = 0  # trainable parameters of the classifier head

    @property
    def without_head(self) -> int:
        """Trainable parameters excluding the head: V-PETL Bench's "Params" column."""
        return self.trainable - self.head

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        size = format_size(self.trainable_bytes, ("MiB",), decimals=2)
        return (f"trainable parameters: {self.trainable:,} of {self.total:,} "
                f"({self.percent:.2f}%), {size}; "
                f"{self.without_head:,} without the head")


def count_parameters(model: nn.Layer) -> ParamCount:
    """Count every parameter of ``model`` (including ``pos_embed`` and ``cls_token``,
    which ``paddle.summary`` leaves out because they belong to no sublayer)."""
    trainable = total = nbytes = head = 0
    for name, param in model.named_parameters():
        n = int(param.size)
        total += n
        if not param.stop_gradient:
            trainable += n
            nbytes += n * param.element_size()
            head += n if name.startswith("head.") else 0
    return ParamCount(trainable, total, nbytes, head)
