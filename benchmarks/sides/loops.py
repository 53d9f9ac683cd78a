"""llamacffi's own loops: llama-simple's algorithm on the raw layer, the Pythonic generation loop, prompt
processing through a Batch."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from llamacffi import Batch, Context, Model
from llamacffi.backend import ensure_backend
from llamacffi.raw import ffi, lib

from ..harness.common import gpu_layers


class RawLoop:
    """llama-simple's greedy loop written against the raw layer (``lib.llama_decode`` + ``llama_batch_get_one`` +
    numpy argmax + ``llama_token_to_piece``), timed as llama-simple times itself: from the prompt's decode to the
    last token. The model is loaded once; each run creates its context as llama-simple does (``n_ctx`` = prompt +
    ``n_predict`` - 1, ``n_batch`` = prompt)."""

    def __init__(self, path: Path, threads: int) -> None:
        ensure_backend()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers()
        self.model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if self.model == ffi.NULL:
            raise RuntimeError(f"could not load {path}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.threads = threads

    def close(self) -> None:
        if self.model != ffi.NULL:
            lib.llama_model_free(self.model)
            self.model = ffi.NULL

    def run(self, prompt: str, n_predict: int) -> tuple[float, dict[str, Any]]:
        """tokens/s as llama-simple prints it; ``extra["gen_tps"]`` is the rate of the one-token decodes alone."""
        vocab = self.vocab
        text = prompt.encode()
        n_prompt = -lib.llama_tokenize(vocab, text, len(text), ffi.NULL, 0, True, True)
        tokens = np.empty(n_prompt, dtype=np.int32)
        lib.llama_tokenize(vocab, text, len(text), ffi.from_buffer("llama_token[]", tokens), n_prompt, True, True)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_prompt + n_predict - 1
        cparams.n_batch = n_prompt
        cparams.n_threads = cparams.n_threads_batch = self.threads
        ctx = lib.llama_init_from_model(self.model, cparams)
        if ctx == ffi.NULL:
            raise RuntimeError("could not create a context")
        try:
            buf = ffi.new("char[128]")
            one = ffi.new("llama_token[1]")
            batch = lib.llama_batch_get_one(ffi.from_buffer("llama_token[]", tokens), n_prompt)
            n_vocab = self.n_vocab
            pieces = []
            n_decode = 0
            n_pos, n_tokens = 0, n_prompt
            t0 = time.perf_counter()
            t_gen = t0
            while n_pos + n_tokens < n_prompt + n_predict:
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                if n_pos == 0:
                    t_gen = time.perf_counter()
                n_pos += n_tokens
                logits = np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(ctx, -1), 4 * n_vocab), np.float32)
                token = int(np.argmax(logits))
                if lib.llama_vocab_is_eog(vocab, token):
                    break
                n = lib.llama_token_to_piece(vocab, token, buf, 128, 0, True)
                pieces.append(ffi.unpack(buf, n))
                one[0] = token
                batch = lib.llama_batch_get_one(one, 1)
                n_tokens = 1
                n_decode += 1
            t1 = time.perf_counter()
        finally:
            lib.llama_free(ctx)
        single = max(0, n_decode - 1)  # one-token decodes after the prompt's
        return n_decode / (t1 - t0), {
            "tokens": n_decode,
            "prompt_tokens": n_prompt,
            "gen_tps": single / (t1 - t_gen) if single else 0.0,
        }


def pythonic_tg(model: Model, threads: int, n: int) -> float:
    """Single-token decode loop through the Pythonic layer, with greedy sampling and a StreamDecoder, from position
    0 as llama-bench's tg test (tokens/s over ``n`` one-token decodes), after its warm-up of one token."""
    vocab = model.vocab
    with Context(model, n_ctx=n, n_batch=2048, n_ubatch=512, n_threads=threads) as ctx:
        stream = vocab.stream()
        token = vocab.bos if vocab.add_bos else 1
        ctx.decode_token(token, 0)
        ctx.memory.clear()
        t0 = time.perf_counter()
        for pos in range(n):
            ctx.decode_token(token, pos)
            token = int(np.argmax(ctx.logits()))
            stream.feed(token)
        stream.flush()
        return n / (time.perf_counter() - t0)


def random_prompt(model: Model, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, model.vocab.n_tokens, n, dtype=np.int32)
    if model.vocab.add_bos:
        tokens[0] = model.vocab.bos
    return tokens


