"""Transparent huge pages for the memory llama.cpp allocates while loading a model (Linux).

A token's decode reads every weight once. With 4 KiB pages that is tens of thousands of TLB entries per token;
with 2 MiB pages, a few hundred. llama.cpp allocates its weight buffers with ``posix_memalign``, which the kernel
backs with huge pages only when asked (``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``, the usual
setting). :class:`HugePages` asks for the private anonymous memory mapped while a load runs: llama.cpp's buffers,
and whatever another thread maps meanwhile (collapsing fills in the unwritten rest of a huge page that memory has
begun to use). File mappings, shared memory, stacks and device mappings are left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .raw import lib

_THP = Path("/sys/kernel/mm/transparent_hugepage")

Range = tuple[int, int]


def page_size() -> int:
    """The huge page size the kernel can back this process's anonymous memory with on request, or 0 where it
    cannot (not Linux, THP off, or turned off for this process)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        enabled = (_THP / "enabled").read_text()
        size = int((_THP / "hpage_pmd_size").read_text())
        status = Path("/proc/self/status").read_text()
    except (OSError, ValueError):
        return 0
    return size if "[never]" not in enabled and "THP_enabled:\t0" not in status else 0


def _maps() -> list[tuple[int, int, bool]]:
    """(start, end, private anonymous writable memory?) of each mapping of this process, by address."""
    out = []
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split(None, 5)
            start, _, end = fields[0].partition(b"-")
            path = fields[5].strip() if len(fields) > 5 else b""
            anon = (
                fields[1] == b"rw-p"
                and fields[4] == b"0"
                and (not path or path == b"[heap]" or path.startswith(b"[anon:"))
            )
            out.append((int(start, 16), int(end, 16), anon))
    return out


def mapped_ranges() -> list[Range]:
    """The address ranges mapped in this process now, as (start, end), by address."""
    return [(a, b) for a, b, _ in _maps()]


mapped = mapped_ranges  # the old name, which read as the service's error mapping (service.errors.mapped)


def anonymous() -> list[Range]:
    """The private anonymous writable ranges (what ``malloc`` hands out) mapped in this process now, by address."""
    return [(a, b) for a, b, anon in _maps() if anon]


def unmapped_before(before: list[Range], after: list[Range]) -> list[Range]:
    """The parts of ``after`` that no range of ``before`` covered (both by address, as /proc/self/maps lists them;
    one pass over each)."""
    out = []
    i = 0
    for a, b in after:
        while i < len(before) and before[i][1] <= a:
            i += 1
        cur, j = a, i
        while j < len(before) and before[j][0] < b:
            c, d = before[j]
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            j += 1
        if cur < b:
            out.append((cur, b))
    return out


def huge_bytes(ranges: list[Range]) -> int:
    """How many bytes of ``ranges`` huge pages back now, from ``AnonHugePages`` of /proc/self/smaps (which this
    reads whole). A mapping only partly inside ``ranges`` counts at most its part inside."""
    total = 0
    overlap = 0
    try:
        with open("/proc/self/smaps", "rb") as f:
            for line in f:
                head = line.split(b" ", 1)[0]
                if b"-" in head and not head.endswith(b":"):
                    s, _, e = head.partition(b"-")
                    start, end = int(s, 16), int(e, 16)
                    overlap = sum(max(0, min(end, b) - max(start, a)) for a, b in ranges)
                elif overlap and head == b"AnonHugePages:":
                    total += min(int(line.split()[1]) * 1024, overlap)
    except (OSError, ValueError):
        return 0
    return total


class HugePages:
    """Huge pages for the memory mapped from construction on: :meth:`advise` before the memory is written (its
    page faults then take huge pages), :meth:`collapse` after (moves what was written with small pages)."""

    def __init__(self) -> None:
        self.size = page_size()
        self.ranges: list[Range] = []  # what was advised, aligned to the huge page size
        self._advised = False
        try:
            self.before = mapped_ranges() if self.size else []
        except (OSError, ValueError):  # no /proc: the memory keeps its small pages
            self.size, self.before = 0, []

    def _new(self) -> list[Range]:
        try:
            now = anonymous()
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
            # A huge page's worth the kernel cannot collapse (nothing written in it, no free huge page, a kernel
            # before 6.1) keeps its small pages.
            lib.llamacffi_huge_pages(a, b - a, self.size, 1)
        return self.ranges
