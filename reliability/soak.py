"""Soak: the in-process service and ``llamacffi serve`` under mixed load for a given time.

Several clients of each loop over a mix of requests: whole completions, streams read to the end, streams abandoned
after a few chunks, requests cancelled mid-generation, bad requests, occasional prompts far beyond the context, and
JSON-schema constrained ones. The service runs in a worker process of its own and the server as ``llamacffi serve``,
so each one's RSS is its own; both are sampled over time. Nothing may crash (both exit cleanly at the end), nothing
may stall (no request past ``--stall`` seconds) and every error must be the one the request asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import MIB, RESULTS, percentiles, rss_bytes, write_json

MODEL = "smollm2-135m"
CTX = 1024
PARALLEL = 4
CACHE_MIB = 32  # the host prompt cache of each side: small, so that it fills early and RSS is flat after
_TEXT = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches"
WORDS = _TEXT.split()
# Each client draws its next request from this mix (weights).
MIX = {"complete": 30, "stream": 25, "abandon": 12, "cancel": 12, "bad": 10, "huge": 4, "json": 7}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


class Tally:
    """Outcomes by kind, latencies by request kind and the requests past the stall bound, shared by the clients."""

    def __init__(self, stall: float) -> None:
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.first_chunk: list[float] = []
        self.stall = stall
        self.stalled: list[str] = []
        self.unexpected: list[str] = []

    def add(self, kind: str, outcome: str, seconds: float, first: float | None = None, detail: str = "") -> None:
        with self.lock:
            self.outcomes[f"{kind}:{outcome}"] += 1
            self.latency.setdefault(kind, []).append(seconds)
            if first is not None:
                self.first_chunk.append(first)
            if seconds > self.stall:
                self.stalled.append(f"{kind} took {seconds:.1f} s")
            if outcome.startswith("unexpected") and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {detail}"[:300])

    def summary(self) -> dict[str, Any]:
        with self.lock:
            served = sum(n for k, n in self.outcomes.items() if not k.split(":", 1)[1].startswith("unexpected"))
            return {
                "requests": sum(self.outcomes.values()),
                "as_expected": served,
                "outcomes": dict(sorted(self.outcomes.items())),
                "latency_s": {k: percentiles(v) for k, v in sorted(self.latency.items())},
                "first_chunk_s": percentiles(self.first_chunk),
                "stalled": self.stalled,
                "unexpected": self.unexpected,
            }


def _prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# ---- the in-process service --------------------------------------------------------------------------------------


def _service_request(model: Any, kind: str, rng: random.Random, tally: Tally) -> None:
    from llamacffi.service import ContextOverflowError, GenerationOptions, InvalidConfigError

    opts = GenerationOptions(max_tokens=rng.randint(8, 48), seed=rng.randrange(2**31), raw=True)
    prompt = _prompt(rng, rng.randint(3, 60))
    start = time.monotonic()
    first: float | None = None
    try:
        if kind == "complete":
            model.generate(prompt, opts)
        elif kind in ("stream", "abandon"):
            stream = model.generate_stream(prompt, opts)
            keep = rng.randint(1, 4) if kind == "abandon" else None
            for i, _ in enumerate(stream):
                first = first if first is not None else time.monotonic() - start
                if keep is not None and i + 1 >= keep:
                    break
            stream.close()
            if kind == "abandon":
                tally.add(kind, "abandoned", time.monotonic() - start, first)
                return
        elif kind == "cancel":
            asyncio.run(_cancelled(model, prompt, opts, rng.uniform(0.02, 0.6)))
            tally.add(kind, "cancelled", time.monotonic() - start)
            return
        elif kind == "bad":
            field = rng.choice(["temperature", "max_tokens", "top_p", "logit_bias", "grammar"])
            bad: dict[str, Any] = {
                "temperature": -1.0,
                "max_tokens": 0,
                "top_p": float("nan"),
                "logit_bias": {10**9: 1.0},
                "grammar": 'root ::= "unterminated',
            }
            try:
                model.generate(prompt, GenerationOptions(**{field: bad[field]}))
            except (InvalidConfigError, ValueError):
                tally.add(kind, f"refused:{field}", time.monotonic() - start)
                return
            tally.add(kind, f"unexpected:accepted:{field}", time.monotonic() - start, detail=field)
            return
        elif kind == "huge":
            try:
                model.generate(_prompt(rng, rng.randint(3 * CTX, 8 * CTX)), opts)
            except ContextOverflowError:
                tally.add(kind, "refused:context_overflow", time.monotonic() - start)
                return
            tally.add(kind, "unexpected:accepted", time.monotonic() - start)
            return
        elif kind == "json":
            text = model.generate(
                "A person as JSON: ", GenerationOptions(max_tokens=48, json_schema=SCHEMA, seed=rng.randrange(99))
            )
            outcome = "ok" if _valid_json_or_cut(text) else "unexpected:invalid_json"
            tally.add(kind, outcome, time.monotonic() - start, detail=text)
            return
        tally.add(kind, "ok", time.monotonic() - start, first)
    except Exception as exc:
        tally.add(kind, f"unexpected:{type(exc).__name__}", time.monotonic() - start, detail=repr(exc))


async def _cancelled(model: Any, prompt: str, opts: Any, after: float) -> None:
    task = asyncio.ensure_future(model.agenerate(prompt, opts))
    await asyncio.sleep(after)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _valid_json_or_cut(text: str) -> bool:
    """A constrained output is valid JSON, or a prefix of it cut by max_tokens."""
    try:
        json.loads(text)
        return True
    except ValueError:
        return not text.rstrip().endswith("}")


def service_worker(duration: float, clients: int, threads: int, seed: int, stall: float, out: Path) -> int:
    """Run ``clients`` threads of mixed load on one in-process service model for ``duration`` seconds."""
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig

    tally = Tally(stall)
    with LlamaCppService(LocalBackendConfig(threads=threads)) as svc:
        model = svc.load_model(
            MODEL, config=ModelConfig(context_size=CTX, parallel=PARALLEL, prompt_cache_mib=CACHE_MIB)
        )
        deadline = time.monotonic() + duration

        def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            kinds, weights = list(MIX), list(MIX.values())
            while time.monotonic() < deadline:
                _service_request(model, rng.choices(kinds, weights)[0], rng, tally)

        workers = [threading.Thread(target=client, args=(i,), name=f"soak-client-{i}") for i in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stats = model.stats
    write_json(out.name, {**tally.summary(), "engine_stats": stats}, out.parent)
    return 0


# ---- llamacffi serve ---------------------------------------------------------------------------------------------


def _post(client: Any, path: str, body: Any, **kw: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=data, headers={"content-type": "application/json"}, **kw)


def _server_request(client: Any, kind: str, rng: random.Random, tally: Tally) -> None:
    import httpx

    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _prompt(rng, rng.randint(3, 60))}],
        "max_tokens": rng.randint(8, 48),
        "seed": rng.randrange(2**31),
    }
    start = time.monotonic()
    first: float | None = None
    try:
        if kind in ("complete", "json"):
            if kind == "json":
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
                body["max_tokens"] = 48
            r = _post(client, "/v1/chat/completions", body, timeout=600)
            tally.add(
                kind,
                "ok" if r.status_code == 200 else f"unexpected:{r.status_code}",
                time.monotonic() - start,
                detail=r.text,
            )
            return
        if kind in ("stream", "abandon"):
            keep = rng.randint(1, 4) if kind == "abandon" else None
            chunks = 0
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, timeout=600) as r:
                if r.status_code != 200:
                    tally.add(kind, f"unexpected:{r.status_code}", time.monotonic() - start, detail=r.read().decode())
                    return
                done = False
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        first = first if first is not None else time.monotonic() - start
                        chunks += 1
                        done = line == "data: [DONE]"
                        if keep is not None and chunks >= keep:
                            break
            if keep is not None:
                tally.add(kind, "abandoned", time.monotonic() - start, first)
            else:
                tally.add(kind, "ok" if done else "unexpected:no_done", time.monotonic() - start, first)
            return
        if kind == "cancel":
            try:
                _post(
                    client,
                    "/v1/chat/completions",
                    {**body, "max_tokens": 200},
                    timeout=httpx.Timeout(600, read=rng.uniform(0.05, 0.8)),
                )
                tally.add(kind, "finished_first", time.monotonic() - start)
            except httpx.ReadTimeout:
                tally.add(kind, "cancelled", time.monotonic() - start)
            return
        if kind == "bad":
            choice = rng.randrange(5)
            path, payload, want = [
                ("/v1/chat/completions", b"{not json", 400),
                ("/v1/chat/completions", {**body, "model": "nope"}, 404),
                ("/v1/chat/completions", {**body, "max_tokens": -3}, 400),
                ("/v1/chat/completions", {**body, "temperature": "hot"}, 400),
                ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 10**8]}, 400),
            ][choice]
            r = _post(client, path, payload, timeout=600)
            outcome = f"refused:{r.status_code}" if r.status_code == want else f"unexpected:{r.status_code}"
            tally.add(kind, outcome, time.monotonic() - start, detail=r.text)
            return
        if kind == "huge":
            body["messages"][0]["content"] = _prompt(rng, rng.randint(3 * CTX, 8 * CTX))
            r = _post(client, "/v1/chat/completions", body, timeout=600)
            ok = r.status_code == 400 and "context_length_exceeded" in r.text
            tally.add(
                kind, "refused:400" if ok else f"unexpected:{r.status_code}", time.monotonic() - start, detail=r.text
            )
            return
    except Exception as exc:
        tally.add(kind, f"unexpected:{type(exc).__name__}", time.monotonic() - start, detail=repr(exc))


def start_server(threads: int) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start ``llamacffi serve`` on an ephemeral loopback port; return the process, its URL and its log lines."""
    import httpx

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamacffi",
            "serve",
            "-m",
            MODEL,
            "-np",
            str(PARALLEL),
            "-c",
            str(CTX),
            "--cache-ram",
            str(CACHE_MIB),
            "-t",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    bound = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m and not url:
                url.append(m.group(1))
                bound.set()
        bound.set()

    threading.Thread(target=read, daemon=True).start()
    if not bound.wait(600) or not url:
        proc.kill()
        raise RuntimeError("llamacffi serve did not start:\n" + "".join(log[-30:]))
    for _ in range(600):
        try:
            if httpx.get(url[0] + "/health", timeout=5).status_code == 200:
                return proc, url[0], log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llamacffi serve did not become ready:\n" + "".join(log[-30:]))


