"""The regular-expression subset that ``pattern`` may use, parsed into an automaton expression.

Supported: literal characters; escapes of punctuation, ``\\n \\t \\r \\f \\v \\xHH \\uHHHH``; the classes ``\\d \\w
\\s`` (ASCII: ``[0-9]``, ``[A-Za-z0-9_]``, ``[ \\t\\n\\r\\f\\v]``) and their negations ``\\D \\W \\S`` (ASCII characters
outside them; ``\\S`` and ``[^\\s]`` also leave out U+001C..U+001F, which Python's re counts as blanks); ``.`` (any
character but line breaks); bracket classes with ranges and negation; groups ``(...)``, ``(?:...)``, ``(?P<n>...)``,
``(?<n>...)``; alternation ``|``; the quantifiers ``? * + {m} {m,} {m,n}`` (lazy forms too: they match the same
strings), their counts in ASCII digits without blanks (any other ``{`` is itself, as in both engines; ``{,n}`` is
refused); ``^`` and ``$`` at the ends of the pattern or of its top-level alternatives. An end without its anchor matches
anything there, as JSON Schema's search semantics say. Everything else (backreferences, lookaround, word boundaries,
flags, possessive quantifiers, Unicode properties) raises :class:`PatternError`. Where Python's ``re`` and ECMA-262
disagree the stricter reading is taken, so a string the grammar accepts matches under both.
"""

from __future__ import annotations

import re

from ..limits import GRAMMAR_MAX_PATTERN_COUNT
from .automaton import ANY, Node, Ranges, chars, negate, normalize

__all__ = ["PatternError", "parse"]


class PatternError(ValueError):
    """The pattern uses a construct outside the supported subset, or is malformed."""


_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE: Ranges = normalize([(0x09, 0x0D), (0x20, 0x20)])
# Python's re also counts the separators U+001C..U+001F as \s (ECMA does not): what a negation must leave out
_SPACE_WIDE: Ranges = normalize([(0x09, 0x0D), (0x1C, 0x20)])
_ASCII: Ranges = ((0, 0x7F),)
_SHORTHAND = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
# Shorthand -> (the ASCII characters both engines put in it, those either engine puts in it)
_SHORTHANDS: dict[str, tuple[Ranges, Ranges]] = {
    **{c: (rs, rs) for c, rs in _SHORTHAND.items()},
    "s": (_SPACE, _SPACE_WIDE),
    **{c.upper(): (negate(rs, _ASCII), negate(rs, _ASCII)) for c, rs in _SHORTHAND.items()},
    "S": (negate(_SPACE_WIDE, _ASCII), negate(_SPACE, _ASCII)),
}
# A braced quantifier as both engines read it: ASCII digits, no blanks
_QUANTIFIER = re.compile(r"\{([0-9]*)(?:(,)([0-9]*))?\}")
# ECMA's "." excludes every line terminator, Python's only "\n": keep out all four
_DOT = negate(normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))
_SIMPLE = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}


