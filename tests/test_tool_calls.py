"""Tool calls in a chat template's own syntax: which of llama.cpp's templates teach the Hermes syntax, the template
rendering tools, calls and results, the grammars that force the blocks, reading them back (whole and streamed), and
the server end to end with a Hermes template."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamacffi
from llamacffi import InvalidArgumentError
from llamacffi.chat import ChatTemplateError, apply_template, tool_syntax
from llamacffi.grammar import from_json_schema
from llamacffi.grammar.combine import either, tagged
from test_grammar import accepts

TEMPLATES = Path(os.environ.get("LLAMACFFI_LLAMA_CPP_DIR") or Path(__file__).parent.parent / "vendor" / "llama.cpp")
TEMPLATES /= "models/templates"
needs_templates = pytest.mark.skipif(not TEMPLATES.is_dir(), reason="llama.cpp's templates are not there (not built)")

# llama.cpp's templates that write <tool_call>{"name": ..., "arguments": {...}}</tool_call>
HERMES = {
    "Bielik-11B-v3.0-Instruct",
    "MiMo-VL",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "Qwen-QwQ-32B",
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Reka-Edge",
    "ibm-granite-granite-4.0",
    "ibm-granite-granite-4.1",
}

LLAMA3 = {"meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"}

# <tool_call><function=NAME><parameter=NAME>value</parameter></function></tool_call>
QWEN_XML = {"NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "Qwen3-Coder", "Qwen3.5-4B", "StepFun3.5-Flash"}

# [TOOL_CALLS]NAME[ARGS]{...}, with [CALL_ID]ID before [ARGS] in Mistral Small 3.2's
MISTRAL = {
    "Mistral-Small-3.2-24B-Instruct-2506",
    "mistralai-Ministral-3-14B-Reasoning-2512",
    "unsloth-mistral-Devstral-Small-2507",
}

# <tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value></tool_call>
GLM = {
    "GLM-4.6",
    "GLM-4.7-Flash",
    "Spark2.5",
    "inclusionai-ling-3.0-flash",
    "poolside-Laguna-S-2.1",
    "poolside-Laguna-XS-2.1",
    "poolside-Laguna-XS.2",
}

# a JSON list of calls: [TOOL_CALLS][...] (with ids), <TOOLCALL>[...]</TOOLCALL>
MISTRAL_NEMO = {"mistralai-Mistral-Nemo-Instruct-2407"}
NEMOTRON = {"NVIDIA-Nemotron-Nano-v2"}

# <seed:tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></seed:tool_call>
SEED = {"ByteDance-Seed-OSS"}

# <|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{...}
HARMONY = {"openai-gpt-oss-120b"}

# <minimax:tool_call><invoke name="NAME"><parameter name="KEY">VALUE</parameter></invoke>...</minimax:tool_call>
MINIMAX = {"MiniMax-M2"}

# the same elements in DeepSeek's DSML tags: <｜DSML｜function_calls> (V3.2), <｜DSML｜tool_calls> (V4)
DEEPSEEK_V3_2 = {"deepseek-ai-DeepSeek-V3.2"}
DEEPSEEK_V4 = {"deepseek-ai-DeepSeek-V4", "deepseek-ai-DeepSeek-V4-Flash-0731"}

# <|tool_call>call:NAME{KEY:VALUE,...}<tool_call|>, strings between <|"|> marks
GEMMA4 = {"google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved"}

# per syntax: a template of it, and how it writes CALLED's call and result
WRITTEN = {
    "hermes": (
        "Qwen-Qwen2.5-7B-Instruct",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "<tool_response>\n18 degrees, sunny\n</tool_response>",
    ),
    "qwen-xml": (
        "Qwen3-Coder",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        "<tool_response>\n18 degrees, sunny\n</tool_response>",
    ),
    "mistral": (
        "Mistral-Small-3.2-24B-Instruct-2506",
        '[TOOL_CALLS]get_weather[CALL_ID]call00001[ARGS]{"city": "Paris"}',
        "[TOOL_RESULTS]call00001[TOOL_CONTENT]18 degrees, sunny[/TOOL_RESULTS]",
    ),
    "glm": (
        "GLM-4.6",
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
        "<tool_response>\n18 degrees, sunny\n</tool_response>",
    ),
    "mistral-nemo": (
        "mistralai-Mistral-Nemo-Instruct-2407",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}]',
        '[TOOL_RESULTS]{"content": 18 degrees, sunny, "call_id": "call00001"}[/TOOL_RESULTS]',
    ),
    "seed": (
        "ByteDance-Seed-OSS",
        "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n</seed:tool_call>",
        "<seed:bos>tool\n18 degrees, sunny<seed:eos>",
    ),
    "harmony": (
        "openai-gpt-oss-120b",
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"18 degrees, sunny"<|end|>',
    ),
    "minimax": (
        "MiniMax-M2",
        '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n</invoke>\n'
        "</minimax:tool_call>",
        "<response>18 degrees, sunny</response>",
    ),
    "deepseek-v3.2": (
        "deepseek-ai-DeepSeek-V3.2",
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="city" string="true">'
        "Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        "<result>18 degrees, sunny</result>",
    ),
    "deepseek-v4": (
        "deepseek-ai-DeepSeek-V4",
        '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="city" string="true">'
        "Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
        "<tool_result>18 degrees, sunny</tool_result>",
    ),
    "gemma4": (
        "google-gemma-4-31B-it",
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>',
        '<|tool_response>response:get_weather{value:<|"|>18 degrees, sunny<|"|>}<tool_response|>',
    ),
    "llama3": (
        "meta-llama-Llama-3.1-8B-Instruct",
        '<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        '<|start_header_id|>ipython<|end_header_id|>\n\n"18 degrees, sunny"<|eot_id|>',
    ),
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
# ids of 9 letters and digits, the only ones some of Mistral's templates take
CALLED = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "18 degrees, sunny"},
]


def qwen() -> str:
    return (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()


# ---- the template ------------------------------------------------------------------------------------------------


@needs_templates
def test_the_templates_of_llama_cpp_with_a_syntax_read_here_are_found() -> None:
    found: dict[str, set[str]] = {}
    for p in TEMPLATES.glob("*.jinja"):
        syntax = tool_syntax(p.read_text(), eos_token="</s>")
        if syntax is not None:
            found.setdefault(syntax, set()).add(p.stem)
    assert found == {"glm": GLM, "harmony": HARMONY, "hermes": HERMES, "llama3": LLAMA3, "mistral": MISTRAL,
                     "mistral-nemo": MISTRAL_NEMO, "nemotron": NEMOTRON, "qwen-xml": QWEN_XML,
                     "seed": SEED, "minimax": MINIMAX, "deepseek-v3.2": DEEPSEEK_V3_2,
                     "deepseek-v4": DEEPSEEK_V4, "gemma4": GEMMA4}  # fmt: skip


def test_templates_without_tools_have_no_syntax() -> None:
    assert tool_syntax("chatml") is None
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert tool_syntax(plain) is None


@needs_templates
@pytest.mark.parametrize("syntax", sorted(WRITTEN))
def test_the_template_renders_tools_calls_and_results(syntax: str) -> None:
    name, call, result = WRITTEN[syntax]
    text = apply_template((TEMPLATES / f"{name}.jinja").read_text(), CALLED, tools=[WEATHER])
    assert "The weather in a city." in text  # the function described by the template
    assert call in text and result in text


@needs_templates
def test_tools_need_a_template_that_renders_them() -> None:
    assert not issubclass(ChatTemplateError, InvalidArgumentError)
    with pytest.raises(InvalidArgumentError, match="Jinja"):
        apply_template("chatml", [("user", "Hi")], tools=[WEATHER])
    with pytest.raises(InvalidArgumentError, match="Jinja"):
        apply_template("chatml", CALLED)
    named = [{"role": "user", "content": "Hi", "name": "ann"}, {"role": "tool", "content": "18", "tool_call_id": "c"}]
    assert apply_template("chatml", named) == apply_template("chatml", [("user", "Hi"), ("tool", "18")])
    for bad in ["f", WEATHER, [1]]:
        with pytest.raises(InvalidArgumentError, match="tools"):
            apply_template(qwen(), [("user", "Hi")], tools=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="tool_calls"):
        apply_template(qwen(), [{"role": "assistant", "content": "", "tool_calls": "x"}])
    with pytest.raises(InvalidArgumentError, match="tool_calls"):
        apply_template(qwen(), [{"role": "assistant", "content": "", "tool_calls": [1]}])
    with pytest.raises(InvalidArgumentError, match="NUL"):
        apply_template(qwen(), [{"role": "tool", "content": "x", "tool_call_id": "a\0"}])


@needs_templates
def test_the_model_reports_its_templates_syntax(smollm2: llamacffi.Model) -> None:
    assert smollm2.tool_syntax() is None  # SmolLM2's own template knows no tools
    assert smollm2.tool_syntax(template=qwen()) == "hermes"
    text = smollm2.apply_chat_template(CALLED, template=qwen(), tools=[WEATHER])
    assert "<tool_response>" in text


@needs_templates
def test_the_service_formats_tools_or_says_why_not(service: Any, served: Any) -> None:
    from llamacffi.service import GenerationOptions, InvalidConfigError, ModelConfig

    text = served.format_chat(CALLED, GenerationOptions(system="Be brief."), tools=[WEATHER])
    _, call, result = WRITTEN[served.tool_syntax]
    assert "The weather in a city." in text and call in text and result in text
    # Mistral Nemo's template writes the system message into the last user turn, where that ends the conversation
    assert "Be brief." in text or served.tool_syntax == "mistral-nemo"
    assert served.format_chat([("user", "Hi")], GenerationOptions()) == served.format_chat(
        [{"role": "user", "content": "Hi"}], GenerationOptions()
    )
    only_calls = [CALLED[0], {**CALLED[1], "content": None}, CALLED[2]]  # as OpenAI's API writes such a turn
    assert served.format_chat(only_calls, GenerationOptions(), tools=[WEATHER]) == served.format_chat(
        CALLED, GenerationOptions(), tools=[WEATHER]
    )
    with pytest.raises(InvalidConfigError, match="messages"):
        served.format_chat([{"role": "user"}], GenerationOptions())
    with pytest.raises(InvalidConfigError, match="tool_calls"):
        served.format_chat([{"role": "assistant", "content": "", "tool_calls": 5}], GenerationOptions())
    chatml = service.load_model("smollm2-135m", config=ModelConfig(context_size=64, chat_template="chatml"))
    assert chatml.tool_syntax is None
    with pytest.raises(InvalidConfigError, match="Jinja"):
        chatml.format_chat([("user", "Hi")], GenerationOptions(), tools=[WEATHER])
    chatml.close()


# ---- grammars ----------------------------------------------------------------------------------------------------

CITY = from_json_schema({"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                         "required": ["city"], "additionalProperties": False})  # fmt: skip
NUMBER = from_json_schema({"type": "integer", "minimum": 0, "maximum": 99})


def test_tagged_and_either_are_grammars_llama_cpp_runs(smollm2: llamacffi.Model) -> None:
    vocab = smollm2.vocab
    one = tagged(CITY, "<a>\n", "\n</a>")
    assert accepts(vocab, one, '<a>\n{"city": "Paris"}\n</a>')
    assert not accepts(vocab, one, '{"city": "Paris"}')
    assert not accepts(vocab, one, '<a>\n{"city": "Paris"}\n</a>\n<a>\n{"city": "Rome"}\n</a>')
    many = tagged(CITY, "<a>\n", "\n</a>", separator="\n")
    assert accepts(vocab, many, '<a>\n{"city": "Paris"}\n</a>\n<a>\n{"city": "Rome"}\n</a>')
    assert not accepts(vocab, many, '<a>\n{"city": "Paris"}\n</a><a>\n{"city": "Rome"}\n</a>')
    both = either(many, NUMBER)
    assert accepts(vocab, both, "42") and accepts(vocab, both, '<a>\n{"city": "Rome"}\n</a>')
    assert not accepts(vocab, both, "420") and not accepts(vocab, both, '{"city": "Rome"}')
    both = either(NUMBER, CITY)  # the same rule names on both sides are kept apart
    assert accepts(vocab, both, '{"city": "Rome"}') and accepts(vocab, both, "7")
    assert not accepts(vocab, both, '{"city": "Rome and Paris"}')
    with pytest.raises(ValueError, match="root"):
        tagged("x ::= [a]\nroot ::= x\n", "<", ">")


# ---- reading the blocks ------------------------------------------------------------------------------------------


def _tools(choice: Any = "auto") -> Any:
    from llamacffi.server import structured

    return structured.parse_tools([WEATHER, TIME], choice)


def test_blocks_are_read_as_calls() -> None:
    from llamacffi.server import hermes

    tools = _tools()
    paris = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    rome = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call>'

    def read(text: str, parallel: bool = True) -> tuple[str | None, list[tuple[str, Any]]]:
        content, calls = hermes.read(text, tools, parallel)
        assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
        return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]

    assert read("Paris is sunny.") == ("Paris is sunny.", [])
    assert read(paris) == (None, [("get_weather", {"city": "Paris"})])
    assert read(f"{paris}\n{rome}\n") == (None, [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Rome"})])
    assert read(f"{paris}\n{rome}", parallel=False) == (None, [("get_weather", {"city": "Paris"})])
    assert read(f"Let me look.\n\n{paris}\nDone.") == ("Let me look.\nDone.", [("get_weather", {"city": "Paris"})])
    tagged = '<tool_call>\n{"name": "get_time", "arguments": {"city": "</tool_call>"}}\n</tool_call>'
    assert read(tagged) == (None, [("get_time", {"city": "</tool_call>"})])  # the tag inside a string is text
    for wrong in [
        paris.replace("get_weather", "get_rain"),  # not a listed function
        paris.replace("\n</tool_call>", " x</tool_call>"),  # more than the call in the block
        paris.replace("}}\n", "}} }\n"),
        paris.replace("</tool_call>", ""),  # not closed
        paris.replace('"city"', "city"),  # not JSON
        f'{paris}\n<tool_call>\n{{"name": "get_time"}}\n</tool_call>',  # one block of two is no call
    ]:
        assert read(wrong) == (wrong, [])


def test_llama3_answers_are_one_call_object() -> None:
    from llamacffi.server import calls

    reader = calls.Reader(_tools(), "llama3", True)
    content, made = reader.read('{"name": "get_time", "parameters": {"city": "Rome"}}')
    assert content is None and [(c["function"]["name"], c["function"]["arguments"]) for c in made] == [
        ("get_time", '{"city": "Rome"}')
    ]
    for text in [
        '{"name": "get_time", "arguments": {"city": "Rome"}}',
        "Rome.",
        '{"name": "get_rain", "parameters": {}}',
    ]:
        assert reader.read(text) == (text, [])
    assert reader.held_from(' {"na') == 0 and reader.held_from("Rome") is None


def test_a_stream_holds_back_from_where_a_block_may_start() -> None:
    from llamacffi.server import calls, hermes

    assert hermes.held_from("Hello") == 5
    assert hermes.held_from("Hello <tool") == 5  # may be a block: held, and the blank before it
    assert hermes.held_from("Hello <b>") == 9
    assert hermes.held_from("Hello\n\n") == 5
    assert hermes.held_from("Hi <tool_call>\n{") == 2
    assert hermes.held_from("<") == 0
    reader = calls.Reader(_tools(), "hermes", True)
    assert reader.held_from("  ") == 0 and reader.held_from("Hi <") == 2
    forced = calls.Reader(_tools("required"), "hermes", True)
    assert forced.held_from("Hi") == 0  # a forced call holds everything
    plain = calls.Reader(_tools(), None, True)
    assert plain.held_from(' {"name"') == 0 and plain.held_from("Hi") is None


@pytest.mark.parametrize("syntax", ["deepseek-v4", "gemma4", "glm", "hermes", "minimax", "mistral", "qwen-xml", "seed"])
def test_an_answer_cut_short_keeps_its_whole_calls(syntax: str) -> None:
    from llamacffi.server import calls

    one = {
        "hermes": '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call>',
        "qwen-xml": "<tool_call>\n<function=get_time>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>",
        "mistral": '[TOOL_CALLS]get_time[ARGS]{"city": "Rome"}',
        "glm": "<tool_call>get_time\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>",
        "seed": (
            "<seed:tool_call>\n<function=get_time>\n<parameter=city>Rome</parameter>\n</function>\n</seed:tool_call>"
        ),
        "minimax": (
            '<minimax:tool_call>\n<invoke name="get_time">\n<parameter name="city">Rome</parameter>\n</invoke>\n'
            "</minimax:tool_call>"
        ),
        "deepseek-v4": (
            '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_time">\n<｜DSML｜parameter name="city" string="true">Rome'
            "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
        ),
        "gemma4": '<|tool_call>call:get_time{city:<|"|>Rome<|"|>}<tool_call|>',
    }[syntax]
    reader = calls.Reader(_tools(), syntax, True)  # type: ignore[arg-type]
    rome = [("get_time", '{"city": "Rome"}')]
    assert len(one) > 40
    for text, content in [
        (f"Looking.\n{one}\n{one[:30]}", "Looking."),  # a second block left open: read whole, no call
        (f"{one}\n{one[:7]}", None),  # the start of an opening tag
        (f"{one}\n{one[:11]}", None),  # the opening tag, or its start
        (f"{one} Done", "\nDone"),  # text after a block on a line of its own
    ]:
        got, made = reader.read(text, cut=True)
        assert got == content and [(c["function"]["name"], c["function"]["arguments"]) for c in made] == rome
    assert reader.read(f"{one}\n{one[:30]}")[1] == []
    assert reader.read(f"Plain text {one[0]}", cut=True) == ("Plain text ", [])
    assert reader.read(f"Cut {one[:40]}", cut=True) == ("Cut ", [])
    explained = f"Example: {one.replace('get_time', 'nope')}\nThen more."  # a closed block that is no call
    assert reader.read(explained, cut=True) == (explained, [])
    opened = one[: one.index("Rome")] + "</tool_call>"  # a string in the block left open holds the closing tag
    got, made = reader.read(f"{one}\n{opened}", cut=True)
    assert got is None and [(c["function"]["name"], c["function"]["arguments"]) for c in made] == rome


# ---- the server with a Hermes template ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[Any]:
    from conftest import THREADS
    from llamacffi.service import LlamaCppService, LocalBackendConfig

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield svc


@pytest.fixture(scope="module", params=sorted(WRITTEN))
def served(service: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """SmolLM2 with the template of each syntax (their special tokens are plain text to SmolLM2)."""
    from llamacffi.service import ModelConfig

    if not TEMPLATES.is_dir():
        pytest.skip("llama.cpp's templates are not there (not built)")
    template = (TEMPLATES / f"{WRITTEN[request.param][0]}.jinja").read_text()
    model = service.load_model(
        "smollm2-135m", config=ModelConfig(context_size=1024, parallel=2, chat_template=template)
    )
    assert model.tool_syntax == request.param
    yield model
    model.close()


@pytest.fixture(scope="module")
def client(served: Any) -> Iterator[Any]:
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    from llamacffi.server import create_app

    with TestClient(create_app({"qwenish": served}), raise_server_exceptions=False) as c:
        yield c


ASK = [{"role": "user", "content": "What is the weather in Paris and the time in Rome?"}]


def _chat(client: Any, **kw: Any) -> dict[str, Any]:
    body = {"model": "qwenish", "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 80, "temperature": 0, **kw}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json()["choices"][0])


def _streamed(client: Any, **kw: Any) -> tuple[str, list[dict[str, Any]], str]:
    body = {"model": "qwenish", "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 80, "temperature": 0,
            "stream": True, **kw}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ") and x != "data: [DONE]"]
    deltas = [c for e in events for c in e["choices"]]
    text = "".join(c["delta"].get("content") or "" for c in deltas)
    made = [t for c in deltas for t in c["delta"].get("tool_calls", [])]
    (reason,) = [c["finish_reason"] for c in deltas if c["finish_reason"]]
    return text, made, reason


def _validated(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    jsonschema = pytest.importorskip("jsonschema")
    out = []
    for c in calls:
        args = json.loads(c["function"]["arguments"])
        fn = {"get_weather": WEATHER, "get_time": TIME}[c["function"]["name"]]["function"]
        jsonschema.validate(args, fn["parameters"])
        out.append((c["function"]["name"], args))
    return out


def _room(served: Any) -> dict[str, Any]:
    """What a call needs here: DSML's tags are many tokens of SmolLM2's vocabulary, and in the thinking block
    MiniMax M2's template opens, SmolLM2 thinks to its length (the block is closed empty instead)."""
    if served.tool_syntax == "minimax":
        return {"reasoning_format": "none"}
    return {"max_tokens": 160} if served.tool_syntax.startswith("deepseek") else {}


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_take_the_templates_syntax(client: Any, served: Any, parallel: bool) -> None:
    room = _room(served)
    # both answers compared below start from the prompt's own cache, which this first request leaves (a prefix
    # cached from another prompt's batches may tip a near tie)
    _chat(client, tool_choice="required", parallel_tool_calls=parallel, **{**room, "max_tokens": 1})
    whole = _chat(client, tool_choice="required", parallel_tool_calls=parallel, **room)
    # SmolLM2 knows neither the XML syntaxes nor Mistral's: given the choice, it writes call after call to its length
    endless = parallel and served.tool_syntax in (
        "qwen-xml", "glm", "seed", "mistral", "mistral-nemo", "minimax", "deepseek-v3.2", "deepseek-v4", "gemma4"
    )  # fmt: skip
    ends = {"tool_calls", "length"} if endless else {"tool_calls"}
    assert whole["finish_reason"] in ends and whole["message"]["content"] is None
    made = _validated(whole["message"]["tool_calls"])
    assert made and (parallel or len(made) == 1)
    assert len(made) == 1 or served.tool_syntax != "llama3"  # Llama 3 makes one call an answer
    text, streamed, reason = _streamed(client, tool_choice="required", parallel_tool_calls=parallel, **room)
    assert reason == whole["finish_reason"] and not text
    assert [t["index"] for t in streamed] == list(range(len(made)))
    assert _validated(streamed) == made


