"""The bodies of ``/v1/chat/completions`` and ``/v1/completions``, checked field by field into service options.

Fields OpenAI defines and that change nothing here (``user``, ``metadata``, ``store``, ...) are accepted and ignored;
fields that would change the output and are not implemented, and names OpenAI does not define, are refused with 400.
``response_format`` and ``tools`` become grammars through :mod:`.structured`, as do llama-server's ``json_schema``
and ``grammar`` (GBNF text, the output alone: a reasoning model does not think first).
Unset sampling fields take the service's defaults (those of llama.cpp's server), not OpenAI's.
"""

from __future__ import annotations

import dataclasses
import json
import math

from .. import limits
from ..chat import check_variables
from ..errors import InvalidArgumentError
from ..jsontypes import JSON, JSONObject, is_integers, is_strings
from ..service import GenerationOptions
from . import reasoning, structured
from .errors import invalid

IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "cache_prompt",
        "verbosity",
        "prediction",  # predicted output: a latency hint, the answer is the same without it
    }
)
SAMPLING = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "n",
        "stream",
        "stream_options",
        "top_k",
        "min_p",
        "repeat_penalty",
    }
)
CONSTRAINTS = ("grammar", "json_schema")  # llama-server's, on both endpoints: GBNF text, or a JSON Schema
CHAT_FIELDS = SAMPLING | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "modalities",
    "chat_template_kwargs",  # llama-server's: more variables for the chat template
    "reasoning_format",  # llama-server's: "none" keeps a reasoning model's thinking in the content
    "reasoning_effort",  # OpenAI's: the template variable of that name (gpt-oss's); "none" turns thinking off
    *CONSTRAINTS,
}
COMPLETION_FIELDS = SAMPLING | {"prompt", "echo", "logprobs", "suffix", "best_of", *CONSTRAINTS}
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")  # OpenAI's reasoning_effort values
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}
DEFAULTS = GenerationOptions()  # what a field the request leaves unset takes


@dataclasses.dataclass
class Parsed:
    """What a completion request asks for, ready for the service."""

    model: str | None
    options: GenerationOptions
    max_tokens: int | None  # None: until the context is full
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # alternatives per token, None: no log-probabilities
    messages: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    prompts: list[str | list[int]] = dataclasses.field(default_factory=list)
    echo: bool = False
    grammar: str | None = None  # GBNF the output must follow
    own_grammar: bool = False  # the grammar is the request's GBNF text: its output is that alone
    constraint: str | None = None  # the field the grammar comes from, named by its errors
    tools: structured.Tools | None = None
    # the conversation with its tool calls and results as such, for a template that writes them
    chat: list[dict[str, object]] = dataclasses.field(default_factory=list)
    answer_schema: JSONObject | bool | None = None  # the response_format's schema, for a grammar beside calls
    answer_grammar: str | None = None  # GBNF of the response_format alone
    parallel: bool = True  # whether an answer may make several tool calls
    template_kwargs: JSONObject | None = None  # more variables for the chat template
    reasoning: str = "auto"  # a reasoning model's thinking as reasoning_content ("auto"), or in the content ("none")

    def text_chars(self) -> int:
        """How long the request's text is: its messages' characters and its prompts' characters or tokens."""
        return sum(len(t) for _, t in self.messages) + sum(len(p) for p in self.prompts)


def _number(body: JSONObject, name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise invalid(
            f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}",
            name,
            "invalid_value" if isinstance(value, (int, float)) and not isinstance(value, bool) else "invalid_type",
        )
    return float(value)


