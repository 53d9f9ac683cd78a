"""Short forms of the reliability checks (``python -m reliability``; the long runs and their figures are in
docs/RELIABILITY.md), and the regressions they found."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from reliability import fuzz_gguf, fuzz_grammar, fuzz_state, fuzz_tokenizer, leaks, sanitize, soak

import llamacffi
from llamacffi import raw_tools
from llamacffi.context.state import SEQ_BYTES_MAGIC
from llamacffi.raw import lib
from llamacffi.sampling import NativeSampler

ROOT = Path(__file__).resolve().parent.parent


# ---- leaks -------------------------------------------------------------------------------------------------------


def test_model_cycles_hold_no_memory(smollm2_path: Path) -> None:
    s = leaks.repeat("model", 12, leaks.model_cycle(smollm2_path, 8))
    assert not s.grown, s.grown
    assert s.delta_mib <= 5, s.rss_mib


def test_service_requests_and_abandoned_streams_hold_no_memory() -> None:
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig

    with LlamaCppService(LocalBackendConfig(threads=2)) as svc:
        m = svc.load_model(
            "smollm2-135m", config=ModelConfig(context_size=256, parallel=4, prompt_cache_mib=leaks.CACHE_MIB)
        )
        s = leaks.repeat("service", 15, leaks.service_requests(m, 4, 4))
    assert not s.grown, s.grown
    assert s.delta_mib <= 5, s.rss_mib


def test_grammar_samplers_hold_no_memory(smollm2: llamacffi.Model) -> None:
    s = leaks.repeat("sampler", 40, leaks.sampler_cycle(smollm2))
    assert not s.grown, s.grown
    assert s.delta_mib <= 5, s.rss_mib


# ---- differential tokenizer --------------------------------------------------------------------------------------


@pytest.mark.skipif(raw_tools.find("llama-server") is None, reason="raw tools not built")
def test_tokenizer_matches_llama_cpp_on_generated_strings() -> None:
    r = fuzz_tokenizer.fuzz_model("smollm2-135m", 150, seed=7, sample=4)
    assert r["identical_ids"] == r["comparisons"], r["mismatches"][:3]
    assert r["llama_tokenize_sample"]["identical_ids"] == r["llama_tokenize_sample"]["comparisons"]
    assert r["roundtrip_broken_where_llama_cpp_holds"] == 0, r["mismatches"][:3]


def test_generated_strings_cover_every_family() -> None:
    import random

    rng = random.Random(0)
    seen = {fuzz_tokenizer.generate(rng, ["<|im_start|>"])[1] for _ in range(200)}
    assert seen == {"planes", "combining", "emoji", "controls", "whitespace", "special", "mixed"}


# ---- GGUF, grammar and state fuzzing -----------------------------------------------------------------------------


# A worker that answers "ok", aborts on "crash" and never answers "hang".
TOY_WORKER = textwrap.dedent(
    """
    import os, sys, time
    for line in sys.stdin:
        if line.startswith("crash"):
            print("dying", file=sys.stderr, flush=True)
            os.abort()
        if line.startswith("hang"):
            time.sleep(60)
        print("@@answer ok", line.strip(), flush=True)
    """
)


def test_worker_names_a_crash_and_a_hang_and_starts_again(tmp_path: Path) -> None:
    from reliability.worker import Worker

    with Worker("toy", tmp_path, argv=[sys.executable, "-c", TOY_WORKER]) as w:
        assert w.ask("1 a", 10) == ("ok", "1 a")
        outcome, detail = w.ask("crash", 10)
        assert outcome == "crash" and detail.startswith("signal SIGABRT") and "dying" in detail
        assert w.ask("2 b", 10) == ("ok", "2 b")
        assert w.ask("hang", 0.5) == ("hang", "no answer within 0.5 s")
        assert w.ask("3 c", 10) == ("ok", "3 c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-2.log", "worker-3.log", "worker-first.log"]
    assert w.proc.poll() is not None


def test_gguf_layout_reads_the_real_models(model_path: Path) -> None:
    head = model_path.read_bytes()[: 64 << 20]
    lay = fuzz_gguf.layout(head)
    assert lay.kvs and lay.tensors and lay.data_start % 32 == 0
    assert any(kv.key == "general.architecture" for kv in lay.kvs)


def test_gguf_mutants_load_or_raise() -> None:
    report = fuzz_gguf.run(16, 0, timeout=120, jobs=1, log=sys.stderr)
    assert report["findings"] == []
    assert report["outcomes"].get("ModelLoadError", 0) > 0


def test_grammar_and_schema_cases_end_cleanly() -> None:
    report = fuzz_grammar.run(60, 0, timeout=60)
    assert report["findings"] == []


def test_state_cases_are_refused_or_load() -> None:
    report = fuzz_state.run(24, 0, timeout=120)
    assert report["findings"] == []


# A grammar whose token element (!<[2]>) follows a character: llama.cpp's apply step lets a token like "])," through
# (it checks the rest of the token only by id), its accept then throws, and the C++ exception used to end the process.
CROSSING = 'root ::= "]" !<[2]>* "x"'


@pytest.mark.parametrize("which", ["native", "numpy"])
def test_a_token_crossing_into_a_token_element_is_not_picked(smollm2: llamacffi.Model, which: str) -> None:
    code = textwrap.dedent(
        f"""
        import numpy as np, llamacffi
        from llamacffi import models
        from llamacffi.sampling import NativeSampler, Sampler
        model = llamacffi.Model.load(models.fetch("smollm2-135m"), vocab_only=True)
        v = model.vocab
        cls = NativeSampler if {which!r} == "native" else Sampler
        s = cls(vocab=v, grammar={CROSSING!r}, temperature=0)
        row = np.zeros(v.n_tokens, np.float32)
        pieces = [v.token_to_piece(t) for t in range(v.n_tokens)]
        row[[t for t, p in enumerate(pieces) if p.startswith(b"]") and len(p) > 1]] = 10
        first = s.sample(row)
        assert v.token_to_piece(first) == b"]", v.token_to_piece(first)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_grammar_accept_refusal_is_an_error_not_an_abort(smollm2: llamacffi.Model) -> None:
    from llamacffi.sampling.constraint import Constraint

    c = Constraint(smollm2.vocab, CROSSING)
    crossing = next(
        t for t in range(smollm2.vocab.n_tokens) if smollm2.vocab.token_to_piece(t) in (b"])", b"]),", b"]]")
    )
    assert not c.allowed(crossing)  # llama.cpp's apply step alone says yes
    with pytest.raises(llamacffi.GrammarError, match="refused token"):
        c.accept(crossing, checked=True)


