"""Transparent huge pages for the memory llama.cpp allocates while loading a model (Linux).

A token's decode reads every weight once. With 4 KiB pages that is tens of thousands of TLB entries per token;
with 2 MiB pages, a few hundred. llama.cpp allocates its weight buffers with ``posix_memalign``, which the kernel
backs with huge pages only when asked (``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``, the usual
setting). :class:`HugePages` asks for the address ranges mapped while a load runs: llama.cpp's buffers, and
whatever another thread maps meanwhile (which only changes that memory's page size).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .raw import lib

_THP = Path("/sys/kernel/mm/transparent_hugepage")

Range = tuple[int, int]


def page_size() -> int:
    """The huge page size the kernel can back anonymous memory with on request, or 0 where it cannot."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        enabled = (_THP / "enabled").read_text()
        size = int((_THP / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 0
    return size if "[never]" not in enabled else 0


def mapped() -> list[Range]:
    """The address ranges mapped in this process now, as (start, end)."""
    out = []
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            start, _, end = line.split(b" ", 1)[0].partition(b"-")
            out.append((int(start, 16), int(end, 16)))
    return out


def unmapped_before(before: list[Range], after: list[Range]) -> list[Range]:
    """The parts of ``after`` that no range of ``before`` covered."""
    old = sorted(before)
    out = []
    for a, b in after:
        cur = a
        for c, d in old:
            if d <= cur:
                continue
            if c >= b:
                break
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            if cur >= b:
                break
        if cur < b:
            out.append((cur, b))
    return out


def huge_bytes(ranges: list[Range]) -> int:
    """How many bytes of ``ranges`` are backed by huge pages now (``AnonHugePages`` of /proc/self/smaps)."""
    total = 0
    inside = False
    with open("/proc/self/smaps", "rb") as f:
        for line in f:
            head = line.split(b" ", 1)[0]
            if b"-" in head and not head.endswith(b":"):
                s, _, e = head.partition(b"-")
                start, end = int(s, 16), int(e, 16)
                inside = any(start < b and a < end for a, b in ranges)
            elif inside and head == b"AnonHugePages:":
                total += int(line.split()[1]) * 1024
    return total


class HugePages:
    """Huge pages for the memory mapped from construction on: :meth:`advise` before the memory is written (its
    page faults then take huge pages), :meth:`collapse` after (moves what was written with small pages)."""

    def __init__(self) -> None:
        self.size = page_size()
        self.ranges: list[Range] = []  # what was advised, aligned to the huge page size
        self._advised = False
        try:
            self.before = mapped() if self.size else []
        except (OSError, ValueError):  # no /proc: the memory keeps its small pages
            self.size, self.before = 0, []

    def _new(self) -> list[Range]:
        try:
            now = mapped()
        except (OSError, ValueError):
            return []
        out = []
        for a, b in unmapped_before(self.before, now):
            start, end = -(-a // self.size) * self.size, b // self.size * self.size
            if end > start:
                out.append((start, end))
        return out

    def advise(self) -> None:
        """Ask for huge pages in the ranges mapped since construction. Only the first call does anything. Like
        :meth:`collapse`, it never fails: where the kernel says no, the memory keeps its small pages."""
        if self.size and not self._advised:
            self._advised = True
            self.ranges = self._new()
            for a, b in self.ranges:
                lib.llamacffi_huge_pages(a, b - a, self.size, 0)

    def collapse(self) -> list[Range]:
        """Ask again for whatever is new, move the written small pages into huge pages, and return the ranges."""
        if not self.size:
            return []
        self.ranges = self._new()
        for a, b in self.ranges:
            # A page the kernel cannot collapse (unwritten, or no free huge page) keeps its small pages.
            lib.llamacffi_huge_pages(a, b - a, self.size, 1)
        return self.ranges
