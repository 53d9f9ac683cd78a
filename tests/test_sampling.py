"""Tests of llamacffi.sampling: the pure-numpy Sampler against brute-force references, and NativeSampler."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacffi import ownership
from llamacffi.errors import ClosedError, GrammarError, InvalidArgumentError, InvalidTokenError
from llamacffi.raw import ffi, lib
from llamacffi.sampling import NativeSampler, Sampler, greedy, penalize, top_k_indices, top_p_count

F32 = npt.NDArray[np.float32]


def normal_row(n: int, seed: int = 0, scale: float = 1.0) -> F32:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def read_only(row: F32) -> F32:
    """A read-only row, like a zero-copy view of llama.cpp's logits: any write raises."""
    view = row.view()
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------------------- brute-force references


def ref_top_k(row: F32, k: int) -> npt.NDArray[np.intp]:
    return np.argsort(-row, kind="stable")[:k]


def ref_top_p_count(probs: Sequence[float], p: float) -> int:
    total = 0.0
    for i, q in enumerate(probs):
        total += q
        if total >= p:
            return i + 1
    return len(probs)


def ref_penalized(row: F32, history: Sequence[int], last_n: int, rep: float, freq: float, pres: float) -> F32:
    """The whole row after llama.cpp's penalties, token by token in float32."""
    out = row.copy()
    window = list(history) if last_n == -1 else ([] if last_n == 0 else list(history)[-last_n:])
    f = np.float32
    for t in set(window):
        c = window.count(t)
        x = out[t]
        x = x * f(rep) if x <= 0 else x / f(rep)
        out[t] = x - (f(c) * f(freq) + f(pres))
    return out


def ref_sample(
    row: F32,
    history: Sequence[int] | None,
    u: float,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    penalty_last_n: int = 64,
    logit_bias: dict[int, float] | None = None,
) -> int:
    """Sampler's pipeline on a full copy of the row, with brute-force sorting; ``u`` is the uniform draw."""
    x = row.copy()
    for t, b in (logit_bias or {}).items():
        x[t] = x[t] + np.float32(b)
    if history is not None and (repeat_penalty, frequency_penalty, presence_penalty) != (1.0, 0.0, 0.0):
        x = ref_penalized(x, history, penalty_last_n, repeat_penalty, frequency_penalty, presence_penalty)
    if temperature <= 0:
        return int(np.argmax(x))
    n = x.size
    if 0 < top_k < n or top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        if 0 < top_k < n:
            order = order[:top_k]
    else:
        order = np.arange(n)
    vals = x[order]
    top = vals.max()
    if top_p < 1.0:
        probs = np.exp(vals - top).astype(np.float64)
        probs /= probs.sum()
        keep = ref_top_p_count(probs.tolist(), top_p)
        order, vals = order[:keep], vals[:keep]
    if min_p > 0.0:
        mask = vals >= np.float32(top) + np.float32(math.log(min_p))
        order, vals = order[mask], vals[mask]
    w = np.exp((vals - top) / np.float32(temperature))  # float32 exp, double sum, as llama.cpp's dist
    cdf = np.cumsum(w, dtype=np.float64)
    i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return int(order[min(i, order.size - 1)])


# --------------------------------------------------------------------------------------------------- greedy / top-k


def test_greedy_is_argmax() -> None:
    for seed in range(20):
        row = read_only(normal_row(49152, seed))
        assert greedy(row) == int(np.argmax(row))
        assert type(greedy(row)) is int
    tied = np.zeros(100, dtype=np.float32)
    tied[[7, 30, 99]] = 5.0
    assert greedy(tied) == 7


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 1e-60])
@pytest.mark.parametrize("top_k", [0, 40])
def test_zero_and_tiny_temperature_are_greedy(temperature: float, top_k: int) -> None:
    s = Sampler(temperature=temperature, top_k=top_k, seed=1)
    assert s.greedy == (temperature == 0.0)
    for seed in range(20):
        row = read_only(normal_row(49152, seed))
        assert s.sample(row) == int(np.argmax(row))


@pytest.mark.parametrize("n", [100, 4096, 49152, 151936, 262144])
@pytest.mark.parametrize("k", [1, 40, 200])
def test_top_k_indices_matches_argsort(n: int, k: int) -> None:
    for seed in range(3):
        row = read_only(normal_row(n, seed))
        np.testing.assert_array_equal(top_k_indices(row, k), ref_top_k(row, k))


def test_top_k_indices_rejects_bad_k() -> None:
    with pytest.raises(InvalidArgumentError):
        top_k_indices(normal_row(10), 0)


@st.composite
def tricky_rows(draw: st.DrawFn) -> tuple[F32, int]:
    n = draw(st.sampled_from([7, 1000, 4096, 5000, 49152, 70001, 262144]))
    k = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.sampled_from([0, 1, 4, 1000]))  # 0: continuous, else few distinct values (many ties)
    row = rng.standard_normal(n).astype(np.float32)
    if levels:
        row = np.round(row * levels).astype(np.float32)
    inf_frac = draw(st.sampled_from([0.0, 0.01, 0.5, 0.999, 1.0]))
    row[rng.random(n) < inf_frac] = -np.inf
    if draw(st.booleans()):
        row[rng.integers(0, n, 3)] = row.max() if np.isfinite(row.max()) else 0.0  # ties at the top
    return row, k


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tricky_rows())
def test_top_k_indices_exact_with_ties_and_inf(case: tuple[F32, int]) -> None:
    row, k = case
    np.testing.assert_array_equal(top_k_indices(read_only(row), k), ref_top_k(row, k))


