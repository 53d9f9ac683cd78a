"""Context: decoding, logits and embeddings over a model (its memory, state, threads and views live beside it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from .. import log, ownership
from ..batch import Batch, check_logits, chunks
from ..errors import (
    ClosedError,
    ContextError,
    InvalidArgumentError,
    KVCacheFullError,
    LlamaError,
    check_decode,
    ensure,
)
from ..limits import INT32_MAX, MAX_CTX, MAX_SEQ, MAX_THREADS
from ..model import Model
from ..raw import CData, ffi, lib
from ..validate import as_int
from ..vocab import as_tokens
from .memory import Memory
from .state import StateIO
from .threads import Perf, context_free, default_threads, free_retired_pools, halt_at_exit, new_pools
from .views import OutputViews

_ONE_OUTPUT = np.ones(1, dtype=np.int8)  # the outputs of decode_token: its one token has logits
_ONE_OUTPUT.flags.writeable = False


def _new_context(model: CData, params: CData) -> CData:
    """``llama_init_from_model``; ContextError when llama.cpp cannot make the context, InvalidArgumentError when
    its pooled embeddings would be wrong: llama.cpp splits the sequences of separate streams into pieces of equal
    length and pools each piece on its own."""
    ptr = lib.llama_init_from_model(model, params)
    if ptr == ffi.NULL:
        raise ContextError(
            f"llama.cpp could not create a context with n_ctx={params.n_ctx}, n_batch={params.n_batch}, "
            f"n_seq_max={params.n_seq_max}: most likely not enough memory; try a smaller n_ctx"
        )
    pooled = params.embeddings and lib.llama_pooling_type(ptr) != lib.LLAMA_POOLING_TYPE_NONE
    if pooled and params.n_seq_max > 1 and not params.kv_unified:
        lib.llama_free(ptr)
        raise InvalidArgumentError(
            "pooled embeddings of several sequences need kv_unified=True (with a stream per sequence llama.cpp "
            "pools pieces of them apart); or use Model.embed() or an Embedder"
        )
    return ptr


class Context(StateIO):
    """An inference context over a :class:`Model`: its own KV memory, threads and outputs.

    Keeps its model alive until closed. Not for concurrent use: a call while another thread is decoding raises.

    ``n_ctx`` is the memory's positions in all (default: the model's training context). Without ``kv_unified`` each
    of the ``n_seq_max`` sequences gets its own share, which llama.cpp rounds up to a multiple of 256: the memory
    can come out larger than asked (``Context(m, n_ctx=256, n_seq_max=256).n_ctx`` is 65536), so read :attr:`n_ctx`.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_seq_max: int = 1,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        embeddings: bool = False,
        flash_attn: bool | None = None,
        kv_unified: bool = False,
        offload_kqv: bool = True,
        no_perf: bool = False,
        pooling_type: int | None = None,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a llamacffi.Model, not {type(model).__name__}")
        n_ctx = as_int("n_ctx", model.n_ctx_train if n_ctx is None else n_ctx, 1, MAX_CTX)
        n_batch = as_int("n_batch", n_batch, 1, MAX_CTX)
        n_seq_max = as_int("n_seq_max", n_seq_max, 1, MAX_SEQ)
        if model.vocab_only:
            raise InvalidArgumentError("this Model was loaded with vocab_only=True: it has no weights to run")
        if min(n_ctx, n_batch) < n_seq_max:  # llama.cpp reserves an output row per sequence within n_batch
            raise InvalidArgumentError(
                f"n_ctx ({n_ctx}) and n_batch ({n_batch}) must be at least n_seq_max ({n_seq_max})"
            )
        n_ubatch = as_int("n_ubatch", min(n_batch, 512) if n_ubatch is None else n_ubatch, 1, n_batch)
        threads = as_int("n_threads", default_threads() if n_threads is None else n_threads, 1, MAX_THREADS)
        threads_batch = as_int(
            "n_threads_batch", threads if n_threads_batch is None else n_threads_batch, 1, MAX_THREADS
        )
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max
        params.n_threads = threads
        params.n_threads_batch = threads_batch
        params.embeddings = bool(embeddings)
        if pooling_type is not None:  # a llama_pooling_type (see llamacffi.embedding.Pooling); None: the model's
            params.pooling_type = as_int(
                "pooling_type", pooling_type, lib.LLAMA_POOLING_TYPE_NONE, lib.LLAMA_POOLING_TYPE_RANK
            )
        params.offload_kqv = bool(offload_kqv)
        params.kv_unified = bool(kv_unified)
        params.no_perf = bool(no_perf)
        if flash_attn is not None:
            params.flash_attn_type = (
                lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        lease = model.owner.lease()
        try:
            ptr = _new_context(lease.ptr, params)
        except BaseException:
            lease.release()
            raise
        try:
            pools = new_pools(threads, threads_batch)
        except BaseException:
            lib.llama_free(ptr)
            lease.release()
            raise
        if pools[0] != ffi.NULL:
            lib.llama_attach_threadpool(ptr, pools[0], pools[1])
        self._model = model
        self._pools = pools
        # Pools that set_threads replaced: ggml's CPU backend keeps the last pool it ran on and pauses it when it next
        # runs on another, so a replaced pool lives until a decode has run on the new ones (or the context is freed).
        self._retired: list[CData] = []
        self._ptr = ffi.gc(ptr, ownership.destructor(context_free(pools, self._retired), lease))
        self._mem = lib.llama_get_memory(ptr)
        self._abort = ffi.new("llamacffi_abort_state *")
        lib.llamacffi_abort_attach(ptr, self._abort)
        self._busy = threading.Lock()
        self._quiesced = False
        halt_at_exit(self)
        self.n_vocab = model.vocab.n_tokens
        self.n_embd = model.n_embd
        self.n_embd_out = int(lib.llama_model_n_embd_out(model.ptr))  # the size of llama.cpp's embeddings
        self.pooling_type = int(lib.llama_pooling_type(ptr))
        # A pooled embedding: a reranker's n_cls_out scores, or one vector.
        rank = self.pooling_type == lib.LLAMA_POOLING_TYPE_RANK
        self._pooled_size = int(lib.llama_model_n_cls_out(model.ptr)) if rank else self.n_embd_out
        self.n_ctx = int(lib.llama_n_ctx(ptr))
        self.n_batch = int(lib.llama_n_batch(ptr))
        self.n_ubatch = int(lib.llama_n_ubatch(ptr))
        self.n_seq_max = int(lib.llama_n_seq_max(ptr))
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ptr))  # the positions one sequence may use
        self.embeddings_enabled = bool(embeddings)
        self.pooled = self.embeddings_enabled and self.pooling_type != lib.LLAMA_POOLING_TYPE_NONE
        # Without a unified memory each sequence has a stream of its own, which llama.cpp cannot share by position.
        self.separate_streams = not kv_unified and self.n_seq_max > 1
        self._outputs: npt.NDArray[np.int8] = np.zeros(0, dtype=np.int8)  # per token of the last batch: logits?
        self._n_outputs = 0
        self._views = OutputViews(self.n_seq_max)
        self._one = Batch(1, n_seq_max=1)
        self.memory = Memory(self)

    # ---- lifetime ---------------------------------------------------------------------------------------------

    @property
    def ptr(self) -> CData:
        """The ``struct llama_context *`` (raises :class:`ClosedError` once closed)."""
        if self._ptr is None:
            raise ClosedError("this Context is closed")
        return self._ptr

    @property
    def memory_ptr(self) -> CData:
        """The context's ``llama_memory_t`` (raises :class:`ClosedError` once closed)."""
        self.ptr
        return self._mem

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
            if not self._views.close():
                ffi.release(ptr)  # the destructor also lets go of the model
            # else the logits views hold the context: it is freed with the last of them

    def __enter__(self) -> Context:
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
        n = len(batch)
        if n > self.n_batch:
            raise InvalidArgumentError(
                f"the batch holds {n} tokens but this context's n_batch is {self.n_batch}; "
                "use decode_tokens() to split a long prompt"
            )
        batch.check_for(self.n_vocab, self.n_seq_max, self.separate_streams)
        self._decode_batch(batch)

    def _claim(self) -> None:
        """Take this context for one call: a decode, state or memory call while another thread is in one raises
        instead of corrupting llama.cpp's state."""
        if not self._busy.acquire(blocking=False):
            raise LlamaError("this Context is in use by another thread; use one Context per thread")

    def _exclusive(self, fn: Callable[..., CData], *args: object) -> CData:
        """``fn(*args)`` with this context to itself (see :meth:`_claim`)."""
        self._claim()
        try:
            return fn(*args)
        finally:
            self._busy.release()

    def _decode_batch(self, batch: Batch, token: int = 0, pos: int = 0, seq_id: int = 0) -> None:
        """Decode ``batch``; the context's own one-token batch is filled with ``token, pos, seq_id`` first, once
        claimed: a decode in another thread may be reading it until then."""
        self._claim()
        try:
            if batch is self._one:
                batch.set_one(token, pos, seq_id)
            rc = self._decode_claimed(batch)
        finally:
            self._busy.release()
        if rc != 0:
            self._decode_failed(rc)

    def _decode_claimed(self, batch: Batch) -> int:
        """llama_decode of a batch, with the context claimed; returns its code."""
        n = len(batch)
        if n > self.n_ubatch and (self.pooled or not lib.llama_get_causal_attn(self.ptr)):
            raise self._one_piece_error(n)
        if batch is self._one:  # decode_token: one token, with logits
            outputs, n_out = _ONE_OUTPUT, 1
        elif self.embeddings_enabled:  # llama.cpp outputs every token of an embeddings context
            outputs, n_out = np.ones(n, dtype=np.int8), n
        else:
            outputs = batch.logits_mask.copy()
            n_out = int(np.count_nonzero(outputs)) if n > 1 else int(outputs[0])
        if n_out > self._views.rows:
            self._views.before_grow(n_out)
        rc: int = lib.llamacffi_decode(self.ptr, batch.c_batch, self._abort)
        if rc != 0:
            self._forget_outputs()
            return rc
        if self._retired:
            free_retired_pools(self._retired)
        self._views.rows = max(self._views.rows, n_out)
        self._outputs, self._n_outputs = outputs, n_out
        return 0

    def _one_piece_error(self, n: int) -> InvalidArgumentError:
        """Why ``n`` tokens past n_ubatch are refused: llama.cpp would split them into micro-batches."""
        if self.pooled:
            return InvalidArgumentError(
                f"llama.cpp pools each micro-batch on its own, so a pooled embedding needs its sequence in one: "
                f"{n} tokens exceed n_ubatch ({self.n_ubatch}); create the Context with a larger n_ubatch, or use "
                "Model.embed() or an Embedder, which size their context for the texts"
            )
        return InvalidArgumentError(
            f"with non-causal attention (an embedding model) llama.cpp decodes a batch in one piece: {n} tokens "
            f"exceed n_ubatch ({self.n_ubatch}); create the Context with a larger n_ubatch"
        )

    def _decode_failed(self, rc: int) -> None:
        if (
            rc == 2
            and not lib.llamacffi_abort_asked(self._abort)
            and threading.current_thread() is threading.main_thread()
        ):
            # Ctrl-C: the Python handler may already have run inside a log callback, where cffi swallows it.
            log.take_interrupt()
            raise KeyboardInterrupt
        check_decode(rc)

    def _forget_outputs(self) -> None:
        self._outputs, self._n_outputs = self._outputs[:0], 0

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
        self._decode_batch(self._one, token, pos, seq_id)

    def decode_tokens(
        self, tokens: Iterable[int] | npt.ArrayLike, *, start_pos: int = 0, seq_id: int = 0, logits: str = "last"
    ) -> int:
        """Decode a prompt of any length in pieces of ``n_batch``; returns the next position.

        ``logits`` is "last", "none", or "all" for a prompt that fits one decode (``n_batch``). Raises before
        decoding anything when the prompt cannot fit a sequence of the context; a :class:`KVCacheFullError` from a
        later piece removes what the earlier ones added, so it too leaves the context unchanged."""
        arr = as_tokens(tokens, self.n_vocab)
        ensure(len(arr) > 0, "no tokens to decode")
        seq_id = as_int("seq_id", seq_id, 0, self.n_seq_max - 1)
        start_pos = as_int("start_pos", start_pos, 0, INT32_MAX)
        check_logits(logits)
        if self.pooled and len(arr) > self.n_ubatch:  # a sequence in several decodes: each would be pooled apart
            raise self._one_piece_error(len(arr))
        if logits == "all" and len(arr) > self.n_batch:
            raise InvalidArgumentError(
                f"logits='all' keeps the logits of one decode: {len(arr)} tokens exceed n_batch ({self.n_batch}); "
                "decode pieces with decode(Batch) and read each one's logits, or use a larger n_batch"
            )
        end = start_pos + len(arr)
        ensure(
            end <= self.n_ctx_seq,
            f"{len(arr)} tokens from position {start_pos} exceed the {self.n_ctx_seq} positions of a sequence "
            f"in this context; create the Context with a larger n_ctx",
        )
        batch = Batch(min(len(arr), self.n_batch), n_seq_max=seq_id + 1)
        for offset, piece in chunks(arr, self.n_batch):
            last = offset + len(piece) == len(arr)
            batch.set_sequence(
                piece, start_pos=start_pos + offset, seq_id=seq_id, logits=logits if last or logits == "all" else "none"
            )
            try:
                self._decode_batch(batch)
            except KVCacheFullError as exc:
                if offset:
                    self._undo_pieces(exc, seq_id, start_pos, offset)
                raise
        return end

    def _undo_pieces(self, exc: KVCacheFullError, seq_id: int, start_pos: int, done: int) -> None:
        """After a later piece of :meth:`decode_tokens` found no memory slot: remove the ``done`` tokens its earlier
        pieces added, so that the context is unchanged as the error says (a sequence's positions are consecutive,
        so those are all it holds from ``start_pos`` on); else raise saying what stayed."""
        if not self.memory.seq_rm(seq_id, start_pos, -1):
            raise KVCacheFullError(
                f"llama_decode: no memory slot for the prompt's tokens from {done} on (code 1); its first {done} stay "
                f"decoded in sequence {seq_id} (this memory cannot remove part of a sequence). Free sequences with "
                "memory.clear() or memory.seq_rm(), or create the context with a larger n_ctx.",
                exc.code,
            ) from exc

    def encode(self, batch: Batch) -> None:
        """Run the encoder of an encoder-decoder model on a batch (at most ``n_ubatch`` tokens: llama.cpp encodes
        a batch in one piece)."""
        if not isinstance(batch, Batch):
            raise TypeError(f"encode takes a llamacffi.Batch, not {type(batch).__name__}")
        self.ptr  # a closed context raises ClosedError before the checks below blame the model or the batch
        # a decoder's KV memory makes llama.cpp's encoder graph dereference a missing memory context
        ensure(self._model.has_encoder or self._mem == ffi.NULL, "this model has no encoder: use decode()")
        n = len(batch)
        ensure(0 < n <= self.n_ubatch, f"the batch must hold 1..{self.n_ubatch} tokens (n_ubatch) to encode")
        as_tokens(batch.tokens, self.n_vocab)
        self._claim()
        try:
            if n > self._views.rows:  # the encoder outputs every token
                self._views.before_grow(n)
            rc = lib.llamacffi_encode(self.ptr, batch.c_batch, self._abort)
            if rc == 0:
                self._views.rows = max(self._views.rows, n)
                if self._retired:
                    free_retired_pools(self._retired)
        finally:
            self._busy.release()
        check_decode(rc, "llama_encode")

    def abort(self) -> None:
        """Ask the decode in progress (in another thread) to stop; it raises :class:`DecodeAbortedError`."""
        lib.llamacffi_abort_set(self._abort, 0)

    def _halt(self) -> None:
        """Abort the decode in progress and every later one (at interpreter exit)."""
        lib.llamacffi_abort_set(self._abort, 1)

    # ---- outputs ----------------------------------------------------------------------------------------------

    def _output_index(self, i: int) -> int:
        if type(i) is not int:
            i = as_int("index", i)
        n_out = self._n_outputs
        if n_out == 0:
            raise LlamaError("no logits: decode a batch that requests logits first")
        if i < 0:
            if i < -n_out:
                raise InvalidArgumentError(
                    f"output index {i} is out of range: the last decode produced {n_out} outputs"
                )
        elif not (i < len(self._outputs) and self._outputs[i]):
            raise InvalidArgumentError(
                f"batch index {i} has no logits (request them with logits=True when adding the token)"
            )
        return i

    def logits(self, i: int = -1) -> npt.NDArray[np.float32]:
        """Logits of batch token ``i`` (``-1``: the last output) as a read-only float32 view of llama.cpp's memory.

        Zero-copy: it shows what the next decode writes, and stays readable after :meth:`close`. A decode that asks
        for more outputs than any before makes llama.cpp move its buffer: it raises :class:`LlamaError` while a view
        of the old buffer is referenced, so keep :meth:`logits_copy` of what must outlive a decode."""
        self._claim()
        try:
            ptr = lib.llama_get_logits_ith(self.ptr, self._output_index(i))
            if ptr == ffi.NULL:
                raise LlamaError(f"llama.cpp has no logits for index {i}")
            return self._views.view(ptr, self.n_vocab, self._ptr)
        finally:
            self._busy.release()

    def logits_copy(self, i: int = -1) -> npt.NDArray[np.float32]:
        return self.logits(i).copy()

    def embeddings(self, i: int = -1) -> npt.NDArray[np.float32]:
        """Embedding of batch token ``i`` (contexts created with ``embeddings=True`` and no pooling); a copy of
        ``n_embd_out`` floats."""
        self.ptr
        ensure(self.embeddings_enabled, "create the Context with embeddings=True to read embeddings")
        ensure(
            not self.pooled,
            f"this context pools its embeddings (pooling_type {self.pooling_type}) and keeps none per token: read "
            "sequence_embedding(seq_id), or create the Context with pooling_type=0 (none) for one vector per token",
        )
        return self._read_embedding(
            lambda ptr: lib.llama_get_embeddings_ith(ptr, self._output_index(i)),
            self.n_embd_out,
            f"llama.cpp has no embedding for index {i}",
        )

    def sequence_embedding(self, seq_id: int = 0) -> npt.NDArray[np.float32]:
        """Pooled embedding of a sequence from the tokens of the last decode (contexts created with
        ``embeddings=True`` and a pooling type); a copy of ``n_embd_out`` floats, with rank pooling of the model's
        ``n_cls_out`` scores."""
        self.ptr
        ensure(self.embeddings_enabled, "create the Context with embeddings=True to read embeddings")
        seq = self.memory.check_seq(seq_id)
        ensure(self.pooled, "no pooled embedding: this context has no pooling type; read embeddings(i) per token")
        return self._read_embedding(
            lambda ptr: lib.llama_get_embeddings_seq(ptr, seq),
            self._pooled_size,
            f"llama.cpp has no pooled embedding for sequence {seq}: it was not in the last decode",
        )

    def _read_embedding(self, get: Callable[[CData], CData], size: int, missing: str) -> npt.NDArray[np.float32]:
        """A copy of the ``size`` floats at what ``get`` returns for the context, with the context claimed."""
        self._claim()
        try:
            ptr = get(self.ptr)
            if ptr == ffi.NULL:
                raise LlamaError(missing)
            return np.frombuffer(ffi.buffer(ptr, size * 4), dtype=np.float32).copy()
        finally:
            self._busy.release()

    # ---- threads and timings ----------------------------------------------------------------------------------

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None) -> None:
        """Threads for generation and for prompt batches (default: ``n_threads``). Unlike the calls that raise while
        another thread decodes, this waits for that decode: its thread pools cannot change under it."""
        n_threads = as_int("n_threads", n_threads, 1, MAX_THREADS)
        nb = as_int("n_threads_batch", n_threads if n_threads_batch is None else n_threads_batch, 1, MAX_THREADS)
        ptr = self.ptr
        with self._busy:
            if self._pools[0] != ffi.NULL:  # pools of the new sizes replace the attached ones
                old = list(self._pools)
                self._pools[:] = new_pools(n_threads, nb)
                lib.llama_attach_threadpool(ptr, self._pools[0], self._pools[1])
                self._retired.extend(p for i, p in enumerate(old) if p not in old[:i])
            lib.llama_set_n_threads(ptr, n_threads, nb)

    @property
    def n_threads(self) -> int:
        return int(lib.llama_n_threads(self.ptr))

    def perf(self) -> Perf:
        """Timings of the decodes since the context was made or :meth:`perf_reset`."""
        self._claim()
        try:
            ptr = self.ptr
            lib.llama_synchronize(ptr)  # llama.cpp books the last decode's time when it synchronizes
            d = lib.llama_perf_context(ptr)
        finally:
            self._busy.release()
        return Perf(d.t_load_ms, d.t_p_eval_ms, d.t_eval_ms, d.n_p_eval, d.n_eval, d.n_reused)

    def perf_reset(self) -> None:
        self._exclusive(lib.llama_perf_context_reset, self.ptr)
