"""The splice core behaves like the others in stream mode: intact, timed out, shut down, counted.

Each test runs on every stream-capable core (``stream_core``), so the splice
core is held to exactly what the copy cores do.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from support import (
    LOCALHOST,
    assert_one_line_error,
    cli,
    connect,
    recv_exactly,
    require_cython,
    require_splice,
    running_server,
)

from pytcpecho import EchoClient, EchoServer
from pytcpecho import core as cores


@pytest.fixture(params=["splice", "cython", "python"])
def stream_core(request: pytest.FixtureRequest) -> str:
    """A core that serves stream mode; the compiled ones must exist in CI."""
    name: str = request.param
    if name == "splice":
        require_splice()
    elif name == "cython":
        require_cython()
    return name


@pytest.mark.parametrize("size", [1, 1000, 4 << 20])
def test_echo_is_intact(stream_core: str, size: int) -> None:
    with running_server(mode="stream", core=stream_core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=size, count=3, mode="stream",
                            timeout=20).run()
        assert result.intact, result.problem
        assert result.received == 3 * size
        assert server.wait(lambda s: s.bytes_out == 3 * size and s.active == 0, 10)


def test_many_round_trips_on_one_connection(stream_core: str) -> None:
    with running_server(mode="stream", core=stream_core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=100 * 1024, count=50,
                            mode="message", timeout=20).run()
        assert result.intact, result.problem
        assert server.wait(lambda s: s.bytes_in == s.bytes_out == 50 * 100 * 1024, 10)


def test_counters_are_live(stream_core: str) -> None:
    with running_server(mode="stream", core=stream_core) as server, \
            connect(server.address[1]) as sock:
        sock.sendall(b"x" * 5000)
        assert recv_exactly(sock, 5000) == b"x" * 5000
        assert server.wait(lambda s: s.active == 1 and s.bytes_in == s.bytes_out == 5000, 10)


def test_idle_connection_times_out(stream_core: str) -> None:
    with running_server(mode="stream", core=stream_core, idle_timeout=0.3) as server, \
            connect(server.address[1]) as sock:
        sock.sendall(b"hello")  # the splice core has its pipe by now
        assert recv_exactly(sock, 5) == b"hello"
        assert sock.recv(1) == b""  # closed by the server after 0.3 s of silence
        assert server.wait(lambda s: s.active == 0, 10)
        assert server.stats.errors == 0


def test_client_that_never_reads_times_out(stream_core: str) -> None:
    """The echo's send side blocks on a full socket: SO_SNDTIMEO must end it."""
    with running_server(mode="stream", core=stream_core, idle_timeout=0.5) as server:
        sock = connect(server.address[1])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop = threading.Event()

        def flood() -> None:
            chunk = b"y" * 65536
            sock.settimeout(1)
            while not stop.is_set():
                try:
                    sock.send(chunk)
                except TimeoutError:
                    continue
                except OSError:
                    return

        writer = threading.Thread(target=flood)
        writer.start()
        try:
            assert server.wait(lambda s: s.total == 1 and s.active == 0, 20)
        finally:
            stop.set()
            writer.join(10)
            sock.close()


def test_close_ends_a_connection_in_flight(stream_core: str) -> None:
    server = EchoServer((LOCALHOST, 0), mode="stream", core=stream_core)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    with connect(server.address[1]) as sock:
        sock.sendall(b"abc")
        assert recv_exactly(sock, 3) == b"abc"
        server.close()  # must wake the blocked splice() and join its thread
        thread.join(10)
        assert not thread.is_alive()
        assert server.threads == 0
        assert sock.recv(1) == b""


def test_max_bytes_limit(stream_core: str) -> None:
    with running_server(mode="stream", core=stream_core, max_bytes=10000) as server, \
            connect(server.address[1]) as sock:
        sock.sendall(b"z" * 10000)
        assert recv_exactly(sock, 10000) == b"z" * 10000
        sock.sendall(b"!")
        with contextlib.suppress(ConnectionResetError):  # closed with a byte unread: maybe RST
            assert sock.recv(1) == b""
        assert server.wait(lambda s: s.active == 0 and s.bytes_in == 10000, 10)


def test_splice_session_on_a_unix_socketpair() -> None:
    """Directly on the core's class, over AF_UNIX (spliced, or the copy fallback)."""
    require_splice()
    splice = cores.load("splice")
    a, b = socket.socketpair()
    with a, b:
        session = splice.EchoSession(b.fileno(), "stream")
        worker = threading.Thread(target=session.run)
        worker.start()
        a.sendall(b"0123456789" * 1000)
        assert recv_exactly(a, 10000) == b"0123456789" * 1000
        a.shutdown(socket.SHUT_WR)
        worker.join(10)
        assert not worker.is_alive()
        assert session.bytes_in == session.bytes_out == 10000


def test_message_mode_is_refused() -> None:
    require_splice()
    with pytest.raises(ValueError, match="stream mode only"):
        EchoServer((LOCALHOST, 0), mode="message", core="splice")
    with pytest.raises(ValueError, match="streams only"):
        cores.load("splice").EchoSession(0, "message")
    result = cli("serve", "--port", "0", "--core", "splice", "--mode", "message")
    assert "stream mode only" in assert_one_line_error(result, 2)
