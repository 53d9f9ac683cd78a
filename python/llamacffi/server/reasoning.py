"""A reasoning model's thinking, apart from its answer: the text in ``<think>...</think>`` (or the other tags of
:data:`llamacffi.chat.THINKING_TAGS`, such as Magistral's ``[THINK]...[/THINK]``) at the start of an answer becomes
the message's ``reasoning_content``, as llama-server (``--reasoning-format auto``), vLLM and DeepSeek's API return it;
the answer after it is the ``content`` (and the text tool calls are read from).

It applies to models whose chat template writes such blocks (:meth:`llamacffi.Model.thinking_tags`). Where the
template's generation prompt itself opens the block (Qwen 3.5, DeepSeek R1), the answer starts inside it; otherwise
an answer that starts with the opening tag does. A request that asks ``"reasoning_format": "none"`` gets the text as
it came.

An answer a grammar constrains (a JSON ``response_format``, a forced tool call) may think first, as vLLM allows with
a reasoning parser: the grammar admits free text up to the closing tag before its document (:func:`first`). With
``"reasoning_format": "none"`` the content must be the document alone, so a block the prompt opened is closed empty
before it instead (:func:`closed`), and the model answers without thinking.
"""

from __future__ import annotations

from ..chat import THINKING_TAGS, ThinkingTags
from ..grammar.combine import spliced
from ..grammar.gbnf import Builder, literal
from ..grammar.strings import raw_text
from . import tags

THINK = THINKING_TAGS[0]
FORMATS = ("auto", "deepseek", "none")  # llama-server's names; "deepseek" is what "auto" does here


def opened(prompt: str, marks: ThinkingTags = THINK) -> bool:
    """Whether the prompt ends inside a thinking block (between ``marks``) that its template opened."""
    return prompt.rstrip().endswith(marks.opening)


def shut(prompt: str, marks: ThinkingTags = THINK) -> bool:
    """Whether the prompt ends with a thinking block closed, as a template writes one to turn thinking off: the
    answer starts after it."""
    return prompt.rstrip().endswith(marks.closing)


def closed(prompt: str, marks: ThinkingTags = THINK) -> str:
    """A prompt that opened a thinking block, with the block closed empty, as such templates write a turn without
    thinking: for an answer a grammar constrains whose content must be its document alone."""
    return prompt.rstrip() + "\n\n" + marks.closing + "\n\n"


def first(grammar: str, inside: bool, marks: ThinkingTags = THINK) -> str:
    """A grammar admitting thinking, then ``grammar``'s document: the rest of the block the prompt opened
    (``inside``), else an optional block at the start. The thinking is any text without the closing tag; a few blanks
    may follow it, as :func:`split` drops them, and one of the tags' ``leads`` (gpt-oss opens its final channel after
    its analysis, or writes a message to a function, which the document's grammar admits)."""
    b = Builder()
    thought = raw_text(b, "thought", marks.closing)
    leads = " | ".join(literal(lead) for lead in marks.leads)
    block = f"{thought} {literal(marks.closing)} {b.repeat(_BLANK, 0, _BLANKS)}" + (f" ({leads})?" if leads else "")
    head = block if inside else f"({literal(marks.opening)} {block}{' | ' + leads if leads else ''})?"
    body, rules = spliced(grammar, "answer-")  # no rule of this grammar starts with it
    return b.text(f"{head} ({body})") + rules


_BLANK = "[ \\t\\n]"
_BLANKS = 4  # between the block and the answer: bounded, so that blanks cannot fill the answer's tokens


def split(text: str, inside: bool, marks: ThinkingTags = THINK) -> tuple[str | None, str]:
    """The thinking (None when the answer has none) and the answer after it, without the tags' ``leads``;
    ``inside``: the prompt opened the block. A block the answer never closes is all thinking."""
    if not inside:
        stripped = text.lstrip()
        if not stripped.startswith(marks.opening):
            return None, _unled(text, marks.leads)
        text = stripped[len(marks.opening) :]
    end = text.find(marks.closing)
    if end < 0:
        return text, ""
    return text[:end], _unled(text[end + len(marks.closing) :].lstrip(), marks.leads)


def _unled(text: str, leads: tuple[str, ...]) -> str:
    stripped = text.lstrip()
    lead = next((lead for lead in leads if stripped.startswith(lead)), None)
    return text if lead is None else stripped[len(lead) :]


class Splitter:
    """A streamed answer's pieces told apart as they come: thinking, then answer. Text that may be the start of a
    tag, or of a lead, is held until the next piece shows what it is; the blanks between the block and the answer
    are dropped, and a lead, as :func:`split` drops them."""

    def __init__(self, inside: bool, marks: ThinkingTags = THINK) -> None:
        self.state = "inside" if inside else "before"  # before -> (inside -> blanks ->) lead -> after
        self.pending = ""
        self.marks = marks

    def feed(self, text: str) -> tuple[str, str]:
        """The thinking and the answer this piece completes (either may be empty)."""
        self.pending += text
        opening, closing, leads = self.marks.opening, self.marks.closing, self.marks.leads
        thought = ""
        if self.state == "before":
            stripped = self.pending.lstrip()
            if opening.startswith(stripped) and stripped != opening:  # blanks, or the tag's start: wait for more
                return "", ""
            if stripped.startswith(opening):
                self.state = "inside"
                self.pending = stripped[len(opening) :]
            else:
                self.state = "lead"
        if self.state == "inside":
            end = self.pending.find(closing)
            if end < 0:
                keep = tags.start_at_end(self.pending, closing)
                thought, self.pending = (
                    self.pending[: len(self.pending) - keep],
                    self.pending[len(self.pending) - keep :],
                )
                return thought, ""
            thought, self.pending = self.pending[:end], self.pending[end + len(closing) :]
            self.state = "blanks"
        if self.state == "blanks":
            self.pending = self.pending.lstrip()
            if not self.pending:
                return thought, ""
            self.state = "lead"
        if self.state == "lead":
            stripped = self.pending.lstrip()
            if any(lead.startswith(stripped) and lead != stripped for lead in leads):  # a lead's start: wait
                return thought, ""
            self.pending = _unled(self.pending, leads)
            self.state = "after"
        answer, self.pending = self.pending, ""
        return thought, answer

    def finish(self) -> tuple[str, str]:
        """What is still held when the answer ends: thinking, or answer."""
        rest, self.pending = self.pending, ""
        return (rest, "") if self.state == "inside" else ("", rest)
