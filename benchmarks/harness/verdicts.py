"""The verdicts of the targets: a row's status from its ratios and the limits of :mod:`.targets`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import targets as T
from .targets import PEER

Row = dict[str, Any]
Judge = Callable[[Row], str]


def _missing(row: Row, key: str) -> str | None:
    c = row[key]
    if c is None or "error" in c:
        return str((c or {}).get("error", "not measured"))
    return None


def _unmeasured(row: Row) -> str | None:
    """The status of a target whose llamacffi side, reference or ratio is missing; None when all are there."""
    why = _missing(row, "llamacffi") or _missing(row, "reference")
    return f"not measured: {why}" if why or row["ratio_reference"] is None else None


def _verdict(checks: tuple[tuple[str, bool], ...]) -> str:
    """ "met", or "NOT met (...)" naming the checks that failed."""
    failed = [name for name, ok in checks if not ok]
    return "NOT met (" + ", ".join(failed) + ")" if failed else "met"


def ratio_judge(ok: Callable[[float], bool]) -> Judge:
    """A judge of the ratio to the reference: ``ok(median)`` tells whether the target is met."""

    def judge(row: Row) -> str:
        return _unmeasured(row) or ("met" if ok(row["ratio_reference"]["median"]) else "NOT met")

    return judge


def at_least(limit: float) -> Judge:
    return ratio_judge(lambda r: r >= limit)


def at_most(limit: float) -> Judge:
    return ratio_judge(lambda r: r <= limit)


def service_judge(row: Row) -> str:
    unmeasured = _unmeasured(row)
    if unmeasured:
        return unmeasured
    vs_cpp = row["ratio_reference"]["median"] >= T.SERVICE_GENERATE
    peer_why = _missing(row, "peer")
    if peer_why or row["ratio_peer"] is None:
        return ("met" if vs_cpp else "NOT met") + f" vs llama.cpp; vs {PEER}: {peer_why}"
    vs_peer = row["ratio_peer"]["median"] >= T.SERVICE_VS_PEER
    status = _verdict((("vs llama.cpp", vs_cpp), (f"vs {PEER}", vs_peer)))
    if not vs_peer:
        # The C program itself over the peer: what a binding with no overhead at all would measure.
        ceiling = row["reference"]["median"] / row["peer"]["median"]
        status += f"; llama-bench itself is {ceiling:.3f}× {PEER} here"
    return status


def sampler_judge(limit_us: float) -> Judge:
    def judge(row: Row) -> str:
        return _unmeasured(row) or _verdict(
            (
                (f"> {limit_us:.0f} µs", row["llamacffi"]["median"] <= limit_us),
                ("not faster than NativeSampler", row["ratio_reference"]["median"] < 1.0),
            )
        )

    return judge


def scaling_judge(limit: float) -> Judge:
    def judge(row: Row) -> str:
        why = _missing(row, "llamacffi")
        if why:
            return f"not measured: {why}"
        return "met" if row["llamacffi"]["median"] >= limit else "NOT met"

    return judge
