"""The run of ``python -m benchmarks``: the models' groups, side by side, then the report."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llamacffi
from llamacffi import models

from ..sides import micro, peer, raw_cpp, rss
from . import report, worker
from .common import GEN_PROMPT, GPU_LAYERS_ENV, Series, Unavailable, gpu_layers, interleaved, machine
from .ops import OPS

RESULTS = Path(__file__).resolve().parents[1] / "results"
CONCURRENCY_MODEL = "smollm2-135m"
SHORT_SPIN = "1000"  # GOMP_SPINCOUNT of the processes that share cores in the README's advice


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "pp": 64,
            "tg": 16,
            "gen": 16,
            "prefix": 100,
            "conc_tokens": 16,
            "streams": [1, 2, 4, 8],
            "micro_calls": 20,
            "decode_calls": 16,
            "rss_tokens": 16,
            "shared_tokens": 8,
        }
    return {
        "pp": 512,
        "tg": 128,
        "gen": 128,
        "prefix": 400,
        "conc_tokens": 128,
        "streams": [1, 2, 4, 8],
        "micro_calls": 200,
        "decode_calls": 128,
        "rss_tokens": 128,
        "shared_tokens": 32,
    }


def dump(groups: dict[str, Series], peer_status: str = peer.ABSENT) -> dict[str, Any]:
    """JSON of a group; a peer side that never ran reads as the peer's status."""
    out = {}
    for k, s in groups.items():
        error = peer_status if k.startswith("peer") and s.error == "absent" else s.error
        out[k] = {"summary": s.summary(), "error": error, "extra": s.extra}
    return out


def derived(series: Series, key: str) -> Series:
    """A series made of one per-repetition detail of another (e.g. the raw loop's generation-only rate)."""
    out = Series(values=[float(e[key]) for e in series.extra if key in e], error=series.error)
    return out


def start_peer(path: Path, threads: int, n_ctx: int, log: Any) -> tuple[worker.Remote | None, str]:
    if not peer.available():
        return None, peer.ABSENT
    try:
        p = worker.start("peer", path=str(path), threads=threads, n_ctx=n_ctx)
        return p, f"llama-cpp-python {p.info['version']}"
    except Unavailable as exc:
        return None, str(exc)
    except Exception as exc:  # a broken install is reported, not fatal
        log(f"  llama-cpp-python could not start: {exc}")
        return None, f"error: {exc}"[:300]


