"""llama-server's ``/tokenize`` and ``/detokenize`` bodies: text to a model's token ids (with their pieces, when
asked) and back, with special tokens parsed and rendered as llama-server does."""

from __future__ import annotations

from ..errors import LlamaError
from ..jsontypes import JSON, JSONObject, is_integers
from ..vocab import Vocab
from .errors import invalid
from .requests import check_fields, flag

TOKENIZE_FIELDS = frozenset({"model", "content", "add_special", "parse_special", "with_pieces"})
DETOKENIZE_FIELDS = frozenset({"model", "tokens"})


def tokenize(vocab: Vocab, body: JSONObject) -> JSONObject:
    """``content``'s token ids (``add_special``: BOS as the model wants, default false; ``parse_special``: special
    tokens' text as those tokens, default true); ``with_pieces``: each as ``{"id", "piece"}``, the piece as text, or
    as its bytes where it is not whole UTF-8."""
    check_fields(body, TOKENIZE_FIELDS)
    content = body.get("content")
    if not isinstance(content, str):
        raise invalid("content must be a string", "content", "invalid_type")
    add_special = flag(body, "add_special", False)
    parse_special = flag(body, "parse_special", True)
    with_pieces = flag(body, "with_pieces", False)
    try:
        tokens = vocab.tokenize(content, add_special=add_special, parse_special=parse_special).tolist()
    except LlamaError as exc:
        raise invalid(f"content: {exc}", "content", "invalid_value") from None
    if not with_pieces:
        return {"tokens": tokens}
    out: list[JSON] = []
    for token in tokens:
        piece = vocab.token_to_piece(token, special=True)
        try:
            shown: JSON = piece.decode("utf-8")
        except UnicodeDecodeError:
            shown = list(piece)
        out.append({"id": token, "piece": shown})
    return {"tokens": out}


def detokenize(vocab: Vocab, body: JSONObject) -> JSONObject:
    """The text of ``tokens``, special tokens rendered (invalid UTF-8 becomes U+FFFD)."""
    check_fields(body, DETOKENIZE_FIELDS)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not is_integers(tokens):
        raise invalid("tokens must be a list of token ids", "tokens", "invalid_type")
    try:  # the vocabulary checks each id before llama.cpp sees it
        return {"content": vocab.detokenize(tokens, unparse_special=True)}
    except LlamaError as exc:
        raise invalid(f"tokens: {exc}", "tokens", "invalid_value") from None
