"""Weights read into memory backed by transparent huge pages: the same model, faster pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import llamacffi
from llamacffi import Batch, Context, InvalidArgumentError, ModelLoadError, hugepages
from llamacffi.service import (InvalidConfigError, LlamaCppService, LlamaCppSpecificConfig, LocalBackendConfig,
                               GenerationOptions, ModelConfig)

HAS_THP = hugepages.page_size() > 0


def last_logits(model: llamacffi.Model, text: str) -> np.ndarray:
    tokens = model.vocab.tokenize(text)
    with Context(model, n_ctx=64, n_threads=2) as ctx:
        ctx.decode(Batch.from_tokens(tokens))
        return ctx.logits().copy()


def test_weights_get_huge_pages_and_compute_the_same(model: llamacffi.Model, model_path: Path) -> None:
    with llamacffi.Model.load(model_path, use_mmap=False, huge_pages=True) as huge:
        if HAS_THP:  # the weights, read after the first progress callback advised their buffers, are in huge pages
            assert huge.huge_page_bytes >= model.size // 2
        else:
            assert huge.huge_page_bytes == 0
        text = "The quick brown fox jumps over the lazy dog because"
        assert np.array_equal(last_logits(huge, text), last_logits(model, text))
    assert huge.huge_pages and not model.huge_pages
    assert model.huge_page_bytes == 0  # mapped from the file


def test_huge_pages_need_the_weights_in_memory(smollm2_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="use_mmap=False"):
        llamacffi.Model.load(smollm2_path, huge_pages=True)
    with pytest.raises(InvalidConfigError, match="huge_pages"):
        LlamaCppSpecificConfig(huge_pages=True)
    with pytest.raises(InvalidConfigError, match="huge_pages"):
        LlamaCppSpecificConfig(use_mmap=False, huge_pages=1)  # type: ignore[arg-type]


def test_progress_callback_still_runs_and_cancels(smollm2_path: Path) -> None:
    seen: list[float] = []
    with llamacffi.Model.load(smollm2_path, use_mmap=False, huge_pages=True, progress=seen.append) as m:
        assert m.n_params > 0
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0)
    with pytest.raises(ModelLoadError, match="cancelled"):
        llamacffi.Model.load(smollm2_path, use_mmap=False, huge_pages=True, progress=lambda p: False)


def test_service_with_huge_pages_generates_the_same_text(smollm2_path: Path) -> None:
    opts = GenerationOptions(max_tokens=24, temperature=0.0, raw=True)
    texts = []
    for llama_cpp in (LlamaCppSpecificConfig(), LlamaCppSpecificConfig(use_mmap=False, huge_pages=True)):
        with LlamaCppService(LocalBackendConfig(threads=2, llama_cpp=llama_cpp)) as svc:
            with svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256)) as m:
                texts.append(m.as_text_to_text().generate("Once upon a time", opts))
    assert texts[0] == texts[1] and texts[0]


def test_unmapped_before() -> None:
    before = [(100, 200), (300, 400)]
    after = [(0, 50), (100, 250), (280, 420), (500, 600)]
    assert hugepages.unmapped_before(before, after) == [(0, 50), (200, 250), (280, 300), (400, 420), (500, 600)]
    assert hugepages.unmapped_before(after, after) == []
    assert hugepages.unmapped_before([], [(1, 2)]) == [(1, 2)]


@pytest.mark.skipif(not HAS_THP, reason="the kernel gives no transparent huge pages")
def test_only_memory_mapped_after_the_snapshot_is_collapsed() -> None:
    old = np.ones(16 * hugepages.page_size() // 8)  # written with small pages before the snapshot
    huge = hugepages.HugePages()
    new = np.ones(16 * huge.size // 8)  # written with small pages after it
    ranges = huge.collapse()

    def covered(buf: np.ndarray) -> bool:
        start = buf.ctypes.data
        return any(a <= start + huge.size and start + buf.nbytes - huge.size <= b for a, b in ranges)

    assert covered(new) and not covered(old)
    assert hugepages.huge_bytes(ranges) >= 8 * huge.size
    assert hugepages.huge_bytes([]) == 0
