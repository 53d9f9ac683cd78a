"""Prompts as the model sees them: chat templates applied, with the binding's errors as the service's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from .. import Model as LlamaModel
from .. import chat
from .. import errors as binding
from .errors import InferenceError, InvalidConfigError

# (role, content) pairs, or {"role", "content"} dicts that may carry tool calls (see llamacffi.chat.Message)
Messages = Sequence[tuple[str, str] | Mapping[str, object]]
Checked = list[tuple[str, str] | dict[str, object]]  # messages as check_messages returns them


@contextmanager
def template_errors() -> Iterator[None]:
    """A template that cannot be applied, or messages it cannot carry or refuses, as the service's errors."""
    try:
        yield
    except chat.ChatTemplateError:
        raise InferenceError("this model's chat template cannot be applied; use raw=True") from None
    except binding.InvalidArgumentError as exc:
        raise InvalidConfigError(f"the prompt cannot go through the chat template: {exc}") from None


def apply_chat_template(
    template: str,
    messages: Messages,
    *,
    add_assistant: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, object]] | None = None,
) -> str:
    """Format ``(role, content)`` messages with a chat template (:func:`llamacffi.chat.apply_template`, its errors
    as the service's)."""
    with template_errors():
        return chat.apply_template(
            template, messages, add_assistant, bos_token=bos_token, eos_token=eos_token, tools=tools
        )


def has_template(model: LlamaModel, template: str | None) -> bool:
    """Whether :meth:`llamacffi.Model.apply_chat_template` formats chats for ``model`` with ``template`` (None: the
    model's own or its architecture's). A ``template`` that cannot be applied is an :class:`InvalidConfigError`;
    a model template that cannot counts as one (requests then say so), a model without any as none. A template
    that refuses the probe conversation (``raise_exception``) is a template."""
    try:
        model.apply_chat_template([("user", "x")], template=template)
    except binding.InvalidArgumentError:
        return True
    except chat.ChatTemplateError:
        if template is not None:
            raise InvalidConfigError(
                f"ModelConfig.chat_template {template[:60]!r} is not a template Jinja or llama.cpp can apply"
            ) from None
        return model.chat_template is not None
    return True


def check_messages(messages: object) -> Checked:
    """``messages`` as a list of ``(role, content)`` pairs of str (or dicts with ``role`` and ``content`` str, and
    the tool fields :func:`llamacffi.chat.apply_template` takes; ``content`` None beside ``tool_calls`` is empty), or
    :class:`InvalidConfigError`."""
    wrong = "messages must be a list of (role, content) pairs of str, or of {'role', 'content'} dicts"
    if not isinstance(messages, (list, tuple)):
        raise InvalidConfigError(wrong)
    checked: Checked = []
    for m in messages:
        if isinstance(m, Mapping) and isinstance(m.get("role"), str):
            content = m.get("content")
            if content is None and m.get("tool_calls"):  # an assistant's turn that only calls
                content = ""
            if not isinstance(content, str):
                raise InvalidConfigError(wrong)
            checked.append({**m, "content": content})
        elif isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], str):
            checked.append((m[0], m[1]))
        else:
            raise InvalidConfigError(wrong)
    return checked


def role_and_content(message: tuple[str, str] | dict[str, object]) -> tuple[str, str]:
    """A checked message's role and content."""
    if isinstance(message, dict):
        return str(message["role"]), str(message["content"])
    return message
