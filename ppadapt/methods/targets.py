"""Where methods attach, found by sublayer name so one method fits every backbone.

A transformer block is a sublayer named ``blocks.N`` at any depth: ``blocks.3`` in the ViT,
``layers.2.blocks.3`` in Swin, whose stages have their own widths (hence :func:`block_width`).
"""
from __future__ import annotations

import re

import paddle.nn as nn

_BLOCK = re.compile(r"(^|\.)blocks\.\d+$")


def transformer_blocks(model: nn.Layer) -> list[tuple[str, nn.Layer]]:
    """``(path, block)`` of every transformer block of ``model``, in model order."""
    return [(path, layer) for path, layer in model.named_sublayers() if _BLOCK.search(path)]


def block_width(block: nn.Layer) -> int:
    """The token width a block works at (its MLP's input)."""
    return int(block.mlp.fc1.weight.shape[0])
