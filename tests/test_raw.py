"""The raw layer: every LLAMA_API function of the vendored llama.h is reachable, and the build describes itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import llamacffi
from llamacffi import backend
from llamacffi.raw import ffi, lib

ROOT = Path(__file__).resolve().parent.parent

# Functions of llama.h deliberately absent from lib, with the reason. Empty: the cdef is generated from the header.
NOT_BOUND: dict[str, str] = {}


def llama_h() -> Path:
    tree = os.environ.get("LLAMACFFI_LLAMA_CPP_DIR") or str(ROOT / "vendor" / "llama.cpp")
    return Path(tree) / "include" / "llama.h"


def llama_api_functions(text: str) -> set[str]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    text = re.sub(r"\bDEPRECATED\(", "", text)
    names = set()
    for decl in re.findall(r"LLAMA_API\b([^;{]*?)\(", text):
        m = re.search(r"(\w+)\s*$", decl)
        if m:
            names.add(m.group(1))
    return names


def test_every_llama_api_function_is_in_lib() -> None:
    names = llama_api_functions(llama_h().read_text())
    assert len(names) > 200, "the header parse found too few functions"
    missing = sorted(n for n in names - set(NOT_BOUND) if not hasattr(lib, n))
    assert missing == []


def test_parser_sees_known_functions() -> None:
    names = llama_api_functions(llama_h().read_text())
    for n in (
        "llama_decode",
        "llama_memory_seq_rm",
        "llama_tokenize",
        "llama_model_load_from_file",
        "llama_sampler_init_grammar",
        "llama_numa_init",
    ):
        assert n in names


def test_enums_and_constants_come_from_the_compiler() -> None:
    assert lib.LLAMA_TOKEN_NULL == -1
    assert lib.LLAMA_DEFAULT_SEED == 0xFFFFFFFF
    assert lib.GGML_NUMA_STRATEGY_DISABLED == 0
    assert ffi.sizeof("struct llama_batch") == 7 * ffi.sizeof("void *")  # n_tokens padded + 6 pointers


def test_raw_exports_only_ffi_and_lib() -> None:
    import llamacffi.raw as raw

    assert raw.__all__ == ["ffi", "lib"]


def test_compiled_module_matches_package() -> None:
    assert ffi.string(lib.llamacffi_package_version()).decode() == llamacffi.__version__


def test_system_info() -> None:
    info = llamacffi.system_info()
    assert info["version"] == llamacffi.__version__
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", info["llama_cpp"])
    assert "CPU" in info["backends"]
    assert "CPU :" in info["system_info"] or "CPU" in info["system_info"]
    assert "GGML_CUDA=" in info["build_flags"]
    for dev in info["devices"]:
        assert dev["backend"] in info["backends"] and dev["type"] in ("cpu", "gpu", "igpu", "accel", "other")
        assert 0 <= dev["memory_free"] <= dev["memory_total"], dev
    assert [d["backend"] for d in info["devices"] if d["type"] == "cpu"] == ["CPU"]
    gpus = [d["name"] for d in info["devices"] if d["type"] == "gpu"]
    assert backend.gpu_device_names() == (gpus or [d["name"] for d in info["devices"] if d["type"] == "igpu"])
    thp = Path("/sys/kernel/mm/transparent_hugepage")
    if sys.platform.startswith("linux") and thp.is_dir() and "[never]" not in (thp / "enabled").read_text():
        assert info["huge_pages"] == int((thp / "hpage_pmd_size").read_text())
    else:
        assert info["huge_pages"] == 0


def test_pinned_tree_origin_recorded() -> None:
    origin = ROOT / "vendor" / "llama.cpp" / "LLAMACFFI_ORIGIN.json"
    if not os.environ.get("LLAMACFFI_LLAMA_CPP_DIR"):
        assert origin.is_file()
        assert llamacffi.system_info()["llama_cpp"] in origin.read_text()
        assert not (ROOT / "vendor" / "llama.cpp" / ".git").exists()


def test_the_layers_submodules_load_on_first_use() -> None:
    code = (
        "import sys, llamacffi; assert 'llamacffi.sampling' not in sys.modules; "
        "from llamacffi.sampling import Sampler; assert llamacffi.sampling.Sampler is Sampler; "
        "assert callable(llamacffi.grammar.from_json_schema); "
        "assert not hasattr(llamacffi, 'service')"  # a floor above: imported by name, never reached from here
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
