"""The numpy kernels of sampling: exact top-k in about one pass, ordering with ties by id, top-p, penalties and
the draw. Pure functions over a logits row, which they read and never write or keep."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ..errors import InvalidTokenError
from ..raw import ffi, lib
from ..validate import as_int
from .params import FloatArray, HistoryLike, IdArray, Params, as_logits, bad_token, nan_error

# Candidate sets up to this size are ordered with one lexsort; larger ones are cut to the k-th value first.
_LEXSORT_MAX = 4096
# Up to this k (a sampler's top_k is usually 20..100) the top-k runs in C; its insertions cost O(k) each.
_C_TOP_K_MAX = 128
# Rows longer than 8 blocks are drawn from block by block.
_DRAW_BLOCK = 1024


def greedy(logits: FloatArray) -> int:
    """The id of the highest logit (the lowest such id on ties). Raises InvalidArgumentError on NaN."""
    row = as_logits(logits)
    best = int(np.argmax(row))
    # argmax stops at the first NaN, so one lookup tells whether the row holds any
    if row[best] != row[best]:
        raise nan_error()
    return best


def order_desc(ids: IdArray, vals: FloatArray, k: int) -> tuple[IdArray, FloatArray]:
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
    order = np.lexsort((ids, -vals))[:k] if ids.size <= _LEXSORT_MAX else sort_desc(ids, vals)[:k]
    return ids[order], vals[order]


def sort_desc(ids: IdArray, vals: FloatArray) -> IdArray:
    """The permutation ordering ``vals`` descending, ties by ascending id.

    numpy's default sort is faster than a stable sort or lexsort on large rows; equal values are then
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


def best_k(row: FloatArray, k: int) -> tuple[IdArray, FloatArray]:
    """Exact top-``k`` (1 <= k) of ``row``: ids and values by descending value, then ascending id.

    The row is viewed as ``rows x cols`` and reduced to one maximum per column (a single vectorised pass). The k-th
    largest column maximum ``thr`` is a lower bound on the true k-th largest value (k distinct columns hold a value
    >= thr), so the true top-k lies in the columns whose maximum is >= thr, usually about k of them. Only those
    columns are read again. Rows whose ties defeat the bound fall back to a scan for ``row >= thr``.
    """
    n = row.size
    k = min(k, n)
    if k <= _C_TOP_K_MAX and row.dtype == np.float32 and row.flags.c_contiguous:
        # one pass in C: faster than the numpy passes below, most of all right after a decode has evicted the caches
        best = np.empty(k, dtype=np.int32)
        best_vals = np.empty(k, dtype=np.float32)
        got = lib.llamacffi_top_k(
            ffi.from_buffer("float[]", row),
            n,
            k,
            ffi.from_buffer("int32_t[]", best),
            ffi.from_buffer("float[]", best_vals),
        )
        if got < 0:
            raise nan_error()
        return best[:got].astype(np.intp), best_vals[:got]
    rows, cols = _plan(n)
    if n < 4096 or 4 * k * rows > n:
        if row.max() != row.max():
            raise nan_error()
        return order_desc(np.arange(n), row, k)
    main = row[: rows * cols].reshape(rows, cols)
    colmax = main.max(axis=0)
    tail = row[rows * cols :]  # fewer than `rows` entries: each is its own column
    allmax = np.concatenate((colmax, tail)) if tail.size else colmax
    if allmax.max() != allmax.max():
        raise nan_error()
    thr = np.partition(allmax, allmax.size - k)[allmax.size - k]
    if thr == -math.inf:
        # fewer than k finite logits (most tokens banned): all the finite ones, then the lowest -inf ids
        finite = row > thr
        ids = np.flatnonzero(finite)
        ids = np.concatenate((ids, np.flatnonzero(~finite)[: k - ids.size]))
        return order_desc(ids, row[ids], k)
    hit = np.flatnonzero(colmax >= thr)
    if hit.size * rows > n // 4:
        ids = np.flatnonzero(row >= thr)
        return order_desc(ids, row[ids], k)
    sub = main[:, hit]
    r, c = np.nonzero(sub >= thr)
    ids = r * cols + hit[c]
    vals = sub[r, c]
    if tail.size:
        t = np.flatnonzero(tail >= thr)
        if t.size:
            ids = np.concatenate((ids, t + rows * cols))
            vals = np.concatenate((vals, tail[t]))
    return order_desc(ids, vals, k)


def top_k_indices(logits: FloatArray, k: int) -> IdArray:
    """Ids of the ``k`` highest logits, by descending logit then ascending id (exact; ``k`` is clipped to n_vocab).

    Equal to ``np.argsort(-logits, kind="stable")[:k]`` but costs about one pass over the row.
    """
    row = as_logits(logits)
    k = as_int("k", k, 1)
    return best_k(row, k)[0]


def top_p_count(probs: FloatArray, p: float) -> int:
    """How many of ``probs`` (sorted descending) top-p keeps: the shortest prefix whose sum is >= ``p``, at least 1.

    As in llama.cpp, when rounding keeps the total below ``p`` every entry is kept.
    """
    cum = np.cumsum(probs, dtype=np.float64)
    return max(1, min(int(np.searchsorted(cum, p, side="left")) + 1, cum.size))


