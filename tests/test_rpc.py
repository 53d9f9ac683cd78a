"""A model split across hosts with llama.cpp's RPC backend: two ``llamacffi rpc-server`` processes on loopback.

Layers are split across the local CPU and both servers; greedy continuations must equal the local model's token for
token. Faults: a server that is down, of another protocol version or killed mid-generation ends in a clear error
within a bound, and the process goes on.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llamacffi
from llamacffi import Batch, Context, InvalidArgumentError, Model, ModelLoadError, placement, rpc
from llamacffi.service import (
    GenerationError,
    GenerationOptions,
    InvalidConfigError,
    LlamaCppService,
    LocalBackendConfig,
    ModelConfig,
    ModelLoadFailedError,
)
from rpc_server import RPCServerProcess

needs_rpc = pytest.mark.skipif(not rpc.available(), reason="built with -DGGML_RPC=OFF")
PROMPT = "The capital of France is"
N_GEN = 24
OFFLOAD = 20  # of smollm2-135m's 30 layers: 10 stay on the local CPU, 10 go to each server


def greedy(model: Model, n: int = N_GEN) -> list[int]:
    tokens = model.vocab.tokenize(PROMPT, add_special=True)
    out: list[int] = []
    with Context(model, n_ctx=128, n_batch=64, n_threads=2) as ctx:
        ctx.decode(Batch.from_tokens(tokens))
        pos = len(tokens)
        for _ in range(n):
            token = int(np.argmax(ctx.logits()))
            out.append(token)
            ctx.decode_token(token, pos)
            pos += 1
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    if not rpc.available():
        pytest.skip("built with -DGGML_RPC=OFF")
    cache = tmp_path_factory.mktemp("rpc") / "cache"
    started = [RPCServerProcess(), RPCServerProcess(("--threads", "1", "--cache", str(cache)))]
    assert cache.is_dir()
    try:
        yield [s.endpoint for s in started]
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def local_tokens(smollm2_path: Path) -> list[int]:
    with Model.load(smollm2_path) as m:
        return greedy(m)


# ---- refusals before any C call ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split_mode": "tensor"}, "split_mode"),
        ({"split_mode": 1}, "split_mode"),
        ({"main_gpu": -2}, "main_gpu"),
        ({"main_gpu": 1, "split_mode": "none", "devices": ["CPU"]}, "main_gpu"),
        ({"tensor_split": [1.0, -1.0]}, "tensor_split"),
        ({"tensor_split": [float("nan")]}, "tensor_split"),
        ({"tensor_split": [0.0, 0.0]}, "positive sum"),
        ({"tensor_split": [1.0] * 17}, "tensor_split"),
        ({"tensor_split": "1,1"}, "tensor_split"),
        ({"tensor_split": [1, 1, 1], "devices": ["CPU"]}, "one share per device"),
        ({"devices": []}, "at least one"),
        ({"devices": "CPU"}, "devices"),
        ({"devices": ["CPU", "cpu"]}, "twice"),
        ({"rpc_servers": ["localhost"]}, "host:port"),
        ({"rpc_servers": ["127.0.0.1:0"]}, "host:port"),
        ({"rpc_servers": ["127.0.0.1:70000"]}, "host:port"),
        ({"rpc_servers": ["a b:1"]}, "host:port"),
        ({"rpc_servers": ["a..b:50052"]}, "label"),
        ({"rpc_servers": [".:50052"]}, "label"),
        ({"rpc_servers": ["a" * 64 + ":50052"]}, "label"),
        ({"rpc_servers": ["127.0.0.1:5", "127.0.0.1:5"]}, "twice"),
        ({"rpc_servers": [f"127.0.0.1:{p}" for p in range(1, 18)]}, "at most"),
    ],
)
def test_bad_placement_is_refused_before_loading(smollm2_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        placement.check(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=match):
        Model.load(smollm2_path, **kwargs)  # type: ignore[arg-type]


@needs_rpc
def test_a_host_name_that_cannot_be_encoded_is_a_load_error() -> None:
    """A name the resolver's IDNA encoding refuses is a ModelLoadError from probe(), never a raw UnicodeError;
    parse() refuses such names first (a trailing dot, a fully qualified name, is fine)."""
    assert rpc.parse("localhost.:1").host == "localhost."
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        rpc.probe(rpc.Endpoint("a..b", 50052), timeout=1)
    with pytest.raises(InvalidArgumentError, match="label"):
        llamacffi.system_info(rpc_servers=["a" * 64 + ".example:50052"])


def test_unknown_device_is_refused(smollm2_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"no device named .GPU7.*CPU"):
        Model.load(smollm2_path, devices=["GPU7"])


def test_service_config_checks_placement() -> None:
    with pytest.raises(InvalidConfigError, match=r"LocalBackendConfig\.rpc_servers"):
        LocalBackendConfig(rpc_servers=("nope",))
    with pytest.raises(InvalidConfigError, match=r"LocalBackendConfig\.tensor_split"):
        LocalBackendConfig(tensor_split=(-1.0,))
    assert LocalBackendConfig(rpc_servers=["127.0.0.1:1"]).rpc_servers == ("127.0.0.1:1",)  # type: ignore[arg-type]
    assert LocalBackendConfig.from_json(LocalBackendConfig(rpc_servers=("h:1",)).to_json()).rpc_servers == ("h:1",)


@pytest.mark.skipif(rpc.available(), reason="only a build with -DGGML_RPC=OFF")
def test_without_the_rpc_backend_loads_say_so(smollm2_path: Path) -> None:
    with pytest.raises(rpc.RPCUnavailableError, match="GGML_RPC=OFF"):
        Model.load(smollm2_path, rpc_servers=["127.0.0.1:50052"])
    assert llamacffi.system_info()["rpc"] is False


# ---- servers that cannot serve -----------------------------------------------------------------------------------


@needs_rpc
def test_server_down_is_a_clear_error(smollm2_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=f"RPC server {endpoint} cannot be reached"):
        Model.load(smollm2_path, rpc_servers=[endpoint])
    assert time.monotonic() - t0 < rpc.limits.RPC_PROBE_TIMEOUT + 1


def _fake_server(answer: bytes | None) -> tuple[str, threading.Thread]:
    """A server that reads a HELLO and answers ``answer`` (None: hangs up)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                if answer is not None:
                    conn.sendall(struct.pack("<Q", len(answer)) + answer)
                    try:
                        conn.recv(1)
                    except OSError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", thread