def bench_model(name: str, args: argparse.Namespace, sz: dict[str, Any], log: Any) -> dict[str, Any]:
    """Every group of one model. llamacffi's sides run in worker processes (the loops in one, the service in
    another) and the peer in a third; llama.cpp's programs run as they are."""
    path = models.fetch(name)
    t, reps = args.threads, args.reps
    res: dict[str, Any] = {"path": str(path)}
    streams = max(sz["streams"])
    workers: list[worker.Remote] = []
    try:
        lp = worker.start(
            "loops",
            path=str(path),
            threads=t,
            micro_calls=sz["micro_calls"],
            decode_calls=sz["decode_calls"],
            max_streams=streams,
        )
        workers.append(lp)
        res["n_vocab"], res["description"] = lp.info["n_vocab"], lp.info["description"]
        sv = worker.start("service", name=name, threads=t, context_size=1024, parallel=1, prefix_tokens=sz["prefix"])
        workers.append(sv)
        res["service_config"] = sv.info["config"]
        sv_huge = worker.start(
            "service", name=name, threads=t, context_size=1024, parallel=1, prefix_tokens=8, huge_pages=True
        )
        workers.append(sv_huge)
        res["huge_page_mib"] = sv_huge.info["huge_page_mib"]
        the_peer, peer_status = start_peer(path, t, 1024, log) if not args.no_peer else (None, "skipped (--no-peer)")
        if the_peer:
            workers.append(the_peer)
        res["peer"] = peer_status
        pm = the_peer.measure if the_peer else (lambda *a, **k: None)

        def bench(test: str, n: int) -> Callable[[], tuple[float, dict[str, Any]]]:
            return lambda: raw_cpp.llama_bench(path, t, test, n)

        log(f"  pp{sz['pp']}")
        pp = interleaved(
            {"llama-bench": bench("pp", sz["pp"]), "Batch": lp.measure("pp", n=sz["pp"]), "peer": pm("pp", n=sz["pp"])},
            args.headline_reps,
        )
        res["pp"] = dump(pp, peer_status)

        n = sz["gen"]
        log(f"  tg{sz['tg']} and generation of {n} tokens")
        tg = interleaved(
            {
                "llama-bench": bench("tg", sz["tg"]),
                "llama-simple": lambda: raw_cpp.llama_simple(path, t, n, GEN_PROMPT),
                "raw loop": lp.measure("raw_loop", prompt=GEN_PROMPT, n=n),
                "Pythonic loop": lp.measure("pythonic", n=sz["tg"]),
                "generate": sv.measure("generate", prompt=GEN_PROMPT, n=n),
                "generate, huge pages": sv_huge.measure("generate", prompt=GEN_PROMPT, n=n),
                "generate_stream": sv.measure("stream", prompt=GEN_PROMPT, n=n),
                "generate sampled": sv.measure("generate", prompt=GEN_PROMPT, n=n, sampled=True),
                "peer generate": pm("generate", prompt=GEN_PROMPT, n=n, sampled=False),
                "peer stream": pm("stream", prompt=GEN_PROMPT, n=n),
                "peer sampled": pm("generate", prompt=GEN_PROMPT, n=n, sampled=True),
            },
            args.headline_reps,
        )
        tg["raw loop (decodes only)"] = derived(tg["raw loop"], "gen_tps")
        res["tg"] = dump(tg, peer_status)

        log(f"  time to first token, {sz['prefix']}-token prompt cold and 90% shared")
        pair: dict[str, str] = {}

        def cold() -> tuple[float, dict[str, Any]]:
            value, extra = sv.call("ttft_cold")
            pair["cold"], pair["warm"] = extra.pop("cold_prompt"), extra.pop("warm_prompt")
            return float(value), extra

        ttft = interleaved(
            {
                "cold": cold,
                "warm": sv.measure("ttft_warm"),
                "peer cold": (lambda: tuple(the_peer.call("ttft", prompt=pair["cold"]))) if the_peer else None,
                "peer warm": (lambda: tuple(the_peer.call("ttft", prompt=pair["warm"]))) if the_peer else None,
            },
            reps,
        )
        res["ttft"] = dump(ttft, peer_status)

        log("  per-call microbenchmarks")
        res["micro"] = micro_group(lp, the_peer, peer_status, sz, reps)

        if name == CONCURRENCY_MODEL or args.concurrency_all:
            log(f"  concurrent streams {sz['streams']}")
            s8 = worker.start("service", name=name, threads=t, context_size=512, parallel=streams, prefix_tokens=16)
            workers.append(s8)
            sides: dict[str, Any] = {}
            for k in sz["streams"]:
                sides[f"service {k}"] = s8.measure("concurrent", k=k, n=sz["conc_tokens"])
                sides[f"decode {k}"] = lp.measure("decode_k", k=k, n=sz["conc_tokens"])
            if 4 in sz["streams"] and streams >= 7:
                # the service's slots need not be neighbours: sequences 0, 2, 4, 6 of the same context
                sides["decode 4 spread"] = lp.measure("decode_k", k=4, n=sz["conc_tokens"], stride=2)
            sides["llama-bench pp"] = lambda: raw_cpp.llama_bench_batches(
                path, t, sz["streams"], 2 if args.quick else 5
            )
            groups = interleaved(sides, reps)
            for k in sz["streams"]:
                groups[f"llama-bench pp{k}"] = derived(groups["llama-bench pp"], str(k))
            res["concurrency"] = dump(groups, peer_status)

            log(f"  two processes on the same cores, tg{sz['shared_tokens']} each")
            small = {"path": str(path), "threads": t, "micro_calls": 1, "decode_calls": 1, "max_streams": 1}
            spin = {"GOMP_SPINCOUNT": SHORT_SPIN}
            pair_default = (lp, worker.start("loops", **small))
            pair_short = (worker.start("loops", env=spin, **small), worker.start("loops", env=spin, **small))
            workers.extend([pair_default[1], *pair_short])
            res["shared_cores"] = dump(
                interleaved(shared_cores_sides(path, t, sz["shared_tokens"], pair_default, pair_short), reps),
                peer_status,
            )
    finally:
        for w in workers:
            w.close()

    log("  peak RSS")
    rss_sides: dict[str, Any] = {
        side: (lambda side=side: rss.measure(side, path, t, sz["rss_tokens"])) for side in rss.SIDES
    }
    if args.no_peer or not peer.available():
        rss_sides["peer"] = None
    res["rss_mib"] = dump(interleaved(rss_sides, args.rss_reps, warmup=0), peer_status)
    return res


