"""Recomputing a block's activations in the backward instead of keeping them (``recompute: true``).

A training step keeps every block's intermediate activations for the backward; with
recomputation only each block's input is kept, and the block's forward runs again in the
backward, which trades about one more forward for the activation memory of all blocks but one.

Paddle's ``paddle.distributed.fleet.utils.recompute`` is used in its non-reentrant form
(``use_reentrant=False``, saved-tensor hooks): the reentrant form is a PyLayer whose output
needs no gradient when its input needs none, so behind a frozen backbone (the first block's
input comes from frozen embeddings) the trainable parameters inside the blocks would silently
get no gradient, PEFT's "element 0 of tensors does not require grad". The generator state is
preserved, so dropout and drop path draw the same numbers in the recomputed forward and the
gradients are those of training without recomputation.
"""
from __future__ import annotations

import logging

import paddle
import paddle.nn as nn

_NOTHING_TO_DO = "None of the inputs to current recompute block need grad"


class _DropFalseAlarm(logging.Filter):
    """Paddle warns, every step, when a recomputed block's inputs need no gradient; behind a
    frozen backbone its parameters still do (the warning is meant for blocks without any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _NOTHING_TO_DO not in record.getMessage()


_filter_installed = False


def _install_filter() -> None:
    global _filter_installed
    if not _filter_installed:
        from paddle.distributed.fleet.utils.log_util import logger
        logger.addFilter(_DropFalseAlarm())
        _filter_installed = True


def needs_backward(block: nn.Layer, x: paddle.Tensor) -> bool:
    """Whether a backward runs through ``block``: its input or one of its parameters needs a gradient."""
    return not x.stop_gradient or any(not p.stop_gradient for p in block.parameters())


def run_block(block: nn.Layer, x: paddle.Tensor, *args) -> paddle.Tensor:
    """``block(x, *args)``, its activations recomputed in the backward (``args``: inputs that are
    no tensors, e.g. a Swin block's map size). A block no backward goes through (everything
    before and in it frozen, e.g. the linear probe) just runs."""
    if not needs_backward(block, x):
        return block(x, *args)
    from paddle.distributed.fleet.utils import recompute

    _install_filter()
    return recompute(block, x, *args, use_reentrant=False, preserve_rng_state=True)
