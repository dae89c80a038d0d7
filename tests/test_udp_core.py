"""The UDP sessions of every core: UdpEchoSession and UdpClientSession, on real sockets.

A server session runs in a thread on a bound socket, a client session in the test
thread on a connected one.  The wire format is checked byte for byte against its
definition here, not against either core, so the two cores (and a client of one
against the server of the other) must agree with it.  Misbehaving peers are
``fakes.UdpFake`` or a plain socket the test answers with; the counts they cause
are exact.  Nothing sleeps to wait: waits are on counters, with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import UdpFake
from support import LOCALHOST, require_cython, require_ipv6

from pytcpecho import core as cores
from pytcpecho.constants import (
    MAX_TIMEOUT,
    UDP_DROP_REASONS,
    UDP_HEADER,
    UDP_MAX_SIZE,
    UDP_MIN_BURST,
    UDP_TRACE,
)
from pytcpecho.contract import UdpClientSession, UdpServerSession
from pytcpecho.pattern import make_base

pytestmark = pytest.mark.timeout(60)

BASE = make_base(862)
LOOPBACK_TTL = 64  # Linux's default TTL and hop limit, which loopback leaves as it is
BIG_BUFFER = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's; Python does not name it


# -- the wire format, from its definition -------------------------------------------------

def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def datagram(seq: int, send_ns: int, session_id: int, size: int) -> bytes:
    """A client datagram as the contract defines it."""
    head = struct.pack("<QQI", seq, send_ns, session_id)
    return head + struct.pack("<I", fnv1a(head)) + BASE[UDP_HEADER:size]


# -- helpers --------------------------------------------------------------------------------

def big_buffers(sock: socket.socket) -> None:
    """Room for a burst: the Python core's loops fall behind a fast sender for a while."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BIG_BUFFER)  # up to rmem_max
    with contextlib.suppress(OSError):  # root may have more
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BIG_BUFFER)


def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail, saying ``what``, after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)


@dataclass
class Served:
    """A UdpEchoSession serving in a thread."""

    session: UdpServerSession
    sock: socket.socket
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def address(self) -> tuple[Any, ...]:
        return tuple(self.sock.getsockname())

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def drops(self) -> int:
        s = self.session
        return s.denied + s.loop_port + s.rate_limited + s.truncated

    def balanced(self) -> bool:
        """Every datagram that came is echoed, dropped for a reason or failed to go."""
        s = self.session
        return s.datagrams_in == s.datagrams_out + self.drops() + s.send_errors

    def settled(self, datagrams: int) -> UdpServerSession:
        """The session, once ``datagrams`` came and each is accounted for (a client may
        read an echo before the server thread counts it)."""
        until(lambda: self.session.datagrams_in == datagrams and self.balanced(),
              f"{datagrams} datagrams in, each accounted for")
        return self.session


@contextlib.contextmanager
def udp_server(core: str, host: str = LOCALHOST, dual_stack: bool = False,
               **options: Any) -> Iterator[Served]:
    """A server session of ``core`` on ``host`` (the kernel's port), run() in a thread;
    stopped, joined and closed on exit, and run() must have raised nothing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if dual_stack:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    big_buffers(sock)
    sock.bind((host, 0))
    session = cores.load(core).UdpEchoSession(sock.fileno(), **options)
    served = Served(session, sock, threading.Thread())

    def serve() -> None:
        try:
            session.run()
        except BaseException as exc:
            served.errors.append(exc)

    served.thread = threading.Thread(target=serve, name="udp-server", daemon=True)
    served.thread.start()
    try:
        yield served
    finally:
        session.stop()
        served.thread.join(5)
        assert not served.thread.is_alive(), "run() did not return after stop()"
        sock.close()  # not while run() may still use it
        assert served.errors == []


@contextlib.contextmanager
def peer(address: tuple[Any, ...], bind: tuple[str, int] | None = None) -> Iterator[socket.socket]:
    """A UDP socket connected to ``address`` (and bound to ``bind`` first)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        big_buffers(sock)
        if bind is not None:
            sock.bind(bind)
        sock.connect(address[:2])
        yield sock


