"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``), as llama-server serves it: a
body is translated into the chat completion it asks for, which runs as any other, and the answer back into a
message of content blocks (thinking, text, ``tool_use``), whole or as Anthropic's stream of events.

Consecutive text turns of one role are one turn, and a conversation that ends with the assistant's turn is continued
(:func:`.completions.chat_prompt`), as Anthropic's API does. Images, documents, server tools and the other features a
local model cannot serve are a 400.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from .. import limits
from ..jsontypes import JSON, JSONObject, is_strings
from .completions import Job, respond, stream
from .errors import APIError, invalid
from .metrics import Metrics
from .requests import template_text, text_of

FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",  # a JSON Schema the answer follows, and the effort (the chat's reasoning_effort)
        "chat_template_kwargs",  # llama-server's, passed on
        # hints and ids that change nothing here (prompts are cached without being asked)
        "metadata",
        "service_tier",
        "cache_control",
        "inference_geo",
        "speed",
        "diagnostics",
        "user_profile_id",
        "workspace_id",
    }
)
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# Anthropic's efforts as the chat's reasoning_effort (the template variable gpt-oss reads)
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
# the chat fields whose faults name them, as the Messages fields they come from
_RENAMED = {"json_schema": "output_config.format.schema"}


def _message(m: JSON, where: str) -> list[JSONObject]:
    """One Anthropic message as chat messages: an assistant's text, thinking and tool calls as one; a user's tool
    results as tool messages, before the text beside them."""
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise invalid(f"{where} must be an object whose role is user or assistant", "messages")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or a list of content blocks", "messages")
    text: list[str] = []
    thought: list[str] = []
    calls: list[JSONObject] = []
    results: list[JSONObject] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content[{i}]"
        if not isinstance(block, dict) or not isinstance(kind, str):
            raise invalid(f"{at} must be a content block with a type", "messages")
        said, thinking = block.get("text"), block.get("thinking")
        if kind == "text" and isinstance(said, str):
            text.append(template_text(said, f"{at}.text"))
        elif kind == "thinking" and role == "assistant" and isinstance(thinking, str):
            thought.append(template_text(thinking, f"{at}.thinking"))
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # nothing a local model can read
        elif kind == "tool_use" and role == "assistant":
            name, call_id, arguments = block.get("name"), block.get("id"), block.get("input", {})
            if not isinstance(name, str) or not isinstance(call_id, str) or not isinstance(arguments, dict):
                raise invalid(f"{at}: a tool_use block needs an id, a name and an input object", "messages")
            name = template_text(name, f"{at}.name")
            function: JSONObject = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
            calls.append({"id": template_text(call_id, f"{at}.id"), "type": "function", "function": function})
        elif kind == "tool_result" and role == "user":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str):
                raise invalid(f"{at}: a tool_result block needs a tool_use_id", "messages")
            result = text_of(block.get("content") or "", f"{at}.content", joint="\n")
            if block.get("is_error") is True:
                result = f"Error: {result}"
            results.append({"role": "tool", "tool_call_id": template_text(call_id, f"{at}.tool_use_id"),
                            "content": result})  # fmt: skip
        else:
            raise invalid(f"{at}: {kind!r} blocks are not supported here for the {role}", "messages")
    out: list[JSONObject] = list(results)
    if role == "assistant":
        turn: JSONObject = {"role": "assistant", "content": "\n".join(text) if text or not calls else None}
        if calls:
            turn["tool_calls"] = list(calls)
        if thought:
            turn["reasoning_content"] = "".join(thought)
        out.append(turn)
    elif text or not results:
        out.append({"role": "user", "content": "\n".join(text)})
    return out


