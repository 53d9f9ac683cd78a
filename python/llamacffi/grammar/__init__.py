"""Structured output: JSON schemas compiled to GBNF grammars for llama.cpp's grammar sampler.

:func:`from_json_schema` returns grammar text that admits only documents valid under the schema; pass it as
``NativeSampler(grammar=...)``. What cannot be enforced is refused with :class:`SchemaError` naming the keyword and
its JSON pointer, never ignored. The grammar may be stricter than the schema (it never admits an invalid document):

* compact spelling choices: properties in schema order, extra properties after the named ones under other keys (two
  extra members may share a key: each value is valid, whichever a parser keeps), numbers without leading zeros or
  ``-0``, at most 16 digits before the point, 18 after it and 3 in an exponent,
  whitespace of at most one space or one line break and 16 blanks between tokens, no whitespace around the document;
* ``type`` (names and lists), ``enum``, ``const``, ``anyOf``, ``oneOf`` (when its alternatives are disjoint: other
  types, other const / enum values, or a required discriminator property), ``allOf`` (merged; refused when two
  members give different patterns, formats or item lists), ``$ref`` to ``#...`` pointers (``$defs``,
  ``definitions``, recursion), ``properties``, ``required``, ``additionalProperties`` (absent: any extra member),
  ``items``, ``prefixItems``, ``additionalItems``, ``minItems``, ``maxItems``, ``minLength``, ``maxLength``,
  ``pattern`` (the subset in :mod:`llamacffi.grammar.regex`), ``format`` date, time, date-time (RFC 3339, real
  calendar days, upper-case ``T``/``Z``) and uuid; ``minimum`` / ``maximum`` / exclusive forms, exactly on
  integers, and on other numbers written without exponent in at most 15 significant digits (as the bounds must be),
  where comparing the digits agrees with the validators' float comparison;
* refused: other formats, ``multipleOf``, ``not``, ``if``/``then``/``else``,
  ``patternProperties``, ``propertyNames``, ``min/maxProperties``, ``dependent*``, ``unevaluated*``, ``contains``,
  ``uniqueItems: true``, unknown keywords (``x-`` extensions excepted), references outside the document, enum /
  const next to other constraints, grammars beyond a size budget (repetition counts over 2000, large automata),
  and an ``$id`` below the root with ``#...`` references inside it (they would resolve against that ``$id``;
  references resolve against the document root here). Annotations (title, description, default, examples,
  $schema, $id, $comment, readOnly...) are ignored.

Strings with a pattern or format, and extra keys, are deterministic automata; enum values (and anyOf of consts)
a trie; optional properties a linear chain; so llama.cpp's parser keeps few stacks on any emitted grammar.
"""

from __future__ import annotations

import json
from functools import lru_cache

from ..errors import SchemaError
from ..jsontypes import JSONObject
from .compiler import Compiler
from .gbnf import Builder
from .primitives import any_object

__all__ = ["JSON_GRAMMAR", "SchemaError", "any_json", "from_json_schema", "with_rules_of"]


def _any_object_grammar() -> str:
    b = Builder()
    return b.text(any_object(b))


JSON_GRAMMAR = _any_object_grammar()
"""GBNF for any JSON object (``response_format: {"type": "json_object"}``)."""


def any_json() -> str:
    """GBNF for any JSON object: :data:`JSON_GRAMMAR`."""
    return JSON_GRAMMAR


@lru_cache(maxsize=256)
def _compile(text: str) -> str:
    return Compiler(json.loads(text)).grammar()


def from_json_schema(schema: JSONObject | bool | str) -> str:
    """GBNF text (start rule ``root``) admitting exactly documents valid under ``schema`` (a dict, a boolean, or
    JSON text), possibly fewer (see the module docs). Raises :class:`SchemaError` for what it cannot enforce.
    Compiled grammars are cached by the schema's JSON text."""
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except ValueError as e:
            raise SchemaError(f"the schema is not valid JSON: {e}") from None
    else:
        parsed = schema
    if not isinstance(parsed, (dict, bool)):
        raise SchemaError(f"a schema must be a JSON object or a boolean, not {type(parsed).__name__}")
    try:
        text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"the schema is not JSON data: {e}") from None
    except RecursionError:
        raise SchemaError("the schema nests too deeply") from None
    try:
        return _compile(text)
    except RecursionError:
        raise SchemaError("the schema nests too deeply to compile") from None


def with_rules_of(schema: JSONObject, targets: list[str]) -> tuple[str, list[str]]:
    """``schema``'s grammar, as :func:`from_json_schema`, and the names of its rules for the ``$ref`` targets it
    reaches (pointers such as ``#/$defs/name``): several schemas compiled as one, sharing the rules they have in
    common, for a grammar that places each of them on its own."""
    compiler = Compiler(schema)
    try:
        text = compiler.grammar()
    except RecursionError:
        raise SchemaError("the schema nests too deeply to compile") from None
    return text, [compiler.rule_of(t) for t in targets]
