"""Where a model's weights go: its devices, how layers split across them, and remote hosts' devices (RPC).

:func:`check` validates ``Model.load``'s placement arguments without calling into C (llama.cpp reads
``tensor_split`` up to ``llama_max_devices()`` entries and indexes devices by the split, so a bad value is a crash
there, not an error); :func:`build` then adds the RPC servers' devices (each checked by :func:`llamacffi.rpc.probe`
first), resolves device names and makes the C arrays ``llama_model_params`` points at, which the returned
:class:`Placement` keeps alive for the load call (llama.cpp copies both during the load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import limits, rpc
from .errors import InvalidArgumentError
from .raw import CData, ffi, lib
from .validate import as_int, as_real, one_of

SPLIT_MODES = {
    "none": lib.LLAMA_SPLIT_MODE_NONE,
    "layer": lib.LLAMA_SPLIT_MODE_LAYER,
    "row": lib.LLAMA_SPLIT_MODE_ROW,
}


@dataclass(frozen=True)
class Wanted:
    """Placement arguments, checked (nothing resolved yet)."""

    devices: tuple[str, ...] | None = None
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] | None = None
    rpc_servers: tuple[rpc.Endpoint, ...] = ()

    @property
    def default(self) -> bool:
        """Nothing asked for: llama.cpp's own device choice (local devices only) applies."""
        return self == Wanted()


@dataclass
class Placement:
    """The resolved placement of one load; holds the C arrays until the load returns."""

    wanted: Wanted
    device_names: list[str] | None  # None: llama.cpp's default devices
    servers: tuple[rpc.Endpoint, ...] = ()  # the RPC servers the model may hold buffers on: given, or of a device named
    _devices: CData = field(default=None, repr=False)  # ggml_backend_dev_t[n + 1], NULL-terminated
    _split: CData = field(default=None, repr=False)  # float[llama_max_devices()]

    def apply(self, params: CData) -> None:
        """Point ``llama_model_params`` at this placement (valid while this object lives)."""
        params.split_mode = SPLIT_MODES[self.wanted.split_mode]
        params.main_gpu = self.wanted.main_gpu
        if self._devices is not None:
            params.devices = self._devices
        if self._split is not None:
            params.tensor_split = self._split


def _strings(name: str, value: object, limit: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgumentError(f"{name} must be a list of str, got {value!r}")
    items = tuple(value)
    if not all(isinstance(v, str) and v and "\0" not in v for v in items):
        raise InvalidArgumentError(f"{name} must be a list of non-empty str, got {value!r}")
    if len({v.lower() for v in items}) != len(items):  # device names compare without case, as ggml does
        raise InvalidArgumentError(f"{name} names an entry twice: {list(items)!r}")
    if len(items) > limit:
        raise InvalidArgumentError(f"{name} holds {len(items)} entries; at most {limit}")
    return items


def check(
    devices: object = None,
    split_mode: object = "layer",
    main_gpu: object = 0,
    tensor_split: object = None,
    rpc_servers: object = None,
) -> Wanted:
    """Validate the placement arguments of ``Model.load`` (no C call); raises :class:`InvalidArgumentError`."""
    names = _strings("devices", devices, limits.MAX_DEVICES)
    if names is not None and not names:
        raise InvalidArgumentError("devices must name at least one device (omit it for the default devices)")
    mode = one_of("split_mode", split_mode, limits.SPLIT_MODES, fold_case=True)
    gpu = as_int("main_gpu", main_gpu, -1, limits.MAX_DEVICES - 1)
    split: tuple[float, ...] | None = None
    if tensor_split is not None:
        if hasattr(tensor_split, "tolist"):  # a numpy array: its numbers as Python floats
            tensor_split = tensor_split.tolist()
        if isinstance(tensor_split, (str, bytes)) or not isinstance(tensor_split, Sequence):
            raise InvalidArgumentError(f"tensor_split must be a list of numbers, got {tensor_split!r}")
        split = tuple(as_real("tensor_split[]", x, 0.0, 1e9, exact=True) for x in tensor_split)
        if not 1 <= len(split) <= limits.MAX_DEVICES:
            raise InvalidArgumentError(f"tensor_split must hold 1..{limits.MAX_DEVICES} numbers, got {len(split)}")
        if not math.fsum(split) > 0:
            raise InvalidArgumentError(f"tensor_split must have a positive sum (a share per device), got {split!r}")
    servers = _strings("rpc_servers", rpc_servers, int(lib.GGML_RPC_MAX_SERVERS)) or ()
    endpoints = tuple(rpc.parse(s, "rpc_servers[]") for s in servers)
    if len(set(map(str, endpoints))) != len(endpoints):
        raise InvalidArgumentError(f"rpc_servers names a server twice: {list(servers)!r}")
    if names is not None and split is not None and len(split) > len(names):
        raise InvalidArgumentError(
            f"tensor_split has {len(split)} shares but devices names {len(names)} devices: give one share per device"
        )
    if names is not None and mode == "none" and gpu >= len(names):
        raise InvalidArgumentError(f"main_gpu {gpu} is not an index of devices (0..{len(names) - 1})")
    return Wanted(names, mode, gpu, split, endpoints)


def _local_default() -> list[CData]:
    """llama.cpp's default devices of this process: its GPUs, or its integrated GPUs when it has no GPU."""
    gpus, igpus = [], []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        if kind == lib.GGML_BACKEND_DEVICE_TYPE_GPU:
            gpus.append(dev)
        elif kind == lib.GGML_BACKEND_DEVICE_TYPE_IGPU:
            igpus.append(dev)
    return gpus or igpus


def _by_name(name: str, timeout: float) -> tuple[CData, rpc.Endpoint | None]:
    """The device of this name, and the RPC server it is on (None for a local one)."""
    dev = lib.ggml_backend_dev_by_name(name.encode())
    if dev != ffi.NULL:
        return dev, None
    found = rpc.find_device(name)
    if found is None:
        known = [
            ffi.string(lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i))).decode()
            for i in range(lib.ggml_backend_dev_count())
        ]
        raise InvalidArgumentError(
            f"no device named {name!r}; this process has {', '.join(known + rpc.device_names())} (the devices of "
            f"an RPC server are named once it is given in rpc_servers)"
        )
    rpc.devices_of(found[0], timeout)  # a remote device: its server is checked as if it were named
    return found[1], found[0]


