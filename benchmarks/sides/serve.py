"""The service: generate / generate_stream throughput, prefix reuse (time to first token) and concurrent streams."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from llamacffi.service import (
    GenerationOptions,
    LlamaCppService,
    LlamaCppSpecificConfig,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelConfig,
)

from ..harness.common import FILLER, gpu_layers

GREEDY = dict(temperature=0.0, raw=True)
SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1234, raw=True)


def service(threads: int, huge_pages: bool = False) -> LlamaCppService:
    """The service as configured by default, or with the weights read into huge pages."""
    layers = gpu_layers()
    llama_cpp = LlamaCppSpecificConfig(huge_pages=huge_pages)
    return LlamaCppService(
        LocalBackendConfig(threads=threads, use_gpu=layers != 0, gpu_layers=layers, llama_cpp=llama_cpp)
    )


def single(svc: LlamaCppService, name: str, context_size: int = 1024) -> LlamaCppTextModel:
    """One request at a time: ``parallel=1`` (one sequence, as llama-bench and llama-simple run)."""
    return svc.load_model(name, config=ModelConfig(context_size=context_size, parallel=1))


def load(svc: LlamaCppService, name: str, context_size: int, parallel: int) -> LlamaCppTextModel:
    return svc.load_model(name, config=ModelConfig(context_size=context_size, parallel=parallel))


def _delta(model: LlamaCppTextModel, before: dict[str, int]) -> dict[str, int]:
    after = model.stats
    return {k: after[k] - before[k] for k in ("generated_tokens", "prompt_tokens_decoded", "prompt_tokens_reused")}


def generate_tps(model: LlamaCppTextModel, prompt: str, n: int, sampled: bool = False) -> tuple[float, dict[str, Any]]:
    """``generate`` of ``n`` tokens: generated tokens (from the stats) over the call's wall time.

    The prompt repeats across runs, so after the warm-up the slot holds it: the request decodes only its last prompt
    token, whose logits give the first output token, then one token per step — ``n`` one-token decodes, like tg."""
    opts = GenerationOptions(max_tokens=n, **(SAMPLED if sampled else GREEDY))  # type: ignore[arg-type]
    before = model.stats
    t0 = time.perf_counter()
    model.generate(prompt, opts)
    dt = time.perf_counter() - t0
    d = _delta(model, before)
    return d["generated_tokens"] / dt, {**d, "seconds": dt}


def stream_tps(model: LlamaCppTextModel, prompt: str, n: int) -> tuple[float, dict[str, Any]]:
    """``generate_stream`` of ``n`` greedy tokens: tokens after the first over the time from the first chunk to the
    end of the stream (the prompt is not in the interval)."""
    t0, first, end, d = _timed_stream(model, prompt, GenerationOptions(max_tokens=n, **GREEDY))  # type: ignore[arg-type]
    first = first or end
    tps = (d["generated_tokens"] - 1) / (end - first) if end > first and d["generated_tokens"] > 1 else 0.0
    return tps, {**d, "ttft_s": first - t0, "seconds": end - t0}


class PrefixPrompts:
    """Prompts of about ``n`` tokens: a cold one whose first tokens differ every time (only the BOS token can be
    shared), and its warm sibling sharing the first ``shared`` of its tokens (90%) with a different end."""

    OPENINGS = (
        "Alpha",
        "Bravo",
        "Charlie",
        "Delta",
        "Echo",
        "Foxtrot",
        "Golf",
        "Hotel",
        "India",
        "Juliett",
        "Kilo",
        "Lima",
        "Mike",
        "November",
        "Oscar",
        "Papa",
        "Quebec",
        "Romeo",
        "Sierra",
        "Tango",
    )

    def __init__(self, model: LlamaCppTextModel, n: int, share: float = 0.9) -> None:
        self.vocab = model.llama_model.vocab
        self.n = n
        self.shared = round(n * share)
        body = self.vocab.tokenize(FILLER * (1 + 2 * n // 100), add_special=False)
        self.body = body
        self.i = 0

    def pair(self) -> tuple[str, str]:
        opening = self.OPENINGS[self.i % len(self.OPENINGS)] + f" {self.i // len(self.OPENINGS)}."
        self.i += 1
        head = self.vocab.tokenize(opening, add_special=False)
        toks = np.concatenate([head, self.body])[: self.n]
        cold = self.vocab.detokenize(toks)
        tail = self.body[::-1][: self.n - self.shared]  # the same words in another order
        warm = self.vocab.detokenize(np.concatenate([toks[: self.shared], tail]))
        return cold, warm


def ttft(model: LlamaCppTextModel, prompt: str) -> tuple[float, dict[str, Any]]:
    """Seconds from the request to its first chunk (greedy, one token)."""
    t0, first, end, d = _timed_stream(model, prompt, GenerationOptions(max_tokens=1, **GREEDY))  # type: ignore[arg-type]
    return (first or end) - t0, d


def _timed_stream(
    model: LlamaCppTextModel, prompt: str, opts: GenerationOptions
) -> tuple[float, float | None, float, dict[str, Any]]:
    """Stream one request: (start, first chunk or None, end) times and the counters it moved."""
    before = model.stats
    t0 = time.perf_counter()
    first = None
    for _ in model.generate_stream(prompt, opts):
        if first is None:
            first = time.perf_counter()
    return t0, first, time.perf_counter(), _delta(model, before)


class Concurrency:
    """``k`` streams at once, one consumer thread each; aggregate tokens/s = tokens generated by all streams over
    the wall time from the first request to the end of the last stream."""

    PROMPTS = (
        "Once upon a time, in a small village by the sea,",
        "The history of the Roman Empire begins",
        "In the beginning of the twentieth century, the city",
        "My grandmother used to tell me that",
        "The recipe for a good bread starts with",
        "Deep in the forest, a young fox",
        "The first thing every sailor learns is",
        "When the train finally arrived at the station,",
    )

    def __init__(self, model: LlamaCppTextModel) -> None:
        self.model = model  # loaded with ``parallel`` >= the most streams run at once

    def run(self, k: int, n: int) -> tuple[float, dict[str, Any]]:
        opts = GenerationOptions(max_tokens=n, **GREEDY)  # type: ignore[arg-type]
        counts = [0] * k
        errors: list[BaseException] = []
        start = threading.Barrier(k + 1)

        def consume(i: int) -> None:
            try:
                start.wait()
                for _ in self.model.generate_stream(self.PROMPTS[i % len(self.PROMPTS)], opts):
                    counts[i] += 1
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        before = self.model.stats
        threads = [threading.Thread(target=consume, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        d = _delta(self.model, before)
        return d["generated_tokens"] / dt, {
            **d,
            "seconds": dt,
            "max_batched_sequences": self.model.stats["max_batched_sequences"],
        }


class ServiceHost:
    """The service in its worker (``benchmarks.harness.worker``): one model, its engine thread the only one
    decoding."""

    OPERATIONS = frozenset({"info", "generate", "stream", "ttft_cold", "ttft_warm", "concurrent"})

    def __init__(
        self, name: str, threads: int, context_size: int, parallel: int, prefix_tokens: int, huge_pages: bool = False
    ) -> None:
        self.serve = sys.modules[__name__]
        self.svc = service(threads, huge_pages)
        self.model = load(self.svc, name, context_size, parallel)
        self.prompts = PrefixPrompts(self.model, prefix_tokens)
        self.conc = Concurrency(self.model)
        self.warm_prompt = ""

    def info(self) -> dict[str, Any]:
        return {
            "config": self.model.config.to_dict(),
            "huge_page_mib": self.model.llama_model.huge_page_bytes / (1 << 20),
        }

    def generate(self, prompt: str, n: int, sampled: bool = False) -> tuple[float, dict[str, Any]]:
        return self.serve.generate_tps(self.model, prompt, n, sampled)

    def stream(self, prompt: str, n: int) -> tuple[float, dict[str, Any]]:
        return self.serve.stream_tps(self.model, prompt, n)

    def ttft_cold(self) -> tuple[float, dict[str, Any]]:
        """A new pair of prompts: the cold one is measured now, the warm one by :meth:`ttft_warm` next."""
        cold, self.warm_prompt = self.prompts.pair()
        value, extra = self.serve.ttft(self.model, cold)
        return value, {**extra, "cold_prompt": cold, "warm_prompt": self.warm_prompt}

    def ttft_warm(self) -> tuple[float, dict[str, Any]]:
        return self.serve.ttft(self.model, self.warm_prompt)

    def concurrent(self, k: int, n: int) -> tuple[float, dict[str, Any]]:
        return self.conc.run(k, n)
