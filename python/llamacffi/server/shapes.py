"""OpenAI's response objects, built from the service's chunks and finish records."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..jsontypes import JSON, JSONObject
from ..service.events import TokenLogprob

Piece = Callable[[int], bytes]  # a token's text as bytes


def usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> JSONObject:
    """``usage`` of a request."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _token(token: int, logprob: float, piece: Piece) -> JSONObject:
    raw = piece(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob], piece: Piece) -> JSONObject:
    """``choices[i].logprobs`` of a chat completion: one entry per token with its alternatives."""
    return {
        "content": [
            {**_token(e.token, e.logprob, piece), "top_logprobs": [_token(t, lp, piece) for t, lp in e.top]}
            for e in entries
        ],
        "refusal": None,
    }


def text_logprobs(entries: list[TokenLogprob], piece: Piece, offset: int) -> JSONObject:
    """``choices[i].logprobs`` of a text completion (the legacy shape); ``offset``: where the text starts."""
    tokens: list[JSON] = []
    values: list[JSON] = []
    tops: list[JSON] = []
    offsets: list[JSON] = []
    for e in entries:
        text = piece(e.token).decode("utf-8", "replace")
        tokens.append(text)
        values.append(e.logprob)
        tops.append({piece(t).decode("utf-8", "replace"): lp for t, lp in e.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def sse(obj: JSONObject) -> bytes:
    """One Server-Sent Event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def json_string(text: str) -> bytes:
    """A string as :func:`sse` writes it inside an event."""
    return json.dumps(text, ensure_ascii=False).encode()


DONE = b"data: [DONE]\n\n"
