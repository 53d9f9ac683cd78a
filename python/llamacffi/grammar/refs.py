"""Where the sub-schemas of a schema are, so that references can be moved with a schema or checked for their scope."""

from __future__ import annotations

from collections.abc import Iterator

from ..jsontypes import JSON, JSONObject
from .keywords import pointer

__all__ = ["children", "rebase", "subschemas"]

# Keywords whose value is a schema, an array of schemas, or an object of schemas (draft 4 to 2020-12).
_ONE = frozenset(
    {
        "additionalProperties",
        "additionalItems",
        "items",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contentSchema",
    }
)
_MANY = frozenset({"anyOf", "oneOf", "allOf", "prefixItems", "items"})
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})


def children(schema: JSONObject) -> Iterator[tuple[tuple[str, ...], JSON]]:
    """The sub-schemas directly below ``schema``, each with its pointer tokens relative to it."""
    for key, value in schema.items():
        if key in _ONE and isinstance(value, (dict, bool)):
            yield (key,), value
        elif key in _MANY and isinstance(value, list):
            for i, sub in enumerate(value):
                yield (key, str(i)), sub
        elif key in _NAMED and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, (dict, bool)):
                    yield (key, name), sub


def subschemas(schema: JSON, ptr: str = "#") -> Iterator[tuple[str, JSONObject]]:
    """Every object schema within ``schema`` (itself included) with its pointer, parents first; values of
    ``const``, ``enum`` or ``default`` are data, not schemas, and are not entered."""
    todo: list[tuple[str, JSON]] = [(ptr, schema)]
    while todo:
        where, node = todo.pop()
        if not isinstance(node, dict):
            continue
        yield where, node
        todo.extend((pointer(where, *path), sub) for path, sub in reversed(list(children(node))))


def rebase(schema: JSON, base: str) -> JSON:
    """``schema`` as it must read once placed at the pointer ``base`` of another document: its references inside
    itself (``#...``) made to point there, and its ``$id`` dropped (it is no longer a root)."""
    if not isinstance(schema, dict):
        return schema
    out: JSONObject = {}
    for key, value in schema.items():
        if key == "$id":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            value = base + value[1:]
        elif key in _ONE and isinstance(value, (dict, bool)):
            value = _rebase_nested(value, base)
        elif key in _MANY and isinstance(value, list):
            value = [_rebase_nested(sub, base) for sub in value]
        elif key in _NAMED and isinstance(value, dict):
            value = {name: _rebase_nested(sub, base) for name, sub in value.items()}
        out[key] = value
    return out


def _rebase_nested(schema: JSON, base: str) -> JSON:
    """A sub-schema rebased; one with its own ``$id`` keeps it (and its references mean what they meant)."""
    if isinstance(schema, dict) and "$id" in schema:
        return schema
    return rebase(schema, base)
