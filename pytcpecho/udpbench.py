"""``pytcpecho bench --udp``: datagram load, every echo verified, loss measured.

One thread per socket runs the core's UdpClientSession, which holds no GIL: an
open loop at ``rate`` datagrams a second in all (sent in batches with
sendmmsg() when several are due), or request/response (``rr``: one datagram in
flight per socket).  The main thread samples the sessions' counters and
histograms every interval.  Without a rate, the run first searches for the
highest rate whose loss stays under ``max_loss``, stepping up as iperf3 users do
by hand (doubling, then halving the gap), and then measures that rate.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import core as cores
from .constants import (
    BENCH_CONNECTIONS,
    BENCH_DURATION,
    BENCH_INTERVAL,
    BENCH_UDP_MAX_LOSS,
    BENCH_UDP_SIZE,
    DEFAULT_TIMEOUT,
    MIN_INTERVAL,
    NBUCKETS,
)
from .contract import UdpClientSession
from .histogram import LatencyStats, summarize
from .output import RunInterrupted, RunUnreachable
from .pattern import make_base
from .udpclient import UdpEchoError, check_size, connect
from .units import check_seconds, format_hostport, parse_port, plural

SEARCH_FROM = 10_000.0
"""The search's first rate, in datagrams a second; it doubles until loss appears."""
SEARCH_MAX = 10_000_000.0
SEARCH_SPLITS = 4
"""Halvings of the gap between the last good rate and the first bad one."""
SEARCH_STEP = 1.0
"""Seconds each rate of the search is measured (less for a short --duration)."""
DRAIN = 0.5
"""Seconds a run waits at most, after its last datagram, for the echoes in flight."""


@dataclass(frozen=True)
class UdpBenchConfig:
    host: str
    port: int
    size: int = BENCH_UDP_SIZE
    sockets: int = BENCH_CONNECTIONS
    duration: float | None = BENCH_DURATION
    count: int | None = None
    rate: float | None = None
    """Datagrams a second in all (None: search for the highest with loss under max_loss)."""
    rr: bool = False
    """Request/response: one datagram in flight per socket, the next when its echo came."""
    max_loss: float = BENCH_UDP_MAX_LOSS
    core: str = "auto"
    timeout: float = DEFAULT_TIMEOUT
    interval: float = BENCH_INTERVAL
    seed: int | None = None

    def check(self) -> None:
        parse_port(self.port)
        check_size(self.size)
        if self.sockets <= 0:
            raise ValueError("sockets must be positive")
        if (self.duration is None) == (self.count is None):
            raise ValueError("give either a duration or a count")
        if self.count is not None and self.count < self.sockets:
            raise ValueError(f"count {self.count} is less than one datagram per socket "
                             f"({self.sockets} sockets)")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive")
        if self.rr and self.rate is not None:
            raise ValueError("--rr sends the next datagram when the echo came: no --rate")
        if not 0 <= self.max_loss < 1:
            raise ValueError("max loss must be from 0 up to (not including) 100%")
        check_seconds("timeout", self.timeout)
        check_seconds("interval", self.interval, MIN_INTERVAL)

    @property
    def mode(self) -> str:
        return "rr" if self.rr else "open"


@dataclass(frozen=True)
class UdpInterval:
    start: float
    end: float
    sent: int
    received: int
    p50_ms: float
    p99_ms: float

    @property
    def offered_per_s(self) -> float:
        return self.sent / (self.end - self.start) if self.end > self.start else 0.0

    @property
    def echoed_per_s(self) -> float:
        return self.received / (self.end - self.start) if self.end > self.start else 0.0

    @property
    def loss(self) -> float:
        """Sent in the interval but not echoed in it: in-flight ones count until they land."""
        return max(0.0, 1 - self.received / self.sent) if self.sent else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "sent": self.sent,
                "received": self.received, "offered_per_s": round(self.offered_per_s, 1),
                "echoed_per_s": round(self.echoed_per_s, 1), "loss": round(self.loss, 6),
                "p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4)}


