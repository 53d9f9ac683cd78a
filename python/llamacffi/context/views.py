"""Zero-copy logits views of a context's output buffer, and the bookkeeping that keeps them from showing freed
memory: llama.cpp frees its output buffer for a larger one when a decode needs more rows than any before."""

from __future__ import annotations

import weakref

import numpy as np
import numpy.typing as npt

from .. import ownership
from ..errors import LlamaError
from ..raw import CData, ffi

_NO_VIEW = np.zeros(0, dtype=np.float32)


class OutputViews:
    """The logits views a context handed out, and how many rows llama.cpp's output buffer has (it reserves one per
    sequence at first)."""

    __slots__ = ("rows", "_last_ptr", "_last", "_refs")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._last_ptr: CData = ffi.NULL  # the row view() returned last, and its view
        self._last: npt.NDArray[np.float32] = _NO_VIEW
        # views handed out (numpy arrays are not hashable: no WeakSet)
        self._refs: list[weakref.ref[npt.NDArray[np.float32]]] = []

    def view(self, row: CData, n_vocab: int, context: CData) -> npt.NDArray[np.float32]:
        """A read-only float32 view of ``n_vocab`` floats at ``row``, which keeps the ``context`` cdata alive, so
        that llama.cpp's buffer outlives close() and collection while the view is referenced."""
        if row == self._last_ptr:  # the same row of the same buffer as last time (a generation loop): same view
            return self._last
        held = ffi.gc(row, ownership.keep_alive(context))
        view = np.frombuffer(ffi.buffer(held, n_vocab * 4), dtype=np.float32)
        view.flags.writeable = False
        self._last_ptr, self._last = row, view
        if len(self._refs) >= 64:
            self._refs = [r for r in self._refs if r() is not None]
        self._refs.append(weakref.ref(view))
        return view

    def before_grow(self, rows: int) -> None:
        """A call is about to need ``rows`` output rows, more than the buffer has: llama.cpp will free it for a
        larger one. Refuse while a view of the old buffer is referenced, which would then show freed memory."""
        self._last_ptr, self._last = ffi.NULL, _NO_VIEW
        self._refs = [r for r in self._refs if r() is not None]
        if self._refs:
            raise LlamaError(
                f"this call needs {rows} output rows, more than any call before ({self.rows}): llama.cpp will "
                f"move its logits buffer, and {len(self._refs)} logits view(s) of the old buffer are still "
                f"referenced; drop them (del) first, or keep logits_copy() of what must outlive a decode"
            )

    def close(self) -> bool:
        """Forget the views; True when one is still referenced (it then keeps the context alive)."""
        self._last_ptr, self._last = ffi.NULL, _NO_VIEW
        alive = any(r() is not None for r in self._refs)
        self._refs = []
        return alive
