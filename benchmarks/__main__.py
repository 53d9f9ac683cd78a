"""``python -m benchmarks [--quick] [--models ...]``: llamacffi beside raw llama.cpp, one run, ratios pair by pair.

Sides alternate (A B A B ...) after a warm-up; every figure is the median of the repetitions with its min-max.
Writes ``benchmarks/results/latest.json`` and ``latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import llamacffi
from llamacffi import Batch, Context, Model, models, raw_tools

RESULTS = Path(__file__).resolve().parent / "results"


def llama_bench(path: Path, threads: int, test: str, n: int) -> float:
    """tokens/s of one llama-bench test (``pp`` or ``tg``) of ``n`` tokens, one repetition."""
    args = ["-p", str(n), "-n", "0"] if test == "pp" else ["-p", "0", "-n", str(n)]
    out = subprocess.run([str(raw_tools.require("llama-bench")), "-m", str(path), "-t", str(threads), "-r", "1",
                          "-ngl", "0", "-o", "json", *args], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ours_pp(model: Model, threads: int, n: int) -> float:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.vocab.n_tokens, n, dtype=np.int32)
    if model.vocab.add_bos:
        tokens[0] = model.vocab.bos
    with Context(model, n_ctx=n, n_batch=2048, n_ubatch=512, n_threads=threads) as ctx:
        batch = Batch.from_tokens(tokens)
        t0 = time.perf_counter()
        ctx.decode(batch)
        return n / (time.perf_counter() - t0)


def ours_tg(model: Model, threads: int, n: int) -> float:
    """Single-token decode loop through the Pythonic layer, with greedy sampling and a StreamDecoder."""
    vocab = model.vocab
    with Context(model, n_ctx=n, n_batch=2048, n_ubatch=512, n_threads=threads) as ctx:
        stream = vocab.stream()
        token = vocab.bos if vocab.add_bos else 1
        t0 = time.perf_counter()
        for pos in range(n):
            ctx.decode_token(token, pos)
            token = int(np.argmax(ctx.logits()))
            stream.feed(token)
        stream.flush()
        return n / (time.perf_counter() - t0)


def sampler_us(logits: np.ndarray, make: Callable[[], Any], reps: int) -> float:
    sampler = make()
    sampler.sample(logits)
    t0 = time.perf_counter()
    for _ in range(reps):
        sampler.sample(logits)
    return 1e6 * (time.perf_counter() - t0) / reps


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def interleaved(sides: dict[str, Callable[[], float]], reps: int) -> dict[str, dict[str, float]]:
    for fn in sides.values():  # warm-up
        fn()
    runs: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(reps):
        for k, fn in sides.items():
            runs[k].append(fn())
    return {k: summary(v) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions (a smoke run, ~1 minute)")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    pp, tg = (64, 16) if args.quick else (512, 128)
    report: dict[str, Any] = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                          "cpus": os.cpu_count(), "threads": args.threads},
                              "build": llamacffi.system_info(), "quick": args.quick, "models": {}}
    rows = []
    for name in args.models:
        path = models.fetch(name)
        with Model.load(path) as model:
            res = {
                f"pp{pp}": interleaved({"llama.cpp": lambda: llama_bench(path, args.threads, "pp", pp),
                                        "llamacffi": lambda: ours_pp(model, args.threads, pp)}, reps),
                f"tg{tg}": interleaved({"llama.cpp": lambda: llama_bench(path, args.threads, "tg", tg),
                                        "llamacffi": lambda: ours_tg(model, args.threads, tg)}, reps),
            }
            report["models"][name] = res
            for test, target in ((f"pp{pp}", 0.99), (f"tg{tg}", 0.97)):
                c, o = res[test]["llama.cpp"], res[test]["llamacffi"]
                ratio = o["median"] / c["median"]
                rows.append(f"| {name} | {test} (t/s) | {c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f}) | "
                            f"{o['median']:.1f} ({o['min']:.1f}–{o['max']:.1f}) | {ratio:.3f} | ≥ {target} | "
                            f"{'met' if ratio >= target else 'NOT met'} |")
    try:
        from llamacffi.sampling import NativeSampler, Sampler
    except ImportError:
        NativeSampler = Sampler = None  # type: ignore[assignment,misc]
    if Sampler is not None:
        rng = np.random.default_rng(0)
        for n_vocab, target in ((49152, 40.0), (262144, 150.0)):
            logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
            sides = {"numpy Sampler": lambda: sampler_us(logits, lambda: Sampler(top_k=40, temperature=0.8, seed=1),
                                                         200 if not args.quick else 20),
                     "NativeSampler": lambda: sampler_us(logits, lambda: NativeSampler(top_k=40, temperature=0.8,
                                                                                       seed=1),
                                                         200 if not args.quick else 20)}
            res_s = interleaved(sides, reps)
            report.setdefault("sampler_us", {})[str(n_vocab)] = res_s
            ours, native = res_s["numpy Sampler"]["median"], res_s["NativeSampler"]["median"]
            rows.append(f"| sampler top-k 40 + temp, {n_vocab} | µs/token | {native:.1f} (NativeSampler) | "
                        f"{ours:.1f} | {native / ours:.2f}× faster | ≤ {target:.0f} µs and faster | "
                        f"{'met' if ours <= target and ours < native else 'NOT met'} |")
    RESULTS.mkdir(exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = ["| model | test | raw llama.cpp / peer: median (min–max) | llamacffi: median (min–max) | ratio | target "
          "| |", "| --- | --- | --- | --- | --- | --- | --- |", *rows,
          "", f"{args.threads} threads, {reps} interleaved repetitions after a warm-up; "
          f"{report['build']['build_flags']}; llama.cpp {report['build']['llama_cpp'][:10]}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs."]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
