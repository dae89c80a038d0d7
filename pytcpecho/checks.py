"""The mesh's two checks of a peer, and the one word each outcome comes down to.

A **ping** is one 64-byte round trip on a new connection: reachability and
latency.  A **bulk** check streams ``size`` verified bytes on a new connection,
after a ping-sized round trip on that same connection: when the small echo
comes back and the large one then stalls, the connection works and only large
packets are lost, the signature of a path-MTU blackhole.  Every byte is
checked, so corruption that passes TCP's checksum shows as a mismatch, with the
offset of the first wrong byte.

Each check ends in one of RESULTS, with a line that says what happened.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .contract import ClientSession, Core
from .pattern import make_base
from .sockets import set_io_timeout, set_nodelay
from .units import format_hostport, format_size

CHECKS = ("ping", "bulk")
RESULTS = ("intact", "mismatch", "short", "stalled", "timeout", "refused", "unreachable")
"""intact: every byte came back; mismatch: a byte differs (at ``offset``); short: the
peer closed or reset before the whole echo; stalled: timed out after some bytes came
back; timeout: timed out connecting, or with nothing back; refused: nothing listens;
unreachable: no route, or the network is down."""

PROBE_SIZE = 64
"""Bytes of a ping, and of the round trip a bulk check starts with."""

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
        return data


def ping(core: Core, address: tuple[str, int], timeout: float) -> Outcome:
    """One 64-byte round trip on a new connection to ``address`` (ip, port)."""
    return _Check(core, "ping", address, PROBE_SIZE, timeout).run()


def bulk(core: Core, address: tuple[str, int], size: int, timeout: float) -> Outcome:
    """A 64-byte round trip, then ``size`` bytes streamed and verified, on one new
    connection, all within ``timeout`` seconds."""
    return _Check(core, "bulk", address, size, timeout).run()


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
