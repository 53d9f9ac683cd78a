"""A text model run in a worker process of its own: what the service does with a model whose layers live on RPC
servers.

llama.cpp's RPC client aborts the process when a server dies during a call (``RPC_STATUS_ASSERT``), which nothing
in that process can catch. The model therefore runs in a child process (a fresh interpreter) that holds
the weights and the batching :class:`~.engine.Engine`; the caller's process keeps a vocabulary-only copy of the
model for templates and tokens, and a :class:`WorkerEngine` that stands in for the engine: it sends each request's
tokens and options through a pipe and hands the child's text, chunks and endings to the request's sink. When the
child ends (an abort, a kill), stays silent past ``stall_timeout`` seconds with requests under way (a host gone
without closing its connection), or takes nothing of a message from its pipe for
:data:`~llamacffi.limits.WORKER_PIPE_STALL_S` (it reads at all times: it is stuck), every request still running ends
with :class:`GenerationError` naming the model, and later requests are refused; the caller's process and its other
models go on. Silence means a stuck decode step, not a long prompt: the child sends ``("progress",)`` while its
engine decodes, after each step (in a worker a step holds at most :data:`~llamacffi.limits.WORKER_STEP_TOKENS_MAX`
tokens, one llama.cpp micro-batch), at most every quarter of ``stall_timeout``.

The pipe (a socket pair) carries pickled objects. Parent to child: the :class:`WorkerSpec`, then
``("submit", id, payload, after_id)`` (``payload``: ``(tokens, options, logprobs)`` pickled here, before the request
counts, with the options as plain data: a caller's str subclass may not exist in the child, or not pickle at all;
a ``json_schema`` goes as its compiled grammar),
``("cancel", id)``, ``("close",)``. Child to parent: ``("progress",)`` while loading, then ``("ready", n_ctx_train)`` or
``("failed", exception)``; ``("progress",)`` while decoding, ``("item", id, text_or_chunk)``, ``("end", id,
finish_reason, n_reused, n_generated, stop_sequence, stats)``, ``("error", id, exception)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import limits
from .config import GenerationOptions, ModelConfig
from .errors import GenerationError, InvalidConfigError, ModelClosedError, ModelLoadFailedError, QueueFullError
from .request import END, Request
from .request import emit as _emit

log = logging.getLogger("llamacffi.service")

PROGRESS_EVERY_S = limits.WORKER_PROGRESS_EVERY_S
STEP_TOKENS_MAX = limits.WORKER_STEP_TOKENS_MAX
CLOSE_GRACE_S = limits.WORKER_CLOSE_GRACE_S
PIPE_STALL_S = limits.WORKER_PIPE_STALL_S


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What the child loads: the file, ``Model.load`` keyword arguments, the model's settings and threads."""

    name: str
    path: Path
    load: dict[str, Any]
    config: ModelConfig
    threads: int | None
    report_every: float = PROGRESS_EVERY_S  # seconds between the child's progress messages, at most


