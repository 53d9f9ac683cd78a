"""Chat templates: a conversation formatted as a model expects it.

A template is Jinja source (what a GGUF file carries, as Hugging Face writes it) or the name of one of llama.cpp's
built-in templates (``"chatml"``, ``"gemma"``, ``"llama3"``, ...). Jinja source is rendered by Jinja itself, in a
sandbox, as llama.cpp's server and Hugging Face's tokenizers do, so a template's own logic (a default system message,
a check that roles alternate) applies; a name goes to llama.cpp's ``llama_chat_apply_template``, which also matches
the template text of common models when Jinja cannot compile it. :meth:`llamacffi.Model.apply_chat_template` uses
the model's own template.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, TypedDict

import jinja2

from . import chat_sandbox
from .cbuffer import read_grown
from .errors import InvalidArgumentError, LlamaError
from .jsontypes import JSON
from .raw import ffi, lib

# A message: a (role, content) pair, or a mapping with "role" and "content" (as OpenAI-style APIs send them), and
# for a Jinja template optionally "tool_calls" (an assistant's calls), "tool_call_id" and "name" (a tool's result).
Message = tuple[str, str] | Mapping[str, object]

# The tool-call syntaxes this package can prompt and read: "hermes" is ``<tool_call>{"name": ..., "arguments":
# {...}}</tool_call>`` (Hermes 2 Pro and 3, Qwen 2.5 and 3, QwQ, Granite 4 and their fine-tunes), "llama3" an answer
# that is ``{"name": ..., "parameters": {...}}`` (Llama 3.1 to 3.3), "qwen-xml" ``<tool_call><function=NAME>`` blocks
# with a ``<parameter=NAME>`` element per argument (Qwen3-Coder, Qwen 3.5, Nemotron 3 Nano, Step 3.5), "mistral"
# ``[TOOL_CALLS]NAME[ARGS]{...}`` per call (Mistral Small 3.2, Devstral, Ministral 3, Magistral), "harmony" a message
# ``to=functions.NAME`` on gpt-oss's commentary channel, "glm" ``<tool_call>NAME`` blocks with ``<arg_key>`` and
# ``<arg_value>`` elements (GLM 4.6 and 4.7, Ling 3), "seed" Qwen3-Coder's elements in a ``<seed:tool_call>`` block
# (Seed-OSS), "mistral-nemo" ``[TOOL_CALLS]`` and a JSON list of calls (Mistral Nemo), "nemotron" such a list in
# ``<TOOLCALL>`` tags (Nemotron Nano 2), "minimax" ``<invoke name="NAME">`` elements with a ``<parameter name="KEY">``
# per argument in one ``<minimax:tool_call>`` block (MiniMax M2), "deepseek-v3.2" and "deepseek-v4" such elements
# in DeepSeek's DSML tags, in a ``function_calls`` block (DeepSeek V3.2) or a ``tool_calls`` one (V4), "gemma4"
# ``<|tool_call>call:NAME{...}<tool_call|>`` per call, its arguments in Gemma's notation (Gemma 4).
ToolSyntax = Literal[
    "deepseek-v3.2",
    "deepseek-v4",
    "gemma4",
    "glm",
    "harmony",
    "hermes",
    "llama3",
    "minimax",
    "mistral",
    "mistral-nemo",
    "nemotron",
    "qwen-xml",
    "seed",
]

__all__ = [
    "ChatTemplateError",
    "Message",
    "Specials",
    "ThinkingTags",
    "ToolSyntax",
    "apply_template",
    "builtin_template_for",
    "check_variables",
    "is_jinja",
    "thinking_tags",
    "thinks",
    "tool_syntax",
]


class Specials(TypedDict):
    """The texts a Jinja chat template writes for the model's special tokens."""

    bos_token: str
    eos_token: str


class ChatTemplateError(LlamaError, ValueError):
    """llama.cpp does not know the template (neither a name it has built in nor a template text it recognises)."""


# message keys beside role and content: an assistant's calls and thinking, a tool result's call and name
_EXTRAS = {"tool_calls": list, "tool_call_id": str, "name": str, "reasoning_content": str}


