"""``pytcpecho bench``: a verifying load generator that keeps up with C.

A few threads (one per core by default) each drive many connections from one
epoll set in the core's ClientGroup, which holds no GIL while it sends, reads
and verifies every byte and counts each round trip into a histogram in C
memory.  The main thread only samples those counters once per interval
(snapshot and difference), so measuring costs no Python object per message,
and with a few busy threads rather than one per connection it always gets
the CPU to keep the clock, at 10 connections or 10,000.  ``rate`` runs open
loop: a message's latency counts from when it was due, so a stalled server
shows in the percentiles (coordinated omission corrected, as in wrk2).
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import core as cores
from ._version import __version__
from .constants import (
    BENCH_CONNECTIONS,
    BENCH_DRAIN,
    BENCH_DURATION,
    BENCH_FORMAT,
    BENCH_INTERVAL,
    BENCH_SIZE,
    DEFAULT_TIMEOUT,
    MAX_BYTES,
    MIN_INTERVAL,
    MODES,
    NBUCKETS,
)
from .contract import ClientGroup, ConnectEachSession, Core
from .histogram import Histogram, LatencyStats, summarize
from .output import RunInterrupted, RunUnreachable
from .pattern import make_base
from .sockets import (
    open_fds,
    raise_nofile_limit,
    resolve_error,
    set_io_timeout,
    set_nodelay,
)
from .starttime import wait_until
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
    threads: int | None = None
    """Threads driving the connections (None: one per core); connect-each: one each."""
    start_at: float | None = None
    """Unix time to start the load at, once connected (None: at once): --start-at."""

    def check(self) -> None:
        """Raise ValueError for options that cannot work together."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        parse_port(self.port)  # as on the command line
        if self.size <= 0 or self.connections <= 0:
            raise ValueError("size and connections must be positive")
        if self.threads is not None and self.threads <= 0:
            raise ValueError("threads must be positive")
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
    interrupted: bool = False
    """Ctrl-C ended the run early: the figures are what it measured until then."""
    unfinished: int = 0
    """Exchanges still in flight when the drain after the deadline ran out: sent, and
    neither verified nor failed."""
    histogram: Histogram = field(default_factory=Histogram.empty)
    """Every round trip, bucketed: what ``pytcpecho merge`` adds up across machines."""
    started_at: float = 0.0
    """Unix time the load started (after connecting, and any --start-at wait)."""

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
            "interrupted": self.interrupted, "unfinished": self.unfinished,
            "intervals": [i.as_dict() for i in self.intervals],
            **result_stamp(self.started_at, self.elapsed, self.histogram),
        }


def result_stamp(started_at: float, elapsed: float, histogram: Histogram) -> dict[str, Any]:
    """What makes a result mergeable with others: its format and version, when it ran (Unix
    time), which pod of an Indexed Job made it, and its whole histogram."""
    index = os.environ.get("JOB_COMPLETION_INDEX", "")
    return {"format": BENCH_FORMAT, "version": __version__,
            "started_at": round(started_at, 6), "ended_at": round(started_at + elapsed, 6),
            "index": int(index) if index.isdigit() else None,
            "histogram": histogram.to_json()}


class NoConnection(RunUnreachable):
    """Not one connection could be made."""


class Interrupted(RunInterrupted):
    """Ctrl-C stopped the run; ``result`` (a BenchResult) holds what it measured."""


FD_RESERVE = 16
"""File descriptors kept free beyond the connections and the loop threads' epoll sets
(standard streams, the resolver, imports)."""


@dataclass(frozen=True)
class Lane:
    """One thread's share of the run: a ClientGroup driving many connections, and their
    sockets in the order the group numbers them, kept open until the end (a failure's
    hint reads their TCP state); or, for connect-each, one session of its own and its
    message count."""

    group: ClientGroup | None = None
    socks: tuple[socket.socket, ...] = ()
    each: ConnectEachSession | None = None
    count: int = 0

    @property
    def counters(self) -> ClientGroup | ConnectEachSession:
        counters = self.group if self.group is not None else self.each
        assert counters is not None
        return counters


class _Sample:
    """Counters of every lane at one instant."""

    def __init__(self, when: float, lanes: Sequence[Lane]) -> None:
        self.when = when
        counters = [lane.counters for lane in lanes]
        self.bytes = sum(c.bytes_received for c in counters)
        self.messages = sum(c.messages for c in counters)
        hists = [c.histogram() for c in counters]
        self.hist = [sum(col) for col in zip(*hists, strict=True)] if hists else [0] * NBUCKETS

    def histogram(self, counters: Sequence[ClientGroup | ConnectEachSession]) -> Histogram:
        """The sample's buckets with the loops' exact min, max and sum (read now)."""
        timed = [c for c in counters if c.latency_min_ns >= 0]
        return Histogram(tuple(self.hist), min((c.latency_min_ns for c in timed), default=-1),
                         max((c.latency_max_ns for c in timed), default=0),
                         sum(c.latency_sum_ns for c in timed))


