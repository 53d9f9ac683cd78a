"""The llama.cpp backend of the service: :class:`LlamaCppService`, which loads its text-to-text models
(:mod:`.text`) and embedding models (:mod:`.embedding`).

``LlamaModel`` here is the binding's :class:`llamacffi.Model` (a loaded GGUF file); the service's own ``Model``
(:mod:`.interfaces`) is what :meth:`LlamaCppService.load_model` returns around it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, TypeVar, overload

from .. import Model as LlamaModel
from .. import backend, models
from .. import errors as binding
from .config import BackendType, LocalBackendConfig, ModelConfig, ModelType
from .embedding import LlamaCppEmbeddingModel
from .errors import InvalidConfigError, ModelClosedError, ModelLoadFailedError, ModelNotFoundError, mapped
from .interfaces import InferenceService, Model
from .loaded import Loaded, check_context, close_all, load_file, load_options, serve
from .prompts import apply_chat_template
from .text import LlamaCppTextModel

M = TypeVar("M", bound=Loaded)

__all__ = ["LlamaCppService", "LlamaCppTextModel", "apply_chat_template"]


class LlamaCppService(InferenceService):
    """Loads GGUF models by path, by ``provider:user/repo:file`` under ``$MODELS_PATH``, or by a known name of
    :mod:`llamacffi.models` (fetched on first use)."""

    def __init__(self, config: LocalBackendConfig | None = None) -> None:
        self.config = config or LocalBackendConfig()
        if not isinstance(self.config, LocalBackendConfig):
            raise InvalidConfigError("config must be a LocalBackendConfig")
        strategy = self.config.llama_cpp.numa_strategy
        if strategy is not None:
            try:
                backend.numa_init(strategy)
            except ValueError as exc:
                raise InvalidConfigError(
                    f"LlamaCppSpecificConfig.numa_strategy: {exc}", field="LlamaCppSpecificConfig.numa_strategy"
                ) from None
        backend.ensure_backend()
        self._models: list[Loaded] = []
        self._closed = False
        self._lock = threading.Lock()  # close() against loads finishing in other threads

    @property
    def backend_type(self) -> BackendType:
        return BackendType.LLAMA_CPP

    @property
    def supported_model_types(self) -> list[ModelType]:
        return [ModelType.TEXT_TO_TEXT, ModelType.TEXT_EMBEDDING]

    def list_available_models(self) -> list[str]:
        """Ids of the GGUF files under ``$MODELS_PATH`` (``provider:user/repo:file``), then the known model names:
        what :meth:`load_model` can open by its id (:func:`llamacffi.models.list_ids`)."""
        return models.list_ids()

    @staticmethod
    def resolve(model_id: str) -> Path:
        """The file a model id names (:func:`llamacffi.models.resolve`); :class:`ModelNotFoundError` says where it
        looked."""
        try:
            return models.resolve(model_id)
        except models.ModelNotFoundError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        except models.ModelFetchError as exc:  # a known model that cannot be downloaded now
            raise ModelLoadFailedError(str(exc)) from exc
        except binding.InvalidArgumentError as exc:
            raise InvalidConfigError(str(exc)) from exc

    @overload
    def load_model(
        self, model_id: str, model_type: Literal[ModelType.TEXT_TO_TEXT] = ..., config: ModelConfig | None = None
    ) -> LlamaCppTextModel: ...

    @overload
    def load_model(
        self, model_id: str, model_type: Literal[ModelType.TEXT_EMBEDDING], config: ModelConfig | None = None
    ) -> LlamaCppEmbeddingModel: ...

    @overload
    def load_model(self, model_id: str, model_type: ModelType = ..., config: ModelConfig | None = None) -> Model: ...

    def load_model(
        self, model_id: str, model_type: ModelType = ModelType.TEXT_TO_TEXT, config: ModelConfig | None = None
    ) -> Model:
        if self._closed:
            raise ModelClosedError("the service is closed")
        if model_type == ModelType.TEXT_EMBEDDING:
            if self.config.rpc_servers:
                raise InvalidConfigError(
                    "LocalBackendConfig.rpc_servers: embedding models run in this process only; load them with a "
                    "service without rpc_servers",
                    field="LocalBackendConfig.rpc_servers",
                )
            if config is not None and not isinstance(config, ModelConfig):
                raise InvalidConfigError("config must be a ModelConfig")
            embedder = LlamaCppEmbeddingModel.open(
                model_id, self.resolve(model_id), self.config, config or ModelConfig()
            )
            return self._keep(embedder)
        if model_type != ModelType.TEXT_TO_TEXT:
            raise InvalidConfigError(f"model_type {model_type!r} is not supported by the llama.cpp backend")
        cfg = config or ModelConfig()
        if not isinstance(cfg, ModelConfig):
            raise InvalidConfigError("config must be a ModelConfig")
        path = self.resolve(model_id)
        if self.config.rpc_servers:
            return self._load_in_worker(model_id, path, cfg)
        llama_model = load_file(path, self.config)

        def build() -> LlamaCppTextModel:
            check_context(cfg, llama_model.n_ctx_train, path.name)
            return LlamaCppTextModel(model_id, llama_model, cfg, self.config.threads)

        model = serve(
            llama_model,
            build,
            f"{path.name}: no context of {cfg.parallel} x {cfg.context_size} tokens could be created (most "
            f"likely not enough memory); lower ModelConfig.context_size or parallel",
        )
        return self._keep(model)

    def _load_in_worker(self, model_id: str, path: Path, config: ModelConfig) -> LlamaCppTextModel:
        """A model on RPC servers, run in a worker process of its own (:mod:`.worker`): a server that dies then
        ends that process, not this one."""
        from .worker import WorkerEngine, WorkerSpec

        bc = self.config
        load: dict[str, object] = {**load_options(bc), "rpc_servers": list(bc.rpc_servers)}
        if bc.tensor_split is not None:
            load["tensor_split"] = list(bc.tensor_split)
        with mapped():
            vocab_model = LlamaModel.load(path, vocab_only=True)
        try:
            with mapped():
                engine = WorkerEngine(WorkerSpec(model_id, path, load, config, bc.threads), bc.rpc_timeout)
            try:
                check_context(config, engine.n_ctx_train, path.name)  # a vocab-only model does not know it
                model = LlamaCppTextModel(model_id, vocab_model, config, bc.threads, engine=engine)
            except BaseException:
                engine.close()
                raise
        except BaseException:
            vocab_model.close()
            raise
        return self._keep(model)

    def _keep(self, model: M) -> M:
        """A model just loaded, owned by the service from now on; closed and refused if the service closed while it
        loaded. Models closed since are let go."""
        with self._lock:
            if not self._closed:
                self._models[:] = [m for m in self._models if not m.closed]
                self._models.append(model)
                return model
        model.close()
        raise ModelClosedError("the service was closed while the model loaded")

    def close(self) -> None:
        """Close every model loaded here, together (:func:`~.loaded.close_all`)."""
        with self._lock:
            self._closed = True
            models = list(self._models)
            self._models.clear()
        close_all(models)