def _messages(messages: Iterable[Message]) -> list[dict[str, object]]:
    """``messages`` checked, as ``{"role", "content"}`` dicts with the extras they carry."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise InvalidArgumentError("messages must be a list of (role, content) pairs or {'role', 'content'} dicts")
    out: list[dict[str, object]] = []
    for i, m in enumerate(messages):
        extras: dict[str, object] = {}
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
            for key, kind in _EXTRAS.items():
                value = m.get(key)
                if value is not None and not isinstance(value, kind):
                    raise InvalidArgumentError(f"messages[{i}].{key} must be a {kind.__name__}, got {value!r}")
                if value is not None:
                    extras[key] = value
            calls = extras.get("tool_calls")
            if isinstance(calls, list) and not all(isinstance(c, Mapping) for c in calls):
                raise InvalidArgumentError(f"messages[{i}].tool_calls must be a list of mappings")
            if content is None and calls:  # an assistant's turn that only calls, as OpenAI's API writes it
                content = ""
            if "reasoning_content" in extras and not (calls and content):
                # also by the name some templates read it (gpt-oss, LFM2.5, Command A); gpt-oss's refuses it beside
                # the text that preceded calls (which it writes as their thinking)
                extras["thinking"] = extras["reasoning_content"]
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            role, content = m
        else:
            raise InvalidArgumentError(
                f"messages[{i}] must be a (role, content) pair or a dict with 'role' and 'content', got {m!r}"
            )
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}]: role and content must be str, got {role!r}, {content!r}")
        out.append({"role": role, "content": content, **extras})
    return out


def _c_text(text: str, what: str) -> bytes:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid Unicode (lone surrogate at index {exc.start})") from None
    if b"\0" in data:  # a C string would end there, silently
        raise InvalidArgumentError(f"{what} holds a NUL character, which a chat template cannot carry")
    return data


# the variables a chat template is given by the caller of apply_template, and the sandbox's own functions
_RESERVED = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "raise_exception", "strftime_now"}
) | frozenset(jinja2.defaults.DEFAULT_NAMESPACE)  # range, dict, namespace, ...


def check_variables(variables: object) -> dict[str, JSON]:
    """``variables`` for a Jinja template (``enable_thinking=False``, say) checked, as a copy: names that are
    identifiers other than those :func:`apply_template` sets, values that are JSON data of Unicode text without
    NUL characters. Raises :class:`InvalidArgumentError` naming what is wrong."""
    if not isinstance(variables, Mapping):
        raise InvalidArgumentError(f"template variables must be a mapping of names to values, got {variables!r}")
    out: dict[str, JSON] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidArgumentError(f"a template variable's name must be an identifier, got {name!r}")
        if name in _RESERVED:
            raise InvalidArgumentError(f"the template variable {name!r} is one the chat or Jinja itself sets")
        try:
            copied: JSON = json.loads(json.dumps(value, allow_nan=False))
            for text in _texts(copied):
                _c_text(text, f"the template variable {name!r}")
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidArgumentError(f"the template variable {name!r} must be JSON data: {exc}") from None
        out[name] = copied
    return out


def _texts(value: object) -> Iterator[str]:
    """The strings in JSON data, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _texts(v)


def is_jinja(template: str) -> bool:
    """Whether ``template`` is Jinja source rather than the name of a llama.cpp built-in template."""
    return "{%" in template or "{{" in template


