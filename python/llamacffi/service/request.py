"""A generation request as the engine runs it: prompt, options, sampling state, and where its output goes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ..errors import GrammarError
from ..sampling import Sampler, VocabLike
from ..sampling.params import penalties_on
from ..vocab import StreamDecoder
from .config import GenerationOptions
from .errors import GenerationError, InvalidConfigError
from .events import Chunk, TokenLogprob
from .stops import StopMatcher

END = object()  # the last item a request's sink receives
Sink = Callable[[object], None]  # text, a Chunk, an exception, then END


class Request:
    """One generation: its prompt tokens, options and where its text goes.

    ``logprobs``: None, or how many most likely alternatives each token reports; the sink then receives
    :class:`Chunk` items instead of plain text. ``after``: a request sharing this one's prompt (another choice of
    the same completion); this one waits until that one's prompt is in memory and starts from a copy of it. When the
    request ends, ``finish_reason``, ``n_reused`` and ``n_generated`` say how and with what."""

    __slots__ = (
        "prompt",
        "options",
        "sink",
        "cancelled",
        "finished",
        "n_generated",
        "decoder",
        "stops",
        "sampler",
        "history",
        "n_history",
        "greedy",
        "logprobs",
        "entries",
        "after",
        "prompt_done",
        "finish_reason",
        "n_reused",
    )

    def __init__(
        self,
        prompt: npt.NDArray[np.int32],
        options: GenerationOptions,
        sink: Sink,
        decoder: StreamDecoder,
        context_size: int,
        vocab: VocabLike | None = None,
        *,
        logprobs: int | None = None,
        after: Request | None = None,
    ) -> None:
        self.prompt = prompt
        self.options = options
        self.sink = sink
        self.cancelled = False
        self.finished = False  # its slot was released
        self.n_generated = 0
        self.decoder = decoder
        self.stops = StopMatcher(options.stop_sequences)
        penalties = penalties_on(
            options.repeat_penalty, options.frequency_penalty, options.presence_penalty, options.penalty_last_n
        )
        bias = options.logit_bias or None
        grammar = options.grammar_text()
        self.greedy = options.temperature == 0.0 and not penalties and bias is None and grammar is None
        if grammar is not None and vocab is None:
            raise GenerationError("a constrained request needs the model's vocab")
        # A grammar has state: a constrained request's sampler holds its own, fed every token it returns (greedy
        # requests too), so constrained and free requests share decode steps.
        try:
            self.sampler = (
                None
                if self.greedy
                else Sampler(
                    temperature=options.temperature,
                    top_k=options.top_k,
                    top_p=options.top_p,
                    min_p=options.min_p,
                    repeat_penalty=options.repeat_penalty,
                    frequency_penalty=options.frequency_penalty,
                    presence_penalty=options.presence_penalty,
                    penalty_last_n=options.penalty_last_n,
                    logit_bias=bias,
                    seed=options.seed,
                    vocab=vocab if grammar is not None else None,
                    grammar=grammar,
                )
            )
        except GrammarError as exc:  # llama.cpp cannot parse it, or it is too ambiguous to run: the caller's
            raise InvalidConfigError(str(exc), field=options.constraint_field) from exc
        self.logprobs = logprobs
        self.entries: list[TokenLogprob] = []  # log-probabilities of tokens whose text is not sent yet
        self.after = after
        self.prompt_done = False  # all of its prompt but the last token is in memory
        self.finish_reason: str | None = None
        self.n_reused = 0
        # Penalties look at prompt + output, which the context bounds; kept in one preallocated array.
        size = min(len(prompt) + options.max_tokens, context_size)
        self.history = np.empty(size, dtype=np.int32) if penalties else None
        self.n_history = 0
        if self.history is not None:
            self.history[: len(prompt)] = prompt
            self.n_history = len(prompt)


def emit(req: Request, item: object) -> None:
    """Hand an item to a request's consumer; a consumer that is gone (closed event loop) cancels the request
    instead of stopping the scheduler."""
    try:
        req.sink(item)
    except Exception:
        req.cancelled = True


def send(req: Request, text: str) -> None:
    """Hand text to a request's consumer, with the log-probabilities of the tokens it came from when asked for."""
    if req.logprobs is None:
        if text:
            emit(req, text)
    elif text or req.entries:
        entries, req.entries = tuple(req.entries), []
        emit(req, Chunk(text, entries))


def token_logprob(logits: npt.NDArray[np.float32], token: int, top: int) -> TokenLogprob:
    """The log-softmax of a logits row at ``token``, and its ``top`` highest entries."""
    row = logits.astype(np.float64)
    peak = row.max()
    norm = peak + np.log(np.exp(row - peak).sum())
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(row, -top)[-top:]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = tuple((int(i), float(row[i] - norm)) for i in ids)
    return TokenLogprob(token, float(row[token] - norm), best)
