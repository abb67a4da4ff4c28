"""Statistics of repeated measurements: the median and spread of step times, and images/s."""
from __future__ import annotations

import statistics
from typing import Sequence


def summarize(samples: Sequence[float]) -> dict:
    """Median, min, max, quartiles and the raw samples of a list of measurements."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("no samples")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3,
            "n": len(xs), "samples": [float(s) for s in samples]}


def rate(batch: int, seconds: dict) -> dict:
    """Images/s from step-time statistics (the slowest step gives the lowest rate)."""
    return {"median": batch / seconds["median"], "min": batch / seconds["max"], "max": batch / seconds["min"]}