def client(core: str, sock: socket.socket, size: int = 64, timeout: float | None = 5.0,
           trace: bool = False) -> UdpClientSession:
    return cores.load(core).UdpClientSession(sock.fileno(), size, BASE, timeout, trace)


def assert_all_intact(c: UdpClientSession, count: int, size: int) -> None:
    assert c.sent == c.received == c.messages == count
    assert c.corrupted == c.duplicates == c.reordered == c.late == c.refused == 0
    assert c.bytes_sent == c.bytes_received == count * size
    assert sum(c.histogram()) == count
    assert 0 <= c.latency_min_ns <= c.latency_max_ns <= c.latency_sum_ns
    assert c.jitter_ns >= 0.0


def sizes() -> list[int]:
    return [UDP_HEADER, 64, 1400, UDP_MAX_SIZE]


# -- echo, intact ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", sizes())
def test_lockstep_echo_is_intact_and_counted_exactly(core: str, size: int) -> None:
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock, size)
        assert c.run(50)
        assert_all_intact(c, 50, size)
        assert c.ttl_last == c.ttl_min == c.ttl_max == LOOPBACK_TTL
        s = server.settled(50)
        assert s.datagrams_out == 50
        assert s.bytes_in == s.bytes_out == 50 * size
        assert server.drops() == s.send_errors == 0


@pytest.mark.parametrize(("size", "rate", "count"),
                         [(UDP_HEADER, 2000, 200), (64, 2000, 200), (1400, 2000, 200),
                          (UDP_MAX_SIZE, 500, 40)])
def test_open_loop_echo_is_intact(core: str, size: int, rate: float, count: int) -> None:
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock, size)
        started = time.monotonic()
        assert c.run(count, rate=rate)
        # The last datagram is due at (count - 1) / rate: the loop keeps to the clock.
        assert time.monotonic() - started >= (count - 1) / rate
        assert_all_intact(c, count, size)
        assert server.settled(count).datagrams_out == count


@pytest.mark.parametrize("rate", [0.0, 100.0])
def test_a_duration_bounds_the_run(core: str, rate: float) -> None:
    # Lockstep on loopback goes faster than the server's default limit (UDP_RATE).
    with udp_server(core, rate=0) as server, peer(server.address) as sock:
        c = client(core, sock)
        started = time.monotonic()
        assert c.run(0, rate=rate, duration=0.3)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 2.0  # to the end, though the last was due before it
        assert c.sent == c.received > 0
        if rate:
            # One due every 10 ms for 300 ms (fewer when the host is so busy that the
            # loop wakes past the end, with some still due).
            assert 0 < c.sent <= 30


def test_runs_go_on_numbering(core: str) -> None:
    """A session runs again and again (ping: one a second); its counters add up."""
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock, trace=True)
        for i in range(3):
            assert c.run(1)
            [(seq, rtt, ttl, kind)] = c.events()
            assert (seq, ttl, kind) == (i, LOOPBACK_TTL, "echo") and rtt > 0
        assert c.run(5, rate=1000)
        assert_all_intact(c, 8, 64)
        assert [e[0] for e in c.events()] == list(range(3, 8))


def test_ipv6_echo_and_hop_limit(core: str) -> None:
    require_ipv6()
    with udp_server(core, "::1") as server, peer(server.address) as sock:
        c = client(core, sock, 1400)
        assert c.run(20)
        assert c.run(20, rate=2000)
        assert_all_intact(c, 40, 1400)
        assert c.ttl_last == c.ttl_min == c.ttl_max == LOOPBACK_TTL


@pytest.mark.parametrize(("server_core", "client_core"),
                         [("python", "cython"), ("cython", "python")])
def test_cross_core(server_core: str, client_core: str) -> None:
    """Either core's client verifies the other's server: the same bytes on the wire."""
    require_cython()
    with udp_server(server_core) as server, peer(server.address) as sock:
        c = client(client_core, sock, 1400)
        assert c.run(30)
        assert c.run(30, rate=2000)
        assert_all_intact(c, 60, 1400)
        assert server.settled(60).datagrams_out == 60


def test_the_socket_is_left_as_it_was(core: str) -> None:
    """The caller owns the fd: open and blocking after the sessions are done with it."""
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock)
        assert c.run(3) and c.run(3, rate=1000) and c.collect(0.01)
        del c
        assert os.get_blocking(sock.fileno())
        sock.settimeout(5)
        sock.send(b"still open")
        assert sock.recv(100) == b"still open"
        server.session.stop()
        server.thread.join(5)
        assert os.get_blocking(server.sock.fileno())


