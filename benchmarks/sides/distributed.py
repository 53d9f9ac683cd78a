"""Beyond one machine, measured on one: a model split across two loopback RPC servers against the same model local,
and Ray Serve replicas (2 replicas x 1 thread against 1 replica x 2 threads).

RPC: every load is timed (``Model.load`` to return), then a ``pp`` prompt is decoded and ``tg`` greedy tokens are
generated one decode at a time; the local model runs with ``threads`` threads, the split one with every layer on the
servers (``tensor_split`` 1,1; each server with ``threads`` threads, and they compute one after the other), so the
difference is the protocol's cost alone: serialising the graph, sending activations through loopback TCP, and a
round trip per server per token. Sides alternate (local, split, local, ...) after a warm-up; figures are medians.

Ray: a local Ray instance; each layout is deployed with :func:`llamacffi.ray.deploy`, warmed up, then ``clients``
concurrent chat requests of ``tokens`` greedy tokens go through Serve's HTTP proxy; aggregate tokens/s is the
completion tokens of all of them over the time from the first sent to the last answered. The two layouts hold the
same slots in all (``parallel`` per replica x replicas).

``python -m benchmarks.sides.distributed [--quick] [--no-ray]`` writes ``benchmarks/results/distributed[-quick]``
``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from llamacffi import Batch, Context, Model, models

from ..harness.common import machine

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = "smollm2-135m"
PROMPT_SEED = 0


class _Server:
    """A ``llamacffi rpc-server`` on a free loopback port (``--port 0``), stopped with SIGTERM."""

    def __init__(self, threads: int) -> None:
        argv = [sys.executable, "-m", "llamacffi", "rpc-server", "--port", "0", "--threads", str(threads)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.search(r"listening on ([\d.]+:\d+)", line)
            if m:
                self.endpoint = m.group(1)
                break
        else:
            raise RuntimeError(f"the RPC server exited with {self.proc.wait()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _servers(n: int, threads: int) -> list[_Server]:
    return [_Server(threads) for _ in range(n)]


def _run_model(path: Path, threads: int, pp: int, tg: int, **load: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    model = Model.load(path, **load)
    load_s = time.perf_counter() - t0
    with model:
        prompt = np.random.default_rng(PROMPT_SEED).integers(0, model.vocab.n_tokens, pp, dtype=np.int32)
        with Context(model, n_ctx=pp + tg + 8, n_batch=pp, n_threads=threads) as ctx:
            t0 = time.perf_counter()
            ctx.decode(Batch.from_tokens(prompt))
            pp_s = time.perf_counter() - t0
            token, pos = int(np.argmax(ctx.logits())), pp
            t0 = time.perf_counter()
            for _ in range(tg):
                ctx.decode_token(token, pos)
                pos += 1
                token = int(np.argmax(ctx.logits()))
            tg_s = time.perf_counter() - t0
    return {"load_s": load_s, "pp_tps": pp / pp_s, "tg_tps": tg / tg_s}


def rpc_split(path: Path, threads: int, pp: int, tg: int, reps: int) -> dict[str, Any]:
    servers = _servers(2, threads)
    try:
        endpoints = [s.endpoint for s in servers]
        sides = {
            "local": {"n_gpu_layers": 0},
            "split over 2 loopback RPC servers": {"rpc_servers": endpoints, "tensor_split": [1, 1], "n_gpu_layers": -1},
        }
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for rep in range(reps + 1):  # the first round warms up
            for name, load in sides.items():
                result = _run_model(path, threads, pp, tg, **load)
                if rep:
                    runs[name].append(result)
    finally:
        for s in servers:
            s.stop()
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        out[name] = {
            k: {
                "median": statistics.median(r[k] for r in rs),
                "min": min(r[k] for r in rs),
                "max": max(r[k] for r in rs),
            }
            for k in rs[0]
        }
    return out


async def _drive(url: str, clients: int, tokens: int) -> dict[str, float]:
    import httpx

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Tell a story about topic number {i}."}],
            "max_tokens": tokens,
            "temperature": 0,
        }
        r = await client.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(one(client, i) for i in range(2)))  # warm-up
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(client, i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"tokens": sum(done), "wall_s": wall, "tps": sum(done) / wall}


def ray_replicas(path: Path, clients: int, tokens: int, reps: int) -> dict[str, Any]:
    import ray
    from ray import serve

    import llamacffi.ray as lray

    layouts = {"2 replicas x 1 thread": (2, 1, 4), "1 replica x 2 threads": (1, 2, 8)}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        for name, (replicas, threads, parallel) in layouts.items():
            t0 = time.perf_counter()
            lray.deploy(
                str(path),
                num_replicas=replicas,
                threads_per_replica=threads,
                parallel=parallel,
                served_name=MODEL,
                context_size=512,
            )
            ready = time.perf_counter() - t0
            runs = [asyncio.run(_drive("http://127.0.0.1:8000", clients, tokens)) for _ in range(reps)]
            out[name] = {
                "replicas": replicas,
                "threads_per_replica": threads,
                "parallel": parallel,
                "deploy_s": ready,
                "tps": {
                    "median": statistics.median(r["tps"] for r in runs),
                    "min": min(r["tps"] for r in runs),
                    "max": max(r["tps"] for r in runs),
                },
            }
            serve.delete("llamacffi")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        f"# Distributed: {out['model']}, {m.get('cpu_model', '')}, {m.get('usable_cpus')} CPUs, load average at "
        f"the start {m.get('loadavg_start')}",
        "",
    ]
    rpc = out.get("rpc")
    if rpc:
        lines += [
            f"RPC: pp{out['sizes']['pp']}, tg{out['sizes']['tg']}, {out['threads']} threads, {out['reps']} "
            "repetitions (medians, min-max)",
            "",
            "| side | load s | pp tokens/s | tg tokens/s |",
            "|---|---:|---:|---:|",
        ]
        for name, r in rpc.items():
            cells = [
                f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})" for k in ("load_s", "pp_tps", "tg_tps")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        names = list(rpc)
        ratio = rpc[names[1]]["tg_tps"]["median"] / rpc[names[0]]["tg_tps"]["median"]
        lines += ["", f"tg of the split model over the local one: {ratio:.2f}", ""]
    ray_out = out.get("ray")
    if ray_out:
        lines += [
            f"Ray Serve: {out['sizes']['clients']} concurrent chat requests of {out['sizes']['tokens']} greedy "
            f"tokens, {out['reps']} repetitions",
            "",
            "| layout | slots per replica | deploy s | aggregate tokens/s |",
            "|---|---:|---:|---:|",
        ]
        for name, r in ray_out.items():
            t = r["tps"]
            lines.append(
                f"| {name} | {r['parallel']} | {r['deploy_s']:.1f} | {t['median']:.1f} "
                f"({t['min']:.1f}-{t['max']:.1f}) |"
            )
        a, b = (ray_out[k]["tps"]["median"] for k in ray_out)
        lines += ["", f"2 x 1 over 1 x 2: {a / b:.2f}", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.distributed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-rpc", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    sizes = {
        "pp": 32 if quick else 128,
        "tg": 16 if quick else 64,
        "clients": 4 if quick else 8,
        "tokens": 16 if quick else 64,
    }
    reps = 1 if quick else 3
    path = models.fetch(MODEL)
    out: dict[str, Any] = {
        "model": MODEL,
        "machine": machine(args.threads),
        "threads": args.threads,
        "sizes": sizes,
        "reps": reps,
    }
    if not args.no_rpc:
        out["rpc"] = rpc_split(path, args.threads, sizes["pp"], sizes["tg"], reps)
    if not args.no_ray:
        out["ray"] = ray_replicas(path, sizes["clients"], sizes["tokens"], reps)
    stem = RESULTS / ("distributed-quick" if quick else "distributed")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = markdown(out)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