# Grammars whose parses llama.cpp multiplies without end. The seeds are fuzz-grammar's cases that ran past its 60 s
# bound before the grammar sampler had bounds of its own.
SLOW_SEEDS = (90, 245, 354, 555, 922, 1117, 1299)


def test_the_grammars_that_ran_for_minutes_are_refused_within_seconds() -> None:
    report = fuzz_grammar.run(0, 0, timeout=30, seeds=list(SLOW_SEEDS))
    assert report["findings"] == []
    assert report["outcomes"] == {"gbnf:refused:GrammarError": len(SLOW_SEEDS)}


def test_a_rule_reaching_itself_through_empty_rules_is_refused_before_llama_cpp_sees_it(
    smollm2: llamacffi.Model,
) -> None:
    # llama.cpp's left-recursion check misses this one (r+ after an optional first element), and its first step
    # then loops, pushing ever deeper stacks, until memory runs out.
    for grammar in ('root ::= r "x"\nr ::= ("a" | "") (r+ "b"?)*', 'root ::= r "x"\nr ::= "a"? (r "b")*'):
        assert lib.llamacffi_grammar_breadth(smollm2.vocab._ptr, grammar.encode(), b"root", 4096) > 4096
        with pytest.raises(llamacffi.GrammarError, match="too many ways to parse"):
            NativeSampler(vocab=smollm2.vocab, grammar=grammar)