def unique_counts(window: npt.NDArray[np.integer], n_vocab: int, what: str) -> tuple[IdArray, IdArray]:
    """Sorted distinct ids of ``window`` and how often each occurs (cheaper than np.unique on small windows);
    InvalidTokenError naming ``what`` for an id outside ``[0, n_vocab)``."""
    s = np.sort(window)
    check_ids(s, n_vocab, what)  # before the cast, which would wrap ids of 2**63 and more
    s = s.astype(np.intp, copy=False)
    first = np.empty(s.size, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return s[starts], np.diff(np.append(starts, s.size))


def history_window(history: HistoryLike, last_n: int) -> npt.NDArray[np.integer]:
    """The last ``last_n`` ids of ``history`` (all of it for -1) as an integer array."""
    if not isinstance(history, (np.ndarray, list, tuple)):
        history = list(history)
    if last_n > 0:
        history = history[-last_n:]
    arr = np.asarray(history)
    if arr.size == 0:
        return np.empty(0, dtype=np.intp)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InvalidTokenError(
            f"history must be a 1-D sequence of int token ids, got dtype {arr.dtype} and shape {arr.shape}"
        )
    return arr


def penalize_values(vals: FloatArray, counts: IdArray, repeat: float, freq: float, present: float) -> FloatArray:
    """llama.cpp's penalties on the logits ``vals`` of tokens seen ``counts`` (> 0) times, in ``vals``'s precision."""
    f = vals.dtype.type
    out = np.where(vals <= 0, vals * f(repeat), vals / f(repeat))
    out -= counts.astype(vals.dtype) * f(freq) + f(present)
    return out


def penalize(
    logits: FloatArray,
    history: HistoryLike,
    *,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    penalty_last_n: int = 64,
) -> tuple[IdArray, FloatArray]:
    """The penalised logits of the tokens in the last ``penalty_last_n`` ids of ``history`` (-1: all, 0: none).

    Returns ``(ids, new_logits)``, ids sorted ascending; ``logits`` is not modified. For each id seen ``c`` times:
    ``logit = logit / repeat_penalty if logit > 0 else logit * repeat_penalty``, then
    ``logit -= c * frequency_penalty + presence_penalty`` (llama.cpp's ``llama_sampler_penalties``).
    """
    row = as_logits(logits)
    params = Params(1.0, 0, 1.0, 0.0, repeat_penalty, frequency_penalty, presence_penalty, penalty_last_n, None, None)
    if params.penalty_last_n == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=row.dtype)
    window = history_window(history, params.penalty_last_n)
    if window.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=row.dtype)
    ids, counts = unique_counts(window, row.size, "history")
    return ids, penalize_values(
        row[ids], counts, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
    )


def check_ids(sorted_ids: npt.NDArray[np.integer], n_vocab: int, what: str) -> None:
    if sorted_ids.size and (sorted_ids[0] < 0 or sorted_ids[-1] >= n_vocab):
        bad = int(sorted_ids[0]) if sorted_ids[0] < 0 else int(sorted_ids[-1])
        raise bad_token(bad, n_vocab, what)


def merge_overrides(
    ids: IdArray, vals: FloatArray, o_ids: IdArray, o_vals: FloatArray, k: int
) -> tuple[IdArray, FloatArray]:
    """Top-k of (ids, vals) with the entries of the sorted override ids replaced by their override values."""
    pos = np.minimum(np.searchsorted(o_ids, ids), o_ids.size - 1)
    keep = o_ids[pos] != ids
    return order_desc(np.concatenate((ids[keep], o_ids)), np.concatenate((vals[keep], o_vals)), k)


def _first_above(cdf: npt.NDArray[np.float64], target: float, weights: FloatArray) -> int:
    """First index where the running sum ``cdf`` of ``weights`` exceeds ``target``; never a zero-weight one."""
    i = int(np.searchsorted(cdf, target, side="right"))
    if i >= cdf.size:  # the target rounded up to the total: take the last entry with mass
        i = int(np.flatnonzero(weights)[-1])
    return i


def draw(weights: FloatArray, uniform: float) -> int:
    """Index drawn with probability proportional to ``weights`` (>= 0, not all 0), by inverting the CDF at
    ``uniform`` (in [0, 1)).

    A cumulative sum over a whole row is sequential, so long rows are cut into blocks: summing the blocks is
    vectorised, and only the block that holds the target is accumulated.
    """
    size = weights.size
    if size <= 8 * _DRAW_BLOCK:
        cdf = np.cumsum(weights, dtype=np.float64)
        return _first_above(cdf, uniform * cdf[-1], weights)
    blocks = size // _DRAW_BLOCK
    sums = weights[: blocks * _DRAW_BLOCK].reshape(blocks, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    if size > blocks * _DRAW_BLOCK:
        sums = np.append(sums, weights[blocks * _DRAW_BLOCK :].sum(dtype=np.float64))
    csum = np.cumsum(sums)
    target = uniform * csum[-1]
    b = _first_above(csum, target, sums)
    start = b * _DRAW_BLOCK
    block = weights[start : start + _DRAW_BLOCK]
    inner = np.cumsum(block, dtype=np.float64)
    if b:
        inner += csum[b - 1]
    return start + _first_above(inner, target, block)
