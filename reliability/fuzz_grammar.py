"""Grammar and JSON-schema fuzzing: generated GBNF grammars and JSON schemas never crash and never hang.

Each case is generated from its seed: a GBNF grammar (random rules with literals, escapes, character classes, token
references, groups and repetitions; deep nesting, left recursion, undefined rules, huge repetition counts, cut or
scrambled text) or a JSON schema (random nesting of types and keywords, ``$ref`` recursion, patterns, formats, bounds,
wrong keyword types, unsupported keywords), compiled with :func:`llamacffi.grammar.from_json_schema`. What compiles is
loaded into a :class:`NativeSampler` (llama.cpp's grammar) and a numpy :class:`Sampler` (the shared constraint), which
then sample up to 32 tokens from random logits. A case passes when it ends with a result or one of llamacffi's
errors (``LlamaError``) within ``--timeout`` seconds; a crash, a hang or another exception type is a finding.
Cases run in a worker process (see :mod:`reliability.worker`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import write_json
from .worker import Worker, progress, serve

MODEL = "smollm2-135m"
ESCAPES = ["\\n", "\\t", "\\\\", '\\"', "\\x41", "\\xff", "\\u00e9", "\\u4e2d", "\\U0001F600", "\\]", "\\-", "\\r"]
CHARS = "abcxyz019 _-.,{}[]:\"'é中😀\n\t"


# ---- GBNF --------------------------------------------------------------------------------------------------------


def _literal(rng: random.Random) -> str:
    body = "".join(rng.choice([rng.choice(CHARS.replace('"', "").replace("\n", "")), rng.choice(ESCAPES)])
                   for _ in range(rng.randint(1, 5)))  # fmt: skip
    return f'"{body}"'


def _charclass(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        a = rng.choice("abcdxyz0159AZ中é")
        parts.append(a if rng.random() < 0.5 else f"{a}-{rng.choice('fz9Z中😀')}")
    neg = "^" if rng.random() < 0.3 else ""
    return f"[{neg}{''.join(parts)}]"


def _element(rng: random.Random, rules: list[str], depth: int) -> str:
    r = rng.random()
    if r < 0.3:
        e = _literal(rng)
    elif r < 0.5:
        e = _charclass(rng)
    elif r < 0.65:
        e = rng.choice(rules)
    elif r < 0.7:
        e = rng.choice([".", f"<[{rng.randint(0, 60000)}]>", "<|im_end|>", "!<[2]>", f"<[{rng.randint(-5, 10**10)}]>"])
    elif depth < 2:
        e = "(" + _alternatives(rng, rules, depth + 1) + ")"
    else:
        e = _literal(rng)
    return e + rng.choice(
        ["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", f"{{{rng.randint(0, 40)},{rng.randint(40, 90)}}}"]
    )


def _alternatives(rng: random.Random, rules: list[str], depth: int) -> str:
    alts = [" ".join(_element(rng, rules, depth) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
    return " | ".join(alts)


def gbnf(rng: random.Random) -> tuple[str, str]:
    """A grammar text and its family."""
    family = rng.choice(["random", "random", "random", "nested", "left-recursion", "undefined", "repetition",
                         "scrambled", "cut", "bytes"])  # fmt: skip
    names = ["root"] + [f"r{i}" for i in range(rng.randint(0, 4))]
    text = "\n".join(f"{n} ::= {_alternatives(rng, names, 0)}" for n in names)
    if family == "nested":
        d = rng.choice([10, 100, 255, 256, 257, 1000, 20000])
        text = "root ::= " + "(" * d + '"a"' + ")" * d
    elif family == "left-recursion":
        text = rng.choice(['root ::= root "a" | "b"', 'root ::= x\nx ::= y "a"\ny ::= x | "b"', "root ::= root"])
    elif family == "undefined":
        text += f"\nroot2 ::= missing{rng.randint(0, 9)}"
        text = text.replace("root ::= ", "root ::= missing ", 1) if rng.random() < 0.5 else text
    elif family == "repetition":
        n = rng.choice([1000, 2000, 2001, 65535, 10**6, 10**12, 2**31, 2**64])
        text = f'root ::= "a"{{{n}}}' if rng.random() < 0.5 else f'root ::= ("ab" [0-9]?){{0,{n}}}'
    elif family == "scrambled":
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(chars) + 1)
            if rng.random() < 0.5 and chars:
                del chars[min(i, len(chars) - 1)]
            else:
                chars.insert(i, rng.choice('()[]{}|*+?"\\:=-^<>!.\n\x00'))
        text = "".join(chars)
    elif family == "cut":
        text = text[: rng.randrange(len(text) + 1)]
    elif family == "bytes":
        text = "".join(
            chr(rng.choice([rng.randint(0, 127), rng.randint(0x80, 0x10FFFF)])) for _ in range(rng.randint(0, 60))
        )
        text = text.replace("\ud800", "")
        text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
    return text, family


# ---- JSON schemas ------------------------------------------------------------------------------------------------

KEYWORD_VALUES: dict[str, list[Any]] = {
    "minLength": [0, 1, 5, -1, 2001, 10**9, "x", 1.5, None],
    "maxLength": [0, 3, 16, 2000, 2001, 10**9, -5, True],
    "minimum": [0, -1, 1.5, 1e308, -1e308, 10**30, "1", float("inf")],
    "maximum": [0, 10, 2.25, 1e-9, 10**30, None],
    "exclusiveMinimum": [0, 1, True, 0.1],
    "exclusiveMaximum": [100, False, -0.5],
    "minItems": [0, 1, 3, 2001, -1, "2"],
    "maxItems": [0, 2, 5, 2000, 10**6],
    "pattern": ["^[a-z]+$", "[0-9]{3}-[0-9]{4}", "(a|b)*c", "^$", "((((a))))", "[", "a{5,2}", "\\d+\\.\\d*", "(?=x)",
                ".*", "a{0,100000}", "[^\\x00-\\x1f]", "(a*)*b", "\\p{L}"],
    "format": ["date", "time", "date-time", "uuid", "email", "ipv4", 3],
    "multipleOf": [2, 0.5],
    "uniqueItems": [True, False],
    "additionalProperties": [True, False, {"type": "integer"}, "no"],
    "x-custom": [1],
    "title": ["T"],
    "unknownKeyword": [1],
    "not": [{"type": "string"}],
    "nullable": [True],
}  # fmt: skip
TYPES = ["string", "integer", "number", "boolean", "null", "object", "array", "strange", 3]


def schema(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON schema (often one the compiler must refuse)."""
    r = rng.random()
    if depth > 4 or r < 0.1:
        return rng.choice([{"type": rng.choice(TYPES)}, {}, True, False, {"const": rng.choice([1, "a", None, [1]])},
                           {"enum": rng.choice([[1, 2], ["a", "b", 1.5], [], [None, {"k": 1}]])}])  # fmt: skip
    kind = rng.choice(["object", "array", "string", "number", "integer", "anyOf", "oneOf", "allOf", "ref", "types"])
    out: dict[str, Any]
    if kind == "object":
        props = {f"p{i}": schema(rng, depth + 1) for i in range(rng.randint(0, 4))}
        out = {"type": "object", "properties": props}
        if props and rng.random() < 0.6:
            out["required"] = rng.sample(sorted(props), rng.randint(0, len(props))) + (
                ["ghost"] if rng.random() < 0.1 else []
            )
    elif kind == "array":
        out = {"type": "array", "items": schema(rng, depth + 1)}
        if rng.random() < 0.3:
            out["prefixItems"] = [schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    elif kind in ("anyOf", "oneOf", "allOf"):
        out = {kind: [schema(rng, depth + 1) for _ in range(rng.randint(0, 4))]}
    elif kind == "ref":
        node = {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}, "v": schema(rng, depth + 2)}}
        out = {"$defs": {"node": node}, "$ref": rng.choice(["#/$defs/node", "#/$defs/missing", "other.json#/x", "#"])}
    elif kind == "types":
        out = {"type": rng.sample(TYPES[:7], rng.randint(1, 3))}
    else:
        out = {"type": kind}
    for _ in range(rng.randint(0, 3)):
        key = rng.choice(list(KEYWORD_VALUES))
        out[key] = rng.choice(KEYWORD_VALUES[key])
    return out


