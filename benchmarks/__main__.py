"""``python -m benchmarks [--quick]``: llamacffi beside raw llama.cpp (and llama-cpp-python when installed).

Every side runs the same model file with the same threads, from the same llama.cpp tree and build flags. Sides
alternate (A B C A B C ...) after a warm-up; every figure is the median of the repetitions with its min-max, and
every ratio is the median of the ratios of repetitions run side by side. Writes ``benchmarks/results/<quick|latest>``
``.json``, ``.md`` and ``.png``. Quick mode (small sizes, 2 repetitions) checks that everything runs; it judges
nothing and fails only when the code does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("smollm2-135m", "gemma3-270m")


def render(path: Path, no_chart: bool) -> int:
    """Write the Markdown and the chart again from a results JSON (after a change of the report's form)."""
    from .harness import report

    out = json.loads(path.read_text())
    rows = report.rows(out)
    stem = path.with_suffix("")
    chart_note = None if no_chart else report.chart(out, stem.with_suffix(".png"))
    md = report.markdown(out, rows, chart=None if chart_note or no_chart else stem.name + ".png")
    if chart_note:
        print(chart_note, file=sys.stderr)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions: a smoke run (under 2 minutes)")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"], choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        metavar="N",
        help="layers every side offloads to the GPU (-1: all; default: all when the build finds a GPU, else 0)",
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions after the warm-up (default 5, quick 2); pp and tg, whose targets sit within a "
        "few percent, run twice as many",
    )
    ap.add_argument("--no-peer", action="store_true", help="leave llama-cpp-python out even when installed")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--concurrency-all", action="store_true", help="concurrent streams on every model")
    ap.add_argument(
        "--no-serving",
        action="store_true",
        help="leave out the serving section (python -m benchmarks.sides.serving runs it alone)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the .md and .png of a results JSON")
    args = ap.parse_args()
    if args.render:
        return render(args.render, args.no_chart)
    from .harness import suite  # needs the compiled extension; --render does not

    return suite.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
