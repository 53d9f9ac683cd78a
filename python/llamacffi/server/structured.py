"""Structured output over HTTP: ``response_format`` and ``tools`` / ``tool_choice`` turned into grammars, prompts and
tool calls.

For a model whose chat template has no tool syntax this package reads (:mod:`.calls` has those it does), the
functions are described in a system message with one call format, ``{"name": ..., "arguments": {...}}``. With
``tool_choice`` ``"required"`` or a named function the output is constrained by a grammar to such a call, its
``arguments`` to the function's parameter schema; with ``"auto"`` the model may answer in text (beside a JSON
``response_format``: a grammar admits a call or a document of that format), and an answer that is a well-formed call
to a listed function becomes a tool call. Everything is checked when the request arrives: a schema the grammar
compiler cannot enforce is a 400 that names the keyword, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator

from ..errors import SchemaError
from ..grammar import JSON_GRAMMAR, from_json_schema, with_rules_of
from ..grammar.refs import rebase
from ..jsontypes import JSON, JSONObject
from .errors import APIError, invalid

ANY_OBJECT: JSONObject = {"type": "object"}


@dataclasses.dataclass
class Tools:
    """The functions a request offers and how the answer may use them."""

    functions: dict[str, JSONObject]  # name -> {"description", "parameters"}
    choice: str  # "auto", "required", or a function's name
    prompt: str  # the system text that describes them

    def forced(self) -> bool:
        return self.choice != "auto"


def compile_schema(
    schema: JSONObject | bool, param: str, names: list[str] | None = None, answer_param: str = "response_format"
) -> str:
    """``schema``'s grammar; what cannot be enforced is a 400 for ``param``, told inside the function of ``names``
    whose parameters sit at ``#/$defs/f<i>`` (and the answer's schema at ``#/$defs/answer``, the request's
    ``answer_param``)."""
    with _told(param, names, answer_param):
        return from_json_schema(schema)


def compile_parameters(tools: Tools, names: list[str]) -> tuple[str, list[str]]:
    """One grammar with a rule for each of the named functions' parameters, the rules they have in common written
    once, and those rules' names (the grammar's root, an object of them all, is for none to use)."""
    with _told("tools", names, "response_format"):
        return with_rules_of(_every(tools.functions, names), [f"#/$defs/f{i}" for i in range(len(names))])


def _every(functions: dict[str, JSONObject], names: list[str]) -> JSONObject:
    """The schema of an object of the named functions' parameters, ``#/$defs/f<i>`` each, their references rebased
    there."""
    defs: JSONObject = {}
    for i, n in enumerate(names):
        defs[f"f{i}"] = rebase(functions[n]["parameters"], f"#/$defs/f{i}")
    return {
        "type": "object",
        "properties": {f"f{i}": {"$ref": f"#/$defs/f{i}"} for i in range(len(names))},
        "required": [f"f{i}" for i in range(len(names))],
        "$defs": defs,
    }


@contextlib.contextmanager
def _told(param: str, names: list[str] | None, answer_param: str) -> Iterator[None]:
    """A :class:`SchemaError` as the 400 that names the request's field, and the function it arose in."""
    try:
        yield
    except SchemaError as exc:
        message = str(exc)
        if names is not None and (m := _IN_ANSWER.match(exc.pointer)) is not None:
            # the answer's schema beside the calls (a budget they share): the response_format's fault as much
            inner = "#" + (m.group(1) or "")
            message = message.removesuffix(f" (at {exc.pointer})")
            raise invalid(
                f"{answer_param}: {message} (at {inner}; with the tools' parameters)",
                answer_param,
                "unsupported_schema",
            ) from None
        if names is not None and (m := _IN_FUNCTION.match(exc.pointer)) is not None:
            # a call schema's pointer into one function's parameters, told relative to them
            inner = "#" + (m.group(2) or "")
            message = message.removesuffix(f" (at {exc.pointer})")
            message = f"function {names[int(m.group(1))]!r}: {message} (at {inner} of its parameters)"
        raise invalid(f"{param}: {message}", param, "unsupported_schema") from None


