"""Embeddings: the vectors of llama.cpp's own llama-embedding, packing many texts per decode, bad input, the
service under concurrent callers, and the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llamacffi
from llamacffi import embedding, raw_tools
from llamacffi.embedding import Embedder, Pooling, TextTooLongError

THREADS = 2
TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Quantum computers use qubits.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Ünïcödé, emoji 🦙 and 漢字 in one line.",
    "Hello",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def llama_embedding(path: Path, texts: list[str], pooling: str, normalize: int = 2) -> np.ndarray:
    """llama.cpp's llama-embedding on the same texts: all of them in one decode, as Model.embed does here."""
    exe = raw_tools.find("llama-embedding")
    if exe is None:
        pytest.skip('llama-embedding is not built (install with CMAKE_ARGS="-DLLAMACFFI_RAW_TOOLS=ON")')
    argv = [
        str(exe),
        "-m",
        str(path),
        "-p",
        "\n".join(texts),
        "--pooling",
        pooling,
        "--embd-normalize",
        str(normalize),
        "--embd-output-format",
        "json",
        "-c",
        "512",
        "-b",
        "512",
        "-ub",
        "512",
        "-t",
        str(THREADS),
        "-ngl",
        "999",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)["data"]
    return np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)


# ---- against llama.cpp's own program ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,pooling",
    [("smollm2-135m", "mean"), ("smollm2-135m", "last"), ("gemma3-270m", "mean"), ("smollm2-135m", "none")],
)
def test_vectors_match_llama_embedding(name: str, pooling: str, request: pytest.FixtureRequest) -> None:
    model: llamacffi.Model = request.getfixturevalue(name.split("-")[0])
    theirs = llama_embedding(model.path, TEXTS, pooling)
    ours = embedding.embed(model, TEXTS, pooling=pooling, n_threads=THREADS)
    if pooling == "none":  # one vector per token, every text's tokens in turn
        assert isinstance(ours, list) and len(ours) == len(TEXTS)
        assert [len(t) for t in ours] == [len(model.vocab.tokenize(t, parse_special=True)) for t in TEXTS]
        ours = np.vstack(ours)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    assert ours.shape == theirs.shape
    assert cosines(ours, theirs).min() >= 0.9999


def test_unnormalized_vectors_match_llama_embedding(smollm2: llamacffi.Model) -> None:
    theirs = llama_embedding(smollm2.path, TEXTS[:3], "mean", normalize=-1)
    ours = embedding.embed(smollm2, TEXTS[:3], pooling="mean", normalize=False, n_threads=THREADS)
    assert isinstance(ours, np.ndarray)
    assert cosines(ours, theirs).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-3)


# ---- packing ----------------------------------------------------------------------------------------------------

SENTENCES = [
    f"Sentence {i}: " + " ".join(["alpha", "beta", "gamma", "delta"][: 1 + i % 4]) * (1 + i % 3) for i in range(16)
]


@pytest.mark.parametrize("name,bound", [("smollm2", 0.99999), ("gemma3", 0.999)])
def test_batched_equals_one_by_one(name: str, bound: float, request: pytest.FixtureRequest) -> None:
    # Without flash attention the kernels hardly depend on what else is in the batch; gemma's quantized matrix
    # kernels still differ slightly between one row and many (its vectors have a few very large components).
    model: llamacffi.Model = request.getfixturevalue(name)
    texts = SENTENCES[:8]
    with Embedder(model, flash_attn=False, n_threads=THREADS) as e:
        together = e.embed(texts)
        apart = np.vstack([e.embed([t]) for t in texts])
    assert isinstance(together, np.ndarray) and together.shape == (len(texts), model.n_embd)
    assert cosines(together, apart).min() >= bound


