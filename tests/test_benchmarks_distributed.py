"""The distributed benchmark side runs (its RPC half, at the smallest sizes) and reports what it measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.sides import distributed

from llamacffi import rpc


@pytest.mark.skipif(not rpc.available(), reason="built with -DGGML_RPC=OFF")
def test_rpc_half_runs_and_reports(smollm2_path: Path) -> None:
    result = distributed.rpc_split(smollm2_path, threads=1, pp=8, tg=4, reps=1)
    assert list(result) == ["local", "split over 2 loopback RPC servers"]
    for side in result.values():
        assert side["tg_tps"]["median"] > 0 and side["load_s"]["median"] > 0
    out = {
        "model": "smollm2-135m",
        "machine": {"cpu_model": "x", "usable_cpus": 2, "loadavg_start": [0.0]},
        "threads": 1,
        "sizes": {"pp": 8, "tg": 4, "clients": 2, "tokens": 4},
        "reps": 1,
        "rpc": result,
        "ray": {
            "2 replicas x 1 thread": {"parallel": 4, "deploy_s": 1.0, "tps": {"median": 2.0, "min": 1.0, "max": 3.0}},
            "1 replica x 2 threads": {"parallel": 8, "deploy_s": 1.0, "tps": {"median": 1.0, "min": 1.0, "max": 1.0}},
        },
    }
    md = distributed.markdown(out)
    assert "| local |" in md and "2 x 1 over 1 x 2: 2.00" in md
