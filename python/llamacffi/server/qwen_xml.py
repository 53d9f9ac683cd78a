"""Tool calls in the XML syntax of Qwen3-Coder's and Qwen 3.5's chat templates: a ``<tool_call>`` block holding
``<function=NAME>`` and one ``<parameter=NAME>`` element per argument, whose value is written as it is when the
parameter is a string, and as JSON otherwise::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

The grammar of a forced call writes the parameters in the schema's order, the required ones always and the others
where the model chooses, and no parameter the schema does not list (stricter than the schema, never looser). A
string parameter's value is plain text that cannot hold ``</parameter>``, within its length bounds, or one of its
``enum`` values; a string with a pattern or a format is written as a JSON string, which enforces them, and read back
as the string it spells.

GLM 4.6 and 4.7 and Ling 3 write the same elements in tags of their own (:data:`GLM`)::

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

and Seed-OSS in a block of its own, its values without the newlines around them (:data:`SEED`)::

    <seed:tool_call>
    <function=get_weather>
    <parameter=city>Paris</parameter>
    </function>
    </seed:tool_call>

MiniMax M2 writes all of an answer's calls in one block, as ``<invoke>`` elements named by attributes
(:data:`MINIMAX`)::

    <minimax:tool_call>
    <invoke name="get_weather">
    <parameter name="city">Paris</parameter>
    </invoke>
    </minimax:tool_call>

and DeepSeek V3.2 and V4 the same in their DSML tags, each parameter saying whether its value is a string or JSON
(:data:`DEEPSEEK_V3_2`, :data:`DEEPSEEK_V4`)::

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Literal

from ..grammar.combine import either, spliced
from ..grammar.gbnf import Builder, TooLarge, literal
from ..grammar.keywords import ANNOTATIONS
from ..grammar.refs import rebase
from ..grammar.strings import raw_text
from ..jsontypes import JSON, JSONObject
from . import hermes, structured
from .errors import invalid

OPEN = hermes.OPEN
CLOSE = hermes.CLOSE


_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>")
_INVOKE = re.compile(r'\s*<invoke name="([^"\n]+)">')


def _matched(pattern: re.Pattern[str], text: str, pos: int) -> tuple[str, int] | None:
    m = pattern.match(text, pos)
    return None if m is None else (m.group(1), m.end())


def _glm_name(text: str, pos: int) -> tuple[str, int] | None:
    """GLM's function name: the text up to its first parameter or the block's end (found in one pass)."""
    lt = text.find("<", pos)
    if lt < 0 or not text.startswith(("<arg_key>", "</tool_call>"), lt):
        return None
    name = text[pos:lt].strip()
    return None if not name or "\n" in name or ">" in name else (name, lt)


@dataclasses.dataclass(frozen=True)
class Style:
    """How a template writes a call's elements: the grammar's texts (GBNF) and the reader's patterns."""

    opening: str  # the block's opening tag
    head: Callable[[str], str]  # the call's opening, up to its first parameter, for a function's name
    key: Callable[[str, bool], str]  # a parameter's opening, up to its value, for its name and a JSON value or not
    close: str  # after a value
    tail: str  # after the last parameter
    end_value: str  # the tag that ends a value
    function: Callable[[str, int], tuple[str, int] | None]  # before a call: the function's name, and its opening's end
    parameter: re.Pattern[str]  # a parameter's opening: its name (group 1), and "false" for JSON (group 2, if any)
    end: re.Pattern[str]  # after the last parameter, to the end of the call
    trimmed: bool  # a value's first and last newline are the layout's, not the value's
    unwritable: str  # characters a function's or a parameter's name cannot hold
    closing: str = ""  # the tag that ends a block of several calls; "" where each call is a block (``end`` ends it)


