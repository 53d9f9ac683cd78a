"""Text embeddings: many texts packed into each ``llama_decode``, one sequence each, pooled by llama.cpp.

An :class:`Embedder` holds an embedding context (``embeddings=True``, a pooling type, one unified KV memory) and reuses
it across calls; :func:`embed` (and :meth:`Model.embed`) make one for a single call. A pooled embedding needs a text's
tokens in one decode (llama.cpp pools each micro-batch on its own), so a context's batch holds its longest text.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np
import numpy.typing as npt

from . import log
from .batch import MAX_SEQ, Batch
from .context import Context
from .errors import ClosedError, InvalidArgumentError, LlamaError
from .model import Model, _read_string
from .raw import CData, ffi, lib
from .validate import as_int
from .vocab import TokenArray, as_tokens

DEFAULT_BATCH_TOKENS = 512
Vectors = npt.NDArray[np.float32]
Embeddings = Union[Vectors, "list[Vectors]"]  # (n, dim), or one (tokens, dim) array per text with Pooling.NONE


class Pooling(enum.IntEnum):
    """How llama.cpp turns a sequence's token vectors into one: values of ``enum llama_pooling_type``."""

    NONE = lib.LLAMA_POOLING_TYPE_NONE  # no pooling: one vector per token
    MEAN = lib.LLAMA_POOLING_TYPE_MEAN
    CLS = lib.LLAMA_POOLING_TYPE_CLS  # the first token's vector
    LAST = lib.LLAMA_POOLING_TYPE_LAST  # the last token's vector
    RANK = lib.LLAMA_POOLING_TYPE_RANK  # a reranker's classification head: n_cls_out scores per text


