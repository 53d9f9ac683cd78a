"""The server's app in this process at its edges: request shapes that must be 400s and not 500s, a fault of its own
answered in OpenAI's shape, long texts prepared off the event loop, and the fields and routes the README promises
beyond the common path (several prompts, text-completion log-probabilities, tools the model may call, the health of
a failed load)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from conftest import THREADS
from llamacffi import limits
from llamacffi.server import completions, create_app, requests, structured
from llamacffi.server.errors import APIError
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig, ModelType
from test_server import WEATHER as WEATHER_AND_UNIT

SMOL = "smol"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


# The weather function of the server tests, asking for the city only: SmolLM2 then answers "Call get_weather for
# Paris." with text that starts with a brace, which a stream holds back until the answer ends.
_FUNCTION = WEATHER_AND_UNIT["function"]
WEATHER = {
    "type": "function",
    "function": {
        "name": _FUNCTION["name"],
        "description": _FUNCTION["description"],
        "parameters": {**_FUNCTION["parameters"], "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"]},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, Any]]:
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield {
            "text": svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=4)),
            "embed": svc.load_model("smollm2-135m", ModelType.TEXT_EMBEDDING, ModelConfig(context_size=64)),
        }


@pytest.fixture(scope="module")
def client(models: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app({SMOL: models["text"]}, embeddings={"emb": models["embed"]}, cors_origins=["https://a.example"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client: TestClient, path: str, body: Any) -> Any:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(path, content=raw.encode("utf-8", "surrogatepass"), headers={"content-type": "application/json"})


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": SMOL, "messages": ASK, "max_tokens": 4, "temperature": 0, **kw}


DEEP = "[" * 5000 + "]" * 5000
BAD_SHAPES = [
    ("/v1/chat/completions", _chat(messages=[{"role": ["user"], "content": "hi"}]), "messages"),
    ("/v1/chat/completions", _chat(messages=[{"role": {"x": 1}, "content": "hi"}]), "messages"),
    (
        "/v1/chat/completions",
        _chat(messages=[*ASK, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": DEEP}}]}]),
        "messages",
    ),
    (
        "/v1/chat/completions",
        _chat(messages=[*ASK, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]),
        "messages",
    ),
    (
        "/v1/chat/completions",
        _chat(messages=[*ASK, {"role": "tool", "tool_call_id": {"a": 1}, "content": "x"}]),
        "messages",
    ),
    (
        "/v1/chat/completions",
        '{"model": "smol", "\\ud800": 1, "messages": [{"role": "user", "content": "hi"}]}',
        "\ud800",
    ),
    (
        "/v1/chat/completions",
        _chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object", "properties": {"\ud800": {"multipleOf": 3}}}},
            }
        ),
        "response_format",
    ),
    ("/v1/completions", {"model": SMOL, "prompt": "hi \ud800 there", "max_tokens": 2}, None),
    ("/v1/embeddings", {"model": ["emb"], "input": "a"}, "model"),
]


@pytest.mark.parametrize("path,body,param", BAD_SHAPES)
def test_odd_shapes_and_lone_surrogates_are_400(client: TestClient, path: str, body: Any, param: str | None) -> None:
    r = _post(client, path, body)
    assert r.status_code == 400, r.text
    error = json.loads(r.content)["error"]  # ASCII JSON, even where the message quotes a lone surrogate
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_a_text_a_template_cannot_carry_is_named_where_the_request_holds_it(client: TestClient) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    tools = [{"type": "function", "function": _FUNCTION}]  # described in a system message put first: no shift
    for messages, where in [
        ([*ASK, {"role": "assistant", "content": "a\0b"}], "messages[1].content holds a NUL"),
        ([{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}], "messages[0].content[0].text is not"),
        ([*ASK, {"role": "assistant", "tool_calls": [{**call, "id": "c\0"}]}], "messages[1].tool_calls[0].id holds"),
        (
            [*ASK, {"role": "assistant", "tool_calls": [{**call, "function": {"name": "f\0", "arguments": "{}"}}]}],
            "messages[1].tool_calls[0].function.name holds",
        ),
        (
            [
                *ASK,
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c\0", "content": "x"},
            ],
            "messages[2].tool_call_id holds",
        ),
    ]:
        for extra in [{}, {"tools": tools}]:
            r = _post(client, "/v1/chat/completions", _chat(messages=messages, **extra))
            assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
            assert r.json()["error"]["message"].startswith(where), r.text


def test_a_tool_s_description_is_text(client: TestClient) -> None:
    tool = {"type": "function", "function": {**_FUNCTION, "description": 5}}
    r = _post(client, "/v1/chat/completions", _chat(tools=[tool]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    assert r.json()["error"]["message"] == "tools[0].function.description must be a string"
    r = _post(
        client,
        "/v1/chat/completions",
        _chat(tools=[{"type": "function", "function": {**_FUNCTION, "description": None}}]),
    )
    assert r.status_code == 200, r.text


def test_a_text_too_long_names_the_field_that_holds_it(client: TestClient) -> None:
    long = "lorem ipsum " * 400
    for path, body, param in [
        ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": long}]), "messages"),
        ("/v1/completions", {"model": SMOL, "prompt": long}, "prompt"),
        ("/v1/embeddings", {"model": "emb", "input": [long]}, "input"),
    ]:
        r = _post(client, path, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)
        message = r.json()["error"]["message"]  # what a client can do: not a ModelConfig of the service's caller
        assert message.endswith("; shorten it") and "ModelConfig" not in message, message


def test_embedding_usage_counts_the_tokens_embedded(smollm2_path: Any) -> None:
    # A text cut to the context (truncate_prompt) counts as what was embedded, not as what was sent.
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        cut = svc.load_model(
            str(smollm2_path), ModelType.TEXT_EMBEDDING, ModelConfig(context_size=16, truncate_prompt=True)
        )
        with TestClient(create_app({}, embeddings={"cut": cut})) as c:
            texts = c.post("/v1/embeddings", json={"model": "cut", "input": ["word " * 40, "word"]})
            ids = c.post("/v1/embeddings", json={"model": "cut", "input": [list(range(1, 41)), [1, 2, 3]]})
    for r in (texts, ids):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == r.json()["usage"]["total_tokens"] <= 16 + 3
    assert ids.json()["usage"]["prompt_tokens"] == 16 + 3


def test_a_fault_of_the_server_is_a_500_in_openai_shape_with_cors_logged_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(job: Any, metrics: Any) -> Any:
        raise RuntimeError("a fault of the server's own")

    monkeypatch.setattr(completions, "respond", broken)
    with caplog.at_level(logging.ERROR):
        r = client.post("/v1/chat/completions", json=_chat(), headers={"origin": "https://a.example"})
    assert r.status_code == 500
    assert r.json()["error"] == {
        "message": "internal error (RuntimeError)",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["internal error (RuntimeError)"]
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json=_chat()).status_code == 200  # and it serves on


def test_a_long_text_is_prepared_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    prepare = completions.prepare

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return prepare(*args)

    monkeypatch.setattr(completions, "prepare", spy)
    short, long = "Hello", "word " * (limits.INLINE_TEXT_CHARS // 5 + 1)
    for text in (short, long):
        r = client.post("/v1/completions", json={"model": SMOL, "prompt": text, "max_tokens": 1})
        assert r.status_code in (200, 400), r.text
    loop_thread = threads[0]  # a short text: on the loop, with the other requests
    assert threads[1] != loop_thread


def test_a_schema_is_compiled_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A schema can take up to the compile budget (limits.GRAMMAR_MAX_WORK): no stream waits on it.
    threads: list[str] = []
    compile_schema = structured.from_json_schema

    def spy(schema: Any) -> str:
        threads.append(threading.current_thread().name)
        return compile_schema(schema)

    monkeypatch.setattr(structured, "from_json_schema", spy)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "maxLength": 3}}}
    assert client.post("/v1/chat/completions", json={**_chat(), "response_format": schema}).status_code == 200
    assert client.post("/v1/chat/completions", json={**_chat(), "tools": [WEATHER]}).status_code == 200
    loop_thread = _loop_thread(client)
    assert len(threads) >= 2 and loop_thread not in threads


def _loop_thread(client: TestClient) -> str:
    """The name of the thread the app's event loop runs in."""

    async def name() -> str:
        return threading.current_thread().name

    assert client.portal is not None
    return client.portal.call(name)