def test_order_is_kept_across_batch_splits(smollm2: llamacffi.Model) -> None:
    long_text = "a much longer text, " * 12
    texts = [*SENTENCES[:5], long_text, *SENTENCES[5:10]]
    with Embedder(smollm2, n_threads=THREADS) as big:
        reference = big.embed(texts)
    # 24 tokens a decode: most decodes hold one or two texts, the long one (more than 24 tokens) is decoded alone
    with Embedder(smollm2, batch_tokens=24, max_tokens=128, n_threads=THREADS) as small:
        assert len(smollm2.vocab.tokenize(long_text)) > small.batch_tokens
        split = small.embed(texts)
    assert isinstance(reference, np.ndarray) and isinstance(split, np.ndarray)
    assert cosines(split, reference).min() >= 0.999  # flash attention's kernels vary a little with the batch
    similarity = split @ reference.T
    assert list(similarity.argmax(axis=1)) == list(range(len(texts)))  # each text lands on its own row


def test_model_embed_splits_by_batch_tokens(smollm2: llamacffi.Model) -> None:
    texts = SENTENCES[:8]
    small = smollm2.embed(texts, batch_tokens=16)
    whole = smollm2.embed(texts)
    assert isinstance(small, np.ndarray) and small.shape == (len(texts), smollm2.n_embd)
    assert list((small @ whole.T).argmax(axis=1)) == list(range(len(texts)))
    assert cosines(small, whole).min() >= 0.999


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(1, 64), st.integers(1, 8))
def test_plan_covers_every_text_in_order_within_limits(lengths: list[int], batch: int, seqs: int) -> None:
    runs = embedding.plan(lengths, batch, seqs)
    assert [i for r in runs for i in r] == list(range(len(lengths)))
    for r in runs:
        assert len(r) <= seqs
        assert len(r) == 1 or sum(lengths[i] for i in r) <= batch


# ---- pooling and normalisation ----------------------------------------------------------------------------------


def test_normalisation(smollm2: llamacffi.Model) -> None:
    unit = smollm2.embed(TEXTS)
    raw = smollm2.embed(TEXTS, normalize=False)
    assert isinstance(unit, np.ndarray) and isinstance(raw, np.ndarray)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1.0).min() > 0.1  # raw vectors keep their own lengths
    np.testing.assert_allclose(embedding.normalized(raw.copy()), unit, atol=1e-6)
    tokens = smollm2.embed(TEXTS[:2], pooling="none")
    assert isinstance(tokens, list)
    for t in tokens:
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_pooling_choices(smollm2: llamacffi.Model) -> None:
    assert embedding.declared_pooling(smollm2) is None  # a generative model: mean unless asked otherwise
    with Embedder(smollm2, n_threads=THREADS) as e:
        assert e.pooling == Pooling.MEAN and e.dim == smollm2.n_embd
    mean = smollm2.embed(TEXTS[:3], pooling=None)
    assert np.array_equal(mean, smollm2.embed(TEXTS[:3], pooling="MEAN"))
    last = smollm2.embed(TEXTS[:3], pooling=Pooling.LAST)
    tokens = smollm2.embed(TEXTS[:3], pooling="none", normalize=False)
    assert isinstance(last, np.ndarray) and isinstance(tokens, list)
    # last pooling is the last token's vector; mean is the mean of the token vectors
    assert cosines(last, np.vstack([t[-1] for t in tokens])).min() >= 0.9999
    assert cosines(mean, np.vstack([t.mean(axis=0) for t in tokens])).min() >= 0.9999
    with pytest.raises(llamacffi.InvalidArgumentError, match="reranking model"):
        smollm2.embed(TEXTS[:1], pooling="rank")
    with pytest.raises(llamacffi.InvalidArgumentError, match="pooling must be"):
        smollm2.embed(TEXTS[:1], pooling="median")


