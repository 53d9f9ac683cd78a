"""llama.cpp's RPC backend: remote hosts' devices for a model split across machines, and serving this build's own.

The client side of ggml's RPC backend aborts the whole process when a server cannot be reached or stops answering
(``GGML_ABORT("Failed to connect ...")``, ``RPC_STATUS_ASSERT``). So before any call that connects, a server is
checked from Python (:func:`probe`: a TCP connect and the protocol's HELLO exchange, with a timeout), and a server
that is down, busy or speaks another protocol version is a :class:`~llamacffi.errors.ModelLoadError` naming it. A
server that dies while a model uses it still aborts the process that holds the model: the service runs such models
in a worker process of their own (:mod:`llamacffi.service.worker`).

A server's devices are added once per process (:func:`devices_of`) and kept in this module's table, not in ggml's
registry: llama.cpp's default device choice never sees them, and only a load that names the server uses them.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from . import limits
from .backend import ensure_backend
from .errors import InvalidArgumentError, ModelLoadError
from .raw import CData, ffi, lib

HELLO = 14  # RPC_CMD_HELLO: the first command of every connection, fixed across protocol versions
CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE: the transport capabilities both sides exchange in the HELLO (zeros: plain TCP)
PROTOCOL = (int(lib.RPC_PROTO_MAJOR_VERSION), int(lib.RPC_PROTO_MINOR_VERSION), int(lib.RPC_PROTO_PATCH_VERSION))
SECURITY_WARNING = (
    "the RPC protocol has no authentication or encryption: anyone who can reach this port can run computations "
    "on its devices and read or write their memory; expose it only on a trusted network"
)

_lock = threading.Lock()
_servers: dict[str, list[CData]] = {}  # endpoint -> its devices, added once per process
_users: dict[str, weakref.WeakSet[object]] = {}  # endpoint -> the loaded models whose weights it holds


class RPCUnavailableError(ModelLoadError):
    """This build has no RPC backend (built with ``-DGGML_RPC=OFF``)."""


def available() -> bool:
    """Whether this build has llama.cpp's RPC backend (``GGML_RPC``, on by default)."""
    ensure_backend()
    return bool(lib.llama_supports_rpc())


def require() -> None:
    """Raise :class:`RPCUnavailableError` unless this build has the RPC backend."""
    if not available():
        raise RPCUnavailableError(
            "this llamacffi build has no RPC backend (it was built with -DGGML_RPC=OFF); rebuild it with "
            "'pip install .' (GGML_RPC is on by default) to use rpc_servers or rpc-server"
        )


@dataclass(frozen=True)
class Endpoint:
    """A server's address as ``host:port``; the host is an IPv4 address or a name that resolves to one."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse(endpoint: object, name: str = "rpc server") -> Endpoint:
    """``"host:port"`` checked: a host of letters, digits, dots and dashes (or an IPv4 address) whose dot-separated
    labels are 1..63 characters (a trailing dot allowed), as the resolver requires, and a port in 1..65535. Raises
    :class:`InvalidArgumentError` saying what is wrong."""
    if not isinstance(endpoint, str):
        raise InvalidArgumentError(f"{name} must be a 'host:port' str, got {endpoint!r}")
    host, sep, port = endpoint.rpartition(":")
    ok_host = bool(host) and len(host) <= 253 and all(c.isascii() and (c.isalnum() or c in ".-") for c in host)
    if not sep or not ok_host or not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise InvalidArgumentError(
            f"{name} must be 'host:port' (an IPv4 address or host name, port 1..65535), got {endpoint!r}"
        )
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(1 <= len(label) <= 63 for label in labels):
        raise InvalidArgumentError(
            f"{name}: every dot-separated label of a host name must be 1..63 characters, got {endpoint!r}"
        )
    return Endpoint(host, int(port))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine's loopback interface (127.0.0.0/8)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("closed")
        data += part
    return data


def probe(endpoint: Endpoint, timeout: float = limits.RPC_PROBE_TIMEOUT, *, hello: bool = True) -> tuple[int, ...]:
    """Check that an RPC server listens at ``endpoint`` and speaks this build's protocol; returns its version
    ``(major, minor, patch)`` (``()`` when ``hello`` is False: only the connection was tried).

    A server serves one client at a time: one busy with another client does not answer the HELLO until that
    client leaves, and that is reported as such after ``timeout`` seconds. Raises :class:`ModelLoadError`.
    """
    where = f"RPC server {endpoint}"
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError:
        raise ModelLoadError(f"{where} did not accept a connection within {timeout:g} s (down, unreachable)") from None
    except UnicodeError as exc:  # a host name the resolver's IDNA encoding refuses
        raise ModelLoadError(f"{where} cannot be reached: its host name cannot be resolved ({exc})") from None
    except OSError as exc:
        raise ModelLoadError(
            f"{where} cannot be reached: {exc.strerror or exc}; is 'llamacffi rpc-server' running there?"
        ) from None
    with sock:
        if not hello:
            return ()
        sock.settimeout(timeout)
        try:
            sock.sendall(bytes([HELLO]) + struct.pack("<Q", CAPS_SIZE) + bytes(CAPS_SIZE))
            size = struct.unpack("<Q", _recv_exactly(sock, 8))[0]
            answer = _recv_exactly(sock, size) if size == 4 + CAPS_SIZE else b""
        except TimeoutError:
            raise ModelLoadError(
                f"{where} accepted the connection but did not answer the protocol's HELLO within {timeout:g} s: it "
                f"is busy serving another client (a server serves one client, one process, at a time) or hung"
            ) from None
        except (ConnectionError, OSError):
            raise ModelLoadError(
                f"{where} closed the connection during the version exchange: it speaks another RPC protocol "
                f"version than this build's {_version(PROTOCOL)} (update both sides to the same llamacffi)"
            ) from None
    if not answer:
        raise ModelLoadError(
            f"{where} answered the HELLO with {size} bytes: it speaks another RPC protocol than "
            f"this build's {_version(PROTOCOL)}"
        )
    version = tuple(answer[:3])
    if version[0] != PROTOCOL[0] or version[1] > PROTOCOL[1]:
        raise ModelLoadError(
            f"{where} speaks RPC protocol {_version(version)}, this build {_version(PROTOCOL)}: versions must share "
            f"the major number and the server's minor must not be newer; run the same llamacffi on both sides"
        )
    return version


def _version(v: Iterable[int]) -> str:
    return ".".join(map(str, v))


def _in_use(endpoint: str) -> bool:
    """Whether a model loaded in this process still holds buffers on the server (its connection is open): the
    model's pointer is not freed yet (its owner's ``_ptr``; a closed model's contexts keep it)."""
    users = _users.get(endpoint)
    return users is not None and any(getattr(u, "_ptr", None) is not None for u in users)


