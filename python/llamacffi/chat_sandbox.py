"""The Jinja sandbox that chat templates render in, bounded in time and memory.

A template comes with the model file. Jinja's own sandbox keeps it from reaching anything but the data it is given,
not from asking for gigabytes (``'a' * 10**10``, ``'a'|center(10**10)``, a string doubled forty times) or from
looping for ever (nested ``range`` loops). Here one render may:

- take at most :data:`limits.CHAT_TEMPLATE_MAX_STEPS` steps in all: loop iterations, ``range`` items, macro,
  block and recursive loop calls, and the items gone through one by one (a container's, each object once, before it
  becomes text or is compared; a filter's value's, a lazy filter's; the pieces a split makes);
- read at most :data:`limits.CHAT_TEMPLATE_MAX_READ` characters in all by comparing, searching or scanning
  (``x in s``, ``s.find(t)``, a filter's value), a container counted as its text;
- make no string or list longer than :data:`limits.CHAT_TEMPLATE_MAX_CHARS` with an operator, a filter or a call
  (a width or a count that would is refused before);
- make at most :data:`limits.CHAT_TEMPLATE_MAX_MADE` characters and items in all that way;
- turn into text no value whose text would be longer than :data:`limits.CHAT_TEMPLATE_MAX_CHARS`.

A render that asks for more raises :class:`Bounded` (a Jinja ``SecurityError``).
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
import string
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MappingView
from typing import Any, NoReturn

import jinja2
import jinja2.compiler
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

from . import limits

__all__ = ["Bounded", "Refused", "compile_template", "render"]

_MAX_STEPS = limits.CHAT_TEMPLATE_MAX_STEPS
_MAX_CHARS = limits.CHAT_TEMPLATE_MAX_CHARS
_MAX_MADE = limits.CHAT_TEMPLATE_MAX_MADE
_MAX_READ = limits.CHAT_TEMPLATE_MAX_READ
_MAX_BITS = limits.CHAT_TEMPLATE_MAX_POWER_BITS

_Text = (str, bytes)  # bytes: what str.encode makes, with the same methods
_Sized = (*_Text, list, tuple)
# What a filter, a call or a slice makes, counted by its length: sequences, and the dicts and sets that ``dict(**d)``,
# ``d.copy()`` or ``s.union(t)`` copy.
_Made = (*_Sized, dict, set, frozenset)
# What is written as the text of the values it holds: containers, dict views, namespaces.
_Walked = (list, tuple, dict, set, frozenset, Mapping, MappingView, jinja2.utils.Namespace)
_SEQUENCES = (list, tuple)  # walked as they are (a template cannot change them)
_LEAVES = frozenset({str, int, float, bool, type(None)})
# Filters that take about the same time whatever their value: the others read it (a text's characters, a
# container's items and their text) before they run.
_CHEAP_FILTERS = frozenset({"abs", "attr", "count", "d", "default", "first", "items", "last", "length", "random"})
# Filters that go through their value item by item (or word by word) in Python: a text's characters and a range's
# numbers count as steps (a container's items do, as it is read).
_ITERATING_FILTERS = frozenset(
    {
        "batch", "dictsort", "groupby", "map", "max", "min", "reject", "rejectattr", "select", "selectattr", "slice",
        "sort", "striptags", "sum", "title", "unique", "urlencode", "urlize", "wordwrap", "wordcount", "indent",
    }
)  # fmt: skip
# Tests that read their value: those that compare it with another (reading both), and lower and upper, which write
# it as text.
_READING_TESTS = frozenset(
    {
        "in", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge",
        ">=", "lower", "upper",
    }
)  # fmt: skip
# What a call of a macro, a block or a recursive loop counts, in steps: a chosen cost, of the order of the loop
# iterations such a call takes.
_CALL_STEPS = 16
# A call is given at most about this many arguments as the template writes them; more come from ``f(*items)`` or
# ``f(**d)``, which copy them.
_WRITTEN_ARGUMENTS = 8
# A text shorter than this is read in about the time the call that reads it takes, which the step budget bounds.
_READ_FREE = 256


class Refused(Exception):
    """A template's own ``raise_exception``: it refuses the messages."""


class Bounded(jinja2.exceptions.SecurityError):
    """A render passed one of the bounds above."""


