"""The tuning methods by name: what each injects, and which parameters it trains.

Every method applies itself to a plain ViT without renaming a backbone
parameter, and declares its own parameters with a predicate; the classifier
head always trains on top of that (see :mod:`.base`).
"""
from __future__ import annotations

import difflib

from .adaptformer import ADAPTFORMER
from .base import Tuner
from .baselines import FULL, LINEAR
from .bitfit import BITFIT
from .houlsby import HOULSBY
from .lora import LORA
from .ssf import SSF_TUNER
from .vpt import VPT_DEEP, VPT_SHALLOW

Method = Tuner  # the name callers used for a registry entry

METHODS: dict[str, Tuner] = {m.name: m for m in (
    FULL, LINEAR, ADAPTFORMER, BITFIT, VPT_SHALLOW, VPT_DEEP, LORA, HOULSBY, SSF_TUNER)}


def get_method(name: str) -> Tuner:
    if name not in METHODS:
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


def method_of_flag(flag: str) -> Tuner:
    """The method a command-line flag stands for (``freeze``: the tutorial's ``--freeze``)."""
    for m in METHODS.values():
        if m.alias == flag:
            return m
    raise ValueError(f"no method has the flag {flag!r}")


def legacy_owner(section: str) -> Tuner | None:
    """The method whose options an older config format kept in section ``section``, if any."""
    return next((m for m in METHODS.values() if m.legacy_section == section), None)


def legacy_sections() -> list[str]:
    return [m.legacy_section for m in METHODS.values() if m.legacy_section]
