"""The raw layer: the compiled cffi module's ``ffi`` and ``lib``, nothing else.

``lib`` holds every function of the vendored ``llama.h`` (and the few ggml functions llamacffi needs), declared from
the header itself at build time. Import fails with a clear message when the compiled module belongs to another
version of this package (a stale build on ``sys.path``).
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

try:
    from ._llamacffi import ffi as _ffi
    from ._llamacffi import lib as _lib
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "llamacffi's compiled module is missing: install the package with 'pip install .' from its source "
        "folder (importing from the source tree itself does not work)."
    ) from exc

ffi: Any = _ffi
lib: Any = _lib
# A cffi cdata (a pointer, struct or array of the compiled library): untyped here, the one place the layers above
# meet cffi's dynamic objects.
CData = Any

_built = ffi.string(lib.llamacffi_package_version()).decode()
if _built != __version__:  # pragma: no cover - only with a stale build
    raise ImportError(
        f"llamacffi's compiled module was built for version {_built}, but the package is {__version__}: "
        f"reinstall with 'pip install .'"
    )

__all__ = ["ffi", "lib"]  # CData is for the typed layer's annotations, not an export
