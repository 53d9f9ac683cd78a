"""The service: configs, generation, stop sequences, prefix reuse, concurrency, cancellation, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import llamacffi
from llamacffi.service import (
    ContextOverflowError,
    GenerationOptions,
    InferenceError,
    InvalidConfigError,
    LlamaCppService,
    LlamaCppSpecificConfig,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelClosedError,
    ModelConfig,
    ModelLoadFailedError,
    ModelNotFoundError,
    ModelType,
    QueueFullError,
)
from llamacffi.service.stops import StopMatcher

GREEDY = GenerationOptions(temperature=0, max_tokens=24)
RAW = GenerationOptions(temperature=0, max_tokens=40, raw=True)


@pytest.fixture(scope="module")
def service() -> Iterator[LlamaCppService]:
    with LlamaCppService(LocalBackendConfig(threads=2)) as svc:
        yield svc


@pytest.fixture(scope="module")
def smol(service: LlamaCppService) -> LlamaCppTextModel:
    return service.load_model("smollm2-135m", config=ModelConfig(context_size=1024, parallel=4))


# ---- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,kw,field",
    [
        (GenerationOptions, {"max_tokens": 0}, "max_tokens"),
        (GenerationOptions, {"temperature": -1}, "temperature"),
        (GenerationOptions, {"temperature": float("nan")}, "temperature"),
        (GenerationOptions, {"top_p": 0}, "top_p"),
        (GenerationOptions, {"top_k": -1}, "top_k"),
        (GenerationOptions, {"min_p": 2}, "min_p"),
        (GenerationOptions, {"seed": -3}, "seed"),
        (GenerationOptions, {"stop_sequences": "stop"}, "stop_sequences"),
        (GenerationOptions, {"stop_sequences": [""]}, "stop_sequences"),
        (GenerationOptions, {"stop_sequences": None}, "stop_sequences"),
        (GenerationOptions, {"stop_sequences": 5}, "stop_sequences"),
        (GenerationOptions, {"stop_sequences": (s for s in ["x"])}, "stop_sequences"),
        (GenerationOptions, {"stop_sequences": {"x": 1}}, "stop_sequences"),
        (GenerationOptions, {"penalty_last_n": (1 << 20) + 1}, "penalty_last_n"),
        (ModelConfig, {"context_size": 1 << 20, "parallel": 8}, "context_size"),
        (ModelConfig, {"batch_size": 2, "parallel": 4}, "batch_size"),
        (GenerationOptions, {"raw": "yes"}, "raw"),
        (ModelConfig, {"context_size": 0}, "context_size"),
        (ModelConfig, {"parallel": 0}, "parallel"),
        (ModelConfig, {"batch_size": True}, "batch_size"),
        (ModelConfig, {"flash_attn": "on"}, "flash_attn"),
        (ModelConfig, {"batch_window": -0.001}, "batch_window"),
        (ModelConfig, {"batch_window": float("inf")}, "batch_window"),
        (ModelConfig, {"prompt_cache_mib": -1}, "prompt_cache_mib"),
        (ModelConfig, {"prompt_cache_mib": 1.5}, "prompt_cache_mib"),
        (LocalBackendConfig, {"threads": 0}, "threads"),
        (LocalBackendConfig, {"gpu_layers": -2}, "gpu_layers"),
        (LocalBackendConfig, {"gpu_layers": 1 << 31}, "gpu_layers"),
        (ModelConfig, {"chat_template": "chatml\0junk"}, "chat_template"),
        (ModelConfig, {"chat_template": "\ud800"}, "chat_template"),
        (LlamaCppSpecificConfig, {"numa_strategy": "sideways"}, "numa_strategy"),
        (LlamaCppSpecificConfig, {"use_mmap": 1}, "use_mmap"),
    ],
)
def test_config_validation_names_the_field(cls: type, kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidConfigError, match=field) as caught:
        cls(**kw)
    assert caught.value.field == f"{cls.__name__}.{field}"
    copy = pickle.loads(pickle.dumps(caught.value))  # as it crosses a worker's pipe
    assert (type(copy), str(copy), copy.field) == (InvalidConfigError, str(caught.value), caught.value.field)
    with pytest.raises(ValueError):
        cls(**kw)


def test_config_dict_and_json_round_trip() -> None:
    cfg = LocalBackendConfig(
        threads=2,
        llama_cpp=LlamaCppSpecificConfig(use_mlock=True, numa_strategy="disabled", use_mmap=False, huge_pages=True),
    )
    assert LocalBackendConfig.from_dict(cfg.to_dict()) == cfg
    assert LocalBackendConfig.from_json(cfg.to_json()) == cfg
    opts = GenerationOptions(stop_sequences=["a", "b"], seed=3, system="s")
    assert GenerationOptions.from_json(json.dumps(opts.to_dict())) == opts
    assert ModelConfig.from_dict(ModelConfig(parallel=2).to_dict()).parallel == 2
    with pytest.raises(InvalidConfigError, match="unknown"):
        ModelConfig.from_dict({"context": 5})
    with pytest.raises(InvalidConfigError):
        ModelConfig.from_json("{not json")
    for bad in ({1: 2, "a": 3}, {None: 1}):
        with pytest.raises(InvalidConfigError, match="unknown"):
            ModelConfig.from_dict(bad)  # type: ignore[arg-type]
    for text in (None, 5, '{"parallel": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        with pytest.raises(InvalidConfigError):
            ModelConfig.from_json(text)  # type: ignore[arg-type]


# ---- generation ---------------------------------------------------------------------------------------------------


def test_interfaces(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    assert service.backend_type.value == "llama_cpp"
    assert service.supported_model_types == [ModelType.TEXT_TO_TEXT, ModelType.TEXT_EMBEDDING]
    assert smol.model_type is ModelType.TEXT_TO_TEXT and smol.name == "smollm2-135m"
    assert smol.as_text_to_text() is smol


def test_stream_concatenates_to_generate_with_same_seed(smol: LlamaCppTextModel) -> None:
    opts = GenerationOptions(temperature=0.9, top_k=40, top_p=0.95, seed=1234, max_tokens=40)
    full = smol.generate("Write a sentence about llamas.", opts)
    chunks = list(smol.generate_stream("Write a sentence about llamas.", opts))
    assert full and "".join(chunks) == full
    assert all(isinstance(c, str) and c for c in chunks)


def test_max_tokens_is_exact(smol: LlamaCppTextModel) -> None:
    before = smol.stats["generated_tokens"]
    smol.generate("1, 2, 3, 4, 5, 6,", GenerationOptions(temperature=0, max_tokens=7, raw=True))
    assert smol.stats["generated_tokens"] - before == 7


def test_stop_sequences_end_to_end(smol: LlamaCppTextModel) -> None:
    prompt = "The days of the week are Monday, Tuesday,"
    full = smol.generate(prompt, RAW)
    assert len(full) > 30
    tokens = smol.llama_model.vocab.tokenize(full, add_special=False)
    assert len(tokens) > 6
    # A stop string spanning three tokens, starting mid-text.
    start = len(smol.llama_model.vocab.detokenize(tokens[:2]))
    span = smol.llama_model.vocab.detokenize(tokens[2:5])
    stop = full[start : start + len(span)]
    expected = full[: full.find(stop)]
    opts = GenerationOptions(temperature=0, max_tokens=40, raw=True, stop_sequences=[stop])
    assert smol.generate(prompt, opts) == expected
    assert "".join(smol.generate_stream(prompt, opts)) == expected
    # At the very start: nothing at all is emitted.
    assert (
        smol.generate(prompt, GenerationOptions(temperature=0, max_tokens=40, raw=True, stop_sequences=[full[:3]]))
        == ""
    )
    # Overlapping stop strings: the earliest match wins.
    a, b = full[5:12], full[8:20]
    out = smol.generate(prompt, GenerationOptions(temperature=0, max_tokens=40, raw=True, stop_sequences=[b, a]))
    assert out == full[: min(full.find(a), full.find(b))]


def test_stop_sequence_multibyte(smol: LlamaCppTextModel) -> None:
    prompt = "日本の首都は東京です。中国の首都は"
    full = smol.generate(prompt, RAW)
    wide = [i for i, ch in enumerate(full) if len(ch.encode()) > 1]
    assert wide, full
    i = wide[len(wide) // 2]
    stop = full[i]
    opts = GenerationOptions(temperature=0, max_tokens=40, raw=True, stop_sequences=[stop])
    assert smol.generate(prompt, opts) == full[: full.find(stop)]


@pytest.mark.parametrize(
    "chunks,stops,emitted",
    [
        (["ab", "c", "de"], ["cd"], "ab"),
        (["a", "b", "c"], ["abc"], ""),
        (["xab", "cy"], ["abc", "bcy"], "x"),
        (["héllo wö", "rld"], ["wörld"], "héllo "),
        (["ab", "ab", "ab"], ["abc"], "ababab"),
        (["no stop here"], ["zzz"], "no stop here"),
    ],
)
def test_stop_matcher(chunks: list[str], stops: list[str], emitted: str) -> None:
    m = StopMatcher(tuple(stops))
    out = "".join(m.feed(c) for c in chunks)
    out += m.flush()
    assert out == emitted
    for s in stops:
        assert s not in out


def test_stop_matcher_holds_back_only_what_a_stop_could_need() -> None:
    m = StopMatcher(("STOP",))
    assert m.feed("hello ST") == "hello "
    assert m.feed("ART") == "START"
    assert m.feed("x S") == "x "
    assert m.feed("TOP and more") == ""
    assert m.stopped


def test_chat_template_with_system(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    opts = GenerationOptions(temperature=0, max_tokens=16, system="You are a pirate.")
    text = smol.format_prompt("Hello", opts)
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert smol.generate("Hello", opts)
    with service.load_model("gemma3-270m", config=ModelConfig(context_size=512, parallel=1)) as gemma:
        g = gemma.format_prompt("Hello", opts)
        assert "<start_of_turn>user" in g and "You are a pirate." in g and g.endswith("<start_of_turn>model\n")
        assert gemma.generate("Hello", opts)
    raw = smol.format_prompt("Hello", GenerationOptions(raw=True, system="ignored"))
    assert raw == "Hello"


def test_a_reused_prompt_gives_what_a_decoded_one_gave(service: LlamaCppService) -> None:
    # The second request reuses all of the prompt but its last token, which it decodes alone; the first, on an
    # empty model, must have decoded that token alone too, or their outputs may differ (a long prompt makes the
    # batched and the single-token kernels drift apart).
    text = "You are a helpful assistant. " + " ".join(f"Fact {i}: code word {i} is w{i * 7 % 13}." for i in range(60))
    for k, opts in enumerate((GREEDY, GenerationOptions(max_tokens=16, temperature=0.8, seed=7))):
        with service.load_model("smollm2-135m", config=ModelConfig(context_size=1024, parallel=1)) as m:
            prompt = text + f" Question {k}: what is code word {k}?"
            first = m.generate(prompt, opts)
            reused = m.stats["prompt_tokens_reused"]
            assert "".join(m.generate_stream(prompt, opts)) == first
            assert m.stats["prompt_tokens_reused"] - reused > 500
            assert m.generate(prompt, opts) == first


def test_a_short_prompt_is_decoded_in_one_step_and_still_reused_alike(service: LlamaCppService) -> None:
    # Fewer than 64 tokens of a sequence take the same attention kernel at once as alone: a short prompt's last
    # token shares its step (first token one decode sooner), and a reused prompt still gives the same output. With
    # flash attention off, the kernels differ by batch size: the last token keeps a step of its own.
    prompt = "Name three colours of the rainbow."
    for flash_attn, steps in ((None, 1), (False, 2)):
        cfg = ModelConfig(context_size=512, parallel=1, flash_attn=flash_attn)
        with service.load_model("smollm2-135m", config=cfg) as m:
            before = m.stats["decode_calls"]
            m.generate(prompt, GenerationOptions(max_tokens=1, temperature=0))
            assert m.stats["decode_calls"] - before == steps
            for opts in (GREEDY, GenerationOptions(max_tokens=16, temperature=0.8, seed=3)):
                first = m.generate(prompt + " Then two more.", opts)
                reused = m.stats["prompt_tokens_reused"]
                assert m.generate(prompt + " Then two more.", opts) == first
                assert m.stats["prompt_tokens_reused"] > reused


def test_prefix_reuse_counters(smol: LlamaCppTextModel) -> None:
    base = " ".join(f"item{i}" for i in range(150))
    smol.generate(base + " first", GREEDY)
    before = smol.stats
    smol.generate(base + " second", GREEDY)
    after = smol.stats
    reused = after["prompt_tokens_reused"] - before["prompt_tokens_reused"]
    decoded = after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
    assert reused > 300 and decoded < 30


def test_busy_slots_stay_adjacent_and_a_distant_prefix_is_copied(service: LlamaCppService) -> None:
    # llama.cpp decodes every KV stream between the lowest and highest busy sequence, so a request joins next to the
    # busy slots; the prefix another free slot holds is copied there instead of being decoded again.
    cfg = ModelConfig(context_size=512, parallel=3)
    opts = GenerationOptions(temperature=0, max_tokens=16, raw=True)
    base = " ".join(f"item{i}" for i in range(150))
    with service.load_model("smollm2-135m", config=cfg) as reference:
        reference.generate(base + " first", opts)
        expected = reference.generate(base + " second", opts)
    with service.load_model("smollm2-135m", config=cfg) as smol:
        engine = smol._engine
        smol.generate(base + " first", opts)  # slot 0
        smol.generate("Unrelated words.", opts)  # shares only BOS with slot 0: the unused slot 1 takes it
        assert engine._slots[0].n_cached > 300 and engine._slots[1].n_cached < 30
        story = smol.generate_stream("Once upon a time", GenerationOptions(temperature=0, max_tokens=300, raw=True))
        next(story)  # the least recently used slot, 2, is busy now
        assert engine._slots[2].request is not None
        before = smol.stats
        got = smol.generate(base + " second", opts)
        after = smol.stats
        story.close()
        assert after["prompt_copies"] - before["prompt_copies"] == 1
        assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] > 300
        assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] < 30
        assert after["max_batched_sequences"] >= 2
        assert engine._slots[1].n_cached > 300  # it ran next to the story, on slot 1
        assert got == expected


def test_a_prompt_every_slot_let_go_of_is_restored_from_host_memory(service: LlamaCppService) -> None:
    # Two slots, three conversations: the third evicts the first, whose memory is saved; when the first comes back
    # it is restored instead of decoded, and gives what it gave. Without the host cache it is decoded again.
    prompts = [
        "Tell me a story about a lighthouse keeper who lost his way home in the fog.",
        "What is the capital of France, and why did it become the capital?",
        "List three uses of copper in electronics.",
    ]
    opts = GenerationOptions(temperature=0, max_tokens=24, system="You are a helpful assistant.")
    for mib, restores in ((64, 1), (0, 0)):
        with service.load_model(
            "smollm2-135m", config=ModelConfig(context_size=512, parallel=2, prompt_cache_mib=mib)
        ) as m:
            first = [m.generate(p, opts) for p in prompts]
            before = m.stats
            again = m.generate(prompts[0], opts)
            after = m.stats
            n_prompt = len(
                m.tokenize_prompt(m.format_chat([("system", opts.system), ("user", prompts[0])], opts), opts)
            )
            assert again == first[0]
            assert after["prompt_cache_restores"] - before["prompt_cache_restores"] == restores
            assert after["prompt_cache_saves"] >= restores
            decoded = after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
            if restores:
                assert decoded == 1  # the prompt's last token, which starts output
            else:
                assert decoded > n_prompt // 3  # all but the system message's tokens


def test_the_host_prompt_cache_keeps_to_its_budget() -> None:
    import numpy as np

    from llamacffi.service.prompt_cache import PromptCache

    cache = PromptCache(budget=1000)
    a = np.arange(10, dtype=np.int32)
    assert cache.put(a, b"x" * 400)
    assert cache.holds(a[:5]) and not cache.holds(np.arange(1, 6, dtype=np.int32))
    assert cache.put(np.arange(20, dtype=np.int32), b"y" * 400)  # starts with ``a``: ``a`` goes
    assert len(cache) == 1 and cache.used == 400
    cache.put(np.full(4, 7, dtype=np.int32), b"z" * 400)
    cache.put(np.full(4, 8, dtype=np.int32), b"w" * 400)  # over the budget: the least recently used goes
    assert cache.used <= 1000 and len(cache) == 2
    entry, n = cache.match(np.arange(30, dtype=np.int32))
    assert entry is None and n == 0
    entry, n = cache.match(np.array([7, 7, 9], dtype=np.int32))
    assert entry is not None and n == 2 and entry.state == b"z" * 400
    assert not cache.put(np.arange(3, dtype=np.int32), b"v" * 1001)  # alone over the budget
    cache.clear()
    assert len(cache) == 0 and cache.used == 0


# ---- concurrency --------------------------------------------------------------------------------------------------


def test_threads_equal_sequential(service: LlamaCppService) -> None:
    # A model of its own: a prompt prefix reused from a slot can hold KV values rounded by another kernel than a
    # fresh decode of the same tokens (see test_context's test_reused_prefix_logits), so the comparison starts from
    # empty slots; then every request's batched output equals its sequential twin exactly.
    smol = service.load_model("smollm2-135m", config=ModelConfig(context_size=1024, parallel=4))
    prompts = [f"Name a fact about the number {i}." for i in range(5)]
    sequential = [smol.generate(p, GREEDY) for p in prompts]
    results: dict[tuple[int, int], str] = {}

    def worker(t: int) -> None:
        for i, p in enumerate(prompts):
            results[(t, i)] = smol.generate(p, GREEDY)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert len(results) == 40
    agree = sum(results[(t, i)] == sequential[i] for t in range(8) for i in range(5))
    assert agree == 40, f"{agree}/40 batched outputs equal the sequential ones"
    assert smol.stats["max_batched_sequences"] >= 2
    smol.close()


@pytest.mark.parametrize("window,spacing", [(0.2, 0.02), (0.0, 0.25)])
def test_a_burst_within_the_batch_window_starts_in_one_step(
    service: LlamaCppService, window: float, spacing: float
) -> None:
    # Requests arriving a little apart (as HTTP clients started together do) are admitted together once none has
    # arrived for a batch window: their prompts share one step instead of each waiting behind the one before.
    cfg = ModelConfig(context_size=256, parallel=4, batch_window=window)
    opts = GenerationOptions(temperature=0, max_tokens=1)
    with service.load_model("smollm2-135m", config=cfg) as m:
        threads = []
        for i in range(4):
            threads.append(threading.Thread(target=m.generate, args=(f"Name a fact about the number {i}.", opts)))
            threads[-1].start()
            time.sleep(spacing)
        for th in threads:
            th.join(timeout=120)
        if window:
            assert m.stats["decode_calls"] == 1 and m.stats["max_batched_sequences"] == 4
        else:  # admitted as they come: the first prompt's step starts before the second arrives
            assert m.stats["decode_calls"] > 1


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llamacffi-engine"]


def test_models_share_one_engine_thread(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    # Each decoding thread keeps an OpenMP team; more of them than cores makes every decode slower.
    gemma = service.load_model("gemma3-270m", config=ModelConfig(context_size=256, parallel=2))
    opts = GenerationOptions(temperature=0, max_tokens=12, raw=True)
    alone = [smol.generate("The river", opts), gemma.generate("The river", opts)]
    together: list[str] = ["", ""]
    threads = [
        threading.Thread(target=lambda i=i, m=m: together.__setitem__(i, m.generate("The river", opts)))
        for i, m in enumerate((smol, gemma))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(_engine_threads()) == 1
    assert together == alone
    gemma.close()
    assert smol.generate("The river", opts) == alone[0]


def test_a_long_generation_lets_other_requests_in(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    # Decoding alone, an engine keeps going without returning to the thread's loop; a request for another model,
    # or for the same one, must still get its turn at once rather than after the long generation.
    gemma = service.load_model("gemma3-270m", config=ModelConfig(context_size=256, parallel=1))
    long_opts = GenerationOptions(temperature=0, max_tokens=400, raw=True)
    short = GenerationOptions(temperature=0, max_tokens=4, raw=True)
    try:
        for other in (gemma, smol):
            before = smol.stats["generated_tokens"]
            story = smol.generate_stream("Once upon a time", long_opts)
            next(story)
            other.generate("The river", short)
            done = smol.stats["generated_tokens"] - before
            story.close()
            assert done < 300, f"the long generation had made {done} tokens before the other request ended"
    finally:
        gemma.close()


ENGINE_THREAD_LIFETIME = """
import threading, time
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig
def engines():
    return sum(t.name == "llamacffi-engine" for t in threading.enumerate())
