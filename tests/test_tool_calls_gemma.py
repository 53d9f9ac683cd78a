"""Tool calls in Gemma 4's syntax: its notation read into JSON values, the calls read from an answer, and the
grammar that forces them, run by llama.cpp, with the schemas it enforces and those it refuses. The server end to
end with this syntax runs in test_tool_calls.py, one of its templates per syntax."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llamacffi
from test_grammar import accepts

Q = '<|"|>'
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 12},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                "order": {"type": "string", "enum": ["new", "old"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "filter": {"$ref": "#/$defs/filter"},
                "exact": {"type": "boolean"},
                "extra": {},
            },
            "required": ["query", "limit"],
            "additionalProperties": False,
            "$defs": {"filter": {"type": "object", "properties": {"tag": {"type": "string"}, "min": {"type": "number"}},
                                 "required": ["tag"], "additionalProperties": False}},
        },
    },
}  # fmt: skip
NAME_IT = {
    "type": "function",
    "function": {"name": "name_it", "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                                                   "required": ["name"]}},
}  # fmt: skip


def _tools(choice: Any = "auto", tools: Any = None) -> Any:
    from llamacffi.server import structured

    return structured.parse_tools(tools or [SEARCH, NAME_IT], choice)


def call(name: str, args: str) -> str:
    return f"<|tool_call>call:{name}{{{args}}}<tool_call|>"


def _read(text: str, parallel: bool = True, cut: bool = False) -> tuple[str | None, list[tuple[str, Any]]]:
    from llamacffi.server import gemma

    content, made = gemma.read(text, _tools(), parallel, cut)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in made]


def test_the_notation_reads_as_json_values() -> None:
    from llamacffi.server import gemma

    for text, meant in [
        (f"{Q}Paris, {{not}} [a] list:{Q}", "Paris, {not} [a] list:"),  # a string holds anything but the mark
        ("{}", {}),
        ("[]", []),
        (f"{{a:1,b:-2.5e3,c:true,d:false,e:null,f:None,g:[1,{Q}x{Q}],h:{{i:{{}}}}}}",
         {"a": 1, "b": -2500.0, "c": True, "d": False, "e": None, "f": None, "g": [1, "x"], "h": {"i": {}}}),
        (f"{{ a : 1 ,\n {Q}b c{Q}: [ 2 , 3 ] }}", {"a": 1, "b c": [2, 3]}),  # blanks, and a key between marks
    ]:  # fmt: skip
        assert gemma.value(text, 0) == (meant, len(text)), text
    for wrong in [f"{Q}open", "{a:1", "{a 1}", "{a:1,a:2}", "{:1}", "[1,]", "[1 2]", "{a:01}", "tru", "", "{a:}", "x"]:
        with pytest.raises(ValueError):
            gemma.value(wrong, 0)
    deep = "[" * 10_000 + "]" * 10_000
    with pytest.raises(ValueError):  # bounded, not a RecursionError
        gemma.value(deep, 0)


def test_calls_are_read_from_the_answer() -> None:
    one = call("search", f"filter:{{tag:{Q}pets{Q}}},limit:3,query:{Q}cats{Q}")
    two = call("name_it", f"name:{Q}Ann{Q}")
    searched = ("search", {"filter": {"tag": "pets"}, "limit": 3, "query": "cats"})
    assert _read(f"Looking.{one}{two}") == ("Looking.", [searched, ("name_it", {"name": "Ann"})])
    assert _read(f"{one}{two}", parallel=False) == (None, [searched])
    assert _read(f"{one}\nDone.") == ("\nDone.", [searched])
    assert _read("Plain text.") == ("Plain text.", [])
    assert _read(f"{one}{two[:30]}", cut=True) == (None, [searched])  # the second call left open
    for wrong in [
        call("rename", f"name:{Q}Ann{Q}"),  # no listed function
        call("name_it", f"name:{Q}Ann{Q}").replace("<tool_call|>", ""),
        call("name_it", f"name:{Q}Ann"),
        call("name_it", f"name:{Q}Ann{Q}").replace("call:", ""),
        "<|tool_call>call:name_it[1]<tool_call|>",  # arguments that are no object
        f"{one}{call('name_it', 'name:')}",  # one call of two malformed
    ]:
        assert _read(wrong) == (wrong, []), wrong


def test_the_grammar_forces_calls_in_the_notation(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import gemma

    vocab = smollm2.vocab
    g = gemma.grammar(_tools("required"), None, True)
    good = [
        call("search", f"limit:3,query:{Q}cats{Q}"),  # the required members, in sorted order
        call(
            "search",
            f"exact:true,extra:{{any:[1,{Q}x{Q}]}},filter:{{min:2.5,tag:{Q}pets{Q}}},limit:20,"
            f"order:{Q}old{Q},query:{Q}{Q},tags:[{Q}a{Q},{Q}b{Q}]",
        ),
        call("search", f"filter:{{tag:{Q}x{Q}}},limit:1,query:{Q}a, {{b}}:c{Q},tags:[]"),
        call("name_it", f"name:{Q}Ann{Q}") + call("name_it", f"name:{Q}Bo{Q}"),  # parallel, back to back
    ]
    for text in good:
        assert accepts(vocab, g, text), text
    for wrong in [
        call("search", f"query:{Q}cats{Q},limit:3"),  # out of sorted order
        call("search", "limit:3"),  # a required member missing
        call("search", f"limit:21,query:{Q}cats{Q}"),
        call("search", f"limit:3,query:{Q}far too long a query{Q}"),
        call("search", f"limit:3,order:{Q}newest{Q},query:{Q}x{Q}"),
        call("search", f"limit:3,query:{Q}x{Q},tags:[{Q}a{Q},{Q}b{Q},{Q}c{Q}]"),
        call("search", f"filter:{{min:1}},limit:3,query:{Q}x{Q}"),  # the filter's tag missing
        call("search", f"limit:3,query:{Q}x{Q},zzz:1"),  # a member not listed
        call("search", 'limit:3,query:"x"'),  # JSON's string, not the notation's
        call("search", f"limit:3,,query:{Q}x{Q}"),
        call("name_it", f"name:{Q}Ann{Q}") + "\n" + call("name_it", f"name:{Q}Bo{Q}"),
        "Sure.",
    ]:
        assert not accepts(vocab, g, wrong), wrong
    one = gemma.grammar(_tools({"type": "function", "function": {"name": "name_it"}}), None, True)
    assert accepts(vocab, one, call("name_it", f"name:{Q}Ann{Q}"))
    assert not accepts(vocab, one, good[0]) and not accepts(vocab, one, good[3])
    answer = llamacffi.grammar.from_json_schema({"type": "integer"})
    auto = gemma.grammar(_tools("auto"), answer, True)
    assert accepts(vocab, auto, "42") and accepts(vocab, auto, good[0]) and not accepts(vocab, auto, "Hi")
    for text in good:  # what the grammar writes reads back
        assert _read(text)[1], text


def test_what_the_notation_cannot_enforce_is_refused_when_a_call_is_forced() -> None:
    from llamacffi.server import gemma
    from llamacffi.server.errors import APIError

    for params, says in [
        ({"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}, "'format'"),
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}, "anyOf"),
        ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"enum": [1, "x"]}}}, "'enum'"),
        ({"type": "object", "properties": {"a b": {"type": "integer"}}}, "cannot write the name"),
        ({"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}},
          "$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}}}, "recursive"),
    ]:  # fmt: skip
        tool = {"type": "function", "function": {"name": "f", "parameters": params}}
        with pytest.raises(APIError, match=says) as e:
            gemma.grammar(_tools("required", [tool]), None, True)
        assert e.value.status == 400 and e.value.param == "tools"
    with pytest.raises(APIError, match="cannot write the name"):
        tool = {"type": "function", "function": {"name": "f{", "parameters": {"type": "object"}}}
        gemma.grammar(_tools("required", [tool]), None, True)
    free = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert gemma.grammar(_tools("required", [free]), None, True)  # any object of the notation
