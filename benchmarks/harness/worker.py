"""Worker processes: each llamacffi side (and the peer) runs in a process of its own, driven over stdin/stdout.

One process decoding from two threads is slower than either alone: libgomp, which this build's ggml uses, counts
the threads of every OpenMP team in the process, and once they outnumber the CPUs it stops idle threads from
spinning, so every wake-up goes through the kernel. The service decodes in its own thread, the loops in the main
thread, so they never share a process here. The parent only starts programs and talks to the workers, one JSON
object a line, so that sides in different processes still alternate A B A B.

``python -m benchmarks.harness.worker KIND JSON`` is one worker; KIND: loops, service, peer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from .common import ROOT, Unavailable


class Remote:
    """A worker process and its operations."""

    def __init__(self, kind: str, env: dict[str, str] | None = None, **init: Any) -> None:
        self.kind = kind
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed in close(), with the worker)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.harness.worker", kind, json.dumps(init)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env} if env else None,
        )
        self.info = self.call("info")

    def call(self, op: str, **kwargs: Any) -> Any:
        return self.receive(op, self.send(op, **kwargs))

    def send(self, op: str, **kwargs: Any) -> bool:
        """Start ``op`` without waiting for it (see :meth:`receive`); whether the request went out."""
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            return False
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        return True

    def receive(self, op: str, sent: bool = True) -> Any:
        """The reply to the request :meth:`send` started."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline() if sent else ""
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"the {self.kind} worker ended ({self.proc.returncode}) during {op!r}: {self._log_tail()}"
            )
        reply = json.loads(line)
        if "error" in reply:
            if reply.get("absent"):
                raise Unavailable(reply["error"])
            raise RuntimeError(f"{self.kind} {op}: {reply['error']}")
        return reply["ok"]

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = [x for x in self.log.read().strip().splitlines() if x.strip()]
        return " / ".join(lines[-3:])[-400:]

    def measure(self, op: str, **kwargs: Any) -> Callable[[], tuple[float, dict[str, Any]]]:
        """A side for :func:`benchmarks.harness.common.interleaved`: the worker returns ``[value, extra]``."""

        def run() -> tuple[float, dict[str, Any]]:
            value, extra = self.call(op, **kwargs)
            return float(value), extra

        return run

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start(kind: str, env: dict[str, str] | None = None, **init: Any) -> Remote:
    """A worker process; ``env`` adds to the environment it starts with."""
    return Remote(kind, env, **init)


# ---- inside a worker ------------------------------------------------------------------------------------------------


HOSTS = {
    "loops": ("benchmarks.sides.loops", "LoopsHost"),
    "service": ("benchmarks.sides.serve", "ServiceHost"),
    "peer": ("benchmarks.sides.peer", "PeerHost"),
}


def _host(kind: str, init: dict[str, Any]) -> Any:
    """The side a worker runs: its class, found by name, made with the parent's arguments."""
    import importlib

    module, name = HOSTS[kind]
    return getattr(importlib.import_module(module), name)(**init)


def _serve(kind: str, init: dict[str, Any]) -> None:
    # The protocol owns stdout; whatever C code prints goes to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    host: Any = None
    error: dict[str, Any] | None = None
    try:
        if kind in HOSTS:
            host = _host(kind, init)
        else:
            error = {"error": f"unknown worker kind {kind!r}"}
    except ImportError as exc:
        error = {"error": f"absent (import: {exc})", "absent": True}
    except Exception as exc:
        error = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            channel.write(json.dumps({"ok": None}) + "\n")
            return
        if error is not None:
            channel.write(json.dumps(error) + "\n")
            continue
        if op not in type(host).OPERATIONS:  # only what the side offers, never any attribute
            channel.write(json.dumps({"error": f"{kind} has no operation {op!r}"}) + "\n")
            continue
        try:
            reply: dict[str, Any] = {"ok": getattr(host, op)(**req)}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        channel.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]))