@needs_rpc
@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (bytes([rpc.PROTOCOL[0] - 1, 0, 0, 0]) + bytes(rpc.CAPS_SIZE), "speaks RPC protocol"),
        (bytes([rpc.PROTOCOL[0], rpc.PROTOCOL[1] + 1, 0, 0]) + bytes(rpc.CAPS_SIZE), "minor must not be newer"),
        (bytes([rpc.PROTOCOL[0], 0, 0]), "another RPC protocol"),
        (None, "another RPC protocol version"),
    ],
)
def test_version_mismatch_is_a_clear_error(smollm2_path: Path, answer: bytes | None, match: str) -> None:
    endpoint, thread = _fake_server(answer)
    with pytest.raises(ModelLoadError, match=match):
        Model.load(smollm2_path, rpc_servers=[endpoint])
    thread.join(5)


@needs_rpc
def test_a_server_that_does_not_answer_times_out(smollm2_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts nothing: the HELLO is never answered
    with listener:
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ModelLoadError, match="busy serving another client"):
            rpc.probe(rpc.parse(endpoint), timeout=0.5)
        assert time.monotonic() - t0 < 2


def test_rpc_server_refuses_a_remote_address() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llamacffi", "rpc-server", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "refusing to listen on 0.0.0.0" in proc.stderr and "--allow-remote" in proc.stderr
    assert "no authentication or encryption" in proc.stderr


START_SERVER_BESIDE_A_LISTENER = """
import json, socket
from llamacffi import rpc
other = socket.socket()
other.bind(("127.0.0.1", 0))
other.listen(1)  # a listening socket of this process that is not the RPC server's
taken = other.getsockname()[1]
serving = rpc.start_server("127.0.0.1", 0, threads=1, devices=["CPU"])
out = {"taken": taken, "port": serving.port, "version": list(rpc.probe(rpc.parse(f"127.0.0.1:{serving.port}"), 5))}
try:
    rpc.start_server("127.0.0.1", taken, threads=1, devices=["CPU"])
    out["reuse"] = "returned"
except OSError as exc:
    out["reuse"] = str(exc)
print(json.dumps(out))
"""


