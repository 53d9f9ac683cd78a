"""The ASGI application: OpenAI's routes over the service's batching engine, with no lock between requests.

:func:`create_app` returns a Starlette app that serves its models under their names. Models given as ids are loaded
in a background thread when the app is created; ``/health`` answers 503 until they are ready. The app can be run
by any ASGI server or mounted in another app; its ``state.server`` (:class:`Server`) closes the models.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..service import (
    LlamaCppEmbeddingModel,
    LlamaCppService,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelConfig,
    ModelType,
)
from . import completions, embeddings
from .errors import APIError, from_service, invalid
from .metrics import Metrics
from .requests import error_for_body, parse_chat, parse_completion

log = logging.getLogger("llamacffi.server")
MAX_BODY_BYTES = 8 << 20
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")
Served = LlamaCppTextModel | LlamaCppEmbeddingModel


class Server:
    """The models an app serves, loaded in the background, and its metrics."""

    def __init__(
        self,
        models: Mapping[str, str | LlamaCppTextModel],
        embedders: Mapping[str, str | LlamaCppEmbeddingModel],
        backend: LocalBackendConfig | None,
        config: ModelConfig | None,
        on_load_error: Callable[[BaseException], None] | None,
    ) -> None:
        if not models and not embedders:
            raise ValueError("create_app needs at least one model")
        both = set(models) & set(embedders)
        if both:
            raise ValueError(f"a text model and an embedding model are both named {sorted(both)[0]!r}")
        self.names = list(models) + list(embedders)
        self.types = {**{k: ModelType.TEXT_TO_TEXT for k in models}, **{k: ModelType.TEXT_EMBEDDING for k in embedders}}
        self.models: dict[str, Served] = {
            k: v for k, v in [*models.items(), *embedders.items()] if not isinstance(v, str)
        }
        self._to_load = {k: v for k, v in [*models.items(), *embedders.items()] if isinstance(v, str)}
        self._owned: list[Served] = []
        self.service = LlamaCppService(backend) if self._to_load else None
        self.config = config or ModelConfig()
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.metrics = Metrics(self._loads)
        self._closed = False
        self._lock = threading.Lock()
        if not self._to_load:
            self.ready.set()
        else:
            threading.Thread(target=self._load, args=(on_load_error,), name="llamacffi-load", daemon=True).start()

    def _load(self, on_error: Callable[[BaseException], None] | None) -> None:
        try:
            for name, model_id in self._to_load.items():
                assert self.service is not None
                loaded = self.service.load_model(model_id, self.types[name], self.config)
                assert isinstance(loaded, (LlamaCppTextModel, LlamaCppEmbeddingModel))
                model: Served = loaded
                with self._lock:
                    if self._closed:
                        model.close()
                        return
                    self._owned.append(model)
                    self.models[name] = model
                log.info("model %s loaded (%s)", name, model_id)
            self.ready.set()
        except BaseException as exc:
            self.error = exc
            log.error("loading the models failed: %s", exc)
            if on_error is not None:
                on_error(exc)

    def _loads(self) -> dict[str, tuple[int, int]]:
        return {name: m.load for name, m in list(self.models.items()) if isinstance(m, LlamaCppTextModel)}

    def _served(self, name: Any, kind: ModelType) -> tuple[str, Served]:
        names = [n for n in self.names if self.types[n] == kind]
        what = "text" if kind == ModelType.TEXT_TO_TEXT else "embedding"
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise invalid(
                f"model is required: this server serves the {what} models {', '.join(names) or '(none)'}",
                "model",
                "missing_required_parameter",
            )
        if name not in self.names:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server serves {', '.join(self.names)}",
                param="model",
                code="model_not_found",
            )
        if self.types[name] != kind:
            raise invalid(f"{name!r} is not a {what} model", "model", "wrong_model_type")
        if not self.ready.is_set():
            raise APIError(
                503,
                "the models are still loading" if self.error is None else f"the models failed to load: {self.error}",
                type="server_error",
                code="unavailable",
            )
        return name, self.models[name]

    def model(self, name: Any) -> tuple[str, LlamaCppTextModel]:
        """The text model a request names (any, when one is served and the request names none)."""
        served, model = self._served(name, ModelType.TEXT_TO_TEXT)
        assert isinstance(model, LlamaCppTextModel)
        return served, model

    def embedder(self, name: Any) -> tuple[str, LlamaCppEmbeddingModel]:
        """The embedding model a request names (any, when one is served and the request names none)."""
        served, model = self._served(name, ModelType.TEXT_EMBEDDING)
        assert isinstance(model, LlamaCppEmbeddingModel)
        return served, model

    def close(self) -> None:
        """Free the models this app loaded (not those it was given)."""
        with self._lock:
            self._closed = True
            owned, self._owned = self._owned, []
        for m in owned:
            m.close()
        if self.service is not None:
            self.service.close()


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _body(request: Request) -> Any:
    """The JSON body, read up to the size limit."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    bad = error_for_body(body)
    if bad is not None:
        raise bad
    return body


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _race(work: Awaitable[Any], receive: Receive) -> Any:
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
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def pump() -> None:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await _race(pump(), receive)
        except OSError:  # the connection broke while sending
            pass
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]
            self.cleanup()


