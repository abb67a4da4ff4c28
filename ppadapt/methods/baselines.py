"""The two baselines every method is compared with: full fine-tuning and the linear probe.

Neither attaches anything; they differ only in what trains (the new head always does).
"""
from __future__ import annotations

from .base import Tuner


class FullTuner(Tuner):
    name = "full"
    summary = "full fine-tuning: every parameter trains"
    title = "full fine-tuning"

    def owns(self, name: str) -> bool:
        return True


class LinearTuner(Tuner):
    name = "linear"
    summary = "linear probe: only the new head trains"
    title = "the linear probe"


FULL = FullTuner()
LINEAR = LinearTuner()
