"""Serving: ``llamacffi serve`` beside llama.cpp's ``llama-server`` (same tree and flags) and, when installed,
llama-cpp-python's server, under 1, 4, 8 and 16 concurrent streaming chat clients.

Every server serves the same model file with the same slots, context per slot and threads, all started before the
first measurement and idle while another is measured. The service driven in a process of its own without HTTP is
measured beside them: the ceiling of what ``llamacffi serve`` can reach. For each repetition and each client count,
the sides run one after another (A B C D, then the next count), each driven by one asyncio client that sends that many
streaming chat requests of ``tokens`` greedy tokens at once, each with its own prompt. Aggregate tokens/s is the
completion tokens of all requests over the time from the first request sent to the last stream ended; time to first
token and inter-token latency are taken from every request and every gap between two content chunks.

``python -m benchmarks.sides.serving [--quick]`` writes ``benchmarks/results/serving[-quick].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamacffi import models

from ..harness import targets
from ..harness.common import machine
from .serving_sides import IN_PROCESS, MODEL, Side, start_sides

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Targets, as ratios from one run (llamacffi serve over llama-server, or over llama-cpp-python's server).
TARGETS = {
    "tps_vs_server": targets.SERVING_TPS_VS_SERVER,
    "tps_vs_peer": targets.SERVING_TPS_VS_PEER,
    "ttft_p50_vs_server_max": targets.SERVING_TTFT_P50_VS_SERVER_MAX,
    "itl_p99_vs_server_max": targets.SERVING_ITL_P99_VS_SERVER_MAX,
}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def measure(
    sides: list[Side], levels: list[int], tokens: int, reps: int, log: Callable[[str], None]
) -> dict[str, dict[int, dict[str, Any]]]:
    """Interleaved rounds after one warm-up round per side; per side and client count: every repetition's
    tokens/s, and the latencies of all of them."""
    for side in sides:
        try:
            side.round(2, min(tokens, 16))
        except Exception as exc:
            log(f"  warm-up of {side.name} failed: {exc!r}")
    out: dict[str, dict[int, dict[str, Any]]] = {s.name: {} for s in sides}
    for rep in range(reps):
        for clients in levels:
            for side in sides:
                cell = out[side.name].setdefault(
                    clients, {"tps": [], "ttft": [], "gaps": [], "errors": [], "prompt_tokens": []}
                )
                try:
                    r = side.round(clients, tokens)
                except Exception as exc:  # reported in the results, never fatal to the other sides
                    cell["errors"].append(repr(exc)[:200])
                    log(f"  rep {rep + 1}/{reps}, {clients:2d} clients, {side.name}: failed: {exc!r}")
                    continue
                cell["tps"].append(r["tps"])
                cell["ttft"] += r["ttft"]
                cell["gaps"] += r["gaps"]
                cell["prompt_tokens"].append(r["prompt_tokens"])
                log(f"  rep {rep + 1}/{reps}, {clients:2d} clients, {side.name}: {r['tps']:.1f} tokens/s")
    return out


def summarize(raw: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for side, levels in raw.items():
        for clients, cell in levels.items():
            if not cell["tps"]:
                continue
            out.setdefault(side, {})[str(clients)] = {
                "tps": statistics.median(cell["tps"]),
                "tps_all": cell["tps"],
                "ttft_p50": _pct(cell["ttft"], 0.5),
                "ttft_p99": _pct(cell["ttft"], 0.99),
                "itl_p50": _pct(cell["gaps"], 0.5),
                "itl_p99": _pct(cell["gaps"], 0.99),
                "errors": cell["errors"],
                "prompt_tokens": max(cell["prompt_tokens"]),
            }
    return out


def ratios(raw: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """llamacffi serve over each other side: tokens/s as the median of per-repetition ratios, latencies as the
    ratio of the percentiles."""
    ours = raw.get("llamacffi serve", {})
    out: dict[str, dict[str, float | None]] = {}
    for other, key in (("llama-server", "server"), ("llama-cpp-python server", "peer"), (IN_PROCESS, "ceiling")):
        theirs = raw.get(other)
        if not theirs:
            continue
        for clients, cell in ours.items():
            if clients not in theirs:
                continue
            t = theirs[clients]
            r = out.setdefault(str(clients), {})
            pairs = [a / b for a, b in zip(cell["tps"], t["tps"], strict=False)]
            r[f"tps_vs_{key}"] = statistics.median(pairs) if pairs else None
            for name, values, q in (("ttft_p50", "ttft", 0.5), ("itl_p99", "gaps", 0.99)):
                a, b = _pct(cell[values], q), _pct(t[values], q)
                r[f"{name}_vs_{key}"] = a / b if a and b else None
    return out


def verdicts(rat: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    rows = []
    for target, per_level in TARGETS.items():
        at_most = target.endswith("_max")
        key = target[:-4] if at_most else target
        for clients, limit in per_level.items():
            value = rat.get(str(clients), {}).get(key)
            met = None if value is None else (value <= limit if at_most else value >= limit)
            rows.append(
                {
                    "target": f"{key} at {clients} client{'s' if clients > 1 else ''} "
                    f"{'<=' if at_most else '>='} {limit}",
                    "value": value,
                    "met": met,
                }
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    summ, rows = result["summary"], result["verdicts"]
    levels = sorted({int(c) for s in summ.values() for c in s})
    lines = [
        f"# Serving: {result['model']}, {result['parallel']} slots, {result['threads']} threads, "
        f"{result['tokens']} greedy tokens per request, {result['reps']} repetitions",
        "",
        "| side | clients | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | inter-token p50 (ms) | inter-token p99 (ms) "
        "| prompt tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{1000 * v:.1f}"

    for side, cells in summ.items():
        for c in levels:
            cell = cells.get(str(c))
            if cell:
                lines.append(
                    f"| {side} | {c} | {cell['tps']:.1f} | {ms(cell['ttft_p50'])} | {ms(cell['ttft_p99'])} "
                    f"| {ms(cell['itl_p50'])} | {ms(cell['itl_p99'])} | {cell.get('prompt_tokens', '-')} |"
                )
    lines += [
        "",
        "Prompt tokens: those of one round's requests together, as each side counted them (the same conversations, "
        "so equal counts mean the same prompts).",
        f'Ratios against "{IN_PROCESS}" (the ceiling, no HTTP): tokens/s '
        + ", ".join(
            f"{c} client{'s' if int(c) > 1 else ''} {v:.3f}×"
            for c, r in sorted(result["ratios"].items(), key=lambda x: int(x[0]))
            if (v := r.get("tps_vs_ceiling")) is not None
        )
        + ".",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.3f}×"
        verdict = "not measured" if r["met"] is None else "met" if r["met"] else "NOT met"
        lines.append(f"| {r['target']} | {value} | {verdict} |")
    for name, why in result["absent"].items():
        lines.append(f"\n{name}: {why}")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install '.[bench]')"
    fig, ax = plt.subplots(figsize=(6, 4))
    for side, cells in result["summary"].items():
        xs = sorted(int(c) for c in cells)
        ax.plot(xs, [cells[str(x)]["tps"] for x in xs], marker="o", label=side)
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate generated tokens/s")
    ax.set_title(f"Serving {result['model']} ({result['parallel']} slots, {result['threads']} threads)")
    ax.set_xticks(sorted({int(c) for s in result["summary"].values() for c in s}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def run(
    quick: bool,
    threads: int = 2,
    parallel: int = 8,
    ctx: int = 512,
    reps: int | None = None,
    peer: bool = True,
    out_dir: Path = RESULTS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    levels = [1, 4] if quick else [1, 4, 8, 16]
    tokens = 16 if quick else 128
    reps = reps or (1 if quick else 5)
    path = models.fetch(MODEL)
    sides, absent = start_sides(path, threads, parallel, ctx, peer, log)
    try:
        raw = measure(sides, levels, tokens, reps, log)
    finally:
        for s in sides:
            s.stop()
    rat = ratios(raw)
    result = {
        "model": MODEL,
        "threads": threads,
        "parallel": parallel,
        "ctx_per_slot": ctx,
        "tokens": tokens,
        "reps": reps,
        "levels": levels,
        "quick": quick,
        "machine": machine(threads),
        "absent": absent,
        "summary": summarize(raw),
        "ratios": rat,
        "verdicts": verdicts(rat),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    stem = "serving-quick" if quick else "serving"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    note = chart(result, out_dir / f"{stem}.png")
    if note:
        log(note)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sides.serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 16 tokens, one repetition")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512, help="context per slot")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    result = run(args.quick, args.threads, args.parallel, args.ctx, args.reps, not args.no_peer, args.out, log)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
