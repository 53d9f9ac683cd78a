"""The ASGI application: OpenAI's routes over the service's batching engine, with no lock between requests.

:func:`create_app` returns a Starlette app that serves its models under their names. Models given as ids are loaded
in a background thread when the app is created; ``/health`` answers 503 until they are ready. The app can be run
by any ASGI server or mounted in another app; its ``state.server`` (:class:`Server`) closes the models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import limits
from ..jsontypes import JSONObject
from ..service import LlamaCppEmbeddingModel, LlamaCppTextModel, LocalBackendConfig, ModelConfig
from ..vocab import Vocab
from . import completions, embeddings, messages, reasoning, tokens
from .asgi import EventStream, error_response, off_loop, race, read_body, route
from .errors import APIError, from_service
from .gate import Gate
from .metrics import Metrics
from .requests import CONSTRAINTS, Parsed, parse_chat, parse_completion
from .served import Served, Server

__all__ = ["ROUTES", "EventStream", "Served", "Server", "create_app"]

ROUTES = (
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/apply-template",
    "/tokenize",
    "/detokenize",
)


def _guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint``, with a fault of the server's own answered as a 500 in OpenAI's shape inside the middleware (so
    CORS headers and the access log see it)."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (APIError, HTTPException):
            raise
        except Exception as exc:
            return error_response(from_service(exc), route(request.scope))

    return run


async def _started_off_loop(job: completions.Job) -> None:
    """``job.start()`` in a worker thread; a request cancelled meanwhile cancels the choices the thread starts."""
    loop = asyncio.get_running_loop()
    started = loop.run_in_executor(None, job.start, loop)
    try:
        await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(lambda _: job.cancel())
        raise


@dataclasses.dataclass(frozen=True)
class Translation:
    """Another API's bodies as chat completion bodies: ``body`` turns one into the chat body it asks for, and
    ``renamed`` names a fault of that chat body by the other API's own fields."""

    body: Callable[[JSONObject], JSONObject]
    renamed: Callable[[APIError], APIError]


_MESSAGES = Translation(messages.to_chat, messages.renamed)
_COUNTED = Translation(lambda body: messages.to_chat(body, count=True), messages.renamed)


async def _parse(request: Request, chat: bool, translation: Translation | None = None) -> Parsed:
    """A completion request's body, checked; off the event loop where it holds a JSON Schema to compile (up to its
    work budget)."""
    body = await read_body(request)
    if translation is not None:
        body = translation.body(body)
    parse = parse_chat if chat else parse_completion
    try:
        if any(body.get(k) for k in ("tools", "response_format", *CONSTRAINTS)):
            parsed = await asyncio.to_thread(parse, body)
        else:
            parsed = parse(body)
    except APIError as exc:
        if translation is None:
            raise
        raise translation.renamed(exc) from None
    if chat and body.get("reasoning_format") is None:
        parsed.reasoning = request.app.state.reasoning_format
    return parsed


