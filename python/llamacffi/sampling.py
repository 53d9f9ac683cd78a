"""Token sampling over a logits row: a pure-numpy :class:`Sampler` and :class:`NativeSampler` over llama.cpp's chain.

A logits row is a 1-D float array of length ``n_vocab`` (one raw, unnormalised score per token id). It is often a
zero-copy, read-only view into llama.cpp's memory that stays valid only until the next decode, so nothing here writes
into it or keeps it: every function copies the few entries it changes.

Both samplers follow llama.cpp's common sampler order::

    logit_bias -> penalties -> (temperature <= 0: argmax) -> top_k -> top_p -> min_p -> temperature -> draw

Ties between equal logits are broken by the lower token id everywhere in the pure-numpy path, so results are
reproducible: the same seed, logits and history give the same tokens.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Protocol

import numpy as np
import numpy.typing as npt

from .errors import ClosedError, GrammarError, InvalidArgumentError, InvalidTokenError, LlamaError, as_int
from . import ownership
from .ownership import Owner
from .raw import ffi, lib

__all__ = [
    "NativeSampler",
    "Sampler",
    "greedy",
    "penalize",
    "top_k_indices",
    "top_p_count",
]

FloatArray = npt.NDArray[np.floating[Any]]
IdArray = npt.NDArray[np.intp]
HistoryLike = Sequence[int] | npt.NDArray[np.integer[Any]]

# Candidate sets up to this size are ordered with one lexsort; larger ones are cut to the k-th value first.
_LEXSORT_MAX = 4096
# With more override tokens (bias + penalised) than this, copying the row once is cheaper than merging.
_MERGE_MAX = 4096
# top_p over an unsorted full row first tries the best _TOP_P_PROBE tokens, as llama.cpp does, before a full sort.
_TOP_P_PROBE = 256
# Up to this k (a sampler's top_k is usually 20..100) the top-k runs in C; its insertions cost O(k) each.
_C_TOP_K_MAX = 128
# Rows longer than 8 blocks are drawn from block by block.
_DRAW_BLOCK = 1024
# NativeSampler maps penalty_last_n=-1 ("whole history") to this window; llama.cpp allocates it up front (4 MiB).
_NATIVE_WHOLE_HISTORY = 1 << 20


# --------------------------------------------------------------------------------------------- validation helpers


def _as_logits(logits: Any) -> FloatArray:
    """Return ``logits`` as a 1-D float ndarray without copying, or raise InvalidArgumentError."""
    row = logits if type(logits) is np.ndarray else np.asarray(logits)
    if row.dtype.kind != "f":
        raise InvalidArgumentError(f"logits must be a float array, got dtype {row.dtype}")
    if row.ndim != 1:
        raise InvalidArgumentError(f"logits must be 1-D (one row of n_vocab scores), got shape {row.shape}")
    if row.size == 0:
        raise InvalidArgumentError("logits is empty")
    return row


# Bound of temperatures, penalties and biases: float32 arithmetic on logits stays finite within it.
_LARGEST = 1e6
# The smallest temperature llama.cpp's sampler takes: it divides logits by it, and an overflow to +inf gives NaN.
_NATIVE_MIN_TEMPERATURE = 1e-6


def _nan_error() -> InvalidArgumentError:
    return InvalidArgumentError("logits contain NaN")


def _banned_error() -> InvalidArgumentError:
    return InvalidArgumentError("every candidate token has logit -inf (all banned); nothing can be sampled")


def _bad_token(token: int, n_vocab: int, what: str) -> InvalidTokenError:
    return InvalidTokenError(f"{what} token id {token} is out of range for a vocabulary of {n_vocab} tokens "
                             f"(valid ids are 0..{n_vocab - 1})")


def _real(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(out):
        raise InvalidArgumentError(f"{name} must not be NaN")
    return out


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    out = as_int("seed", seed)
    if not 0 <= out <= 0xFFFFFFFF:
        raise InvalidArgumentError(f"seed must be in [0, 2**32 - 1] or None, got {seed}")
    return out


class _Params:
    """Validated sampling parameters shared by both samplers."""

    __slots__ = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "frequency_penalty",
                 "presence_penalty", "penalty_last_n", "bias_ids", "bias_vals", "seed")

    def __init__(self, temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
                 frequency_penalty: float, presence_penalty: float, penalty_last_n: int,
                 logit_bias: Mapping[int, float] | None, seed: int | None) -> None:
        self.temperature = _real("temperature", temperature)
        if not 0 <= self.temperature <= _LARGEST:
            raise InvalidArgumentError(f"temperature must be in [0, {_LARGEST:g}] (0 means greedy), got {temperature}")
        self.top_k = as_int("top_k", top_k)
        if self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0 (0 disables it), got {top_k}")
        self.top_p = _real("top_p", top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")
        self.min_p = _real("min_p", min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidArgumentError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
        self.repeat_penalty = _real("repeat_penalty", repeat_penalty)
        if not 0.0 < self.repeat_penalty <= _LARGEST:
            raise InvalidArgumentError(f"repeat_penalty must be in (0, {_LARGEST:g}] (1 disables it), got "
                                       f"{repeat_penalty}")
        self.frequency_penalty = _real("frequency_penalty", frequency_penalty)
        self.presence_penalty = _real("presence_penalty", presence_penalty)
        if not (abs(self.frequency_penalty) <= _LARGEST and abs(self.presence_penalty) <= _LARGEST):
            raise InvalidArgumentError(f"frequency_penalty and presence_penalty must be in [-{_LARGEST:g}, "
                                       f"{_LARGEST:g}]")
        self.penalty_last_n = as_int("penalty_last_n", penalty_last_n)
        if self.penalty_last_n < -1:
            raise InvalidArgumentError(
                f"penalty_last_n must be -1 (whole history), 0 (disabled) or a positive window, got {penalty_last_n}")
        self.seed = _check_seed(seed)
        self.bias_ids: IdArray | None = None
        self.bias_vals: npt.NDArray[np.float32] | None = None
        if logit_bias:
            items: dict[int, float] = {}
            for key, bias in logit_bias.items():
                if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
                    raise InvalidArgumentError(f"logit_bias keys must be int token ids, got {key!r}")
                if key < 0:
                    raise InvalidTokenError(f"logit_bias token id {key} is negative")
                value = _real(f"logit_bias[{key}]", bias)
                if not (abs(value) <= _LARGEST or value == -math.inf):
                    # +inf on a banned (-inf) logit would give NaN; a large finite bias already forces a token
                    raise InvalidArgumentError(f"logit_bias[{key}] must be in [-{_LARGEST:g}, {_LARGEST:g}] or -inf "
                                               f"(to ban), got {value}")
                items[int(key)] = value
            ids = np.fromiter(items.keys(), dtype=np.intp, count=len(items))
            order = np.argsort(ids)
            self.bias_ids = ids[order]
            # llama.cpp stores biases as float; keep the same rounding
            self.bias_vals = np.fromiter(items.values(), dtype=np.float32, count=len(items))[order]

    @property
    def penalties_on(self) -> bool:
        return self.penalty_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0)


# ------------------------------------------------------------------------------------------------ pure functions


def greedy(logits: FloatArray) -> int:
    """The id of the highest logit (the lowest such id on ties). Raises InvalidArgumentError on NaN."""
    row = _as_logits(logits)
    best = int(np.argmax(row))
    # argmax stops at the first NaN, so one lookup tells whether the row holds any
    if row[best] != row[best]:
        raise _nan_error()
    return best


def _order(ids: IdArray, vals: FloatArray, k: int) -> tuple[IdArray, FloatArray]:
    """The best ``k`` of a candidate set, ordered by descending value then ascending id."""
    size = ids.size
    if size > k and size > _LEXSORT_MAX:
        # cut to the k-th largest value first; among entries equal to it keep the lowest ids
        kth = vals[np.argpartition(vals, size - k)[size - k]]
        above = vals > kth
        tied = ids[vals == kth]
        need = k - int(np.count_nonzero(above))
        if need < tied.size:
            tied = np.sort(tied)[:need]
        ids = np.concatenate((ids[above], tied))
        vals = np.concatenate((vals[above], np.full(tied.size, kth, dtype=vals.dtype)))
    order = np.lexsort((ids, -vals))[:k] if ids.size <= _LEXSORT_MAX else _sort_desc(ids, vals)[:k]
    return ids[order], vals[order]


def _sort_desc(ids: IdArray, vals: FloatArray) -> IdArray:
    """The permutation ordering ``vals`` descending, ties by ascending id.

    numpy's default sort is several times faster than a stable sort or lexsort on large rows; equal values are then
    put back in id order run by run.
    """
    order = np.argsort(-vals)
    ordered = vals[order]
    eq = ordered[1:] == ordered[:-1]
    if eq.any():
        tied = np.zeros(order.size, dtype=bool)
        tied[1:] = eq
        tied[:-1] |= eq
        pos = np.flatnonzero(tied)
        run = np.cumsum(np.concatenate(([True], ~eq)))[pos]
        sub = order[pos]
        order[pos] = sub[np.lexsort((ids[sub], run))]
    return order


_plans: dict[int, tuple[int, int]] = {}


def _plan(n: int) -> tuple[int, int]:
    """(block rows, columns) of the prefilter layout for a row of ``n`` entries."""
    plan = _plans.get(n)
    if plan is None:
        rows = 32 if n >= 131072 else 16
        plan = _plans[n] = (rows, n // rows)
    return plan


def _top_k(row: FloatArray, k: int) -> tuple[IdArray, FloatArray]:
    """Exact top-``k`` (1 <= k) of ``row``: ids and values by descending value, then ascending id.

    The row is viewed as ``rows x cols`` and reduced to one maximum per column (a single vectorised pass). The k-th
    largest column maximum ``thr`` is a lower bound on the true k-th largest value (k distinct columns hold a value
    >= thr), so the true top-k lies in the columns whose maximum is >= thr, usually about k of them. Only those
    columns are read again. Rows whose ties defeat the bound fall back to a scan for ``row >= thr``.
    """
    n = row.size
    k = min(k, n)
    if k <= _C_TOP_K_MAX and row.dtype == np.float32 and row.flags.c_contiguous:
        # one pass in C: about 3x faster than the numpy passes below right after a decode has evicted the caches
        best = np.empty(k, dtype=np.int32)
        best_vals = np.empty(k, dtype=np.float32)
        got = lib.llamacffi_top_k(ffi.from_buffer("float[]", row), n, k, ffi.from_buffer("int32_t[]", best),
                                  ffi.from_buffer("float[]", best_vals))
        if got < 0:
            raise _nan_error()
        return best[:got].astype(np.intp), best_vals[:got]
    rows, cols = _plan(n)
    if n < 4096 or 4 * k * rows > n:
        if row.max() != row.max():
            raise _nan_error()
        return _order(np.arange(n), row, k)
    main = row[: rows * cols].reshape(rows, cols)
    colmax = main.max(axis=0)
    tail = row[rows * cols:]  # fewer than `rows` entries: each is its own column
    allmax = np.concatenate((colmax, tail)) if tail.size else colmax
    if allmax.max() != allmax.max():
        raise _nan_error()
    thr = np.partition(allmax, allmax.size - k)[allmax.size - k]
    if thr == -math.inf:
        # fewer than k finite logits (most tokens banned): all the finite ones, then the lowest -inf ids
        finite = row > thr
        ids = np.flatnonzero(finite)
        ids = np.concatenate((ids, np.flatnonzero(~finite)[: k - ids.size]))
        return _order(ids, row[ids], k)
    hit = np.flatnonzero(colmax >= thr)
    if hit.size * rows > n // 4:
        ids = np.flatnonzero(row >= thr)
        return _order(ids, row[ids], k)
    sub = main[:, hit]
    r, c = np.nonzero(sub >= thr)
    ids = r * cols + hit[c]
    vals = sub[r, c]
    if tail.size:
        t = np.flatnonzero(tail >= thr)
        if t.size:
            ids = np.concatenate((ids, t + rows * cols))
            vals = np.concatenate((vals, tail[t]))
    return _order(ids, vals, k)


def top_k_indices(logits: FloatArray, k: int) -> IdArray:
    """Ids of the ``k`` highest logits, by descending logit then ascending id (exact; ``k`` is clipped to n_vocab).

    Equal to ``np.argsort(-logits, kind="stable")[:k]`` but costs about one pass over the row.
    """
    row = _as_logits(logits)
    k = as_int("k", k)
    if k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    return _top_k(row, k)[0]


def top_p_count(probs: npt.NDArray[np.floating[Any]], p: float) -> int:
    """How many of ``probs`` (sorted descending) top-p keeps: the shortest prefix whose sum is >= ``p``, at least 1.

    As in llama.cpp, when rounding keeps the total below ``p`` every entry is kept.
    """
    cum = np.cumsum(probs, dtype=np.float64)
    return max(1, min(int(np.searchsorted(cum, p, side="left")) + 1, cum.size))


def _unique_counts(window: npt.NDArray[np.integer[Any]]) -> tuple[IdArray, IdArray]:
    """Sorted distinct ids of ``window`` and how often each occurs (cheaper than np.unique on small windows)."""
    s = np.sort(window.astype(np.intp, copy=False))
    first = np.empty(s.size, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return s[starts], np.diff(np.append(starts, s.size))


def _window(history: HistoryLike, last_n: int) -> npt.NDArray[np.integer[Any]]:
    """The last ``last_n`` ids of ``history`` (all of it for -1) as an integer array."""
    if not isinstance(history, (np.ndarray, list, tuple)):
        history = list(history)
    if last_n > 0:
        history = history[-last_n:]
    arr = np.asarray(history)
    if arr.size == 0:
        return np.empty(0, dtype=np.intp)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InvalidTokenError(f"history must be a 1-D sequence of int token ids, got dtype {arr.dtype} "
                                f"and shape {arr.shape}")
    return arr


def _penalize_values(vals: FloatArray, counts: IdArray, repeat: float, freq: float, present: float) -> FloatArray:
    """llama.cpp's penalties on the logits ``vals`` of tokens seen ``counts`` (> 0) times, in ``vals``'s precision."""
    f = vals.dtype.type
    out = np.where(vals <= 0, vals * f(repeat), vals / f(repeat))
    out -= counts.astype(vals.dtype) * f(freq) + f(present)
    return out


def penalize(logits: FloatArray, history: HistoryLike, *, repeat_penalty: float = 1.0,
             frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             penalty_last_n: int = 64) -> tuple[IdArray, FloatArray]:
    """The penalised logits of the tokens in the last ``penalty_last_n`` ids of ``history`` (-1: all, 0: none).

    Returns ``(ids, new_logits)``, ids sorted ascending; ``logits`` is not modified. For each id seen ``c`` times:
    ``logit = logit / repeat_penalty if logit > 0 else logit * repeat_penalty``, then
    ``logit -= c * frequency_penalty + presence_penalty`` (llama.cpp's ``llama_sampler_penalties``).
    """
    row = _as_logits(logits)
    params = _Params(1.0, 0, 1.0, 0.0, repeat_penalty, frequency_penalty, presence_penalty, penalty_last_n,
                     None, None)
    if params.penalty_last_n == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=row.dtype)
    window = _window(history, params.penalty_last_n)
    if window.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=row.dtype)
    ids, counts = _unique_counts(window)
    _check_ids(ids, row.size, "history")
    return ids, _penalize_values(row[ids], counts, params.repeat_penalty, params.frequency_penalty,
                                 params.presence_penalty)


def _check_ids(sorted_ids: IdArray, n_vocab: int, what: str) -> None:
    if sorted_ids.size and (sorted_ids[0] < 0 or sorted_ids[-1] >= n_vocab):
        bad = int(sorted_ids[0]) if sorted_ids[0] < 0 else int(sorted_ids[-1])
        raise _bad_token(bad, n_vocab, what)


def _merge(ids: IdArray, vals: FloatArray, o_ids: IdArray, o_vals: FloatArray,
           k: int) -> tuple[IdArray, FloatArray]:
    """Top-k of (ids, vals) with the entries of the sorted override ids replaced by their override values."""
    pos = np.minimum(np.searchsorted(o_ids, ids), o_ids.size - 1)
    keep = o_ids[pos] != ids
    return _order(np.concatenate((ids[keep], o_ids)), np.concatenate((vals[keep], o_vals)), k)


def _first_above(cdf: npt.NDArray[np.float64], target: float, weights: FloatArray) -> int:
    """First index where the running sum ``cdf`` of ``weights`` exceeds ``target``; never a zero-weight one."""
    i = int(np.searchsorted(cdf, target, side="right"))
    if i >= cdf.size:  # the target rounded up to the total: take the last entry with mass
        i = int(np.flatnonzero(weights)[-1])
    return i


def _draw(weights: FloatArray, u: float) -> int:
    """Index drawn with probability proportional to ``weights`` (>= 0, not all 0), by inverting the CDF at ``u``.

    A cumulative sum over a whole row costs ~1 ms at 262,144 entries (it is sequential), so long rows are cut into
    blocks: summing the blocks is vectorised, and only the block that holds the target is accumulated.
    """
    size = weights.size
    if size <= 8 * _DRAW_BLOCK:
        cdf = np.cumsum(weights, dtype=np.float64)
        return _first_above(cdf, u * cdf[-1], weights)
    blocks = size // _DRAW_BLOCK
    sums = weights[: blocks * _DRAW_BLOCK].reshape(blocks, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    if size > blocks * _DRAW_BLOCK:
        sums = np.append(sums, weights[blocks * _DRAW_BLOCK:].sum(dtype=np.float64))
    csum = np.cumsum(sums)
    target = u * csum[-1]
    b = _first_above(csum, target, sums)
    start = b * _DRAW_BLOCK
    block = weights[start: start + _DRAW_BLOCK]
    inner = np.cumsum(block, dtype=np.float64)
    if b:
        inner += csum[b - 1]
    return start + _first_above(inner, target, block)


# ------------------------------------------------------------------------------------------------------- Sampler


class Sampler:
    """Pure-numpy sampler; its only state is its random generator (``numpy.random.default_rng(seed)``).

    Parameters (keyword-only), each disabled by its default:

    * ``temperature``: logits are divided by it before the softmax; ``<= 0`` samples greedily (argmax).
    * ``top_k``: keep the k highest logits (0: all). ``top_p``: keep the smallest highest-probability set whose
      mass is >= top_p (1: all). ``min_p``: keep tokens whose probability is >= min_p times the highest (0: all).
      Probabilities are the softmax of the candidates left by the previous step, before temperature.
    * ``repeat_penalty``, ``frequency_penalty``, ``presence_penalty`` over the last ``penalty_last_n`` ids of the
      ``history`` passed to :meth:`sample` (-1: the whole history, 0: none), as in :func:`penalize`.
    * ``logit_bias``: ``{token_id: bias}`` added to the logits first; ``-inf`` bans a token.
    * ``seed``: seeds the generator; None draws fresh entropy.
    """

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repeat_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 penalty_last_n: int = 64, logit_bias: Mapping[int, float] | None = None,
                 seed: int | None = None) -> None:
        self._p = _Params(temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty,
                          penalty_last_n, logit_bias, seed)
        self._penalties = self._p.penalties_on
        self._seed = self._p.seed
        self._rng = np.random.default_rng(self._seed)

    @property
    def greedy(self) -> bool:
        """True when ``temperature <= 0``: :meth:`sample` returns the argmax and draws nothing."""
        return self._p.temperature <= 0

    @property
    def seed(self) -> int | None:
        return self._seed

    def reset(self) -> None:
        """Restart the random generator from the seed (a fresh random state when the seed is None)."""
        self._rng = np.random.default_rng(self._seed)

    def reseed(self, seed: int | None) -> None:
        """Replace the seed and restart the generator from it."""
        self._seed = _check_seed(seed)
        self.reset()

    def _overrides(self, row: FloatArray, history: HistoryLike | None) -> tuple[IdArray, FloatArray] | None:
        """Sorted ids whose logits bias/penalties change, and their new values; None when nothing changes."""
        n = row.size
        b_ids, b_vals = self._p.bias_ids, self._p.bias_vals
        if b_ids is not None and b_ids[-1] >= n:
            raise _bad_token(int(b_ids[-1]), n, "logit_bias")
        u: IdArray | None = None
        counts: IdArray | None = None
        if self._penalties and history is not None:
            window = _window(history, self._p.penalty_last_n)
            if window.size:
                u, counts = _unique_counts(window)
                _check_ids(u, n, "history")
        if b_ids is None or b_vals is None:
            if u is None:
                return None
            ids = u
            vals = row[ids]
        else:
            ids = b_ids if u is None else np.union1d(b_ids, u)
            vals = row[ids]
            where = slice(None) if u is None else np.searchsorted(ids, b_ids)
            vals[where] += b_vals.astype(vals.dtype, copy=False)
        if u is not None and counts is not None:
            where_u = slice(None) if ids is u else np.searchsorted(ids, u)
            p = self._p
            vals[where_u] = _penalize_values(vals[where_u], counts, p.repeat_penalty, p.frequency_penalty,
                                             p.presence_penalty)
        return ids, vals

    def sample(self, logits: FloatArray, history: HistoryLike | None = None) -> int:
        """Draw one token id from ``logits`` (1-D, n_vocab scores; read, never written or kept).

        ``history`` holds previous token ids (oldest first) for the penalties; it is ignored when they are off.
        Raises InvalidArgumentError for bad logits or when every candidate is banned, InvalidTokenError for a
        history or logit_bias id outside ``[0, n_vocab)``.
        """
        row = _as_logits(logits)
        n = row.size
        p = self._p
        over = self._overrides(row, history)
        if over is not None and over[0].size > _MERGE_MAX:
            full = row.copy()
            full[over[0]] = over[1]
            row, over = full, None

        if p.temperature <= 0:
            if over is None:
                best = greedy(row)
                top = row[best]
            else:
                ids, vals = _merge(*_top_k(row, over[0].size + 1), over[0], over[1], 1)
                best, top = int(ids[0]), vals[0]
            if top == -math.inf:
                raise _banned_error()
            return best

        # candidates: ids None means "every token, in id order", with vals the whole row
        cand: IdArray | None
        if 0 < p.top_k < n:
            if over is None:
                cand, vals = _top_k(row, p.top_k)
            else:
                cand, vals = _merge(*_top_k(row, p.top_k + over[0].size), over[0], over[1], p.top_k)
            top = vals[0]
            is_sorted = True
        else:
            cand, vals = None, row
            if over is not None:
                vals = row.copy()
                vals[over[0]] = over[1]
            top = vals.max()
            if top != top:
                raise _nan_error()
            is_sorted = False
        if top == -math.inf:
            raise _banned_error()
        if top == math.inf:
            # the +inf tokens share all the mass; sample uniformly among them
            pos = np.flatnonzero(vals == math.inf)
            cand = pos if cand is None else cand[pos]
            vals = np.zeros(pos.size, dtype=vals.dtype)
            top = vals[0]

        if p.top_p < 1.0:
            cand, vals = self._top_p(cand, vals, top, is_sorted)
            is_sorted = True
        if p.min_p > 0.0:
            f = vals.dtype.type
            floor = f(top) + f(math.log(p.min_p))  # llama.cpp: logit >= max + log(min_p)
            if is_sorted:
                keep = max(1, int(np.count_nonzero(vals >= floor)))
                vals = vals[:keep]
                cand = None if cand is None else cand[:keep]
            else:
                pos = np.flatnonzero(vals >= floor)
                vals = vals[pos]
                cand = pos if cand is None else cand[pos]

        # softmax at temperature, then invert the cumulative distribution with one uniform draw. As in llama.cpp
        # the exponentials are taken in the logits' precision (float32 exp is ~20x cheaper) and summed in double;
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
        i = _draw(x, self._rng.random())
        return i if cand is None else int(cand[i])

    def _top_p(self, cand: IdArray | None, vals: FloatArray, top: Any,
               is_sorted: bool) -> tuple[IdArray | None, FloatArray]:
        top_p = self._p.top_p
        top = vals.dtype.type(top)
        if is_sorted:
            probs = np.exp(vals - top).astype(np.float64)
            probs /= probs.sum()
            keep = top_p_count(probs, top_p)
            return (None if cand is None else cand[:keep]), vals[:keep]
        # unsorted (every token): the mass usually sits in a few tokens, so try the best few first
        total = float(np.exp(vals - top).sum(dtype=np.float64))
        ids, best = _top_k(vals, _TOP_P_PROBE)
        probs = np.exp(best - top).astype(np.float64) / total
        if probs.sum() < top_p:
            ids, best = _order(np.arange(vals.size) if cand is None else cand, vals, vals.size)
            probs = np.exp(best - top).astype(np.float64) / total
        elif cand is not None:
            ids = cand[ids]
        keep = top_p_count(probs, top_p)
        return ids[:keep], best[:keep]


# ------------------------------------------------------------------------------------------------- NativeSampler


# llama.cpp parses a grammar and checks it for left recursion by recursing over its nesting and its rules; past
# a few thousand levels that overflows the C stack. No real grammar comes near these limits.
GRAMMAR_MAX_NESTING = 256
GRAMMAR_MAX_RULES = 10_000


def _check_grammar_shape(text: str) -> None:
    """Refuse (GrammarError) a GBNF text nested or chained deeper than llama.cpp's parser can take."""
    if not isinstance(text, str):
        raise TypeError(f"grammar must be str, not {type(text).__name__}")
    depth = deepest = rules = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "[":  # a literal or a character class: skip to its unescaped end
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        elif c == ":" and text.startswith("::=", i):
            rules += 1
        i += 1
    if deepest > GRAMMAR_MAX_NESTING:
        raise GrammarError(f"the grammar nests groups {deepest} deep; at most {GRAMMAR_MAX_NESTING} are supported")
    if rules > GRAMMAR_MAX_RULES:
        raise GrammarError(f"the grammar has {rules} rules; at most {GRAMMAR_MAX_RULES} are supported")


def _free_sampler(ptr: Any, _lib: Any = lib) -> None:
    _lib.llama_sampler_free(ptr)


class VocabLike(Protocol):
    """What NativeSampler needs from a vocabulary: its ``const struct llama_vocab *``, its size, and the owner of
    the model it belongs to (see :mod:`llamacffi.ownership`)."""

    @property
    def _ptr(self) -> Any: ...

    @property
    def owner(self) -> Owner: ...

    @property
    def n_tokens(self) -> int: ...


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class NativeSampler:
    """The same sampling done by llama.cpp's own sampler chain, plus optional GBNF grammar constraints.

    Takes :class:`Sampler`'s parameters, and:

    * ``vocab``: an object with ``_ptr`` (``const struct llama_vocab *``) and ``n_tokens``; required with a grammar.
      A reference is kept, so the vocabulary (its model) outlives this sampler.
    * ``grammar``: GBNF text constraining the output; ``grammar_root`` names its start rule. A grammar that does not
      parse raises :class:`GrammarError`.

    Unlike :class:`Sampler` it has state: every token :meth:`sample` returns is accepted (it enters the penalty
    window and advances the grammar), and :meth:`accept` feeds other tokens, such as the prompt. ``seed=None`` (or
    ``2**32 - 1``, llama.cpp's LLAMA_DEFAULT_SEED) lets llama.cpp pick a random seed. With a grammar, the row is first
    sampled unconstrained and the grammar only checks the pick; when it rejects it, the grammar masks the whole row
    (milliseconds on a large vocabulary) and the chain samples again, as llama.cpp's common sampler does. Free it with :meth:`close` or a ``with`` block; using it afterwards raises
    :class:`ClosedError`. Without ``vocab`` the C sampler is built on the first :meth:`sample`, sized by that row.
    """

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repeat_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 penalty_last_n: int = 64, logit_bias: Mapping[int, float] | None = None,
                 seed: int | None = None, vocab: VocabLike | None = None, grammar: str | None = None,
                 grammar_root: str = "root") -> None:
        self._p = _Params(temperature, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty,
                          penalty_last_n, logit_bias, seed)
        if self._p.penalty_last_n > _NATIVE_WHOLE_HISTORY:  # llama.cpp allocates the window up front
            raise InvalidArgumentError(f"penalty_last_n must be at most {_NATIVE_WHOLE_HISTORY} here (llama.cpp "
                                       f"allocates the window up front), got {penalty_last_n}")
        if 0 < self._p.temperature < _NATIVE_MIN_TEMPERATURE:
            raise InvalidArgumentError(f"temperature must be 0 (greedy) or at least {_NATIVE_MIN_TEMPERATURE:g} "
                                       f"here (llama.cpp divides the logits by it), got {temperature}")
        self._busy = threading.Lock()  # the C samplers are not for two threads at once
        self._closed = False
        self._chain: Any = None
        self._grammar: Any = None
        self._vocab = vocab
        self._pending: list[int] = []  # tokens accepted before the chain exists
        self._n_vocab: int | None = None
        if grammar is not None:
            if vocab is None:
                raise InvalidArgumentError("a grammar needs the model's vocab (pass vocab=model.vocab)")
            _check_grammar_shape(grammar)
            # The grammar keeps the vocabulary's pointer: its model stays loaded until this sampler is freed.
            lease = vocab.owner.lease()
            try:
                g = lib.llama_sampler_init_grammar(vocab._ptr, grammar.encode(), grammar_root.encode())
            except BaseException:
                lease.release()
                raise
            if g == ffi.NULL:
                lease.release()
                raise GrammarError(f"the grammar does not parse, or has no rule {grammar_root!r} "
                                   f"(llama.cpp logs the reason)")
            self._grammar = ffi.gc(g, ownership.destructor(_free_sampler, lease))
            # a one-entry candidate array to ask the grammar whether a single token is allowed
            self._one = ffi.new("llama_token_data[1]")
            self._one_arr = ffi.new("llama_token_data_array *")
        if vocab is not None:
            self._build(int(vocab.n_tokens))

    @property
    def greedy(self) -> bool:
        """True when ``temperature <= 0``: the chain ends in argmax instead of a random draw."""
        return self._p.temperature <= 0

    @property
    def n_vocab(self) -> int | None:
        """The row length this sampler is built for; None before the first :meth:`sample` without a vocab."""
        return self._n_vocab

    def _build(self, n: int) -> None:
        p = self._p
        if p.bias_ids is not None and p.bias_ids[-1] >= n:
            raise _bad_token(int(p.bias_ids[-1]), n, "logit_bias")
        bad = [t for t in self._pending if t >= n]
        if bad:
            self._pending.clear()
            raise _bad_token(bad[0], n, "accepted")
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = ffi.gc(lib.llama_sampler_chain_init(params), lib.llama_sampler_free)

        def add(sampler: Any) -> None:
            lib.llama_sampler_chain_add(chain, sampler)  # the chain owns and frees what it is given

        if p.bias_ids is not None and p.bias_vals is not None:
            biases = ffi.new("llama_logit_bias[]", p.bias_ids.size)
            for i, (t, b) in enumerate(zip(p.bias_ids.tolist(), p.bias_vals.tolist())):
                biases[i].token = t
                biases[i].bias = b
            add(lib.llama_sampler_init_logit_bias(n, p.bias_ids.size, biases))  # copies the array
        if p.penalties_on:
            last_n = _NATIVE_WHOLE_HISTORY if p.penalty_last_n == -1 else p.penalty_last_n
            add(lib.llama_sampler_init_penalties(n, last_n, p.repeat_penalty, p.frequency_penalty,
                                                 p.presence_penalty))
        # top_k/top_p/min_p reorder the candidate array in place, so its ids must be rewritten before each use
        self._reorders = False
        if p.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            if 0 < p.top_k:
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
        return bool(self._one[0].logit != -math.inf)

    def _run(self, sampler: Any, row: FloatArray, fill: bool) -> None:
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

    def _claim(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise LlamaError("this NativeSampler is in use by another thread; use one sampler per thread")
        if self._closed:
            self._busy.release()
            raise ClosedError("this NativeSampler is closed; create a new one")

    def sample(self, logits: FloatArray, history: HistoryLike | None = None) -> int:
        """Draw one token id from ``logits`` (1-D, n_vocab scores; copied, never kept) and accept it.

        ``history`` is ignored: the penalty window holds the tokens this sampler returned or was given through
        :meth:`accept` since the last :meth:`reset`. Raises InvalidArgumentError for bad logits or when no token
        is allowed (all banned, or the grammar admits none). As :class:`Sampler`, when some logits are +inf only
        those tokens are candidates.
        """
        row = _as_logits(logits)
        self._claim()
        try:
            return self._sample(row)
        finally:
            self._busy.release()

    def _sample(self, row: FloatArray) -> int:
        n = row.size
        if self._chain is None:
            self._build(n)
        elif n != self._n_vocab:
            raise InvalidArgumentError(f"logits have {n} entries but this sampler is built for {self._n_vocab}")
        top = row.max()
        if top != top:
            raise _nan_error()
        if top == math.inf:  # llama.cpp's softmax would turn them into NaN: keep them alone, on equal terms
            row = np.where(row == math.inf, np.float32(0.0), np.float32(-math.inf))
        self._run(self._chain, row, True)
        self._ids_dirty = self._reorders
        token, logit = self._selected()
        if self._grammar is not None and (logit == -math.inf or not self._allowed(token)):
            # as llama.cpp's common sampler: the unconstrained pick was rejected, so constrain the whole row first
            self._run(self._grammar, row, True)
            self._run(self._chain, row, False)
            self._ids_dirty = self._reorders
            token, logit = self._selected()
        if logit == -math.inf:
            raise InvalidArgumentError("no token can be sampled: every candidate is banned"
                                       + (" or forbidden by the grammar" if self._grammar is not None else ""))
        self._accept(token)
        return token

    def _selected(self) -> tuple[int, float]:
        arr = self._arr
        sel = arr.selected
        if not 0 <= sel < arr.size:
            raise InvalidArgumentError("llama.cpp's sampler selected no token")
        entry = arr.data[sel]
        return int(entry.id), float(entry.logit)

    def _accept(self, token: int) -> None:
        if self._grammar is not None:
            lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain, token)

    def accept(self, token: int) -> None:
        """Record ``token`` as emitted (penalty window, grammar state) without sampling, e.g. for prompt tokens.

        Raises InvalidTokenError for an id outside ``[0, n_vocab)``, GrammarError when the grammar forbids it here.
        """
        t = as_int("token", token)
        if t < 0:
            raise InvalidTokenError(f"accepted token id {t} is negative")
        self._claim()
        try:
            if self._n_vocab is not None and t >= self._n_vocab:
                raise _bad_token(t, self._n_vocab, "accepted")
            if self._grammar is not None and not self._allowed(t):
                raise GrammarError(f"token {t} is not allowed by the grammar at this point")
            if self._chain is None:
                self._pending.append(t)
            else:
                self._accept(t)
        finally:
            self._busy.release()

    def reset(self) -> None:
        """Forget accepted tokens, restart the grammar and reseed the draw from the seed."""
        self._claim()
        try:
            self._pending.clear()
            if self._chain is not None:
                lib.llama_sampler_reset(self._chain)
            if self._grammar is not None:
                lib.llama_sampler_reset(self._grammar)
        finally:
            self._busy.release()

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
