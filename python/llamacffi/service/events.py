"""What a request's consumer receives besides plain text: chunks with token log-probabilities and the final record."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, its log-probability under the model (a log-softmax of the raw logits, before
    sampling settings), and the ``top`` most likely tokens at that step as ``(id, logprob)``, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Text of one or more decoded tokens, and their log-probabilities when the request asked for them."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclasses.dataclass(frozen=True)
class Finish:
    """How a request ended: ``reason`` is ``"stop"`` (end of generation or a stop sequence, then
    ``stop_sequence``) or ``"length"`` (``max_tokens`` or the context); token counts for usage (``cached_tokens``:
    prompt tokens reused from memory)."""

    reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