# What the render (or compile) running in this thread has spent, by kind ("steps", "made", "read"); None outside them.
_spent: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("chat_template_spent", default=None)
_OVER = {
    "steps": "takes over {} steps (loop iterations, items walked)",
    "made": "makes over {} characters in all",
    "read": "reads over {} characters in all (comparing, searching, scanning)",
}


def _refuse(message: str) -> NoReturn:
    raise Bounded(message)


def _spend(kind: str, n: int, most: int) -> None:
    spent = _spent.get()
    if spent is not None:
        spent[kind] += n
        if spent[kind] > most:
            _refuse("the chat template " + _OVER[kind].format(most))


def _steps(n: int) -> None:
    _spend("steps", n, _MAX_STEPS)


def _within(n: int) -> None:
    """Check a string or list of ``n`` items before it is made."""
    if n > _MAX_CHARS:
        _refuse(f"the chat template makes a string or list of over {_MAX_CHARS} items")


def _size(n: int) -> None:
    """Check a string or list of ``n`` items before it is made, and count it."""
    if n > _MAX_CHARS:
        _within(n)
    _spend("made", n, _MAX_MADE)


def _made(value: Any) -> Any:
    """Count a value a filter, call or slice made (its size can only be known after). A dict or set is made item by
    item, each item a step."""
    if isinstance(value, _Made):
        _size(len(value))
        if not isinstance(value, _Sized):
            _steps(len(value))
    return value


def _numbers(values: Iterable[Any]) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_CHARS:
            _refuse(f"the chat template passes a number over {_MAX_CHARS} to a filter or call")


def _measured(value: Any) -> int:
    """Walk a value that is about to become text, and say about how long that text is. A list that holds another
    twice by reference, forty times over, is small in memory and a terabyte as text: each object is walked once (its
    items count as loop steps), and the text of the whole, counted along every path, is bounded."""
    if type(value) is str:
        return len(value)
    if isinstance(value, _Text):
        return _leaf(value)
    if not isinstance(value, _Walked):
        return 24  # a number's digits, about (their size is bounded where numbers are made)
    # id -> text size, or -1 while the object's own parts are walked (a cycle is written "..."). Every object walked
    # stays alive until the end (held by its container, or by ``parts_of``), so that no id is reused in the walk; an
    # id found here is thus a walked object's.
    sizes: dict[int, int] = {}
    parts_of: dict[int, Any] = {}
    stack: list[Any] = [value]
    while stack:
        item = stack[-1]
        key = id(item)
        size = sizes.get(key)
        if size is None:
            parts = parts_of[key] = item if type(item) in _SEQUENCES else _parts(item)
            _steps(len(parts))
            sizes[key] = -1
            inner = [p for p in parts if type(p) not in _LEAVES and id(p) not in sizes and isinstance(p, _Walked)]
            if inner:
                stack.extend(inner)
                continue
        elif size >= 0:  # a second way to an object already walked
            stack.pop()
            continue
        stack.pop()
        parts = parts_of[key]
        size = (4 if type(item) is dict or isinstance(item, Mapping) else 2) * len(parts)
        for part in parts:
            if type(part) is str:
                size += len(part)
            else:
                inner_size = sizes.get(id(part))
                size += _leaf(part) if inner_size is None else max(inner_size, 0)
        if size > _MAX_CHARS:
            _refuse(f"the chat template turns a value of over {_MAX_CHARS} characters into text")
        sizes[key] = size
    return sizes[id(value)]


def _parts(item: Any) -> list[Any]:
    if type(item) is dict or isinstance(item, Mapping):
        return [*item.keys(), *item.values()]
    if isinstance(item, jinja2.utils.Namespace):  # written as its attributes' dict
        return [item._Namespace__attrs]
    return list(item)


def _leaf(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, int):
        return item.bit_length() // 3  # its decimal digits, about
    if isinstance(item, bytes):
        return 4 * len(item)  # \x.. for each byte, at most
    return 0


def _read(value: Any) -> Any:
    """Count what comparing, searching or scanning ``value`` reads: a text's characters, or a container's text (each
    of its objects walked once, as steps)."""
    if type(value) is str or isinstance(value, _Text):
        n = len(value)
    elif isinstance(value, _Walked):
        n = _measured(value)
    else:
        return value
    if n >= _READ_FREE:
        _spend("read", n, _MAX_READ)
    return value


