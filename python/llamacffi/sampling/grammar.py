"""A pre-parser of GBNF text: refuses a grammar nested or chained deeper than llama.cpp's recursive parser can take
(past a few thousand levels it overflows the C stack and the process dies), or whose repetitions expand past what
llama.cpp parses and steps through in a moment."""

from __future__ import annotations

import re

from ..errors import GrammarError
from ..limits import GRAMMAR_MAX_NESTING, GRAMMAR_MAX_REPEATED, GRAMMAR_MAX_RULES

__all__ = ["GRAMMAR_MAX_NESTING", "GRAMMAR_MAX_RULES", "check_grammar_shape"]


_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")  # {m}, {m,}, {m,n}, as llama.cpp reads them


def _count(digits: str) -> int:
    digits = digits.lstrip("0")
    return int(digits or "0") if len(digits) <= 9 else 10**9  # past any limit (and int()'s digit limit)


def _scan(text: str) -> tuple[str, int]:
    """The grammar text as llama.cpp's parser reads its structure: without literals and character classes (where a
    backslash escapes the next character), the inside of token references (``<...>``, kept as ``<``) and comments
    (``#`` to the end of the line, which ``\\r`` ends as well as ``\\n``, as in llama.cpp's ``parse_space``); and the
    elements its repetitions add: for each ``x{m,n}``, max(m, n) copies of ``x``'s elements (a literal's characters,
    a class's, one for a rule or a group, which become references)."""
    out: list[str] = []
    copies = 0
    last = 1  # the elements of the item before a repetition
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            i += 1
            size = 0
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
                size += 1
            last = max(1, size)
        elif c == "<":  # <[id]> or <name>: llama.cpp reads to the first '>'
            out.append(c)
            while i < n and text[i] != ">":
                i += 1
            last = 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "{" and (m := _REPEAT.match(text, i)) is not None:
            copies += max(_count(m.group(1)), _count(m.group(2) or "0")) * last
            i = m.end() - 1
        else:
            out.append(c)
            last = last if c.isspace() else 1
        i += 1
    return "".join(out), copies


def check_grammar_shape(text: str) -> bool:
    """Refuse (GrammarError) a GBNF text nested or chained deeper than llama.cpp's parser can take. Return whether
    it matches tokens by id (``<[id]>``, ``<|name|>``, ``!<...>``): with those, llama.cpp's grammar can allow a
    token that it then refuses to accept, so each pick is tried on a copy first."""
    if not isinstance(text, str):
        raise TypeError(f"grammar must be str, not {type(text).__name__}")
    bare, copies = _scan(text)
    depth = deepest = 0
    for c in bare:
        if c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
    rules = bare.count("::=")
    if deepest > GRAMMAR_MAX_NESTING:
        raise GrammarError(f"the grammar nests groups {deepest} deep; at most {GRAMMAR_MAX_NESTING} are supported")
    if rules > GRAMMAR_MAX_RULES:
        raise GrammarError(f"the grammar has {rules} rules; at most {GRAMMAR_MAX_RULES} are supported")
    if copies > GRAMMAR_MAX_REPEATED:
        raise GrammarError(
            f"the grammar's repetitions ({{m,n}}) expand to {copies} elements; "
            f"at most {GRAMMAR_MAX_REPEATED} are supported"
        )
    return "<" in bare
