"""scripts/gpu-bundle: what an offline GPU machine gets arrives in folders of bounded size and comes back whole."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import shutil
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu-bundle"
MIB = 1 << 20


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_bundle", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_bundle", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bundle"] = mod  # its dataclass looks its module up
    loader.exec_module(mod)
    return mod


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[ModuleType, Path, dict[str, bytes]]:
    gb = _load()
    src = tmp_path / "src"
    src.mkdir()
    header = b"/* llama.h */\n"
    with tarfile.open(src / "llama.cpp.tar.xz", "w:xz") as tf:
        info = tarfile.TarInfo("llama.cpp/include/llama.h")
        info.size = len(header)
        tf.addfile(info, io.BytesIO(header))
    (src / "cffi-0-py3-none-any.whl").write_bytes(os.urandom(1000))
    (src / "model.gguf").write_bytes(os.urandom(5 * MIB + 123))
    files = [
        (src / "llama.cpp.tar.xz", "llama.cpp.tar.xz"),
        (src / "cffi-0-py3-none-any.whl", "wheels/cffi-0-py3-none-any.whl"),
        (src / "model.gguf", "models/model.gguf"),
    ]
    made = tmp_path / "made"
    assert gb.split(files, made, 2 * MIB, "3.12", {"models/model.gguf": "tiny"}) == 3
    for part in made.iterdir():  # every folder keeps to the bound
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file() and f.name != "MANIFEST.json") <= 2 * MIB
    return gb, made, {name: path.read_bytes() for path, name in files}


def _arrive(made: Path, dest: Path, *parts: int) -> None:
    for i in parts:
        shutil.copytree(made / str(i), dest / str(i))


def test_the_build_needs_only_the_first_folder(
    bundle: tuple[ModuleType, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    gb, made, want = bundle
    there = tmp_path / "there"
    _arrive(made, there, 1)
    assert gb.assemble(there, partial=False) == 3  # the model is not whole yet
    assert gb.assemble(there, partial=True) == 0
    assembled = there / "assembled"
    assert (assembled / "llama.cpp" / "include" / "llama.h").read_bytes() == b"/* llama.h */\n"
    assert (assembled / "wheels" / "cffi-0-py3-none-any.whl").read_bytes() == want["wheels/cffi-0-py3-none-any.whl"]
    assert not (assembled / "models" / "model.gguf").exists()
    assert (assembled / "MODELS").read_text() == ""  # no model is whole yet

    _arrive(made, there, 3, 2)  # later folders, in any order
    assert gb.assemble(there, partial=False) == 0
    assert (assembled / "models" / "model.gguf").read_bytes() == want["models/model.gguf"]
    assert (assembled / "MODELS").read_text() == "tiny\n"
    assert not list(assembled.rglob("*.tmp"))


def test_a_damaged_piece_is_refused(bundle: tuple[ModuleType, Path, dict[str, bytes]], tmp_path: Path) -> None:
    gb, made, _ = bundle
    there = tmp_path / "there"
    _arrive(made, there, 1, 2, 3)
    piece = next((there / "2" / "models").iterdir())
    data = bytearray(piece.read_bytes())
    data[100] ^= 1
    piece.write_bytes(bytes(data))
    assert gb.assemble(there, partial=False) == 1
    assert not (there / "assembled" / "models" / "model.gguf").exists()


def test_a_folder_without_manifests_is_refused(tmp_path: Path) -> None:
    assert _load().assemble(tmp_path, partial=True) == 2
