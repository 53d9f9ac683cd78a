"""Tool calls in Mistral's syntax: reading ``[TOOL_CALLS]NAME[ARGS]{...}`` calls and the ids the model writes, the
grammar that forces them, run by llama.cpp, and the special tokens the output writes out to be read; and calls as a
JSON list after a tag (Mistral Nemo's, Nemotron Nano 2's). The server end to end with these syntaxes runs in
test_tool_calls.py, one of its templates per syntax."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import llamacffi
from test_grammar import accepts
from test_tool_calls_xml import SEARCH, SHORT

ID = re.compile(r"[A-Za-z0-9]{9}")


def _tools(choice: Any = "auto", tools: Any = None) -> Any:
    from llamacffi.server import structured

    return structured.parse_tools(tools or [SEARCH, SHORT], choice)


def call(name: str, arguments: str, call_id: str | None = None) -> str:
    return f"[TOOL_CALLS]{name}" + (f"[CALL_ID]{call_id}" if call_id is not None else "") + f"[ARGS]{arguments}"


def _read(text: str, parallel: bool = True, cut: bool = False) -> tuple[str | None, list[tuple[str, Any, str]]]:
    from llamacffi.server import mistral

    content, made = mistral.read(text, _tools(), parallel, cut)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"]), c["id"]) for c in made]


def test_calls_are_read_after_the_answers_text_with_the_ids_the_model_wrote() -> None:
    content, made = _read("Let me look." + call("search", '{"query": "cats", "limit": 2}', "abcDEF123"))
    assert content == "Let me look." and made == [("search", {"query": "cats", "limit": 2}, "abcDEF123")]
    content, made = _read(call("search", '{"query": "[ARGS]", "limit": 1}') + call("name_it", '{"name": "Ann"}'))
    assert content is None and [m[:2] for m in made] == [("search", {"query": "[ARGS]", "limit": 1}),
                                                         ("name_it", {"name": "Ann"})]  # fmt: skip
    assert all(ID.fullmatch(m[2]) for m in made) and made[0][2] != made[1][2]  # the form the templates take
    _, made = _read(call("name_it", '{"name": "Ann"}', "short"))  # an id the templates refuse is not kept
    assert ID.fullmatch(made[0][2]) and made[0][2] != "short"
    _, made = _read(call("name_it", ' {"name": "Ann"}', " xyzXYZ789 "))
    assert made[0][2] == "xyzXYZ789"
    twice = call("name_it", '{"name": "A"}', "abcDEF123") + call("name_it", '{"name": "B"}', "abcDEF123")
    ids = [m[2] for m in _read(twice)[1]]
    assert ids[0] == "abcDEF123" and ID.fullmatch(ids[1]) and ids[1] != ids[0]  # each call's id its own
    long = "[TOOL_CALLS]a" + " " * 20_000 + "b"
    assert _read(long) == (long, [])  # read in one pass
    one = call("name_it", '{"name": "Ann"}')
    assert len(_read(one + one, parallel=False)[1]) == 1
    for text in [
        "Plain [TOOL_CALLS] text",  # no call after it
        call("rename", '{"name": "Ann"}'),  # not a listed function
        call("name_it", '["Ann"]'),  # arguments that are no object
        call("name_it", '{"name": "Ann"'),  # arguments that do not end
        '[TOOL_CALLS]name_it{"name": "Ann"}',  # no [ARGS]
    ]:
        assert _read(text) == (text, []), text


def test_an_answer_cut_short_keeps_its_whole_calls() -> None:
    one = call("name_it", '{"name": "Ann"}')
    for tail in ["[TOOL_", "[TOOL_CALLS]", "[TOOL_CALLS]search[AR", '[TOOL_CALLS]search[ARGS]{"query": "c']:
        content, made = _read(f"Here.{one}{tail}", cut=True)
        assert content == "Here." and [m[:2] for m in made] == [("name_it", {"name": "Ann"})], tail
    assert _read(f"Here.{one}[TOOL_CALLS]search[AR")[1] == []  # an answer that ended so is no call
    content, made = _read(f"Here.{one} Done.")  # text after a call follows on a line of its own
    assert content == "Here.\nDone." and [m[:2] for m in made] == [("name_it", {"name": "Ann"})]


def test_a_stream_holds_back_from_where_a_call_may_start() -> None:
    from llamacffi.server import calls

    reader = calls.Reader(_tools(), "mistral", True)
    assert reader.held_from("Hello") == 5
    assert reader.held_from("Hello [TOOL") == 5  # may be a call: held, and the blank before it
    assert reader.held_from("Hello [b]") == 9
    assert reader.held_from("Hi[TOOL_CALLS]search") == 2
    assert calls.Reader(_tools("required"), "mistral", True).held_from("Hi") == 0


def test_the_grammar_forces_calls_in_the_syntax(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import mistral

    vocab = smollm2.vocab
    g = mistral.grammar(_tools("required"), None, True)
    ok = call("search", '{"query": "cats", "limit": 20, "order": "old", "filter": {"tag": "pets"}}')
    assert accepts(vocab, g, ok)
    assert accepts(vocab, g, call("search", '{"query": "", "limit": 1}', "a1B2c3D4e"))
    assert accepts(vocab, g, ok + call("name_it", '{"name": "Ann"}'))  # parallel
    for wrong in [
        call("search", '{"limit": 2}'),  # a required parameter missing
        call("search", '{"query": "x", "limit": 21}'),
        call("search", '{"query": "x", "limit": 2, "day": "2026-02-30"}'),
        call("search", '{"query": "x", "limit": 2, "other": 1}'),
        call("name_it", '{"name": "Annabel"}'),  # longer than maxLength
        call("name_it", '{"name": "Ann"}', "a1b2"),  # an id of another form
        call("rename", '{"name": "Ann"}'),
        "Sure." + ok,
        ok + " Done.",
    ]:
        assert not accepts(vocab, g, wrong), wrong
    one = mistral.grammar(_tools({"type": "function", "function": {"name": "name_it"}}), None, True)
    assert accepts(vocab, one, call("name_it", '{"name": "Ann"}'))
    assert not accepts(vocab, one, ok)
    assert not accepts(vocab, one, call("name_it", '{"name": "A"}') + call("name_it", '{"name": "B"}'))
    for name in ["a\nb", " lead", "a[ARGS]b"]:  # names the syntax cannot write
        tool = {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        with pytest.raises(Exception, match="cannot write the name") as e:
            mistral.grammar(_tools("required", [tool]), None, True)
        assert e.value.status == 400  # type: ignore[attr-defined]
    single = mistral.grammar(_tools("required"), None, False)
    assert accepts(vocab, single, ok) and not accepts(vocab, single, ok + ok)
    answer = llamacffi.grammar.from_json_schema({"type": "integer"})
    auto = mistral.grammar(_tools("auto"), answer, True)
    assert accepts(vocab, auto, "42") and accepts(vocab, auto, call("name_it", '{"name": "Ann"}'))
    assert not accepts(vocab, auto, "Hi")


def test_many_functions_share_the_rules_of_their_arguments() -> None:
    from llamacffi.server import mistral

    tools = [
        {"type": "function", "function": {"name": f"f{i}", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "array"}}}}}
        for i in range(300)
    ]  # fmt: skip
    lines = mistral.grammar(_tools("required", tools), None, True).count("\n")
    assert lines < 300 * 6  # about five rules a function; each function compiled apart would need 29


def test_the_prompt_sets_the_markers_the_answer_writes_out(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import completions, mistral, requests
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig
    from test_tool_calls import TEMPLATES, WEATHER

    template = (TEMPLATES / "unsloth-mistral-Devstral-Small-2507.jinja").read_text()
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER]}
    with LlamaCppService(LocalBackendConfig(threads=1)) as svc:
        model = svc.load_model("smollm2-135m", config=ModelConfig(context_size=2048, chat_template=template))
        text, opts, reader, _ = completions.chat_prompt(model, requests.parse_chat(body))
        assert opts.preserved_tokens == mistral.MARKERS and reader is not None and reader.syntax == "mistral"
        assert text.endswith("[INST]Weather?[/INST]") and "[AVAILABLE_TOOLS]" in text
        plain = {**body, "tools": None}
        assert completions.chat_prompt(model, requests.parse_chat(plain))[1].preserved_tokens == ()


def test_special_tokens_are_written_out_where_preserved() -> None:
    """``<|im_start|>`` is one of SmolLM2's control tokens, which render as nothing unless preserved."""
    from conftest import THREADS
    from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig

    forced = GenerationOptions(max_tokens=3, temperature=0, raw=True, logit_bias={1: 100.0})  # <|im_start|>
    # as the options cross to a worker process
    kept = GenerationOptions.from_dict({**forced.to_dict(), "preserved_tokens": ["<|im_start|>", "[X]"]})
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        model = svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=2))
        assert model.generate("Hi", kept) == "<|im_start|>" * 3
        assert model.generate("Hi", forced) == ""
        assert "".join(model.generate_stream("Hi", kept)) == "<|im_start|>" * 3


