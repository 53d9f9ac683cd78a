"""What every request passes through: the API key check, one access-log line and the request counter."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asgi import error_response, route
from .errors import APIError
from .metrics import Metrics

log = logging.getLogger("llamacffi.server")


class Gate:
    """Key check, body-size check from the headers, one access-log line and the request counter per request."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, metrics: Callable[[], Metrics], routes: tuple[str, ...]
    ) -> None:
        self.app = app
        self.routes = routes
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.key is not None and scope["path"] != "/health" and scope["method"] != "OPTIONS":
                headers = dict(scope["headers"])
                given = headers.get(b"authorization", b"")
                anthropic = headers.get(b"x-api-key")  # how Anthropic's clients send it
                if anthropic is not None and not given:
                    given = b"Bearer " + anthropic
                if not hmac.compare_digest(given, b"Bearer " + self.key):
                    exc = APIError(
                        401,
                        "Incorrect API key provided"
                        if given
                        else "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                        type="invalid_request_error",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    await error_response(exc, route(scope))(scope, receive, sending)
                    return
            await self.app(scope, receive, sending)
        finally:
            self._log(scope, status[0], time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, total: float) -> None:
        path = scope["path"]
        route = path if path in self.routes else "/v1/models/{name}" if path.startswith("/v1/models/") else "other"
        self.metrics().requests.labels(route, str(status)).inc()
        job = scope.get("state", {}).get("job")
        usage = scope.get("state", {}).get("usage")
        extra = f" prompt={usage['prompt_tokens']}" if usage else ""
        if job is not None:
            u = job.usage
            ttft = f"{job.first - job.started:.3f}s" if job.first is not None else "-"
            extra = (
                f" model={job.name} prompt={u.get('prompt_tokens', '-')} cached="
                f"{u.get('prompt_tokens_details', {}).get('cached_tokens', '-')} completion="
                f"{u.get('completion_tokens', '-')} ttft={ttft}"
            )
        client = scope.get("client") or ("-", 0)
        log.info('%s "%s %s" %d%s total=%.3fs', client[0], scope["method"], path, status, extra, total)
