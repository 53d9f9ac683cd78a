"""The models an app serves: given loaded, or loaded by id in a background thread; looked up by the name a request
gives, with OpenAI's errors for a missing, unknown, wrong-kind or not yet loaded model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from ..service import (
    LlamaCppEmbeddingModel,
    LlamaCppService,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelConfig,
    ModelType,
)
from .errors import APIError, invalid
from .metrics import Metrics

log = logging.getLogger("llamacffi.server")
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
                    self.models[name] = model
                log.info("model %s loaded (%s)", name, model_id)
            self.ready.set()
        except BaseException as exc:
            with self._lock:
                if self._closed:  # closed while loading (shutting down): what failed is the load cut short
                    return
            self.error = exc
            log.error("loading the models failed: %s", exc)
            if on_error is not None:
                on_error(exc)

    def _loads(self) -> dict[str, tuple[int, int]]:
        return {name: m.load for name, m in list(self.models.items()) if isinstance(m, LlamaCppTextModel)}

    def _served(self, name: object, kind: ModelType) -> tuple[str, Served]:
        names = [n for n in self.names if self.types[n] == kind]
        what = "text" if kind == ModelType.TEXT_TO_TEXT else "embedding"
        article = "a" if kind == ModelType.TEXT_TO_TEXT else "an"
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise invalid(
                f"model is required: this server serves the {what} models {', '.join(names) or '(none)'}",
                "model",
                "missing_required_parameter",
            )
        if not isinstance(name, str):
            raise invalid(f"model must be a string, not {type(name).__name__}", "model", "invalid_type")
        if name not in self.names:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server serves {', '.join(self.names)}",
                param="model",
                code="model_not_found",
            )
        if self.types[name] != kind:
            raise invalid(f"{name!r} is not {article} {what} model", "model", "wrong_model_type")
        if not self.ready.is_set():
            raise APIError(
                503,
                "the models are still loading" if self.error is None else f"the models failed to load: {self.error}",
                type="server_error",
                code="unavailable",
            )
        model = self.models[name]
        if model.failure is not None:  # its worker process ended: it will not serve again
            raise APIError(
                503,
                f"model {name!r} can serve no more requests: {model.failure}",
                type="server_error",
                code="unavailable",
            )
        return name, model

    def model(self, name: object) -> tuple[str, LlamaCppTextModel]:
        """The text model a request names (any, when one is served and the request names none)."""
        served, model = self._served(name, ModelType.TEXT_TO_TEXT)
        assert isinstance(model, LlamaCppTextModel)
        return served, model

    def embedder(self, name: object) -> tuple[str, LlamaCppEmbeddingModel]:
        """The embedding model a request names (any, when one is served and the request names none)."""
        served, model = self._served(name, ModelType.TEXT_EMBEDDING)
        assert isinstance(model, LlamaCppEmbeddingModel)
        return served, model

    def close(self) -> None:
        """Free the models this app loaded (not those it was given): its service's, closed together, so that their
        worker processes' grace to end runs once for all."""
        with self._lock:
            self._closed = True
        if self.service is not None:
            self.service.close()
