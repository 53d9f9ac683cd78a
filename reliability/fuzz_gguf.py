"""GGUF mutation fuzzing: the real models' headers and metadata mutated, each mutant loaded by ``Model.load``.

Mutations: bit flips in the header, truncations, huge counts and lengths (tensors, keys, arrays, strings,
dimensions), wrong value and tensor types, long strings, edge values of numeric keys (0, -1, 2**31, NaN) and tensor
offsets past the file. Every load must raise :class:`~llamacffi.ModelLoadError` (or succeed), never end the process
and never hang: loads run in a worker process fed mutants one by one, and a worker that dies or passes
``--timeout`` is recorded with its seed (replay with ``--replay SEED``) and replaced.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import write_json
from .worker import Worker, serve

MODELS = ("smollm2-135m", "gemma3-270m")
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
HUGE = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**48, 2**63 - 1, 2**63, 2**64 - 1]


@dataclass
class KV:
    key: str
    key_len_off: int  # offset of the key's u64 length
    type_off: int  # offset of the u32 value type
    value_off: int  # offset of the value (an array: its u32 element type)
    end: int
    vtype: int


@dataclass
class Layout:
    """Where things sit in a GGUF header (offsets into the file)."""

    n_tensors_off: int = 8
    n_kv_off: int = 16
    kvs: list[KV] = field(default_factory=list)
    tensors: list[tuple[int, int, int, int]] = field(default_factory=list)  # name, n_dims, type, offset fields
    data_start: int = 0


def layout(buf: bytes) -> Layout:
    """Parse a well-formed GGUF header into the offsets the mutators aim at."""
    u32 = lambda o: struct.unpack_from("<I", buf, o)[0]
    u64 = lambda o: struct.unpack_from("<Q", buf, o)[0]
    lay = Layout()
    n_tensors, n_kv = u64(8), u64(16)
    pos = 24
    alignment = 32
    for _ in range(n_kv):
        key_off = pos
        klen = u64(pos)
        key = buf[pos + 8 : pos + 8 + klen].decode()
        pos += 8 + klen
        vtype = u32(pos)
        type_off, pos = pos, pos + 4
        value_off = pos
        if vtype == _STRING:
            pos += 8 + u64(pos)
        elif vtype == _ARRAY:
            etype, count = u32(pos), u64(pos + 4)
            pos += 12
            if etype == _STRING:
                for _ in range(count):
                    pos += 8 + u64(pos)
            else:
                pos += count * _SCALAR_SIZE[etype]
        else:
            if key == "general.alignment":
                alignment = u32(pos)
            pos += _SCALAR_SIZE[vtype]
        lay.kvs.append(KV(key, key_off, type_off, value_off, pos, vtype))
    for _ in range(n_tensors):
        name_off = pos
        pos += 8 + u64(pos)
        ndims_off = pos
        pos += 4 + 8 * u32(pos)
        type_off = pos
        pos += 4
        lay.tensors.append((name_off, ndims_off, type_off, pos))
        pos += 8
    lay.data_start = (pos + alignment - 1) // alignment * alignment
    return lay


def _put(buf: bytearray, off: int, fmt: str, value: Any) -> None:
    struct.pack_into(fmt, buf, off, value)


def mutate(rng: random.Random, head: bytes, lay: Layout, size: int) -> tuple[str, bytearray | None, int | None]:
    """One mutation of the header ``head`` (the file up to its data): (description, new header or None to keep
    the original, length to cut the whole file at or None)."""
    buf = bytearray(head)
    kind = rng.choice(["bitflip", "bitflip", "truncate", "huge", "huge", "type", "long_string", "value", "value",
                       "tensor"])  # fmt: skip
    if kind == "bitflip":
        n = rng.choice([1, 1, 2, 4, 8, 32])
        hot = min(len(buf), 4096)
        flips = [rng.randrange(hot if rng.random() < 0.5 else len(buf)) for _ in range(n)]
        for off in flips:
            buf[off] ^= 1 << rng.randrange(8)
        return f"bitflip x{n} at {flips[:4]}", buf, None
    if kind == "truncate":
        cut = rng.randrange(lay.data_start + 1) if rng.random() < 0.8 else rng.randrange(lay.data_start, size)
        return f"truncate at {cut} of {size}", None, cut
    if kind == "huge":
        value = rng.choice(HUGE)
        target = rng.choice(["n_tensors", "n_kv", "key_len", "string_len", "array_count", "n_dims", "dim"])
        if target in ("n_tensors", "n_kv"):
            _put(buf, lay.n_tensors_off if target == "n_tensors" else lay.n_kv_off, "<Q", value)
            return f"{target} = {value}", buf, None
        if target in ("n_dims", "dim") and lay.tensors:
            t = rng.choice(lay.tensors)
            if target == "n_dims":
                _put(buf, t[1], "<I", value % 2**32)
            else:
                ndims = struct.unpack_from("<I", buf, t[1])[0]
                _put(buf, t[1] + 4 + 8 * rng.randrange(max(1, ndims)), "<Q", value)
            return f"tensor {target} = {value}", buf, None
        kv = rng.choice(lay.kvs)
        if target == "key_len":
            _put(buf, kv.key_len_off, "<Q", value)
        elif target == "string_len" and kv.vtype == _STRING:
            _put(buf, kv.value_off, "<Q", value)
        elif kv.vtype == _ARRAY:
            _put(buf, kv.value_off + 4, "<Q", value)
        else:
            _put(buf, kv.key_len_off, "<Q", value)
            target = "key_len"
        return f"{kv.key}: {target} = {value}", buf, None
    if kind == "type":
        value = rng.choice([*range(14), 255, 2**31, 2**32 - 1])
        if lay.tensors and rng.random() < 0.3:
            t = rng.choice(lay.tensors)
            value = rng.choice([*range(45), 1000, 2**32 - 1])
            _put(buf, t[2], "<I", value)
            return f"tensor type = {value}", buf, None
        kv = rng.choice(lay.kvs)
        if kv.vtype == _ARRAY and rng.random() < 0.5:
            _put(buf, kv.value_off, "<I", value)
            return f"{kv.key}: element type = {value}", buf, None
        _put(buf, kv.type_off, "<I", value)
        return f"{kv.key}: type {kv.vtype} -> {value}", buf, None
    if kind == "long_string":
        strings = [kv for kv in lay.kvs if kv.vtype == _STRING]
        kv = rng.choice(strings)
        n = rng.choice([255, 4096, 65536, 1 << 20])
        text = bytes(rng.choice(b"abc\xff\x00\xc3") for _ in range(n))
        new = buf[: kv.value_off] + struct.pack("<Q", n) + text + buf[kv.end :]
        return f"{kv.key}: a string of {n} bytes", new, None
    if kind == "value":
        scalars = [kv for kv in lay.kvs if kv.vtype in _SCALAR_SIZE]
        kv = rng.choice(scalars)
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
        f = fmt[kv.vtype]
        if f in ("<f", "<d"):
            value: Any = rng.choice([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e-30])
        else:
            bits = struct.calcsize(f) * 8
            signed = f.islower()
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            value = rng.choice([lo, hi, 0, 1, 2, 3, 7, 64, 4096, 65536, -1 if signed else hi, rng.randint(lo, hi)])
            value = max(lo, min(hi, value))
        _put(buf, kv.value_off, f, value)
        return f"{kv.key} = {value}", buf, None
    # tensor: a data offset past the file or unaligned
    t = rng.choice(lay.tensors)
    value = rng.choice([size, size * 2, 2**63, 1, 17, 2**64 - 1])
    _put(buf, t[3], "<Q", value)
    return f"tensor data offset = {value}", buf, None


def write_mutant(src: Path, dest: Path, head: bytes, new_head: bytearray | None, cut: int | None) -> None:
    """The mutant file: the new header then the original data (the kernel copies it), or the original cut short."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        if cut is not None:
            remaining = cut
            offset = 0
        else:
            fout.write(new_head if new_head is not None else head)
            offset = len(head)
            remaining = os.fstat(fin.fileno()).st_size - offset
        while remaining > 0:
            n = os.sendfile(fout.fileno(), fin.fileno(), offset, remaining)
            if n <= 0:
                break
            offset += n
            remaining -= n


