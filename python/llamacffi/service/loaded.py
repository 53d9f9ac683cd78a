"""What the llama.cpp backend's models share: the name they were loaded under and the binding's model they serve."""

from __future__ import annotations

from .. import Model as LlamaModel


class Loaded:
    """A served model's name and its :class:`llamacffi.Model` (set by the subclass as ``_name`` and ``_model``)."""

    _name: str
    _model: LlamaModel

    @property
    def name(self) -> str:
        return self._name

    @property
    def llama_model(self) -> LlamaModel:
        return self._model
