"""Tool calls in the syntax the model is prompted with: the system message's JSON object (:mod:`.structured`), or
its chat template's own (:func:`llamacffi.chat.tool_syntax`): Hermes blocks (:mod:`.hermes`); Qwen3-Coder's XML
blocks, GLM's, Seed-OSS's, and MiniMax M2's and DeepSeek's ``<invoke>`` elements (:mod:`.qwen_xml`); Mistral's
``[TOOL_CALLS]`` calls (:mod:`.mistral`); a JSON list of calls after a tag (:mod:`.json_list`: Mistral Nemo,
Nemotron Nano 2); gpt-oss's messages to a function (:mod:`.harmony`); Gemma 4's calls in its own notation
(:mod:`.gemma`); or Llama 3's answer that is one ``{"name": ..., "parameters": {...}}`` object."""

from __future__ import annotations

import dataclasses

from ..chat import ToolSyntax
from ..jsontypes import JSONObject
from . import gemma, harmony, hermes, json_list, mistral, qwen_xml, structured

LLAMA3_ARGUMENTS = "parameters"  # the member Llama 3's templates put a call's arguments in


def described(tools: structured.Tools) -> list[dict[str, object]]:
    """The functions as OpenAI's ``tools`` list, which the templates take."""
    return [{"type": "function", "function": {"name": name, **fn}} for name, fn in tools.functions.items()]


def grammar(
    syntax: ToolSyntax,
    tools: structured.Tools,
    answer: JSONObject | bool | None,
    answer_grammar: str | None,
    parallel: bool,
) -> str | None:
    """The grammar of an answer in a template's syntax: calls when one is forced; with ``"auto"``, calls or a
    document of the ``answer`` schema (a JSON ``response_format``, compiled as ``answer_grammar``), or anything
    (None) without one."""
    if tools.forced():
        answer = answer_grammar = None  # a call: the answer's format does not apply
    elif answer is None:
        return None
    if syntax == "hermes":
        return hermes.grammar(tools, structured.call_grammar(tools), answer_grammar, parallel)
    if syntax in _STYLES:
        return qwen_xml.grammar(tools, answer_grammar, parallel, _STYLES[syntax])
    if syntax == "mistral":
        return mistral.grammar(tools, answer_grammar, parallel)
    if syntax == "harmony":
        return harmony.grammar(tools, answer_grammar)
    if syntax == "gemma4":
        return gemma.grammar(tools, answer_grammar, parallel)
    if syntax in _LISTS:
        return json_list.grammar(tools, answer_grammar, parallel, _LISTS[syntax])
    return structured.call_grammar(tools, answer, LLAMA3_ARGUMENTS)


# the syntaxes of parameters written one by one, as elements
_STYLES = {
    "qwen-xml": qwen_xml.QWEN,
    "glm": qwen_xml.GLM,
    "seed": qwen_xml.SEED,
    "minimax": qwen_xml.MINIMAX,
    "deepseek-v3.2": qwen_xml.DEEPSEEK_V3_2,
    "deepseek-v4": qwen_xml.DEEPSEEK_V4,
}
# the syntaxes of a JSON list of calls
_LISTS = {"mistral-nemo": json_list.NEMO, "nemotron": json_list.NEMOTRON}
_MARKERS = {
    "mistral": mistral.MARKERS,
    "mistral-nemo": (json_list.NEMO.opening,),
    "nemotron": (json_list.NEMOTRON.opening, json_list.NEMOTRON.closing),
    "harmony": harmony.MARKERS,
    "glm": qwen_xml.GLM_MARKERS,
    "seed": ("<seed:tool_call>", "</seed:tool_call>"),
    "minimax": qwen_xml.MINIMAX_MARKERS,
    "gemma4": gemma.MARKERS,
    "deepseek-v3.2": (qwen_xml.DSML,),
    "deepseek-v4": (qwen_xml.DSML,),
}


def preserved(syntax: ToolSyntax | None) -> tuple[str, ...]:
    """The special tokens of a syntax that the answer writes out, to be read (its markers)."""
    return _MARKERS.get(syntax, ()) if syntax is not None else ()


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one request's answers make tool calls."""

    tools: structured.Tools
    syntax: ToolSyntax | None  # None: the JSON object the system message describes
    parallel: bool  # several calls in one answer (where the syntax has them)

    def read(self, text: str, cut: bool = False) -> tuple[str | None, list[JSONObject]]:
        """The answer's text (None when there is none beside its calls) and its calls. ``cut``: the answer ended at
        its length limit, and a block it left open is dropped."""
        if self.syntax == "hermes":
            return hermes.read(text, self.tools, self.parallel, cut=cut)
        if self.syntax in _STYLES:
            return qwen_xml.read(text, self.tools, self.parallel, cut, _STYLES[self.syntax])
        if self.syntax == "mistral":
            return mistral.read(text, self.tools, self.parallel, cut)
        if self.syntax == "harmony":
            return harmony.read(text, self.tools, cut)
        if self.syntax == "gemma4":
            return gemma.read(text, self.tools, self.parallel, cut)
        if self.syntax in _LISTS:
            return json_list.read(text, self.tools, self.parallel, cut, _LISTS[self.syntax])
        arguments = LLAMA3_ARGUMENTS if self.syntax == "llama3" else "arguments"
        call = structured.as_call(text, self.tools, arguments)
        return (text, []) if call is None else (None, [call])

    def held_from(self, text: str) -> int | None:
        """Where the text streamed so far may start a call, which is then held back until the answer ends (its
        length when nothing is held); None when the answer is text to its end, and nothing needs holding again."""
        if self.tools.forced() or not text.strip():
            return 0
        if self.syntax == "hermes":
            return hermes.held_from(text)
        if self.syntax in _STYLES:
            return hermes.held_from(text, _STYLES[self.syntax].opening)
        if self.syntax == "mistral":
            return mistral.held_from(text)
        if self.syntax == "harmony":
            return harmony.held_from(text)
        if self.syntax == "gemma4":
            return gemma.held_from(text)
        if self.syntax in _LISTS:
            return json_list.held_from(text, _LISTS[self.syntax])
        return 0 if text.lstrip().startswith("{") else None