# ---- the worker: loads mutants named on stdin, one result line each ----------------------------------------------


def load_one(line: str) -> tuple[str, str]:
    """``SEED PATH`` -> ``(SEED, "outcome detail")``: the load's outcome, ``ModelLoadError`` or ``loaded`` when the
    contract holds."""
    import llamacffi

    seed, path = line.split(" ", 1)
    try:
        with llamacffi.Model.load(path) as model:
            model.vocab.tokenize("hello world")
        return seed, "loaded"
    except llamacffi.ModelLoadError as exc:
        return seed, "ModelLoadError " + str(exc).replace(path, "<file>")
    except Exception as exc:  # any other type is a finding: the contract is ModelLoadError
        return seed, f"other:{type(exc).__name__} " + str(exc).replace(path, "<file>")


def _load(w: Worker, seed: int, path: Path, timeout: float) -> tuple[str, str]:
    outcome, detail = w.ask(f"{seed} {path}", timeout)
    if outcome in ("crash", "hang"):
        return outcome, detail
    outcome, _, detail = detail.partition(" ")
    return outcome, detail


def model_of(seed: int) -> str:
    """Four mutants in five are SmolLM2's: a Gemma 3 load reads a 262,144-token vocabulary (several times slower)."""
    return MODELS[1] if seed % 5 == 4 else MODELS[0]


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0


