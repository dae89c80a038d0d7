"""A signal stops a session blocked in a system call, on every core.

Python runs signal handlers only in the main thread, and a core blocked in
recv() or poll() without the GIL hears of a signal only as EINTR: it must
then take the GIL, run the handlers, and let a handler's exception out of
run().  Each test runs a session in the main thread, blocked for good (a
peer that never answers, or never sends), and a helper thread waits until
/proc shows the main thread asleep in the expected system call before it
sends the signal, so the test proves the interruption of that call, not a
check made before it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, ModuleType

import pytest
from support import LOCALHOST, recv_exactly, require

from pytcpecho import core as cores
from pytcpecho.pattern import make_base

# The system calls a blocked session may be waiting in, by machine: recvfrom
# (recv() is recvfrom underneath), poll and ppoll, and a ClientGroup's epoll_wait,
# epoll_pwait and epoll_pwait2.
BLOCKING_SYSCALLS = {
    "x86_64": {45, 7, 271, 232, 281, 441},
    "aarch64": {207, 73, 22, 441},
}
SIGNAL = signal.SIGUSR2
BLOCK_WAIT_S = 10.0
"""How long the helper waits to see the main thread blocked."""
RAISE_WAIT_S = 10.0
"""How long run() may take to raise once the signal is sent: 'promptly', generously."""


class Interrupted(Exception):
    """What the test's signal handler raises."""


def _syscalls() -> set[int]:
    machine = platform.machine()
    path = f"/proc/self/task/{threading.get_native_id()}/syscall"
    require(None if os.path.exists(path) else f"{path} is not there (not Linux?)")
    require(None if machine in BLOCKING_SYSCALLS else
            f"the blocking system call numbers of {machine} are not in this test")
    return BLOCKING_SYSCALLS[machine]


def _current_syscall(tid: int) -> int | None:
    """The number of the system call thread ``tid`` is blocked in, or None if it runs."""
    with open(f"/proc/self/task/{tid}/syscall") as f:
        first = f.read().split(maxsplit=1)[0]
    return int(first) if first.lstrip("-").isdigit() and int(first) >= 0 else None


