"""HTTP plumbing under the routes: the JSON body read up to a size limit, work raced against the client's leaving,
Server-Sent Events, and an :class:`APIError` as a response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import limits
from ..jsontypes import JSON, JSONObject
from .errors import APIError, invalid

T = TypeVar("T")
A = TypeVar("A")


def error_response(exc: APIError, path: str = "") -> Response:
    """The error's body as ASCII JSON (a message may quote what the request held, a lone surrogate too): in
    Anthropic's shape on its routes (``path``), else in OpenAI's."""
    body = json.dumps(exc.anthropic_body()).encode() if path.startswith(ANTHROPIC_ROUTES) else exc.json()
    return Response(body, status_code=exc.status, headers=exc.headers, media_type="application/json")


ANTHROPIC_ROUTES = "/v1/messages"  # and the routes below it


def route(scope: Scope) -> str:
    """The request's path within the app (without the prefix of an app it is mounted in)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def read_body(request: Request) -> JSONObject:
    """The JSON body, read up to the size limit."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limits.MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {limits.MAX_BODY_BYTES} bytes", code="request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limits.MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {limits.MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        body: JSON = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, not {type(body).__name__}", None, "invalid_type")
    return body


async def off_loop(call: Callable[[A], T], arg: A, chars: int) -> T:
    """``call(arg)``: on the event loop for a short text (quicker than a hop to a thread), in a worker thread for
    one of more than ``INLINE_TEXT_CHARS`` characters, so that templating and tokenizing it holds up no stream."""
    if chars <= limits.INLINE_TEXT_CHARS:
        return call(arg)
    return await asyncio.to_thread(call, arg)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race(work: Awaitable[T], receive: Receive) -> T | None:
    """``work``'s result; cancelled when the client goes away first (None then)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        return task.result() if task.done() else None
    finally:  # also when this is cancelled: neither task outlives it
        watch.cancel()
        task.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


class EventStream(Response):
    """Server-Sent Events from an async iterator; the iterator is closed as soon as the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], cleanup: Callable[[], None]) -> None:
        self.cleanup = cleanup
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await race(pump(), receive)
        except OSError:  # the connection broke while sending
            pass
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]
            self.cleanup()
