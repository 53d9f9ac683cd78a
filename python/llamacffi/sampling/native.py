"""NativeSampler: the same sampling done by llama.cpp's own sampler chain, plus optional GBNF grammar constraints."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from ..errors import ClosedError, GrammarError, InvalidArgumentError, InvalidTokenError, NothingToSampleError
from ..limits import INT32_MAX, NATIVE_MIN_TEMPERATURE, PENALTY_WINDOW_MAX
from ..raw import CData, ffi, lib
from ..validate import as_int
from .constraint import (
    SHORTLIST,
    VocabLike,
    accept,
    accepted,
    accepts,
    claimed,
    make_grammar,
    need_vocab,
    spent_error,
)
from .constraint import TOKEN_DATA as _TOKEN_DATA
from .params import Configured, FloatArray, HistoryLike, as_logits, bad_token, nan_error


class NativeSampler(Configured):
    """The same sampling done by llama.cpp's own sampler chain, plus optional GBNF grammar constraints.

    Takes :class:`Sampler`'s parameters, and:

    * ``vocab``: the model's :class:`~llamacffi.Vocab` (see :class:`VocabLike`); required with a grammar. A
      reference is kept, and the grammar takes a lease on the model, so the model outlives this sampler.
    * ``grammar``: GBNF text constraining the output; ``grammar_root`` names its start rule. A grammar that does not
      parse raises :class:`GrammarError`.

    Unlike :class:`Sampler` it has state: every token :meth:`sample` returns is accepted (it enters the penalty
    window and advances the grammar), and :meth:`accept` feeds other tokens, such as the prompt. ``seed=None`` (or
    ``2**32 - 1``, llama.cpp's LLAMA_DEFAULT_SEED) lets llama.cpp pick a random seed. With a grammar, the row is first
    sampled unconstrained and the grammar only checks the pick; when it rejects it, the grammar masks the whole row
    and the chain samples again, as llama.cpp's common sampler does. A GrammarError from the grammar leaves it spent:
    :meth:`sample` and :meth:`accept` raise it again until :meth:`reset`. Free it with :meth:`close` or a ``with``
    block; using it afterwards raises :class:`ClosedError`. Without ``vocab`` the C sampler is built on the first
    :meth:`sample`, sized by that row.
    """

    def _setup(self, vocab: VocabLike | None, grammar: str | None, grammar_root: str) -> None:
        """The C sampler chain (now with ``vocab``, else at the first :meth:`sample`) and the grammar."""
        if self._p.penalty_last_n > PENALTY_WINDOW_MAX:  # llama.cpp allocates the window up front
            raise InvalidArgumentError(
                f"penalty_last_n must be at most {PENALTY_WINDOW_MAX} here (llama.cpp "
                f"allocates the window up front), got {self._p.penalty_last_n}"
            )
        if 0 < self._p.temperature < NATIVE_MIN_TEMPERATURE:
            raise InvalidArgumentError(
                f"temperature must be 0 (greedy) or at least {NATIVE_MIN_TEMPERATURE:g} "
                f"here (llama.cpp divides the logits by it), got {self._p.temperature}"
            )
        self._busy = threading.Lock()  # the C samplers are not for two threads at once
        self._closed = False
        self._chain: CData = None
        self._grammar: CData = None
        self._short: CData = None  # the shortlist a grammar checks first, made on first use
        self._short_arr: CData = None
        self._short_ids: np.ndarray = np.empty(0, np.int32)
        self._short_logits: np.ndarray = np.empty(0, np.float32)
        self._vocab = vocab
        self._pending: list[int] = []  # tokens accepted before the chain exists
        self._n_vocab: int | None = None
        self._try_first = False
        self._spent = False  # the grammar raised GrammarError: it admits nothing until a reset
        if grammar is not None:
            # the grammar sampler holds the model while it lives
            self._grammar, self._try_first = make_grammar(need_vocab(vocab), grammar, grammar_root)
            # a one-entry candidate array to ask the grammar whether a single token is allowed
            self._one = ffi.new("llama_token_data[1]")
            self._one_arr = ffi.new("llama_token_data_array *")
        if vocab is not None:
            self._build(int(vocab.n_tokens))

    @property
    def n_vocab(self) -> int | None:
        """The row length this sampler is built for; None before the first :meth:`sample` without a vocab."""
        return self._n_vocab

    def _build(self, n: int) -> None:
        p = self._p
        if p.bias_ids is not None and p.bias_ids[-1] >= n:
            raise bad_token(int(p.bias_ids[-1]), n, "logit_bias")
        bad = [t for t in self._pending if t >= n]
        if bad:
            self._pending.clear()
            raise bad_token(bad[0], n, "accepted")
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = ffi.gc(lib.llama_sampler_chain_init(params), lib.llama_sampler_free)

        def add(sampler: CData) -> None:
            lib.llama_sampler_chain_add(chain, sampler)  # the chain owns and frees what it is given

        if p.bias_ids is not None and p.bias_vals is not None:
            biases = ffi.new("llama_logit_bias[]", p.bias_ids.size)
            for i, (t, b) in enumerate(zip(p.bias_ids.tolist(), p.bias_vals.tolist(), strict=True)):
                biases[i].token = t
                biases[i].bias = b
            add(lib.llama_sampler_init_logit_bias(n, p.bias_ids.size, biases))  # copies the array
        if p.penalties_on:
            last_n = PENALTY_WINDOW_MAX if p.penalty_last_n == -1 else p.penalty_last_n
            add(lib.llama_sampler_init_penalties(n, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty))
        # top_k/top_p/min_p reorder the candidate array in place, so its ids must be rewritten before each use
        self._reorders = False
        if p.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                add(lib.llama_sampler_init_top_k(min(p.top_k, n)))
                self._reorders = True
            if p.top_p < 1.0:
                add(lib.llama_sampler_init_top_p(p.top_p, 1))
                self._reorders = True
            if p.min_p > 0.0:
                add(lib.llama_sampler_init_min_p(p.min_p, 1))
                self._reorders = True
            add(lib.llama_sampler_init_temp(p.temperature))
            add(lib.llama_sampler_init_dist(lib.LLAMA_DEFAULT_SEED if p.seed is None else p.seed))
        self._data = ffi.new("llama_token_data[]", n)
        self._arr = ffi.new("llama_token_data_array *")
        view = np.frombuffer(ffi.buffer(self._data), dtype=_TOKEN_DATA)
        self._ids_view = view["id"]
        self._logit_view = view["logit"]
        self._ids = np.arange(n, dtype=np.int32)
        self._ids_view[:] = self._ids
        self._ids_dirty = False
        self._chain = chain
        self._n_vocab = n
        pending, self._pending = self._pending, []
        for t in pending:
            self._accept(t)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this NativeSampler is closed; create a new one")

    def _allowed(self, token: int) -> bool:
        """Whether the grammar allows ``token`` next (accepting a forbidden one would abort in llama.cpp)."""
        one = self._one[0]
        one.id = token
        one.logit = 0.0
        one.p = 0.0
        arr = self._one_arr
        arr.data = self._one
        arr.size = 1
        arr.selected = -1
        arr.sorted = False
        lib.llama_sampler_apply(self._grammar, arr)
        if self._one[0].logit == -math.inf:
            return False
        return not self._try_first or accepts(self._grammar, token)

    def _apply(self, sampler: CData, row: FloatArray, fill: bool) -> None:
        """Apply ``sampler`` to the candidate array (first filled from ``row`` with ``fill``)."""
        if fill:
            if self._ids_dirty:
                self._ids_view[:] = self._ids
            self._logit_view[:] = row
            self._ids_dirty = False
        arr = self._arr
        arr.data = self._data
        arr.size = row.size
        arr.selected = -1
        arr.sorted = False
        lib.llama_sampler_apply(sampler, arr)

    def _claimed(self) -> contextlib.AbstractContextManager[None]:
        return claimed(self._busy, "NativeSampler", lambda: self._closed)

    def sample(self, logits: FloatArray, history: HistoryLike | None = None) -> int:
        """Draw one token id from ``logits`` (1-D, n_vocab scores; copied, never kept) and accept it.

        ``history`` is ignored: the penalty window holds the tokens this sampler returned or was given through
        :meth:`accept` since the last :meth:`reset`. Raises InvalidArgumentError for bad logits or when no token
        is allowed (all banned, or the grammar admits none). As :class:`Sampler`, when some logits are +inf only
        those tokens are candidates.
        """
        row = as_logits(logits)
        with self._claimed():
            return self._sample(row)

    def _sample(self, row: FloatArray) -> int:
        if self._spent:
            raise spent_error()
        n = row.size
        if self._chain is None:
            self._build(n)
        elif n != self._n_vocab:
            raise InvalidArgumentError(f"logits have {n} entries but this sampler is built for {self._n_vocab}")
        top = row.max()
        if top != top:
            raise nan_error()
        if top == math.inf:  # llama.cpp's softmax would turn them into NaN: keep them alone, on equal terms
            row = np.where(row == math.inf, np.float32(0.0), np.float32(-math.inf))
        self._apply(self._chain, row, True)
        self._ids_dirty = self._reorders
        token, logit = self._selected()
        if self._grammar is not None and (logit == -math.inf or not self._allowed(token)):
            # The unconstrained pick was rejected: pick among the most likely tokens the grammar allows, or, when it
            # allows none of them, constrain the whole row first (as llama.cpp's common sampler does).
            picked = self._shortlisted(row)
            if picked is None:
                self._apply(self._grammar, row, True)
                self._apply(self._chain, row, False)
                self._ids_dirty = self._reorders
                picked = self._selected()
            token, logit = picked
            if self._try_first and logit != -math.inf and not accepts(self._grammar, token):
                token, logit = self._repick(row, token)
        if logit == -math.inf:
            raise NothingToSampleError(
                "no token can be sampled: every candidate is banned"
                + (" or forbidden by the grammar" if self._grammar is not None else "")
            )
        self._accept(token)
        return token

    def _repick(self, row: FloatArray, token: int) -> tuple[int, float]:
        """Pick again over the whole row without the tokens llama.cpp's grammar allows but would not accept
        (grammars with token elements only: ``token`` was one)."""
        row = row.copy()
        row[token] = -math.inf
        self._apply(self._grammar, row, True)
        allowed = self._ids_view[self._logit_view != -math.inf]
        row[allowed[~accepted(self._grammar, allowed)]] = -math.inf
        self._apply(self._grammar, row, True)
        self._apply(self._chain, row, False)
        self._ids_dirty = self._reorders
        token, logit = self._selected()
        if logit != -math.inf and not accepts(self._grammar, token):
            raise GrammarError(f"llama.cpp's grammar allows token {token} but would not accept it")
        return token, logit

    def _shortlisted(self, row: FloatArray) -> tuple[int, float] | None:
        """The chain's pick among the :data:`SHORTLIST` highest-scoring tokens (logit biases included) that the
        grammar allows; None when it allows none of them. Checking a shortlist instead of every token of a large
        vocabulary is what keeps constrained sampling about as fast as free sampling; the tokens left out carry a
        negligible share of the probability (greedy sampling picks exactly what a whole-row check picks)."""
        n = row.size
        if n <= 2 * SHORTLIST:
            return None
        if self._short is None:
            self._short = ffi.new("llama_token_data[]", SHORTLIST)
            self._short_arr = ffi.new("llama_token_data_array *")
            view = np.frombuffer(ffi.buffer(self._short), dtype=_TOKEN_DATA)
            self._short_ids, self._short_logits = view["id"], view["logit"]
        p = self._p
        scores = row
        if p.bias_ids is not None and p.bias_vals is not None:
            scores = row.copy()
            scores[p.bias_ids] += p.bias_vals
        ids = np.argpartition(scores, n - SHORTLIST)[n - SHORTLIST :]
        self._short_ids[:] = ids
        self._short_logits[:] = row[ids]
        arr = self._short_arr
        arr.data = self._short
        arr.size = SHORTLIST
        arr.selected = -1
        arr.sorted = False
        lib.llama_sampler_apply(self._grammar, arr)
        if not (self._short_logits != -math.inf).any():
            return None
        lib.llama_sampler_apply(self._chain, arr)
        sel = arr.selected
        if not 0 <= sel < arr.size:
            return None
        entry = arr.data[sel]
        return int(entry.id), float(entry.logit)

    def _selected(self) -> tuple[int, float]:
        arr = self._arr
        sel = arr.selected
        if not 0 <= sel < arr.size:
            raise InvalidArgumentError("llama.cpp's sampler selected no token")
        entry = arr.data[sel]
        return int(entry.id), float(entry.logit)

    def _accept(self, token: int) -> None:
        if self._grammar is not None:
            try:
                accept(self._grammar, token)
            except GrammarError:
                self._spent = True
                raise
        lib.llama_sampler_accept(self._chain, token)

    def accept(self, token: int) -> None:
        """Record ``token`` as emitted (penalty window, grammar state) without sampling, e.g. for prompt tokens.

        Raises InvalidTokenError for an id outside ``[0, n_vocab)``, GrammarError when the grammar forbids it here.
        """
        t = as_int("token", token)
        if t < 0:
            raise InvalidTokenError(f"accepted token id {t} is negative")
        if t > INT32_MAX:
            raise InvalidTokenError(f"accepted token id {t} is beyond any vocabulary (ids are int32)")
        with self._claimed():
            if self._spent:
                raise spent_error()
            if self._n_vocab is not None and t >= self._n_vocab:
                raise bad_token(t, self._n_vocab, "accepted")
            if self._grammar is not None and not self._allowed(t):
                raise GrammarError(f"token {t} is not allowed by the grammar at this point")
            if self._chain is None:
                self._pending.append(t)
            else:
                self._accept(t)

    def reset(self) -> None:
        """Forget accepted tokens, restart the grammar and reseed the draw from the seed."""
        with self._claimed():
            self._pending.clear()
            if self._chain is not None:
                lib.llama_sampler_reset(self._chain)
            if self._grammar is not None:
                lib.llama_sampler_reset(self._grammar)
            self._spent = False

    def close(self) -> None:
        """Free the C samplers now, once a call under way in another thread has returned; idempotent."""
        with self._busy:
            if self._closed:
                return
            self._closed = True
            for attr in ("_chain", "_grammar"):
                obj = getattr(self, attr)
                if obj is not None:
                    setattr(self, attr, None)
                    ffi.release(obj)

    def __enter__(self) -> NativeSampler:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