opts = GenerationOptions(temperature=0, max_tokens=2)
with LlamaCppService(LocalBackendConfig(threads=2)) as svc:
    a = svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1))
    b = svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=2))
    a.generate("Hi", opts), b.generate("Hi", opts)
    assert engines() == 1, engines()
    a.close()
    assert engines() == 1 and b.generate("Hi", opts) is not None
deadline = time.time() + 10
while engines() and time.time() < deadline:
    time.sleep(0.02)
assert engines() == 0, engines()
with LlamaCppService(LocalBackendConfig(threads=2)) as svc:  # a new model starts a new thread
    assert svc.load_model("smollm2-135m", config=ModelConfig(context_size=256)).generate("Hi", opts) is not None
print("ok")
"""


def test_engine_thread_ends_with_the_last_model() -> None:
    out = subprocess.run([sys.executable, "-c", ENGINE_THREAD_LIFETIME], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


FORKED_CHILD = """
import os
from llamacffi.service import GenerationOptions, LlamaCppService, ModelClosedError, ModelConfig
opts = GenerationOptions(temperature=0, max_tokens=4)
cfg = ModelConfig(context_size=256, parallel=1)
svc = LlamaCppService()
inherited = svc.load_model("smollm2-135m", config=cfg)
expected = inherited.generate("Hi", opts)
pid = os.fork()
if pid == 0:
    code = 0
    try:
        inherited.generate("Hi", opts)
        code = 3
    except ModelClosedError as exc:
        code = 0 if "forked" in str(exc) else 4
    fresh = LlamaCppService().load_model("smollm2-135m", config=cfg)
    if fresh.generate("Hi", opts) != expected:
        code = 5
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
assert inherited.generate("Hi", opts) == expected
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_child_gets_its_own_engine_thread() -> None:
    out = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_asyncio_gather_streams(service: LlamaCppService) -> None:
    smol = service.load_model("smollm2-135m", config=ModelConfig(context_size=1024, parallel=4))
    prompts = [f"Describe colour number {i}." for i in range(6)]
    expected = [smol.generate(p, GREEDY) for p in prompts]

    async def collect(p: str) -> str:
        return "".join([c async for c in smol.agenerate_stream(p, GREEDY)])

    async def main() -> list[str]:
        return list(await asyncio.gather(*(collect(p) for p in prompts), smol.agenerate(prompts[0], GREEDY)))

    got = asyncio.run(main())
    assert got[:6] == expected and got[6] == expected[0]
    smol.close()