class LoadGenerator:
    """Runs one benchmark: ``run(on_interval)`` returns a BenchResult.

    Connections are spread over a few threads (``threads``, by default one per
    core), each driving its share from one epoll set in the core's ClientGroup,
    without the GIL; connect-each runs a thread per connection.
    """

    def __init__(self, config: BenchConfig) -> None:
        config.check()
        self.config = config
        self.core: Core = cores.load(config.core)
        self.base = make_base(secrets.randbits(32) if config.seed is None else config.seed)
        self.threads = (config.connections if config.connect_each
                        else min(config.threads or os.cpu_count() or 1, config.connections))
        self._check_fds()
        self._lock = threading.Lock()
        self._errors = 0
        self._integrity = 0
        self._problems: list[str] = []
        self._running = 0
        self._ended = 0.0
        self._started_at = 0.0
        self._lanes_now: list[Lane] = []
        self._all_ended = threading.Event()

    def _check_fds(self) -> None:
        """Raise the soft fd limit as ``serve`` does; ValueError if -c cannot fit under it."""
        limit = raise_nofile_limit()
        epoll_sets = 0 if self.config.connect_each else self.threads
        need = self.config.connections + epoll_sets + FD_RESERVE
        have = limit - open_fds()
        if need > have:
            raise ValueError(
                f"{self.config.connections} connections need about {need} file descriptors, "
                f"but this process may open {max(0, have)} more (RLIMIT_NOFILE {limit}; "
                "raise the hard limit, or run fewer connections per process)")

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

    def _lanes(self, family: int, sockaddr: Any) -> list[Lane]:
        """Connect everything and deal the connections out to the threads' lanes."""
        c = self.config
        counts = self._counts()
        if c.connect_each:
            return [Lane(each=self._connect_each_session(family, sockaddr), count=n)
                    for n in counts]
        socks: list[list[socket.socket]] = [[] for _ in range(self.threads)]
        groups = [self.core.ClientGroup(c.size, self.base, c.mode, c.timeout)
                  for _ in range(self.threads)]
        first_error = ""
        connected = 0
        try:
            for count in counts:
                try:
                    sock = self._connect(family, sockaddr)
                except OSError as exc:
                    self._fail(f"cannot connect: {exc.strerror or exc}")
                    first_error = first_error or (exc.strerror or str(exc))
                    continue
                lane = connected % self.threads
                socks[lane].append(sock)
                groups[lane].add(sock.fileno(), count)
                connected += 1
        except BaseException:
            for sock in itertools.chain.from_iterable(socks):
                sock.close()
            raise
        if not connected:
            raise NoConnection(f"cannot connect to {format_hostport(c.host, c.port)}: "
                               f"{first_error}")
        return [Lane(group=g, socks=tuple(ss)) for g, ss in zip(groups, socks, strict=True)
                if ss]

    def live(self) -> tuple[int, int, dict[str, int], Histogram]:
        """Messages and bytes echoed intact so far, failures by kind, and the latency
        histogram: safe to read from another thread while the run goes on."""
        lanes = self._lanes_now
        counters = [lane.counters for lane in lanes]
        # Messages first: a message counts once all its bytes came, so the bytes read after
        # them are never fewer than the messages' own.
        messages = sum(c.messages for c in counters)
        sample = _Sample(0.0, lanes)
        with self._lock:
            errors = {"connection": self._errors, "integrity": self._integrity}
        return messages, sample.bytes, errors, sample.histogram(counters)

    def _fail(self, problem: str, integrity: bool = False) -> None:
        with self._lock:
            if integrity:
                self._integrity += 1
            else:
                self._errors += 1
            self._problems.append(problem)

    # -- running -----------------------------------------------------------------

    def _drive(self, lane: Lane) -> None:
        c = self.config
        interval = c.connections / c.rate if c.rate else 0.0
        duration = c.duration or 0.0
        try:
            if lane.each is not None:
                try:
                    if not lane.each.run_each(lane.count, interval, duration):
                        self._fail(describe_failure(lane.each), integrity=True)
                except OSError as exc:
                    self._fail(describe_error(exc, c.timeout)
                               + stall_hint(exc, c.mode, c.size, lane.each))
                finally:
                    self._lane_ended()
                return
            assert lane.group is not None
            drain = min(c.timeout, max(BENCH_DRAIN, duration / 200))
            try:
                lane.group.run(interval, duration, True, drain)
            except OSError as exc:  # the loop itself failed: every connection of it ends
                self._fail(describe_error(exc, c.timeout))
            finally:
                self._lane_ended()
            for member in lane.group.failures():
                if member.error is None:
                    self._fail(describe_failure(member), integrity=True)
                else:
                    sock = lane.socks[member.index]
                    self._fail(describe_error(member.error, c.timeout)
                               + stall_hint(member.error, c.mode, c.size, member, sock))
        finally:
            for sock in lane.socks:
                sock.close()

    def _lane_ended(self) -> None:
        """One lane's loop returned; the last one ends the measured time."""
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._ended = time.monotonic()
                self._all_ended.set()

    def run(self, on_interval: Callable[[Interval], None] | None = None,
            on_wait: Callable[[str], None] | None = None) -> BenchResult:
        """Connect everything, wait for --start-at (``on_wait`` gets a line saying so), run,
        sample every interval; NoConnection if none connected, Interrupted (a
        KeyboardInterrupt, with the result so far) on Ctrl-C.

        Interval k ends at k x interval after the start, by the clock, not after the
        last one (which a busy moment could delay), so lines never drift.
        """
        c = self.config
        family, sockaddr = self._resolve()
        lanes = self._lanes_now = self._lanes(family, sockaddr)
        if c.start_at is not None:
            try:
                wait_until(c.start_at, on_wait)
            except BaseException:  # Ctrl-C while waiting: nothing ran, nothing to report
                for lane in lanes:
                    for sock in lane.socks:
                        sock.close()
                raise
        threads = [threading.Thread(target=self._drive, args=(lane,), daemon=True,
                                    name=f"bench-{i}")
                   for i, lane in enumerate(lanes)]
        self._running = len(threads)
        self._started_at = time.time()
        started = time.monotonic()
        for t in threads:
            t.start()
        intervals: list[Interval] = []
        last = _Sample(started, lanes)

        def report(now: _Sample) -> None:
            nonlocal last
            interval = self._interval(started, last, now)
            intervals.append(interval)
            if on_interval is not None:
                on_interval(interval)
            last = now

        try:
            k = 1
            while not self._all_ended.wait(max(0.0, started + k * c.interval
                                               - time.monotonic())):
                report(_Sample(time.monotonic(), lanes))
                k = max(k + 1, int((last.when - started) / c.interval) + 1)  # skip missed ticks
            # What came after the last tick; a sliver (the drain) would print noise.
            if self._ended - last.when >= c.interval / 4 or not intervals:
                report(_Sample(self._ended, lanes))
        except KeyboardInterrupt:
            for lane in lanes:
                lane.counters.stop()
            self._all_ended.wait(c.timeout)  # one timeout for all, not one each
            ended = self._ended or time.monotonic()
            self._join(threads, c.timeout)
            result = self._result(lanes, ended - started, intervals)
            result.interrupted = True
            raise Interrupted(result) from None
        self._join(threads, c.timeout)
        if c.connect_each and not sum(lane.counters.connections for lane in lanes):
            raise NoConnection(f"cannot connect to {format_hostport(c.host, c.port)}: "
                               f"{'; '.join(self._problems[:1])}")
        return self._result(lanes, self._ended - started, intervals)

    @staticmethod
    def _join(threads: list[threading.Thread], timeout: float) -> None:
        """Wait for the lanes to report their failures and close their sockets."""
        give_up = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, give_up - time.monotonic()))

    @staticmethod
    def _interval(started: float, a: _Sample, b: _Sample) -> Interval:
        diff = [y - x for x, y in zip(a.hist, b.hist, strict=True)]
        lat = summarize(diff, 0, 1 << 62, 0)
        return Interval(a.when - started, b.when - started, b.messages - a.messages,
                        b.bytes - a.bytes, lat.p50, lat.p99)

    def _result(self, lanes: list[Lane], elapsed: float,
                intervals: list[Interval]) -> BenchResult:
        final = _Sample(time.monotonic(), lanes)
        counters = [lane.counters for lane in lanes]
        histogram = final.histogram(counters)
        opened = sum(s.connections for s in counters)
        unfinished = sum(lane.group.unfinished for lane in lanes if lane.group is not None)
        return BenchResult(self.config, self.core.NAME, elapsed, final.messages,
                           sum(s.bytes_sent for s in counters), final.bytes, opened,
                           self._errors, self._integrity, histogram.summary(), intervals,
                           self._problems, unfinished=unfinished, histogram=histogram,
                           started_at=self._started_at)


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
        f"{r.integrity_failures} integrity failures"
        + (f", {r.unfinished} still in flight at the end (not awaited)" if r.unfinished else ""),
    ]
    lines += [f"Problem: {p}" for p in r.problems[:5]]
    if r.interrupted:
        lines.insert(0, f"Interrupted after {r.elapsed:.3f} s: the figures so far")
    return lines
