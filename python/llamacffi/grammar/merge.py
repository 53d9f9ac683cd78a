"""``allOf``: the conjunction of schemas merged into one schema, where that can be done exactly.

Sub-schemas that meet (two ``properties`` entries with the same name, two ``items``) are not merged here but
become a new ``allOf`` that the compiler meets later, so recursive definitions merge level by level. A merged schema
is no place in the document: :class:`Merged` keeps where each of its keywords came from, so that an error found in
it names the member where the keyword is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..jsontypes import JSON, JSONObject
from ..limits import GRAMMAR_MAX_REF_CHAIN
from .keywords import (
    ANNOTATIONS,
    array,
    check_keywords,
    fail,
    members,
    number,
    pointer,
    text,
    type_names,
    unsatisfiable,
)

__all__ = ["Merged", "canonical", "conjoin", "merge_all", "same_value"]

Schema = JSON  # a JSON Schema: an object, or true / false
Resolve = Callable[[str, str], tuple[Schema, str]]
Place = Callable[[Schema, str], str]  # a sub-schema's pointer in the document, given the one it would have here

_LOWER = ("minimum", "minLength", "minItems")
_ITEMS = ("prefixItems", "items", "additionalItems")  # which schema an item meets depends on all three
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


def _flatten(
    schema: Schema, ptr: str, resolve: Resolve, place: Place, out: list[tuple[JSONObject, str]], depth: int
) -> str:
    """Collect the conjuncts of ``schema`` (its allOf members and $ref targets) with their pointers; return the
    pointer of a member that is ``false`` (no value matches), or ``""``."""
    if depth > GRAMMAR_MAX_REF_CHAIN:
        raise fail(f"more than {GRAMMAR_MAX_REF_CHAIN} nested allOf / $ref levels (a reference cycle?)", ptr)
    if schema is True:
        return ""
    if schema is False:
        return ptr
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
        if false_at := _flatten(target, target_ptr, resolve, place, out, depth + 1):
            return false_at
    members = schema.get("allOf", [])
    if not isinstance(members, list) or (not members and "allOf" in schema):
        raise fail("allOf must be a non-empty array of schemas", pointer(ptr, "allOf"), "allOf")
    for i, member in enumerate(members):
        if false_at := _flatten(member, place(member, pointer(ptr, "allOf", i)), resolve, place, out, depth + 1):
            return false_at
    return ""


def _meet_types(a: JSON, b: JSON) -> list[str]:
    ta, tb = set(type_names(a)), set(type_names(b))
    out = ta & tb
    if ("integer" in ta and "number" in tb) or ("integer" in tb and "number" in ta):
        out.add("integer")
    return sorted(out)


def _meet(out: JSONObject, key: str, value: JSON, here: str, before: str) -> None:
    """Merge one keyword of a further conjunct into ``out``: ``here`` is its pointer, ``before`` that of the
    keyword it meets."""
    if key not in out:
        out[key] = value
        return
    old = out[key]
    if key == "type":
        out[key] = [*_meet_types(old, value)]
        if not out[key]:
            raise unsatisfiable(
                f"allOf: these types and those at {before} exclude each other, no value can match", here, key
            )
    elif key == "enum":
        keep = {same_value(v) for v in array(value)}
        out[key] = [v for v in array(old) if same_value(v) in keep]
        if not out[key]:
            raise unsatisfiable(f"allOf: these enum / const values and those at {before} exclude each other", here, key)
    elif key == "required":
        out[key] = [*dict.fromkeys(map(text, [*array(old), *array(value)]))]
    elif key in _LOWER or key in _UPPER:
        if not isinstance(value, (int, float)) or not isinstance(old, (int, float)):
            raise fail(f"allOf: {key} must be a number", here, key)
        out[key] = max(old, value) if key in _LOWER else min(old, value)
    elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(old, bool) and not isinstance(value, bool):
        out[key] = max(number(old), number(value)) if key == "exclusiveMinimum" else min(number(old), number(value))
    elif key == "additionalProperties":
        out[key] = conjoin(old, value)
    elif key == "uniqueItems":
        out[key] = bool(old or value)
    elif canonical(old) != canonical(value):
        raise fail(f"allOf: {key} differs from the one at {before}, and the two cannot be merged", here, key)


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


@dataclass
class Merged:
    """An ``allOf`` merged into one schema (``False`` when a member is false, at ``false_at``), and ``origins``:
    the pointer each keyword and property of the merged schema would have, mapped to where it is in the document."""

    schema: Schema
    false_at: str = ""
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, ptr: str) -> str:
        """``ptr``, a place below the merged schema, as the place in the document it came from (unchanged when it
        is not below one of the merged schema's keywords)."""
        cut = len(ptr)
        while cut > 0:
            found = self.origins.get(ptr[:cut])
            if found is not None:
                return found + ptr[cut:]
            cut = ptr.rfind("/", 0, cut)
        return ptr


def _positional(part: JSONObject, part_ptr: str) -> tuple[list[tuple[JSON, str]], tuple[JSON, str]]:
    """The schemas a part gives the first items, and the one it gives the items after them, with their pointers,
    from either spelling: prefixItems and items (2020-12), or items as an array and additionalItems (draft 4-7)."""
    items = part.get("items", True)
    if isinstance(items, list):
        if "prefixItems" in part:
            raise fail("items as an array together with prefixItems", pointer(part_ptr, "items"), "items")
        first = [(sub, pointer(part_ptr, "items", i)) for i, sub in enumerate(items)]
        return first, (part.get("additionalItems", True), pointer(part_ptr, "additionalItems"))
    first = [(sub, pointer(part_ptr, "prefixItems", i)) for i, sub in enumerate(array(part.get("prefixItems", [])))]
    return first, (items, pointer(part_ptr, "items"))


def _meet_items(out: JSONObject, part: JSONObject, part_ptr: str, ptr: str, origins: dict[str, str]) -> None:
    """Merge the item schemas position by position (``out`` holds them as prefixItems and items): an item past
    one side's prefix meets that side's schema for the rest."""
    first, (rest, rest_at) = _positional(part, part_ptr)
    mine = array(out.pop("prefixItems", []))
    own = out.pop("items", True)
    merged = []
    for i in range(max(len(mine), len(first))):
        sub, at = first[i] if i < len(first) else (rest, rest_at)
        if i >= len(mine) and own is not True:
            origins.setdefault(pointer(ptr, "prefixItems", i), origins[pointer(ptr, "items")])
        if sub is not True:
            origins.setdefault(pointer(ptr, "prefixItems", i), at)
        merged.append(conjoin(mine[i] if i < len(mine) else own, sub))
    if merged:
        out["prefixItems"] = merged
    if rest is not True:
        origins.setdefault(pointer(ptr, "items"), rest_at)
    if (both := conjoin(own, rest)) is not True:
        out["items"] = both


def merge_all(schema: JSONObject, ptr: str, resolve: Resolve, place: Place = lambda _s, p: p) -> Merged:
    """One schema equivalent to ``schema`` with its ``allOf`` (and ``$ref``) merged in, or False. ``place`` gives
    a member's own pointer where it has one (a member of an ``allOf`` this module made lies elsewhere)."""
    parts: list[tuple[JSONObject, str]] = []
    false_at = _flatten(schema, ptr, resolve, place, parts, 0)
    if false_at:
        return Merged(False, false_at)
    out: JSONObject = {}
    origins: dict[str, str] = {}
    for part, part_ptr in parts:
        part = dict(part)
        here = {key: pointer(part_ptr, key) for key in part}
        if "const" in part:
            const = part.pop("const")
            here.setdefault("enum", here["const"])
            part["enum"] = [v for v in array(part.get("enum", [const])) if same_value(v) == same_value(const)]
            if not part["enum"]:
                raise unsatisfiable(
                    "const and enum exclude each other, no value can match", pointer(part_ptr, "const"), "const"
                )
        for key, where in here.items():
            if key not in _ITEMS:
                origins.setdefault(pointer(ptr, key), where)
        if any(key in part for key in _ITEMS):
            _meet_items(out, part, part_ptr, ptr, origins)
        if "properties" in part or "properties" in out:
            _meet_properties(out, part)
            for name in members(part.get("properties", {})):
                origins.setdefault(pointer(ptr, "properties", name), pointer(part_ptr, "properties", name))
        for key, value in part.items():
            if key != "properties" and key not in _ITEMS:
                _meet(out, key, value, here[key], origins[pointer(ptr, key)])
    if "anyOf" in out and "oneOf" in out:
        raise fail(
            f"allOf: anyOf at {origins[pointer(ptr, 'anyOf')]} and oneOf cannot be merged",
            origins[pointer(ptr, "oneOf")],
            "oneOf",
        )
    return Merged(out, origins=origins)
