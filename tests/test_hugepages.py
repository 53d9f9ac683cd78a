"""Weights read into memory backed by transparent huge pages: the same model, faster pages."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

import llamacffi
from llamacffi import Batch, Context, InvalidArgumentError, ModelLoadError, hugepages
from llamacffi.service import (
    GenerationOptions,
    InvalidConfigError,
    LlamaCppService,
    LlamaCppSpecificConfig,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelConfig,
)

HAS_THP = hugepages.page_size() > 0


def last_logits(model: llamacffi.Model, text: str) -> np.ndarray:
    tokens = model.vocab.tokenize(text)
    with Context(model, n_ctx=64, n_threads=2) as ctx:
        ctx.decode(Batch.from_tokens(tokens))
        return ctx.logits().copy()


def test_weights_get_huge_pages_and_compute_the_same(model_path: Path) -> None:
    # n_gpu_layers=0: the weights stay in CPU memory on every build
    with (
        llamacffi.Model.load(model_path, n_gpu_layers=0, huge_pages=True) as huge,
        llamacffi.Model.load(model_path, n_gpu_layers=0) as mapped,
    ):
        if HAS_THP:  # read after the first progress callback advised their buffers
            assert huge.huge_page_bytes >= huge.size // 2
        else:
            assert huge.huge_page_bytes == 0
        assert mapped.huge_page_bytes == 0 and huge.huge_pages and not mapped.huge_pages
        text = "The quick brown fox jumps over the lazy dog because"
        assert np.array_equal(last_logits(huge, text), last_logits(mapped, text))


def test_huge_pages_options_are_checked(smollm2_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="use_mmap=True"):
        llamacffi.Model.load(smollm2_path, use_mmap=True, huge_pages=True)
    with pytest.raises(InvalidArgumentError, match="huge_pages must be a bool"):
        llamacffi.Model.load(smollm2_path, huge_pages=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="huge_pages"):
        LlamaCppSpecificConfig(use_mmap=True, huge_pages=True)
    with pytest.raises(InvalidConfigError, match="huge_pages"):
        LlamaCppSpecificConfig(huge_pages=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="use_mmap"):
        LlamaCppSpecificConfig(use_mmap="no")  # type: ignore[arg-type]


def test_progress_callback_still_runs_and_cancels(smollm2_path: Path) -> None:
    seen: list[float] = []
    with llamacffi.Model.load(smollm2_path, huge_pages=True, progress=seen.append) as m:
        assert m.n_params > 0
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0)
    with pytest.raises(ModelLoadError, match="cancelled"):
        llamacffi.Model.load(smollm2_path, huge_pages=True, progress=lambda p: False)


def test_service_with_huge_pages_generates_the_same_text(smollm2_path: Path) -> None:
    opts = GenerationOptions(max_tokens=24, temperature=0.0, raw=True)
    texts = []
    for llama_cpp in (LlamaCppSpecificConfig(), LlamaCppSpecificConfig(huge_pages=True)):
        backend = LocalBackendConfig(threads=2, use_gpu=False, llama_cpp=llama_cpp)
        with (
            LlamaCppService(backend) as svc,
            svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256)) as m,
        ):
            tm = m.as_text_to_text()
            assert isinstance(tm, LlamaCppTextModel) and tm.llama_model.huge_pages == llama_cpp.huge_pages
            texts.append(tm.generate("Once upon a time", opts))
    assert texts[0] == texts[1] and texts[0]


def test_unmapped_before() -> None:
    before = [(100, 200), (300, 400)]
    after = [(0, 50), (100, 250), (280, 420), (500, 600)]
    assert hugepages.unmapped_before(before, after) == [(0, 50), (200, 250), (280, 300), (400, 420), (500, 600)]
    assert hugepages.unmapped_before(after, after) == []
    assert hugepages.unmapped_before([], [(1, 2)]) == [(1, 2)]
    assert hugepages.unmapped_before([(0, 10), (20, 30), (40, 50)], [(5, 45)]) == [(10, 20), (30, 40)]


@pytest.mark.skipif(
    not HAS_THP or hugepages.page_size() > 32 << 20, reason="no transparent huge pages of a testable size"
)
def test_only_private_memory_mapped_after_the_snapshot_is_collapsed() -> None:
    size = hugepages.page_size()

    def written(flags: int) -> tuple[mmap.mmap, tuple[int, int]]:
        m = mmap.mmap(-1, 8 * size, flags=flags)  # numpy's own buffers would ask for huge pages by themselves
        view = np.frombuffer(m, dtype=np.uint8)
        view[:] = 1
        return m, (view.ctypes.data, view.ctypes.data + view.nbytes)

    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    old, old_range = written(private)
    huge = hugepages.HugePages()
    new, new_range = written(private)
    shared, shared_range = written(mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    madvise_only = "[madvise]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    if madvise_only:
        assert hugepages.huge_bytes([new_range]) == 0  # small pages until asked
    ranges = huge.collapse()

    def covered(r: tuple[int, int]) -> bool:
        return any(a < r[1] and r[0] < b for a, b in ranges)

    assert covered(new_range) and not covered(old_range) and not covered(shared_range)
    assert hugepages.huge_bytes(ranges) >= 4 * size
    if madvise_only:
        assert hugepages.huge_bytes([old_range]) == 0
    assert hugepages.huge_bytes([]) == 0
    del new, old, shared
