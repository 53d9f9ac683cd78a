"""Leak cycles: the same work many times over, RSS and live llamacffi objects read as it goes.

* ``model``: load a model, make a context, decode a prompt and 32 greedy tokens, close both; per model.
* ``service``: requests to the in-process service from a few threads, a fifth of them streams abandoned after the
  first chunk (cancelled mid-stream).
* ``sampler``: a JSON schema compiled to a grammar, a :class:`NativeSampler` over it sampling a few tokens, closed.

A run reads RSS (after ``gc.collect()`` and glibc's ``malloc_trim``, so freed memory is not counted as held) and the
number of live objects of llamacffi's own types at a reference cycle (a tenth of the way, after warm-up) and at the
end. It passes when RSS at the end is within ``--bound`` MiB of the reference and no llamacffi type has more live
objects than at the reference.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import MIB, rss_bytes, write_json

MODELS = ("smollm2-135m", "gemma3-270m")
PROMPT = "The history of the printing press begins"
# The service's host prompt cache is kept small, so that it is full within the first cycles: its entries come and go
# through the whole run, and what it holds does not count as growth.
CACHE_MIB = 8


def settle() -> int:
    """RSS once Python's garbage is collected and glibc has returned its free pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_bytes()


def live_objects() -> Counter[str]:
    """Live objects of llamacffi's own classes, by class name."""
    gc.collect()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        mod = getattr(type(obj), "__module__", None)
        if isinstance(mod, str) and mod.startswith("llamacffi"):
            counts[f"{mod}.{type(obj).__qualname__}"] += 1
    return counts


@dataclass
class Series:
    """RSS (MiB) after each checkpoint cycle, and live llamacffi objects at the reference cycle and the end."""

    name: str
    cycles: int
    reference: int
    rss_mib: dict[int, float] = field(default_factory=dict)
    objects_at_reference: Counter[str] = field(default_factory=Counter)
    objects_at_end: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def delta_mib(self) -> float:
        return round(self.rss_mib[self.cycles] - self.rss_mib[self.reference], 2)

    @property
    def grown(self) -> dict[str, tuple[int, int]]:
        """Classes with more live objects at the end than at the reference: ``{name: (reference, end)}``."""
        return {
            k: (self.objects_at_reference[k], n)
            for k, n in self.objects_at_end.items()
            if n > self.objects_at_reference[k]
        }

    def summary(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "reference_cycle": self.reference,
            "rss_mib_at_reference": self.rss_mib[self.reference],
            "rss_mib_at_end": self.rss_mib[self.cycles],
            "delta_mib": self.delta_mib,
            "rss_mib": {str(k): v for k, v in sorted(self.rss_mib.items())},
            "llamacffi_objects_at_reference": sum(self.objects_at_reference.values()),
            "llamacffi_objects_at_end": sum(self.objects_at_end.values()),
            "grown_types": {k: list(v) for k, v in self.grown.items()},
            "seconds": round(self.seconds, 1),
        }