# ---- the run -----------------------------------------------------------------------------------------------------


def run(
    duration: float, clients: int, threads: int, seed: int, stall: float, sample: float, out: Path
) -> dict[str, Any]:
    """Run both soaks side by side; return (and write under ``out``) the figures."""
    import httpx

    out.mkdir(parents=True, exist_ok=True)
    worker_out = out / "soak-service.json"
    started = time.monotonic()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reliability",
            "soak",
            "--worker",
            "--duration",
            str(duration),
            "--clients",
            str(clients),
            "--threads",
            str(threads),
            "--seed",
            str(seed),
            "--stall",
            str(stall),
            "--out",
            str(worker_out),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    server, url, log = start_server(threads)
    tally = Tally(stall)
    deadline = time.monotonic() + duration
    rss: list[tuple[float, float, float]] = []
    health_failures = 0

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + 500 + i)
        kinds, weights = list(MIX), list(MIX.values())
        with httpx.Client(base_url=url) as c:
            while time.monotonic() < deadline:
                _server_request(c, rng.choices(kinds, weights)[0], rng, tally)

    workers = [threading.Thread(target=client, args=(i,), name=f"soak-http-{i}") for i in range(clients)]
    for w in workers:
        w.start()
    while time.monotonic() < deadline and worker.poll() is None and server.poll() is None:
        try:  # the service's process may end at the deadline, between the check above and this read
            rss.append((time.monotonic() - started, rss_bytes(worker.pid) / MIB, rss_bytes(server.pid) / MIB))
        except (OSError, RuntimeError):
            pass
        try:
            if httpx.get(url + "/health", timeout=30).status_code != 200:
                health_failures += 1
        except httpx.HTTPError:
            health_failures += 1
        time.sleep(sample)
    for w in workers:
        w.join()
    server.send_signal(signal.SIGTERM)
    server_rc = server.wait(120)
    worker_rc = worker.wait(600)
    service = json.loads(worker_out.read_text()) if worker_out.exists() else {}
    figures = {
        "duration_s": duration,
        "wall_s": round(time.monotonic() - started, 1),
        "clients_each": clients,
        "threads_each": threads,
        "seed": seed,
        "service": service,
        "service_exit": worker_rc,
        "server": tally.summary(),
        "server_exit": server_rc,
        "server_log_tail": log[-10:] if server_rc else [],
        "health_failures": health_failures,
        "rss_mib": _rss_figures(rss),
    }
    write_json("soak.json", figures, out)
    worker_out.unlink(missing_ok=True)
    _plot(rss, out / "soak.png")
    return figures


