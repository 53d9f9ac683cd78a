"""Vocab: tokenization identical to llama.cpp's llama-tokenize, round trips, pieces, streaming, bad input."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llamacffi
from llamacffi import InvalidTokenError, TokenizeError, raw_tools

CORPUS = [
    "Hello, world! How are you today?",
    "naïve café — déjà vu, Ærøskøbing",
    "emoji: 🦙🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "中文分词测试：今天天气很好。日本語のテキストです。한국어 문장입니다.",
    "مرحبا بالعالم، هذا نص عربي.",
    "combining marks: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "<|im_start|>user\nhi<|im_end|> <start_of_turn>model <bos> </s>",
]


def llama_tokenize_ids(model_path: Path, text: str, parse_special: bool, tmp_path: Path) -> list[int]:
    tool = raw_tools.require("llama-tokenize")
    f = tmp_path / "prompt.txt"
    f.write_bytes(text.encode())
    cmd = [str(tool), "-m", str(model_path), "--file", str(f), "--ids", "--log-disable"]
    if not parse_special:
        cmd.append("--no-parse-special")
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout.decode()
    line = [ln for ln in out.splitlines() if ln.startswith("[")][-1]
    return list(ast.literal_eval(line))


@pytest.mark.parametrize("parse_special", [False, True])
def test_tokenize_identical_to_llama_tokenize(
    model: llamacffi.Model, model_path: Path, parse_special: bool, tmp_path: Path
) -> None:
    for text in CORPUS:
        ours = model.vocab.tokenize(text, add_special=True, parse_special=parse_special)
        assert ours.dtype == np.int32
        assert ours.tolist() == llama_tokenize_ids(model_path, text, parse_special, tmp_path), text


def test_parse_special_changes_special_text(smollm2: llamacffi.Model) -> None:
    v = smollm2.vocab
    text = "<|im_start|>user"
    special = v.tokenize(text, add_special=False, parse_special=True)
    plain = v.tokenize(text, add_special=False, parse_special=False)
    assert len(special) < len(plain)
    assert v.is_control(int(special[0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Lossless where the tokenizer is: assigned, non-control characters (it drops C0 controls and unknown code points),
# plus the usual white space.
@given(
    st.text(
        alphabet=st.one_of(st.characters(blacklist_categories=("Cs", "Cn", "Co", "Cc")), st.sampled_from("\n\t\r ")),
        max_size=200,
    )
)
def test_round_trip_byte_level_bpe(smollm2: llamacffi.Model, text: str) -> None:
    v = smollm2.vocab
    assert v.detokenize(v.tokenize(text, add_special=False)) == text


@pytest.mark.parametrize("text", CORPUS[:6])
def test_round_trip_gemma_corpus(gemma3: llamacffi.Model, text: str) -> None:
    v = gemma3.vocab
    assert v.detokenize(v.tokenize(text, add_special=False)) == text


def test_long_text_grows_the_token_buffer(model: llamacffi.Model) -> None:
    text = "🦙" * 3000  # more tokens than bytes/…: forces the resize path on byte-fallback vocabularies
    tokens = model.vocab.tokenize(text, add_special=False)
    assert model.vocab.detokenize(tokens) == text


def test_pieces_are_never_cut(model: llamacffi.Model) -> None:
    from llamacffi.raw import ffi, lib

    v = model.vocab
    buf = ffi.new("char[4096]")
    # Every token: our growing buffer (starts at 64 bytes) gives what a 4 KiB buffer gives.
    lengths = []
    for t in range(0, v.n_tokens, max(1, v.n_tokens // 5000)):
        n = lib.llama_token_to_piece(v._ptr, t, buf, 4096, 0, True)
        assert v.token_to_piece(t, special=True) == ffi.unpack(buf, n)
        lengths.append(n)
    assert max(lengths) > 0


def test_stream_decoder_matches_detokenize(model: llamacffi.Model) -> None:
    v = model.vocab
    text = "".join(CORPUS)
    tokens = v.tokenize(text, add_special=False)
    # Meaningful only if some token is not valid UTF-8 alone (a multi-byte character split across tokens).
    split = [t for t in tokens.tolist() if _invalid_utf8(v.token_to_piece(t))]
    assert split, "the corpus should split a character across tokens"
    dec = v.stream()
    chunks = [dec.feed(int(t)) for t in tokens] + [dec.flush()]
    assert all(isinstance(c, str) and "\ufffd" not in c for c in chunks)
    assert "".join(chunks) == v.detokenize(tokens)


def test_stream_decoder_special_tokens(model: llamacffi.Model) -> None:
    v = model.vocab
    tokens = v.tokenize("<|im_start|>hi <start_of_turn>", add_special=True, parse_special=True)
    dec = v.stream(special=True)
    out = "".join(dec.feed(int(t)) for t in tokens) + dec.flush()
    assert out == v.detokenize(tokens, unparse_special=True)


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_bad_token_ids(model: llamacffi.Model) -> None:
    v = model.vocab
    for bad in (-1, v.n_tokens, 2**31 - 1):
        with pytest.raises(InvalidTokenError, match=str(bad)):
            v.token_to_piece(bad)
        with pytest.raises(InvalidTokenError):
            v.detokenize([1, bad])
        with pytest.raises(ValueError):
            v.is_eog(bad)
    with pytest.raises(InvalidTokenError):
        v.detokenize(np.array([2**40], dtype=np.int64))
    with pytest.raises(TypeError):
        v.token_to_piece("a")  # type: ignore[arg-type]
    for unordered in ({1: 0, 2: 0}, {1, 2}, b"\x01\x02", bytearray(b"\x01"), "12"):  # iterable, but not ids in order
        with pytest.raises(InvalidTokenError, match="1-D sequence of int ids, not a"):
            v.detokenize(unordered)  # type: ignore[arg-type]
    assert v.detokenize(iter([1, 2])) == v.detokenize([1, 2])
    assert v.detokenize(memoryview(np.array([1, 2], np.int32))) == v.detokenize([1, 2])
    with pytest.raises(InvalidTokenError, match="not a memoryview"):
        v.detokenize(memoryview(b"\x01\x02"))  # type: ignore[arg-type]


def test_bad_text(model: llamacffi.Model) -> None:
    v = model.vocab
    with pytest.raises(TokenizeError, match="surrogate"):
        v.tokenize("abc\ud800def")
    with pytest.raises(TypeError):
        v.tokenize(123)  # type: ignore[arg-type]
    assert v.tokenize(b"hello", add_special=False).tolist() == v.tokenize("hello", add_special=False).tolist()
    assert v.tokenize("", add_special=False).tolist() == []


def test_special_tokens(model: llamacffi.Model) -> None:
    v = model.vocab
    assert v.is_eog(v.eos)
    assert 0 < v.n_tokens == model.vocab.n_tokens
    assert v.n_tokens in (49152, 262144)


def test_is_eog_agrees_with_llama_cpp_and_refuses_a_closed_model(smollm2_path: Path) -> None:
    from llamacffi.raw import lib

    m = llamacffi.Model.load(smollm2_path, vocab_only=True)
    v = m.vocab
    ptr = v._ptr
    for t in [*list(range(64)), v.eos, v.eot, v.n_tokens - 1]:
        assert v.is_eog(t) == bool(lib.llama_vocab_is_eog(ptr, t))
        assert v.is_eog(np.int32(t)) == v.is_eog(t)  # a second answer, from the cache, and numpy ids
    m.close()
    with pytest.raises(llamacffi.ClosedError):
        v.is_eog(v.n_tokens - 1)  # answered before: still refused once the model is closed


def test_stream_decoder_takes_only_int_ids(smollm2: llamacffi.Model) -> None:
    tokens = smollm2.vocab.tokenize(CORPUS[1], add_special=False)
    text = smollm2.vocab.stream().feed_many(tokens)
    assert text == smollm2.vocab.stream().feed_many(tokens.tolist()) == smollm2.vocab.detokenize(tokens)
    for bad in ([1.5], np.array([1.0]), [True], ["a"]):
        with pytest.raises(InvalidTokenError):
            smollm2.vocab.stream().feed_many(bad)  # type: ignore[arg-type]
    dec = smollm2.vocab.stream()
    dec.feed(int(tokens[0]))
    for bad in (1.5, True):  # after the first token too (a cached piece for 1 is no answer to True)
        with pytest.raises(InvalidTokenError):
            dec.feed(bad)  # type: ignore[arg-type]


def test_piece_cache_is_what_the_stream_decoder_reads(smollm2: llamacffi.Model) -> None:
    v = smollm2.vocab
    piece = v.token_to_piece(1000)
    assert v.piece_cache()[1000] == piece
    assert 1000 not in v.piece_cache(special=True) or v.piece_cache(special=True)[1000] == v.token_to_piece(
        1000, special=True
    )
