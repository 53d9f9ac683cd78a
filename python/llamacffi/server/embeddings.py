"""``POST /v1/embeddings``: the body checked, the texts (or token ids) embedded by the service, OpenAI's response."""

from __future__ import annotations

import base64

import numpy as np

from .. import limits
from ..jsontypes import JSON, JSONObject, is_integers, is_strings
from ..service import LlamaCppEmbeddingModel
from ..vocab import TokenArray
from .asgi import off_loop
from .errors import invalid

FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def parse(body: JSONObject) -> tuple[list[str] | list[list[int]], bool, int | None]:
    """``(inputs, as_base64, dimensions)``; every input is a non-empty string, or every one a list of token ids."""
    for name in body:
        if name not in FIELDS:
            raise invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    data = body.get("input")
    inputs = _inputs(data)
    if inputs is None or not 0 < len(inputs) <= limits.MAX_EMBEDDING_INPUTS:
        raise invalid(
            f"input must be a string, a list of at most {limits.MAX_EMBEDDING_INPUTS} strings, a list of token ids or "
            "a list of such lists",
            "input",
            "missing_required_parameter" if data is None else "invalid_type",
        )
    for i, s in enumerate(inputs):
        if isinstance(s, str) and not s:
            raise invalid(f"input[{i}] is an empty string", "input", "invalid_value")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid("encoding_format must be float or base64", "encoding_format", "invalid_value")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise invalid("dimensions must be a positive integer", "dimensions", "invalid_type")
    return inputs, fmt == "base64", dims


def _inputs(data: JSON) -> list[str] | list[list[int]] | None:
    """The texts of ``input``, or its token id lists; None when it is neither."""
    if isinstance(data, str):
        return [data]
    if is_integers(data) and data:
        return [data]
    if is_strings(data):
        return data
    if isinstance(data, list) and all(is_integers(t) and t for t in data):
        return [t for t in data if is_integers(t)]
    return None


async def respond(name: str, model: LlamaCppEmbeddingModel, body: JSONObject) -> JSONObject:
    """The embeddings of a request; token ids are embedded as they are, text is tokenized by the model."""
    inputs, as_base64, dims = parse(body)
    dim = model.dim
    if dims is not None and dims != dim:
        raise invalid(
            f"dimensions: {name} gives vectors of {dim} dimensions and cannot shorten them",
            "dimensions",
            "unsupported_value",
        )
    texts = [t for t in inputs if isinstance(t, str)]
    if texts:
        tokens: list[list[int]] | list[TokenArray] = await off_loop(model.tokenize, texts, sum(map(len, texts)))
    else:
        tokens = [t for t in inputs if not isinstance(t, str)]
    vectors = await model.aembed_tokens(tokens)
    n_tokens = sum(min(len(t), model.max_text_tokens) for t in tokens)  # as embedded: a longer text is cut
    data: list[JSON] = []
    for i, v in enumerate(np.asarray(vectors, dtype=np.float32)):
        value: JSON = base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
