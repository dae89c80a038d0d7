"""What every client loop of the pure-Python core shares, stream or datagram: a latency
histogram with the exact min, max and sum beside it, and a stop() from any thread
(the contract's ``Timed``; the Cython core keeps the same in C memory)."""

from __future__ import annotations

from .constants import NBUCKETS
from .histogram import bucket_of


class TimedLoop:
    latency_min_ns: int
    latency_max_ns: int
    latency_sum_ns: int

    def __init__(self) -> None:
        self._hist = [0] * NBUCKETS
        self._stop = False
        self.latency_min_ns = -1
        self.latency_max_ns = 0
        self.latency_sum_ns = 0

    def stop(self) -> None:
        self._stop = True

    def histogram(self) -> list[int]:
        return list(self._hist)

    def _record(self, lat: int) -> None:
        """Count one round trip (ns) into the histogram and the exact min/max/sum."""
        self._hist[bucket_of(lat)] += 1
        self.latency_sum_ns += lat
        if self.latency_min_ns < 0 or lat < self.latency_min_ns:
            self.latency_min_ns = lat
        self.latency_max_ns = max(self.latency_max_ns, lat)
