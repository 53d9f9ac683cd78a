"""The llama.cpp backend of the service: :class:`LlamaCppService` and its text-to-text models."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal, overload

import numpy as np

from .. import backend, models
from .. import Model as LlamaModel
from ..raw import ffi, lib
from .config import BackendType, GenerationOptions, LocalBackendConfig, ModelConfig, ModelType
from .engine import END, Engine, Request
from .. import errors as binding
from .errors import (ContextOverflowError, InferenceError, InvalidConfigError, ModelClosedError,
                     ModelLoadFailedError, ModelNotFoundError, mapped)
from .embedding import LlamaCppEmbeddingModel
from .interfaces import InferenceService, Model, TextToTextModel

DEFAULT_OPTIONS = GenerationOptions()


def models_path() -> Path | None:
    p = os.environ.get("MODELS_PATH")
    return Path(p).expanduser() if p else None


def _id_for(root: Path, file: Path) -> str | None:
    """The id of a file under ``$MODELS_PATH``; None for what an id cannot name: a name with ``:`` or a character
    that is not printable (a newline would split ``llamacffi models list``'s lines)."""
    provider, user, repo = file.relative_to(root).parts[:3]
    names = (provider, user, repo, file.stem)
    if any(":" in n or not n.isprintable() for n in names):
        return None
    return f"{provider}:{user}/{repo}:{file.stem}"


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
                raise InvalidConfigError(f"LlamaCppSpecificConfig.numa_strategy: {exc}") from None
        backend.ensure_backend()
        self._models: list[Model] = []
        self._closed = False

    @property
    def backend_type(self) -> BackendType:
        return BackendType.LLAMA_CPP

    @property
    def supported_model_types(self) -> list[ModelType]:
        return [ModelType.TEXT_TO_TEXT, ModelType.TEXT_EMBEDDING]

    def list_available_models(self) -> list[str]:
        """Ids of the GGUF files under ``$MODELS_PATH`` (``provider:user/repo:file``), then the known model names.
        Only what :meth:`load_model` can open by its id is listed: no folder, no broken link, no name an id cannot
        hold (a ``:``, a newline)."""
        found = []
        root = models_path()
        if root is not None and root.is_dir():
            for f in sorted(root.glob("*/*/*/*.gguf")):
                model_id = _id_for(root, f) if f.is_file() else None
                if model_id is not None:
                    found.append(model_id)
        return found + list(models.KNOWN)

    def resolve(self, model_id: str) -> Path:
        """The file a model id names; :class:`ModelNotFoundError` says where it looked."""
        if not isinstance(model_id, str) or not model_id:
            raise InvalidConfigError("model_id must be a non-empty str")
        looked = []
        p = Path(model_id).expanduser()
        if model_id.endswith(".gguf") or os.sep in model_id:
            if p.is_file():
                return p
            looked.append(f"the path {p}")
        root = models_path()
        if model_id.count(":") == 2:
            provider, user_repo, file = model_id.split(":")
            if root is None:
                looked.append("$MODELS_PATH (not set)")
            else:
                parts = user_repo.split("/")
                if len(parts) == 2:
                    base = root / provider / parts[0] / parts[1]
                    for name in (file + ".gguf", file):
                        if (base / name).is_file():
                            return base / name
                    looked.append(f"{base / (file + '.gguf')}")
        if model_id in models.KNOWN:
            return models.fetch(model_id)
        looked.append(f"the known models ({', '.join(models.KNOWN)})")
        raise ModelNotFoundError(f"no model {model_id!r}: looked at {'; '.join(looked)}")

    @overload
    def load_model(self, model_id: str, model_type: Literal[ModelType.TEXT_TO_TEXT] = ...,
                   config: ModelConfig | None = None) -> "LlamaCppTextModel": ...

    @overload
    def load_model(self, model_id: str, model_type: Literal[ModelType.TEXT_EMBEDDING],
                   config: ModelConfig | None = None) -> LlamaCppEmbeddingModel: ...

    @overload
    def load_model(self, model_id: str, model_type: ModelType = ..., config: ModelConfig | None = None) -> Model: ...

    def load_model(self, model_id: str, model_type: ModelType = ModelType.TEXT_TO_TEXT,
                   config: ModelConfig | None = None) -> Model:
        if self._closed:
            raise ModelClosedError("the service is closed")
        if model_type == ModelType.TEXT_EMBEDDING:
            if config is not None and not isinstance(config, ModelConfig):
                raise InvalidConfigError("config must be a ModelConfig")
            embedder = LlamaCppEmbeddingModel.open(model_id, self.resolve(model_id), self.config,
                                                   config or ModelConfig())
            self._models.append(embedder)
            return embedder
        if model_type != ModelType.TEXT_TO_TEXT:
            raise InvalidConfigError(f"model_type {model_type!r} is not supported by the llama.cpp backend")
        config = config or ModelConfig()
        if not isinstance(config, ModelConfig):
            raise InvalidConfigError("config must be a ModelConfig")
        path = self.resolve(model_id)
        bc = self.config
        with mapped():
            llama_model = LlamaModel.load(path, n_gpu_layers=bc.gpu_layers if bc.use_gpu else 0,
                                          use_mmap=bc.llama_cpp.use_mmap, use_mlock=bc.llama_cpp.use_mlock,
                                          huge_pages=bc.llama_cpp.huge_pages)
        try:
            if config.context_size > llama_model.n_ctx_train:
                message = (f"ModelConfig.context_size {config.context_size} exceeds the {llama_model.n_ctx_train} "
                           f"tokens {path.name} was trained for")
                if config.strict_context:
                    raise InvalidConfigError(message)
                warnings.warn(message + "; output quality may degrade", RuntimeWarning, stacklevel=2)
            with mapped():
                try:
                    model = LlamaCppTextModel(model_id, llama_model, config, bc.threads)
                except binding.ContextError as exc:  # llama.cpp could not allocate the context
                    raise ModelLoadFailedError(
                        f"{path.name}: no context of {config.parallel} x {config.context_size} tokens could be "
                        f"created (most likely not enough memory); lower ModelConfig.context_size or parallel"
                    ) from exc
        except BaseException:
            llama_model.close()
            raise
        self._models.append(model)
        return model

    def close(self) -> None:
        self._closed = True
        for m in self._models:
            m.close()
        self._models.clear()


class LlamaCppTextModel(TextToTextModel):
    """A loaded GGUF model serving generation requests through a batching scheduler."""

    def __init__(self, name: str, model: LlamaModel, config: ModelConfig, threads: int | None) -> None:
        self._name = name
        self._model = model
        self.config = config
        self._vocab = model.vocab
        self._template = config.chat_template or model.chat_template or _builtin_template(model)
        if config.chat_template is not None:
            try:
                apply_chat_template(config.chat_template, [("user", "x")])
            except InferenceError:
                raise InvalidConfigError(f"ModelConfig.chat_template {config.chat_template[:60]!r} is neither a "
                                         f"template name llama.cpp knows nor a template it recognises") from None
        self._engine = Engine(model, config, threads)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def model_type(self) -> ModelType:
        return ModelType.TEXT_TO_TEXT

    @property
    def name(self) -> str:
        return self._name

    @property
    def llama_model(self) -> LlamaModel:
        return self._model

    def as_text_to_text(self) -> "LlamaCppTextModel":
        return self

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests, prompt tokens reused from memory vs decoded, generated tokens, decode calls."""
        return dict(self._engine.stats)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._engine.close()
        self._model.close()

    # ---- prompts ----------------------------------------------------------------------------------------------

    def format_prompt(self, prompt: str, options: GenerationOptions) -> str:
        """The text the model sees: the chat template applied to ``system`` and ``prompt`` unless ``raw``."""
        if not isinstance(prompt, str):
            raise InvalidConfigError(f"prompt must be a str, not {type(prompt).__name__}")
        if options.raw or self._template is None:
            return prompt if options.system is None or options.raw else f"{options.system}\n\n{prompt}"
        messages = ([("system", options.system)] if options.system is not None else []) + [("user", prompt)]
        return apply_chat_template(self._template, messages, add_assistant=True)

    def format_chat(self, messages: list[tuple[str, str]], options: GenerationOptions) -> str:
        """A conversation of ``(role, content)`` pairs (roles "system", "user", "assistant") as the model sees it."""
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], str)
                for m in messages):
            raise InvalidConfigError("messages must be a list of (role, content) pairs of str")
        if options.system is not None and not any(r == "system" for r, _ in messages):
            messages = [("system", options.system)] + list(messages)
        if self._template is None:
            return "".join(f"{r}: {c}\n" for r, c in messages) + "assistant:"
        return apply_chat_template(self._template, list(messages), add_assistant=True)

    def chat_stream(self, messages: list[tuple[str, str]], options: GenerationOptions | None = None) -> Iterator[str]:
        """Like :meth:`generate_stream`, for a whole conversation (prefix reuse makes each turn cheap)."""
        opts = self._options(options)
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request = self._request_text(self.format_chat(messages, opts), opts, items.put)
        return self._stream(request, items)

    def _options(self, options: GenerationOptions | None) -> GenerationOptions:
        if self._closed:
            raise ModelClosedError(f"model {self._name!r} is closed")
        options = DEFAULT_OPTIONS if options is None else options
        if not isinstance(options, GenerationOptions):
            raise InvalidConfigError("options must be a GenerationOptions")
        return options

    def _request(self, prompt: str, options: GenerationOptions | None, sink: Any) -> Request:
        opts = self._options(options)
        return self._request_text(self.format_prompt(prompt, opts), opts, sink)

    def _request_text(self, text: str, options: GenerationOptions, sink: Any) -> Request:
        with mapped():
            tokens = self._vocab.tokenize(text, add_special=True, parse_special=not options.raw)
        limit = self.config.context_size - 1
        if len(tokens) == 0:
            tokens = np.array([self._vocab.bos if self._vocab.bos >= 0 else 0], dtype=np.int32)
        if len(tokens) > limit:
            if not self.config.truncate_prompt:
                raise ContextOverflowError(
                    f"the prompt is {len(tokens)} tokens but the context holds {self.config.context_size} per request "
                    f"(prompt + output); shorten it, raise ModelConfig.context_size, or set truncate_prompt=True")
            tokens = tokens[-limit:]
        with mapped():
            return Request(tokens, options, sink, self._vocab.stream(), self.config.context_size)

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(self, prompt: str, options: GenerationOptions | None = None) -> str:
        """The whole completion. The calling thread sleeps until the request ends (no wake-up per token)."""
        result = _Collected()
        request = self._request(prompt, options, result.put)
        self._engine.submit(request)
        try:
            result.done.wait()
        finally:
            self._engine.cancel(request)
        return result.text()

    def generate_stream(self, prompt: str, options: GenerationOptions | None = None) -> Iterator[str]:
        """Yields text as it is generated. The request starts at the first ``next()``; leaving the loop early (or
        closing the iterator) frees its slot at the next step."""
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        request = self._request(prompt, options, items.put)
        return self._stream(request, items)

    def _stream(self, request: Request, items: "queue.SimpleQueue[Any]") -> Iterator[str]:
        self._engine.submit(request)
        try:
            while (text := _text(items.get())) is not None:
                yield text
        finally:
            self._engine.cancel(request)

    async def agenerate(self, prompt: str, options: GenerationOptions | None = None) -> str:
        """Like :meth:`generate`, for asyncio; cancelling the task frees the slot."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        result = _Collected(lambda: loop.call_soon_threadsafe(_resolve, finished))
        request = self._request(prompt, options, result.put)
        self._engine.submit(request)
        try:
            await finished
        finally:
            self._engine.cancel(request)
        return result.text()

    async def agenerate_stream(self, prompt: str, options: GenerationOptions | None = None) -> AsyncIterator[str]:
        """Like :meth:`generate_stream`, for asyncio; cancelling the task frees the slot."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def sink(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        request = self._request(prompt, options, sink)
        self._engine.submit(request)
        try:
            while (text := _text(await items.get())) is not None:
                yield text
        finally:
            self._engine.cancel(request)


class _Collected:
    """A sink that keeps a request's chunks and signals once, at the end or on an error."""

    __slots__ = ("parts", "error", "done", "on_done")

    def __init__(self, on_done: Callable[[], Any] | None = None) -> None:
        self.parts: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.on_done = on_done

    def put(self, item: Any) -> None:
        if self.done.is_set():
            return
        if item is END or isinstance(item, BaseException):
            self.error = item if isinstance(item, BaseException) else None
            self.done.set()
            if self.on_done is not None:
                self.on_done()  # may raise (a closed event loop): the scheduler then cancels the request
        else:
            self.parts.append(item)

    def text(self) -> str:
        if self.error is not None:
            raise self.error
        return "".join(self.parts)


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _text(item: Any) -> str | None:
    """A chunk from the scheduler: text, None at the end; an error it sent is raised here."""
    if item is END:
        return None
    if isinstance(item, BaseException):
        raise item
    return str(item)


def _builtin_template(model: LlamaModel) -> str | None:
    """llama.cpp's built-in template for a model whose GGUF carries none (gemma files often do not)."""
    arch = model.metadata.get("general.architecture", "")
    return "gemma" if arch.startswith("gemma") else None


def apply_chat_template(template: str, messages: list[tuple[str, str]], *, add_assistant: bool = True) -> str:
    """Format ``(role, content)`` messages with llama.cpp's ``llama_chat_apply_template``."""
    try:
        encoded = [(r.encode(), c.encode()) for r, c in messages]
    except UnicodeEncodeError as exc:
        raise InvalidConfigError(f"the prompt is not valid Unicode: {exc.reason}") from None
    if any(b"\0" in part for pair in encoded for part in pair):  # C strings would end there, silently
        raise InvalidConfigError("the prompt or system text holds a NUL character, which a chat template cannot "
                                 "carry; remove it or use raw=True")
    strings = [ffi.new("char[]", s) for pair in encoded for s in pair]  # alive until the call returns
    chat = ffi.new("struct llama_chat_message[]", len(encoded))
    for i in range(len(encoded)):
        chat[i].role = strings[2 * i]
        chat[i].content = strings[2 * i + 1]
    tmpl = template.encode()
    size = sum(len(c) for _, c in encoded) * 2 + 256
    while True:
        buf = ffi.new("char[]", size)
        n = lib.llama_chat_apply_template(tmpl, chat, len(encoded), add_assistant, buf, size)
        if n < 0:
            raise InferenceError("llama.cpp does not support this model's chat template; use raw=True")
        if n <= size:
            return bytes(ffi.buffer(buf, n)).decode("utf-8", "replace")
        size = n
