"""The shared rules: bounded whitespace, and any JSON value, object, array, string and number.

Whitespace between tokens is at most one space, or one line break and up to ``GRAMMAR_MAX_INDENT`` spaces or tabs, so a
model cannot spend its tokens on blanks. Numbers have at most ``GRAMMAR_MAX_DIGITS`` digits in their integer part,
``GRAMMAR_MAX_FRACTION`` in their fraction (a float's shortest spelling fits) and three in their exponent, so it cannot
spin on digits either.
"""

from __future__ import annotations

from ..limits import GRAMMAR_MAX_DIGITS, GRAMMAR_MAX_FRACTION, GRAMMAR_MAX_INDENT
from .gbnf import Builder

__all__ = ["any_value", "boolean", "integer", "number", "string", "string_char", "ws"]


_WS = f'| " " | "\\n" [ \\t]{{0,{GRAMMAR_MAX_INDENT}}}'
# one character of a JSON string; \\u escapes of UTF-16 surrogates are left out so that every escape is one code
# point, as lengths count them
_CHAR = (
    '[^"\\\\\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" ([0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))'
)
_INT_PART = f'("0" | [1-9] [0-9]{{0,{GRAMMAR_MAX_DIGITS - 1}}})'


def ws(b: Builder) -> str:
    if "ws" not in b.memo:
        b.memo["ws"] = b.define(b.name("ws"), _WS)
        b.charge(GRAMMAR_MAX_INDENT)
    return b.memo["ws"]


def string_char(b: Builder) -> str:
    if "char" not in b.memo:
        b.memo["char"] = b.define(b.name("char"), _CHAR)
    return b.memo["char"]


def string(b: Builder) -> str:
    if "string" not in b.memo:
        b.memo["string"] = b.define(b.name("string"), f'"\\"" {string_char(b)}* "\\""')
    return b.memo["string"]


def integer(b: Builder) -> str:
    if "integer" not in b.memo:
        b.memo["integer"] = b.define(b.name("integer"), f'"-"? {_INT_PART}')
        b.charge(GRAMMAR_MAX_DIGITS)
    return b.memo["integer"]


def number(b: Builder) -> str:
    if "number" not in b.memo:
        b.memo["number"] = b.define(
            b.name("number"), f'"-"? {_INT_PART} ("." [0-9]{{1,{GRAMMAR_MAX_FRACTION}}})? ([eE] [-+]? [0-9]{{1,3}})?'
        )
        b.charge(3 * GRAMMAR_MAX_DIGITS)
    return b.memo["number"]


def boolean(b: Builder) -> str:
    if "boolean" not in b.memo:
        b.memo["boolean"] = b.define(b.name("boolean"), '"true" | "false"')
    return b.memo["boolean"]


def any_object(b: Builder) -> str:
    """Any JSON object."""
    any_value(b)
    return b.memo["object"]


def any_value(b: Builder) -> str:
    """Any JSON value (objects and arrays nest without bound)."""
    if "value" in b.memo:
        return b.memo["value"]
    w = ws(b)
    value = b.memo["value"] = b.name("value")
    obj = b.memo["object"] = b.name("object")
    arr = b.name("array")
    member = b.define(b.name("member"), f'{string(b)} {w} ":" {w} {value} {w}')
    b.define(obj, f'"{{" {w} ({member} ("," {w} {member})*)? "}}"')
    b.define(arr, f'"[" {w} ({value} {w} ("," {w} {value} {w})*)? "]"')
    b.define(value, f'{obj} | {arr} | {string(b)} | {number(b)} | {boolean(b)} | "null"')
    return value