QWEN = Style(
    opening=OPEN,
    head=lambda name: literal(f"{OPEN}\n<function={name}>\n"),
    key=lambda key, _: literal(f"<parameter={key}>\n"),
    close=literal("\n</parameter>\n"),
    tail=literal(f"</function>\n{CLOSE}"),
    end_value="</parameter>",
    function=lambda text, pos: _matched(_FUNCTION, text, pos),
    parameter=re.compile(r"\s*<parameter=([^>\n]+)>"),
    end=re.compile(r"\s*</function>\s*</tool_call>"),
    trimmed=True,
    unwritable=">\n",
)
SEED = Style(
    opening="<seed:tool_call>",
    head=lambda name: literal(f"<seed:tool_call>\n<function={name}>\n"),
    key=lambda key, _: literal(f"<parameter={key}>"),
    close=literal("</parameter>\n"),
    tail=literal("</function>\n</seed:tool_call>"),
    end_value="</parameter>",
    function=QWEN.function,
    parameter=QWEN.parameter,
    end=re.compile(r"\s*</function>\s*</seed:tool_call>"),
    trimmed=False,
    unwritable=">\n",
)
_NL = literal("\n") + "?"
# GLM's tags, special tokens of its vocabulary, which the answer writes out
GLM_MARKERS = ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")
GLM = Style(
    opening=OPEN,
    head=lambda name: f"{literal(OPEN + name)} {_NL}",
    key=lambda key, _: f"{literal(f'<arg_key>{key}</arg_key>')} {_NL} {literal('<arg_value>')}",
    close=f"{literal('</arg_value>')} {_NL}",
    tail=literal(CLOSE),
    end_value="</arg_value>",
    function=_glm_name,
    parameter=re.compile(r"\s*<arg_key>([^<>\n]+)</arg_key>\s*<arg_value>"),
    end=re.compile(r"\s*</tool_call>"),
    trimmed=False,
    unwritable="<>\n",
)
MINIMAX = Style(
    opening="<minimax:tool_call>",
    head=lambda name: literal(f'<invoke name="{name}">\n'),
    key=lambda key, _: literal(f'<parameter name="{key}">'),
    close=literal("</parameter>\n"),
    tail=literal("</invoke>"),
    end_value="</parameter>",
    function=lambda text, pos: _matched(_INVOKE, text, pos),
    parameter=re.compile(r'\s*<parameter name="([^"\n]+)">'),
    end=re.compile(r"\s*</invoke>"),
    trimmed=False,
    unwritable='"<>\n',
    closing="</minimax:tool_call>",
)
MINIMAX_MARKERS = (MINIMAX.opening, MINIMAX.closing)
DSML = "｜DSML｜"  # a special token of DeepSeek's vocabulary, which the answer writes out


def _dsml(block: str) -> Style:
    """DeepSeek's DSML calls, in a block of that name."""
    invoke = re.compile(rf'\s*<{DSML}invoke name="([^"\n]+)">')
    return Style(
        opening=f"<{DSML}{block}>",
        head=lambda name: literal(f'<{DSML}invoke name="{name}">\n'),
        key=lambda key, as_json: literal(f'<{DSML}parameter name="{key}" string="{str(not as_json).lower()}">'),
        close=literal(f"</{DSML}parameter>\n"),
        tail=literal(f"</{DSML}invoke>"),
        end_value=f"</{DSML}parameter>",
        function=lambda text, pos: _matched(invoke, text, pos),
        parameter=re.compile(rf'\s*<{DSML}parameter name="([^"\n]+)" string="(true|false)">'),
        end=re.compile(rf"\s*</{DSML}invoke>"),
        trimmed=False,
        unwritable='"<>\n',
        closing=f"</{DSML}{block}>",
    )


DEEPSEEK_V3_2 = _dsml("function_calls")
DEEPSEEK_V4 = _dsml("tool_calls")
# the keywords of a parameters schema that the parameters' elements enforce one by one
_TOP = frozenset({"type", "properties", "required", "additionalProperties", "$defs", "definitions"})


def grammar(tools: structured.Tools, answer: str | None, parallel: bool, style: Style = QWEN) -> str:
    """The grammar of the answer: calls to the chosen function (to any for ``"required"`` and ``"auto"``), one only
    for a named function or without ``parallel``, in the template's ``style`` (a block each, or one block of them);
    beside an ``answer`` grammar (``"auto"`` with a JSON ``response_format``), the calls or a document of it."""
    names = structured.chosen(tools)
    b = Builder()
    values: list[str] = []  # the rules of the JSON values, renamed apart
    sep = literal("\n")
    many = parallel and tools.choice in ("required", "auto")
    try:
        calls = [_call(b, values, _parameters(tools, n), n, i, names, style) for i, n in enumerate(names)]
        call = b.rule("call", " | ".join(calls))
        made = f"{call} ({sep} {call})*" if many else call
        if style.closing:
            made = f"{literal(style.opening + chr(10))} {made} {literal(chr(10) + style.closing)}"
        blocks = b.text(made) + "".join(values)
    except TooLarge as exc:
        raise invalid(
            f"tools: the calls in the chat template's syntax need too large a grammar: {exc}",
            "tools",
            "unsupported_schema",
        ) from None
    return blocks if answer is None else either(blocks, answer)


