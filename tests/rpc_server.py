"""``llamacffi rpc-server`` processes on loopback ports, for the RPC tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


class RPCServerProcess:
    """Starts ``python -m llamacffi rpc-server --host 127.0.0.1 --port 0 ARGS`` and waits for its "listening on"
    line; :attr:`endpoint` is ``host:port``. :meth:`kill` ends it at once (SIGKILL), :meth:`stop` politely."""

    def __init__(self, args: Sequence[str] = ("--threads", "1"), *, ready_timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamacffi", "rpc-server", "--host", "127.0.0.1", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )
        self.log: list[str] = []
        self.endpoint = ""
        self._bound = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._bound.wait(ready_timeout) or not self.endpoint:
            self.kill()
            raise RuntimeError("the RPC server did not start:\n" + "".join(self.log[-30:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            m = LISTENING.search(line)
            if m and not self._bound.is_set():
                self.endpoint = f"{m.group(1)}:{m.group(2)}"
                self._bound.set()
        self._bound.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)