@needs_rpc
def test_start_server_reports_its_own_socket_or_fails() -> None:
    """In a process that already listens elsewhere, ``start_server`` returns the port of the socket it made (a HELLO
    there is answered), and a port already taken is an OSError, not a success. In a process of its own: its server
    thread never returns, and the process ends it."""
    proc = subprocess.run(
        [sys.executable, "-c", START_SERVER_BESIDE_A_LISTENER],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["port"] != out["taken"]
    assert tuple(out["version"]) == rpc.PROTOCOL
    assert "could not listen on 127.0.0.1:" in out["reuse"]


# ---- a model split across the CPU and two servers -----------------------------------------------------------------


@needs_rpc
def test_layers_split_across_cpu_and_two_servers(
    smollm2_path: Path, servers: list[str], local_tokens: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    llamacffi.set_log_level("INFO")
    try:
        with caplog.at_level(logging.INFO, logger="llamacffi"):
            model = Model.load(smollm2_path, rpc_servers=servers, n_gpu_layers=OFFLOAD, tensor_split=[1, 1])
    finally:
        llamacffi.set_log_level("WARNING")
    with model:
        assert model.devices is not None and len(model.devices) == 2
        assert all(d.startswith("RPC") for d in model.devices)
        log = caplog.text
        assert f"offloaded {OFFLOAD}/" in log
        for endpoint in servers:
            assert f"[{endpoint}] model buffer size" in log  # weights on each server
        assert "CPU_Mapped model buffer size" in log or "CPU model buffer size" in log  # and here
        assert greedy(model) == local_tokens


@needs_rpc
def test_devices_by_name_and_a_second_load(smollm2_path: Path, servers: list[str], local_tokens: list[int]) -> None:
    with Model.load(smollm2_path, rpc_servers=servers[:1], n_gpu_layers=OFFLOAD) as first:
        assert first.devices is not None and len(first.devices) == 1
        # a second model on the same server while the first holds its connection; named devices, all on one
        with Model.load(
            smollm2_path, rpc_servers=servers, devices=first.devices, split_mode="none", n_gpu_layers=99
        ) as second:
            assert second.devices == first.devices
            assert greedy(second, 8) == local_tokens[:8]
    # a later load that names no server uses none: all on this machine
    with Model.load(smollm2_path) as plain:
        assert plain.devices is None


@needs_rpc
def test_a_model_on_devices_named_alone_shares_its_servers_connection(smollm2_path: Path, servers: list[str]) -> None:
    # A server's devices, once added, can be named without rpc_servers. A model so placed holds the server's one
    # connection; a later load naming the server shares it, instead of waiting behind it for a HELLO ("busy").
    with Model.load(smollm2_path, rpc_servers=servers[:1], n_gpu_layers=OFFLOAD) as first:
        names = first.devices
    with Model.load(smollm2_path, devices=names, n_gpu_layers=OFFLOAD) as held:
        with Model.load(smollm2_path, rpc_servers=servers[:1], n_gpu_layers=OFFLOAD) as second:
            assert second.devices == held.devices == names
        assert llamacffi.system_info(servers[:1])["rpc_devices"][0]["name"] == names[0]


@needs_rpc
def test_row_split_on_a_backend_without_split_buffers_is_refused_before_loading(
    smollm2_path: Path, servers: list[str]
) -> None:
    # llama.cpp would read the file, then refuse ("does not support split buffers"); RPC devices have none.
    with pytest.raises(InvalidArgumentError, match=r"split_mode 'row'.*RPC"):
        Model.load(smollm2_path, rpc_servers=servers[:1], split_mode="row", n_gpu_layers=OFFLOAD)


def test_the_docs_name_the_backends_that_split_rows() -> None:
    """DISTRIBUTED.md's ``split_mode`` row names exactly the backends of the vendored llama.cpp that offer split
    buffers (what row split needs), and no other."""
    import os
    import re

    root = Path(__file__).resolve().parent.parent
    ggml = Path(os.environ.get("LLAMACFFI_LLAMA_CPP_DIR") or root / "vendor" / "llama.cpp") / "ggml" / "src"
    if not ggml.is_dir():
        pytest.skip("no llama.cpp tree")
    backends = {d.name[5:] for d in ggml.glob("ggml-*") if d.is_dir()}
    splitting = {
        d.name[5:]
        for d in ggml.glob("ggml-*")
        if d.is_dir()
        and any('"ggml_backend_split_buffer_type"' in f.read_text(errors="replace") for f in d.glob("*.cpp"))
    }
    assert splitting, "no backend of the tree offers split buffers: the check below would say nothing"
    row = next(line for line in (root / "docs" / "DISTRIBUTED.md").read_text().splitlines() if "`split_mode=`" in line)
    named = {b for b in backends if re.search(rf"\b{b}\b", row, re.IGNORECASE)}
    assert named == splitting


@needs_rpc
def test_system_info_and_info_list_remote_devices(servers: list[str]) -> None:
    info = llamacffi.system_info(rpc_servers=servers)
    assert info["rpc"] is True and info["rpc_protocol"] == ".".join(map(str, rpc.PROTOCOL))
    remote = info["rpc_devices"]
    assert isinstance(remote, list)
    by_endpoint = {d["endpoint"]: d for d in remote}
    assert set(servers) <= set(by_endpoint)
    for e in servers:
        assert int(by_endpoint[e]["memory_total"]) > 0 and "name" in by_endpoint[e]
    proc = subprocess.run(
        [sys.executable, "-m", "llamacffi", "info", "--json", "--rpc", servers[0]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["rpc_devices"]
    assert listed[0]["endpoint"] == servers[0] and listed[0]["memory_total"] > 0


# ---- the service: an RPC model in a worker process ---------------------------------------------------------------


GREEDY = GenerationOptions(max_tokens=N_GEN, temperature=0.0, raw=True)


@needs_rpc
def test_service_model_on_servers_matches_local_and_survives_a_server_killed(smollm2_path: Path) -> None:
    own = [RPCServerProcess() for _ in range(2)]  # this test kills one: servers of its own
    local_svc = LlamaCppService(LocalBackendConfig(threads=1))
    rpc_svc = LlamaCppService(
        LocalBackendConfig(
            threads=1, gpu_layers=OFFLOAD, rpc_servers=tuple(s.endpoint for s in own), tensor_split=(1.0, 1.0)
        )
    )
    try:
        config = ModelConfig(context_size=1024, parallel=2)
        local = local_svc.load_model(str(smollm2_path), config=config)
        split = rpc_svc.load_model(str(smollm2_path), config=config)
        expected = local.generate(PROMPT, GREEDY)
        assert split.generate(PROMPT, GREEDY) == expected

        long = GenerationOptions(max_tokens=900, temperature=0.0, raw=True)
        stream = split.generate_stream("Once upon a time", long)
        next(stream)
        own[1].kill()
        t0 = time.monotonic()
        with pytest.raises(GenerationError, match="worker process serving model"):
            for _ in stream:
                pass
        assert time.monotonic() - t0 < 10
        with pytest.raises(GenerationError):  # the model is gone; later requests are refused at once
            split.generate(PROMPT, GREEDY)
        assert local.generate(PROMPT, GREEDY) == expected  # this process and its other models go on
    finally:
        rpc_svc.close()
        local_svc.close()
        for s in own:
            s.stop()


@needs_rpc
def test_service_load_with_a_server_down_names_it(smollm2_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    with LlamaCppService(LocalBackendConfig(threads=1, rpc_servers=(endpoint,))) as svc:
        with pytest.raises(ModelLoadFailedError, match=f"RPC server {endpoint} cannot be reached"):
            svc.load_model(str(smollm2_path))
        with pytest.raises(InvalidConfigError, match="embedding models"):
            svc.load_model(str(smollm2_path), llamacffi.service.ModelType.TEXT_EMBEDDING)


# ---- the commands take --rpc --------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llamacffi", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@needs_rpc
def test_generate_and_bench_take_rpc(smollm2_path: Path, servers: list[str]) -> None:
    common = ["-m", str(smollm2_path), "-t", "1"]
    gen = ["generate", "--temp", "0", "-n", "12", "--raw", PROMPT, *common]
    local = _cli(*gen)
    split = _cli(*gen, "--rpc", ",".join(servers), "-ngl", str(OFFLOAD), "--tensor-split", "1,1")
    assert local.returncode == 0 and split.returncode == 0, split.stderr
    assert split.stdout == local.stdout
    bench = _cli("bench", "-p", "16", "-g", "4", *common, "--rpc", servers[0])
    assert bench.returncode == 0, bench.stderr
    assert "tg4" in bench.stdout
    down = _cli(*gen, "--rpc", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot be reached" in down.stderr and "Traceback" not in down.stderr


@needs_rpc
def test_serve_takes_rpc(smollm2_path: Path, servers: list[str]) -> None:
    import httpx

    from server_process import ServeProcess

    server = ServeProcess(["-m", str(smollm2_path), "--alias", "m", "-t", "1", "--rpc", servers[1], "-ngl", "10"])
    try:
        # two choices (the second starts from a copy of the first's prompt) with log-probabilities: every kind of
        # event crosses the worker's pipe
        body = {"model": "m", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "n": 2, "logprobs": 2}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["usage"]["completion_tokens"] == 16
        first, second = out["choices"]
        assert first["text"] == second["text"] and len(first["logprobs"]["tokens"]) == 8
    finally:
        server.stop()


@needs_rpc
def test_service_stops_a_worker_whose_server_stops_answering(smollm2_path: Path) -> None:
    import os
    import signal

    server = RPCServerProcess()
    svc = LlamaCppService(
        LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,), rpc_timeout=2.0)
    )
    try:
        model = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=1024, parallel=1))
        stream = model.generate_stream("Once upon a time", GenerationOptions(max_tokens=900, temperature=0.0))
        next(stream)
        os.kill(server.proc.pid, signal.SIGSTOP)  # alive, connection open, never answers: a host gone silent
        t0 = time.monotonic()
        with pytest.raises(GenerationError, match="sent nothing for 2 s"):
            for _ in stream:
                pass
        assert time.monotonic() - t0 < 6
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        svc.close()
        server.kill()


@needs_rpc
def test_a_remote_device_named_later_is_checked_too(smollm2_path: Path) -> None:
    server = RPCServerProcess()
    try:
        with Model.load(smollm2_path, rpc_servers=[server.endpoint], n_gpu_layers=4) as m:
            assert m.devices is not None
            name = m.devices[0]
    finally:
        server.kill()
    with pytest.raises(ModelLoadError, match=f"RPC server {server.endpoint} cannot be reached"):
        Model.load(smollm2_path, devices=[name], n_gpu_layers=4)  # without the check: llama.cpp would abort


@needs_rpc
@pytest.mark.parametrize("fault", ["unreadable", "an end cut short"])
def test_a_message_the_service_cannot_handle_ends_the_worker_not_its_callers(smollm2_path: Path, fault: str) -> None:
    """Whatever message cannot be handled, the callers fail: the request of a last message that cannot be handled
    too, which is out of the worker's table by then."""
    import pickle

    from conftest import answer_within

    server = RPCServerProcess()
    svc = LlamaCppService(LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,)))
    try:
        model = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256, parallel=1))
        engine = model._engine
        dispatch = engine._dispatch  # type: ignore[attr-defined]

        def unreadable(msg: tuple[object, ...]) -> None:
            if fault == "unreadable":
                raise pickle.UnpicklingError("a message cut short")
            dispatch(msg[:6] if msg[0] == "end" else msg)  # an end without its stats

        engine._dispatch = unreadable  # type: ignore[attr-defined]
        greedy = GenerationOptions(max_tokens=8, temperature=0.0)
        with pytest.raises(GenerationError, match="worker process"):
            answer_within(60, lambda: model.generate("Once upon a time", greedy))
    finally:
        svc.close()
        server.kill()
    assert engine._conn.closed  # type: ignore[attr-defined]


