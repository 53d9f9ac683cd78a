"""When ``oneOf`` can be enforced: alternatives that no document can match twice.

A grammar accepts the union of the alternatives; it cannot reject a document that two of them match. So oneOf is
compiled only when its alternatives are provably disjoint: different JSON types, disjoint const / enum values, or
objects that require one property whose const / enum values differ (a discriminator).
"""

from __future__ import annotations

from collections.abc import Callable

from ..jsontypes import JSON, JSONObject, is_strings
from .merge import same_value

__all__ = ["disjoint"]

Resolve = Callable[[str, str], tuple[JSON, str]]
_ALL = frozenset({"object", "array", "string", "number", "boolean", "null"})


def _deref(s: JSON, resolve: Resolve, depth: int = 0) -> JSON:
    while (
        isinstance(s, dict)
        and set(s) - {"$ref"} <= {"title", "description", "$comment"}
        and isinstance(ref := s.get("$ref"), str)
        and depth < 16
    ):
        s = resolve(ref, "#")[0]
        depth += 1
    return s


def _kind(v: JSON) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _same(v: JSON) -> str:
    """A text equal for equal JSON values (1 and 1.0 are equal, also inside arrays and objects)."""
    return same_value(v)


def _values(s: JSON) -> set[str] | None:
    if not isinstance(s, dict):
        return None
    if "const" in s:
        return {_same(s["const"])}
    if isinstance(enum := s.get("enum"), list):
        return {_same(v) for v in enum}
    return None


def _kinds(s: JSON, resolve: Resolve) -> frozenset[str]:
    s = _deref(s, resolve)
    if not isinstance(s, dict):
        return _ALL if s is not False else frozenset()
    kinds = _ALL | {"integer"}
    if "type" in s:
        t = s["type"]
        kinds = frozenset([t] if isinstance(t, str) else t if is_strings(t) else [])
    values = [s["const"]] if "const" in s else s.get("enum")
    if isinstance(values, list):
        kinds = frozenset(_kind(v) for v in values)
    for key in ("anyOf", "oneOf"):
        if isinstance(alts := s.get(key), list):
            union: frozenset[str] = frozenset()
            for alt in alts:
                union |= _kinds(alt, resolve)
            kinds &= union | ({"integer"} if "number" in union else set())
    if isinstance(members := s.get("allOf"), list):
        for member in members:
            k = _kinds(member, resolve)
            kinds &= k | ({"integer"} if "number" in k else set())
    return frozenset(kinds)


def _kinds_meet(a: frozenset[str], b: frozenset[str]) -> bool:
    return bool(a & b) or ("integer" in a and "number" in b) or ("number" in a and "integer" in b)


def disjoint(a: JSON, b: JSON, resolve: Resolve) -> bool:
    """True when no document can match both ``a`` and ``b`` (a sound, incomplete test)."""
    a, b = _deref(a, resolve), _deref(b, resolve)
    if a is False or b is False:
        return True
    if not _kinds_meet(_kinds(a, resolve), _kinds(b, resolve)):
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and not va & vb:
        return True
    if (
        isinstance(a, dict)
        and isinstance(b, dict)
        and (_kinds(a, resolve) <= {"object"} or _kinds(b, resolve) <= {"object"})
    ):
        # every document both match is an object, so both sides' object keywords apply to it
        return _objects_disjoint(a, b, resolve) or _objects_disjoint(b, a, resolve)
    return False


def _objects_disjoint(a: JSONObject, b: JSONObject, resolve: Resolve) -> bool:
    pa, pb = a.get("properties", {}), b.get("properties", {})
    if not isinstance(pa, dict) or not isinstance(pb, dict):
        return False
    req_a, req_b = a.get("required", []), b.get("required", [])
    if not is_strings(req_a) or not is_strings(req_b):
        return False
    # b requires a member that a forbids
    if a.get("additionalProperties") is False and any(name not in pa for name in req_b):
        return True
    if any(pa.get(name) is False for name in req_b):
        return True
    # a required discriminator with disjoint values
    for name in set(req_a) & set(req_b):
        if name in pa and name in pb:
            x, y = _values(_deref(pa[name], resolve)), _values(_deref(pb[name], resolve))
            if x is not None and y is not None and not x & y:
                return True
    return False
