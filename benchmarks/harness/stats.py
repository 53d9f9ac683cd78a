"""The one rule for ratios of repetitions run side by side (used while measuring and when re-rendering a report)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def paired(num: Sequence[float], den: Sequence[float]) -> dict[str, float] | None:
    """Ratios ``num[i] / den[i]`` of repetitions run side by side: their median and min-max, or None."""
    pairs = [a / b for a, b in zip(num, den, strict=False) if b]
    if not pairs:
        return None
    return {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs), "n": len(pairs)}
