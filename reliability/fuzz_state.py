"""Saved-state fuzzing: truncated and altered context states, loaded back into a live context.

A context decodes a prompt and saves its state three ways: the whole context (``state_save``), one sequence
(``seq_state_save``) and one sequence to a file (``seq_save_file``). Each case alters one of them (truncation at any
length, bit flips, 32- and 64-bit fields set to edge values, bytes appended, a zero fill, a state of another context
size or model) and loads it. A load must raise :class:`~llamacffi.StateError` or succeed; after a success the context
must still decode. Cases run in a worker process (see :mod:`reliability.worker`): a crash or a hang is a finding.
Which altered states llama.cpp accepts is reported by mutation, since it checks sizes and counts but not the values.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import write_json
from .worker import Worker, progress, serve

MODEL = "smollm2-135m"
OTHER = "gemma3-270m"
PROMPT = "A saved state holds the memory of a context: every token's keys and values"
EDGE = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**32, 2**63, 2**64 - 1]
TARGETS = ("state", "seq", "file")


def mutate(rng: random.Random, data: bytes, others: dict[str, bytes]) -> tuple[str, bytes]:
    """One altered copy of ``data`` and what was done to it."""
    kind = rng.choice(["truncate", "truncate", "bitflip", "bitflip", "field32", "field64", "append", "zero",
                       "foreign", "empty-ish"])  # fmt: skip
    buf = bytearray(data)
    if kind == "truncate":
        cut = rng.choice([rng.randrange(min(64, len(buf))), rng.randrange(len(buf)), len(buf) - rng.randint(1, 8)])
        return f"truncate to {cut} of {len(buf)}", bytes(buf[: max(0, cut)])
    if kind == "bitflip":
        offs = [
            rng.randrange(min(len(buf), 4096) if rng.random() < 0.7 else len(buf)) for _ in range(rng.randint(1, 8))
        ]
        for o in offs:
            buf[o] ^= 1 << rng.randrange(8)
        return f"bitflip at {offs[:4]}", bytes(buf)
    if kind in ("field32", "field64"):
        size = 4 if kind == "field32" else 8
        off = rng.randrange(0, min(len(buf), 4096) - size)
        value = rng.choice(EDGE) % (2 ** (8 * size))
        struct.pack_into("<I" if size == 4 else "<Q", buf, off, value)
        return f"{kind} at {off} = {value}", bytes(buf)
    if kind == "append":
        n = rng.choice([1, 7, 4096, 1 << 20])
        return f"append {n} bytes", bytes(buf) + rng.randbytes(n)
    if kind == "zero":
        start = rng.randrange(len(buf))
        end = min(len(buf), start + rng.choice([4, 64, 4096, len(buf)]))
        buf[start:end] = bytes(end - start)
        return f"zero {start}..{end}", bytes(buf)
    if kind == "foreign":
        name = rng.choice(sorted(others))
        return f"a state of {name}", others[name]
    return "one byte", bytes(buf[:1])


# ---- the worker --------------------------------------------------------------------------------------------------

_W: dict[str, Any] = {}


def _setup() -> None:
    import llamacffi
    from llamacffi import models

    model = llamacffi.Model.load(models.fetch(MODEL))
    ctx = llamacffi.Context(model, n_ctx=256, n_threads=1)
    tokens = model.vocab.tokenize(PROMPT)
    ctx.decode_tokens(tokens)
    folder = Path(tempfile.mkdtemp(prefix="llamacffi-state-"))
    ctx.seq_save_file(folder / "seq.bin", tokens)
    originals = {"state": ctx.state_save(), "seq": ctx.seq_state_save(0), "file": (folder / "seq.bin").read_bytes()}
    others: dict[str, bytes] = {}
    with llamacffi.Context(model, n_ctx=512, n_threads=2) as bigger:
        bigger.decode_tokens(tokens)
        others["n_ctx=512"] = bigger.state_save()
    with llamacffi.Model.load(models.fetch(OTHER)) as gemma, llamacffi.Context(gemma, n_ctx=256, n_threads=2) as g:
        g.decode_tokens(gemma.vocab.tokenize(PROMPT))
        others[OTHER] = g.state_save()
        others[OTHER + " seq"] = g.seq_state_save(0)
    _W.update(model=model, ctx=ctx, tokens=tokens, folder=folder, originals=originals, others=others)


def case(seed: int, originals: dict[str, bytes], others: dict[str, bytes]) -> tuple[str, str, bytes]:
    rng = random.Random(seed)
    target = TARGETS[seed % len(TARGETS)]
    what, data = mutate(rng, originals[target], others)
    return target, what, data


def run_case(line: str) -> tuple[str, str]:
    """Load one altered state; ``refused`` (StateError), ``accepted`` (and the context still decodes) or
    ``other:<type>``."""
    import numpy as np

    import llamacffi

    if not _W:
        _setup()
    ctx, tokens = _W["ctx"], _W["tokens"]
    target, what, data = case(int(line), _W["originals"], _W["others"])
    try:
        if target == "state":
            ctx.state_load(data)
        elif target == "seq":
            ctx.memory.seq_rm(0)
            ctx.seq_state_load(data, 0)
        else:
            path = _W["folder"] / "case.bin"
            path.write_bytes(data)
            ctx.memory.seq_rm(0)
            ctx.seq_load_file(path, 0)
        outcome = "accepted"
    except llamacffi.StateError as exc:
        outcome, what = "refused", f"{what}: {exc}"
    except Exception as exc:
        return f"other:{type(exc).__name__}", f"{target} {what}: {exc}"
    # whatever happened, the context must still work: cleared, it decodes again
    try:
        ctx.memory.clear()
        ctx.decode_tokens(tokens[:4])
        ctx.decode_token(int(np.argmax(ctx.logits())), 4)
    except Exception as exc:
        return f"other:after:{type(exc).__name__}", f"{target} {what}: {exc}"
    return f"{target}:{outcome}", what


def run(
    count: int, seed0: int, timeout: float, seeds: list[int] | None = None, log: Any = sys.stderr
) -> dict[str, Any]:
    todo = seeds if seeds is not None else list(range(seed0, seed0 + count))
    folder = Path(tempfile.mkdtemp(prefix="llamacffi-statefuzz-"))
    outcomes: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    findings: list[dict[str, Any]] = []
    start = time.monotonic()
    with Worker("fuzz-state", folder) as w:
        for n, seed in enumerate(todo):
            outcome, detail = w.ask(str(seed), timeout)
            outcomes[outcome] += 1
            if outcome.endswith(":accepted"):
                accepted[f"{outcome.split(':')[0]}: {detail.split(' ')[0]}"] += 1
            if outcome in ("crash", "hang") or outcome.startswith("other"):
                findings.append({"seed": seed, "outcome": outcome, "detail": detail})
                print(f"  {outcome.upper()} seed {seed}: {detail}", file=log, flush=True)
            progress(log, n + 1, len(todo), start, 250)
    return {
        "cases": len(todo),
        "first_seed": todo[0] if todo else None,
        "outcomes": dict(sorted(outcomes.items())),
        "accepted_by_mutation": dict(sorted(accepted.items())),
        "findings": findings,
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability fuzz-state", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1500, help="cases, a third per kind of saved state (default 1,500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", type=int, nargs="+", default=None, metavar="SEED")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--out", default="fuzz-state.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import logging

        logging.getLogger("llamacffi").setLevel(logging.CRITICAL)
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
        return serve(run_case)
    report = run(args.count, args.seed, args.timeout, args.replay)
    print(f"{report['cases']} cases in {report['seconds']} s: {report['outcomes']}")
    print(f"accepted: {report['accepted_by_mutation']}")
    for f in report["findings"]:
        print(f"  seed {f['seed']}: {f['outcome']}: {f['detail']}")
    if args.out and not args.replay:
        print("wrote", write_json(args.out, report))
    return 1 if report["findings"] else 0
