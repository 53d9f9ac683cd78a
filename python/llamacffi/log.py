"""llama.cpp and ggml log lines, routed to ``logging.getLogger("llamacffi")``.

Quiet by default: only warnings and errors reach Python (lower levels are dropped in C, at no cost). Python's
logging decides where they go; with no handler configured, Python prints warnings and errors to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from .raw import CData, ffi, lib

logger = logging.getLogger("llamacffi")

_TO_PYTHON = {
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_FROM_PYTHON = [  # (python level at or below which, ggml threshold)
    (logging.DEBUG, lib.GGML_LOG_LEVEL_DEBUG),
    (logging.INFO, lib.GGML_LOG_LEVEL_INFO),
    (logging.WARNING, lib.GGML_LOG_LEVEL_WARN),
    (logging.ERROR, lib.GGML_LOG_LEVEL_ERROR),
]
_last_level = logging.WARNING
_pending = ""
_capture = threading.local()


_interrupted = False


def take_interrupt() -> bool:
    """True once if a Ctrl-C arrived while a log callback ran (cffi would otherwise swallow it)."""
    global _interrupted
    seen, _interrupted = _interrupted, False
    return seen


@ffi.def_extern()  # type: ignore[untyped-decorator]
def llamacffi_log_callback(level: int, text: CData, user_data: CData) -> None:
    global _interrupted
    try:
        _log_line(level, text)
    except KeyboardInterrupt:
        _interrupted = True


def _log_line(level: int, text: CData) -> None:
    global _last_level, _pending
    message = ffi.string(text).decode("utf-8", "replace")
    if level != lib.GGML_LOG_LEVEL_CONT:
        _last_level = _TO_PYTHON.get(level, logging.INFO)
    # llama.cpp sends lines in pieces at times; emit whole lines only.
    message = _pending + message
    lines = message.split("\n")
    _pending = lines.pop()
    captured = getattr(_capture, "lines", None)
    for line in lines:
        if line.strip():
            if captured is not None and _last_level >= logging.WARNING:
                captured.append(line.strip())
            logger.log(_last_level, "%s", line)


@contextlib.contextmanager
def capture_problems() -> Iterator[list[str]]:
    """Collect the warning and error lines llama.cpp logs in this thread meanwhile (to quote in exceptions)."""
    previous = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous


def set_log_level(level: int | str) -> None:
    """Set the lowest level of llama.cpp log lines that reach ``logging`` (default ``"WARNING"``).

    Also sets the level of the ``llamacffi`` logger itself.
    """
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = named
    threshold = lib.GGML_LOG_LEVEL_ERROR + 1
    for py_level, ggml_level in _FROM_PYTHON:
        if level <= py_level:
            threshold = ggml_level
            break
    lib.llamacffi_log_set_threshold(threshold)
    logger.setLevel(level)


def install() -> None:
    """Route llama.cpp's log to Python (done once by the backend initialisation)."""
    lib.llamacffi_log_install(lib.GGML_LOG_LEVEL_WARN)
