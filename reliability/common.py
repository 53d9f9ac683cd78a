"""Shared pieces of the reliability checks: memory readings, percentiles, the results folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/<pid>/status")


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles and the maximum of ``values`` (empty dict when there are none)."""
    if not values:
        return {}
    ordered = sorted(values)
    ranks = {p: min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1)) for p in points}
    out = {f"p{p}": round(ordered[i], 4) for p, i in ranks.items()}
    out["max"] = round(ordered[-1], 4)
    return out


def write_json(name: str, data: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Write ``folder/name`` (pretty JSON) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return path