def test_a_special_token_is_found_by_its_text(smollm2: llamacffi.Model) -> None:
    vocab = smollm2.vocab
    assert vocab.special_token("<|im_start|>") == 1 and vocab.special_token("<|im_end|>") == 2
    assert vocab.special_token("hello") is None  # an ordinary token
    assert vocab.special_token("<|im_start|><|im_start|>") is None
    assert vocab.special_token("[TOOL_CALLS]") is None  # ordinary text to this vocabulary
    decoder = vocab.stream(preserved=[1])
    assert decoder.feed(1) + decoder.feed(2) + decoder.feed(1) == "<|im_start|><|im_start|>"


def test_preserved_tokens_are_checked() -> None:
    from llamacffi.service import GenerationOptions, InvalidConfigError

    assert GenerationOptions(preserved_tokens=["[A]"]).preserved_tokens == ("[A]",)  # type: ignore[arg-type]
    for bad in ["[A]", [""], [1], ["x"] * 33, ["x" * 257], ["\ud800"]]:
        with pytest.raises(InvalidConfigError, match="preserved_tokens"):
            GenerationOptions(preserved_tokens=bad)  # type: ignore[arg-type]


# ---- a JSON list of calls ----------------------------------------------------------------------------------------


def _listed(text: str, style: Any, parallel: bool = True, cut: bool = False) -> tuple[str | None, list[Any]]:
    from llamacffi.server import json_list

    content, made = json_list.read(text, _tools(), parallel, cut, style)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"]), c["id"]) for c in made]