def test_top_k_never_leaves_the_top_k() -> None:
    for seed in range(10):
        row = read_only(normal_row(49152, seed, scale=0.3))  # flat enough that all of the top 40 get drawn
        allowed = set(ref_top_k(row, 40).tolist())
        s = Sampler(top_k=40, temperature=1.5, seed=seed)
        drawn = {s.sample(row) for _ in range(300)}
        assert drawn <= allowed
        assert len(drawn) > 20


# ----------------------------------------------------------------------------------------------- top-p / min-p


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60), st.floats(0.01, 1.0))
def test_top_p_count_is_smallest_prefix_reaching_p(weights: list[float], p: float) -> None:
    w = np.sort(np.asarray(weights, dtype=np.float64) + 1e-3)[::-1]
    probs = w / w.sum()
    count = top_p_count(probs, p)
    assert count == ref_top_p_count(probs.tolist(), p)
    assert 1 <= count <= probs.size
    if count < probs.size:
        assert probs[:count].sum() >= p - 1e-12
    assert count == 1 or probs[: count - 1].sum() < p


@pytest.mark.parametrize("top_k", [0, 100])
def test_top_p_emits_only_the_nucleus(top_k: int) -> None:
    row = normal_row(49152, 3, scale=4.0)
    x = row[ref_top_k(row, top_k)] if top_k else np.sort(row)[::-1]
    probs = np.exp(x.astype(np.float64) - x.max())
    probs /= probs.sum()
    nucleus = set(ref_top_k(row, ref_top_p_count(probs.tolist(), 0.8) + 1).tolist())  # +1: rounding slack
    s = Sampler(top_k=top_k, top_p=0.8, seed=5)
    drawn = {s.sample(read_only(row)) for _ in range(300)}
    assert drawn <= nucleus
    assert len(drawn) > 1


@pytest.mark.parametrize("top_k", [0, 200])
def test_min_p_emits_only_tokens_above_the_floor(top_k: int) -> None:
    for seed in range(5):
        row = normal_row(49152, seed, scale=3.0)
        s = Sampler(top_k=top_k, min_p=0.1, temperature=2.0, seed=seed)
        probs = np.exp(row.astype(np.float64) - row.max())
        for _ in range(100):
            t = s.sample(read_only(row))
            assert probs[t] >= 0.1 * probs.max() * (1 - 1e-6)


# ------------------------------------------------------------------------------- pipeline against the reference

PIPELINES: list[dict[str, Any]] = [
    dict(top_k=40, temperature=0.8),
    dict(top_k=40, temperature=0.8, top_p=0.9, min_p=0.05),
    dict(top_k=1000, temperature=1.3, top_p=0.5),
    dict(top_k=0, temperature=1.0),
    dict(top_k=0, temperature=0.7, min_p=0.2),
    dict(top_k=50, temperature=1.0, repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.5, penalty_last_n=16),
    dict(top_k=50, temperature=1.0, repeat_penalty=1.1, penalty_last_n=-1, logit_bias={3: -math.inf, 9: 2.5}),
    dict(top_k=0, temperature=0.9, presence_penalty=1.0, logit_bias={1: 1.0}),
    dict(temperature=0.0, repeat_penalty=2.0, frequency_penalty=0.5, logit_bias={0: 0.5}),
]


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(range(len(PIPELINES))), st.integers(0, 2**32 - 1), st.sampled_from([300, 4096, 49152]))
def test_sampler_matches_brute_force_reference(which: int, seed: int, n: int) -> None:
    kw = PIPELINES[which]
    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(n) * 3).astype(np.float32)
    top = np.argsort(-row)[:30]
    history = np.concatenate((rng.choice(top, 20), rng.integers(0, n, 20))).astype(np.int32)
    s = Sampler(seed=seed, **kw)
    draws = np.random.default_rng(seed)
    for _ in range(5):
        got = s.sample(read_only(row), history)
        u = 0.0 if s.greedy else float(draws.random())
        assert got == ref_sample(row, history.tolist(), u, **kw)


# ---------------------------------------------------------------------------------------- penalties and biases


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 99), max_size=80),
    st.sampled_from([-1, 0, 1, 5, 64]),
    st.floats(0.1, 3.0),
    st.floats(-2.0, 2.0),
    st.floats(-2.0, 2.0),
    st.integers(0, 1000),
)
def test_penalize_matches_formula(
    history: list[int], last_n: int, rep: float, freq: float, pres: float, seed: int
) -> None:
    row = normal_row(100, seed, scale=3.0)
    row[5] = 0.0
    ids, vals = penalize(
        read_only(row),
        np.asarray(history, dtype=np.int32),
        repeat_penalty=rep,
        frequency_penalty=freq,
        presence_penalty=pres,
        penalty_last_n=last_n,
    )
    expected = ref_penalized(row, history, last_n, rep, freq, pres)
    window = history if last_n == -1 else ([] if last_n == 0 else history[-last_n:])
    np.testing.assert_array_equal(ids, sorted(set(window)))
    np.testing.assert_array_equal(vals, expected[ids])
    assert vals.dtype == np.float32


def test_penalties_steer_greedy() -> None:
    row = np.arange(10, dtype=np.float32)  # token 9 is the best, 8 the next
    assert Sampler(temperature=0).sample(row, [9]) == 9  # penalties off by default
    assert Sampler(temperature=0, presence_penalty=1.5).sample(row, [9]) == 8
    assert Sampler(temperature=0, presence_penalty=1.5, penalty_last_n=1).sample(row, [9, 8]) == 9
    assert Sampler(temperature=0, presence_penalty=1.5, penalty_last_n=0).sample(row, [9]) == 9
    assert Sampler(temperature=0, repeat_penalty=2.0).sample(row, [9]) == 8  # 9 / 2 < 8


