"""The one ownership protocol for C objects that keep a pointer of another one (a model's, today).

llama.cpp objects point at each other without reference counts: a context, a grammar sampler (through the
vocabulary), a LoRA adapter or an embedding context all use a ``llama_model`` that must not be freed before them.
Python frees objects in any order (the cycle collector finalises a Model and its contexts together, interpreter exit
runs destructors as it goes), so every such holder follows the same three steps:

1. The owned object is wrapped in an :class:`Owner`, which holds the pointer under ``ffi.gc`` and knows how to
   free it. ``owner.ptr`` raises :class:`~llamacffi.errors.ClosedError` once the object is closed.
2. A holder that keeps the pointer inside a C object takes a :class:`Lease` (``owner.lease()``) before creating
   that C object, and hands it to :func:`destructor`, which builds the ``ffi.gc`` destructor of the C object: free
   it, then release the lease. Until the last lease is released, closing or collecting the owner defers the free.
3. A call that only uses the pointer for its duration (and releases the GIL meanwhile, like tokenization) runs
   inside ``with owner.hold() as ptr:``, so a ``close()`` from another thread waits for it.

Leases are counted by address in a module table, not on the :class:`Owner` object, because the owner's own
destructor may run before the holders' destructors (cyclic garbage); the last release then does the free.
:func:`keep_alive` is the same idea for plain Python objects: a no-op destructor that keeps one alive with a cdata.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ClosedError
from .raw import ffi

Free = Callable[[Any], None]

# Address -> number of live leases, and the objects whose owner went away meanwhile (address -> how to free it):
# the last lease frees those.
_leases: dict[int, int] = {}
_orphaned: dict[int, Free] = {}
_lock = threading.Lock()


def address(ptr: Any) -> int:
    """The address a cdata pointer points at."""
    return int(ffi.cast("uintptr_t", ptr))


# The destructors below take what they use as default arguments: interpreter exit may clear this module's globals
# before the last cdata is collected.


def _owner_gone(
    ptr: Any, free: Free, _lock: Any = _lock, _leases: Any = _leases, _orphaned: Any = _orphaned, _cast: Any = ffi.cast
) -> None:
    """The ``ffi.gc`` destructor of an owned pointer: free it now, or leave it to the last lease."""
    with _lock:
        at = int(_cast("uintptr_t", ptr))
        if _leases.get(at):
            _orphaned[at] = free
            return
    free(ptr)


def _unlease(
    at: int, ctype: str, _lock: Any = _lock, _leases: Any = _leases, _orphaned: Any = _orphaned, _cast: Any = ffi.cast
) -> None:
    with _lock:
        left = _leases[at] - 1
        if left:
            _leases[at] = left
            return
        del _leases[at]
        free = _orphaned.pop(at, None)
    if free is not None:
        free(_cast(ctype, at))


class Lease:
    """A holder's claim on an owned pointer, taken with :meth:`Owner.lease`: :attr:`ptr` stays valid until
    :meth:`release` (idempotent), which the holder's destructor calls once it has freed its C object."""

    __slots__ = ("ptr", "_at", "_ctype", "_owner", "_done", "_unlease")

    def __init__(self, owner: Owner, ptr: Any, ctype: str) -> None:
        self.ptr = ffi.cast(ctype, ptr)  # a plain pointer: the lease, not a reference, keeps the object alive
        self._at = address(ptr)
        self._ctype = ctype
        self._owner = weakref.ref(owner)
        self._done = False
        self._unlease = _unlease  # kept: release may run after interpreter exit cleared this module
        with _lock:
            _leases[self._at] = _leases.get(self._at, 0) + 1

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        self._unlease(self._at, self._ctype)
        owner = self._owner()
        if owner is not None:
            owner._unuse()


class Owner:
    """Owns one C object: its pointer under ``ffi.gc`` and the function that frees it (``free(ptr)``, which must
    keep the library alive, e.g. through a default argument). ``what`` names it in errors ("this Model is closed");
    ``ctype`` is the pointer's C type. :meth:`close` frees the object now, or with the last hold or lease."""

    def __init__(self, ptr: Any, free: Free, what: str, ctype: str) -> None:
        self._ptr: Any = ffi.gc(ptr, lambda p, _free=free, _gone=_owner_gone: _gone(p, _free))
        self._what = what
        self._ctype = ctype
        self._users = 0
        self._close_requested = False
        self._lock = threading.Lock()

    @property
    def ptr(self) -> Any:
        """The pointer; :class:`ClosedError` once closed."""
        if self._ptr is None or self._close_requested:
            raise ClosedError(f"this {self._what} is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None or self._close_requested

    def close(self) -> None:
        """Free the object now, or when the last hold or lease ends. Idempotent."""
        with self._lock:
            self._close_requested = True
            if self._users == 0:
                self._release()

    def _release(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            ffi.release(ptr)

    def _use(self) -> Any:
        with self._lock:
            if self._ptr is None or self._close_requested:
                raise ClosedError(f"this {self._what} is closed")
            self._users += 1
            return self._ptr

    def _unuse(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._close_requested:
                self._release()

    @contextlib.contextmanager
    def hold(self) -> Iterator[Any]:
        """The pointer, for a call that may run without the GIL: a close() from another thread meanwhile frees the
        object only after it."""
        ptr = self._use()
        try:
            yield ptr
        finally:
            self._unuse()

    def lease(self) -> Lease:
        """For a C object that keeps this pointer: a :class:`Lease` to release from that object's destructor (see
        :func:`destructor`). Until then the object stays alive, even when this owner is closed or collected."""
        return Lease(self, self._use(), self._ctype)


def destructor(free: Free, *leases: Lease) -> Free:
    """The ``ffi.gc`` destructor of a holder's C object: ``free(ptr)``, then release the ``leases`` it holds."""

    def done(ptr: Any) -> None:
        try:
            free(ptr)
        finally:
            for lease in leases:
                lease.release()

    return done


def keep_alive(obj: object) -> Free:
    """A no-op ``ffi.gc`` destructor that keeps ``obj`` alive as long as the cdata it is attached to."""

    def keep(_ptr: Any, _obj: object = obj) -> None:
        pass

    return keep
