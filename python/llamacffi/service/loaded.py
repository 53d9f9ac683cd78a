"""What the llama.cpp backend's models share: loading a GGUF file with the backend's settings, the name a model was
loaded under, the binding's model it serves, its counters and the one way it closes."""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar

from .. import Model as LlamaModel
from .. import errors as binding
from .config import LocalBackendConfig, ModelConfig
from .errors import InvalidConfigError, ModelLoadFailedError, mapped

T = TypeVar("T")


class Counted(Protocol):
    """An engine that keeps counters of what it did."""

    @property
    def stats(self) -> dict[str, int]: ...


class LoadOptions(TypedDict):
    """The arguments of :meth:`llamacffi.Model.load` that a backend's GPU and memory settings give."""

    n_gpu_layers: int
    use_mmap: bool | None
    use_mlock: bool
    huge_pages: bool


def load_options(backend: LocalBackendConfig) -> LoadOptions:
    return {
        "n_gpu_layers": backend.gpu_layers if backend.use_gpu else 0,
        "use_mmap": backend.llama_cpp.use_mmap,
        "use_mlock": backend.llama_cpp.use_mlock,
        "huge_pages": backend.llama_cpp.huge_pages,
    }


def load_file(path: Path, backend: LocalBackendConfig) -> LlamaModel:
    """``path`` loaded with the backend's GPU and memory settings; the binding's errors as the service's."""
    with mapped():
        return LlamaModel.load(path, **load_options(backend))


def check_context(
    config: ModelConfig, n_ctx_train: int, file: str, *, effect: str = "output quality may degrade", stacklevel: int = 5
) -> None:
    """A context longer than the model was trained for: an error with ``strict_context``, else a warning saying its
    ``effect``."""
    if config.context_size <= n_ctx_train:
        return
    message = f"ModelConfig.context_size {config.context_size} exceeds the {n_ctx_train} tokens {file} was trained for"
    if config.strict_context:
        raise InvalidConfigError(message)
    warnings.warn(f"{message}; {effect}", RuntimeWarning, stacklevel=stacklevel)


def serve(model: LlamaModel, build: Callable[[], T], no_context: str) -> T:
    """``build()``, the served model around ``model``; ``model`` is closed if that fails. ``no_context`` is the
    message when llama.cpp cannot create the context (most likely not enough memory)."""
    try:
        with mapped():
            try:
                return build()
            except binding.ContextError as exc:
                raise ModelLoadFailedError(no_context) from exc
    except BaseException:
        model.close()
        raise


class Loaded:
    """A served model's name, its :class:`llamacffi.Model` and its engine's counters; :meth:`close` is idempotent
    and thread-safe: it stops the engine (once) and frees the model."""

    _engine: Counted

    def __init__(self, name: str, model: LlamaModel) -> None:
        self._name = name
        self._model = model
        self._closed = False
        self._close_lock = threading.Lock()
        self._stop_engine: Callable[[], object] = lambda: None
        self._begin_stop: Callable[[], object] = lambda: None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _engine_made(self, stop: Callable[[], object], begin: Callable[[], object] | None = None) -> None:
        """Called once the engine runs, with what stops it (refuses new requests, lets go of the context; it must not
        hold this object), and what starts stopping it without waiting, if that can wait (a worker process's end).
        Also the safety net of a model dropped without :meth:`close`: the process's engine thread holds the engine, so
        only this frees it."""
        self._stop_engine = stop
        if begin is not None:
            self._begin_stop = begin
        self._finalizer = weakref.finalize(self, _close_dropped, self._name, stop, self._model)
        self._finalizer.atexit = False  # at exit the engine thread's own hook ends every engine

    @property
    def name(self) -> str:
        return self._name

    @property
    def llama_model(self) -> LlamaModel:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failure(self) -> str | None:
        """Why the model can serve no more requests though it was not closed (the worker process that ran it
        ended), or None; what a health check reports."""
        why: str | None = getattr(getattr(self, "_engine", None), "failure", None)
        return why

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the engine's counters (which ones: see the subclass)."""
        return dict(self._engine.stats)

    def close(self) -> None:
        """Free the model; requests still waiting raise :class:`~llamacffi.service.ModelClosedError`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        self._stop_engine()
        self._model.close()

    def _begin_close(self) -> None:
        """Start closing without waiting (see :func:`close_all`); :meth:`close` still finishes it."""
        if not self._closed:
            self._begin_stop()


def close_all(models: Iterable[Loaded]) -> None:
    """Close ``models`` together: each one's requests end and its worker process, if any, is asked to end first, then
    each is closed, so that the workers' grace to end runs once for all rather than once after another."""
    models = list(models)
    for m in models:
        m._begin_close()
    for m in models:
        m.close()


def _close_dropped(name: str, stop: Callable[[], object], model: LlamaModel) -> None:
    """Close a model collected without close(), away from the engine thread (a collection there could otherwise
    free a context it is stepping)."""
    warnings.warn(
        f"model {name!r} was garbage-collected without close(); it is closed now", ResourceWarning, stacklevel=2
    )

    def run() -> None:
        stop()
        model.close()

    if threading.current_thread().name.startswith("llamacffi-engine"):
        threading.Thread(target=run, name="llamacffi-close", daemon=True).start()
    else:
        run()
