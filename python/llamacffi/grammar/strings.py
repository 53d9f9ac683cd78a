"""JSON strings with a length, a pattern or a format, and object keys other than a given set.

A constrained string is an automaton over the decoded characters, emitted with one JSON spelling per character:
the character itself, or for ``"``, ``\\`` and control characters their escape (``\\n``, ``\\u001f``...).
"""

from __future__ import annotations

from functools import cache, lru_cache

from .automaton import (
    ANY,
    Dfa,
    Ranges,
    dfa,
    emit,
    intersect,
    length_dfa,
    negate,
    normalize,
    overlap,
    prune,
)
from .gbnf import Builder, TooLarge, char_class, literal
from .primitives import string, string_char
from .regex import anchored, parse

__all__ = ["FORMATS", "constrained_string", "key_other_than", "pattern_dfa", "raw_text"]

_SPECIAL: Ranges = normalize([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
# surrogate code points cannot occur in UTF-8 text
_TEXT: Ranges = negate(((0xD800, 0xDFFF),))
_PLAIN: Ranges = negate(normalize([*_SPECIAL, (0xD800, 0xDFFF)]))
_SHORT = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r", 0x22: '"', 0x5C: "\\\\"}
# the control characters without a short escape, all spelled \u00xx (lower-case hex)
_LONG = [cp for cp in range(0x20) if cp not in _SHORT]
_ALL_LONG = '"u00" ("0" [0-7be-f] | "1" [0-9a-f])'

_YEAR = r"(\d{3}[1-9]|\d{2}[1-9]\d|\d[1-9]\d{2}|[1-9]\d{3})"
_LEAP = r"(\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DAY31 = r"(0[1-9]|[12]\d|3[01])"
_DATE = (
    rf"({_YEAR}-(0[13578]|1[02])-{_DAY31}|{_YEAR}-(0[469]|11)-(0[1-9]|[12]\d|30)"
    rf"|{_YEAR}-02-(0[1-9]|1\d|2[0-8])|{_LEAP}-02-29)"
)
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_HEX = "[0-9a-fA-F]"

# The formats enforced, as anchored expressions: RFC 3339 dates and times (real calendar days, leap years
# included; upper-case T and Z), and UUIDs in their 8-4-4-4-12 hex form.
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "uuid": f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}",
}


def encode(ranges: Ranges) -> list[str]:
    """GBNF alternatives spelling each character of ``ranges`` inside a JSON string: at most two, the plain
    characters and one backslash escape group."""
    out = []
    plain = overlap(ranges, _PLAIN)
    if plain:
        out.append(char_class(plain))
    special = [cp for lo, hi in overlap(ranges, _SPECIAL) for cp in range(lo, hi + 1)]
    if special:
        short = "".join(_SHORT[cp] for cp in special if cp in _SHORT)
        long = [cp for cp in special if cp not in _SHORT]
        escapes = [f"[{short}]"] if short else []
        if len(long) == len(_LONG):
            escapes.append(_ALL_LONG)
        else:
            escapes += [f'"u{cp:04x}"' for cp in long]
        out.append('"\\\\" ' + (escapes[0] if len(escapes) == 1 else "(" + " | ".join(escapes) + ")"))
    return out


@lru_cache(maxsize=256)
def pattern_dfa(pattern: str) -> Dfa:
    """The automaton of strings matching ``pattern`` (raises PatternError, TooLarge), without the surrogate code
    points a pattern may name: no string here can hold one (see :func:`encode`), and a state left with no way on
    would be a rule without alternatives."""
    d = dfa(parse(pattern))
    out = prune(Dfa(d.accept, [[(text, t) for rs, t in es if (text := overlap(rs, _TEXT))] for es in d.edges]))
    out.work = d.work
    return out


@cache
def format_dfa(fmt: str) -> Dfa:
    return dfa(anchored(FORMATS[fmt]))


