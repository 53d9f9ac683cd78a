"""Tool calls in Gemma 4's syntax: one ``<|tool_call>call:NAME{...}<tool_call|>`` per call, back to back, its
arguments in Gemma's notation, where a string sits between ``<|"|>`` marks, a key is bare, and numbers, booleans
and null are written as in JSON::

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

The grammar of a forced call writes an object's members in sorted key order, as the template writes them, the
required ones always and the others where the model chooses, and no member the schema does not list (stricter than
the schema, never looser). A value follows its schema: a string is text between the marks, within its length
bounds, or one of its ``enum`` values; a number, integer, boolean or null is written as JSON, with its bounds; an
object or an array holds such values; a schema that says nothing takes any value of the notation. What the notation
cannot enforce (a string's ``pattern`` or ``format``, ``anyOf``, ...) is refused for a forced call. The marks are
special tokens of Gemma 4's vocabulary, which the answer writes out (:data:`MARKERS`).
"""

from __future__ import annotations

import json
import re

from ..grammar.combine import either, spliced
from ..grammar.gbnf import Builder, TooLarge, literal
from ..grammar.keywords import ANNOTATIONS
from ..grammar.strings import raw_text
from ..jsontypes import JSON, JSONObject
from . import hermes, qwen_xml, structured
from .errors import APIError, invalid

OPEN = "<|tool_call>"
CLOSE = "<tool_call|>"
QUOTE = '<|"|>'
MARKERS = (OPEN, CLOSE, QUOTE)
_CALL = "call:"
_DEPTH = 64  # the nesting a read value may have
_REFS = 16  # the references a grammar follows in a row
_KEY = re.compile(r"[^\s:{}\[\],<>]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_WORDS: tuple[tuple[str, JSON], ...] = (("true", True), ("false", False), ("null", None), ("None", None))
# the keywords a schema's value enforces here, by type, beside its type (and annotations)
_KEYWORDS = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "enum", "const"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum", "const"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum", "const"}),
    "boolean": frozenset({"enum", "const"}),
    "null": frozenset({"enum", "const"}),
}


# ---- reading ---------------------------------------------------------------------------------------------------


def read(text: str, tools: structured.Tools, parallel: bool, cut: bool = False) -> tuple[str | None, list[JSONObject]]:
    """The answer's text beside its calls and its calls, as :func:`.hermes.read` with calls of this syntax."""
    return hermes.read(text, tools, parallel, _block, cut, OPEN)


def _block(text: str, pos: int, tools: structured.Tools) -> tuple[list[JSONObject] | None, int] | None:
    """The call after the ``<|tool_call>`` that ends at ``pos`` (None when it is no call to a listed function), and
    where its ``<tool_call|>`` ends; None when its name, whole arguments or closing mark are not there."""
    if not text.startswith(_CALL, pos):
        return None
    start = pos + len(_CALL)
    brace = text.find("{", start, start + max(map(len, tools.functions), default=0) + 1)
    if brace < 0:
        return None
    try:
        arguments, end = value(text, brace)
    except ValueError:
        return None
    end = hermes.after_blanks(text, end)
    if not text.startswith(CLOSE, end):
        return None
    name = text[start:brace]
    if name not in tools.functions or not isinstance(arguments, dict):
        return None, end + len(CLOSE)
    return [structured.made(name, arguments)], end + len(CLOSE)


def value(text: str, pos: int, depth: int = 0) -> tuple[JSON, int]:
    """The value in Gemma's notation that starts at ``pos``, and where it ends. Raises ValueError where there is
    none, or it nests deeper than a bound."""
    if depth > _DEPTH:
        raise ValueError("nested too deep")
    if text.startswith(QUOTE, pos):
        end = text.find(QUOTE, pos + len(QUOTE))
        if end < 0:
            raise ValueError("a string not closed")
        return text[pos + len(QUOTE) : end], end + len(QUOTE)
    if text.startswith("{", pos):
        return _object(text, pos + 1, depth)
    if text.startswith("[", pos):
        items: list[JSON] = []
        pos = hermes.after_blanks(text, pos + 1)
        if text.startswith("]", pos):
            return items, pos + 1
        while True:
            item, pos = value(text, hermes.after_blanks(text, pos), depth + 1)
            items.append(item)
            pos = hermes.after_blanks(text, pos)
            if text.startswith("]", pos):
                return items, pos + 1
            if not text.startswith(",", pos):
                raise ValueError("an array not closed")
            pos += 1
    for word, meant in _WORDS:
        if text.startswith(word, pos):
            return meant, pos + len(word)
    m = _NUMBER.match(text, pos)
    if m is None:
        raise ValueError("no value")
    number: JSON = json.loads(m.group())
    return number, m.end()


