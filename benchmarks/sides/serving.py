"""Serving: ``llamacffi serve`` beside llama.cpp's ``llama-server`` (same tree and flags) and, when installed,
llama-cpp-python's server, under 1, 4, 8 and 16 concurrent streaming chat clients.

Every server serves the same model file with the same slots, context per slot and threads, all three started before
the first measurement and idle while another is measured. For each repetition and each client count, the sides run
one after another (A B C, then the next count), each driven by one asyncio client that sends that many streaming chat
requests of ``tokens`` greedy tokens at once, each with its own prompt. Aggregate tokens/s is the completion tokens
of all requests over the time from the first request sent to the last stream ended; time to first token and
inter-token latency are taken from every request and every gap between two content chunks.

``python -m benchmarks.sides.serving [--quick]`` writes ``benchmarks/results/serving[-quick].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llamacffi import models, raw_tools

from ..harness import targets
from ..harness.common import gpu_layers, machine

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = "smollm2-135m"
TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "the first snow",
    "a market in Lisbon",
    "a chess match",
    "a night train",
    "an old violin",
    "a desert well",
    "a paper boat",
    "a city garden",
    "a broken clock",
    "a mountain road",
    "a quiet library",
    "a fishing village",
    "a comet",
    "a bakery at dawn",
)
# Targets, as ratios from one run (llamacffi serve over llama-server, or over llama-cpp-python's server).
TARGETS = {
    "tps_vs_server": targets.SERVING_TPS_VS_SERVER,
    "tps_vs_peer": targets.SERVING_TPS_VS_PEER,
    "ttft_p50_vs_server_max": targets.SERVING_TTFT_P50_VS_SERVER_MAX,
    "itl_p99_vs_server_max": targets.SERVING_ITL_P99_VS_SERVER_MAX,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Side:
    """A server process on loopback, stopped with SIGTERM (killed if it lingers)."""

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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_sides(
    path: Path, threads: int, parallel: int, ctx: int, peer: bool, log: Callable[[str], None]
) -> tuple[list[Side], dict[str, str]]:
    """Every side that can run; a side that cannot says why in the second value."""
    sides, absent = [], {}
    ngl = str(gpu_layers())
    port = _free_port()
    sides.append(
        Side(
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
            Side(
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
                    Side(
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
    for name, why in absent.items():
        log(f"  {name}: {why}")
    return sides, absent


async def _one(client: httpx.AsyncClient, side: Side, prompt: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": side.model,
        "messages": [{"role": "user", "content": prompt}],
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
    }


async def _round(side: Side, clients: int, tokens: int) -> dict[str, Any]:
    """One round; a request that fails or takes longer than ROUND_TIMEOUT fails the round (nothing waits forever)."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        runs = await asyncio.wait_for(
            asyncio.gather(
                *(
                    _one(client, side, f"Write a long story about {TOPICS[i % len(TOPICS)]}.", tokens)
                    for i in range(clients)
                )
            ),
            ROUND_TIMEOUT,
        )
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    total = sum(r["tokens"] for r in runs)
    return {
        "tps": total / wall,
        "tokens": total,
        "seconds": wall,
        "ttft": [r["ttft"] for r in runs if r["ttft"]],
        "gaps": [g for r in runs for g in r["gaps"]],
    }


ROUND_TIMEOUT = 600.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def measure(
    sides: list[Side], levels: list[int], tokens: int, reps: int, log: Callable[[str], None]
) -> dict[str, dict[int, dict[str, Any]]]:
    """Interleaved rounds after one warm-up round per side; per side and client count: every repetition's
    tokens/s, and the latencies of all of them."""
    for side in sides:
        try:
            asyncio.run(_round(side, 2, min(tokens, 16)))
        except Exception as exc:
            log(f"  warm-up of {side.name} failed: {exc!r}")
    out: dict[str, dict[int, dict[str, Any]]] = {s.name: {} for s in sides}
    for rep in range(reps):
        for clients in levels:
            for side in sides:
                cell = out[side.name].setdefault(clients, {"tps": [], "ttft": [], "gaps": [], "errors": []})
                try:
                    r = asyncio.run(_round(side, clients, tokens))
                except Exception as exc:  # reported in the results, never fatal to the other sides
                    cell["errors"].append(repr(exc)[:200])
                    log(f"  rep {rep + 1}/{reps}, {clients:2d} clients, {side.name}: failed: {exc!r}")
                    continue
                cell["tps"].append(r["tps"])
                cell["ttft"] += r["ttft"]
                cell["gaps"] += r["gaps"]
                log(f"  rep {rep + 1}/{reps}, {clients:2d} clients, {side.name}: {r['tps']:.1f} tokens/s")
    return out


