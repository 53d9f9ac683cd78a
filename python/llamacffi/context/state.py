"""Saving and restoring a context's state: the whole context, or one sequence, as bytes or to a file."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ..errors import StateError, ensure
from ..log import capture_problems
from ..raw import CData, ffi, lib
from ..vocab import TokenArray, as_tokens
from .memory import Memory

# A sequence state file starts with its magic, its version and its token count (llama_state_seq_save_file); the
# bytes of llama_state_seq_get_data start with another magic (io_magic, private to llama-context.cpp; a test
# compares it with a saved sequence) and the sequence id, then hold what the file holds after its tokens.
_SEQ_HEADER = struct.Struct("<III")
_SEQ_BYTES_HEADER = struct.Struct("<Ii")
SEQ_BYTES_MAGIC = 0xAF143CD8


def _c_path(path: str | os.PathLike[str]) -> bytes:
    """A file path for C, which would end it at a NUL character."""
    raw = os.fsencode(path)
    ensure(b"\0" not in raw, f"a path cannot hold a NUL character: {os.fspath(path)!r}")
    return raw


def _state_bytes(data: object) -> tuple[CData, int]:
    """A state's bytes for C, and their number (a memoryview's items may be larger than a byte)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"state must be non-empty bytes, not {type(data).__name__}")
    view = memoryview(data)
    ensure(view.nbytes > 0, "state must be non-empty bytes", StateError)
    ensure(view.c_contiguous, "state must be contiguous bytes (a memoryview slice with a step is not)", StateError)
    return ffi.from_buffer(view), view.nbytes


def _reason(problems: list[str], default: str) -> str:
    """What llama.cpp logged about a failed load, without its function name; ``default`` when it logged nothing."""
    lines = [line.partition(": ")[2] or line for line in problems[:2]]
    return "; ".join(line.removeprefix("error loading state: ") for line in lines) or default