@contextlib.contextmanager
def handler_raising() -> Iterator[None]:
    """SIGNAL's handler raises Interrupted; the previous handler comes back on exit."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = signal.signal(SIGNAL, interrupt)
    try:
        yield
    finally:
        signal.signal(SIGNAL, previous)


def interrupt_when_blocked(run: Callable[[], object], unblock: Callable[[], None]) -> None:
    """Call ``run()`` in this (the main) thread; once the thread is blocked in one of the
    expected system calls, send it SIGNAL, and assert that run() raises Interrupted
    within RAISE_WAIT_S.

    If the thread never blocks, or run() does not raise in time, the helper calls
    ``unblock()`` (which ends the session's wait) and the test fails with what it saw,
    rather than hanging until its timeout.
    """
    assert threading.current_thread() is threading.main_thread(), "signals need the main thread"
    expected = _syscalls()
    tid = threading.get_native_id()
    main = threading.main_thread().ident
    assert main is not None
    seen: list[int | None] = []
    sent_at: list[float] = []
    done = threading.Event()
    unblocked = threading.Event()

    def helper() -> None:
        deadline = time.monotonic() + BLOCK_WAIT_S
        while not done.is_set() and time.monotonic() < deadline:
            seen.append(_current_syscall(tid))
            if seen[-1] in expected:
                sent_at.append(time.monotonic())
                signal.pthread_kill(main, SIGNAL)
                break
            done.wait(0.005)
        if not sent_at or not done.wait(RAISE_WAIT_S):
            unblocked.set()
            unblock()

    raised_at: float | None = None
    thread = threading.Thread(target=helper, name="test-signaller")
    with handler_raising():
        thread.start()
        try:
            run()
        except Interrupted:
            raised_at = time.monotonic()
        finally:
            done.set()
            thread.join(BLOCK_WAIT_S + RAISE_WAIT_S)
    assert sent_at, f"the session never blocked in {sorted(expected)}: saw {seen[-5:]}"
    assert raised_at is not None, "run() did not raise the handler's exception"
    assert not unblocked.is_set(), (
        f"the signal did not end the blocked call: run() raised only after the test ended "
        f"its wait, {raised_at - sent_at[0]:.1f} s after the signal")


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of blocking TCP sockets on the loopback."""
    with socket.create_server((LOCALHOST, 0)) as listener:
        near = socket.create_connection(listener.getsockname(), timeout=10)
        far, _ = listener.accept()
    near.setblocking(True)
    far.setblocking(True)
    with near, far:
        yield near, far


def _shut_down(sock: socket.socket) -> Callable[[], None]:
    def unblock() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return unblock


def _splice_core() -> ModuleType:
    require(None if cores.splice_available() else "the splice core is not available here",
            "the splice core is not available, and CI must test it")
    return cores.load("splice")


@pytest.mark.timeout(30)
def test_client_waiting_for_an_echo_is_interrupted(core: str) -> None:
    """ClientSession.run() against a peer that reads everything and never answers."""
    mod = cores.load(core)
    with tcp_pair() as (client, peer):

        def read_forever() -> None:
            with contextlib.suppress(OSError):
                while peer.recv(65536):
                    pass

        reader = threading.Thread(target=read_forever, name="test-silent-peer")
        reader.start()
        try:
            session = mod.ClientSession(client.fileno(), 1000, make_base(5), "message", None)
            interrupt_when_blocked(lambda: session.run(1), _shut_down(peer))
        finally:
            _shut_down(client)()
            reader.join(10)
        assert not reader.is_alive()
        assert session.bytes_sent == 1000  # the message went out; its echo never came
        assert session.bytes_received == 0


@pytest.mark.timeout(30)
def test_client_group_waiting_for_echoes_is_interrupted(core: str) -> None:
    """ClientGroup.run() in the main thread, its connections' peers silent."""
    mod = cores.load(core)
    with tcp_pair() as (a, peer_a), tcp_pair() as (b, peer_b):
        group = mod.ClientGroup(1000, make_base(5), "message", None)
        group.add(a.fileno(), 1)
        group.add(b.fileno(), 1)

        def unblock() -> None:
            _shut_down(peer_a)()
            _shut_down(peer_b)()

        interrupt_when_blocked(lambda: group.run(), unblock)
        assert group.bytes_sent == 2000  # both messages went out; no echo came
        assert group.bytes_received == 0
        assert group.messages == 0


def _server_is_interrupted(mod: ModuleType, mode: str) -> None:
    with tcp_pair() as (client, server):
        session = mod.EchoSession(-1, mode, 1000)  # fd -1: attach() names it
        session.attach(server.fileno())
        interrupt_when_blocked(session.run, _shut_down(client))
        assert session.bytes_in == session.bytes_out == 0


@pytest.mark.timeout(30)
def test_server_waiting_for_bytes_is_interrupted(core: str, mode: str) -> None:
    """EchoSession.run() on a connection whose peer sends nothing."""
    _server_is_interrupted(cores.load(core), mode)


@pytest.mark.timeout(30)
def test_splice_server_waiting_for_bytes_is_interrupted() -> None:
    _server_is_interrupted(_splice_core(), "stream")


def _attached_session_serves_the_next_connection(mod: ModuleType) -> None:
    session = mod.EchoSession(-1, "stream")
    for n in (3000, 70):
        with tcp_pair() as (client, server):
            session.attach(server.fileno())
            assert session.bytes_in == session.bytes_out == session.messages == 0
            client.sendall(b"e" * n)
            client.shutdown(socket.SHUT_WR)
            assert session.run() == "eof"
            assert recv_exactly(client, n) == b"e" * n
            assert session.bytes_in == session.bytes_out == n


@pytest.mark.timeout(30)
def test_attached_session_serves_the_next_connection(core: str) -> None:
    """attach() zeroes the counters, and the same session serves the next connection."""
    _attached_session_serves_the_next_connection(cores.load(core))


@pytest.mark.timeout(30)
def test_attached_splice_session_serves_the_next_connection() -> None:
    _attached_session_serves_the_next_connection(_splice_core())
