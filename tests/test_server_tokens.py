"""llama-server's ``/tokenize``, ``/detokenize`` and ``/apply-template``: the same answers as llama.cpp's own server
on SmolLM2, side by side, and a 400 naming the field for bad bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

import llamacffi
from conftest import THREADS
from llamacffi.server import create_app
from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig
from test_chat import llama_server_on

TEXTS = [
    "Hello world",
    " leading blank, then <|im_start|>user\nhi<|im_end|>",
    "Zürich 東京 🦙 naïve",  # pieces that are parts of a character come back as bytes
    "",
]
ASKED = [{"role": "user", "content": "Capital of France?"}]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ],
    [*ASKED, {"role": "assistant", "content": "The capital is"}],  # continued, as llama-server's prefill does
]


@pytest.fixture(scope="module")
def both(smollm2: llamacffi.Model) -> Iterator[tuple[TestClient, str]]:
    """This package's app and llama-server, on the same model file."""
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        model = svc.load_model(str(smollm2.path), config=ModelConfig(context_size=256))
        with (
            TestClient(create_app({"smol": model}), raise_server_exceptions=False) as ours,
            llama_server_on(smollm2) as theirs,
        ):
            yield ours, theirs


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_equals_llama_servers(both: tuple[TestClient, str], text: str) -> None:
    ours, theirs = both
    for fields in [{}, {"add_special": True}, {"parse_special": False}, {"with_pieces": True}]:
        body = {"content": text, **fields}
        mine = ours.post("/tokenize", json=body)
        assert mine.status_code == 200, mine.text
        assert mine.json() == httpx.post(theirs + "/tokenize", json=body, timeout=30).json(), fields
    pieces = ours.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    if "🦙" in text:
        assert any(isinstance(p["piece"], list) for p in pieces)  # the bytes of a part of a character


def test_detokenize_equals_llama_servers(both: tuple[TestClient, str]) -> None:
    ours, theirs = both
    for text in TEXTS:
        ids = ours.post("/tokenize", json={"content": text}).json()["tokens"]
        for tokens in [ids, ids[:3], ids[1:2]]:  # a piece alone may be part of a character
            mine = ours.post("/detokenize", json={"tokens": tokens})
            assert mine.status_code == 200, mine.text
            assert mine.json() == httpx.post(theirs + "/detokenize", json={"tokens": tokens}, timeout=30).json()
    ids = ours.post("/tokenize", json={"content": TEXTS[2]}).json()["tokens"]
    assert ours.post("/detokenize", json={"tokens": ids, "model": "smol"}).json()["content"] == TEXTS[2]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_apply_template_equals_llama_servers(both: tuple[TestClient, str], messages: list[dict[str, str]]) -> None:
    ours, theirs = both
    mine = ours.post("/apply-template", json={"messages": messages})
    assert mine.status_code == 200, mine.text
    expected = httpx.post(theirs + "/apply-template", json={"messages": messages}, timeout=30).json()
    assert mine.json() == expected


def test_apply_template_is_the_prompt_a_completion_decodes(both: tuple[TestClient, str]) -> None:
    ours, _ = both
    messages = CONVERSATIONS[1]
    prompt = ours.post("/apply-template", json={"messages": messages}).json()["prompt"]
    ids = ours.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
    r = ours.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


HI = [{"role": "user", "content": "hi"}]
BAD = [
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {"content": ["a", 1]}, "content"),
    ("/tokenize", {}, "content"),
    ("/tokenize", {"content": "a\ud800b"}, "content"),
    ("/tokenize", {"content": "a", "add_special": "yes"}, "add_special"),
    ("/tokenize", {"content": "a", "with_pieces": 1}, "with_pieces"),
    ("/tokenize", {"content": "a", "special": True}, "special"),
    ("/detokenize", {"tokens": [1, -1]}, "tokens"),
    ("/detokenize", {"tokens": [1, 49152]}, "tokens"),
    ("/detokenize", {"tokens": [True]}, "tokens"),
    ("/detokenize", {"tokens": "1 2"}, "tokens"),
    ("/detokenize", {"tokens": [1], "content": "x"}, "content"),
    ("/apply-template", {"messages": []}, "messages"),
    ("/apply-template", {"messages": HI, "chat_template_kwargs": []}, "chat_template_kwargs"),
]


@pytest.mark.parametrize("path,body,param", BAD)
def test_a_bad_body_is_a_400_naming_the_field(
    both: tuple[TestClient, str], path: str, body: dict[str, Any], param: str
) -> None:
    ours, _ = both
    raw = json.dumps(body).encode("utf-8", "surrogatepass")
    r = ours.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_an_unknown_model_is_a_404(both: tuple[TestClient, str]) -> None:
    ours, _ = both
    for path, body in [("/tokenize", {"content": "a"}), ("/detokenize", {"tokens": [1]}),
                       ("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})]:  # fmt: skip
        r = ours.post(path, json={**body, "model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_a_conversation_ending_with_the_assistant_is_continued(both: tuple[TestClient, str]) -> None:
    ours, _ = both
    body = {"messages": [*ASKED, {"role": "assistant", "content": "The capital of France is"}], "max_tokens": 4,
            "temperature": 0}  # fmt: skip
    prompt = ours.post("/apply-template", json=body).json()["prompt"]
    assert prompt.endswith("<|im_start|>assistant\nThe capital of France is")
    r = ours.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith(" Paris")
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    r = ours.post(
        "/v1/chat/completions", json={**body, "messages": [*ASKED, {"role": "assistant", "tool_calls": [call]}]}
    )
    assert r.status_code == 400 and "cannot be continued" in r.json()["error"]["message"]
