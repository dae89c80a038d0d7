"""ClientGroup: many connections' client loops in one thread, on every core.

Real servers and real sockets: the figures must add up exactly, a connection
that fails must fail alone and say how, and a timed run must end on time
even when echoes are still owed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fakes import echo_held_back, fake_server, flipping_echo, silent
from support import LOCALHOST, running_server

from pytcpecho import core as cores
from pytcpecho.contract import ClientGroup
from pytcpecho.pattern import make_base

BASE = make_base(7)
SIZE = 1024


@contextlib.contextmanager
def connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    socks = [socket.create_connection((LOCALHOST, port), timeout=10) for _ in range(n)]
    for s in socks:
        s.settimeout(None)  # the group wants blocking fds; it never blocks on them
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def group(core: str, mode: str = "message", size: int = SIZE,
          timeout: float | None = 10.0) -> ClientGroup:
    return cores.load(core).ClientGroup(size, BASE, mode, timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["message", "stream"])
def test_counts_add_up_exactly(core: str, mode: str) -> None:
    with running_server(mode=mode, size=SIZE) as server, \
            connections(server.address[1], 20) as socks:
        g = group(core, mode)
        for i, s in enumerate(socks):
            assert g.add(s.fileno(), 7) == i
        assert g.run()
        assert g.connections == 20
        assert g.messages == 140
        assert g.bytes_sent == g.bytes_received == 140 * SIZE
        assert g.failures() == [] and g.failed == 0 and g.unfinished == 0
        # message mode times each round trip; a stream is one timed transfer per connection
        assert sum(g.histogram()) == (140 if mode == "message" else 20)
        assert 0 <= g.latency_min_ns <= g.latency_max_ns


@pytest.mark.timeout(60)
def test_a_corrupted_connection_fails_alone_and_says_where(core: str) -> None:
    with running_server(mode="message", size=SIZE) as good, \
            fake_server(flipping_echo(5000)) as bad, \
            connections(good.address[1], 3) as fine, connections(bad, 1) as broken:
        g = group(core)
        for s in fine + broken:
            g.add(s.fileno(), 20)
        assert not g.run()
        [failure] = g.failures()
        assert failure.index == 3 and failure.fd == broken[0].fileno()
        assert failure.error is None  # not an error: an echo that is not intact
        assert failure.mismatch_offset == 5000
        assert failure.messages == 4  # bytes 0..4095 came back intact, 5000 did not
        assert g.messages == 3 * 20 + 4


@pytest.mark.timeout(60)
def test_a_silent_peer_times_out_while_the_others_run_on(core: str) -> None:
    release = threading.Event()
    with running_server(mode="message", size=SIZE) as good, fake_server(silent(release)) as mute, \
            connections(good.address[1], 2) as fine, connections(mute, 1) as stuck:
        g = group(core, timeout=0.3)
        for s in stuck + fine:
            g.add(s.fileno(), 0)
        try:
            assert not g.run(duration=1.0)
        finally:
            release.set()
        [failure] = g.failures()
        assert failure.index == 0
        assert isinstance(failure.error, TimeoutError)
        assert failure.bytes_sent == SIZE and failure.bytes_received == 0
        assert g.messages > 0  # the others went on for the whole second


@pytest.mark.timeout(60)
def test_a_timed_run_ends_after_the_drain_and_counts_what_is_owed(core: str) -> None:
    """An echo held back past the deadline is not waited for beyond the drain: the run
    ends on time, and that connection is unfinished, not failed."""
    release = threading.Event()
    with running_server(mode="message", size=SIZE) as good, \
            fake_server(echo_held_back(10 * SIZE, release)) as slow, \
            connections(good.address[1], 2) as fine, connections(slow, 1) as held:
        g = group(core, timeout=30.0)
        for s in fine + held:
            g.add(s.fileno(), 0)
        started = time.monotonic()
        try:
            assert g.run(duration=0.5, drain=0.2)
        finally:
            release.set()
        took = time.monotonic() - started
    assert g.unfinished == 1 and g.failed == 0
    assert took < 10, f"the run waited {took:.1f} s for an echo held back (timeout 30 s)"
    assert g.messages >= 10


@pytest.mark.timeout(60)
def test_open_loop_sends_each_connection_its_count(core: str) -> None:
    with running_server(mode="message", size=SIZE) as server, \
            connections(server.address[1], 4) as socks:
        g = group(core)
        for s in socks:
            g.add(s.fileno(), 5)
        started = time.monotonic()
        assert g.run(interval=0.05)
        took = time.monotonic() - started
    assert g.messages == 20
    # five messages each, one every 50 ms: the last is due 0.2 s (plus the spread) in
    assert took >= 0.2


@pytest.mark.timeout(30)
def test_misuse_is_refused_with_value_error(core: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        g = group(core)
        g.add(a.fileno(), 0)
        with pytest.raises(ValueError, match="count or a duration"):
            g.run()
    empty = group(core)
    assert empty.run(duration=0.01)  # nothing to drive: done at once
    with pytest.raises(ValueError, match="runs once"):
        empty.run(duration=0.01)
    with pytest.raises(ValueError, match="before run"):
        empty.add(0, 1)
    with pytest.raises(ValueError, match="must not be negative"):
        group(core).add(-1, 1)
    with pytest.raises(ValueError, match="message mode"):
        group(core, "stream").run(interval=0.1, duration=1)
    with pytest.raises(ValueError, match="mode must be"):
        group(core, "datagram")
    with pytest.raises(ValueError, match="timeout must be positive"):
        group(core, timeout=0)


# -- connections the group opens itself --------------------------------------------------

LOOPBACK = socket.inet_pton(socket.AF_INET, LOCALHOST)


@pytest.mark.timeout(60)
def test_the_group_opens_and_closes_its_own_connections(core: str) -> None:
    """connect(): opened without blocking when run() starts, closed at the end; a refused
    one fails alone, as ConnectionRefusedError, having sent nothing."""
    with running_server(mode="message", size=SIZE) as server, socket.socket() as closed:
        closed.bind((LOCALHOST, 0))  # bound, not listening: a connect is refused
        g = group(core)
        for _ in range(3):
            g.connect(LOOPBACK, server.address[1], 0, 5)
        refused = g.connect(LOOPBACK, closed.getsockname()[1], 0, 5)
        assert not g.run()
        [failure] = g.failures()
        assert failure.index == refused and failure.fd == -1
        assert isinstance(failure.error, ConnectionRefusedError)
        assert failure.bytes_sent == 0
        assert g.messages == 15 and g.connections == 4
        # every connection the group opened is closed again: the server saw them end
        assert server.wait(lambda s: s.total == 3 and s.active == 0, 10)


@pytest.mark.timeout(60)
def test_a_connect_that_never_completes_times_out_alone(core: str) -> None:
    """A listener whose accept queue is full drops new SYNs: that connect stays in
    progress until the group's timeout, while another connection runs."""
    with running_server(mode="message", size=SIZE) as server, \
            socket.create_server((LOCALHOST, 0), backlog=0) as full:
        port = full.getsockname()[1]
        queued = []
        for _ in range(4):  # fill the accept queue (never accepted)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LOCALHOST, port))
            queued.append(s)
        try:
            g = group(core, timeout=0.5)
            g.connect(LOOPBACK, server.address[1], 0, 0)
            stuck = g.connect(LOOPBACK, port, 0, 1)
            started = time.monotonic()
            assert not g.run(duration=1.5)
            took = time.monotonic() - started
        finally:
            for s in queued:
                s.close()
    [failure] = g.failures()
    assert failure.index == stuck
    assert isinstance(failure.error, TimeoutError), failure.error
    assert failure.bytes_sent == 0
    assert g.messages > 0  # the other connection ran its 1.5 s
    assert took < 10


@pytest.mark.timeout(30)
def test_connect_takes_packed_addresses_only(core: str) -> None:
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        group(core).connect(b"127.0.0.1", 7)