def devices_of(endpoint: Endpoint, timeout: float = limits.RPC_PROBE_TIMEOUT) -> list[CData]:
    """The devices of the server at ``endpoint``, added to this process once (checked by :func:`probe` first)."""
    require()
    key = str(endpoint)
    with _lock:
        # A connection this process holds already (a model on the server) makes a second one wait: only check that
        # the server still listens then.
        probe(endpoint, timeout, hello=not _in_use(key))
        if key not in _servers:
            reg = lib.ggml_backend_rpc_add_server(key.encode())
            if reg == ffi.NULL:
                raise ModelLoadError(f"RPC server {endpoint} reports no devices")
            _servers[key] = [lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))]
        return list(_servers[key])


def note_user(endpoints: Iterable[Endpoint], model: object) -> None:
    """Record that ``model`` (a model's :class:`~llamacffi.ownership.Owner`) holds buffers on these servers."""
    with _lock:
        for e in endpoints:
            _users.setdefault(str(e), weakref.WeakSet()).add(model)


def find_device(name: str) -> tuple[Endpoint, CData] | None:
    """A device of a server added in this process by its name (``RPC0``, ...), with the server's address; None
    when no added server has it."""
    with _lock:
        for endpoint, devs in _servers.items():
            for d in devs:
                if ffi.string(lib.ggml_backend_dev_name(d)).decode().lower() == name.lower():  # as ggml compares
                    return parse(endpoint), d
    return None


def device_names() -> list[str]:
    """Names of the devices of the servers added in this process (no server is contacted)."""
    with _lock:
        return [ffi.string(lib.ggml_backend_dev_name(d)).decode() for devs in _servers.values() for d in devs]


def describe(endpoint: Endpoint, timeout: float = limits.RPC_PROBE_TIMEOUT) -> list[dict[str, object]]:
    """The devices of the server at ``endpoint`` with their memory: name, endpoint, free and total bytes."""
    out: list[dict[str, object]] = []
    for dev in devices_of(endpoint, timeout):
        free, total = ffi.new("size_t *"), ffi.new("size_t *")
        lib.ggml_backend_dev_memory(dev, free, total)
        out.append(
            {
                "name": ffi.string(lib.ggml_backend_dev_name(dev)).decode(),
                "endpoint": str(endpoint),
                "memory_free": int(free[0]),
                "memory_total": int(total[0]),
            }
        )
    return out


def servers() -> list[str]:
    """The servers whose devices were added in this process."""
    with _lock:
        return list(_servers)


