"""Context: decoding, zero-copy logits, KV-memory operations, states, abort, and bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import llamacffi
from llamacffi import (
    Batch,
    ClosedError,
    Context,
    DecodeAbortedError,
    InvalidArgumentError,
    InvalidTokenError,
    KVCacheFullError,
    LlamaError,
    StateError,
)
from llamacffi.embedding import Embedder
from llamacffi.raw import ffi, lib

THREADS = 2
A = "The quick brown fox jumps over the lazy dog. "
B = "Completely unrelated words about astronomy and stars. "
C = "Then the fox ran into the forest"


def toks(model: llamacffi.Model, text: str, bos: bool = False) -> np.ndarray:
    return model.vocab.tokenize(text, add_special=bos)


def ctx_for(model: llamacffi.Model, **kw: object) -> Context:
    kw.setdefault("n_ctx", 512)
    kw.setdefault("n_threads", THREADS)
    return Context(model, **kw)  # type: ignore[arg-type]


def test_logits_are_a_zero_copy_read_only_view(model: llamacffi.Model) -> None:
    with ctx_for(model) as ctx:
        ctx.decode_tokens(toks(model, A, bos=True))
        view = ctx.logits()
        assert view.dtype == np.float32 and view.shape == (model.vocab.n_tokens,)
        assert not view.flags.owndata and not view.flags.writeable
        copy = ctx.logits_copy()
        assert copy.flags.owndata and np.array_equal(view, copy)
        assert np.isfinite(view).all()


def test_logits_follow_every_decode_and_row(smollm2: llamacffi.Model) -> None:
    # logits() hands back the same view while llama.cpp's row stays where it was (a generation loop); the values
    # must still be the latest decode's, and another row or a reallocated buffer must get a view of its own.
    a = toks(smollm2, A, bos=True)
    with ctx_for(smollm2) as ctx, ctx_for(smollm2) as ref:
        ctx.decode_tokens(a)
        first = ctx.logits_copy()
        token = int(np.argmax(first))
        ctx.decode_token(token, len(a))
        view = ctx.logits()
        assert not np.array_equal(view, first)
        ref.decode_tokens(np.append(a, token))
        np.testing.assert_array_equal(view, ref.logits())
        batch = llamacffi.Batch.from_tokens(a[:3], logits="all")
        ctx.memory.clear()
        with pytest.raises(LlamaError, match=r"3 output rows.*1 logits view"):
            ctx.decode(batch)  # three outputs: llama.cpp would free the buffer that `view` shows
        assert ctx.memory.seq_pos_max(0) == -1  # nothing decoded
        sliced = view[:5]
        del view
        with pytest.raises(LlamaError, match="1 logits view"):
            ctx.decode(batch)  # a slice holds the view too
        del sliced
        ctx.decode(batch)  # the buffer grows, rows 0..2
        rows = [ctx.logits(i).copy() for i in range(3)]
        assert not np.array_equal(rows[0], rows[1]) and np.array_equal(ctx.logits(), rows[2])
        ctx.decode_token(int(a[3]), 3)
        ref.memory.clear()
        ref.decode_tokens(a[:4])
        for i in (-1, 0):  # the one output, as a context that decoded a[:4] at once says
            np.testing.assert_allclose(ctx.logits(i), ref.logits(), atol=2e-2, rtol=1e-3)


def test_seq_rm_then_decode_equals_fresh(model: llamacffi.Model) -> None:
    a, b, c = toks(model, A, bos=True), toks(model, B), toks(model, C)
    with ctx_for(model) as ctx:
        end_a = ctx.decode_tokens(a)
        ctx.decode_tokens(b, start_pos=end_a)
        assert ctx.memory.seq_pos_max(0) == len(a) + len(b) - 1
        assert ctx.memory.seq_rm(0, end_a, -1) is True
        assert ctx.memory.seq_pos_max(0) == end_a - 1
        ctx.decode_tokens(c, start_pos=end_a)
        reused = ctx.logits_copy()
    with ctx_for(model) as fresh:
        fresh.decode_tokens(np.concatenate([a, c]))
        expected = fresh.logits_copy()
    np.testing.assert_allclose(reused, expected, atol=2e-2, rtol=1e-3)
    assert int(np.argmax(reused)) == int(np.argmax(expected))


def test_seq_cp_keep_add_and_positions(smollm2: llamacffi.Model) -> None:
    a = toks(smollm2, A, bos=True)
    with ctx_for(smollm2, n_seq_max=3) as ctx:
        mem = ctx.memory
        assert mem.seq_pos_max(0) == -1 and mem.seq_pos_min(0) == -1
        ctx.decode_tokens(a)
        mem.seq_cp(0, 1, -1, -1)
        assert (mem.seq_pos_min(1), mem.seq_pos_max(1)) == (0, len(a) - 1)
        mem.seq_keep(1)
        assert mem.seq_pos_max(0) == -1 and mem.seq_pos_max(1) == len(a) - 1
        if mem.can_shift:
            mem.seq_add(1, 0, -1, 5)
            assert (mem.seq_pos_min(1), mem.seq_pos_max(1)) == (5, len(a) + 4)
            mem.seq_div(1, 0, -1, 2)
            assert mem.seq_pos_max(1) == (len(a) + 4) // 2
        with pytest.raises(InvalidArgumentError, match="kv_unified"):
            mem.seq_cp(1, 2, 2, 5)  # llama.cpp would abort the process
        mem.clear()
        assert mem.seq_pos_max(1) == -1
        shared = Batch(2, n_seq_max=3)
        shared.add(1, 0, (0, 1), logits=True)
        with pytest.raises(InvalidArgumentError, match="kv_unified"):
            ctx.decode(shared)
    with ctx_for(smollm2, n_seq_max=3, kv_unified=True) as uctx:
        uctx.decode_tokens(a)
        uctx.memory.seq_cp(0, 2, 2, 5)
        assert (uctx.memory.seq_pos_min(2), uctx.memory.seq_pos_max(2)) == (2, 4)
        shared = Batch(2, n_seq_max=3)
        shared.add(1, len(a), (0, 1), logits=True)
        uctx.memory.seq_cp(0, 1)
        uctx.decode(shared)
        assert uctx.memory.seq_pos_max(1) == len(a)


def test_multi_sequence_batch_matches_single(smollm2: llamacffi.Model) -> None:
    a, b = toks(smollm2, A, bos=True), toks(smollm2, B, bos=True)
    with ctx_for(smollm2, n_seq_max=2) as ctx:
        batch = Batch(len(a) + len(b), n_seq_max=2)
        for i, t in enumerate(a):
            batch.add(int(t), i, 0, logits=i == len(a) - 1)
        for i, t in enumerate(b):
            last_b = batch.add(int(t), i, 1, logits=i == len(b) - 1)
        ctx.decode(batch)
        la, lb = ctx.logits_copy(len(a) - 1), ctx.logits_copy(last_b)
    for toks_, got in ((a, la), (b, lb)):
        with ctx_for(smollm2) as single:
            single.decode_tokens(toks_)
            np.testing.assert_allclose(got, single.logits(), atol=2e-2, rtol=1e-3)


def test_reused_prefix_logits(smollm2: llamacffi.Model) -> None:
    """Why a reused prompt prefix can change a greedy output: llama.cpp's CPU flash attention has one kernel for
    fewer than 64 query tokens at once and a tiled one for more, which round differently. A prefix whose KV values
    were computed inside a long prompt, then kept and continued, gives logits that differ from decoding the same
    tokens in one short batch; without flash attention they are equal."""
    vocab = smollm2.vocab
    head = toks(smollm2, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", bos=False)
    tail = toks(smollm2, "Name a fact about the number 3.<|im_end|>\n<|im_start|>assistant\n", bos=False)
    other = vocab.tokenize(" ".join(f"item{i}" for i in range(60)), add_special=False)
    diffs = {}
    for fa in (False, True):
        with ctx_for(smollm2, flash_attn=fa) as ctx:
            ctx.decode_tokens(np.concatenate([head, other]))  # the prefix inside a batch of more than 64 tokens
            ctx.memory.seq_rm(0, len(head), -1)
            ctx.decode(Batch.from_tokens(tail, start_pos=len(head)))
            reused = ctx.logits_copy()
        with ctx_for(smollm2, flash_attn=fa) as ctx:
            ctx.decode_tokens(np.concatenate([head, tail]))  # all in one batch of fewer than 64
            fresh = ctx.logits_copy()
        diffs[fa] = float(np.abs(reused - fresh).max())
    assert len(head) + len(other) >= 64 > len(head) + len(tail)
    assert diffs[False] == 0.0
    assert 0.0 < diffs[True] < 2.0, diffs  # up to about 1 logit here: enough to flip a near tie


def test_state_save_load_restores(model: llamacffi.Model, tmp_path: Path) -> None:
    a, c = toks(model, A, bos=True), toks(model, C)
    with ctx_for(model) as ctx:
        end = ctx.decode_tokens(a)
        state = ctx.state_save()
        seq = ctx.seq_state_save(0)
        seq_buffer = ctx.seq_state_bytearray(0)
        assert isinstance(seq, bytes) and isinstance(seq_buffer, bytearray) and seq_buffer == seq
        ctx.seq_save_file(tmp_path / "seq.bin", a, 0)
        ctx.decode_tokens(c, start_pos=end)
        expected = ctx.logits_copy()
        ctx.memory.clear()
        ctx.state_load(state)
        ctx.decode_tokens(c, start_pos=end)
        np.testing.assert_allclose(ctx.logits(), expected, atol=1e-5)
    for restore in ("bytes", "bytearray", "file"):
        with ctx_for(model) as other:
            if restore == "bytes":
                other.seq_state_load(seq, 0)
            elif restore == "bytearray":
                other.seq_state_load(seq_buffer, 0)
            else:
                assert other.seq_load_file(tmp_path / "seq.bin", 0).tolist() == a.tolist()
            assert other.memory.seq_pos_max(0) == end - 1
            other.decode_tokens(c, start_pos=end)
            np.testing.assert_allclose(other.logits(), expected, atol=1e-4)
    with ctx_for(model) as other:
        with pytest.raises(StateError):
            other.state_load(b"\x00garbage" * 10)
        for strided in (memoryview(state)[::2], memoryview(seq)[::2]):
            with pytest.raises(StateError, match="contiguous"):
                other.state_load(strided)
            with pytest.raises(StateError, match="contiguous"):
                other.seq_state_load(strided, 0)
        with pytest.raises(StateError):
            other.seq_load_file(tmp_path / "missing.bin")
        for bad in (seq[: len(seq) // 2], seq[:20] + bytes(len(seq) - 20), b"\x01" * 64):
            with pytest.raises(StateError):
                other.seq_state_load(bad, 0)
        (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 20)
        with pytest.raises(StateError):
            other.seq_load_file(tmp_path / "garbage.bin")


def test_a_rejected_state_leaves_the_memory_whole_or_empty(gemma3: llamacffi.Model, smollm2: llamacffi.Model) -> None:
    # gemma3's memory is two caches (sliding-window attention): a state cut short restores the first one only,
    # and the prompt decoded again over that half gave other logits
    a = toks(gemma3, A, bos=True)
    with ctx_for(gemma3) as ctx, ctx_for(smollm2) as foreign:
        foreign.decode_tokens(toks(smollm2, A))
        ctx.decode_tokens(a)
        expected = ctx.logits_copy()
        state, seq = ctx.state_save(), ctx.seq_state_save(0)
        with pytest.raises(StateError, match=r"wrong model arch.*memory is unchanged"):
            ctx.state_load(foreign.state_save())
        with pytest.raises(StateError, match=r"magic.*sequence 0 is unchanged"):
            ctx.seq_state_load(state, 0)
        assert ctx.memory.seq_pos_max(0) == len(a) - 1
        for load, data in ((ctx.state_load, state), (ctx.seq_state_load, seq)):
            with pytest.raises(StateError, match="now empty"):
                load(data[:-16])
            assert ctx.memory.seq_pos_max(0) == -1
            ctx.decode_tokens(a)
            np.testing.assert_allclose(ctx.logits(), expected, atol=1e-4)


def test_kv_cache_full_leaves_state_unchanged(smollm2: llamacffi.Model) -> None:
    with Context(smollm2, n_ctx=256, n_batch=256, n_threads=THREADS) as ctx:
        n = ctx.n_ctx
        filler = np.full(n, toks(smollm2, " the")[0], dtype=np.int32)
        ctx.decode_tokens(filler)
        with pytest.raises(KVCacheFullError):
            ctx.decode(Batch.from_tokens(filler[:8], start_pos=n))
        assert ctx.memory.seq_pos_max(0) == n - 1
        ctx.memory.seq_rm(0, n - 8, -1)
        ctx.decode(Batch.from_tokens(filler[:8], start_pos=n - 8))  # usable again


def test_a_prompt_that_runs_out_of_memory_midway_leaves_nothing(smollm2: llamacffi.Model) -> None:
    with Context(smollm2, n_ctx=256, n_batch=32, n_seq_max=2, kv_unified=True, n_threads=THREADS) as ctx:
        filler = np.full(200, toks(smollm2, " the")[0], dtype=np.int32)
        ctx.decode_tokens(filler, seq_id=1)
        with pytest.raises(KVCacheFullError, match="unchanged"):
            ctx.decode_tokens(filler[:100], seq_id=0)  # its first pieces fit, a later one does not
        assert ctx.memory.seq_pos_max(0) == -1
        assert ctx.memory.seq_pos_max(1) == 199


def test_bad_batches(smollm2: llamacffi.Model) -> None:
    with ctx_for(smollm2, n_batch=16, n_seq_max=2) as ctx:
        n_vocab = smollm2.vocab.n_tokens
        with pytest.raises(InvalidArgumentError, match="n_batch"):
            ctx.decode(Batch.from_tokens(np.ones(17, dtype=np.int32)))
        for bad in (-1, n_vocab):
            with pytest.raises(InvalidTokenError, match=str(bad)):
                ctx.decode(Batch.from_tokens([1, bad]))
            with pytest.raises(InvalidTokenError):
                ctx.decode_token(bad, 0)
        b = Batch(2, n_seq_max=4)
        b.add(1, 0, 3, logits=True)
        with pytest.raises(InvalidArgumentError, match="n_seq_max"):
            ctx.decode(b)
        with pytest.raises(InvalidArgumentError):
            ctx.decode_token(1, 0, seq_id=2)
        with pytest.raises(InvalidArgumentError):
            ctx.decode_token(1, -1)
        with pytest.raises(InvalidArgumentError):
            Batch(1).add(1, -3)
        with pytest.raises(InvalidArgumentError):
            ctx.memory.seq_rm(5)
        with pytest.raises(InvalidArgumentError):
            ctx.memory.seq_cp(0, 2)
        with pytest.raises(InvalidArgumentError, match="empty"):
            ctx.decode(Batch(4))
        with pytest.raises(LlamaError):
            ctx.logits()  # nothing decoded yet
        ctx.decode_tokens(toks(smollm2, A))
        with pytest.raises(InvalidArgumentError):
            ctx.logits(3)  # that token did not ask for logits
        assert ctx.separate_streams and ctx.n_ctx_seq < ctx.n_ctx
        before = ctx.memory.seq_pos_max(1)
        with pytest.raises(InvalidArgumentError, match=f"exceed the {ctx.n_ctx_seq} positions of a sequence"):
            ctx.decode_tokens(np.ones(ctx.n_ctx_seq + 1, dtype=np.int32), seq_id=1)  # raised before any decode
        assert ctx.memory.seq_pos_max(1) == before


@pytest.mark.parametrize(
    "kw",
    [
        {"n_ctx": 0},
        {"n_ctx": -5},
        {"n_ctx": 1 << 40},
        {"n_batch": 0},
        {"n_seq_max": 0},
        {"n_seq_max": 10_000},
        {"n_threads": 0},
        {"n_ctx": 1.5},
    ],
)
def test_bad_context_parameters(smollm2: llamacffi.Model, kw: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        Context(smollm2, **kw)  # type: ignore[arg-type]


def test_closed_objects_raise(smollm2_path: Path) -> None:
    model = llamacffi.Model.load(smollm2_path)
    ctx = ctx_for(model)
    ctx.close()
    ctx.close()
    with pytest.raises(ClosedError):
        ctx.decode_token(1, 0)
    with pytest.raises(ClosedError):
        ctx.memory.seq_pos_max(0)
    one = Batch.from_tokens([1])
    for call in (  # each says the context is closed, not what else is wrong with the call
        lambda: ctx.encode(one),
        lambda: ctx.embeddings(),
        lambda: ctx.sequence_embedding(0),
        lambda: ctx.seq_load_file(smollm2_path.parent / "no-such-state.bin"),
    ):
        with pytest.raises(ClosedError):
            call()
    model.close()
    with pytest.raises(ClosedError):
        model.n_params
    with pytest.raises(ClosedError):
        model.vocab.tokenize("x")
    with pytest.raises(ClosedError):
        Context(model)


def test_context_keeps_its_model_alive(smollm2_path: Path) -> None:
    model = llamacffi.Model.load(smollm2_path)
    ctx = ctx_for(model)
    prompt = toks(model, A)
    model.close()  # deferred: the context still uses it
    assert model.closed
    with pytest.raises(ClosedError):
        model.vocab
    ctx.decode_tokens(prompt)
    assert np.isfinite(ctx.logits()).all()
    ctx.close()
    assert model._ptr is None  # released with the last context


def test_abort_from_another_thread(gemma3: llamacffi.Model, caplog: pytest.LogCaptureFixture) -> None:
    with Context(gemma3, n_ctx=2048, n_batch=2048, n_threads=THREADS) as ctx:
        prompt = np.tile(toks(gemma3, A), 200)[:2000]
        timer = threading.Timer(0.2, ctx.abort)
        timer.start()
        t0 = time.perf_counter()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="llamacffi"), pytest.raises(DecodeAbortedError):
            ctx.decode(Batch.from_tokens(prompt))
        assert time.perf_counter() - t0 < 2.5
        assert not caplog.records, "llama.cpp's report of the abort reached the log: " + caplog.text  # Python raised
        ctx.memory.clear()
        ctx.decode_tokens(toks(gemma3, A))  # still usable
        assert np.isfinite(ctx.logits()).all()


@pytest.mark.parametrize(
    "before", ["", "import asyncio; asyncio.run(asyncio.sleep(0))"], ids=["plain", "after asyncio.run"]
)
def test_ctrl_c_interrupts_a_long_decode(gemma3_path: Path, before: str) -> None:
    """Ctrl-C stops a decode mid-way, also after asyncio.run has installed (and removed) a SIGINT handler of its
    own: the memory then ends before the prompt does."""
    script = f"""
