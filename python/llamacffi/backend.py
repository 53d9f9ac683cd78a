"""Process-wide llama.cpp state: backend initialisation, NUMA strategy, system information."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

from . import hugepages, limits, log
from ._version import __version__
from .errors import InvalidArgumentError, LlamaError
from .raw import CData, ffi, lib
from .validate import one_of

_lock = threading.Lock()
_initialised = False
_numa: str | None = None

NUMA_STRATEGIES = {name: getattr(lib, f"GGML_NUMA_STRATEGY_{name.upper()}") for name in limits.NUMA_STRATEGIES}


def ensure_backend() -> None:
    """Initialise llama.cpp's backends and logging once per process (thread-safe, idempotent)."""
    global _initialised
    if _initialised:
        return
    with _lock:
        if not _initialised:
            log.install()
            lib.llama_backend_init()
            lib.llamacffi_sigint_install()
            _initialised = True


def numa_init(strategy: str) -> None:
    """Apply a NUMA strategy: "disabled", "distribute", "isolate", "numactl" or "mirror" (case-insensitive).

    llama.cpp reads it once per process: calling again with the same strategy does nothing; another strategy
    raises :class:`ValueError`.
    """
    global _numa
    key = one_of("NUMA strategy", strategy, limits.NUMA_STRATEGIES, fold_case=True)
    ensure_backend()
    with _lock:
        if _numa is not None:
            if _numa != key:
                raise InvalidArgumentError(
                    f"NUMA strategy {_numa!r} is already applied in this process; it cannot change to {key!r}"
                )
            return
        lib.llama_numa_init(NUMA_STRATEGIES[key])
        _numa = key


def numa_strategy() -> str | None:
    """The NUMA strategy applied in this process, or None."""
    return _numa


def backends() -> list[str]:
    """Names of the ggml backends compiled into this build (e.g. ``["CPU"]``, ``["CUDA", "CPU"]``)."""
    ensure_backend()
    return [
        ffi.string(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i))).decode()
        for i in range(lib.ggml_backend_reg_count())
    ]


_DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL")


def _device_type(dev: CData) -> str:
    kind = lib.ggml_backend_dev_type(dev)
    return next((t.lower() for t in _DEVICE_TYPES if kind == getattr(lib, f"GGML_BACKEND_DEVICE_TYPE_{t}")), "other")


def devices() -> list[dict[str, str | int]]:
    """The devices ggml sees: name, description, type (cpu, gpu, igpu, accel), the backend that drives it (e.g.
    "CUDA", "Vulkan", "CPU") and its memory in bytes, free and total, as the backend reports it now."""
    ensure_backend()
    out: list[dict[str, str | int]] = []
    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        lib.ggml_backend_dev_memory(dev, free, total)
        out.append(
            {
                "name": ffi.string(lib.ggml_backend_dev_name(dev)).decode(),
                "description": ffi.string(lib.ggml_backend_dev_description(dev)).decode(),
                "type": _device_type(dev),
                "backend": ffi.string(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))).decode(),
                "memory_free": int(free[0]),
                "memory_total": int(total[0]),
            }
        )
    return out


def gpu_device_names() -> list[str]:
    """The devices a model load offloads to by default: llama.cpp takes every GPU (RPC servers included), or the
    integrated GPUs where there is none."""
    ensure_backend()
    handles = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
    found = [(dev, _device_type(dev)) for dev in handles]
    wanted = "gpu" if any(kind == "gpu" for _, kind in found) else "igpu"
    return [ffi.string(lib.ggml_backend_dev_name(dev)).decode() for dev, kind in found if kind == wanted]


@functools.cache
def uses_openmp() -> bool:
    """Whether ggml's CPU backend runs its threads with OpenMP (else contexts get a thread pool of their own)."""
    ensure_backend()
    return "OPENMP = 1" in ffi.string(lib.llama_print_system_info()).decode()


def system_info(rpc_servers: Sequence[str] = ()) -> dict[str, object]:
    """What this build is: package version, llama.cpp commit, build flags, backends, devices, CPU features, and
    the huge page size the system gives on request; whether it has the RPC backend, its protocol version, and the
    devices (with free and total memory) of ``rpc_servers`` and of the servers this process added already (a
    server that cannot be reached is listed with an ``error`` instead)."""
    ensure_backend()
    info: dict[str, object] = {
        "version": __version__,
        "llama_cpp": ffi.string(lib.llamacffi_llama_cpp_commit()).decode(),
        "llama_cpp_version": ffi.string(lib.llama_version()).decode(),
        "build_flags": ffi.string(lib.llamacffi_build_flags()).decode(),
        "backends": backends(),
        "devices": devices(),
        "gpu_offload": bool(lib.llama_supports_gpu_offload()),
        "openmp": uses_openmp(),
        "mmap": bool(lib.llama_supports_mmap()),
        "mlock": bool(lib.llama_supports_mlock()),
        "huge_pages": hugepages.page_size(),  # bytes of a huge page Model.load(huge_pages=True) can get; 0: none
        "max_devices": int(lib.llama_max_devices()),
        "max_parallel_sequences": int(lib.llama_max_parallel_sequences()),
        "system_info": ffi.string(lib.llama_print_system_info()).decode().strip(),
    }
    info.update(_remote(rpc_servers))
    return info


def _remote(rpc_servers: Sequence[str]) -> dict[str, object]:
    from . import rpc  # rpc builds on this module

    if isinstance(rpc_servers, str):
        rpc_servers = [rpc_servers]
    endpoints = [rpc.parse(s, "rpc_servers[]") for s in rpc_servers]
    if endpoints:
        rpc.require()
    seen = {str(e) for e in endpoints}
    endpoints += [rpc.parse(s) for s in rpc.servers() if s not in seen]
    remote: list[dict[str, object]] = []
    for e in endpoints:
        try:
            remote += rpc.describe(e)
        except LlamaError as exc:
            remote.append({"endpoint": str(e), "error": str(exc)})
    return {"rpc": rpc.available(), "rpc_protocol": ".".join(map(str, rpc.PROTOCOL)), "rpc_devices": remote}
