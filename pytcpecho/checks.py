"""The mesh's three checks of a peer, and the one word each outcome comes down to.

A **ping** is one 64-byte round trip on a new connection: reachability and
latency.  A **bulk** check streams ``size`` verified bytes on a new connection,
after a ping-sized round trip on that same connection: when the small echo
comes back and the large one then stalls, the connection works and only large
packets are lost, the signature of a path-MTU blackhole.  Every byte is
checked, so corruption that passes TCP's checksum shows as a mismatch, with the
offset of the first wrong byte.  A **udp** probe sends ``count`` numbered 64-byte
datagrams on a connected UDP socket, in an open loop spread over a fraction of a
second, and collects their echoes: loss that TCP would hide as slowness, the
datagrams' round trips and jitter, and the peer's distance in hops from the
echoes' TTL.

Each TCP check ends in one of RESULTS, a probe in one of UDP_RESULTS, with a line
that says what happened.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .contract import ClientSession, Core
from .histogram import rebucket
from .pattern import make_base
from .sockets import set_io_timeout, set_nodelay
from .udpclient import UdpEchoError, UdpResult, result_of
from .udpclient import connect as udp_connect
from .units import format_hostport, format_size, peer_name, plural

CHECKS = ("ping", "bulk", "udp")
RESULTS = ("intact", "mismatch", "short", "stalled", "timeout", "refused", "unreachable")
"""intact: every byte came back; mismatch: a byte differs (at ``offset``); short: the
peer closed or reset before the whole echo; stalled: timed out after some bytes came
back; timeout: timed out connecting, or with nothing back; refused: nothing listens;
unreachable: no route, or the network is down."""

UDP_RESULTS = ("intact", "lossy", "lost", "refused", "unreachable")
"""A UDP probe's: intact: every datagram came back as sent; lossy: some were lost or
came back corrupted; lost: none came back; refused: the peer's port is closed to UDP
(an ICMP port unreachable: no UDP echo there, as with ``mesh --no-udp``); unreachable:
the datagrams could not be sent (no route)."""

PROBE_SIZE = 64
"""Bytes of a ping, of the round trip a bulk check starts with, and of each datagram of
a UDP probe."""
UDP_SPREAD = 0.2
"""Seconds a UDP probe's datagrams are spread over at most (an open loop: none waits for
an echo); a quarter of the interval when that is shorter."""
UDP_GRACE = 0.5
UDP_GRACE_RTTS = 4
"""Once some echoes of a probe came back, the rest are waited for this long after the
last datagram was sent, at most: 0.5 s or 4 times the slowest round trip seen, whichever
is longer (and within the timeout).  Later ones are lost, as late as that they would be
for the traffic UDP carries; and a lossy peer's probe does not hold a check thread for
the whole timeout each round, delaying its next ping.  With no echo at all, the whole
timeout."""
UDP_STEP = 0.05
"""Seconds of one wait of a probe's collection: between two, it sees whether the peer
refused (then nothing more will come) or the grace for the missing echoes is over."""
RTT_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1.0, 2.5)
"""Upper bounds, in seconds, of the round-trip histograms (Prometheus buckets)."""

_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                          errno.ENETDOWN, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


@dataclass(frozen=True)
class Outcome:
    """How one check of one peer ended."""

    check: str
    result: str
    at: float
    """Unix time when it ended."""
    seconds: float
    """The round trip (ping), or the transfer from first byte sent to last byte back (bulk)."""
    received: int
    """Bytes that came back intact."""
    detail: str
    offset: int | None = None
    """Where the echo first differed (mismatch)."""
    probe: UdpProbe | None = None
    """What a UDP probe measured (None for the TCP checks, and for a probe that could not
    send)."""

    @property
    def intact(self) -> bool:
        return self.result == "intact"

    @property
    def bytes_per_second(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"result": self.result, "at": round(self.at, 3),
                                "detail": self.detail}
        if self.intact and self.check == "ping":
            data["rtt_ms"] = round(self.seconds * 1000, 3)
        if self.intact and self.check == "bulk":
            data["bytes_per_second"] = round(self.bytes_per_second)
        if self.offset is not None:
            data["offset"] = self.offset
        if self.probe is not None:
            data.update(self.probe.as_dict())
        return data


@dataclass(frozen=True)
class UdpProbe:
    """One UDP probe's measurements: its result (udpclient's), and its datagrams' round
    trips counted into RTT_BUCKETS (the last, over the largest bound) with their sum."""

    result: UdpResult
    rtt_counts: tuple[int, ...]
    rtt_sum: float

    @property
    def loss(self) -> float | None:
        """The share of datagrams whose echo did not come back intact; None when the
        peer refused them all (no UDP echo there: nothing was lost)."""
        r = self.result
        if r.received == 0 and r.corrupted == 0 and r.refused:
            return None
        return r.loss

    def as_dict(self) -> dict[str, Any]:
        r, lat = self.result, self.result.latency
        echoed = r.received > 0
        return {"sent": r.transmitted, "received": r.received, "corrupted": r.corrupted,
                "duplicates": r.duplicates, "reordered": r.reordered,
                "loss": None if self.loss is None else round(self.loss, 4),
                "rtt_p50_ms": round(lat.p50, 3) if echoed else None,
                "rtt_p99_ms": round(lat.p99, 3) if echoed else None,
                "jitter_ms": round(r.jitter_ms, 3) if echoed else None,
                "ttl": r.ttl, "hops": r.hops}


def ping(core: Core, address: tuple[str, int], timeout: float) -> Outcome:
    """One 64-byte round trip on a new connection to ``address`` (ip, port)."""
    return _Check(core, "ping", address, PROBE_SIZE, timeout).run()


def bulk(core: Core, address: tuple[str, int], size: int, timeout: float) -> Outcome:
    """A 64-byte round trip, then ``size`` bytes streamed and verified, on one new
    connection, all within ``timeout`` seconds."""
    return _Check(core, "bulk", address, size, timeout).run()


def udp(core: Core, address: tuple[str, int], count: int, timeout: float,
        spread: float = UDP_SPREAD) -> Outcome:
    """``count`` 64-byte datagrams to ``address`` (ip, port) on a connected UDP socket,
    sent in an open loop over ``spread`` seconds, then their echoes collected for at most
    ``timeout`` seconds: less when all came back, when the peer refused them, or, once
    some came, when the missing ones are later than UDP_GRACE allows."""
    target = format_hostport(*address)
    started = time.perf_counter()
    try:
        sock = udp_connect(*address)
    except UdpEchoError as exc:
        return Outcome("udp", "unreachable", time.time(), 0.0, 0, str(exc))
    with sock:
        session = core.UdpClientSession(sock.fileno(), PROBE_SIZE,
                                        make_base(secrets.randbits(32)), timeout)
        try:
            session.run(count, rate=count / max(spread, 0.001), wait=0)
            last_sent = time.monotonic()
            while session.received + session.corrupted + session.refused < session.sent:
                if session.refused and not session.received:
                    break  # a closed port: nothing more will come
                wait = timeout
                if session.received:
                    wait = min(wait, max(UDP_GRACE,
                                         UDP_GRACE_RTTS * session.latency_max_ns / 1e9))
                left = last_sent + wait - time.monotonic()
                session.collect(min(max(left, 0.0), UDP_STEP))  # 0: what is queued already
                if left <= 0:
                    break
        except OSError as exc:  # an ICMP error other than a closed port: no route
            return Outcome("udp", "unreachable", time.time(), time.perf_counter() - started,
                           0, f"cannot send: {exc.strerror or exc}")
        elapsed = time.perf_counter() - started
        result = result_of(session, target, peer_name(sock.getpeername()), PROBE_SIZE,
                           elapsed)
        counts = rtt_counts(session.histogram(), session.latency_min_ns,
                            session.latency_max_ns)
        probe = UdpProbe(result, counts, session.latency_sum_ns / 1e9)
    kind, detail = _udp_verdict(result, timeout)
    return Outcome("udp", kind, time.time(), elapsed, result.received * PROBE_SIZE, detail,
                   probe=probe)


def _udp_verdict(r: UdpResult, timeout: float) -> tuple[str, str]:
    sent = f"{r.transmitted} datagram{plural(r.transmitted)}"
    if r.received == 0 and r.corrupted == 0:
        if r.refused:
            return "refused", "no UDP echo there: port unreachable (ICMP)"
        return "lost", f"none of {sent} came back in {timeout:g} s"
    if r.intact:
        return "intact", f"{r.received} of {sent} back intact"
    lost = r.transmitted - r.received
    corrupted = f", {r.corrupted} corrupted" if r.corrupted else ""
    return "lossy", f"{lost} of {sent} not back intact ({r.loss * 100:.0f}% loss{corrupted})"


def rtt_counts(histogram: Sequence[int], min_ns: int, max_ns: int) -> tuple[int, ...]:
    """A core's latency histogram counted into RTT_BUCKETS (one count more, for over the
    largest bound)."""
    return rebucket(histogram, RTT_BUCKETS, min_ns, max_ns)


class _Check:
    def __init__(self, core: Core, check: str, address: tuple[str, int], size: int,
                 timeout: float) -> None:
        self.core, self.check, self.address = core, check, address
        self.size, self.timeout = size, timeout
        self.target = format_hostport(*address)
        self.received = 0
        self.started = 0.0
        self.deadline = 0.0

    def run(self) -> Outcome:
        self.deadline = time.monotonic() + self.timeout
        try:
            sock = self._connect()
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            return self._broken(exc, 0)  # accepted, then reset before connect() returned
        except OSError as exc:
            return self._end(*_connect_failure(exc, self.timeout))
        with sock:
            return self._exchange(sock)

    def _connect(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.address)
            set_io_timeout(sock, self.timeout)  # blocking, each wait bounded, for the core
            set_nodelay(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(self, sock: socket.socket) -> Outcome:
        seed = secrets.randbits(32)
        probe = self.core.ClientSession(sock.fileno(), PROBE_SIZE, make_base(seed), "message",
                                        self.timeout)
        cut = threading.Event()
        watchdog = None
        if self.check == "bulk":  # the whole check within the timeout, however data trickles
            left = max(0.001, self.deadline - time.monotonic())
            watchdog = threading.Timer(left, _cut, (sock, cut))
            watchdog.daemon = True
            watchdog.start()
        session: ClientSession = probe
        try:
            self.started = time.perf_counter()
            if not probe.run(1, finish=self.check == "ping"):
                return self._timed_out(0) if cut.is_set() else self._failed(probe, 0)
            self.received = probe.bytes_received
            if self.check == "ping":
                return self._end("intact", f"{PROBE_SIZE} bytes back intact",
                                 seconds=probe.latency_min_ns / 1e9)
            session = self.core.ClientSession(sock.fileno(), self.size, make_base(seed ^ 1),
                                              "stream", self.timeout)
            self.started = time.perf_counter()
            if not session.run(1):
                done = PROBE_SIZE + session.bytes_received
                return self._timed_out(done) if cut.is_set() else self._failed(session, PROBE_SIZE)
            self.received = session.bytes_received
            return self._end("intact", f"{format_size(self.size)} back intact")
        except OSError as exc:
            done = session.bytes_received + (PROBE_SIZE if session is not probe else 0)
            if cut.is_set() or isinstance(exc, TimeoutError):
                return self._timed_out(done)
            return self._broken(exc, done)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def _failed(self, session: ClientSession, before: int) -> Outcome:
        """The echo came back, but not as sent; ``before`` bytes came back intact ahead of
        this session's (the bulk check's probe).  Offsets count from the connection's
        first byte, as a packet capture does."""
        if session.mismatch_offset >= 0:
            self.received = offset = before + session.mismatch_offset
            return self._end("mismatch", f"echo differs from what was sent at byte {offset}",
                             offset=offset)
        self.received = before + session.bytes_received
        if session.long_echo > 0:
            return self._end("mismatch", f"{session.long_echo} bytes came back that were "
                             "never sent", offset=before + session.bytes_sent)
        return self._end("short", f"the peer closed the connection after "
                         f"{self.received} of {before + self.size} bytes")

    def _broken(self, exc: OSError, done: int) -> Outcome:
        """The connection failed (a reset) after ``done`` bytes came back: short."""
        self.received = done
        return self._end("short", f"connection failed after {done} bytes: "
                         f"{exc.strerror or exc}")

    def _timed_out(self, done: int) -> Outcome:
        """Out of time, with ``done`` bytes back: stalled if any came, else timeout."""
        self.received = done
        if done:
            return self._end("stalled", f"stalled: {done} of {self._expected()} bytes came back "
                             f"in {self.timeout:g} s")
        return self._end("timeout", f"nothing came back in {self.timeout:g} s")

    def _expected(self) -> int:
        return PROBE_SIZE + self.size if self.check == "bulk" else PROBE_SIZE

    def _end(self, result: str, detail: str, seconds: float | None = None,
             offset: int | None = None) -> Outcome:
        if seconds is None:
            seconds = time.perf_counter() - self.started if self.started else 0.0
        return Outcome(self.check, result, time.time(), seconds, self.received, detail, offset)


def _connect_failure(exc: OSError, timeout: float) -> tuple[str, str]:
    if isinstance(exc, TimeoutError):
        return "timeout", f"timed out connecting, after {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if exc.errno in _UNREACHABLE:
        return "unreachable", f"cannot connect: {exc.strerror}"
    return "unreachable", f"cannot connect: {exc.strerror or exc}"


def _cut(sock: socket.socket, cut: threading.Event) -> None:
    """The check's time is up: wake its session, which fails, and say why."""
    cut.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
