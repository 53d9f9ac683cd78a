"""llama.cpp's own programs (llama-simple, llama-bench) built from the same tree and flags as this package.

They are built only on request: ``CMAKE_ARGS="-DLLAMACFFI_RAW_TOOLS=ON" pip install .`` installs them into
``llamacffi/bin``. ``$LLAMACFFI_RAW_TOOLS_DIR`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

BIN_DIR = Path(__file__).resolve().parent / "bin"


def find(name: str) -> Path | None:
    """Path of a raw llama.cpp program (``"llama-simple"``, ``"llama-bench"``), or None when not built."""
    for folder in (os.environ.get("LLAMACFFI_RAW_TOOLS_DIR"), BIN_DIR):
        if folder:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def require(name: str) -> Path:
    """Like :func:`find`, but raises FileNotFoundError saying how to build the program."""
    path = find(name)
    if path is None:
        raise FileNotFoundError(
            f'{name} is not built: reinstall with CMAKE_ARGS="-DLLAMACFFI_RAW_TOOLS=ON" pip install . '
            f"(or set LLAMACFFI_RAW_TOOLS_DIR)"
        )
    return path
