"""The former name of :mod:`llamacffi.service.local`, kept so that existing imports go on working."""

from .local import LlamaCppService, LlamaCppTextModel, apply_chat_template

__all__ = ["LlamaCppService", "LlamaCppTextModel", "apply_chat_template"]
