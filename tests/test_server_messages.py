"""Anthropic's Messages API, driven by the official ``anthropic`` client: the same answers as the chat completions
the bodies translate to, whole and streamed, with tool use, thinking, token counts, the key in ``x-api-key`` and
errors in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from conftest import THREADS  # noqa: E402
from llamacffi.server import create_app  # noqa: E402
from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig  # noqa: E402

ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                     "required": ["city"]},
}  # fmt: skip
THINKS = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: <think>\n{% endif %}{# a template that writes </think> blocks #}"
)
KEY = "sk-local"
GREEDY = {"temperature": 0}  # llama-server's sampling fields, which Anthropic's client no longer sends itself


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        models = {
            "smol": svc.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=2)),
            "thinker": svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, chat_template=THINKS)),
        }
        with TestClient(create_app(models, api_key=KEY), raise_server_exceptions=False) as c:
            yield c


@pytest.fixture(scope="module")
def client(http: TestClient) -> Any:
    return anthropic.Anthropic(api_key=KEY, base_url="http://testserver", http_client=http, max_retries=0)


def _chat(http: TestClient, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/chat/completions", json={"temperature": 0, **body}, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_a_message_is_the_chat_completion_it_asks_for(client: Any, http: TestClient) -> None:
    for system in ["Answer in one word.", [{"type": "text", "text": "Answer in one word."}]]:
        msg = client.messages.create(model="smol", max_tokens=24, extra_body=GREEDY, system=system, messages=ASK)
        chat = _chat(http, model="smol", max_tokens=24,
                     messages=[{"role": "system", "content": "Answer in one word."}, *ASK])  # fmt: skip
        (choice,) = chat["choices"]
        assert msg.type == "message" and msg.role == "assistant" and msg.model == "smol"
        assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == choice["message"]["content"]
        assert msg.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[choice["finish_reason"]]
        assert msg.usage.input_tokens == chat["usage"]["prompt_tokens"]
        assert msg.usage.output_tokens == chat["usage"]["completion_tokens"]
    cut = client.messages.create(model="smol", max_tokens=2, extra_body=GREEDY, messages=ASK)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_output_config_gives_a_json_schema_the_answer_follows(client: Any) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, "required": ["capital"],
              "additionalProperties": False}  # fmt: skip
    msg = client.messages.create(model="smol", max_tokens=48, extra_body=GREEDY, messages=ASK,
                                 output_config={"format": {"type": "json_schema", "schema": schema}})  # fmt: skip
    assert msg.stop_reason == "end_turn"
    assert set(json.loads(msg.content[0].text)) == {"capital"}


def test_a_stream_accumulates_to_the_whole_message(client: Any) -> None:
    body = {"model": "smol", "max_tokens": 24, "extra_body": GREEDY, "messages": ASK}
    whole = client.messages.create(**body)
    with client.messages.stream(**body) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "text" in kinds
    assert [(b.type, b.text) for b in final.content] == [(b.type, b.text) for b in whole.content]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_and_its_result(client: Any, streamed: bool) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {"model": "smol", "max_tokens": 48, "extra_body": GREEDY, "tools": [WEATHER], "messages": ask}
    forced = {**body, "tool_choice": {"type": "tool", "name": "get_weather"}}
    if streamed:
        with client.messages.stream(**forced) as stream:
            msg = stream.get_final_message()
    else:
        msg = client.messages.create(**forced)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and len(uses) == 1
    assert uses[0].name == "get_weather" and isinstance(uses[0].input["city"], str) and uses[0].id
    turn = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 24 C"},
                                     {"type": "text", "text": "Say it in one sentence."}]},
    ]  # fmt: skip
    answer = client.messages.create(**{**body, "messages": turn, "tool_choice": {"type": "none"}})
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"
    none = {"type": "none"}  # the tools are then not described
    counted = client.messages.count_tokens(model="smol", messages=turn, tools=[WEATHER], tool_choice=none)
    assert counted.input_tokens == answer.usage.input_tokens
    described = client.messages.count_tokens(model="smol", messages=turn, tools=[WEATHER])
    assert described.input_tokens > counted.input_tokens


def test_thinking_comes_as_a_thinking_block(client: Any) -> None:
    body = {"model": "thinker", "max_tokens": 12, "extra_body": GREEDY, "messages": ASK}
    msg = client.messages.create(**body)
    assert [b.type for b in msg.content] == ["thinking"] and msg.content[0].thinking
    with client.messages.stream(**body) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_message()
    assert {"thinking", "signature"} <= kinds and final.content[0].thinking == msg.content[0].thinking
    assert client.messages.count_tokens(model="thinker", messages=ASK).input_tokens == msg.usage.input_tokens


def test_errors_come_in_anthropics_shape(client: Any, http: TestClient) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="smol", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])  # fmt: skip
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "image" in bad.value.message
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=8, messages=ASK)
    wrong = anthropic.Anthropic(api_key="sk-other", base_url="http://testserver", http_client=http, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="smol", max_tokens=8, messages=ASK)
    headers = {"x-api-key": KEY}
    for body in [
        {"model": "smol", "messages": ASK},  # no max_tokens
        {"model": "smol", "max_tokens": 8, "messages": []},
        {"model": "smol", "max_tokens": 8, "messages": ASK, "temperature": 5},
        {"model": "smol", "max_tokens": 8, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "w"}]},
        {"model": "smol", "max_tokens": 8, "messages": ASK, "tool_choice": {"type": "tool"}},
        {"model": "smol", "max_tokens": 8, "messages": ASK, "container": "c"},
        {"model": "smol", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]},
        {"model": "smol", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
    ]:
        r = http.post("/v1/messages", json=body, headers=headers)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = http.post("/v1/messages", content=b"{", headers=headers)
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": ASK}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"  # OpenAI's routes keep theirs


def test_errors_name_the_messages_fields(http: TestClient) -> None:
    ask = {"model": "smol", "max_tokens": 8, "messages": ASK}
    schema = {"type": "json_schema", "schema": {"type": "objectx"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "18\0"}
    turns = [*ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
             "input": {}}]}, {"role": "user", "content": [result]}]  # fmt: skip
    for body, said in [
        ({**ask, "stop_sequences": "END"}, "stop_sequences must be a list of at most 16 strings"),
        ({**ask, "stop_sequences": ["a"] * 17}, "stop_sequences must be a list of at most 16 strings"),
        ({**ask, "output_config": {"format": schema}}, "output_config.format.schema: type must be one of"),
        ({**ask, "output_config": {"effort": "huge"}}, "output_config.effort must be one of low, medium, high"),
        (
            {**ask, "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": "yes"}},
            "tool_choice.disable_parallel_tool_use must be a boolean",
        ),
        ({**ask, "tools": [{**WEATHER, "input_schema": 5}]}, "tools[0].input_schema must be a JSON schema object"),
        ({**ask, "tools": [{**WEATHER, "description": 5}]}, "tools[0].description must be a string"),
        ({**ask, "tools": [{**WEATHER, "name": ""}]}, "tools[0] must be a custom tool with a name"),
        ({**ask, "system": "be\0brief"}, "system holds a NUL character"),
        ({**ask, "messages": turns}, "messages[2].content[0].content holds a NUL character"),
        (
            {**ask, "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
            "messages[0].content[0].text is not valid Unicode",
        ),
    ]:
        counted = "stop_sequences" not in body  # a count reads no output fields
        for path in ["/v1/messages", *(["/v1/messages/count_tokens"] if counted else [])]:
            r = http.post(path, content=json.dumps(body).encode(), headers={"x-api-key": KEY})
            assert r.status_code == 400 and r.json()["type"] == "error", (path, body, r.text)
            assert r.json()["error"]["message"].startswith(said), (path, r.text)


def test_turns_as_anthropics_api_reads_them(client: Any) -> None:
    def count(messages: list[dict[str, Any]]) -> int:
        return int(client.messages.count_tokens(model="smol", messages=messages).input_tokens)

    # consecutive turns of one role are one, their text blocks joined by lines
    two = [{"role": "user", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "Hi."}]}]
    assert count(two) == count([{"role": "user", "content": "Hello.\nHi."}])
    blocks = [
        {"type": "text", "text": "Hello."},
        {"type": "text", "text": "Hi.", "cache_control": {"type": "ephemeral"}},
    ]
    assert count([{"role": "user", "content": blocks}]) == count(two)
    # a last assistant turn is continued: the answer goes on from it
    prefilled = [*ASK, {"role": "assistant", "content": "The capital of France is"}]
    msg = client.messages.create(model="smol", max_tokens=4, extra_body=GREEDY, messages=prefilled)
    assert msg.content[0].text.startswith(" Paris")
    # a failed tool's result says so
    used = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "no such city", "is_error": True}
    said = [*ASK, {"role": "assistant", "content": [used]}, {"role": "user", "content": [result]}]
    failed = count(said)
    assert failed > count([*said[:2], {"role": "user", "content": [{**result, "is_error": False}]}])


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stop_sequence_says_which(client: Any, streamed: bool) -> None:
    free = client.messages.create(model="smol", max_tokens=24, extra_body=GREEDY, messages=ASK)
    word = free.content[0].text.split()[2]  # a word the greedy answer holds
    body = {"model": "smol", "max_tokens": 24, "extra_body": GREEDY, "messages": ASK,
            "stop_sequences": ["no such words", word]}  # fmt: skip
    if streamed:
        with client.messages.stream(**body) as stream:
            msg = stream.get_final_message()
    else:
        msg = client.messages.create(**body)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", word)
    assert word not in msg.content[0].text and free.content[0].text.startswith(msg.content[0].text)
    assert free.stop_sequence is None
