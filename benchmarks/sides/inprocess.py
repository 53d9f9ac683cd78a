"""The serving benchmark's ceiling: the same model, slots and threads as ``llamacffi serve``, driven in process
through the service's asynchronous API, with the same prompts and the same measurements but no HTTP.

Run as ``python -m benchmarks.sides.inprocess MODEL_PATH PARALLEL CTX THREADS``: it loads the model, prints
``ready``, then answers each line ``CLIENTS TOKENS`` on stdin with one line of JSON on stdout (the round's tokens,
seconds, times to first token and inter-token gaps), until stdin closes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig
from llamacffi.service.local import LlamaCppTextModel

from .prompts import messages_for


async def _one(model: LlamaCppTextModel, client: int, tokens: int) -> dict[str, object]:
    opts = GenerationOptions(max_tokens=tokens, temperature=0.0)
    t0 = time.perf_counter()
    messages = [(m["role"], m["content"]) for m in messages_for(client)]
    prompt = model.tokenize_prompt(model.format_chat(messages, opts), opts)
    times: list[float] = []
    generated = 0
    async for _, event in model.start_choices(prompt, opts):
        text_part = getattr(event, "text", None)
        if text_part:
            times.append(time.perf_counter())
        n = getattr(event, "completion_tokens", None)
        if isinstance(n, int):
            generated = n
    return {
        "start": t0,
        "end": time.perf_counter(),
        "ttft": (times[0] - t0) if times else None,
        "gaps": [b - a for a, b in itertools.pairwise(times)],
        "tokens": generated or len(times),
        "prompt_tokens": len(prompt),
    }


async def _round(model: LlamaCppTextModel, clients: int, tokens: int) -> dict[str, object]:
    runs = await asyncio.gather(*(_one(model, i, tokens) for i in range(clients)))
    return {
        "start": min(r["start"] for r in runs),  # type: ignore[type-var]
        "end": max(r["end"] for r in runs),  # type: ignore[type-var]
        "tokens": sum(r["tokens"] for r in runs),  # type: ignore[misc]
        "ttft": [r["ttft"] for r in runs if r["ttft"] is not None],
        "gaps": [g for r in runs for g in r["gaps"]],  # type: ignore[attr-defined]
        "prompt_tokens": sum(r["prompt_tokens"] for r in runs),  # type: ignore[misc]
    }


def main() -> int:
    path, parallel, ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    service = LlamaCppService(LocalBackendConfig(threads=threads))
    model = service.load_model(path, config=ModelConfig(context_size=ctx, parallel=parallel)).as_text_to_text()
    assert isinstance(model, LlamaCppTextModel)
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            clients, tokens = (int(x) for x in line.split())
            print(json.dumps(asyncio.run(_round(model, clients, tokens))), flush=True)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
