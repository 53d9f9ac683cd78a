"""Replicas on Ray Serve (``llamacffi.ray``), on one local Ray instance for the module.

Two replicas of smollm2-135m (one thread each) answer concurrent chat requests through Serve's HTTP proxy with the
greedy text a single local model gives; a replica killed while requests run is replaced by Serve and later
requests succeed.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

import llamacffi.ray as lray  # noqa: E402
from llamacffi.service import (  # noqa: E402
    GenerationOptions,
    InvalidConfigError,
    LlamaCppService,
    LocalBackendConfig,
    ModelConfig,
)

TOKENS = 24
PARALLEL = 2
QUESTIONS = [f"Name {n} colours." for n in range(2, 8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(smollm2_path: Path) -> Iterator[str]:
    """A local Ray instance running the deployment: two replicas of one thread; yields Serve's URL."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        lray.deploy(
            str(smollm2_path),
            num_replicas=2,
            threads_per_replica=1,
            parallel=PARALLEL,
            context_size=512,
            served_name="smollm2",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def expected(smollm2_path: Path) -> dict[str, str]:
    """What one local model answers, greedy, to each question."""
    with LlamaCppService(LocalBackendConfig(threads=1)) as svc:
        model = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=512, parallel=1))
        opts = GenerationOptions(max_tokens=TOKENS, temperature=0.0)
        return {q: model.generate(q, opts) for q in QUESTIONS}


def _ask(url: str, question: str, timeout: float = 120) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": TOKENS,
        "temperature": 0,
    }
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)
    r.raise_for_status()
    return dict(r.json())


def _replicas() -> list[dict[str, str]]:
    """The deployment's live replica actors, as ``{"name", "namespace"}`` (Serve names them SERVE_REPLICA::...)."""
    return [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"#{lray.DEPLOYMENT_NAME}#" in a["name"]
    ]


def test_two_replicas_answer_concurrent_requests_like_one_local_model(cluster: str, expected: dict[str, str]) -> None:
    assert len(_replicas()) == 2
    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(lambda q: _ask(cluster, q), QUESTIONS))
    for q, a in zip(QUESTIONS, answers, strict=True):
        assert a["choices"][0]["message"]["content"] == expected[q]
        assert a["model"] == "smollm2"
    models = httpx.get(cluster + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]


def test_a_killed_replica_is_replaced(cluster: str, expected: dict[str, str]) -> None:
    before = _replicas()
    victim = before[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(_ask, cluster, q) for q in QUESTIONS[:4]]
        time.sleep(0.2)
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        for f in running:
            try:
                f.result()  # one on the killed replica may fail; none hangs
            except httpx.HTTPError:
                pass
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = _replicas()
        if len(now) == 2 and victim["name"] not in {a["name"] for a in now}:
            break
        time.sleep(0.5)
    else:
        pytest.fail("Serve did not replace the killed replica within 120 s")
    while time.monotonic() < deadline:  # the new replica loads its model before Serve routes to it
        if serve.status().applications["llamacffi"].status == "RUNNING":
            break
        time.sleep(0.5)
    for q in QUESTIONS:
        assert _ask(cluster, q)["choices"][0]["message"]["content"] == expected[q]


def test_bad_arguments_are_refused_before_ray_runs_anything() -> None:
    with pytest.raises(InvalidConfigError, match="num_replicas"):
        lray.application("smollm2-135m", num_replicas=0)
    with pytest.raises(InvalidConfigError, match="threads_per_replica"):
        lray.application("smollm2-135m", threads_per_replica=0)
    with pytest.raises(InvalidConfigError, match="parallel"):
        lray.application("smollm2-135m", parallel=0)
    with pytest.raises(InvalidConfigError, match="model"):
        lray.build({"num_replicas": 1})
    with pytest.raises(InvalidConfigError, match="served_name"):
        lray.application("smollm2-135m", served_name=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="served_name"):
        lray.application("smollm2-135m", served_name="")
    with pytest.raises(InvalidConfigError, match="rpc_servers must be a list"):
        lray.application("smollm2-135m", rpc_servers="127.0.0.1:50052")
    with pytest.raises(InvalidConfigError, match="ray_actor_options"):
        lray.application("smollm2-135m", ray_actor_options=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="model"):
        lray.build({"model": None})
    with pytest.raises(InvalidConfigError, match=r"unknown.*'replicas'"):
        lray.build({"model": "smollm2-135m", "replicas": 2})
    with pytest.raises(InvalidConfigError, match="args"):
        lray.build(["smollm2-135m"])  # type: ignore[arg-type]


def test_a_replica_whose_model_stopped_serving_reports_itself_unhealthy() -> None:
    """Serve calls ``check_health`` periodically and replaces a replica that raises: one whose model's worker
    process ended (what ``failure`` tells) raises with the reason."""
    from types import SimpleNamespace

    healthy = SimpleNamespace(_model=SimpleNamespace(failure=None))
    lray.Replica.check_health(healthy)  # type: ignore[arg-type]
    failed = SimpleNamespace(_model=SimpleNamespace(failure="the worker process serving model 'm' ended by SIGABRT"))
    with pytest.raises(RuntimeError, match="ended by SIGABRT"):
        lray.Replica.check_health(failed)  # type: ignore[arg-type]
