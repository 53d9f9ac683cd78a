"""``GET /metrics``: Prometheus counters of requests and tokens, the engines' load, and latency histograms."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
Loads = Callable[[], dict[str, tuple[int, int]]]


class _Load(Collector):
    """Busy slots and waiting requests of each model, read when scraped."""

    def __init__(self, loads: Loads) -> None:
        self._loads = loads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        busy = GaugeMetricFamily("llamacffi_busy_slots", "Slots decoding a request", labels=["model"])
        queued = GaugeMetricFamily("llamacffi_queue_depth", "Requests waiting for a slot", labels=["model"])
        for name, (n_busy, n_queued) in self._loads().items():
            busy.add_metric([name], n_busy)
            queued.add_metric([name], n_queued)
        yield busy
        yield queued


class Metrics:
    """The server's metrics, in a registry of its own (several apps can live in one process)."""

    def __init__(self, loads: Loads) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llamacffi_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "llamacffi_prompt_tokens", "Prompt tokens of finished requests", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "llamacffi_cached_tokens", "Prompt tokens reused from memory", ["model"], registry=r
        )
        self.generated_tokens = Counter("llamacffi_generated_tokens", "Generated tokens", ["model"], registry=r)
        self.ttft = Histogram(
            "llamacffi_time_to_first_token_seconds",
            "From the request to its first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "llamacffi_inter_token_seconds",
            "Between two chunks of one choice of a response",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        r.register(_Load(loads))

    def render(self) -> bytes:
        return generate_latest(self.registry)