def constrained_string(
    b: Builder, hint: str, lo: int, hi: int | None, pattern: str | None, fmt: str | None
) -> str | None:
    """A rule for strings of ``lo..hi`` characters matching ``pattern`` and ``fmt``; None when none can."""
    key = ("string", lo, hi, pattern, fmt)
    if key in b.memo:
        return b.memo[key]
    q = literal('"')
    if hi is not None and hi < lo:
        return None
    if pattern is None and fmt is None:
        if lo == 0 and hi is None:
            return string(b)
        body = f"{q} {b.repeat(string_char(b), lo, hi)} {q}"
        b.memo[key] = b.rule(hint, body)
        return b.memo[key]
    d: Dfa | None = None
    if pattern is not None:
        d = pattern_dfa(pattern)
        b.spend_once(("pattern", pattern), d.work)
    if fmt is not None:
        f = format_dfa(fmt)
        b.spend_once(("format", fmt), f.work)
        d = f if d is None else intersect(d, f)
        b.spend(d.work)
    assert d is not None
    if lo > 0 or hi is not None:
        # not minimized: the product with a length counter is a chain whose states can seldom be merged
        d = intersect(d, length_dfa(lo, hi), minimal=False)
        b.spend(d.work)
    if not d.accept:
        return None
    b.charge(len(d.accept))
    start = emit(b, d, hint, encode, q)
    b.memo[key] = b.rule(hint, f"{q} {start}")
    return b.memo[key]


def key_other_than(b: Builder, keys: tuple[str, ...]) -> str:
    """A rule for JSON strings that differ from every one of ``keys`` (the keys of an object's extra members)."""
    if not keys:
        return string(b)
    memo_key = ("other-key", keys)
    if memo_key in b.memo:
        return b.memo[memo_key]
    # a trie of the keys; every character off the trie leads to a state that accepts anything
    d = Dfa()
    d.add(True)
    nodes: dict[str, int] = {"": 0}
    for k in keys:
        for i in range(1, len(k) + 1):
            if k[:i] not in nodes:
                nodes[k[:i]] = d.add(True)
    for k in keys:
        d.accept[nodes[k]] = False
    free = d.add(True)
    d.edges[free].append((ANY, free))
    children: dict[int, dict[int, int]] = {}
    for prefix, s in nodes.items():
        if prefix:
            children.setdefault(nodes[prefix[:-1]], {})[ord(prefix[-1])] = s
    for s in range(free):
        kids = children.get(s, {})
        for cp, t in sorted(kids.items()):
            d.edges[s].append((((cp, cp),), t))
        rest = negate(normalize((cp, cp) for cp in kids))
        if rest:
            d.edges[s].append((rest, free))
    b.charge(len(d.accept))
    q = literal('"')
    start = emit(b, d, "key", encode, q)
    b.memo[memo_key] = b.rule("key", f"{q} {start}")
    return b.memo[memo_key]


def raw_text(b: Builder, hint: str, ending: str, lo: int = 0, hi: int | None = None) -> str:
    """A rule for unquoted text of ``lo..hi`` characters that does not hold ``ending`` (the tag that closes it), as
    a template writes a string between tags. Where a length bound would need too many automaton states, the text
    holds no ``ending[0]`` at all (fewer texts, never one that holds the tag)."""
    key = ("raw", ending, lo, hi)
    if key in b.memo:
        return b.memo[key]
    d: Dfa | None = _without(ending)
    if lo > 0 or hi is not None:
        try:
            d = intersect(_without(ending), length_dfa(lo, hi), minimal=False)
        except TooLarge:  # too many states: the simpler texts (the grammar's own budget still applies below)
            d = None
    if d is None:
        rule = b.rule(hint, b.repeat(char_class(negate(((ord(ending[0]), ord(ending[0])),))), lo, hi))
    else:
        b.spend(d.work + len(d.accept))
        b.charge(len(d.accept))
        rule = emit(b, d, hint, lambda rs: [char_class(rs)], "")
    b.memo[key] = rule
    return rule


@lru_cache(maxsize=16)
def _without(word: str) -> Dfa:
    """The texts that do not hold ``word``: its prefix matched so far is the state (Knuth-Morris-Pratt)."""
    out = Dfa()
    for _ in word:
        out.add(True)
    letters = normalize((ord(c), ord(c)) for c in word)
    for k in range(len(word)):
        targets: dict[int, list[tuple[int, int]]] = {0: list(negate(letters))}
        for c in sorted(set(word)):
            seen = word[:k] + c
            nxt = next(n for n in range(len(seen), -1, -1) if word.startswith(seen[len(seen) - n :]))
            if nxt < len(word):  # reaching its length would hold the word
                targets.setdefault(nxt, []).append((ord(c), ord(c)))
        out.edges[k] = [(normalize(rs), t) for t, rs in sorted(targets.items())]
    return out
