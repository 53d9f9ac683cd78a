"""The server's ASGI app in this process: mounted in another app, CORS, bad requests beside a running stream."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from conftest import THREADS
from llamacffi.server import create_app
from llamacffi.server.main import _loopback
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig

SYSTEM = "You are a helpful assistant."
ASK = "What is the capital of France?"
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]


@pytest.fixture(scope="module")
def loaded() -> Iterator[Any]:
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield svc.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=4))


def test_mounted_in_another_app(loaded: Any) -> None:
    app = create_app({"smol": loaded}, cors_origins=["https://example.org"])
    parent = Starlette(routes=[Mount("/llm", app=app)])
    with TestClient(parent) as client:
        assert client.get("/llm/health").json() == {"status": "ok"}
        assert [m["id"] for m in client.get("/llm/v1/models").json()["data"]] == ["smol"]
        r = client.post(
            "/llm/v1/chat/completions", json={"model": "smol", "messages": QUESTION, "temperature": 0, "max_tokens": 12}
        )
        assert r.status_code == 200
        expected = loaded.generate(ASK, GenerationOptions(temperature=0, max_tokens=12, system=SYSTEM))
        assert r.json()["choices"][0]["message"]["content"] == expected
        pre = client.options(
            "/llm/v1/chat/completions",
            headers={"origin": "https://example.org", "access-control-request-method": "POST"},
        )
        assert pre.headers["access-control-allow-origin"] == "https://example.org"
        other = client.options(
            "/llm/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers
        r = client.post("/llm/v1/messages", json={"model": "smol", "messages": []})  # Anthropic's errors there too
        assert r.status_code == 400 and r.json()["type"] == "error"
        r = client.post("/llm/v1/chat/completions", json={"model": "smol", "messages": []})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert not loaded._closed  # a model given loaded stays the caller's


def test_bad_requests_do_not_disturb_a_stream(loaded: Any) -> None:
    app = create_app({"smol": loaded})
    body = {"model": "smol", "messages": QUESTION, "temperature": 0, "max_tokens": 32, "stream": True}
    expected = loaded.generate(ASK, GenerationOptions(temperature=0, max_tokens=32, system=SYSTEM))
    bad = [
        b"{",
        json.dumps({"model": "smol", "messages": QUESTION, "n": 99}).encode(),
        json.dumps({"model": "smol", "messages": [{"role": "user", "content": "x" * 10000}]}).encode(),
        json.dumps({"model": "smol", "messages": QUESTION, "logit_bias": {"999999": 5}}).encode(),
    ]
    with TestClient(app) as client:

        def stream() -> str:
            parts = []
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        for c in json.loads(line[6:])["choices"]:
                            parts.append(c["delta"].get("content") or "")
            return "".join(parts)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            text = pool.submit(stream)
            statuses = list(
                pool.map(
                    lambda b: (
                        client.post(
                            "/v1/chat/completions", content=b, headers={"content-type": "application/json"}
                        ).status_code
                    ),
                    bad * 3,
                )
            )
            assert text.result(timeout=120) == expected
    assert set(statuses) == {400}


def test_loopback_addresses() -> None:  # of the sockets bound: a host name is resolved before
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.8.0.1")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.2") and not _loopback("example.org")


def test_health_reports_a_model_whose_worker_process_ended(loaded: Any) -> None:
    """A model whose worker process ended (its RPC server gone) serves nothing more: /health answers 503 naming it
    and why, so that a load balancer stops sending traffic and an orchestrator replaces the instance; requests naming
    it get 503, and /v1/models still lists it."""
    import time

    from llamacffi import rpc
    from rpc_server import RPCServerProcess

    if not rpc.available():
        pytest.skip("built with -DGGML_RPC=OFF")
    server = RPCServerProcess()
    svc = LlamaCppService(LocalBackendConfig(threads=THREADS, gpu_layers=4, rpc_servers=(server.endpoint,)))
    try:
        remote = svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1))
        app = create_app({"smol": loaded, "remote": remote})
        with TestClient(app) as client:
            assert client.get("/health").json() == {"status": "ok"}
            assert remote.failure is None
            server.kill()
            remote._engine._process.kill()  # as llama.cpp's abort on the lost server would end it
            deadline = time.monotonic() + 30
            while remote.failure is None:  # its reader finds the worker gone
                assert time.monotonic() < deadline, "the worker's end was never noticed"
                time.sleep(0.01)
            r = client.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "error" and "'remote'" in body["message"] and "SIGKILL" in body["message"]
            ask = {"model": "remote", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            r = client.post("/v1/chat/completions", json=ask)  # unavailable, as /health says, not a fault of the server
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
            assert "can serve no more requests" in r.json()["error"]["message"]
            # Still listed: it is what the server is configured to serve, and naming it is not a client's mistake.
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["smol", "remote"]
            assert client.get("/v1/models/remote").json()["id"] == "remote"
            assert loaded.failure is None  # the model in this process serves on
            assert client.post("/v1/chat/completions", json={**ask, "model": "smol"}).status_code == 200
    finally:
        svc.close()
        server.kill()


def test_a_service_error_names_the_request_field(loaded: Any) -> None:
    with TestClient(create_app({"smol": loaded})) as client:
        r = client.post(
            "/v1/chat/completions", json={"model": "smol", "messages": QUESTION, "logit_bias": {"999999": 5}}
        )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "logit_bias" and "not in the vocabulary" in r.json()["error"]["message"]


def test_service_fields_map_to_request_params() -> None:
    from llamacffi.server.errors import from_service
    from llamacffi.service import InvalidConfigError

    def param(field: str | None) -> object:
        return from_service(InvalidConfigError("bad", field=field)).param

    assert param("GenerationOptions.top_k") == "top_k" and param("n") == "n"
    assert param("GenerationOptions.json_schema") == "response_format"
    assert param("GenerationOptions.stop_sequences") == "stop"
    assert param("ModelConfig.context_size") is None and param(None) is None


def test_closing_the_app_while_it_loads_is_not_a_load_failure() -> None:
    """An app closed while its models load (a shutdown during startup) does not report the load it cut short as a
    failure: on_load_error, which makes ``llamacffi serve`` exit with an error, is not called."""
    import threading
    import time

    failures: list[BaseException] = []
    app = create_app(
        ["smollm2-135m"],
        backend=LocalBackendConfig(threads=THREADS),
        config=ModelConfig(context_size=256, parallel=1),
        on_load_error=failures.append,
    )
    app.state.server.close()
    deadline = time.monotonic() + 60
    while any(t.name == "llamacffi-load" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the load never ended"
        time.sleep(0.01)
    assert failures == []
    assert app.state.server.error is None


def test_model_routes_take_a_trailing_slash(loaded: Any) -> None:
    """``/v1/models/`` is the list and ``/v1/models/{id}/`` the model, as every other route takes a trailing slash;
    an id with a slash in it is found whether the client escapes the slash or not."""
    app = create_app({"smol": loaded, "org/smol": loaded})
    with TestClient(app) as client:
        assert client.get("/v1/models/").json() == client.get("/v1/models").json()
        for path, name in [("/v1/models/smol/", "smol"), ("/v1/models/org/smol/", "org/smol"),
                           ("/v1/models/org%2Fsmol", "org/smol")]:  # fmt: skip
            r = client.get(path)
            assert r.status_code == 200 and r.json()["id"] == name, path
        assert client.get("/v1/models/nope/").json()["error"]["code"] == "model_not_found"
