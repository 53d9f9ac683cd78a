"""Model: a loaded GGUF model, its metadata and its vocabulary."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from .backend import ensure_backend
from . import gguf, hugepages, log
from .log import capture_problems
from .errors import ClosedError, InvalidArgumentError, LlamaError, ModelLoadError
from .raw import ffi, lib
from .vocab import Vocab

import typing
if typing.TYPE_CHECKING:
    from typing import Sequence

    from .embedding import Embeddings, Pooling

ProgressCallback = Callable[[float], "bool | None"]


class _Progress:
    """Payload of the load-progress callback; keeps the exception the user's callback raised. llama.cpp calls it
    before each tensor's data is read, so the first call is where the weight buffers exist but are still unwritten:
    the moment to ask for huge pages."""

    def __init__(self, fn: ProgressCallback | None, huge: hugepages.HugePages | None) -> None:
        self.fn = fn
        self.huge = huge
        self.error: BaseException | None = None
        self.cancelled = False


@ffi.def_extern()  # type: ignore[untyped-decorator]
def llamacffi_progress_callback(progress: float, user_data: Any) -> bool:
    payload: _Progress = ffi.from_handle(user_data)
    try:
        if payload.huge is not None:
            payload.huge.advise()
        if payload.fn is None:
            return True
        keep_going = payload.fn(float(progress))
    except BaseException as exc:  # re-raised by Model.load once llama.cpp has returned
        payload.error = exc
        return False
    if keep_going is False:
        payload.cancelled = True
        return False
    return True


# Whatever uses a llama_model (a context, a grammar) holds it here by address until it is freed, so the model is
# freed after them even when the garbage collector finalises a Model and its users together, in any order.
_holds: dict[int, int] = {}
_orphaned: set[int] = set()  # models whose Model object went away while something still held them
_holds_lock = threading.Lock()


def _address(ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _free_model(ptr: Any, _lib: Any = lib) -> None:
    # Default argument: keeps the library alive until this runs, even at interpreter shutdown.
    with _holds_lock:
        address = _address(ptr)
        if _holds.get(address):
            _orphaned.add(address)  # the last holder frees it
            return
    _lib.llama_model_free(ptr)


def _unhold(address: int, _lib: Any = lib) -> None:
    with _holds_lock:
        left = _holds[address] - 1
        if left:
            _holds[address] = left
            return
        del _holds[address]
        if address not in _orphaned:
            return
        _orphaned.discard(address)
    _lib.llama_model_free(ffi.cast("struct llama_model *", address))


class Model:
    """A loaded model. Create with :meth:`load`; release with :meth:`close` or ``with``.

    What uses a model keeps it alive (its contexts, a grammar of a NativeSampler, a tokenize call under way):
    closing the model meanwhile defers the release until the last of them lets go.
    """

    def __init__(self, ptr: Any, path: Path, vocab_only: bool = False, huge_pages: bool = False) -> None:
        self._ptr = ffi.gc(ptr, _free_model)
        self.path = path
        self.vocab_only = vocab_only  # loaded without weights: a tokenizer, no Context
        self.huge_pages = huge_pages  # its weights were read into memory that asked for huge pages
        self._huge_ranges: list[hugepages.Range] = []
        self._vocab = Vocab(self, lib.llama_model_get_vocab(ptr))
        self._users = 0
        self._close_requested = False
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, n_gpu_layers: int = -1, use_mmap: bool | None = None,
             use_mlock: bool = False, vocab_only: bool = False, huge_pages: bool = False,
             progress: ProgressCallback | None = None) -> "Model":
        """Load a GGUF file.

        ``n_gpu_layers``: layers to offload to a GPU backend (-1, the default as in llama.cpp: all of them when the
        build has a GPU backend and finds a device; 0: none). ``use_mmap``: map the file (None: unless
        ``huge_pages``). ``huge_pages``: read the weights kept in CPU memory into memory backed by transparent huge
        pages where the system has them (Linux), which makes each token's pass over them faster (they go to plain
        memory, not to a GPU backend's pinned host buffer); :attr:`huge_page_bytes` tells how much it got.
        ``progress`` is called with the load progress in 0..1; returning ``False`` cancels the load
        (:class:`ModelLoadError`), an exception it raises is re-raised.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
        p = Path(path)
        _check_file(p)
        gguf.check(p, bool(vocab_only))
        if not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise InvalidArgumentError(f"n_gpu_layers must be an int >= -1, got {n_gpu_layers!r}")
        for name, flag in (("use_mlock", use_mlock), ("vocab_only", vocab_only), ("huge_pages", huge_pages)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
        if use_mmap is not None and not isinstance(use_mmap, bool):
            raise InvalidArgumentError(f"use_mmap must be None or a bool, got {use_mmap!r}")
        if use_mmap is None:
            use_mmap = not huge_pages
        elif huge_pages and use_mmap:
            raise InvalidArgumentError("huge_pages and use_mmap=True do not go together: huge pages back memory the "
                                       "weights are read into, not a mapped file")
        ensure_backend()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 2**31 - 1 if n_gpu_layers == -1 else n_gpu_layers
        params.load_mode = {
            (True, False): lib.LLAMA_LOAD_MODE_MMAP, (True, True): lib.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (False, False): lib.LLAMA_LOAD_MODE_NONE, (False, True): lib.LLAMA_LOAD_MODE_MLOCK,
        }[(bool(use_mmap), bool(use_mlock))]
        params.vocab_only = bool(vocab_only)
        params.no_host = bool(huge_pages)
        payload = handle = None
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        huge = hugepages.HugePages() if huge_pages and not vocab_only else None
        if progress is not None or huge is not None:
            payload = _Progress(progress, huge)
            handle = ffi.new_handle(payload)
            params.progress_callback = lib.llamacffi_progress_callback
            params.progress_callback_user_data = handle
        with capture_problems() as problems:
            ptr = lib.llama_model_load_from_file(os.fsencode(p), params)
        if log.take_interrupt():
            if ptr != ffi.NULL:
                lib.llama_model_free(ptr)
            raise KeyboardInterrupt
        if payload is not None and payload.error is not None:
            if ptr != ffi.NULL:
                lib.llama_model_free(ptr)
            raise payload.error
        if ptr == ffi.NULL:
            if payload is not None and payload.cancelled:
                raise ModelLoadError(f"loading {p} was cancelled by the progress callback")
            reason = "; ".join(problems[:2]) or "the file is corrupt, truncated, or of an unsupported architecture"
            raise ModelLoadError(f"llama.cpp could not load {p}: {reason}")
        model = cls(ptr, p, bool(vocab_only), huge is not None)
        if huge is not None:
            model._huge_ranges = huge.collapse()
        return model

    # ---- lifetime ---------------------------------------------------------------------------------------------

    @property
    def ptr(self) -> Any:
        """The ``struct llama_model *`` (raises :class:`ClosedError` once closed)."""
        if self._ptr is None or self._close_requested:
            raise ClosedError("this Model is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None or self._close_requested

    def close(self) -> None:
        """Release the model now, or when the last Context using it closes. Idempotent."""
        with self._lock:
            self._close_requested = True
            if self._users == 0:
                self._release()

    def _release(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            ffi.release(ptr)

    def _acquire(self) -> Any:
        with self._lock:
            if self._ptr is None or self._close_requested:
                raise ClosedError("this Model is closed")
            self._users += 1
            return self._ptr

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[Any]:
        """The pointer, for a call that runs without the GIL (tokenize): a close() from another thread meanwhile
        frees the model only after it."""
        ptr = self._acquire()
        try:
            yield ptr
        finally:
            self._unuse()

    def _lease(self) -> tuple[Any, Callable[[], None]]:
        """For a C object that keeps this model's pointer (a context, a grammar): the pointer, and the function to
        call once that object is freed, from its destructor. Until then the model stays loaded, even when this
        Model is closed or collected first."""
        ptr = self._acquire()
        address = _address(ptr)
        with _holds_lock:
            _holds[address] = _holds.get(address, 0) + 1
        owner = weakref.ref(self)
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            _unhold(address)
            model = owner()
            if model is not None:
                model._unuse()
        return ptr, release

    def _unuse(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._close_requested:
                self._release()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.description
        return f"<llamacffi.Model {self.path.name!r} {state}>"

    # ---- properties -------------------------------------------------------------------------------------------

    @property
    def vocab(self) -> Vocab:
        """The model's vocabulary (borrowed: valid while the model is open)."""
        self.ptr
        return self._vocab

    @property
    def n_params(self) -> int:
        return int(lib.llama_model_n_params(self.ptr))

    @property
    def size(self) -> int:
        """Size of the weights in bytes."""
        return int(lib.llama_model_size(self.ptr))

    @property
    def huge_page_bytes(self) -> int:
        """Bytes of the memory this model's load mapped that huge pages back now; 0 unless loaded with
        ``huge_pages=True`` on a system that has them. Reads /proc/self/smaps (milliseconds)."""
        self.ptr
        return hugepages.huge_bytes(self._huge_ranges) if self._huge_ranges else 0

    @property
    def n_ctx_train(self) -> int:
        return int(lib.llama_model_n_ctx_train(self.ptr))

    @property
    def n_embd(self) -> int:
        return int(lib.llama_model_n_embd(self.ptr))

    @property
    def n_layer(self) -> int:
        return int(lib.llama_model_n_layer(self.ptr))

    @property
    def n_head(self) -> int:
        return int(lib.llama_model_n_head(self.ptr))

    @property
    def has_encoder(self) -> bool:
        return bool(lib.llama_model_has_encoder(self.ptr))

    @property
    def description(self) -> str:
        return _read_string(lambda buf, n: lib.llama_model_desc(self.ptr, buf, n))

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF key/value metadata, values as strings (arrays are summarised by llama.cpp)."""
        ptr = self.ptr
        out = {}
        for i in range(lib.llama_model_meta_count(ptr)):
            key = _read_string(lambda buf, n: lib.llama_model_meta_key_by_index(ptr, i, buf, n))
            out[key] = _read_string(lambda buf, n: lib.llama_model_meta_val_str_by_index(ptr, i, buf, n))
        return out

    def embed(self, texts: Sequence[str], *, pooling: "Pooling | str | int | None" = None, normalize: bool = True,
              batch_tokens: int | None = None, truncate: bool = False) -> "Embeddings":
        """Embeddings of ``texts``: float32 ``(len(texts), dim)``, or with ``pooling="none"`` a list of one
        ``(tokens, dim)`` array per text. See :func:`llamacffi.embedding.embed`."""
        from . import embedding

        return embedding.embed(self, texts, pooling=pooling, normalize=normalize, batch_tokens=batch_tokens,
                               truncate=truncate)

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template (Jinja source), or None."""
        t = lib.llama_model_chat_template(self.ptr, ffi.NULL)
        return None if t == ffi.NULL else ffi.string(t).decode("utf-8", "replace")


def _read_string(fill: Callable[[Any, int], int], size: int = 256) -> str:
    """Call a llama.cpp ``(buf, size) -> needed length`` function, growing the buffer until the text fits."""
    while True:
        buf = ffi.new("char[]", size)
        n = fill(buf, size)
        if n < 0:
            raise LlamaError("llama.cpp could not read the value")
        if n < size:
            return bytes(ffi.buffer(buf, n)).decode("utf-8", "replace")
        size = n + 1


def _check_file(p: Path) -> None:
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {p}")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {p}: {exc.strerror}") from exc
    if not head:
        raise ModelLoadError(f"model file is empty: {p}")
    if head != gguf.MAGIC:
        raise ModelLoadError(f"not a GGUF file (magic {head!r}, expected {gguf.MAGIC!r}): {p}")
