"""The tuning methods by name: what each injects, and which parameters it trains.

Every method applies itself to a plain ViT without renaming a backbone
parameter, and declares its own parameters with a predicate; the classifier
head always trains on top of that.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import paddle.nn as nn

from .adaptformer import AdaptFormerConfig, apply_adaptformer, is_adapter_parameter
from .bitfit import BitFitConfig, apply_bitfit, is_bitfit_parameter
from .houlsby import HoulsbyConfig, apply_houlsby, is_houlsby_parameter
from .lora import LoRAConfig, apply_lora, is_lora_parameter, merge_lora
from .ssf import SSFConfig, apply_ssf, is_ssf_parameter, merge_ssf
from .vpt import VPTConfig, apply_vpt, is_vpt_parameter


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    owns: Callable[[str], bool]
    config: type | None = None
    apply: Callable[[nn.Layer, Any], Any] | None = None
    merge: Callable[[nn.Layer], None] | None = None
    fixed: dict = dataclasses.field(default_factory=dict)  # options this name pins (vpt-deep: deep=True)

    def options(self) -> dict:
        """The method's options and their defaults (pinned ones left out)."""
        if self.config is None:
            return {}
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.name not in self.fixed}

    def make_config(self, **options: Any) -> Any:
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            valid = ", ".join(self.options()) or "none"
            raise ValueError(f"method '{self.name}' has no option {unknown[0]!r} (its options: {valid})")
        return self.config(**options, **self.fixed) if self.config else None

    def apply_to(self, model: nn.Layer, **options: Any) -> Any:
        """Inject the method into ``model`` in place; returns the method's config."""
        cfg = self.make_config(**options)
        if self.apply is not None:
            self.apply(model, cfg)
        return cfg

    def is_trainable(self, name: str) -> bool:
        return name.startswith("head.") or self.owns(name)


def _nothing(name: str) -> bool:
    return False


def _everything(name: str) -> bool:
    return True


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "full fine-tuning: every parameter trains", _everything),
    Method("linear", "linear probe: only the new head trains", _nothing),
    Method("adaptformer", "AdaptFormer (Chen et al. 2022): parallel bottleneck beside each MLP",
           is_adapter_parameter, AdaptFormerConfig, apply_adaptformer),
    Method("bitfit", "BitFit (Ben Zaken et al. 2021): only the biases", is_bitfit_parameter,
           BitFitConfig, apply_bitfit),
    Method("vpt-shallow", "VPT-shallow (Jia et al. 2022): prompt tokens at the input", is_vpt_parameter,
           VPTConfig, apply_vpt, fixed={"deep": False}),
    Method("vpt-deep", "VPT-deep (Jia et al. 2022): new prompt tokens before every block", is_vpt_parameter,
           VPTConfig, apply_vpt, fixed={"deep": True}),
    Method("lora", "LoRA (Hu et al. 2021): low-rank updates of chosen linear layers (mergeable)",
           is_lora_parameter, LoRAConfig, apply_lora, merge_lora),
    Method("adapter", "Adapter (Houlsby et al. 2019): sequential bottleneck after each MLP",
           is_houlsby_parameter, HoulsbyConfig, apply_houlsby),
    Method("ssf", "SSF (Lian et al. 2022): scale and shift after each linear and LayerNorm (mergeable)",
           is_ssf_parameter, SSFConfig, apply_ssf, merge_ssf),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        import difflib
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(METHODS)}"
        raise ValueError(f"unknown method '{name}'; {hint}")
    return METHODS[name]


def list_methods() -> str:
    """One line per method: name, what it does, options with defaults."""
    lines = []
    for m in METHODS.values():
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options().items())
        lines.append(f"{m.name:12s} {m.summary}" + (f" [{opts}]" if opts else ""))
    return "\n".join(lines)