def case(seed: int) -> tuple[str, str, Any]:
    """The case of a seed: ``("gbnf", family, text)`` or ``("schema", family, schema or JSON text)``."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        text, family = gbnf(rng)
        return "gbnf", family, text
    s = schema(rng)
    if rng.random() < 0.1:
        text = json.dumps(s)
        cut = rng.randrange(len(text) + 1)
        return "schema", "json-text-cut", text[:cut]
    return "schema", "generated", s


# ---- the worker --------------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def run_case(line: str) -> tuple[str, str]:
    """Compile, load and sample one case; ``("ok" | "refused:<error type>" | "other:<type>", message)``."""
    import numpy as np

    import llamacffi
    from llamacffi import grammar, models
    from llamacffi.sampling import NativeSampler, Sampler

    if "model" not in _STATE:
        _STATE["model"] = llamacffi.Model.load(models.fetch(MODEL), vocab_only=True)
    vocab = _STATE["model"].vocab
    seed = int(line)
    kind, _, payload = case(seed)
    rng = np.random.default_rng(seed)
    try:
        text = grammar.from_json_schema(payload) if kind == "schema" else payload
        sampled = 0
        with NativeSampler(vocab=vocab, grammar=text, seed=seed, temperature=0.8) as native:
            for _ in range(32):
                token = native.sample(rng.standard_normal(vocab.n_tokens).astype(np.float32))
                sampled += 1
                if vocab.is_eog(token):
                    break
        numpy_side = Sampler(vocab=vocab, grammar=text, seed=seed, temperature=0.8)
        history: list[int] = []
        for _ in range(8):
            token = numpy_side.sample(rng.standard_normal(vocab.n_tokens).astype(np.float32), history)
            history.append(token)
            if vocab.is_eog(token):
                break
        return "ok", f"{sampled} tokens"
    except llamacffi.LlamaError as exc:
        return f"refused:{type(exc).__name__}", str(exc)[:200]
    except (
        Exception
    ) as exc:  # the contract is a LlamaError (SchemaError, GrammarError, ...): anything else is a finding
        return f"other:{type(exc).__name__}", str(exc)[:200]


def run(
    count: int, seed0: int, timeout: float, seeds: list[int] | None = None, log: Any = sys.stderr
) -> dict[str, Any]:
    todo = seeds if seeds is not None else list(range(seed0, seed0 + count))
    folder = Path(tempfile.mkdtemp(prefix="llamacffi-grammar-"))
    outcomes: Counter[str] = Counter()
    families: Counter[str] = Counter()
    findings: list[dict[str, Any]] = []
    slowest = (0.0, -1)
    start = time.monotonic()
    with Worker("fuzz-grammar", folder) as w:
        for n, seed in enumerate(todo):
            kind, family, payload = case(seed)
            families[f"{kind}:{family}"] += 1
            t0 = time.monotonic()
            outcome, detail = w.ask(str(seed), timeout)
            slowest = max(slowest, (time.monotonic() - t0, seed))
            outcomes[f"{kind}:{outcome}"] += 1
            if outcome in ("crash", "hang") or outcome.startswith("other:"):
                text = payload if isinstance(payload, str) else json.dumps(payload)
                findings.append({"seed": seed, "kind": kind, "family": family, "outcome": outcome, "detail": detail,
                                 "case": text[:500]})  # fmt: skip
                print(f"  {outcome.upper()} seed {seed} ({kind} {family}): {detail}", file=log, flush=True)
            progress(log, n + 1, len(todo), start, 500)
    return {
        "cases": len(todo),
        "first_seed": todo[0] if todo else None,
        "timeout_s": timeout,
        "outcomes": dict(sorted(outcomes.items())),
        "families": dict(sorted(families.items())),
        "slowest_case_s": round(slowest[0], 2),
        "slowest_seed": slowest[1],
        "findings": findings,
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability fuzz-grammar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="cases, half grammars, half schemas (default 2,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", type=int, nargs="+", default=None, metavar="SEED")
    ap.add_argument("--timeout", type=float, default=60, help="seconds a case may take before it counts as a hang")
    ap.add_argument("--out", default="fuzz-grammar.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import logging

        logging.getLogger("llamacffi").setLevel(logging.CRITICAL)
        return serve(run_case)
    report = run(args.count, args.seed, args.timeout, args.replay)
    print(f"{report['cases']} cases in {report['seconds']} s (slowest {report['slowest_case_s']} s): "
          f"{report['outcomes']}")  # fmt: skip
    for f in report["findings"]:
        print(f"  seed {f['seed']}: {f['outcome']} ({f['kind']} {f['family']}): {f['detail']}")
    if args.out and not args.replay:
        print("wrote", write_json(args.out, report))
    return 1 if report["findings"] else 0
