"""The llama.cpp backend's text embedding model: the texts of concurrent callers embedded together, in passes run by
the process's engine thread (:mod:`llamacffi.service.runner`), which the text models' engines share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .. import Model as LlamaModel
from .. import embedding
from .. import errors as binding
from ..vocab import TokenArray, as_tokens
from . import runner
from .config import LocalBackendConfig, ModelConfig, ModelType
from .errors import (
    ContextOverflowError,
    GenerationError,
    InvalidConfigError,
    ModelClosedError,
    QueueFullError,
    mapped,
)
from .interfaces import EmbeddingModel
from .loaded import Loaded, check_context, load_file, serve

Vectors = npt.NDArray[np.float32]
_LONGER = "shorten it, raise ModelConfig.context_size, or set truncate_prompt=True"


@dataclass
class _Job:
    """One caller's texts, embedded over as many steps as they need. Its future stays pending (so cancellable) until
    its last texts are embedded."""

    tokens: list[npt.NDArray[np.int32]]
    normalize: bool
    future: concurrent.futures.Future[Vectors] = field(default_factory=concurrent.futures.Future)
    done: int = 0  # texts embedded so far (by the engine thread)
    rows: list[Vectors] = field(default_factory=list)

    def settle(self, result: Vectors | None = None, error: BaseException | None = None) -> None:
        """Answer the caller, unless it cancelled meanwhile."""
        if self.future.set_running_or_notify_cancel():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]


class LlamaCppEmbeddingModel(Loaded, EmbeddingModel):
    """A GGUF model serving text embeddings. Thread-safe: the texts of concurrent callers are embedded in one pass,
    each caller getting its own rows. Texts may have up to ``ModelConfig.context_size`` tokens (at most the model's
    training context); ``truncate_prompt`` cuts longer ones, otherwise they raise :class:`ContextOverflowError`.
    Pooling: the model's own, else mean (see :func:`llamacffi.embedding.resolve_pooling`). :attr:`stats` counts
    requests, texts and passes (a pass is one decode of the next texts of the requests waiting together)."""

    _engine: _EmbeddingEngine

    def __init__(
        self,
        name: str,
        model: LlamaModel,
        config: ModelConfig,
        threads: int | None = None,
        *,
        pooling: embedding.Pooling | str | None = None,
    ) -> None:
        super().__init__(name, model)
        self.config = config
        self._embedder = embedding.Embedder(
            model,
            pooling=pooling,
            batch_tokens=config.batch_size,
            max_tokens=min(config.context_size, model.n_ctx_train),
            n_threads=threads,
            flash_attn=config.flash_attn,
        )
        if self._embedder.pooling == embedding.Pooling.NONE:
            self._embedder.close()
            raise InvalidConfigError(
                "pooling 'none' gives one vector per token; the service serves one per text: choose mean, cls or last"
            )
        self._engine = _EmbeddingEngine(self._embedder, name, config.parallel + config.max_queue)
        self._engine_made(functools.partial(_stop, self._engine, self._embedder))

    @classmethod
    def open(
        cls,
        name: str,
        path: Path,
        backend: LocalBackendConfig,
        config: ModelConfig,
        *,
        pooling: embedding.Pooling | str | None = None,
    ) -> LlamaCppEmbeddingModel:
        """Load ``path`` with the backend's settings and serve it."""
        llama_model = load_file(path, backend)

        def build() -> LlamaCppEmbeddingModel:
            n_ctx_train = llama_model.n_ctx_train
            check_context(config, n_ctx_train, path.name, effect=f"texts may have {n_ctx_train} tokens", stacklevel=6)
            return cls(name, llama_model, config, backend.threads, pooling=pooling)

        return serve(
            llama_model,
            build,
            f"{path.name}: no embedding context of {config.context_size} tokens could be created; lower "
            f"ModelConfig.context_size",
        )

    @property
    def model_type(self) -> ModelType:
        return ModelType.TEXT_EMBEDDING

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self._embedder.dim

    @property
    def pooling(self) -> embedding.Pooling:
        return self._embedder.pooling

    @property
    def max_text_tokens(self) -> int:
        """The most tokens a text may have; a longer one raises :class:`ContextOverflowError`, or is cut to this
        with ``truncate_prompt``."""
        return self._embedder.max_tokens

    # ---- requests ---------------------------------------------------------------------------------------------

    def embed(self, texts: list[str], *, normalize: bool = True) -> Vectors:
        """Vectors of ``texts`` in order, float32 ``(len(texts), dim)``; ``normalize``: unit length."""
        return self._submit(texts, normalize).result()

    async def aembed(self, texts: list[str], *, normalize: bool = True) -> Vectors:
        """Like :meth:`embed`, for asyncio; a cancelled task's texts not embedded yet are skipped."""
        return await asyncio.wrap_future(self._submit(texts, normalize))

    def embed_tokens(self, tokens: list[list[int]] | list[TokenArray], *, normalize: bool = True) -> Vectors:
        """Like :meth:`embed`, for texts given as token ids (checked against the vocabulary)."""
        return self._submit(tokens, normalize, tokenized=True).result()

    async def aembed_tokens(self, tokens: list[list[int]] | list[TokenArray], *, normalize: bool = True) -> Vectors:
        """Like :meth:`aembed`, for texts given as token ids."""
        return await asyncio.wrap_future(self._submit(tokens, normalize, tokenized=True))

    def tokenize(self, texts: list[str]) -> list[TokenArray]:
        """Each text's tokens as :meth:`embed` makes them: to count them, or to embed them with :meth:`embed_tokens`
        after tokenizing elsewhere (a server's worker thread)."""
        try:
            with mapped():
                return embedding.tokenize(self._model, texts)
        except TypeError as exc:
            raise InvalidConfigError(str(exc)) from exc

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens ``texts`` are, as :meth:`embed` tokenizes them (for usage counts)."""
        return sum(len(t) for t in self.tokenize(texts))

    def _submit(
        self, texts: list[str] | list[list[int]] | list[TokenArray], normalize: bool, tokenized: bool = False
    ) -> concurrent.futures.Future[Vectors]:
        if not isinstance(normalize, bool):
            raise InvalidConfigError(f"normalize must be a bool, got {normalize!r}")
        try:
            if tokenized:
                if not isinstance(texts, list) or not texts:
                    raise binding.InvalidArgumentError("tokens must be a non-empty list of token id lists")
                n_vocab = self._model.vocab.n_tokens
                tokens = [as_tokens(t, n_vocab) for t in texts]
                if any(len(t) == 0 for t in tokens):
                    raise binding.InvalidArgumentError("a text given as tokens is empty")
            else:
                tokens = embedding.tokenize(self._model, texts)  # type: ignore[arg-type]
            tokens = embedding.fit(
                self._model,
                tokens,
                self._embedder.max_tokens,
                self.config.truncate_prompt,
                _LONGER,
            )
        except embedding.TextTooLongError as exc:
            raise ContextOverflowError(
                f"texts[{exc.index}] is {exc.n_tokens} tokens, over the {exc.limit} tokens a text may have here",
                hint=_LONGER,
                prompt_tokens=exc.n_tokens,
                context_size=exc.limit,
            ) from exc
        except (TypeError, binding.InvalidArgumentError, binding.InvalidTokenError, binding.TokenizeError) as exc:
            raise InvalidConfigError(str(exc)) from exc
        except binding.ClosedError as exc:
            raise ModelClosedError(f"model {self._name!r} is closed") from exc
        job = _Job(tokens, normalize)
        self._engine.submit(job)
        return job.future


class _EmbeddingEngine(runner.Attached):
    """The requests of one embedding model, stepped by the process's engine thread like a text model's
    :class:`~llamacffi.service.engine.Engine` (one thread decodes for every model: see :mod:`.runner`). A step embeds
    one decode's worth of texts, from as many callers as fit, so that a large request holds up the other models'
    streams no longer than a text model's prompt step does, and a caller that cancels is dropped between steps."""

    def __init__(self, embedder: embedding.Embedder, name: str, max_jobs: int) -> None:
        super().__init__(f"model {name!r} is closed")
        self.ctx = embedder._ctx  # the runner halts it at interpreter exit
        self._embedder = embedder
        self._name = name
        self._max_jobs = max_jobs
        self._pending: list[_Job] = []
        self.stats = {"requests": 0, "texts": 0, "passes": 0}
        self._runner.attach(self)  # a runner.Stepped

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self.closed:
                raise ModelClosedError(self._closed_why)
            self._pending = [j for j in self._pending if not j.future.cancelled()]
            if len(self._pending) >= self._max_jobs:
                raise QueueFullError(
                    f"model {self._name!r} has {len(self._pending)} requests under way or waiting (parallel + "
                    f"max_queue); retry later"
                )
            self._pending.append(job)
            self.stats["requests"] += 1
            self.stats["texts"] += len(job.tokens)
            self._runner.wake()

    def close(self) -> bool:
        """Stop taking requests and wait until the engine thread lets go; False when it was already shut."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            self._runner.wake()
        self._runner.detach(self)
        self.fail_waiting()
        return True

    def _forget(self) -> None:
        self._pending.clear()

    def fail_waiting(self, error: BaseException | None = None) -> None:
        with self._cond:
            waiting, self._pending = self._pending, []
        for job in waiting:
            why = f"embedding failed: {error!r}"
            job.settle(error=ModelClosedError(self._closed_why) if error is None else GenerationError(why))

    # ---- on the engine thread -----------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._pending)

    def step(self, alone: bool) -> None:
        """One decode: the next texts of the waiting requests, in order, up to the batch's tokens (at least one)."""
        budget = self._embedder.batch_tokens
        with self._cond:
            self._pending = [j for j in self._pending if not j.future.cancelled()]
            parts: list[tuple[_Job, int]] = []  # (job, texts taken from it)
            used = 0
            for job in self._pending:
                end = job.done
                while end < len(job.tokens) and (not used or used + len(job.tokens[end]) <= budget):
                    used += len(job.tokens[end])
                    end += 1
                if end > job.done:
                    parts.append((job, end - job.done))
                if end < len(job.tokens):
                    break
        if parts:
            self._run(parts)

    def _run(self, parts: list[tuple[_Job, int]]) -> None:
        try:
            with mapped():
                texts = [t for job, n in parts for t in job.tokens[job.done : job.done + n]]
                vectors = self._embedder.embed_tokens(texts, normalize=False)
            assert isinstance(vectors, np.ndarray)  # pooled: one row per text
        except Exception as exc:  # every caller of the step learns of it; the thread goes on
            self._finish([job for job, _ in parts], error=exc)
            return
        self.stats["passes"] += 1
        start = 0
        finished = []
        for job, n in parts:
            job.rows.append(vectors[start : start + n])
            start += n
            job.done += n
            if job.done == len(job.tokens):
                rows = np.concatenate(job.rows) if len(job.rows) > 1 else job.rows[0].copy()
                scale = job.normalize and self._embedder.pooling != embedding.Pooling.RANK  # scores stay as they are
                job.rows = [embedding.normalized(rows) if scale else rows]
                finished.append(job)
        self._finish(finished)

    def _finish(self, jobs: list[_Job], error: BaseException | None = None) -> None:
        """Take ``jobs`` off the queue and answer them."""
        with self._cond:
            self._pending = [j for j in self._pending if all(j is not d for d in jobs)]
        for job in jobs:
            job.settle(job.rows[0] if error is None else None, error)


def _stop(engine: _EmbeddingEngine, embedder: embedding.Embedder) -> None:
    """Requests still waiting raise :class:`ModelClosedError`; the context goes with the engine."""
    if engine.close():  # False when no thread steps it any more (a forked child): its context stays
        embedder.close()