def _parameters(tools: structured.Tools, name: str) -> JSONObject:
    params = tools.functions[name]["parameters"]
    assert isinstance(params, dict)  # parse_tools checked it
    return params


def _call(
    b: Builder, values: list[str], params: JSONObject, name: str, index: int, names: list[str], style: Style
) -> str:
    refused = sorted(k for k in params if k not in _TOP and k not in ANNOTATIONS and not k.startswith("x-"))
    if refused or params.get("type", "object") != "object":
        raise invalid(
            f"tools: function {name!r}: its chat template writes the arguments as parameters one by one, which "
            f"cannot enforce {refused[0] if refused else 'a type other than object'!r} at the top of its parameters",
            "tools",
            "unsupported_schema",
        )
    props = params.get("properties") or {}
    required = params.get("required") or []
    assert isinstance(props, dict) and isinstance(required, list)  # the schema compiled whole in parse_tools
    listed: dict[str, JSON] = {**props, **{r: True for r in required if isinstance(r, str) and r not in props}}
    rebased = rebase(params, f"#/$defs/f{index}")
    assert isinstance(rebased, dict)
    inners = rebased.get("properties")
    assert isinstance(inners, dict) or inners is None
    for what in [name, *listed]:
        if not what or what != what.strip() or any(c in what for c in style.unwritable):
            raise structured.unwritable(name, f"{what!r} in a tag")
    parts = [style.head(name)]
    for key, schema in listed.items():
        written = form(schema, style.end_value)
        if written == "text":
            value = _text(b, schema, style.end_value)
        else:
            inner = inners.get(key, True) if inners is not None else True
            alone: JSONObject = {"$ref": "#/$defs/v", "$defs": {"v": inner, f"f{index}": rebased}}
            compiled = structured.compile_schema(alone, "tools", names)
            body, rules = spliced(compiled, f"v{len(values)}-")
            values.append(rules)
            value = f"({body})"
        element = f"{style.key(key, written == 'json')} {value} {style.close}"
        parts.append(element if key in required else f"({element})?")
    parts.append(style.tail)
    return b.rule("call", " ".join(parts))


def form(schema: JSON, end_value: str = QWEN.end_value) -> Literal["text", "json"]:
    """How a parameter's value is written: as plain text for a string (with at most length bounds) or one of
    string values (none holding ``end_value``), as JSON for anything else."""
    if not isinstance(schema, dict):
        return "json"
    keys = {k for k in schema if k not in ANNOTATIONS and not k.startswith("x-")}
    if schema.get("type", "string") != "string":
        return "json"
    if "type" in keys and keys <= {"type", "minLength", "maxLength"}:
        return "text"
    values = _strings(schema) if keys <= {"type", "enum"} or keys <= {"type", "const"} else None
    return "text" if values and all(end_value not in v for v in values) else "json"


def _strings(schema: JSONObject) -> list[str] | None:
    """The values of an ``enum`` or ``const`` of strings only; None for another."""
    values = schema.get("enum", [schema.get("const")])
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        return [str(v) for v in values]
    return None


def _text(b: Builder, schema: JSON, end_value: str) -> str:
    assert isinstance(schema, dict)
    values = _strings(schema)
    if values is not None and ("enum" in schema or "const" in schema):
        return "(" + " | ".join(literal(v) for v in dict.fromkeys(values)) + ")"
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    assert isinstance(lo, int) and (hi is None or isinstance(hi, int))
    return raw_text(b, "text", end_value, lo, hi)