def apply_template(
    template: str,
    messages: Iterable[Message],
    add_assistant: bool = True,
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Mapping[str, object]] | None = None,
    variables: Mapping[str, object] | None = None,
) -> str:
    """``messages`` formatted with ``template`` (a model's Jinja template, or a llama.cpp template name).

    ``add_assistant`` ends the text with the opening of the assistant's turn, for the model to complete.
    ``bos_token`` / ``eos_token``: the text a Jinja template writes for them (leave ``bos_token`` empty when the
    tokenizer adds the BOS token itself, or the prompt starts with two). ``tools``: the functions the model may call
    (OpenAI's ``{"type": "function", "function": {...}}`` objects), given to a Jinja template as ``tools``; messages
    may then carry ``tool_calls`` (with ``arguments`` as objects, as templates write them), ``tool_call_id`` and
    ``name`` (see :func:`tool_syntax`). Raises :class:`InvalidArgumentError` for malformed messages, text with a NUL
    character or a lone surrogate, messages the template itself refuses (``raise_exception``), or tools and tool
    calls for a template Jinja cannot apply (llama.cpp's built-in templates have none), or ``variables`` that
    :func:`check_variables` refuses (more variables for a Jinja template, as llama-server's
    ``chat_template_kwargs``: ``{"enable_thinking": False}``; a built-in template has none to take them), and
    :class:`ChatTemplateError` for a template neither Jinja nor llama.cpp can apply, or one that passes the sandbox's
    bounds on these messages (:mod:`llamacffi.chat_sandbox`).
    """
    if not isinstance(template, str) or not template:
        raise InvalidArgumentError(f"template must be a non-empty str, got {template!r}")
    if not isinstance(add_assistant, bool):
        raise InvalidArgumentError(f"add_assistant must be a bool, got {add_assistant!r}")
    if tools is not None and (
        isinstance(tools, (str, bytes, Mapping))
        or not isinstance(tools, Sequence)
        or not all(isinstance(t, Mapping) for t in tools)
    ):
        raise InvalidArgumentError(f"tools must be a list of mappings, got {tools!r}")
    checked = _messages(messages)
    more = check_variables(variables) if variables is not None else {}
    if is_jinja(template):
        compiled = chat_sandbox.compile_template(template)
        if compiled is not None:
            rendered = _render(compiled, checked, add_assistant, bos_token, eos_token, tools, more)
            if rendered is not None:
                return rendered
            if more:  # a template that renders (or refuses) these messages without the variables fails on them
                try:
                    runs = _render(compiled, checked, add_assistant, bos_token, eos_token, tools) is not None
                except InvalidArgumentError:
                    runs = True
                if runs:
                    raise InvalidArgumentError(f"the chat template fails with the variables {sorted(more)}")
    if tools is not None or any("tool_calls" in m for m in checked):  # a result's id or a name can be left out
        raise InvalidArgumentError(
            "tools and tool calls need a Jinja chat template that renders them; llama.cpp's built-in templates "
            "have none"
        )
    return _apply_builtin(template, [(str(m["role"]), str(m["content"])) for m in checked], add_assistant)


def _render(
    compiled: jinja2.Template,
    messages: list[dict[str, object]],
    add_assistant: bool,
    bos_token: str,
    eos_token: str,
    tools: Sequence[Mapping[str, object]] | None = None,
    variables: Mapping[str, object] | None = None,
) -> str | None:
    """The rendered conversation, or None when the template fails on it for a reason of its own (a construct the
    sandbox forbids, say): llama.cpp's matcher is tried then."""
    for i, m in enumerate(messages):
        for key, value in m.items():
            if isinstance(value, str):
                _c_text(value, f"the {key.replace('_', ' ')} of message {i}")
    extra = {**(variables or {}), **({} if tools is None else {"tools": list(tools)})}
    try:
        return chat_sandbox.render(
            compiled,
            messages=messages,
            add_generation_prompt=add_assistant,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except chat_sandbox.Refused as exc:
        raise InvalidArgumentError(f"the chat template refuses these messages: {exc}") from None
    except chat_sandbox.Bounded as exc:  # not llama.cpp's matcher then: it would format the chat another way
        raise ChatTemplateError(
            f"the chat template passes a bound of llamacffi.limits on these messages: {exc}"
        ) from None
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        LookupError,
        AttributeError,
        ArithmeticError,
        RecursionError,
        MemoryError,
    ):
        return None