def _object(text: str, pos: int, depth: int) -> tuple[JSON, int]:
    """The members of an object whose ``{`` ends at ``pos``, and where its ``}`` ends; a key is bare, or between
    the marks."""
    members: JSONObject = {}
    pos = hermes.after_blanks(text, pos)
    if text.startswith("}", pos):
        return members, pos + 1
    while True:
        if text.startswith(QUOTE, pos):
            key, pos = value(text, pos, depth + 1)
        else:
            m = _KEY.match(text, pos)
            if m is None:
                raise ValueError("no key")
            key, pos = m.group(), m.end()
        pos = hermes.after_blanks(text, pos)
        if not isinstance(key, str) or key in members or not text.startswith(":", pos):
            raise ValueError("no member")
        members[key], pos = value(text, hermes.after_blanks(text, pos + 1), depth + 1)
        pos = hermes.after_blanks(text, pos)
        if text.startswith("}", pos):
            return members, pos + 1
        if not text.startswith(",", pos):
            raise ValueError("an object not closed")
        pos = hermes.after_blanks(text, pos + 1)


def held_from(text: str) -> int:
    """Where the text that may be calls starts (its length when it holds none), as :func:`.hermes.held_from`."""
    return hermes.held_from(text, OPEN)


# ---- the grammar -----------------------------------------------------------------------------------------------


def grammar(tools: structured.Tools, answer: str | None, parallel: bool) -> str:
    """The grammar of the answer: calls to the chosen function (to any for ``"required"`` and ``"auto"``), one only
    for a named function or without ``parallel``; beside an ``answer`` grammar (``"auto"`` with a JSON
    ``response_format``), the calls or a document of it."""
    names = structured.chosen(tools)
    many = parallel and tools.choice in ("required", "auto")
    b = Builder()
    values: list[str] = []  # the rules of the JSON values, renamed apart
    try:
        calls = []
        for name in names:
            if not name or _KEY.fullmatch(name) is None:
                raise structured.unwritable(name, "in a call")
            params = tools.functions[name]["parameters"]
            assert isinstance(params, dict)  # parse_tools checked it
            body = _Values(b, values, name, params, names).of(params, "", 0)
            calls.append(f"{literal(OPEN + _CALL + name)} {body} {literal(CLOSE)}")
        call = b.rule("call", " | ".join(calls))
        blocks = b.text(f"{call}+" if many else call) + "".join(values)
    except TooLarge as exc:
        raise invalid(
            f"tools: the calls in the chat template's syntax need too large a grammar: {exc}",
            "tools",
            "unsupported_schema",
        ) from None
    return blocks if answer is None else either(blocks, answer)


