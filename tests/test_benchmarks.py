"""The benchmark harness's own logic: offloading, paired ratios, the report's verdicts (its figures come from
``python -m benchmarks``, never from tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.harness import common, report
from benchmarks.sides import raw_cpp

from llamacffi import backend


def test_gpu_layers_follow_the_build_and_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.GPU_LAYERS_ENV, raising=False)
    expected = -1 if backend.gpu_device_names() else 0  # a GPU device, not the RPC backend alone
    assert common.gpu_layers() == expected
    monkeypatch.setenv(common.GPU_LAYERS_ENV, "7")
    assert common.gpu_layers() == 7
    assert common.machine(2)["gpu_layers"] == 7


@pytest.mark.parametrize("layers,ngl", [("-1", "999"), ("0", "0"), ("12", "12")])
def test_llama_cpp_programs_offload_the_same_layers(monkeypatch: pytest.MonkeyPatch, layers: str, ngl: str) -> None:
    monkeypatch.setattr(raw_cpp, "tool", lambda name: Path("/bin") / name)
    monkeypatch.setenv(common.GPU_LAYERS_ENV, layers)
    for argv in (raw_cpp.bench_argv(Path("m.gguf"), 2, "tg", 128), raw_cpp.simple_argv(Path("m.gguf"), 8, "Hi")):
        assert argv[argv.index("-ngl") + 1] == ngl


def test_llama_bench_batches_offload_too(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> common.ChildResult:
        seen.append(argv)
        rows = [{"n_prompt": k, "avg_ts": 100.0 * k**0.5} for k in (1, 2, 4)]
        return common.ChildResult(0, json.dumps(rows), "", 0.1, 0)

    monkeypatch.setattr(raw_cpp, "tool", lambda name: Path("/bin") / name)
    monkeypatch.setattr(raw_cpp, "run_child", fake_run)
    monkeypatch.setenv(common.GPU_LAYERS_ENV, "-1")
    ratio, by_k = raw_cpp.llama_bench_batches(Path("m.gguf"), 2, [1, 2, 4], 3)
    assert seen[0][seen[0].index("-ngl") + 1] == "999"
    assert ratio == pytest.approx(2.0) and by_k["4"] == pytest.approx(200.0)


def test_offload_is_described() -> None:
    cuda = {"name": "CUDA0", "description": "NVIDIA H100", "type": "gpu"}
    out = {"machine": {"gpu_layers": -1}, "build": {"devices": [{"name": "CPU", "type": "cpu"}, cuda]}}
    assert report.offload_words(out) == "all layers offloaded to CUDA0 (NVIDIA H100)"
    assert report.offload_words({"machine": {"gpu_layers": 0}, "build": {}}) == "no layer offloaded (CPU)"


def test_paired_ratios_and_interleaving() -> None:
    order: list[str] = []

    def side(name: str, value: float) -> common.Measure:
        def run() -> tuple[float, dict[str, object]]:
            order.append(name)
            return value, {}

        return run

    groups = common.interleaved({"a": side("a", 2.0), "b": side("b", 1.0)}, reps=3)
    assert order == ["a", "b"] * 4  # a warm-up round, then the sides take turns
    assert groups["a"].summary()["median"] == 2.0
    assert common.paired_ratio(groups["a"], groups["b"])["median"] == pytest.approx(2.0)
