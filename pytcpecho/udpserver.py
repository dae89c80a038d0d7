"""The datagram side of an EchoServer: UDP echo (RFC 862) on the listener's own port.

One UDP socket, bound where the TCP listener is, and one thread running the core's
UdpEchoSession, which holds no GIL while datagrams flow.  The reflection guards run
in the core, on every datagram; this module gives them their rules, turns their
counters into ServerStats fields and log lines (one per reason at most every few
seconds), and keeps the loop alive whatever a peer sends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from .constants import UDP_LOOP_PORTS, UDP_MAX_SIZE, UDP_RATE
from .contract import Core, UdpServerSession
from .sockets import make_blocking
from .units import format_hostport

log = logging.getLogger("pytcpecho.server")

UDP_RCVBUF = 1 << 20
"""Receive buffer asked for the UDP socket: a burst the loop has not reached yet waits
there instead of being dropped by the kernel (the system may grant less)."""
RESTART_PAUSE = 0.1
DROP_LOG_EVERY = 5.0
_WHY = {
    "denied": "from a network --allow/--deny refuses",
    "loop_port": "from a loop-prone source port, a small service's or this server's own",
    "rate_limited": "over --udp-rate {rate:g}/s for one source",
    "truncated": "larger than --udp-max-size {max_size} bytes",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UdpStats:
    """The UDP counters, as ServerStats carries them (udp_ and the name)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    denied: int = 0
    loop_port: int = 0
    rate_limited: int = 0
    truncated: int = 0
    send_errors: int = 0


def packed_rules(networks: Iterable[Network]) -> list[tuple[bytes, int]]:
    """Networks as the core's guards take them: (packed address, prefix length)."""
    return [(net.network_address.packed, net.prefixlen) for net in networks]


class UdpEcho:
    """UDP echo on ``listener``'s address and port, by ``core``, with the guards.

    Built with its socket bound (or an OSError, nothing left open); ``start()``
    runs the loop on its thread, ``stop()`` ends it, ``close()`` releases all.
    """

    def __init__(self, core: Core, listener: socket.socket, dualstack: bool, *,
                 reuse_port: bool = False, allow: Iterable[Network] = (),
                 deny: Iterable[Network] = (), rate: float = UDP_RATE,
                 max_size: int = UDP_MAX_SIZE) -> None:
        if not 1 <= max_size <= 65535:
            raise ValueError("udp_max_size must be 1 to 65535 bytes")
        if not rate >= 0:
            raise ValueError("udp_rate must be 0 (no limit) or positive")
        self.rate = rate
        self.max_size = max_size
        address = listener.getsockname()
        self.sock = socket.socket(listener.family, socket.SOCK_DGRAM)
        try:
            make_blocking(self.sock)
            if dualstack:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuse_port:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            self.sock.bind(address)
            self.session: UdpServerSession = core.UdpEchoSession(
                self.sock.fileno(), max_size, rate, deny=packed_rules(deny),
                allow=packed_rules(allow), blocked_ports=(*UDP_LOOP_PORTS, address[1]))
        except BaseException:
            self.sock.close()
            raise
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._logged = dict.fromkeys(_WHY, 0)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return format_hostport(host, port)

    @property
    def stats(self) -> UdpStats:
        s = self.session
        return UdpStats(s.datagrams_in, s.datagrams_out, s.bytes_in, s.bytes_out, s.denied,
                        s.loop_port, s.rate_limited, s.truncated, s.send_errors)

    def start(self) -> None:
        if self._threads:
            return
        for target, name in ((self._serve, "pytcpecho-udp"), (self._watch, "pytcpecho-udp-log")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """End the loop and its watcher; what they counted stays readable."""
        self._stop.set()
        self.session.stop()
        for thread in self._threads:
            thread.join()
        if self._threads:
            self.log_drops()  # the last few seconds' drops, not only in the summary
            self._threads.clear()

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def _serve(self) -> None:
        """The core's loop, started again after a failure of the socket itself (no peer
        can cause one: the guards and the send errors are counted inside)."""
        while not self._stop.is_set():
            try:
                self.session.run()
            except OSError as exc:
                log.warning("UDP echo on %s failed: %s; going on in %g s", self.address,
                            exc.strerror or exc, RESTART_PAUSE)
                self._stop.wait(RESTART_PAUSE)

    def _watch(self) -> None:
        while not self._stop.wait(DROP_LOG_EVERY):
            self.log_drops()

    def log_drops(self) -> None:
        """One line per reason that dropped datagrams since the last call."""
        for reason, why in _WHY.items():
            count = getattr(self.session, reason)
            new = count - self._logged[reason]
            if new <= 0:
                continue
            self._logged[reason] = count
            last = self.session.last_dropped(reason)
            source = f" (the last from {format_hostport(*last)})" if last else ""
            log.warning("Dropped %d UDP datagram%s %s%s", new, "" if new == 1 else "s",
                        why.format(rate=self.rate, max_size=self.max_size), source)
