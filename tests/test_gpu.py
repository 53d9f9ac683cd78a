"""GPU backends: devices, offload counts, and every offloaded path computing what the CPU path of the same build does.

Marked ``gpu``: they run where the build has a GPU backend that finds a device (``scripts/vulkan-check`` runs them on
Mesa's lavapipe, ``scripts/gpu-check`` on an NVIDIA GPU) and skip elsewhere. The reference is the same build with
``n_gpu_layers=0``: the CPU backend's kernels, the ones a CPU-only build runs. Prompts stay under 32 tokens so that
ggml does not hand the CPU path's large matrix products to the GPU.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llamacffi
from llamacffi import Batch, Context, backend, hugepages, models
from llamacffi.raw import lib
from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig, ModelConfig

GPUS = backend.gpu_device_names()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not GPUS,
        reason=f"no GPU backend device (backends {backend.backends()}); scripts/vulkan-check or scripts/gpu-check "
        "build a GPU variant and run these",
    ),
]
HAS_PLACEMENT = "split_mode" in inspect.signature(llamacffi.Model.load).parameters
needs_placement = pytest.mark.skipif(not HAS_PLACEMENT, reason="Model.load has no device placement parameters yet")

ALL = 99
N_GREEDY = 16  # tokens of greedy generation compared with the CPU path's
PROMPTS = {
    "smollm2-135m": ["The capital of France is", "Le chat noir est assis sur"],
    "gemma3-270m": ["Once upon a time", "Die Hauptstadt von Deutschland ist"],
}
# Backends add in other orders and round activations and partial sums in other precisions, so offloaded logits
# differ from the CPU path's. Teacher-forced over prompt and
# continuation: at every position the cosine similarity of the two logit vectors is at least MIN_COSINE (lavapipe:
# 0.95 at worst), their root-mean-square difference is at most RMS_TOLERANCE of the CPU logits' standard deviation
# on the median position (lavapipe: at most 0.46 at any position), and the top-1 token agrees wherever the CPU's
# top-2 margin is at least MARGIN logits (lavapipe disagreed only at margins of 0.008 and 0.32). Free-running greedy
# generation gives the CPU's tokens up to the CPU's first choice closer than MARGIN: on an H200, CUDA (which rounds
# activations to 8 bits before its quantized matrix products, in blocks of another size than the CPU's) chose
# another first token for a Gemma 3 prompt where the CPU's margin was 0.54.
MIN_COSINE = 0.9
RMS_TOLERANCE = 0.3
MARGIN = 1.0


Pair = tuple[str, llamacffi.Model, llamacffi.Model]


@pytest.fixture(scope="module", params=list(PROMPTS))
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """One model loaded twice: every layer on the GPU, and none."""
    path = models.fetch(request.param)
    with llamacffi.Model.load(path, n_gpu_layers=ALL) as gpu, llamacffi.Model.load(path, n_gpu_layers=0) as cpu:
        yield request.param, gpu, cpu


@pytest.fixture(scope="module")
def smol_cpu(smollm2_path: Path) -> Iterator[llamacffi.Model]:
    with llamacffi.Model.load(smollm2_path, n_gpu_layers=0) as m:
        yield m


@pytest.fixture(scope="module")
def smol_gpu(smollm2_path: Path) -> Iterator[llamacffi.Model]:
    with llamacffi.Model.load(smollm2_path, n_gpu_layers=ALL) as m:
        yield m


def greedy_margins(
    model: llamacffi.Model, prompt: str, n: int = N_GREEDY, **ctx_kw: Any
) -> tuple[list[int], list[float]]:
    """Greedy tokens, and the top-2 margin of each choice."""
    tokens = tokenize(model, prompt)
    out: list[int] = []
    margins: list[float] = []
    with Context(model, n_ctx=64, n_threads=2, **ctx_kw) as ctx:
        pos = ctx.decode_tokens(tokens)
        for _ in range(n):
            logits = ctx.logits()
            t = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            out.append(t)
            margins.append(float(top2.max() - top2.min()))
            ctx.decode_token(t, pos)
            pos += 1
    return out, margins


def greedy(model: llamacffi.Model, prompt: str, n: int = N_GREEDY, **ctx_kw: Any) -> list[int]:
    return greedy_margins(model, prompt, n, **ctx_kw)[0]


def assert_same_greedy(got: list[int], reference: tuple[list[int], list[float]]) -> None:
    """``got`` equals the reference tokens up to the reference's first choice closer than MARGIN."""
    tokens, margins = reference
    sure = next((i for i, m in enumerate(margins) if m < MARGIN), len(tokens))
    assert got[:sure] == tokens[:sure], (got, tokens, [round(m, 3) for m in margins])


