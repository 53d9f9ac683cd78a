"""Write the C source of the cffi API-mode module ``llamacffi._llamacffi``.

    python build_ffi.py GENERATED.cdef OUT.c

The cdef is the one gen_cdef.py produced from the vendored llama.h, plus callbacks.cdef (this package's own
declarations). The C source is helpers.c, which includes the real llama.h, so the compiler checks every declaration
against it.
CMake passes the build facts as LLAMACFFI_* macros.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

# The C helpers compiled into the module (callbacks, abort and Ctrl-C handling, thread pools, the top-k kernel,
# huge pages): a real C file, so editors and compilers see it as one.
HELPERS = Path(__file__).parent / "helpers.c"


def main() -> None:
    cdef_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    ffi = cffi.FFI()
    ffi.cdef(cdef_path.read_text())
    ffi.cdef((Path(__file__).parent / "callbacks.cdef").read_text())
    ffi.set_source("llamacffi._llamacffi", HELPERS.read_text(encoding="utf-8"))
    ffi.emit_c_code(str(out))


if __name__ == "__main__":
    main()
