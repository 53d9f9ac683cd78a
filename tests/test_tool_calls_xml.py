"""Tool calls in Qwen3-Coder's XML syntax: reading the blocks (values typed by their parameter's schema), the grammar
that forces them, run by llama.cpp, and the text automaton that keeps a value from closing its element early. The
server end to end with this syntax runs in test_tool_calls.py, one of its templates per syntax."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

import llamacffi
from llamacffi.grammar.gbnf import Builder
from llamacffi.grammar.strings import _without, raw_text
from test_grammar import accepts

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the notes.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "what to look for"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                "order": {"type": "string", "enum": ["new", "old"]},
                "day": {"type": "string", "format": "date"},
                "filter": {"$ref": "#/$defs/filter"},
                "exact": {"type": "boolean"},
            },
            "required": ["query", "limit"],
            "additionalProperties": False,
            "$defs": {"filter": {"type": "object", "properties": {"tag": {"type": "string"}}, "required": ["tag"],
                                 "additionalProperties": False}},
        },
    },
}  # fmt: skip
SHORT = {
    "type": "function",
    "function": {
        "name": "name_it",
        "parameters": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}},
                       "required": ["name"]},
    },
}  # fmt: skip


def _tools(choice: Any = "auto", tools: Any = None) -> Any:
    from llamacffi.server import structured

    return structured.parse_tools(tools or [SEARCH, SHORT], choice)


def block(function: str, **params: str) -> str:
    inner = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={function}>\n{inner}</function>\n</tool_call>"


def _read(text: str, parallel: bool = True) -> tuple[str | None, list[tuple[str, Any]]]:
    from llamacffi.server import qwen_xml

    content, calls = qwen_xml.read(text, _tools(), parallel)
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_blocks_are_read_with_values_typed_by_their_schema() -> None:
    one = block("search", query="cats\n</b>", limit="3", filter='{"tag": "pets"}', day='"2026-12-02"')
    assert _read(one) == (None, [("search", {"query": "cats\n</b>", "limit": 3, "filter": {"tag": "pets"},
                                              "day": "2026-12-02"})])  # fmt: skip
    assert _read(block("search", query="42", limit="x", day="2026-12-02")) == (
        None,
        [("search", {"query": "42", "limit": "x", "day": "2026-12-02"})],  # a string stays one; no JSON: the text
    )
    assert _read(block("name_it", name="true", extra="[1, 2]", nan="NaN")) == (
        None,
        [("name_it", {"name": "true", "extra": [1, 2], "nan": "NaN"})],  # a parameter not listed: JSON or text
    )
    assert _read(block("search", query="a", limit="1", day="20261202"))[1][0][1]["day"] == "20261202"  # not a number
    tagged = block("search", query="a", limit="1", filter='{"tag": "a</parameter>b"}')
    assert _read(tagged)[1][0][1]["filter"] == {"tag": "a</parameter>b"}  # JSON read whole
    assert _read(block("search", query="a", limit="1 2"))[1][0][1]["limit"] == "1 2"
    spaced = block("search", query="a", limit=" 5", filter='  {"tag": "x"}').replace("\n5", "\n\r\n5\r")
    assert _read(spaced)[1][0][1] == {"query": "a", "limit": 5, "filter": {"tag": "x"}}  # JSON among blanks
    assert _read(block("search", query="a", limit="1", exact="True"))[1] == [
        ("search", {"query": "a", "limit": 1, "exact": True})  # as Jinja writes a Python boolean
    ]
    assert _read(block("search", query="a", limit="1", exact="false"))[1][0][1]["exact"] is False
    assert _read(block("name_it", name="True", other="False"))[1][0][1] == {"name": "True", "other": "False"}
    two = f"Looking.\n\n{block('name_it', name='Ann')}\n{block('search', query='x', limit='1')}\nDone."
    assert _read(two) == ("Looking.\nDone.", [("name_it", {"name": "Ann"}), ("search", {"query": "x", "limit": 1})])
    assert _read(two, parallel=False)[1] == [("name_it", {"name": "Ann"})]
    compact = "<tool_call><function=name_it><parameter=name>Bo</parameter></function></tool_call>"
    assert _read(compact) == (None, [("name_it", {"name": "Bo"})])
    good = block("name_it", name="Ann")
    for wrong in [
        "Plain text.",
        good.replace("name_it", "rename"),  # not a listed function
        good.replace("</parameter>", ""),  # a value not closed
        good.replace("</function>\n", ""),
        good.replace("</tool_call>", ""),
        good.replace("</function>", "x</function>"),  # more than parameters in the function
        block("name_it", name="Ann").replace("</parameter>\n", "</parameter>\n<parameter=name>\nBo\n</parameter>\n"),
        '<tool_call>\n{"name": "name_it", "arguments": {"name": "Ann"}}\n</tool_call>',  # the other syntax
    ]:
        assert _read(wrong) == (wrong, [])


def test_the_text_automaton_admits_exactly_the_texts_without_the_word() -> None:
    for word in ["abab", "aab", "</parameter>"[:4]]:
        d = _without(word)
        for n in range(7):
            for letters in itertools.product([*sorted(set(word)), "z"], repeat=n):
                text, state = "".join(letters), 0
                for c in text:
                    moves = [t for rs, t in d.edges[state] if any(lo <= ord(c) <= hi for lo, hi in rs)]
                    if not moves:
                        break
                    (state,) = moves
                else:
                    assert word not in text and d.accept[state], text
                    continue
                assert word in text, text


def test_raw_text_runs_in_llama_cpp(smollm2: llamacffi.Model) -> None:
    vocab = smollm2.vocab
    b = Builder()
    free = b.text(raw_text(b, "t", "</p>") + ' "</p>"')
    assert accepts(vocab, free, "a < b </i> </p</p>")
    assert accepts(vocab, free, "line\n<p>\n</p>") and accepts(vocab, free, "</p>")
    assert not accepts(vocab, free, "a </p> b</p>")
    b = Builder()
    short = b.text(raw_text(b, "t", "</p>", 2, 4) + ' "</p>"')
    assert accepts(vocab, short, "a<b</p>") and not accepts(vocab, short, "a</p>")
    assert not accepts(vocab, short, "abcde</p>")
    b = Builder()
    long = b.text(raw_text(b, "t", "</p>", 0, 1999) + ' "</p>"')  # too many states: no "<" at all
    assert accepts(vocab, long, "a b c</p>") and not accepts(vocab, long, "a<b</p>")


def test_the_grammar_forces_calls_in_the_syntax(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import qwen_xml

    vocab = smollm2.vocab
    g = qwen_xml.grammar(_tools("required"), None, True)
    ok = block(
        "search", query="cats </b> <parameter=x>", limit="20", order="old", filter='{"tag": "pets"}', exact="true"
    )
    assert accepts(vocab, g, ok)
    assert accepts(vocab, g, block("search", query="", limit="1", day='"2026-02-28"'))
    assert accepts(vocab, g, f"{ok}\n{block('name_it', name='Ann')}")  # parallel
    for wrong in [
        block("search", limit="2"),  # a required parameter missing
        block("search", limit="2", query="x"),  # out of the schema's order
        block("search", query="x", limit="21"),
        block("search", query="x", limit='"2"'),
        block("search", query="x", limit="2", order="newest"),
        block("search", query="x", limit="2", day="2026-02-30"),  # a format: a JSON string of a real day
        block("search", query="x", limit="2", day='"2026-02-30"'),
        block("search", query="x", limit="2", filter='{"tag": 1}'),
        block("search", query="x", limit="2", exact="True"),  # JSON, when forced
        block("search", query="x </parameter>", limit="2"),
        block("search", query="x", limit="2", other="1"),
        block("name_it", name="Annabel"),  # longer than maxLength
        block("rename", name="Ann"),
        "Sure.",
    ]:
        assert not accepts(vocab, g, wrong), wrong
    one = qwen_xml.grammar(_tools({"type": "function", "function": {"name": "name_it"}}), None, True)
    assert accepts(vocab, one, block("name_it", name="Ann"))
    assert not accepts(vocab, one, ok) and not accepts(
        vocab, one, f"{block('name_it', name='A')}\n{block('name_it', name='B')}"
    )
    answer = llamacffi.grammar.from_json_schema({"type": "integer"})
    auto = qwen_xml.grammar(_tools("auto"), answer, True)
    assert accepts(vocab, auto, "42") and accepts(vocab, auto, block("name_it", name="Ann"))
    assert not accepts(vocab, auto, "Hi")


def test_parameters_the_syntax_cannot_enforce_are_refused_when_a_call_is_forced() -> None:
    from llamacffi.server import qwen_xml
    from llamacffi.server.errors import APIError

    for params, says in [
        ({"anyOf": [{"type": "object"}]}, "anyOf"),
        ({"type": "array"}, "type other than object"),
        ({"type": "object", "properties": {"a>b": {"type": "string"}}}, "a>b"),
        ({"type": "object", "properties": {"a\nb": {"type": "integer"}}}, "name"),
    ]:
        tool = {"type": "function", "function": {"name": "f", "parameters": params}}
        tools = _tools("required", [tool])
        with pytest.raises(APIError, match=says) as e:
            qwen_xml.grammar(tools, None, True)
        assert e.value.status == 400
    assert qwen_xml.read(block("f", x="1"), tools, True)[1]  # read in auto, whatever the schema
    many = {f"p{i}": {"type": "string", "minLength": 150 - i} for i in range(40)}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": many,
                                                                         "required": list(many)}}}  # fmt: skip
    with pytest.raises(APIError, match="too large") as e:
        qwen_xml.grammar(_tools("required", [tool]), None, True)
    assert e.value.status == 400


@pytest.mark.parametrize("size", [1, 5, 200])
def test_a_stream_sends_what_the_whole_answer_has_also_when_cut_short(size: int) -> None:
    from llamacffi.server import calls, completions
    from llamacffi.service.events import Chunk

    rome = block("name_it", name="Rome")
    reader = calls.Reader(_tools(), "qwen-xml", True)
    for answer, cut, content in [
        (f"Looking.\n{rome}\nDone.", False, "Looking.\nDone."),
        (f"Looking.\n{rome}\n<tool_call>\n<function=sea", True, "Looking."),
        ("Hello <tool_c", True, "Hello "),
    ]:
        held = completions._Held(1, reader)
        sent = "".join(held.feed(0, Chunk(answer[k : k + size]))[0] or "" for k in range(0, len(answer), size))
        rest, made, _ = held.finish(0, cut)
        whole, calls_made = reader.read(answer, cut)
        assert sent + (rest or "") == (whole or "") == content
        assert [c["function"] for c in made] == [c["function"] for c in calls_made]
        assert [c["function"]["arguments"] for c in made] == (['{"name": "Rome"}'] if "Rome" in answer else [])


# ---- GLM's tags for the same elements ----------------------------------------------------------------------------


def glm_block(function: str, layout: str = "\n", **params: str) -> str:
    inner = "".join(f"<arg_key>{k}</arg_key>{layout}<arg_value>{v}</arg_value>{layout}" for k, v in params.items())
    return f"<tool_call>{function}{layout}{inner}</tool_call>"


def test_glm_blocks_are_read_with_values_typed_by_their_schema() -> None:
    from llamacffi.server import qwen_xml

    def read(text: str) -> tuple[str | None, list[tuple[str, Any]]]:
        content, made = qwen_xml.read(text, _tools(), True, style=qwen_xml.GLM)
        return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in made]

    for layout in ["\n", ""]:  # GLM 4.6's layout, and 4.7's
        one = glm_block("search", layout, query="\ncats </b>\n", limit="3", filter='{"tag": "pets"}', exact="True")
        assert read(f"Looking.{layout}{one}") == (
            "Looking.",
            [("search", {"query": "\ncats </b>\n", "limit": 3, "filter": {"tag": "pets"}, "exact": True})],
        )  # a string is its text, blank lines included
        assert read(glm_block("search", layout, query="42", limit="1"))[1] == [("search", {"query": "42", "limit": 1})]
        two = glm_block("name_it", layout, name="Ann") + "\n" + glm_block("name_it", layout, name="Bo")
        assert [args for _, args in read(two)[1]] == [{"name": "Ann"}, {"name": "Bo"}]
    good = glm_block("name_it", name="Ann")
    for wrong in [
        good.replace("name_it", "rename"),
        good.replace("</arg_value>", ""),
        good.replace("</tool_call>", ""),
        good.replace("<arg_key>name", "<arg_key>na<me"),
        block("name_it", name="Ann"),  # Qwen's tags
    ]:
        assert read(wrong) == (wrong, []), wrong


def test_the_grammar_forces_calls_in_glms_tags(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import qwen_xml

    vocab = smollm2.vocab
    g = qwen_xml.grammar(_tools("required"), None, True, qwen_xml.GLM)
    ok = glm_block("search", query="cats </b> <arg_key>", limit="20", order="old", exact="true")
    for layout in ["\n", ""]:
        assert accepts(vocab, g, glm_block("search", layout, query="cats", limit="20", filter='{"tag": "pets"}'))
    assert accepts(vocab, g, ok) and accepts(vocab, g, f"{ok}\n{glm_block('name_it', name='Ann')}")
    for wrong in [
        glm_block("search", limit="2"),  # a required parameter missing
        glm_block("search", query="x", limit="21"),
        glm_block("search", query="x </arg_value>", limit="2"),
        glm_block("name_it", name="Annabel"),  # longer than maxLength
        block("name_it", name="Ann"),  # Qwen's tags
    ]:
        assert not accepts(vocab, g, wrong), wrong
    with pytest.raises(Exception, match="cannot write the name"):
        tool = {"type": "function", "function": {"name": "a<b", "parameters": {"type": "object"}}}
        qwen_xml.grammar(_tools("required", [tool]), None, True, qwen_xml.GLM)


def test_seed_blocks_are_read_and_forced(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import qwen_xml

    def seed(function: str, **params: str) -> str:
        inner = "".join(f"<parameter={k}>{v}</parameter>\n" for k, v in params.items())
        return f"<seed:tool_call>\n<function={function}>\n{inner}</function>\n</seed:tool_call>"

    one = seed("search", query="\ncats\n", limit="3")
    content, made = qwen_xml.read(f"Looking.\n{one}", _tools(), True, style=qwen_xml.SEED)
    assert content == "Looking." and [json.loads(c["function"]["arguments"]) for c in made] == [
        {"query": "\ncats\n", "limit": 3}  # the value's own newlines kept
    ]
    assert qwen_xml.read(block("name_it", name="Ann"), _tools(), True, style=qwen_xml.SEED)[1] == []  # Qwen's block
    g = qwen_xml.grammar(_tools("required"), None, True, qwen_xml.SEED)
    assert accepts(smollm2.vocab, g, one) and accepts(smollm2.vocab, g, f"{one}\n{seed('name_it', name='Ann')}")
    assert not accepts(smollm2.vocab, g, seed("search", query="x")) and not accepts(smollm2.vocab, g, block(
        "search", query="x", limit="2"))  # fmt: skip


def test_names_and_cut_blocks_in_every_element_style() -> None:
    from llamacffi.server import calls, qwen_xml
    from llamacffi.server.errors import APIError

    for style in [qwen_xml.QWEN, qwen_xml.GLM, qwen_xml.SEED]:
        for params in [{"": {"type": "integer"}}, {" a": {"type": "integer"}}, {"a ": {"type": "integer"}}]:
            schema = {"type": "object", "properties": params, "required": list(params)}
            tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
            with pytest.raises(APIError, match="cannot write the name"):  # the reader would not read it back
                qwen_xml.grammar(_tools("required", [tool]), None, True, style)
        with pytest.raises(APIError, match="cannot write the name"):
            tool = {"type": "function", "function": {"name": "f ", "parameters": {"type": "object"}}}
            qwen_xml.grammar(_tools("required", [tool]), None, True, style)
    reader = calls.Reader(_tools(), "glm", True)
    for long in ["Sure.<tool_call>" + " " * 20_000, "<tool_call>" + "\t" * 20_000 + "x"]:  # read in one pass
        assert reader.read(long) == (long, [])
        assert reader.read(long, cut=True)[1] == []
    done = glm_block("name_it", name="Ann")
    opened = "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>write <tool_call> then"  # the tag in a value
    content, made = reader.read(f"{done}\n{opened}", cut=True)
    assert content is None and [c["function"]["name"] for c in made] == ["name_it"]
    assert reader.read(f"{done}\n{opened}") == (f"{done}\n{opened}", [])  # whole, it is malformed
    malformed = f"{done}\n<tool_call>nope\n</tool_call>\n{done}"  # a block that ends, then one that does too
    assert reader.read(malformed, cut=True) == (malformed, [])


# ---- MiniMax M2's and DeepSeek's <invoke> elements, all of an answer's calls in one block ---------------------------


def invokes(*calls: tuple[str, dict[str, str]], dsml: str = "") -> str:
    """A block of calls as MiniMax M2 writes it, or DeepSeek V4 (``dsml``: the values' string attributes, in order,
    "t" or "f")."""
    marks = iter(dsml)
    if not dsml:
        inner = "".join(f'<invoke name="{n}">\n' + "".join(f'<parameter name="{k}">{v}</parameter>\n'
                        for k, v in p.items()) + "</invoke>\n" for n, p in calls)  # fmt: skip
        return f"<minimax:tool_call>\n{inner}</minimax:tool_call>"
    d = "｜DSML｜"
    inner = "".join(f'<{d}invoke name="{n}">\n' + "".join(
        f'<{d}parameter name="{k}" string="{"true" if next(marks) == "t" else "false"}">{v}</{d}parameter>\n'
        for k, v in p.items()) + f"</{d}invoke>\n" for n, p in calls)  # fmt: skip
    return f"<{d}tool_calls>\n{inner}</{d}tool_calls>"


def test_invoke_blocks_are_read_with_every_call_they_hold() -> None:
    from llamacffi.server import calls, qwen_xml

    for syntax, dsml in [("minimax", ""), ("deepseek-v4", "tfftt")]:
        reader = calls.Reader(_tools(), syntax, True)  # type: ignore[arg-type]

        def read(text: str, cut: bool = False, reader: Any = reader) -> tuple[str | None, list[tuple[str, Any]]]:
            content, made = reader.read(text, cut)
            return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in made]

        two = invokes(("search", {"query": "\ncats </b>", "limit": "3", "filter": '{"tag": "pets"}'}),
                      ("name_it", {"name": "Ann"}), ("name_it", {"name": "42"}), dsml=dsml)  # fmt: skip
        said = [("search", {"query": "\ncats </b>", "limit": 3, "filter": {"tag": "pets"}}),
                ("name_it", {"name": "Ann"}), ("name_it", {"name": "42"})]  # fmt: skip
        assert read(f"Looking.\n\n{two}") == ("Looking.", said)
        assert calls.Reader(_tools(), syntax, False).read(two)[1][0]["function"]["name"] == "search"  # type: ignore[arg-type]
        cut = two[: two.index("Ann")]  # the second call left open: the first kept
        assert read(cut, cut=True) == (None, said[:1])
        assert read(cut) == (cut, [])
        bad = two.replace('"name_it"', '"rename"', 1)  # one call of three to no listed function
        assert read(bad) == (bad, []) and read(bad[: bad.index("42")], cut=True)[1] == []
        for wrong in [
            two.replace("</invoke>", "", 1).replace(f"</{qwen_xml.DSML}invoke>", "", 1),
            two[: -len("tool_call>")],  # the block not closed
            two.replace("\n<", "\nx<", 2),
        ]:
            assert read(wrong) == (wrong, []), wrong
    dsml = invokes(("name_it", {"name": '"Ann"', "extra": "[1, 2]", "more": "[3]", "n": "2"}), dsml="ftft")
    (made,) = calls.Reader(_tools(), "deepseek-v4", True).read(dsml)[1]
    assert json.loads(made["function"]["arguments"]) == {"name": "Ann", "extra": "[1, 2]", "more": [3], "n": "2"}


def test_the_grammar_forces_invoke_blocks(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import qwen_xml

    vocab = smollm2.vocab
    for style, dsml in [(qwen_xml.MINIMAX, ""), (qwen_xml.DEEPSEEK_V4, "tft")]:
        g = qwen_xml.grammar(_tools("required"), None, True, style)
        ok = invokes(("search", {"query": "cats </b>", "limit": "20", "order": "old"}), dsml=dsml)
        assert accepts(vocab, g, ok)
        both = invokes(("search", {"query": "x", "limit": "1", "order": "new"}), ("name_it", {"name": "Ann"}),
                       dsml=dsml + "t" if dsml else "")  # fmt: skip
        assert accepts(vocab, g, both)
        for wrong in [
            invokes(("search", {"limit": "2"}), dsml=dsml[1:]),  # a required parameter missing
            invokes(("search", {"query": "x", "limit": "21", "order": "old"}), dsml=dsml),
            invokes(("name_it", {"name": "Annabel"}), dsml=dsml[:1]),
            ok + "\n" + ok,  # a second block
            block("name_it", name="Ann"),  # Qwen's tags
            *([invokes(("search", {"query": "x", "limit": "2", "order": "old"}), dsml="fff")] if dsml else []),
        ]:
            assert not accepts(vocab, g, wrong), wrong
        one = qwen_xml.grammar(_tools("required"), None, False, style)
        assert accepts(vocab, one, ok) and not accepts(vocab, one, both)
        with pytest.raises(Exception, match="cannot write the name"):
            tool = {"type": "function", "function": {"name": 'a"b', "parameters": {"type": "object"}}}
            qwen_xml.grammar(_tools("required", [tool]), None, True, style)
