"""The ownership protocol on its own: an Owner frees its object once, after the last hold and lease, whatever the
order in which Python lets go of them."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from llamacffi import ClosedError, ownership
from llamacffi.raw import ffi

CTYPE = "struct llama_model *"


def owned(freed: list[int]) -> tuple[Any, Any]:
    memory = ffi.new("char[16]")  # stands for the C object; kept alive by the caller
    ptr = ffi.cast(CTYPE, memory)
    owner = ownership.Owner(ptr, lambda p: freed.append(ownership.address(p)), "Thing", CTYPE)
    return memory, owner


def test_close_frees_at_once_without_users() -> None:
    freed: list[int] = []
    _memory, owner = owned(freed)
    at = ownership.address(owner.ptr)
    owner.close()
    owner.close()
    assert freed == [at] and owner.closed
    with pytest.raises(ClosedError, match="this Thing is closed"):
        owner.ptr


def test_close_waits_for_the_last_lease_and_hold() -> None:
    freed: list[int] = []
    _memory, owner = owned(freed)
    at = ownership.address(owner.ptr)
    first, second = owner.lease(), owner.lease()
    with owner.hold() as ptr:
        owner.close()
        assert ownership.address(ptr) == at and freed == []
    with pytest.raises(ClosedError):
        owner.lease()
    first.release()
    first.release()  # idempotent: counts once
    assert freed == []
    second.release()
    assert freed == [at]
    assert at not in ownership._leases and at not in ownership._orphaned


def test_a_collected_owner_leaves_the_free_to_the_last_lease() -> None:
    freed: list[int] = []
    _memory, owner = owned(freed)
    at = ownership.address(owner.ptr)
    lease = owner.lease()
    del owner
    gc.collect()
    assert freed == [] and at in ownership._orphaned
    lease.release()
    assert freed == [at] and at not in ownership._orphaned


def test_destructor_frees_then_releases() -> None:
    freed: list[int] = []
    events: list[str] = []
    _memory, owner = owned(freed)
    lease = owner.lease()
    owner.close()
    holder = ffi.new("int *")
    done = ownership.destructor(lambda p: events.append("holder freed"), lease)
    held = ffi.gc(holder, done)
    ffi.release(held)
    assert events == ["holder freed"] and len(freed) == 1


def test_keep_alive_ties_an_object_to_a_cdata() -> None:
    class Box:
        pass

    box = Box()
    import weakref

    ref = weakref.ref(box)
    cdata = ffi.gc(ffi.new("int *"), ownership.keep_alive(box))
    del box
    gc.collect()
    assert ref() is not None
    del cdata
    gc.collect()
    assert ref() is None


def test_destructors_need_no_module_global_at_interpreter_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Interpreter exit may clear a module's globals (to None) before the last cdata of that module is collected.
    freed: list[int] = []
    memory = ffi.new("char[16]")
    at = int(ffi.cast("uintptr_t", memory))
    owner = ownership.Owner(ffi.cast(CTYPE, memory), lambda p: freed.append(int(ffi.cast("uintptr_t", p))), "T", CTYPE)
    lease = owner.lease()
    unraisable: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    for name in ("_owner_gone", "_unlease", "_lock", "_leases", "_orphaned", "address", "ffi"):
        monkeypatch.setattr(ownership, name, None)
    del owner
    gc.collect()
    lease.release()
    monkeypatch.undo()
    assert not unraisable and freed == [at]
