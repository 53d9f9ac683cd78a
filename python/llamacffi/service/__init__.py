"""The inference service: backend-neutral interfaces, configuration, and the llama.cpp backend."""

from .config import BackendType, GenerationOptions, LlamaCppSpecificConfig, LocalBackendConfig, ModelConfig, ModelType
from .embedding import LlamaCppEmbeddingModel
from .errors import (
    ContextOverflowError,
    GenerationError,
    InferenceError,
    InvalidConfigError,
    ModelClosedError,
    ModelLoadFailedError,
    ModelNotFoundError,
    QueueFullError,
)
from .interfaces import EmbeddingModel, InferenceService, Model, TextToTextModel
from .local import LlamaCppService, LlamaCppTextModel, apply_chat_template

__all__ = [
    "BackendType",
    "ContextOverflowError",
    "EmbeddingModel",
    "GenerationError",
    "GenerationOptions",
    "InferenceError",
    "InferenceService",
    "InvalidConfigError",
    "LlamaCppEmbeddingModel",
    "LlamaCppService",
    "LlamaCppSpecificConfig",
    "LlamaCppTextModel",
    "LocalBackendConfig",
    "Model",
    "ModelClosedError",
    "ModelConfig",
    "ModelLoadFailedError",
    "ModelNotFoundError",
    "ModelType",
    "QueueFullError",
    "TextToTextModel",
    "apply_chat_template",
]
