"""Bad model files raise ModelLoadError (a LlamaError and an OSError); none crashes the interpreter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import llamacffi
from llamacffi import ModelLoadError


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