class _Values:
    """The rules of the values of one function's parameters, in Gemma's notation."""

    def __init__(self, b: Builder, values: list[str], name: str, params: JSONObject, names: list[str]) -> None:
        self.b = b
        self.values = values
        self.name = name
        self.params = params
        self.names = names

    def refused(self, what: str, where: str) -> APIError:
        said = f"tools: function {self.name!r}: Gemma 4's notation cannot enforce {what}"
        return invalid(f"{said} (at {where or 'the top'} of its parameters)", "tools", "unsupported_schema")

    def of(self, schema: JSON, where: str, refs: int) -> str:
        """The grammar of a value of ``schema`` (at ``where`` in the parameters)."""
        if schema is True or schema == {}:
            return self.any()
        if not isinstance(schema, dict):
            raise self.refused("a schema no value meets", where)
        ref = schema.get("$ref")
        if ref is not None:
            if refs >= _REFS or len(schema) > 1:
                raise self.refused("a recursive reference, or one beside other keywords", where)
            return self.of(self.resolved(ref, where), where, refs + 1)
        keys = {k for k in schema if k not in ANNOTATIONS and not k.startswith("x-")}
        kind = schema.get("type")
        if kind is None and keys <= {"enum", "const"} and keys:
            kind = _kind(schema)
        if isinstance(kind, list) and kind and all(isinstance(k, str) for k in kind):
            return "(" + " | ".join(self.of({**schema, "type": k}, where, refs) for k in dict.fromkeys(kind)) + ")"
        if not isinstance(kind, str) or kind not in _KEYWORDS:
            extra = sorted(keys - {"type"})
            raise self.refused(repr(extra[0]) if extra else "a value without a type", where)
        extra = sorted(keys - {"type"} - _KEYWORDS[kind])
        if extra:
            raise self.refused(repr(extra[0]), where)
        if kind == "object":
            return self.members(schema, where, refs)
        if kind == "array":
            return self.items(schema, where, refs)
        if kind == "string":
            if qwen_xml.form(schema, QUOTE) != "text":
                raise self.refused("these strings", where)
            strings = [schema["const"]] if "const" in schema else schema.get("enum")
            if isinstance(strings, list):
                return "(" + " | ".join(literal(QUOTE + str(s) + QUOTE) for s in dict.fromkeys(strings)) + ")"
            lo, hi = schema.get("minLength", 0), schema.get("maxLength")
            assert isinstance(lo, int) and (hi is None or isinstance(hi, int))  # the schema compiled in parse_tools
            return f"{literal(QUOTE)} {raw_text(self.b, 'text', QUOTE, lo, hi)} {literal(QUOTE)}"
        enum = schema.get("enum")
        if any(isinstance(v, str) for v in [schema.get("const"), *(enum if isinstance(enum, list) else [])]):
            raise self.refused("strings among other values", where)
        # a number, integer, boolean or null: written as in JSON, its grammar compiled from the schema
        compiled = structured.compile_schema(schema, "tools", self.names)
        body, rules = spliced(compiled, f"v{len(self.values)}-")
        self.values.append(rules)
        return f"({body})"

    def resolved(self, ref: JSON, where: str) -> JSON:
        """The schema a local reference (``#/$defs/NAME`` or ``#/definitions/NAME``) points to."""
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise self.refused(f"the reference {ref!r}", where)
        defs = self.params.get(parts[1])
        target = defs.get(parts[2].replace("~1", "/").replace("~0", "~")) if isinstance(defs, dict) else None
        if target is None:
            raise self.refused(f"the reference {ref!r}", where)
        return target

    def members(self, schema: JSONObject, where: str, refs: int) -> str:
        """An object of the listed properties, in sorted key order, the required ones always; any object where it
        lists none and does not forbid others."""
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        assert isinstance(props, dict) and isinstance(required, list)
        listed: dict[str, JSON] = {**props, **{r: True for r in required if isinstance(r, str) and r not in props}}
        if not listed and schema.get("additionalProperties", True) is not False:
            return self.any_object()
        for key in listed:
            if _KEY.fullmatch(key) is None:
                raise structured.unwritable(self.name, f"{key!r} as a key")
        b = self.b
        # going back from the last key: ``after``, the members from this one on once one has been written (each
        # after a comma); ``first``, the members from this one on with none written yet ("" for none at all)
        after, first = "", ""
        for key in sorted(listed, reverse=True):
            member = f"{literal(key + ':')} {self.of(listed[key], f'{where}/properties/{key}', refs)}"
            comma = f"{literal(',')} {member}"
            if key in required:
                after, first = f"{comma} {after}", f"{member} {after}"
            else:
                after, first = f"({comma})? {after}", f"({member} {after})" + (f" | {first}" if first else "?")
            after, first = b.rule("after", after.strip()), b.rule("first", first.strip())
        return f"{literal('{')} {first} {literal('}')}"

    def items(self, schema: JSONObject, where: str, refs: int) -> str:
        item = self.of(schema.get("items", True), f"{where}/items", refs)
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        assert isinstance(lo, int) and (hi is None or isinstance(hi, int))
        if hi == 0:
            return literal("[]")
        more = self.b.repeat(f"({literal(',')} {item})", max(lo - 1, 0), None if hi is None else hi - 1)
        listed = f"{item} {more}"
        return f"{literal('[')} {listed if lo > 0 else f'({listed})?'} {literal(']')}"

    def any(self) -> str:
        """Any value of the notation."""
        b = self.b
        if "gemma-any" in b.memo:
            return b.memo["gemma-any"]
        name = b.name("any")
        b.memo["gemma-any"] = name
        text = f"{literal(QUOTE)} {raw_text(b, 'text', QUOTE)} {literal(QUOTE)}"
        number = '"-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?'
        b.define(name, f'{text} | {self.any_object()} | {self.any_list()} | {number} | "true" | "false" | "null"')
        return name

    def any_object(self) -> str:
        b = self.b
        if "gemma-object" in b.memo:
            return b.memo["gemma-object"]
        name = b.name("object")
        b.memo["gemma-object"] = name
        member = f"[^ \\t\\n\\r:{{}}\\[\\],<>]+ {literal(':')} {self.any()}"
        b.define(name, f"{literal('{')} ({member} ({literal(',')} {member})*)? {literal('}')}")
        return name

    def any_list(self) -> str:
        b = self.b
        if "gemma-list" in b.memo:
            return b.memo["gemma-list"]
        name = b.name("list")
        b.memo["gemma-list"] = name
        b.define(name, f"{literal('[')} ({self.any()} ({literal(',')} {self.any()})*)? {literal(']')}")
        return name


def _kind(schema: JSONObject) -> str | None:
    """The type of an ``enum`` or ``const`` schema's values, where they have one."""
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if not isinstance(values, list) or not values:
        return None
    kinds = {"string" if isinstance(v, str) else "boolean" if isinstance(v, bool) else "null" if v is None
             else "number" if isinstance(v, (int, float)) else "other" for v in values}  # fmt: skip
    return kinds.pop() if len(kinds) == 1 and "other" not in kinds else None