def _slots_free(model: LlamaCppTextModel, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(s.request is None for s in model._engine._slots) and not model._engine._queue:
            return True
        time.sleep(0.02)
    return False


def test_leaving_a_stream_early_frees_its_slot(smol: LlamaCppTextModel) -> None:
    stream = smol.generate_stream("Tell a long story.", GenerationOptions(temperature=0, max_tokens=500))
    next(stream)
    stream.close()
    assert _slots_free(smol)
    assert smol.generate("Hi", GREEDY)


def test_cancelling_a_task_frees_its_slot(smol: LlamaCppTextModel) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in smol.agenerate_stream(
                "Tell a long story.", GenerationOptions(temperature=0, max_tokens=500)
            ):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 60)  # it holds a slot now, not a place in the queue
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _slots_free(smol)


def test_hundred_requests_beyond_parallel(smol: LlamaCppTextModel) -> None:
    opts = GenerationOptions(temperature=0, max_tokens=2)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(smol.agenerate(f"Say {i}", opts) for i in range(100))))

    out = asyncio.run(main())
    assert len(out) == 100 and all(isinstance(o, str) for o in out)
    assert _slots_free(smol)


def test_queue_limit(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=2048, parallel=1, max_queue=2)) as m:
        busy = m.generate_stream("Once upon a time", GenerationOptions(temperature=0, max_tokens=2000, raw=True))
        next(busy)  # holds the only slot until closed
        threads = [threading.Thread(target=m.generate, args=("Once upon a time", GREEDY)) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(m._engine._queue) < 2 and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(QueueFullError, match="max_queue"):
            m.generate("one more", GREEDY)
        busy.close()
        for t in threads:
            t.join(timeout=120)
        assert m.generate("one more", GREEDY) is not None  # room again


def test_a_cancelled_waiting_request_leaves_the_queue(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=1, max_queue=1)) as m:
        busy = m.generate_stream("Once upon a time", GenerationOptions(temperature=0, max_tokens=2000, raw=True))
        next(busy)

        async def give_up() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(m.agenerate("hi", GREEDY), 0.05)

        for _ in range(3):  # each waits in the queue, then is cancelled: the next one finds room
            asyncio.run(give_up())
        assert len(m._engine._queue) == 0
        busy.close()


