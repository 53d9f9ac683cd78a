"""Context: decoding, logits and embeddings, the KV memory, and saved states."""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import numpy.typing as npt

from .batch import MAX_SEQ, MAX_TOKENS, Batch, check_logits, chunks
from .errors import (INT32_MAX, ClosedError, ContextError, InvalidArgumentError, LlamaError, StateError, as_int,
                     check_decode, ensure)
from . import log
from .backend import uses_openmp
from .model import Model
from .raw import ffi, lib
from .vocab import TokenArray, as_tokens

MAX_CTX = MAX_TOKENS  # 4M positions
MAX_THREADS = 1024
_ONE_OUTPUT = np.ones(1, dtype=np.int8)  # the outputs of decode_token: its one token has logits
_ONE_OUTPUT.flags.writeable = False
_NO_VIEW = np.zeros(0, dtype=np.float32)


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _context_free(pools: list[Any], release_model: Callable[[], None]) -> Any:
    """The destructor of a context: llama_free, the thread pools it uses at that time, then its hold on the model."""
    def free(ptr: Any, _lib: Any = lib) -> None:
        _lib.llamacffi_context_free(ptr, pools[0], pools[1])
        release_model()
    return free


_live: weakref.WeakSet[Context] = weakref.WeakSet()


@atexit.register
def _quiesce_at_exit() -> None:
    """At interpreter exit, daemon threads may still be inside llama_decode while the process tears llama.cpp and
    OpenMP down, which crashes it. Abort every context's decode and hold it, so that none runs past this point."""
    for ctx in list(_live):
        ctx._halt()
        if ctx._busy.acquire(timeout=30):  # the decode under way (aborted at its next graph node) returns first
            ctx._quiesced = True  # keeps the lock: a later decode raises instead of starting


def _c_path(path: str | os.PathLike[str]) -> bytes:
    """A file path for C, which would end it at a NUL character."""
    raw = os.fsencode(path)
    ensure(b"\0" not in raw, f"a path cannot hold a NUL character: {os.fspath(path)!r}")
    return raw


def _holding(owner: Any) -> Callable[[Any], None]:
    """A no-op destructor for ``ffi.gc`` that keeps ``owner`` alive as long as the cdata it is attached to."""
    def keep(_ptr: Any, _owner: Any = owner) -> None:
        pass
    return keep


def _new_pools(threads: int, threads_batch: int) -> list[Any]:
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


