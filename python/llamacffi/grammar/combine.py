"""Grammars made of others: a compiled grammar between fixed texts, repeated, or beside a second grammar.

Each input is GBNF as :func:`~llamacffi.grammar.from_json_schema` writes it: ``root ::= <body>`` first, every other
rule named in lower case and none referring to ``root``.
"""

from __future__ import annotations

import re

from .gbnf import literal

__all__ = ["either", "spliced", "tagged"]

_RULE = re.compile(r"^([a-z][a-z0-9-]*) ::= ", re.M)
_TERMINAL_OR_NAME = re.compile(r'("(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\])|([a-z][a-z0-9-]*)')


def _split(grammar: str) -> tuple[str, str]:
    """The root's body and the other rules' text."""
    first, _, rest = grammar.partition("\n")
    if not first.startswith("root ::= "):
        raise ValueError("the grammar does not start with its root rule")
    return first.removeprefix("root ::= "), rest


def _names(grammar: str) -> set[str]:
    return set(_RULE.findall(grammar))


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken or any(t.startswith(name + "-") for t in taken):
        i += 1
        name = f"{base}{i}"
    return name


def tagged(grammar: str, before: str, after: str, *, separator: str | None = None) -> str:
    """``grammar``'s documents written between ``before`` and ``after``; with a ``separator``, one or more of them,
    separated by it."""
    body, rules = _split(grammar)
    name = _fresh("tagged", _names(grammar))
    block = f"{literal(before)} ({body}) {literal(after)}"
    if separator is None:
        return f"root ::= {block}\n{rules}"
    return f"root ::= {name} ({literal(separator)} {name})*\n{name} ::= {block}\n{rules}"


def spliced(grammar: str, prefix: str) -> tuple[str, str]:
    """``grammar``'s root body and its other rules, every name in both prefixed with ``prefix`` (a prefix no other
    rule of the grammar it joins starts with), to be used inside another grammar."""
    body, rules = _split(grammar)

    def renamed(text: str) -> str:
        return _TERMINAL_OR_NAME.sub(lambda m: m.group(1) or prefix + m.group(2), text)

    moved = ""
    for line in rules.splitlines():
        name, rule = line.split(" ::= ", 1)
        moved += f"{prefix}{name} ::= {renamed(rule)}\n"
    return renamed(body), moved


def either(first: str, second: str) -> str:
    """A grammar admitting what ``first`` or ``second`` admits: ``second``'s rules are renamed apart."""
    body1, rules1 = _split(first)
    body2, rules2 = spliced(second, _fresh("other", _names(first)) + "-")
    return f"root ::= ({body1}) | ({body2})\n{rules1}{rules2}"