def _listening(host: str, port: int) -> dict[str, int] | None:
    """``{socket inode: port}`` of this process's sockets listening on ``host`` (``port``, or any when 0), from /proc
    (Linux); None when the system does not tell."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/self/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return None
    want = socket.inet_aton(host)[::-1].hex().upper() if host != "0.0.0.0" else "00000000"
    found = {}
    for row in rows:
        cols = row.split()
        addr, at = cols[1].split(":")
        if cols[3] == "0A" and cols[9] in inodes and addr == want and (port == 0 or int(at, 16) == port):
            found[cols[9]] = int(at, 16)
    return found


def listening_port(host: str, port: int, *, besides: Collection[str] = ()) -> int | None:
    """The port of a socket of this process listening on ``host`` (``port``, or any when 0), other than the sockets
    whose inodes are ``besides`` (those that listened before), from /proc (Linux); None when there is none yet or
    the system does not tell."""
    found = _listening(host, port) or {}
    return next((at for inode, at in found.items() if inode not in besides), None)


def _serving_devices(names: Iterable[str] | None) -> list[CData]:
    """Devices to serve: those named, else this build's GPUs (integrated ones too), else its CPU."""
    if names is not None:
        devs = []
        for name in names:
            dev = lib.ggml_backend_dev_by_name(str(name).encode())
            if dev == ffi.NULL:
                known = [
                    ffi.string(lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i))).decode()
                    for i in range(lib.ggml_backend_dev_count())
                ]
                raise InvalidArgumentError(f"no device named {name!r}; this build has {', '.join(known)}")
            devs.append(dev)
        return devs
    every = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    gpus = [
        d
        for d in every
        if lib.ggml_backend_dev_type(d) in (lib.GGML_BACKEND_DEVICE_TYPE_GPU, lib.GGML_BACKEND_DEVICE_TYPE_IGPU)
    ]
    return gpus or [d for d in every if lib.ggml_backend_dev_type(d) == lib.GGML_BACKEND_DEVICE_TYPE_CPU]


@dataclass
class Serving:
    """An RPC server running in this process: the thread in llama.cpp's accept loop (it never returns while it
    serves; the process ends it), where it listens, and the devices it serves."""

    thread: threading.Thread
    host: str
    port: int
    devices: list[str]


def start_server(
    host: str = "127.0.0.1",
    port: int = 50052,
    *,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    devices: Iterable[str] | None = None,
    timeout: float = 10.0,
) -> Serving:
    """Serve this build's devices over llama.cpp's RPC protocol on ``host:port`` (an IPv4 address; port 0: a free
    one, found from /proc on Linux), in a thread of this process; returns once the socket listens.

    ``threads``: CPU threads of a CPU device (default: all cores); ``cache_dir``: where the server keeps tensors
    clients sent, so a later load sends their hashes instead (default: no cache); ``devices``: names of the devices
    to serve (default: the GPUs, else the CPU). The protocol has no authentication or encryption
    (:data:`SECURITY_WARNING`): the caller decides whether a non-loopback ``host`` is acceptable.
    """
    require()
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise InvalidArgumentError(f"host must be an IPv4 address such as 127.0.0.1, got {host!r}") from None
    from .validate import as_int

    port = as_int("port", port, 0, 65535)
    n_threads = as_int("threads", threads if threads is not None else os.cpu_count() or 1, 1, limits.MAX_THREADS)
    linux = os.path.exists("/proc/self/net/tcp")
    if port == 0 and not linux:
        raise InvalidArgumentError("port 0 (any free port) needs Linux's /proc to find the port; give a port")
    cache = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cache = ffi.new("char[]", os.fsencode(cache_dir))
    devs = _serving_devices(devices)
    dev_array = ffi.new("ggml_backend_dev_t[]", devs)
    endpoint = ffi.new("char[]", f"{host}:{port}".encode())
    # The thread's arguments keep the C strings and the device array alive as long as it runs.
    thread = threading.Thread(
        target=lib.ggml_backend_rpc_start_server,
        args=(endpoint, cache if cache is not None else ffi.NULL, n_threads, len(devs), dev_array),
        name="llamacffi-rpc-server",
        daemon=True,
    )
    # Sockets of this process that listen already (an HTTP server, an earlier start_server) are not this server's.
    before = set(_listening(host, port) or {}) if linux else set()
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if linux:
            bound = listening_port(host, port, besides=before)
        else:
            bound = port if time.monotonic() > deadline - timeout + 0.5 else None
        if bound is not None and thread.is_alive():  # a thread that returned could not bind
            return Serving(thread, host, bound, [ffi.string(lib.ggml_backend_dev_name(d)).decode() for d in devs])
        if not thread.is_alive():
            break
        time.sleep(0.02)
    raise OSError(
        f"the RPC server could not listen on {host}:{port} (is the port in use, or the address not this machine's?)"
    )
