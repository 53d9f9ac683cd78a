"""The rows of the report: one per measurement and model, with its cells, ratios, target and status."""

from __future__ import annotations

from typing import Any

from . import targets as T
from .markdown import num
from .ops import OPS
from .summaries import Side, inverse_us, medians, paired_ratio, ratio_side, side
from .targets import PEER
from .verdicts import Judge, Row, at_least, at_most, sampler_judge, scaling_judge, service_judge


def _row(
    model: str,
    what: str,
    unit: str,
    ref: Side | None,
    ours: Side | None,
    peer: Side | None,
    *,
    ref_ratio: dict[str, float] | None = None,
    target: str = "",
    judge: Judge | None = None,
    scale: float = 1.0,
    short: str = "",
) -> Row:
    def cell(side: Side | None) -> dict[str, Any] | None:
        if side is None:
            return None
        s = side.get("summary")
        if not s:
            return {"error": side.get("error") or "not measured"}
        return {"median": s["median"] * scale, "min": s["min"] * scale, "max": s["max"] * scale, "n": s["n"]}

    row: Row = {
        "model": model,
        "measurement": what,
        "unit": unit,
        "reference": cell(ref),
        "llamacffi": cell(ours),
        "peer": cell(peer),
        "ratio_reference": ref_ratio if ref_ratio is not None else paired_ratio(ours, ref),
        "ratio_peer": paired_ratio(ours, peer),
        "target": target,
    }
    row["status"] = judge(row) if judge else ""
    row["short"] = short
    return row


Results = dict[str, Any]  # a results JSON, or a part of it


def rows(out: Results) -> list[Row]:
    """Every row of the report, model by model."""
    result: list[Row] = []
    for name, res in out["models"].items():
        for group in (_generation, _micro, _concurrency, _shared_cores, _rss):
            result += group(name, res, out["sizes"])
    return result


def _generation(name: str, res: Results, sz: Results) -> list[Row]:
    """Prompt processing, generation by each layer, time to first token."""
    result: list[Row] = []
    add = result.append
    pp_n, tg_n, gen_n = sz["pp"], sz["tg"], sz["gen"]
    pp, tg, ttft = res.get("pp"), res.get("tg"), res.get("ttft")
    bench_tg = side(tg, "llama-bench")
    add(
        _row(
            name,
            f"pp{pp_n}: one Batch decode vs llama-bench pp{pp_n}",
            "tokens/s",
            side(pp, "llama-bench"),
            side(pp, "Batch"),
            side(pp, "peer"),
            target=f"≥ {T.PP_BATCH}×",
            judge=at_least(T.PP_BATCH),
            short=f"pp via Batch ≥ {T.PP_BATCH}× llama-bench pp{pp_n}",
        )
    )
    add(
        _row(
            name,
            f"tg{tg_n}: Pythonic loop (decode_token, logits, argmax, StreamDecoder) vs llama-bench tg{tg_n}",
            "tokens/s",
            bench_tg,
            side(tg, "Pythonic loop"),
            None,
            target=f"≥ {T.TG_PYTHONIC}×",
            judge=at_least(T.TG_PYTHONIC),
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
            side(tg, "raw loop (decodes only)"),
            None,
        )
    )
    add(
        _row(
            name,
            f"greedy {gen_n} tokens, llama-simple's loop and timing: raw layer vs llama-simple (C)",
            "tokens/s",
            side(tg, "llama-simple"),
            side(tg, "raw loop"),
            None,
        )
    )
    add(
        _row(
            name,
            f"service generate, greedy {gen_n} tokens vs llama-bench tg{tg_n}",
            "tokens/s",
            bench_tg,
            side(tg, "generate"),
            side(tg, "peer generate"),
            target=f"≥ {T.SERVICE_GENERATE}×; ≥ {T.SERVICE_VS_PEER}× {PEER}",
            judge=service_judge,
            short=f"service generate, greedy {gen_n}: ≥ {T.SERVICE_GENERATE}× llama-bench tg{tg_n}, "
            f"≥ {T.SERVICE_VS_PEER}× {PEER}",
        )
    )
    huge = res.get("huge_page_mib")
    add(
        _row(
            name,
            f"service generate, greedy {gen_n} tokens, weights in huge pages (huge_pages=True, "
            f"{num(huge) if huge is not None else '?'} MiB of them) vs llama-bench tg{tg_n} (its default, "
            f"a mapped file)",
            "tokens/s",
            bench_tg,
            side(tg, "generate, huge pages"),
            side(tg, "peer generate"),
            target=f"≥ {T.SERVICE_GENERATE}×; ≥ {T.SERVICE_VS_PEER}× {PEER}",
            judge=service_judge,
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
            side(tg, "generate_stream"),
            side(tg, "peer stream"),
        )
    )
    add(
        _row(
            name,
            f"service generate, sampled {gen_n} tokens (temp 0.8, top-k 40, top-p 0.95, min-p 0.05, "
            f"seed) vs llama-bench tg{tg_n}",
            "tokens/s",
            bench_tg,
            side(tg, "generate sampled"),
            side(tg, "peer sampled"),
        )
    )
    add(
        _row(
            name,
            f"time to first token, cold {sz['prefix']}-token prompt",
            "ms",
            None,
            side(ttft, "cold"),
            side(ttft, "peer cold"),
            scale=1e3,
        )
    )
    add(
        _row(
            name,
            "time to first token, 90% of the prompt shared with the previous request vs cold",
            "ms",
            side(ttft, "cold"),
            side(ttft, "warm"),
            side(ttft, "peer warm"),
            scale=1e3,
            target=f"≤ {T.TTFT_WARM_MAX}×",
            judge=at_most(T.TTFT_WARM_MAX),
            short=f"time to first token, 90% shared ≤ {T.TTFT_WARM_MAX:.0%} of cold",
        )
    )
    return result


