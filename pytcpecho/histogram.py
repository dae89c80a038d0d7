"""Latency histogram: log-linear buckets (HdrHistogram's idea, ~1.6% precision).

The cores count round trips into a fixed array of buckets in C memory, so a
run of any length costs no Python object per message; this module reads it.
"""

from __future__ import annotations

import bisect
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


def rebucket(counts: Sequence[int], bounds: Sequence[float], min_ns: int,
             max_ns: int) -> tuple[int, ...]:
    """Bucket counts counted again into ``bounds`` (upper bounds in seconds, ascending, as
    Prometheus's ``le``; one count more for over the largest), each bucket read at its
    middle within the exact min and max (so within the histogram's precision)."""
    out = [0] * (len(bounds) + 1)
    for i, count in enumerate(counts):
        if count:
            ns = min(max(bucket_value(i), min_ns), max_ns)
            out[bisect.bisect_left(bounds, ns / 1e9)] += count
    return tuple(out)


# -- a histogram in a result: what `pytcpecho merge` adds up ---------------------------

LAYOUT = {"unit": "ns", "sub_bits": SUB_BITS, "buckets": NBUCKETS}
"""The bucket layout a bench result's histogram declares: ``merge`` adds histograms of
this layout only (another one's buckets would mean other latencies)."""
RELATIVE_ERROR = 1 / SUB
"""The most a percentile read from the histogram is off from the exact one, relative to
it: a bucket is at most 1/64 of its lower bound wide (exact below 128 ns)."""


def to_json(counts: Sequence[int], min_ns: int, max_ns: int, sum_ns: int) -> dict[str, object]:
    """The histogram as a result carries it: its layout, the non-empty buckets as
    [index, count] pairs, and the exact min, max and sum (ns)."""
    return {"layout": dict(LAYOUT), "counts": [[i, c] for i, c in enumerate(counts) if c],
            "min_ns": min_ns, "max_ns": max_ns, "sum_ns": sum_ns}


@dataclass(frozen=True)
class Histogram:
    """Bucket counts with the exact min, max and sum beside them (min -1: empty)."""

    counts: tuple[int, ...]
    min_ns: int
    max_ns: int
    sum_ns: int

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> Histogram:
        """Bucket by bucket: the histogram of both sets of round trips together."""
        mins = [h.min_ns for h in (self, other) if h.count]
        return Histogram(tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
                         min(mins) if mins else -1, max(self.max_ns, other.max_ns),
                         self.sum_ns + other.sum_ns)

    def to_json(self) -> dict[str, object]:
        return to_json(self.counts, self.min_ns, self.max_ns, self.sum_ns)

    def summary(self) -> LatencyStats:
        return summarize(self.counts, max(self.min_ns, 0), self.max_ns, self.sum_ns)

    @classmethod
    def empty(cls) -> Histogram:
        return cls((0,) * NBUCKETS, -1, 0, 0)

    @classmethod
    def from_json(cls, doc: object) -> Histogram:
        """What to_json() wrote; ValueError, saying what is wrong, for anything else (another
        layout, a bucket out of range, a count that is no whole number)."""
        if not isinstance(doc, dict):
            raise ValueError("no histogram")
        if doc.get("layout") != LAYOUT:
            raise ValueError(f"its histogram has another layout ({doc.get('layout')!r}; this "
                             f"version reads {LAYOUT!r})")
        counts = [0] * NBUCKETS
        pairs = doc.get("counts")
        if not isinstance(pairs, list):
            raise ValueError("its histogram has no counts")
        for pair in pairs:
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                    or not 0 <= pair[0] < NBUCKETS or pair[1] < 0):
                raise ValueError(f"its histogram has a bad bucket: {pair!r}")
            counts[pair[0]] += pair[1]
        exact = [doc.get(k) for k in ("min_ns", "max_ns", "sum_ns")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in exact):
            raise ValueError("its histogram lacks min_ns, max_ns or sum_ns")
        return cls(tuple(counts), *exact)  # type: ignore[arg-type]