# -- the wire format and the verdicts -------------------------------------------------------

def test_wire_format_and_every_kind_of_bad_echo(core: str) -> None:
    """The datagram is the contract's, byte for byte; each bad echo is told apart."""
    size = 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((LOCALHOST, 0))
        server.settimeout(5)
        with peer(server.getsockname()) as sock:
            c = client(core, sock, size, timeout=0.05, trace=True)
            before = time.monotonic_ns()
            assert not c.run(1, wait=0)  # nobody answers: lost, for now
            after = time.monotonic_ns()
            data, source = server.recvfrom(1 << 16)
            assert source == sock.getsockname()
            assert len(data) == size
            seq, send_ns, session_id, check = struct.unpack_from("<QQII", data)
            assert seq == 0 and before <= send_ns <= after
            assert check == fnv1a(data[:20])
            assert data[UDP_HEADER:] == BASE[UDP_HEADER:size]
            assert data == datagram(0, send_ns, session_id, size)

            bad_check = bytearray(data)
            bad_check[8] ^= 1
            flipped = bytearray(data)
            flipped[size - 1] ^= 0x80
            for bad in (data[:10],                                 # no whole header
                        bytes(bad_check),                          # the check fails
                        datagram(0, send_ns, session_id ^ 1, size),  # another session's
                        bytes(flipped),                            # payload changed
                        data + b"x",                               # longer
                        data[:-1]):                                # shorter
                server.sendto(bad, source)
            server.sendto(data, source)  # at last, the echo itself...
            server.sendto(data, source)  # ...and once more
            assert not c.collect(5)  # every datagram came back, but not every echo intact

            def both_read() -> bool:
                c.collect(0)
                return c.duplicates == 1

            until(both_read, "the second echo read")
            assert (c.sent, c.received, c.corrupted, c.duplicates) == (1, 1, 6, 1)
            assert c.reordered == c.late == c.refused == 0
            assert c.bytes_received == size
            events = c.events()
            assert [e[3] for e in events] == ["corrupted"] * 6 + ["echo", "duplicate"]
            # Sequence number and time -1 where the header is not this session's own.
            assert [e[:2] for e in events[:3]] == [(-1, -1)] * 3
            assert all(e[0] == 0 and e[1] > 0 for e in events[3:])
            assert all(e[2] == LOOPBACK_TTL for e in events)


def test_duplicates_and_reordering_are_counted_exactly(core: str) -> None:
    with UdpFake(twice={3, 10}, hold={5: 8, 12: 13}) as fake, peer(fake.address) as sock:
        c = client(core, sock, 64, trace=True)
        assert c.run(20, rate=1000)
        # Each duplicate left the fake before a later echo that run() waited for.
        assert (c.sent, c.received, c.duplicates, c.reordered) == (20, 20, 2, 2)
        assert c.corrupted == c.late == c.refused == 0
        assert sum(c.histogram()) == 20  # a duplicate is not timed again
        events = c.events()
        assert [e[0] for e in events if e[3] == "duplicate"] == [3, 10]
        echoes = [e[0] for e in events if e[3] == "echo"]
        assert echoes == [0, 1, 2, 3, 4, 6, 7, 8, 5, 9, 10, 11, 13, 12, 14, 15, 16, 17, 18, 19]


def test_lockstep_duplicates(core: str) -> None:
    with UdpFake(twice={2}) as fake, peer(fake.address) as sock:
        c = client(core, sock)
        assert c.run(5)
        assert (c.received, c.duplicates, c.reordered) == (5, 1, 0)


def test_a_corrupted_payload_is_not_received(core: str) -> None:
    with UdpFake(corrupt={4}) as fake, peer(fake.address) as sock:
        c = client(core, sock, 200, timeout=0.2, trace=True)
        assert not c.run(10, wait=0.1)
        assert (c.sent, c.received, c.corrupted, c.duplicates) == (10, 9, 1, 0)
        assert c.bytes_received == 9 * 200
        [bad] = [e for e in c.events() if e[3] == "corrupted"]
        assert bad[0] == 4 and bad[1] > 0 and bad[2] == LOOPBACK_TTL


