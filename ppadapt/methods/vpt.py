"""Visual Prompt Tuning (Jia et al., 2022, arXiv 2203.12119) on a plain ViT.

``tokens`` learnable prompt vectors are inserted right after the class token,
so a block sees ``[cls, prompts, patches]`` and the class token stays at index
0 (``norm(x)[:, 0]`` still reads it). Prompts get no position embedding.

* **shallow**: one set of prompts, inserted once at the input, by a forward
  post-hook on ``pos_drop`` (after ``+ pos_embed`` and the embedding dropout).
* **deep**: one set per block. A forward pre-hook on every block puts that
  block's prompts at positions ``1 .. tokens``: block 0 inserts them, every
  later block *replaces* the previous block's outputs at those positions, so
  the sequence length stays ``1 + tokens + patches`` throughout.

The prompts are the parameter(s) of one sublayer registered on the model as
``vpt_prompts`` (``vpt_prompts.shallow``: ``[1, tokens, D]``;
``vpt_prompts.deep``: ``[depth, tokens, D]``), so every backbone parameter keeps
its PaddleClas name and a backbone checkpoint still loads.

Defaults follow the official code (KMnP/vpt ``src/configs/config.py``):
``NUM_TOKENS=5``, ``DEEP=False``, ``DROPOUT=0.0``, ``INITIATION="random"``,
the latter being uniform(-v, v) with ``v = sqrt(6 / (3 * patch**2 + D))``
(Xavier-uniform of a patch-to-embedding projection), ``init="uniform"`` here.
The paper tunes the prompt length per task over {1, 5, 10, 50, 100, 200}
(there is no single "paper" length); to reproduce a reported VPT-Shallow or
VPT-Deep number (the VPT paper's or V-PETL Bench's, which re-runs both), set
``tokens`` and ``deep`` to that task's values. Prompt dropout is applied to
the prompts each time they are inserted, as in the official code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Uniform

from ..errors import MethodDoesNotFit
from .base import Tuner

SUBLAYER = "vpt_prompts"
INITS = ("uniform", "xavier")


@dataclass
class VPTConfig:
    """Options of Visual Prompt Tuning (official defaults)."""

    tokens: int = 5  # prompt length; official config default NUM_TOKENS=5 (paper sweeps 1..200 per task)
    deep: bool = False  # False: VPT-shallow (input only); True: VPT-deep (a set per block)
    init: str = "uniform"  # uniform: authors' "random", U(+-sqrt(6/(3*p*p + D))); xavier: U(+-sqrt(6/(tokens + D)))
    dropout: float = 0.0  # dropout on the prompts (authors' PROMPT.DROPOUT, default 0.0)

    def validated(self) -> "VPTConfig":
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens <= 0:
            raise ValueError(f"vpt.tokens must be a positive integer, got {self.tokens!r}")
        if not isinstance(self.deep, bool):
            raise ValueError(f"vpt.deep must be a bool, got {self.deep!r}")
        if self.init not in INITS:
            raise ValueError(f"vpt.init must be one of {INITS}, got {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vpt.dropout must be in [0, 1), got {self.dropout}")
        return self


class VPTPrompts(nn.Layer):
    """The prompt parameters and the hooks that splice them into the token sequence."""

    def __init__(self, dim: int, tokens: int, depth: int, patch_size: int, in_chans: int = 3,
                 deep: bool = False, init: str = "uniform", dropout: float = 0.0):
        super().__init__()
        self.tokens = tokens
        self.is_deep = deep
        self.dropout = dropout
        if init == "uniform":
            bound = math.sqrt(6.0 / float(in_chans * patch_size * patch_size + dim))
        else:
            bound = math.sqrt(6.0 / float(tokens + dim))
        shape = [depth if deep else 1, tokens, dim]
        self._name_of_prompts = "deep" if deep else "shallow"
        self.add_parameter(self._name_of_prompts,
                           self.create_parameter(shape, default_initializer=Uniform(-bound, bound)))

    def no_weight_decay(self) -> set[str]:
        """The prompts are inputs, not weights: weight decay skips them (see training/optim.py)."""
        return {self._name_of_prompts}

    @property
    def weight(self):
        """The prompt tensor: ``[1, tokens, D]`` (shallow) or ``[depth, tokens, D]`` (deep)."""
        return getattr(self, self._name_of_prompts)

    def prompts(self, index: int, batch, dtype):
        p = self.weight[index:index + 1].astype(dtype)
        p = F.dropout(p, p=self.dropout, training=self.training) if self.dropout > 0 else p
        return p.expand([batch, -1, -1])

    # shallow: post-hook on pos_drop
    def insert_after_embedding(self, layer, inputs, output):
        return self._insert(output, 0)

    # deep: pre-hook on every block
    def block_hook(self, index: int):
        def hook(layer, inputs):
            x, rest = inputs[0], tuple(inputs[1:])
            if index == 0:
                return (self._insert(x, 0),) + rest
            prompts = self.prompts(index, paddle.shape(x)[0], x.dtype)
            return (paddle.concat([x[:, :1], prompts, x[:, 1 + self.tokens:]], axis=1),) + rest
        return hook

    def _insert(self, x, index: int):
        # paddle.shape, not x.shape: hooks are not converted by paddle.jit, where
        # x.shape[0] is -1 for a dynamic batch and the export would be fixed to batch 1.
        prompts = self.prompts(index, paddle.shape(x)[0], x.dtype)
        return paddle.concat([x[:, :1], prompts, x[:, 1:]], axis=1)


class VPTTuner(Tuner):
    """One :class:`VPTPrompts` sublayer on the model (``vpt_prompts``), spliced in by hooks."""

    kind = "vpt"  # shallow and deep exclude each other
    title = "VPT"
    modules = "VPT prompts"
    config = VPTConfig

    def check_model(self, model, cfg):
        """Prompts join one global token sequence after the class token; a model without one
        (Swin attends within local windows, which prompt tokens do not belong to) cannot take them."""
        if getattr(model, "cls_token", None) is None or not hasattr(model, "pos_drop"):
            raise MethodDoesNotFit(f"VPT does not apply to {type(model).__name__}: its prompts join a ViT's global "
                             "token sequence after cls_token, which this model has not (Swin attends within "
                             "shifted local windows); choose adaptformer, lora, bitfit, ssf or linear")

    def targets(self, model, cfg):
        return [("", model)]

    def module_path(self, target: str) -> str:
        return SUBLAYER

    def create(self, model, target, layer, cfg):
        in_chans = model.patch_embed.proj.weight.shape[1]
        return VPTPrompts(model.embed_dim, cfg.tokens, len(model.blocks), model.patch_embed.patch_size,
                          in_chans, cfg.deep, cfg.init, cfg.dropout)

    def wire(self, model, target, layer, prompts, cfg):
        if cfg.deep:
            return [block.register_forward_pre_hook(prompts.block_hook(i)) for i, block in enumerate(model.blocks)]
        return [model.pos_drop.register_forward_post_hook(prompts.insert_after_embedding)]

    def owns(self, name: str) -> bool:
        return is_vpt_parameter(name)


class VPTShallow(VPTTuner):
    name = "vpt-shallow"
    summary = "VPT-shallow (Jia et al. 2022): prompt tokens at the input"
    fixed = {"deep": False}


class VPTDeep(VPTTuner):
    name = "vpt-deep"
    summary = "VPT-deep (Jia et al. 2022): new prompt tokens before every block"
    fixed = {"deep": True}


def apply_vpt(model: nn.Layer, config: VPTConfig | None = None) -> list[nn.Layer]:
    """Add visual prompts to ``model`` (in place); returns ``[the VPTPrompts sublayer]``.

    Works on a model with ``patch_embed.patch_size``, ``pos_drop``, ``blocks``
    and ``embed_dim`` (ppadapt's ViT). ``ValueError`` if already applied.
    """
    cfg = (config or VPTConfig()).validated()
    return (VPT_DEEP if cfg.deep else VPT_SHALLOW).apply(model, cfg)


def is_vpt_parameter(name: str) -> bool:
    """True for the prompt parameters (``vpt_prompts.shallow`` / ``vpt_prompts.deep``)."""
    return f".{SUBLAYER}." in f".{name}"


VPT_SHALLOW = VPTShallow()
VPT_DEEP = VPTDeep()