def _integer(body: JSONObject, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer, got {value!r}", name, "invalid_type")
    if not lo <= value <= hi:
        raise invalid(f"{name} must be between {lo} and {hi}, got {value}", name, "invalid_value")
    return value


def flag(body: JSONObject, name: str, default: bool = False) -> bool:
    """A boolean field (``default`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean, got {value!r}", name, "invalid_type")
    return value


def check_fields(body: JSONObject, known: frozenset[str]) -> None:
    """A 400 naming the first field neither ``known`` nor one that changes nothing here."""
    for name in body:
        if name not in known and name not in IGNORED:
            raise invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")


def _stops(body: JSONObject) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not is_strings(stops) or len(stops) > limits.MAX_STOPS:
        raise invalid(f"stop must be a string or a list of at most {limits.MAX_STOPS} strings", "stop", "invalid_type")
    return tuple(s for s in stops if s)


def _bias(body: JSONObject) -> dict[int, float] | None:
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise invalid("logit_bias must be an object of token ids to numbers", "logit_bias", "invalid_type")
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdecimal() and len(key) < 10):
            raise invalid(f"logit_bias keys must be token ids, got {key!r}", "logit_bias", "invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise invalid(
                f"logit_bias values must be numbers between -100 and 100, got {value!r}", "logit_bias", "invalid_value"
            )
        out[int(key)] = float(value)
    return out or None


def _seed(body: JSONObject) -> int | None:
    seed = _integer(body, "seed", -(1 << 63), (1 << 64) - 1)
    return None if seed is None else seed % (1 << 32)


def _options(body: JSONObject, raw: bool) -> GenerationOptions:
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    min_p = _number(body, "min_p", 0.0, 1.0)
    presence = _number(body, "presence_penalty", -2.0, 2.0)
    frequency = _number(body, "frequency_penalty", -2.0, 2.0)
    repeat = _number(body, "repeat_penalty", 0.0, 10.0)
    if top_p == 0.0:
        raise invalid("top_p must be greater than 0", "top_p", "invalid_value")
    if repeat == 0.0:
        raise invalid("repeat_penalty must be greater than 0", "repeat_penalty", "invalid_value")
    top_k = _integer(body, "top_k", 0, 1 << 20)
    d = DEFAULTS
    return GenerationOptions(
        raw=raw,
        temperature=d.temperature if temperature is None else temperature,
        top_p=d.top_p if top_p is None else top_p,
        min_p=d.min_p if min_p is None else min_p,
        presence_penalty=d.presence_penalty if presence is None else presence,
        frequency_penalty=d.frequency_penalty if frequency is None else frequency,
        repeat_penalty=d.repeat_penalty if repeat is None else repeat,
        top_k=d.top_k if top_k is None else top_k,
        seed=_seed(body),
        stop_sequences=_stops(body),
        logit_bias=_bias(body),
    )


def _common(body: JSONObject, raw: bool, max_tokens_name: str = "max_tokens") -> Parsed:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model must be a string", "model", "invalid_type")
    max_tokens = _integer(body, max_tokens_name, 1, 1 << 20)
    n = _integer(body, "n", 1, limits.MAX_CHOICES) or 1
    stream = flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
            raise invalid("stream_options must be an object with include_usage", "stream_options", "invalid_type")
        include_usage = flag(options, "include_usage")
    return Parsed(model, _options(body, raw), max_tokens, n, stream, include_usage, None)


def template_text(text: str, where: str) -> str:
    """A text that goes to the chat template, checked where the request holds it: a template's C strings cannot
    carry a NUL character, nor UTF-8 a lone surrogate."""
    if "\0" in text:
        raise invalid(f"{where} holds a NUL character, which a chat template cannot carry", "messages", "invalid_value")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(
            f"{where} is not valid Unicode (a lone surrogate at index {exc.start})", "messages", "invalid_value"
        ) from None
    return text


def text_of(content: JSON, where: str, assistant: bool = False, joint: str = "") -> str:
    """A message's text (:func:`template_text`), its parts joined with ``joint``; an assistant's ``refusal`` parts
    are what it said, so they count as text too."""
    if isinstance(content, str):
        return template_text(content, where)
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            key = "text" if kind == "text" else "refusal" if assistant and kind == "refusal" else None
            text = part.get(key) if isinstance(part, dict) and key is not None else None
            if not isinstance(text, str):
                shown = kind if isinstance(part, dict) else type(part).__name__
                raise invalid(
                    f"{where}[{i}]: only text content parts are supported (got {shown!r})",
                    "messages",
                    "unsupported_content",
                )
            parts.append(template_text(text, f"{where}[{i}].{key}"))
        return joint.join(parts)
    raise invalid(f"{where} must be a string or a list of text parts", "messages", "invalid_type")


def parse_chat(body: JSONObject) -> Parsed:
    """A ``/v1/chat/completions`` body; :class:`APIError` (400) names the first bad field."""
    check_fields(body, CHAT_FIELDS)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise invalid("give max_tokens or max_completion_tokens, not both", "max_tokens")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    parsed = _common(body, raw=False, max_tokens_name=name)
    if body.get("functions") or body.get("function_call") not in (None, "none"):
        raise invalid(
            "functions and function_call are superseded by tools and tool_choice, which this server supports",
            "functions",
            "unsupported_parameter",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid(f'modalities must be ["text"]: this server writes text only, got {modalities!r}', "modalities")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise invalid("chat_template_kwargs must be an object", "chat_template_kwargs", "invalid_type")
        try:
            parsed.template_kwargs = check_variables(kwargs)
        except InvalidArgumentError as exc:
            raise invalid(f"chat_template_kwargs: {exc}", "chat_template_kwargs", "invalid_value") from None
    effort = body.get("reasoning_effort")
    if effort is not None:  # as llama-server: a template variable, over chat_template_kwargs; "none" thinks not
        if effort not in EFFORTS:
            raise invalid(f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {effort!r}", "reasoning_effort")
        variables = dict(parsed.template_kwargs or {})
        if effort == "none":
            variables.pop("reasoning_effort", None)
            variables["enable_thinking"] = False
        else:
            variables["reasoning_effort"] = effort
        parsed.template_kwargs = variables
    form = body.get("reasoning_format")
    form = "auto" if form is None else form
    if form not in reasoning.FORMATS:
        raise invalid(
            f"reasoning_format must be one of {', '.join(reasoning.FORMATS)}, got {form!r}", "reasoning_format"
        )
    parsed.reasoning = str(form)
    _constrain(parsed, body, "response_format")
    if parsed.own_grammar and body.get("tools"):
        raise invalid("give grammar or tools, not both", "grammar")
    parsed.tools = structured.parse_tools(body.get("tools"), body.get("tool_choice"), parsed.grammar is not None)
    parsed.parallel = body.get("parallel_tool_calls") is None or flag(body, "parallel_tool_calls")
    if parsed.tools is not None and (parsed.tools.forced() or parsed.grammar is not None):
        parsed.constraint = "tools"  # the grammar of the calls (beside the answer's format)
    if parsed.tools is not None and parsed.tools.forced():
        parsed.grammar = structured.call_grammar(parsed.tools)  # a call: the answer's format does not apply
    elif parsed.tools is not None and parsed.grammar is not None:  # a call, or the answer in its format
        answer = "json_schema" if body.get("json_schema") is not None else "response_format"
        parsed.grammar = structured.call_grammar(parsed.tools, parsed.answer_schema, answer_param=answer)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(
            "messages must be a non-empty list",
            "messages",
            "missing_required_parameter" if messages is None else "invalid_type",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{where} must be an object", "messages", "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", "messages", "invalid_value")
        content = m.get("content")
        calls = _calls(m["tool_calls"], where) if role == "assistant" and m.get("tool_calls") else []
        if content is None and role == "assistant":
            refusal = m.get("refusal")
            content = refusal if isinstance(refusal, str) else ""
        said = text_of(content, f"{where}.content", role == "assistant")
        native: dict[str, object] = {"role": "tool" if role == "tool" else ROLES[role], "content": said}
        text = said
        thought = m.get("reasoning_content") if role == "assistant" else None
        if thought is not None:  # a reasoning model's template may write it back (Qwen 3, in a chain of calls)
            native["reasoning_content"] = text_of(thought, f"{where}.reasoning_content", False)
        if calls:  # what the assistant said before its calls stays in the conversation
            native["tool_calls"] = calls
            written = "\n".join(json.dumps(c["function"], ensure_ascii=False) for c in calls)
            text = f"{text}\n{written}" if text else written
        if role == "tool":  # a function's result, as the user's turn: not every template has a tool role
            call_id = m.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise invalid(f"{where}.tool_call_id must be a string", "messages", "invalid_type")
            if call_id is not None:
                native["tool_call_id"] = template_text(call_id, f"{where}.tool_call_id")
            text = f"Result of the call {call_id or ''}: {text}".replace("call :", "call:")
        parsed.messages.append((ROLES[role], text))
        parsed.chat.append(native)
    logprobs = flag(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, 20)
    if top is not None and not logprobs:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    parsed.logprobs = (top or 0) if logprobs else None
    return parsed


def _calls(calls: JSON, where: str) -> list[JSONObject]:
    """An assistant's earlier tool calls, their arguments read as JSON (templates write them as objects)."""
    if not isinstance(calls, list):
        raise invalid(f"{where}.tool_calls must be a list", "messages", "invalid_type")
    out: list[JSONObject] = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        name, text = (fn.get("name"), fn.get("arguments")) if isinstance(fn, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(text, str):
            raise invalid(
                f"{where}.tool_calls: each needs a function with a name and arguments", "messages", "invalid_type"
            )
        try:
            arguments = json.loads(text)
        except (ValueError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):  # what a call's arguments are, and what templates write them as
            raise invalid(f"{where}.tool_calls: arguments must be a JSON object", "messages", "invalid_value")
        call_id = call.get("id") if isinstance(call, dict) else None
        out.append(
            {
                "id": template_text(call_id, f"{where}.tool_calls[{i}].id") if isinstance(call_id, str) else "",
                "type": "function",
                "function": {"name": template_text(name, f"{where}.tool_calls[{i}].function.name"),
                             "arguments": arguments},
            }
        )  # fmt: skip
    return out


def _prompts(prompt: JSON) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if is_strings(prompt):
            return list(prompt)
        if is_integers(prompt):
            return [list(prompt)]
        if all(is_integers(p) and p for p in prompt):
            return [list(p) for p in prompt if is_integers(p)]
    raise invalid(
        "prompt must be a string, a list of strings, a list of token ids or a list of such lists",
        "prompt",
        "invalid_type" if prompt is not None else "missing_required_parameter",
    )


def _constrain(parsed: Parsed, body: JSONObject, *formats: str) -> None:
    """The output's constraint, the one field of ``formats``, ``json_schema`` and ``grammar`` that gives one: a
    JSON Schema (``answer_schema``, compiled as ``answer_grammar``) or GBNF text."""
    if "response_format" in formats:
        parsed.answer_schema = structured.response_schema(body.get("response_format"))
    given = [name for name in ("json_schema", "grammar") if body.get(name) is not None]
    if parsed.answer_schema is not None:  # a text response_format constrains nothing
        given.insert(0, "response_format")
    if len(given) > 1:
        raise invalid(f"give one of {', '.join(given)}, not several", given[-1])
    parsed.constraint = given[0] if given else None
    if parsed.answer_schema is not None:
        parsed.answer_grammar = structured.response_grammar(body.get("response_format"))
    schema = body.get("json_schema")
    if schema is not None:
        if not isinstance(schema, (dict, bool)):
            raise invalid("json_schema must be a JSON Schema (an object or a boolean)", "json_schema", "invalid_type")
        parsed.answer_schema = schema
        parsed.answer_grammar = structured.compile_schema(schema, "json_schema")
    parsed.grammar = parsed.answer_grammar
    text = body.get("grammar")
    if text is not None:  # its text is checked where the options are made, and parsed by llama.cpp
        if not isinstance(text, str):
            raise invalid("grammar must be GBNF text", "grammar", "invalid_type")
        parsed.grammar, parsed.own_grammar = text, True


def parse_completion(body: JSONObject) -> Parsed:
    """A ``/v1/completions`` body; :class:`APIError` (400) names the first bad field."""
    check_fields(body, COMPLETION_FIELDS)
    parsed = _common(body, raw=True)
    _constrain(parsed, body)
    parsed.prompts = _prompts(body.get("prompt"))
    if len(parsed.prompts) * parsed.n > limits.MAX_CHOICES:
        raise invalid(f"at most {limits.MAX_CHOICES} choices per request (prompts x n)", "n", "invalid_value")
    if body.get("suffix") is not None:
        raise invalid("suffix is not supported by this server", "suffix", "unsupported_parameter")
    best_of = _integer(body, "best_of", 1, limits.MAX_CHOICES)
    if best_of not in (None, parsed.n):
        raise invalid("best_of is not supported by this server (it must equal n)", "best_of", "unsupported_parameter")
    parsed.echo = flag(body, "echo")
    parsed.logprobs = _integer(body, "logprobs", 0, 5)
    if parsed.echo and parsed.logprobs is not None:
        raise invalid(
            "echo with logprobs is not supported by this server (prompt log-probabilities are not computed)",
            "echo",
            "unsupported_parameter",
        )
    return parsed
