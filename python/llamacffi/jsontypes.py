"""JSON as Python holds it: what :func:`json.loads` returns and :func:`json.dumps` takes. The one type for values
whose shape only a check at run time knows (request bodies, JSON Schemas) and for the objects the server sends."""

from __future__ import annotations

from typing import TypeAlias, TypeGuard

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
JSONObject: TypeAlias = dict[str, JSON]

__all__ = ["JSON", "JSONObject", "is_integers", "is_strings"]


def is_strings(value: object) -> TypeGuard[list[str]]:
    """Whether ``value`` is a list of strings (empty included)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def is_integers(value: object) -> TypeGuard[list[int]]:
    """Whether ``value`` is a list of integers (``true`` and ``false`` are not integers here; empty included)."""
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
