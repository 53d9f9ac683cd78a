"""The sides of the serving benchmark: ``llamacffi serve``, llama.cpp's ``llama-server`` and llama-cpp-python's
server as processes on loopback driven over HTTP, and the service in a process of its own, driven without HTTP (the
ceiling the HTTP layer is measured against)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from llamacffi import raw_tools

from ..harness.common import gpu_layers
from .prompts import messages_for

MODEL = "smollm2-135m"
ROUND_TIMEOUT = 600.0
IN_PROCESS = "llamacffi service (in process)"
Round = dict[str, Any]  # tps, tokens, seconds, ttft (list), gaps (list), prompt_tokens


class Side(Protocol):
    name: str

    def round(self, clients: int, tokens: int) -> Round: ...

    def stop(self) -> None: ...


def summed(runs: list[dict[str, Any]]) -> Round:
    """A round's aggregate from its requests' ``start``, ``end``, ``tokens``, ``ttft`` and ``gaps``."""
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    total = sum(r["tokens"] for r in runs)
    return {
        "tps": total / wall,
        "tokens": total,
        "seconds": wall,
        "ttft": [r["ttft"] for r in runs if r["ttft"]],
        "gaps": [g for r in runs for g in r["gaps"]],
        "prompt_tokens": sum(r["prompt_tokens"] for r in runs),
    }


class InProcessSide:
    """The service in a child process (:mod:`benchmarks.sides.inprocess`), given rounds over a pipe."""

    def __init__(self, name: str, path: Path, parallel: int, ctx: int, threads: int) -> None:
        self.name = name
        argv = [sys.executable, "-m", "benchmarks.sides.inprocess", str(path), str(parallel), str(ctx), str(threads)]
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            argv, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        if self._out.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"{name} exited with {self.proc.poll()} before it was ready")

    def round(self, clients: int, tokens: int) -> Round:
        self._in.write(f"{clients} {tokens}\n")
        self._in.flush()
        line = self._out.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.proc.poll()}")
        r = json.loads(line)
        return summed([r]) | {"ttft": r["ttft"], "gaps": r["gaps"], "prompt_tokens": r["prompt_tokens"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._in.close()  # end of its input: it returns
            _wait_or_kill(self.proc)


def _wait_or_kill(proc: subprocess.Popen[Any], grace: float = 30) -> None:
    """Wait for a process told to end; kill it if it lingers past ``grace`` seconds."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpSide:
    """A server process on loopback, driven over HTTP; stopped with SIGTERM (killed if it lingers)."""

    def __init__(self, name: str, argv: list[str], port: int, model: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.model = model
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.devnull, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode} before it was ready")
            try:
                health = httpx.get(self.url + "/health", timeout=2).status_code
                if health == 200 or (
                    health == 404  # llama-cpp-python's server has no /health
                    and httpx.get(self.url + "/v1/models", timeout=2).status_code == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{name} was not ready after 300 s")

    def round(self, clients: int, tokens: int) -> Round:
        """``clients`` streaming chat requests at once, each for ``tokens`` greedy tokens."""
        return asyncio.run(_round(self, clients, tokens))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            _wait_or_kill(self.proc)
        self.log.close()


def start_sides(
    path: Path, threads: int, parallel: int, ctx: int, peer: bool, log: Callable[[str], None]
) -> tuple[list[Side], dict[str, str]]:
    """Every side that can run; a side that cannot says why in the second value."""
    sides: list[Side] = []
    absent: dict[str, str] = {}
    ngl = str(gpu_layers())
    port = _free_port()
    sides.append(
        HttpSide(
            "llamacffi serve",
            [
                sys.executable,
                "-m",
                "llamacffi",
                "serve",
                "-m",
                str(path),
                "--alias",
                MODEL,
                "--port",
                str(port),
                "-np",
                str(parallel),
                "-c",
                str(ctx),
                "-t",
                str(threads),
                "-ngl",
                ngl,
                "--log-level",
                "warning",
            ],
            port,
            MODEL,
        )
    )
    server = raw_tools.find("llama-server")
    if server is None:
        absent["llama-server"] = "not built (CMAKE_ARGS=-DLLAMACFFI_RAW_TOOLS=ON)"
    else:
        port = _free_port()
        sides.append(
            HttpSide(
                "llama-server",
                [
                    str(server),
                    "-m",
                    str(path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "-np",
                    str(parallel),
                    "-c",
                    str(ctx * parallel),
                    "-t",
                    str(threads),
                    "-tb",
                    str(threads),
                    "-ngl",
                    ngl,
                    "--no-webui",
                ],
                port,
                MODEL,
            )
        )
    if peer:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
            absent["llama-cpp-python server"] = "absent (pip install 'llama-cpp-python[server]')"
        else:
            port = _free_port()
            try:
                sides.append(
                    HttpSide(
                        "llama-cpp-python server",
                        [
                            sys.executable,
                            "-m",
                            "llama_cpp.server",
                            "--model",
                            str(path),
                            "--model_alias",
                            MODEL,
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--n_ctx",
                            str(ctx),
                            "--n_threads",
                            str(threads),
                            "--n_threads_batch",
                            str(threads),
                            "--n_gpu_layers",
                            ngl,
                            "--flash_attn",
                            "true",
                            # its default aborts the stream under way when a request arrives: it queues them instead
                            "--interrupt_requests",
                            "false",
                        ],
                        port,
                        MODEL,
                    )
                )
            except RuntimeError as exc:
                absent["llama-cpp-python server"] = str(exc)
    try:
        sides.append(InProcessSide(IN_PROCESS, path, parallel, ctx, threads))
    except RuntimeError as exc:
        absent[IN_PROCESS] = str(exc)
    for name, why in absent.items():
        log(f"  {name}: {why}")
    return sides, absent


async def _one(client: httpx.AsyncClient, side: HttpSide, number: int, tokens: int) -> dict[str, Any]:
    body = {
        "model": side.model,
        "messages": messages_for(number),
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    async with client.stream("POST", side.url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices") or ():
                if (c.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
    n = usage["completion_tokens"] if usage else len(times)
    return {
        "start": t0,
        "end": time.perf_counter(),
        "ttft": (times[0] - t0) if times else None,
        "gaps": [b - a for a, b in itertools.pairwise(times)],
        "tokens": n,
        "prompt_tokens": usage["prompt_tokens"] if usage else 0,
    }


async def _round(side: HttpSide, clients: int, tokens: int) -> Round:
    """One round; a request that fails or takes longer than ROUND_TIMEOUT fails the round (nothing waits forever)."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        runs = await asyncio.wait_for(
            asyncio.gather(*(_one(client, side, i, tokens) for i in range(clients))),
            ROUND_TIMEOUT,
        )
    return summed(runs)
