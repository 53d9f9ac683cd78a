"""Peak resident memory of each side: every side generates ``n`` greedy tokens in a fresh process, whose peak RSS
:func:`benchmarks.common.run_child` measures (GNU time's ``%M`` where it exists, else the child's polled ``VmHWM``).

``python -m benchmarks.sides.rss SIDE MODEL_PATH THREADS N`` is one such process (SIDE: floor, raw, pythonic, service,
peer); llama-simple and llama-bench run as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..harness.common import GEN_PROMPT, Unavailable, gpu_layers, python_child, run_child
from . import peer, raw_cpp

SIDES = {
    "llama-simple": "llama.cpp: llama-simple -n N",
    "llama-bench": "llama.cpp: llama-bench tg N",
    "floor": "python + numpy + import llamacffi (no model)",
    "raw": "llamacffi raw-layer loop",
    "pythonic": "llamacffi Pythonic loop",
    "service": "llamacffi service generate",
    "peer": "llama-cpp-python Llama.__call__",
}
SERVICE_CTX = 256


def measure(side: str, path: Path, threads: int, n: int) -> tuple[float, dict[str, Any]]:
    """Peak RSS in MiB of one fresh process running ``side``."""
    if side == "llama-simple":
        res = run_child(raw_cpp.simple_argv(path, n, GEN_PROMPT), env=raw_cpp.simple_env(threads), rss=True)
        raw_cpp.parse_simple(res)
    elif side == "llama-bench":
        res = run_child(raw_cpp.bench_argv(path, threads, "tg", n), rss=True)
    else:
        if side == "peer" and not peer.available():
            raise Unavailable(peer.ABSENT)
        res = python_child(["benchmarks.sides.rss", side, str(path), str(threads), str(n)], rss=True)
    if res.returncode != 0:
        raise RuntimeError(f"{side} failed ({res.returncode}): {res.stderr.strip()[-300:]}")
    if not res.max_rss_kib:
        raise RuntimeError(f"{side}: the peak RSS could not be read")
    return res.max_rss_kib / 1024, {"wall_s": round(res.wall_s, 3), "method": res.rss_method}


def _child(side: str, path: Path, threads: int, n: int) -> dict[str, Any]:
    import numpy  # noqa: F401  (the floor counts it)

    import llamacffi

    if side == "floor":
        return {}
    if side == "raw":
        from .loops import RawLoop

        loop = RawLoop(path, threads)
        _, extra = loop.run(GEN_PROMPT, n)
        loop.close()
        return extra
    if side == "pythonic":
        from .loops import pythonic_tg

        with llamacffi.Model.load(path, n_gpu_layers=gpu_layers()) as model:
            return {"tps": pythonic_tg(model, threads, n)}
    if side == "service":
        from . import serve

        svc = serve.service(threads)
        text_model = serve.single(svc, str(path), context_size=SERVICE_CTX)
        _, extra = serve.generate_tps(text_model, GEN_PROMPT, n)
        svc.close()
        return extra
    if side == "peer":
        from llama_cpp import Llama

        llm: Any = Llama(
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=SERVICE_CTX,
            n_gpu_layers=gpu_layers(),
            flash_attn=True,
            verbose=False,
        )
        out = llm(GEN_PROMPT, max_tokens=n, temperature=0.0)
        return {"generated_tokens": out["usage"]["completion_tokens"]}
    raise SystemExit(f"unknown side {side!r}")


if __name__ == "__main__":
    side_, path_, threads_, n_ = sys.argv[1:5]
    print(json.dumps(_child(side_, Path(path_), int(threads_), int(n_))))