def test_logit_bias_bans_and_forces() -> None:
    row = read_only(normal_row(49152, 0))
    best = int(np.argmax(row))
    assert Sampler(temperature=0, logit_bias={best: -math.inf}).sample(row) != best
    s = Sampler(top_k=40, logit_bias={best: -math.inf}, seed=0)
    assert all(s.sample(row) != best for _ in range(200))
    worst = int(np.argmin(row))
    for kw in (dict(top_k=40), dict(top_k=0), dict(temperature=0.0)):
        s = Sampler(logit_bias={worst: 100.0}, seed=1, **kw)  # type: ignore[arg-type]
        assert all(s.sample(row) == worst for _ in range(20))


def test_input_is_never_written() -> None:
    row = read_only(normal_row(49152, 0))
    before = row.copy()
    s = Sampler(
        top_k=40,
        top_p=0.9,
        min_p=0.01,
        repeat_penalty=1.5,
        frequency_penalty=0.1,
        logit_bias={1: 2.0, 2: -math.inf},
        seed=0,
    )
    for _ in range(10):
        s.sample(row, [1, 2, 3, 3, 4])
    Sampler(top_k=0, repeat_penalty=1.5, logit_bias={1: 2.0}, seed=0).sample(row, [1, 2])
    np.testing.assert_array_equal(row, before)


def test_float64_logits_and_lists() -> None:
    row = normal_row(5000, 0).astype(np.float64)
    assert Sampler(temperature=0).sample(row) == int(np.argmax(row))
    assert Sampler(temperature=0).sample(row.tolist()) == int(np.argmax(row))  # type: ignore[arg-type]
    assert Sampler(top_k=1, seed=0).sample(row) == int(np.argmax(row))


@pytest.mark.parametrize("cls", [Sampler, NativeSampler])
def test_positive_infinity_wins(cls: type) -> None:
    row = normal_row(5000, 0)
    row[[10, 20]] = np.inf
    row[30] = -np.inf
    for kw in (dict(top_k=40), dict(top_k=0), dict(temperature=0.0), dict(min_p=0.1, repeat_penalty=1.5)):
        s = cls(seed=0, **kw)
        assert {s.sample(row) for _ in range(50)} == ({10} if s.greedy else {10, 20})
    # the two share the mass equally, so top-p 0.5 keeps the first (lowest id) alone
    s = cls(top_p=0.5, seed=0)
    assert {s.sample(row) for _ in range(20)} == {10}


# ------------------------------------------------------------------------------------------------ determinism


def test_seeded_determinism() -> None:
    row = read_only(normal_row(49152, 0, scale=0.5))
    kw = dict(top_k=200, temperature=1.0)
    s1, s2, s3 = Sampler(seed=42, **kw), Sampler(seed=42, **kw), Sampler(seed=43, **kw)  # type: ignore[arg-type]
    seq1 = [s1.sample(row) for _ in range(30)]
    seq2 = [s2.sample(row) for _ in range(30)]
    seq3 = [s3.sample(row) for _ in range(30)]
    assert seq1 == seq2
    assert seq1 != seq3
    s1.reset()
    assert [s1.sample(row) for _ in range(30)] == seq1
    s1.reseed(43)
    assert s1.seed == 43
    assert [s1.sample(row) for _ in range(30)] == seq3


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-0.1),
        dict(temperature=math.nan),
        dict(top_k=-1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_p=math.nan),
        dict(min_p=-0.1),
        dict(min_p=1.1),
        dict(repeat_penalty=0.0),
        dict(repeat_penalty=-1.0),
        dict(penalty_last_n=-2),
        dict(logit_bias={"a": 1.0}),
        dict(logit_bias={1.5: 1.0}),
        dict(logit_bias={True: 1.0}),
        dict(logit_bias={1: math.nan}),
        dict(seed=-1),
        dict(frequency_penalty=math.inf),
        dict(top_k=1.5),
        dict(top_k=True),
        dict(temperature="hot"),
        dict(penalty_last_n=None),
        dict(temperature=math.inf),
        dict(logit_bias={1: math.inf}),
        # float32 would overflow to inf (and give NaN next to a banned logit)
        dict(temperature=1e39),
        dict(repeat_penalty=1e39),
        dict(presence_penalty=-1e39),
        dict(logit_bias={1: 1e300}),
    ],
)
@pytest.mark.parametrize("cls", [Sampler, NativeSampler])
def test_bad_parameters(cls: type, kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        cls(**kw)
    assert isinstance(info.value, ValueError)


def test_negative_bias_id_is_a_token_error() -> None:
    with pytest.raises(InvalidTokenError):
        Sampler(logit_bias={-1: 1.0})


@pytest.mark.parametrize(
    "logits",
    [
        np.zeros((2, 3), dtype=np.float32),
        np.zeros(3, dtype=np.int32),
        np.zeros(0, dtype=np.float32),
        "abc",
    ],
)
def test_bad_logits(logits: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        Sampler().sample(logits)
    with pytest.raises(InvalidArgumentError):
        greedy(logits)
    with pytest.raises(InvalidArgumentError):
        NativeSampler().sample(logits)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=40), dict(top_k=0), dict(top_k=0, top_p=0.5)])
def test_nan_logits(kw: dict[str, Any]) -> None:
    row = normal_row(49152, 0)
    row[123] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        Sampler(**kw).sample(row)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=40), dict(top_k=0)])
def test_all_banned(kw: dict[str, Any]) -> None:
    row = np.full(5000, -np.inf, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="banned"):
        Sampler(**kw).sample(row)
    row = np.zeros(10, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="banned"):
        Sampler(logit_bias={i: -math.inf for i in range(10)}, **kw).sample(row)