def test_dropped_datagrams_are_lost(core: str) -> None:
    with UdpFake(drop={1, 2}) as fake, peer(fake.address) as sock:
        c = client(core, sock, timeout=0.1)
        assert not c.run(6, rate=1000, wait=0.2)
        assert (c.sent, c.received, c.reordered, c.corrupted) == (6, 4, 0, 0)
        assert fake.seen == list(range(6))


def test_a_silent_peer_answers_nothing_and_run_ends_on_time(core: str) -> None:
    with UdpFake(silent=True) as fake, peer(fake.address) as sock:
        c = client(core, sock, timeout=0.2)
        started = time.monotonic()
        assert not c.run(3, wait=0.2)
        elapsed = time.monotonic() - started
        assert 0.6 <= elapsed < 3.0  # three timeouts, then the wait
        assert (c.sent, c.received, c.messages) == (3, 0, 0)
        assert c.latency_min_ns == -1 and sum(c.histogram()) == 0
        assert c.ttl_last == c.ttl_min == c.ttl_max == -1
        assert fake.seen == [0, 1, 2]


@pytest.mark.parametrize("host", [LOCALHOST, "::1"])
def test_a_closed_port_is_refused(core: str, host: str) -> None:
    if ":" in host:
        require_ipv6()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as closed:
        closed.bind((host, 0))
        address = closed.getsockname()
    with peer(address) as sock:  # nothing listens there now: port unreachable
        c = client(core, sock, timeout=0.2, trace=True)
        assert not c.run(3, wait=0.1)
        # One ICMP port unreachable for each (loopback rate-limits none of them).
        assert (c.sent, c.received, c.refused) == (3, 0, 3)
        assert c.events() == [(-1, -1, -1, "refused")] * 3


def test_events_need_trace_and_are_bounded(core: str) -> None:
    with udp_server(core, rate=0) as server, peer(server.address) as sock:
        quiet = client(core, sock)
        assert quiet.run(5)
        assert quiet.events() == []
        traced = client(core, sock, 24, trace=True)
        assert traced.run(UDP_TRACE + 10)
        events = traced.events()
        assert len(events) == UDP_TRACE  # the counters count the rest
        assert traced.received == UDP_TRACE + 10
        assert all(kind == "echo" and ttl == LOOPBACK_TTL for _, _, ttl, kind in events)
        assert [e[0] for e in events] == sorted(e[0] for e in events)
        assert traced.events() == []


def test_jitter_is_zero_for_one_echo(core: str) -> None:
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock)
        assert c.run(1)
        assert c.jitter_ns == 0.0
        assert c.latency_min_ns == c.latency_max_ns == c.latency_sum_ns > 0