def test_a_named_call_and_the_conversation_after_it(client: Any, served: Any) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    whole = _chat(client, tool_choice=named, **_room(served))
    ((name, _args),) = _validated(whole["message"]["tool_calls"])
    assert name == "get_time"
    follow = _chat(
        client,
        max_tokens=16,
        messages=[
            *ASK,
            whole["message"],
            {"role": "tool", "tool_call_id": whole["message"]["tool_calls"][0]["id"], "content": "10:15"},
        ],
    )
    assert follow["finish_reason"] in ("stop", "length", "tool_calls")


def test_the_prompt_is_the_templates_own(served: Any) -> None:
    from llamacffi.server import completions, requests

    body = {
        "model": "qwenish",
        "tools": [WEATHER],
        "messages": [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call00001", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ]},
            {"role": "tool", "tool_call_id": "call00001", "content": "18 degrees"},
        ],
    }  # fmt: skip
    job = completions.prepare("qwenish", served, requests.parse_chat(body), True)
    (text,) = job.texts
    _, call, result = WRITTEN[served.tool_syntax]
    assert call in text and result.replace("18 degrees, sunny", "18 degrees") in text
    assert "The weather in a city." in text


def test_auto_with_a_json_answer_is_a_call_or_the_document(client: Any, served: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}
    whole = _chat(client, tool_choice="auto", response_format=fmt, **_room(served))
    if whole["message"].get("tool_calls"):  # "length" where it went on to write more blocks
        assert whole["finish_reason"] in ("tool_calls", "length")
        assert _validated(whole["message"]["tool_calls"])
    else:
        assert isinstance(json.loads(whole["message"]["content"]), int)


