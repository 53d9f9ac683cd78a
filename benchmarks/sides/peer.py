"""llama-cpp-python as an optional peer, in a worker process of its own (its libllama never meets llamacffi's).

When ``import llama_cpp`` fails, every figure of the peer reads "absent".
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from ..harness.common import gpu_layers

ABSENT = "absent"  # import llama_cpp fails: not installed


def available() -> bool:
    """Whether ``import llama_cpp`` can be tried (without importing it into this process)."""
    return importlib.util.find_spec("llama_cpp") is not None


class PeerHost:
    """The peer's side, inside its worker process (``benchmarks.harness.worker``)."""

    OPERATIONS = frozenset({"info", "generate", "stream", "ttft", "pp", "micro"})

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        import llama_cpp
        import numpy as np

        self.np = np
        self.llama_cpp = llama_cpp
        # Same configuration as llamacffi's side: the same offloaded layers, 2 threads for both phases, flash
        # attention as llama.cpp's "auto" resolves it on CPU (on), batch 512.
        self.llm: Any = llama_cpp.Llama(
            model_path=path,
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_gpu_layers=gpu_layers(),
            flash_attn=True,
            seed=1234,
            verbose=False,
        )
        self.n_vocab = int(self.llm.n_vocab())
        self.version = str(getattr(llama_cpp, "__version__", "?"))

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "n_vocab": self.n_vocab}

    def generate(self, prompt: str, n: int, sampled: bool) -> tuple[float, dict[str, Any]]:
        """``Llama.__call__``: completion tokens (its usage) over the call's wall time. The prompt repeats, and
        ``Llama.generate`` keeps the longest common prefix, so a run decodes the last prompt token, then one token a
        step, as llamacffi's service does."""
        kw = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1234) if sampled else dict(temperature=0.0)
        t0 = time.perf_counter()
        out = self.llm(prompt, max_tokens=n, **kw)
        dt = time.perf_counter() - t0
        tokens = int(out["usage"]["completion_tokens"])
        return tokens / dt, {"generated_tokens": tokens, "seconds": dt}

    def stream(self, prompt: str, n: int) -> tuple[float, dict[str, Any]]:
        """``Llama.__call__(stream=True)``, greedy: chunks after the first over the time from the first chunk."""
        t0 = time.perf_counter()
        first = None
        chunks = 0
        for _ in self.llm(prompt, max_tokens=n, temperature=0.0, stream=True):
            chunks += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        first = first or end
        tps = (chunks - 1) / (end - first) if end > first and chunks > 1 else 0.0
        return tps, {"chunks": chunks, "ttft_s": first - t0, "seconds": end - t0}

    def ttft(self, prompt: str) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        first = None
        for _ in self.llm(prompt, max_tokens=1, temperature=0.0, stream=True):
            if first is None:
                first = time.perf_counter()
        return (first or time.perf_counter()) - t0, {}

    def pp(self, n: int) -> tuple[float, dict[str, Any]]:
        """``Llama.eval`` of ``n`` random tokens after a reset (prompt processing)."""
        np = self.np
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, self.n_vocab, n).tolist()
        try:
            bos = int(self.llm.token_bos())
            if bos >= 0 and self.llm._model.add_bos_token():
                tokens[0] = bos
        except AttributeError:
            pass
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        dt = time.perf_counter() - t0
        self.llm.reset()
        return n / dt, {}

    def micro(self, text: str, tokens: list[int], calls: int, decode_calls: int) -> tuple[float, dict[str, Any]]:
        """Microseconds per call of the peer's equivalents of llamacffi's per-call operations."""
        np = self.np
        llm = self.llm
        data = text.encode()
        out: dict[str, Any] = {}

        def us(fn: Callable[[], Any], k: int) -> float:
            fn()
            t0 = time.perf_counter_ns()
            for _ in range(k):
                fn()
            return (time.perf_counter_ns() - t0) / 1e3 / k

        out["tokenize_1kb"] = us(lambda: llm.tokenize(data, add_bos=True, special=False), calls)
        piece = getattr(llm._model, "token_to_piece", None)
        ring = list(tokens[:100])
        idx = [0]

        def one_piece() -> Any:
            t = ring[idx[0] % len(ring)]
            idx[0] += 1
            return piece(t) if piece is not None else llm.detokenize([t])

        out["token_to_piece"] = us(one_piece, calls * 10)
        out["detokenize_100"] = us(lambda: llm.detokenize(ring), calls)
        llm.reset()
        t0 = time.perf_counter_ns()
        for i in range(decode_calls):
            llm.eval([ring[i % len(ring)]])
        out["decode_1"] = (time.perf_counter_ns() - t0) / 1e3 / decode_calls
        n_vocab = self.n_vocab
        out["logits"] = us(lambda: np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)), calls * 10)
        out["sampler"] = us(lambda: llm.sample(top_k=40, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.8), calls)
        llm.reset()
        return 0.0, out