_IN_FUNCTION = re.compile(r"#/\$defs/f(\d+)(/.*)?$")
_IN_ANSWER = re.compile(r"#/\$defs/answer(/.*)?$")


def response_grammar(fmt: JSON) -> str | None:
    """The grammar a ``response_format`` asks for (None for text)."""
    schema = response_schema(fmt)
    if schema is None:
        return None
    return JSON_GRAMMAR if schema is ANY_OBJECT else compile_schema(schema, "response_format")


def response_schema(fmt: JSON) -> JSONObject | bool | None:
    """The schema a ``response_format`` asks for (:data:`ANY_OBJECT` for ``json_object``, None for text)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("response_format must be an object with a type", "response_format", "invalid_type")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid(
                "response_format.json_schema must be an object with a name and a schema",
                "response_format",
                "invalid_type",
            )
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise invalid("response_format.json_schema.strict must be a boolean", "response_format", "invalid_type")
        schema = spec.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise invalid("response_format.json_schema.schema must be an object", "response_format", "invalid_type")
        return schema
    raise invalid(
        f"response_format type {kind!r} is not one of text, json_object, json_schema",
        "response_format",
        "invalid_value",
    )


def parse_tools(tools: JSON, choice: JSON, json_answer: bool = False) -> Tools | None:
    """``tools`` and ``tool_choice`` checked; None when the request uses no tools. ``json_answer``: an answer that
    calls nothing is the JSON a ``response_format`` asks for, not text."""
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise invalid("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise invalid("tools must be a list of functions", "tools", "invalid_type")
    functions: dict[str, JSONObject] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(name, str) or not name:
            raise invalid(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", "tools", "invalid_type"
            )
        params = fn.get("parameters", ANY_OBJECT)
        if not isinstance(params, dict):
            raise invalid(f"tools[{i}].function.parameters must be a JSON schema object", "tools", "invalid_type")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(f"tools[{i}].function.description must be a string", "tools", "invalid_type")
        if name in functions:
            raise invalid(f"tools[{i}]: two functions are named {name!r}", "tools", "invalid_value")
        functions[name] = {"description": description or "", "parameters": params}
    # refused now if it cannot be enforced: all parameters in one schema, so one compile budget bounds them all
    names = list(functions)
    compile_schema(_every(functions, names), "tools", names)
    if choice in (None, "auto"):
        picked = "auto"
    elif choice == "none":
        return None
    elif choice == "required":
        picked = "required"
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(named := choice.get("function"), dict)
        and isinstance(named.get("name"), str)
    ):
        picked = str(named["name"])
        if picked not in functions:
            raise invalid(f"tool_choice names {picked!r}, which is not among the tools", "tool_choice", "invalid_value")
    else:
        raise invalid(
            "tool_choice must be none, auto, required or {'type': 'function', 'function': {'name'}}",
            "tool_choice",
            "invalid_value",
        )
    return Tools(functions, picked, _describe(functions, picked, json_answer))


def _describe(functions: dict[str, JSONObject], choice: str, json_answer: bool) -> str:
    lines = [
        "You can call the following functions. To call one, answer with only a JSON object of the form "
        '{"name": <function name>, "arguments": <an object matching its parameters>}.'
    ]
    if choice == "auto":
        lines.append(
            f"If no function is needed, answer {'with the JSON asked for' if json_answer else 'in plain text'}."
        )
    elif choice == "required":
        lines.append("You must call one of them.")
    else:
        lines.append(f"You must call {choice}.")
    for name, fn in functions.items():
        lines.append(json.dumps({"name": name, "description": fn["description"], "parameters": fn["parameters"]}))
    return "\n".join(lines)


def chosen(tools: Tools) -> list[str]:
    """The functions an answer may call: the named one, or any."""
    return [tools.choice] if tools.forced() and tools.choice != "required" else list(tools.functions)


def unwritable(function: str, what: str) -> APIError:
    """The 400 for a name (of ``function``, or of one of its parameters) that a chat template's syntax cannot write
    so that the call reads back: ``what`` says where it would go."""
    return invalid(
        f"tools: function {function!r}: its chat template cannot write the name {what}", "tools", "unsupported_schema"
    )


def call_grammar(
    tools: Tools,
    answer: JSONObject | bool | None = None,
    arguments: str = "arguments",
    answer_param: str = "response_format",
    *,
    many: bool | None = None,
    call_id: JSONObject | None = None,
) -> str:
    """The grammar of a call to the chosen function, or to any of them for ``"required"`` and ``"auto"``; with an
    ``answer`` schema (``"auto"`` with a JSON ``response_format``), of a call or a document of that schema.
    ``arguments``: the member that holds the arguments (Llama 3's templates say ``"parameters"``); ``answer_param``:
    the request field that gave the answer's schema, named by its errors. ``many``: a JSON list of calls instead
    (of one call only when False); ``call_id``: the schema of an ``"id"`` member a call may have after its arguments.

    Each function's parameters move under the call schema's ``$defs``, their references rebased there, so that
    ``#/$defs/...`` and ``#`` inside them keep pointing into the parameters, not into the call around them."""
    names = chosen(tools)
    defs: JSONObject = {}
    calls: list[JSONObject] = []
    for i, n in enumerate(names):
        defs[f"f{i}"] = rebase(tools.functions[n]["parameters"], f"#/$defs/f{i}")
        members: JSONObject = {"name": {"const": n}, arguments: {"$ref": f"#/$defs/f{i}"}}
        if call_id is not None:
            members["id"] = call_id
        calls.append(
            {"type": "object", "properties": members, "required": ["name", arguments], "additionalProperties": False}
        )
    call: JSONObject = calls[0] if len(calls) == 1 else {"anyOf": [*calls]}
    if many is not None:
        call = {"type": "array", "items": call, "minItems": 1, **({} if many else {"maxItems": 1})}
    if answer is not None:  # a call, or the answer: anyOf, since the answer's schema may admit a call's shape too
        defs["answer"] = rebase(answer, "#/$defs/answer") if isinstance(answer, dict) else answer
        call = {"anyOf": [call, {"$ref": "#/$defs/answer"}]}
    return compile_schema({**call, "$defs": defs}, "tools", names, answer_param)


def _not_json(name: str) -> JSON:
    raise ValueError(f"{name} is not JSON")


# reads JSON only: Python's NaN and Infinity, which its decoder takes, would make arguments no client can parse
DECODER = json.JSONDecoder(parse_constant=_not_json)


def as_call(text: str, tools: Tools, arguments: str = "arguments") -> JSONObject | None:
    """The tool call an answer makes (OpenAI's shape), or None when it is not a call to a listed function.
    ``arguments``: the member that holds the arguments, as for :func:`call_grammar`."""
    try:
        doc = DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"name", arguments}:
        return None
    if not isinstance(doc["name"], str) or doc["name"] not in tools.functions or not isinstance(doc[arguments], dict):
        return None
    return made(doc["name"], doc[arguments])


def made(name: str, arguments: JSONObject, call_id: str | None = None) -> JSONObject:
    """A call to ``name`` with ``arguments`` in OpenAI's shape, with ``call_id`` or a fresh id."""
    return {
        "id": call_id or "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def with_tools(messages: list[tuple[str, str]], tools: Tools) -> list[tuple[str, str]]:
    """The conversation with the functions described at the start of its system message."""
    if messages and messages[0][0] == "system":
        return [("system", tools.prompt + "\n\n" + messages[0][1]), *messages[1:]]
    return [("system", tools.prompt), *messages]
