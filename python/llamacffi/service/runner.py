"""The engine thread: one thread of the process decodes for every loaded model.

With llama.cpp's OpenMP build, each thread that decodes keeps a team of OpenMP threads; once a process holds more
of them than it has cores, libgomp stops letting idle ones spin and every decode slows down (here, from about 173
to about 100 tokens/s after a second model was loaded). So the engines of all models share one thread, which steps
each engine with work in turn and ends when the last engine is closed.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING

from .errors import ModelClosedError

if TYPE_CHECKING:
    from .engine import Engine


class Runner:
    """Steps the engines that have work; sleeps on :attr:`cond` when none has."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events = 0  # counts what an engine decoding alone must stop for (submissions, cancellations, ...)
        self._engines: list[Engine] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def stop(self, timeout: float = 30.0) -> None:
        """At interpreter exit: abort the decode under way and end the thread, so that no decode still runs while
        the process tears llama.cpp down (a daemon thread would otherwise be inside it). The engines are closed:
        what is still waiting, and any later request, ends with :class:`ModelClosedError`."""
        with self.cond:
            self._stopping = True
            thread = self._thread
            for engine in self._engines:
                engine.ctx._halt()
            self.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self.cond:
            engines, self._engines = self._engines, []
            for engine in engines:
                engine.shut("the interpreter is exiting")
            self.cond.notify_all()
        for engine in engines:
            engine.fail_waiting()

    def wake(self) -> None:
        """Something changed (called with :attr:`cond` held): the thread looks at every engine again."""
        self.events += 1
        self.cond.notify_all()

    def attach(self, engine: Engine) -> None:
        with self.cond:
            if self._stopping:
                raise ModelClosedError("the interpreter is exiting")
            self._engines.append(engine)
            self.wake()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llamacffi-engine", daemon=True)
                self._thread.start()

    def detach(self, engine: Engine) -> None:
        """Wait until the thread has let go of a closed engine (at once when called from the thread itself)."""
        with self.cond:
            if threading.current_thread() is not self._thread:
                self.wake()
                while engine in self._engines and self._thread is not None:
                    self.cond.wait()
                if engine not in self._engines:
                    return
        self._drop(engine)  # from the thread itself, or with no thread left to do it

    def _drop(self, engine: Engine) -> None:
        engine.fail_waiting()
        with self.cond:
            if engine in self._engines:
                self._engines.remove(engine)
            self.cond.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self.cond:
                if self._thread is threading.current_thread():  # ended by an error: the next attach restarts
                    self._thread = None
                self.cond.notify_all()  # a detach() waiting for this thread goes on without it

    def _loop(self) -> None:
        while True:
            with self.cond:
                while True:
                    if not self._engines or self._stopping:
                        self._thread = None  # a later attach starts a new thread
                        return
                    closed = [e for e in self._engines if e.closed]
                    ready = [e for e in self._engines if not e.closed and e.has_work()]
                    if closed or ready:
                        break
                    self.cond.wait()
            for engine in closed:
                self._drop(engine)
            for engine in ready:
                engine.step(alone=len(ready) == 1)


_shared = Runner()


def _stop_at_exit() -> None:
    _shared.stop()


atexit.register(_stop_at_exit)  # registered after Context's own exit hook, so it runs before it


def shared() -> Runner:
    """The runner of this process."""
    return _shared


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: it gets a runner of its own, and the models it inherited
    refuse requests (their memory belongs to the parent's engine thread) instead of waiting forever."""
    global _shared
    inherited, _shared = _shared._engines, Runner()
    for engine in inherited:
        engine.orphan(_shared)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