import os, signal, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell starts it, not a background job
import numpy as np
import llamacffi
m = llamacffi.Model.load({str(gemma3_path)!r})
ctx = llamacffi.Context(m, n_ctx=4096, n_batch=4096, n_threads=2)
prompt = np.tile(m.vocab.tokenize("The fox jumps. ", add_special=False), 800)[:4000]
{before}
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.perf_counter()
try:
    ctx.decode(llamacffi.Batch.from_tokens(prompt))
    print("NOT INTERRUPTED")
except KeyboardInterrupt:
    print("INTERRUPTED", round(time.perf_counter() - t0, 2), "KEPT", ctx.memory.seq_pos_max(0) + 1)
ctx.memory.clear()
ctx.decode_tokens(m.vocab.tokenize("hello"))
print("USABLE", bool(np.isfinite(ctx.logits()).all()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "INTERRUPTED" in out.stdout and "NOT" not in out.stdout, out.stdout + out.stderr
    assert "USABLE True" in out.stdout
    words = out.stdout.split("INTERRUPTED")[1].split()
    assert float(words[0]) < 2.0
    assert int(words[2]) < 4000, "the decode ran to its end: Ctrl-C did not reach it"


def test_numa_init() -> None:
    with pytest.raises(ValueError, match="distribute"):
        llamacffi.numa_init("sideways")
    with pytest.raises(ValueError):
        llamacffi.numa_init(3)  # type: ignore[arg-type]
    llamacffi.numa_init("DISABLED")
    llamacffi.numa_init("disabled")
    with pytest.raises(ValueError, match="already"):
        llamacffi.numa_init("mirror")


def test_logging_quiet_by_default_and_levels(smollm2_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llamacffi")
    llamacffi.set_log_level("WARNING")
    with llamacffi.Model.load(smollm2_path):
        pass
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    llamacffi.set_log_level("INFO")
    try:
        with llamacffi.Model.load(smollm2_path):
            pass
    finally:
        llamacffi.set_log_level("WARNING")
    assert any(r.levelno == logging.INFO and "llama" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        llamacffi.set_log_level("LOUD")


def test_perf_and_threads(smollm2: llamacffi.Model) -> None:
    with ctx_for(smollm2) as ctx:
        ctx.set_threads(1)
        assert ctx.n_threads == 1
        pos = ctx.decode_tokens(toks(smollm2, A, bos=True))
        ctx.decode_token(int(np.argmax(ctx.logits())), pos)
        perf = ctx.perf()
        assert perf.n_p_eval >= 1 and perf.n_eval >= 1 and perf.tokens_per_s > 0
        with pytest.raises(InvalidArgumentError):
            ctx.set_threads(0)
        # Without OpenMP a context owns ggml thread pools of its sizes (ggml would otherwise start threads per decode).
        assert (ctx._pools[0] != ffi.NULL) == (not llamacffi.system_info()["openmp"])
        ctx.set_threads(2, 3)
        assert ctx.n_threads == 2
        ctx.decode_token(int(np.argmax(ctx.logits())), pos + 1)
        assert (ctx._pools[1] != ctx._pools[0]) == (not llamacffi.system_info()["openmp"])


def test_replaced_thread_pools_live_until_a_decode_has_left_them(
    smollm2: llamacffi.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ggml's CPU backend remembers the pool it last ran on and pauses it when it next runs on another one: a pool
    # that set_threads replaces is freed only after the next decode (ThreadSanitizer found it freed before, and
    # used after). ggml pools are made here even where the build uses OpenMP, which runs them all the same.
    from llamacffi.context import threads

    monkeypatch.setattr(threads, "uses_openmp", lambda: False)
    with ctx_for(smollm2) as ctx:
        pos = ctx.decode_tokens(toks(smollm2, A, bos=True))
        first = list(dict.fromkeys(ctx._pools))  # one pool, or two where the batch threads differ
        ctx.set_threads(1)
        assert ctx._retired == first
        second = ctx._pools[0]
        ctx.set_threads(2, 3)  # two replacements before any decode: every replaced pool waits
        assert ctx._retired == [*first, second]
        ctx.decode_token(int(np.argmax(ctx.logits())), pos)
        assert ctx._retired == []
        ctx.set_threads(1)
        assert len(ctx._retired) == 2  # the two pools of (2, 3)
    assert ctx._retired == []  # freed with the context


def test_embeddings(smollm2: llamacffi.Model) -> None:
    with ctx_for(smollm2, embeddings=True) as ctx:
        ctx.decode_tokens(toks(smollm2, A, bos=True))
        e = ctx.embeddings()
        assert e.shape == (smollm2.n_embd,) and np.isfinite(e).all()
    with ctx_for(smollm2) as ctx:
        ctx.decode_tokens(toks(smollm2, A))
        with pytest.raises(InvalidArgumentError):
            ctx.embeddings()


def test_pooled_embeddings_are_whole_or_refused(smollm2: llamacffi.Model) -> None:
    # llama.cpp pools each micro-batch on its own, and keeps no per-token vectors when it pools.
    tokens = toks(smollm2, A, bos=True)
    mean, rank = lib.LLAMA_POOLING_TYPE_MEAN, lib.LLAMA_POOLING_TYPE_RANK
    with ctx_for(smollm2, n_ctx=64, embeddings=True, pooling_type=rank) as ctx:
        ctx.decode_tokens(tokens)
        # a reranker's scores: the n_cls_out floats llama.cpp holds for a sequence, nothing read past them
        assert ctx.sequence_embedding(0).shape == (lib.llama_model_n_cls_out(smollm2.ptr),)
    with ctx_for(smollm2, n_ctx=64, n_ubatch=4, embeddings=True, pooling_type=mean) as ctx:
        assert len(tokens) > 6
        with pytest.raises(InvalidArgumentError, match="n_ubatch"):
            ctx.decode_tokens(tokens)
        with pytest.raises(InvalidArgumentError, match="n_ubatch"):
            ctx.decode(Batch.from_tokens(tokens[:6]))
        assert ctx.memory.seq_pos_max(0) == -1
        ctx.decode_tokens(tokens[:4])
        with pytest.raises(InvalidArgumentError, match="sequence_embedding"):
            ctx.embeddings()
    with pytest.raises(InvalidArgumentError, match="kv_unified"):
        ctx_for(smollm2, n_ctx=64, n_seq_max=2, embeddings=True, pooling_type=mean)
    with ctx_for(smollm2, n_ctx=64, n_seq_max=2, kv_unified=True, embeddings=True, pooling_type=mean) as ctx:
        ctx.decode_tokens(tokens)
        pooled = ctx.sequence_embedding(0)
        assert pooled.shape == (lib.llama_model_n_embd_out(smollm2.ptr),)
    with ctx_for(smollm2, n_ctx=64, embeddings=True, pooling_type=0) as ctx:
        ctx.decode_tokens(tokens)
        with pytest.raises(InvalidArgumentError, match="no pooling type"):
            ctx.sequence_embedding(0)
    with Embedder(smollm2, pooling="mean") as embedder:
        expected = embedder.embed_tokens([tokens], normalize=False)[0]
    np.testing.assert_allclose(pooled, expected, atol=1e-3, rtol=1e-3)


def test_model_properties(model: llamacffi.Model) -> None:
    assert model.n_params > 1e8 and model.size > 1e7
    assert model.n_ctx_train >= 2048 and model.n_embd > 0 and model.n_layer > 0
    md = model.metadata
    assert md["general.architecture"] in ("llama", "gemma3")
    assert model.description
    assert "gguf" in repr(model)
