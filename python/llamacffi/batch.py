"""Batch: the tokens of one ``llama_decode`` call, held in numpy arrays that llama.cpp reads in place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, ensure
from .limits import INT32_MAX, MAX_SEQ, MAX_TOKENS
from .raw import CData, ffi
from .validate import as_int, one_of
from .vocab import as_tokens

__all__ = ["MAX_SEQ", "MAX_TOKENS", "Batch", "check_logits", "chunks"]


def _ids(tokens: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Token ids as int32 (checked against a vocabulary when decoded)."""
    return as_tokens(np.ravel(tokens) if isinstance(tokens, np.ndarray) else tokens, INT32_MAX + 1)


def check_logits(logits: str) -> None:
    """Which tokens of a sequence get logits: "last", "all" or "none"."""
    one_of("logits", logits, ("last", "all", "none"))


def _start(start_pos: int, n: int) -> int:
    return as_int("start_pos", start_pos, 0, INT32_MAX + 1 - max(n, 1))


class Batch:
    """Up to ``capacity`` tokens, each with a position, the sequences it belongs to, and whether its logits are
    wanted. The arrays are numpy views of the memory llama.cpp reads, so filling them costs no copy."""

    def __init__(self, capacity: int, *, n_seq_max: int = 1) -> None:
        capacity = as_int("capacity", capacity, 1, MAX_TOKENS)
        n_seq_max = as_int("n_seq_max", n_seq_max, 1, MAX_SEQ)
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self._token = np.zeros(capacity, dtype=np.int32)
        self._pos = np.zeros(capacity, dtype=np.int32)
        self._n_seq = np.ones(capacity, dtype=np.int32)
        self._seq = np.zeros((capacity, n_seq_max), dtype=np.int32)
        self._logits = np.zeros(capacity, dtype=np.int8)
        seq_base = ffi.cast("llama_seq_id *", ffi.from_buffer(self._seq))
        self._seq_ptrs = ffi.new("llama_seq_id *[]", [seq_base + i * n_seq_max for i in range(capacity)])
        self._c = ffi.new("struct llama_batch *")
        self._c.n_tokens = 0
        self._c.token = ffi.from_buffer("llama_token[]", self._token)
        self._c.embd = ffi.NULL
        self._c.pos = ffi.from_buffer("llama_pos[]", self._pos)
        self._c.n_seq_id = ffi.from_buffer("int32_t[]", self._n_seq)
        self._c.seq_id = self._seq_ptrs
        self._c.logits = ffi.from_buffer("int8_t[]", self._logits)
        self._n = 0

    @classmethod
    def from_tokens(cls, tokens: npt.ArrayLike, *, start_pos: int = 0, seq_id: int = 0, logits: str = "last") -> Batch:
        """One sequence's tokens at consecutive positions from ``start_pos``; logits for the last token only
        (``logits="all"`` for every token, ``"none"`` for none)."""
        arr = _ids(tokens)
        seq = as_int("seq_id", seq_id, 0, MAX_SEQ - 1)
        b = cls(max(1, len(arr)), n_seq_max=seq + 1)
        b.set_sequence(arr, start_pos=start_pos, seq_id=seq_id, logits=logits)
        return b

    def clear(self) -> None:
        self._n = 0
        self._c.n_tokens = 0

    def set_sequence(self, tokens: npt.ArrayLike, *, start_pos: int = 0, seq_id: int = 0, logits: str = "last") -> None:
        """Replace the contents with one sequence's tokens at positions ``start_pos, start_pos+1, ...``."""
        arr = _ids(tokens)
        n = len(arr)
        if n > self.capacity:
            raise InvalidArgumentError(f"{n} tokens do not fit a batch of capacity {self.capacity}")
        self._check_seq(seq_id)
        start_pos = _start(start_pos, n)
        check_logits(logits)
        self._token[:n] = arr
        self._pos[:n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self._n_seq[:n] = 1
        self._seq[:n, 0] = seq_id
        if logits == "last":
            self._logits[:n] = 0
            if n:
                self._logits[n - 1] = 1
        else:
            self._logits[:n] = 1 if logits == "all" else 0
        self._n = n
        self._c.n_tokens = n

    def add(self, token: int, pos: int, seq_ids: int | Sequence[int] = 0, logits: bool = False) -> int:
        """Append one token; returns its index in the batch (the index to read its logits with)."""
        i = self._n
        if i >= self.capacity:
            raise InvalidArgumentError(f"the batch is full ({self.capacity} tokens)")
        try:
            ids = (seq_ids,) if isinstance(seq_ids, (int, np.integer)) else tuple(seq_ids)
        except TypeError:
            raise InvalidArgumentError(f"seq_ids must be an int or a sequence of ints, got {seq_ids!r}") from None
        if not ids or len(ids) > self.n_seq_max:
            raise InvalidArgumentError(f"a token belongs to 1..{self.n_seq_max} sequences, got {len(ids)}")
        for s in ids:
            self._check_seq(s)
        self._token[i] = as_int("token", token, 0, INT32_MAX)
        self._pos[i] = as_int("pos", pos, 0, INT32_MAX)
        self._n_seq[i] = len(ids)
        self._seq[i, : len(ids)] = ids
        self._logits[i] = 1 if logits else 0
        self._n = i + 1
        self._c.n_tokens = i + 1
        return i

    def add_sequence(
        self, tokens: npt.NDArray[np.int32], start_pos: int, seq_id: int = 0, logits_last: bool = False
    ) -> int:
        """Append tokens of one sequence at consecutive positions; returns the index of the last one."""
        tokens = _ids(tokens)
        n = len(tokens)
        i = self._n
        if n == 0 or i + n > self.capacity:
            raise InvalidArgumentError(f"cannot append {n} tokens to a batch holding {i} of {self.capacity}")
        self._check_seq(seq_id)
        start_pos = _start(start_pos, n)
        self._token[i : i + n] = tokens
        self._pos[i : i + n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self._n_seq[i : i + n] = 1
        self._seq[i : i + n, 0] = seq_id
        self._logits[i : i + n] = 0
        self._logits[i + n - 1] = 1 if logits_last else 0
        self._n = i + n
        self._c.n_tokens = i + n
        return i + n - 1

    def set_one(self, token: int, pos: int, seq_id: int) -> None:
        """Replace the contents with one token, with logits (checked by the caller: the fast path of a generation
        loop)."""
        self._token[0] = token
        self._pos[0] = pos
        self._seq[0, 0] = seq_id
        self._logits[0] = 1
        self._n = 1
        self._c.n_tokens = 1

    def check_for(self, n_vocab: int, n_seq_max: int, one_seq_per_token: bool) -> None:
        """Refuse what a context with these sizes cannot decode: a token id outside ``[0, n_vocab)``, a sequence id
        ``>= n_seq_max``, a negative position, or (``one_seq_per_token``) a token of several sequences."""
        n = self._n
        ensure(n > 0, "the batch is empty")
        tokens = self._token[:n]
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= n_vocab:
            as_tokens(tokens, n_vocab)  # raises InvalidTokenError naming the id
        if self.n_seq_max > n_seq_max and int(self._seq[:n].max()) >= n_seq_max:
            raise InvalidArgumentError(f"a sequence id in the batch is >= this context's n_seq_max {n_seq_max}")
        ensure(int(self._pos[:n].min()) >= 0, "positions must be >= 0")
        if one_seq_per_token and self.n_seq_max > 1:
            ensure(
                int(self._n_seq[:n].max()) == 1,
                "a token can belong to several sequences only in a context created with kv_unified=True",
            )

    def _check_seq(self, seq_id: int) -> None:
        as_int("seq_id", seq_id, 0, self.n_seq_max - 1)

    @property
    def n_tokens(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def tokens(self) -> npt.NDArray[np.int32]:
        return self._token[: self._n]

    @property
    def positions(self) -> npt.NDArray[np.int32]:
        return self._pos[: self._n]

    @property
    def logits_mask(self) -> npt.NDArray[np.int8]:
        return self._logits[: self._n]

    def seq_ids(self, i: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self._seq[i, : self._n_seq[i]])

    @property
    def c_batch(self) -> CData:
        """The ``struct llama_batch *`` over these arrays (valid while this Batch lives)."""
        return self._c


def chunks(tokens: npt.NDArray[np.int32], size: int) -> Iterator[tuple[int, npt.NDArray[np.int32]]]:
    """``(offset, tokens[offset:offset+size])`` pieces of a token array."""
    for start in range(0, len(tokens), size):
        yield start, tokens[start : start + size]
