"""A GGUF file's metadata, read before llama.cpp loads it: values whose inconsistency llama.cpp meets with an abort
of the whole process (GGML_ASSERT) instead of an error are checked here first."""

from __future__ import annotations

import mmap
import os
import stat
import struct
from pathlib import Path

from .errors import ModelLoadError

MAGIC = b"GGUF"
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024  # llama.cpp's LLAMA_MAX_EXPERTS
ROPE_SCALING_TYPES = (b"none", b"linear", b"yarn", b"longrope")  # what llama_rope_scaling_type_from_string knows

# value type -> struct format of one scalar (8 is a string, 9 an array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")

# A metadata value as read here: a number or a string (bytes), or an array as (element type, count, its strings or
# numbers); None for a value read past.
Value = int | float | bytes | tuple[int, int, list[bytes] | list[int | float] | None] | None


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

    def value(self, vtype: int, keep: bool, numbers: bool = False) -> Value:
        """The value (or None when not ``keep``); arrays give (element type, count, their strings, or their numbers
        with ``numbers``, else None): a vocabulary's scores are only counted."""
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
                fmt = _SCALARS[etype]
                start = self.take(count * struct.calcsize(fmt))
                kept = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, start)) if keep and numbers else None
                return etype, count, kept
            if etype == _STRING:
                return etype, count, self._strings(count, keep)
            raise self.fail(f"an array of unknown value type {etype}")
        raise self.fail(f"a value of unknown type {vtype}")


def check_file(path: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is a readable regular file that starts as a GGUF file does (a
    named pipe would block a reader for ever; an empty file cannot be mapped)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"model path is not a regular file (a pipe, socket or device): {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    if not head:
        raise ModelLoadError(f"model file is empty: {path}")
    if head != MAGIC:
        raise ModelLoadError(f"not a GGUF file (magic {head!r}, expected {MAGIC!r}): {path}")


def read_metadata(path: Path, wanted: set[str], numbers: frozenset[str] = frozenset()) -> dict[str, Value]:
    """The values of the ``wanted`` keys found in the metadata; ``{arch}.`` in a wanted key stands for the
    ``general.architecture`` value, wherever that key sits in the file. Arrays of numbers keep their numbers only
    for the keys (by their suffix after the architecture) in ``numbers``."""
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
            value = r.value(vtype, keep, keep and dot > 0 and key[dot:] in numbers)
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
    """Raise :class:`ModelLoadError` for a path that is no GGUF file, or metadata that llama.cpp would abort on (a
    vocab-only load reads no layers)."""
    check_file(path)
    meta = read_metadata(
        path,
        {
            "{arch}.block_count",
            "{arch}.nextn_predict_layers",
            "{arch}.expert_count",
            "{arch}.expert_used_count",
            "{arch}.expert_group_count",
            "{arch}.expert_group_used_count",
            "{arch}.rope.scaling.type",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
        },
        numbers=frozenset({".expert_used_count"}),
    )
    if not vocab_only:
        _check_layers(path, meta)
    _check_vocabulary(path, meta)


def _number(value: Value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None  # other types: llama.cpp says


def _check_layers(path: Path, meta: dict[str, Value]) -> None:
    layers = _number(meta.get("{arch}.block_count"))
    if layers is not None and not 0 < layers <= MAX_LAYERS:
        raise _fail(path, f"its block_count is {layers}; llama.cpp supports 1..{MAX_LAYERS} layers")
    nextn = _number(meta.get("{arch}.nextn_predict_layers"))
    if layers is not None and nextn is not None and nextn > layers:
        raise _fail(path, f"its nextn_predict_layers ({nextn}) exceeds its block_count ({layers})")
    scaling = meta.get("{arch}.rope.scaling.type")
    if isinstance(scaling, bytes) and scaling not in ROPE_SCALING_TYPES:
        known = ", ".join(t.decode() for t in ROPE_SCALING_TYPES)
        raise _fail(path, f"its rope.scaling.type {scaling[:40]!r} is none of {known}")
    _check_experts(path, meta, layers)


def _check_experts(path: Path, meta: dict[str, Value], layers: int | None) -> None:
    """The expert counts of a mixture-of-experts model, as llama.cpp asserts them."""
    experts = _number(meta.get("{arch}.expert_count")) or 0
    groups = _number(meta.get("{arch}.expert_group_count")) or 0
    groups_used = _number(meta.get("{arch}.expert_group_used_count")) or 0
    used = meta.get("{arch}.expert_used_count")  # one count, or one per layer
    if isinstance(used, tuple):
        per_layer = [n for n in used[2] or () if isinstance(n, int)]
        used_max = max(per_layer[:layers] if layers else per_layer, default=0)
    else:
        used_max = _number(used) or 0
    if experts > MAX_EXPERTS:
        raise _fail(path, f"its expert_count is {experts}; llama.cpp supports at most {MAX_EXPERTS} experts")
    if used_max > experts or (experts and used_max <= 0):
        raise _fail(path, f"its expert_used_count ({used_max}) is not within 1..expert_count ({experts})")
    if not experts and groups:
        raise _fail(path, f"it has expert groups ({groups}) but no experts")
    if experts and groups >= experts:
        raise _fail(path, f"its expert_group_count ({groups}) is not below its expert_count ({experts})")
    if groups > 1 and (experts % groups or not 0 < groups_used < groups):
        raise _fail(
            path,
            f"its {experts} experts in {groups} groups, {groups_used} used, are not what llama.cpp supports "
            "(groups dividing the experts, and 1 up to one less than the groups used)",
        )


def _check_vocabulary(path: Path, meta: dict[str, Value]) -> None:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, tuple):
        return  # none, or not an array: llama.cpp reports it
    _, count, strings = tokens
    # llama.cpp reads each text as a C string (up to a NUL) and names an empty one after its index.
    texts = [
        (t.split(b"\0", 1)[0] if isinstance(t, bytes) else b"") or b"[EMPTY_%d]" % i
        for i, t in enumerate(strings or ())
    ]
    if len(set(texts)) != len(texts):
        raise _fail(path, "its vocabulary lists a token text more than once")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        other = meta.get(key)
        if isinstance(other, tuple) and other[1] < count:  # read for every token
            raise _fail(path, f"{key} has {other[1]} entries for {count} tokens")
