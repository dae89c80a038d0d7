"""``bench --metrics-port``: a run's counters as Prometheus metrics while it runs.

Pull-style, like the server's: a scrape reads the load generator's live
counters and histograms (C memory of the cores' loops), so measuring costs the
load nothing.  Run on every pod of an Indexed Job, the counters add up in
Prometheus: ``sum(rate(pytcpecho_bench_messages_total[10s]))`` is the whole
run's rate, and the latency histogram's buckets sum into its percentiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .histogram import Histogram, rebucket
from .metrics import registry
from .status import UsageError
from .units import format_hostport
from .web import WebServer

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds, in seconds, of pytcpecho_bench_latency_seconds: 50 us to 10 s."""
ERROR_KINDS = ("connection", "integrity")
"""pytcpecho_bench_errors_total's kinds: a connection that failed (refused, reset, timed
out), and an echo that was not intact."""


@dataclass(frozen=True)
class Live:
    """A running bench's counters at one instant."""

    messages: int = 0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    histogram: Histogram = field(default_factory=Histogram.empty)


class BenchCollector(Collector):
    """The counters ``live()`` reads, and what the run is (target, size, mode)."""

    def __init__(self, live: Callable[[], Live], target: str, size: int, mode: str) -> None:
        self._live = live
        self._info = (target, str(size), mode)

    def collect(self) -> Iterator[Metric]:
        now = self._live()
        info = GaugeMetricFamily("pytcpecho_bench_info", "What this bench drives.",
                                 labels=["target", "size", "mode"])
        info.add_metric(list(self._info), 1)
        yield info
        yield CounterMetricFamily("pytcpecho_bench_messages", "Messages whose echo came back "
                                  "intact.", value=now.messages)
        yield CounterMetricFamily("pytcpecho_bench_bytes", "Bytes echoed back intact.",
                                  value=now.bytes)
        errors = CounterMetricFamily("pytcpecho_bench_errors", "Failures, by kind: a "
                                     "connection that failed, an echo not intact.",
                                     labels=["kind"])
        for kind in ERROR_KINDS:
            errors.add_metric([kind], now.errors.get(kind, 0))
        yield errors
        h = now.histogram
        counts = rebucket(h.counts, LATENCY_BUCKETS, max(h.min_ns, 0), h.max_ns)
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        latency = HistogramMetricFamily("pytcpecho_bench_latency_seconds", "Round trips "
                                        "(open loop: from when each message was due).")
        latency.add_metric([], buckets, h.sum_ns / 1e9)
        yield latency


@contextlib.contextmanager
def serve(host: str, port: int, collector: BenchCollector) -> Iterator[WebServer]:
    """/metrics of the run on host:port until the block ends; UsageError, one line, for a
    port that cannot be had."""
    try:
        web = WebServer(host, port, registry(collector))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {format_hostport(host or '*', port)}: "
                         f"{exc.strerror or exc}") from None
    try:
        yield web
    finally:
        web.close()