def _searched(value: Any) -> Any:
    """Count what ``x in value`` reads: not a mapping's or a set's items, which are looked up."""
    if type(value) is dict or isinstance(value, (Mapping, set, frozenset, range)):
        return value
    return _read(value)


def _arguments(args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    """The check on what a filter or call is given: containers that can become text."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, _Walked):
            _measured(value)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(fmt: str | bytes, args: Any) -> None:
    """``fmt % args`` (or ``fmt|format(args)``), checked before it runs."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    values = list(args) if isinstance(args, tuple) else [args]  # a mapping: written whole, or one value per field
    fields = [[part for part in match.groups() if part is not None] for match in _PERCENT_SPEC.finditer(text)]
    _check_fields(len(fmt), fields, values)


def _check_format(fmt: str, given: list[Any]) -> None:
    """``fmt.format(...)`` or ``fmt.format_map(...)`` (``given``: the values it may write), checked before it runs."""
    try:
        specs = [spec or "" for _, name, spec, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError:
        return  # str.format raises it again, as the template's own error
    _check_fields(len(fmt), [re.findall(r"\d+", spec) + ["*"] * ("{" in spec) for spec in specs], given)


def _check_fields(length: int, fields: list[list[str]], values: list[Any]) -> None:
    """A format of ``length`` characters with these fields (each its widths and precisions: digits, or "*" for a
    number taken from ``values``): no field wider than the bound, and no text longer. A field writes at most the
    longest value or its width, and one value may be written by many fields (``'{0}{0}'``, ``'%(a)s%(a)s'``)."""
    if any("*" in parts for parts in fields):
        _numbers(values)
    star = max((abs(v) for v in values if isinstance(v, int)), default=0)
    longest = max(map(_measured, values), default=0)
    total = length
    for parts in fields:
        width = max(
            (star if part == "*" else _MAX_CHARS + 1 if len(part) > 9 else int(part) for part in parts), default=0
        )
        if width > _MAX_CHARS:
            _refuse(f"the chat template formats to a width over {_MAX_CHARS}")
        total += max(width, longest)
    _within(total)


def _items(items: Any) -> tuple[list[Any], int]:
    """``items`` as a list (counted as steps), and the length of their text."""
    listed = list(items) if isinstance(items, Iterable) else []
    _steps(len(listed))
    return listed, sum(_measured(x) for x in listed)


def _replaced(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not (isinstance(s, _Text) and isinstance(old, _Text) and isinstance(new, _Text)):
        return 0
    times = len(s) // max(len(old), 1) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(s) + times * max(len(new) - len(old), 0)


def _width(s: Any, width: Any) -> int:
    return max(len(s) if isinstance(s, _Text) else 0, width if isinstance(width, int) else 0)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


# What a string method or a filter that can make a much longer text than it is given makes at most, known before it
# runs: (its value or string, its arguments, its keyword arguments) -> characters or items.
_Estimate = Callable[[Any, tuple[Any, ...], Mapping[str, Any]], int]


def _replace_size(s: Any, a: tuple[Any, ...], k: Mapping[str, Any]) -> int:
    return _replaced(s, _arg(a, k, 0, "old"), _arg(a, k, 1, "new"), _arg(a, k, 2, "count", -1))


def _padded_size(s: Any, a: tuple[Any, ...], k: Mapping[str, Any]) -> int:
    return _width(s, _arg(a, k, 0, "width", 80))


_METHODS: dict[str, _Estimate] = {
    "replace": _replace_size,
    **dict.fromkeys(("center", "ljust", "rjust", "zfill"), _padded_size),
    "expandtabs": lambda s, a, k: len(s) * max(_arg(a, k, 0, "tabsize", 8), 1),
    "translate": lambda s, a, k: len(s) * _longest(_arg(a, k, 0, "table")),
}
_FILTERS: dict[str, _Estimate] = {
    "replace": _replace_size,
    "center": _padded_size,
    "indent": lambda v, a, k: _indented(v, _arg(a, k, 0, "width", 4)),
    "wordwrap": lambda v, a, k: (
        len(v) * (1 + len(_arg(a, k, 2, "wrapstring", None) or "\n")) if isinstance(v, str) else 0
    ),
    "batch": lambda v, a, k: _arg(a, k, 0, "linecount", 0),
    "slice": lambda v, a, k: _slices(_arg(a, k, 0, "slices", 0)),
    "tojson": lambda v, a, k: _json_growth(v, _arg(a, k, 0, "ensure_ascii", False), _arg(a, k, 1, "indent", None)),
    **dict.fromkeys(("e", "escape", "forceescape"), lambda v, a, k: _escaped(v)),
    "xmlattr": lambda v, a, k: 5 * _measured(v),  # each value escaped, each key and value quoted
    "urlencode": lambda v, a, k: (3 if v.isascii() else 12) * len(v) if isinstance(v, str) else 12 * _measured(v),
    "urlize": lambda v, a, k: _urlized(v, _arg(a, k, 2, "target"), _arg(a, k, 3, "rel")),
    "pprint": lambda v, a, k: _measured(v) * (_depth(v) + 2),  # a line's indent grows with its depth
}


def _lipsum(paragraphs: Any, words: Any) -> None:
    """``lipsum(paragraphs, html, min, words)``: up to ``words`` words a paragraph, each a step of its Python loop and
    up to 14 characters (a 12-letter word, a comma or dot, a space)."""
    if isinstance(paragraphs, int) and isinstance(words, int) and paragraphs > 0 and words > 0:
        _size(paragraphs * (14 * words + 8))
        _steps(paragraphs * words)


def _slices(n: Any) -> int:
    """``slice(n)`` makes ``n`` lists, one a step of its Python loop."""
    if isinstance(n, int) and n > 0:
        _steps(n)
    return n if isinstance(n, int) else 0


def _escaped(value: Any) -> int:
    """How long ``value`` is as HTML-escaped text (``&`` is ``&amp;``, at most five characters for one)."""
    if not isinstance(value, str):
        return 5 * _measured(value)
    quotes = value.count("&") + value.count('"') + value.count("'")
    return len(value) + 4 * quotes + 3 * (value.count("<") + value.count(">"))


def _urlized(text: Any, target: Any, rel: Any) -> int:
    """At most how long ``text|urlize`` is: each link writes its address twice, and the target and rel attributes.
    A link holds a dot, an @ or a colon, so there are no more links than those."""
    escaped = _escaped(text)
    links = sum(map(text.count, ".@:")) + 1 if isinstance(text, str) else escaped // 2 + 1
    return 2 * escaped + links * (5 * (_measured(target) + _measured(rel)) + 80)


def _depth(value: Any) -> int:
    """How deeply ``value``'s containers nest, each counted once a level (a value :func:`_measured` has walked)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        _steps(len(level))
        inner = {id(part): part for item in level if isinstance(item, _Walked) for part in _parts(item)}
        level = [part for part in inner.values() if isinstance(part, _Walked)]
        if depth > sys.getrecursionlimit():  # a cycle, or deeper than pprint can go
            break
    return depth


def _longest(table: Any) -> int:
    """The longest text a ``translate`` table puts for one character."""
    values = table.values() if isinstance(table, Mapping) else table if isinstance(table, (list, tuple)) else ()
    return max((len(v) for v in values if isinstance(v, str)), default=1)


def _indented(s: Any, width: Any) -> int:
    if not isinstance(s, str):
        return 0
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    return len(s) + (s.count("\n") + 1) * pad


def _estimated(
    table: dict[str, _Estimate], name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    estimate = table.get(name)
    if estimate is not None:
        try:
            n = estimate(value, args, kwargs)
        except TypeError:
            return  # arguments of the wrong kind: the call itself says so
        if isinstance(n, int) and n > 0:
            _size(n)


def _json_growth(value: Any, ensure_ascii: Any, indent: Any) -> int:
    """What ``tojson`` adds to a value's text: each line's indent, each non-ASCII character's escape."""
    width = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
    if width <= 0 and not ensure_ascii:
        return 0  # as long as the value's text, which is measured where it is written
    text = _measured(value)
    return max(width, 0) * (text + 1) + (11 * text if ensure_ascii else 0)  # \ud83d\ude00: 12 for one


_SPLITTING = frozenset({"split", "rsplit", "splitlines"})
_SCOPE_KEYWORDS = ("_loop_vars", "_block_vars")  # what Jinja adds to calls inside a loop or a block


def _pieces(s: Any, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """At most how many pieces ``s.split`` (``rsplit``, ``splitlines``) makes, each a new string: counted before."""
    if name == "splitlines":
        return len(s) // 2 + 1 if isinstance(s, bytes) else s.count("\n") + s.count("\r") + 1
    sep, most = _arg(args, kwargs, 0, "sep"), _arg(args, kwargs, 1, "maxsplit", -1)
    n = s.count(sep) + 1 if isinstance(sep, type(s)) and sep else len(s) // 2 + 1
    return min(n, most + 1) if isinstance(most, int) and most >= 0 else n


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    # Filters get the context or environment first when Jinja marks them so, then the value, then their arguments.
    skip = 2 if getattr(f, "jinja_pass_arg", None) is not None else 1
    cheap = name in _CHEAP_FILTERS
    iterating = name in _ITERATING_FILTERS

    @functools.wraps(f)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        value, rest = args[skip - 1 : skip], args[skip:]
        if name == "join" and value:  # its items' text and separators, known before it is made
            items, length = _items(value[0])
            _size(length + len(str(_arg(rest, kwargs, 0, "d", ""))) * len(items))
            args = (*args[: skip - 1], items, *rest)
        elif name == "format" and value and isinstance(value[0], str):
            _check_percent(value[0], tuple(rest) or kwargs)
        elif not cheap and value:
            _read(value[0])
        if value:
            _estimated(_FILTERS, name, value[0], rest, kwargs)
            if iterating and isinstance(value[0], (*_Text, range)):
                _steps(len(value[0]))
            elif isinstance(args[skip - 1], Iterator):  # a lazy map or select (join has listed it): each item a step
                args = (*args[: skip - 1], _Sandbox.counted(args[skip - 1]), *args[skip:])
        _arguments(rest, kwargs)
        return _made(f(*args, **kwargs))

    return bounded


def _reading_test(f: Any) -> Any:  # Any: Jinja types its tests as plain functions
    @functools.wraps(f)
    def reading(*args: Any, **kwargs: Any) -> Any:
        for value in args:
            _read(value)
        return f(*args, **kwargs)

    return reading


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's ``tojson``: its arguments, and no HTML escaping (Jinja's own escapes ``<``)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@jinja2.pass_environment
def _sum(environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, with what adding lists, tuples or strings one by one makes (each partial sum is a copy)
    counted before it runs."""
    items = (
        list(iterable)
        if attribute is None
        else list(map(jinja2.filters.make_attrgetter(environment, attribute), iterable))
    )
    _steps(len(items))
    length = len(start) if isinstance(start, _Sized) else 0
    made = 0
    for item in items:
        if isinstance(item, _Sized):
            length += len(item)
            made += length
            if made > _MAX_MADE:
                break
    if made:
        _size(length)  # the last partial sum, the longest
        _spend("made", made - length, _MAX_MADE)
    return sum(items, start)


def _raise_exception(message: object) -> NoReturn:
    raise Refused(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _range(*args: int) -> range:
    try:
        items = jinja2.sandbox.safe_range(*args)
    except OverflowError as exc:  # Jinja's own bound on a range: a bound like the others, not a template fault
        _refuse(str(exc))
    _steps(len(items))
    return items


def _literal(node: jinja2.nodes.Node) -> bool:
    """Whether ``node`` is written in the template (a constant, or a list or tuple of them): as long as its text."""
    if isinstance(node, (jinja2.nodes.List, jinja2.nodes.Tuple)):
        return all(map(_literal, node.items))
    return isinstance(node, jinja2.nodes.Const)


class _Generator(jinja2.compiler.CodeGenerator):
    """Jinja's code generator, with every loop's items counted, every ``~`` measured, every slice counted and what
    comparisons read counted."""

    def visit_For(self, node: jinja2.nodes.For, frame: jinja2.compiler.Frame) -> None:
        counted = jinja2.nodes.Call(
            jinja2.nodes.EnvironmentAttribute("counted"), [node.iter], [], None, None, lineno=node.lineno
        )
        loop = jinja2.nodes.For(
            node.target, counted, node.body, node.else_, node.test, node.recursive, lineno=node.lineno
        )
        super().visit_For(loop, frame)

    def visit_Getitem(self, node: jinja2.nodes.Getitem, frame: jinja2.compiler.Frame) -> None:
        if not isinstance(node.arg, jinja2.nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")

    @jinja2.compiler.optimizeconst
    def visit_Compare(self, node: jinja2.nodes.Compare, frame: jinja2.compiler.Frame) -> None:
        # What a comparison reads: an operand written in the template bounds it, else both are read (only the
        # searched one for ``in``, when the other is written in the template).
        operands = [node.expr, *(op.expr for op in node.ops)]
        reads = [0] * len(operands)  # 0: not read, 1: searched, 2: read (what a chained comparison needs most)
        for i, op in enumerate(node.ops):
            left, right = _literal(operands[i]), _literal(operands[i + 1])
            if op.op in ("in", "notin"):
                reads[i + 1] = max(reads[i + 1], 0 if right else 1)
                reads[i] = max(reads[i], 0 if left or right else 2)
            elif not (left or right):
                reads[i] = reads[i + 1] = 2
        self.write("(")
        for i, operand in enumerate(operands):
            if i:
                self.write(f" {jinja2.compiler.operators[node.ops[i - 1].op]} ")
            self._read(operand, ("", "searched", "read")[reads[i]], frame)
        self.write(")")

    def visit_Dict(self, node: jinja2.nodes.Dict, frame: jinja2.compiler.Frame) -> None:
        self.write("{")
        for i, item in enumerate(node.items):
            self.write(", " if i else "")
            self._read(item.key, "" if _literal(item.key) else "read", frame)  # a key is hashed
            self.write(": ")
            self.visit(item.value, frame)
        self.write("}")

    def _read(self, node: jinja2.nodes.Expr, how: str, frame: jinja2.compiler.Frame) -> None:
        if how:
            self.write(f"environment.{how}(")
        self.visit(node, frame)
        if how:
            self.write(")")

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.bounded_concat(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: Hugging Face's tag around what the assistant wrote (for a mask of
    its tokens), which renders its body as it is."""

    tags = {"generation"}  # noqa: RUF012 (Jinja's own annotation: a set each extension class sets)

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, bounded as the module says."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "-", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _Generation],
            finalize=self._finalize,
        )
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, range=_range)
        self.filters.update(tojson=_tojson, sum=_sum)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.tests = {name: _reading_test(f) if name in _READING_TESTS else f for name, f in self.tests.items()}

    @staticmethod
    def _finalize(value: Any) -> Any:
        _measured(value)  # what ``{{ ... }}`` writes
        return value

    read = staticmethod(_read)
    searched = staticmethod(_searched)

    @staticmethod
    def counted(items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            _steps(1)
            yield item

    @staticmethod
    def concat(pieces: Iterable[str]) -> str:
        """What a block, a macro or ``{% set %}...{% endset %}`` writes, joined: as long as all it wrote."""
        pieces = list(pieces)
        _size(sum(map(len, pieces)))
        return "".join(pieces)

    @staticmethod
    def bounded_concat(eval_ctx: jinja2.nodes.EvalContext, parts: tuple[Any, ...]) -> str:
        for part in parts:
            _measured(part)
        texts = [p if isinstance(p, str) else str(p) for p in parts]
        _size(sum(map(len, texts)))
        join = jinja2.runtime.markup_join if eval_ctx.autoescape else jinja2.runtime.str_join
        return join(parts)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator in ("+", "-"):
            if isinstance(left, _Sized) and isinstance(right, _Sized):
                _size(len(left) + len(right))
            elif (
                isinstance(left, int) and isinstance(right, int) and max(abs(left), abs(right)).bit_length() > _MAX_BITS
            ):
                _refuse("the chat template adds numbers too large")  # one doubled in a loop: each addition slower
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _Sized) and isinstance(n, int):
                    _size(len(seq) * max(n, 0))
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_BITS:
                _refuse("the chat template multiplies numbers too large")
        elif operator == "%":
            if isinstance(left, _Text):
                _check_percent(left, right)
                return _made(super().call_binop(context, operator, left, right))
        elif isinstance(left, int) and isinstance(right, int) and right * abs(left).bit_length() > _MAX_BITS:
            _refuse("the chat template raises a number to too high a power")
        return super().call_binop(context, operator, left, right)

    @staticmethod
    def sliced(value: Any, start: Any, stop: Any, step: Any) -> Any:
        return _made(value[start:stop:step])  # a copy, as long as the value at most

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            if is_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_format(fmt, list(args[0].values()))
            else:
                _check_format(fmt, [*args, *kwargs.values()])
            return str(_made(wrapped(*args, **kwargs)))

        checked.checks_itself = True  # type: ignore[attr-defined]
        return checked

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # A macro's arguments are measured where it writes them. A call of a macro or a block counts as steps, so
        # that one calling itself twice, thirty deep, is bounded. Jinja passes a loop's or block's own variables to
        # every call in it (_loop_vars, _block_vars): not arguments the template gave, so neither counted nor read.
        scope = {k: kwargs.pop(k) for k in _SCOPE_KEYWORDS if k in kwargs}
        recursive = isinstance(__obj, (jinja2.runtime.Macro, jinja2.runtime.BlockReference, jinja2.runtime.LoopContext))
        checked_elsewhere = recursive or getattr(__obj, "checks_itself", False)
        given = len(args) + len(kwargs)
        if given > _WRITTEN_ARGUMENTS:  # f(*items) or f(**d): each item copied, more than once
            _steps(given)
        if recursive:
            _steps(_CALL_STEPS)
            if isinstance(__obj, jinja2.runtime.LoopContext) and args:  # loop(items): its items are steps too
                args = (_Sandbox.counted(args[0]), *args[1:])
        elif __obj is dict or __obj is jinja2.utils.Namespace:  # they keep what they are given
            for arg in args:  # dict(pairs): its keys are hashed
                _read(arg)
        elif not checked_elsewhere:
            _arguments(args, kwargs)
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, _Text) and name == "join" and len(args) == 1:  # sep.join(items)
                items, length = _items(args[0])
                _size(length + len(owner) * len(items))
                args = (items,)
            elif isinstance(owner, _Text):
                _read(owner)
                _estimated(_METHODS, name, owner, args, kwargs)
                if name in _SPLITTING:
                    _steps(_pieces(owner, name, args, kwargs))
            elif isinstance(owner, (list, tuple)) and name in ("index", "count"):
                _read(owner)
            elif __obj is jinja2.utils.generate_lorem_ipsum:
                _lipsum(_arg(args, kwargs, 0, "n", 5), _arg(args, kwargs, 3, "max", 100))
        return _made(super().call(__context, __obj, *args, **kwargs, **scope))


_Sandbox.counted.checks_itself = True  # type: ignore[attr-defined]  # what a loop goes through: counted as it goes


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template | None:
    """``template`` compiled in the bounded sandbox, or None when Jinja cannot compile it.

    Jinja folds constant expressions as it compiles (``'a'|center(n)``, ``x ~ y``), outside any render's budget. The
    budget is spent here from the start, so that whatever costs steps or characters is left to the render."""
    token = _spent.set({"steps": _MAX_STEPS, "made": _MAX_MADE, "read": _MAX_READ})
    try:
        return _Sandbox().from_string(template)
    except (jinja2.TemplateError, SyntaxError, RecursionError, MemoryError, ValueError, OverflowError):
        return None  # Python's own limits on what it compiles (nesting, say) too
    finally:
        _spent.reset(token)


def render(compiled: jinja2.Template, /, **variables: Any) -> str:
    """``compiled`` rendered with ``variables``, within the bounds. Raises :class:`Refused` when the template refuses
    its input, and Jinja's errors (``SecurityError`` past a bound) or Python's when it fails."""
    token = _spent.set({"steps": 0, "made": 0, "read": 0})
    try:
        out: list[str] = []
        size = 0
        for piece in compiled.generate(**variables):
            size += len(piece)
            if size > _MAX_CHARS:
                _refuse(f"the chat template renders over {_MAX_CHARS} characters")
            out.append(piece)
        return "".join(out)
    finally:
        _spent.reset(token)
