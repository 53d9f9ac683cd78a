"""``llamacffi serve``: the app on uvicorn, with loopback by default, graceful stop on SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import sys
from collections.abc import Iterator

import uvicorn

from .. import cli_args, gguf, limits, models
from ..jsontypes import JSON
from ..service import LlamaCppService, LlamaCppSpecificConfig, LocalBackendConfig, ModelConfig
from ..service.errors import InvalidConfigError
from . import reasoning
from .app import create_app
from .served import Server

log = logging.getLogger("llamacffi.server")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``port`` on each address ``host`` resolves to, as uvicorn would bind them, but before the
    models load and with errors that name the flags (port 0: one free port, the same on every address)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise OSError(f"--host {host}: {getattr(exc, 'strerror', None) or exc}") from None
    sockets: list[socket.socket] = []
    wanted = port
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(f"--host {host} --port {wanted}: cannot listen there: {exc.strerror or exc}") from None
    return sockets


def _check(args: argparse.Namespace) -> None:
    """The serve-only flags' values, refused naming the flag."""
    if not 0 <= args.port <= 65535:
        raise InvalidConfigError(f"--port: must be 0 to 65535 (got {args.port})")
    if not (math.isfinite(args.grace) and args.grace >= 0):
        raise InvalidConfigError(f"--grace: must be a number of seconds, 0 or more (got {args.grace})")
    if not 0 <= args.batch_window <= 1000 * limits.BATCH_WINDOW_MAX:
        raise InvalidConfigError(
            f"--batch-window: must be 0 to {1000 * limits.BATCH_WINDOW_MAX:g} milliseconds (got {args.batch_window})"
        )
    if not 0 <= args.cache_ram <= limits.PROMPT_CACHE_MIB_MAX:
        raise InvalidConfigError(f"--cache-ram: must be 0 to {limits.PROMPT_CACHE_MIB_MAX} MiB (got {args.cache_ram})")
    if args.api_key == "":
        raise InvalidConfigError("--api-key: empty; give a key, or leave the option out to serve without one")
    if os.environ.get("LLAMACFFI_API_KEY") == "" and args.api_key is None:
        raise InvalidConfigError("$LLAMACFFI_API_KEY is set but empty; give it a key, or unset it")


def _named(ids: list[str], aliases: list[str], what: str) -> list[str]:
    if len(aliases) > len(ids):
        raise InvalidConfigError(f"{len(aliases)} {what} aliases for {len(ids)} models: at most one alias per model")
    return aliases + ids[len(aliases) :]


