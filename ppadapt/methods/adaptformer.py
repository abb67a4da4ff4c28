"""AdaptFormer (Chen et al., 2022, arXiv 2205.13535) applied on top of a plain ViT.

Each transformer block gets a parallel branch beside its MLP,
``scale * up(dropout(relu(down(x))))``, added to the MLP output before the
residual. The ViT is not forked: the branch is registered as the sublayer
``blocks.N.adaptmlp`` and wired in with forward hooks on the block's ``norm2``
(to see the stream after attention) and ``mlp`` (to add the branch output), so
every backbone parameter keeps its PaddleClas name and a backbone checkpoint
still loads into the adapted model.

Because the branch output joins the MLP output, it passes through the block's
drop path like the MLP does; with the default ``drop_path_rate=0`` this is
exactly the official formulation.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, KaimingUniform, TruncatedNormal

from ..kernels import functions as fused
from ..models.fast_layers import Dropout, Linear, Switchable, residual_add, runs_fused
from .base import Tuner
from .targets import block_width, transformer_blocks

SUBLAYER = "adaptmlp"
_PER_WIDTH = re.compile(r"dim\s*//\s*(\d+)")  # bottleneck "dim//12": each block's width // 12
_WIRING = "_adaptformer_hooks"  # on an Adapter: its _BranchHooks, for the probe

# Per-variant defaults for the options left as None.
VARIANTS = {
    # Official implementation: fixed 0.1 scale, branch fed by the stream after
    # attention, LoRA-style init so the branch starts as an exact no-op.
    "official": dict(scale=0.1, learnable_scale=False, input="stream", init="lora"),
    # The AI Studio tutorial: branch fed by norm2's output, learnable scale
    # starting at 1, truncated-normal init like the rest of the ViT.
    "tutorial": dict(scale=1.0, learnable_scale=True, input="norm2", init="trunc_normal"),
}


@dataclass
class AdaptFormerConfig:
    """Options of the AdaptFormer branch; ``None`` takes the variant's default."""

    variant: str = "official"
    # an int (every block), or "dim//N": each block's width // N (per stage on Swin; the
    # official AdaptFormer's Swin uses dim//12)
    bottleneck: int | str = 64
    scale: float | None = None
    learnable_scale: bool | None = None
    layernorm: str = "none"  # none | in | out
    dropout: float = 0.1
    input: str | None = None  # stream | norm2
    init: str | None = None  # lora | trunc_normal

    def resolved(self) -> "AdaptFormerConfig":
        """The config with the variant's defaults filled in; ``ValueError`` on a bad option."""
        if self.variant not in VARIANTS:
            raise ValueError(f"adaptformer.variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        defaults = VARIANTS[self.variant]
        cfg = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        for key, allowed in (("layernorm", ("none", "in", "out")), ("input", ("stream", "norm2")),
                             ("init", ("lora", "trunc_normal"))):
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"adaptformer.{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
        if isinstance(cfg.bottleneck, str):
            rule = _PER_WIDTH.fullmatch(cfg.bottleneck.strip())
            if not rule or int(rule.group(1)) <= 0:
                raise ValueError(f"adaptformer.bottleneck must be int, got {cfg.bottleneck!r} (a positive whole "
                                 "number, or 'dim//N': each block's width // N)")
        elif isinstance(cfg.bottleneck, bool) or not isinstance(cfg.bottleneck, int) or cfg.bottleneck <= 0:
            raise ValueError(f"adaptformer.bottleneck must be a positive integer, got {cfg.bottleneck!r}")
        if isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"adaptformer.dropout must be in [0, 1), got {cfg.dropout!r}")
        if isinstance(cfg.scale, bool) or not isinstance(cfg.scale, (int, float)):
            raise ValueError(f"adaptformer.scale must be a number, got {cfg.scale!r}")
        if not isinstance(cfg.learnable_scale, bool):
            raise ValueError(f"adaptformer.learnable_scale must be true or false, got {cfg.learnable_scale!r}")
        return cfg

    def bottleneck_for(self, width: int) -> int:
        """The bottleneck of a block of ``width`` channels; ``ValueError`` if a rule gives 0."""
        if isinstance(self.bottleneck, int):
            return self.bottleneck
        size = width // int(_PER_WIDTH.fullmatch(self.bottleneck.strip()).group(1))
        if size < 1:
            raise ValueError(f"adaptformer.bottleneck {self.bottleneck!r} gives 0 for a block of width {width}")
        return size


