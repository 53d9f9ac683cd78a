"""``allOf``: the conjunction of schemas merged into one schema, where that can be done exactly.

Sub-schemas that meet (two ``properties`` entries with the same name, two ``items``) are not merged here but
become a new ``allOf`` that the compiler meets later, so recursive definitions merge level by level.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..jsontypes import JSON, JSONObject
from ..limits import GRAMMAR_MAX_REF_CHAIN
from .keywords import ANNOTATIONS, array, check_keywords, fail, members, number, pointer, text, type_names

__all__ = ["canonical", "conjoin", "merge_all", "same_value"]

Schema = JSON  # a JSON Schema: an object, or true / false
Resolve = Callable[[str, str], tuple[Schema, str]]

_LOWER = ("minimum", "minLength", "minItems")
_UPPER = ("maximum", "maxLength", "maxItems")


def canonical(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _numbers_as_values(value: JSON) -> JSON:
    """``value`` with integral floats made ints, at any depth."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_numbers_as_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers_as_values(v) for k, v in value.items()}
    return value


def same_value(value: JSON) -> str:
    """A text equal for values JSON Schema calls equal: numbers by value (1 and 1.0), at any depth."""
    return canonical(_numbers_as_values(value))


def conjoin(a: Schema, b: Schema) -> Schema:
    """A schema for "both ``a`` and ``b``", left for the compiler to merge when it reaches it."""
    if a is True or a == {}:
        return b
    if b is True or b == {} or canonical(a) == canonical(b):
        return a
    if a is False or b is False:
        return False
    return {"allOf": [a, b]}


def _flatten(schema: Schema, ptr: str, resolve: Resolve, out: list[tuple[JSONObject, str]], depth: int) -> bool:
    """Collect the conjuncts of ``schema`` (its allOf members and $ref targets); False if one is ``false``."""
    if depth > GRAMMAR_MAX_REF_CHAIN:
        raise fail(f"more than {GRAMMAR_MAX_REF_CHAIN} nested allOf / $ref levels (a reference cycle?)", ptr)
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict):
        raise fail(f"a schema must be an object or a boolean, not {type(schema).__name__}", ptr)
    check_keywords(schema, ptr)
    rest = {
        k: v
        for k, v in schema.items()
        if k not in ("allOf", "$ref") and k not in ANNOTATIONS and not k.startswith("x-")
    }
    if rest:
        out.append((rest, ptr))
    if "$ref" in schema:
        target, target_ptr = resolve(text(schema["$ref"]), pointer(ptr, "$ref"))
        if not _flatten(target, target_ptr, resolve, out, depth + 1):
            return False
    members = schema.get("allOf", [])
    if not isinstance(members, list) or (not members and "allOf" in schema):
        raise fail("allOf must be a non-empty array of schemas", pointer(ptr, "allOf"), "allOf")
    return all(_flatten(member, pointer(ptr, "allOf", i), resolve, out, depth + 1) for i, member in enumerate(members))


def _meet_types(a: JSON, b: JSON) -> list[str]:
    ta, tb = set(type_names(a)), set(type_names(b))
    out = ta & tb
    if ("integer" in ta and "number" in tb) or ("integer" in tb and "number" in ta):
        out.add("integer")
    return sorted(out)


def _meet(out: JSONObject, key: str, value: JSON, ptr: str) -> None:
    """Merge one keyword of a further conjunct into ``out``."""
    if key not in out:
        out[key] = value
        return
    old = out[key]
    where = pointer(ptr, "allOf")
    if key == "type":
        out[key] = [*_meet_types(old, value)]
        if not out[key]:
            raise fail("allOf: the types of its members exclude each other, no value can match", where, "allOf")
    elif key == "enum":
        keep = {same_value(v) for v in array(value)}
        out[key] = [v for v in array(old) if same_value(v) in keep]
        if not out[key]:
            raise fail("allOf: the enum / const values of its members exclude each other", where, "allOf")
    elif key == "required":
        out[key] = [*dict.fromkeys(map(text, [*array(old), *array(value)]))]
    elif key in _LOWER or key in _UPPER:
        if not isinstance(value, (int, float)) or not isinstance(old, (int, float)):
            raise fail(f"allOf: {key} must be a number", where, key)
        out[key] = max(old, value) if key in _LOWER else min(old, value)
    elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(old, bool) and not isinstance(value, bool):
        out[key] = max(number(old), number(value)) if key == "exclusiveMinimum" else min(number(old), number(value))
    elif key in ("additionalProperties", "items") and not isinstance(old, list) and not isinstance(value, list):
        out[key] = conjoin(old, value)
    elif key == "uniqueItems":
        out[key] = bool(old or value)
    elif canonical(old) != canonical(value):
        raise fail(f"allOf: two members give different {key!r}, which cannot be merged", where, key)


def _meet_properties(out: JSONObject, part: JSONObject) -> None:
    """Merge ``properties``: a name known to one side only must also match the other side's extra-property
    schema, when that side has one."""
    mine = dict(members(out.get("properties", {})))
    theirs = members(part.get("properties", {}))
    for name, sub in theirs.items():
        mine[name] = conjoin(mine[name], sub) if name in mine else conjoin(sub, out.get("additionalProperties", True))
    for name in list(mine):
        if name not in theirs:
            mine[name] = conjoin(mine[name], part.get("additionalProperties", True))
    out["properties"] = mine


def merge_all(schema: JSONObject, ptr: str, resolve: Resolve) -> Schema:
    """One schema equivalent to ``schema`` with its ``allOf`` (and ``$ref``) merged in, or False."""
    parts: list[tuple[JSONObject, str]] = []
    if not _flatten(schema, ptr, resolve, parts, 0):
        return False
    out: JSONObject = {}
    for part, part_ptr in parts:
        part = dict(part)
        if "const" in part:
            const = part.pop("const")
            part["enum"] = [v for v in array(part.get("enum", [const])) if same_value(v) == same_value(const)]
            if not part["enum"]:
                raise fail("const and enum exclude each other, no value can match", part_ptr, "const")
        if "properties" in part or "properties" in out:
            _meet_properties(out, part)
        for key, value in part.items():
            if key != "properties":
                _meet(out, key, value, ptr)
    if "anyOf" in out and "oneOf" in out:
        raise fail("allOf: members with both anyOf and oneOf cannot be merged", pointer(ptr, "allOf"), "allOf")
    return out
