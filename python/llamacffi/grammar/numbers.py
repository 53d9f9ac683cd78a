"""Integers within bounds, written as an exact digit automaton (no leading zeros, no ``-0``)."""

from __future__ import annotations

from .automaton import EMPTY, Node, Ranges, chars, dfa, emit, lit
from .gbnf import Builder, char_class
from .primitives import MAX_DIGITS, integer

__all__ = ["integer_range"]


def _digits(lo: str, hi: str) -> Node:
    """Digit strings of equal length between ``lo`` and ``hi`` (inclusive, ``lo <= hi``)."""
    if not lo:
        return EMPTY
    a, z = int(lo[0]), int(hi[0])
    rest = len(lo) - 1
    if a == z:
        return ("seq", (lit(lo[0]), _digits(lo[1:], hi[1:])))
    alts: list[Node] = [("seq", (lit(lo[0]), _digits(lo[1:], "9" * rest)))]
    if z - a > 1:
        alts.append(("seq", (chars([(0x30 + a + 1, 0x30 + z - 1)]), ("rep", chars([(0x30, 0x39)]), rest, rest))))
    alts.append(("seq", (lit(hi[0]), _digits("0" * rest, hi[1:]))))
    return ("alt", tuple(alts))


def _magnitudes(lo: int, hi: int) -> Node:
    """Decimal spellings of the integers ``lo..hi`` (``0 <= lo <= hi``)."""
    alts: list[Node] = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        z = min(hi, 10 ** n - 1)
        if a <= z:
            alts.append(_digits(str(a).zfill(n), str(z)))
    return ("alt", tuple(alts))


def _identity(ranges: Ranges) -> list[str]:
    return [char_class(ranges)]


def integer_range(b: Builder, lo: int | None, hi: int | None) -> str | None:
    """A rule for the integers in ``[lo, hi]`` (None: unbounded, up to MAX_DIGITS digits); None when empty."""
    if lo is None and hi is None:
        return integer(b)
    key = ("int", lo, hi)
    if key in b.memo:
        return b.memo[key]
    if lo is not None and hi is not None and lo > hi:
        return None
    top = 10 ** max(MAX_DIGITS, len(str(abs(lo or 0))), len(str(abs(hi or 0)))) - 1
    lo_ = -top if lo is None else lo
    hi_ = top if hi is None else hi
    alts: list[Node] = []
    if hi_ >= 0:
        alts.append(_magnitudes(max(lo_, 0), hi_))
    if lo_ < 0:
        alts.append(("seq", (lit("-"), _magnitudes(max(-hi_, 1), -lo_))))
    d = dfa(("alt", tuple(alts)))
    b.charge(len(d.accept))
    b.memo[key] = emit(b, d, "int", _identity, "")
    return b.memo[key]
