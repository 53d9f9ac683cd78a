"""The grow-and-retry loop of llama.cpp's functions that write text into a caller's buffer."""

from __future__ import annotations

from collections.abc import Callable

from .raw import CData, ffi


def read_grown(
    fill: Callable[[CData, int], int],
    size: int,
    *,
    terminated: bool = False,
    error: Callable[[int], Exception] | None = None,
) -> bytes:
    """The bytes ``fill(buf, size)`` writes into a ``char[size]``, growing the buffer until they fit.

    ``fill`` returns the length of the whole result, or ``-needed`` when it did not fit (llama.cpp uses both
    conventions). ``terminated``: ``fill`` also writes a NUL after the text (snprintf), so a result fits only when
    shorter than ``size``. With ``error`` a negative return is a failure instead, raised as ``error(code)``.
    """
    while True:
        buf = ffi.new("char[]", size)
        n = fill(buf, size)
        if n < 0:
            if error is not None:
                raise error(n)
            size = -n
        elif n < size or (n == size and not terminated):
            return bytes(ffi.buffer(buf, n))
        else:
            size = n + 1 if terminated else n