def _pythonpath() -> str:
    import llamacffi

    parts = [str(Path(llamacffi.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def _rss_figures(rss: list[tuple[float, float, float]]) -> dict[str, Any]:
    """RSS at the end of warm-up (a tenth of the run), at the end, the peak and the difference, per process."""
    if len(rss) < 2:
        return {"samples": len(rss)}
    warm = rss[max(1, len(rss) // 10)]
    last = rss[-1]
    out: dict[str, Any] = {"samples": len(rss)}
    for i, name in ((1, "service"), (2, "server")):
        out[name] = {
            "after_warmup": round(warm[i], 1),
            "end": round(last[i], 1),
            "peak": round(max(r[i] for r in rss), 1),
            "delta_after_warmup": round(last[i] - warm[i], 1),
        }
    return out


def _plot(rss: list[tuple[float, float, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    minutes = [r[0] / 60 for r in rss]
    ax.plot(minutes, [r[1] for r in rss], label="service (in-process worker)")
    ax.plot(minutes, [r[2] for r in rss], label="llamacffi serve")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: RSS under mixed load ({MODEL})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check(figures: dict[str, Any], max_growth_mib: float) -> list[str]:
    """What went wrong in a soak's figures (empty when nothing did). RSS may grow by ``max_growth_mib`` plus the
    budget of the host prompt cache, which fills as slots let prompts go and then stays at its bound."""
    problems: list[str] = []
    for side in ("service", "server"):
        s = figures.get(side) or {}
        if not s.get("requests"):
            problems.append(f"{side}: no requests ran")
        if s.get("requests", 0) != s.get("as_expected", -1):
            problems.append(f"{side}: unexpected outcomes {s.get('unexpected')}")
        if s.get("stalled"):
            problems.append(f"{side}: stalled requests {s['stalled'][:5]}")
        growth = figures["rss_mib"].get(side, {}).get("delta_after_warmup", 0.0)
        if growth > max_growth_mib + CACHE_MIB:
            problems.append(f"{side}: RSS grew {growth} MiB after warm-up")
    if figures["service_exit"] != 0 or figures["server_exit"] != 0:
        problems.append(f"exit codes: service worker {figures['service_exit']}, server {figures['server_exit']}")
    if figures["health_failures"]:
        problems.append(f"{figures['health_failures']} failed /health probes")
    return problems


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of each side (default 4)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each side (default 1)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stall", type=float, default=300, help="seconds past which a request counts as stalled")
    ap.add_argument("--sample", type=float, default=5, help="seconds between RSS samples")
    ap.add_argument("--max-growth", type=float, default=32, help="MiB of RSS growth after warm-up that fails")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return service_worker(args.duration, args.clients, args.threads, args.seed, args.stall, args.out)
    figures = run(args.duration, args.clients, args.threads, args.seed, args.stall, args.sample, args.out)
    print(
        json.dumps(
            {k: figures[k] for k in ("wall_s", "rss_mib", "health_failures", "service_exit", "server_exit")}, indent=1
        )
    )
    for side in ("service", "server"):
        s = figures[side]
        print(f"{side}: {s.get('requests')} requests, {s.get('as_expected')} as expected; {s.get('outcomes')}")
        print(f"  latency {s.get('latency_s')}")
    problems = check(figures, args.max_growth)
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0