def test_a_json_list_of_calls_is_read() -> None:
    from llamacffi.server import json_list

    nemo, nemotron = json_list.NEMO, json_list.NEMOTRON
    two = '[{"name": "name_it", "arguments": {"name": "Ann"}, "id": "abcDEF123"}, {"name": "name_it", "arguments": {}}]'
    content, made = _listed(f"Sure.[TOOL_CALLS]{two}", nemo)
    assert content == "Sure." and [m[:2] for m in made] == [("name_it", {"name": "Ann"}), ("name_it", {})]
    assert made[0][2] == "abcDEF123" and ID.fullmatch(made[1][2])  # ids as Nemo's template takes them back
    assert len(_listed(f"[TOOL_CALLS]{two}", nemo, parallel=False)[1]) == 1
    content, made = _listed(f"<TOOLCALL>{two}</TOOLCALL>\nDone.", nemotron)
    assert content == "\nDone." and len(made) == 2 and made[1][2].startswith("call_")
    for text in [
        "[TOOL_CALLS]Plain",
        '[TOOL_CALLS][{"name": "rename", "arguments": {}}]',
        '[TOOL_CALLS][{"name": "name_it", "arguments": {}, "other": 1}]',
        '[TOOL_CALLS][{"name": "name_it", "arguments": []}]',
        "[TOOL_CALLS][]",
        '[TOOL_CALLS]{"name": "name_it", "arguments": {}}',
    ]:
        assert _listed(text, nemo) == (text, []), text
    assert _listed(f"<TOOLCALL>{two}", nemotron) == (f"<TOOLCALL>{two}", [])  # not closed
    # cut short: the calls the list finished are kept
    content, made = _listed(f"Sure.[TOOL_CALLS]{two[:-20]}", nemo, cut=True)
    assert content == "Sure." and [m[:2] for m in made] == [("name_it", {"name": "Ann"})]
    assert _listed(f"<TOOLCALL>{two}</TOOL", nemotron, cut=True)[1]
    assert _listed("Sure.[TOOL_CA", nemo, cut=True) == ("Sure.", [])
    unlisted = 'Hi [TOOL_CALLS][{"name": "rename", "arguments": {}}, {"name": "name_it", "argu'
    assert _listed(unlisted, nemo, cut=True) == (unlisted, [])  # a finished item that is no call: no call
    assert _listed('[TOOL_CALLS][{"name": "na', nemo, cut=True) == ("", [])


