"""The report: rows with their ratios and targets, the Markdown table, the chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import targets as T
from .ops import OPS
from .stats import paired
from .targets import PEER

# ---- reading the results ------------------------------------------------------------------------------------------


def _side(group: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """``{"summary", "error"}`` of a side, or None when the group or side is missing."""
    if group is None:
        return None
    return group.get(name)


def _values(side: dict[str, Any] | None) -> list[float]:
    s = side and side.get("summary")
    return list(s["values"]) if s else []


def _paired(num: dict[str, Any] | None, den: dict[str, Any] | None) -> dict[str, float] | None:
    return paired(_values(num), _values(den))


def _medians(num: dict[str, Any] | None, den: dict[str, Any] | None) -> dict[str, float] | None:
    """Ratio of medians, for sides that did not run side by side (no pairs)."""
    a, b = _values(num), _values(den)
    if not a or not b or not statistics.median(b):
        return None
    r = statistics.median(a) / statistics.median(b)
    return {"median": r, "min": r, "max": r, "n": 1}


# ---- rows -----------------------------------------------------------------------------------------------------------


def _row(
    model: str,
    what: str,
    unit: str,
    ref: dict[str, Any] | None,
    ours: dict[str, Any] | None,
    peer: dict[str, Any] | None,
    *,
    ref_ratio: dict[str, float] | None = None,
    target: str = "",
    judge: Any = None,
    scale: float = 1.0,
    short: str = "",
) -> dict[str, Any]:
    def cell(side: dict[str, Any] | None) -> dict[str, Any] | None:
        if side is None:
            return None
        s = side.get("summary")
        if not s:
            return {"error": side.get("error") or "not measured"}
        return {"median": s["median"] * scale, "min": s["min"] * scale, "max": s["max"] * scale, "n": s["n"]}

    row: dict[str, Any] = {
        "model": model,
        "measurement": what,
        "unit": unit,
        "reference": cell(ref),
        "llamacffi": cell(ours),
        "peer": cell(peer),
        "ratio_reference": ref_ratio if ref_ratio is not None else _paired(ours, ref),
        "ratio_peer": _paired(ours, peer),
        "target": target,
    }
    row["status"] = judge(row) if judge else ""
    row["short"] = short
    return row


def _missing(row: dict[str, Any], key: str) -> str | None:
    c = row[key]
    if c is None or "error" in c:
        return str((c or {}).get("error", "not measured"))
    return None


def _unmeasured(row: dict[str, Any]) -> str | None:
    """The status of a target whose llamacffi side, reference or ratio is missing; None when all are there."""
    why = _missing(row, "llamacffi") or _missing(row, "reference")
    return f"not measured: {why}" if why or row["ratio_reference"] is None else None


def _verdict(checks: tuple[tuple[str, bool], ...]) -> str:
    """ "met", or "NOT met (...)" naming the checks that failed."""
    failed = [name for name, ok in checks if not ok]
    return "NOT met (" + ", ".join(failed) + ")" if failed else "met"


def _ratio_judge(ok: Any) -> Any:
    """A judge of the ratio to the reference: ``ok(median)`` tells whether the target is met."""

    def judge(row: dict[str, Any]) -> str:
        return _unmeasured(row) or ("met" if ok(row["ratio_reference"]["median"]) else "NOT met")

    return judge


def _at_least(limit: float) -> Any:
    return _ratio_judge(lambda r: r >= limit)


def _at_most(limit: float) -> Any:
    return _ratio_judge(lambda r: r <= limit)


def _service_judge(row: dict[str, Any]) -> str:
    unmeasured = _unmeasured(row)
    if unmeasured:
        return unmeasured
    vs_cpp = row["ratio_reference"]["median"] >= T.SERVICE_GENERATE
    peer_why = _missing(row, "peer")
    if peer_why or row["ratio_peer"] is None:
        return ("met" if vs_cpp else "NOT met") + f" vs llama.cpp; vs {PEER}: {peer_why}"
    vs_peer = row["ratio_peer"]["median"] >= T.SERVICE_VS_PEER
    status = _verdict((("vs llama.cpp", vs_cpp), (f"vs {PEER}", vs_peer)))
    if not vs_peer:
        # The C program itself over the peer: what a binding with no overhead at all would measure.
        ceiling = row["reference"]["median"] / row["peer"]["median"]
        status += f"; llama-bench itself is {ceiling:.3f}× {PEER} here"
    return status


def _sampler_judge(limit_us: float) -> Any:
    def judge(row: dict[str, Any]) -> str:
        return _unmeasured(row) or _verdict(
            (
                (f"> {limit_us:.0f} µs", row["llamacffi"]["median"] <= limit_us),
                ("not faster than NativeSampler", row["ratio_reference"]["median"] < 1.0),
            )
        )

    return judge


def rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    sz = out["sizes"]
    pp_n, tg_n, gen_n = sz["pp"], sz["tg"], sz["gen"]
    result: list[dict[str, Any]] = []
    for name, res in out["models"].items():
        pp, tg, ttft = res.get("pp"), res.get("tg"), res.get("ttft")
        bench_tg = _side(tg, "llama-bench")
        add = result.append
        add(
            _row(
                name,
                f"pp{pp_n}: one Batch decode vs llama-bench pp{pp_n}",
                "tokens/s",
                _side(pp, "llama-bench"),
                _side(pp, "Batch"),
                _side(pp, "peer"),
                target=f"≥ {T.PP_BATCH}×",
                judge=_at_least(T.PP_BATCH),
                short=f"pp via Batch ≥ {T.PP_BATCH}× llama-bench pp{pp_n}",
            )
        )
        add(
            _row(
                name,
                f"tg{tg_n}: Pythonic loop (decode_token, logits, argmax, StreamDecoder) vs llama-bench tg{tg_n}",
                "tokens/s",
                bench_tg,
                _side(tg, "Pythonic loop"),
                None,
                target=f"≥ {T.TG_PYTHONIC}×",
                judge=_at_least(T.TG_PYTHONIC),
                short=f"Pythonic tg loop ≥ {T.TG_PYTHONIC}× llama-bench tg{tg_n}",
            )
        )
        add(
            _row(
                name,
                f"tg{tg_n}: raw-layer loop (llama_decode, llama_batch_get_one, argmax), one-token decodes "
                f"vs llama-bench tg{tg_n}",
                "tokens/s",
                bench_tg,
                _side(tg, "raw loop (decodes only)"),
                None,
            )
        )
        add(
            _row(
                name,
                f"greedy {gen_n} tokens, llama-simple's loop and timing: raw layer vs llama-simple (C)",
                "tokens/s",
                _side(tg, "llama-simple"),
                _side(tg, "raw loop"),
                None,
            )
        )
        add(
            _row(
                name,
                f"service generate, greedy {gen_n} tokens vs llama-bench tg{tg_n}",
                "tokens/s",
                bench_tg,
                _side(tg, "generate"),
                _side(tg, "peer generate"),
                target=f"≥ {T.SERVICE_GENERATE}×; ≥ {T.SERVICE_VS_PEER}× {PEER}",
                judge=_service_judge,
                short=f"service generate, greedy {gen_n}: ≥ {T.SERVICE_GENERATE}× llama-bench tg{tg_n}, "
                f"≥ {T.SERVICE_VS_PEER}× {PEER}",
            )
        )
        huge = res.get("huge_page_mib")
        add(
            _row(
                name,
                f"service generate, greedy {gen_n} tokens, weights in huge pages (huge_pages=True, "
                f"{_num(huge) if huge is not None else '?'} MiB of them) vs llama-bench tg{tg_n} (its default, "
                f"a mapped file)",
                "tokens/s",
                bench_tg,
                _side(tg, "generate, huge pages"),
                _side(tg, "peer generate"),
                target=f"≥ {T.SERVICE_GENERATE}×; ≥ {T.SERVICE_VS_PEER}× {PEER}",
                judge=_service_judge,
                short=f"service generate with huge pages, greedy {gen_n}: ≥ {T.SERVICE_GENERATE}× llama-bench "
                f"tg{tg_n}, ≥ {T.SERVICE_VS_PEER}× {PEER}",
            )
        )
        add(
            _row(
                name,
                f"service generate_stream, greedy {gen_n} tokens, first chunk to end, vs llama-bench tg{tg_n}",
                "tokens/s",
                bench_tg,
                _side(tg, "generate_stream"),
                _side(tg, "peer stream"),
            )
        )
        add(
            _row(
                name,
                f"service generate, sampled {gen_n} tokens (temp 0.8, top-k 40, top-p 0.95, min-p 0.05, "
                f"seed) vs llama-bench tg{tg_n}",
                "tokens/s",
                bench_tg,
                _side(tg, "generate sampled"),
                _side(tg, "peer sampled"),
            )
        )
        add(
            _row(
                name,
                f"time to first token, cold {sz['prefix']}-token prompt",
                "ms",
                None,
                _side(ttft, "cold"),
                _side(ttft, "peer cold"),
                scale=1e3,
            )
        )
        add(
            _row(
                name,
                "time to first token, 90% of the prompt shared with the previous request vs cold",
                "ms",
                _side(ttft, "cold"),
                _side(ttft, "warm"),
                _side(ttft, "peer warm"),
                scale=1e3,
                target=f"≤ {T.TTFT_WARM_MAX}×",
                judge=_at_most(T.TTFT_WARM_MAX),
                short=f"time to first token, 90% shared ≤ {T.TTFT_WARM_MAX:.0%} of cold",
            )
        )
        m = res.get("micro")
        if m:
            ours, theirs = m["llamacffi"], m["peer"]
            n_vocab = res.get("n_vocab", 0)
            for op in ("tokenize_1kb", "token_to_piece", "detokenize_100"):
                add(_row(name, OPS[op], "µs/call", None, ours.get(op), theirs.get(op)))
            add(
                _row(
                    name,
                    f"{OPS['decode_1']} vs llama-bench tg{tg_n} (µs/token)",
                    "µs/call",
                    _inverse_us(bench_tg),
                    ours.get("decode_1"),
                    theirs.get("decode_1"),
                    ref_ratio=_medians(ours.get("decode_1"), _inverse_us(bench_tg)),
                )
            )
            add(_row(name, OPS["logits"], "µs/call", None, ours.get("logits"), theirs.get("logits")))
            limit = T.sampler_limit_us(n_vocab)
            add(
                _row(
                    name,
                    f"numpy Sampler vs NativeSampler, top-k 40 + temp, {n_vocab:,} logits",
                    "µs/call",
                    ours.get("native_sampler"),
                    ours.get("sampler"),
                    theirs.get("sampler"),
                    target=f"≤ {limit:.0f} µs and < 1×",
                    judge=_sampler_judge(limit),
                    short=f"numpy Sampler ≤ {limit:.0f} µs at {n_vocab:,} and faster than NativeSampler",
                )
            )
        conc = res.get("concurrency")
        if conc:
            ks = [k for k in sz["streams"] if f"service {k}" in conc]
            for k in ks:
                add(
                    _row(
                        name,
                        f"{k} concurrent stream{'s' if k > 1 else ''} × {sz['conc_tokens']} tokens, service "
                        f"aggregate, vs llama_decode of {k} one-token sequence{'s' if k > 1 else ''} a step "
                        f"(Batch, no service)",
                        "tokens/s",
                        conc.get(f"decode {k}"),
                        conc.get(f"service {k}"),
                        None,
                    )
                )
            if "decode 4 spread" in conc:
                add(
                    _row(
                        name,
                        "llama_decode alone, 4 sequences with ids 0, 2, 4, 6 vs ids 0, 1, 2, 3 (a context "
                        "with a KV stream per sequence, as the service's)",
                        "tokens/s",
                        conc.get("decode 4"),
                        conc.get("decode 4 spread"),
                        None,
                    )
                )
            if 1 in ks and 4 in ks:
                bench = conc.get("llama-bench pp")
                bench_note = ""
                if bench and bench.get("summary"):
                    bench_note = (
                        f"; llama-bench pp4 ÷ pp1 (C, one sequence, last logits only): "
                        f"{_num(bench['summary']['median'])}"
                    )
                add(
                    _row(
                        name,
                        f"scaling, 4 streams ÷ 1 stream (aggregate tokens/s): service, vs the same ratio of "
                        f"llama_decode of 4 vs 1 sequences{bench_note}",
                        "×",
                        _ratio_side(conc.get("decode 4"), conc.get("decode 1")),
                        _ratio_side(conc.get("service 4"), conc.get("service 1")),
                        None,
                        target=f"≥ {T.SCALING_4_STREAMS}× (service)",
                        judge=_scaling_judge(T.SCALING_4_STREAMS),
                        short=f"4 streams ≥ {T.SCALING_4_STREAMS}× one stream",
                    )
                )
        shared = res.get("shared_cores")
        if shared:
            add(
                _row(
                    name,
                    f"two processes decoding at once on the same cores (tg{sz['shared_tokens']} each), "
                    f"aggregate tokens/s ÷ one process alone: Pythonic loop vs llama-bench",
                    "×",
                    _ratio_side(shared.get("llama-bench x2"), shared.get("llama-bench alone")),
                    _ratio_side(shared.get("Pythonic x2"), shared.get("Pythonic alone")),
                    None,
                )
            )
            add(
                _row(
                    name,
                    "the same with GOMP_SPINCOUNT=1000 in both processes: aggregate tokens/s ÷ one process "
                    "alone (default spin); Pythonic loop, default spin vs short",
                    "×",
                    _ratio_side(shared.get("Pythonic x2"), shared.get("Pythonic alone")),
                    _ratio_side(shared.get("Pythonic x2, short spin"), shared.get("Pythonic alone")),
                    None,
                )
            )
            add(
                _row(
                    name,
                    f"one process alone, tg{sz['shared_tokens']}: Pythonic loop with GOMP_SPINCOUNT=1000 vs "
                    f"the default spin",
                    "tokens/s",
                    shared.get("Pythonic alone"),
                    shared.get("Pythonic alone, short spin"),
                    None,
                )
            )
        r = res.get("rss_mib")
        if r:
            simple = r.get("llama-simple")
            add(_row(name, f"peak RSS, llama-bench tg{sz['rss_tokens']} (C)", "MiB", r.get("llama-bench"), None, None))
            add(_row(name, "peak RSS, python + numpy + import llamacffi, no model", "MiB", None, r.get("floor"), None))
            add(
                _row(
                    name,
                    f"peak RSS, greedy {sz['rss_tokens']}: raw-layer loop vs llama-simple",
                    "MiB",
                    simple,
                    r.get("raw"),
                    None,
                )
            )
            add(
                _row(
                    name,
                    f"peak RSS, greedy {sz['rss_tokens']}: Pythonic loop vs llama-simple",
                    "MiB",
                    simple,
                    r.get("pythonic"),
                    None,
                )
            )
            add(
                _row(
                    name,
                    f"peak RSS, greedy {sz['rss_tokens']}: service generate vs llama-simple",
                    "MiB",
                    simple,
                    r.get("service"),
                    r.get("peer"),
                )
            )
    return result


def _ratio_side(num: dict[str, Any] | None, den: dict[str, Any] | None) -> dict[str, Any] | None:
    """A side made of the paired ratios num[i] / den[i]."""
    a, b = _values(num), _values(den)
    vals = [x / y for x, y in zip(a, b, strict=False) if y]
    if not vals:
        return {"summary": None, "error": (num or {}).get("error") or (den or {}).get("error") or "not measured"}
    return {
        "summary": {
            "median": statistics.median(vals),
            "min": min(vals),
            "max": max(vals),
            "n": len(vals),
            "values": vals,
        },
        "error": None,
    }


def _scaling_judge(limit: float) -> Any:
    def judge(row: dict[str, Any]) -> str:
        why = _missing(row, "llamacffi")
        if why:
            return f"not measured: {why}"
        return "met" if row["llamacffi"]["median"] >= limit else "NOT met"

    return judge


def _inverse_us(side: dict[str, Any] | None) -> dict[str, Any] | None:
    """tokens/s as µs per token."""
    if side is None or not side.get("summary"):
        return side
    vals = [1e6 / v for v in side["summary"]["values"] if v]
    return {
        "summary": {
            "median": statistics.median(vals),
            "min": min(vals),
            "max": max(vals),
            "n": len(vals),
            "values": vals,
        },
        "error": None,
    }


# ---- Markdown -------------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "—"
    if "error" in c:
        return str(c["error"])
    if c["n"] == 1:
        return _num(c["median"])
    return f"{_num(c['median'])} ({_num(c['min'])}–{_num(c['max'])})"


def _ratio(r: dict[str, float] | None) -> str:
    if r is None:
        return "—"
    if r["n"] == 1 or r["min"] == r["max"]:
        return f"{r['median']:.3f}"
    return f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"


def offload_words(out: dict[str, Any]) -> str:
    layers = out["machine"].get("gpu_layers", 0)
    if not layers:
        return "no layer offloaded (CPU)"
    gpus = [f"{d['name']} ({d['description']})" for d in out["build"].get("devices", []) if d.get("type") != "cpu"]
    return f"{'all' if layers < 0 else layers} layers offloaded to {', '.join(gpus) or 'the GPU'}"


def machine_line(out: dict[str, Any]) -> str:
    m, b = out["machine"], out["build"]
    cores = m.get("physical_cores")
    load = m.get("loadavg_start"), m.get("loadavg_end")
    return (
        f"{m.get('cpu_model', '?')} ({', '.join(m.get('cpu_flags', []))}), "
        f"{m.get('usable_cpus')} CPUs{f' ({cores} cores)' if cores else ''}, {m.get('memory_gib', '?')} GiB; "
        f"{m['platform']}; Python {m['python']}, numpy {m.get('numpy', '?')}; {m['threads']} threads on every "
        f"side, {offload_words(out)}; llama.cpp {b['llama_cpp'][:10]} ({b.get('llama_cpp_version', '')}), "
        f"{b['build_flags']}; "
        f"load average {load[0]} at the start, {load[1]} at the end"
    )


def markdown(out: dict[str, Any], rows: list[dict[str, Any]], chart: str | None = None) -> str:
    mode = "quick (a smoke run with small sizes: not a measurement)" if out["quick"] else "full"
    peers = sorted({str(res.get("peer")) for res in out["models"].values()})
    lines = [
        f"Mode: {mode}; {out['reps']} interleaved repetitions after a warm-up ({out.get('headline_reps', out['reps'])} "
        f"for pp and tg; peak RSS: {out['rss_reps']}, each in a "
        f"fresh process); median (min–max); {out['seconds']} s in all, started {out['started']}.",
        "",
        f"Machine: {machine_line(out)}.",
        "",
        f"{PEER}: {', '.join(peers)}" + (" (import llama_cpp fails: not installed)." if peers == ["absent"] else "."),
        "",
    ]
    if chart:
        lines += [f"![benchmarks]({chart})", ""]
    lines += ["| target | model | measured | status |", "| --- | --- | --- | --- |", *_targets(rows), ""]
    lines += [
        "Ratios are llamacffi ÷ the other side, the median of the ratios of repetitions run side by side "
        "(A B A B): above 1 means more tokens/s, or more µs / ms / MiB. The reference is raw llama.cpp unless "
        "the measurement names another.",
        "",
        "| model | measurement | unit | reference | llamacffi | llama-cpp-python | llamacffi ÷ reference "
        "| llamacffi ÷ llama-cpp-python | target | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['measurement']} | {r['unit']} | {_cell(r['reference'])} | "
            f"{_cell(r['llamacffi'])} | {_cell(r['peer'])} | {_ratio(r['ratio_reference'])} | "
            f"{_ratio(r['ratio_peer'])} | {r['target']} | {r['status']} |"
        )
    lines.append("")
    return "\n".join(lines)


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["target"]:
            out.append(f"| {r['short'] or r['measurement']} | {r['model']} | {_measured(r)} | {r['status']} |")
    return out


def _measured(r: dict[str, Any]) -> str:
    """The figure a target is judged on."""
    c = r["llamacffi"]
    if c is None or "error" in c:
        return "—"
    parts = []
    if r["unit"] == "×":
        ref = r["reference"]
        alone = _num(ref["median"]) + "×" if ref and "median" in ref else "—"
        parts.append(f"{c['median']:.2f}× (llama_decode alone: {alone})")
    elif r["unit"] == "µs/call":
        parts.append(f"{_num(c['median'])} µs")
        if r["ratio_reference"]:
            parts.append(f"{r['ratio_reference']['median']:.2f}× NativeSampler's time")
    elif r["ratio_reference"]:
        parts.append(f"{r['ratio_reference']['median']:.3f}×")
    if r["ratio_peer"]:
        parts.append(f"{r['ratio_peer']['median']:.3f}× {PEER}")
    return ", ".join(parts) or "—"


# ---- chart ----------------------------------------------------------------------------------------------------------


def chart(out: dict[str, Any], path: Path) -> str | None:
    """Write the chart; returns a note instead when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib, or the 'bench' extra)"
    names = list(out["models"])
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    sz = out["sizes"]

    def bars(
        ax: Any, title: str, unit: str, series: list[tuple[str, str, str]], log: bool = False, scale: float = 1.0
    ) -> None:
        """``series``: (label, group key, side) drawn for every model."""
        missing: list[str] = []
        drawn: list[tuple[str, list[float], list[float], list[float]]] = []
        for label, group, side in series:
            med, lo, hi = [], [], []
            for name in names:
                g = out["models"][name].get(group) or {}
                s = (g.get(side) or {}).get("summary")
                if s:
                    med.append(s["median"] * scale)
                    lo.append((s["median"] - s["min"]) * scale)
                    hi.append((s["max"] - s["median"]) * scale)
                else:
                    med.append(0.0)
                    lo.append(0.0)
                    hi.append(0.0)
            if not any(med):
                missing.append(label)
                continue
            drawn.append((label, med, lo, hi))
        width = 0.8 / max(1, len(drawn))
        for i, (label, med, lo, hi) in enumerate(drawn):
            xs = [j + (i - (len(drawn) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title + (f"\n(not measured: {', '.join(missing)})" if missing else ""), fontsize=10)
        ax.set_ylabel(unit)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
        ax.grid(axis="y", alpha=0.3)

    bars(
        axes[0, 0],
        f"generation, {sz['gen']} tokens (tg{sz['tg']})",
        "tokens/s",
        [
            ("llama-bench tg", "tg", "llama-bench"),
            ("llama-simple", "tg", "llama-simple"),
            ("raw-layer loop", "tg", "raw loop (decodes only)"),
            ("Pythonic loop", "tg", "Pythonic loop"),
            ("service generate", "tg", "generate"),
            ("generate, huge pages", "tg", "generate, huge pages"),
            ("service stream", "tg", "generate_stream"),
            ("service sampled", "tg", "generate sampled"),
            (f"{PEER} greedy", "tg", "peer generate"),
            (f"{PEER} sampled", "tg", "peer sampled"),
        ],
    )
    bars(
        axes[0, 1],
        f"prompt processing pp{sz['pp']}",
        "tokens/s",
        [("llama-bench pp", "pp", "llama-bench"), ("llamacffi Batch", "pp", "Batch"), (PEER, "pp", "peer")],
    )
    ax = axes[0, 2]
    for name in names:
        conc = out["models"][name].get("concurrency")
        if not conc:
            continue
        for prefix, label, style in (
            ("service ", f"{name}: service streams", "o-"),
            ("decode ", f"{name}: llama_decode of k sequences", "s--"),
            ("llama-bench pp", f"{name}: llama-bench pp k (one sequence)", "^:"),
        ):
            ks = [k for k in sz["streams"] if (conc.get(f"{prefix}{k}") or {}).get("summary")]
            if not ks:
                continue
            got = [conc[f"{prefix}{k}"]["summary"] for k in ks]
            ax.errorbar(
                ks,
                [g["median"] for g in got],
                yerr=[[g["median"] - g["min"] for g in got], [g["max"] - g["median"] for g in got]],
                fmt=style,
                capsize=3,
                label=label,
            )
        spread = (conc.get("decode 4 spread") or {}).get("summary")
        if spread:
            ax.errorbar(
                [4],
                [spread["median"]],
                yerr=[[spread["median"] - spread["min"]], [spread["max"] - spread["median"]]],
                fmt="x",
                markersize=9,
                capsize=3,
                label=f"{name}: llama_decode, sequences 0, 2, 4, 6",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    ax.set_title(f"concurrent streams, {sz['conc_tokens']} tokens each")
    ax.set_xlabel("streams (sequences per decode)")
    ax.set_ylabel("aggregate tokens/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    bars(
        axes[1, 0],
        f"time to first token, {sz['prefix']}-token prompt",
        "ms",
        [
            ("cold", "ttft", "cold"),
            ("90% shared", "ttft", "warm"),
            (f"{PEER} cold", "ttft", "peer cold"),
            (f"{PEER} 90% shared", "ttft", "peer warm"),
        ],
        scale=1e3,
    )
    ax = axes[1, 1]
    ops = ["tokenize_1kb", "token_to_piece", "detokenize_100", "decode_1", "logits", "sampler", "native_sampler"]
    labels = [
        "tokenize\n1 KB",
        "token_to\n_piece",
        "detokenize\n100",
        "decode\n1 token",
        "logits",
        "numpy\nSampler",
        "Native\nSampler",
    ]
    width = 0.8 / (2 * len(names))
    for i, name in enumerate(names):
        m = out["models"][name].get("micro") or {}
        for j, (side, tag) in enumerate((("llamacffi", "llamacffi"), ("peer", PEER))):
            vals = []
            for op in ops:
                s = ((m.get(side) or {}).get(op) or {}).get("summary")
                vals.append(s["median"] if s else 0.0)
            if not any(vals):
                continue
            k = 2 * i + j
            ax.bar(
                [x + (k - (2 * len(names) - 1) / 2) * width for x in range(len(ops))],
                vals,
                width,
                label=f"{tag}, {name}",
            )
    ax.set_xticks(range(len(ops)), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("µs per call (log)")
    ax.set_title("per-call costs")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    bars(
        axes[1, 2],
        f"peak RSS, greedy {sz['rss_tokens']} tokens",
        "MiB",
        [
            ("llama-simple", "rss_mib", "llama-simple"),
            ("llama-bench", "rss_mib", "llama-bench"),
            ("python floor", "rss_mib", "floor"),
            ("raw-layer loop", "rss_mib", "raw"),
            ("Pythonic loop", "rss_mib", "pythonic"),
            ("service", "rss_mib", "service"),
            (PEER, "rss_mib", "peer"),
        ],
    )
    mode = "quick smoke run (not a measurement)" if out["quick"] else f"{out['reps']} interleaved repetitions, median"
    m = out["machine"]
    peers = ", ".join(sorted({str(r.get("peer")) for r in out["models"].values()}))
    fig.suptitle(
        f"llamacffi vs llama.cpp built from the same tree ({PEER}: {peers}) — {m.get('cpu_model', '?')}, "
        f"{m['threads']} threads, {mode}; bars: median, whiskers: min–max",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