def shared_cores_sides(
    path: Path,
    threads: int,
    n: int,
    pair_default: tuple[worker.Remote, worker.Remote],
    pair_short: tuple[worker.Remote, worker.Remote],
) -> dict[str, Any]:
    """One process decoding alone, and two at once on the same cores (aggregate tokens/s): llama-bench tg and the
    Pythonic loop, the loop also with libgomp's spin shortened in both processes. Two compute teams that each
    expect every core make their threads wait at each barrier for a partner that is not running."""

    def bench_pair() -> tuple[float, dict[str, Any]]:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda _: raw_cpp.llama_bench(path, threads, "tg", n)[0], range(2)))
        return sum(runs), {"each": runs}

    def loop_pair(pair: tuple[worker.Remote, worker.Remote]) -> Callable[[], tuple[float, dict[str, Any]]]:
        def run() -> tuple[float, dict[str, Any]]:
            sent = [w.send("pythonic", n=n) for w in pair]
            runs = [float(w.receive("pythonic", ok)[0]) for w, ok in zip(pair, sent, strict=False)]
            return sum(runs), {"each": runs}

        return run

    return {
        "llama-bench alone": lambda: raw_cpp.llama_bench(path, threads, "tg", n),
        "llama-bench x2": bench_pair,
        "Pythonic alone": pair_default[0].measure("pythonic", n=n),
        "Pythonic x2": loop_pair(pair_default),
        "Pythonic alone, short spin": pair_short[0].measure("pythonic", n=n),
        "Pythonic x2, short spin": loop_pair(pair_short),
    }


def micro_group(
    lp: worker.Remote, the_peer: worker.Remote | None, peer_status: str, sz: dict[str, Any], reps: int
) -> dict[str, Any]:
    """Interleaved rounds of llamacffi's per-call costs and the peer's equivalents, by operation."""
    ours: dict[str, Series] = {op: Series() for op in OPS}
    theirs: dict[str, Series] = {
        op: Series() for op in ("tokenize_1kb", "token_to_piece", "detokenize_100", "decode_1", "logits", "sampler")
    }
    peer_error = None if the_peer else peer_status

    def peer_round() -> dict[str, float] | None:
        nonlocal peer_error
        if the_peer is None or peer_error:
            return None
        try:
            got: dict[str, float] = the_peer.call(
                "micro",
                text=micro.TEXT_1KB,
                tokens=lp.info["ring"],
                calls=sz["micro_calls"],
                decode_calls=sz["decode_calls"],
            )[1]
            return got
        except Exception as exc:
            peer_error = f"error: {exc}"[:300]
            return None

    lp.call("micro_round")  # warm-up
    peer_round()
    for _ in range(reps):
        for op, v in lp.call("micro_round")[1].items():
            ours[op].values.append(v)
        for op, v in (peer_round() or {}).items():
            if op in theirs:
                theirs[op].values.append(v)
    for s in theirs.values():
        if not s.values:
            s.error = peer_error or "not measured"
    return {"llamacffi": dump(ours, peer_status), "peer": dump(theirs, peer_status)}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def run(args: argparse.Namespace) -> int:
    """The whole run of ``python -m benchmarks``: every model, then serving, then the report."""
    args.reps = args.reps or (2 if args.quick else 5)
    args.headline_reps = args.reps if args.quick else 2 * args.reps
    args.rss_reps = 1 if args.quick else 3
    sz = sizes(args.quick)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    llamacffi.set_log_level("ERROR")
    # Every side, in this process, the workers and llama.cpp's programs, reads the same choice.
    os.environ[GPU_LAYERS_ENV] = str(args.gpu_layers if args.gpu_layers is not None else gpu_layers())
    info = machine(args.threads)
    build = llamacffi.system_info()
    out: dict[str, Any] = {
        "quick": args.quick,
        "reps": args.reps,
        "headline_reps": args.headline_reps,
        "rss_reps": args.rss_reps,
        "sizes": sz,
        "machine": info,
        "build": build,
        "prompt": GEN_PROMPT,
        "models": {},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    for name in args.models:
        log(f"{name}")
        load0 = _load()
        out["models"][name] = bench_model(name, args, sz, log)
        out["models"][name]["loadavg"] = [load0, _load()]
    if not args.no_serving:
        from ..sides import serving

        log("serving")
        try:
            served = serving.run(args.quick, args.threads, peer=not args.no_peer, out_dir=args.out, log=log)
            out["serving"] = {"summary": served["summary"], "verdicts": served["verdicts"], "absent": served["absent"]}
        except Exception as exc:  # reported, never fatal to the rest of the run
            log(f"  serving failed: {exc}")
            out["serving"] = {"error": str(exc)[:300]}
    try:
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    stem = "quick" if args.quick else "latest"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = report.rows(out)
    out["rows"] = rows
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    chart_note = None if args.no_chart else report.chart(out, args.out / f"{stem}.png")
    if chart_note:
        print(chart_note, file=sys.stderr)
    md = report.markdown(out, rows, chart=None if chart_note or args.no_chart else f"{stem}.png")
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    log(f"done; wrote {args.out / stem}.json, .md" + ("" if chart_note or args.no_chart else ", .png"))
    return 0
