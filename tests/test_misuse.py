"""Misuse that would crash or corrupt llama.cpp is refused with a Python exception, and lifetimes hold: objects
that keep llama.cpp pointers keep what those point to alive, whatever the order of close() and collection."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import llamacffi
from llamacffi import Batch, Context, GrammarError, InvalidArgumentError, LlamaError, TokenizeError, ownership
from llamacffi.raw import lib
from llamacffi.sampling import GRAMMAR_MAX_NESTING, GRAMMAR_MAX_RULES, NativeSampler, Sampler
from llamacffi.sampling.grammar import check_grammar_shape
from llamacffi.service import ModelConfig
from llamacffi.service.errors import InvalidConfigError

THREADS = 2


# ---- checked before calling llama.cpp -------------------------------------------------------------------------


def test_encode_needs_an_encoder(smollm2: llamacffi.Model) -> None:
    with Context(smollm2, n_ctx=64, n_threads=THREADS) as ctx:
        with pytest.raises(InvalidArgumentError, match="no encoder"):
            ctx.encode(Batch.from_tokens([1, 2, 3]))
        with pytest.raises(TypeError):
            ctx.encode([1, 2, 3])  # type: ignore[arg-type]


def test_every_sequence_needs_an_output_row(smollm2: llamacffi.Model) -> None:
    for kw in ({"n_batch": 2, "n_seq_max": 4}, {"n_ctx": 2, "n_seq_max": 4}):
        with pytest.raises(InvalidArgumentError, match="n_seq_max"):
            Context(smollm2, n_threads=THREADS, **{"n_ctx": 256, **kw})  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="batch_size"):
        ModelConfig(context_size=256, batch_size=1, parallel=2)


def test_n_gpu_layers_fits_llama_cpps_int32(smollm2_path: Path) -> None:
    for bad in (2**31, 2**40):
        with pytest.raises(InvalidArgumentError, match="n_gpu_layers"):
            llamacffi.Model.load(smollm2_path, vocab_only=True, n_gpu_layers=bad)


def test_a_vocab_only_model_has_no_context(smollm2_path: Path) -> None:
    with llamacffi.Model.load(smollm2_path, vocab_only=True) as m:
        assert m.vocab.tokenize("hi").size > 0
        with pytest.raises(InvalidArgumentError, match="vocab_only"):
            Context(m, n_ctx=64)


def test_tokenize_refuses_code_points_beyond_unicode(smollm2: llamacffi.Model, gemma3: llamacffi.Model) -> None:
    for m in (smollm2, gemma3):
        for bad in (b"\xf4\x90\x80\x80", b"ok \xf7\xbf\xbf\xbf ok"):  # U+110000, U+1FFFFF: llama.cpp would abort
            with pytest.raises(TokenizeError, match="beyond U\\+10FFFF"):
                m.vocab.tokenize(bad)
        for other in (b"ok \xff", b"caf\xe9", b"\xed\xa0\x80", b"\xf4\x8f\xbf\xbf"):  # invalid, yet handled
            assert m.vocab.tokenize(other, add_special=False).size > 0
        assert list(m.vocab.tokenize("é".encode(), add_special=False)) == list(m.vocab.tokenize("é", add_special=False))


def test_native_penalty_window_is_bounded() -> None:
    with pytest.raises(InvalidArgumentError, match="penalty_last_n"):
        NativeSampler(repeat_penalty=1.1, penalty_last_n=2**31 - 1)  # llama.cpp would allocate 8 GiB up front
    Sampler(repeat_penalty=1.1, penalty_last_n=2**31 - 1)  # the numpy sampler allocates nothing for it


def test_grammar_depth_and_size_are_bounded(smollm2: llamacffi.Model) -> None:
    deep = "root ::= " + "(" * (GRAMMAR_MAX_NESTING + 1) + '"a"' + ")" * (GRAMMAR_MAX_NESTING + 1)
    with pytest.raises(GrammarError, match="nests"):
        NativeSampler(vocab=smollm2.vocab, grammar=deep)
    chain = "\n".join(f'r{i} ::= r{i + 1} "a"' for i in range(GRAMMAR_MAX_RULES + 1))
    with pytest.raises(GrammarError, match="rules"):
        NativeSampler(vocab=smollm2.vocab, grammar="root ::= r0\n" + chain + f'\nr{GRAMMAR_MAX_RULES + 1} ::= "a"')
    # A comment ends at \r as well as \n (llama.cpp's parse_space), and a token reference at its first '>' (a quote
    # in it opens no literal): what follows is grammar, nested or chained as deep.
    deep_groups = "(" * (GRAMMAR_MAX_NESTING + 1) + '"a"' + ")" * (GRAMMAR_MAX_NESTING + 1)
    with pytest.raises(GrammarError, match="nests"):
        NativeSampler(vocab=smollm2.vocab, grammar='root ::= "a" # c\rx ::= ' + deep_groups)
    chain_cr = "\r".join(f'r{i} ::= r{i + 1} "a"' for i in range(GRAMMAR_MAX_RULES + 1))
    with pytest.raises(GrammarError, match="rules"):
        NativeSampler(vocab=smollm2.vocab, grammar=f'root ::= r0 # c\r{chain_cr}\rr{GRAMMAR_MAX_RULES + 1} ::= "a"')
    with pytest.raises(GrammarError, match="nests"):
        check_grammar_shape('root ::= <"> x\nx ::= ' + deep_groups)
    # brackets inside literals and classes do not count, escaped quotes and brackets included
    ok = 'root ::= "((((" [(] "\\"((" [\\]((] ' + "(" * 10 + '"a"' + ")" * 10
    with NativeSampler(vocab=smollm2.vocab, grammar=ok, temperature=0.0) as s:
        assert s.n_vocab == smollm2.vocab.n_tokens


# ---- one thread at a time -----------------------------------------------------------------------------------


def test_state_and_memory_calls_refuse_a_busy_context(smollm2: llamacffi.Model) -> None:
    with Context(smollm2, n_ctx=64, n_threads=THREADS) as ctx:
        ctx.decode_tokens([1, 2, 3])
        saved = ctx.state_save()
        with ctx._busy:  # what another thread's decode holds
            for call in (
                ctx.state_save,
                lambda: ctx.state_load(saved),
                lambda: ctx.seq_state_save(0),
                ctx.memory.clear,
                lambda: ctx.memory.seq_rm(0, 1, -1),
                lambda: ctx.memory.seq_pos_max(0),
            ):
                with pytest.raises(LlamaError, match="in use by another thread"):
                    call()
        assert ctx.memory.seq_pos_max(0) == 2  # nothing changed


def test_output_reads_refuse_a_busy_context(smollm2: llamacffi.Model) -> None:
    # A read while another thread decodes would see llama.cpp's outputs half written, or a buffer being replaced.
    mean = lib.LLAMA_POOLING_TYPE_MEAN
    with (
        Context(smollm2, n_ctx=64, n_threads=THREADS) as ctx,
        Context(smollm2, n_ctx=64, embeddings=True, pooling_type=0, n_threads=THREADS) as emb,
        Context(smollm2, n_ctx=64, embeddings=True, pooling_type=mean, n_threads=THREADS) as pooled,
    ):
        for c in (ctx, emb, pooled):
            c.decode_tokens([1, 2, 3])
        calls = (ctx.logits, ctx.logits_copy, ctx.perf, ctx.perf_reset, emb.embeddings, pooled.sequence_embedding)
        for call in calls:
            owner = call.__self__  # type: ignore[attr-defined]
            with owner._busy, pytest.raises(LlamaError, match="in use by another thread"):  # another thread's decode
                call()
            call()  # free again


# ---- lifetimes -------------------------------------------------------------------------------------------------


def test_logits_views_outlive_close(gemma3_path: Path) -> None:
    m = llamacffi.Model.load(gemma3_path)
    ctx = Context(m, n_ctx=128, n_batch=64, n_threads=THREADS)
    ctx.decode_tokens(list(range(10, 74)), logits="all")
    view, row = ctx.logits(0), ctx.logits(5)
    expected = (view.copy(), row.copy())
    ctx.close()
    m.close()
    gc.collect()
    junk = [bytearray(1 << 20) for _ in range(64)]  # would reuse freed memory
    np.testing.assert_array_equal(view, expected[0])
    np.testing.assert_array_equal(row, expected[1])
    del junk, view, row
    gc.collect()
    assert m._ptr is None  # freed with the last view


def test_numbers_c_would_truncate_or_wrap_are_refused(smollm2: llamacffi.Model, tmp_path: Path) -> None:
    from llamacffi import InvalidTokenError

    vocab = smollm2.vocab
    with Context(smollm2, n_ctx=np.int64(256), n_batch=np.int64(16), n_threads=THREADS) as ctx:
        for call in (
            lambda: ctx.decode_token(5.9, 0),
            lambda: ctx.decode_token(5, 1.7),  # type: ignore[arg-type]
            lambda: ctx.decode_token(5, 1 << 40),
            lambda: ctx.decode_token(5, 0, seq_id=True),
            lambda: ctx.decode_tokens([5], start_pos=1.5),  # type: ignore[arg-type]
            lambda: ctx.decode_tokens([5], logits="bogus"),
            lambda: ctx.decode_tokens(np.arange(40) + 5, logits="all"),
        ):  # more than n_batch
            with pytest.raises(InvalidArgumentError):
                call()
        for tokens in ([5.9], [1 << 40], "abc", [[1, 2]], [None]):
            with pytest.raises(InvalidTokenError):
                ctx.decode_tokens(tokens)  # type: ignore[arg-type]
            with pytest.raises(InvalidTokenError):
                vocab.detokenize(tokens)  # type: ignore[arg-type]
        with pytest.raises(InvalidTokenError):
            vocab.stream().feed("a")  # type: ignore[arg-type]
        assert ctx.memory.seq_pos_max(0) == -1  # nothing was decoded
        ctx.decode_token(np.int64(5), np.int64(0), np.int64(0))
        for index in (1.0, True, None, "0"):
            with pytest.raises(InvalidArgumentError):
                ctx.logits(index)  # type: ignore[arg-type]
        np.testing.assert_array_equal(ctx.logits(np.int64(0)), ctx.logits())
        m = ctx.memory
        for call in (
            lambda: m.seq_rm(0, 1.5),
            lambda: m.seq_add(0, 0, 1 << 40, 1),  # type: ignore[arg-type]
            lambda: m.seq_div(0, 0, -1, True),
            lambda: m.seq_cp(0, 0, None),
        ):  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                call()
        assert m.seq_pos_max(0) == 0
        ctx.decode_token(5, 1)
        with pytest.raises(InvalidArgumentError, match="largest position"):
            m.seq_add(0, -1, -1, (1 << 31) - 1)  # 1 would wrap to a negative position, and its token would go
        m.seq_add(0, 2, -1, 1 << 30)  # nothing held from 2 on
        assert (m.seq_pos_min(0), m.seq_pos_max(0)) == (0, 1)
        m.seq_add(0, -1, 1, (1 << 31) - 1)  # position 0 alone: it fits
        assert (m.seq_pos_min(0), m.seq_pos_max(0)) == (1, (1 << 31) - 1)
        with pytest.raises(InvalidArgumentError, match="NUL"):
            ctx.seq_save_file(tmp_path / "a\0b", [5])
        assert not (tmp_path / "a").exists()
    for call in (
        lambda: Batch(True),
        lambda: Batch(1).add(1 << 40, 0),
        lambda: Batch(1).add(1, 1 << 31),
        lambda: Batch.from_tokens([1], start_pos=(1 << 31) - 1 + 1),
        lambda: Batch(2).add(1, 0, None),
        lambda: Batch.from_tokens([1], seq_id=np.int64(-1)),
    ):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            call()
    with pytest.raises(InvalidTokenError):
        Batch.from_tokens([1.5])
    b = Batch.from_tokens([1, 2], start_pos=(1 << 31) - 2, seq_id=np.int64(1))
    assert b.positions.tolist() == [(1 << 31) - 2, (1 << 31) - 1] and b.seq_ids(1) == (1,)
    assert Batch(2, n_seq_max=2).add(1, 0, seq_ids=np.int64(1)) == 0


def test_a_refused_decode_token_leaves_the_running_decode_alone(smollm2: llamacffi.Model) -> None:
    # decode_token fills a batch of the context's own that a decode in another thread may be reading.
    with Context(smollm2, n_ctx=64, n_threads=THREADS) as ctx:
        ctx.decode_token(5, 0)
        one = ctx._one
        before = (one._token[:1].copy(), one._pos[:1].copy(), one._seq[:1].copy())
        with ctx._busy, pytest.raises(LlamaError, match="in use by another thread"):  # another thread's decode
            ctx.decode_token(7, 1)
        for now, then in zip((one._token[:1], one._pos[:1], one._seq[:1]), before, strict=False):
            np.testing.assert_array_equal(now, then)


def test_a_view_blocks_the_decode_that_would_move_its_buffer(smollm2: llamacffi.Model) -> None:
    # An embeddings context outputs every token of a batch, whatever its logits flags: five tokens need five rows.
    with Context(smollm2, n_ctx=64, embeddings=True, n_threads=THREADS) as ctx:
        ctx.decode(Batch.from_tokens([1]))
        view = ctx.logits()
        expected = view.copy()
        with pytest.raises(LlamaError, match="5 output rows"):
            ctx.decode(Batch.from_tokens([2, 3, 4, 5, 6], start_pos=1))
        junk = [bytearray(1 << 20) for _ in range(16)]
        np.testing.assert_array_equal(view, expected)  # still the buffer it showed, nothing decoded
        assert ctx.memory.seq_pos_max(0) == 0
        del junk, view
        ctx.decode(Batch.from_tokens([2, 3, 4, 5, 6], start_pos=1))
        assert ctx.memory.seq_pos_max(0) == 5
        ctx.decode(Batch.from_tokens([7, 8, 9], start_pos=6))  # fits the rows reserved: views may be held
        held = ctx.logits()  # row 2 of the buffer
        before = held.copy()
        ctx.decode(Batch.from_tokens([10, 11, 12, 13, 14], start_pos=9))
        # the same row, now the third token's (12, after 1..11), as a context that decoded only those says
        assert not np.array_equal(held, before)
    with Context(smollm2, n_ctx=64, embeddings=True, n_threads=THREADS) as ref:
        ref.decode(Batch.from_tokens(list(range(1, 13))))
        np.testing.assert_allclose(held, ref.logits(), atol=2e-2, rtol=1e-3)


def test_logits_views_outlive_a_collected_context(smollm2_path: Path) -> None:
    m = llamacffi.Model.load(smollm2_path)

    def logits_of_a_dropped_context() -> tuple[np.ndarray, np.ndarray]:
        ctx = Context(m, n_ctx=64, n_threads=THREADS)  # never closed
        ctx.decode_tokens([1, 2, 3])
        view = ctx.logits()
        return view, view.copy()

    view, expected = logits_of_a_dropped_context()
    gc.collect()
    with Context(m, n_ctx=64, n_threads=THREADS) as other:  # would reuse the freed buffer
        other.decode_tokens([4, 5, 6, 7])
    np.testing.assert_array_equal(view, expected)
    del view
    gc.collect()
    m.close()
    assert m._ptr is None


def test_a_grammar_keeps_its_model(smollm2_path: Path) -> None:
    m = llamacffi.Model.load(smollm2_path)
    s = NativeSampler(vocab=m.vocab, grammar='root ::= "hello"', temperature=0.0)
    row = np.zeros(m.vocab.n_tokens, dtype=np.float32)
    m.close()
    token = s.sample(row)
    assert token >= 0 and m._ptr is not None
    s.close()
    assert m._ptr is None


def test_close_waits_for_a_tokenize_in_another_thread(smollm2_path: Path) -> None:
    m = llamacffi.Model.load(smollm2_path)
    text = "hello world, the quick brown fox " * 100_000
    result: list[int] = []
    started = threading.Event()

    def work() -> None:
        started.set()
        result.append(len(m.vocab.tokenize(text)))

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    deadline = time.monotonic() + 60
    while m.owner._users == 0 and t.is_alive() and time.monotonic() < deadline:  # until the tokenize holds the model
        time.sleep(0.001)
    m.close()
    t.join(timeout=120)
    assert result and result[0] > 100_000
    assert m._ptr is None


def test_a_model_outlives_its_contexts_whatever_the_collection_order(smollm2_path: Path) -> None:
    events: list[tuple[str, int, bool]] = []  # (what, model address, whether its free was deferred)
    real_gone, real_unlease = ownership._owner_gone, ownership._unlease

    def gone(ptr: object, free: object) -> None:
        address = ownership.address(ptr)
        real_gone(ptr, free)  # type: ignore[arg-type]
        events.append(("model destructor", address, address in ownership._orphaned))  # deferred?

    def unlease(address: int, ctype: str) -> None:
        events.append(("context freed", address, True))
        real_unlease(address, ctype)

    ownership._owner_gone, ownership._unlease = gone, unlease  # type: ignore[assignment]
    try:
        for _ in range(3):
            events.clear()
            m = llamacffi.Model.load(smollm2_path)
            address = ownership.address(m.ptr)
            ctx = Context(m, n_ctx=64, n_threads=THREADS)
            ctx.decode_tokens([1, 2, 3])
            ctx.cycle = ctx  # type: ignore[attr-defined]  # collected only by the cycle collector, with the model
            m.cycle = (m, ctx)  # type: ignore[attr-defined]
            del m, ctx
            gc.collect()
            mine = [e for e in events if e[1] == address]
            assert [e[0] for e in mine].count("model destructor") == 1 and ("context freed", address, True) in mine
            model_first = mine[0][0] == "model destructor"
            assert not model_first or mine[0][2], "the model was freed while its context still used it"
            assert address not in ownership._leases and address not in ownership._orphaned
    finally:
        ownership._owner_gone, ownership._unlease = real_gone, real_unlease  # type: ignore[assignment]


def test_non_causal_attention_decodes_at_most_n_ubatch(smollm2: llamacffi.Model) -> None:
    with Context(smollm2, n_ctx=128, n_batch=64, n_ubatch=16, n_threads=THREADS) as ctx:
        lib.llama_set_causal_attn(ctx.ptr, False)  # as an embedding model's context
        with pytest.raises(InvalidArgumentError, match="n_ubatch"):
            ctx.decode(Batch.from_tokens(list(range(1, 33))))
        lib.llama_set_causal_attn(ctx.ptr, True)
        ctx.decode(Batch.from_tokens(list(range(1, 33))))
        assert ctx.memory.seq_pos_max(0) == 31


EXIT_WHILE_DECODING = """
import sys, threading, time
import llamacffi
mode = sys.argv[1]
if mode == "service":
    from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig
    svc = LlamaCppService(LocalBackendConfig(threads=2))
    m = svc.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=2))
    work = lambda: m.generate("word " * 500, GenerationOptions(max_tokens=400))
else:
    from llamacffi.models import fetch
    model = llamacffi.Model.load(fetch("smollm2-135m"))
    ctx = llamacffi.Context(model, n_ctx=512, n_threads=2)
    def work():
        while True:
            ctx.memory.clear()
            ctx.decode_tokens(list(range(10, 500)))
threading.Thread(target=work, daemon=True).start()
time.sleep(float(sys.argv[2]))
print("exiting", flush=True)
"""


@pytest.mark.parametrize("mode", ["service", "context"])
def test_exit_while_a_daemon_thread_decodes(mode: str) -> None:
    # The process tears llama.cpp down at exit; a decode still running in a daemon thread must be stopped first.
    for delay in (0.7, 0.9, 1.2):
        out = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_DECODING, mode, str(delay)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and "exiting" in out.stdout, (out.returncode, out.stderr[-1500:])