# ---- the worker process's own faults ------------------------------------------------------------------------------


@needs_rpc
def test_an_interrupted_load_ends_its_worker(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while the service waits for the worker to load kills and reaps the worker at once: it does not
    live on (holding the server's one connection) for as long as the KeyboardInterrupt is kept."""
    from llamacffi.service import worker

    server = RPCServerProcess()
    started: list[subprocess.Popen[bytes]] = []

    def interrupted(self: worker.WorkerEngine) -> None:
        started.append(self._process)
        raise KeyboardInterrupt  # where a Ctrl-C lands while the service waits

    monkeypatch.setattr(worker.WorkerEngine, "_wait_ready", interrupted)
    svc = LlamaCppService(LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,)))
    try:
        with pytest.raises(KeyboardInterrupt):
            svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256, parallel=1))
        assert started and started[0].returncode is not None  # killed and reaped
        assert rpc.probe(rpc.parse(server.endpoint), timeout=10) == rpc.PROTOCOL  # the server is free
    finally:
        svc.close()
        server.kill()


@pytest.fixture
def process_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, float | None]]:
    """``(pid, "kill" | "wait", timeout)`` of every Popen.kill and Popen.wait the test makes, in order."""
    calls: list[tuple[int, str, float | None]] = []
    kill, wait = subprocess.Popen.kill, subprocess.Popen.wait

    def recorded_kill(self: subprocess.Popen[bytes]) -> None:
        calls.append((self.pid, "kill", None))
        kill(self)

    def recorded_wait(self: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        calls.append((self.pid, "wait", timeout))
        return wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "kill", recorded_kill)
    monkeypatch.setattr(subprocess.Popen, "wait", recorded_wait)
    return calls


