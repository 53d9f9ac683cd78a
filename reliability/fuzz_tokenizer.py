"""Differential tokenizer fuzzing: llamacffi's ``Vocab.tokenize`` against llama.cpp's own programs, same tree.

Generated strings (random code points across all planes, combining marks, emoji sequences, control characters,
long whitespace runs, text around the model's special-token strings) are tokenized with ``parse_special`` off and
on by both sides: the token ids must be identical. Then each string's round trip (tokenize without BOS, detokenize
rendering special tokens) must hold in llamacffi wherever it holds in llama.cpp. llama.cpp's side is
``llama-server``'s ``/tokenize`` and ``/detokenize`` for every string, and ``llama-tokenize --stdin --ids`` itself
for a sample. Surrogate code points are not generated (they cannot be encoded as UTF-8, and ``tokenize`` refuses
them).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import write_json
from .rawserver import RawServer

MODELS = ("smollm2-135m", "gemma3-270m")
COMBINING = [(0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F)]
EMOJI = ["😀", "👍", "🏳", "👩", "👨", "👧", "❤", "🔥", "🇫", "🇷", "🇯", "🇵", "1", "#", "🧑", "🏽", "🦀", "✈"]
JOINERS = ["\u200d", "\ufe0f", "\ufe0e", "\u20e3", "\U0001f3fb", "\U0001f3ff", "\U000e0067", "\U000e007f"]
CONTROLS = [chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u200b", "\u200c", "\u200e", "\u200f", "\u2028", "\u2029", "\ufeff", "\ufffd", "\ufffe", "\uffff", "\u202e",
]  # fmt: skip
SPACES = [" ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\v", "\f"]
WORDS = ["hello", "Hello", "world", "the", "ÉTÉ", "naïve", "日本語", "中文", "한국어", "Ελληνικά", "русский", "עברית",
         "العربية", "हिन्दी", "ไทย", "123", "3.14", "1e-9", "x+=1", "def f():", "{\"a\": [1, 2]}", "'s", "n't",
         "https://x.y/z?q=1", "user@mail", "¯\\_(ツ)_/¯", "Ⅻ", "ﬁ", "ß", "İ", "ǅ"]  # fmt: skip
# Planes: BMP (no surrogates), SMP, SIP, TIP, SSP (tags), the private use planes.
PLANES = [(0x20, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x1FFFF), (0x20000, 0x2FFFF), (0x30000, 0x3FFFF),
          (0xE0000, 0xE0FFF), (0xF0000, 0x10FFFF)]  # fmt: skip


def _codepoint(rng: random.Random) -> str:
    lo, hi = rng.choices(PLANES, weights=[50, 10, 20, 5, 3, 5, 7])[0]
    return chr(rng.randint(lo, hi))


def generate(rng: random.Random, specials: list[str]) -> tuple[str, str]:
    """One test string and the name of the family it comes from."""
    family = rng.choice(["planes", "combining", "emoji", "controls", "whitespace", "special", "mixed"])
    pieces: list[str] = []
    if family == "planes":
        pieces = [_codepoint(rng) for _ in range(rng.randint(1, 40))]
    elif family == "combining":
        for _ in range(rng.randint(1, 6)):
            pieces.append(rng.choice("aeoAZnı" + "가ㄱक") if rng.random() < 0.8 else _codepoint(rng))
            for _ in range(rng.randint(1, 8)):
                lo, hi = rng.choice(COMBINING)
                pieces.append(chr(rng.randint(lo, hi)))
    elif family == "emoji":
        for _ in range(rng.randint(1, 10)):
            pieces.append(rng.choice(EMOJI))
            if rng.random() < 0.6:
                pieces.append(rng.choice(JOINERS))
    elif family == "controls":
        pieces = [rng.choice(CONTROLS) if rng.random() < 0.6 else rng.choice(WORDS) for _ in range(rng.randint(1, 20))]
    elif family == "whitespace":
        for _ in range(rng.randint(1, 4)):
            pieces.append(rng.choice(SPACES) * rng.choice([1, 2, 3, 7, 16, 64, 300]))
            if rng.random() < 0.7:
                pieces.append(rng.choice(WORDS))
    elif family == "special":
        for _ in range(rng.randint(1, 6)):
            s = rng.choice(specials)
            r = rng.random()
            if r < 0.15:
                s = s[: rng.randint(1, max(1, len(s) - 1))]  # a cut special string
            elif r < 0.25:
                s = s.upper()
            pieces.append(s)
            pieces.append(rng.choice(["", " ", "\n", rng.choice(WORDS), rng.choice(WORDS) + " ", _codepoint(rng)]))
    else:
        for _ in range(rng.randint(1, 12)):
            pieces.append(rng.choice([rng.choice(WORDS), rng.choice(SPACES), _codepoint(rng), rng.choice(EMOJI)]))
    return "".join(pieces), family


def special_strings(vocab: Any) -> list[str]:
    """The texts of the model's control tokens (``<|im_start|>``, ``<start_of_turn>``, ...), up to 64 of them."""
    found = [vocab.text(t) for t in range(vocab.n_tokens) if vocab.is_control(t)]
    found = [s for s in found if s]
    return sorted(set(found))[:64] or ["<s>", "</s>"]


