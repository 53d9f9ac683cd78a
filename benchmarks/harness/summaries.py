"""Reading a results JSON: a group's sides, their repetitions, paired ratios, and sides derived from two others."""

from __future__ import annotations

import statistics
from typing import Any

from .stats import paired

Side = dict[str, Any]  # {"summary": {"median", "min", "max", "n", "values"} or None, "error": str or None}


def side(group: Side | None, name: str) -> Side | None:
    """``{"summary", "error"}`` of a side, or None when the group or side is missing."""
    if group is None:
        return None
    return group.get(name)


def values(side: Side | None) -> list[float]:
    s = side and side.get("summary")
    return list(s["values"]) if s else []


def paired_ratio(num: Side | None, den: Side | None) -> dict[str, float] | None:
    return paired(values(num), values(den))


def medians(num: Side | None, den: Side | None) -> dict[str, float] | None:
    """Ratio of medians, for sides that did not run side by side (no pairs)."""
    a, b = values(num), values(den)
    if not a or not b or not statistics.median(b):
        return None
    r = statistics.median(a) / statistics.median(b)
    return {"median": r, "min": r, "max": r, "n": 1}


def ratio_side(num: Side | None, den: Side | None) -> Side | None:
    """A side made of the paired ratios num[i] / den[i]."""
    a, b = values(num), values(den)
    vals = [x / y for x, y in zip(a, b, strict=False) if y]
    if not vals:
        return {"summary": None, "error": (num or {}).get("error") or (den or {}).get("error") or "not measured"}
    return _summary(vals)


def inverse_us(side: Side | None) -> Side | None:
    """tokens/s as µs per token."""
    if side is None or not side.get("summary"):
        return side
    vals = [1e6 / v for v in side["summary"]["values"] if v]
    return _summary(vals)


def _summary(vals: list[float]) -> Side:
    return {
        "summary": {
            "median": statistics.median(vals),
            "min": min(vals),
            "max": max(vals),
            "n": len(vals),
            "values": vals,
        },
        "error": None,
    }