def test_bad_token_ids_name_the_id_and_vocab() -> None:
    row = normal_row(100, 0)
    s = Sampler(repeat_penalty=1.2)
    with pytest.raises(InvalidTokenError, match=r"\b100\b.*\b100 tokens"):
        s.sample(row, [1, 100])
    with pytest.raises(InvalidTokenError, match=r"-3"):
        s.sample(row, [1, -3])
    with pytest.raises(InvalidTokenError, match=r"\b250\b.*\b100 tokens"):
        Sampler(logit_bias={250: 1.0}).sample(row)
    with pytest.raises(InvalidTokenError):
        s.sample(row, [[1, 2]])
    with pytest.raises(InvalidTokenError):
        penalize(row, [500], repeat_penalty=1.5)
    # outside the window, ids are not looked at
    assert Sampler(repeat_penalty=1.2, penalty_last_n=1, temperature=0).sample(row, [500, 1]) == int(np.argmax(row))


def test_ids_past_int64_are_named_as_given() -> None:
    # ids beyond any vocabulary are token errors naming the id given, not overflows or ids wrapped by a cast
    row = normal_row(100, 0)
    for cls in (Sampler, NativeSampler):
        for big in (2**31, 2**63):
            with pytest.raises(InvalidTokenError, match=str(big)):
                cls(logit_bias={big: 1.0})
    s = Sampler(repeat_penalty=1.2)
    with pytest.raises(InvalidTokenError, match=str(2**63)):
        s.sample(row, [2**63])
    with pytest.raises(InvalidTokenError, match=str(2**64 - 1)):
        s.sample(row, np.array([3, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(InvalidTokenError, match=str(2**31)):
        NativeSampler().accept(2**31)  # no vocabulary yet: still no int32 id


def test_a_closed_sampler_raises() -> None:
    row = normal_row(100, 0)
    s = Sampler(seed=1)
    s.sample(row)
    s.close()
    s.close()
    for call in (lambda: s.sample(row), s.reset, lambda: s.reseed(2)):
        with pytest.raises(ClosedError):
            call()
    with pytest.raises(ClosedError), s:
        pass


def test_sampler_is_one_thread_at_a_time() -> None:
    import threading
    import time

    from llamacffi.errors import LlamaError

    s = Sampler(top_k=3, seed=1)
    row = normal_row(100, 0)
    with s._busy:  # what a call under way in another thread holds
        for call in (lambda: s.sample(row), s.reset):
            with pytest.raises(LlamaError, match="in use by another thread"):
                call()
    s._busy.acquire()
    threading.Timer(0.3, s._busy.release).start()
    t0 = time.perf_counter()
    s.close()  # waits for the call under way
    assert time.perf_counter() - t0 >= 0.25


# ------------------------------------------------------------------------------------------------ NativeSampler


def test_native_greedy_is_argmax() -> None:
    with NativeSampler(temperature=0.0) as s:
        assert s.greedy
        for seed in range(20):
            row = read_only(normal_row(49152, seed))
            assert s.sample(row) == int(np.argmax(row))


def test_native_top_k_stays_in_top_k() -> None:
    for seed in range(5):
        row = read_only(normal_row(49152, seed, scale=0.3))
        allowed = set(ref_top_k(row, 40).tolist())
        with NativeSampler(top_k=40, temperature=1.5, seed=seed) as s:
            drawn = {s.sample(row) for _ in range(200)}
        assert drawn <= allowed
        assert len(drawn) > 20


def test_native_seeded_determinism_and_reset() -> None:
    row = read_only(normal_row(49152, 0, scale=0.5))
    with NativeSampler(top_k=100, seed=7) as a, NativeSampler(top_k=100, seed=7) as b:
        seq = [a.sample(row) for _ in range(20)]
        assert seq == [b.sample(row) for _ in range(20)]
        a.reset()
        assert [a.sample(row) for _ in range(20)] == seq


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([-1, 0, 4, 64]))
def test_native_penalties_and_bias_match_sampler(seed: int, last_n: int) -> None:
    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(3000) * 2).astype(np.float32)
    top = np.argsort(-row)[:10]
    history = rng.choice(top, 12).tolist()
    bias = {int(top[0]): -math.inf, int(rng.integers(3000)): 3.0}
    kw: dict[str, Any] = dict(
        temperature=0.0,
        repeat_penalty=1.4,
        frequency_penalty=0.3,
        presence_penalty=0.2,
        penalty_last_n=last_n,
        logit_bias=bias,
    )
    with NativeSampler(**kw) as native:
        for t in history:
            native.accept(t)
        expected = Sampler(**kw).sample(row, history)
        assert native.sample(row) == expected


def test_native_bans_and_errors() -> None:
    row = normal_row(1000, 0)
    best = int(np.argmax(row))
    with NativeSampler(temperature=0.0, logit_bias={best: -math.inf}) as s:
        assert s.sample(row) != best
        with pytest.raises(InvalidArgumentError):
            s.sample(normal_row(999, 0))  # built for 1000 entries
        with pytest.raises(InvalidTokenError, match=r"\b1000\b"):
            s.accept(1000)
        with pytest.raises(InvalidTokenError):
            s.accept(-1)
    with (
        NativeSampler(top_k=5, logit_bias={i: -math.inf for i in range(10)}) as s,
        pytest.raises(InvalidArgumentError, match="banned"),
    ):
        s.sample(np.zeros(10, dtype=np.float32))
    with pytest.raises(InvalidTokenError):
        NativeSampler(logit_bias={2000: 1.0}).sample(row)
    nan_row = row.copy()
    nan_row[3] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        NativeSampler().sample(nan_row)


def test_native_tiny_temperature_is_refused_not_nan() -> None:
    # llama.cpp divides the logits by the temperature: 1e-40 overflows them to +inf, and its softmax to NaN
    row = np.array([1.0, 2.0, 3.0, -np.inf] + [0.5] * 96, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="at least 1e-06"):
        NativeSampler(temperature=1e-40)
    assert NativeSampler(temperature=1e-6, seed=1).sample(row) == 2
    assert Sampler(temperature=1e-40, seed=1).sample(row) == 2  # the numpy sampler subtracts the max first


def test_native_sampler_is_one_thread_at_a_time() -> None:
    import threading
    import time

    from llamacffi.errors import LlamaError

    s = NativeSampler(top_k=3, repeat_penalty=1.2, seed=1)
    row = normal_row(100, 0)
    s.sample(row)
    with s._busy:  # what a call under way in another thread holds
        for call in (lambda: s.sample(row), lambda: s.accept(1), s.reset):
            with pytest.raises(LlamaError, match="in use by another thread"):
                call()
    s._busy.acquire()
    threading.Timer(0.3, s._busy.release).start()
    t0 = time.perf_counter()
    s.close()  # waits for the call under way instead of freeing what it uses
    assert time.perf_counter() - t0 >= 0.25
    with pytest.raises(ClosedError):
        s.sample(row)


def test_native_close() -> None:
    s = NativeSampler(top_k=3, seed=1)
    s.sample(normal_row(100, 0))
    s.close()
    s.close()
    with pytest.raises(ClosedError):
        s.sample(normal_row(100, 0))
    with pytest.raises(ClosedError):
        s.accept(1)
    with pytest.raises(ClosedError):
        s.reset()
    with NativeSampler() as t:
        pass
    with pytest.raises(ClosedError):
        t.sample(normal_row(100, 0))


def test_native_grammar_needs_vocab() -> None:
    with pytest.raises(InvalidArgumentError):
        NativeSampler(grammar='root ::= "a"')


# ------------------------------------------------------------------------------------- grammar, on a real vocab


class _Vocab:
    """A vocabulary over a model loaded through the raw layer, its pointer owned through llamacffi.ownership."""

    def __init__(self, owner: ownership.Owner, ptr: Any) -> None:
        self.owner = owner
        self._ptr = ptr
        self.n_tokens = int(lib.llama_vocab_n_tokens(ptr))


@pytest.fixture(scope="module")
def smollm2_vocab() -> Iterator[_Vocab]:
    from llamacffi import models

    path = models.fetch("smollm2-135m")  # the cached file, or downloaded once
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    assert model != ffi.NULL
    owner = ownership.Owner(model, lambda p, _lib=lib: _lib.llama_model_free(p), "model", "struct llama_model *")
    try:
        yield _Vocab(owner, lib.llama_model_get_vocab(model))
    finally:
        owner.close()


def piece(vocab: _Vocab, token: int) -> str:
    buf = ffi.new("char[]", 256)
    n = lib.llama_token_to_piece(vocab._ptr, token, buf, 256, 0, False)
    assert n >= 0
    return ffi.unpack(buf, n).decode()


GRAMMAR = 'root ::= ("yes" | "no") "."'


def _grammar_answer(vocab: _Vocab, s: NativeSampler, rng: np.random.Generator) -> str:
    """Up to 8 tokens drawn from random logits under GRAMMAR, until the answer's final period."""
    text = ""
    for _ in range(8):
        text += piece(vocab, s.sample(rng.standard_normal(vocab.n_tokens).astype(np.float32)))
        if text.endswith("."):
            break
    return text


def test_native_grammar_constrains_output(smollm2_vocab: _Vocab) -> None:
    vocab = smollm2_vocab
    rng = np.random.default_rng(0)
    seen = set()
    with NativeSampler(vocab=vocab, grammar=GRAMMAR, top_k=0, temperature=1.0, seed=3) as s:
        for _attempt in range(12):
            s.reset()
            text = _grammar_answer(vocab, s, rng)
            assert text in ("yes.", "no.")
            seen.add(text)
            # the grammar is complete: only end-of-generation tokens remain possible
            end = s.sample(rng.uniform(-1, 1, vocab.n_tokens).astype(np.float32))
            assert lib.llama_vocab_is_eog(vocab._ptr, end)
    assert seen == {"yes.", "no."}


def test_native_grammar_with_greedy_and_top_k(smollm2_vocab: _Vocab) -> None:
    vocab = smollm2_vocab
    rng = np.random.default_rng(1)
    for kw in (dict(temperature=0.0), dict(top_k=40, temperature=0.8)):
        with NativeSampler(vocab=vocab, grammar=GRAMMAR, seed=2, **kw) as s:  # type: ignore[arg-type]
            assert _grammar_answer(vocab, s, rng) in ("yes.", "no.")


def tokenize(vocab: _Vocab, text: str) -> list[int]:
    buf = ffi.new("llama_token[]", 64)
    n = lib.llama_tokenize(vocab._ptr, text.encode(), len(text.encode()), buf, 64, False, False)
    assert n > 0
    return list(buf[0:n])


def test_native_grammar_rejects_forbidden_accept(smollm2_vocab: _Vocab) -> None:
    vocab = smollm2_vocab
    with NativeSampler(vocab=vocab, grammar=GRAMMAR, temperature=0.0) as s:
        for t in tokenize(vocab, "."):
            with pytest.raises(GrammarError):
                s.accept(t)  # "." cannot come first
        for t in tokenize(vocab, "yes"):
            s.accept(t)
        row = np.zeros(vocab.n_tokens, dtype=np.float32)
        assert piece(vocab, s.sample(row)) == "."  # only "." is allowed after "yes"
        assert lib.llama_vocab_is_eog(vocab._ptr, s.sample(row))


@pytest.mark.parametrize(
    "grammar,root",
    [
        ('root ::= "unterminated', "root"),
        ("root ::= undefined_rule", "root"),
        ('root ::= "a"', "start"),
    ],
)
def test_bad_grammar(smollm2_vocab: _Vocab, grammar: str, root: str) -> None:
    with pytest.raises(GrammarError):
        NativeSampler(vocab=smollm2_vocab, grammar=grammar, grammar_root=root)


# ------------------------------------------------------------------------------------------------- edge paths


@pytest.mark.parametrize("n", [70001, 262144 + 17, 49152 + 5])
def test_top_k_finds_winners_in_the_ragged_tail(n: int) -> None:
    row = normal_row(n, 1)
    row[-3:] = [9.0, 8.0, 9.0]  # past the last whole block
    row[5] = 9.0
    for k in (1, 3, 40):
        np.testing.assert_array_equal(top_k_indices(row, k), ref_top_k(row, k))
    assert top_k_indices(row, 3).tolist() == [5, n - 3, n - 1]


def test_history_as_any_sequence() -> None:
    from collections import deque

    row = np.arange(10, dtype=np.float32)
    for history in (deque([9]), range(9, 10), (9,), np.array([9], dtype=np.uint16)):
        assert Sampler(temperature=0, presence_penalty=1.5).sample(row, history) == 8  # type: ignore[arg-type]


def test_many_overrides_copy_the_row_once() -> None:
    rng = np.random.default_rng(0)
    row = normal_row(49152, 0)
    banned = {int(t): -math.inf for t in ref_top_k(row, 6000)}
    kw: dict[str, Any] = dict(top_k=40, logit_bias=banned, repeat_penalty=1.3)
    history = rng.integers(0, 49152, 64).tolist()
    s = Sampler(seed=9, **kw)
    draws = np.random.default_rng(9)
    for _ in range(5):
        assert s.sample(read_only(row), history) == ref_sample(row, history, float(draws.random()), **kw)
    assert Sampler(temperature=0, **kw).sample(row, history) == ref_sample(row, history, 0.0, temperature=0, **kw)


def test_top_p_on_a_flat_row_sorts_everything() -> None:
    row = np.zeros(3000, dtype=np.float32)
    row[::2] = 0.01  # nearly flat: the best 256 hold far less than top_p
    s = Sampler(top_p=0.99, seed=0)
    draws = np.random.default_rng(0)
    for _ in range(20):
        assert s.sample(row) == ref_sample(row, None, float(draws.random()), top_p=0.99)


@pytest.mark.parametrize("n", [1000, 49152])
def test_nan_logits_small_and_large_rows(n: int) -> None:
    row = normal_row(n, 0)
    row[-1] = np.nan
    for kw in (dict(top_k=40), dict(temperature=0.0), dict(top_k=40, repeat_penalty=1.5)):
        with pytest.raises(InvalidArgumentError, match="NaN"):
            Sampler(**kw).sample(row, [1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [1, 40, 128, 129])
def test_top_k_finds_a_nan_anywhere(k: int) -> None:
    # among the first k (all taken), in a block of 16 that holds nothing else of the top k, and in the tail
    for pos in (0, k - 1, 2000, 49151):
        row = normal_row(49152, 1)
        row[pos] = np.nan
        with pytest.raises(InvalidArgumentError, match="NaN"):
            top_k_indices(read_only(row), k)


def test_native_accept_before_first_sample() -> None:
    row = np.arange(100, dtype=np.float32)
    with NativeSampler(temperature=0.0, presence_penalty=5.0) as s:
        assert s.n_vocab is None
        s.accept(99)  # kept until the first row tells the vocabulary size
        assert s.sample(row) == 98
        assert s.n_vocab == 100
        s.reset()
        assert s.sample(row) == 99
    with NativeSampler(temperature=0.0) as s:
        s.accept(500)
        with pytest.raises(InvalidTokenError, match=r"\b500\b"):
            s.sample(row)
        assert s.sample(row) == 99  # the bad token was dropped


def test_native_top_p_and_min_p() -> None:
    row = normal_row(49152, 3, scale=4.0)
    x = np.sort(row)[::-1].astype(np.float64)
    probs = np.exp(x - x[0])
    probs /= probs.sum()
    nucleus = set(ref_top_k(row, ref_top_p_count(probs.tolist(), 0.8) + 1).tolist())
    with NativeSampler(top_p=0.8, seed=5) as s:
        drawn = {s.sample(read_only(row)) for _ in range(200)}
    assert drawn <= nucleus and len(drawn) > 1
    full = np.exp(row.astype(np.float64) - row.max())
    with NativeSampler(min_p=0.1, temperature=2.0, seed=5) as s:
        for _ in range(100):
            assert full[s.sample(read_only(row))] >= 0.1 * (1 - 1e-6)


def test_block_draw_inverts_the_full_cdf() -> None:
    from llamacffi.sampling.kernels import draw as _draw

    rng = np.random.default_rng(0)
    for n in (10, 8192, 8193, 50000, 262144):
        w = rng.random(n).astype(np.float32)
        w[rng.random(n) < 0.5] = 0.0
        w[-1] = 0.0
        cdf = np.cumsum(w, dtype=np.float64)
        for u in [0.0, 1.0 - 2.0**-53, *rng.random(200).tolist()]:
            i = _draw(w, u)
            assert w[i] > 0
            expected = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), int(np.flatnonzero(w)[-1]))
            assert i == expected