class StateIO:
    """The state methods of :class:`~llamacffi.Context` (a base class of it)."""

    memory: Memory
    n_vocab: int
    n_seq_max: int
    n_ctx: int

    @property
    def ptr(self) -> CData:
        raise NotImplementedError

    def _exclusive(self, fn: Callable[..., CData], *args: object) -> CData:
        raise NotImplementedError

    def _forget_outputs(self) -> None:
        raise NotImplementedError

    def _read_state(
        self, what: str, get_size: Callable[..., CData], get_data: Callable[..., CData], *seq: int
    ) -> bytearray:
        """What llama.cpp's ``get_data`` writes (``what``: for the error), straight into a new bytearray of the size
        ``get_size`` gives."""
        ptr = self.ptr
        size = self._exclusive(get_size, ptr, *seq)
        buf = bytearray(size)
        n = self._exclusive(get_data, ptr, ffi.from_buffer(buf), size, *seq)
        ensure(n > 0, f"llama.cpp could not save {what}", StateError)
        del buf[n:]
        return buf

    def state_save(self) -> bytes:
        """The memory of every sequence as bytes (not the logits: decode after a load to get them)."""
        return bytes(self._read_state("the state", lib.llama_state_get_size, lib.llama_state_get_data))

    def state_load(self, data: bytes | bytearray | memoryview) -> None:
        """Restore a state from :meth:`state_save` of a context with the same model and sizes.

        On a rejected state the StateError says whether the memory is unchanged (llama.cpp refused it before
        touching the memory: another model's) or now empty: a load that fails midway leaves part of a state, with
        sliding-window attention two caches that disagree, so it is cleared."""
        seqs = range(self.n_seq_max)
        before = [self._seq_span(s) for s in seqs]
        ptr = self.ptr
        with capture_problems() as problems:
            n = self._exclusive(lib.llama_state_set_data, ptr, *_state_bytes(data))
        self._forget_outputs()
        if n > 0:
            return
        why = _reason(problems, "another model or context size, or corrupt data")
        if all(b == (-1, -1) for b in before) or any(self._seq_span(s) != b for s, b in zip(seqs, before, strict=True)):
            self.memory.clear()
            raise StateError(f"llama.cpp rejected the state ({why}); the context's memory is now empty")
        raise StateError(f"llama.cpp rejected the state ({why}); the context's memory is unchanged")

    def _seq_span(self, seq_id: int) -> tuple[int, int]:
        m = self.memory
        return m.seq_pos_min(seq_id), m.seq_pos_max(seq_id)

    def _load_seq(self, state: CData, size: int, seq_id: int, what: str) -> None:
        """llama.cpp's sequence loader on ``size`` bytes at ``state``; on failure the sequence is emptied unless
        llama.cpp left it as it was (see :meth:`state_load`), and StateError says which."""
        before = self._seq_span(seq_id)
        ptr = self.ptr
        with capture_problems() as problems:
            n = self._exclusive(lib.llama_state_seq_set_data, ptr, state, size, seq_id)
        if n > 0:
            return
        why = _reason(problems, "another model or context size, or corrupt data")
        if before == (-1, -1) or self._seq_span(seq_id) != before:
            self.memory.seq_rm(seq_id, -1, -1)
            raise StateError(f"llama.cpp rejected {what} ({why}); sequence {seq_id} is now empty")
        raise StateError(f"llama.cpp rejected {what} ({why}); sequence {seq_id} is unchanged")

    def seq_state_save(self, seq_id: int = 0) -> bytes:
        """The memory of one sequence as bytes."""
        return bytes(self.seq_state_bytearray(seq_id))

    def seq_state_bytearray(self, seq_id: int = 0) -> bytearray:
        """The memory of one sequence, written by llama.cpp straight into a new bytearray: one pass over the memory
        instead of the two that :meth:`seq_state_save` makes, for callers that save often (a prompt cache)."""
        self.memory.check_seq(seq_id)
        return self._read_state(
            f"sequence {seq_id}", lib.llama_state_seq_get_size, lib.llama_state_seq_get_data, seq_id
        )

    def seq_state_load(self, data: bytes | bytearray | memoryview, seq_id: int = 0) -> None:
        """Load a sequence saved by :meth:`seq_state_save` or :meth:`seq_state_bytearray` into ``seq_id`` (which
        should be empty)."""
        self.memory.check_seq(seq_id)
        self._load_seq(*_state_bytes(data), seq_id, "the sequence state")

    def seq_save_file(self, path: str | os.PathLike[str], tokens: npt.ArrayLike, seq_id: int = 0) -> None:
        """Save one sequence's memory and its tokens to a file."""
        self.memory.check_seq(seq_id)
        arr = as_tokens(tokens, self.n_vocab)
        n = self._exclusive(
            lib.llama_state_seq_save_file,
            self.ptr,
            _c_path(path),
            seq_id,
            ffi.from_buffer("llama_token[]", arr),
            len(arr),
        )
        ensure(n > 0, f"could not write the sequence state to {os.fspath(path)}", StateError)

    def seq_load_file(self, path: str | os.PathLike[str], seq_id: int = 0) -> TokenArray:
        """Load a sequence saved by :meth:`seq_save_file` into ``seq_id``; returns its tokens.

        The file's header (magic, version, token count) is checked here and its state goes through the in-memory
        loader, which refuses a short buffer: llama.cpp's own file loader aborts the process on a truncated file."""
        self.memory.check_seq(seq_id)
        self.ptr  # a closed context raises ClosedError, whatever the file
        _c_path(path)
        ensure(os.path.isfile(path), f"no state file at {os.fspath(path)}", StateError)
        with open(path, "rb") as f:
            data = f.read()
        ensure(len(data) >= _SEQ_HEADER.size, f"{os.fspath(path)} is too short to be a sequence state file", StateError)
        magic, version, count = _SEQ_HEADER.unpack_from(data)
        ensure(
            magic == lib.LLAMA_FILE_MAGIC_GGSQ and version == lib.LLAMA_STATE_SEQ_VERSION,
            f"{os.fspath(path)} is not a sequence state file of this llama.cpp (magic {magic:#x}, version {version})",
            StateError,
        )
        ensure(
            count <= self.n_ctx,
            f"{os.fspath(path)} holds {count} tokens, more than this context's {self.n_ctx}",
            StateError,
        )
        end = _SEQ_HEADER.size + 4 * count
        ensure(len(data) > end, f"{os.fspath(path)} is truncated", StateError)
        tokens = np.frombuffer(data, dtype="<i4", count=count, offset=_SEQ_HEADER.size).astype(np.int32)
        state = _SEQ_BYTES_HEADER.pack(SEQ_BYTES_MAGIC, seq_id) + memoryview(data)[end:]
        self._load_seq(ffi.from_buffer(state), len(state), seq_id, f"the state file {os.fspath(path)}")
        return tokens