def _completion(
    chat: bool,
    translation: Translation | None = None,
    respond: Callable[[completions.Job, Metrics], Awaitable[JSONObject]] | None = None,
    stream: Callable[[completions.Job, Metrics], AsyncIterator[bytes]] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """A completion route: OpenAI's, or another API's whose bodies a ``translation`` turns into OpenAI's, answered by
    its own ``respond`` and ``stream`` (by default :mod:`.completions`', looked up per request)."""
    text_param = "messages" if chat else "prompt"

    async def endpoint(request: Request) -> Response:
        server: Server = request.app.state.server
        parsed = await _parse(request, chat, translation)
        name, model = server.model(parsed.model)
        try:
            # with tools, preparing may compile the calls' grammar in the template's syntax: never on the loop
            chars = parsed.text_chars() if parsed.tools is None else limits.INLINE_TEXT_CHARS + 1
            job = await off_loop(lambda p: completions.prepare(name, model, p, chat), parsed, chars)
        except Exception as exc:
            raise from_service(exc, text_param) from None
        request.scope.setdefault("state", {})["job"] = job
        try:
            if parsed.options.grammar is not None:  # llama.cpp parses it for each choice: never on the loop
                await _started_off_loop(job)
            else:
                job.start()
        except Exception as exc:
            raise job.failed(exc) from None
        if parsed.stream:
            return EventStream((stream or completions.stream)(job, server.metrics), job.cancel)
        try:
            result = await race((respond or completions.respond)(job, server.metrics), request.receive)
        except Exception as exc:
            raise job.failed(exc) from None
        finally:
            job.cancel()
        if result is None:  # the client is gone: nobody reads this
            return Response(status_code=499)
        return JSONResponse(result)

    return endpoint


async def _chat_prompt(request: Request, translation: Translation | None = None) -> tuple[str, LlamaCppTextModel]:
    """A chat request's prompt as its model sees it, tools and thinking included, and that model."""
    server: Server = request.app.state.server
    parsed = await _parse(request, True, translation)
    _, model = server.model(parsed.model)
    try:
        chars = parsed.text_chars() if parsed.tools is None else limits.INLINE_TEXT_CHARS + 1
        return await off_loop(lambda p: completions.chat_prompt(model, p)[0], parsed, chars), model
    except Exception as exc:
        raise from_service(exc) from None


async def _apply_template(request: Request) -> Response:
    """llama-server's ``/apply-template``: a chat request's prompt, without generating."""
    prompt, _ = await _chat_prompt(request)
    return JSONResponse({"prompt": prompt})


async def _count_tokens(request: Request) -> Response:
    """Anthropic's ``/v1/messages/count_tokens``: the tokens of the prompt a Messages body makes."""
    prompt, model = await _chat_prompt(request, _COUNTED)
    vocab = model.llama_model.vocab
    count = await off_loop(lambda text: len(vocab.tokenize(text, add_special=True, parse_special=True)), prompt,
                           len(prompt))  # fmt: skip
    return JSONResponse({"input_tokens": count})


def _tokens(convert: Callable[[Vocab, JSONObject], JSONObject]) -> Callable[[Request], Awaitable[Response]]:
    """llama-server's ``/tokenize`` or ``/detokenize``, with the vocabulary of the text model the body names."""

    async def endpoint(request: Request) -> Response:
        server: Server = request.app.state.server
        body = await read_body(request)
        _, model = server.model(body.get("model"))
        vocab = model.llama_model.vocab
        content, ids = body.get("content"), body.get("tokens")
        size = len(content) if isinstance(content, str) else len(ids) if isinstance(ids, list) else 0
        return JSONResponse(await off_loop(lambda b: convert(vocab, b), body, size))

    return endpoint


async def _embeddings(request: Request) -> Response:
    server: Server = request.app.state.server
    body = await read_body(request)
    name, model = server.embedder(body.get("model"))
    try:
        result = await race(embeddings.respond(name, model, body), request.receive)
    except Exception as exc:
        raise from_service(exc, "input") from None
    if result is None:
        return Response(status_code=499)
    request.scope.setdefault("state", {})["usage"] = result["usage"]
    return JSONResponse(result)


async def _health(request: Request) -> Response:
    """200 once every model is loaded and can serve; 503 while they load, when loading failed, or when a model's
    worker process has ended (it serves nothing more: the instance needs replacing)."""
    server: Server = request.app.state.server
    if server.ready.is_set():
        down = [f"model {name!r}: {m.failure}" for name, m in list(server.models.items()) if m.failure is not None]
        if down:
            return JSONResponse({"status": "error", "message": "; ".join(down)}, status_code=503)
        return JSONResponse({"status": "ok"})
    if server.error is not None:
        return JSONResponse({"status": "error", "message": str(server.error)}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


async def _metrics(request: Request) -> Response:
    server: Server = request.app.state.server
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_entry(name: str, created: int) -> JSONObject:
    return {"id": name, "object": "model", "created": created, "owned_by": "llamacffi"}


async def _models(request: Request) -> Response:
    """Every model the app is configured to serve, loading, loaded or down (its worker process ended): a request
    naming one that cannot serve gets 503, which clients retry and /health explains, not 404 ``model_not_found``."""
    server: Server = request.app.state.server
    return JSONResponse({"object": "list", "data": [_model_entry(n, request.app.state.created) for n in server.names]})


async def _model(request: Request) -> Response:
    """One model; a trailing slash is ignored, as on the other routes (``/v1/models/`` is the list)."""
    server: Server = request.app.state.server
    name = request.path_params["name"]
    if name not in server.names:
        name = name.rstrip("/")
        if not name:
            return await _models(request)
    if name not in server.names:
        raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_entry(name, request.app.state.created))


def create_app(
    models: Mapping[str, str | LlamaCppTextModel] | Sequence[str] = (),
    *,
    embeddings: Mapping[str, str | LlamaCppEmbeddingModel] | Sequence[str] = (),
    backend: LocalBackendConfig | None = None,
    config: ModelConfig | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    on_load_error: Callable[[BaseException], None] | None = None,
    reasoning_format: str = "auto",
) -> Starlette:
    """An OpenAI-compatible app serving text ``models`` and ``embeddings`` models: ``{served name: model id or
    loaded model}``, or lists of model ids served under their ids. Ids are loaded with ``backend`` and ``config``
    (one context of ``config.parallel`` slots each for a text model); loaded models are served as they are and not
    closed by the app. ``api_key``: every route but ``/health`` then needs ``Authorization: Bearer <key>``.
    ``reasoning_format``: what a chat request that does not say gets (:mod:`.reasoning`)."""
    if reasoning_format not in reasoning.FORMATS:
        raise ValueError(f"reasoning_format must be one of {', '.join(reasoning.FORMATS)}, got {reasoning_format!r}")
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
        return error_response(exc, route(request.scope))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else None
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        error = APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
        return error_response(error, route(request.scope))

    routes = [
        Route("/health", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/models/{name:path}", _model, methods=["GET"]),
        Route("/v1/chat/completions", _guarded(_completion(chat=True)), methods=["POST"]),
        Route("/v1/completions", _guarded(_completion(chat=False)), methods=["POST"]),
        Route("/v1/embeddings", _guarded(_embeddings), methods=["POST"]),
        Route(
            "/v1/messages",
            _guarded(_completion(True, _MESSAGES, messages.respond_message, messages.stream_message)),
            methods=["POST"],
        ),
        Route("/v1/messages/count_tokens", _guarded(_count_tokens), methods=["POST"]),
        Route("/apply-template", _guarded(_apply_template), methods=["POST"]),
        Route("/tokenize", _guarded(_tokens(tokens.tokenize)), methods=["POST"]),
        Route("/detokenize", _guarded(_tokens(tokens.detokenize)), methods=["POST"]),
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
    middleware.append(Middleware(Gate, api_key=api_key, metrics=lambda: server.metrics, routes=ROUTES))

    async def internal_error(request: Request, exc: Exception) -> Response:  # outside the middleware: a last resort
        return error_response(from_service(exc), route(request.scope))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    app.state.server = server
    app.state.created = int(time.time())
    app.state.reasoning_format = reasoning_format
    return app