# ---- bad input --------------------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors(smollm2: llamacffi.Model) -> None:
    with pytest.raises(llamacffi.InvalidArgumentError, match="texts is empty"):
        smollm2.embed([])
    with pytest.raises(llamacffi.InvalidArgumentError, match=r"texts\[1\] is an empty string"):
        smollm2.embed(["fine", ""])
    with pytest.raises(TypeError, match=r"texts\[2\] must be a str, not int"):
        smollm2.embed(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(llamacffi.InvalidArgumentError, match="not a single text"):
        smollm2.embed("just one")
    with pytest.raises(llamacffi.InvalidArgumentError, match="batch_tokens"):
        smollm2.embed(["a"], batch_tokens=0)
    with pytest.raises(llamacffi.InvalidArgumentError, match="normalize"):
        smollm2.embed(["a"], normalize="yes")  # type: ignore[arg-type]


def test_text_over_the_context_is_refused_or_cut(smollm2: llamacffi.Model) -> None:
    limit = smollm2.n_ctx_train
    too_long = "word " * (limit + 100)
    with pytest.raises(TextTooLongError, match=rf"texts\[1\] is \d+ tokens, over the {limit} tokens") as info:
        smollm2.embed(["short", too_long])
    assert info.value.index == 1 and info.value.n_tokens > limit and info.value.limit == limit
    copy = pickle.loads(pickle.dumps(info.value))  # as across a process's pipe
    assert type(copy) is TextTooLongError and (str(copy), copy.__dict__) == (str(info.value), info.value.__dict__)
    with Embedder(smollm2, batch_tokens=32, n_threads=THREADS) as e:
        assert e.max_tokens == 32
        with pytest.raises(TextTooLongError, match=r"texts\[0\] is"):
            e.embed([too_long])
        cut = e.embed([too_long], truncate=True)
        first = e.embed_tokens([smollm2.vocab.tokenize(too_long, parse_special=True)[:32]])
    assert np.array_equal(cut, first)
    with pytest.raises(llamacffi.InvalidArgumentError, match="max_tokens"):
        Embedder(smollm2, max_tokens=limit + 1)


def test_closed_embedder_and_model(smollm2_path: Path) -> None:
    model = llamacffi.Model.load(smollm2_path)
    e = Embedder(model, batch_tokens=64, n_threads=THREADS)
    e.close()
    with pytest.raises(llamacffi.ClosedError):
        e.embed(["hello"])
    model.close()
    with pytest.raises(llamacffi.ClosedError):
        model.embed(["hello"])


# ---- the service ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_model(smollm2_path: Path):  # type: ignore[no-untyped-def]
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig, ModelType

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING, ModelConfig(context_size=256))


def test_service_types(smollm2_path: Path, service_model) -> None:  # type: ignore[no-untyped-def]
    from llamacffi.service import (
        EmbeddingModel,
        GenerationOptions,
        InferenceError,
        LlamaCppService,
        LocalBackendConfig,
        ModelConfig,
        ModelType,
    )

    assert isinstance(service_model, EmbeddingModel)
    assert service_model.model_type == ModelType.TEXT_EMBEDDING
    assert service_model.as_embedding() is service_model
    with pytest.raises(InferenceError, match="not a text-to-text model"):
        service_model.as_text_to_text()
    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        assert ModelType.TEXT_EMBEDDING in svc.supported_model_types
        text = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=64, parallel=1))
        with pytest.raises(InferenceError, match="not a text embedding model"):
            text.as_embedding()
        # generation and embedding at once, on the one engine thread of the process (one OpenMP team)
        generated: list[str] = []
        worker = threading.Thread(
            target=lambda: generated.append(
                text.generate("Count: one, two,", GenerationOptions(max_tokens=6, temperature=0, raw=True))
            )
        )
        worker.start()
        vectors = service_model.embed(TEXTS[:2])
        worker.join(timeout=120)
        assert generated and generated[0] and vectors.shape == (2, service_model.dim)
        names = [t.name for t in threading.enumerate()]
        assert names.count("llamacffi-engine") == 1 and not any("embed" in n for n in names)


