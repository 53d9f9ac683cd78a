"""Tool calls in the syntax of Hermes-style chat templates (Hermes 2 Pro and 3, Qwen 2.5 and 3, QwQ, Granite 4):
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, one per call.

For a model whose template teaches this syntax (:func:`llamacffi.chat.tool_syntax`), the template itself describes
the functions and writes earlier calls and results, as the model saw them in training; a forced choice constrains
the output to such blocks by a grammar, and ``"auto"`` reads the blocks the model chose to write (:mod:`.calls`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..grammar.combine import either, tagged
from ..jsontypes import JSONObject
from . import structured, tags

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def grammar(tools: structured.Tools, call: str, answer: str | None, parallel: bool) -> str:
    """The grammar of the answer: blocks of ``call`` (the grammar of one call's JSON, :func:`.structured.call_grammar`),
    one only for a named function or without ``parallel``; beside an ``answer`` grammar (``"auto"`` with a JSON
    ``response_format``), blocks or a document of it."""
    blocks = _blocks(call, parallel and tools.choice in ("required", "auto"))
    return blocks if answer is None else either(blocks, answer)


def _blocks(call: str, many: bool) -> str:
    return tagged(call, OPEN + "\n", "\n" + CLOSE, separator="\n" if many else None)


# reads one block from after its opening tag: its calls (None for a block that is not calls to listed functions)
# and where its closing tag ends; None for a block that does not end (left open, or malformed)
Block = Callable[[str, int, structured.Tools], "tuple[list[JSONObject] | None, int] | None"]


def read(
    text: str,
    tools: structured.Tools,
    parallel: bool,
    block: Block | None = None,
    cut: bool = False,
    opening: str = OPEN,
) -> tuple[str | None, list[JSONObject]]:
    """The answer's text beside its calls (None when blank) and its calls (the first only without ``parallel``); the
    whole text and no call when it holds no block, or a block that is not a well-formed call to a listed function.
    ``block``: reads one block (:data:`Block`; JSON by default) after its ``opening`` tag. ``cut``: the answer ended
    at its length limit; a last block that does not end (the one it left open), or the start of an opening tag at
    its end, is dropped, and the calls before it kept.

    The text before the first block keeps its start, as a stream sends it; text between or after blocks follows it
    on lines of its own."""
    if cut:
        text = text[: len(text) - tags.start_at_end(text, opening)]
    calls: list[JSONObject] = []
    outside: list[str] = []
    pos = 0
    read_block = block or _block
    while (start := text.find(opening, pos)) >= 0:
        found = read_block(text, start + len(opening), tools)
        if found is None and cut and not _ends_later(text, start, opening, read_block, tools):
            text = text[:start]  # the last block, left open (the tag may recur inside it, in a value)
            break
        if found is None or found[0] is None:
            return text, []
        outside.append(text[pos:start])
        calls.extend(found[0])
        pos = found[1]
    if not calls:
        return text, []
    content = outside[0].rstrip() + "".join("\n" + p.strip() for p in [*outside[1:], text[pos:]] if p.strip())
    return (content if content.strip() else None), calls if parallel else calls[:1]


def _ends_later(text: str, start: int, opening: str, block: Block, tools: structured.Tools) -> bool:
    """Whether a block that opens after ``start`` ends: the one at ``start`` then is malformed, not left open."""
    while (start := text.find(opening, start + len(opening))) >= 0:
        if block(text, start + len(opening), tools) is not None:
            return True
    return False


def _block(text: str, pos: int, tools: structured.Tools) -> tuple[list[JSONObject] | None, int] | None:
    """The call whose JSON starts after blanks at ``pos`` (None when it is no call to a listed function), and where
    its closing tag ends; None when the JSON or the tag after it is not there (the JSON is read whole: a string in
    it may hold the tag)."""
    pos = after_blanks(text, pos)
    try:
        _, end = structured.DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        return None
    call = structured.as_call(text[pos:end], tools)
    end = after_blanks(text, end)
    return (None if call is None else [call], end + len(CLOSE)) if text.startswith(CLOSE, end) else None


def after_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def held_from(text: str, opening: str = OPEN) -> int:
    """Where the text that may be a call starts: at its first block (``opening`` its tag), or at an end that may
    begin one, and the blanks before either (its length when there is neither)."""
    cut = text.find(opening)
    if cut < 0:
        cut = len(text) - tags.start_at_end(text, opening)
    return len(text[:cut].rstrip())
