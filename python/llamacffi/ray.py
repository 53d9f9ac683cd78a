"""Replicas on Ray Serve: one llama.cpp model per replica, behind the same OpenAI-compatible routes as
``llamacffi serve`` (needs ``pip install 'llamacffi[ray]'``).

Each replica is a Ray actor that loads the model into a :class:`~llamacffi.service.LlamaCppService` of its own
(``threads_per_replica`` CPU threads, ``parallel`` requests decoded together) and mounts the server's ASGI app
(:func:`llamacffi.server.create_app`) as the deployment's ingress. Ray's router sends a replica at most
``max_ongoing_requests = parallel`` requests at a time, so what reaches a replica fits its batch and the rest wait in
Ray's queue, where another replica may take them. A replica reserves ``num_cpus = threads_per_replica``, which is
how Ray spreads replicas over a cluster's nodes.

    from ray import serve
    import llamacffi.ray

    llamacffi.ray.deploy(model="smollm2-135m", num_replicas=2, threads_per_replica=1, parallel=4)
    # http://127.0.0.1:8000/v1/chat/completions ...

or, with ``serve run config.yaml``, ``import_path: llamacffi.ray:build`` and the same names under ``args``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ray import serve
except ImportError as exc:  # pragma: no cover - without the extra
    raise ImportError(f"llamacffi.ray needs Ray Serve ({exc.name} is missing): pip install 'llamacffi[ray]'") from None

from . import limits
from .service import LlamaCppService, LocalBackendConfig, ModelConfig
from .service.errors import InvalidConfigError
from .validate import as_int, failing

DEPLOYMENT_NAME = "llamacffi"
_fail = failing(InvalidConfigError)


@serve.ingress()
class Replica:  # pragma: no cover - runs in each replica
    """One replica: the model loaded by its constructor (Serve routes to the replica once that returns), served by
    the server's ASGI app, which Serve builds from :meth:`__serve_build_asgi_app__` and mounts as the ingress."""

    def __init__(self, model: str, served_name: str, backend: dict[str, Any], config: dict[str, Any]) -> None:
        self._service = LlamaCppService(LocalBackendConfig.from_dict(backend))
        self._model = self._service.load_model(model, config=ModelConfig.from_dict(config))
        self._served_name = served_name

    def check_health(self) -> None:
        """Serve's periodic check: a model whose worker process ended serves nothing more, so the replica reports
        itself unhealthy and Serve replaces it."""
        failure = self._model.failure
        if failure is not None:
            raise RuntimeError(failure)

    def __serve_build_asgi_app__(self) -> Any:
        from .server import create_app

        return create_app({self._served_name: self._model})


def application(
    model: str,
    *,
    num_replicas: int = 1,
    threads_per_replica: int = 1,
    parallel: int = 4,
    context_size: int = 2048,
    served_name: str | None = None,
    gpu_layers: int = -1,
    rpc_servers: Sequence[str] = (),
    ray_actor_options: Mapping[str, Any] | None = None,
) -> serve.Application:
    """The Ray Serve application: ``num_replicas`` replicas of ``model`` (a model id as ``llamacffi serve`` takes:
    a path every node can read, a ``$MODELS_PATH`` id, or a known name, fetched on each node on first use), each
    with ``threads_per_replica`` threads and ``parallel`` slots of ``context_size`` tokens. ``served_name``: the
    name requests use (default: ``model``). Everything is checked here, before Ray starts a replica."""
    if not isinstance(model, str) or not model:
        raise InvalidConfigError(f"model must be a model id (a non-empty str), got {model!r}")
    if served_name is not None and (not isinstance(served_name, str) or not served_name):
        raise InvalidConfigError(f"served_name must be a non-empty str or None, got {served_name!r}")
    num_replicas = as_int("num_replicas", num_replicas, 1, 4096, fail=_fail)
    threads = as_int("threads_per_replica", threads_per_replica, 1, 1024, fail=_fail)
    parallel = as_int("parallel", parallel, 1, limits.PARALLEL_MAX, fail=_fail)
    if isinstance(rpc_servers, str) or not isinstance(rpc_servers, (list, tuple)):
        raise InvalidConfigError(f"rpc_servers must be a list of 'host:port' strs, got {rpc_servers!r}")
    if ray_actor_options is not None and not isinstance(ray_actor_options, Mapping):
        raise InvalidConfigError(f"ray_actor_options must be a mapping or None, got {ray_actor_options!r}")
    backend = LocalBackendConfig(
        threads=threads, use_gpu=gpu_layers != 0, gpu_layers=gpu_layers, rpc_servers=tuple(rpc_servers)
    )
    config = ModelConfig(context_size=context_size, parallel=parallel, batch_size=max(512, parallel))
    options: dict[str, Any] = {"num_cpus": threads, **(ray_actor_options or {})}
    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=num_replicas,
        max_ongoing_requests=parallel,
        ray_actor_options=options,
    )(Replica)
    app: serve.Application = deployment.bind(model, served_name or model, backend.to_dict(), config.to_dict())
    return app


def deploy(
    model: str,
    *,
    num_replicas: int = 1,
    threads_per_replica: int = 1,
    parallel: int = 4,
    name: str = "llamacffi",
    route_prefix: str = "/",
    **kwargs: Any,
) -> Any:
    """Run :func:`application` on the Ray cluster this process is connected to (``ray.init`` first, or it starts a
    local one) under the application name ``name``; returns once every replica has loaded the model. The routes
    are at Serve's HTTP address (``http://127.0.0.1:8000`` by default) under ``route_prefix``."""
    app = application(
        model, num_replicas=num_replicas, threads_per_replica=threads_per_replica, parallel=parallel, **kwargs
    )
    return serve.run(app, name=name, route_prefix=route_prefix)


def build(args: Mapping[str, Any]) -> serve.Application:
    """The application builder for ``serve run`` configs: ``import_path: llamacffi.ray:build`` with ``args`` of
    :func:`application`'s names (``model`` required)."""
    if not isinstance(args, Mapping) or "model" not in args:
        raise InvalidConfigError("args must be a mapping holding at least 'model'")
    names = inspect.signature(application).parameters
    unknown = sorted(map(repr, set(args) - set(names)))
    if unknown:
        raise InvalidConfigError(f"args: unknown name(s) {', '.join(unknown)}; the names are {', '.join(names)}")
    rest = {k: v for k, v in args.items() if k != "model"}
    return application(args["model"], **rest)
