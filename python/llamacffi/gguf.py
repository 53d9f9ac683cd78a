"""A GGUF file's metadata, read before llama.cpp loads it: values whose inconsistency llama.cpp meets with an abort
of the whole process (GGML_ASSERT) instead of an error are checked here first."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from .errors import ModelLoadError

MAGIC = b"GGUF"
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS

# value type -> struct format of one scalar (8 is a string, 9 an array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")

# A metadata value as read here: a number or a string (bytes), or an array as (element type, count, its strings or
# None); None for a value read past.
Value = int | float | bytes | tuple[int, int, list[bytes] | None] | None


def _fail(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"llama.cpp could not load {path}: {why}")


class _Reader:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, why: str) -> ModelLoadError:
        return _fail(self.path, why)

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise self.fail("the metadata is truncated")
        self.pos = start + n
        return start

    def u32(self) -> int:
        return int(_U32.unpack_from(self.buf, self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.buf, self.take(8))[0])

    def string(self) -> bytes:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start : start + n])

    def _strings(self, count: int, keep: bool) -> list[bytes] | None:
        """``count`` strings in a row (a vocabulary: hundreds of thousands), in one tight loop."""
        buf, pos, end, unpack = self.buf, self.pos, len(self.buf), _U64.unpack_from
        out: list[bytes] = []
        for _ in range(count):
            if pos + 8 > end:
                raise self.fail("the metadata is truncated")
            n = unpack(buf, pos)[0]
            pos += 8
            if keep:
                out.append(buf[pos : pos + n])
            pos += n
        if pos > end:
            raise self.fail("the metadata is truncated")
        self.pos = pos
        return out if keep else None

    def value(self, vtype: int, keep: bool) -> Value:
        """The value (or None when not ``keep``); arrays give (element type, count, strings or None)."""
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            start = self.take(struct.calcsize(fmt))
            return struct.unpack_from(fmt, self.buf, start)[0] if keep else None
        if vtype == _STRING:
            if keep:
                return self.string()
            self.take(self.u64())
            return None
        if vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            if etype in _SCALARS:
                self.take(count * struct.calcsize(_SCALARS[etype]))
                return etype, count, None
            if etype == _STRING:
                return etype, count, self._strings(count, keep)
            raise self.fail(f"an array of unknown value type {etype}")
        raise self.fail(f"a value of unknown type {vtype}")


def read_metadata(path: Path, wanted: set[str]) -> dict[str, Value]:
    """The values of the ``wanted`` keys found in the metadata; ``{arch}.`` in a wanted key stands for the
    ``general.architecture`` value, wherever that key sits in the file."""
    suffixes = {w[len("{arch}") :] for w in wanted if w.startswith("{arch}.")}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, path)
        if bytes(buf[:4]) != MAGIC:
            raise _fail(path, "not a GGUF file")
        r.take(4)
        if r.u32() == 1:
            raise _fail(path, "GGUF version 1 is not supported")
        r.u64()  # tensors
        n_kv = r.u64()
        found: dict[str, Value] = {}
        for _ in range(n_kv):
            key = r.string().decode("utf-8", "replace")
            vtype = r.u32()
            dot = key.find(".")
            keep = key in wanted or key == "general.architecture" or (dot > 0 and key[dot:] in suffixes)
            value = r.value(vtype, keep)
            if keep:
                found[key] = value
        arch = found.get("general.architecture")
        prefix = arch.decode("utf-8", "replace") + "." if isinstance(arch, bytes) else None
        out = {w: found[w] for w in wanted if w in found}
        if prefix is not None:
            for w in wanted:
                if w.startswith("{arch}.") and prefix + w[len("{arch}.") :] in found:
                    out[w] = found[prefix + w[len("{arch}.") :]]
        return out


def check(path: Path, vocab_only: bool = False) -> None:
    """Raise :class:`ModelLoadError` for metadata that llama.cpp would abort on (a vocab-only load reads no
    layers)."""
    meta = read_metadata(
        path,
        {
            "{arch}.block_count",
            "{arch}.nextn_predict_layers",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
        },
    )
    layers = meta.get("{arch}.block_count")
    if not vocab_only and isinstance(layers, int) and not 0 < layers <= MAX_LAYERS:
        raise _fail(path, f"its block_count is {layers}; llama.cpp supports 1..{MAX_LAYERS} layers")
    nextn = meta.get("{arch}.nextn_predict_layers")
    if not vocab_only and isinstance(layers, int) and isinstance(nextn, int) and nextn > layers:
        raise _fail(path, f"its nextn_predict_layers ({nextn}) exceeds its block_count ({layers})")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, tuple):
        return  # none, or not an array: llama.cpp reports it
    _, count, strings = tokens
    texts = [t for t in strings or () if t]  # llama.cpp names empty texts after their index
    if len(set(texts)) != len(texts):
        raise _fail(path, "its vocabulary lists a token text more than once")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        other = meta.get(key)
        if isinstance(other, tuple) and other[1] < count:  # read for every token
            raise _fail(path, f"{key} has {other[1]} entries for {count} tokens")
