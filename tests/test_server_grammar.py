"""llama-server's ``grammar`` (GBNF text) and ``json_schema`` request fields, on chat and text completions: the
output follows them, whole and streamed; a grammar llama.cpp cannot parse or run, or one that no token can follow,
is a 400 naming the field, and disturbs no other request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from conftest import THREADS
from llamacffi.server import create_app
from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig
from test_grammar import validate

ASK = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
YES_NO = 'root ::= ("yes" | "no") "."'
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
          "additionalProperties": False}  # fmt: skip
THINKS = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: <think>\n{% endif %}{# a template that writes </think> blocks #}"
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        models = {
            "smol": svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=4)),
            "thinker": svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, chat_template=THINKS)),
        }
        with TestClient(create_app(models), raise_server_exceptions=False) as c:
            yield c


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "smol", "messages": ASK, "max_tokens": 48, "temperature": 0, **kw}


def _text(**kw: Any) -> dict[str, Any]:
    return {"model": "smol", "prompt": "The capital of France is", "max_tokens": 48, "temperature": 0, **kw}


def _streamed(client: TestClient, path: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text a stream sends, and its error events."""
    text, errors = "", []
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event["error"])
                continue
            for choice in event["choices"]:
                text += choice.get("delta", {}).get("content") or choice.get("text") or ""
    return text, errors


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_grammar_shapes_the_output_whole_and_streamed(client: TestClient, path: str) -> None:
    body = (_chat if "chat" in path else _text)(grammar=YES_NO)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    whole = choice["message"]["content"] if "chat" in path else choice["text"]
    assert whole in ("yes.", "no.") and choice["finish_reason"] == "stop"
    assert _streamed(client, path, body) == (whole, [])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_json_schema_shapes_the_output(client: TestClient, path: str) -> None:
    body = (_chat if "chat" in path else _text)(json_schema=SCHEMA)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    doc = json.loads(choice["message"]["content"] if "chat" in path else choice["text"])
    validate(doc, SCHEMA)
    assert choice["finish_reason"] == "stop"


def test_a_reasoning_models_answer_to_a_grammar_is_the_grammars_alone(client: TestClient) -> None:
    # The request's own GBNF cannot be told where thinking ends: the block the prompt opened is closed empty.
    r = client.post("/v1/chat/completions", json=_chat(model="thinker", grammar=YES_NO))
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["content"] in ("yes.", "no.") and "reasoning_content" not in message
    # a JSON Schema's answer may follow thinking, which comes back as reasoning_content
    r = client.post("/v1/chat/completions", json=_chat(model="thinker", json_schema=SCHEMA, max_tokens=12))
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "length" and choice["message"]["reasoning_content"]


BAD = [
    ({"grammar": "root ::= undefined-rule"}, "grammar", "does not parse"),
    ({"grammar": 'start ::= "a"'}, "grammar", "no rule 'root'"),
    ({"grammar": 'root ::= root "a" | "b"'}, "grammar", "too many ways to parse"),
    ({"grammar": "root ::= " + "(" * 5000 + '"a"' + ")" * 5000}, "grammar", "nest"),
    ({"grammar": ""}, "grammar", "non-empty"),
    ({"grammar": 'root ::= "\ud800"'}, "grammar", "UTF-8"),
    ({"grammar": ["root ::= x"]}, "grammar", "GBNF text"),
    ({"grammar": "root ::= " + " ".join(['("a"{0,1999})'] * 21)}, "grammar", "expand to 41979 elements"),
    ({"grammar": "root ::= " + " ".join(['("a"{00000000002000})'] * 100)}, "grammar", "expand to 200000"),
    ({"grammar": 'root ::= "' + "x" * 1000 + '"{2000}'}, "grammar", "expand to 2000000 elements"),
    ({"grammar": YES_NO, "json_schema": SCHEMA}, "grammar", "not several"),
    ({"json_schema": SCHEMA, "response_format": {"type": "json_object"}}, "json_schema", "not several"),
    ({"json_schema": "object"}, "json_schema", "an object or a boolean"),
    ({"json_schema": {"type": "string", "pattern": "(a"}}, "json_schema", "pattern"),
    ({"grammar": YES_NO, "tools": [{"type": "function", "function": {"name": "f"}}]}, "grammar", "not both"),
]


@pytest.mark.parametrize("fields,param,says", BAD)
def test_a_bad_constraint_is_a_400_naming_its_field(
    client: TestClient, fields: dict[str, Any], param: str, says: str
) -> None:
    for path, body in [("/v1/chat/completions", _chat(**fields)), ("/v1/completions", _text(**fields))]:
        if fields.keys() & {"tools", "response_format"} and "chat" not in path:  # chat fields
            continue
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == param and says in error["message"], (path, error)


def test_a_grammar_no_token_can_follow_fails_alone(client: TestClient) -> None:
    # U+40000 starts with the byte 0xF1, which no token of SmolLM2's vocabulary holds.
    unspellable = 'root ::= "\U00040000"'
    free = client.post("/v1/chat/completions", json=_chat(max_tokens=24)).json()["choices"][0]["message"]
    results: dict[str, Any] = {}

    def run(key: str, body: dict[str, Any]) -> None:
        results[key] = client.post("/v1/chat/completions", json=body)

    threads = [
        threading.Thread(target=run, args=("bad", _chat(grammar=unspellable))),
        threading.Thread(target=run, args=("free", _chat(max_tokens=24))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = results["bad"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "grammar"
    assert "allows no token" in bad.json()["error"]["message"]
    assert results["free"].status_code == 200 and results["free"].json()["choices"][0]["message"] == free
    text, errors = _streamed(client, "/v1/chat/completions", _chat(grammar=unspellable))
    assert text == "" and [e["param"] for e in errors] == ["grammar"]


def test_an_error_of_a_compiled_grammar_names_the_field_it_came_from(client: TestClient) -> None:
    from llamacffi.server import completions, requests

    job = completions.prepare("smol", client.app.state.server.model("smol")[1],  # type: ignore[attr-defined]
                              requests.parse_chat(_chat(json_schema=SCHEMA)), True)  # fmt: skip
    from llamacffi.service import InvalidConfigError

    error = job.failed(InvalidConfigError("no token", field="GenerationOptions.grammar"))
    assert error.param == "json_schema"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    parsed = requests.parse_chat(_chat(tools=tools, tool_choice="required"))
    assert parsed.constraint == "tools"
    assert requests.parse_chat(_chat(response_format={"type": "json_object"})).constraint == "response_format"
    assert requests.parse_chat(_chat()).constraint is None


def test_a_text_response_format_beside_a_constraint_constrains_nothing(client: TestClient) -> None:
    body = _chat(grammar=YES_NO, response_format={"type": "text"})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] in ("yes.", "no.")


def test_a_grammar_is_parsed_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # llama.cpp parses it once per choice, which a short grammar can make slow (repetitions expand)
    from llamacffi.service import LlamaCppTextModel

    threads: list[str] = []
    start = LlamaCppTextModel.start_choices

    def spy(self: Any, *args: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return start(self, *args, **kw)

    monkeypatch.setattr(LlamaCppTextModel, "start_choices", spy)
    for body in [_chat(grammar=YES_NO, n=2), _chat(json_schema=SCHEMA), _chat(max_tokens=2)]:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
    loop = threads[-1]  # a free request starts on the loop
    assert len(threads) == 3 and loop not in threads[:2]
