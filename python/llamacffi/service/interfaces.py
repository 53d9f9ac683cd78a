"""The service interfaces: an inference backend, its models, and text-to-text generation."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator

import numpy as np
import numpy.typing as npt

from .config import BackendType, GenerationOptions, ModelConfig, ModelType
from .errors import InferenceError


class Model(abc.ABC):
    """A loaded model of some type. Release with :meth:`close` or ``with``."""

    @property
    @abc.abstractmethod
    def model_type(self) -> ModelType: ...

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @abc.abstractmethod
    def as_text_to_text(self) -> TextToTextModel:
        """This model as a :class:`TextToTextModel`; raises :class:`InferenceError` for other types."""

    def as_embedding(self) -> EmbeddingModel:
        """This model as an :class:`EmbeddingModel`; raises :class:`InferenceError` for other types."""
        raise InferenceError(f"model {self.name!r} is a {self.model_type.value} model, not a text embedding model")

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextToTextModel(Model):
    """Text generation. Safe from any number of threads and asyncio tasks."""

    @abc.abstractmethod
    def generate(self, prompt: str, options: GenerationOptions | None = None) -> str: ...

    @abc.abstractmethod
    def generate_stream(self, prompt: str, options: GenerationOptions | None = None) -> Iterator[str]: ...

    @abc.abstractmethod
    async def agenerate(self, prompt: str, options: GenerationOptions | None = None) -> str: ...

    @abc.abstractmethod
    def agenerate_stream(self, prompt: str, options: GenerationOptions | None = None) -> AsyncIterator[str]: ...


class EmbeddingModel(Model):
    """Text embedding: one float32 vector per text. Safe from any number of threads and asyncio tasks."""

    @abc.abstractmethod
    def embed(self, texts: list[str], *, normalize: bool = True) -> npt.NDArray[np.float32]:
        """Vectors of ``texts`` in order, shape ``(len(texts), dim)``; ``normalize``: unit length."""

    @abc.abstractmethod
    async def aembed(self, texts: list[str], *, normalize: bool = True) -> npt.NDArray[np.float32]: ...

    def as_text_to_text(self) -> TextToTextModel:
        raise InferenceError(f"model {self.name!r} is a text embedding model, not a text-to-text model")

    def as_embedding(self) -> EmbeddingModel:
        return self


class InferenceService(abc.ABC):
    """A backend that lists and loads models."""

    @property
    @abc.abstractmethod
    def backend_type(self) -> BackendType: ...

    @property
    @abc.abstractmethod
    def supported_model_types(self) -> list[ModelType]: ...

    @abc.abstractmethod
    def load_model(
        self, model_id: str, model_type: ModelType = ModelType.TEXT_TO_TEXT, config: ModelConfig | None = None
    ) -> Model: ...

    @abc.abstractmethod
    def list_available_models(self) -> list[str]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> InferenceService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