def test_auto_streams_what_it_answers_whole(client: Any) -> None:
    for messages in [ASK, [{"role": "user", "content": "Say hello."}]]:
        # a prefix cached from another prompt's batches may tip a near tie: both answers compared below start
        # from this prompt's own cache, which this first request leaves
        _chat(client, messages=messages, tool_choice="auto", max_tokens=1)
        whole = _chat(client, messages=messages, tool_choice="auto", max_tokens=48)
        text, made, reason = _streamed(client, messages=messages, tool_choice="auto", max_tokens=48)
        assert reason == whole["finish_reason"]
        assert text == (whole["message"]["content"] or "")
        assert [t["function"] for t in made] == [t["function"] for t in whole["message"].get("tool_calls") or []]


@pytest.mark.parametrize("size", [1, 3, 7, 200])
def test_a_stream_with_a_call_after_text_sends_the_text_then_the_call(size: int) -> None:
    from llamacffi.server import calls, completions
    from llamacffi.service.events import Chunk

    answer = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    reader = calls.Reader(_tools(), "hermes", True)
    held = completions._Held(1, reader)
    sent = ""
    for k in range(0, len(answer), size):
        text, _ = held.feed(0, Chunk(answer[k : k + size]))
        assert "<" not in (text or "")  # nothing of the block goes out as text
        sent += text or ""
    assert held.holding(0)
    rest, made, _ = held.finish(0)
    whole = reader.read(answer)
    assert sent + (rest or "") == whole[0] == "Let me look."
    assert [c["function"] for c in made] == [c["function"] for c in whole[1]]
    assert json.loads(made[0]["function"]["arguments"]) == {"city": "Paris"}
    text_only = "A <b>bold</b> answer.\n"
    held = completions._Held(1, reader)
    sent = "".join(held.feed(0, Chunk(text_only[k : k + size]))[0] or "" for k in range(0, len(text_only), size))
    rest, made, _ = held.finish(0)
    assert sent + (rest or "") == text_only and not made


@needs_templates
def test_serve_with_a_template_file_answers_the_openai_client_with_calls() -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from conftest import THREADS
    from server_process import ServeProcess

    template = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"
    proc = ServeProcess(["-m", "smollm2-135m", "--chat-template-file", str(template), "-np", "2", "-t", str(THREADS)])
    try:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="smollm2-135m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0
        )
        assert r.choices[0].finish_reason == "tool_calls"
        made = [(c.function.name, json.loads(c.function.arguments)) for c in r.choices[0].message.tool_calls]
        assert ("get_weather", {"city": "Paris"}) in made
        stream = client.chat.completions.create(
            model="smollm2-135m",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            temperature=0,
            stream=True,
        )
        parts: dict[int, list[str]] = {}
        names: dict[int, str] = {}
        for chunk in stream:
            for d in chunk.choices[0].delta.tool_calls or []:
                names[d.index] = d.function.name or names.get(d.index, "")
                parts.setdefault(d.index, []).append(d.function.arguments or "")
        assert [(names[i], json.loads("".join(parts[i]))) for i in sorted(parts)] == made
    finally:
        assert proc.stop() == 0, "".join(proc.log[-20:])
