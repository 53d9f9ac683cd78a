"""Per-call costs of llamacffi's building blocks (microseconds per call)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llamacffi import Context, Model
from llamacffi.sampling import NativeSampler, Sampler

from ..harness.common import FILLER, GEN_PROMPT, per_call_us
from ..harness.ops import OPS  # noqa: F401  (the operations this side times)

TEXT_1KB = (FILLER * 2)[:1024]


def sample_tokens(model: Model) -> list[int]:
    """100 token ids of ordinary text (the ring the piece and detokenize benchmarks walk)."""
    toks = model.vocab.tokenize(TEXT_1KB, add_special=False)
    return [int(t) for t in toks[:100]]


def real_logits(model: Model, threads: int) -> np.ndarray:
    """The logits row after the generation prompt: what a sampler sees in a real generation."""
    with Context(model, n_ctx=128, n_threads=threads) as ctx:
        ctx.decode_tokens(model.vocab.tokenize(GEN_PROMPT))
        return ctx.logits_copy()


class Micro:
    """llamacffi's side of the microbenchmarks for one model; :meth:`run` returns µs per call by operation."""

    def __init__(self, model: Model, threads: int, calls: int, decode_calls: int) -> None:
        self.model = model
        self.vocab = model.vocab
        self.calls = calls
        self.decode_calls = decode_calls
        self.ring = sample_tokens(model)
        self.ctx = Context(model, n_ctx=max(256, decode_calls + 8), n_threads=threads)
        self.row = real_logits(model, threads)
        self.sampler = Sampler(top_k=40, temperature=0.8, seed=1)
        self.native = NativeSampler(top_k=40, temperature=0.8, seed=1)

    def close(self) -> None:
        self.native.close()
        self.ctx.close()

    def run(self) -> dict[str, float]:
        vocab, ring, calls = self.vocab, self.ring, self.calls
        out: dict[str, float] = {}
        out["tokenize_1kb"] = _us(lambda: vocab.tokenize(TEXT_1KB), calls)
        it = _cycle(ring)
        out["token_to_piece"] = _us(lambda: vocab.token_to_piece(next(it)), calls * 10)
        out["detokenize_100"] = _us(lambda: vocab.detokenize(ring), calls)
        ctx = self.ctx
        ctx.memory.clear()
        ctx.decode_token(ring[0], 0)  # warm
        ctx.memory.clear()
        out["decode_1"] = _decode_us(ctx, [ring[i % len(ring)] for i in range(self.decode_calls)])
        out["logits"] = _us(ctx.logits, calls * 10)
        ctx.memory.clear()
        row = self.row
        out["sampler"] = _us(lambda: self.sampler.sample(row), calls)
        out["native_sampler"] = _us(lambda: self.native.sample(row), calls)
        return out


def _decode_us(ctx: Context, toks: list[int]) -> float:
    """µs per one-token decode at positions 0, 1, 2, ... (as llama-bench's tg test)."""
    t0 = time.perf_counter_ns()
    for p, t in enumerate(toks):
        ctx.decode_token(t, p)
    return (time.perf_counter_ns() - t0) / 1e3 / len(toks)


def _us(fn: Callable[[], Any], calls: int) -> float:
    fn()
    return per_call_us(fn, calls)


def _cycle(items: list[int]) -> Any:
    while True:
        yield from items