def _completion(chat: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        server: Server = request.app.state.server
        body = await _body(request)
        parsed = parse_chat(body) if chat else parse_completion(body)
        name, model = server.model(parsed.model)
        try:
            job = completions.prepare(name, model, parsed, chat)
        except Exception as exc:
            raise from_service(exc) from None
        request.scope.setdefault("state", {})["job"] = job
        try:
            job.start()
        except Exception as exc:
            raise from_service(exc) from None
        if parsed.stream:
            return EventStream(completions.stream(job, server.metrics), job.cancel)
        try:
            result = await _race(completions.respond(job, server.metrics), request.receive)
        except Exception as exc:
            raise from_service(exc) from None
        finally:
            job.cancel()
        if result is None:  # the client is gone: nobody reads this
            return Response(status_code=499)
        return JSONResponse(result)

    return endpoint


async def _embeddings(request: Request) -> Response:
    server: Server = request.app.state.server
    body = await _body(request)
    name, model = server.embedder(body.get("model"))
    try:
        result = await _race(embeddings.respond(name, model, body), request.receive)
    except Exception as exc:
        raise from_service(exc) from None
    if result is None:
        return Response(status_code=499)
    request.scope.setdefault("state", {})["usage"] = result["usage"]
    return JSONResponse(result)


async def _health(request: Request) -> Response:
    server: Server = request.app.state.server
    if server.ready.is_set():
        return JSONResponse({"status": "ok"})
    if server.error is not None:
        return JSONResponse({"status": "error", "message": str(server.error)}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


async def _metrics(request: Request) -> Response:
    server: Server = request.app.state.server
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_entry(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llamacffi"}


async def _models(request: Request) -> Response:
    server: Server = request.app.state.server
    return JSONResponse({"object": "list", "data": [_model_entry(n, request.app.state.created) for n in server.names]})


async def _model(request: Request) -> Response:
    server: Server = request.app.state.server
    name = request.path_params["name"]
    if name not in server.names:
        raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_entry(name, request.app.state.created))


class _Gate:
    """Key check, body-size check from the headers, one access-log line and the request counter per request."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: Callable[[], Metrics]) -> None:
        self.app = app
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
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, b"Bearer " + self.key):
                    exc = APIError(
                        401,
                        "Incorrect API key provided"
                        if given
                        else "Missing API key: send 'Authorization: Bearer <key>'",
                        type="invalid_request_error",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    await _error(exc)(scope, receive, sending)
                    return
            await self.app(scope, receive, sending)
        finally:
            self._log(scope, status[0], time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, total: float) -> None:
        path = scope["path"]
        route = path if path in ROUTES else "/v1/models/{name}" if path.startswith("/v1/models/") else "other"
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


def create_app(
    models: Mapping[str, str | LlamaCppTextModel] | Sequence[str] = (),
    *,
    embeddings: Mapping[str, str | LlamaCppEmbeddingModel] | Sequence[str] = (),
    backend: LocalBackendConfig | None = None,
    config: ModelConfig | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    on_load_error: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """An OpenAI-compatible app serving text ``models`` and ``embeddings`` models: ``{served name: model id or
    loaded model}``, or lists of model ids served under their ids. Ids are loaded with ``backend`` and ``config``
    (one context of ``config.parallel`` slots each for a text model); loaded models are served as they are and not
    closed by the app. ``api_key``: every route but ``/health`` then needs ``Authorization: Bearer <key>``."""
    if not isinstance(models, Mapping):
        models = {m: m for m in models}
    if not isinstance(embeddings, Mapping):
        embeddings = {m: m for m in embeddings}
    server = Server(models, embeddings, backend, config, on_load_error)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.close)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else None
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return _error(APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))

    routes = [
        Route("/health", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/models/{name:path}", _model, methods=["GET"]),
        Route("/v1/chat/completions", _completion(chat=True), methods=["POST"]),
        Route("/v1/completions", _completion(chat=False), methods=["POST"]),
        Route("/v1/embeddings", _embeddings, methods=["POST"]),
    ]
    middleware = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
            )
        ]
        if cors_origins
        else []
    )
    middleware.append(Middleware(_Gate, api_key=api_key, metrics=lambda: server.metrics))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(from_service(exc))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.server = server
    app.state.created = int(time.time())
    return app