@needs_rpc
def test_a_stalled_load_kills_its_worker_at_once(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch, process_calls: list[tuple[int, str, float | None]]
) -> None:
    """A worker that makes no progress while loading is killed when that is found, without first waiting for an
    exit it cannot make."""
    import os
    import signal

    from llamacffi.service import worker

    server = RPCServerProcess()
    pids: list[int] = []
    wait_ready = worker.WorkerEngine._wait_ready

    def hung(self: worker.WorkerEngine) -> None:
        pids.append(self._process.pid)
        os.kill(self._process.pid, signal.SIGSTOP)  # alive, never answers: a load stuck in C
        wait_ready(self)

    monkeypatch.setattr(worker.WorkerEngine, "_wait_ready", hung)
    svc = LlamaCppService(
        LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,), rpc_timeout=0.5)
    )
    try:
        with pytest.raises(ModelLoadFailedError, match=r"made no progress for 0\.5 s"):
            svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256, parallel=1))
        mine = [(what, timeout) for pid, what, timeout in process_calls if pid == pids[0]]
        assert mine[0] == ("kill", None), mine
    finally:
        svc.close()
        server.kill()


@needs_rpc
def test_closing_a_model_whose_worker_hangs_fails_its_requests_first_and_waits_briefly(
    smollm2_path: Path, process_calls: list[tuple[int, str, float | None]]
) -> None:
    """close() of a model whose worker is stuck (SIGSTOP, as a decode stuck in C): the requests waiting on it end
    with ModelClosedError while the worker still runs, and the worker gets a short grace before it is killed."""
    import os
    import signal

    from llamacffi.service import ModelClosedError, worker

    server = RPCServerProcess()
    svc = LlamaCppService(LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,)))
    try:
        model = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256, parallel=1))
        engine = model._engine
        assert isinstance(engine, worker.WorkerEngine)
        pid = engine._process.pid
        os.kill(pid, signal.SIGSTOP)
        answers: list[object] = []
        waiting = threading.Thread(target=lambda: answers.append(_closed(model)), daemon=True)
        waiting.start()
        deadline = time.monotonic() + 30
        while model.load == (0, 0):  # until the request is under way
            assert time.monotonic() < deadline, "the request never reached the worker"
            time.sleep(0.01)
        alive_when_failed: list[bool] = []
        fail_all = engine._fail_all

        def recorded(error: Exception) -> None:
            alive_when_failed.append(engine._process.poll() is None)
            fail_all(error)

        engine._fail_all = recorded  # type: ignore[method-assign]
        model.close()
        waiting.join(60)
        assert answers and isinstance(answers[0], ModelClosedError)
        assert alive_when_failed == [True]
        mine = [(what, timeout) for p, what, timeout in process_calls if p == pid]
        assert mine[0][0] == "wait" and mine[0][1] is not None and mine[0][1] <= worker.CLOSE_GRACE_S <= 2
        assert mine[1] == ("kill", None)
    finally:
        svc.close()
        server.kill()


