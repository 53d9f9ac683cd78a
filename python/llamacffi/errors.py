"""The exception hierarchy and the helpers that map llama.cpp results onto it.

Every error llamacffi raises derives from :class:`LlamaError`. Errors that describe bad arguments also derive from
the matching builtin, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import builtins
from typing import NoReturn


class LlamaError(Exception):
    """Base class of every llamacffi error."""


class ModelLoadError(LlamaError, OSError):
    """A model file could not be loaded (missing, unreadable, not a GGUF file, truncated, unsupported)."""


class ContextError(LlamaError):
    """A context could not be created (e.g. not enough memory for the requested size)."""


class DecodeError(LlamaError):
    """``llama_decode`` failed; ``code`` holds llama.cpp's return code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class KVCacheFullError(DecodeError):
    """No memory slot for the batch (code 1). Nothing was decoded; free sequences or use a smaller batch."""


class DecodeAbortedError(DecodeError):
    """The decode was aborted (code 2), by :meth:`Context.abort` or Ctrl-C. Processed micro-batches stay in memory."""


class TokenizeError(LlamaError):
    """Text could not be tokenized or detokenized."""


class InvalidTokenError(LlamaError, builtins.ValueError):
    """A token id is outside ``[0, n_vocab)``."""


class ClosedError(LlamaError, builtins.ValueError):
    """The object was closed; create a new one."""


class StateError(LlamaError):
    """Saving or restoring a context state failed."""


class GrammarError(LlamaError, builtins.ValueError):
    """A GBNF grammar could not be parsed."""


class SchemaError(LlamaError, builtins.ValueError):
    """A JSON schema cannot be compiled to a grammar that enforces it.

    ``pointer`` is the JSON pointer of the offending keyword (e.g. ``#/properties/age/multipleOf``), ``keyword``
    its name (empty when the problem is not one keyword).
    """

    def __init__(self, message: str, pointer: str = "#", keyword: str = "") -> None:
        super().__init__(f"{message} (at {pointer})")
        self.pointer = pointer
        self.keyword = keyword


class InvalidArgumentError(LlamaError, builtins.ValueError):
    """An argument is out of the range llama.cpp accepts."""


class NothingToSampleError(InvalidArgumentError):
    """Every token is banned (by the logits, the logit bias or a grammar): no token can be sampled."""


_DECODE_ERRORS = {
    -1: "invalid batch (token ids, positions or sequence ids rejected by llama.cpp)",
    -2: "memory allocation failed while decoding",
    -3: "the compute graph failed",
}


def ensure(cond: object, message: str, raising: type[Exception] = InvalidArgumentError) -> None:
    """Raise ``raising(message)`` unless ``cond`` holds."""
    if not cond:
        raise raising(message)


def check_decode(rc: int, what: str = "llama_decode") -> None:
    """Map a ``llama_decode``/``llama_encode`` return code to an exception; 0 returns."""
    if rc == 0:
        return
    _raise_decode(rc, what)


def _raise_decode(rc: int, what: str) -> NoReturn:
    if rc == 1:
        raise KVCacheFullError(
            f"{what}: no memory slot for this batch (code 1); the context is unchanged. Free sequences with "
            f"memory.seq_rm(), use a smaller batch, or create the context with a larger n_ctx.",
            rc,
        )
    if rc == 2:
        raise DecodeAbortedError(f"{what}: aborted (code 2); micro-batches already processed remain in memory", rc)
    meaning = _DECODE_ERRORS.get(rc, "unknown error" if rc < 0 else "warning")
    raise DecodeError(f"{what} failed with code {rc}: {meaning}", rc)


def __getattr__(name: str) -> object:
    # Old homes of names that moved: llamacffi.validate.as_int, llamacffi.limits.INT32_MAX.
    if name == "as_int":
        from .validate import as_int

        return as_int
    if name == "INT32_MAX":
        from .limits import INT32_MAX

        return INT32_MAX
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
