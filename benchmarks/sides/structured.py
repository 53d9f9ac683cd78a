"""Structured output: a request constrained by a JSON schema beside the same request free, on both models, and the
schema compiler's time on the corpus's largest schemas.

Each round runs the free request, then the constrained one (sampled, temperature 0.8, the same seed), through the
service with one slot; tokens/s is the generated tokens over the request's time, and the ratio is the median of
the rounds' constrained ÷ free. ``python -m benchmarks.sides.structured [--reps N]`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from llamacffi.grammar import from_json_schema
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig

from ..harness.common import gpu_layers

SCHEMAS = Path(__file__).resolve().parents[2] / "tests" / "schemas"
PROMPT = "List some people with their name, age, city and hobbies, as JSON."
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 30},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "city": {"type": "string", "maxLength": 30},
                    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
                },
                "required": ["name", "age", "city", "hobbies"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}


def _rate(model: Any, options: GenerationOptions) -> float:
    before = model.stats["generated_tokens"]
    t0 = time.perf_counter()
    model.generate(PROMPT, options)
    return (model.stats["generated_tokens"] - before) / (time.perf_counter() - t0)


def generation(name: str, threads: int, reps: int, tokens: int) -> dict[str, Any]:
    layers = gpu_layers()
    with LlamaCppService(LocalBackendConfig(threads=threads, use_gpu=layers != 0, gpu_layers=layers)) as svc:
        model = svc.load_model(name, config=ModelConfig(context_size=1024, parallel=1))
        free = GenerationOptions(max_tokens=tokens, temperature=0.8, seed=7)
        constrained = GenerationOptions(max_tokens=tokens, temperature=0.8, seed=7, json_schema=SCHEMA)
        _rate(model, free), _rate(model, constrained)  # warm-up
        rates: dict[str, list[float]] = {"free": [], "constrained": []}
        for _ in range(reps):
            rates["free"].append(_rate(model, free))
            rates["constrained"].append(_rate(model, constrained))
    ratios = [c / f for c, f in zip(rates["constrained"], rates["free"], strict=True)]
    return {
        "free": statistics.median(rates["free"]),
        "constrained": statistics.median(rates["constrained"]),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def compile_ms(repeats: int = 20) -> dict[str, float]:
    """Milliseconds of one compilation of each of the three largest corpus schemas (cache bypassed, shared
    automata built once before, as in a running process)."""
    from llamacffi.grammar import compiler

    schemas = sorted(SCHEMAS.glob("*.json"), key=lambda p: -p.stat().st_size)[:3]
    from_json_schema(SCHEMA)  # builds the shared number and date-time automata
    out = {}
    for path in schemas:
        schema = json.loads(path.read_text())
        best = min(_timed(lambda s=schema: compiler.Compiler(s).grammar()) for _ in range(repeats))
        out[path.stem] = best * 1e3
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.structured", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    print("| model | free tokens/s | constrained tokens/s | constrained ÷ free (median of rounds) |")
    print("|---|---|---|---|")
    for name in args.models:
        r = generation(name, args.threads, args.reps, args.tokens)
        print(
            f"| {name} | {r['free']:.1f} | {r['constrained']:.1f} | {r['ratio']:.3f} "
            f"({min(r['ratios']):.3f}–{max(r['ratios']):.3f}) |"
        )
    print()
    print("| schema | compile time (ms, best of 20) |")
    print("|---|---|")
    for stem, ms in compile_ms().items():
        print(f"| {stem} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
