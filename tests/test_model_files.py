"""Bad model files raise ModelLoadError (a LlamaError and an OSError); none crashes the interpreter."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import llamacffi
from llamacffi import ModelLoadError, gguf


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        llamacffi.Model.load(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        llamacffi.Model.load(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="empty"):
        llamacffi.Model.load(write(tmp_path, "empty.gguf", b""))


def test_random_bytes(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        llamacffi.Model.load(write(tmp_path, "random.gguf", b"\0" + os.urandom(4095)))


def test_random_bytes_behind_gguf_magic(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load"):
        llamacffi.Model.load(write(tmp_path, "magic.gguf", b"GGUF" + os.urandom(8192)))


@pytest.mark.parametrize("keep", [4, 64, 1 << 20, 0.5, 0.999])
def test_truncated_gguf(tmp_path: Path, smollm2_path: Path, keep: float) -> None:
    data = smollm2_path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    with pytest.raises(ModelLoadError, match="could not load"):
        llamacffi.Model.load(write(tmp_path, "truncated.gguf", data[:n]))


def test_errors_are_catchable_as_builtins(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        llamacffi.Model.load(tmp_path / "nope.gguf")
    with pytest.raises(llamacffi.LlamaError):
        llamacffi.Model.load(tmp_path / "nope.gguf")


def test_wrong_path_type() -> None:
    with pytest.raises(TypeError):
        llamacffi.Model.load(42)  # type: ignore[arg-type]


def test_progress_callback_cancels_and_reraises(smollm2_path: Path) -> None:
    seen: list[float] = []

    def cancel(p: float) -> bool:
        seen.append(p)
        return False

    with pytest.raises(ModelLoadError, match="cancelled"):
        llamacffi.Model.load(smollm2_path, progress=cancel)
    assert seen and 0.0 <= seen[0] <= 1.0

    def boom(p: float) -> None:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        llamacffi.Model.load(smollm2_path, progress=boom)

    progress: list[float] = []
    with llamacffi.Model.load(smollm2_path, progress=progress.append) as m:
        assert m.n_params > 0
    assert progress[-1] == pytest.approx(1.0)


def gguf_bytes(kv: list[tuple[str, int, bytes]]) -> bytes:
    """A GGUF file with no tensors and the given (key, value type, encoded value) pairs."""

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, vtype, value in kv:
        out += s(key) + struct.pack("<I", vtype) + value
    return out


def string_value(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def string_array(items: list[str]) -> bytes:
    return struct.pack("<IQ", 8, len(items)) + b"".join(string_value(t) for t in items)


@pytest.mark.parametrize("layers", [0, 1000])
def test_layer_count_out_of_range(tmp_path: Path, layers: int) -> None:
    # llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS, which would abort the process
    data = gguf_bytes(
        [("general.architecture", 8, string_value("llama")), ("llama.block_count", 4, struct.pack("<I", layers))]
    )
    with pytest.raises(ModelLoadError, match="block_count"):
        llamacffi.Model.load(write(tmp_path, "layers.gguf", data))


@pytest.mark.parametrize("vocab_only", [False, True])
def test_vocabulary_with_a_repeated_token(tmp_path: Path, vocab_only: bool) -> None:
    data = gguf_bytes(
        [
            ("general.architecture", 8, string_value("llama")),
            ("llama.block_count", 4, struct.pack("<I", 1)),
            ("tokenizer.ggml.model", 8, string_value("llama")),
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b", "a"])),
        ]
    )
    with pytest.raises(ModelLoadError, match="more than once"):
        llamacffi.Model.load(write(tmp_path, "dup.gguf", data), vocab_only=vocab_only)


def test_tokenizer_arrays_of_other_lengths(tmp_path: Path) -> None:
    data = gguf_bytes(
        [
            ("general.architecture", 8, string_value("llama")),
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b"])),
            ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 1) + struct.pack("<f", 0.0)),
        ]
    )
    with pytest.raises(ModelLoadError, match="scores"):
        llamacffi.Model.load(write(tmp_path, "scores.gguf", data), vocab_only=True)


def test_real_models_pass_the_metadata_check(smollm2_path: Path, gemma3_path: Path) -> None:
    for path in (smollm2_path, gemma3_path):
        meta = gguf.read_metadata(path, {"{arch}.block_count", "tokenizer.ggml.tokens"})
        assert 0 < meta["{arch}.block_count"] <= gguf.MAX_LAYERS
        gguf.check(path)


def test_metadata_check_accepts_what_llama_cpp_accepts(tmp_path: Path) -> None:
    def check(kv: list[tuple[str, int, bytes]], vocab_only: bool = False) -> None:
        gguf.check(write(tmp_path, "m.gguf", gguf_bytes(kv)), vocab_only)

    arch = ("general.architecture", 8, string_value("llama"))
    check([arch, ("tokenizer.ggml.tokens", 9, string_array(["", "a", ""]))])  # empty texts get names of their own
    check(
        [
            arch,
            ("tokenizer.ggml.tokens", 9, string_array(["a", "b"])),
            ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, 1, 1)),
        ]
    )  # longer
    check(
        [arch, ("tokenizer.ggml.tokens", 9, string_array(["a"])), ("tokenizer.ggml.scores", 6, struct.pack("<f", 0.0))]
    )  # not an array: llama.cpp's own error
    check([arch, ("llama.block_count", 4, struct.pack("<I", 0))], vocab_only=True)  # a vocab-only load reads no layers
    with pytest.raises(ModelLoadError, match="block_count"):  # the architecture may come after its keys
        check([("llama.block_count", 4, struct.pack("<I", 0)), arch])