def test_service_batches_concurrent_callers(smollm2: llamacffi.Model, service_model) -> None:  # type: ignore
    texts = [f"Request {i // 2}, text {i % 2}: " + SENTENCES[i % len(SENTENCES)] for i in range(32)]
    sequential = np.vstack([service_model.embed(texts[k : k + 2]) for k in range(0, len(texts), 2)])
    before = dict(service_model.stats)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(8)

    def caller(worker: int) -> None:
        start.wait()
        for k in range(worker * 4, worker * 4 + 4, 2):  # two requests of two texts each
            results[k] = service_model.embed(texts[k : k + 2])

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    concurrent = np.vstack([results[k] for k in range(0, len(texts), 2)])
    assert concurrent.shape == (32, smollm2.n_embd)
    # each caller got its own rows; what else a decode holds changes a vector a little (flash attention's kernels)
    assert list((concurrent @ sequential.T).argmax(axis=1)) == list(range(32))
    assert cosines(concurrent, sequential).min() >= 0.999
    requests = service_model.stats["requests"] - before["requests"]
    passes = service_model.stats["passes"] - before["passes"]
    assert requests == 16 and passes < requests  # callers' texts were embedded together


def test_service_async_and_errors(service_model) -> None:  # type: ignore[no-untyped-def]
    from llamacffi.service import ContextOverflowError, InvalidConfigError

    async def main() -> list[np.ndarray]:
        return list(await asyncio.gather(*(service_model.aembed([t]) for t in TEXTS)))

    gathered = np.vstack(asyncio.run(main()))
    assert cosines(gathered, service_model.embed(TEXTS)).min() >= 0.999
    with pytest.raises(InvalidConfigError, match="texts is empty"):
        service_model.embed([])
    with pytest.raises(InvalidConfigError, match="must be a str"):
        service_model.embed([b"bytes"])
    with pytest.raises(ContextOverflowError, match=r"texts\[0\] is"):
        service_model.embed(["word " * 300])
    unnormalized = service_model.embed(TEXTS[:2], normalize=False)
    assert np.abs(np.linalg.norm(unnormalized, axis=1) - 1).min() > 0.1


def test_service_closed(smollm2_path: Path) -> None:
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelClosedError, ModelType

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        model = svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING)
        model.close()
        with pytest.raises(ModelClosedError):
            model.embed(["hello"])


# 48 texts of about 30 tokens: one or two per 64-token decode
LONG_TEXTS = [f"Text {i}: " + " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3)) for i in range(48)]


@pytest.fixture
def small_steps(smollm2_path: Path):  # type: ignore[no-untyped-def]
    """A service with an embedding model whose decodes hold 64 tokens, and a text model beside it."""
    from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig, ModelType

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        config = ModelConfig(context_size=128, batch_size=64, parallel=1, max_queue=1)
        embedder = svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING, config)
        text = svc.load_model(str(smollm2_path), config=ModelConfig(context_size=64, parallel=1))
        yield embedder, text


def test_a_large_request_does_not_hold_up_other_models(small_steps) -> None:  # type: ignore[no-untyped-def]
    # One engine thread steps every model; a request of many texts is embedded a decode at a time, so a text
    # model's stream goes on between its steps instead of waiting for all of it.
    from llamacffi.service import GenerationOptions

    embedder, text = small_steps
    big = embedder._submit(LONG_TEXTS, True)
    answer = text.generate("Count: one, two,", GenerationOptions(max_tokens=6, temperature=0, raw=True))
    assert answer and not big.done(), "the stream waited for the whole embedding request"
    assert big.result(timeout=300).shape == (len(LONG_TEXTS), embedder.dim)
    assert embedder.stats["passes"] > len(LONG_TEXTS) // 4  # a decode's worth per step, not the whole request
    assert cosines(big.result()[:3], embedder.embed(LONG_TEXTS[:3])).min() >= 0.999  # rows in order


def test_a_cancelled_request_stops_between_steps(small_steps) -> None:  # type: ignore[no-untyped-def]
    embedder, _ = small_steps

    async def main() -> int:
        task = asyncio.ensure_future(embedder.aembed(LONG_TEXTS))
        while embedder.stats["passes"] == 0:  # under way
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await embedder.aembed(["after"])  # served once the cancelled texts are dropped
        return int(embedder.stats["passes"])

    assert asyncio.run(main()) < len(LONG_TEXTS) // 4  # the cancelled request's other steps never ran


