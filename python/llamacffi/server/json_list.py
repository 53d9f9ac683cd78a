"""Tool calls as a JSON list of ``{"name": ..., "arguments": {...}}`` objects after a tag: Mistral Nemo's
``[TOOL_CALLS][...]`` (each call with the ``"id"`` of 9 letters and digits its template takes back), and Nemotron
Nano 2's ``<TOOLCALL>[...]</TOOLCALL>`` (:data:`NEMO`, :data:`NEMOTRON`). The answer's text before the list is its
content."""

from __future__ import annotations

import dataclasses

from ..grammar.combine import either, tagged
from ..jsontypes import JSONObject
from . import hermes, mistral, structured, tags


@dataclasses.dataclass(frozen=True)
class Style:
    """How a template writes the list: its tags, and whether its calls carry ids."""

    opening: str
    closing: str  # "" where the list ends the answer
    ids: bool  # each call has an "id" of 9 letters and digits (Mistral's)


NEMO = Style("[TOOL_CALLS]", "", ids=True)
NEMOTRON = Style("<TOOLCALL>", "</TOOLCALL>", ids=False)
_ID_SCHEMA: JSONObject = {"type": "string", "pattern": "^[A-Za-z0-9]{9}$"}
_MEMBERS = frozenset({"name", "arguments", "id"})


def grammar(tools: structured.Tools, answer: str | None, parallel: bool, style: Style) -> str:
    """The grammar of the answer: a list of calls to the chosen function (to any for ``"required"`` and ``"auto"``),
    one only for a named function or without ``parallel``, between the style's tags; beside an ``answer`` grammar
    (``"auto"`` with a JSON ``response_format``), the list or a document of it."""
    many = parallel and tools.choice in ("required", "auto")
    listed = structured.call_grammar(tools, many=many, call_id=_ID_SCHEMA if style.ids else None)
    blocks = tagged(listed, style.opening, style.closing)
    return blocks if answer is None else either(blocks, answer)


def read(
    text: str, tools: structured.Tools, parallel: bool, cut: bool, style: Style
) -> tuple[str | None, list[JSONObject]]:
    """The answer's text beside its calls (None when blank) and its calls (the first only without ``parallel``); the
    whole text and no call when it holds no list, or one that is not well-formed calls to listed functions. ``cut``:
    the answer ended at its length limit, and a list it left open (or the start of its tag) is dropped."""
    if cut:
        text = text[: len(text) - tags.start_at_end(text, style.opening)]
    start = text.find(style.opening)
    if start < 0:
        return text, []
    pos = hermes.after_blanks(text, start + len(style.opening))
    try:
        items, end = structured.DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        if not cut:
            return text, []
        items = _items(text, pos)
        whole = _calls(items, tools, style) if items else []  # the calls the list had finished
        if whole is None:  # one of them is no call: the text as it came, as a list that ends
            return text, []
        return (text[:start].rstrip() or (None if whole else "")), whole if parallel else whole[:1]
    if style.closing:
        close = hermes.after_blanks(text, end)
        if text.startswith(style.closing, close):
            end = close + len(style.closing)
        elif cut and style.closing.startswith(text[close:]):  # its closing tag, cut short
            end = len(text)
        else:
            return text, []
    made = _calls(items, tools, style)
    if made is None:
        return text, []
    content = text[:start].rstrip() + ("\n" + text[end:].strip() if text[end:].strip() else "")
    return (content if content.strip() else None), made if parallel else made[:1]


def _items(text: str, pos: int) -> list[object]:
    """The whole items of a JSON list that starts at ``pos`` and does not end."""
    items: list[object] = []
    if not text.startswith("[", pos):
        return items
    pos += 1
    while True:
        try:
            item, pos = structured.DECODER.raw_decode(text, hermes.after_blanks(text, pos))
        except (ValueError, RecursionError):
            return items
        items.append(item)
        pos = hermes.after_blanks(text, pos)
        if not text.startswith(",", pos):
            return items
        pos += 1


def _calls(items: object, tools: structured.Tools, style: Style) -> list[JSONObject] | None:
    """The calls of a list of call objects; None when it is not one, or a call is to no listed function."""
    if not isinstance(items, list) or not items:
        return None
    made = []
    for item in items:
        if not isinstance(item, dict) or not {"name", "arguments"} <= set(item) <= _MEMBERS:
            return None
        name, arguments, given = item["name"], item["arguments"], item.get("id")
        if not isinstance(name, str) or name not in tools.functions or not isinstance(arguments, dict):
            return None
        made.append(structured.made(name, arguments, mistral.call_id(given) if style.ids else None))
    return mistral.unique(made)


def held_from(text: str, style: Style) -> int:
    """Where the text that may be calls starts (its length when it holds none), as :func:`.hermes.held_from`."""
    return hermes.held_from(text, style.opening)
