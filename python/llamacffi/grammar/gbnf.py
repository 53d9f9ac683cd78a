"""Writing GBNF text: escaping literals and character classes, and a rule table with a size budget."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from ..limits import GRAMMAR_MAX_ALTERNATIVES, GRAMMAR_MAX_COST, GRAMMAR_MAX_REPEAT, GRAMMAR_MAX_WORK

__all__ = ["Builder", "TooLarge", "char_class", "choice", "json_text", "literal"]


_PLAIN = re.compile(r"[A-Za-z0-9 !#$%&'()*+,./:;<=>?@_`{|}~]")


class TooLarge(Exception):
    """The grammar would exceed its size budget; the compiler turns it into a SchemaError."""


def _char(cp: int, in_class: bool) -> str:
    c = chr(cp)
    if _PLAIN.fullmatch(c) and not (in_class and c == "^"):
        return c
    if not in_class and c in "-[]^":
        return c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    if c in '\\"[]-':
        return "\\" + c
    if cp < 0x100:
        return f"\\x{cp:02X}"
    if cp < 0x10000:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: object) -> str:
    """``value`` as compact JSON text that UTF-8 can hold: characters as themselves, but a lone surrogate (a JSON
    string may hold one as an escape, UTF-8 text cannot) as its ``\\u`` escape. Raises ValueError for what is not
    JSON."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    return '"' + "".join(_char(ord(c), False) for c in text) + '"'


def char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A GBNF character class matching the code point ranges ``(lo, hi)`` (inclusive)."""
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_char(lo, True))
        elif hi == lo + 1:
            parts.append(_char(lo, True) + _char(hi, True))
        else:
            parts.append(_char(lo, True) + "-" + _char(hi, True))
    return "[" + "".join(parts) + "]"


_NAME_BAD = re.compile(r"[^a-z0-9]+")


class Builder:
    """Rules by name, in definition order; identical bodies share one rule.

    ``cost`` counts the rules llama.cpp will hold, repetitions expanded, and raises :class:`TooLarge` past
    ``GRAMMAR_MAX_COST``.
    """

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._used: set[str] = {"root"}
        self.cost = 0
        self.work = 0
        self.memo: dict[object, str] = {}

    def name(self, hint: str) -> str:
        """Reserve a fresh rule name derived from ``hint``."""
        base = _NAME_BAD.sub("-", hint.lower()).strip("-")[:40].strip("-") or "r"
        if not base[0].isalpha():  # a name starts with a letter (a $ref to ".../anyOf/0" hints "0")
            base = "r-" + base
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}-{i}"
        self._used.add(name)
        return name

    def define(self, name: str, body: str) -> str:
        """Give the reserved ``name`` its body (it must not be empty)."""
        self.charge(1)
        self.rules[name] = body
        self._by_body.setdefault(body, name)
        return name

    def rule(self, hint: str, body: str) -> str:
        """A rule with ``body``: an existing one with the same body, or a new one named after ``hint``."""
        found = self._by_body.get(body)
        if found is not None:
            return found
        return self.define(self.name(hint), body)

    def repeat(self, symbol: str, lo: int, hi: int | None) -> str:
        """``symbol`` (one rule name, literal or class) repeated ``lo..hi`` times (``hi=None``: unbounded)."""
        if lo > GRAMMAR_MAX_REPEAT or (hi is not None and hi > GRAMMAR_MAX_REPEAT):
            raise TooLarge(f"a repetition of {max(lo, hi or 0)} exceeds the limit of {GRAMMAR_MAX_REPEAT}")
        if hi is not None and hi < lo:
            raise ValueError("empty repetition")
        self.charge(max(lo, hi if hi is not None else lo + 1))
        if hi is None:
            return f"{symbol}*" if lo == 0 else (f"{symbol}+" if lo == 1 else f"{symbol}{{{lo},}}")
        if lo == hi:
            return "" if lo == 0 else (symbol if lo == 1 else f"{symbol}{{{lo}}}")
        if lo == 0 and hi == 1:
            return f"{symbol}?"
        return f"{symbol}{{{lo},{hi}}}"

    def spend(self, n: int) -> None:
        """Count ``n`` steps of automaton work (done now or, for a cached automaton, once) against the grammar's
        budget, ``limits.GRAMMAR_MAX_WORK``: a schema's compile time stays bounded however many patterns it has."""
        self.work += n
        if self.work > GRAMMAR_MAX_WORK:
            raise TooLarge(f"the schema's automata need more than {GRAMMAR_MAX_WORK} steps to build")

    def spend_once(self, key: object, n: int) -> None:
        """:meth:`spend` for a cached automaton: once per grammar, whether or not the cache held it."""
        if ("spent", key) not in self.memo:
            self.memo["spent", key] = ""
            self.spend(n)

    def charge(self, n: int) -> None:
        self.cost += n
        if self.cost > GRAMMAR_MAX_COST:
            raise TooLarge(f"the grammar would need more than {GRAMMAR_MAX_COST} rules")

    def text(self, root: str) -> str:
        """The grammar, ``root ::= <root>`` first, without the rules it does not reach."""
        reached = {"root"}
        todo = [root]
        while todo:
            for ref in _refs(todo.pop()):
                if ref in self.rules and ref not in reached:
                    reached.add(ref)
                    todo.append(self.rules[ref])
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items() if name in reached]
        return "\n".join(lines) + "\n"


