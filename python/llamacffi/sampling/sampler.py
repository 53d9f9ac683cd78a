"""Sampler: the pure-numpy sampler (see :mod:`llamacffi.sampling` for the order of its steps)."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from ..errors import ClosedError
from .constraint import Constraint, VocabLike, claimed
from .kernels import (
    best_k,
    draw,
    greedy,
    history_window,
    merge_overrides,
    order_desc,
    penalize_values,
    top_p_count,
    unique_counts,
)
from .params import (
    Configured,
    FloatArray,
    HistoryLike,
    IdArray,
    as_logits,
    bad_token,
    banned_error,
    check_seed,
    nan_error,
)

# With more override tokens (bias + penalised) than this, copying the row once is cheaper than merging.
_MERGE_MAX = 4096
# top_p over an unsorted full row first tries the best _TOP_P_PROBE tokens, as llama.cpp does, before a full sort.
_TOP_P_PROBE = 256


class Sampler(Configured):
    """Numpy sampler; its state is its random generator (``numpy.random.default_rng(seed)``) and, with a grammar,
    the grammar's.

    Parameters (keyword-only), each disabled by its default:

    * ``temperature``: logits are divided by it before the softmax; ``<= 0`` samples greedily (argmax).
    * ``top_k``: keep the k highest logits (0: all). ``top_p``: keep the smallest highest-probability set whose
      mass is >= top_p (1: all). ``min_p``: keep tokens whose probability is >= min_p times the highest (0: all).
      Probabilities are the softmax of the candidates left by the previous step, before temperature.
    * ``repeat_penalty``, ``frequency_penalty``, ``presence_penalty`` over the last ``penalty_last_n`` ids of the
      ``history`` passed to :meth:`sample` (-1: the whole history, 0: none), as in :func:`penalize`.
    * ``logit_bias``: ``{token_id: bias}`` added to the logits first; ``-inf`` bans a token.
    * ``seed``: seeds the generator; None draws fresh entropy.
    * ``grammar``: GBNF text (start rule ``grammar_root``) the output must follow, with ``vocab`` (the model's);
      each :meth:`sample` returns a token the grammar allows and advances it (see :class:`Constraint`). As
      :class:`NativeSampler`, the row is sampled free first and constrained only when the grammar rejects the pick.

    One thread at a time: a call while another thread is in one raises :class:`~llamacffi.LlamaError`. Free the
    grammar with :meth:`close` or a ``with`` block; using the sampler afterwards raises :class:`ClosedError`.
    """

    def _setup(self, vocab: VocabLike | None, grammar: str | None, grammar_root: str) -> None:
        """The random generator, and the grammar's state over ``vocab``."""
        self._penalties = self._p.penalties_on
        self._seed = self._p.seed
        self._rng = np.random.default_rng(self._seed)
        self._busy = threading.Lock()
        self._closed = False
        self._constraint = None if grammar is None else Constraint(vocab, grammar, grammar_root)

    @property
    def seed(self) -> int | None:
        return self._seed

    def _claimed(self) -> contextlib.AbstractContextManager[None]:
        return claimed(self._busy, "Sampler", lambda: self._closed)

    def reset(self) -> None:
        """Restart the random generator from the seed (a fresh random state when the seed is None), and the
        grammar."""
        self._restart(self._seed)

    def reseed(self, seed: int | None) -> None:
        """Replace the seed and restart the generator from it."""
        self._restart(check_seed(seed))

    def _restart(self, seed: int | None) -> None:
        with self._claimed():
            self._seed = seed
            self._rng = np.random.default_rng(seed)
            if self._constraint is not None:
                self._constraint.reset()

    def close(self) -> None:
        """Free the grammar now, once a call under way in another thread has returned; idempotent."""
        with self._busy:
            self._closed = True
            if self._constraint is not None:
                self._constraint.close()

    def __enter__(self) -> Sampler:
        if self._closed:
            raise ClosedError("this Sampler is closed; create a new one")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _overrides(self, row: FloatArray, history: HistoryLike | None) -> tuple[IdArray, FloatArray] | None:
        """Sorted ids whose logits bias/penalties change, and their new values; None when nothing changes."""
        n = row.size
        b_ids, b_vals = self._p.bias_ids, self._p.bias_vals
        if b_ids is not None and b_ids[-1] >= n:
            raise bad_token(int(b_ids[-1]), n, "logit_bias")
        seen: IdArray | None = None
        counts: IdArray | None = None
        if self._penalties and history is not None:
            window = history_window(history, self._p.penalty_last_n)
            if window.size:
                seen, counts = unique_counts(window, n, "history")
        if b_ids is None or b_vals is None:
            if seen is None:
                return None
            ids = seen
            vals = row[ids]
        else:
            ids = b_ids if seen is None else np.union1d(b_ids, seen)
            vals = row[ids]
            where = slice(None) if seen is None else np.searchsorted(ids, b_ids)
            vals[where] += b_vals.astype(vals.dtype, copy=False)
        if seen is not None and counts is not None:
            where_seen = slice(None) if ids is seen else np.searchsorted(ids, seen)
            p = self._p
            vals[where_seen] = penalize_values(
                vals[where_seen], counts, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
        return ids, vals

    def sample(self, logits: FloatArray, history: HistoryLike | None = None) -> int:
        """Draw one token id from ``logits`` (1-D, n_vocab scores; read, never written or kept).

        ``history`` holds previous token ids (oldest first) for the penalties; it is ignored when they are off.
        Raises InvalidArgumentError for bad logits or when every candidate is banned (or forbidden by the grammar),
        InvalidTokenError for a history or logit_bias id outside ``[0, n_vocab)``, GrammarError when the grammar
        stops (see :class:`Constraint`; it then raises until :meth:`reset`).
        """
        row = as_logits(logits)
        with self._claimed():
            c = self._constraint
            if c is None:
                return self._draw(row, history)
            c.check_row(row)
            token = self._draw(row, history)
            if not c.allowed(token):
                token = self._draw(c.restrict(row), history)
            c.accept(token, checked=True)
            return token

    def _draw(self, row: FloatArray, history: HistoryLike | None) -> int:
        n = row.size
        p = self._p
        overrides = self._overrides(row, history)
        if overrides is not None and overrides[0].size > _MERGE_MAX:
            full = row.copy()
            full[overrides[0]] = overrides[1]
            row, overrides = full, None

        if p.temperature <= 0:
            if overrides is None:
                best = greedy(row)
                top = row[best]
            else:
                ids, vals = merge_overrides(*best_k(row, overrides[0].size + 1), overrides[0], overrides[1], 1)
                best, top = int(ids[0]), vals[0]
            if top == -math.inf:
                raise banned_error()
            return best

        # candidates: ids None means "every token, in id order", with vals the whole row
        candidates: IdArray | None
        if 0 < p.top_k < n:
            if overrides is None:
                candidates, vals = best_k(row, p.top_k)
            else:
                candidates, vals = merge_overrides(
                    *best_k(row, p.top_k + overrides[0].size), overrides[0], overrides[1], p.top_k
                )
            top = vals[0]
            is_sorted = True
        else:
            candidates, vals = None, row
            if overrides is not None:
                vals = row.copy()
                vals[overrides[0]] = overrides[1]
            top = vals.max()
            if top != top:
                raise nan_error()
            is_sorted = False
        if top == -math.inf:
            raise banned_error()
        if top == math.inf:
            # the +inf tokens share all the mass; sample uniformly among them
            pos = np.flatnonzero(vals == math.inf)
            candidates = pos if candidates is None else candidates[pos]
            vals = np.zeros(pos.size, dtype=vals.dtype)
            top = vals[0]

        if p.top_p < 1.0:
            candidates, vals = self._top_p(candidates, vals, top, is_sorted)
            is_sorted = True
        if p.min_p > 0.0:
            f = vals.dtype.type
            floor = f(top) + f(math.log(p.min_p))  # llama.cpp: logit >= max + log(min_p)
            if is_sorted:
                keep = max(1, int(np.count_nonzero(vals >= floor)))
                vals = vals[:keep]
                candidates = None if candidates is None else candidates[:keep]
            else:
                pos = np.flatnonzero(vals >= floor)
                vals = vals[pos]
                candidates = pos if candidates is None else candidates[pos]

        # softmax at temperature, then invert the cumulative distribution with one uniform draw. As in llama.cpp
        # the exponentials are taken in the logits' precision (float32 exp is much cheaper) and summed in double;
        # subtracting the max before dividing keeps tiny temperatures finite.
        f = vals.dtype.type
        x = vals - f(top)
        t = max(f(p.temperature), np.finfo(vals.dtype).smallest_subnormal)  # a float32 0 would give 0/0 = NaN
        if t < 1e-30:
            with np.errstate(over="ignore"):  # overflow to -inf is the intent: those tokens get no mass
                x /= t
        else:
            x /= t
        np.exp(x, out=x)
        i = draw(x, self._rng.random())
        return i if candidates is None else int(candidates[i])

    def _top_p(
        self, candidates: IdArray | None, vals: FloatArray, top: float | np.floating, is_sorted: bool
    ) -> tuple[IdArray | None, FloatArray]:
        top_p = self._p.top_p
        top = vals.dtype.type(top)
        if is_sorted:
            probs = np.exp(vals - top).astype(np.float64)
            probs /= probs.sum()
            keep = top_p_count(probs, top_p)
            return (None if candidates is None else candidates[:keep]), vals[:keep]
        # unsorted (every token): the mass usually sits in a few tokens, so try the best few first
        total = float(np.exp(vals - top).sum(dtype=np.float64))
        ids, best = best_k(vals, _TOP_P_PROBE)
        probs = np.exp(best - top).astype(np.float64) / total
        if probs.sum() < top_p:
            ids, best = order_desc(np.arange(vals.size) if candidates is None else candidates, vals, vals.size)
            probs = np.exp(best - top).astype(np.float64) / total
        elif candidates is not None:
            ids = candidates[ids]
        keep = top_p_count(probs, top_p)
        return ids[:keep], best[:keep]