class TextError(InvalidArgumentError):
    """One text of a list cannot be embedded: ``index`` says which, ``reason`` why (the message is
    ``texts[index] reason``), so a caller that took the texts from elsewhere can name them its own way."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"texts[{index}] {reason}")
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:  # its fields survive a pickle (a worker process's pipe)
        return (_unpickled, (type(self), self.args, self.__dict__))


def _unpickled(cls: type[TextError], args: tuple[object, ...], fields: dict[str, object]) -> TextError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class TextTooLongError(TextError):
    """A text has more tokens than a context holds; ``index``, ``n_tokens`` and ``limit`` say which and by how much."""

    def __init__(self, index: int, n_tokens: int, limit: int, hint: str) -> None:
        super().__init__(index, f"is {n_tokens} tokens, over the {limit} tokens a text may have here; {hint}")
        self.n_tokens = n_tokens
        self.limit = limit


def as_pooling(value: Pooling | str | int | None) -> Pooling | None:
    """A :class:`Pooling` from a member, its name (``"mean"``) or its value; None stays None (the model's own)."""
    if value is None or isinstance(value, Pooling):
        return value
    if isinstance(value, str):
        try:
            return Pooling[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return Pooling(value)
        except ValueError:
            pass
    names = ", ".join(p.name.lower() for p in Pooling)
    raise InvalidArgumentError(f"pooling must be None or one of {names}, got {value!r}")


def declared_pooling(model: Model) -> Pooling | None:
    """The pooling type the model's GGUF file names (``<arch>.pooling_type``), None where it names none (a
    generative model)."""
    ptr = model.ptr
    arch = _meta(ptr, "general.architecture")
    value = _meta(ptr, f"{arch}.pooling_type") if arch else None
    try:
        return Pooling(int(value)) if value is not None else None
    except ValueError:  # a value llama.cpp does not know
        return None


def _meta(ptr: CData, key: str) -> str | None:
    k = key.encode()
    if lib.llama_model_meta_val_str(ptr, k, ffi.NULL, 0) < 0:
        return None
    return _read_string(lambda buf, n: lib.llama_model_meta_val_str(ptr, k, buf, n))


def resolve_pooling(model: Model, pooling: Pooling | str | int | None) -> Pooling:
    """The pooling an embedding of ``model`` uses: the one asked for, else the model's own, else MEAN (for a
    generative model). RANK needs a model that declares it (a reranker with a classification head)."""
    chosen = as_pooling(pooling)
    declared = declared_pooling(model)
    if chosen is None:
        return declared if declared is not None else Pooling.MEAN
    if chosen == Pooling.RANK and declared != Pooling.RANK:
        raise InvalidArgumentError(
            "pooling 'rank' needs a reranking model (one whose GGUF file declares rank "
            "pooling and holds a classification head); use mean, cls or last"
        )
    return chosen


def check_texts(texts: object) -> list[str]:
    """``texts`` as a list of non-empty str; raises naming the first bad item."""
    if isinstance(texts, (str, bytes)):
        raise InvalidArgumentError("texts must be a list of str, not a single text: wrap it in a list")
    if not isinstance(texts, (list, tuple)):
        raise InvalidArgumentError(f"texts must be a list of str, not {type(texts).__name__}")
    if not texts:
        raise InvalidArgumentError("texts is empty: give at least one text to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, not {type(text).__name__}")
        if not text:
            raise TextError(i, "is an empty string, which has nothing to embed")
    return list(texts)


def tokenize(model: Model, texts: Sequence[str]) -> list[TokenArray]:
    """Tokens of each text as llama.cpp's embedding program makes them (special tokens added and parsed)."""
    vocab = model.vocab
    out = []
    for i, text in enumerate(check_texts(texts)):
        tokens = vocab.tokenize(text, add_special=True, parse_special=True)
        if len(tokens) == 0:
            raise TextError(i, "gives no tokens, which has nothing to embed")
        out.append(tokens)
    return out


def fit(model: Model, tokens: list[TokenArray], limit: int, truncate: bool, hint: str) -> list[TokenArray]:
    """``tokens``, each at most ``limit`` long: cut when ``truncate`` (keeping the end-of-text token a model adds),
    else :class:`TextTooLongError` for the first one over."""
    vocab = lib.llama_model_get_vocab(model.ptr)
    keep_end = bool(lib.llama_vocab_get_add_eos(vocab) or lib.llama_vocab_get_add_sep(vocab))
    out = []
    for i, t in enumerate(tokens):
        if len(t) > limit:
            if not truncate:
                raise TextTooLongError(i, len(t), limit, hint)
            t = np.concatenate([t[: limit - 1], t[-1:]]) if keep_end and limit > 1 else t[:limit]
        out.append(t)
    return out


def normalized(vectors: Vectors) -> Vectors:
    """Rows scaled to unit Euclidean length, in place (a zero row stays zero, as in llama.cpp)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)).astype(np.float32)
    np.divide(vectors, norms[:, None], out=vectors, where=norms[:, None] > 0)
    return vectors


def plan(lengths: Sequence[int], batch_tokens: int, max_seqs: int) -> list[range]:
    """Consecutive runs of texts, each run one decode: at most ``batch_tokens`` tokens (a longer text alone) and
    ``max_seqs`` texts."""
    runs = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (used + n > batch_tokens or i - start >= max_seqs):
            runs.append(range(start, i))
            start, used = i, 0
        used += n
    if start < len(lengths):
        runs.append(range(start, len(lengths)))
    return runs


# What llama.cpp warns of when an embedding context is made as intended: a pooling type the file does not name (a
# generative model), and a full-size sliding-window cache (packed sequences need it).
_EXPECTED = ("model default pooling_type is", "using full-size SWA cache")
_setup = threading.local()


class _ExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_setup, "active", False) and any(e in record.getMessage() for e in _EXPECTED))


log.logger.addFilter(_ExpectedWarnings())


@contextlib.contextmanager
def _quiet_setup() -> Iterator[None]:
    _setup.active = True
    try:
        yield
    finally:
        _setup.active = False


class Embedder:
    """An embedding context over a model, reused across calls; thread-safe (one call at a time).

    ``pooling``: see :func:`resolve_pooling`. ``batch_tokens``: tokens packed into one decode. ``max_tokens``: the
    longest text (default ``batch_tokens``, at most the model's training context). ``flash_attn``: None lets
    llama.cpp choose, as its embedding program does (a vector then depends slightly on the texts decoded with it:
    kernels differ with the batch size; False makes it nearly independent). Close with :meth:`close` or ``with``; it
    keeps the model alive until then."""

    def __init__(
        self,
        model: Model,
        *,
        pooling: Pooling | str | int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_tokens: int | None = None,
        n_threads: int | None = None,
        flash_attn: bool | None = None,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a llamacffi.Model, not {type(model).__name__}")
        self.model = model
        self.pooling = resolve_pooling(model, pooling)
        self.batch_tokens = as_int("batch_tokens", batch_tokens, 1, 1 << 20)
        limit = model.n_ctx_train
        self.max_tokens = as_int("max_tokens", self.batch_tokens if max_tokens is None else max_tokens, 1, None)
        if self.max_tokens > limit:
            raise InvalidArgumentError(
                f"max_tokens {self.max_tokens} exceeds the {limit} tokens {model.path.name} was trained for"
            )
        has_encoder = bool(lib.llama_model_has_encoder(model.ptr))
        if has_encoder and lib.llama_model_has_decoder(model.ptr):
            raise InvalidArgumentError("embeddings of an encoder-decoder model are not supported (llama.cpp has none)")
        self._encode = has_encoder  # an encoder-only model runs llama_encode
        self.dim = int(
            lib.llama_model_n_cls_out(model.ptr)
            if self.pooling == Pooling.RANK
            else lib.llama_model_n_embd_out(model.ptr)
        )
        n = max(self.batch_tokens, self.max_tokens)
        self.max_seqs = min(MAX_SEQ, n)
        # llama.cpp sizes its worst-case graph for n_seq_max sequences of equal length, rounding n_ubatch up to a
        # multiple of it, which mismatches the pooling matrices unless the batch already is one
        n = -(-n // self.max_seqs) * self.max_seqs
        # One piece per decode (n_ubatch = n_batch) and one unified memory: llama.cpp pools each micro-batch apart,
        # and splits sequences of separate streams into equal-length pieces.
        with _quiet_setup():
            self._ctx = Context(
                model,
                n_ctx=n,
                n_batch=n,
                n_ubatch=n,
                n_seq_max=self.max_seqs,
                n_threads=n_threads,
                embeddings=True,
                kv_unified=True,
                pooling_type=int(self.pooling),
                flash_attn=flash_attn,
            )
        self._batch = Batch(n, n_seq_max=self.max_seqs)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Free the context (idempotent)."""
        with self._lock:
            self._ctx.close()

    @property
    def closed(self) -> bool:
        return self._ctx.closed

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<llamacffi.Embedder {self.model.path.name!r} pooling={self.pooling.name.lower()} dim={self.dim}"
            f"{' closed' if self.closed else ''}>"
        )

    def embed(self, texts: Sequence[str], *, normalize: bool = True, truncate: bool = False) -> Embeddings:
        """Embeddings of ``texts``, in order: float32 of shape ``(len(texts), dim)``; with :attr:`Pooling.NONE`
        a list with one ``(tokens, dim)`` array per text. ``normalize`` scales each vector to unit length (not
        RANK scores). A text over :attr:`max_tokens` raises :class:`TextTooLongError`, or is cut with
        ``truncate``."""
        tokens = fit(
            self.model,
            tokenize(self.model, texts),
            self.max_tokens,
            truncate,
            "shorten it, pass truncate=True, or use a larger max_tokens",
        )
        return self.embed_tokens(tokens, normalize=normalize)

    def embed_tokens(self, tokens: Sequence[npt.ArrayLike], *, normalize: bool = True) -> Embeddings:
        """Like :meth:`embed`, for token sequences (each 1..:attr:`max_tokens` long)."""
        if not isinstance(normalize, bool):
            raise InvalidArgumentError(f"normalize must be a bool, got {normalize!r}")
        if self.closed:
            raise ClosedError("this Embedder is closed")
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise InvalidArgumentError("tokens must be a non-empty list of token sequences")
        seqs = [as_tokens(t, self._ctx.n_vocab) for t in tokens]
        for i, t in enumerate(seqs):
            if len(t) == 0:
                raise InvalidArgumentError(f"token sequence {i} is empty")
            if len(t) > self.max_tokens:
                raise TextTooLongError(i, len(t), self.max_tokens, "use a larger max_tokens")
        with self._lock:
            if self.pooling == Pooling.NONE:
                rows = self._run(seqs)
                return [normalized(r) if normalize else r for r in rows]
            out = np.vstack(self._run(seqs))
        return normalized(out) if normalize and self.pooling != Pooling.RANK else out

    def _run(self, seqs: list[TokenArray]) -> list[Vectors]:
        """One array per sequence: its pooled vector as a (1, dim) row, or its token vectors without pooling."""
        out: list[Vectors] = []
        ctx, batch = self._ctx, self._batch
        for run in plan([len(t) for t in seqs], self.batch_tokens, self.max_seqs):
            ctx.memory.clear(False)  # each text starts at position 0 of an empty memory
            batch.clear()
            for s, i in enumerate(run):
                batch.add_sequence(seqs[i], 0, s)
            batch.logits_mask[:] = 1  # an embeddings context outputs every token: say so, or llama.cpp warns
            if self._encode:
                ctx.encode(batch)
            else:
                ctx.decode(batch)
            out.extend(self._read(len(run), batch.n_tokens, [len(seqs[i]) for i in run]))
        ctx.memory.clear(False)
        return out

    def _read(self, n_seqs: int, n_tokens: int, lengths: list[int]) -> list[Vectors]:
        ptr, dim = self._ctx.ptr, self.dim
        if self.pooling == Pooling.NONE:
            data = lib.llama_get_embeddings(ptr)
            if data == ffi.NULL:
                raise LlamaError("llama.cpp returned no token embeddings")
            block = np.frombuffer(ffi.buffer(data, n_tokens * dim * 4), dtype=np.float32).reshape(n_tokens, dim)
            return np.split(block.copy(), np.cumsum(lengths)[:-1])
        rows = np.empty((n_seqs, dim), dtype=np.float32)
        for s in range(n_seqs):
            data = lib.llama_get_embeddings_seq(ptr, s)
            if data == ffi.NULL:
                raise LlamaError(f"llama.cpp returned no pooled embedding for sequence {s}")
            rows[s] = np.frombuffer(ffi.buffer(data, dim * 4), dtype=np.float32)
        return list(rows[:, None, :])


def embed(
    model: Model,
    texts: Sequence[str],
    *,
    pooling: Pooling | str | int | None = None,
    normalize: bool = True,
    batch_tokens: int | None = None,
    truncate: bool = False,
    n_threads: int | None = None,
) -> Embeddings:
    """Embeddings of ``texts`` with a context made for this call (see :meth:`Embedder.embed`; an
    :class:`Embedder` reuses one). A text may have up to the model's training context in tokens."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a llamacffi.Model, not {type(model).__name__}")
    batch_tokens = DEFAULT_BATCH_TOKENS if batch_tokens is None else as_int("batch_tokens", batch_tokens, 1, 1 << 20)
    resolve_pooling(model, pooling)  # bad pooling before any tokenizing
    limit = model.n_ctx_train
    tokens = fit(
        model,
        tokenize(model, texts),
        limit,
        truncate,
        f"the model was trained for {limit}; shorten it or pass truncate=True",
    )
    # a context no larger than this call needs: its batch, or its longest text
    with Embedder(
        model,
        pooling=pooling,
        batch_tokens=min(batch_tokens, sum(map(len, tokens))),
        max_tokens=max(map(len, tokens)),
        n_threads=n_threads,
    ) as embedder:
        return embedder.embed_tokens(tokens, normalize=normalize)