def test_the_queue_of_an_embedding_model_is_bounded(small_steps) -> None:  # type: ignore[no-untyped-def]
    from llamacffi.service import QueueFullError

    embedder, _ = small_steps  # parallel 1 + max_queue 1
    first, second = embedder._submit(LONG_TEXTS, True), embedder._submit(LONG_TEXTS[:1], True)
    with pytest.raises(QueueFullError, match="max_queue"):
        embedder.embed(["a third"])
    first.result(timeout=300)
    second.result(timeout=300)
    assert embedder.embed(["a third"]).shape == (1, embedder.dim)


def test_the_model_config_applies_to_an_embedding_model(smollm2_path: Path) -> None:
    from llamacffi.service import InvalidConfigError, LlamaCppService, LocalBackendConfig, ModelConfig, ModelType

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        vectors = [
            svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING, ModelConfig(flash_attn=fa)).embed(TEXTS[:2])
            for fa in (False, True)
        ]  # other kernels: the same vectors, not the same bits
        assert not np.array_equal(*vectors) and cosines(*vectors).min() >= 0.999
        past = ModelConfig(
            context_size=2 * svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING)._model.n_ctx_train
        )
        with pytest.warns(RuntimeWarning, match="was trained for; texts may have"):
            svc.load_model(str(smollm2_path), ModelType.TEXT_EMBEDDING, past).close()
        with pytest.raises(InvalidConfigError, match="was trained for"):
            svc.load_model(
                str(smollm2_path), ModelType.TEXT_EMBEDDING, ModelConfig(**{**past.to_dict(), "strict_context": True})
            )


# ---- the CLI ----------------------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "llamacffi", "embed", "-t", str(THREADS), *args],
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        timeout=300,
    )


def test_cli_json_and_npy(smollm2: llamacffi.Model, tmp_path: Path) -> None:
    expected = smollm2.embed(TEXTS[:3])
    out = run_cli("-m", str(smollm2.path), *TEXTS[:3])
    assert out.returncode == 0, out.stderr.decode()
    body = json.loads(out.stdout)
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert cosines(vectors, expected).min() >= 0.99999
    listing = tmp_path / "texts.txt"
    listing.write_text("\n".join([TEXTS[0], "", TEXTS[1], TEXTS[2]]) + "\n", encoding="utf-8")
    npy = run_cli("-m", str(smollm2.path), "--file", str(listing), "--format", "npy")
    assert npy.returncode == 0, npy.stderr.decode()
    array = np.load(io.BytesIO(npy.stdout))
    assert array.dtype == np.float32 and array.shape == expected.shape  # the blank line is skipped
    assert cosines(array, expected).min() >= 0.99999
    raw = run_cli(
        "-m", str(smollm2.path), "--format", "npy", "--no-normalize", "--pooling", "last", "--file", "-", stdin=TEXTS[0]
    )
    assert raw.returncode == 0, raw.stderr.decode()
    np.testing.assert_allclose(
        np.load(io.BytesIO(raw.stdout)), smollm2.embed(TEXTS[:1], pooling="last", normalize=False), rtol=1e-4, atol=1e-4
    )


def test_cli_errors(smollm2: llamacffi.Model) -> None:
    empty = run_cli("-m", str(smollm2.path), "")
    assert empty.returncode == 1 and empty.stderr == b"llamacffi: error: TEXT 1 is empty: nothing to embed\n"
    none = run_cli("-m", str(smollm2.path))
    assert none.returncode == 1 and b"no text to embed" in none.stderr
    both = run_cli("-m", str(smollm2.path), "--format", "npy", "--pooling", "none", "x")
    assert both.returncode == 1 and b"--format json" in both.stderr