def test_the_grammar_forces_a_json_list_of_calls(smollm2: llamacffi.Model) -> None:
    from llamacffi.server import json_list

    vocab = smollm2.vocab
    nemo = json_list.grammar(_tools("required"), None, True, json_list.NEMO)
    one = '{"name": "name_it", "arguments": {"name": "Ann"}}'
    assert accepts(vocab, nemo, f"[TOOL_CALLS][{one}]")
    assert accepts(vocab, nemo, f'[TOOL_CALLS][{one[:-1]}, "id": "a1B2c3D4e"}}, {one}]')
    for wrong in [f"[TOOL_CALLS]{one}", f'[TOOL_CALLS][{one[:-1]}, "id": "a1"}}]', "[TOOL_CALLS][]", "Sure."]:
        assert not accepts(vocab, nemo, wrong), wrong
    single = json_list.grammar(_tools("required"), None, False, json_list.NEMOTRON)
    assert accepts(vocab, single, f"<TOOLCALL>[{one}]</TOOLCALL>")
    assert not accepts(vocab, single, f"<TOOLCALL>[{one}, {one}]</TOOLCALL>")
    assert not accepts(vocab, single, f"<TOOLCALL>[{one}]")


def test_the_logprobs_write_out_the_preserved_tokens(smollm2: llamacffi.Model) -> None:
    import types

    from llamacffi.server import completions

    def job(kept: tuple[str, ...]) -> Any:
        model = types.SimpleNamespace(llama_model=smollm2)
        parsed = types.SimpleNamespace(options=types.SimpleNamespace(preserved_tokens=kept), logprobs=0)
        return types.SimpleNamespace(model=model, parsed=parsed)

    assert completions._piece(job(("<|im_start|>",)))(1) == b"<|im_start|>"
    assert completions._piece(job(()))(1) == b""  # a control token, as it renders by default


def test_numbers_that_json_does_not_have_make_no_call() -> None:
    """Python's decoder takes NaN and Infinity; arguments holding them would be no JSON to a client."""
    from llamacffi.server import calls, json_list

    for syntax, text in [
        ("hermes", '<tool_call>\n{"name": "name_it", "arguments": {"name": NaN}}\n</tool_call>'),
        ("mistral", '[TOOL_CALLS]name_it[ARGS]{"name": Infinity}'),
        ("mistral-nemo", '[TOOL_CALLS][{"name": "name_it", "arguments": {"name": -Infinity}}]'),
        (None, '{"name": "name_it", "arguments": {"name": NaN}}'),
    ]:
        assert calls.Reader(_tools(), syntax, True).read(text) == (text, []), syntax  # type: ignore[arg-type]
    assert json_list.NEMO.ids