def _tools(tools: JSON) -> list[JSON]:
    if not isinstance(tools, list):
        raise invalid("tools must be a list", "tools")
    out: list[JSON] = []
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or not isinstance(tool.get("name"), str)
            or not tool["name"]
            or tool.get("type") not in (None, "custom")
        ):
            shown = tool.get("type") if isinstance(tool, dict) else tool
            raise invalid(f"tools[{i}] must be a custom tool with a name and an input_schema (got {shown!r})", "tools")
        schema, description = tool.get("input_schema", {"type": "object"}), tool.get("description")
        if not isinstance(schema, dict):
            raise invalid(f"tools[{i}].input_schema must be a JSON schema object", "tools")
        if description is not None and not isinstance(description, str):
            raise invalid(f"tools[{i}].description must be a string", "tools")
        function: JSONObject = {"name": tool["name"], "parameters": schema}
        if description is not None:
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: JSON, chat: JSONObject) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice must be an object whose type is auto, any, tool or none", "tool_choice")
    kind = str(choice["type"])
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise invalid("tool_choice of type tool needs the tool's name", "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    alone = choice.get("disable_parallel_tool_use")
    if alone is not None and not isinstance(alone, bool):
        raise invalid("tool_choice.disable_parallel_tool_use must be a boolean", "tool_choice")
    if alone is not None:
        chat["parallel_tool_calls"] = not alone


def _output_config(config: JSON, chat: JSONObject) -> None:
    if not isinstance(config, dict) or set(config) - {"effort", "format"}:
        raise invalid("output_config must be an object with an effort and a format", "output_config")
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or "schema" not in fmt:
            raise invalid("output_config.format must be a json_schema format with a schema", "output_config")
        chat["json_schema"] = fmt["schema"]
    effort = config.get("effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _EFFORTS:
            raise invalid(f"output_config.effort must be one of {', '.join(_EFFORTS)}, got {effort!r}", "output_config")
        chat["reasoning_effort"] = _EFFORTS[effort]


def _plain(turn: JSONObject) -> bool:
    """Whether a chat turn is a user's or assistant's text alone."""
    return turn["role"] in ("user", "assistant") and isinstance(turn["content"], str) and len(turn) == 2


def to_chat(body: JSONObject, count: bool = False) -> JSONObject:
    """The chat completion body a Messages body asks for (``count``: a ``count_tokens`` body, with no output)."""
    for name in body:
        if name not in FIELDS:
            raise invalid(f"{name}: Extra inputs are not permitted", name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", "messages")
    chat: JSONObject = {"model": body.get("model")}
    turns: list[JSON] = []
    system = body.get("system")
    if system is not None:
        turns.append({"role": "system", "content": text_of(system, "system")})
    for i, m in enumerate(messages):
        for turn in _message(m, f"messages[{i}]"):
            last = turns[-1] if turns else None
            if isinstance(last, dict) and _plain(last) and _plain(turn) and last["role"] == turn["role"]:
                last["content"] = f"{last['content']}\n{turn['content']}"  # consecutive turns of a role are one
            else:
                turns.append(turn)
    chat["messages"] = turns
    if not count:
        if body.get("max_tokens") is None:
            raise invalid("max_tokens: Field required", "max_tokens")
        chat["max_tokens"] = body["max_tokens"]
        stops = body.get("stop_sequences")
        if stops is not None and (not is_strings(stops) or len(stops) > limits.MAX_STOPS):
            raise invalid(f"stop_sequences must be a list of at most {limits.MAX_STOPS} strings", "stop_sequences")
        for theirs, ours in [("stop_sequences", "stop"), ("temperature", "temperature"), ("top_p", "top_p"),
                             ("top_k", "top_k"), ("stream", "stream")]:  # fmt: skip
            if body.get(theirs) is not None:
                chat[ours] = body[theirs]
        if chat.get("stream") is True:
            chat["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    config = body.get("output_config")
    if config is not None:
        _output_config(config, chat)
    thinking = body.get("thinking")
    if thinking is not None and (not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str)):
        raise invalid("thinking must be an object with a type", "thinking")
    kwargs = body.get("chat_template_kwargs")  # checked with the chat's fields
    if isinstance(thinking, dict) and thinking["type"] == "disabled" and (kwargs is None or isinstance(kwargs, dict)):
        kwargs = {**(kwargs or {}), "enable_thinking": False}  # as llama-server: the variable that turns it off
    if kwargs is not None:
        chat["chat_template_kwargs"] = kwargs
    return chat


def renamed(exc: APIError) -> APIError:
    """A fault of the chat body :func:`to_chat` made, named by the Messages field it comes from."""
    for ours, theirs in _RENAMED.items():
        if exc.message.startswith(ours) and exc.message[len(ours) : len(ours) + 1] in (":", " ", "."):
            message = theirs + exc.message[len(ours) :]
            return APIError(exc.status, message, type=exc.type, param=theirs, code=exc.code, headers=exc.headers)
    return exc


def _blocks(message: JSONObject) -> list[JSON]:
    """An assistant's chat message as content blocks."""
    blocks: list[JSON] = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        assert isinstance(call, dict) and isinstance(call["function"], dict)
        arguments = call["function"]["arguments"]
        assert isinstance(arguments, str)
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                       "input": json.loads(arguments)})  # fmt: skip
    return blocks


def _stop(job: Job, reason: str | None) -> tuple[str, str | None]:
    """The message's ``stop_reason`` and ``stop_sequence``, from the chat's ``finish_reason``."""
    stopped_by = job.stopped_by.get(0)
    if reason == "stop" and stopped_by is not None:
        return "stop_sequence", stopped_by
    return _STOP_REASONS.get(reason or "stop", "end_turn"), None


def _head(job: Job) -> JSONObject:
    return {"id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "model": job.name}


async def respond_message(job: Job, metrics: Metrics) -> JSONObject:
    """The whole message."""
    done = await respond(job, metrics)
    choices = done["choices"]
    usage = done["usage"]
    assert isinstance(choices, list) and isinstance(choices[0], dict) and isinstance(usage, dict)
    message, reason = choices[0]["message"], choices[0]["finish_reason"]
    assert isinstance(message, dict) and isinstance(reason, str)
    stop_reason, stop_sequence = _stop(job, reason)
    return {
        **_head(job),
        "content": _blocks(message),
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
    }


def _event(kind: str, data: JSONObject) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"


async def stream_message(job: Job, metrics: Metrics) -> AsyncIterator[bytes]:
    """The message as Anthropic's events: ``message_start``, each block's start, deltas and stop, ``message_delta``
    with the stop reason and usage, ``message_stop``; an error after the start is an ``error`` event."""
    prompt_tokens = len(job.prompts[0])
    yield _event("message_start", {"message": {**_head(job), "content": [], "stop_reason": None,
                 "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}})  # fmt: skip
    index = -1
    open_kind: str | None = None
    reason: str | None = None
    output = 0

    def close() -> list[bytes]:
        nonlocal open_kind
        if open_kind is None:
            return []
        signed = open_kind == "thinking"  # a thinking block ends with its signature (none here), as Anthropic's
        open_kind = None
        signature = [_event("content_block_delta", {"index": index, "delta": {"type": "signature_delta",
                     "signature": ""}})] if signed else []  # fmt: skip
        return [*signature, _event("content_block_stop", {"index": index})]

    def start(kind: str, block: JSONObject) -> list[bytes]:
        nonlocal index, open_kind
        out = close()
        index += 1
        open_kind = kind
        return [*out, _event("content_block_start", {"index": index, "content_block": block})]

    async for raw in stream(job, metrics):
        if not raw.startswith(b"data: {"):
            continue
        chunk = json.loads(raw[6:])
        if "error" in chunk:  # the request's fault (a grammar no token can follow) or the server's
            error = chunk["error"]
            status = 400 if error.get("type") == "invalid_request_error" else 500
            yield _event("error", APIError(status, str(error.get("message"))).anthropic_body())
            return
        if chunk.get("usage"):
            output = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if open_kind != "thinking":
                    for out in start("thinking", {"type": "thinking", "thinking": "", "signature": ""}):
                        yield out
                yield _event("content_block_delta", {"index": index,
                             "delta": {"type": "thinking_delta", "thinking": delta["reasoning_content"]}})  # fmt: skip
            if delta.get("content"):
                if open_kind != "text":
                    for out in start("text", {"type": "text", "text": ""}):
                        yield out
                yield _event("content_block_delta", {"index": index,
                             "delta": {"type": "text_delta", "text": delta["content"]}})  # fmt: skip
            for call in delta.get("tool_calls") or []:
                fn = call["function"]
                for out in start("tool_use", {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": {}}):
                    yield out
                yield _event("content_block_delta", {"index": index,
                             "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})  # fmt: skip
            if choice.get("finish_reason"):
                reason = choice["finish_reason"]
    for out in close():
        yield out
    stop_reason, stop_sequence = _stop(job, reason)
    yield _event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                   "usage": {"output_tokens": output}})  # fmt: skip
    yield _event("message_stop", {})