def _closed(model: object) -> object:
    """What a request on ``model`` ends with: its text, or the exception it raised."""
    from llamacffi.service import LlamaCppTextModel

    assert isinstance(model, LlamaCppTextModel)
    try:
        return model.generate("Once upon a time", GenerationOptions(max_tokens=8, temperature=0.0))
    except Exception as exc:
        return exc


class _MainStop(str):
    """A str subclass that pickles by reference to ``__main__``, which the worker process's ``__main__`` lacks."""


@pytest.fixture(scope="module")
def worker_model(smollm2_path: Path) -> Iterator[llamacffi.service.LlamaCppTextModel]:
    """A model in a worker process on a server of its own: one slot and one waiting place."""
    server = RPCServerProcess()
    svc = LlamaCppService(LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,)))
    try:
        yield svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256, parallel=1, max_queue=1))
    finally:
        svc.close()
        server.kill()


SHORT = GenerationOptions(max_tokens=8, temperature=0.0, raw=True)


@needs_rpc
def test_options_of_str_subclasses_reach_the_worker_as_plain_data(
    worker_model: llamacffi.service.LlamaCppTextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop sequences of a str subclass this process cannot pickle (defined in a function) or the worker cannot
    import (from the caller's ``__main__``) work as plain strs do, call after call."""
    import dataclasses

    class LocalStop(str):
        pass

    monkeypatch.setattr(_MainStop, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "_MainStop", _MainStop, raising=False)
    expected = worker_model.generate(PROMPT, dataclasses.replace(SHORT, stop_sequences=("\n\n",)))
    for kind in (LocalStop, _MainStop, LocalStop, _MainStop):
        assert worker_model.generate(PROMPT, dataclasses.replace(SHORT, stop_sequences=(kind("\n\n"),))) == expected
    assert worker_model.load == (0, 0)


@needs_rpc
def test_what_the_pipe_cannot_carry_is_refused_and_the_model_serves_on(
    worker_model: llamacffi.service.LlamaCppTextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options that cannot be pickled are an InvalidConfigError that leaves nothing queued (repeated past the
    queue's size); options the worker cannot read are an InvalidConfigError from the worker, which serves on."""
    from llamacffi.service import worker

    expected = worker_model.generate(PROMPT, SHORT)
    odd = GenerationOptions(max_tokens=8, temperature=0.0, raw=True)
    object.__setattr__(odd, "system", lambda: "no pickle")  # past the checks: nothing refuses it before the pipe
    for _ in range(4):
        with pytest.raises(InvalidConfigError, match="cannot be sent to its worker process"):
            worker_model.generate(PROMPT, odd)
        assert worker_model.load == (0, 0)
    monkeypatch.setattr(worker, "_plain", lambda value: value)  # subclasses sent as they are
    monkeypatch.setattr(_MainStop, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "_MainStop", _MainStop, raising=False)
    unreadable = GenerationOptions(max_tokens=8, temperature=0.0, raw=True, stop_sequences=(_MainStop("\n\n"),))
    with pytest.raises(InvalidConfigError, match="worker process could not read"):
        worker_model.generate(PROMPT, unreadable)
    assert worker_model.generate(PROMPT, SHORT) == expected


@needs_rpc
def test_a_worker_decoding_a_prompt_longer_than_rpc_timeout_is_not_a_stall(smollm2_path: Path) -> None:
    """A worker that decodes a prompt for longer than its stall timeout reports its steps, so it is not taken for
    stuck: the request completes and the model serves on. Steps of one token make a short prompt slow to decode
    (over RPC a step costs round trips), sized here from a shorter one's time to take about two timeouts; the
    context stays short because llama.cpp's step with output can itself take a while at a long one. The timeout
    is a few seconds: on a busy machine one step can take a second."""
    from conftest import answer_within

    timeout = 3.0
    server = RPCServerProcess()
    svc = LlamaCppService(
        LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,), rpc_timeout=timeout)
    )
    one = GenerationOptions(max_tokens=1, temperature=0.0, raw=True)
    try:
        config = ModelConfig(context_size=1024, parallel=1, batch_size=1, prompt_cache_mib=0)
        model = svc.load_model(str(smollm2_path), config=config)
        t0 = time.monotonic()
        model.generate(" ".join(["the"] * 40), one)
        n = min(900, int(2 * timeout / ((time.monotonic() - t0) / 40)) + 40)
        t0 = time.monotonic()
        answer_within(300, lambda: model.generate(" ".join(["a"] * n), one))
        if time.monotonic() - t0 <= timeout:
            pytest.skip(f"{n} tokens decoded within the timeout here: nothing was at stake")
        assert isinstance(model.generate(PROMPT, one), str)
    finally:
        svc.close()
        server.kill()


# ---- workers without RPC servers: the pipe and the process, not the network ---------------------------------------


def _workers(svc: LlamaCppService, path: Path, n: int) -> list[llamacffi.service.LlamaCppTextModel]:
    """``n`` models of ``svc``, each in a worker process of its own, on this machine's CPU: an RPC server serves one
    process at a time, and what these tests look at is the worker, not the network."""
    return [svc._load_in_worker("smol", path, ModelConfig(context_size=256, parallel=1)) for _ in range(n)]


def test_closing_a_worker_whose_pipe_is_descriptor_1024_or_more_lets_it_end_by_itself(smollm2_path: Path) -> None:
    """close() asks the worker to end through its pipe when the pipe's descriptor is 1024 or more (select() refuses
    those): the worker exits by itself, with status 0, rather than being killed."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: no descriptor from 1024 on can be opened here")
    if soft != resource.RLIM_INFINITY and soft < 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1100, hard))
    spare: list[int] = []
    svc = LlamaCppService(LocalBackendConfig(threads=1))
    try:
        while not spare or spare[-1] < 1023:  # every descriptor below 1024 taken: the pipe's come after
            spare.append(os.open(os.devnull, os.O_RDONLY))
        (model,) = _workers(svc, smollm2_path, 1)
        for fd in spare:
            os.close(fd)
        spare.clear()
        engine = model._engine
        assert engine._conn.fileno() >= 1024  # type: ignore[attr-defined]
        model.close()
        assert engine._process.returncode == 0  # type: ignore[attr-defined]
    finally:
        for fd in spare:
            os.close(fd)
        svc.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_requests_to_a_worker_that_just_ended_hear_how_it_ended(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests sent while this side reaps a worker that ended fail with the GenerationError saying how it ended,
    not with ModelClosedError, and the model reports itself down with the same words. Reaping is slowed here to
    widen that moment."""
    svc = LlamaCppService(LocalBackendConfig(threads=1))
    try:
        (model,) = _workers(svc, smollm2_path, 1)
        process = model._engine._process  # type: ignore[attr-defined]
        wait = process.wait
        reaping = threading.Event()

        def slow_wait(timeout: float | None = None) -> int:
            reaping.set()
            time.sleep(0.5)
            return wait(timeout)

        monkeypatch.setattr(process, "wait", slow_wait)
        process.kill()
        assert reaping.wait(30), "the worker's end was never noticed"
        answers = [_closed(model) for _ in range(3)]
        for a in answers:
            assert isinstance(a, GenerationError), a
            assert "the worker process serving model 'smol' was ended by SIGKILL" in str(a)
        assert model.failure == str(answers[-1])
    finally:
        svc.close()


def _fill(conn: Any) -> None:
    """Write to ``conn`` until its pipe is full, as requests to a worker that reads nothing leave it."""
    import os

    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        while True:
            try:
                s.send(b"\0" * 65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
    finally:
        s.close()


def test_a_request_to_a_worker_that_reads_nothing_fails_promptly(smollm2_path: Path) -> None:
    """A request to a worker that stopped reading its pipe (SIGSTOP), the pipe full, fails within a short bound with
    the GenerationError of a worker gone, naming the model, instead of waiting for the stall check (rpc_timeout); the
    worker is stopped, the model reports it down, and later requests are refused at once."""
    import os
    import signal

    from conftest import answer_within

    svc = LlamaCppService(LocalBackendConfig(threads=1, rpc_timeout=60.0))
    try:
        (model,) = _workers(svc, smollm2_path, 1)
        engine = model._engine
        os.kill(engine._process.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
        _fill(engine._conn)  # type: ignore[attr-defined]
        t0 = time.monotonic()
        with pytest.raises(GenerationError, match="worker process serving model 'smol'"):
            answer_within(30, lambda: model.generate(PROMPT, GREEDY))
        assert time.monotonic() - t0 < 10
        assert model.failure is not None and "worker process serving model 'smol'" in model.failure
        with pytest.raises(GenerationError, match="worker process serving model 'smol'"):
            answer_within(5, lambda: model.generate(PROMPT, GREEDY))
        assert engine._process.wait(10) == -signal.SIGKILL  # type: ignore[attr-defined]
    finally:
        svc.close()


def test_closing_a_service_closes_its_hung_workers_together(
    smollm2_path: Path, process_calls: list[tuple[int, str, float | None]]
) -> None:
    """close() of a service whose workers all hang (SIGSTOP, as decodes stuck in C): the request waiting on each ends
    with ModelClosedError while its worker still runs, and the workers share one grace before they are killed
    instead of each waiting a grace of its own after the one before."""
    import os
    import signal

    from llamacffi.service import ModelClosedError, worker

    svc = LlamaCppService(LocalBackendConfig(threads=1))
    try:
        models = _workers(svc, smollm2_path, 3)
        alive_when_failed: list[bool] = []
        answers: list[object] = []
        waiting = []
        for m in models:
            engine = m._engine
            assert isinstance(engine, worker.WorkerEngine)
            os.kill(engine._process.pid, signal.SIGSTOP)

            def recorded(
                error: Exception, engine: worker.WorkerEngine = engine, fail_all: Any = engine._fail_all
            ) -> None:
                alive_when_failed.append(engine._process.poll() is None)
                fail_all(error)

            engine._fail_all = recorded  # type: ignore[method-assign]
            waiting.append(threading.Thread(target=lambda m=m: answers.append(_closed(m)), daemon=True))
            waiting[-1].start()
        deadline = time.monotonic() + 30
        while any(m.load == (0, 0) for m in models):  # until every request is under way
            assert time.monotonic() < deadline, "a request never reached its worker"
            time.sleep(0.01)
        t0 = time.monotonic()
        svc.close()
        took = time.monotonic() - t0
        for t in waiting:
            t.join(60)
        assert len(answers) == 3 and all(isinstance(a, ModelClosedError) for a in answers), answers
        assert alive_when_failed == [True, True, True]
        assert took < 2 * worker.CLOSE_GRACE_S, f"{took:.1f} s: the workers were waited on one after another"
        for m in models:
            pid = m._engine._process.pid  # type: ignore[attr-defined]
            assert [what for p, what, _ in process_calls if p == pid][-2:] == ["kill", "wait"]
    finally:
        svc.close()


def test_a_worker_whose_reader_cannot_start_does_not_outlive_the_load(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that fails after the worker is ready (here: its reader thread cannot start, as when the process is out
    of threads) kills and reaps the worker: no process is left behind, holding the model's memory and servers."""
    from llamacffi.service import worker

    started: list[subprocess.Popen[bytes]] = []
    wait_ready = worker.WorkerEngine._wait_ready
    start = threading.Thread.start

    def recorded(self: worker.WorkerEngine) -> None:
        started.append(self._process)
        wait_ready(self)

    def refused(self: threading.Thread) -> None:
        if self.name.startswith("llamacffi-worker-reader"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(worker.WorkerEngine, "_wait_ready", recorded)
    monkeypatch.setattr(threading.Thread, "start", refused)
    svc = LlamaCppService(LocalBackendConfig(threads=1))
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            _workers(svc, smollm2_path, 1)
        assert started and started[0].returncode is not None  # killed and reaped
    finally:
        svc.close()


@needs_rpc
def test_a_worker_whose_parent_is_gone_ends_though_its_decode_is_stuck(smollm2_path: Path) -> None:
    """A worker whose pipe closes at the other end (its parent died: nothing will kill it) while its engine is stuck
    in a decode (an RPC server that stopped answering) ends by itself within a grace instead of living on."""
    import os
    import signal

    from llamacffi.service import worker

    server = RPCServerProcess()
    svc = LlamaCppService(LocalBackendConfig(threads=1, gpu_layers=OFFLOAD, rpc_servers=(server.endpoint,)))
    try:
        model = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=1024, parallel=1))
        engine = model._engine
        assert isinstance(engine, worker.WorkerEngine)
        stream = model.generate_stream("Once upon a time", GenerationOptions(max_tokens=900, temperature=0.0))
        next(stream)
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)  # the decode under way now waits for the server
        parent_end = socket.socket(fileno=os.dup(engine._conn.fileno()))
        parent_end.shutdown(socket.SHUT_RDWR)  # what the worker sees of its parent's death
        parent_end.close()
        try:
            engine._process.wait(5 * worker.CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker lived on after its parent was gone")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        svc.close()
        server.kill()


def test_a_worker_is_sent_a_json_schema_as_its_compiled_grammar(smollm2_path: Path) -> None:
    """The worker reads its pipe on one thread, which must not stall compiling a schema (the pipe's send bound would
    take the worker for stuck): the schema goes as the grammar compiled here, and the answer keeps to it."""
    import pickle

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    svc = LlamaCppService(LocalBackendConfig(threads=1))
    try:
        (model,) = _workers(svc, smollm2_path, 1)
        engine = model._engine
        sent: list[tuple[Any, ...]] = []
        send = engine._send  # type: ignore[attr-defined]
        engine._send = lambda msg: (sent.append(msg), send(msg))[1]  # type: ignore[attr-defined]
        options = GenerationOptions(temperature=0, max_tokens=24, json_schema=schema)
        assert json.loads(model.generate("Is water wet? Answer in JSON.", options))["ok"] in (True, False)
        (fields,) = [pickle.loads(m[2])[1] for m in sent if m[0] == "submit"]
        assert fields["json_schema"] is None and fields["grammar"] == options.grammar_text()
    finally:
        svc.close()


@needs_rpc
def test_the_stop_sequence_that_ended_a_request_comes_back_from_the_worker(
    worker_model: llamacffi.service.LlamaCppTextModel,
) -> None:
    import asyncio
    import dataclasses

    from llamacffi.service.events import Finish

    free = worker_model.generate(PROMPT, SHORT)
    stop = free.strip()[1:3]
    assert len(stop) == 2

    async def finish() -> object:
        opts = dataclasses.replace(SHORT, stop_sequences=("no such text", stop))
        return [event async for _, event in worker_model.start_choices(PROMPT, opts)][-1]

    ended = asyncio.run(finish())
    assert isinstance(ended, Finish) and ended.reason == "stop" and ended.stop_sequence == stop