def _quantifier_at(text: str, i: int) -> bool:
    """Whether a braced quantifier (or a "{,n}" one engine takes for one) starts at ``text[i]``."""
    m = _QUANTIFIER.match(text, i)
    return m is not None and m.group(1, 2) != ("", None)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, what: str) -> PatternError:
        shown = self.s if len(self.s) <= 80 else self.s[:77] + "..."
        return PatternError(f"{what} at offset {self.i} of pattern {shown!r}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def top(self) -> Node:
        branches: list[Node] = []
        while True:
            start = self.peek() == "^"
            if start:
                self.i += 1
            body = self.seq(top=True)
            end = self.peek() == "$"
            if end:
                self.i += 1
            anything: Node = ("rep", ("chars", ANY), 0, None)
            parts = ([] if start else [anything]) + [body] + ([] if end else [anything])
            branches.append(("seq", tuple(parts)))
            if self.peek() == "|":
                self.i += 1
                continue
            if self.i < len(self.s):
                raise self.fail(f"unsupported {self.peek()!r}")
            return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def alt(self) -> Node:
        branches = [self.seq(top=False)]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.seq(top=False))
        return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def seq(self, top: bool) -> Node:
        items: list[Node] = []
        while True:
            c = self.peek()
            if c == "" or c == "|" or c == ")":
                break
            if c == "$":
                if top and (self.i + 1 == len(self.s) or self.s[self.i + 1] == "|"):
                    break
                raise self.fail("'$' is only supported at the end of the pattern")
            if c == "^":
                raise self.fail("'^' is only supported at the start of the pattern")
            atom = self.atom()
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else ("seq", tuple(items))

    def atom(self) -> Node:
        c = self.peek()
        self.i += 1
        if c == "(":
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.s.startswith("?P<", self.i) or (
                self.s.startswith("?<", self.i) and self.s[self.i + 2 : self.i + 3] not in ("=", "!")
            ):
                close = self.s.find(">", self.i)
                if close < 0:
                    raise self.fail("unterminated group name")
                self.i = close + 1
            elif self.peek() == "?":
                raise self.fail("lookaround, flags and other '(?' groups are not supported")
            inner = self.alt()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return inner
        if c == "[":
            return ("chars", self.klass())
        if c == ".":
            return ("chars", _DOT)
        if c == "\\":
            return ("chars", self.escape(in_class=False))
        if c in "*+?" or (c == "{" and _quantifier_at(self.s, self.i - 1)):
            raise self.fail(f"nothing to repeat before {c!r}")
        if c in ")]":
            raise self.fail(f"unbalanced {c!r}")
        return chars([(ord(c), ord(c))])

    def escape(self, in_class: bool) -> Ranges:
        return self.escape_both(in_class)[0]

    def escape_both(self, in_class: bool) -> tuple[Ranges, Ranges]:
        """An escape's characters (those both engines match, those either matches: they differ for \\s, \\S)."""
        c = self.peek()
        if not c:
            raise self.fail("pattern ends with a backslash")
        self.i += 1
        if c in _SHORTHANDS:
            return _SHORTHANDS[c]
        rs = self._escape(c, in_class)
        return rs, rs

    def _escape(self, c: str, in_class: bool) -> Ranges:
        if c in _SIMPLE and not (c == "0" and self.peek().isdigit()):
            cp = _SIMPLE[c]
            return ((cp, cp),)
        if c in "xu":
            size = 2 if c == "x" else 4
            digits = self.s[self.i : self.i + size]
            if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {size} hex digits")
            self.i += size
            cp = int(digits, 16)
            return ((cp, cp),)
        if c == "b" and in_class:
            return ((0x08, 0x08),)
        if c.isalnum() or c == "_":
            raise self.fail(f"the escape \\{c} is not supported")
        return ((ord(c), ord(c)),)

    def class_item(self) -> tuple[Ranges, Ranges, bool]:
        """One class member: its ranges as both engines read them and as either does, and whether it is a single
        character (so it can start a range)."""
        c = self.peek()
        if not c:
            raise self.fail("missing ']'")
        self.i += 1
        if c == "\\":
            rs, wide = self.escape_both(in_class=True)
            return rs, wide, rs == wide and len(rs) == 1 and rs[0][0] == rs[0][1]
        if c == "[" and self.peek() in ":=.":
            raise self.fail("POSIX classes are not supported")
        return ((ord(c), ord(c)),), ((ord(c), ord(c)),), True

    def klass(self) -> Ranges:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        out: list[tuple[int, int]] = []
        wide: list[tuple[int, int]] = []  # what either engine puts in the class: a negation leaves all of it out
        shorthand = False
        first = True
        while first or self.peek() != "]":
            first = False
            rs, rs_wide, single = self.class_item()
            shorthand = shorthand or not single
            if single and self.peek() == "-" and self.s[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                hi_rs, _, hi_single = self.class_item()
                if not hi_single or hi_rs[0][0] < rs[0][0]:
                    raise self.fail("bad character range")
                out.append((rs[0][0], hi_rs[0][0]))
                wide.append((rs[0][0], hi_rs[0][0]))
            else:
                out.extend(rs)
                wide.extend(rs_wide)
        self.i += 1
        if negated:
            # a negated \d, \w or \s would take in non-ASCII digits, letters or spaces that Python's re excludes
            return negate(normalize(wide), _ASCII if shorthand else ANY)
        return normalize(out)

    def quantified(self, atom: Node) -> Node:
        c = self.peek()
        if c == "?":
            lo, hi = 0, 1
        elif c == "*":
            lo, hi = 0, None
        elif c == "+":
            lo, hi = 1, None
        elif c == "{":
            m = _QUANTIFIER.match(self.s, self.i)
            if m is None:
                return atom  # not a quantifier: both engines read the brace as itself
            lo_text, comma, hi_text = m.groups()
            if not lo_text and not comma:
                return atom  # "{}" is text to both
            if not lo_text:
                raise self.fail("'{,' is a quantifier to Python's re and text to ECMA-262 (write \\{ for a brace)")
            lo_text, hi_text = lo_text.lstrip("0") or "0", hi_text and (hi_text.lstrip("0") or "0")
            if max(len(lo_text), len(hi_text or "")) > len(str(GRAMMAR_MAX_PATTERN_COUNT)):  # before int() reads them
                raise self.fail(f"repetition counts above {GRAMMAR_MAX_PATTERN_COUNT} are not supported")
            lo = int(lo_text)
            hi = lo if not comma else (int(hi_text) if hi_text else None)
            close = m.end() - 1
            if hi is not None and hi < lo:
                raise self.fail(f"{{{lo},{hi}}} has its bounds reversed")
            if max(lo, hi or 0) > GRAMMAR_MAX_PATTERN_COUNT:
                raise self.fail(f"repetition counts above {GRAMMAR_MAX_PATTERN_COUNT} are not supported")
            self.i = close
        else:
            return atom
        self.i += 1
        if self.peek() == "?":
            self.i += 1  # lazy: same language
        elif self.peek() == "+":
            raise self.fail("possessive quantifiers are not supported")
        elif self.peek() in ("*", "{"):
            raise self.fail("a quantifier cannot follow a quantifier")
        return ("rep", atom, lo, hi)


def parse(pattern: str) -> Node:
    """The language of strings that ``pattern`` matches somewhere (JSON Schema's unanchored search)."""
    if not pattern:
        return ("rep", ("chars", ANY), 0, None)
    return _Parser(pattern).top()


def anchored(pattern: str) -> Node:
    """The language of strings ``pattern`` matches entirely (for the built-in format expressions)."""
    return _Parser(f"^(?:{pattern})$").top()
