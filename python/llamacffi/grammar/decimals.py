"""Non-integer numbers within bounds, as a decimal automaton.

Validators compare numbers as binary floats, so a document just past a bound could round onto it. Bounded numbers
are therefore written without an exponent and with at most ``limits.GRAMMAR_MAX_SIGNIFICANT`` digits in all, and
bounds may have no more: distinct decimals of that many digits are distinct floats in the same order, so comparing
the digits agrees with comparing the floats.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from ..limits import GRAMMAR_MAX_SIGNIFICANT
from .automaton import Dfa, Ranges, dfa, emit, intersect
from .gbnf import Builder, char_class
from .regex import anchored

__all__ = ["number_range", "significant_digits"]

_D = "[0-9]"
_UNSIGNED = "[0-9][0-9.]*"  # any unsigned text; the structure automaton keeps only well-formed ones


def significant_digits(value: Decimal) -> int:
    return 0 if value == 0 else len(value.normalize().as_tuple().digits)


def _parts(m: Decimal) -> tuple[str, str]:
    """Integer digits and fraction digits (no trailing zeros) of a non-negative decimal."""
    whole, _, frac = f"{m:f}".partition(".")
    return whole.lstrip("0") or "0", frac.rstrip("0")


def _whole(i: str, greater: bool) -> list[str]:
    """Integer parts above (below) ``i``, each followed by any fraction."""
    n = len(i)
    alts = [f"[1-9]{_D}{{{n},}}"] if greater else (["0", f"[1-9]{_D}{{0,{n - 2}}}"] if n > 1 else [])
    for p in range(n):
        d = int(i[p])
        lo, hi = (d + 1, 9) if greater else (1 if p == 0 and n > 1 else 0, d - 1)
        if lo <= hi:
            alts.append(f"{i[:p]}[{lo}-{hi}]{_D}{{{n - p - 1}}}")
    return [rf"{a}(\.{_D}+)?" for a in alts]


def _fraction(f: str, greater: bool, strict: bool) -> list[str]:
    """What may follow the integer part ``i`` of the bound: nothing or ``.digits``, above (below) ``.f``."""
    alts = []
    for q in range(len(f)):
        d = int(f[q])
        lo, hi = (d + 1, 9) if greater else (0, d - 1)
        if lo <= hi:
            alts.append(rf"\.{f[:q]}[{lo}-{hi}]{_D}*")
    if greater:
        if f:
            alts.append(rf"\.{f}0*[1-9]{_D}*" if strict else rf"\.{f}{_D}*")
        else:
            alts.append(rf"\.0*[1-9]{_D}*" if strict else rf"(\.{_D}+)?")
    elif f:
        alts += [""] + [rf"\.{f[:q]}" for q in range(1, len(f))] + ([] if strict else [rf"\.{f}0*"])
    elif not strict:
        alts.append(r"(\.0+)?")
    return alts


def _magnitude(m: Decimal, greater: bool, strict: bool) -> str:
    """Unsigned texts whose value is above (below; or equal unless ``strict``) ``m``."""
    i, f = _parts(m)
    alts = _whole(i, greater)
    frac = _fraction(f, greater, strict)
    if frac:
        alts.append(i + "(" + "|".join(frac) + ")")
    return "|".join(f"({a})" for a in alts) if alts else "[]"


def _above(lo: Decimal, strict: bool) -> str:
    if lo > 0:
        return _magnitude(lo, True, strict)
    if lo == 0:
        return _magnitude(lo, True, True) if strict else _UNSIGNED
    return f"{_UNSIGNED}|-({_magnitude(-lo, False, strict)})"


def _below(hi: Decimal, strict: bool) -> str:
    if hi > 0:
        return f"{_magnitude(hi, False, strict)}|-{_UNSIGNED}"
    if hi == 0:
        return f"-{_UNSIGNED}" if strict else rf"0(\.0+)?|-{_UNSIGNED}"
    return f"-({_magnitude(-hi, True, strict)})"


@lru_cache(maxsize=1)
def _structure() -> Dfa:
    """Numbers without exponent, leading zeros or ``-0``, of at most GRAMMAR_MAX_SIGNIFICANT digits."""
    alts = []
    for k in range(1, GRAMMAR_MAX_SIGNIFICANT + 1):
        frac = rf"(\.{_D}{{1,{GRAMMAR_MAX_SIGNIFICANT - k}}})?" if k < GRAMMAR_MAX_SIGNIFICANT else ""
        alts.append(f"[1-9]{_D}{{{k - 1}}}{frac}")
    alts.append(rf"0(\.{_D}{{1,{GRAMMAR_MAX_SIGNIFICANT - 1}}})?")
    shape = dfa(anchored("-?(" + "|".join(f"({a})" for a in alts) + ")"), minimal=False)
    not_minus_zero = dfa(anchored(rf"{_UNSIGNED}|-(0\.0*[1-9][0-9.]*|[1-9][0-9.]*)"), minimal=False)
    return intersect(shape, not_minus_zero)


def _identity(ranges: Ranges) -> list[str]:
    return [char_class(ranges)]


@lru_cache(maxsize=256)
def _range_dfa(lo: Decimal | None, lo_open: bool, hi: Decimal | None, hi_open: bool) -> Dfa:
    d = _structure()
    work = 0
    sides = [(_above(lo, lo_open), hi is None)] if lo is not None else []
    sides += [(_below(hi, hi_open), True)] if hi is not None else []
    for side, last in sides:  # minimized once, at the end
        bound = dfa(anchored(side), minimal=False)
        d = intersect(d, bound, minimal=last)
        work += bound.work + d.work
    if sides:
        d.work = work  # the steps of this range (the shared structure automaton is built once)
    return d


def number_range(b: Builder, lo: Decimal | None, lo_open: bool, hi: Decimal | None, hi_open: bool) -> str | None:
    """A rule for the numbers between the bounds (None: unbounded on that side); None when none fits."""
    top = Decimal(10) ** GRAMMAR_MAX_SIGNIFICANT  # what is written has fewer digits: beyond it a bound decides nothing
    if (lo is not None and lo >= top) or (hi is not None and hi <= -top):
        return None
    lo = None if lo is not None and lo <= -top else lo
    hi = None if hi is not None and hi >= top else hi
    d = _range_dfa(lo, lo_open, hi, hi_open)
    b.spend_once(("number", lo, lo_open, hi, hi_open), d.work)
    if not d.accept:
        return None
    b.charge(len(d.accept))
    return emit(b, d, "num", _identity, "")