def _names(devs: list[CData]) -> list[str]:
    return [ffi.string(lib.ggml_backend_dev_name(d)).decode() for d in devs]


def build(wanted: Wanted, timeout: float = limits.RPC_PROBE_TIMEOUT) -> Placement:
    """Resolve checked arguments: add and probe the RPC servers, look devices up by name, make the C arrays.

    With ``rpc_servers`` and no ``devices``, the model's devices are the servers' (in their order) and then this
    process's default GPUs, as llama.cpp orders them. Raises :class:`~llamacffi.errors.ModelLoadError` for a server
    that cannot serve, :class:`InvalidArgumentError` for an unknown device or values that do not fit the devices.
    """
    remote: list[CData] = []
    if wanted.rpc_servers:
        rpc.require()
    for endpoint in wanted.rpc_servers:
        remote += rpc.devices_of(endpoint, timeout)
    servers = list(wanted.rpc_servers)
    if wanted.devices is not None:
        named = [_by_name(n, timeout) for n in wanted.devices]
        devs: list[CData] | None = [dev for dev, _ in named]
        servers += [e for _, e in named if e is not None and e not in servers]
    elif remote:
        devs = remote + _local_default()
    else:
        devs = None
    place = Placement(wanted, _names(devs) if devs is not None else None, tuple(servers))
    if wanted.split_mode == "row":
        unsplit = _names(
            [d for d in (devs if devs is not None else _local_default()) if not lib.llamacffi_dev_splits_rows(d)]
        )
        if unsplit:
            raise InvalidArgumentError(
                f"split_mode 'row' needs devices whose backend splits a tensor's rows across devices (in this "
                f"llama.cpp: SYCL); {', '.join(unsplit)} cannot: use split_mode 'layer'"
            )
    if devs is not None:
        if wanted.split_mode == "none" and wanted.main_gpu >= len(devs):
            raise InvalidArgumentError(f"main_gpu {wanted.main_gpu} is not an index of the devices {_names(devs)}")
        if wanted.tensor_split is not None and len(wanted.tensor_split) > len(devs):
            raise InvalidArgumentError(
                f"tensor_split has {len(wanted.tensor_split)} shares for the {len(devs)} devices {_names(devs)}"
            )
        place._devices = ffi.new("ggml_backend_dev_t[]", [*devs, ffi.NULL])
    if wanted.tensor_split is not None:
        place._split = ffi.new("float[]", limits.MAX_DEVICES)  # llama.cpp reads all of them
        for i, share in enumerate(wanted.tensor_split):
            place._split[i] = share
    return place
