"""Prompts the engine's slots let go of, kept in host memory: a request that repeats one (a chat's next turn after
its slot went to other clients, the same instructions sent again) restores that memory instead of decoding it anew.

Each entry is a sequence's tokens and its memory as :meth:`~llamacffi.Context.seq_state_bytearray` gives it. Entries are
kept up to a budget in bytes, least recently used first out; an entry whose tokens begin another's is dropped for
the longer one.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt


def common_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class Entry:
    __slots__ = ("tokens", "state")

    def __init__(self, tokens: npt.NDArray[np.int32], state: bytes | bytearray) -> None:
        self.tokens = tokens
        self.state = state


class PromptCache:
    """Saved sequences, at most ``budget`` bytes of state in all."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # oldest first
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, tokens: npt.NDArray[np.int32]) -> bool:
        """Whether an entry starts with ``tokens`` already (saving them again would add nothing); marks it used."""
        for key, e in self._entries.items():
            if len(e.tokens) >= len(tokens) and common_prefix(e.tokens, tokens) == len(tokens):
                self._entries.move_to_end(key)
                return True
        return False

    def put(self, tokens: npt.NDArray[np.int32], state: bytes | bytearray) -> bool:
        """Keep a copy of ``tokens`` with their memory ``state``; False when the state alone exceeds the budget."""
        if len(state) > self.budget:
            return False
        for key in [k for k, e in self._entries.items() if common_prefix(e.tokens, tokens) == len(e.tokens)]:
            self._drop(key)  # a prefix of the new entry: it restores everything that one would
        while self._entries and self.used + len(state) > self.budget:
            self._drop(next(iter(self._entries)))
        self._entries[self._next] = Entry(tokens.copy(), state)
        self._next += 1
        self.used += len(state)
        return True

    def match(self, prompt: npt.NDArray[np.int32]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` (the most recent one among equals) and that prefix's
        length; marks it used."""
        best: tuple[int, int] | None = None
        for key, e in self._entries.items():
            n = common_prefix(e.tokens, prompt)
            if n and (best is None or n >= best[1]):
                best = (key, n)
        if best is None:
            return None, 0
        self._entries.move_to_end(best[0])
        return self._entries[best[0]], best[1]

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0

    def _drop(self, key: int) -> None:
        self.used -= len(self._entries.pop(key).state)
