"""Latency histogram: log-linear buckets (HdrHistogram's idea, ~1.6% precision).

The cores count round trips into a fixed array of buckets in C memory, so a
run of any length costs no Python object per message; this module reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .constants import NBUCKETS, SUB, SUB_BITS


def bucket_of(ns: int) -> int:
    """Bucket of a latency in nanoseconds: exact below 128 ns, then 64 per octave."""
    v = max(0, ns)
    if v < 2 * SUB:
        return v
    e = v.bit_length() - (SUB_BITS + 1)
    return min(SUB * e + (v >> e), NBUCKETS - 1)


def bucket_value(idx: int) -> float:
    """Middle of bucket ``idx``, in nanoseconds."""
    if idx < 2 * SUB:
        return float(idx)
    e, sub = divmod(idx, SUB)
    e -= 1
    sub += SUB
    return ((sub << e) + ((sub + 1) << e)) / 2


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary in milliseconds."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4)
                for k in ("min", "mean", "p50", "p90", "p99", "p999", "max")}


def summarize(counts: Sequence[int], min_ns: int, max_ns: int, sum_ns: int) -> LatencyStats:
    """Percentiles from bucket counts, clamped to the exact min and max."""
    n = sum(counts)
    if n == 0:
        return LatencyStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def pct(q: float) -> float:
        rank = max(1, int(q * n + 0.5))
        seen = 0
        for i, c in enumerate(counts):
            seen += c
            if seen >= rank:
                return min(max(bucket_value(i), min_ns), max_ns) / 1e6
        return max_ns / 1e6

    return LatencyStats(n, min_ns / 1e6, sum_ns / n / 1e6, pct(0.50), pct(0.90),
                        pct(0.99), pct(0.999), max_ns / 1e6)