@pytest.mark.parametrize("top_k", [0, 40])
def test_draw_frequencies_follow_the_softmax(top_k: int) -> None:
    n = 50000
    probs = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    where = np.array([3, 9000, 20001, 33333, n - 1])
    row = np.full(n, -np.inf, dtype=np.float32)
    row[where] = np.log(probs) * 2.0  # at temperature 2 the softmax gives back `probs`
    s = Sampler(top_k=top_k, temperature=2.0, seed=11)
    draws = np.array([s.sample(row) for _ in range(10000)])
    assert set(draws.tolist()) <= set(where.tolist())
    freq = np.array([(draws == t).mean() for t in where])
    np.testing.assert_allclose(freq, probs, atol=0.015)


@pytest.mark.parametrize(
    "kw,on",
    [
        (dict(), False),
        (dict(repeat_penalty=1.1), True),
        (dict(presence_penalty=2.0), True),
        (dict(presence_penalty=2.0, penalty_last_n=0), False),
        (dict(repeat_penalty=1.0, penalty_last_n=-1), False),
    ],
)
@pytest.mark.parametrize("cls", [Sampler, NativeSampler])
def test_penalties_on_says_whether_the_history_matters(cls: type, kw: dict[str, Any], on: bool) -> None:
    assert cls(**kw).penalties_on is on


