"""Integers within bounds, written as an exact digit automaton (no leading zeros, no ``-0``)."""

from __future__ import annotations

from ..limits import GRAMMAR_MAX_DIGITS
from .automaton import Dfa, Ranges, Work, emit, normalize
from .gbnf import Builder, char_class
from .primitives import integer

__all__ = ["integer_range"]


Span = tuple[str, str]  # equal-length digit strings (lo, hi): the digit strings between them


def _spans(lo: int, hi: int) -> frozenset[Span]:
    """The decimal spellings of ``lo..hi`` (``0 <= lo <= hi``), one span per length."""
    out = set()
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        z = min(hi, 10**n - 1)
        if a <= z:
            out.add((str(a), str(z)))
    return frozenset(out)


def _step(spans: frozenset[Span], digit: str) -> frozenset[Span]:
    """What remains of ``spans`` after reading ``digit``."""
    out = set()
    for lo, hi in spans:
        if lo and lo[0] <= digit <= hi[0]:
            rest = len(lo) - 1
            out.add((lo[1:] if digit == lo[0] else "0" * rest, hi[1:] if digit == hi[0] else "9" * rest))
    return frozenset(out)


def _automaton(pos: frozenset[Span], neg: frozenset[Span]) -> Dfa:
    """The minimal-ish DFA over digits (and a leading "-" for ``neg``): states are the remaining spans."""
    d = Dfa()
    d.add(False)
    work = Work()
    index: dict[frozenset[Span], int] = {}
    todo: list[tuple[frozenset[Span], int]] = []

    def state(spans: frozenset[Span]) -> int:
        if spans not in index:
            index[spans] = d.add(("", "") in spans)
            todo.append((spans, index[spans]))
        return index[spans]

    if neg:
        d.edges[0].append((((0x2D, 0x2D),), state(neg)))
    first = [(pos, 0)]
    while first or todo:
        spans, s = first.pop() if first else todo.pop()
        by_target: dict[int, list[tuple[int, int]]] = {}
        work.add(10 * sum(len(lo) for lo, _ in spans))
        for digit in "0123456789":
            nxt = _step(spans, digit)
            if nxt:
                by_target.setdefault(state(nxt), []).append((ord(digit), ord(digit)))
        d.edges[s].extend((normalize(rs), t) for t, rs in by_target.items())
    d.work = work.steps
    return d


def _identity(ranges: Ranges) -> list[str]:
    return [char_class(ranges)]


def integer_range(b: Builder, lo: int | None, hi: int | None) -> str | None:
    """A rule for the integers in ``[lo, hi]`` (None: unbounded, up to GRAMMAR_MAX_DIGITS digits); None when empty."""
    if lo is None and hi is None:
        return integer(b)
    key = ("int", lo, hi)
    if key in b.memo:
        return b.memo[key]
    if lo is not None and hi is not None and lo > hi:
        return None
    top = 10 ** max(GRAMMAR_MAX_DIGITS, len(str(abs(lo or 0))), len(str(abs(hi or 0)))) - 1
    lo_ = -top if lo is None else lo
    hi_ = top if hi is None else hi
    pos = _spans(max(lo_, 0), hi_) if hi_ >= 0 else frozenset()
    neg = _spans(max(-hi_, 1), -lo_) if lo_ < 0 else frozenset()
    d = _automaton(pos, neg)
    b.spend(d.work)
    b.charge(len(d.accept))
    b.memo[key] = emit(b, d, "int", _identity, "")
    return b.memo[key]
