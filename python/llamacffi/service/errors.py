"""The service's errors: one :class:`InferenceError` base, the binding's errors mapped onto it."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator

from .. import errors as binding


class InferenceError(Exception):
    """Base class of every service error."""


class InvalidConfigError(InferenceError, builtins.ValueError):
    """A configuration or option value is invalid; the message names the field. ``field`` is that field as
    ``Class.name`` (``"GenerationOptions.top_k"``), or the argument's name (``"n"``), where one is at fault, else
    None."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:  # crosses a worker process's pipe with its field
        return (type(self), (str(self),), {**self.__dict__, "args": self.args})


class ModelNotFoundError(InferenceError, builtins.LookupError):
    """No model matches the id; the message says where it looked."""


class ModelLoadFailedError(InferenceError):
    """The model file exists but could not be loaded."""


class ContextOverflowError(InferenceError, builtins.ValueError):
    """The prompt does not fit the context; ``prompt_tokens`` and ``context_size`` say by how much, where known.
    ``reason`` is what does not fit, the message that and ``hint`` (what a caller of the service can change: a
    server's client can only shorten its text)."""

    def __init__(
        self, reason: str, *, hint: str = "", prompt_tokens: int | None = None, context_size: int | None = None
    ) -> None:
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason = reason
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size

    def __reduce__(self) -> tuple[object, ...]:  # its fields cross a worker process's pipe too
        return (type(self), (self.reason,), {**self.__dict__, "args": self.args})


class ModelClosedError(InferenceError, builtins.RuntimeError):
    """The model or service was closed."""


class GenerationError(InferenceError):
    """Generation failed inside llama.cpp."""


class QueueFullError(InferenceError):
    """Too many requests are waiting."""


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Re-raise the binding's errors as service errors (the original stays as ``__cause__``)."""
    try:
        yield
    except binding.ModelLoadError as exc:
        raise ModelLoadFailedError(str(exc)) from exc
    except binding.ClosedError as exc:
        raise ModelClosedError(str(exc)) from exc
    except (
        binding.InvalidArgumentError,
        binding.InvalidTokenError,
        binding.TokenizeError,
        binding.GrammarError,
    ) as exc:
        raise InvalidConfigError(str(exc)) from exc
    except binding.LlamaError as exc:
        raise GenerationError(str(exc)) from exc
