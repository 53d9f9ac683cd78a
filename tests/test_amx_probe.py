"""The build's AMX probe: a native x86 build leaves AMX out exactly where the tile instructions fault (or the kernel
does not grant them), and the flags reach every compile."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "build_tools" / "amx_probe.c"
AMX = ["-mamx-tile", "-mamx-int8", "-mamx-bf16"]

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AMX is an x86 extension"),
    pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("cmake") is None, reason="no gcc or cmake"),
]


def _probe_runs(tmp_path: Path, flags: list[str]) -> bool:
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-march=native", *flags, str(PROBE), "-o", str(exe)], check=True)
    return subprocess.run([str(exe)]).returncode == 0


def _configure(tmp_path: Path, *defines: str) -> str:
    if not (ROOT / "vendor" / "llama.cpp" / "include" / "llama.h").exists():
        pytest.skip("the pinned llama.cpp tree is not there (package not built)")
    build = tmp_path / "build"
    r = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [x for x in r.stdout.splitlines() if "llamacffi: build flags" in x]
    return line


def test_without_amx_in_the_target_the_probe_has_nothing_to_check(tmp_path: Path) -> None:
    assert _probe_runs(tmp_path, ["-mno-amx-tile"])


def test_the_build_leaves_amx_out_where_the_probe_fails(tmp_path: Path) -> None:
    # AMX forced into the target, as -march=native gives it on a CPU that reports it
    runs = _probe_runs(tmp_path, AMX)
    flags = " ".join(AMX)
    line = _configure(tmp_path, f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}")
    assert ("AMX=as -march=native has it" in line) == runs and ("AMX=off" in line) != runs
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    cxx_flags = next(x for x in cache.splitlines() if x.startswith("CMAKE_CXX_FLAGS:"))
    assert ("-mno-amx-int8" in cxx_flags) is False  # the user's cached flags are not rewritten
    commands = (tmp_path / "build" / "build.ninja").read_text() if (tmp_path / "build" / "build.ninja").exists() else ""
    commands += "".join(p.read_text() for p in (tmp_path / "build").rglob("flags.make"))
    assert ("-mno-amx-tile" in commands) != runs


def test_the_probe_can_be_turned_off(tmp_path: Path) -> None:
    flags = " ".join(AMX)
    line = _configure(tmp_path, "-DLLAMACFFI_AMX_PROBE=OFF", f"-DCMAKE_C_FLAGS={flags}")
    assert "AMX=unchecked" in line
