"""The raw layer: the compiled cffi module's ``ffi`` and ``lib``, nothing else (loaded with a short OpenMP spin).

``lib`` holds every function of the vendored ``llama.h`` (and the few ggml functions llamacffi needs), declared from
the header itself at build time. Import fails with a clear message when the compiled module belongs to another
version of this package (a stale build on ``sys.path``).
"""

from __future__ import annotations

import os
from typing import Any

from ._version import __version__

# With OpenMP, ggml's threads wait for each other at every barrier of a graph, and libgomp spins 300,000 rounds
# before it sleeps: longer than a scheduler slice. When other busy processes share the cores (two workers of a service
# on one machine), a barrier then often waits for a partner thread that is not running, and decoding slows down a
# hundredfold. A short spin keeps the speed of an idle machine and avoids that. libgomp reads its settings once, when
# the compiled module loads it; a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins, and the environment is restored.
SPIN_COUNT = "1000"
_set_spin = "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
if _set_spin:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
try:
    from ._llamacffi import ffi as _ffi, lib as _lib
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "llamacffi's compiled module is missing: install the package with 'pip install .' from its source "
        "folder (importing from the source tree itself does not work)."
    ) from exc
finally:
    if _set_spin:
        os.environ.pop("GOMP_SPINCOUNT", None)

ffi: Any = _ffi
lib: Any = _lib

_built = ffi.string(lib.llamacffi_package_version()).decode()
if _built != __version__:  # pragma: no cover - only with a stale build
    raise ImportError(
        f"llamacffi's compiled module was built for version {_built}, but the package is {__version__}: "
        f"reinstall with 'pip install .'"
    )

__all__ = ["ffi", "lib"]
