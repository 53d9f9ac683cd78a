"""Vocab: tokenization and detokenization with a model's vocabulary, and UTF-8-safe streaming."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Mapping, Set

import numpy as np
import numpy.typing as npt

from .cbuffer import read_grown
from .errors import InvalidTokenError, TokenizeError
from .ownership import Owner
from .raw import CData, ffi, lib

TokenArray = npt.NDArray[np.int32]


def as_tokens(tokens: Iterable[int] | npt.ArrayLike, n_vocab: int) -> TokenArray:
    """``tokens`` as a contiguous int32 array (no copy when it already is one), every id checked against the vocab."""
    if isinstance(tokens, np.ndarray) and tokens.dtype == np.int32 and tokens.flags.c_contiguous:
        raw: np.ndarray = tokens
    else:
        # iterable, but not ids in order (a typed memoryview, such as a numpy array's, is taken)
        if isinstance(tokens, (str, bytes, bytearray, Mapping, Set)) or (
            isinstance(tokens, memoryview) and tokens.format in ("B", "b", "c")
        ):
            raise InvalidTokenError(f"tokens must be a 1-D sequence of int ids, not a {type(tokens).__name__}")
        try:
            seq = tokens if isinstance(tokens, (np.ndarray, list, tuple)) else list(tokens)  # type: ignore[arg-type]
            raw = np.asarray(seq)
        except (TypeError, ValueError) as exc:
            raise InvalidTokenError(f"tokens must be a 1-D sequence of int ids ({exc})") from None
        if raw.size and raw.dtype.kind not in "iu":
            raise InvalidTokenError(f"token ids must be ints, got {raw.dtype} values")
    if raw.ndim != 1:
        raise InvalidTokenError(f"tokens must be one-dimensional, got shape {raw.shape}")
    if raw.size:
        lo, hi = int(raw.min()), int(raw.max())  # checked before the cast to int32, which would wrap
        if lo < 0 or hi >= n_vocab:
            bad = lo if lo < 0 else hi
            raise InvalidTokenError(f"token id {bad} is out of range for a vocabulary of {n_vocab} tokens")
    return raw if raw.dtype == np.int32 and raw.flags.c_contiguous else np.ascontiguousarray(raw, dtype=np.int32)


_BEYOND_UNICODE = re.compile(rb"\xf4[\x90-\xbf][\x80-\xbf]{2}|[\xf5-\xf7][\x80-\xbf]{3}")


def _text_bytes(text: str | bytes, what: str = "text") -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizeError(f"{what} is not valid Unicode (lone surrogate at index {exc.start})") from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        # llama.cpp copes with invalid UTF-8, except a 4-byte form beyond U+10FFFF, on which its BPE tokenizers
        # throw where nothing catches it (std::terminate)
        beyond = _BEYOND_UNICODE.search(data)
        if beyond is not None:
            raise TokenizeError(f"{what} encodes a code point beyond U+10FFFF at byte {beyond.start()}")
        return data
    raise TypeError(f"{what} must be str or bytes, not {type(text).__name__}")


_NO_TOKENIZER = "the model has no vocabulary (its type is none): it has no text to tokenize or render tokens with"


class Vocab:
    """A model's vocabulary, borrowed from its :class:`Model` (valid while the model is open).

    :attr:`owner` is the model's :class:`~llamacffi.ownership.Owner`: a C object that keeps this vocabulary's
    pointer (a grammar sampler) takes a lease on it, which keeps the model loaded."""

    def __init__(self, owner: Owner, ptr: CData) -> None:
        self.owner = owner
        self._raw = ptr
        self.n_tokens: int = int(lib.llama_vocab_n_tokens(ptr))
        # A model without a vocabulary (type none): llama.cpp asserts on every token's text, piece or attribute.
        self.has_tokenizer: bool = lib.llama_vocab_type(ptr) != lib.LLAMA_VOCAB_TYPE_NONE
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    @property
    def _ptr(self) -> CData:
        self.owner.ptr  # raises once the model is closed
        return self._raw

    def _call(self, fn: Callable[..., CData], *args: object) -> CData:
        """``fn(vocab, *args)``, the model held for the call: cffi releases the GIL, and a close() from another
        thread meanwhile frees the model only after it."""
        with self.owner.hold():
            return fn(self._raw, *args)

    # ---- special tokens ---------------------------------------------------------------------------------------

    @property
    def bos(self) -> int:
        return int(self._call(lib.llama_vocab_bos))

    @property
    def eos(self) -> int:
        return int(self._call(lib.llama_vocab_eos))

    @property
    def eot(self) -> int:
        return int(self._call(lib.llama_vocab_eot))

    @property
    def nl(self) -> int:
        return int(self._call(lib.llama_vocab_nl))

    @property
    def add_bos(self) -> bool:
        return bool(self._call(lib.llama_vocab_get_add_bos))

    def _check(self, token: int) -> int:
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
            raise TypeError(f"token must be an int, not {type(token).__name__}")
        t = int(token)
        if t < 0 or t >= self.n_tokens:
            raise InvalidTokenError(f"token id {t} is out of range for a vocabulary of {self.n_tokens} tokens")
        if not self.has_tokenizer:
            raise TokenizeError(_NO_TOKENIZER)
        return t

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...). Answers are kept per token: a generation loop asks
        for every token it samples."""
        hit = self._eog.get(token) if type(token) is int else None
        if hit is None or self.owner.closed:
            t = self._check(token)
            hit = self._eog[t] = bool(self._call(lib.llama_vocab_is_eog, t))
        return hit

    def is_control(self, token: int) -> bool:
        return bool(self._call(lib.llama_vocab_is_control, self._check(token)))

    def special_token(self, text: str) -> int | None:
        """The special token whose text is ``text`` (a template's marker such as ``<|im_start|>``), or None where the
        vocabulary has none: the text is then ordinary tokens."""
        tokens = self.tokenize(text, add_special=False, parse_special=True)
        return int(tokens[0]) if len(tokens) == 1 and self.is_control(int(tokens[0])) else None

    def text(self, token: int) -> str:
        """The token's text as stored in the vocabulary (not rendered)."""
        t = self._check(token)
        with self.owner.hold():
            text: bytes = ffi.string(lib.llama_vocab_get_text(self._raw, t))
        return text.decode("utf-8", "replace")

    # ---- tokenize / detokenize --------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, *, add_special: bool = True, parse_special: bool = False) -> TokenArray:
        """Tokenize UTF-8 text. ``add_special`` adds BOS/EOS as the model wants; ``parse_special`` turns
        special-token text (e.g. ``<|im_start|>``) into those tokens."""
        data = _text_bytes(text)
        if len(data) > 2**31 - 2:
            raise TokenizeError("text is too long to tokenize (over 2 GiB)")
        if not self.has_tokenizer:
            raise TokenizeError(_NO_TOKENIZER)
        cap = min(len(data) + 8, 2**31 - 1)
        out = np.empty(cap, dtype=np.int32)
        with self.owner.hold():
            n = self._tokenize(data, out, add_special, parse_special)
            if n < 0:
                out = np.empty(-n, dtype=np.int32)
                n = self._tokenize(data, out, add_special, parse_special)
                if n < 0:
                    raise TokenizeError(f"llama_tokenize failed ({n})")
        return out[:n].copy() if n < cap // 2 else out[:n]

    def _tokenize(self, data: bytes, out: TokenArray, add_special: bool, parse_special: bool) -> int:
        """``llama_tokenize`` into ``out`` (its count, or minus the room it needs), with what llama.cpp throws (a
        vocabulary without the byte tokens its tokenizer looks up) a :class:`TokenizeError`."""
        error = ffi.new("char[200]")
        n = int(
            lib.llamacffi_tokenize(
                self._raw,
                data,
                len(data),
                ffi.from_buffer("llama_token[]", out),
                len(out),
                bool(add_special),
                bool(parse_special),
                error,
                len(error),
            )
        )
        if error[0] != b"\0":
            why = ffi.string(error).decode("utf-8", "replace")
            raise TokenizeError(f"llama.cpp could not tokenize this text with this vocabulary: {why}")
        if n == -(2**31):
            raise TokenizeError("tokenization overflowed int32")
        return n

    def piece_cache(self, special: bool = False) -> dict[int, bytes]:
        """The pieces :meth:`token_to_piece` rendered so far, by token id (the same dict, filled as it goes): a
        lookup in it is the fast path of a streaming decoder."""
        return self._special_pieces if special else self._pieces

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token renders to (possibly part of a UTF-8 character). ``special`` renders control tokens."""
        t = self._check(token)
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(t)
        if piece is None:
            piece = self._piece(t, special, 0)
            cache[t] = piece
        return piece

    def _piece(self, t: int, special: bool, lstrip: int) -> bytes:
        return read_grown(lambda buf, size: self._call(lib.llama_token_to_piece, t, buf, size, lstrip, special), 64)

    def detokenize(
        self, tokens: Iterable[int] | npt.ArrayLike, *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """Text of a token sequence, as llama.cpp renders it (invalid UTF-8 becomes U+FFFD)."""
        return self.detokenize_bytes(tokens, remove_special=remove_special, unparse_special=unparse_special).decode(
            "utf-8", "replace"
        )

    def detokenize_bytes(
        self, tokens: Iterable[int] | npt.ArrayLike, *, remove_special: bool = False, unparse_special: bool = False
    ) -> bytes:
        arr = as_tokens(tokens, self.n_tokens)
        toks = ffi.from_buffer("llama_token[]", arr)
        size = max(64, 8 * len(arr))
        with self.owner.hold():
            return read_grown(
                lambda buf, n: lib.llama_detokenize(
                    self._raw, toks, len(arr), buf, n, bool(remove_special), bool(unparse_special)
                ),
                size,
            )

    def stream(self, *, special: bool = False, preserved: Iterable[int] = ()) -> StreamDecoder:
        """A :class:`StreamDecoder` for this vocabulary."""
        return StreamDecoder(self, special=special, preserved=preserved)


class StreamDecoder:
    """Turns tokens into text as they arrive, emitting only complete UTF-8 characters.

    ``feed(token)`` returns the new text (possibly ""), ``flush()`` the rest at the end. O(1) per token: pieces are
    cached and decoded incrementally, the output is never re-detokenized. The chunks concatenate to
    ``vocab.detokenize(tokens, unparse_special=special)``. ``preserved``: control tokens whose text is written all
    the same (a chat template's markers of tool calls or thinking, which the model writes as such tokens).
    """

    __slots__ = ("_vocab", "_special", "_preserved", "_decoder", "_first", "_cache")

    def __init__(self, vocab: Vocab, *, special: bool = False, preserved: Iterable[int] = ()) -> None:
        self._vocab = vocab
        self._special = special
        self._preserved = frozenset(preserved)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._first = True
        self._cache = vocab.piece_cache(special)

    def feed(self, token: int) -> str:
        if type(token) is not int:  # numpy ints pass; floats, bools and the rest raise InvalidTokenError
            token = int(as_tokens([token], self._vocab.n_tokens)[0])
        if token in self._preserved:
            self._first = False
            data = self._vocab.token_to_piece(token, special=True)
        elif self._first:
            # llama.cpp strips the space prefix from the first token only; detokenize applies that rule.
            self._first = False
            data = self._vocab.detokenize_bytes([token], unparse_special=self._special)
        else:
            cached = self._cache.get(token)
            data = self._vocab.token_to_piece(token, special=self._special) if cached is None else cached
        return self._decoder.decode(data)

    def feed_many(self, tokens: Iterable[int]) -> str:
        ids = tokens.tolist() if isinstance(tokens, np.ndarray) else tokens
        return "".join(self.feed(t) for t in ids)

    def flush(self) -> str:
        """Whatever is left (an incomplete character becomes U+FFFD); the decoder is ready for a new stream."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._first = True
        return text
