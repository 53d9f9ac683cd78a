"""The engine when things go wrong or collide: requests admitted in one pass, failures while placing, stepping or
decoding, and slots freed by cancellation. Every request gets its answer or an error; none waits forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import answer_within
from llamacffi import DecodeError
from llamacffi.service import (
    GenerationError,
    GenerationOptions,
    LlamaCppService,
    LocalBackendConfig,
    ModelConfig,
    ModelType,
)
from llamacffi.service import engine as engine_module
from llamacffi.service.engine import END

RAW = GenerationOptions(temperature=0, max_tokens=12, raw=True)
ONE = GenerationOptions(temperature=0, max_tokens=1, raw=True)
BREAD = "Recipe for bread: mix flour, water, yeast and salt; knead for ten minutes; let it rise for an hour. " * 2
NEWS = "The stock market closed higher today as investors welcomed the news from the central bank."
PLANETS = "List of planets in order from the sun: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune. " * 2


@pytest.fixture(scope="module")
def service() -> Iterator[LlamaCppService]:
    with LlamaCppService(LocalBackendConfig(threads=2)) as svc:
        yield svc


def _collect(done: threading.Event, out: list[Any]) -> Any:
    def sink(item: object) -> None:
        if item is END or isinstance(item, BaseException):
            out.append("" if item is END else item)
            done.set()
        else:
            out.append(str(item))

    return sink


def test_a_copy_and_a_restore_admitted_together_each_keep_their_memory(service: LlamaCppService) -> None:
    """A copies its prefix from a free slot (llama.cpp copies between KV streams at the next decode) and B, in the
    same admission pass, would restore a saved prompt into that slot: A must still get its own prefix."""
    a_text, b_text = PLANETS + "The largest planet is", BREAD + "After baking, the bread"
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=1)) as ref:
        expected = {"A": ref.generate(a_text, RAW), "B": ref.generate(b_text, RAW)}
    cfg = ModelConfig(context_size=512, parallel=3, prompt_cache_mib=64, batch_window=0)
    with service.load_model("smollm2-135m", config=cfg) as m:
        for text in (BREAD, NEWS, PLANETS):
            m.generate(text, ONE)  # the three slots hold them
        story = m.generate_stream("Once upon a time", GenerationOptions(temperature=0, max_tokens=400, raw=True))
        next(story)  # the least recently used slot (BREAD's) is busy now: BREAD went to host memory
        opts = m._options(RAW)
        events = {k: threading.Event() for k in "AB"}
        out: dict[str, list[Any]] = {"A": [], "B": []}
        ra = m._new_request(m.tokenize_prompt(a_text, opts), opts, _collect(events["A"], out["A"]))
        rb = m._new_request(m.tokenize_prompt(b_text, opts), opts, _collect(events["B"], out["B"]))
        before = m.stats
        with m._engine._cond:  # both wait before the engine thread looks: one admission pass takes them
            m._engine.submit(ra)
            m._engine.submit(rb)
        assert events["A"].wait(120) and events["B"].wait(120)
        story.close()
        after = m.stats
    assert after["prompt_copies"] > before["prompt_copies"]  # the collision happened
    assert {k: "".join(map(str, v)) for k, v in out.items()} == expected


def test_a_request_that_cannot_be_placed_fails_and_the_next_runs(service: LlamaCppService) -> None:
    cfg = ModelConfig(context_size=256, parallel=1, prompt_cache_mib=64)
    with service.load_model("smollm2-135m", config=cfg) as m:
        m.generate("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu", ONE)
        ctx = m._engine.ctx

        def no_memory(seq_id: int = 0) -> bytearray:
            raise MemoryError("bytearray")

        ctx.seq_state_bytearray = no_memory  # type: ignore[method-assign]  # saving the slot's prompt fails
        with pytest.raises(GenerationError, match=r"could not be placed.*MemoryError"):
            answer_within(60, lambda: m.generate("Completely different words here", RAW))
        del ctx.seq_state_bytearray
        assert m.load == (0, 0)
        with service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1)) as ref:
            assert m.generate("Completely different words here", RAW) == ref.generate(
                "Completely different words here", RAW
            )


def test_a_failed_step_ends_its_requests_and_the_engine_thread_goes_on(service: LlamaCppService) -> None:
    embedder = service.load_model("smollm2-135m", ModelType.TEXT_EMBEDDING, ModelConfig(context_size=64))
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=128, parallel=1)) as m, embedder:
        expected = m.generate("Hi", RAW)
        engine = m._engine

        def broken(alone: bool) -> None:
            raise RuntimeError("a fault outside the step's own handling")

        engine.step = broken  # type: ignore[method-assign]
        with pytest.raises(GenerationError, match="a fault outside"):
            answer_within(60, lambda: m.generate("Hi", RAW))
        del engine.step
        assert answer_within(60, lambda: embedder.embed(["hello"])).shape == (1, embedder.dim)  # another model: stepped
        assert m.generate("Hi", RAW) == expected  # and this one again


def test_a_closed_stream_leaves_its_slot_to_a_request_made_at_once(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1, max_queue=0)) as m:
        for _ in range(3):
            stream = m.generate_stream("Once upon a time", GenerationOptions(temperature=0, max_tokens=200, raw=True))
            next(stream)
            stream.close()
            assert m.generate("Hi", ONE)  # no QueueFullError: the cancelled request holds nothing


def test_a_failed_decode_frees_the_slot_before_the_caller_hears(
    service: LlamaCppService, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=128, parallel=1, max_queue=0)) as m:
        emit = engine_module._emit

        def slow_after_errors(req: Any, item: object) -> None:
            emit(req, item)
            if isinstance(item, Exception):
                time.sleep(0.01)  # the engine thread is slow to go on after the caller hears

        monkeypatch.setattr(engine_module, "_emit", slow_after_errors)
        ctx = m._engine.ctx
        real = ctx.decode
        fail = [True]

        def flaky(batch: Any) -> None:
            if fail[0]:
                fail[0] = False
                raise DecodeError("a failed llama_decode", -3)
            real(batch)

        ctx.decode = flaky  # type: ignore[method-assign]
        with pytest.raises(GenerationError, match="a failed llama_decode"):
            m.generate("Hello there", RAW)
        assert m.generate("Hello there", RAW)  # at once: the slot is already free


def test_other_threads_take_the_lock_while_a_prompt_is_saved_or_restored(service: LlamaCppService) -> None:
    """Saving or restoring a sequence's memory may copy gigabytes: submissions, cancellations and the counts of
    every model (a server's event loop among the callers) go on meanwhile."""
    cfg = ModelConfig(context_size=256, parallel=1, prompt_cache_mib=64)
    with service.load_model("smollm2-135m", config=cfg) as m:
        engine = m._engine
        ctx = engine.ctx
        free_while: list[bool] = []

        def lock_is_free() -> None:
            def take() -> None:
                got = engine._cond.acquire(timeout=10)
                if got:
                    engine._cond.release()
                free_while.append(got)

            t = threading.Thread(target=take)
            t.start()
            t.join()

        save, load = ctx.seq_state_bytearray, ctx.seq_state_load

        def saving(seq_id: int = 0) -> bytearray:
            lock_is_free()
            return save(seq_id)

        def restoring(state: Any, seq_id: int = 0) -> None:
            lock_is_free()
            load(state, seq_id)

        ctx.seq_state_bytearray = saving  # type: ignore[method-assign]
        ctx.seq_state_load = restoring  # type: ignore[method-assign]
        expected = m.generate(PLANETS, RAW)
        m.generate(BREAD, RAW)  # PLANETS is saved to host memory as BREAD takes the slot
        assert m.generate(PLANETS, RAW) == expected  # and restored
        assert m.stats["prompt_cache_saves"] >= 1 and m.stats["prompt_cache_restores"] >= 1
        assert free_while and all(free_while)
        assert m.load == (0, 0)
