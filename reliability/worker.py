"""A worker process fed cases one line at a time, so that a case that kills it or hangs is caught and named.

The parent writes a line (a case), the worker answers one line; a worker that exits is a crash (its signal and the
end of its stderr are reported), one that does not answer within the timeout is a hang (it is killed). Either way
the caller starts a fresh worker and goes on.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Starts every answer line: anything else on the worker's stdout (a library printing there) is skipped.
MARK = "@@answer "


def pythonpath() -> str:
    """PYTHONPATH for a child: the llamacffi this process imports first, then the caller's."""
    import llamacffi

    parts = [str(Path(llamacffi.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


class Worker:
    """``python -m reliability CHECK --worker`` (or ``argv``), answering one line per line it reads. After a
    case that killed it or hung, the next case starts a fresh process, logging to a file of its own
    (``worker-FIRSTCASE.log``); workers that share a folder start with different ``tag``s."""

    def __init__(self, check: str, folder: Path, tag: str = "first", argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "reliability", check, "--worker"]
        self.folder = folder
        self._start(tag)

    def _start(self, tag: str) -> None:
        self.log = self.folder / f"worker-{tag}.log"
        self._err = open(self.log, "ab")  # noqa: SIM115 - the worker's stderr for its lifetime, closed in close()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=ROOT,
            # GGML_NO_BACKTRACE: ggml's abort would otherwise attach gdb to print a backtrace (slow, and to stdout)
            env={**os.environ, "PYTHONPATH": pythonpath(), "GGML_NO_BACKTRACE": "1"},
        )  # fmt: skip

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, line: str, timeout: float) -> tuple[str, str]:
        """Send one case; return ``(outcome, detail)``: the worker's answer split at its first space, or
        ``("crash", how)`` or ``("hang", ...)``."""
        if self.proc.poll() is not None:
            self.close()
            self._start(line.split(" ", 1)[0])
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(line.replace("\n", " ") + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.proc.kill()
                self.proc.wait()
                return "hang", f"no answer within {timeout:g} s"
            answer = self.proc.stdout.readline()
            if not answer:
                return self._died()
            if answer.startswith(MARK):
                outcome, _, detail = answer[len(MARK) :].rstrip("\n").partition(" ")
                return outcome, detail

    def _died(self) -> tuple[str, str]:
        rc = self.proc.wait()
        self._err.flush()
        tail = self.log.read_bytes()[-800:].decode("utf-8", "replace").strip().splitlines()[-4:]
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        return "crash", f"{how}: {' | '.join(tail)}"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            try:
                self.proc.stdin.close()
                self.proc.wait(60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._err.close()


def progress(log: Any, done: int, total: int, start: float, every: int, what: str = "cases") -> None:
    """A line on ``log`` every ``every`` cases: how many are done and the seconds so far."""
    if done % every == 0:
        print(f"  {done}/{total} {what}, {time.monotonic() - start:.0f} s", file=log, flush=True)


def serve(handle: Callable[[str], tuple[str, str]]) -> int:
    """The worker's side: answer each line of stdin with ``handle(line)``, one line each."""
    for line in sys.stdin:
        outcome, detail = handle(line.rstrip("\n"))
        print(MARK + outcome, detail.replace("\n", " ")[:400], flush=True)
    return 0