def read(
    text: str, tools: structured.Tools, parallel: bool, cut: bool = False, style: Style = QWEN
) -> tuple[str | None, list[JSONObject]]:
    """The answer's text beside its calls and its calls, as :func:`.hermes.read` with blocks of this syntax. ``cut``:
    a block of several calls left open keeps the calls it finished."""
    return hermes.read(text, tools, parallel, lambda t, p, f: _block(t, p, f, style, cut), cut, style.opening)


def _block(
    text: str, pos: int, tools: structured.Tools, style: Style, cut: bool
) -> tuple[list[JSONObject] | None, int] | None:
    """The calls of the block whose opening tag ends at ``pos`` (None when one is no call to a listed function with
    each parameter once), and where its closing tag ends; None when its calls' elements and tags are not there.
    ``cut``: where the text ends in a block of several calls that it never closes, the calls finished before."""
    made: list[JSONObject] = []
    wrong = False
    while (found := _read_call(text, pos, tools, style)) is not None:
        call, pos = found
        wrong = wrong or call is None
        made += [call] if call is not None else []
        if not style.closing:
            return (None if wrong else made), pos
        closing = hermes.after_blanks(text, pos)
        if text.startswith(style.closing, closing):
            return (None if wrong else made), closing + len(style.closing)
    if style.closing and cut and made and not wrong and style.closing not in text[pos:]:
        return made, len(text)
    return None


def _read_call(text: str, pos: int, tools: structured.Tools, style: Style) -> tuple[JSONObject | None, int] | None:
    """The call whose opening starts at ``pos`` (None when it is no call to a listed function with each parameter
    once), and where its end (``style.end``) ends; None when its elements and end are not there."""
    found_name = style.function(text, pos)
    if found_name is None:
        return None
    name, pos = found_name[0].strip(), found_name[1]
    listed = _parameters(tools, name).get("properties") if name in tools.functions else None
    props = listed if isinstance(listed, dict) else {}
    arguments: JSONObject = {}
    twice = False
    while (m := style.parameter.match(text, pos)) is not None:
        key = m.group(1).strip()
        said = m.group(2) == "false" if m.lastindex == 2 else None  # what the element says its value is
        found = _value(text, m.end(), props.get(key, True), style, said)
        if found is None:
            return None
        twice = twice or key in arguments
        arguments[key], pos = found
    m = style.end.match(text, pos)
    if m is None:
        return None
    return (None if twice or name not in tools.functions else structured.made(name, arguments)), m.end()


def _value(text: str, pos: int, schema: JSON, style: Style, as_json: bool | None = None) -> tuple[JSON, int] | None:
    """The value of the element whose opening tag ends at ``pos``, and where its closing tag ends: the text itself
    for a string parameter; else the JSON it holds, read whole (a string in it may hold the closing tag), or the
    text where it holds none, as a model may write a string that a pattern constrains. Where the element says
    whether its value is JSON (``as_json``), that decides for a parameter whose schema says nothing (not listed),
    and JSON is read first where it says so. A boolean may be spelled as Python's Jinja renders one in the template
    (``True``). None when the element is not closed."""
    end_value = style.end_value
    if as_json is None:
        as_json = form(schema, end_value) == "json"
    elif not as_json:
        as_json = form(schema, end_value) == "json" and schema not in (True, {})
    if as_json:
        try:
            value, end = structured.DECODER.raw_decode(text, hermes.after_blanks(text, pos))
        except (ValueError, RecursionError):
            pass
        else:
            close = hermes.after_blanks(text, end)
            if text.startswith(end_value, close) and (isinstance(value, str) or not _string_only(schema)):
                return value, close + len(end_value)
    end = text.find(end_value, pos)
    if end < 0:
        return None
    raw = text[pos:end]
    if style.trimmed:
        raw = raw[1:] if raw.startswith("\n") else raw
        raw = raw[:-1] if raw.endswith("\n") else raw
    if isinstance(schema, dict) and "boolean" in _types(schema) and raw.strip() in ("True", "False"):
        return raw.strip() == "True", end + len(end_value)
    return raw, end + len(end_value)


def _string_only(schema: JSON) -> bool:
    """Whether the schema admits strings only (its value, written as text, is never a number)."""
    return isinstance(schema, dict) and _types(schema) == ["string"]


def _types(schema: JSONObject) -> list[JSON]:
    kind = schema.get("type")
    return kind if isinstance(kind, list) else [kind]