@dataclass
class UdpBenchResult:
    config: UdpBenchConfig
    core: str
    rate: float | None
    elapsed: float
    sent: int
    received: int
    corrupted: int
    duplicates: int
    reordered: int
    late: int
    refused: int
    latency: LatencyStats
    jitter_ms: float
    intervals: list[UdpInterval] = field(default_factory=list)
    search: list[tuple[float, float]] = field(default_factory=list)
    """(rate, loss) of each step of the search for the highest rate."""
    interrupted: bool = False

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    @property
    def offered_per_s(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def echoed_per_s(self) -> float:
        return self.received / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Nothing corrupted, and loss within --max-loss."""
        return self.corrupted == 0 and self.sent > 0 and self.loss <= self.config.max_loss

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "protocol": "udp", "target": format_hostport(c.host, c.port), "core": self.core,
            "mode": c.mode, "size": c.size, "sockets": c.sockets, "rate": self.rate,
            "max_loss": c.max_loss, "duration_s": round(self.elapsed, 4), "sent": self.sent,
            "received": self.received, "lost": self.lost, "loss": round(self.loss, 6),
            "corrupted": self.corrupted, "duplicates": self.duplicates,
            "reordered": self.reordered, "late": self.late, "refused": self.refused,
            "offered_per_s": round(self.offered_per_s, 1),
            "echoed_per_s": round(self.echoed_per_s, 1),
            "latency_ms": self.latency.as_dict(), "jitter_ms": round(self.jitter_ms, 4),
            "search": [{"rate": r, "loss": round(lo, 6)} for r, lo in self.search],
            "intervals": [i.as_dict() for i in self.intervals],
            "interrupted": self.interrupted, "ok": self.ok,
        }


class Unreachable(RunUnreachable):
    """The target cannot be reached at all: no such host, no route, nothing echoed."""


class Interrupted(RunInterrupted):
    """Ctrl-C stopped the run; ``result`` (a UdpBenchResult) holds what it measured."""


@dataclass
class _Sample:
    when: float
    sent: int
    received: int
    hist: list[int]

    @classmethod
    def of(cls, sessions: list[UdpClientSession]) -> _Sample:
        hist = [0] * NBUCKETS
        for s in sessions:
            hist = [a + b for a, b in zip(hist, s.histogram(), strict=True)]
        return cls(time.monotonic(), sum(s.sent for s in sessions),
                   sum(s.received for s in sessions), hist)


class UdpLoadGenerator:
    def __init__(self, config: UdpBenchConfig) -> None:
        config.check()
        self.config = config
        self.core = cores.load(config.core)
        self.base = make_base(secrets.randbits(32) if config.seed is None else config.seed)

    def run(self, on_interval: Callable[[UdpInterval], None] | None = None,
            on_step: Callable[[float, float], None] | None = None) -> UdpBenchResult:
        """Search for the rate if none was given, then measure; Unreachable if nothing
        came back at all, Interrupted (with the figures so far) on Ctrl-C."""
        c = self.config
        rate = c.rate
        search: list[tuple[float, float]] = []
        if rate is None and not c.rr:
            rate = self._search(search, on_step)
        result = self._measure(rate, c.duration, c.count, on_interval)
        result.search = search
        if result.received == 0 and result.corrupted == 0 and not result.interrupted:
            why = " (port unreachable)" if result.refused else ""
            raise Unreachable(f"no echo from {format_hostport(c.host, c.port)}{why}: "
                              f"{result.sent} datagram{plural(result.sent)} sent, none came "
                              "back")
        return result

    def _search(self, steps: list[tuple[float, float]],
                on_step: Callable[[float, float], None] | None) -> float:
        """The highest rate whose loss stays under max_loss, found by doubling, then by
        halving the gap; the lowest rate tried if even that one loses more."""
        c = self.config
        step = min(SEARCH_STEP, (c.duration or SEARCH_STEP * 4) / 4)
        good, bad, rate = 0.0, 0.0, SEARCH_FROM

        def attempt(r: float) -> bool:
            result = self._measure(r, step, None, None)
            steps.append((r, result.loss))
            if on_step is not None:
                on_step(r, result.loss)
            if result.received == 0:
                raise Unreachable(f"no echo from {format_hostport(c.host, c.port)} at "
                                  f"{r:g} datagrams/s")
            return result.loss <= c.max_loss and result.corrupted == 0

        while rate <= SEARCH_MAX:
            if not attempt(rate):
                bad = rate
                break
            good, rate = rate, rate * 2
        if bad:
            for _ in range(SEARCH_SPLITS):
                middle = round((good + bad) / 2, -2) if good else round(bad / 2, -2)
                if middle in (good, bad) or middle <= 0:
                    break
                if attempt(middle):
                    good = middle
                else:
                    bad = middle
        return good or min(r for r, _ in steps)

    def _sockets(self) -> list[socket.socket]:
        c = self.config
        out: list[socket.socket] = []
        try:
            for _ in range(c.sockets):
                out.append(connect(c.host, c.port))
        except UdpEchoError as exc:
            for s in out:
                s.close()
            raise Unreachable(str(exc)) from None
        return out

    def _measure(self, rate: float | None, duration: float | None, count: int | None,
                 on_interval: Callable[[UdpInterval], None] | None) -> UdpBenchResult:
        """One run on fresh sockets (a late echo of an earlier run goes nowhere)."""
        c = self.config
        socks = self._sockets()
        with contextlib.ExitStack() as stack:
            for s in socks:
                stack.enter_context(s)
            sessions = [self.core.UdpClientSession(s.fileno(), c.size, self.base, c.timeout)
                        for s in socks]
            counts = [0] * len(sessions)
            if count is not None:
                counts = [count // len(sessions) + (i < count % len(sessions))
                          for i in range(len(sessions))]
            share = 0.0 if rate is None else rate / len(sessions)
            failures: list[OSError] = []
            done = threading.Event()
            running = [len(sessions)]
            lock = threading.Lock()

            sending = [len(sessions)]
            sent_by = [0.0]

            def drive(i: int) -> None:
                """Send (the rates count over this part only), then wait for the echoes."""
                try:
                    sessions[i].run(counts[i], rate=share, duration=duration or 0.0, wait=0)
                    with lock:
                        sending[0] -= 1
                        if not sending[0]:
                            sent_by[0] = time.monotonic()
                    sessions[i].collect(min(c.timeout, DRAIN))
                except OSError as exc:
                    failures.append(exc)
                finally:
                    with lock:
                        running[0] -= 1
                        if not running[0]:
                            done.set()

            threads = [threading.Thread(target=drive, args=(i,), daemon=True,
                                        name=f"bench-udp-{i}") for i in range(len(sessions))]
            started = time.monotonic()
            for t in threads:
                t.start()
            intervals: list[UdpInterval] = []
            last = _Sample(started, 0, 0, [0] * NBUCKETS)
            interrupted = False
            try:
                k = 1
                while not done.wait(max(0.0, started + k * c.interval - time.monotonic())):
                    now = _Sample.of(sessions)
                    intervals.append(_interval(started, last, now))
                    if on_interval is not None:
                        on_interval(intervals[-1])
                    last = now
                    k = max(k + 1, int((now.when - started) / c.interval) + 1)
            except KeyboardInterrupt:
                interrupted = True
                for session in sessions:
                    session.stop()
                done.wait(c.timeout)
            for t in threads:
                t.join(c.timeout)
            elapsed = (sent_by[0] or time.monotonic()) - started
            if failures and not any(s.received for s in sessions):
                raise Unreachable(f"cannot reach {format_hostport(c.host, c.port)}: "
                                  f"{failures[0].strerror or failures[0]}")
            result = _result(c, self.core.NAME, rate, elapsed, sessions, intervals)
        if interrupted:
            result.interrupted = True
            raise Interrupted(result)
        return result


def _interval(started: float, a: _Sample, b: _Sample) -> UdpInterval:
    diff = [y - x for x, y in zip(a.hist, b.hist, strict=True)]
    lat = summarize(diff, 0, 1 << 62, 0)
    return UdpInterval(a.when - started, b.when - started, b.sent - a.sent,
                       b.received - a.received, lat.p50, lat.p99)


def _result(config: UdpBenchConfig, core: str, rate: float | None, elapsed: float,
            sessions: list[UdpClientSession], intervals: list[UdpInterval]) -> UdpBenchResult:
    final = _Sample.of(sessions)
    timed = [s for s in sessions if s.latency_min_ns >= 0]
    lat = summarize(final.hist, min((s.latency_min_ns for s in timed), default=0),
                    max((s.latency_max_ns for s in timed), default=0),
                    sum(s.latency_sum_ns for s in timed))
    jitter = max((s.jitter_ns for s in sessions), default=0.0) / 1e6
    return UdpBenchResult(config, core, rate, elapsed, final.sent, final.received,
                          sum(s.corrupted for s in sessions),
                          sum(s.duplicates for s in sessions),
                          sum(s.reordered for s in sessions), sum(s.late for s in sessions),
                          sum(s.refused for s in sessions), lat, jitter, intervals)


# -- text output ----------------------------------------------------------------------

def header(c: UdpBenchConfig, core: str) -> str:
    how = f"{c.duration:g} s" if c.duration else f"{c.count} datagrams"
    if c.rr:
        load = "request/response"
    elif c.rate:
        load = f"open loop at {c.rate:g} datagrams/s"
    else:
        load = f"the highest rate with loss under {c.max_loss * 100:g}%"
    return (f"Benchmarking {format_hostport(c.host, c.port)} over UDP: {c.sockets} socket"
            f"{plural(c.sockets)}, {c.size}-byte datagrams, {how}, {load}, core {core}")


COLUMNS = (f"{'interval s':>13} {'offered/s':>11} {'echoed/s':>11} {'loss %':>8} "
           f"{'p50 ms':>9} {'p99 ms':>9}")


def interval_line(i: UdpInterval) -> str:
    digits = 1 if i.end - i.start >= 0.95 else 2
    span = f"{i.start:.{digits}f}-{i.end:.{digits}f}"
    return (f"{span:>13} {i.offered_per_s:>11.1f} {i.echoed_per_s:>11.1f} "
            f"{i.loss * 100:>8.3f} {i.p50_ms:>9.3f} {i.p99_ms:>9.3f}")


def step_line(rate: float, loss: float) -> str:
    return f"  search: {rate:>11.0f} datagrams/s: loss {loss * 100:.3f}%"


def summary_lines(r: UdpBenchResult) -> list[str]:
    lat = r.latency
    lines = []
    if r.interrupted:
        lines.append(f"Interrupted after {r.elapsed:.3f} s: the figures so far")
    if r.search:
        lines.append(f"Highest rate with loss under {r.config.max_loss * 100:g}%: "
                     f"{r.rate:g} datagrams/s")
    lines += [
        f"Datagrams: {r.sent} sent, {r.received} echoed intact in {r.elapsed:.3f} s: "
        f"{r.offered_per_s:.1f}/s offered, {r.echoed_per_s:.1f}/s echoed, "
        f"loss {r.loss * 100:.3f}%",
        f"Latency ms: min {lat.min:.3f} p50 {lat.p50:.3f} p90 {lat.p90:.3f} "
        f"p99 {lat.p99:.3f} p99.9 {lat.p999:.3f} max {lat.max:.3f}, jitter {r.jitter_ms:.3f}",
        f"Corrupted {r.corrupted}, duplicates {r.duplicates}, reordered {r.reordered}, "
        f"late {r.late}, port unreachable {r.refused}",
    ]
    return lines
