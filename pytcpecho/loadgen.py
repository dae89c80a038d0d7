"""``pytcpecho bench``: a verifying load generator that keeps up with C.

Each connection is a Python thread running the core's client loop, which
holds no GIL while it sends, reads and verifies every byte and counts each
round trip into a histogram in C memory.  The main thread only samples those
counters once per interval (snapshot and difference), so measuring costs no
Python object per message.  ``rate`` runs open loop: a message's latency counts
from when it was due, so a stalled server shows in the percentiles
(coordinated omission corrected, as in wrk2).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import core as cores
from .constants import (
    BENCH_CONNECTIONS,
    BENCH_DURATION,
    BENCH_INTERVAL,
    BENCH_SIZE,
    DEFAULT_TIMEOUT,
    MAX_BYTES,
    MIN_INTERVAL,
    MODES,
    NBUCKETS,
)
from .contract import ClientSession, ConnectEachSession, Core
from .histogram import LatencyStats, summarize
from .pattern import make_base
from .sockets import resolve_error, set_io_timeout, set_nodelay
from .units import check_seconds, format_hostport, format_size, parse_port, plural
from .verdict import describe_error, describe_failure, stall_hint

MIB = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """What to run: ``duration`` seconds, or ``count`` messages in all."""

    host: str
    port: int
    size: int = BENCH_SIZE
    connections: int = BENCH_CONNECTIONS
    duration: float | None = BENCH_DURATION
    count: int | None = None
    mode: str = "message"
    rate: float | None = None
    connect_each: bool = False
    core: str = "auto"
    timeout: float = DEFAULT_TIMEOUT
    interval: float = BENCH_INTERVAL
    seed: int | None = None

    def check(self) -> None:
        """Raise ValueError for options that cannot work together."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        parse_port(self.port)  # as on the command line
        if self.size <= 0 or self.connections <= 0:
            raise ValueError("size and connections must be positive")
        if self.count is not None and self.size * self.count > MAX_BYTES:
            raise ValueError(f"size x count must be at most {MAX_BYTES >> 40} TiB")
        if (self.duration is None) == (self.count is None):
            raise ValueError("give either a duration or a count")
        if self.count is not None and self.count < self.connections:
            raise ValueError(f"count {self.count} is less than one message per connection "
                             f"({self.connections} connections)")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.mode == "stream" and (self.rate or self.connect_each):
            raise ValueError("--rate and --connect-each need message mode")
        check_seconds("timeout", self.timeout)
        check_seconds("interval", self.interval, MIN_INTERVAL)


@dataclass(frozen=True)
class Interval:
    """One report line: counts in [start, end) seconds after the start."""

    start: float
    end: float
    messages: int
    bytes: int
    p50_ms: float
    p99_ms: float

    @property
    def messages_per_s(self) -> float:
        return self.messages / (self.end - self.start) if self.end > self.start else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / (self.end - self.start) / MIB if self.end > self.start else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"start": round(self.start, 3), "end": round(self.end, 3),
                "messages": self.messages, "bytes": self.bytes,
                "messages_per_s": round(self.messages_per_s, 1),
                "mib_per_s": round(self.mib_per_s, 2),
                "p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4)}


@dataclass
class BenchResult:
    """The whole run; ``ok`` only when nothing failed and every byte came back intact."""

    config: BenchConfig
    core: str
    elapsed: float
    messages: int
    bytes_sent: int
    bytes_received: int
    connections_opened: int
    errors: int
    integrity_failures: int
    latency: LatencyStats
    intervals: list[Interval] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes_received / self.elapsed / MIB if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.integrity_failures == 0

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "target": format_hostport(c.host, c.port), "core": self.core, "mode": c.mode,
            "size": c.size, "connections": c.connections, "connect_each": c.connect_each,
            "rate": c.rate, "duration_s": round(self.elapsed, 4), "messages": self.messages,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "messages_per_s": round(self.messages_per_s, 1),
            "mib_per_s": round(self.mib_per_s, 2),
            "latency_ms": {k: v for k, v in self.latency.as_dict().items()},
            "connections_opened": self.connections_opened, "errors": self.errors,
            "integrity_failures": self.integrity_failures, "problems": self.problems[:10],
            "intervals": [i.as_dict() for i in self.intervals],
        }


class NoConnection(Exception):
    """Not one connection could be made."""