def test_a_caller_may_submit_again_as_soon_as_generate_returns(
    service: LlamaCppService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamacffi.service import engine

    emit = engine._emit

    def slow_after_end(req: object, item: object) -> None:
        emit(req, item)  # type: ignore[arg-type]
        if item is engine.END:
            time.sleep(0.005)  # the engine thread lags behind the caller it has just woken

    monkeypatch.setattr(engine, "_emit", slow_after_end)
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1, max_queue=0)) as m:
        for _ in range(10):  # the slot is free before the caller learns that its request ended
            m.generate("Hi", GenerationOptions(temperature=0, max_tokens=2, raw=True))


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_unknown_model_says_where_it_looked(
    service: LlamaCppService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="looked at") as e:
        service.load_model("hf:someone/nothing:model")
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ModelNotFoundError):
        service.load_model("/no/such/model.gguf")
    with pytest.raises(InferenceError):
        service.load_model(str(tmp_path))


def test_list_available_models_over_models_path(
    service: LlamaCppService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_path: Path
) -> None:
    target = tmp_path / "hf" / "HuggingFaceTB" / "SmolLM2-135M" / "smol-q4.gguf"
    target.parent.mkdir(parents=True)
    target.symlink_to(smollm2_path)
    (tmp_path / "hf" / "not-a-model.txt").write_text("x")
    (target.parent / "smol-q4").symlink_to(smollm2_path)  # the id names smol-q4.gguf, not this one
    # none of these can be opened by an id: a folder, a broken link, names with ':' or a newline
    (target.parent / "folder.gguf").mkdir()
    (target.parent / "broken.gguf").symlink_to(tmp_path / "missing.gguf")
    (target.parent / "a:b.gguf").symlink_to(smollm2_path)
    (target.parent / "two\nlines.gguf").symlink_to(smollm2_path)
    colon = tmp_path / "hf" / "user:x" / "repo" / "m.gguf"
    colon.parent.mkdir(parents=True)
    colon.symlink_to(smollm2_path)
    monkeypatch.setenv("MODELS_PATH", str(tmp_path))
    ids = service.list_available_models()
    assert ids[0] == "hf:HuggingFaceTB/SmolLM2-135M:smol-q4"
    assert ids[1:] == list(llamacffi.models.KNOWN)
    assert service.resolve(ids[0]) == target
    assert service.resolve("hf:HuggingFaceTB/SmolLM2-135M:smol-q4.gguf") == target
    with service.load_model(ids[0], config=ModelConfig(context_size=128, parallel=1)) as m:
        assert m.generate("Hi", GREEDY)