def _apply_builtin(template: str, pairs: list[tuple[str, str]], add_assistant: bool) -> str:
    """``llama_chat_apply_template``: a built-in template by name, or one whose text llama.cpp recognises."""
    tmpl = _c_text(template, "the template")
    encoded = [
        (_c_text(r, f"the role of message {i}"), _c_text(c, f"the content of message {i}"))
        for i, (r, c) in enumerate(pairs)
    ]
    strings = [ffi.new("char[]", s) for pair in encoded for s in pair]  # alive until the call returns
    chat = ffi.new("struct llama_chat_message[]", max(1, len(encoded)))
    for i in range(len(encoded)):
        chat[i].role = strings[2 * i]
        chat[i].content = strings[2 * i + 1]
    size = sum(len(c) for _, c in encoded) * 2 + 256

    def unknown(_code: int) -> Exception:
        return ChatTemplateError(
            f"llama.cpp does not know the chat template {template[:60]!r}: neither a built-in "
            f"name nor a template text it recognises"
        )

    data = read_grown(
        lambda buf, n: lib.llama_chat_apply_template(tmpl, chat, len(encoded), add_assistant, buf, n),
        size,
        error=unknown,
    )
    return data.decode("utf-8", "replace")


def builtin_template_for(architecture: str) -> str | None:
    """The llama.cpp built-in template for a model of this architecture whose GGUF carries none (gemma files often
    do not), or None."""
    return "gemma" if architecture.startswith("gemma") else None


class ThinkingTags(NamedTuple):
    """The tags around a reasoning model's thinking at the start of its answer."""

    opening: str
    closing: str
    sign: str  # what a template that writes such blocks has in it
    special: tuple[str, ...]  # the special tokens the tags are made of, for the output to write them out
    leads: tuple[str, ...] = ()  # what an answer may start with, after the block or without one, dropped too


# ``<think>...</think>`` (Qwen 3, QwQ, DeepSeek R1, and many more); ``[THINK]...[/THINK]`` (Magistral, Ministral 3
# Reasoning); ``<seed:think>...</seed:think>`` (Seed-OSS); gpt-oss's analysis channel, then its final one (OpenAI's
# harmony format); ``<|channel>thought...<channel|>`` (Gemma 4).
THINKING_TAGS: tuple[ThinkingTags, ...] = (
    ThinkingTags("<think>", "</think>", "</think>", ("<think>", "</think>")),
    ThinkingTags("[THINK]", "[/THINK]", "[/THINK]", ("[THINK]", "[/THINK]")),
    ThinkingTags("<seed:think>", "</seed:think>", "</seed:think>", ("<seed:think>", "</seed:think>")),
    ThinkingTags(
        "<|channel|>analysis<|message|>",
        "<|end|>",
        "<|channel|>analysis<|message|>",
        ("<|channel|>", "<|message|>", "<|end|>", "<|start|>"),
        leads=("<|start|>assistant<|channel|>final<|message|>", "<|channel|>final<|message|>"),
    ),
    ThinkingTags("<|channel>thought", "<channel|>", "<|channel>thought", ("<|channel>", "<channel|>")),
)


def thinking_tags(template: str) -> ThinkingTags | None:
    """The tags a Jinja ``template`` writes a model's reasoning between (:data:`THINKING_TAGS`): its answers may
    start with such a block. None for a template that writes none."""
    if not is_jinja(template):
        return None
    return next((tags for tags in THINKING_TAGS if tags.sign in template), None)


def thinks(template: str) -> bool:
    """Whether a Jinja ``template`` writes a model's reasoning in blocks of :data:`THINKING_TAGS`."""
    return thinking_tags(template) is not None