class Context:
    """An inference context over a :class:`Model`: its own KV memory, threads and outputs.

    Keeps its model alive until closed. Not for concurrent use: a call while another thread is decoding raises.
    """

    def __init__(self, model: Model, *, n_ctx: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
                 n_seq_max: int = 1, n_threads: int | None = None, n_threads_batch: int | None = None,
                 embeddings: bool = False, flash_attn: bool | None = None, kv_unified: bool = False,
                 offload_kqv: bool = True, no_perf: bool = False, pooling_type: int | None = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a llamacffi.Model, not {type(model).__name__}")
        n_ctx = as_int("n_ctx", model.n_ctx_train if n_ctx is None else n_ctx, 1, MAX_CTX)
        n_batch = as_int("n_batch", n_batch, 1, MAX_CTX)
        n_seq_max = as_int("n_seq_max", n_seq_max, 1, MAX_SEQ)
        if model.vocab_only:
            raise InvalidArgumentError("this Model was loaded with vocab_only=True: it has no weights to run")
        if min(n_ctx, n_batch) < n_seq_max:  # llama.cpp reserves an output row per sequence within n_batch
            raise InvalidArgumentError(f"n_ctx ({n_ctx}) and n_batch ({n_batch}) must be at least n_seq_max "
                                       f"({n_seq_max})")
        n_ubatch = as_int("n_ubatch", min(n_batch, 512) if n_ubatch is None else n_ubatch, 1, n_batch)
        threads = as_int("n_threads", default_threads() if n_threads is None else n_threads, 1, MAX_THREADS)
        threads_batch = as_int("n_threads_batch", threads if n_threads_batch is None else n_threads_batch, 1,
                               MAX_THREADS)
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max
        params.n_threads = threads
        params.n_threads_batch = threads_batch
        params.embeddings = bool(embeddings)
        if pooling_type is not None:  # a llama_pooling_type (see llamacffi.embedding.Pooling); None: the model's
            params.pooling_type = as_int("pooling_type", pooling_type, lib.LLAMA_POOLING_TYPE_NONE,
                                         lib.LLAMA_POOLING_TYPE_RANK)
        params.offload_kqv = bool(offload_kqv)
        params.kv_unified = bool(kv_unified)
        params.no_perf = bool(no_perf)
        if flash_attn is not None:
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else \
                lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        model_ptr, release_model = model._lease()
        try:
            ptr = lib.llama_init_from_model(model_ptr, params)
            if ptr == ffi.NULL:
                raise ContextError(
                    f"llama.cpp could not create a context with n_ctx={n_ctx}, n_batch={n_batch}, "
                    f"n_seq_max={n_seq_max}: most likely not enough memory; try a smaller n_ctx")
        except BaseException:
            release_model()
            raise
        try:
            pools = _new_pools(threads, threads_batch)
        except BaseException:
            lib.llama_free(ptr)
            release_model()
            raise
        if pools[0] != ffi.NULL:
            lib.llama_attach_threadpool(ptr, pools[0], pools[1])
        self._model = model
        self._pools = pools
        self._ptr = ffi.gc(ptr, _context_free(pools, release_model))
        self._mem = lib.llama_get_memory(ptr)
        self._abort = ffi.new("llamacffi_abort_state *")
        lib.llamacffi_abort_attach(ptr, self._abort)
        self._busy = threading.Lock()
        self._quiesced = False
        _live.add(self)
        self.n_vocab = model.vocab.n_tokens
        self.n_embd = model.n_embd
        self.n_ctx = int(lib.llama_n_ctx(ptr))
        self.n_batch = int(lib.llama_n_batch(ptr))
        self.n_ubatch = int(lib.llama_n_ubatch(ptr))
        self.n_seq_max = int(lib.llama_n_seq_max(ptr))
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ptr))  # the positions one sequence may use
        self.embeddings_enabled = bool(embeddings)
        # Without a unified memory each sequence has a stream of its own, which llama.cpp cannot share by position.
        self.separate_streams = not kv_unified and self.n_seq_max > 1
        self._outputs: npt.NDArray[np.int8] = np.zeros(0, dtype=np.int8)  # per token of the last batch: logits?
        self._n_outputs = 0
        self._view_ptr: Any = ffi.NULL  # the row logits() returned last, and its view
        self._view: npt.NDArray[np.float32] = _NO_VIEW
        self._views: list[weakref.ref[Any]] = []  # views handed out (numpy arrays are not hashable: no WeakSet)
        self._out_rows = self.n_seq_max  # rows of llama.cpp's output buffer: it reserves one per sequence at first
        self._one = Batch(1, n_seq_max=1)
        self.memory = Memory(self)

    # ---- lifetime ---------------------------------------------------------------------------------------------

    @property
    def ptr(self) -> Any:
        """The ``struct llama_context *`` (raises :class:`ClosedError` once closed)."""
        if self._ptr is None:
            raise ClosedError("this Context is closed")
        return self._ptr

    @property
    def model(self) -> Model:
        return self._model

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        """Free the context and its memory now, or with the last logits view still referenced (idempotent); the
        model is released then if it was closed meanwhile."""
        if self._ptr is None or self._quiesced:  # after the exit hook the process frees everything
            return
        with self._busy:
            ptr, self._ptr = self._ptr, None
            self._view_ptr, self._view = ffi.NULL, _NO_VIEW
            views_alive = any(r() is not None for r in self._views)
            self._views = []
            if not views_alive:
                ffi.release(ptr)  # the destructor also lets go of the model
            # else the logits views hold the context: it is freed with the last of them

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<llamacffi.Context n_ctx={self.n_ctx} n_seq_max={self.n_seq_max}{' closed' if self.closed else ''}>"

    # ---- decoding ---------------------------------------------------------------------------------------------

    def decode(self, batch: Batch) -> None:
        """Run the model on a batch. Raises :class:`KVCacheFullError` (nothing decoded), :class:`DecodeAbortedError`
        (after :meth:`abort`; Ctrl-C raises KeyboardInterrupt) or :class:`DecodeError`. Logits of the previous call
        become invalid."""
        if not isinstance(batch, Batch):
            raise TypeError(f"decode takes a llamacffi.Batch, not {type(batch).__name__}")
        n = batch._n
        ensure(n > 0, "the batch is empty")
        if n > self.n_batch:
            raise InvalidArgumentError(f"the batch holds {n} tokens but this context's n_batch is {self.n_batch}; "
                                       "use decode_tokens() to split a long prompt")
        tokens = batch._token[:n]
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.n_vocab:
            as_tokens(tokens, self.n_vocab)  # raises InvalidTokenError naming the id
        if batch.n_seq_max > self.n_seq_max and int(batch._seq[:n].max()) >= self.n_seq_max:
            raise InvalidArgumentError(f"a sequence id in the batch is >= this context's n_seq_max {self.n_seq_max}")
        ensure(int(batch._pos[:n].min()) >= 0, "positions must be >= 0")
        if self.separate_streams and batch.n_seq_max > 1:
            ensure(int(batch._n_seq[:n].max()) == 1, "a token can belong to several sequences only in a context "
                                                     "created with kv_unified=True")
        self._run(batch)

    def _claim(self) -> None:
        """Take this context for one call: a decode, state or memory call while another thread is in one raises
        instead of corrupting llama.cpp's state."""
        if not self._busy.acquire(blocking=False):
            raise LlamaError("this Context is in use by another thread; use one Context per thread")

    def _exclusive(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with this context to itself (see :meth:`_claim`)."""
        self._claim()
        try:
            return fn(*args)
        finally:
            self._busy.release()

    def _run(self, batch: Batch, token: int = 0, pos: int = 0, seq_id: int = 0) -> None:
        """Decode ``batch``; the context's own one-token batch is filled with ``token, pos, seq_id`` first, once
        claimed: a decode in another thread may be reading it until then."""
        self._claim()
        try:
            if batch is self._one:
                batch._token[0] = token
                batch._pos[0] = pos
                batch._seq[0, 0] = seq_id
                batch._logits[0] = 1
                batch._n = 1
                batch._c.n_tokens = 1
            rc = self._decode_claimed(batch)
        finally:
            self._busy.release()
        if rc != 0:
            self._decode_failed(rc)

    def _decode_claimed(self, batch: Batch) -> int:
        """llama_decode of a batch, with the context claimed; returns its code."""
        n = batch._n
        if n > self.n_ubatch and not lib.llama_get_causal_attn(self.ptr):
            raise InvalidArgumentError(f"with non-causal attention (an embedding model) llama.cpp decodes a batch in "
                                       f"one piece: {n} tokens exceed n_ubatch ({self.n_ubatch}); create the "
                                       f"Context with a larger n_ubatch")
        if batch is self._one:  # decode_token: one token, with logits
            outputs, n_out = _ONE_OUTPUT, 1
        elif self.embeddings_enabled:  # llama.cpp outputs every token of an embeddings context
            outputs, n_out = np.ones(n, dtype=np.int8), n
        else:
            outputs = batch._logits[:n].copy()
            n_out = int(np.count_nonzero(outputs)) if n > 1 else int(outputs[0])
        if n_out > self._out_rows:
            self._before_outputs_grow(n_out)
        rc: int = lib.llamacffi_decode(self.ptr, batch._c, self._abort)
        if rc != 0:
            self._outputs, self._n_outputs = self._outputs[:0], 0
            return rc
        self._out_rows = max(self._out_rows, n_out)
        self._outputs, self._n_outputs = outputs, n_out
        return 0

    def _decode_failed(self, rc: int) -> None:
        if rc == 2 and not (self._abort.abort or self._abort.halt) and \
                threading.current_thread() is threading.main_thread():
            # Ctrl-C: the Python handler may already have run inside a log callback, where cffi swallows it.
            log.take_interrupt()
            raise KeyboardInterrupt
        check_decode(rc)

    def _before_outputs_grow(self, rows: int) -> None:
        """A call is about to need more output rows than llama.cpp's buffer has: llama.cpp will free it for a
        larger one. Refuse while a logits view of the old buffer is referenced, which would then show freed memory."""
        self._view_ptr, self._view = ffi.NULL, _NO_VIEW
        self._views = [r for r in self._views if r() is not None]
        if self._views:
            raise LlamaError(
                f"this call needs {rows} output rows, more than any call before ({self._out_rows}): llama.cpp will "
                f"move its logits buffer, and {len(self._views)} logits view(s) of the old buffer are still "
                f"referenced; drop them (del) first, or keep logits_copy() of what must outlive a decode")

    def decode_token(self, token: int, pos: int, seq_id: int = 0) -> None:
        """Decode one token at ``pos`` in sequence ``seq_id`` with logits: the fast path of a generation loop."""
        if type(token) is not int:  # plain ifs: this runs for every token, and a message is built only when raised
            token = as_int("token", token)
        if not 0 <= token < self.n_vocab:
            as_tokens([token], self.n_vocab)
        if type(pos) is not int or not 0 <= pos <= INT32_MAX:
            pos = as_int("pos", pos, 0, INT32_MAX)
        if type(seq_id) is not int or not 0 <= seq_id < self.n_seq_max:
            seq_id = as_int("seq_id", seq_id, 0, self.n_seq_max - 1)
        self._run(self._one, token, pos, seq_id)

    def decode_tokens(self, tokens: Iterable[int] | npt.ArrayLike, *, start_pos: int = 0, seq_id: int = 0,
                      logits: str = "last") -> int:
        """Decode a prompt of any length in pieces of ``n_batch``; returns the next position.

        ``logits`` is "last", "none", or "all" for a prompt that fits one decode (``n_batch``). Raises before
        decoding anything when the prompt cannot fit a sequence of the context."""
        arr = as_tokens(tokens, self.n_vocab)
        ensure(len(arr) > 0, "no tokens to decode")
        seq_id = as_int("seq_id", seq_id, 0, self.n_seq_max - 1)
        start_pos = as_int("start_pos", start_pos, 0, INT32_MAX)
        check_logits(logits)
        if logits == "all" and len(arr) > self.n_batch:
            raise InvalidArgumentError(
                f"logits='all' keeps the logits of one decode: {len(arr)} tokens exceed n_batch ({self.n_batch}); "
                "decode pieces with decode(Batch) and read each one's logits, or use a larger n_batch")
        end = start_pos + len(arr)
        ensure(end <= self.n_ctx_seq,
               f"{len(arr)} tokens from position {start_pos} exceed the {self.n_ctx_seq} positions of a sequence "
               f"in this context; create the Context with a larger n_ctx")
        batch = Batch(min(len(arr), self.n_batch), n_seq_max=seq_id + 1)
        for offset, piece in chunks(arr, self.n_batch):
            last = offset + len(piece) == len(arr)
            batch.set_sequence(piece, start_pos=start_pos + offset, seq_id=seq_id,
                               logits=logits if last or logits == "all" else "none")
            self._run(batch)
        return end

    def encode(self, batch: Batch) -> None:
        """Run the encoder of an encoder-decoder model on a batch (at most ``n_ubatch`` tokens: llama.cpp encodes
        a batch in one piece)."""
        if not isinstance(batch, Batch):
            raise TypeError(f"encode takes a llamacffi.Batch, not {type(batch).__name__}")
        # a decoder's KV memory makes llama.cpp's encoder graph dereference a missing memory context
        ensure(self._model.has_encoder or self._mem == ffi.NULL, "this model has no encoder: use decode()")
        ensure(0 < batch._n <= self.n_ubatch, f"the batch must hold 1..{self.n_ubatch} tokens (n_ubatch) to encode")
        as_tokens(batch.tokens, self.n_vocab)
        self._claim()
        try:
            if batch._n > self._out_rows:  # the encoder outputs every token
                self._before_outputs_grow(batch._n)
            rc = lib.llamacffi_encode(self.ptr, batch._c, self._abort)
            if rc == 0:
                self._out_rows = max(self._out_rows, batch._n)
        finally:
            self._busy.release()
        check_decode(rc, "llama_encode")

    def abort(self) -> None:
        """Ask the decode in progress (in another thread) to stop; it raises :class:`DecodeAbortedError`."""
        self._abort.abort = 1

    def _halt(self) -> None:
        """Abort the decode in progress and every later one (at interpreter exit)."""
        self._abort.halt = 1

    # ---- outputs ----------------------------------------------------------------------------------------------

    def _output_index(self, i: int) -> int:
        if type(i) is not int:
            i = as_int("index", i)
        n_out = self._n_outputs
        if n_out == 0:
            raise LlamaError("no logits: decode a batch that requests logits first")
        if i < 0:
            if i < -n_out:
                raise InvalidArgumentError(f"output index {i} is out of range: the last decode produced {n_out} "
                                           "outputs")
        elif not (i < len(self._outputs) and self._outputs[i]):
            raise InvalidArgumentError(f"batch index {i} has no logits (request them with logits=True when adding "
                                       "the token)")
        return i

    def logits(self, i: int = -1) -> npt.NDArray[np.float32]:
        """Logits of batch token ``i`` (``-1``: the last output) as a read-only float32 view of llama.cpp's memory.

        Zero-copy: it shows what the next decode writes, and stays readable after :meth:`close`. A decode that asks
        for more outputs than any before makes llama.cpp move its buffer: it raises :class:`LlamaError` while a view
        of the old buffer is referenced, so keep :meth:`logits_copy` of what must outlive a decode."""
        ptr = lib.llama_get_logits_ith(self.ptr, self._output_index(i))
        if ptr == ffi.NULL:
            raise LlamaError(f"llama.cpp has no logits for index {i}")
        if ptr == self._view_ptr:  # the same row of the same buffer as last time (a generation loop): same view
            return self._view
        # The view keeps the context alive (through a no-op destructor holding it), so that llama.cpp's buffer
        # outlives close() and collection while the view is referenced.
        held = ffi.gc(ptr, _holding(self._ptr))
        view = np.frombuffer(ffi.buffer(held, self.n_vocab * 4), dtype=np.float32)
        view.flags.writeable = False
        self._view_ptr, self._view = ptr, view
        if len(self._views) >= 64:
            self._views = [r for r in self._views if r() is not None]
        self._views.append(weakref.ref(view))
        return view

    def logits_copy(self, i: int = -1) -> npt.NDArray[np.float32]:
        return self.logits(i).copy()

    def embeddings(self, i: int = -1) -> npt.NDArray[np.float32]:
        """Embedding of batch token ``i`` (contexts created with ``embeddings=True``); a copy."""
        ensure(self.embeddings_enabled, "create the Context with embeddings=True to read embeddings")
        ptr = lib.llama_get_embeddings_ith(self.ptr, self._output_index(i))
        if ptr == ffi.NULL:
            raise LlamaError(f"llama.cpp has no embedding for index {i}")
        return np.frombuffer(ffi.buffer(ptr, self.n_embd * 4), dtype=np.float32).copy()

    def sequence_embedding(self, seq_id: int = 0) -> npt.NDArray[np.float32]:
        """Pooled embedding of a sequence (models/contexts with a pooling type); a copy."""
        ensure(self.embeddings_enabled, "create the Context with embeddings=True to read embeddings")
        self.memory._seq(seq_id)
        ptr = lib.llama_get_embeddings_seq(self.ptr, seq_id)
        if ptr == ffi.NULL:
            raise LlamaError("no pooled embedding: this context has no pooling type")
        return np.frombuffer(ffi.buffer(ptr, self.n_embd * 4), dtype=np.float32).copy()

    # ---- threads and timings ----------------------------------------------------------------------------------

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        n_threads = as_int("n_threads", n_threads, 1, MAX_THREADS)
        nb = as_int("n_threads_batch", n_threads if n_threads_batch is None else n_threads_batch, 1, MAX_THREADS)
        ptr = self.ptr
        with self._busy:
            if self._pools[0] != ffi.NULL:  # pools of the new sizes replace the attached ones
                old = list(self._pools)
                self._pools[:] = _new_pools(n_threads, nb)
                lib.llama_attach_threadpool(ptr, self._pools[0], self._pools[1])
                lib.llamacffi_context_free(ffi.NULL, *old)
            lib.llama_set_n_threads(ptr, n_threads, nb)

    @property
    def n_threads(self) -> int:
        return int(lib.llama_n_threads(self.ptr))

    def perf(self) -> Perf:
        ptr = self.ptr
        lib.llama_synchronize(ptr)  # llama.cpp books the last decode's time when it synchronizes
        d = lib.llama_perf_context(ptr)
        return Perf(d.t_load_ms, d.t_p_eval_ms, d.t_eval_ms, d.n_p_eval, d.n_eval, d.n_reused)

    def perf_reset(self) -> None:
        lib.llama_perf_context_reset(self.ptr)

    # ---- whole-context state ----------------------------------------------------------------------------------

    def state_save(self) -> bytes:
        """The whole state (memory, outputs) as bytes."""
        ptr = self.ptr
        size = self._exclusive(lib.llama_state_get_size, ptr)
        buf = ffi.new("uint8_t[]", size)
        n = self._exclusive(lib.llama_state_get_data, ptr, buf, size)
        ensure(n > 0, "llama.cpp could not save the state", StateError)
        return bytes(ffi.buffer(buf, n))

    def state_load(self, data: bytes) -> None:
        """Restore a state from :meth:`state_save` of a context with the same model and sizes."""
        ensure(isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0, "state must be non-empty bytes",
               StateError)
        n = self._exclusive(lib.llama_state_set_data, self.ptr, ffi.from_buffer(data), len(data))
        ensure(n > 0, "llama.cpp rejected the state (another model or context size, or corrupt data)", StateError)
        self._outputs, self._n_outputs = self._outputs[:0], 0

    def seq_state_save(self, seq_id: int = 0) -> bytes:
        """The memory of one sequence as bytes."""
        ptr = self.ptr
        self.memory._seq(seq_id)
        size = self._exclusive(lib.llama_state_seq_get_size, ptr, seq_id)
        buf = ffi.new("uint8_t[]", size)
        n = self._exclusive(lib.llama_state_seq_get_data, ptr, buf, size, seq_id)
        ensure(n > 0, f"llama.cpp could not save sequence {seq_id}", StateError)
        return bytes(ffi.buffer(buf, n))

    def seq_state_load(self, data: bytes, seq_id: int = 0) -> None:
        """Load a sequence saved by :meth:`seq_state_save` into ``seq_id`` (which should be empty)."""
        self.memory._seq(seq_id)
        ensure(isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0, "state must be non-empty bytes",
               StateError)
        n = self._exclusive(lib.llama_state_seq_set_data, self.ptr, ffi.from_buffer(data), len(data), seq_id)
        ensure(n > 0, "llama.cpp rejected the sequence state (another model, or corrupt data)", StateError)

    def seq_save_file(self, path: str | os.PathLike[str], tokens: npt.ArrayLike, seq_id: int = 0) -> None:
        """Save one sequence's memory and its tokens to a file."""
        self.memory._seq(seq_id)
        arr = as_tokens(tokens, self.n_vocab)
        n = self._exclusive(lib.llama_state_seq_save_file, self.ptr, _c_path(path), seq_id,
                            ffi.from_buffer("llama_token[]", arr), len(arr))
        ensure(n > 0, f"could not write the sequence state to {os.fspath(path)}", StateError)

    def seq_load_file(self, path: str | os.PathLike[str], seq_id: int = 0) -> TokenArray:
        """Load a sequence saved by :meth:`seq_save_file` into ``seq_id``; returns its tokens."""
        self.memory._seq(seq_id)
        ensure(os.path.isfile(path), f"no state file at {os.fspath(path)}", StateError)
        out = np.empty(self.n_ctx, dtype=np.int32)
        count = ffi.new("size_t *")
        n = self._exclusive(lib.llama_state_seq_load_file, self.ptr, _c_path(path), seq_id,
                            ffi.from_buffer("llama_token[]", out), len(out), count)
        ensure(n > 0, f"llama.cpp rejected the state file {os.fspath(path)}", StateError)
        return out[:count[0]].copy()


class Memory:
    """The KV memory of a context, by sequence. Positions ``p0 < 0`` / ``p1 < 0`` mean "from 0" / "to the end"."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def _m(self) -> Any:
        self._ctx.ptr
        return self._ctx._mem

    def _call(self, fn: Any, *args: Any) -> Any:
        """A ``llama_memory_*`` call on this memory, never while another thread decodes on the context."""
        return self._ctx._exclusive(fn, self._m, *args)

    def _seq(self, seq_id: int) -> int:
        return as_int("seq_id", seq_id, 0, self._ctx.n_seq_max - 1)

    @staticmethod
    def _range(p0: int, p1: int) -> tuple[int, int]:
        return as_int("p0", p0, -INT32_MAX - 1, INT32_MAX), as_int("p1", p1, -INT32_MAX - 1, INT32_MAX)

    def clear(self, data: bool = True) -> None:
        """Forget every sequence (``data`` also zeroes the buffers)."""
        self._call(lib.llama_memory_clear, bool(data))

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions ``[p0, p1)`` of a sequence (``seq_id=-1``: every sequence). False when the memory
        cannot remove a part of a sequence (e.g. recurrent models); then nothing changed."""
        seq_id = -1 if seq_id == -1 else self._seq(seq_id)
        return bool(self._call(lib.llama_memory_seq_rm, seq_id, *self._range(p0, p1)))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Make positions ``[p0, p1)`` of ``src`` also belong to ``dst``.

        When sequences have streams of their own (``kv_unified=False``), only a whole sequence can be copied."""
        s, d = self._seq(src), self._seq(dst)
        p0, p1 = self._range(p0, p1)
        if self._ctx.separate_streams and s != d and (p0 > 0 or p1 > 0):
            raise InvalidArgumentError("copying part of a sequence needs a context created with kv_unified=True; "
                                       "copy the whole sequence (p0=-1, p1=-1)")
        self._call(lib.llama_memory_seq_cp, s, d, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        """Remove every sequence but ``seq_id``.

        llama.cpp applies this to the stream of ``seq_id`` only when sequences have streams of their own
        (``kv_unified=False``); the other sequences are removed here explicitly, as llama.h defines."""
        keep = self._seq(seq_id)
        self._call(lib.llama_memory_seq_keep, keep)
        for other in range(self._ctx.n_seq_max):
            if other != keep:
                self._call(lib.llama_memory_seq_rm, other, -1, -1)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions ``[p0, p1)`` of a sequence by ``delta`` (needs a memory that can shift)."""
        s = self._seq(seq_id)
        p0, p1 = self._range(p0, p1)
        delta = as_int("delta", delta, -INT32_MAX - 1, INT32_MAX)
        ensure(self.can_shift, "this model's memory cannot shift positions")
        self._call(lib.llama_memory_seq_add, s, p0, p1, delta)

    def seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        """Divide positions ``[p0, p1)`` of a sequence by ``d`` (integer division, ``d >= 1``)."""
        s = self._seq(seq_id)
        p0, p1 = self._range(p0, p1)
        d = as_int("d", d, 1, INT32_MAX)
        ensure(self.can_shift, "this model's memory cannot shift positions")
        self._call(lib.llama_memory_seq_div, s, p0, p1, d)

    def seq_pos_min(self, seq_id: int) -> int:
        """Smallest position of a sequence, -1 when it is empty."""
        return int(self._call(lib.llama_memory_seq_pos_min, self._seq(seq_id)))

    def seq_pos_max(self, seq_id: int) -> int:
        """Largest position of a sequence, -1 when it is empty."""
        return int(self._call(lib.llama_memory_seq_pos_max, self._seq(seq_id)))

    @property
    def can_shift(self) -> bool:
        return bool(lib.llama_memory_can_shift(self._m))
