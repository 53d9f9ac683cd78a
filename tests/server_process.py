"""A ``llamacffi serve`` process on an ephemeral loopback port, for the server tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import httpx

LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


class ServeProcess:
    """Starts ``python -m llamacffi serve ARGS --host 127.0.0.1 --port 0``, waits until ``/health`` is 200, keeps
    its log; :meth:`stop` sends SIGTERM and returns the exit code (the process is killed after ``timeout``)."""

    def __init__(self, args: Sequence[str], *, ready_timeout: float = 300.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamacffi", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.log: list[str] = []
        self._bound = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        try:
            if not self._bound.wait(ready_timeout):
                raise RuntimeError("the server did not start:\n" + "".join(self.log[-30:]))
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server exited:\n" + "".join(self.log[-30:]))
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
                time.sleep(0.2)
            raise RuntimeError("the server did not become ready:\n" + "".join(self.log[-30:]))
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            m = LISTENING.search(line)
            if m and not self._bound.is_set():
                self.url = f"http://{m.group(1)}:{m.group(2)}"
                self._bound.set()
        self._bound.set()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
