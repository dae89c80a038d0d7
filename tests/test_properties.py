"""Every chunking: whatever a client sends, in whatever pieces, comes back unchanged.

A raw socket sends random bytes in random chunks while a reader thread
collects the echo.  Stream mode: everything comes back.  Message mode: the
echo comes in whole units of the server's size while the client keeps its
write side open (once the server has read a partial tail, nothing of it
comes back for a while), and the tail only after shutdown(SHUT_WR).
One server per core, mode and message size serves every example.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import LOCALHOST, connect, running_server

from pytcpecho import EchoClient, EchoServer

MESSAGE_SIZES = (1, 7, 1000, 65536, 102400)
MAX_PAYLOAD = 300_000
TAIL_WINDOW = 0.05  # after the server has read a partial tail, no echo of it for this long
EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

ServerFor = Callable[[str, str, int], EchoServer]


@pytest.fixture(scope="module")
def server_for() -> Iterator[ServerFor]:
    """A running server per (core, mode, size), made on first use, closed with the module."""
    servers: dict[tuple[str, str, int], tuple[EchoServer, object]] = {}

    def get(core: str, mode: str, size: int) -> EchoServer:
        key = (core, mode, size)
        if key not in servers:
            cm = running_server(mode=mode, size=size, core=core)
            servers[key] = (cm.__enter__(), cm)
        return servers[key][0]

    yield get
    for server, cm in servers.values():
        assert server.stats.errors == 0
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


class Reader:
    """Collects what a socket receives, on its own thread, until EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 18):
                with self._changed:
                    self.data += chunk
                    self._changed.notify_all()
        except BaseException as exc:
            self.error = exc
        with self._changed:
            self.eof = True
            self._changed.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.data) >= n or self.eof, timeout)

    def join(self, timeout: float = 10) -> bytes:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "no EOF from the server"
        assert self.error is None, self.error
        return bytes(self.data)


def _send_in_chunks(sock: socket.socket, data: bytes, chunks: list[int]) -> None:
    pos, i = 0, 0
    while pos < len(data):
        n = chunks[i % len(chunks)]
        sock.sendall(data[pos : pos + n])
        pos += n
        i += 1


payloads = st.tuples(st.integers(0, MAX_PAYLOAD), st.integers(0, 2**32))
chunkings = st.lists(st.integers(1, 70_000), min_size=1, max_size=12)


def _payload(spec: tuple[int, int]) -> bytes:
    n, seed = spec
    return random.Random(seed).randbytes(n)


@EXAMPLES
@given(spec=payloads, chunks=chunkings)
def test_stream_echoes_everything(core: str, server_for: ServerFor,
                                  spec: tuple[int, int], chunks: list[int]) -> None:
    data = _payload(spec)
    server = server_for(core, "stream", 102400)
    with connect(server.address[1]) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        _send_in_chunks(sock, data, chunks)
        sock.shutdown(socket.SHUT_WR)
        assert reader.join() == data


@EXAMPLES
@given(spec=payloads, chunks=chunkings, size=st.sampled_from(MESSAGE_SIZES))
def test_message_mode_echoes_whole_messages_then_the_tail(
        core: str, server_for: ServerFor, spec: tuple[int, int], chunks: list[int],
        size: int) -> None:
    data = _payload(spec)
    if size == 1:
        data = data[:5000]  # one message per byte: keep the example quick
    server = server_for(core, "message", size)
    whole = len(data) // size * size
    read_before = server.stats.bytes_in
    with connect(server.address[1]) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        _send_in_chunks(sock, data, chunks)
        # The write side is still open: every whole message is echoed, the tail is not.
        assert reader.wait_for(whole), f"only {len(reader.data)} of {whole} bytes echoed"
        assert bytes(reader.data) == data[:whole]
        if whole < len(data):
            # The server has read the tail; it would echo it at once if it were going to.
            assert server.wait(lambda s: s.bytes_in - read_before == len(data), 10)
            assert not reader.wait_for(whole + 1, TAIL_WINDOW), \
                "the partial tail came back before EOF"
        sock.shutdown(socket.SHUT_WR)
        assert reader.join() == data


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 300_000), count=st.integers(1, 4),
       client_mode=st.sampled_from(["message", "stream"]), seed=st.integers(0, 2**32 - 1))
def test_client_verifies_any_size_and_count(core: str, server_for: ServerFor, size: int,
                                            count: int, client_mode: str, seed: int) -> None:
    """EchoClient on this core against a stream server: intact, every byte counted."""
    server = server_for("cython" if core == "python" else "python", "stream", 102400)
    result = EchoClient(LOCALHOST, server.address[1], size=size, count=count,
                        mode=client_mode, seed=seed, core=core).run()
    assert result.intact, result.problem
    assert result.sent == result.received == size * count
    assert result.messages == count


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server_size=st.sampled_from(MESSAGE_SIZES[1:]), k=st.integers(1, 3),
       count=st.integers(1, 4), tail=st.integers(0, 999), client_mode=st.sampled_from(
           ["message", "stream"]), seed=st.integers(0, 2**32 - 1))
def test_client_against_message_server(core: str, server_for: ServerFor, server_size: int,
                                       k: int, count: int, tail: int, client_mode: str,
                                       seed: int) -> None:
    """Message-mode server: messages of k whole server messages work at any count; any
    other size works in one message, or in stream mode (the tail comes at EOF)."""
    server = server_for(core, "message", server_size)
    size = k * server_size
    if tail and (count == 1 or client_mode == "stream"):
        size += tail
    else:
        tail = 0
    result = EchoClient(LOCALHOST, server.address[1], size=size, count=count,
                        mode=client_mode, seed=seed, core=core, timeout=10).run()
    assert result.intact, (size, count, result.problem)
    assert result.received == size * count
