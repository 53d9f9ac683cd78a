"""Embedding throughput: ``Model.embed`` (many texts packed into each decode) against a loop of one text per
``llama_decode``, llama-bench ``pp512`` on the same model for scale, and llama-cpp-python's ``Llama.embed`` when it
is installed. ``python -m benchmarks.sides.embed [--model M] [-n N] [--threads T]`` prints tokens/s and the ratios."""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

import llamacffi
from llamacffi import embedding, models

from . import raw_cpp
from .common import Unavailable, gpu_layers

WORDS = (
    "the harbour town woke slowly fishermen pulled their boats onto shingle while baker opened his shutters and "
    "smell of bread drifted down narrow streets children ran past chapel towards school where old teacher was "
    "already writing lesson on blackboard rivers continent sources mouths cities grown along banks market merchants "
    "argued about price salt wool copper traveller from north asked for directions to lighthouse"
).split()


def sentences(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` short English-like sentences of 4 to 32 words (about 5 to 40 tokens), the same for a given seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 32))).capitalize() + "." for _ in range(n)]


def _threads(threads: int | None) -> int:
    return threads or len(os.sched_getaffinity(0))


def packed(model: llamacffi.Model, texts: list[str], threads: int) -> float:
    """Seconds of one ``Model.embed`` call over all the texts (its context included)."""
    t0 = time.perf_counter()
    embedding.embed(model, texts, n_threads=threads)
    return time.perf_counter() - t0


def one_by_one(model: llamacffi.Model, texts: list[str], threads: int) -> float:
    """Seconds of a loop embedding one text per ``llama_decode`` in one reused context."""
    longest = max(len(model.vocab.tokenize(t, parse_special=True)) for t in texts)
    with embedding.Embedder(model, batch_tokens=longest, n_threads=threads) as e:
        e.embed(texts[:1])  # warm-up
        t0 = time.perf_counter()
        for text in texts:
            e.embed([text])
        return time.perf_counter() - t0


def llama_cpp_python(path: str, texts: list[str], threads: int) -> float:
    """Seconds of llama-cpp-python's ``Llama.embed`` over all the texts (mean pooling, as here)."""
    try:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama  # type: ignore[import-not-found]
    except ImportError:
        raise Unavailable("absent (llama-cpp-python is not installed)") from None
    llm = Llama(model_path=path, embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=threads,
                n_gpu_layers=gpu_layers(), pooling_type=LLAMA_POOLING_TYPE_MEAN, verbose=False)
    try:
        t0 = time.perf_counter()
        llm.embed(texts)
        return time.perf_counter() - t0
    finally:
        llm.close()


def measure(model_name: str = "smollm2-135m", n: int = 2000, threads: int | None = None,
            loop_texts: int = 200) -> dict[str, Any]:
    """Tokens/s of each side on ``n`` sentences, and the ratios against the packed ``Model.embed``. The loop of one
    text per decode, slow by nature, runs on the first ``loop_texts`` of them (0: all)."""
    path = models.fetch(model_name)
    threads = _threads(threads)
    texts = sentences(n)
    out: dict[str, Any] = {"model": model_name, "texts": n, "threads": threads}
    with llamacffi.Model.load(path, n_gpu_layers=gpu_layers()) as model:
        lengths = [len(model.vocab.tokenize(t, parse_special=True)) for t in texts]
        tokens = sum(lengths)
        out.update(tokens=tokens, min_tokens=min(lengths), max_tokens=max(lengths))
        embedding.embed(model, texts[:32], n_threads=threads)  # warm-up
        out["packed_tps"] = tokens / packed(model, texts, threads)
        looped = texts[:loop_texts] if loop_texts > 0 else texts
        out["loop_texts"] = len(looped)
        out["one_by_one_tps"] = sum(lengths[:len(looped)]) / one_by_one(model, looped, threads)
    out["packed_vs_one_by_one"] = out["packed_tps"] / out["one_by_one_tps"]
    for side, run in (("llama_bench_pp512", lambda: raw_cpp.llama_bench(path, threads, "pp", 512)[0]),
                      ("llama_cpp_python", lambda: tokens / llama_cpp_python(str(path), texts, threads))):
        try:
            out[side + "_tps"] = run()
            out["packed_vs_" + side] = out["packed_tps"] / out[side + "_tps"]
        except (Unavailable, RuntimeError) as exc:
            out[side + "_tps"] = None
            out[side + "_error"] = str(exc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.embed", description=__doc__)
    ap.add_argument("-m", "--model", default="smollm2-135m", choices=sorted(models.KNOWN))
    ap.add_argument("-n", "--texts", type=int, default=2000)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--loop-texts", type=int, default=200, help="texts of the one-per-decode loop (0: all)")
    args = ap.parse_args(argv)
    r = measure(args.model, args.texts, args.threads, args.loop_texts)
    print(f"model {r['model']}, {r['texts']} sentences of {r['min_tokens']}-{r['max_tokens']} tokens "
          f"({r['tokens']} in all), {r['threads']} threads")
    print(f"Model.embed (packed):          {r['packed_tps']:9.1f} tokens/s")
    print(f"one text per llama_decode:     {r['one_by_one_tps']:9.1f} tokens/s   "
          f"packed / one-by-one = {r['packed_vs_one_by_one']:.2f}   (first {r['loop_texts']} texts)")
    for side, label in (("llama_bench_pp512", "llama-bench pp512:"), ("llama_cpp_python", "llama-cpp-python embed:")):
        if r[side + "_tps"] is None:
            print(f"{label:30s} {r[side + '_error']}")
        else:
            print(f"{label:30s} {r[side + '_tps']:9.1f} tokens/s   packed / it = {r['packed_vs_' + side]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
