"""llamacffi: a fast, safe Python binding over llama.cpp.

The raw layer is :mod:`llamacffi.raw` (``ffi``, ``lib``); this package exposes the typed layer above it.
"""

from ._version import __version__
from .backend import numa_init, system_info
from .batch import Batch
from .chat import ChatTemplateError
from .context import Context, Memory, Perf
from .errors import (
    ClosedError,
    ContextError,
    DecodeAbortedError,
    DecodeError,
    GrammarError,
    InvalidArgumentError,
    InvalidTokenError,
    KVCacheFullError,
    LlamaError,
    ModelLoadError,
    NothingToSampleError,
    SchemaError,
    StateError,
    TokenizeError,
)
from .log import set_log_level
from .model import Model
from .vocab import StreamDecoder, Vocab

# Submodules of this layer that ``llamacffi.<name>`` loads on first use (``import llamacffi`` does not pay for them).
_LAZY = frozenset({"embedding", "gguf", "grammar", "hugepages", "models", "raw", "raw_tools", "rpc", "sampling"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: RUF022 - grouped as before: the package's classes, then its errors, then its functions
    "__version__",
    "Batch",
    "ChatTemplateError",
    "ClosedError",
    "Context",
    "ContextError",
    "DecodeAbortedError",
    "DecodeError",
    "GrammarError",
    "InvalidArgumentError",
    "NothingToSampleError",
    "InvalidTokenError",
    "KVCacheFullError",
    "LlamaError",
    "Memory",
    "Model",
    "ModelLoadError",
    "Perf",
    "SchemaError",
    "StateError",
    "StreamDecoder",
    "TokenizeError",
    "Vocab",
    "numa_init",
    "set_log_level",
    "system_info",
]