def all_logits(model: llamacffi.Model, tokens: list[int]) -> np.ndarray:
    with Context(model, n_ctx=64, n_batch=64, n_threads=2) as ctx:
        ctx.decode(Batch.from_tokens(tokens, logits="all"))
        return np.stack([ctx.logits(i).copy() for i in range(len(tokens))])


def tokenize(model: llamacffi.Model, prompt: str) -> list[int]:
    return [int(t) for t in model.vocab.tokenize(prompt)]


# ---- devices and counts -------------------------------------------------------------------------------------------


def test_system_info_lists_the_gpu_backend_and_device() -> None:
    info = llamacffi.system_info()
    gpus = [d for d in info["devices"] if d["name"] in GPUS]  # type: ignore[attr-defined]
    assert gpus and info["gpu_offload"]
    for dev in gpus:
        assert dev["type"] in ("gpu", "igpu") and dev["backend"] in info["backends"] and dev["backend"] != "CPU"
        assert 0 < dev["memory_free"] <= dev["memory_total"], dev
        assert dev["description"]
    cpu = [d for d in backend.devices() if d["type"] == "cpu"]
    assert cpu and all(d["backend"] == "CPU" and int(d["memory_total"]) > 0 for d in cpu)


def test_offloaded_layers_counts_what_n_gpu_layers_asks(smollm2_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llamacffi"):
        full = llamacffi.Model.load(smollm2_path, n_gpu_layers=-1)
    with full:
        layers = full.n_layer + 1  # the output layer counts as one
        assert full.offloaded_layers == layers
        assert f"offloaded {layers}/{layers} layers to {GPUS[0]}" in caplog.text
    for asked, expected in ((0, 0), (1, 1), (7, 7), (ALL, layers)):
        with llamacffi.Model.load(smollm2_path, n_gpu_layers=asked) as m:
            assert m.offloaded_layers == expected, asked
    with llamacffi.Model.load(smollm2_path, vocab_only=True) as m:
        assert m.offloaded_layers == 0


def test_free_memory_drops_while_a_model_is_offloaded(smollm2_path: Path) -> None:
    gpus = [d for d in backend.devices() if d["name"] in GPUS]
    if any(d["type"] == "igpu" for d in gpus):
        pytest.skip("an integrated device's free memory is the host's, which other processes change meanwhile")

    def free() -> int:
        return sum(int(d["memory_free"]) for d in backend.devices() if d["name"] in GPUS)

    before = free()
    with llamacffi.Model.load(smollm2_path, n_gpu_layers=ALL) as m:
        during = free()
        if during == before:
            pytest.skip(f"the device reports the same free memory whatever it holds ({before} bytes)")
        assert before - during >= m.size // 2


# ---- offloaded generation against the CPU path ---------------------------------------------------------------------


def test_greedy_fully_offloaded_equals_cpu(pair: Pair) -> None:
    name, gpu, cpu = pair
    assert gpu.offloaded_layers == gpu.n_layer + 1 and cpu.offloaded_layers == 0
    for prompt in PROMPTS[name]:
        expected = greedy_margins(cpu, prompt)
        got = greedy(gpu, prompt)
        assert_same_greedy(got, expected)


def test_logits_fully_offloaded_within_tolerance(pair: Pair) -> None:
    name, gpu, cpu = pair
    prompt = PROMPTS[name][0]
    tokens = tokenize(cpu, prompt) + greedy(cpu, prompt)
    ref, got = all_logits(cpu, tokens), all_logits(gpu, tokens)
    cosine = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    rms = np.sqrt(((got - ref) ** 2).mean(axis=1)) / ref.std(axis=1)
    assert np.median(rms) <= RMS_TOLERANCE, rms
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= MARGIN
    assert np.array_equal(got.argmax(axis=1)[clear], ref.argmax(axis=1)[clear])


def test_partial_offload_equals_cpu(smollm2_path: Path, smol_cpu: llamacffi.Model) -> None:
    prompt = PROMPTS["smollm2-135m"][0]
    expected = greedy_margins(smol_cpu, prompt)
    for n in (1, smol_cpu.n_layer // 2, smol_cpu.n_layer):
        with llamacffi.Model.load(smollm2_path, n_gpu_layers=n) as m:
            assert m.offloaded_layers == n
            assert_same_greedy(greedy(m, prompt), expected)


def test_kv_cache_on_the_gpu_or_not(smol_gpu: llamacffi.Model, smol_cpu: llamacffi.Model) -> None:
    prompt = PROMPTS["smollm2-135m"][1]
    expected = greedy_margins(smol_cpu, prompt)
    assert_same_greedy(greedy(smol_gpu, prompt, offload_kqv=True), expected)
    assert_same_greedy(greedy(smol_gpu, prompt, offload_kqv=False), expected)
    flash = greedy_margins(smol_cpu, prompt, flash_attn=True)
    assert_same_greedy(greedy(smol_gpu, prompt, offload_kqv=True, flash_attn=True), flash)


def test_huge_pages_with_offload(smollm2_path: Path, smol_cpu: llamacffi.Model) -> None:
    """The GPU branch of huge_pages: the layers kept on the CPU go to plain (huge-page) memory instead of the GPU
    backend's pinned host buffer; offloaded layers are untouched."""
    prompt = PROMPTS["smollm2-135m"][0]
    expected = greedy_margins(smol_cpu, prompt)
    half = smol_cpu.n_layer // 2
    for n in (half, ALL):
        with llamacffi.Model.load(smollm2_path, n_gpu_layers=n, huge_pages=True) as m:
            assert m.huge_pages and m.offloaded_layers == min(n, m.n_layer + 1)
            if n == half and hugepages.page_size() > 0:
                assert m.huge_page_bytes > 0
            assert_same_greedy(greedy(m, prompt), expected)


def test_state_of_an_offloaded_context_saves_and_loads(
    smol_gpu: llamacffi.Model, smol_cpu: llamacffi.Model, tmp_path: Path
) -> None:
    gpu, cpu = smol_gpu, smol_cpu
    tokens = tokenize(gpu, PROMPTS["smollm2-135m"][0])
    with Context(gpu, n_ctx=64, n_threads=2) as ctx:
        ctx.decode_tokens(tokens)
        first = ctx.logits_copy()
        state, seq = ctx.state_save(), ctx.seq_state_save(0)
        ctx.seq_save_file(tmp_path / "seq.bin", tokens, 0)
        ctx.decode_token(int(np.argmax(first)), len(tokens))
        ctx.state_load(state)
        ctx.decode_token(int(np.argmax(first)), len(tokens))
        after_restore = ctx.logits_copy()
    with Context(gpu, n_ctx=64, n_threads=2) as fresh:
        assert fresh.seq_load_file(tmp_path / "seq.bin", 0).tolist() == tokens
        fresh.seq_state_load(seq, 0)
        fresh.decode_token(int(np.argmax(first)), len(tokens))
        np.testing.assert_array_equal(fresh.logits(), after_restore)
    # the state is the same bytes wherever the KV cache lives: a CPU context continues from it
    with Context(cpu, n_ctx=64, n_threads=2) as other:
        other.state_load(state)
        other.decode_token(int(np.argmax(first)), len(tokens))
        assert int(np.argmax(other.logits())) == int(np.argmax(after_restore))


# ---- the service and the command line ------------------------------------------------------------------------------


def test_service_offloads_and_generates_what_the_cpu_does(smollm2_path: Path) -> None:
    opts = GenerationOptions(max_tokens=5, temperature=0.0, raw=True)  # before the first close call on lavapipe
    texts, offloaded = [], []
    for use_gpu in (True, False):
        with (
            LlamaCppService(LocalBackendConfig(threads=2, use_gpu=use_gpu)) as svc,
            svc.load_model(str(smollm2_path), config=ModelConfig(context_size=256)) as m,
        ):
            tm = m.as_text_to_text()
            offloaded.append(tm.llama_model.offloaded_layers)
            texts.append(tm.generate(PROMPTS["smollm2-135m"][0], opts))
    assert offloaded[0] > 0 and offloaded[1] == 0
    assert texts[0] == texts[1] and texts[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llamacffi", *args], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )


def test_cli_ngl(smollm2_path: Path) -> None:
    prompt = PROMPTS["smollm2-135m"][0]
    args = ("generate", "-m", str(smollm2_path), "--temp", "0", "-n", "5", "--raw", prompt)
    outs = [_cli(*args, "-ngl", n) for n in ("99", "0")]
    for out in outs:
        assert out.returncode == 0, out.stderr
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.strip()
    info = _cli("info", "--json", "-m", str(smollm2_path), "-ngl", "5")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["model"]["offloaded_layers"] == 5


# ---- device placement (devices, split_mode, main_gpu, tensor_split) -----------------------------------------------


def _placed(**kw: Any) -> Callable[[Path], llamacffi.Model]:
    return lambda path: llamacffi.Model.load(path, n_gpu_layers=ALL, **kw)


@needs_placement
@pytest.mark.parametrize(
    "kw",
    [
        {"devices": GPUS[:1]},
        {"split_mode": "none", "main_gpu": 0},
        {"split_mode": "layer"},
        {"split_mode": "layer", "tensor_split": [1.0] * len(GPUS)},
    ],
    ids=["devices", "none-main0", "layer", "layer-split"],
)
def test_placement_offloads_and_computes_the_same(
    kw: dict[str, Any], smollm2_path: Path, smol_cpu: llamacffi.Model
) -> None:
    prompt = PROMPTS["smollm2-135m"][0]
    with _placed(**kw)(smollm2_path) as m:
        assert m.offloaded_layers == m.n_layer + 1
        assert_same_greedy(greedy(m, prompt), greedy_margins(smol_cpu, prompt))


@needs_placement
def test_row_split_runs_where_the_backend_splits_rows_and_is_refused_before_loading_elsewhere(
    smollm2_path: Path, smol_cpu: llamacffi.Model
) -> None:
    # llama.cpp's row split needs a backend with split buffers (in this tree SYCL; CUDA and Vulkan have none): the
    # load is refused before the file is read, naming the devices that cannot.
    if all(lib.llamacffi_dev_splits_rows(lib.ggml_backend_dev_by_name(n.encode())) for n in GPUS):
        with _placed(split_mode="row", main_gpu=0)(smollm2_path) as m:
            assert m.offloaded_layers == m.n_layer + 1
            prompt = PROMPTS["smollm2-135m"][0]
            assert_same_greedy(greedy(m, prompt), greedy_margins(smol_cpu, prompt))
    else:
        with pytest.raises(llamacffi.InvalidArgumentError, match="split_mode 'row'"):
            _placed(split_mode="row", main_gpu=0)(smollm2_path)


@needs_placement
def test_placement_on_the_cpu_device_offloads_nothing(smollm2_path: Path) -> None:
    cpu = [str(d["name"]) for d in backend.devices() if d["type"] == "cpu"]
    with _placed(devices=cpu)(smollm2_path) as m:
        assert m.offloaded_layers == 0


@needs_placement
@pytest.mark.parametrize(
    "kw",
    [
        {"devices": ["no-such-device"]},
        {"split_mode": "none", "main_gpu": len(GPUS)},
        {"split_mode": "diagonal"},
        {"tensor_split": [1.0] * (lib.llama_max_devices() + 1)},
        {"tensor_split": [-1.0]},
    ],
)
def test_bad_placement_is_refused(kw: dict[str, Any], smollm2_path: Path) -> None:
    with pytest.raises((ValueError, llamacffi.LlamaError)):
        _placed(**kw)(smollm2_path)
