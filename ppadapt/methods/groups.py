"""Whose is each trainable parameter: a method's, the head's or the backbone's.

The adaptation monitor (:mod:`ppadapt.training.callbacks.adaptation`) follows each group
on its own, because one number for the whole network would hide a method whose few
parameters barely move next to a head that learns fast.
"""
from __future__ import annotations

import re

import paddle.nn as nn

from .base import parameter_owners
from .baselines import FULL
from .registry import get_method

HEAD = "head"
BACKBONE = "backbone"
_INDEX = re.compile(r"[^.]+\.\d+\.")  # "blocks.3." in "blocks.3.attn.qkv.weight"


def parameter_groups(model: nn.Layer, method: str) -> dict[str, list[str]]:
    """The trainable parameters of ``model`` by group, in model order.

    What the stage's ``method`` owns is its own (BitFit's biases too); a parameter of a
    module another method attached belongs to that method (a carried method that trains
    along in pretraining or full fine-tuning); the head is ``head``;
    everything else that trains (pretraining, full fine-tuning) is ``backbone``. Frozen
    parameters are in no group: their change is exactly zero.
    """
    owners = parameter_owners(model)
    tuner = get_method(method)
    groups: dict[str, list[str]] = {}
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        if name.startswith(f"{HEAD}."):
            group = HEAD
        elif tuner is not FULL and tuner.owns(name):
            group = tuner.name
        elif name in owners:
            group = owners[name]
        else:
            group = BACKBONE
        groups.setdefault(group, []).append(name)
    return groups


def tensor_kind(name: str) -> str:
    """A parameter's name without its block index: the same tensor in every block is one kind
    (``blocks.3.adaptmlp.up_proj.weight`` -> ``adaptmlp.up_proj.weight``)."""
    return _INDEX.sub("", name)