def test_a_model_answer_that_is_no_call_to_a_listed_function_stays_text() -> None:
    tools = structured.parse_tools([WEATHER], "auto")
    assert tools is not None
    for text in [
        '{"name": ["get_weather"], "arguments": {}}',
        '{"name": {"a": 1}, "arguments": {}}',
        '{"name": "get_time", "arguments": {}}',
        '{"name": "get_weather", "arguments": [1]}',
        '{"name": "get_weather", "arguments": {}, "extra": 1}',
        DEEP,
        "Paris.",
    ]:
        assert structured.as_call(text, tools) is None, text
    call = structured.as_call('{"name": "get_weather", "arguments": {"city": "Paris"}}', tools)
    assert call is not None and call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def _events(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        out.append(json.loads(line[6:]))
    return out


def test_tools_the_model_may_call_stream_as_they_answer_whole(client: TestClient) -> None:
    asks = [
        [{"role": "user", "content": "Call get_weather for Paris."}],  # held back: it starts with a brace
        [{"role": "user", "content": "Say hello."}],
    ]
    for messages in asks:
        body = _chat(messages=messages, tools=[WEATHER], tool_choice="auto", max_tokens=40, logprobs=True)
        whole = _post(client, "/v1/chat/completions", body).json()["choices"][0]
        events = _events(client, "/v1/chat/completions", body)
        choices = [c for e in events for c in e["choices"]]
        text = "".join(c["delta"].get("content") or "" for c in choices)
        calls = [t for c in choices for t in c["delta"].get("tool_calls", [])]
        reason = next(c["finish_reason"] for c in choices if c["finish_reason"])
        assert reason == whole["finish_reason"]
        if whole["finish_reason"] == "tool_calls":
            assert whole["message"]["content"] is None and not text
            assert [c["function"] for c in calls] == [c["function"] for c in whole["message"]["tool_calls"]]
        else:
            assert text == whole["message"]["content"] and not calls
        streamed = [e["token"] for c in choices if c["logprobs"] for e in c["logprobs"]["content"]]
        assert streamed == [e["token"] for e in whole["logprobs"]["content"]]  # none lost while held back


@pytest.mark.parametrize(
    "ask,choice",
    [
        ("Call get_weather for Paris.", "required"),
        ("Call get_weather for Paris.", {"type": "function", "function": {"name": "get_weather"}}),
        ("Call get_weather for Paris.", "auto"),
        ("Say hello.", "auto"),
    ],
)
def test_a_stream_accumulates_in_the_openai_client_to_the_whole_response(
    client: TestClient, ask: str, choice: Any
) -> None:
    """Each chunk is a valid ``ChatCompletionChunk``, and the client's stream accumulator builds the message a whole
    response gives: a call's content is null, not an empty string from a role chunk sent before the answer showed."""
    pytest.importorskip("openai")
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    body = _chat(messages=[{"role": "user", "content": ask}], tools=[WEATHER], tool_choice=choice, max_tokens=40)
    whole = ChatCompletion.model_validate(_post(client, "/v1/chat/completions", body).json(), strict=True)
    state: Any = ChatCompletionStreamState()
    for event in _events(client, "/v1/chat/completions", body):
        state.handle_chunk(ChatCompletionChunk.model_validate(event, strict=True))
    got, want = state.current_completion_snapshot.choices[0], whole.choices[0]
    assert got.finish_reason == want.finish_reason
    assert got.message.role == "assistant" and got.message.content == want.message.content
    calls = [(t.function.name, t.function.arguments) for t in got.message.tool_calls or []]
    assert calls == [(t.function.name, t.function.arguments) for t in want.message.tool_calls or []]


def test_an_assistant_refusal_is_part_of_the_conversation() -> None:
    """An assistant's refusal, as a content part or beside null content, is what it said: a client replaying a
    conversation sends it back as OpenAI gave it, and it is text, not an unsupported part."""
    for said in [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "I can't "}, {"type": "refusal", "refusal": "help."}],
        },
        {"role": "assistant", "content": None, "refusal": "I can't help."},
    ]:
        parsed = requests.parse_chat({"model": SMOL, "messages": [*ASK, said, *ASK]})
        assert parsed.messages[1] == ("assistant", "I can't help.")
    with pytest.raises(APIError) as caught:  # a user does not refuse
        requests.parse_chat({"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]})
    assert caught.value.status == 400 and caught.value.code == "unsupported_content"


def test_text_offsets_count_from_the_start_of_the_prompt(client: TestClient) -> None:
    prompt = "The sky is"
    body = {"model": SMOL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 1}
    lp = _post(client, "/v1/completions", body).json()["choices"][0]["logprobs"]
    expected, at = [], len(prompt)
    for token in lp["tokens"]:
        expected.append(at)
        at += len(token)
    assert lp["text_offset"] == expected
    streamed = [o for e in _events(client, "/v1/completions", body) for c in e["choices"] if c["logprobs"]
                for o in c["logprobs"]["text_offset"]]  # fmt: skip
    assert streamed == expected


def test_several_prompts_and_n_choices(client: TestClient, models: dict[str, Any]) -> None:
    prompts = ["The sky is", "Water is"]
    body = {"model": SMOL, "prompt": prompts, "max_tokens": 6, "temperature": 0, "n": 2}
    whole = _post(client, "/v1/completions", body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2, 3]
    one = GenerationOptions(temperature=0, max_tokens=6, raw=True)
    expected = [models["text"].generate(p, one) for p in prompts for _ in range(2)]
    assert [c["text"] for c in whole["choices"]] == expected
    parts = ["", "", "", ""]
    for e in _events(client, "/v1/completions", body):
        for c in e["choices"]:
            parts[c["index"]] += c["text"]
    assert parts == expected
    single = [_post(client, "/v1/completions", {**body, "prompt": p, "n": 1}).json()["usage"] for p in prompts]
    assert whole["usage"]["completion_tokens"] == 2 * sum(u["completion_tokens"] for u in single)
    assert whole["usage"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in single)


def test_sampling_fields_and_roles_take_effect(client: TestClient) -> None:
    greedy = _post(client, "/v1/chat/completions", _chat(max_tokens=8)).json()["choices"][0]["message"]["content"]
    for extra in ({"top_k": 1}, {"min_p": 1.0}):  # one candidate left: whatever the temperature, the greedy pick
        r = _post(client, "/v1/chat/completions", _chat(max_tokens=8, temperature=1.5, seed=5, **extra))
        assert r.json()["choices"][0]["message"]["content"] == greedy, extra
    r = _post(client, "/v1/chat/completions", _chat(max_tokens=None, max_completion_tokens=3, repeat_penalty=1.3))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    system = [{"role": "system", "content": "Answer in French."}, *ASK]
    developer = [{"role": "developer", "content": "Answer in French."}, *ASK]
    a = _post(client, "/v1/chat/completions", _chat(messages=system, max_tokens=8)).json()
    b = _post(client, "/v1/chat/completions", _chat(messages=developer, max_tokens=8)).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert _post(client, "/v1/chat/completions", _chat(repeat_penalty=-1)).status_code == 400


def test_health_says_why_a_load_failed() -> None:
    failures: list[BaseException] = []
    app = create_app(["no-such-model"], on_load_error=failures.append)
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while (r := c.get("/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "error" and "no-such-model" in r.json()["message"]
        chat = c.post("/v1/chat/completions", json={"model": "no-such-model", "messages": ASK})
        assert chat.status_code == 503 and "failed to load" in chat.json()["error"]["message"]
    assert failures


def test_fields_that_change_nothing_for_text_are_taken() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "modalities": ["text"], "prediction": {"type": "content"}}
    assert requests.parse_chat(body).messages == [("user", "hi")]
    with pytest.raises(APIError, match="modalities") as refused:
        requests.parse_chat({**body, "modalities": ["audio"]})
    assert refused.value.param == "modalities"


def test_an_assistant_s_text_before_its_calls_stays_in_the_conversation() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    said = {"role": "assistant", "content": "Let me look.", "tool_calls": [call]}
    body = {"messages": [{"role": "user", "content": "hi"}, said]}
    assert requests.parse_chat(body).messages[1] == ("assistant", 'Let me look.\n{"name": "f", "arguments": {"a": 1}}')
    body = {"messages": [{"role": "user", "content": "hi"}, {**said, "content": None}]}
    assert requests.parse_chat(body).messages[1] == ("assistant", '{"name": "f", "arguments": {"a": 1}}')


CITY = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["name", "country"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("ask", ["Call get_weather for Paris.", "Describe Paris."])
def test_tools_beside_a_json_response_format_answer_a_call_or_that_json(client: TestClient, ask: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    body = _chat(messages=[{"role": "user", "content": ask}], tools=[WEATHER], response_format=fmt, max_tokens=60)
    r = _post(client, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    else:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
    forced = _post(client, "/v1/chat/completions", {**body, "tool_choice": "required"}).json()["choices"][0]
    assert forced["finish_reason"] == "tool_calls"  # a call is asked for: the answer's format does not apply


def test_tools_beside_a_response_format_describe_a_json_answer() -> None:
    fmt = {"type": "json_object"}
    parsed = requests.parse_chat({"messages": ASK, "tools": [WEATHER], "response_format": fmt})
    assert parsed.tools is not None and "answer with the JSON asked for" in parsed.tools.prompt
    assert parsed.grammar is not None and parsed.grammar != structured.call_grammar(parsed.tools)


def test_an_answer_schema_beside_the_calls_is_blamed_as_the_response_format() -> None:
    tools = structured.parse_tools([WEATHER], "auto", json_answer=True)
    assert tools is not None
    with pytest.raises(APIError) as refused:  # as when the answer and the calls together pass the compile budget
        structured.call_grammar(tools, {"type": "object", "properties": {"a": {"not": {}}}})
    assert refused.value.param == "response_format" and "(at #/properties/a/not;" in refused.value.message
    with pytest.raises(APIError) as refused:  # llama-server's json_schema field is named as such
        structured.call_grammar(tools, {"type": "object", "properties": {"a": {"not": {}}}}, answer_param="json_schema")
    assert refused.value.param == "json_schema" and refused.value.message.startswith("json_schema: ")