_TERMINAL = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]')
_REF = re.compile(r"[a-z][a-z0-9-]*")


def _refs(body: str) -> list[str]:
    """The rule names a body refers to."""
    return _REF.findall(_TERMINAL.sub(" ", body))


def choice(b: Builder, texts: Iterable[str], hint: str) -> str:
    """A GBNF sequence matching exactly ``texts``, written as a trie: alternatives that share a prefix share its
    rule and a rule's alternatives start with different characters (those with the same rest share a class), so
    llama.cpp holds one parse stack per character that can come next, not one per text. Raises
    :class:`TooLarge` when more than ``GRAMMAR_MAX_ALTERNATIVES`` could come next at one place."""
    kids: list[dict[str, int]] = [{}]
    ends = [False]
    for text in dict.fromkeys(texts):
        node = 0
        for ch in text:
            nxt = kids[node].get(ch)
            if nxt is None:
                nxt = kids[node][ch] = len(kids)
                kids.append({})
                ends.append(False)
            node = nxt
        ends[node] = True
    # each node's suffix language as (literal text, GBNF rest); children have larger numbers than their parent
    seqs: list[tuple[str, str]] = [("", "")] * len(kids)
    for node in range(len(kids) - 1, -1, -1):
        groups: dict[str, list[str]] = {}
        by_text: dict[str, tuple[str, str]] = {}
        for ch, child in kids[node].items():
            text = _sequence(seqs[child])
            groups.setdefault(text, []).append(ch)
            by_text[text] = seqs[child]
        if len(groups) > GRAMMAR_MAX_ALTERNATIVES:
            raise TooLarge(f"more than {GRAMMAR_MAX_ALTERNATIVES} values differ in the character after a shared start")
        if not ends[node] and len(groups) == 1:
            ((text, chs),) = groups.items()
            seqs[node] = _prefixed(chs, by_text[text])
            continue
        alts = [_sequence(_prefixed(chs, by_text[text])) for text, chs in groups.items()]
        if not alts:
            continue  # the end of a text: the empty sequence
        body = " | ".join(alts) if not ends[node] else "| " + " | ".join(alts)
        seqs[node] = ("", b.rule(hint, body))
    return _sequence(seqs[0]) or '""'


def _prefixed(chars: list[str], seq: tuple[str, str]) -> tuple[str, str]:
    """One of ``chars`` followed by ``seq``."""
    if len(chars) == 1:
        return chars[0] + seq[0], seq[1]
    return "", f"{char_class((ord(c), ord(c)) for c in sorted(chars))} {_sequence(seq)}".strip()


def _sequence(seq: tuple[str, str]) -> str:
    text, rest = seq
    return f"{literal(text)} {rest}".strip() if text else rest
