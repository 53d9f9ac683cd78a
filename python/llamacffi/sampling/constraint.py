"""A GBNF grammar over a vocabulary, for either sampler: which tokens may come next, fed every token taken.

The grammar is llama.cpp's grammar engine behind a sampler of llamacffi's own (``build_tools/guards.cpp``), which
bounds its parse stacks (:data:`~llamacffi.limits.GRAMMAR_MAX_STACKS`); it keeps the vocabulary's pointer, so it
holds a lease on the model (:mod:`llamacffi.ownership`) until it is freed.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from .. import limits, ownership
from ..errors import ClosedError, GrammarError, InvalidArgumentError, LlamaError
from ..ownership import Owner
from ..raw import CData, ffi, lib
from ..validate import as_int
from .grammar import check_grammar_shape
from .params import FloatArray, as_logits, bad_token

# How many of the most likely tokens a grammar checks before it checks the whole vocabulary. Tokens beyond them
# carry a negligible share of the probability; a greedy pick is the same either way.
SHORTLIST = 1024

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class VocabLike(Protocol):
    """What a grammar needs from a vocabulary: its ``const struct llama_vocab *``, its size, and the owner of
    the model it belongs to (see :mod:`llamacffi.ownership`)."""

    @property
    def _ptr(self) -> CData: ...

    @property
    def owner(self) -> Owner: ...

    @property
    def n_tokens(self) -> int: ...


_RULE_NAME = re.compile(r"[A-Za-z0-9-]+")  # what llama.cpp's parser takes as a rule name


def _free_sampler(ptr: CData, _lib: object = lib) -> None:
    _lib.llama_sampler_free(ptr)  # type: ignore[attr-defined]


def _c_grammar(grammar: str) -> bytes:
    """The grammar's text for C: GrammarError for what C cannot carry (a lone surrogate; a NUL, where llama.cpp
    would silently end the text)."""
    try:
        data = grammar.encode()
    except UnicodeEncodeError as exc:
        raise GrammarError(f"the grammar is not valid Unicode: a lone surrogate at index {exc.start}") from None
    if b"\0" in data:
        raise GrammarError(f"the grammar holds a NUL character (index {grammar.index(chr(0))}); remove it")
    return data


def need_vocab(vocab: VocabLike | None) -> VocabLike:
    """``vocab``, which a grammar needs."""
    if vocab is None:
        raise InvalidArgumentError("a grammar needs the model's vocab (pass vocab=model.vocab)")
    return vocab


def make_grammar(vocab: VocabLike | None, grammar: str, root: str) -> tuple[CData, bool]:
    """llama.cpp's grammar sampler for ``grammar`` (start rule ``root``), freed by the garbage collector or
    ``ffi.release``, and whether it matches tokens by id (then each pick is tried on a copy first);
    :class:`GrammarError` when it does not parse."""
    vocab = need_vocab(vocab)
    by_id = check_grammar_shape(grammar)
    text = _c_grammar(grammar)
    if not isinstance(root, str) or not _RULE_NAME.fullmatch(root):
        raise InvalidArgumentError(f"grammar_root must be a rule name (letters, digits and '-'), got {root!r}")
    lease = vocab.owner.lease()
    if lib.llama_vocab_type(vocab._ptr) == lib.LLAMA_VOCAB_TYPE_NONE:  # llama.cpp would assert on each token's text
        lease.release()
        raise InvalidArgumentError("a grammar needs a model with a vocabulary; this model's vocabulary type is none")
    why = ffi.new("int *")
    try:
        g = lib.llamacffi_grammar_init(
            vocab._ptr, text, root.encode(), limits.GRAMMAR_MAX_STACKS, limits.GRAMMAR_MAX_BREADTH, why
        )
    except BaseException:
        lease.release()
        raise
    if g == ffi.NULL:
        lease.release()
        if why[0] == 2:
            raise GrammarError(
                f"the grammar has too many ways to parse a text (more than {limits.GRAMMAR_MAX_BREADTH} at one step, "
                f"or {limits.GRAMMAR_MAX_STACKS} at the start): a rule reaches itself through rules that may match "
                "nothing, or its repetitions are ambiguous"
            )
        if why[0] == 3:
            raise MemoryError("out of memory while parsing the grammar")
        raise GrammarError(f"the grammar does not parse, or has no rule {root!r} (llama.cpp logs the reason)")
    return ffi.gc(g, ownership.destructor(_free_sampler, lease)), by_id


def accept(grammar: CData, token: int) -> None:
    """Advance llama.cpp's grammar sampler past ``token``; GrammarError (not the process's end) when llama.cpp
    throws instead, or the grammar's parses multiply past their bound, after which it is spent until a reset (see
    :func:`spent_error`)."""
    rc = lib.llamacffi_grammar_accept(grammar, token)
    if rc == -2:
        raise GrammarError(
            f"the grammar is too ambiguous: after token {token} it has more ways to parse the text than its bound "
            f"({limits.GRAMMAR_MAX_STACKS}, or fewer of greater depth), and each would make every later token "
            "slower; make its repetitions unambiguous, or reset the sampler to use it again"
        )
    if rc != 0:
        raise GrammarError(
            f"llama.cpp's grammar refused token {token} after allowing it (its apply and accept steps disagree on "
            "grammars with token elements); reset the sampler to use the grammar again"
        )


def spent_error() -> GrammarError:
    """What a grammar says after :func:`accept` raised: it admits nothing until a reset."""
    return GrammarError("the grammar stopped at an earlier GrammarError and admits nothing more; call reset() first")


@contextlib.contextmanager
def claimed(lock: threading.Lock, what: str, closed: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """``lock`` held for one call, or LlamaError: a sampler's C state is not for two threads at once.
    ClosedError when ``closed()`` says the object is closed."""
    if not lock.acquire(blocking=False):
        raise LlamaError(f"this {what} is in use by another thread; use one {what} per thread")
    try:
        if closed():
            raise ClosedError(f"this {what} is closed; create a new one")
        yield
    finally:
        lock.release()


def accepted(grammar: CData, tokens: np.ndarray) -> np.ndarray:
    """For each token, whether the grammar would accept it now (its state tried and put back), as booleans."""
    ids = np.ascontiguousarray(tokens, dtype=np.int32)
    ok = np.zeros(ids.size, dtype=np.uint8)
    rc = lib.llamacffi_grammar_accepts_many(
        grammar, ffi.from_buffer("llama_token[]", ids), ids.size, ffi.from_buffer(ok)
    )
    if rc == -2:
        raise MemoryError("out of memory while trying tokens on the grammar")
    if rc != 0:
        raise InvalidArgumentError("not a grammar sampler made by llamacffi")
    return ok.astype(bool)


def accepts(grammar: CData, token: int) -> bool:
    """Whether the grammar would accept ``token`` now (its state tried and put back)."""
    return bool(accepted(grammar, np.array([token], dtype=np.int32))[0])


class Constraint:
    """The state of one grammar while a text is generated: :meth:`allowed`, :meth:`restrict`, :meth:`accept`.

    One thread at a time: a call while another thread is in one raises :class:`LlamaError`. After :meth:`accept`
    raised :class:`GrammarError` every call but :meth:`reset` and :meth:`close` raises it too."""

    def __init__(self, vocab: VocabLike | None, grammar: str, root: str = "root") -> None:
        vocab = need_vocab(vocab)
        self._g, self._try_first = make_grammar(vocab, grammar, root)
        self.n_vocab = int(vocab.n_tokens)
        self._spent = False
        self._busy = threading.Lock()
        self._data = ffi.new("llama_token_data[]", SHORTLIST)
        self._arr = ffi.new("llama_token_data_array *")
        view = np.frombuffer(ffi.buffer(self._data), dtype=TOKEN_DATA)
        self._ids, self._logits = view["id"], view["logit"]

    def _open(self) -> CData:
        if self._g is None:
            raise ClosedError("this grammar is closed")
        return self._g

    def _live(self) -> CData:
        g = self._open()
        if self._spent:
            raise spent_error()
        return g

    def _token(self, token: object) -> int:
        t = as_int("token", token)
        if not 0 <= t < self.n_vocab:  # llama.cpp's lookups would throw through C
            raise bad_token(t, self.n_vocab, "grammar")
        return t

    def _apply(self, ids: np.ndarray, data: CData) -> None:
        arr = self._arr
        arr.data = data
        arr.size = ids.size
        arr.selected = -1
        arr.sorted = False
        lib.llama_sampler_apply(self._live(), arr)

    def check_row(self, row: FloatArray) -> None:
        """InvalidArgumentError unless ``row`` has one logit per token of the vocabulary (its indices are the ids)."""
        if row.size != self.n_vocab:
            raise InvalidArgumentError(
                f"logits have {row.size} entries but the grammar's vocabulary has {self.n_vocab} tokens"
            )

    def allowed(self, token: int) -> bool:
        """Whether the grammar allows ``token`` next; InvalidTokenError for an id outside ``[0, n_vocab)``."""
        t = self._token(token)
        with claimed(self._busy, "Constraint"):
            return self._allowed(t)

    def _allowed(self, token: int) -> bool:
        self._ids[0] = token
        self._logits[0] = 0.0
        self._apply(self._ids[:1], self._data)
        if self._logits[0] == -math.inf:
            return False
        return not self._try_first or accepts(self._live(), token)

    def restrict(self, row: FloatArray) -> FloatArray:
        """A copy of ``row`` (n_vocab logits) with -inf for every token the grammar forbids next, among the
        :data:`SHORTLIST` highest (the whole row when it allows none of them)."""
        row = as_logits(row)
        self.check_row(row)
        with claimed(self._busy, "Constraint"):
            return self._restrict(row)

    def _restrict(self, row: FloatArray) -> FloatArray:
        n = row.size
        out = np.full(n, -np.inf, dtype=np.float32)
        if n > 2 * SHORTLIST:
            ids = np.argpartition(row, n - SHORTLIST)[n - SHORTLIST :]
            self._ids[:] = ids
            self._logits[:] = row[ids]
            self._apply(self._ids, self._data)
            kept = self._accepted(ids[self._logits != -math.inf])
            if kept.size:
                out[kept] = row[kept]
                return out
        data = ffi.new("llama_token_data[]", n)
        view = np.frombuffer(ffi.buffer(data), dtype=TOKEN_DATA)
        view["id"] = np.arange(n, dtype=np.int32)
        view["logit"] = row
        self._apply(view["id"], data)
        keep_ids = self._accepted(view["id"][view["logit"] != -math.inf])
        out[keep_ids] = row[keep_ids]
        return out

    def _accepted(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` without those the grammar allows but would not accept (grammars with token elements only)."""
        if not self._try_first or ids.size == 0:
            return ids
        kept: np.ndarray = ids[accepted(self._live(), ids)]
        return kept

    def accept(self, token: int, *, checked: bool = False) -> None:
        """Advance the grammar past ``token``, which it must allow (llama.cpp aborts on a forbidden one);
        ``checked``: the caller has just had :meth:`allowed` or :meth:`restrict` say so. A GrammarError here
        leaves the grammar spent until :meth:`reset`."""
        t = self._token(token)
        with claimed(self._busy, "Constraint"):
            if not checked and not self._allowed(t):
                raise GrammarError(f"token {t} is not allowed by the grammar at this point")
            g = self._live()
            try:
                accept(g, t)
            except GrammarError:
                self._spent = True
                raise

    def reset(self) -> None:
        """Start the grammar again from its root rule (a spent grammar too)."""
        with claimed(self._busy, "Constraint"):
            lib.llama_sampler_reset(self._open())
            self._spent = False

    def close(self) -> None:
        """Free the grammar now, once a call under way in another thread has returned; idempotent."""
        with self._busy:
            if self._g is not None:
                g, self._g = self._g, None
                ffi.release(g)
