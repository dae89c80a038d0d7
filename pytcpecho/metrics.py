"""Prometheus metrics, read from the server's counters and the mesh's table at scrape time.

Both collectors are pull-style, as prometheus_client's own process collector
is: nothing on the echo path or the check path touches a metric; a scrape
reads the counters the server keeps anyway and a snapshot of the mesh's
table.  So a peer that leaves the table leaves the metrics with it: its
series are gone from the next scrape, not frozen at their last value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._version import __version__
from .mesh import RTT_BUCKETS, Mesh
from .server import ServerStats

CLOSED_REASONS = {
    "eof": "closed_eof",
    "idle_timeout": "timed_out",
    "max_bytes": "over_limit",
    "refused": "refused",
    "shutdown": "closed_shutdown",
    "error": "closed_error",
}
"""pytcpecho_connections_closed_total's reasons, and the ServerStats counter of each."""
UDP_DROPPED_REASONS = {
    "denied": "udp_denied",
    "loop_port": "udp_loop_port",
    "rate_limited": "udp_rate_limited",
    "truncated": "udp_truncated",
    "send_error": "udp_send_errors",
}
"""pytcpecho_udp_dropped_total's reasons, and the ServerStats counter of each."""


class ServerCollector(Collector):
    """The echo server's counters, from ``stats()`` (one server, or a sum of workers');
    with ``udp`` (the server echoes datagrams too) its UDP counters as well."""

    def __init__(self, stats: Callable[[], ServerStats], core: str, udp: bool = False) -> None:
        self._stats = stats
        self._core = core
        self._udp = udp

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        info = GaugeMetricFamily("pytcpecho_info", "This pytcpecho: version and echo core.",
                                 labels=["version", "core"])
        info.add_metric([__version__, self._core], 1)
        yield info
        yield GaugeMetricFamily("pytcpecho_connections_active",
                                "Connections being served now.", value=stats.active)
        yield CounterMetricFamily("pytcpecho_connections", "Connections accepted and served.",
                                  value=stats.total)
        yield CounterMetricFamily("pytcpecho_bytes_echoed", "Bytes sent back to clients.",
                                  value=stats.bytes_out)
        yield CounterMetricFamily("pytcpecho_bytes_received", "Bytes received from clients.",
                                  value=stats.bytes_in)
        closed = CounterMetricFamily("pytcpecho_connections_closed",
                                     "Connections that ended (refused: never served), "
                                     "by why.", labels=["reason"])
        for reason, counter in CLOSED_REASONS.items():
            closed.add_metric([reason], getattr(stats, counter))
        yield closed
        if self._udp:
            yield from _udp_server(stats)


def _udp_server(stats: ServerStats) -> Iterator[Metric]:
    yield CounterMetricFamily("pytcpecho_udp_datagrams_received", "UDP datagrams received, "
                              "those dropped included.", value=stats.udp_datagrams_in)
    yield CounterMetricFamily("pytcpecho_udp_datagrams_echoed", "UDP datagrams sent back.",
                              value=stats.udp_datagrams_out)
    yield CounterMetricFamily("pytcpecho_udp_bytes_received", "Bytes of UDP datagrams "
                              "received, those dropped included.", value=stats.udp_bytes_in)
    yield CounterMetricFamily("pytcpecho_udp_bytes_echoed", "Bytes of UDP datagrams sent "
                              "back.", value=stats.udp_bytes_out)
    dropped = CounterMetricFamily("pytcpecho_udp_dropped", "UDP datagrams not sent back, by "
                                  "why: a source --allow/--deny refuses, a loop-prone source "
                                  "port, over --udp-rate, over --udp-max-size, or the send "
                                  "failed.", labels=["reason"])
    for reason, counter in UDP_DROPPED_REASONS.items():
        dropped.add_metric([reason], getattr(stats, counter))
    yield dropped


def _histogram(family: HistogramMetricFamily, peer: str, counts: list[int],
               total: float) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, RTT_BUCKETS), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, float(cumulative)))
    family.add_metric([peer], buckets, total)


class MeshCollector(Collector):
    """The mesh's view of each peer."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    def collect(self) -> Iterator[Metric]:
        peers = self._mesh.snapshot()
        up = GaugeMetricFamily("pytcpecho_peer_up", "1 when the last ping of the peer came "
                               "back intact, else 0.", labels=["peer"])
        intact = GaugeMetricFamily("pytcpecho_peer_check_intact", "1 when the last check of "
                                   "this kind came back intact, else 0.",
                                   labels=["peer", "check"])
        total = CounterMetricFamily("pytcpecho_peer_checks", "Checks of the peer, by kind "
                                    "and result.", labels=["peer", "check", "result"])
        rtt = HistogramMetricFamily("pytcpecho_peer_rtt_seconds", "Round trips of intact "
                                    "pings (64 bytes, on a new connection).", labels=["peer"])
        rate = GaugeMetricFamily("pytcpecho_peer_bulk_bytes_per_second", "Throughput of the "
                                 "last intact bulk check (bytes echoed per second).",
                                 labels=["peer"])
        info = GaugeMetricFamily("pytcpecho_peer_info", "The peer's name (reverse DNS).",
                                 labels=["peer", "name"])
        loss = GaugeMetricFamily("pytcpecho_peer_udp_loss_ratio", "Share of the last UDP "
                                 "probe's datagrams whose echo did not come back intact "
                                 "(0 to 1).", labels=["peer"])
        udp_rtt = HistogramMetricFamily("pytcpecho_peer_udp_rtt_seconds", "Round trips of "
                                        "the UDP probes' datagrams (64 bytes each).",
                                        labels=["peer"])
        jitter = GaugeMetricFamily("pytcpecho_peer_udp_jitter_seconds", "Interarrival "
                                   "jitter of the last UDP probe's echoes (RFC 3550's "
                                   "estimate).", labels=["peer"])
        hops = GaugeMetricFamily("pytcpecho_peer_hops", "Hops to the peer, from the TTL of "
                                 "its UDP echoes (the same link: 1).", labels=["peer"])
        udp = self._mesh.options.udp
        for peer in peers:
            ping, bulk = peer.checks["ping"].last, peer.checks["bulk"].last
            if ping is not None:
                up.add_metric([peer.key], 1 if ping.intact else 0)
            for check, state in peer.checks.items():
                if state.last is not None:
                    intact.add_metric([peer.key, check], 1 if state.last.intact else 0)
                for result, count in state.counts.items():
                    total.add_metric([peer.key, check, result], count)
            _histogram(rtt, peer.key, peer.rtt_counts, peer.rtt_sum)
            if bulk is not None and bulk.intact:
                rate.add_metric([peer.key], bulk.bytes_per_second)
            if peer.name:
                info.add_metric([peer.key, peer.name], 1)
            if not udp:
                continue
            _histogram(udp_rtt, peer.key, peer.udp_rtt_counts, peer.udp_rtt_sum)
            last = peer.checks["udp"].last
            probe = last.probe if last is not None else None
            if probe is not None and probe.loss is not None:
                loss.add_metric([peer.key], probe.loss)
            if probe is not None and probe.result.received:
                jitter.add_metric([peer.key], probe.result.jitter_ms / 1000)
            if peer.hops is not None:
                hops.add_metric([peer.key], peer.hops)
        yield from (up, intact, total, rtt, rate, info)
        if udp:
            yield from (loss, udp_rtt, jitter, hops)


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of our own (not the global one): only what this process exports."""
    reg = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        reg.register(collector)
    return reg
