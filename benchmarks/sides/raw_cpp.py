"""llama.cpp's own programs, built from the same tree and flags: llama-bench and llama-simple."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from llamacffi import raw_tools
from llamacffi.backend import uses_openmp

from ..harness.common import ChildResult, Unavailable, gpu_layers, ngl_arg, run_child

SIMPLE_SPEED = re.compile(r"decoded (\d+) tokens in ([\d.]+) s, speed: ([\d.]+) t/s")


def tool(name: str) -> Path:
    path = raw_tools.find(name)
    if path is None:
        raise Unavailable(f'absent ({name} not built: install with CMAKE_ARGS="-DLLAMACFFI_RAW_TOOLS=ON")')
    return path


LLAMA_SIMPLE_THREADS = 4  # llama.cpp's default, which llama-simple keeps


def simple_env(threads: int) -> dict[str, str]:
    """llama-simple has no thread option and keeps llama.cpp's default of 4 threads; with this build's OpenMP,
    OMP_THREAD_LIMIT caps the team it gets, and ggml adopts the size of the team."""
    return {"OMP_THREAD_LIMIT": str(threads)}


def bench_argv(path: Path, threads: int, test: str, n: int | str, reps: int = 1) -> list[str]:
    """llama-bench's arguments for ``pp`` or ``tg`` of ``n`` tokens (``pp`` also takes a comma-separated list)."""
    p, t = (n, 0) if test == "pp" else (0, n)
    tool_args = ["-m", str(path), "-t", str(threads), "-r", str(reps), "-ngl", ngl_arg(gpu_layers()), "-o", "json"]
    return [str(tool("llama-bench")), *tool_args, "-p", str(p), "-n", str(t)]


def _bench_rows(argv: list[str]) -> list[dict[str, Any]]:
    res = run_child(argv)
    if res.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({res.returncode}): {res.stderr.strip()[-300:]}")
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def llama_bench(path: Path, threads: int, test: str, n: int) -> tuple[float, dict[str, Any]]:
    """tokens/s of one llama-bench test (``pp`` or ``tg``) of ``n`` tokens, one repetition (after its own
    warm-up run)."""
    row = _bench_rows(bench_argv(path, threads, test, n))[0]
    return float(row["avg_ts"]), {"n_threads": row.get("n_threads")}


def simple_argv(path: Path, n: int, prompt: str) -> list[str]:
    return [str(tool("llama-simple")), "-m", str(path), "-n", str(n), "-ngl", ngl_arg(gpu_layers()), prompt]


def parse_simple(res: ChildResult) -> tuple[int, float, float]:
    m = SIMPLE_SPEED.search(res.stderr)
    if res.returncode != 0 or m is None:
        raise RuntimeError(f"llama-simple failed ({res.returncode}): {res.stderr.strip()[-300:]}")
    return int(m.group(1)), float(m.group(2)), float(m.group(3))


def llama_simple(path: Path, threads: int, n: int, prompt: str) -> tuple[float, dict[str, Any]]:
    """tokens/s of llama-simple's greedy C loop as it prints it: ``decoded N tokens in X s`` (X runs from the
    prompt's decode to the last token, each token also rendered and printed)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not uses_openmp() and cpus < LLAMA_SIMPLE_THREADS:
        raise Unavailable(
            f"not comparable: without OpenMP llama-simple runs {LLAMA_SIMPLE_THREADS} threads (it has no "
            f"option), more than the {cpus} CPUs here"
        )
    res = run_child(simple_argv(path, n, prompt), env=simple_env(threads))
    n_dec, secs, speed = parse_simple(res)  # the printed speed keeps more digits than the printed seconds
    return speed, {"tokens": n_dec, "seconds": secs}


def llama_bench_batches(path: Path, threads: int, sizes: list[int], reps: int) -> tuple[float, dict[str, Any]]:
    """llama-bench ``pp k`` for each ``k`` of ``sizes``, ``reps`` runs averaged: k tokens of one sequence per
    ``llama_decode`` (logits of the last only). Returns pp4 ÷ pp1 (or last ÷ first) and the tokens/s by k."""
    rows = _bench_rows(bench_argv(path, threads, "pp", ",".join(map(str, sizes)), reps))
    by_k = {str(r["n_prompt"]): float(r["avg_ts"]) for r in rows}
    one = by_k[str(sizes[0])]
    four = by_k.get("4", by_k[str(sizes[-1])])
    return four / one, by_k