# A call and a result, written by a template that knows tools, show which syntax it teaches the model.
_PROBE_TOOL: dict[str, object] = {
    "type": "function",
    "function": {
        "name": "probe_function",
        "description": "probe description",
        "parameters": {"type": "object", "properties": {"probe_argument": {"type": "integer"}}},
    },
}
_PROBE_CHAT: list[dict[str, object]] = [
    {"role": "user", "content": "probe question"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call00001",
                "type": "function",
                "function": {"name": "probe_function", "arguments": {"probe_argument": 1}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call00001", "name": "probe_function", "content": "probe result"},
]
_HERMES_CALL = re.compile(
    r'<tool_call>\s*\{"name":\s*"probe_function",\s*"arguments":\s*\{"probe_argument":\s*1\}\}\s*</tool_call>'
)
_QWEN_XML_CALL = re.compile(
    r"<tool_call>\s*<function=probe_function>\s*<parameter=probe_argument>\s*1\s*</parameter>\s*</function>\s*"
    r"</tool_call>"
)
_MISTRAL_CALL = re.compile(r'\[TOOL_CALLS\]probe_function(\[CALL_ID\]call00001)?\[ARGS\]\{"probe_argument":\s*1\}')
_GLM_CALL = re.compile(
    r"<tool_call>\s*probe_function\s*<arg_key>probe_argument</arg_key>\s*<arg_value>1</arg_value>\s*</tool_call>"
)
_SEED_CALL = re.compile(
    r"<seed:tool_call>\s*<function=probe_function>\s*<parameter=probe_argument>\s*1\s*</parameter>\s*</function>\s*"
    r"</seed:tool_call>"
)
_MINIMAX_CALL = re.compile(
    r'<minimax:tool_call>\s*<invoke name="probe_function">\s*<parameter name="probe_argument">1</parameter>\s*'
    r"</invoke>\s*</minimax:tool_call>"
)


def _dsml_call(block: str) -> re.Pattern[str]:
    return re.compile(
        rf'<｜DSML｜{block}>\s*<｜DSML｜invoke name="probe_function">\s*'
        rf'<｜DSML｜parameter name="probe_argument" string="false">1</｜DSML｜parameter>\s*</｜DSML｜invoke>\s*'
        rf"</｜DSML｜{block}>"
    )


_GEMMA4_CALL = re.compile(r"<\|tool_call>call:probe_function\{probe_argument:1\}<tool_call\|>")
_LISTED_CALL = r'\[\{"name":\s*"probe_function",\s*"arguments":\s*\{"probe_argument":\s*1\}'
_NEMO_CALL = re.compile(r"\[TOOL_CALLS\]" + _LISTED_CALL)
_NEMOTRON_CALL = re.compile(r"<TOOLCALL>" + _LISTED_CALL + r"\}\]</TOOLCALL>")
_HARMONY_CALL = re.compile(
    r"<\|start\|>assistant to=functions\.probe_function<\|channel\|>commentary json<\|message\|>"
    r'\{"probe_argument":\s*1\}'
)
# the call as the whole of the assistant's turn: what follows the turn's header is the object
_LLAMA3_CALL = re.compile(r'>\s*\{"name":\s*"probe_function",\s*"parameters":\s*\{"probe_argument":\s*1\}\}\s*<')


# each syntax's probe call, as its templates write it; Llama 3's last, as the others' may look like it
_WRITTEN_CALLS: tuple[tuple[re.Pattern[str], ToolSyntax], ...] = (
    (_HERMES_CALL, "hermes"),
    (_QWEN_XML_CALL, "qwen-xml"),
    (_MISTRAL_CALL, "mistral"),
    (_HARMONY_CALL, "harmony"),
    (_GLM_CALL, "glm"),
    (_SEED_CALL, "seed"),
    (_MINIMAX_CALL, "minimax"),
    (_dsml_call("function_calls"), "deepseek-v3.2"),
    (_dsml_call("tool_calls"), "deepseek-v4"),
    (_GEMMA4_CALL, "gemma4"),
    (_NEMO_CALL, "mistral-nemo"),
    (_NEMOTRON_CALL, "nemotron"),
    (_LLAMA3_CALL, "llama3"),
)


@functools.lru_cache(maxsize=32)
def tool_syntax(template: str, *, bos_token: str = "", eos_token: str = "") -> ToolSyntax | None:
    """The tool-call syntax a Jinja ``template`` teaches its model, when it is one this package reads: it describes
    the ``tools`` it is given, and writes an assistant's call and a tool's result. None for other templates (their
    functions can still be described in a system message)."""
    if not isinstance(template, str) or not is_jinja(template):
        return None
    compiled = chat_sandbox.compile_template(template)
    if compiled is None:
        return None
    try:
        described = _render(compiled, [_PROBE_CHAT[0]], True, bos_token, eos_token, [_PROBE_TOOL])
        written = _render(compiled, [dict(m) for m in _PROBE_CHAT], True, bos_token, eos_token, [_PROBE_TOOL])
    except (InvalidArgumentError, ChatTemplateError):
        return None
    if described is None or written is None or "probe description" not in described or "probe result" not in written:
        return None
    return next((syntax for pattern, syntax in _WRITTEN_CALLS if pattern.search(written)), None)
