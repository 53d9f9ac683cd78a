"""Tool calls in gpt-oss's harmony format: reading a message to a function (its recipient in either header, after
commentary to the user), the grammar that forces one, run by llama.cpp, and thinking in the analysis channel before
it. The server end to end with this format runs in test_tool_calls.py, one of its templates per syntax."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llamacffi
from test_grammar import accepts
from test_tool_calls_xml import SEARCH, SHORT

ARGS = '{"query": "cats", "limit": 2}'
IN_ROLE = f"<|start|>assistant to=functions.search<|channel|>commentary json<|message|>{ARGS}"
IN_CHANNEL = f"<|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json<|message|>{ARGS}"


def _tools(choice: Any = "auto", tools: Any = None) -> Any:
    from llamacffi.server import structured

    return structured.parse_tools(tools or [SEARCH, SHORT], choice)


def _read(text: str, cut: bool = False) -> tuple[str | None, list[tuple[str, Any]]]:
    from llamacffi.server import harmony

    content, made = harmony.read(text, _tools(), cut)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in made]


def test_a_message_to_a_function_is_a_call_in_either_header() -> None:
    call = [("search", {"query": "cats", "limit": 2})]
    for text in [
        IN_ROLE,
        IN_CHANNEL,
        IN_ROLE.removeprefix("<|start|>assistant"),  # the first message: its role is the prompt's
        IN_CHANNEL.removeprefix("<|start|>assistant"),
        IN_ROLE.replace(" json", "") + "\n",
    ]:
        assert _read(text) == (None, call), text
    preamble = "<|start|>assistant<|channel|>commentary<|message|>Looking it up.<|end|>"
    thought = "<|start|>assistant<|channel|>analysis<|message|>Now the call.<|end|>"
    assert _read(preamble + thought + IN_CHANNEL) == ("Looking it up.", call)  # thinking between is not kept
    for text in [
        "The answer.",  # the final channel's text (its header dropped with the thinking)
        IN_ROLE.replace("search", "rename"),  # not a listed function
        IN_ROLE.replace(ARGS, "[1]"),  # arguments that are no object
        IN_ROLE[:-1],  # arguments that do not end
        IN_ROLE + " and more",
        preamble,  # commentary without a call
        "<|start|>assistant<|channel|>final<|message|>Plain",
        "<|channel|> nothing",
        "to= nowhere",
    ]:
        assert _read(text) == (text, []), text


def test_an_answer_cut_short_drops_the_message_it_left_open() -> None:
    preamble = "<|start|>assistant<|channel|>commentary<|message|>Looking it up.<|end|>"
    for tail in ["<|start|>assis", "<|start|>assistant<|channel|>commentary to=functions.se", IN_ROLE[:-3]]:
        assert _read(preamble + tail, cut=True) == ("Looking it up.", []), tail
        assert _read(preamble + tail) == (preamble + tail, [])
    assert _read(IN_CHANNEL[:-3], cut=True) == ("", [])
    assert _read("Cut sh", cut=True) == ("Cut sh", [])
    for text in ["<|channel|>analysis<|message|>I think", "<|channel|>final<|message|>Paris.", preamble]:
        assert _read(text, cut=True) == _read(text) == (text, [])  # no call: the text as it came, cut or not


def test_long_answers_are_read_in_one_pass() -> None:
    for text in ["<|channel|>commentary" + " " * 20_000 + "x", "<|start|>assistant" + "\n" * 20_000 + "<|message|>"]:
        assert _read(text) == (text, [])
    nan = IN_ROLE.replace(ARGS, '{"query": NaN, "limit": 2}')
    assert _read(nan) == (nan, [])  # no JSON: no call
    spaced = "<|channel|>commentary to=functions.search" + " " * 20 + "<|constrain|>json<|message|>" + ARGS
    assert _read(spaced)[1] == [("search", {"query": "cats", "limit": 2})]


def test_a_stream_holds_what_may_be_a_call() -> None:
    from llamacffi.server import calls

    reader = calls.Reader(_tools(), "harmony", True)
    for text in ["<|st", "<|start|>assistant<|channel|>final", "  <|chan", " to=functions.search", "to"]:
        assert reader.held_from(text) == 0, text
    assert reader.held_from("The answer") is None and reader.held_from("<b>") is None
    assert calls.Reader(_tools("required"), "harmony", True).held_from("Hi") == 0


def test_the_grammar_forces_one_call(smollm2: llamacffi.Model) -> None:
    from llamacffi.chat import THINKING_TAGS
    from llamacffi.server import harmony, reasoning

    vocab = smollm2.vocab
    g = harmony.grammar(_tools("required"), None)
    for text in [IN_ROLE, IN_CHANNEL, IN_ROLE.removeprefix("<|start|>assistant"), IN_ROLE.replace(" json", "")]:
        assert accepts(vocab, g, text), text
    for wrong in [
        IN_ROLE + IN_ROLE,  # one call a turn
        IN_ROLE.replace(ARGS, '{"query": "cats"}'),  # a required parameter missing
        IN_ROLE.replace("search", "rename"),
        IN_ROLE.replace("commentary", "final"),
        IN_CHANNEL.replace(" <|constrain|>json", "json"),  # the content type apart from the name: read back
        "Sure.",
    ]:
        assert not accepts(vocab, g, wrong), wrong
    for name in ["get weather", "a<b"]:  # names a recipient cannot hold
        tool = {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        with pytest.raises(Exception, match="cannot write the name") as e:
            harmony.grammar(_tools("required", [tool]), None)
        assert e.value.status == 400  # type: ignore[attr-defined]
    named = harmony.grammar(_tools({"type": "function", "function": {"name": "name_it"}}), None)
    assert not accepts(vocab, named, IN_ROLE)
    assert accepts(vocab, named, '<|channel|>commentary to=functions.name_it<|message|>{"name": "Ann"}')
    auto = harmony.grammar(_tools("auto"), llamacffi.grammar.from_json_schema({"type": "integer"}))
    assert accepts(vocab, auto, "42") and accepts(vocab, auto, IN_CHANNEL) and not accepts(vocab, auto, "Hi")
    # thinking in the analysis channel first, then the call, or the final channel's answer
    (harmony,) = [t for t in THINKING_TAGS if t.opening == "<|channel|>analysis<|message|>"]
    thinking = reasoning.first(auto, False, harmony)
    plan = "<|channel|>analysis<|message|>A plan.<|end|>"
    for text in [plan + IN_ROLE, plan + "<|start|>assistant<|channel|>final<|message|>42", IN_CHANNEL, "42"]:
        assert accepts(vocab, thinking, text), text
    assert not accepts(vocab, thinking, plan + "<|start|>assistant<|channel|>final<|message|>Hi")


def test_a_chain_of_calls_goes_back_to_the_template_with_its_thinking() -> None:
    from llamacffi.chat import apply_template
    from llamacffi.server import requests
    from test_tool_calls import TEMPLATES

    if not TEMPLATES.is_dir():
        pytest.skip("llama.cpp's templates are not there (not built)")
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Cats?"},
            {"role": "assistant", "content": None, "reasoning_content": "I should search.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": ARGS}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3 cats"},
        ],
    }  # fmt: skip
    parsed = requests.parse_chat(body)
    text = apply_template((TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(), parsed.chat, tools=[SEARCH])
    assert "<|channel|>analysis<|message|>I should search.<|end|>" in text  # gpt-oss's template reads "thinking"
    assert '<|start|>assistant to=functions.search<|channel|>commentary json<|message|>{"query": "cats"' in text
    assert text.endswith('<|channel|>commentary<|message|>"3 cats"<|end|><|start|>assistant')
    # what the server answers for a preamble before a call, sent back: the preamble is the call's thinking there
    said = {**body["messages"][1], "content": "Looking it up."}
    parsed = requests.parse_chat({**body, "messages": [body["messages"][0], said, body["messages"][2]]})
    text = apply_template((TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(), parsed.chat, tools=[SEARCH])
    assert "<|channel|>analysis<|message|>Looking it up.<|end|>" in text