def stopped_promptly(c: UdpClientSession, rate: float, sent: int) -> None:
    """Run ``c`` in a thread for a long time; once it has sent ``sent`` datagrams,
    stop() must end it within about 0.1 s."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(
        c.run(0, rate=rate, duration=60, wait=30)), daemon=True)
    thread.start()
    until(lambda: c.sent >= sent, f"{sent} datagrams sent")
    stopped = time.monotonic()
    c.stop()
    thread.join(5)
    assert not thread.is_alive(), "run() went on after stop()"
    assert time.monotonic() - stopped < 0.5
    assert result == [False]


def test_stop_ends_a_client_run_promptly(core: str) -> None:
    with UdpFake(silent=True) as fake, peer(fake.address) as sock:
        stopped_promptly(client(core, sock, timeout=30), 0.0, 1)  # in lockstep's wait
        stopped_promptly(client(core, sock, timeout=30), 100.0, 3)  # in an open loop


# -- the server's guards --------------------------------------------------------------------

def test_a_blocked_source_port_is_not_answered(core: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocked:
        blocked.bind((LOCALHOST, 0))
        port = blocked.getsockname()[1]
        with udp_server(core, blocked_ports=(port, 9)) as server, \
                peer(server.address) as good:
            for _ in range(3):
                blocked.sendto(b"loop?", server.address)
            good.settimeout(5)
            good.send(b"fine")
            assert good.recv(100) == b"fine"
            s = server.settled(4)
            assert (s.loop_port, s.datagrams_out, s.bytes_in, s.bytes_out) == (3, 1, 19, 4)
            assert s.last_dropped("loop_port") == (LOCALHOST, port)
            assert all(s.last_dropped(r) is None for r in UDP_DROP_REASONS if r != "loop_port")
            assert server.balanced()


def ipv4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def ipv6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


@pytest.mark.parametrize(("deny", "allow", "echoed"), [
    ([(ipv4("127.0.0.0"), 8)], [], False),
    ([(ipv4("127.0.0.2"), 32)], [], True),                     # another host
    ([], [(ipv4("10.0.0.0"), 8)], False),                      # outside every allowed one
    ([], [(ipv4("127.0.0.0"), 24)], True),
    ([(ipv4("127.0.0.1"), 32)], [(ipv4("127.0.0.0"), 8)], False),  # deny wins
    ([(ipv6("::"), 0)], [], True),                             # an IPv6 rule: not for IPv4
    ([], [(ipv6("::"), 0)], False),                            # nor the allow one
    ([(ipv4("0.0.0.0"), 0)], [], False),
])
def test_deny_and_allow(core: str, deny: list[tuple[bytes, int]],
                        allow: list[tuple[bytes, int]], echoed: bool) -> None:
    with udp_server(core, deny=deny, allow=allow) as server, peer(server.address) as sock:
        c = client(core, sock, timeout=0.1)
        assert c.run(2, wait=0.05) is echoed
        s = server.settled(2)
        assert c.received == (2 if echoed else 0)
        assert (s.denied, s.datagrams_out) == ((0, 2) if echoed else (2, 0))
        expected = None if echoed else (LOCALHOST, sock.getsockname()[1])
        assert s.last_dropped("denied") == expected
        assert server.balanced()


def test_ipv4_mapped_sources_are_read_as_ipv4(core: str) -> None:
    """On a dual-stack socket an IPv4 client comes as ::ffff:a.b.c.d: the IPv4 rules
    match it, and it is reported as the IPv4 address it is."""
    require_ipv6(dual_stack=True)
    with udp_server(core, "::ffff:127.0.0.1", dual_stack=True,
                    deny=[(ipv4("127.0.0.0"), 8)]) as server, \
            peer((LOCALHOST, server.port)) as sock:
        sock.send(b"x")
        s = server.settled(1)
        assert (s.denied, s.datagrams_out) == (1, 0)
        assert s.last_dropped("denied") == (LOCALHOST, sock.getsockname()[1])
    with udp_server(core, "::ffff:127.0.0.1", dual_stack=True,
                    allow=[(ipv4("127.0.0.1"), 32)]) as server, \
            peer((LOCALHOST, server.port)) as sock:
        c = client(core, sock)
        assert c.run(3)
        assert server.settled(3).datagrams_out == 3
        assert c.ttl_min == LOOPBACK_TTL


def test_ipv6_rules(core: str) -> None:
    require_ipv6()
    with udp_server(core, "::1", deny=[(ipv6("::1"), 128)]) as server, \
            peer(server.address) as sock:
        sock.send(b"x")
        s = server.settled(1)
        assert s.denied == 1
        assert s.last_dropped("denied") == ("::1", sock.getsockname()[1])
    with udp_server(core, "::1", allow=[(ipv6("::"), 64)], deny=[(ipv4("0.0.0.0"), 0)]) \
            as server, peer(server.address) as sock:
        c = client(core, sock)
        assert c.run(2)


def test_over_the_rate_is_dropped_and_the_counters_add_up(core: str) -> None:
    rate, count = 100, 1000
    burst = max(int(rate * 0.1), UDP_MIN_BURST)
    with udp_server(core, rate=rate) as server, \
            peer(server.address, (LOCALHOST, 0)) as flood, \
            peer(server.address, ("127.0.0.2", 0)) as other:
        s = server.session
        started = time.monotonic()
        for i in range(count):
            flood.send(i.to_bytes(8, "little"))
        server.settled(count)
        elapsed = time.monotonic() - started
        # The bucket holds `burst` datagrams, and refills at `rate` while they come.
        assert burst <= s.datagrams_out <= burst + rate * elapsed + 1
        assert s.rate_limited == count - s.datagrams_out
        assert server.balanced() and s.send_errors == 0
        assert s.bytes_in == 8 * count and s.bytes_out == 8 * s.datagrams_out
        assert s.last_dropped("rate_limited") == (LOCALHOST, flood.getsockname()[1])
        # Another source address has a bucket of its own.
        c = client(core, other)
        assert c.run(3)
        assert server.settled(count + 3).datagrams_out >= burst + 3


def test_rate_zero_is_no_limit(core: str) -> None:
    count = 1000
    with udp_server(core, rate=0) as server, peer(server.address) as flood:
        for _ in range(count):
            flood.send(b"0123456789")
        s = server.settled(count)
        assert s.datagrams_out == count and s.rate_limited == 0


def test_longer_than_max_size_is_truncated_and_empty_is_echoed(core: str) -> None:
    with udp_server(core, max_size=100) as server, peer(server.address) as sock:
        sock.settimeout(5)
        sock.send(b"y" * 101)  # one byte too many: dropped
        sock.send(b"x" * 100)
        assert sock.recv(1000) == b"x" * 100
        sock.send(b"")
        assert sock.recv(1000) == b""
        s = server.settled(3)
        assert (s.datagrams_in, s.datagrams_out, s.truncated) == (3, 2, 1)
        # What was read: max_size bytes of the truncated one.
        assert (s.bytes_in, s.bytes_out) == (200, 100)
        assert s.last_dropped("truncated") == (LOCALHOST, sock.getsockname()[1])
        assert server.balanced()


def test_stop_ends_the_server_promptly(core: str) -> None:
    with udp_server(core) as server, peer(server.address) as sock:
        c = client(core, sock)
        assert c.run(2)
        stopped = time.monotonic()
        server.session.stop()
        server.thread.join(5)
        assert not server.thread.is_alive()
        assert time.monotonic() - stopped < 0.5


def test_stop_before_run_returns_at_once(core: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        session = cores.load(core).UdpEchoSession(sock.fileno())
        session.stop()
        started = time.monotonic()
        session.run()
        assert time.monotonic() - started < 0.5
        session.stop()  # twice: harmless


# -- arguments --------------------------------------------------------------------------------

def test_client_arguments_are_checked(core: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOCALHOST, 9))
        cls = cores.load(core).UdpClientSession
        for size in (UDP_HEADER - 1, UDP_MAX_SIZE + 1, 0, -1):
            with pytest.raises(ValueError):
                cls(sock.fileno(), size, BASE)
        with pytest.raises(ValueError):
            cls(sock.fileno(), 64, BASE[:-1])
        for timeout in (0.0, -1.0, MAX_TIMEOUT * 2):
            with pytest.raises(ValueError):
                cls(sock.fileno(), 64, BASE, timeout)
        c = cls(sock.fileno(), 64, BASE, 1.0)
        calls: list[Callable[[], object]] = [
            lambda: c.run(-1), lambda: c.run(0), lambda: c.run(1, rate=-1.0),
            lambda: c.run(1, duration=-1.0), lambda: c.run(0, rate=10.0)]
        for bad in calls:
            with pytest.raises(ValueError):
                bad()
        assert c.sent == 0


def test_server_arguments_are_checked(core: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        cls = cores.load(core).UdpEchoSession
        for bad in ([(b"\x7f\0\0", 8)], [(ipv4("127.0.0.0"), 33)], [(ipv6("::"), 129)],
                    [(ipv4("127.0.0.0"), -1)]):
            with pytest.raises(ValueError):
                cls(sock.fileno(), deny=bad)
            with pytest.raises(ValueError):
                cls(sock.fileno(), allow=bad)
        for options in ({"rate": -1.0}, {"rate": float("nan")}, {"max_size": 0},
                        {"max_size": 65536}, {"blocked_ports": [65536]},
                        {"blocked_ports": [-1]}):
            with pytest.raises(ValueError):
                cls(sock.fileno(), **options)
        session = cls(sock.fileno())
        with pytest.raises(ValueError):
            session.last_dropped("bogus")
        assert all(session.last_dropped(r) is None for r in UDP_DROP_REASONS)
        assert session.datagrams_in == session.send_errors == 0
