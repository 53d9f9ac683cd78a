"""Chat templates: a conversation formatted as a model expects it, by llama.cpp's ``llama_chat_apply_template``.

llama.cpp recognises a template by its name (``"chatml"``, ``"gemma"``, ``"llama3"``, ...) or by the Jinja source a
GGUF file carries (it matches known patterns; it does not run Jinja). :meth:`llamacffi.Model.apply_chat_template`
uses the model's own template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .cbuffer import read_grown
from .errors import InvalidArgumentError, LlamaError
from .raw import ffi, lib

# A message: a (role, content) pair, or a mapping with "role" and "content" (as OpenAI-style APIs send them).
Message = tuple[str, str] | Mapping[str, object]

__all__ = ["ChatTemplateError", "Message", "apply_template", "builtin_template_for"]


class ChatTemplateError(LlamaError, ValueError):
    """llama.cpp does not know the template (neither a name it has built in nor a template text it recognises)."""


def _pairs(messages: Iterable[Message]) -> list[tuple[str, str]]:
    if isinstance(messages, (str, bytes, Mapping)):
        raise InvalidArgumentError("messages must be a list of (role, content) pairs or {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            role, content = m
        else:
            raise InvalidArgumentError(
                f"messages[{i}] must be a (role, content) pair or a dict with 'role' and 'content', got {m!r}"
            )
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}]: role and content must be str, got {role!r}, {content!r}")
        out.append((role, content))
    return out


def _c_text(text: str, what: str) -> bytes:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid Unicode (lone surrogate at index {exc.start})") from None
    if b"\0" in data:  # a C string would end there, silently
        raise InvalidArgumentError(f"{what} holds a NUL character, which a chat template cannot carry")
    return data


def apply_template(template: str, messages: Iterable[Message], add_assistant: bool = True) -> str:
    """``messages`` formatted with ``template`` (a llama.cpp template name or a model's template text).

    ``add_assistant`` ends the text with the opening of the assistant's turn, for the model to complete. Raises
    :class:`InvalidArgumentError` for malformed messages or text with a NUL character or a lone surrogate, and
    :class:`ChatTemplateError` for a template llama.cpp does not know.
    """
    if not isinstance(template, str) or not template:
        raise InvalidArgumentError(f"template must be a non-empty str, got {template!r}")
    if not isinstance(add_assistant, bool):
        raise InvalidArgumentError(f"add_assistant must be a bool, got {add_assistant!r}")
    tmpl = _c_text(template, "the template")
    pairs = _pairs(messages)
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
