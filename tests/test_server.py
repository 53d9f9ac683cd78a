"""``llamacffi serve`` in a subprocess on a loopback port, driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")

from conftest import THREADS  # noqa: E402
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig  # noqa: E402
from server_process import ServeProcess  # noqa: E402

CTX = 512
PARALLEL = 4
SYSTEM = "You are a helpful assistant."
ASK = "What is the capital of France?"
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
SMOL = "smollm2-135m"
GEMMA = "gemma"
EMBED = "smol-embed"


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    proc = ServeProcess(
        [
            "-m",
            SMOL,
            "-m",
            "gemma3-270m",
            "--alias",
            SMOL,
            "--alias",
            GEMMA,
            "-np",
            str(PARALLEL),
            "-c",
            str(CTX),
            "-t",
            str(THREADS),
            "--embedding-model",
            SMOL,
            "--embedding-alias",
            EMBED,
        ]
    )
    yield proc
    assert proc.stop() == 0, "".join(proc.log[-20:])


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def service_models() -> Iterator[dict[str, Any]]:
    """The same models through the service, as the server loads them."""
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        config = ModelConfig(context_size=CTX, parallel=PARALLEL)
        yield {SMOL: svc.load_model(SMOL, config=config), GEMMA: svc.load_model("gemma3-270m", config=config)}


def _metric(server: ServeProcess, name: str, model: str = SMOL) -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


# ---- the openai client -------------------------------------------------------------------------------------------


def test_models_list(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [SMOL, GEMMA, EMBED]
    assert client.models.retrieve(GEMMA).id == GEMMA


@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_chat_greedy_equals_service(client: Any, service_models: dict[str, Any], name: str) -> None:
    r = client.chat.completions.create(model=name, messages=QUESTION, temperature=0, max_tokens=24)
    expected = service_models[name].generate(ASK, GenerationOptions(temperature=0, max_tokens=24, system=SYSTEM))
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.model == name


def test_completion_greedy_equals_service(client: Any, service_models: dict[str, Any]) -> None:
    r = client.completions.create(model=SMOL, prompt="Once upon a time", temperature=0, max_tokens=20)
    expected = service_models[SMOL].generate(
        "Once upon a time", GenerationOptions(temperature=0, max_tokens=20, raw=True)
    )
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 20


def test_stream_concatenates_to_the_whole(client: Any) -> None:
    whole = client.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0, max_tokens=40)
    stream = client.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    parts, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(parts) == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_stream_chunks_share_one_shape(server: ServeProcess) -> None:
    """Every content chunk of a stream is the same object with only its text changed, quotes and newlines escaped
    as JSON requires, whether the server rendered it whole or from its per-choice template."""
    body = {
        **CHAT,
        "max_tokens": 40,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": 'Print a JSON object with a "name" key, over several lines.'}],
    }
    events = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content) > 5
    first = content[0]
    for e in content:
        assert list(e) == list(first) and {k: e[k] for k in e if k != "choices"} == {
            k: first[k] for k in first if k != "choices"
        }
        assert list(e["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
        assert e["choices"][0]["finish_reason"] is None and list(e["choices"][0]["delta"]) == ["content"]
    text = "".join(e["choices"][0]["delta"]["content"] for e in content)
    whole = _post(server, "/v1/chat/completions", {**body, "stream": False}).json()
    assert text == whole["choices"][0]["message"]["content"]


def test_completion_stream_and_echo(client: Any) -> None:
    whole = client.completions.create(model=SMOL, prompt="The sky is", temperature=0, max_tokens=12, echo=True)
    assert whole.choices[0].text.startswith("The sky is")
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=SMOL, prompt="The sky is", temperature=0, max_tokens=12, echo=True, stream=True
        )
        if c.choices
    )
    assert text == whole.choices[0].text


def test_stop_and_length(client: Any) -> None:
    free = client.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0, max_tokens=40)
    text = free.choices[0].message.content
    assert "Paris" in text
    stopped = client.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=40, stop=["Paris"]
    )
    assert stopped.choices[0].message.content == text[: text.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_n_choices_with_a_seed_are_reproducible(client: Any) -> None:
    def ask() -> list[str]:
        r = client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "Tell me a story."}],
            n=3,
            seed=42,
            temperature=1.0,
            max_tokens=24,
        )
        assert [c.index for c in r.choices] == [0, 1, 2]
        return [c.message.content for c in r.choices]

    first = ask()
    assert ask() == first
    assert len(set(first)) > 1  # each choice samples with its own seed


def test_usage_counts_tokens(client: Any, service_models: dict[str, Any]) -> None:
    model = service_models[SMOL]
    r = client.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0, max_tokens=16)
    opts = GenerationOptions(temperature=0)
    prompt = model.tokenize_prompt(model.format_chat([("system", SYSTEM), ("user", ASK)], opts), opts)
    assert r.usage.prompt_tokens == len(prompt)
    out = model.llama_model.vocab.tokenize(r.choices[0].message.content, add_special=False)
    assert abs(r.usage.completion_tokens - len(out)) <= 1  # the end-of-generation token is not text
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_cached_tokens_on_a_repeated_prefix(client: Any) -> None:
    long = [
        {"role": "system", "content": "You are a helpful assistant who answers in one short sentence. " * 4},
        {"role": "user", "content": "Name a colour."},
    ]
    client.chat.completions.create(model=SMOL, messages=long, temperature=0, max_tokens=4)
    r = client.chat.completions.create(
        model=SMOL, messages=[*long[:1], {"role": "user", "content": "Name a fruit."}], temperature=0, max_tokens=4
    )
    assert r.usage.prompt_tokens_details.cached_tokens > 40


def test_logprobs_match_the_chosen_tokens(client: Any, service_models: dict[str, Any]) -> None:
    r = client.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(bytes(t.bytes).decode() for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    streamed = client.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, stream=True
    )
    tokens = [t.token for c in streamed for ch in c.choices if ch.logprobs for t in ch.logprobs.content]
    assert tokens == [t.token for t in content]


def test_concurrent_async_requests_equal_sequential(client: Any, server: ServeProcess) -> None:
    prompts = [f"Write one sentence about the number {i}." for i in range(32)]
    sequential = {}
    for p in prompts[:8]:
        sequential[p] = client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=16
        ).choices[0]
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)

    async def ask(p: str) -> Any:
        r = await aclient.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=16
        )
        return r.choices[0]

    async def everyone() -> list[Any]:
        try:
            return list(await asyncio.gather(*(ask(p) for p in prompts)))
        finally:
            await aclient.close()

    results = asyncio.run(everyone())
    for p, r in zip(prompts, results, strict=False):
        assert r.message.content
        if p in sequential:
            assert r.message.content == sequential[p].message.content
    for p in prompts[8:12]:  # and the other way round, after the concurrent run
        alone = client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=16
        ).choices[0]
        assert alone.message.content == results[prompts.index(p)].message.content


# ---- raw HTTP ----------------------------------------------------------------------------------------------------


def _post(server: ServeProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(server.url + path, content=data, headers=headers, **{"timeout": 60, **kw})


def _error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


CHAT = {"model": SMOL, "messages": QUESTION, "max_tokens": 4}


@pytest.mark.parametrize(
    "body, param",
    [
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "top_logprobs": 3}, "top_logprobs"),
        ({**CHAT, "logit_bias": {"x": 1}}, "logit_bias"),
        ({**CHAT, "logit_bias": {"1": 1000}}, "logit_bias"),
        ({**CHAT, "stop": 5}, "stop"),
        ({**CHAT, "seed": 1.5}, "seed"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
        ({**CHAT, "messages": "hello"}, "messages"),
        ({**CHAT, "frobnicate": True}, "frobnicate"),
        ({**CHAT, "modalities": ["text", "audio"]}, "modalities"),
        ({**CHAT, "tools": "f"}, "tools"),
        (
            {
                **CHAT,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({**CHAT, "tool_choice": "required"}, "tool_choice"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format"),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": SMOL, "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": SMOL, "prompt": 5}, "prompt"),
        ({"model": SMOL, "prompt": [1, 2, 10**8]}, None),
    ],
)
def test_bad_requests_are_400(server: ServeProcess, body: dict[str, Any], param: str | None) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    _error(_post(server, path, body), 400, param=param)


def test_malformed_bodies_are_400(server: ServeProcess) -> None:
    _error(_post(server, "/v1/chat/completions", b"{not json"), 400, "invalid_json")
    _error(_post(server, "/v1/chat/completions", b"[1, 2]"), 400, "invalid_type")
    _error(_post(server, "/v1/chat/completions", b"\xff\xfe"), 400)
    _error(_post(server, "/v1/chat/completions", "[" * 100000), 400)


def test_prompt_beyond_the_context(server: ServeProcess) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "lorem ipsum " * 2000}]}
    err = _error(_post(server, "/v1/chat/completions", body), 400, "context_length_exceeded")
    assert str(CTX) in err["message"]


def test_unknown_model_and_path_are_404(server: ServeProcess) -> None:
    _error(_post(server, "/v1/chat/completions", {**CHAT, "model": "nope"}), 404, "model_not_found", "model")
    _error(httpx.get(server.url + "/v1/nothing"), 404)
    _error(httpx.get(server.url + "/v1/models/nope"), 404, "model_not_found")
    _error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_body_over_the_limit_is_413(server: ServeProcess) -> None:
    _error(_post(server, "/v1/chat/completions", b"x" * (9 << 20)), 413)


def test_health_and_metrics(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    listening = next(line for line in server.log if "listening on" in line).rstrip()
    # said while the models load (unless they loaded before the socket was bound), then when they are ready
    assert listening.endswith(("(loading the models: /health is 503 until they are)", f":{server.url.split(':')[-1]}"))
    for _ in range(100):  # printed within a poll of the models' readiness
        if any(f"llamacffi serve: ready ({SMOL}, {GEMMA}, {EMBED})" in line for line in server.log):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no 'ready' line:\n" + "".join(server.log[-20:]))
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "llamacffi_requests_total",
        "llamacffi_prompt_tokens_total",
        "llamacffi_cached_tokens_total",
        "llamacffi_generated_tokens_total",
        "llamacffi_queue_depth",
        "llamacffi_busy_slots",
        "llamacffi_time_to_first_token_seconds_bucket",
        "llamacffi_inter_token_seconds_bucket",
    ):
        assert name in text
    assert 'llamacffi_requests_total{route="/v1/chat/completions",status="400"}' in text


def test_a_dropped_stream_frees_its_slot(server: ServeProcess) -> None:
    body = {
        **CHAT,
        "max_tokens": 400,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to read."}],
    }
    generated = _metric(server, "llamacffi_generated_tokens_total")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 5:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while _metric(server, "llamacffi_busy_slots") != 0:
        assert time.monotonic() < deadline, "the dropped stream still holds its slot"
        time.sleep(0.05)
    t0 = time.monotonic()
    r2 = _post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert r2.status_code == 200 and time.monotonic() - t0 < 10
    # its tokens were counted as generated, up to the drop (at least the 4 it streamed)
    assert 4 <= _metric(server, "llamacffi_generated_tokens_total") - generated < 400


def test_a_dropped_request_while_queued_or_waiting_is_cancelled(server: ServeProcess) -> None:
    body = {
        **CHAT,
        "max_tokens": 400,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to read."}],
    }
    with pytest.raises(httpx.ReadTimeout):
        _post(server, "/v1/chat/completions", body, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.monotonic() + 10
    while _metric(server, "llamacffi_busy_slots") != 0:
        assert time.monotonic() < deadline, "the abandoned request still holds its slot"
        time.sleep(0.05)


def test_a_request_dropped_while_it_waits_for_a_slot_leaves_the_queue() -> None:
    proc = ServeProcess(["-m", SMOL, "-np", "1", "--max-queue", "4", "-c", str(CTX), "-t", str(THREADS)])
    story = [{"role": "user", "content": "Write a long story about a dragon who learns to read."}]
    body = {**CHAT, "max_tokens": 400, "temperature": 0, "stream": True, "messages": story}
    try:
        with httpx.stream("POST", proc.url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)  # the only slot is busy now
            with pytest.raises(httpx.ReadTimeout):  # queued behind it, then dropped by its client
                _post(proc, "/v1/chat/completions", {**CHAT, "max_tokens": 50}, timeout=httpx.Timeout(60, read=0.5))
            deadline = time.monotonic() + 10
            while _metric(proc, "llamacffi_queue_depth") != 0:
                assert time.monotonic() < deadline, "the dropped request still waits in the queue"
                time.sleep(0.05)
            assert _metric(proc, "llamacffi_busy_slots") == 1  # the stream runs on
    finally:
        assert proc.stop() == 0


# ---- a server with a key, one slot and no queue -------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServeProcess]:
    proc = ServeProcess(
        ["-m", SMOL, "--api-key", "s3cret", "-np", "1", "--max-queue", "0", "-c", str(CTX), "-t", str(THREADS)]
    )
    yield proc
    assert proc.stop() == 0


def test_api_key(guarded: ServeProcess) -> None:
    _error(_post(guarded, "/v1/chat/completions", CHAT), 401, "invalid_api_key")
    _error(_post(guarded, "/v1/chat/completions", CHAT, headers={"authorization": "Bearer wrong"}), 401)
    _error(httpx.get(guarded.url + "/v1/models"), 401)
    assert httpx.get(guarded.url + "/health").status_code == 200
    ok = openai.OpenAI(base_url=guarded.url + "/v1", api_key="s3cret", max_retries=0)
    assert ok.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=2).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_a_full_queue_is_429(guarded: ServeProcess) -> None:
    headers = {"authorization": "Bearer s3cret"}
    body = {
        **CHAT,
        "max_tokens": 200,
        "temperature": 0,  # its 200 greedy tokens hold the slot: a sampled story may end within a few
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to read."}],
    }
    with httpx.stream("POST", guarded.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the response, which cancels the request
        first = next(lines)  # the only slot is busy now
        refused = _post(guarded, "/v1/chat/completions", CHAT, headers=headers)
        assert refused.status_code == 429, (first, "".join(guarded.log[-8:]))
        _error(refused, 429, "queue_full")
        assert refused.headers["retry-after"] == "1"


def test_sigterm_during_streams_exits_cleanly() -> None:
    proc = ServeProcess(["-m", SMOL, "-np", "2", "-c", str(CTX), "-t", str(THREADS), "--grace", "1"])
    body = {
        "model": SMOL,
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to read."}],
    }
    streams: list[list[str]] = [[], []]
    failures: list[BaseException] = []

    def read(events: list[str]) -> None:
        try:
            with httpx.stream("POST", proc.url + "/v1/chat/completions", json=body, timeout=60) as r:
                events.extend(line for line in r.iter_lines() if line)
        except httpx.HTTPError as exc:  # a stream the server dropped instead of ending it
            failures.append(exc)

    readers = [threading.Thread(target=read, args=(events,)) for events in streams]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 60
    while sum(map(len, streams)) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(map(len, streams)) >= 10
    t0 = time.monotonic()
    assert proc.stop(timeout=60) == 0, "".join(proc.log[-20:])
    assert time.monotonic() - t0 < 30
    for t in readers:
        t.join(30)
        assert not t.is_alive()
    assert not failures, failures
    for events in streams:  # each ends as the client can tell: finished, or an error event, then [DONE]
        assert events[-1] == "data: [DONE]", events[-3:]
        last = json.loads(events[-2].removeprefix("data: "))
        assert "error" in last or last["choices"][0]["finish_reason"] is not None, last
    assert not any("Traceback" in line for line in proc.log), "".join(proc.log)


# ---- structured output -------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 40}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_json_object_and_json_schema_are_enforced(client: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    ask = [{"role": "user", "content": "Give a JSON object with a cat's name and age."}]
    r = client.chat.completions.create(
        model=SMOL, messages=ask, response_format={"type": "json_object"}, max_tokens=200, temperature=0.8, seed=3
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 30},
            "colours": {"type": "array", "items": {"enum": ["black", "white", "orange"]}, "maxItems": 3},
        },
        "required": ["name", "age", "colours"],
        "additionalProperties": False,
    }
    for name in (SMOL, GEMMA):
        for seed in (1, 2):
            r = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "Describe a cat."}],
                max_tokens=160,
                seed=seed,
                temperature=0.8,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "cat", "schema": schema, "strict": True},
                },
            )
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_unenforceable_schemas_are_refused_by_name(server: ServeProcess) -> None:
    body = {
        **CHAT,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}},
            },
        },
    }
    err = _error(_post(server, "/v1/chat/completions", body), 400, "unsupported_schema", "response_format")
    assert "multipleOf" in err["message"] and "/properties/n" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}
    err = _error(_post(server, "/v1/chat/completions", {**CHAT, "tools": [tool]}), 400, "unsupported_schema", "tools")
    assert "not" in err["message"]


def test_structured_output_with_the_openai_parse_helper(client: Any) -> None:
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=30)
        country: str = pydantic.Field(max_length=30)
        population_millions: int = pydantic.Field(ge=0, le=50)

    r = client.chat.completions.parse(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name

    class GetWeather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=30)

    both = client.chat.completions.parse(  # a call or a City: the helper parses either
        model=SMOL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[openai.pydantic_function_tool(GetWeather)],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    message = both.choices[0].message
    if message.tool_calls:
        assert isinstance(message.tool_calls[0].function.parsed_arguments, GetWeather)
    else:
        assert isinstance(message.parsed, City)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls(client: Any, choice: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    r = client.chat.completions.create(
        model=SMOL, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=80, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    params = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), params)
    streamed = client.chat.completions.create(
        model=SMOL,
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice=choice,
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    calls, reasons = [], []
    for chunk in streamed:
        for ch in chunk.choices:
            calls += ch.delta.tool_calls or []
            if ch.finish_reason:
                reasons.append(ch.finish_reason)
    assert reasons == ["tool_calls"]
    assert [(t.function.name, t.function.arguments) for t in calls] == [(call.function.name, call.function.arguments)]
    # the result goes back as a tool message, and the conversation goes on
    follow = client.chat.completions.create(
        model=SMOL,
        max_tokens=20,
        temperature=0,
        tools=[WEATHER, TIME],
        messages=[
            *ASK_WEATHER,
            c.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ],
    )
    assert follow.choices[0].message.content or follow.choices[0].message.tool_calls


# ---- embeddings --------------------------------------------------------------------------------------------------


def test_embeddings_equal_the_pythonic_layer(client: Any) -> None:
    import base64

    import numpy as np

    import llamacffi
    from llamacffi import models

    texts = ["The cat sat on the mat.", "Rivers flow to the sea.", "x"]
    r = client.embeddings.create(model=EMBED, input=texts)
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == EMBED
    with llamacffi.Model.load(models.fetch(SMOL)) as m:
        expected = m.embed(texts)
        n_tokens = sum(len(m.vocab.tokenize(t)) for t in texts)
        ids = [m.vocab.tokenize(t).tolist() for t in texts]
    assert got.shape == expected.shape
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (np.sum(got * expected, axis=1) >= 0.9999).all()
    assert r.usage.prompt_tokens == n_tokens == r.usage.total_tokens
    b64 = client.embeddings.create(model=EMBED, input=texts[0], encoding_format="base64")
    raw = httpx.post(
        str(client.base_url).rstrip("/") + "/embeddings",
        json={"model": EMBED, "input": texts[0], "encoding_format": "base64"},
        timeout=60,
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, got[0], atol=1e-6)
    assert b64.data[0].embedding == raw["data"][0]["embedding"]  # asked for base64, the client hands it over as is
    by_ids = client.embeddings.create(model=EMBED, input=ids)
    assert np.allclose(np.array([d.embedding for d in by_ids.data], dtype=np.float32), got, atol=1e-5)


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": EMBED, "input": ""}, 400, "input"),
        ({"model": EMBED, "input": []}, 400, "input"),
        ({"model": EMBED, "input": [1, "a"]}, 400, "input"),
        ({"model": EMBED, "input": "a", "dimensions": 8}, 400, "dimensions"),
        ({"model": EMBED, "input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": EMBED, "input": [[10**8]]}, 400, None),
        ({"model": EMBED, "input": "lorem ipsum " * 2000}, 400, None),
        ({"model": SMOL, "input": "a"}, 400, "model"),
        ({"model": "nope", "input": "a"}, 404, "model"),
    ],
)
def test_bad_embedding_requests(server: ServeProcess, body: dict[str, Any], status: int, param: str | None) -> None:
    _error(_post(server, "/v1/embeddings", body), status, param=param)


def test_an_embedding_model_does_not_chat(server: ServeProcess) -> None:
    _error(_post(server, "/v1/chat/completions", {**CHAT, "model": EMBED}), 400, "wrong_model_type", "model")