def test_context_size_above_training(service: LlamaCppService) -> None:
    with pytest.warns(RuntimeWarning, match="trained for"):
        m = service.load_model("smollm2-135m", config=ModelConfig(context_size=9000, parallel=1, batch_size=64))
    m.close()
    with pytest.raises(InvalidConfigError, match="trained for"):
        service.load_model("smollm2-135m", config=ModelConfig(context_size=9000, parallel=1, strict_context=True))


def test_prompt_longer_than_context(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=64, parallel=1)) as m:
        long = "word " * 200
        with pytest.raises(ContextOverflowError, match="64"):
            m.generate(long, RAW)
        assert m.generate("short", RAW) is not None
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=64, parallel=1, truncate_prompt=True)) as m:
        assert isinstance(m.generate("word " * 200, GenerationOptions(temperature=0, max_tokens=4, raw=True)), str)


def test_invalid_options_and_closed(service: LlamaCppService) -> None:
    m = service.load_model("smollm2-135m", config=ModelConfig(context_size=128, parallel=1))
    with pytest.raises(InvalidConfigError):
        m.generate("x", {"max_tokens": 3})  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError):
        m.generate(b"bytes", GREEDY)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError):
        m.generate("bad \ud800", GREEDY)
    with pytest.raises(InvalidConfigError, match="not bytes"):
        m.start_choices(b"abc", GREEDY)  # type: ignore[arg-type]  # bytes iterate as ints, but are no token ids
    assert hash(GenerationOptions(logit_bias={1: 1.0})) == hash(GenerationOptions(logit_bias={1: 1.0}))
    m.close()
    m.close()
    with pytest.raises(ModelClosedError):
        m.generate("x", GREEDY)
    with pytest.raises(ModelClosedError):
        list(m.generate_stream("x", GREEDY))
    with pytest.raises(ModelClosedError):
        m.format_prompt("x", GREEDY)
    with pytest.raises(ModelClosedError):
        m.format_chat([("user", "x")], GREEDY)


