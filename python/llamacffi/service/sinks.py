"""Where a request's output goes: the consumers of the engine's items (text, an error, or :data:`~.engine.END`)
for the blocking and asyncio calls of :class:`~llamacffi.service.LlamaCppTextModel`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from .engine import END


class Collected:
    """A sink that keeps a request's chunks and signals once, at the end or on an error."""

    __slots__ = ("parts", "error", "done", "on_done")

    def __init__(self, on_done: Callable[[], object] | None = None) -> None:
        self.parts: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.on_done = on_done

    def put(self, item: object) -> None:
        if self.done.is_set():
            return
        if item is END or isinstance(item, BaseException):
            self.error = item if isinstance(item, BaseException) else None
            self.done.set()
            if self.on_done is not None:
                self.on_done()  # may raise (a closed event loop): the scheduler then cancels the request
        else:
            self.parts.append(str(item))

    def text(self) -> str:
        if self.error is not None:
            raise self.error
        return "".join(self.parts)


def resolve(future: asyncio.Future[None]) -> None:
    """Mark ``future`` done unless it already is (cancelled)."""
    if not future.done():
        future.set_result(None)


def text_of(item: object) -> str | None:
    """A chunk from the scheduler: text, None at the end; an error it sent is raised here."""
    if item is END:
        return None
    if isinstance(item, BaseException):
        raise item
    return str(item)
