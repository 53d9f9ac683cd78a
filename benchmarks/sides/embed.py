"""Embedding throughput: ``Model.embed`` (many texts packed into each decode) against a loop of one text per
``llama_decode``, llama-bench ``pp512`` on the same model for scale, and llama-cpp-python's ``Llama.embed`` when it
is installed. ``python -m benchmarks.sides.embed [--model M] [-n N] [--threads T]`` prints tokens/s and the ratios."""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from typing import Any

import llamacffi
from llamacffi import embedding, models

from ..harness.common import Unavailable, gpu_layers, interleaved, paired_ratio
from . import raw_cpp

WORDS = [
    "the",
    "harbour",
    "town",
    "woke",
    "slowly",
    "fishermen",
    "pulled",
    "their",
    "boats",
    "onto",
    "shingle",
    "while",
    "baker",
    "opened",
    "his",
    "shutters",
    "and",
    "smell",
    "of",
    "bread",
    "drifted",
    "down",
    "narrow",
    "streets",
    "children",
    "ran",
    "past",
    "chapel",
    "towards",
    "school",
    "where",
    "old",
    "teacher",
    "was",
    "already",
    "writing",
    "lesson",
    "on",
    "blackboard",
    "rivers",
    "continent",
    "sources",
    "mouths",
    "cities",
    "grown",
    "along",
    "banks",
    "market",
    "merchants",
    "argued",
    "about",
    "price",
    "salt",
    "wool",
    "copper",
    "traveller",
    "from",
    "north",
    "asked",
    "for",
    "directions",
    "to",
    "lighthouse",
]


def sentences(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` short English-like sentences of 4 to 32 words (about 5 to 40 tokens), the same for a given seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 32))).capitalize() + "." for _ in range(n)]


def _threads(threads: int | None) -> int:
    return threads or len(os.sched_getaffinity(0))


def _lcp(path: str, threads: int) -> Any:
    """llama-cpp-python's ``Llama`` set up for embeddings as here (mean pooling, 1024-token batches)."""
    try:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama  # type: ignore[import-not-found]
    except ImportError:
        raise Unavailable("absent (llama-cpp-python is not installed)") from None
    return Llama(
        model_path=path,
        embedding=True,
        n_ctx=2048,
        n_batch=embedding.DEFAULT_BATCH_TOKENS,
        n_ubatch=embedding.DEFAULT_BATCH_TOKENS,
        n_threads=threads,
        n_gpu_layers=gpu_layers(),
        pooling_type=LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(
    model_name: str = "smollm2-135m", n: int = 2000, threads: int | None = None, rounds: int = 4, loop_texts: int = 200
) -> dict[str, Any]:
    """Tokens/s of each side on ``n`` sentences, and the ratios of the packed ``Model.embed`` to each.

    The sentences are split into ``rounds`` parts; each round runs every side on its part, one after the other
    (a shared machine's load then weighs on all of them alike), and a ratio is the median of the rounds' ratios.
    The loop of one text per decode, slow by nature, runs on ``loop_texts`` of the sentences in all."""
    path = models.fetch(model_name)
    threads = _threads(threads)
    texts = sentences(n)
    parts = [texts[i::rounds] for i in range(rounds)]
    out: dict[str, Any] = {"model": model_name, "texts": n, "threads": threads, "rounds": rounds}
    with llamacffi.Model.load(path, n_gpu_layers=gpu_layers()) as model:
        count = {t: len(model.vocab.tokenize(t, parse_special=True)) for t in texts}
        out.update(tokens=sum(count.values()), min_tokens=min(count.values()), max_tokens=max(count.values()))
        looped = [p[: max(1, loop_texts // rounds)] for p in parts]
        embedder = embedding.Embedder(model, batch_tokens=max(count.values()), n_threads=threads)
        embedding.embed(model, texts[:32], n_threads=threads)  # warm-up
        embedder.embed(texts[:1])
        try:
            llm = _lcp(str(path), threads)
            llm.embed(texts[:8])
        except Unavailable as exc:
            llm, lcp_error = None, str(exc)
        turn = {"packed": 0, "one_by_one": 0, "llama_cpp_python": 0}

        def part(side: str, of: list[list[str]]) -> list[str]:
            chunk = of[turn[side] % rounds]
            turn[side] += 1
            return chunk

        def packed() -> float:
            chunk = part("packed", parts)
            return sum(count[t] for t in chunk) / _timed(lambda: embedding.embed(model, chunk, n_threads=threads))

        def one_by_one() -> float:
            chunk = part("one_by_one", looped)
            return sum(count[t] for t in chunk) / _timed(lambda: [embedder.embed([t]) for t in chunk])

        def lcp() -> float:
            chunk = part("llama_cpp_python", parts)
            return sum(count[t] for t in chunk) / _timed(lambda: llm.embed(chunk))

        sides: dict[str, Callable[[], float] | None] = {
            "packed": packed,
            "one_by_one": one_by_one,
            "llama_bench_pp512": lambda: raw_cpp.llama_bench(path, threads, "pp", 512)[0],
            "llama_cpp_python": lcp if llm is not None else None,
        }
        try:
            series = interleaved(sides, reps=rounds, warmup=0)
        finally:
            embedder.close()
            if llm is not None:
                llm.close()
    for name, ser in series.items():
        summary = ser.summary()
        out[name + "_tps"] = None if summary is None else summary["median"]
        if summary is None:
            out[name + "_error"] = lcp_error if name == "llama_cpp_python" and llm is None else ser.error
        elif name != "packed":
            out["packed_vs_" + name] = paired_ratio(series["packed"], ser)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.embed", description=__doc__)
    ap.add_argument("-m", "--model", default="smollm2-135m", choices=sorted(models.KNOWN))
    ap.add_argument("-n", "--texts", type=int, default=2000)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-r", "--rounds", type=int, default=4)
    ap.add_argument("--loop-texts", type=int, default=200, help="texts of the one-per-decode loop, in all")
    args = ap.parse_args(argv)
    r = measure(args.model, args.texts, args.threads, args.rounds, args.loop_texts)
    print(
        f"model {r['model']}, {r['texts']} sentences of {r['min_tokens']}-{r['max_tokens']} tokens "
        f"({r['tokens']} in all), {r['threads']} threads, {r['rounds']} rounds (medians)"
    )
    labels = {
        "packed": "Model.embed (packed)",
        "one_by_one": "one text per llama_decode",
        "llama_bench_pp512": "llama-bench pp512",
        "llama_cpp_python": "llama-cpp-python Llama.embed",
    }
    for side, label in labels.items():
        tps = r.get(side + "_tps")
        if tps is None:
            print(f"{label:30s} {r.get(side + '_error')}")
            continue
        ratio = r.get("packed_vs_" + side)
        note = (
            ""
            if ratio is None
            else (f"   packed / this = {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})")
        )
        print(f"{label:30s} {tps:9.1f} tokens/s{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