def test_a_service_closed_while_a_model_loads_closes_that_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamacffi.service import local

    svc = LlamaCppService(LocalBackendConfig(threads=1))
    real = local.load_file
    loaded: list[llamacffi.Model] = []

    def load_then_close(path: Path, backend: LocalBackendConfig) -> llamacffi.Model:
        loaded.append(real(path, backend))
        svc.close()  # as another thread's close() would, while this load runs
        return loaded[0]

    monkeypatch.setattr(local, "load_file", load_then_close)
    with pytest.raises(ModelClosedError, match="closed while the model loaded"):
        svc.load_model("smollm2-135m", config=ModelConfig(context_size=128, parallel=1))
    assert loaded and loaded[0].closed


def test_numa_conflict_is_a_clear_error() -> None:
    llamacffi.numa_init("disabled")
    LlamaCppService(LocalBackendConfig(llama_cpp=LlamaCppSpecificConfig(numa_strategy="DISABLED")))
    with pytest.raises(InvalidConfigError, match="already"):
        LlamaCppService(LocalBackendConfig(llama_cpp=LlamaCppSpecificConfig(numa_strategy="distribute")))


@pytest.mark.parametrize(
    "call",
    [
        'm.generate("Tell a very long story.", LONG)',
        'list(m.generate_stream("Tell a very long story.", LONG))',
        'asyncio.run(m.agenerate("Tell a very long story.", LONG))',  # asyncio.run puts a SIGINT handler of its own
    ],
    ids=["generate", "generate_stream", "asyncio"],
)
def test_ctrl_c_leaves_the_model_usable(call: str) -> None:
    script = f"""
import asyncio, os, signal, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell starts it, not a background job
from llamacffi.service import LlamaCppService, GenerationOptions, ModelConfig
svc = LlamaCppService()
m = svc.load_model("smollm2-135m", config=ModelConfig(context_size=2048, parallel=2))
LONG = GenerationOptions(temperature=0, max_tokens=1500)
SHORT = GenerationOptions(temperature=0, max_tokens=8, raw=True)
before = m.generate("The capital of France is", SHORT)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    {call}
    print("NOT INTERRUPTED")
except KeyboardInterrupt:
    print("INTERRUPTED")
after = m.generate("The capital of France is", SHORT)
print("SAME" if after == before else f"DIFFERENT {{before!r}} {{after!r}}")
m.close()
svc.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert "INTERRUPTED" in out.stdout and "NOT" not in out.stdout, out.stdout + out.stderr
    assert "SAME" in out.stdout, out.stdout + out.stderr


def test_chat_template_prompt_and_messages_are_checked(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    with pytest.raises(InvalidConfigError, match="chat_template"):
        service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1, chat_template="nonsense"))
    with pytest.raises(InvalidConfigError, match="NUL"):
        smol.generate("Translate this: hello\0 and the rest", GenerationOptions(max_tokens=2))
    with pytest.raises(InvalidConfigError, match="NUL"):
        smol.generate("Hi", GenerationOptions(max_tokens=2, system="be\0brief"))
    assert smol.generate("a\0b", GenerationOptions(max_tokens=2, raw=True)) is not None  # raw text is not a C string
    for bad in ([("user",)], "hello", None, [("user", 5)]):
        with pytest.raises(InvalidConfigError, match="pairs"):
            smol.chat_stream(bad, GenerationOptions(max_tokens=2))  # type: ignore[arg-type]


def test_a_context_that_cannot_be_allocated_is_a_load_error(
    service: LlamaCppService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamacffi.service import engine

    def no_memory(*args: object, **kwargs: object) -> None:
        raise llamacffi.ContextError("llama.cpp could not create a context with n_ctx=...")

    monkeypatch.setattr(engine, "Context", no_memory)
    with pytest.raises(ModelLoadFailedError, match=r"ModelConfig\.context_size"):
        service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1))


def test_penalty_history_is_bounded_by_the_context(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", config=ModelConfig(context_size=64, parallel=1)) as m:
        opts = GenerationOptions(max_tokens=1 << 20, repeat_penalty=1.3, raw=True, seed=1)
        before = m.stats
        m.generate("Once upon a time " * 5, opts)
        after = m.stats
        prompt = after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"]
        assert prompt + after["generated_tokens"] - before["generated_tokens"] == 64  # the context ends it


def test_a_request_whose_consumer_is_gone_stops(service: LlamaCppService, smol: LlamaCppTextModel) -> None:
    from llamacffi.service.engine import Request

    def gone(item: object) -> None:
        raise RuntimeError("the consumer's event loop is closed")

    tokens = smol._vocab.tokenize("Once upon a time", add_special=True)
    request = Request(
        tokens,
        GenerationOptions(temperature=0, max_tokens=400, raw=True),
        gone,
        smol._vocab.stream(),
        smol.config.context_size,
    )
    before = smol.stats["generated_tokens"]
    smol._engine.submit(request)
    deadline = time.time() + 60
    while not request.finished and time.time() < deadline:
        time.sleep(0.01)
    assert request.finished and smol.stats["generated_tokens"] - before < 10


EXIT_HOOK_USES_THE_SERVICE = """
import atexit
state = {}

