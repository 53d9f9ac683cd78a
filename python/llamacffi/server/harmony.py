"""Tool calls in OpenAI's harmony format (gpt-oss): a message to a function, its recipient named in the role's
header or in the channel's, its arguments as JSON::

    <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}

:mod:`.reasoning` takes the analysis channel as thinking, and drops the final channel's header; the answer after it
makes a call when it is such messages: commentary to the user (a preamble, kept as the content), then one call,
which ends the turn (``<|call|>``). The markers are special tokens of gpt-oss's vocabulary, which the answer writes
out (:data:`MARKERS`).
"""

from __future__ import annotations

import re

from ..grammar.combine import either, spliced
from ..grammar.gbnf import literal
from ..jsontypes import JSONObject
from . import hermes, structured

MARKERS = ("<|channel|>", "<|constrain|>", "<|message|>", "<|start|>", "<|end|>")
START = "<|start|>assistant"
END = "<|end|>"
MESSAGE = "<|message|>"
_HEADS = (START, "<|channel|>", "to=")  # what the header of the answer's first message starts with
_HEADER_EXTRA = 96  # a header's length beside the recipient's name
_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")
_CHANNELS = ("commentary", "analysis", "final")


def grammar(tools: structured.Tools, answer: str | None) -> str:
    """The grammar of the answer: a call to the chosen function (to any for ``"required"`` and ``"auto"``), in
    either header; beside an ``answer`` grammar (``"auto"`` with a JSON ``response_format``), a call or a document
    of it. One call only: the format ends the turn with it."""
    names = structured.chosen(tools)
    for name in names:
        if _RECIPIENT.fullmatch(f"to=functions.{name}") is None:
            raise structured.unwritable(name, "in a recipient")
    shared, rules = structured.compile_parameters(tools, names)
    _, every = spliced(shared, "args-")
    commentary = literal("<|channel|>commentary")
    kind = f'(({literal(" ")} | {literal(" ")}? {literal("<|constrain|>")}) "json")?'  # apart from the name
    calls = []
    for name, rule in zip(names, rules, strict=True):
        recipient = literal(f" to=functions.{name}")
        header = f"({recipient} {commentary} | {commentary} {recipient}) {kind} {literal(MESSAGE)}"
        calls.append(f"{literal(START)}? {header} args-{rule}")
    blocks = f"root ::= call\ncall ::= {' | '.join(calls)}\n{every}"
    return blocks if answer is None else either(blocks, answer)


def read(text: str, tools: structured.Tools, cut: bool = False) -> tuple[str | None, list[JSONObject]]:
    """The answer's text beside its call (its commentary to the user; None when there is none) and its call; the
    whole text and no call when it makes none, or its messages are not a well-formed call to a listed function.
    ``cut``: the answer ended at its length limit; a call it left open is dropped, and what it said before kept."""
    if not text.lstrip().startswith(_HEADS):
        return text, []
    said: list[str] = []
    pos = 0
    bound = max(map(len, tools.functions), default=0) + _HEADER_EXTRA
    while pos < len(text):
        header = _header(text, pos, bound)
        if header is None:  # not a message; cut short, a call's header may have been
            return _told(said) if cut and said else (text, [])
        name, channel, pos = header
        if name is None:  # a message to the user; thinking between messages is not kept
            end = text.find(END, pos)
            if channel != "analysis":
                said.append(text[pos : end if end >= 0 else len(text)])
            pos = len(text) if end < 0 else end + len(END)
            continue
        try:
            arguments, end = structured.DECODER.raw_decode(text, hermes.after_blanks(text, pos))
        except (ValueError, RecursionError):
            return _told(said) if cut else (text, [])
        if name not in tools.functions or not isinstance(arguments, dict) or text[end:].strip():
            return text, []
        content = "\n".join(s for s in said if s.strip())
        return content or None, [structured.made(name, arguments)]
    return text, []


def _header(text: str, pos: int, bound: int) -> tuple[str | None, str, int] | None:
    """The recipient (None for the user), the channel and the content's start of the message whose header starts at
    ``pos``; None when no such header (of at most ``bound`` characters) is there."""
    end = text.find(MESSAGE, pos, pos + bound)
    if end < 0:
        return None
    head = text[pos:end].strip().removeprefix(START)
    before, marked, after = head.partition("<|channel|>")
    after = after.replace("<|constrain|>", " ")
    channel, _, rest = after.partition(" ")
    if not marked or channel not in _CHANNELS or "<|" in before + after:
        return None
    named = [m.group(1) for m in _RECIPIENT.finditer(before + " " + rest)]
    if len(named) > 1 or (before.strip() and not named):
        return None
    return (named[0] if named else None), channel, end + len(MESSAGE)


def _told(said: list[str]) -> tuple[str, list[JSONObject]]:
    """What an answer without a call said to the user."""
    return "\n".join(s for s in said if s.strip()), []


def held_from(text: str) -> int | None:
    """0 while the answer may be messages that make a call (held until it ends), None once it is plain text."""
    stripped = text.lstrip()
    if any(stripped.startswith(h) or h.startswith(stripped) for h in _HEADS):
        return 0
    return None
