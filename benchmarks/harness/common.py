"""Shared pieces: repetition and interleaving, summaries, paired ratios, child processes with their peak RSS, and
the description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import paired

ROOT = Path(__file__).resolve().parents[2]  # the repository: workers run from there

# A prompt both models continue well past 128 tokens with greedy decoding, without an end-of-generation token.
GEN_PROMPT = "Once upon a time, in a small village by the sea,"

# English filler for prompts of a given token length (prefix reuse) and for the tokenizer microbenchmark.
FILLER = (
    "The harbour town woke slowly. Fishermen pulled their boats onto the shingle while the baker opened his shutters "
    "and the smell of bread drifted down the narrow streets. Children ran past the chapel towards the school, where "
    "the old teacher was already writing the day's lesson on the blackboard: the rivers of the continent, their "
    "sources and their mouths, and the cities that had grown along their banks. At the market, merchants argued "
    "about the price of salt, wool and copper, and a traveller from the north asked for directions to the lighthouse. "
    "By noon the wind had turned, the clouds gathered over the cliffs, and the first drops of rain fell on the "
    "cobblestones. "
)


# Layers every side offloads to a GPU; ``python -m benchmarks`` sets it for its worker processes and children.
GPU_LAYERS_ENV = "LLAMACFFI_BENCH_GPU_LAYERS"


def gpu_layers() -> int:
    """Layers each side offloads (-1: all). Without a choice in the environment: all where the build finds a GPU
    device (CUDA, Metal, Vulkan, ...), none otherwise (a build with only the RPC backend can offload, but to no
    device of this machine)."""
    value = os.environ.get(GPU_LAYERS_ENV)
    if value is not None:
        return int(value)
    from llamacffi.backend import gpu_device_names

    return -1 if gpu_device_names() else 0


def ngl_arg(layers: int) -> str:
    """``-ngl`` of llama.cpp's programs for :func:`gpu_layers` (they take a count: 999 stands for all)."""
    return "999" if layers < 0 else str(layers)


class Unavailable(Exception):
    """A side that cannot run here (a program not built, a package not installed): reported, never fatal."""


@dataclass
class Series:
    """Repeated measurements of one side; ``extra`` keeps per-repetition details (token counts, ...)."""

    values: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, Any] | None:
        if not self.values:
            return None
        return {
            "median": statistics.median(self.values),
            "min": min(self.values),
            "max": max(self.values),
            "n": len(self.values),
            "values": self.values,
        }


Measure = Callable[[], "float | tuple[float, dict[str, Any]]"]


def interleaved(sides: Mapping[str, Measure | None], reps: int, warmup: int = 1) -> dict[str, Series]:
    """Run every side ``warmup`` times, then ``reps`` rounds A B C A B C ...; a side that raises Unavailable (or
    any error) is dropped with the reason, the others go on. ``None`` marks a side absent from the start."""
    out = {name: Series() for name in sides}
    live: dict[str, Measure] = {}
    for name, fn in sides.items():
        if fn is None:
            out[name].error = "absent"
        else:
            live[name] = fn
    for _ in range(warmup):
        for name, fn in list(live.items()):
            try:
                fn()
            except Exception as exc:  # recorded in the report, the run goes on
                out[name].error = _reason(exc)
                del live[name]
    for _ in range(reps):
        for name, fn in list(live.items()):
            try:
                r = fn()
            except Exception as exc:
                out[name].error = _reason(exc)
                del live[name]
                continue
            value, extra = r if isinstance(r, tuple) else (r, {})
            out[name].values.append(float(value))
            out[name].extra.append(extra)
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Unavailable):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"error: {type(exc).__name__}: {text[0] if text else ''}"[:300]


def paired_ratio(num: Series | None, den: Series | None) -> dict[str, float] | None:
    """Ratios ``num[i] / den[i]`` of repetitions run side by side: their median and min-max."""
    if num is None or den is None:
        return None
    return paired(num.values, den.values)


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    """Microseconds per call of ``fn`` over ``calls`` calls."""
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / 1e3 / calls


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    max_rss_kib: int  # 0 when not measured
    rss_method: str = ""


GNU_TIME = Path("/usr/bin/time")


def _gnu_time() -> bool:
    """Whether /usr/bin/time is GNU time (``-f %M`` = the child's peak RSS in KiB)."""
    if not GNU_TIME.is_file():
        return False
    try:
        out = subprocess.run([str(GNU_TIME), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "GNU" in out.stdout + out.stderr


_HAS_GNU_TIME: bool | None = None


def run_child(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600, rss: bool = False
) -> ChildResult:
    """Run a program to its end. With ``rss``, also its peak resident memory.

    A child's ``ru_maxrss`` (``wait4``) is no good here: Linux carries the memory of the process that forks it
    into the figure (this process holds models, hundreds of MiB). GNU time forks the program from its own small
    image, and reads the program's peak; without it, the program's ``VmHWM`` is polled every few ms."""
    global _HAS_GNU_TIME
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    prefix: list[str] = []
    report = None
    if rss:
        if _HAS_GNU_TIME is None:
            _HAS_GNU_TIME = _gnu_time()
        if _HAS_GNU_TIME:
            fd, report = tempfile.mkstemp(prefix="llamacffi-bench-", suffix=".rss")
            os.close(fd)
            prefix = [str(GNU_TIME), "-f", "%M", "-o", report]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT
    )
    try:
        out, err, polled = _communicate(proc, timeout, poll_rss=rss and report is None)
        proc.wait()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    wall = time.perf_counter() - t0
    kib, method = 0, ""
    if report is not None:
        try:
            kib, method = int(Path(report).read_text().split()[-1]), "GNU time"
        except (OSError, ValueError, IndexError):
            pass
        finally:
            os.unlink(report)
    elif rss:
        kib, method = polled, "VmHWM polled every 5 ms"
    return ChildResult(proc.returncode, out, err, wall, kib, method)


def _communicate(proc: subprocess.Popen[str], timeout: float, poll_rss: bool) -> tuple[str, str, int]:
    """Read both pipes to their end; with ``poll_rss``, sample the child's VmHWM meanwhile."""
    import selectors

    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_pipes = 2
    hwm = 0
    status = Path(f"/proc/{proc.pid}/status")
    while open_pipes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        if poll_rss:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
            except (OSError, ValueError):
                pass
        for key, _ in sel.select(min(left, 0.005) if poll_rss else left):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_pipes -= 1
            else:
                chunks[key.fd].append(data)
    sel.close()
    text = {fd: b"".join(c).decode("utf-8", "replace") for fd, c in chunks.items()}
    return text[proc.stdout.fileno()], text[proc.stderr.fileno()], hwm


def python_child(
    module_args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600, rss: bool = False
) -> ChildResult:
    return run_child([sys.executable, "-m", *module_args], env=env, timeout=timeout, rss=rss)


def machine(threads: int) -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and load, as this process sees them."""
    info: dict[str, Any] = {
        "threads": threads,
        "gpu_layers": gpu_layers(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
    }
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        info["usable_cpus"] = os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["cpu_flags"] = [
            f
            for f in ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
            if f in flags
        ]
        cores = {(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("core id")}
        sockets = {(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("physical id")}
        if cores:
            info["physical_cores"] = len(cores) * max(1, len(sockets))
    except OSError:
        info["cpu_model"] = platform.processor() or platform.machine()
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    return info
