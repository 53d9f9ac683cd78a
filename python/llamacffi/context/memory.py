"""Memory: a context's KV memory, by sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import InvalidArgumentError, ensure
from ..limits import INT32_MAX
from ..raw import CData, lib
from ..validate import as_int


class MemoryHost(Protocol):
    """What Memory needs of its context."""

    n_seq_max: int
    separate_streams: bool

    @property
    def memory_ptr(self) -> CData: ...

    def _exclusive(self, fn: Callable[..., CData], *args: object) -> CData: ...


class Memory:
    """The KV memory of a context, by sequence. Positions ``p0 < 0`` / ``p1 < 0`` mean "from 0" / "to the end"."""

    def __init__(self, ctx: MemoryHost) -> None:
        self._ctx = ctx

    @property
    def _m(self) -> CData:
        return self._ctx.memory_ptr

    def _call(self, fn: Callable[..., CData], *args: object) -> CData:
        """A ``llama_memory_*`` call on this memory, never while another thread decodes on the context."""
        return self._ctx._exclusive(fn, self._m, *args)

    def check_seq(self, seq_id: int) -> int:
        """``seq_id`` checked against the context's sequences."""
        return as_int("seq_id", seq_id, 0, self._ctx.n_seq_max - 1)

    @staticmethod
    def _range(p0: int, p1: int) -> tuple[int, int]:
        return as_int("p0", p0, -INT32_MAX - 1, INT32_MAX), as_int("p1", p1, -INT32_MAX - 1, INT32_MAX)

    def clear(self, data: bool = True) -> None:
        """Forget every sequence (``data`` also zeroes the buffers)."""
        self._call(lib.llama_memory_clear, bool(data))

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions ``[p0, p1)`` of a sequence (``seq_id=-1``: every sequence). False when the memory
        cannot remove a part of a sequence (e.g. recurrent models); then nothing changed."""
        seq_id = -1 if seq_id == -1 else self.check_seq(seq_id)
        return bool(self._call(lib.llama_memory_seq_rm, seq_id, *self._range(p0, p1)))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Make positions ``[p0, p1)`` of ``src`` also belong to ``dst``.

        When sequences have streams of their own (``kv_unified=False``), only a whole sequence can be copied."""
        s, d = self.check_seq(src), self.check_seq(dst)
        p0, p1 = self._range(p0, p1)
        if self._ctx.separate_streams and s != d and (p0 > 0 or p1 > 0):
            raise InvalidArgumentError(
                "copying part of a sequence needs a context created with kv_unified=True; "
                "copy the whole sequence (p0=-1, p1=-1)"
            )
        self._call(lib.llama_memory_seq_cp, s, d, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        """Remove every sequence but ``seq_id``.

        llama.cpp applies this to the stream of ``seq_id`` only when sequences have streams of their own
        (``kv_unified=False``); the other sequences are removed here explicitly, as llama.h defines."""
        keep = self.check_seq(seq_id)
        self._call(lib.llama_memory_seq_keep, keep)
        for other in range(self._ctx.n_seq_max):
            if other != keep:
                self._call(lib.llama_memory_seq_rm, other, -1, -1)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions ``[p0, p1)`` of a sequence by ``delta`` (needs a memory that can shift); those that
        become negative are removed, as in llama.cpp. A shift that may pass the largest position (int32) is refused: C
        would wrap those positions to negative ones, and llama.cpp would remove their tokens. (The check takes the
        range's end, or the sequence's last position if lower, as held: llama.cpp cannot say which is.)"""
        s = self.check_seq(seq_id)
        p0, p1 = self._range(p0, p1)
        delta = as_int("delta", delta, -INT32_MAX - 1, INT32_MAX)
        ensure(self.can_shift, "this model's memory cannot shift positions")
        if delta > 0:
            top = int(self._call(lib.llama_memory_seq_pos_max, s))
            top = top if p1 < 0 else min(top, p1 - 1)
            ensure(
                top < p0 or top + delta <= INT32_MAX,
                f"shifting position {top} of sequence {s} by {delta} passes the largest position ({INT32_MAX}); "
                "shift by less, or remove the tokens first (seq_rm)",
            )
        self._call(lib.llama_memory_seq_add, s, p0, p1, delta)

    def seq_div(self, seq_id: int, p0: int, p1: int, d: int) -> None:
        """Divide positions ``[p0, p1)`` of a sequence by ``d`` (integer division, ``d >= 1``)."""
        s = self.check_seq(seq_id)
        p0, p1 = self._range(p0, p1)
        d = as_int("d", d, 1, INT32_MAX)
        ensure(self.can_shift, "this model's memory cannot shift positions")
        self._call(lib.llama_memory_seq_div, s, p0, p1, d)

    def seq_pos_min(self, seq_id: int) -> int:
        """Smallest position of a sequence, -1 when it is empty."""
        return int(self._call(lib.llama_memory_seq_pos_min, self.check_seq(seq_id)))

    def seq_pos_max(self, seq_id: int) -> int:
        """Largest position of a sequence, -1 when it is empty."""
        return int(self._call(lib.llama_memory_seq_pos_max, self.check_seq(seq_id)))

    @property
    def can_shift(self) -> bool:
        return bool(lib.llama_memory_can_shift(self._m))