class Adapter(Switchable, nn.Layer):
    """The bottleneck branch: [LN] -> down -> ReLU -> dropout -> up -> * scale -> [LN]. On the
    ``fused`` layer path ReLU and dropout are one C++ pass, and the branch joins the MLP's output
    through the fused add. The scale stays outside ``up_proj``: a method's hook on ``up_proj``
    (SSF's) sees its unscaled output."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1,
                 learnable_scale: bool = False, layernorm: str = "none",
                 dropout: float = 0.1, init: str = "lora"):
        super().__init__()
        self.layernorm = layernorm
        self.dropout = dropout
        self.drop = Dropout(dropout)
        self.adapter_layer_norm = nn.LayerNorm(dim) if layernorm != "none" else None
        if learnable_scale:
            self.scale = self.create_parameter([1], default_initializer=Constant(scale))
        else:
            self.scale = float(scale)
        # ppadapt's Linear: nn.Linear with a fast CPU bias gradient (same parameters and init)
        self.down_proj = Linear(dim, bottleneck)
        self.up_proj = Linear(bottleneck, dim)
        if init == "lora":
            # Kaiming-uniform(a=sqrt(5)) on the way down, zeros on the way up:
            # the branch outputs exactly 0 until the first update.
            KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")(self.down_proj.weight)
            Constant(0.0)(self.up_proj.weight)
        else:
            TruncatedNormal(std=0.02)(self.down_proj.weight)
            TruncatedNormal(std=0.02)(self.up_proj.weight)
        Constant(0.0)(self.down_proj.bias)
        Constant(0.0)(self.up_proj.bias)

    def forward(self, x):
        if self.layernorm == "in":
            x = self.adapter_layer_norm(x)
        if runs_fused(self, x):
            x = fused.relu_dropout(self.down_proj(x), self.dropout if self.training else 0.0)
        else:
            x = self.drop(F.relu(self.down_proj(x)))
        x = self.up_proj(x) * self.scale
        if self.layernorm == "out":
            x = self.adapter_layer_norm(x)
        return x


class _BranchHooks:
    """Feeds the adapter its input and adds its output to the MLP's."""

    def __init__(self, adapter: Adapter, source: str):
        self.adapter = adapter
        self.source = source
        self._stream = None
        self.tap: list | None = None  # set by the probe: gets (MLP output, branch output) per forward

    def capture_stream(self, layer, inputs):
        self._stream = inputs[0]

    def add_branch(self, layer, inputs, output):
        x = self._stream if self.source == "stream" else inputs[0]
        self._stream = None
        branch = self.adapter(x)
        if self.tap is not None:
            self.tap.append((output, branch))
        return residual_add(self.adapter, output, branch)


def branch_to_mlp(pairs: list[tuple[paddle.Tensor, paddle.Tensor]], eps: float = 1e-12) -> float:
    """The mean over blocks and images of ||branch output|| / ||MLP output|| (norms over one
    image's tokens and channels): how much the branch adds to what the MLP already says."""
    ratios = []
    for mlp, branch in pairs:
        axes = list(range(1, mlp.ndim))
        per_image = (paddle.sqrt((branch.astype("float64") ** 2).sum(axis=axes))
                     / (paddle.sqrt((mlp.astype("float64") ** 2).sum(axis=axes)) + eps))
        ratios.append(float(per_image.mean()))
    return sum(ratios) / len(ratios)


class AdaptFormerTuner(Tuner):
    """A branch per block, registered as ``blocks.N.adaptmlp`` and hooked on ``norm2``/``mlp``.

    Works on any model whose blocks (sublayers named ``blocks.N``, at any depth: ppadapt's
    ViT and Swin, PaddleClas's ViT) have ``norm2`` and ``mlp``; each branch is as wide as
    its block. The tutorial's ``--freeze`` means this method, and an older
    ppadapt kept its options in the config's ``adapter`` section.
    """

    name = "adaptformer"
    summary = "AdaptFormer (Chen et al. 2022): parallel bottleneck beside each MLP"
    title = "AdaptFormer"
    modules = "AdaptFormer branches"
    config = AdaptFormerConfig
    suffix = "_frozen"  # the tutorial's name of this run
    alias = "freeze"
    legacy_section = "adapter"

    def check(self, cfg: AdaptFormerConfig) -> AdaptFormerConfig:
        return cfg.resolved()

    def targets(self, model, cfg):
        return transformer_blocks(model)

    def module_path(self, target: str) -> str:
        return f"{target}.{SUBLAYER}"

    def create(self, model, target, block, cfg):
        width = block_width(block)
        return Adapter(width, cfg.bottleneck_for(width), cfg.scale, cfg.learnable_scale, cfg.layernorm,
                       cfg.dropout, cfg.init)

    def wire(self, model, target, block, adapter, cfg):
        hooks = _BranchHooks(adapter, cfg.input)
        setattr(adapter, _WIRING, hooks)
        handles = []
        if cfg.input == "stream":
            handles.append(block.norm2.register_forward_pre_hook(hooks.capture_stream))
        handles.append(block.mlp.register_forward_post_hook(hooks.add_branch))
        return handles

    def owns(self, name: str) -> bool:
        return is_adapter_parameter(name)

    def probe(self, model, images):
        """``branch_to_mlp``: with the official zero-initialised up-projection and scale 0.1
        the branch starts as an exact no-op; if this ratio stays near 0, the branches are
        not learning and a frozen run is a linear probe in disguise."""
        wiring = [getattr(m, _WIRING) for _, m in model.named_sublayers()
                  if isinstance(m, Adapter) and hasattr(m, _WIRING)]
        if not wiring:
            return {}
        pairs: list = []
        for hooks in wiring:
            hooks.tap = pairs
        try:
            model(images)
        finally:
            for hooks in wiring:
                hooks.tap = None
        return {"branch_to_mlp": branch_to_mlp(pairs)}


def apply_adaptformer(model: nn.Layer, config: AdaptFormerConfig | None = None) -> list[Adapter]:
    """Add an AdaptFormer branch to every block of ``model`` (in place); returns the
    adapters, one per block. ``ValueError`` if already applied or on a bad option."""
    return ADAPTFORMER.apply(model, config)


def is_adapter_parameter(name: str) -> bool:
    """True for parameters that belong to an AdaptFormer branch."""
    return f".{SUBLAYER}." in f".{name}"


ADAPTFORMER = AdaptFormerTuner()
