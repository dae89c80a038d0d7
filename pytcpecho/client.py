"""EchoClient: send a seeded payload, read the echo, verify every byte, time it."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import core as cores
from .constants import (
    DEFAULT_PORT,
    DEFAULT_SIZE,
    DEFAULT_TIMEOUT,
    MAX_BYTES,
    MIN_INTERVAL,
    MODES,
    PING_SIZE,
    PING_TIMEOUT,
)
from .contract import ClientSession
from .histogram import LatencyStats, summarize
from .pattern import make_base
from .sockets import resolve_error, set_io_timeout, set_nodelay
from .units import check_seconds, format_hostport, parse_port, peer_name
from .verdict import describe_error, describe_failure, stall_hint

MIB = 1024 * 1024


class EchoError(Exception):
    """The client could not reach the server: unknown host, refused, timed out."""


@dataclass(frozen=True)
class EchoResult:
    """What came back: ``intact`` only when every byte sent returned unchanged."""

    host: str
    port: int
    peer: tuple[str, int]
    mode: str
    size: int
    count: int
    seed: int
    sent: int
    received: int
    messages: int
    intact: bool
    problem: str | None
    latency: LatencyStats
    elapsed: float

    @property
    def expected(self) -> int:
        return self.size * self.count

    @property
    def mib_per_s(self) -> float:
        """Echoed bytes per second, in MiB/s."""
        return self.received / self.elapsed / MIB if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result for machines (``client --json``): plain numbers, milliseconds."""
        return {
            "target": format_hostport(self.host, self.port),
            "peer": format_hostport(*self.peer), "mode": self.mode, "size": self.size,
            "count": self.count, "seed": self.seed, "bytes_sent": self.sent,
            "bytes_received": self.received, "messages": self.messages,
            "intact": self.intact, "problem": self.problem,
            "duration_s": round(self.elapsed, 6), "mib_per_s": round(self.mib_per_s, 2),
            "latency_ms": self.latency.as_dict(),
        }


@dataclass(frozen=True)
class Progress:
    """Where a running exchange stands: seconds since it began, bytes back intact so far,
    and the rate over the last interval."""

    elapsed: float
    received: int
    expected: int
    mib_per_s: float


def _report_progress(session: ClientSession, expected: int, started: float, interval: float,
                     done: threading.Event, on_progress: Callable[[Progress], None]) -> None:
    """Sample the session's counter every ``interval`` s until ``done``; the session's
    loop runs on without the GIL, so reading its counter costs it nothing."""
    last_t, last_bytes, tick = 0.0, 0, 1
    while not done.wait(max(0.0, started + tick * interval - time.perf_counter())):
        now = time.perf_counter() - started
        received = session.bytes_received
        rate = (received - last_bytes) / (now - last_t) / MIB if now > last_t else 0.0
        on_progress(Progress(now, received, expected, rate))
        last_t, last_bytes, tick = now, received, tick + 1


class EchoClient:
    """Connects to an echo server and checks that what it sends comes back.

    ``mode="message"`` sends ``count`` messages of ``size`` bytes, each one a
    timed round trip on the same connection (the original exercise's protocol);
    ``mode="stream"`` sends ``size * count`` bytes as one stream while reading
    the echo.  The payload is a pseudo-random pattern from ``seed``, made and
    checked as it flows, so any size runs in constant memory.  ``timeout``
    bounds connecting and every wait for data (None: wait forever).
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, size: int = DEFAULT_SIZE,
                 count: int = 1, mode: str = "message",
                 timeout: float | None = DEFAULT_TIMEOUT, seed: int | None = None,
                 core: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        port = parse_port(port)  # as on the command line, never the port modulo 65536
        if size <= 0 or count <= 0:
            raise ValueError("size and count must be positive")
        if size * count > MAX_BYTES:
            raise ValueError(f"size x count must be at most {MAX_BYTES >> 40} TiB")
        if timeout is not None:
            check_seconds("timeout", timeout, none=" (None: wait forever)")
        self.host = host
        self.port = port
        self.size = size
        self.count = count
        self.mode = mode
        self.timeout = timeout
        self.seed = secrets.randbits(32) if seed is None else seed
        self.core = cores.load(core)

    @property
    def target(self) -> str:
        return format_hostport(self.host, self.port)

    def connect(self) -> socket.socket:
        """A connected socket, set up for the core; EchoError if the server is out of reach."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except (socket.gaierror, UnicodeError) as exc:
            raise EchoError(resolve_error(self.host, exc)) from None
        except ConnectionRefusedError:
            raise EchoError(f"connection refused by {self.target}") from None
        except TimeoutError:
            after = "" if self.timeout is None else f" after {self.timeout:g} s"
            raise EchoError(f"timed out connecting to {self.target}{after}") from None
        except OSError as exc:
            raise EchoError(f"cannot connect to {self.target}: {exc.strerror or exc}") from None
        try:
            set_io_timeout(sock, self.timeout)
            set_nodelay(sock)
        except OSError as exc:
            sock.close()
            raise EchoError(f"connection to {self.target} failed: {exc.strerror}") from None
        return sock

    def _small_echo_passes(self) -> bool:
        """Whether a ping-sized echo on a new connection comes back intact (in at most
        a ping's timeout): tells large packets lost from every packet lost."""
        timeout = min(self.timeout or PING_TIMEOUT, PING_TIMEOUT)
        probe = EchoClient(self.host, self.port, size=PING_SIZE, timeout=timeout,
                           seed=self.seed, core=self.core.NAME)
        try:
            return probe.run().intact
        except EchoError:
            return False

    def run(self, on_progress: Callable[[Progress], None] | None = None,
            interval: float = 1.0) -> EchoResult:
        """Connect, exchange the payload, verify it; see ``EchoResult.intact``.

        ``on_progress`` is called from another thread every ``interval`` seconds
        while the exchange runs (for long checks: a 100 GiB stream takes a while).
        """
        if on_progress is not None:
            check_seconds("interval", interval, MIN_INTERVAL)
        with self.connect() as sock:
            try:
                peer = peer_name(sock.getpeername())
            except OSError as exc:  # reset between connect() and now
                raise EchoError(f"connection to {self.target} failed: {exc.strerror or exc}"
                                ) from None
            session = self.core.ClientSession(sock.fileno(), self.size, make_base(self.seed),
                                              self.mode, self.timeout)
            problem = None
            hint = ""
            started = time.perf_counter()
            done = threading.Event()
            reporter = None
            if on_progress is not None:
                reporter = threading.Thread(
                    target=_report_progress, name="pytcpecho-progress",
                    args=(session, self.size * self.count, started, interval, done, on_progress))
                reporter.start()
            try:
                intact = session.run(self.count)
            except OSError as exc:
                intact = False
                problem = describe_error(exc, self.timeout)
                hint = stall_hint(exc, self.mode, self.size, session, sock,
                                  self._small_echo_passes)
            finally:
                done.set()
                if reporter is not None:
                    reporter.join()
            elapsed = time.perf_counter() - started
        received = session.bytes_received
        if problem is None and not intact:
            problem = describe_failure(session)
        if problem is not None:
            problem += f" ({received} of {self.size * self.count} bytes came back intact){hint}"
        latency = summarize(session.histogram(), max(session.latency_min_ns, 0),
                            session.latency_max_ns, session.latency_sum_ns)
        return EchoResult(self.host, self.port, peer, self.mode, self.size, self.count,
                          self.seed, session.bytes_sent, received, session.messages,
                          intact and problem is None, problem, latency, elapsed)