def _served(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """``{served name: model id}`` of the text models (``-m`` with ``--alias``, matched in order) and of the
    embedding models (``--embedding-model`` with ``--embedding-alias``); ids, and the headers of the files already
    there, are checked before binding."""
    ids = args.model or ([] if args.embedding_model else [models.DEFAULT])
    names = _named(ids, args.alias, "--alias")
    embed_names = _named(args.embedding_model, args.embedding_alias, "--embedding-alias")
    everything = names + embed_names
    if len(set(everything)) != len(everything):
        raise InvalidConfigError(f"two models would be served under the same name: {', '.join(everything)}")
    for model_id in ids + args.embedding_model:
        if model_id not in models.KNOWN:  # known models are fetched while serving
            gguf.check(LlamaCppService.resolve(model_id))
    return dict(zip(names, ids, strict=True)), dict(zip(embed_names, args.embedding_model, strict=True))


class _Uvicorn(uvicorn.Server):
    """Says where it listens once the socket is bound (the port may have been 0), and when the models are ready; on
    SIGINT / SIGTERM stops accepting, gives in-flight requests ``grace`` seconds, then closes the models (what still
    runs ends with an error the client receives) and exits 0 instead of raising the signal again."""

    def __init__(self, config: uvicorn.Config, grace: float, served: Server) -> None:
        super().__init__(config)
        self.grace = grace
        self.served = served
        self._ready: asyncio.Task[None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.grace, lambda: loop.run_in_executor(None, self.served.close))
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers and not self.should_exit:  # not when a model failed to load
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            loading = "" if self.served.ready.is_set() else " (loading the models: /health is 503 until they are)"
            print(f"llamacffi serve: listening on http://{host}:{port}{loading}", file=sys.stderr, flush=True)
            self._ready = asyncio.create_task(self._say_ready())

    async def _say_ready(self) -> None:
        """One line once every model can serve: until then the socket answers, but not with text."""
        while not self.served.ready.is_set():
            if self.served.error is not None or self.should_exit:
                return
            await asyncio.sleep(0.05)
        print(f"llamacffi serve: ready ({', '.join(self.served.names)})", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM; 0 after a clean stop. A bad flag, an address it cannot listen on or a model
    that fails to load raises (the command's one-line error)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _check(args)
    served, embedders = _served(args)
    api_key = args.api_key or os.environ.get("LLAMACFFI_API_KEY") or None
    template = cli_args.chat_template(args), cli_args.chat_template_kwargs(args)
    sockets = _listen(args.host, args.port)
    try:
        return _serve(args, served, embedders, api_key, sockets, template)
    finally:
        for sock in sockets:
            sock.close()


def _serve(
    args: argparse.Namespace,
    served: dict[str, str],
    embedders: dict[str, str],
    api_key: str | None,
    sockets: list[socket.socket],
    template: tuple[str | None, dict[str, JSON] | None],
) -> int:
    """Serve the models on the bound ``sockets`` until a signal stops the server or a model fails to load."""
    if api_key is None and not all(_loopback(sock.getsockname()[0]) for sock in sockets):
        log.warning(
            "serving on %s, reachable from other machines, without --api-key: anyone who can reach it can use it",
            args.host,
        )
    backend = LocalBackendConfig(
        threads=args.threads,
        use_gpu=args.gpu_layers != 0,
        gpu_layers=args.gpu_layers,
        llama_cpp=LlamaCppSpecificConfig(huge_pages=args.huge_pages),
        rpc_servers=tuple(cli_args.rpc_list(args.rpc)),
        tensor_split=cli_args.split_list(args.tensor_split),
    )
    model_config = ModelConfig(
        context_size=args.ctx_size,
        parallel=args.parallel,
        max_queue=args.max_queue,
        batch_size=max(512, args.parallel),
        batch_window=args.batch_window / 1000,
        prompt_cache_mib=args.cache_ram,
        chat_template=template[0],
        chat_template_kwargs=template[1],
    )
    failed: list[BaseException] = []
    server: _Uvicorn | None = None

    def load_failed(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(
        served,
        embeddings=embedders,
        backend=backend,
        config=model_config,
        api_key=api_key,
        cors_origins=args.cors_origin,
        on_load_error=load_failed,
        reasoning_format=args.reasoning_format,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=args.grace + 30,
        lifespan="on",
    )
    server = _Uvicorn(config, args.grace, app.state.server)
    if failed:
        server.should_exit = True
    server.run(sockets)
    if failed:
        raise failed[0]
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        action="append",
        default=[],
        help=f"model id to serve (repeatable): {cli_args.MODEL_HELP}",
    )
    p.add_argument(
        "--embedding-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="model id to serve on /v1/embeddings (repeatable); its pooling is the model's own, else mean",
    )
    p.add_argument(
        "--embedding-alias",
        action="append",
        default=[],
        metavar="NAME",
        help="name to serve the corresponding --embedding-model under (repeatable, in order)",
    )
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        help="name to serve the corresponding -m under (repeatable, in the order of -m)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("-np", "--parallel", type=int, default=4, help="requests decoded together per model (default 4)")
    p.add_argument(
        "-c", "--ctx-size", type=int, default=2048, help="context per request, prompt and output (default 2048)"
    )
    cli_args.add_compute(p)
    cli_args.add_placement(p)
    cli_args.add_chat_template(p)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health ($LLAMACFFI_API_KEY too)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests that may wait for a slot per model before 429 (default 256)",
    )
    p.add_argument(
        "--batch-window",
        type=float,
        default=5.0,
        metavar="MS",
        help="requests arriving within MS milliseconds of one another start in one step (at most a fifth of a "
        "recent step; 0: each at once; default 5)",
    )
    p.add_argument(
        "--cache-ram",
        type=int,
        default=limits.PROMPT_CACHE_MIB,
        metavar="MIB",
        help="host memory per model for prompts the slots let go of, restored when a request repeats one "
        f"(0: none; default {limits.PROMPT_CACHE_MIB})",
    )
    p.add_argument(
        "--reasoning-format",
        choices=reasoning.FORMATS,
        default="auto",
        help="a reasoning model's <think> block as reasoning_content (auto, deepseek: the same) or kept in the "
        "content (none), where a request does not say (default auto)",
    )
    p.add_argument("--cors-origin", action="append", default=[], help="origin allowed by CORS (repeatable, or *)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish on SIGINT / SIGTERM (default 10)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
