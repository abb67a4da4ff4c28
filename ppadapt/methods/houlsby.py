"""Bottleneck adapter (Houlsby et al., 2019, arXiv 1902.00751) on a plain ViT.

A sequential bottleneck with its own skip connection is applied to the output
of every block's MLP:  ``mlp_out' = mlp_out + up(act(down(mlp_out)))``, before
the block's drop path and residual. This is the single-adapter-per-block
placement used by the ViT PETL benchmarks (VPT's and V-PETL Bench's "Adapter");
Houlsby et al. also put a second adapter after the attention projection, which
is not done here.

The adapter is registered as the sublayer ``blocks.N.adapter`` (``down``,
``up``) and wired in by a forward post-hook on ``blocks.N.mlp``, so every
backbone parameter keeps its PaddleClas name and a backbone checkpoint loads.

Initialisation (``init``):

* ``"zero_up"`` (default): ``down`` truncated-normal with std ``init_scale``
  (the authors' 1e-3), ``up`` all zeros, so the adapted model equals the plain
  ViT exactly at initialisation.
* ``"houlsby"``: the authors' near-identity init: both projections
  truncated-normal with std ``init_scale`` (1e-3), biases zero.
* ``"zeros"``: both projections and biases zero, as in V-PETL Bench's
  ``Adapter``. Beware: since ``act(0) = 0`` for GELU/ReLU, the gradients of
  ``up.weight``, ``down.weight`` and ``down.bias`` are then exactly zero forever
  and only ``up.bias`` ever learns.

V-PETL Bench's setting: ``bottleneck = embed_dim // topN`` with its per-task
``topN`` (e.g. SVHN ``topN: 96`` -> ``bottleneck=8`` on ViT-B), ``activation
="gelu"``, ``init="zeros"``, an adapter in every block.
"""
from __future__ import annotations

from dataclasses import dataclass

import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, TruncatedNormal

from ..models.fast_layers import Linear
from .base import Tuner
from .targets import transformer_blocks

SUBLAYER = "adapter"
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
INITS = ("zero_up", "houlsby", "zeros")


@dataclass
class HoulsbyConfig:
    """Options of the bottleneck adapter."""

    bottleneck: int = 64  # hidden size m; the authors' code default (adapter-bert hidden_size=64), paper sweeps {8, 64, 256}
    activation: str = "gelu"  # gelu (authors') | relu
    init: str = "zero_up"  # zero_up (exact no-op at init) | houlsby (near-identity, authors') | zeros (V-PETL Bench)
    init_scale: float = 1e-3  # std of the truncated-normal init (authors' init_scale=1e-3)

    def validated(self) -> "HoulsbyConfig":
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck <= 0:
            raise ValueError(f"adapter.bottleneck must be a positive integer, got {self.bottleneck!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.init not in INITS:
            raise ValueError(f"adapter.init must be one of {INITS}, got {self.init!r}")
        if not self.init_scale > 0:
            raise ValueError(f"adapter.init_scale must be positive, got {self.init_scale}")
        return self


class HoulsbyAdapter(nn.Layer):
    """``x + up(act(down(x)))``."""

    def __init__(self, dim: int, bottleneck: int = 64, activation: str = "gelu",
                 init: str = "zero_up", init_scale: float = 1e-3):
        super().__init__()
        self.activation = activation
        self.down = Linear(dim, bottleneck)  # ppadapt's: fast CPU bias gradient, same parameters
        self.up = Linear(bottleneck, dim)
        # Truncated at two standard deviations, like TF's truncated_normal_initializer
        # (paddle's a/b are absolute bounds, not multiples of std).
        normal = TruncatedNormal(std=init_scale, a=-2 * init_scale, b=2 * init_scale)
        zero = Constant(0.0)
        (zero if init == "zeros" else normal)(self.down.weight)
        (normal if init == "houlsby" else zero)(self.up.weight)
        zero(self.down.bias)
        zero(self.up.bias)

    def forward(self, x):
        return x + self.up(ACTIVATIONS[self.activation](self.down(x)))


def _after_mlp(adapter: HoulsbyAdapter):
    def hook(layer, inputs, output):
        return adapter(output)
    return hook


class HoulsbyTuner(Tuner):
    """An adapter per block, registered as ``blocks.N.adapter``, hooked after ``blocks.N.mlp``."""

    name = "adapter"
    summary = "Adapter (Houlsby et al. 2019): sequential bottleneck after each MLP"
    title = "the Houlsby adapter"
    modules = "Houlsby adapters"
    config = HoulsbyConfig

    def targets(self, model, cfg):
        return [(f"{path}.mlp", block.mlp) for path, block in transformer_blocks(model)]

    def module_path(self, target: str) -> str:
        return f"{target.rpartition('.')[0]}.{SUBLAYER}"

    def create(self, model, target, mlp, cfg):
        return HoulsbyAdapter(int(mlp.fc1.weight.shape[0]), cfg.bottleneck, cfg.activation, cfg.init, cfg.init_scale)

    def wire(self, model, target, mlp, adapter, cfg):
        return [mlp.register_forward_post_hook(_after_mlp(adapter))]

    def owns(self, name: str) -> bool:
        return is_houlsby_parameter(name)


def apply_houlsby(model: nn.Layer, config: HoulsbyConfig | None = None) -> list[HoulsbyAdapter]:
    """Add an adapter after the MLP of every block of ``model`` (in place); returns them."""
    return HOULSBY.apply(model, config)


def is_houlsby_parameter(name: str) -> bool:
    """True for parameters of the bottleneck adapters (``blocks.N.adapter.*``)."""
    return f".{SUBLAYER}." in f".{name}"


HOULSBY = HoulsbyTuner()
