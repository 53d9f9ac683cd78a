"""First proof, end to end: greedy generation through the raw layer equals llama.cpp's own llama-simple."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from llamacffi import models
from llamacffi.backend import ensure_backend
from llamacffi.raw import ffi, lib

N_PREDICT = 24
PROMPTS = {
    "smollm2-135m": ["The capital of France is", "Write a short poem about the sea:", "Le chat noir est assis sur"],
    "gemma3-270m": ["Once upon a time", "Die Hauptstadt von Deutschland ist", "日本の首都は"],
}
CASES = [(name, prompt) for name, prompts in PROMPTS.items() for prompt in prompts]


def raw_greedy(path: Path, prompt: str, n_predict: int) -> bytes:
    """llama-simple's algorithm, written against the raw layer; returns what llama-simple prints on stdout."""
    ensure_backend()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    assert model != ffi.NULL
    try:
        vocab = lib.llama_model_get_vocab(model)
        text = prompt.encode()
        n_prompt = -lib.llama_tokenize(vocab, text, len(text), ffi.NULL, 0, True, True)
        tokens = np.empty(n_prompt, dtype=np.int32)
        assert (
            lib.llama_tokenize(vocab, text, len(text), ffi.from_buffer("llama_token[]", tokens), n_prompt, True, True)
            == n_prompt
        )
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_prompt + n_predict - 1
        cparams.n_batch = n_prompt
        ctx = lib.llama_init_from_model(model, cparams)
        assert ctx != ffi.NULL
        try:
            buf = ffi.new("char[256]")

            def piece(t: int) -> bytes:
                n = lib.llama_token_to_piece(vocab, t, buf, 256, 0, True)
                assert n >= 0
                return ffi.unpack(buf, n)

            out = b"".join(piece(int(t)) for t in tokens)
            n_vocab = lib.llama_vocab_n_tokens(vocab)
            assert (
                lib.llama_decode(ctx, lib.llama_batch_get_one(ffi.from_buffer("llama_token[]", tokens), n_prompt)) == 0
            )
            one = ffi.new("llama_token[1]")
            for i in range(n_predict):
                logits = np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(ctx, -1), 4 * n_vocab), np.float32)
                t = int(np.argmax(logits))
                if lib.llama_vocab_is_eog(vocab, t):
                    break
                out += piece(t)
                if i == n_predict - 1:
                    break
                one[0] = t
                assert lib.llama_decode(ctx, lib.llama_batch_get_one(one, 1)) == 0
            return out + b"\n"
        finally:
            lib.llama_free(ctx)
    finally:
        lib.llama_model_free(model)


@pytest.mark.parametrize("name,prompt", CASES)
def test_greedy_equals_llama_simple(name: str, prompt: str, llama_simple: Path) -> None:
    path = models.fetch(name)
    expected = subprocess.run(
        [str(llama_simple), "-m", str(path), "-n", str(N_PREDICT), "-ngl", "0", prompt],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    got = raw_greedy(path, prompt, N_PREDICT)
    assert got == expected
    assert len(got) > len(prompt.encode()) + 10  # something was generated