def batch_pp(model: Model, threads: int, n: int) -> float:
    """Prompt processing as llama-bench's pp test: ``n`` random tokens in one Batch, one decode (tokens/s). As
    llama-bench does, a warm-up decode in the same context comes first and its memory is cleared."""
    tokens = random_prompt(model, n)
    with Context(model, n_ctx=n, n_batch=2048, n_ubatch=512, n_threads=threads) as ctx:
        batch = Batch.from_tokens(tokens)
        ctx.decode(batch)
        ctx.memory.clear()
        t0 = time.perf_counter()
        ctx.decode(batch)
        return n / (time.perf_counter() - t0)


class BatchedDecode:
    """What llama.cpp gives ``k`` sequences decoded together, without the service: each step one Batch of ``k``
    one-token sequences (logits for each), ``Context.decode``, then argmax per sequence. The context is shaped as
    the service's (``n_seq_max`` sequences of ``n_ctx_seq`` positions, a stream each)."""

    def __init__(self, model: Model, threads: int, n_seq_max: int, n_ctx_seq: int) -> None:
        self.ctx = Context(
            model, n_ctx=n_ctx_seq * n_seq_max, n_batch=512, n_seq_max=n_seq_max, n_threads=threads, kv_unified=False
        )
        self.batch = Batch(n_seq_max, n_seq_max=n_seq_max)
        self.start = model.vocab.tokenize("Once upon a time", add_special=False)

    def run(self, k: int, n: int, stride: int = 1) -> tuple[float, dict[str, Any]]:
        """Aggregate tokens/s of ``n`` steps of ``k`` sequences, with sequence ids 0, stride, 2 stride, ..."""
        ctx, batch = self.ctx, self.batch
        ctx.memory.clear()
        ids = [i * stride for i in range(k)]
        tokens = [int(self.start[i % len(self.start)]) for i in range(k)]
        t0 = time.perf_counter()
        for pos in range(n):
            batch.clear()
            for i, seq in enumerate(ids):
                batch.add(tokens[i], pos, seq, logits=True)
            ctx.decode(batch)
            for i in range(k):
                tokens[i] = int(np.argmax(ctx.logits(i)))
        dt = time.perf_counter() - t0
        return k * n / dt, {"seconds": dt, "seq_ids": ids}

    def close(self) -> None:
        self.ctx.close()


class LoopsHost:
    """llamacffi without the service, decoding from the main thread: Batch pp, the Pythonic and raw-layer loops,
    llama_decode of k sequences, the per-call microbenchmarks (in a worker process, ``benchmarks.harness.worker``)."""

    OPERATIONS = frozenset({"info", "pp", "pythonic", "raw_loop", "decode_k", "micro_round"})

    def __init__(self, path: str, threads: int, micro_calls: int, decode_calls: int, max_streams: int) -> None:
        from . import micro

        self.loops = sys.modules[__name__]
        self.threads = threads
        self.model = Model.load(path, n_gpu_layers=gpu_layers())
        self.raw = RawLoop(Path(path), threads)
        self.micro = micro.Micro(self.model, threads, micro_calls, decode_calls)
        self.max_streams = max_streams
        self.batched: Any = None

    def info(self) -> dict[str, Any]:
        return {"n_vocab": self.model.vocab.n_tokens, "description": self.model.description, "ring": self.micro.ring}

    def pp(self, n: int) -> tuple[float, dict[str, Any]]:
        return self.loops.batch_pp(self.model, self.threads, n), {}

    def pythonic(self, n: int) -> tuple[float, dict[str, Any]]:
        return self.loops.pythonic_tg(self.model, self.threads, n), {}

    def raw_loop(self, prompt: str, n: int) -> tuple[float, dict[str, Any]]:
        return self.raw.run(prompt, n)

    def decode_k(self, k: int, n: int, stride: int = 1) -> tuple[float, dict[str, Any]]:
        if self.batched is None:  # shaped as the service's context for concurrent streams
            self.batched = self.loops.BatchedDecode(self.model, self.threads, self.max_streams, 512)
        result: tuple[float, dict[str, Any]] = self.batched.run(k, n, stride)
        return result

    def micro_round(self) -> tuple[float, dict[str, Any]]:
        return 0.0, self.micro.run()