def repeat(name: str, cycles: int, step: Callable[[int], None], every: int | None = None) -> Series:
    """Run ``step(i)`` ``cycles`` times, reading RSS at the reference cycle (a tenth), every ``every`` and the end."""
    reference = max(1, cycles // 10)
    every = every or max(1, cycles // 20)
    series = Series(name, cycles, reference)
    start = time.monotonic()
    for i in range(1, cycles + 1):
        step(i)
        if i == reference:
            series.objects_at_reference = live_objects()
        if i in (reference, cycles) or i % every == 0:
            series.rss_mib[i] = round(settle() / MIB, 2)
    series.objects_at_end = live_objects()
    series.seconds = time.monotonic() - start
    return series


def model_cycle(path: Any, tokens: int) -> Callable[[int], None]:
    """One load → context → prompt + ``tokens`` greedy tokens → close."""
    import llamacffi

    def step(_: int) -> None:
        with llamacffi.Model.load(path) as model, llamacffi.Context(model, n_ctx=256, n_threads=2) as ctx:
            pos = ctx.decode_tokens(model.vocab.tokenize(PROMPT))
            stream = model.vocab.stream()
            for _ in range(tokens):
                token = int(np.argmax(ctx.logits()))
                stream.feed(token)
                ctx.decode_token(token, pos)
                pos += 1
            stream.flush()

    return step


def service_requests(model: Any, clients: int, max_tokens: int) -> Callable[[int], None]:
    """Each call runs ``clients`` requests at once; one in five, counted over all, is a stream abandoned after one
    chunk (its slot is freed mid-generation)."""
    from llamacffi.service import GenerationOptions

    opts = GenerationOptions(temperature=0.7, max_tokens=max_tokens, raw=True, seed=3)
    counter = [0]
    lock = threading.Lock()

    def one(n: int) -> None:
        prompt = f"{PROMPT} (request {n})"
        if n % 5 == 0:
            stream = model.generate_stream(prompt, opts)
            next(stream, None)
            stream.close()
        else:
            model.generate(prompt, opts)

    def step(_: int) -> None:
        with lock:
            first = counter[0]
            counter[0] += clients
        threads = [threading.Thread(target=one, args=(first + k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return step


SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer", "maximum": 10 + i}}, "required": ["a"]} for i in range(5)
] + [{"type": "array", "items": {"type": "string", "maxLength": 3 + i}, "maxItems": 4} for i in range(5)]


def sampler_cycle(model: Any) -> Callable[[int], None]:
    """A schema compiled to GBNF, a NativeSampler over it sampling four tokens from random logits, closed."""
    from llamacffi import grammar
    from llamacffi.sampling import NativeSampler

    rng = np.random.default_rng(0)
    n_vocab = model.vocab.n_tokens

    def step(i: int) -> None:
        gbnf = grammar.from_json_schema(SCHEMAS[i % len(SCHEMAS)])
        with NativeSampler(vocab=model.vocab, grammar=gbnf, seed=i, temperature=0.8, top_k=40) as s:
            for _ in range(4):
                s.sample(rng.standard_normal(n_vocab).astype(np.float32))

    return step


def run(kinds: list[str], scale: float, models: tuple[str, ...] = MODELS) -> dict[str, Series]:
    """The chosen cycles at ``scale`` times the full counts (200 model cycles, 2,000 requests, 500 samplers)."""
    import llamacffi
    from llamacffi import models as known
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig

    out: dict[str, Series] = {}
    if "model" in kinds:
        for name in models:
            out[f"model:{name}"] = repeat(name, max(2, round(200 * scale)), model_cycle(known.fetch(name), 32))
    if "service" in kinds:
        clients = 4
        with LlamaCppService(LocalBackendConfig(threads=2)) as svc:
            m = svc.load_model(
                models[0], config=ModelConfig(context_size=256, parallel=clients, prompt_cache_mib=CACHE_MIB)
            )
            rounds = max(2, round(2000 * scale) // clients)
            out["service"] = repeat("service", rounds, service_requests(m, clients, 8))
            out["service"].name = f"service ({rounds * clients} requests, {clients} at once)"
    if "sampler" in kinds:
        with llamacffi.Model.load(known.fetch(models[0])) as model:
            out["sampler"] = repeat("sampler", max(2, round(500 * scale)), sampler_cycle(model))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability leaks", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--kinds", nargs="+", default=["model", "service", "sampler"], choices=["model", "service", "sampler"]
    )
    ap.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models of the model cycles"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full cycle counts (default 1)")
    ap.add_argument("--bound", type=float, default=5.0, help="MiB RSS may grow from the reference cycle (default 5)")
    ap.add_argument("--out", default="leaks.json", help="results file under reliability/results ('' for none)")
    args = ap.parse_args(argv)
    random.seed(0)
    logging.getLogger("llamacffi").setLevel(logging.ERROR)  # llama.cpp's load warnings, 200 times over
    start = time.monotonic()
    series = run(args.kinds, args.scale, tuple(args.models))
    failed = False
    report: dict[str, Any] = {"bound_mib": args.bound, "scale": args.scale}
    for key, s in series.items():
        ok = s.delta_mib <= args.bound and not s.grown
        failed |= not ok
        report[key] = {**s.summary(), "ok": ok}
        print(
            f"{'ok  ' if ok else 'FAIL'} {key}: {s.cycles} cycles in {s.seconds:.0f} s; RSS {s.rss_mib[s.reference]} "
            f"MiB at cycle {s.reference}, {s.rss_mib[s.cycles]} MiB at the end ({s.delta_mib:+} MiB); llamacffi "
            f"objects {sum(s.objects_at_reference.values())} -> {sum(s.objects_at_end.values())}"
            + (f"; grown: {s.grown}" if s.grown else "")
        )
    report["seconds"] = round(time.monotonic() - start, 1)
    if args.out:
        print("wrote", write_json(args.out, report))
    else:
        print(json.dumps(report, indent=1), file=sys.stderr)
    return 1 if failed else 0