@dataclass(frozen=True)
class Job:
    """One connection's share of the run: its session, the socket it owns (None for
    connect-each, whose loop opens its own), and its message count (0: the duration)."""

    session: ClientSession
    sock: socket.socket | None
    count: int
    each: ConnectEachSession | None = None


class _Sample:
    """Counters of every session at one instant."""

    def __init__(self, when: float, sessions: Sequence[ClientSession],
                 stream_size: int = 0) -> None:
        self.when = when
        self.bytes = sum(s.bytes_received for s in sessions)
        if stream_size:  # a stream counts its messages only at the end: derive them
            self.messages = sum(s.bytes_received // stream_size for s in sessions)
        else:
            self.messages = sum(s.messages for s in sessions)
        hists = [s.histogram() for s in sessions]
        self.hist = [sum(col) for col in zip(*hists, strict=True)] if hists else [0] * NBUCKETS


class LoadGenerator:
    """Runs one benchmark: ``run(on_interval)`` returns a BenchResult."""

    def __init__(self, config: BenchConfig) -> None:
        config.check()
        self.config = config
        self.core: Core = cores.load(config.core)
        self.base = make_base(secrets.randbits(32) if config.seed is None else config.seed)
        self._lock = threading.Lock()
        self._errors = 0
        self._integrity = 0
        self._problems: list[str] = []
        self._stream_size = config.size if config.mode == "stream" else 0

    # -- setting up ------------------------------------------------------------

    def _resolve(self) -> tuple[int, Any]:
        c = self.config
        try:
            info = socket.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise NoConnection(resolve_error(c.host, exc)) from None
        family, _, _, _, sockaddr = info[0]
        return family, sockaddr

    def _connect(self, family: int, sockaddr: Any) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.config.timeout)
            sock.connect(sockaddr)
            set_io_timeout(sock, self.config.timeout)
            set_nodelay(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_each_session(self, family: int, sockaddr: Any) -> ConnectEachSession:
        c = self.config
        session = self.core.ConnectEachSession(-1, c.size, self.base, "message", c.timeout)
        host = sockaddr[0].split("%")[0]  # fe80::1%eth0: the scope is sockaddr[3]
        scope_id = sockaddr[3] if family == socket.AF_INET6 else 0
        session.target(socket.inet_pton(family, host), sockaddr[1], scope_id)
        return session

    def _counts(self) -> list[int]:
        """Messages per connection: 0 means run for the duration."""
        c = self.config
        if c.count is None:
            return [0] * c.connections
        share, extra = divmod(c.count, c.connections)
        return [share + (1 if i < extra else 0) for i in range(c.connections)]

    def _fail(self, problem: str, integrity: bool = False) -> None:
        with self._lock:
            if integrity:
                self._integrity += 1
            else:
                self._errors += 1
            self._problems.append(problem)

    # -- running -----------------------------------------------------------------

    def _drive(self, job: Job) -> None:
        c = self.config
        interval = c.connections / c.rate if c.rate else 0.0
        duration = c.duration or 0.0
        session = job.session
        try:
            if job.each is not None:
                intact = job.each.run_each(job.count, interval, duration)
            else:  # --rate needs message mode (check()): a stream's interval is 0
                intact = session.run(job.count, interval, duration)
        except OSError as exc:
            self._fail(describe_error(exc, c.timeout)
                       + stall_hint(exc, c.mode, c.size, session, job.sock))
            return
        finally:
            if job.sock is not None:
                job.sock.close()
        if not intact:
            self._fail(describe_failure(session), integrity=True)

    def run(self, on_interval: Callable[[Interval], None] | None = None) -> BenchResult:
        """Connect everything, run, sample every interval; NoConnection if none connected."""
        c = self.config
        family, sockaddr = self._resolve()
        jobs: list[Job] = []
        first_error = ""
        for count in self._counts():
            if c.connect_each:
                each = self._connect_each_session(family, sockaddr)
                jobs.append(Job(each, None, count, each))
                continue
            try:
                sock = self._connect(family, sockaddr)
            except OSError as exc:
                self._fail(f"cannot connect: {exc.strerror or exc}")
                first_error = first_error or (exc.strerror or str(exc))
                continue
            session = self.core.ClientSession(sock.fileno(), c.size, self.base, c.mode,
                                              c.timeout)
            jobs.append(Job(session, sock, count))
        if not jobs:
            where = format_hostport(c.host, c.port)
            raise NoConnection(f"cannot connect to {where}: {first_error}")
        sessions = [job.session for job in jobs]
        threads = [threading.Thread(target=self._drive, args=(job,), daemon=True,
                                    name=f"bench-{i}")
                   for i, job in enumerate(jobs)]
        started = time.monotonic()
        for t in threads:
            t.start()
        intervals: list[Interval] = []
        last = _Sample(started, sessions, self._stream_size)
        try:
            while any(t.is_alive() for t in threads):
                tick = last.when + c.interval
                for t in threads:
                    t.join(max(0.0, tick - time.monotonic()))
                    if time.monotonic() >= tick:
                        break
                if time.monotonic() >= tick or not any(t.is_alive() for t in threads):
                    now = _Sample(time.monotonic(), sessions, self._stream_size)
                    # A sliver at the end (threads finishing) would print noise.
                    if now.when - last.when >= c.interval / 4 or not intervals:
                        interval = self._interval(started, last, now)
                        intervals.append(interval)
                        if on_interval is not None:
                            on_interval(interval)
                        last = now
        except KeyboardInterrupt:
            for s in sessions:
                s.stop()
            give_up = time.monotonic() + c.timeout  # one timeout for all, not one each
            for t in threads:
                t.join(max(0.0, give_up - time.monotonic()))
            raise
        elapsed = time.monotonic() - started
        opened = sum(job.each.connections if job.each is not None else 1 for job in jobs)
        if c.connect_each and opened == 0:
            raise NoConnection(f"cannot connect to {format_hostport(c.host, c.port)}: "
                               f"{'; '.join(self._problems[:1])}")
        return self._result(sessions, opened, elapsed, intervals)

    @staticmethod
    def _interval(started: float, a: _Sample, b: _Sample) -> Interval:
        diff = [y - x for x, y in zip(a.hist, b.hist, strict=True)]
        lat = summarize(diff, 0, 1 << 62, 0)
        return Interval(a.when - started, b.when - started, b.messages - a.messages,
                        b.bytes - a.bytes, lat.p50, lat.p99)

    def _result(self, sessions: list[ClientSession], opened: int, elapsed: float,
                intervals: list[Interval]) -> BenchResult:
        final = _Sample(time.monotonic(), sessions, self._stream_size)
        timed = [s for s in sessions if s.latency_min_ns >= 0]
        lat = summarize(final.hist, min((s.latency_min_ns for s in timed), default=0),
                        max((s.latency_max_ns for s in timed), default=0),
                        sum(s.latency_sum_ns for s in timed))
        return BenchResult(self.config, self.core.NAME, elapsed, final.messages,
                           sum(s.bytes_sent for s in sessions), final.bytes, opened,
                           self._errors, self._integrity, lat, intervals, self._problems)


# -- text output ----------------------------------------------------------------------

def header(config: BenchConfig, core: str) -> str:
    c = config
    how = f"{c.duration:g} s" if c.duration else f"{c.count} messages"
    what = "messages" if c.mode == "message" else "units of a stream"
    extra = ", connect per message" if c.connect_each else ""
    extra += f", open loop at {c.rate:g} msg/s" if c.rate else ""
    return (f"Benchmarking {format_hostport(c.host, c.port)}: {c.connections} connection"
            f"{plural(c.connections)}, {format_size(c.size)} {what}, {how}, "
            f"core {core}{extra}")


COLUMNS = f"{'interval s':>13} {'msg/s':>11} {'MiB/s':>10} {'p50 ms':>9} {'p99 ms':>9}"


def interval_line(i: Interval) -> str:
    digits = 1 if i.end - i.start >= 0.95 else 2
    span = f"{i.start:.{digits}f}-{i.end:.{digits}f}"
    return (f"{span:>13} {i.messages_per_s:>11.1f} {i.mib_per_s:>10.1f} "
            f"{i.p50_ms:>9.3f} {i.p99_ms:>9.3f}")


def summary_lines(r: BenchResult) -> list[str]:
    lat = r.latency
    lines = [
        f"Messages: {r.messages} in {r.elapsed:.3f} s: {r.messages_per_s:.1f} msg/s, "
        f"{r.mib_per_s:.1f} MiB/s",
        f"Latency ms: min {lat.min:.3f} p50 {lat.p50:.3f} p90 {lat.p90:.3f} "
        f"p99 {lat.p99:.3f} p99.9 {lat.p999:.3f} max {lat.max:.3f}",
        f"Connections: {r.connections_opened} opened, {r.errors} errors, "
        f"{r.integrity_failures} integrity failures",
    ]
    lines += [f"Problem: {p}" for p in r.problems[:5]]
    return lines