def cleanup():  # registered before the service is imported: runs after its exit hook
    from llamacffi.service import GenerationOptions, ModelClosedError
    try:
        state["m"].generate("Hi", GenerationOptions(max_tokens=2))
    except ModelClosedError as exc:
        print("refused:", exc)
    state["m"].close()
    print("closed", flush=True)

atexit.register(cleanup)
from llamacffi.service import LlamaCppService, LocalBackendConfig, ModelConfig
svc = LlamaCppService(LocalBackendConfig(threads=2))
state["m"] = svc.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1))
print("loaded", flush=True)
"""


def test_the_service_after_its_exit_hook_refuses_instead_of_hanging() -> None:
    out = subprocess.run(
        [sys.executable, "-c", EXIT_HOOK_USES_THE_SERVICE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split()[:1] == ["loaded"] and "refused: the interpreter is exiting" in out.stdout
    assert out.stdout.strip().endswith("closed")


def test_an_embedding_model_refuses_what_is_not_text(service: LlamaCppService) -> None:
    with service.load_model("smollm2-135m", ModelType.TEXT_EMBEDDING, ModelConfig(context_size=64)) as e:
        for call in (e.count_tokens, e.tokenize, e.embed):
            with pytest.raises(InvalidConfigError, match="must be a str"):
                call([5])  # type: ignore[list-item]
        assert [len(t) for t in e.tokenize(["hello world"])] == [e.count_tokens(["hello world"])]


def test_a_model_dropped_without_close_is_freed_and_one_whose_service_is_dropped_serves_on() -> None:
    import gc
    import weakref

    from llamacffi.service import runner

    before = len(runner.shared()._engines)
    cfg = ModelConfig(context_size=64, parallel=1)
    kept = LlamaCppService(LocalBackendConfig(threads=1)).load_model("smollm2-135m", config=cfg)  # service dropped
    gc.collect()
    assert kept.generate("Hi", GenerationOptions(temperature=0, max_tokens=2))
    svc = LlamaCppService(LocalBackendConfig(threads=1))
    dropped = weakref.ref(svc.load_model("smollm2-135m", ModelType.TEXT_EMBEDDING, ModelConfig(context_size=64)))
    assert len(runner.shared()._engines) == before + 2
    with pytest.warns(ResourceWarning, match="without close"):
        del svc, kept
        gc.collect()
    assert dropped() is None
    assert len(runner.shared()._engines) == before  # nothing holds their engines any more


def test_a_stop_sequence_is_reported_with_the_finish() -> None:
    from llamacffi.service.stops import StopMatcher

    m = StopMatcher(("xyz", "b", "ab"))
    assert m.feed("aa") == "a" and m.matched is None  # "a" may start "ab"
    assert m.feed("b c") == "" and m.stopped and m.matched == "ab"  # the stop string that starts first
    first = StopMatcher(("b", "ab"))
    assert first.feed("xab") == "x" and first.matched == "ab"