class WorkerEngine:
    """Stands in for an :class:`~.engine.Engine` whose model runs in a child process (see the module's text).

    Starting it loads the model there and returns once it is ready; :class:`ModelLoadFailedError` (or the error
    the load raised) when it is not, the child then being gone."""

    def __init__(self, spec: WorkerSpec, stall_timeout: float) -> None:
        self.name = spec.name
        self.config = spec.config
        self._stall = stall_timeout
        self._pipe_stall = min(PIPE_STALL_S, stall_timeout)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        self._ids: dict[int, int] = {}  # id(request) -> its number in the pipe protocol
        self._next = 0
        self.closed = False
        self._deadline: float | None = None  # when the worker's grace to end runs out, once closing began
        self._why = "the model is closed"
        self._error: type[Exception] = ModelClosedError  # GenerationError once the worker process is gone
        self.stats: dict[str, int] = {"requests": 0}
        self.n_ctx_train = 0  # the model's training context, as the worker read it
        self._conn, child = multiprocessing.Pipe()  # a socket pair: one end here, the other the child's
        # A fresh interpreter that imports this package as this process does (its sys.path), whatever this
        # process's __main__ is (multiprocessing's spawn would run that again); a session of its own, so that a
        # Ctrl-C at the terminal reaches this process only, which ends the child itself.
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(child.fileno())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        self._last = time.monotonic()
        self._reader = threading.Thread(target=self._read, name=f"llamacffi-worker-reader {spec.name}", daemon=True)
        try:
            self._conn.send(dataclasses.replace(spec, report_every=min(PROGRESS_EVERY_S, stall_timeout / 4)))
            self._wait_ready()
            _send_timeout(self._conn, self._pipe_stall)
            self._reader.start()
        except BaseException:  # the child is gone already, or this was interrupted: it does not outlive this
            self._process.kill()
            self._stop()
            raise

    def _wait_ready(self) -> None:
        while True:
            if self._conn.poll(0.2):
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is not None and msg[0] == "progress":
                    self._last = time.monotonic()
                    continue
                if msg is not None and msg[0] == "ready":
                    self.n_ctx_train = int(msg[1])
                    return
                self._stop()
                if msg is not None and msg[0] == "failed":
                    raise msg[1]
                raise ModelLoadFailedError(f"the worker process loading {self.name!r} {self._ended()}")
            if not self._alive():
                self._stop()
                raise ModelLoadFailedError(f"the worker process loading {self.name!r} {self._ended()}")
            if time.monotonic() - self._last > self._stall:
                self._process.kill()  # stuck: it could not act on anything it is sent
                self._stop()
                raise ModelLoadFailedError(
                    f"loading {self.name!r} made no progress for {self._stall:g} s (an RPC server that stopped "
                    f"answering?); the worker process was stopped"
                )

    def _ended(self) -> str:
        code = self._process.returncode
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            how = f"was ended by {sig}" + (": llama.cpp aborted" if sig == "SIGABRT" else "")
        else:
            how = f"exited with code {code}"
        return f"{how} (an RPC server it uses went away or refused a request?)"

    def _alive(self) -> bool:
        return self._process.poll() is None

    def _send(self, msg: tuple[Any, ...]) -> None:
        """Send ``msg``; OSError when the worker is gone, or takes no byte of it for the pipe's stall bound (then it
        is stuck, and stopped: a request to it fails now, not at the stall check)."""
        try:
            with self._send_lock:
                self._conn.send(msg)
        except BlockingIOError:  # the send timeout: it reads nothing
            self._down(
                f"the worker process serving model {self.name!r} read nothing from its pipe for "
                f"{self._pipe_stall:g} s (stuck?) and was stopped"
            )
            raise

    def _send_now(self, msg: tuple[Any, ...]) -> bool:
        """Send a short ``msg`` if that cannot block: False when another send holds the pipe past its own bound, or the
        pipe is full (the child stopped reading), or the child is gone."""
        if not self._send_lock.acquire(timeout=self._pipe_stall):  # a send under way ends within that bound
            return False
        try:
            writable = select.poll()  # not select.select: it refuses descriptors from 1024 on
            writable.register(self._conn.fileno(), select.POLLOUT)
            if not writable.poll(0):
                return False
            self._conn.send(msg)
            return True
        except (OSError, ValueError):
            return False
        finally:
            self._send_lock.release()

    # ---- the engine's interface -------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        fields = request.options.to_dict()
        if fields.get("json_schema") is not None:  # its grammar, compiled here: the worker's reader compiles nothing
            fields["grammar"], fields["json_schema"] = request.options.grammar_text(), None
        try:
            payload = pickle.dumps((request.prompt, _plain(fields), request.logprobs))
        except Exception as exc:  # PicklingError, AttributeError, TypeError, RecursionError: nothing is queued
            raise InvalidConfigError(
                f"model {self.name!r}: the request's options cannot be sent to its worker process: {exc}"
            ) from None
        with self._lock:
            if self.closed:
                raise self._error(self._why)
            if len(self._requests) >= self.config.parallel + self.config.max_queue:
                waiting = len(self._requests) - self.config.parallel
                raise QueueFullError(
                    f"{waiting} requests are already waiting (max_queue={self.config.max_queue}); retry later"
                )
            if not self._requests:
                self._last = time.monotonic()  # the silence that counts starts with work
            rid, self._next = self._next, self._next + 1
            self._requests[rid] = request
            self._ids[id(request)] = rid
            self.stats["requests"] += 1
            after = self._ids.get(id(request.after)) if request.after is not None else None
        try:
            self._send(("submit", rid, payload, after))
        except (OSError, ValueError):  # the worker is gone (or this side closed meanwhile)
            with self._lock:
                self._requests.pop(rid, None)
                self._ids.pop(id(request), None)
            self._down()
            with self._lock:
                error = self._error(self._why)
            raise error from None

    def cancel(self, request: Request) -> None:
        with self._lock:
            if request.finished:
                return
            request.cancelled = True
            rid = self._ids.pop(id(request), None)
            if rid is None:
                return
            self._requests.pop(rid, None)
        try:
            self._send(("cancel", rid))
        except (OSError, ValueError):
            self._down()

    @property
    def failure(self) -> str | None:
        """Why the model can serve no more requests though it was not closed (its worker process ended or was
        stopped as stuck), or None. It stays so: a model whose worker is gone is not brought back here."""
        return self._why if self._error is GenerationError else None

    def load(self) -> tuple[int, int]:
        """``(busy slots, waiting requests)`` as this side counts them."""
        with self._lock:
            n = len(self._requests)
        return min(n, self.config.parallel), max(0, n - self.config.parallel)

    def begin_close(self) -> None:
        """Start closing without waiting: the requests under way end with :class:`ModelClosedError` (or the error of
        a worker found gone), and the worker is asked to end, or killed when it cannot take the message. Its grace
        to end runs from here, so that closing several models waits one grace for all (:func:`.loaded.close_all`).
        Idempotent."""
        with self._lock:
            if self._deadline is not None:
                return
            self._deadline = time.monotonic() + CLOSE_GRACE_S
            down = self.closed  # found gone or stuck: it is ending or dead already
            self.closed = True
            error = (
                self._error(self._why) if down else ModelClosedError("the model was closed before the request finished")
            )
        # Its callers hear first: a worker stuck in a decode does not make them wait for its end.
        self._fail_all(error)
        if down or not self._send_now(("close",)):
            self._process.kill()  # it reads nothing: asking it to end would only wait out the grace

    def close(self) -> None:
        self.begin_close()
        assert self._deadline is not None
        self._stop(self._deadline - time.monotonic())

    # ---- the child's messages ---------------------------------------------------------------------------------

    def _stop(self, grace: float = CLOSE_GRACE_S) -> None:
        """Wait up to ``grace`` seconds for the child to end, then kill it; reap it, then close this side."""
        try:
            self._process.wait(max(0.0, grace))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader.is_alive() and threading.current_thread() is not self._reader:
            self._reader.join(5.0)
        self._conn.close()

    def _read(self) -> None:
        stuck = None
        while True:
            try:
                if self._conn.poll(0.5):
                    msg = self._conn.recv()
                    self._last = time.monotonic()
                    if msg[0] != "progress":
                        self._dispatch(msg)
                    continue
            except (EOFError, OSError):
                break
            except Exception:  # a message this side cannot read or handle: nothing it says can be trusted now
                log.exception("the worker process serving %r sent what could not be handled", self.name)
                self._process.kill()
                break
            with self._lock:
                busy = bool(self._requests)
                if self.closed:
                    return
            if not self._alive():
                break
            if busy and time.monotonic() - self._last > self._stall:
                stuck = (
                    f"the worker process serving model {self.name!r} sent nothing for {self._stall:g} s with "
                    f"requests under way (an RPC server that stopped answering?) and was stopped"
                )
                break
        self._down(stuck)

    def _down(self, stuck: str | None = None) -> None:
        """The worker serves no more: it ended (its exit status says how), or it is stuck (``stuck`` says how; it is
        killed). Requests under way end with :class:`GenerationError` saying so, later ones are refused with it, and
        :attr:`failure` tells it, all from the same moment; nothing changes once the model is closed."""
        with self._lock:
            if self.closed:
                return
        if stuck is None:
            try:
                self._process.wait(5.0)  # for its exit status, which says how it ended
            except subprocess.TimeoutExpired:
                pass
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._error = GenerationError
            self._why = stuck or f"the worker process serving model {self.name!r} {self._ended()}"
        if stuck is not None:
            self._process.kill()
        self._fail_all(GenerationError(self._why))

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind, rid = msg[0], msg[1]
        with self._lock:
            request = self._requests.get(rid)
            if request is not None and kind != "item":
                del self._requests[rid]
                self._ids.pop(id(request), None)
        if request is None:
            return
        if kind == "item":
            _emit(request, msg[2])
            if request.cancelled:  # its consumer is gone
                self.cancel(request)
            return
        try:
            if kind == "end":
                request.finish_reason, request.n_reused, request.n_generated = msg[2], msg[3], msg[4]
                request.stops.matched = msg[5]
                self.stats.update(msg[6])
                ended: object = END
            else:
                ended = msg[2]
        except Exception:  # out of the table already: the reader's failing of the others would not reach it
            request.finished = True
            _emit(request, GenerationError(f"the worker process serving model {self.name!r} sent what could not "
                                           f"be handled"))  # fmt: skip
            raise
        request.finished = True
        _emit(request, ended)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            pending = list(self._requests.values())
            self._requests.clear()
            self._ids.clear()
        for r in pending:
            r.finished = True
            _emit(r, error)


