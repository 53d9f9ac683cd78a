"""The engine thread: one thread of the process decodes for every loaded model.

With llama.cpp's OpenMP build, each thread that decodes keeps a team of OpenMP threads; once a process holds more
of them than it has cores, libgomp stops letting idle ones spin and every decode slows down. So the engines of all
models share one thread, which steps each engine with work in turn and ends when the last engine is closed.

The runner owns the one lock of the service (:attr:`Runner.lock`). The rule: an engine's queue, slots and flags are
read and written only with it held, except by the engine thread while it decodes the slots it admitted; engines take
it through their runner, and call :meth:`Runner.wake` under it for anything the thread must see. What the runner
asks of an engine is the :class:`Stepped` protocol, and nothing else.

At interpreter exit the runner stops before the contexts are quiesced: its exit hook is registered when its first
engine attaches, so after the hook the context module registered when it was imported, and ``atexit`` runs the last
registered first.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Protocol

from ..context import Context
from .errors import ModelClosedError

log = logging.getLogger("llamacffi.service")


class Stepped(Protocol):
    """What the runner needs of an engine; every method but :meth:`step` is called with the lock held."""

    @property
    def closed(self) -> bool: ...

    def has_work(self) -> bool: ...

    def step(self, alone: bool) -> None:
        """Admit and decode (takes the lock itself, for the parts that need it)."""

    def halt(self) -> None:
        """Abort the decode under way and every later one."""

    def shut(self, why: str) -> None:
        """Refuse requests from now on, saying why."""

    def fail_waiting(self, error: BaseException | None = None) -> None:
        """End every queued and running request with an error (takes the lock itself): :class:`ModelClosedError`,
        or, after a step that failed with ``error``, a :class:`GenerationError` naming it."""

    def orphan(self, runner: Runner) -> None:
        """In a forked child, where no thread steps it: move to the child's runner and refuse requests."""


class Attached:
    """What every engine this module steps shares: the process's runner and its lock, being closed, and how it is
    halted, shut and orphaned. A subclass sets :attr:`ctx`, implements :meth:`_forget`, and attaches itself
    (``self._runner.attach(self)``) once it is ready to be stepped."""

    ctx: Context

    def __init__(self, closed_why: str) -> None:
        self._runner = shared()
        self._cond = self._runner.lock  # the runner's: one lock for the engines of the process and their thread
        self.closed = False
        self._closed_why = closed_why

    def halt(self) -> None:
        """Abort the decode under way and every later one (the process is exiting)."""
        self.ctx._halt()

    def shut(self, why: str) -> None:
        """No thread steps this engine any more (called with the lock held): requests are refused, saying why."""
        self.closed = True
        self._closed_why = why

    def orphan(self, runner: Runner) -> None:
        """In a forked child: no thread steps this engine any more; requests are refused."""
        self._runner, self._cond = runner, runner.lock
        self.shut("the model was loaded before this process forked; load it again in this process")
        self._forget()

    def _forget(self) -> None:
        """Drop every queued and running request without answering it (their consumers live in the parent)."""
        raise NotImplementedError


class Runner:
    """Steps the engines that have work; sleeps on :attr:`lock` when none has."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._changes = 0  # what an engine decoding alone must stop for (submissions, cancellations, ...)
        self._engines: list[Stepped] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def changes(self) -> int:
        """A count that grows at every :meth:`wake`: an engine decoding alone compares it to stop for news."""
        return self._changes

    def stop(self, timeout: float = 30.0) -> None:
        """At interpreter exit: abort the decode under way and end the thread, so that no decode still runs while
        the process tears llama.cpp down (a daemon thread would otherwise be inside it). The engines are closed:
        what is still waiting, and any later request, ends with :class:`ModelClosedError`."""
        with self.lock:
            self._stopping = True
            thread = self._thread
            for engine in self._engines:
                engine.halt()
            self.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self.lock:
            engines, self._engines = self._engines, []
            for engine in engines:
                engine.shut("the interpreter is exiting")
            self.lock.notify_all()
        for engine in engines:
            engine.fail_waiting()

    def wake(self) -> None:
        """Something changed (called with :attr:`lock` held): the thread looks at every engine again."""
        self._changes += 1
        self.lock.notify_all()

    def attach(self, engine: Stepped) -> None:
        with self.lock:
            if self._stopping:
                raise ModelClosedError("the interpreter is exiting")
            _register_exit_hook()
            self._engines.append(engine)
            self.wake()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llamacffi-engine", daemon=True)
                self._thread.start()

    def detach(self, engine: Stepped) -> None:
        """Wait until the thread has let go of a closed engine (at once when called from the thread itself)."""
        with self.lock:
            if threading.current_thread() is not self._thread:
                self.wake()
                while engine in self._engines and self._thread is not None:
                    self.lock.wait()
                if engine not in self._engines:
                    return
        self._drop(engine)  # from the thread itself, or with no thread left to do it

    def _drop(self, engine: Stepped) -> None:
        engine.fail_waiting()
        with self.lock:
            if engine in self._engines:
                self._engines.remove(engine)
            self.lock.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self.lock:
                if self._thread is threading.current_thread():  # ended by an error: the next attach restarts
                    self._thread = None
                self.lock.notify_all()  # a detach() waiting for this thread goes on without it

    def _loop(self) -> None:
        while True:
            with self.lock:
                while True:
                    if not self._engines or self._stopping:
                        self._thread = None  # a later attach starts a new thread
                        return
                    closed = [e for e in self._engines if e.closed]
                    ready = [e for e in self._engines if not e.closed and e.has_work()]
                    if closed or ready:
                        break
                    self.lock.wait()
            for engine in closed:
                self._drop(engine)
            for engine in ready:
                try:
                    engine.step(alone=len(ready) == 1)
                except Exception as exc:  # the thread steps every model: one engine's fault ends only its requests
                    self._fail(engine, exc)

    def _fail(self, engine: Stepped, exc: Exception) -> None:
        log.exception("a step of the engine failed; its requests end with an error", exc_info=exc)
        try:
            engine.fail_waiting(exc)
        except Exception:  # it cannot even be cleared: it is shut and no longer stepped
            log.exception("the engine could not be cleared after a failed step; its model is shut")
            with self.lock:
                engine.shut("the model's engine failed; load the model again")
                if engine in self._engines:
                    self._engines.remove(engine)
                self.lock.notify_all()


_shared = Runner()
_exit_hook = False


def _stop_at_exit() -> None:
    _shared.stop()  # the process's runner at exit: a forked child's own


def _register_exit_hook() -> None:
    """Once per process, when the first engine attaches: after the context module's hook (see the docstring)."""
    global _exit_hook
    if not _exit_hook:
        atexit.register(_stop_at_exit)
        _exit_hook = True


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