def via_llama_tokenize(binary: Path, model: Path, text: str, parse_special: bool, add_bos: bool) -> list[int]:
    """Token ids from ``llama-tokenize --stdin --ids`` (no escape processing, as the bytes are)."""
    args = [str(binary), "-m", str(model), "--stdin", "--ids", "--log-disable", "--no-escape"]
    if not parse_special:
        args.append("--no-parse-special")
    if not add_bos:
        args.append("--no-bos")
    out = subprocess.run(args, input=text.encode(), capture_output=True, check=True, timeout=120).stdout
    line = out.decode().strip().splitlines()[-1]
    return [int(t) for t in line.strip("[]").split(",") if t.strip()]


def fuzz_model(name: str, count: int, seed: int, sample: int, log: Any = None) -> dict[str, Any]:
    """Compare ``count`` strings on one model; return the figures and the first mismatches."""
    import llamacffi
    from llamacffi import models, raw_tools

    path = models.fetch(name)
    rng = random.Random(f"{seed}:{name}")
    families: Counter[str] = Counter()
    mismatches: list[dict[str, Any]] = []
    roundtrip = Counter[str]()
    start = time.monotonic()
    with (
        llamacffi.Model.load(path, vocab_only=True) as model,
        RawServer(raw_tools.require("llama-server"), path) as srv,
    ):
        vocab = model.vocab
        specials = special_strings(vocab)
        add = vocab.add_bos
        strings = []
        for i in range(count):
            text, family = generate(rng, specials)
            families[family] += 1
            strings.append(text)
            for parse in (False, True):
                ours = vocab.tokenize(text, add_special=add, parse_special=parse).tolist()
                theirs = srv.tokenize(text, add_special=add, parse_special=parse)
                if ours != theirs and len(mismatches) < 20:
                    mismatches.append({"i": i, "family": family, "parse_special": parse, "text": text,
                                       "llamacffi": ours[:40], "llama.cpp": theirs[:40]})  # fmt: skip
                roundtrip["compared"] += 1
                roundtrip["identical"] += ours == theirs
            toks = vocab.tokenize(text, add_special=False, parse_special=True)
            ours_back = vocab.detokenize_bytes(toks, unparse_special=True).decode("utf-8", "replace")
            theirs_back = srv.detokenize(toks.tolist())
            cpp_ok, our_ok = theirs_back == text, ours_back == text
            roundtrip["cpp_roundtrips"] += cpp_ok
            roundtrip["ours_roundtrips"] += our_ok
            if cpp_ok and not our_ok:
                roundtrip["ours_broken_where_cpp_holds"] += 1
                if len(mismatches) < 20:
                    mismatches.append({"i": i, "family": family, "roundtrip": True, "text": text, "ours": ours_back})
            if log and (i + 1) % 1000 == 0:
                print(f"  {name}: {i + 1}/{count} strings, {time.monotonic() - start:.0f} s", file=log, flush=True)
        checked = _sample_llama_tokenize(raw_tools.require("llama-tokenize"), path, vocab, strings[:sample], add)
    return {
        "strings": count,
        "comparisons": roundtrip["compared"],
        "identical_ids": roundtrip["identical"],
        "roundtrip_llama_cpp": roundtrip["cpp_roundtrips"],
        "roundtrip_llamacffi": roundtrip["ours_roundtrips"],
        "roundtrip_broken_where_llama_cpp_holds": roundtrip["ours_broken_where_cpp_holds"],
        "families": dict(sorted(families.items())),
        "llama_tokenize_sample": checked,
        "mismatches": mismatches,
        "seconds": round(time.monotonic() - start, 1),
    }


def _sample_llama_tokenize(binary: Path, path: Path, vocab: Any, strings: list[str], add: bool) -> dict[str, Any]:
    """The first strings again, through ``llama-tokenize`` itself (a process each, two at a time)."""
    jobs = [(s, parse) for s in strings for parse in (False, True)]

    def one(job: tuple[str, bool]) -> tuple[str, bool, bool]:
        text, parse = job
        ours = vocab.tokenize(text, add_special=add, parse_special=parse).tolist()
        return text, parse, ours == via_llama_tokenize(binary, path, text, parse, add)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, jobs))
    bad = [{"text": t, "parse_special": p} for t, p, ok in results if not ok]
    return {"comparisons": len(results), "identical_ids": len(results) - len(bad), "mismatches": bad[:10]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability fuzz-tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="strings per model (default 10,000)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample", type=int, default=200, help="strings also checked with llama-tokenize (default 200)")
    ap.add_argument("--out", default="fuzz-tokenizer.json")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"seed": args.seed}
    failed = False
    for name in args.models:
        r = fuzz_model(name, args.count, args.seed, args.sample, log=sys.stderr)
        report[name] = r
        bad = (r["comparisons"] - r["identical_ids"]) + r["roundtrip_broken_where_llama_cpp_holds"]
        bad += r["llama_tokenize_sample"]["comparisons"] - r["llama_tokenize_sample"]["identical_ids"]
        failed |= bad > 0
        print(f"{'ok  ' if not bad else 'FAIL'} {name}: {r['identical_ids']}/{r['comparisons']} identical "
              f"(llama-tokenize sample {r['llama_tokenize_sample']['identical_ids']}/"
              f"{r['llama_tokenize_sample']['comparisons']}); round trip llama.cpp {r['roundtrip_llama_cpp']}, "
              f"llamacffi {r['roundtrip_llamacffi']}, broken where llama.cpp holds "
              f"{r['roundtrip_broken_where_llama_cpp_holds']}; {r['seconds']} s")  # fmt: skip
        for m in r["mismatches"][:5]:
            print("   ", m)
    if args.out:
        print("wrote", write_json(args.out, report))
    return 1 if failed else 0