def _run_part(seeds: list[int], sources: dict[str, Path], heads: dict[str, tuple[bytes, Layout]], folder: Path,
              timeout: float, tally: Tally, lock: threading.Lock, log: Any) -> None:  # fmt: skip
    """Load the mutants of ``seeds`` in one worker process (replaced when one kills it)."""
    start = time.monotonic()
    with Worker("fuzz-gguf", folder, str(seeds[0]) if seeds else "none") as w:
        for seed in seeds:
            name = model_of(seed)
            head, lay = heads[name]
            what, new_head, cut = mutate(random.Random(seed), head, lay, sources[name].stat().st_size)
            target = folder / f"m{seed}.gguf"
            write_mutant(sources[name], target, head, new_head, cut)
            outcome, detail = _load(w, seed, target, timeout)
            target.unlink()
            with lock:
                tally.outcomes[outcome] += 1
                tally.families[_family(what)] += 1
                tally.done += 1
                if outcome == "ModelLoadError":
                    tally.errors[_message_class(detail)] += 1
                if outcome not in ("loaded", "ModelLoadError"):
                    tally.findings.append(
                        {"seed": seed, "model": name, "mutation": what, "outcome": outcome, "detail": detail}
                    )
                    print(f"  {outcome.upper()} seed {seed} ({name}, {what}): {detail}", file=log, flush=True)
                if tally.done % 100 == 0:
                    print(f"  {tally.done} mutants, {time.monotonic() - start:.0f} s, {dict(tally.outcomes)}",
                          file=log, flush=True)  # fmt: skip


def run(
    count: int, seed0: int, timeout: float, seeds: list[int] | None = None, jobs: int = 2, log: Any = sys.stderr
) -> dict[str, Any]:
    """Mutants ``seed0 .. seed0+count-1`` (or the given ``seeds``), over ``jobs`` worker processes."""
    from llamacffi import models

    sources = {name: models.fetch(name) for name in MODELS}
    heads: dict[str, tuple[bytes, Layout]] = {}
    for name, path in sources.items():
        with open(path, "rb") as f:
            probe = f.read(64 << 20)
        lay = layout(probe)
        heads[name] = (probe[: lay.data_start], lay)
    folder = Path(tempfile.mkdtemp(prefix="llamacffi-gguf-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    todo = seeds if seeds is not None else list(range(seed0, seed0 + count))
    tally, lock = Tally(), threading.Lock()
    start = time.monotonic()
    parts = [todo[i::jobs] for i in range(jobs)]
    threads = [
        threading.Thread(target=_run_part, args=(part, sources, heads, folder, timeout, tally, lock, log))
        for part in parts
        if part
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "mutants": len(todo),
        "by_model": dict(Counter(model_of(s) for s in todo)),
        "first_seed": todo[0] if todo else None,
        "outcomes": dict(tally.outcomes),
        "mutation_families": dict(sorted(tally.families.items())),
        "load_errors_by_message": dict(tally.errors.most_common(25)),
        "findings": sorted(tally.findings, key=lambda f: f["seed"]),
        "seconds": round(time.monotonic() - start, 1),
    }


def _family(what: str) -> str:
    for word in ("bitflip", "truncate", "element type", "tensor type", "type", "tensor data offset", "tensor n_dims",
                 "tensor dim", "n_tensors", "n_kv", "key_len", "string_len", "array_count", "a string of"):  # fmt: skip
        if word in what:
            return {"a string of": "long string", "type": "value type"}.get(word, word)
    return "numeric value"


def _message_class(detail: str) -> str:
    """The message without its numbers, so similar refusals count together."""
    import re

    return re.sub(r"\d+", "N", detail)[:120]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability fuzz-gguf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="mutants, a fifth of them Gemma 3's (default 2,000)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--replay", type=int, nargs="+", default=None, metavar="SEED", help="run only these seeds")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a load may take before it counts as a hang")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes loading at once (default 2)")
    ap.add_argument(
        "--out", default=None, help="results file under reliability/results (default fuzz-gguf.json; none for a replay)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import logging

        logging.getLogger("llamacffi").setLevel(logging.CRITICAL)
        return serve(load_one)
    report = run(args.count, args.seed, args.timeout, args.replay, args.jobs)
    print(f"{report['mutants']} mutants in {report['seconds']} s: {report['outcomes']}")
    for f in report["findings"]:
        print(f"  seed {f['seed']}: {f['outcome']} ({f['model']}, {f['mutation']}): {f['detail']}")
    out = args.out if args.out is not None else ("" if args.replay else "fuzz-gguf.json")
    if out:
        print("wrote", write_json(out, report))
    return 1 if report["findings"] else 0
