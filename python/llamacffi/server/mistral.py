"""Tool calls in the syntax of Mistral's chat templates (Mistral Small 3.2, Devstral, Ministral 3, Magistral): the
answer's text, then one ``[TOOL_CALLS]NAME[ARGS]{...}`` per call, its arguments as a JSON object::

    Let me look.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"city": "Rome"}

Templates that write a call's id put ``[CALL_ID]ID`` before ``[ARGS]`` and refuse ids other than 9 letters and
digits: a call's id here is the one the model wrote, or one of that form. The markers are special tokens of
Mistral's vocabularies, which the output writes out (:data:`MARKERS`, GenerationOptions.preserved_tokens).
"""

from __future__ import annotations

import re
import secrets
import string

from ..grammar.combine import either, spliced
from ..grammar.gbnf import literal
from ..jsontypes import JSONObject
from . import hermes, structured

OPEN = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
MARKERS = (OPEN, ARGS, CALL_ID)
_ID_CHARS = string.ascii_letters + string.digits
_ID = re.compile(r"[A-Za-z0-9]{9}")
_HEAD_EXTRA = 64  # after [TOOL_CALLS], beside the longest name: room for blanks and an id before [ARGS]


def grammar(tools: structured.Tools, answer: str | None, parallel: bool) -> str:
    """The grammar of the answer: calls to the chosen function (to any for ``"required"`` and ``"auto"``), one only
    for a named function or without ``parallel``; beside an ``answer`` grammar (``"auto"`` with a JSON
    ``response_format``), calls or a document of it."""
    names = structured.chosen(tools)
    for name in names:
        if name != name.strip() or any(c in name for c in "[]\n"):
            raise structured.unwritable(name, "in a call")
    shared, rules = structured.compile_parameters(tools, names)
    _, every = spliced(shared, "args-")
    calls = [
        f"{literal(OPEN + name)} call-id? {literal(ARGS)} args-{rule}" for name, rule in zip(names, rules, strict=True)
    ]
    many = parallel and tools.choice in ("required", "auto")
    head = "call+" if many else "call"
    blocks = f"root ::= {head}\ncall ::= {' | '.join(calls)}\ncall-id ::= {literal(CALL_ID)} [A-Za-z0-9]{{9}}\n{every}"
    return blocks if answer is None else either(blocks, answer)


def read(text: str, tools: structured.Tools, parallel: bool, cut: bool = False) -> tuple[str | None, list[JSONObject]]:
    """The answer's text before its calls and its calls, as :func:`.hermes.read` with calls of this syntax; each
    call's id its own (an id the model wrote twice is replaced)."""
    content, made = hermes.read(text, tools, parallel, _call, cut, OPEN)
    return content, unique(made)


def _call(text: str, pos: int, tools: structured.Tools) -> tuple[list[JSONObject] | None, int] | None:
    """The call after the ``[TOOL_CALLS]`` that ends at ``pos`` (None when it is no call to a listed function), and
    where its arguments end; None when its name, ``[ARGS]`` or whole JSON arguments are not there."""
    start = hermes.after_blanks(text, pos)
    bound = start + max(map(len, tools.functions), default=0) + _HEAD_EXTRA
    args = text.find(ARGS, start, bound)
    if args < 0:
        return None
    name, marked, given = text[start:args].partition(CALL_ID)
    try:
        arguments, end = structured.DECODER.raw_decode(text, hermes.after_blanks(text, args + len(ARGS)))
    except (ValueError, RecursionError):
        return None
    name = name.strip()
    if not name or name not in tools.functions or not isinstance(arguments, dict):
        return None, end
    return [structured.made(name, arguments, call_id(given.strip() if marked else None))], end


def unique(made: list[JSONObject]) -> list[JSONObject]:
    """The calls, a fresh id for each whose id an earlier one has."""
    seen: set[object] = set()
    out = []
    for call in made:
        if call["id"] in seen:
            call = {**call, "id": call_id()}
        seen.add(call["id"])
        out.append(call)
    return out


def call_id(given: object = None) -> str:
    """An id of the form Mistral's templates take, 9 letters and digits: ``given`` where it has that form, else a
    fresh one."""
    if isinstance(given, str) and _ID.fullmatch(given):
        return given
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


def held_from(text: str) -> int:
    """Where the text that may be a call starts (its length when it holds none), as :func:`.hermes.held_from`."""
    return hermes.held_from(text, OPEN)
