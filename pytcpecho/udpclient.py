"""UdpEchoClient: datagrams to an echo server, each verified and timed, loss counted.

What TCP hides as slowness a datagram probe shows as loss.  Each datagram
carries its sequence number, its send time and a check (the core's
UdpClientSession), so the client tells apart what was lost, what came back
corrupted, twice or out of order, and reads the hop count from the echo's TTL.
``ping --udp``, the mesh's probe and ``bench --udp`` all measure through here or
through the same session.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import core as cores
from .constants import DEFAULT_PORT, PING_SIZE, PING_TIMEOUT, UDP_HEADER, UDP_MAX_SIZE
from .contract import UdpClientSession
from .histogram import LatencyStats, summarize
from .pattern import make_base
from .sockets import make_blocking, resolve_error
from .units import check_seconds, format_hostport, parse_port, peer_name

INITIAL_TTLS = (32, 64, 128, 255)
"""The initial TTLs (hop limits) systems send with: Linux and macOS 64, Windows 128,
network gear 255, a few old stacks 32."""


class UdpEchoError(Exception):
    """The target cannot be reached at all: no such host, or the network refuses."""


def hops(ttl: int) -> int | None:
    """How many hops away the sender of a datagram that arrived with ``ttl`` is, counted
    as traceroute counts them (a peer on the same link is 1 hop away), from the nearest
    usual initial TTL at or above it; None for no TTL."""
    if ttl < 0:
        return None
    initial = next((t for t in INITIAL_TTLS if t >= ttl), 255)
    return initial - ttl + 1


@dataclass(frozen=True)
class UdpResult:
    """What a run of datagrams says about the path: loss, corruption, order, time."""

    target: str
    peer: tuple[str, int]
    size: int
    transmitted: int
    received: int
    corrupted: int
    duplicates: int
    reordered: int
    late: int
    refused: int
    latency: LatencyStats
    jitter_ms: float
    ttl: int | None
    elapsed: float

    @property
    def lost(self) -> int:
        return self.transmitted - self.received

    @property
    def loss(self) -> float:
        """The share of datagrams sent whose echo did not come back intact (0 to 1)."""
        return self.lost / self.transmitted if self.transmitted else 0.0

    @property
    def hops(self) -> int | None:
        return None if self.ttl is None else hops(self.ttl)

    @property
    def intact(self) -> bool:
        return self.transmitted > 0 and self.lost == 0 and self.corrupted == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": "udp", "target": self.target,
            "peer": format_hostport(*self.peer), "size": self.size,
            "transmitted": self.transmitted, "received": self.received, "lost": self.lost,
            "loss": round(self.loss, 6), "corrupted": self.corrupted,
            "duplicates": self.duplicates, "reordered": self.reordered, "late": self.late,
            "refused": self.refused, "rtt_ms": self.latency.as_dict(),
            "jitter_ms": round(self.jitter_ms, 4), "ttl": self.ttl, "hops": self.hops,
            "elapsed_s": round(self.elapsed, 4), "intact": self.intact,
        }


def result_of(session: UdpClientSession, target: str, peer: tuple[str, int], size: int,
              elapsed: float) -> UdpResult:
    """A session's counters as a result."""
    latency = summarize(session.histogram(), max(session.latency_min_ns, 0),
                        session.latency_max_ns, session.latency_sum_ns)
    return UdpResult(target, peer, size, session.sent, session.received, session.corrupted,
                     session.duplicates, session.reordered, session.late, session.refused,
                     latency, session.jitter_ns / 1e6,
                     session.ttl_last if session.ttl_last >= 0 else None, elapsed)


def check_size(size: int) -> int:
    if not UDP_HEADER <= size <= UDP_MAX_SIZE:
        raise ValueError(f"size {size} is out of range: a UDP datagram here is {UDP_HEADER} "
                         f"(its sequence number, time and check) to {UDP_MAX_SIZE} bytes")
    return size


def connect(host: str, port: int) -> socket.socket:
    """A UDP socket connected to host:port (the first address it resolves to), so ICMP
    errors (a closed port) come back to it; UdpEchoError if there is no such host."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port,
                                                              type=socket.SOCK_DGRAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UdpEchoError(resolve_error(host, exc)) from None
    sock = socket.socket(family, kind, proto)
    make_blocking(sock)  # the core waits in the kernel, whatever setdefaulttimeout() says
    try:
        sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        raise UdpEchoError(f"cannot reach {format_hostport(host, port)}: "
                           f"{exc.strerror or exc}") from None
    return sock


Event = tuple[int, int, int, str]
"""(sequence number, round trip ns, TTL, kind) as UdpClientSession.events() gives them."""


class UdpEchoClient:
    """Sends ``count`` datagrams of ``size`` bytes to a UDP echo server, one every
    ``interval`` seconds (as ping does), and waits up to ``timeout`` seconds after the
    last for the echoes still owed.  ``run()`` gives a UdpResult; ``on_event`` sees
    each echo as it comes (a ping's line)."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, size: int = PING_SIZE,
                 count: int = 1, interval: float = 1.0, timeout: float = PING_TIMEOUT,
                 seed: int | None = None, core: str = "auto") -> None:
        port = parse_port(port)
        check_size(size)
        if count <= 0:
            raise ValueError("count must be positive")
        check_seconds("interval", interval)
        check_seconds("timeout", timeout)
        self.host = host
        self.port = port
        self.size = size
        self.count = count
        self.interval = interval
        self.timeout = timeout
        self.seed = secrets.randbits(32) if seed is None else seed
        self.core = cores.load(core)
        self.session: UdpClientSession | None = None

    @property
    def target(self) -> str:
        return format_hostport(self.host, self.port)

    def run(self, on_event: Callable[[Event], None] | None = None) -> UdpResult:
        """Send, collect, verify; UdpEchoError when the network refuses outright (no
        route).  Ctrl-C (KeyboardInterrupt) ends it early: ``partial()`` then says what
        was measured."""
        with connect(self.host, self.port) as sock:
            peer = peer_name(sock.getpeername())
            session = self.core.UdpClientSession(sock.fileno(), self.size,
                                                 make_base(self.seed), self.timeout,
                                                 on_event is not None)
            self.session, self._peer = session, peer
            self._started = started = time.perf_counter()
            try:
                for i in range(self.count):
                    # One datagram now (an open loop of one: it never waits for an echo),
                    # then whatever comes until the next is due.
                    session.run(1, rate=1e9, wait=0)
                    last = i + 1 == self.count
                    due = started + (i + 1) * self.interval
                    while True:
                        left = self.timeout if last else due - time.perf_counter()
                        session.collect(max(left, 0.0))
                        _deliver(session, on_event)
                        now = time.perf_counter()
                        if last or now >= due:
                            break
                        if session.received >= session.sent:  # all in: wait for the next
                            time.sleep(due - now)
                            break
            except OSError as exc:
                raise UdpEchoError(f"cannot reach {self.target}: {exc.strerror or exc}") \
                    from None
            return result_of(session, self.target, peer, self.size,
                             time.perf_counter() - started)

    def partial(self) -> UdpResult | None:
        """What the last run() measured until it was interrupted."""
        if self.session is None:
            return None
        return result_of(self.session, self.target, self._peer, self.size,
                         time.perf_counter() - self._started)


def _deliver(session: UdpClientSession, on_event: Callable[[Event], None] | None) -> None:
    if on_event is not None:
        for event in session.events():
            on_event(event)
