"""The llama.cpp backend's text-to-text model: a loaded GGUF file serving generation requests through the batching
:class:`~llamacffi.service.engine.Engine`, blocking, streaming, asyncio, and several choices of one prompt."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import queue
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .. import Model as LlamaModel
from ..chat import ThinkingTags, ToolSyntax, check_variables
from ..errors import InvalidArgumentError
from ..vocab import as_tokens
from .choices import Choices
from .config import GenerationOptions, ModelConfig, ModelType
from .engine import Engine, Request, Scheduler
from .errors import ContextOverflowError, InvalidConfigError, ModelClosedError, mapped
from .interfaces import TextToTextModel
from .loaded import Loaded
from .prompts import Messages, check_messages, has_template, role_and_content, template_errors
from .sinks import Collected, resolve, text_of

DEFAULT_OPTIONS = GenerationOptions()
Sink = Callable[[object], None]


class LlamaCppTextModel(Loaded, TextToTextModel):
    """A loaded GGUF model serving generation requests through a batching scheduler. :attr:`stats` counts requests,
    prompt tokens reused from memory vs decoded, generated tokens and decode calls."""

    _engine: Scheduler

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
        super().__init__(name, model)
        self.config = config
        self._vocab = model.vocab
        self._templated = has_template(model, config.chat_template)
        self._engine = engine if engine is not None else Engine(model, config, threads)
        self._engine_made(self._engine.close, self._engine.begin_close)

    @property
    def model_type(self) -> ModelType:
        return ModelType.TEXT_TO_TEXT

    def as_text_to_text(self) -> LlamaCppTextModel:
        return self

    # ---- prompts ----------------------------------------------------------------------------------------------

    def format_prompt(self, prompt: str, options: GenerationOptions) -> str:
        """The text the model sees: the chat template applied to ``system`` and ``prompt`` unless ``raw``."""
        if not isinstance(prompt, str):
            raise InvalidConfigError(f"prompt must be a str, not {type(prompt).__name__}", field="prompt")
        self._check_open()
        if options.raw or not self._templated:
            return prompt if options.system is None or options.raw else f"{options.system}\n\n{prompt}"
        messages = ([("system", options.system)] if options.system is not None else []) + [("user", prompt)]
        return self._apply_template(messages)

    def format_chat(
        self,
        messages: Messages,
        options: GenerationOptions,
        *,
        tools: list[dict[str, object]] | None = None,
        variables: Mapping[str, object] | None = None,
    ) -> str:
        """A conversation of ``(role, content)`` pairs (roles "system", "user", "assistant"), or of dicts with tool
        calls and results, as the model sees it. ``tools``: the functions the model may call, described by a chat
        template that knows them (:attr:`tool_syntax`). ``variables``: more for a Jinja template, over
        ``ModelConfig.chat_template_kwargs`` (``{"enable_thinking": False}``)."""
        checked = check_messages(messages)
        self._check_open()
        if options.system is not None and not any(role_and_content(m)[0] == "system" for m in checked):
            checked = [("system", options.system), *checked]
        if not self._templated:
            if tools is not None:
                raise InvalidConfigError("this model has no chat template to describe tools with", field="tools")
            return "".join("{}: {}\n".format(*role_and_content(m)) for m in checked) + "assistant:"
        return self._apply_template(checked, tools, variables)

    @functools.cached_property
    def tool_syntax(self) -> ToolSyntax | None:
        """The tool-call syntax the model's chat template (``ModelConfig.chat_template``, else its own) teaches it,
        when it is one this package reads (:func:`llamacffi.chat.tool_syntax`), else None."""
        return self._model.tool_syntax(template=self.config.chat_template) if self._templated else None

    @property
    def thinks(self) -> bool:
        """Whether the model's chat template writes its reasoning in ``<think>`` blocks, or others of
        :data:`llamacffi.chat.THINKING_TAGS` (:meth:`Model.thinks`)."""
        return self.thinking_tags is not None

    @functools.cached_property
    def thinking_tags(self) -> ThinkingTags | None:
        """The tags the model's chat template writes its reasoning between (:meth:`Model.thinking_tags`); None where
        it writes none."""
        return self._model.thinking_tags(template=self.config.chat_template) if self._templated else None

    def _apply_template(
        self,
        messages: Messages,
        tools: list[dict[str, object]] | None = None,
        variables: Mapping[str, object] | None = None,
    ) -> str:
        """``messages`` through :meth:`llamacffi.Model.apply_chat_template` (``ModelConfig.chat_template``, else the
        model's own or its architecture's, with ``ModelConfig.chat_template_kwargs`` and ``variables`` over them),
        ending with the opening of the assistant's turn."""
        given = self.config.chat_template_kwargs
        if variables is not None:
            try:
                given = {**(given or {}), **check_variables(variables)}
            except InvalidArgumentError as exc:
                raise InvalidConfigError(str(exc), field="chat_template_kwargs") from None
        with template_errors():
            return self._model.apply_chat_template(
                messages, template=self.config.chat_template, tools=tools, variables=given
            )

    def chat_stream(self, messages: Messages, options: GenerationOptions | None = None) -> Iterator[str]:
        """Like :meth:`generate_stream`, for a whole conversation (prefix reuse makes each turn cheap)."""
        opts = self._options(options)
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        request = self._request_text(self.format_chat(messages, opts), opts, items.put)
        return self._stream(request, items)

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(f"model {self._name!r} is closed")

    def _options(self, options: GenerationOptions | None) -> GenerationOptions:
        self._check_open()
        options = DEFAULT_OPTIONS if options is None else options
        if not isinstance(options, GenerationOptions):
            raise InvalidConfigError("options must be a GenerationOptions", field="options")
        return options

    def _request(self, prompt: str, options: GenerationOptions | None, sink: Sink) -> Request:
        opts = self._options(options)
        return self._request_text(self.format_prompt(prompt, opts), opts, sink)

    def _request_text(self, text: str, options: GenerationOptions, sink: Sink) -> Request:
        return self._new_request(self.tokenize_prompt(text, options), options, sink)

    def tokenize_prompt(
        self, prompt: str | Sequence[int] | npt.NDArray[np.integer], options: GenerationOptions
    ) -> npt.NDArray[np.int32]:
        """The tokens a request decodes: text tokenized (special tokens parsed unless ``raw``), or token ids
        checked against the vocabulary. :class:`ContextOverflowError` when they do not fit a request's context,
        unless ``truncate_prompt`` keeps their end."""
        if isinstance(prompt, (bytes, bytearray, memoryview)):  # not token ids, though it iterates as ints
            raise InvalidConfigError("prompt must be a str or token ids, not bytes: decode it first", field="prompt")
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
                    f"(prompt + output)",
                    hint="shorten it, raise ModelConfig.context_size, or set truncate_prompt=True",
                    prompt_tokens=len(tokens),
                    context_size=self.config.context_size,
                )
            tokens = tokens[-limit:]
        return tokens

    def _new_request(
        self,
        tokens: npt.NDArray[np.int32],
        options: GenerationOptions,
        sink: Sink,
        *,
        logprobs: int | None = None,
        after: Request | None = None,
    ) -> Request:
        bias = options.logit_bias
        if bias and max(bias) >= self._vocab.n_tokens:
            raise InvalidConfigError(
                f"GenerationOptions.logit_bias: token {max(bias)} is not in the vocabulary of "
                f"{self._vocab.n_tokens} tokens",
                field="GenerationOptions.logit_bias",
            )
        with mapped():
            return Request(
                tokens,
                options,
                sink,
                self._vocab.stream(preserved=self._preserved(options.preserved_tokens)),
                self.config.context_size,
                self._vocab,
                logprobs=logprobs,
                after=after,
            )

    def _preserved(self, texts: tuple[str, ...]) -> list[int]:
        """The special tokens of ``texts`` that the vocabulary has (the others are written as text anyway)."""
        found = (self._vocab.special_token(t) for t in texts)
        return [t for t in found if t is not None]

    @property
    def load(self) -> tuple[int, int]:
        """``(busy slots, waiting requests)`` now."""
        return self._engine.load()

    def start_choices(
        self,
        prompt: str | Sequence[int] | npt.NDArray[np.integer],
        options: GenerationOptions | None = None,
        *,
        n: int = 1,
        logprobs: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Choices:
        """Queue ``n`` completions of one prompt, decoded together, the later ones starting from a copy of the
        first's prompt memory; iterate the result (in the running event loop, or ``loop`` for a caller that starts
        them in another thread, as a long grammar takes a while to parse) for their events.

        ``prompt`` is the text the model sees (no chat template is applied; see :meth:`format_chat`) or token ids.
        With a ``seed``, choice ``i`` samples with ``seed + i``. ``logprobs``: None, or how many alternatives each
        token reports (0..20). Raises here, before anything runs, for a full queue or a prompt that does not fit."""
        opts = self._options(options)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise InvalidConfigError(f"n must be an int in 1..128 (got {n!r})", field="n")
        if logprobs is not None and (
            not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 20
        ):
            raise InvalidConfigError(f"logprobs must be None or an int in 0..20 (got {logprobs!r})", field="logprobs")
        tokens = self.tokenize_prompt(prompt, opts)
        loop = loop if loop is not None else asyncio.get_running_loop()
        items: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        requests: list[Request] = []
        for i in range(n):
            seeded = opts if opts.seed is None or i == 0 else dataclasses.replace(opts, seed=(opts.seed + i) % 2**32)

            def sink(item: object, i: int = i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, item))

            requests.append(
                self._new_request(tokens, seeded, sink, logprobs=logprobs, after=requests[0] if requests else None)
            )
        return Choices(self._engine, requests, items, len(tokens))

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(self, prompt: str, options: GenerationOptions | None = None) -> str:
        """The whole completion. The calling thread sleeps until the request ends (no wake-up per token)."""
        result = Collected()
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
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        request = self._request(prompt, options, items.put)
        return self._stream(request, items)

    def _stream(self, request: Request, items: queue.SimpleQueue[object]) -> Iterator[str]:
        self._engine.submit(request)
        try:
            while (text := text_of(items.get())) is not None:
                yield text
        finally:
            self._engine.cancel(request)

    async def agenerate(self, prompt: str, options: GenerationOptions | None = None) -> str:
        """Like :meth:`generate`, for asyncio; cancelling the task frees the slot."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        result = Collected(lambda: loop.call_soon_threadsafe(resolve, finished))
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
        items: asyncio.Queue[object] = asyncio.Queue()

        def sink(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        request = self._request(prompt, options, sink)
        self._engine.submit(request)
        try:
            while (text := text_of(await items.get())) is not None:
                yield text
        finally:
            self._engine.cancel(request)
