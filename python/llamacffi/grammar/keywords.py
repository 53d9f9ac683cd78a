"""Which schema keywords the compiler enforces, which it may ignore, and JSON pointers for error messages."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import SchemaError
from ..jsontypes import JSON, JSONObject

__all__ = ["ANNOTATIONS", "ENFORCED", "TYPES", "check_keywords", "fail", "is_unsatisfiable", "pointer", "unsatisfiable"]

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Keywords that never change which documents are valid.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "examples",
        "default",
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "$vocabulary",
        "readOnly",
        "writeOnly",
        "deprecated",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "$defs",
        "definitions",
        "discriminator",
        "example",
        "externalDocs",
        "xml",
    }
)

ENFORCED = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)

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
    "nullable": 'nullable is not JSON Schema (use "type": [..., "null"])',
}


def json_type(v: JSON) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def pointer(base: str, *parts: object) -> str:
    """``base`` extended by JSON pointer tokens (``~`` and ``/`` escaped)."""
    out = base
    for p in parts:
        out += "/" + str(p).replace("~", "~0").replace("/", "~1")
    return out


def fail(message: str, ptr: str, keyword: str = "") -> SchemaError:
    return SchemaError(message, ptr, keyword)


class _Unsatisfiable(SchemaError):
    unsatisfiable = True


def unsatisfiable(message: str, ptr: str, keyword: str = "") -> SchemaError:
    """A SchemaError saying that no value matches the schema at ``ptr``: a union leaves such a member out, an array
    ends before such an item, and an object omits such an optional property."""
    return _Unsatisfiable(message, ptr, keyword)


def is_unsatisfiable(e: SchemaError) -> bool:
    return bool(getattr(e, "unsatisfiable", False))


def _is_schema(v: JSON) -> bool:
    return isinstance(v, (dict, bool))


def _is_count(v: JSON) -> bool:
    return ((isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())) and v >= 0


def _is_number(v: JSON) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SHAPES: dict[str, tuple[Callable[[JSON], object], str]] = {
    "type": (
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v)),
        "a type name or a list of them",
    ),
    "enum": (lambda v: isinstance(v, list), "an array"),
    "anyOf": (lambda v: isinstance(v, list) and v and all(map(_is_schema, v)), "a non-empty array of schemas"),
    "oneOf": (lambda v: isinstance(v, list) and v and all(map(_is_schema, v)), "a non-empty array of schemas"),
    "allOf": (lambda v: isinstance(v, list) and v and all(map(_is_schema, v)), "a non-empty array of schemas"),
    "prefixItems": (lambda v: isinstance(v, list) and all(map(_is_schema, v)), "an array of schemas"),
    "items": (lambda v: _is_schema(v) or (isinstance(v, list) and all(map(_is_schema, v))), "a schema"),
    "additionalItems": (_is_schema, "a schema"),
    "additionalProperties": (_is_schema, "a schema"),
    "properties": (lambda v: isinstance(v, dict) and all(map(_is_schema, v.values())), "an object of schemas"),
    "$defs": (lambda v: isinstance(v, dict), "an object of schemas"),
    "definitions": (lambda v: isinstance(v, dict), "an object of schemas"),
    "required": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "an array of strings"),
    "minItems": (_is_count, "a non-negative integer"),
    "maxItems": (_is_count, "a non-negative integer"),
    "minLength": (_is_count, "a non-negative integer"),
    "maxLength": (_is_count, "a non-negative integer"),
    "pattern": (lambda v: isinstance(v, str), "a string"),
    "format": (lambda v: isinstance(v, str), "a string"),
    "$ref": (lambda v: isinstance(v, str), "a string"),
    "minimum": (_is_number, "a number"),
    "maximum": (_is_number, "a number"),
    "exclusiveMinimum": (lambda v: _is_number(v) or isinstance(v, bool), "a number"),
    "exclusiveMaximum": (lambda v: _is_number(v) or isinstance(v, bool), "a number"),
    "uniqueItems": (lambda v: isinstance(v, bool), "a boolean"),
}


def check_keywords(schema: JSONObject, ptr: str) -> None:
    """Raise SchemaError for the first keyword that changes validity and is not enforced, or is malformed."""
    for key, value in schema.items():
        shape = _SHAPES.get(key)
        if shape is not None and not shape[0](value):
            raise fail(f"{key} must be {shape[1]}, got {json_type(value)}", pointer(ptr, key), key)
        if key in ENFORCED or key in ANNOTATIONS or key.startswith("x-"):
            continue
        where = pointer(ptr, key)
        why = _WHY.get(key, "unknown keyword; it would not be enforced")
        raise fail(f"{key}: {why}", where, key)
    most = schema.get("maxItems")
    if schema.get("uniqueItems") not in (None, False) and not (isinstance(most, int) and most <= 1):
        raise fail(
            "uniqueItems: distinct items cannot be enforced by the grammar", pointer(ptr, "uniqueItems"), "uniqueItems"
        )


# What check_keywords has checked, read as its type: a value of another type here is a bug in this package.


def array(value: JSON) -> list[JSON]:
    """An array-valued keyword (``enum``, ``required``, ...)."""
    if not isinstance(value, list):
        raise TypeError(f"expected an array, got {json_type(value)}")
    return value


def members(value: JSON) -> JSONObject:
    """An object-valued keyword (``properties``, ``$defs``)."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {json_type(value)}")
    return value


def text(value: JSON) -> str:
    """A string-valued keyword (``$ref``, ``pattern``, ``format``)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {json_type(value)}")
    return value


def number(value: JSON) -> float:
    """A number-valued keyword (``minimum``, ``maxLength``, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {json_type(value)}")
    return value


def type_names(value: JSON) -> list[str]:
    """``type``: one name or a list of them."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise TypeError(f"expected type names, got {json_type(value)}")
    return [t for t in value if isinstance(t, str)]
