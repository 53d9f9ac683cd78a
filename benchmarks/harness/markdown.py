"""The report as Markdown: the machine line, the targets table and the full table."""

from __future__ import annotations

from typing import Any

from .targets import PEER


def num(x: float) -> str:
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
        return num(c["median"])
    return f"{num(c['median'])} ({num(c['min'])}–{num(c['max'])})"


def _ratio(r: dict[str, float] | None) -> str:
    if r is None:
        return "—"
    if r["n"] == 1 or r["min"] == r["max"]:
        return f"{r['median']:.3f}"
    return f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"


def offload_words(out: dict[str, Any]) -> str:
    layers = out["machine"].get("gpu_layers", 0)
    gpus = [f"{d['name']} ({d['description']})" for d in out["build"].get("devices", []) if d.get("type") != "cpu"]
    if not layers or not gpus:
        return "no layer offloaded (CPU)"
    return f"{'all' if layers < 0 else layers} layers offloaded to {', '.join(gpus)}"


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
        alone = num(ref["median"]) + "×" if ref and "median" in ref else "—"
        parts.append(f"{c['median']:.2f}× (llama_decode alone: {alone})")
    elif r["unit"] == "µs/call":
        parts.append(f"{num(c['median'])} µs")
        if r["ratio_reference"]:
            parts.append(f"{r['ratio_reference']['median']:.2f}× NativeSampler's time")
    elif r["ratio_reference"]:
        parts.append(f"{r['ratio_reference']['median']:.3f}×")
    if r["ratio_peer"]:
        parts.append(f"{r['ratio_peer']['median']:.3f}× {PEER}")
    return ", ".join(parts) or "—"
