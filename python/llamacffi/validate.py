"""The one way arguments are checked: each helper returns the value in its checked form or raises an exception that
names the argument, says what it must be and shows what it got.

The exception comes from ``fail(name, requirement, value)``; the default, :func:`failing` of
:class:`~llamacffi.errors.InvalidArgumentError`, says ``"{name} must be {requirement}, got {value!r}"``. The service
passes its own ``fail`` to keep its error type and message format.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection
from typing import SupportsFloat, SupportsIndex, TypeVar, cast

from .errors import InvalidArgumentError

Fail = Callable[[str, str, object], Exception]  # (name, requirement such as "an int in 1..8", value) -> the exception
T = TypeVar("T")


def failing(raising: type[Exception]) -> Fail:
    """A ``fail`` that raises ``raising("{name} must be {requirement}, got {value!r}")``."""

    def fail(name: str, requirement: str, value: object) -> Exception:
        return raising(f"{name} must be {requirement}, got {value!r}")

    return fail


invalid_argument: Fail = failing(InvalidArgumentError)


def _span(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo}"
    return f"<= {hi}" if lo is None else f"in {lo}..{hi}"


def as_int(
    name: str,
    value: object,
    lo: int | None = None,
    hi: int | None = None,
    *,
    exact: bool = False,
    fail: Fail = invalid_argument,
) -> int:
    """``value`` as a Python int within ``[lo, hi]``. numpy integers pass unless ``exact`` (which takes only
    ``int``); bools, floats and the rest fail."""
    if isinstance(value, bool) or (exact and not isinstance(value, int)):
        raise fail(name, "an int" if lo is None and hi is None else f"an int {_span(lo, hi)}", value)
    try:
        out = operator.index(cast(SupportsIndex, value))
    except TypeError:
        raise fail(name, "an int", value) from None
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise fail(name, _span(lo, hi), out)
    return out


def as_real(
    name: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    exact: bool = False,
    fail: Fail = invalid_argument,
) -> float:
    """``value`` as a float within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), never NaN. Anything ``float()``
    takes passes unless ``exact``, which takes only int and float (no bool)."""
    rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
    if exact and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise fail(name, f"a number in {rng}", value)
    try:
        out = float(cast(SupportsFloat, value))
    except (TypeError, ValueError, OverflowError):
        raise fail(name, "a number", value) from None
    if math.isnan(out) or (lo is not None and (out < lo or (lo_open and out == lo))) or (hi is not None and out > hi):
        raise fail(name, f"a number in {rng}", value)
    return out


def as_bool(name: str, value: object, *, fail: Fail = invalid_argument) -> bool:
    """``value`` when it is a bool; nothing else is taken (not 0 or 1 either)."""
    if isinstance(value, bool):
        return value
    raise fail(name, "a bool", value)


def as_optional_bool(name: str, value: object, *, fail: Fail = invalid_argument) -> bool | None:
    """``value`` when it is None or a bool."""
    if value is None or isinstance(value, bool):
        return value
    raise fail(name, "None or a bool", value)


def one_of(
    name: str, value: object, choices: Collection[T], *, fold_case: bool = False, fail: Fail = invalid_argument
) -> T:
    """``value`` when it is one of ``choices`` (compared in lower case with ``fold_case``)."""
    key = value.lower() if fold_case and isinstance(value, str) else value
    try:
        found = key in choices
    except TypeError:  # unhashable
        found = False
    if not found:
        raise fail(name, f"one of {', '.join(map(str, choices))}", value)
    return cast(T, key)