@pytest.mark.parametrize("grammar", ['root ::= "a" root? root? root?', 'root ::= ("a" root?)* "b"?'])
def test_an_ambiguous_grammar_is_stopped_once_its_parses_multiply(smollm2: llamacffi.Model, grammar: str) -> None:
    a = int(smollm2.vocab.tokenize("a", add_special=False)[0])
    with NativeSampler(vocab=smollm2.vocab, grammar=grammar, temperature=0) as s:
        with pytest.raises(llamacffi.GrammarError, match="too ambiguous"):
            for _ in range(1000):
                s.accept(a)
        s.reset()  # usable again from the start
        s.accept(a)


def test_trying_many_tokens_leaves_the_grammar_as_it_was(smollm2: llamacffi.Model) -> None:
    from llamacffi.sampling.constraint import accepted, make_grammar

    g, _ = make_grammar(smollm2.vocab, 'root ::= "ab" | "ac"', "root")
    ids = np.arange(smollm2.vocab.n_tokens, dtype=np.int32)
    first = accepted(g, ids)
    pieces = [smollm2.vocab.token_to_piece(int(t)) for t in ids]
    printable = [i for i, p in enumerate(pieces) if p and p.isascii() and p.decode().isprintable()]
    assert {pieces[i] for i in printable if first[i]} == {b"a", b"ab", b"ac"}
    assert (accepted(g, ids) == first).all()  # nothing was accepted meanwhile
    eog = [t for t in range(smollm2.vocab.n_tokens) if smollm2.vocab.is_eog(t)]
    assert not accepted(g, np.array(eog, dtype=np.int32)).any()  # llama.cpp aborts on these; refused here


def test_truncated_sequence_state_files_are_refused(smollm2: llamacffi.Model, tmp_path: Path) -> None:
    with llamacffi.Context(smollm2, n_ctx=128, n_threads=2) as ctx:
        tokens = smollm2.vocab.tokenize("The sequence state of a short prompt")
        ctx.decode_tokens(tokens)
        assert int.from_bytes(ctx.seq_state_save(0)[:4], "little") == SEQ_BYTES_MAGIC
        path = tmp_path / "seq.bin"
        ctx.seq_save_file(path, tokens)
        data = path.read_bytes()
        for cut in (0, 11, 12, 12 + 4 * len(tokens), len(data) // 2, len(data) - 5):  # llama.cpp aborted on these
            (tmp_path / "cut.bin").write_bytes(data[:cut])
            ctx.memory.seq_rm(0)
            with pytest.raises(llamacffi.StateError):
                ctx.seq_load_file(tmp_path / "cut.bin")
        ctx.memory.clear()
        assert ctx.seq_load_file(path).tolist() == tokens.tolist()
        ctx.decode_token(int(np.argmax(ctx.logits())), len(tokens))


# ---- soak and sanitizers -----------------------------------------------------------------------------------------


def test_a_short_soak_serves_everything_as_expected(tmp_path: Path) -> None:
    figures = soak.run(duration=20, clients=2, threads=1, seed=3, stall=120, sample=1, out=tmp_path)
    assert soak.check(figures, max_growth_mib=64) == []
    assert figures["service"]["requests"] > 0 and figures["server"]["requests"] > 0


def test_sanitizer_reports_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "asan.1").write_text(
        "=================================================================\n"
        "==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x1\n"
        "    #0 0x1 in llama_decode /src/llama.cpp/src/llama-context.cpp:10\n"
    )
    (tmp_path / "ubsan.2").write_text(
        "Objects/longobject.c:120:5: runtime error: signed integer overflow\n    #0 0x1 in PyLong_FromLong\n"
    )
    found = sanitize.reports(tmp_path)
    assert [r.own for r in found] == [True, False]
    assert "heap-use-after-free" in found[0].headline


def test_unknown_sanitizer_kinds_are_refused_by_cmake(tmp_path: Path) -> None:
    out = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DLLAMACFFI_SANITIZE=memory"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "LLAMACFFI_SANITIZE entry 'memory' is not one of address, undefined, thread" in text