def test_penalties_off_means_the_history_is_ignored() -> None:
    row = np.zeros(8, dtype=np.float32)
    row[3] = 1.0
    assert Sampler(temperature=0, presence_penalty=2.0).sample(row, [3]) != 3
    assert Sampler(temperature=0, presence_penalty=2.0, penalty_last_n=0).sample(row, [3]) == 3


def test_native_grammar_shortlist_picks_as_a_whole_row_check(
    smollm2_vocab: _Vocab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows where the free pick is forbidden: the shortlist of the most likely tokens gives the whole-row check's
    # greedy pick, and a sampled pick the grammar allows; with no allowed token in the shortlist, the whole row.
    from llamacffi.sampling import native

    rng = np.random.default_rng(5)
    digits = "root ::= [0-9] [0-9]"
    n = smollm2_vocab.n_tokens
    rows = [rng.normal(size=n).astype(np.float32) for _ in range(6)]
    rows.append(np.where(np.arange(n) < 100, np.float32(50.0), rows[0]))  # the top 100: no digit among them
    picks = []
    for shortlist in (native.SHORTLIST, 10**9):
        monkeypatch.setattr(native, "SHORTLIST", shortlist)
        with NativeSampler(vocab=smollm2_vocab, grammar=digits, temperature=0.0) as s:
            picks.append([(s.reset(), s.sample(row))[1] for row in rows])

    def text(t: int) -> str:
        buf = ffi.new("char[]", 32)
        return ffi.string(buf, lib.llama_token_to_piece(smollm2_vocab._ptr, t, buf, 32, 0, False)).decode()

    assert picks[0] == picks[1]
    assert all(text(t).isdigit() for t in picks[0])
    monkeypatch.setattr(native, "SHORTLIST", 1024)
    with NativeSampler(vocab=smollm2_vocab, grammar=digits, temperature=1.0, top_k=40, seed=1) as s:
        for row in rows:
            s.reset()
            assert text(s.sample(row)).isdigit()


@pytest.mark.parametrize("shortlist", [1024, 10**9])
def test_numpy_sampler_follows_a_grammar(
    smollm2_vocab: _Vocab, monkeypatch: pytest.MonkeyPatch, shortlist: int
) -> None:
    # The numpy sampler honours a grammar as NativeSampler does: free pick first, the grammar's restriction of the
    # row (its shortlist, or the whole row) when the pick is forbidden; the grammar is fed every token.
    from llamacffi.sampling import constraint

    monkeypatch.setattr(constraint, "SHORTLIST", shortlist)
    vocab = smollm2_vocab
    rng = np.random.default_rng(7)
    seen = set()
    for kw in (
        dict(temperature=1.0, seed=3),
        dict(temperature=0.8, top_k=40, top_p=0.9, seed=4),
        dict(temperature=0.0),
    ):
        with Sampler(vocab=vocab, grammar=GRAMMAR, **kw) as s:  # type: ignore[arg-type]
            for _ in range(6):
                s.reset()
                text = _grammar_answer(vocab, s, rng)  # type: ignore[arg-type]
                assert text in ("yes.", "no.")
                seen.add(text)
                end = s.sample(rng.uniform(-1, 1, vocab.n_tokens).astype(np.float32))
                assert lib.llama_vocab_is_eog(vocab._ptr, end)
    assert seen == {"yes.", "no."}
    with pytest.raises(InvalidArgumentError, match="vocab"):
        Sampler(grammar=GRAMMAR)
    with pytest.raises(GrammarError):
        Sampler(vocab=vocab, grammar="root ::= (")
    s = Sampler(vocab=vocab, grammar=GRAMMAR)
    s.close()
    with pytest.raises(ClosedError):
        s.sample(np.zeros(vocab.n_tokens, dtype=np.float32))


# ------------------------------------------------------------------------------------- a grammar that raised

AMBIGUOUS = 'root ::= "a" root? root? root?'  # its parses multiply with each "a" until they pass their bound
CROSSING = 'root ::= "]" !<[2]>* "x"'  # llama.cpp's apply step allows "])" here, its accept step refuses it


def _spend(vocab: _Vocab, which: str) -> Any:
    """A sampler (or Constraint) of AMBIGUOUS fed "a" until it raised GrammarError."""
    from llamacffi.sampling import Constraint

    a = tokenize(vocab, "a")[0]
    obj: Any = (
        Constraint(vocab, AMBIGUOUS)
        if which == "constraint"
        else (NativeSampler if which == "native" else Sampler)(vocab=vocab, grammar=AMBIGUOUS, temperature=0)
    )
    row = np.zeros(vocab.n_tokens, dtype=np.float32)
    row[a] = 5
    with pytest.raises(GrammarError, match="too ambiguous"):
        for _ in range(1000):
            obj.accept(a) if which != "numpy" else obj.sample(row)
    return obj


@pytest.mark.parametrize("which", ["native", "numpy", "constraint"])
def test_a_grammar_that_raised_raises_until_reset(smollm2_vocab: _Vocab, which: str) -> None:
    # llama.cpp's grammar has no parse left then: using it again aborted the process
    obj = _spend(smollm2_vocab, which)
    a = tokenize(smollm2_vocab, "a")[0]
    row = np.zeros(smollm2_vocab.n_tokens, dtype=np.float32)
    row[a] = 5
    calls = {
        "native": [lambda: obj.sample(row), lambda: obj.accept(a)],
        "numpy": [lambda: obj.sample(row)],
        "constraint": [lambda: obj.allowed(a), lambda: obj.restrict(row), lambda: obj.accept(a)],
    }[which]
    for call in calls:
        with pytest.raises(GrammarError, match=r"reset\(\)"):
            call()
    obj.reset()  # usable again from the start
    if which == "numpy":
        assert obj.sample(row) == a
    else:
        obj.accept(a)
    obj.close()


def test_a_refused_token_leaves_the_constraint_spent(smollm2_vocab: _Vocab) -> None:
    from llamacffi.sampling import Constraint

    vocab = smollm2_vocab
    c = Constraint(vocab, CROSSING)
    crossing = tokenize(vocab, "])")[0]
    assert piece(vocab, crossing) == "])"
    with pytest.raises(GrammarError, match="refused token"):
        c.accept(crossing, checked=True)
    with pytest.raises(GrammarError, match=r"reset\(\)"):
        c.allowed(crossing)
    c.reset()
    assert not c.allowed(crossing) and c.allowed(tokenize(vocab, "]")[0])


def test_a_spent_grammar_forbids_every_token_in_c() -> None:
    # The C guard on its own, past the Python checks: llama.cpp's apply asserts on a grammar with no parse left,
    # and throws on an id outside the vocabulary.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import numpy as np, llamacffi
        from llamacffi import models
        from llamacffi.raw import ffi, lib
        from llamacffi.sampling.constraint import accept, accepts, make_grammar
        v = llamacffi.Model.load(models.fetch("smollm2-135m"), vocab_only=True).vocab
        a = int(v.tokenize("a", add_special=False)[0])
        g, _ = make_grammar(v, {AMBIGUOUS!r}, "root")

        def logit(token):
            data = ffi.new("llama_token_data[1]", [(token, 1.0, 0.0)])
            lib.llama_sampler_apply(g, ffi.new("llama_token_data_array *", (data, 1, -1, False)))
            return data[0].logit

        assert logit(a) == 1.0 and logit(v.n_tokens + 5) == -np.inf and logit(-1) == -np.inf
        try:
            for _ in range(1000):
                accept(g, a)
        except llamacffi.GrammarError:
            pass
        assert logit(a) == -np.inf and not accepts(g, a)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_grammar_token_ids_and_rows_are_checked(smollm2_vocab: _Vocab) -> None:
    # llama.cpp's grammar looks ids up without a check (std::out_of_range through C: the process's end)
    from llamacffi.sampling import Constraint

    n = smollm2_vocab.n_tokens
    c = Constraint(smollm2_vocab, 'root ::= "a"')
    for bad in (-1, n, n + 5, 2**31, 2**40):
        with pytest.raises(InvalidTokenError, match=str(bad)):
            c.allowed(bad)
        with pytest.raises(InvalidTokenError, match=str(bad)):
            c.accept(bad)
    with pytest.raises(InvalidArgumentError):
        c.allowed(1.5)  # type: ignore[arg-type]
    s = Sampler(vocab=smollm2_vocab, grammar='root ::= "a"', temperature=0)
    for size in (100, n + 100):  # the row's indices are token ids
        row = np.zeros(size, dtype=np.float32)
        row[-1] = 10
        with pytest.raises(InvalidArgumentError, match=f"{size} entries"):
            c.restrict(row)
        with pytest.raises(InvalidArgumentError, match=f"{size} entries"):
            s.sample(row)
    assert piece(smollm2_vocab, s.sample(np.zeros(n, dtype=np.float32))) == "a"


def test_constraint_is_one_thread_at_a_time(smollm2_vocab: _Vocab) -> None:
    from llamacffi.errors import LlamaError
    from llamacffi.sampling import Constraint

    c = Constraint(smollm2_vocab, GRAMMAR)
    row = np.zeros(smollm2_vocab.n_tokens, dtype=np.float32)
    with c._busy:  # what a call under way in another thread holds
        for call in (lambda: c.allowed(1), lambda: c.restrict(row), lambda: c.accept(1), c.reset):
            with pytest.raises(LlamaError, match="in use by another thread"):
                call()
    c.close()
    with pytest.raises(ClosedError):
        c.allowed(1)


@pytest.mark.parametrize(
    ("grammar", "root", "error", "match"),
    [
        ('root ::= "\ud800"', "root", GrammarError, "surrogate"),
        ('root ::= "a"\0((((', "root", GrammarError, "NUL"),
        ('root ::= "a"', "\ud800", InvalidArgumentError, "rule name"),
        ('root ::= "a"', "root\0", InvalidArgumentError, "rule name"),
    ],
)
def test_grammar_text_c_cannot_carry_is_refused(
    smollm2_vocab: _Vocab, grammar: str, root: str, error: type, match: str
) -> None:
    for make in (
        lambda: NativeSampler(vocab=smollm2_vocab, grammar=grammar, grammar_root=root),
        lambda: Sampler(vocab=smollm2_vocab, grammar=grammar, grammar_root=root),
    ):
        with pytest.raises(error, match=match):
            make()
