"""The llama.cpp backend of the service: :class:`LlamaCppService` and its text-to-text models.

``LlamaModel`` here is the binding's :class:`llamacffi.Model` (a loaded GGUF file); the service's own ``Model``
(:mod:`.interfaces`) is what :meth:`LlamaCppService.load_model` returns around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from .. import Model as LlamaModel
from .. import backend, chat, models
from .. import errors as binding
from ..vocab import as_tokens
from .choices import Choices
from .config import BackendType, GenerationOptions, LocalBackendConfig, ModelConfig, ModelType
from .embedding import LlamaCppEmbeddingModel
from .engine import END, Engine, Request, Scheduler
from .errors import (
    ContextOverflowError,
    InferenceError,
    InvalidConfigError,
    ModelClosedError,
    ModelLoadFailedError,
    ModelNotFoundError,
    mapped,
)
from .interfaces import InferenceService, Model, TextToTextModel
from .loaded import Loaded

DEFAULT_OPTIONS = GenerationOptions()


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
        """Ids of the GGUF files under ``$MODELS_PATH`` (``provider:user/repo:file``), then the known model names:
        what :meth:`load_model` can open by its id (:func:`llamacffi.models.list_ids`)."""
        return models.list_ids()

    @staticmethod
    def resolve(model_id: str) -> Path:
        """The file a model id names (:func:`llamacffi.models.resolve`); :class:`ModelNotFoundError` says where it
        looked."""
        try:
            return models.resolve(model_id)
        except models.ModelNotFoundError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        except binding.InvalidArgumentError as exc:
            raise InvalidConfigError(str(exc)) from exc

    @overload
    def load_model(
        self, model_id: str, model_type: Literal[ModelType.TEXT_TO_TEXT] = ..., config: ModelConfig | None = None
    ) -> LlamaCppTextModel: ...

    @overload
    def load_model(
        self, model_id: str, model_type: Literal[ModelType.TEXT_EMBEDDING], config: ModelConfig | None = None
    ) -> LlamaCppEmbeddingModel: ...

    @overload
    def load_model(self, model_id: str, model_type: ModelType = ..., config: ModelConfig | None = None) -> Model: ...

    def load_model(
        self, model_id: str, model_type: ModelType = ModelType.TEXT_TO_TEXT, config: ModelConfig | None = None
    ) -> Model:
        if self._closed:
            raise ModelClosedError("the service is closed")
        if model_type == ModelType.TEXT_EMBEDDING:
            if self.config.rpc_servers:
                raise InvalidConfigError(
                    "LocalBackendConfig.rpc_servers: embedding models run in this process only; load them with a "
                    "service without rpc_servers"
                )
            if config is not None and not isinstance(config, ModelConfig):
                raise InvalidConfigError("config must be a ModelConfig")
            embedder = LlamaCppEmbeddingModel.open(
                model_id, self.resolve(model_id), self.config, config or ModelConfig()
            )
            self._models.append(embedder)
            return embedder
        if model_type != ModelType.TEXT_TO_TEXT:
            raise InvalidConfigError(f"model_type {model_type!r} is not supported by the llama.cpp backend")
        config = config or ModelConfig()
        if not isinstance(config, ModelConfig):
            raise InvalidConfigError("config must be a ModelConfig")
        path = self.resolve(model_id)
        bc = self.config
        load: dict[str, Any] = {
            "n_gpu_layers": bc.gpu_layers if bc.use_gpu else 0,
            "use_mmap": bc.llama_cpp.use_mmap,
            "use_mlock": bc.llama_cpp.use_mlock,
            "huge_pages": bc.llama_cpp.huge_pages,
        }
        if bc.rpc_servers:
            return self._load_in_worker(model_id, path, load, config)
        with mapped():
            llama_model = LlamaModel.load(path, **load)
        try:
            _check_context(config, llama_model.n_ctx_train, path)
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

    def _load_in_worker(self, model_id: str, path: Path, load: dict[str, Any], config: ModelConfig) -> Model:
        """A model on RPC servers, run in a worker process of its own (:mod:`.worker`): a server that dies then
        ends that process, not this one."""
        from .worker import WorkerEngine, WorkerSpec

        bc = self.config
        load = {**load, "rpc_servers": list(bc.rpc_servers)}
        if bc.tensor_split is not None:
            load["tensor_split"] = list(bc.tensor_split)
        with mapped():
            vocab_model = LlamaModel.load(path, vocab_only=True)
        try:
            with mapped():
                engine = WorkerEngine(WorkerSpec(model_id, path, load, config, bc.threads), bc.rpc_timeout)
            try:
                _check_context(config, engine.n_ctx_train, path, stacklevel=4)  # a vocab-only model does not know
                model = LlamaCppTextModel(model_id, vocab_model, config, bc.threads, engine=engine)
            except BaseException:
                engine.close()
                raise
        except BaseException:
            vocab_model.close()
            raise
        self._models.append(model)
        return model

    def close(self) -> None:
        self._closed = True
        for m in self._models:
            m.close()
        self._models.clear()


def _check_context(config: ModelConfig, n_ctx_train: int, path: Path, stacklevel: int = 3) -> None:
    """A context above what the model was trained for warns, or raises with ``strict_context``."""
    if config.context_size > n_ctx_train:
        message = (
            f"ModelConfig.context_size {config.context_size} exceeds the {n_ctx_train} tokens {path.name} was "
            f"trained for"
        )
        if config.strict_context:
            raise InvalidConfigError(message)
        warnings.warn(message + "; output quality may degrade", RuntimeWarning, stacklevel=stacklevel)


class LlamaCppTextModel(Loaded, TextToTextModel):
    """A loaded GGUF model serving generation requests through a batching scheduler."""

    def __init__(
        self,
        name: str,
        model: LlamaModel,
        config: ModelConfig,
        threads: int | None,
        *,
        engine: Scheduler | None = None,
    ) -> None:
        """``engine``: the scheduler of a model that runs elsewhere (a worker process; ``model`` is then its
        vocabulary-only copy); by default an :class:`Engine` over ``model`` in this process."""
        self._name = name
        self._model = model
        self.config = config
        self._vocab = model.vocab
        self._template = (
            config.chat_template
            or model.chat_template
            or chat.builtin_template_for(model.metadata.get("general.architecture", ""))
        )
        if config.chat_template is not None:
            try:
                chat.apply_template(config.chat_template, [("user", "x")])
            except chat.ChatTemplateError:
                raise InvalidConfigError(
                    f"ModelConfig.chat_template {config.chat_template[:60]!r} is neither a "
                    f"template name llama.cpp knows nor a template it recognises"
                ) from None
        self._engine: Scheduler = engine if engine is not None else Engine(model, config, threads)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def model_type(self) -> ModelType:
        return ModelType.TEXT_TO_TEXT

    def as_text_to_text(self) -> LlamaCppTextModel:
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
            for m in messages
        ):
            raise InvalidConfigError("messages must be a list of (role, content) pairs of str")
        if options.system is not None and not any(r == "system" for r, _ in messages):
            messages = [("system", options.system), *list(messages)]
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
        return self._new_request(self.tokenize_prompt(text, options), options, sink)

    def tokenize_prompt(
        self, prompt: str | Sequence[int] | npt.NDArray[np.integer[Any]], options: GenerationOptions
    ) -> npt.NDArray[np.int32]:
        """The tokens a request decodes: text tokenized (special tokens parsed unless ``raw``), or token ids
        checked against the vocabulary. :class:`ContextOverflowError` when they do not fit a request's context,
        unless ``truncate_prompt`` keeps their end."""
        with mapped():
            if isinstance(prompt, str):
                tokens = self._vocab.tokenize(prompt, add_special=True, parse_special=not options.raw)
            else:
                tokens = as_tokens(prompt, self._vocab.n_tokens)
        limit = self.config.context_size - 1
        if len(tokens) == 0:
            tokens = np.array([self._vocab.bos if self._vocab.bos >= 0 else 0], dtype=np.int32)
        if len(tokens) > limit:
            if not self.config.truncate_prompt:
                raise ContextOverflowError(
                    f"the prompt is {len(tokens)} tokens but the context holds {self.config.context_size} per request "
                    f"(prompt + output); shorten it, raise ModelConfig.context_size, or set truncate_prompt=True",
                    prompt_tokens=len(tokens),
                    context_size=self.config.context_size,
                )
            tokens = tokens[-limit:]
        return tokens

    def _new_request(
        self,
        tokens: npt.NDArray[np.int32],
        options: GenerationOptions,
        sink: Any,
        *,
        logprobs: int | None = None,
        after: Request | None = None,
    ) -> Request:
        bias = options.logit_bias
        if bias and max(bias) >= self._vocab.n_tokens:
            raise InvalidConfigError(
                f"GenerationOptions.logit_bias: token {max(bias)} is not in the vocabulary of "
                f"{self._vocab.n_tokens} tokens"
            )
        with mapped():
            return Request(
                tokens,
                options,
                sink,
                self._vocab.stream(),
                self.config.context_size,
                self._vocab,
                logprobs=logprobs,
                after=after,
            )

    @property
    def load(self) -> tuple[int, int]:
        """``(busy slots, waiting requests)`` now."""
        return self._engine.load()

    def start_choices(
        self,
        prompt: str | Sequence[int] | npt.NDArray[np.integer[Any]],
        options: GenerationOptions | None = None,
        *,
        n: int = 1,
        logprobs: int | None = None,
    ) -> Choices:
        """Queue ``n`` completions of one prompt, decoded together, the later ones starting from a copy of the
        first's prompt memory; iterate the result (in the running event loop) for their events.

        ``prompt`` is the text the model sees (no chat template is applied; see :meth:`format_chat`) or token ids.
        With a ``seed``, choice ``i`` samples with ``seed + i``. ``logprobs``: None, or how many alternatives each
        token reports (0..20). Raises here, before anything runs, for a full queue or a prompt that does not fit."""
        opts = self._options(options)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise InvalidConfigError(f"n must be an int in 1..128 (got {n!r})")
        if logprobs is not None and (
            not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 20
        ):
            raise InvalidConfigError(f"logprobs must be None or an int in 0..20 (got {logprobs!r})")
        tokens = self.tokenize_prompt(prompt, opts)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        requests: list[Request] = []
        for i in range(n):
            seeded = opts if opts.seed is None or i == 0 else dataclasses.replace(opts, seed=(opts.seed + i) % 2**32)

            def sink(item: Any, i: int = i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, item))

            requests.append(
                self._new_request(tokens, seeded, sink, logprobs=logprobs, after=requests[0] if requests else None)
            )
        return Choices(self._engine, requests, items, len(tokens))

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

    def _stream(self, request: Request, items: queue.SimpleQueue[Any]) -> Iterator[str]:
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _text(item: Any) -> str | None:
    """A chunk from the scheduler: text, None at the end; an error it sent is raised here."""
    if item is END:
        return None
    if isinstance(item, BaseException):
        raise item
    return str(item)


def apply_chat_template(template: str, messages: list[tuple[str, str]], *, add_assistant: bool = True) -> str:
    """Format ``(role, content)`` messages with llama.cpp's ``llama_chat_apply_template``
    (:func:`llamacffi.chat.apply_template`, its errors as the service's)."""
    try:
        return chat.apply_template(template, messages, add_assistant)
    except chat.ChatTemplateError:
        raise InferenceError("llama.cpp does not support this model's chat template; use raw=True") from None
    except binding.InvalidArgumentError as exc:
        raise InvalidConfigError(f"the prompt cannot go through the chat template: {exc}") from None
