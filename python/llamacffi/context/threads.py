"""A context's CPU threads: the default count, thread pools for builds without OpenMP, llama.cpp's timings, and
the exit hook that stops every decode before the interpreter tears llama.cpp down."""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..backend import uses_openmp
from ..errors import ContextError
from ..raw import CData, ffi, lib


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def new_pools(threads: int, threads_batch: int) -> list[CData]:
    """Thread pools for a context of a build without OpenMP (where ggml would otherwise start and join its threads
    for every decode); two NULLs with OpenMP."""
    if uses_openmp():
        return [ffi.NULL, ffi.NULL]
    pool = lib.llamacffi_threadpool_new(threads)
    pools = [pool, pool if threads_batch == threads else lib.llamacffi_threadpool_new(threads_batch)]
    if ffi.NULL in pools:
        lib.llamacffi_context_free(ffi.NULL, *pools)
        raise ContextError(f"could not start a thread pool of {max(threads, threads_batch)} threads")
    return pools


def free_retired_pools(retired: list[CData]) -> None:
    """Free the pools a context no longer uses (each once) and empty the list."""
    while retired:
        lib.llamacffi_context_free(ffi.NULL, retired.pop(), ffi.NULL)


def context_free(pools: list[CData], retired: list[CData]) -> Callable[[CData], None]:
    """How to free a context: llama_free, then the thread pools it uses at that time and those it used before
    (both lists are read then)."""

    def free(ptr: CData, _lib: CData = lib, _free_retired: Callable[[list[CData]], None] = free_retired_pools) -> None:
        _lib.llamacffi_context_free(ptr, pools[0], pools[1])
        _free_retired(retired)

    return free


@dataclass(frozen=True)
class Perf:
    """llama.cpp's timings for a context: prompt (``p_eval``) and generation (``eval``) in ms and tokens."""

    t_load_ms: float
    t_p_eval_ms: float
    t_eval_ms: float
    n_p_eval: int
    n_eval: int
    n_reused: int

    @property
    def prompt_tokens_per_s(self) -> float:
        return 1e3 * self.n_p_eval / self.t_p_eval_ms if self.t_p_eval_ms else 0.0

    @property
    def tokens_per_s(self) -> float:
        return 1e3 * self.n_eval / self.t_eval_ms if self.t_eval_ms else 0.0


class Haltable(Protocol):
    """What the exit hook needs of a context."""

    _busy: threading.Lock
    _quiesced: bool

    def _halt(self) -> None: ...


_live: weakref.WeakSet[Haltable] = weakref.WeakSet()


def halt_at_exit(ctx: Haltable) -> None:
    """Register a context for the exit hook."""
    _live.add(ctx)


@atexit.register
def _quiesce_at_exit() -> None:
    """At interpreter exit, daemon threads may still be inside llama_decode while the process tears llama.cpp and
    OpenMP down, which crashes it. Abort every context's decode and hold it, so that none runs past this point."""
    for ctx in list(_live):
        ctx._halt()
        if ctx._busy.acquire(timeout=30):  # the decode under way (aborted at its next graph node) returns first
            ctx._quiesced = True  # keeps the lock: a later decode raises instead of starting