def summarize(raw: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for side, levels in raw.items():
        for clients, cell in levels.items():
            if not cell["tps"]:
                continue
            out.setdefault(side, {})[str(clients)] = {
                "tps": statistics.median(cell["tps"]),
                "tps_all": cell["tps"],
                "ttft_p50": _pct(cell["ttft"], 0.5),
                "ttft_p99": _pct(cell["ttft"], 0.99),
                "itl_p50": _pct(cell["gaps"], 0.5),
                "itl_p99": _pct(cell["gaps"], 0.99),
                "errors": cell["errors"],
            }
    return out


def ratios(raw: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """llamacffi serve over each other side: tokens/s as the median of per-repetition ratios, latencies as the
    ratio of the percentiles."""
    ours = raw.get("llamacffi serve", {})
    out: dict[str, dict[str, float | None]] = {}
    for other, key in (("llama-server", "server"), ("llama-cpp-python server", "peer")):
        theirs = raw.get(other)
        if not theirs:
            continue
        for clients, cell in ours.items():
            if clients not in theirs:
                continue
            t = theirs[clients]
            r = out.setdefault(str(clients), {})
            pairs = [a / b for a, b in zip(cell["tps"], t["tps"], strict=False)]
            r[f"tps_vs_{key}"] = statistics.median(pairs) if pairs else None
            for name, values, q in (("ttft_p50", "ttft", 0.5), ("itl_p99", "gaps", 0.99)):
                a, b = _pct(cell[values], q), _pct(t[values], q)
                r[f"{name}_vs_{key}"] = a / b if a and b else None
    return out


def verdicts(rat: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    rows = []
    for target, per_level in TARGETS.items():
        at_most = target.endswith("_max")
        key = target[:-4] if at_most else target
        for clients, limit in per_level.items():
            value = rat.get(str(clients), {}).get(key)
            met = None if value is None else (value <= limit if at_most else value >= limit)
            rows.append(
                {
                    "target": f"{key} at {clients} client{'s' if clients > 1 else ''} "
                    f"{'<=' if at_most else '>='} {limit}",
                    "value": value,
                    "met": met,
                }
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    summ, rows = result["summary"], result["verdicts"]
    levels = sorted({int(c) for s in summ.values() for c in s})
    lines = [
        f"# Serving: {result['model']}, {result['parallel']} slots, {result['threads']} threads, "
        f"{result['tokens']} greedy tokens per request, {result['reps']} repetitions",
        "",
        "| side | clients | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | inter-token p50 (ms) | inter-token p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{1000 * v:.1f}"

    for side, cells in summ.items():
        for c in levels:
            cell = cells.get(str(c))
            if cell:
                lines.append(
                    f"| {side} | {c} | {cell['tps']:.1f} | {ms(cell['ttft_p50'])} | {ms(cell['ttft_p99'])} "
                    f"| {ms(cell['itl_p50'])} | {ms(cell['itl_p99'])} |"
                )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.3f}×"
        verdict = "not measured" if r["met"] is None else "met" if r["met"] else "NOT met"
        lines.append(f"| {r['target']} | {value} | {verdict} |")
    for name, why in result["absent"].items():
        lines.append(f"\n{name}: {why}")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install '.[bench]')"
    fig, ax = plt.subplots(figsize=(6, 4))
    for side, cells in result["summary"].items():
        xs = sorted(int(c) for c in cells)
        ax.plot(xs, [cells[str(x)]["tps"] for x in xs], marker="o", label=side)
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate generated tokens/s")
    ax.set_title(f"Serving {result['model']} ({result['parallel']} slots, {result['threads']} threads)")
    ax.set_xticks(sorted({int(c) for s in result["summary"].values() for c in s}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def run(
    quick: bool,
    threads: int = 2,
    parallel: int = 8,
    ctx: int = 512,
    reps: int | None = None,
    peer: bool = True,
    out_dir: Path = RESULTS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    levels = [1, 4] if quick else [1, 4, 8, 16]
    tokens = 16 if quick else 128
    reps = reps or (1 if quick else 3)
    path = models.fetch(MODEL)
    sides, absent = start_sides(path, threads, parallel, ctx, peer, log)
    try:
        raw = measure(sides, levels, tokens, reps, log)
    finally:
        for s in sides:
            s.stop()
    rat = ratios(raw)
    result = {
        "model": MODEL,
        "threads": threads,
        "parallel": parallel,
        "ctx_per_slot": ctx,
        "tokens": tokens,
        "reps": reps,
        "levels": levels,
        "quick": quick,
        "machine": machine(threads),
        "absent": absent,
        "summary": summarize(raw),
        "ratios": rat,
        "verdicts": verdicts(rat),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    stem = "serving-quick" if quick else "serving"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    note = chart(result, out_dir / f"{stem}.png")
    if note:
        log(note)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 16 tokens, one repetition")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512, help="context per slot")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    result = run(args.quick, args.threads, args.parallel, args.ctx, args.reps, not args.no_peer, args.out, log)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