def _send_timeout(conn: Connection, seconds: float) -> None:
    """A send on ``conn`` that can write nothing for ``seconds`` fails (BlockingIOError) instead of blocking."""
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        s.setblocking(True)  # the descriptor is shared: it stays blocking, as the connection expects
        usec = max(1, round(seconds * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", usec // 10**6, usec % 10**6))
    finally:
        s.close()


def _plain(value: object) -> object:
    """``value`` rebuilt of built-in types (str, int, float, list, dict) where it holds subclasses of them, so that
    the worker process reads it whatever classes the caller used; anything else is left as it is."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _portable(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling, else a :class:`GenerationError` with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return GenerationError(f"{type(exc).__name__}: {exc}")


class _ChildSink:
    """A request's sink in the child: everything it gets goes to the parent under the request's number."""

    def __init__(self, rid: int, send: Any, done: Any) -> None:
        self.rid = rid
        self.request: Request | None = None
        self._send = send
        self._done = done

    def __call__(self, item: Any) -> None:
        if item is END:
            r = self.request
            assert r is not None
            self._done(self.rid)
            self._send(("end", self.rid, r.finish_reason, r.n_reused, r.n_generated, r.stops.matched))
        elif isinstance(item, BaseException):
            self._done(self.rid)
            self._send(("error", self.rid, _portable(item)))
        else:
            self._send(("item", self.rid, item))


_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from llamacffi.service.worker import _child; _child(int(sys.argv[2]))"
)


def _child(fd: int) -> None:  # pragma: no cover - runs in the worker process
    """The worker process: read the :class:`WorkerSpec`, load the model, then serve the parent's requests."""
    # An abort (the RPC client's) should end this process at once, without attaching a debugger for a backtrace.
    os.environ["GGML_NO_BACKTRACE"] = "1"
    conn = Connection(fd)
    spec: WorkerSpec = conn.recv()
    from .. import Model as LlamaModel
    from .local import LlamaCppTextModel

    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            conn.send(msg)

    last = [0.0]

    def progress(_: float) -> None:
        now = time.monotonic()
        if now - last[0] > spec.report_every:
            last[0] = now
            send(("progress",))

    # Steps no longer than one micro-batch: the engine's steps are what tell the parent it is not stuck.
    config = dataclasses.replace(spec.config, batch_size=min(spec.config.batch_size, STEP_TOKENS_MAX))
    try:
        model = LlamaModel.load(spec.path, progress=progress, **spec.load)
        text = LlamaCppTextModel(spec.name, model, config, spec.threads)
    except BaseException as exc:
        send(("failed", _portable(exc)))
        return
    engine = text._engine
    stopping = threading.Event()

    def report() -> None:
        """Tell the parent the engine is moving: a decode step since the last look (a stuck one makes none)."""
        seen = engine.stats["decode_calls"]
        while not stopping.wait(spec.report_every):
            steps = engine.stats["decode_calls"]
            if steps != seen:
                seen = steps
                try:
                    send(("progress",))
                except OSError:
                    return

    threading.Thread(target=report, name="llamacffi-worker-progress", daemon=True).start()
    requests: dict[int, Request] = {}

    def done(rid: int) -> None:
        requests.pop(rid, None)

    def send_with_stats(msg: tuple[Any, ...]) -> None:
        send((*msg, dict(engine.stats)) if msg[0] == "end" else msg)

    send(("ready", model.n_ctx_train))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "close":
            break
        if msg[0] == "cancel":
            r = requests.pop(msg[1], None)
            if r is not None:
                engine.cancel(r)
            continue
        _, rid, payload, after = msg
        sink = _ChildSink(rid, send_with_stats, done)
        try:
            try:
                tokens, fields, logprobs = pickle.loads(payload)
            except Exception as exc:
                raise InvalidConfigError(f"the worker process could not read the request's options: {exc}") from None
            options = GenerationOptions.from_dict(fields)
            r = text._new_request(tokens, options, sink, logprobs=logprobs, after=requests.get(after))
            sink.request = r
            requests[rid] = r
            engine.submit(r)
        except Exception as exc:
            requests.pop(rid, None)
            send(("error", rid, _portable(exc)))
    stopping.set()
    # With its engine stuck in a decode (a server that stopped answering) closing would wait for ever, and a parent
    # that is gone no longer kills this process after its grace: it ends itself then.
    watchdog = threading.Timer(CLOSE_GRACE_S, os._exit, (1,))
    watchdog.daemon = True
    watchdog.start()
    text.close()
