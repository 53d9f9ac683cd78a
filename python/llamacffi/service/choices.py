"""Several completions of one prompt as one asynchronous stream of events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .engine import END, Request, Scheduler
from .events import Chunk, Finish

Event = tuple[int, "Chunk | Finish"]


class Choices:
    """The events of ``n`` requests submitted together: ``(choice index, Chunk)`` as text comes and
    ``(index, Finish)`` as each ends. The requests are queued when this is made (a full queue raises then, before
    anything is sent to a client); :meth:`cancel`, or leaving an ``async for`` early, cancels those still running."""

    def __init__(
        self, engine: Scheduler, requests: list[Request], items: asyncio.Queue[tuple[int, object]], n_prompt: int
    ) -> None:
        self._engine = engine
        self._requests = requests
        self._items = items
        self._n_prompt = n_prompt
        self._running = len(requests)
        submitted = []
        try:
            for r in requests:
                engine.submit(r)
                submitted.append(r)
        except BaseException:
            for r in submitted:
                engine.cancel(r)
            raise

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            while self._running:
                i, item = await self._items.get()
                if item is END:
                    self._running -= 1
                    r = self._requests[i]
                    yield i, Finish(r.finish_reason or "stop", self._n_prompt, r.n_reused, r.n_generated)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item if isinstance(item, Chunk) else Chunk(str(item))
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Free the slots of the requests still running or waiting (from the event loop's thread or any other)."""
        for r in self._requests:
            self._engine.cancel(r)