def _micro(name: str, res: Results, sz: Results) -> list[Row]:
    """Per-call costs: tokenization, one-token decode, logits, the samplers."""
    result: list[Row] = []
    add = result.append
    tg_n = sz["tg"]
    bench_tg = side(res.get("tg"), "llama-bench")
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
                inverse_us(bench_tg),
                ours.get("decode_1"),
                theirs.get("decode_1"),
                ref_ratio=medians(ours.get("decode_1"), inverse_us(bench_tg)),
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
                judge=sampler_judge(limit),
                short=f"numpy Sampler ≤ {limit:.0f} µs at {n_vocab:,} and faster than NativeSampler",
            )
        )
    return result


def _concurrency(name: str, res: Results, sz: Results) -> list[Row]:
    """Concurrent streams through the service beside llama_decode of as many sequences."""
    result: list[Row] = []
    add = result.append
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
                    f"; llama-bench pp4 ÷ pp1 (C, one sequence, last logits only): {num(bench['summary']['median'])}"
                )
            add(
                _row(
                    name,
                    f"scaling, 4 streams ÷ 1 stream (aggregate tokens/s): service, vs the same ratio of "
                    f"llama_decode of 4 vs 1 sequences{bench_note}",
                    "×",
                    ratio_side(conc.get("decode 4"), conc.get("decode 1")),
                    ratio_side(conc.get("service 4"), conc.get("service 1")),
                    None,
                    target=f"≥ {T.SCALING_4_STREAMS}× (service)",
                    judge=scaling_judge(T.SCALING_4_STREAMS),
                    short=f"4 streams ≥ {T.SCALING_4_STREAMS}× one stream",
                )
            )
    return result


def _shared_cores(name: str, res: Results, sz: Results) -> list[Row]:
    """Two processes decoding on the same cores, and the OpenMP spin setting."""
    result: list[Row] = []
    add = result.append
    shared = res.get("shared_cores")
    if shared:
        add(
            _row(
                name,
                f"two processes decoding at once on the same cores (tg{sz['shared_tokens']} each), "
                f"aggregate tokens/s ÷ one process alone: Pythonic loop vs llama-bench",
                "×",
                ratio_side(shared.get("llama-bench x2"), shared.get("llama-bench alone")),
                ratio_side(shared.get("Pythonic x2"), shared.get("Pythonic alone")),
                None,
            )
        )
        add(
            _row(
                name,
                "the same with GOMP_SPINCOUNT=1000 in both processes: aggregate tokens/s ÷ one process "
                "alone (default spin); Pythonic loop, default spin vs short",
                "×",
                ratio_side(shared.get("Pythonic x2"), shared.get("Pythonic alone")),
                ratio_side(shared.get("Pythonic x2, short spin"), shared.get("Pythonic alone")),
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
    return result


def _rss(name: str, res: Results, sz: Results) -> list[Row]:
    """Peak resident memory of each layer beside llama.cpp's programs."""
    result: list[Row] = []
    add = result.append
    r = res.get("rss_mib")
    if r:
        simple = r.get("llama-simple")
        add(_row(name, f"peak RSS, llama-bench tg{sz['rss_tokens']} (C)", "MiB", r.get("llama-bench"), None, None))
        add(_row(name, "peak RSS, python + numpy + import llamacffi, no model", "MiB", None, r.get("floor"), None))
        for label, key, peer in (
            ("raw-layer loop", "raw", None),
            ("Pythonic loop", "pythonic", None),
            ("service generate", "service", "peer"),
        ):
            what = f"peak RSS, greedy {sz['rss_tokens']}: {label} vs llama-simple"
            add(_row(name, what, "MiB", simple, r.get(key), r.get(peer) if peer else None))
    return result
