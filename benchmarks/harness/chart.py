"""The report's chart: generation, prompt processing, concurrency, time to first token, per-call costs, peak RSS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .targets import PEER


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
