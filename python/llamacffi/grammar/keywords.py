"""Which schema keywords the compiler enforces, which it may ignore, and JSON pointers for error messages."""

from __future__ import annotations

from typing import Any

from ..errors import SchemaError

__all__ = ["ANNOTATIONS", "ENFORCED", "TYPES", "check_keywords", "fail", "pointer"]

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Keywords that never change which documents are valid.
ANNOTATIONS = frozenset({
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "$anchor", "$vocabulary",
    "readOnly", "writeOnly", "deprecated", "contentMediaType", "contentEncoding", "contentSchema", "$defs",
    "definitions", "discriminator", "example", "externalDocs", "xml",
})

ENFORCED = frozenset({
    "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
    "properties", "required", "additionalProperties",
    "items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
})

# Known keywords that would change validity and that no grammar here enforces: named in the error.
_WHY = {
    "multipleOf": "divisibility cannot be expressed by the grammar",
    "not": "negated schemas are not supported",
    "if": "conditional schemas are not supported",
    "then": "conditional schemas are not supported",
    "else": "conditional schemas are not supported",
    "patternProperties": "pattern-matched property names are not supported",
    "propertyNames": "constraints on property names are not supported",
    "minProperties": "property counts are not supported",
    "maxProperties": "property counts are not supported",
    "dependentRequired": "dependent properties are not supported",
    "dependentSchemas": "dependent schemas are not supported",
    "dependencies": "dependent properties are not supported",
    "unevaluatedProperties": "unevaluatedProperties is not supported (use additionalProperties)",
    "unevaluatedItems": "unevaluatedItems is not supported (use items)",
    "contains": "contains is not supported",
    "minContains": "contains is not supported",
    "maxContains": "contains is not supported",
    "$dynamicRef": "dynamic references are not supported",
    "$dynamicAnchor": "dynamic references are not supported",
    "$recursiveRef": "recursive references are not supported (use $ref)",
    "$recursiveAnchor": "recursive references are not supported (use $ref)",
    "nullable": "nullable is not JSON Schema (use \"type\": [..., \"null\"])",
}


def pointer(base: str, *parts: object) -> str:
    """``base`` extended by JSON pointer tokens (``~`` and ``/`` escaped)."""
    out = base
    for p in parts:
        out += "/" + str(p).replace("~", "~0").replace("/", "~1")
    return out


def fail(message: str, ptr: str, keyword: str = "") -> SchemaError:
    return SchemaError(message, ptr, keyword)


def check_keywords(schema: dict[str, Any], ptr: str) -> None:
    """Raise SchemaError for the first keyword that changes validity and is not enforced."""
    for key in schema:
        if key in ENFORCED or key in ANNOTATIONS or key.startswith("x-"):
            continue
        where = pointer(ptr, key)
        why = _WHY.get(key, "unknown keyword; it would not be enforced")
        raise fail(f"{key}: {why}", where, key)
    most = schema.get("maxItems")
    if schema.get("uniqueItems") not in (None, False) and not (isinstance(most, int) and most <= 1):
        raise fail("uniqueItems: distinct items cannot be enforced by the grammar", pointer(ptr, "uniqueItems"),
                   "uniqueItems")
