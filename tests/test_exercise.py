"""The original exercise: two clients at once, 102,400 bytes each, then one more, all intact.

Run in-process on each core and mode (server lines captured from the
'pytcpecho' logger), and once through ``pytcpecho serve`` in a child process,
whose stdout must carry the exercise's own lines.
"""

from __future__ import annotations

import logging
import re
import socket
import threading

import pytest
from support import LOCALHOST, ServeProcess, connect, recv_exactly, running_server

from pytcpecho import EchoClient, EchoResult

EXERCISE_SIZE = 102400


def _clients_at_once(port: int, n: int, mode: str, core: str) -> list[EchoResult]:
    """n EchoClients started together (a barrier), each echoing the exercise's 102,400 bytes."""
    barrier = threading.Barrier(n)
    results: list[EchoResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        client = EchoClient(LOCALHOST, port, size=EXERCISE_SIZE, mode=mode, core=core, timeout=30)
        barrier.wait(10)
        try:
            results.append(client.run())
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == n
    return results


def _lines_by_peer(messages: list[str]) -> dict[int, list[str]]:
    """Server lines grouped by the client's port, in order."""
    by_peer: dict[int, list[str]] = {}
    current: int | None = None
    for msg in messages:
        if m := re.search(r"\('127\.0\.0\.1', (\d+)\)", msg):
            current = int(m.group(1))
            by_peer.setdefault(current, []).append(msg)
    return by_peer


def test_exercise_scenario(core: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(mode=mode, size=EXERCISE_SIZE, core=core) as server:
        port = server.address[1]
        first = _clients_at_once(port, 2, mode, core)
        assert server.wait(lambda s: s.total == 2 and s.active == 0, 10)
        second = _clients_at_once(port, 1, mode, core)
        assert server.wait(lambda s: s.total == 3 and s.active == 0, 10)
        stats = server.stats

    for result in first + second:
        assert result.intact, result.problem
        assert result.sent == result.received == EXERCISE_SIZE
        assert result.peer == (LOCALHOST, port)
    assert stats.bytes_in == stats.bytes_out == 3 * EXERCISE_SIZE
    assert stats.errors == 0

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pytcpecho")]
    by_peer = _lines_by_peer([m for m in messages if "client at" in m])
    assert len(by_peer) == 3, messages
    for peer_port, lines in by_peer.items():
        assert lines[0] == f"Connected by client at ('127.0.0.1', {peer_port})"
        assert lines[-1].startswith(f"Connection closed by client at ('127.0.0.1', {peer_port})")
        assert len(lines) == 2, lines
    if mode == "message":  # per message, in the exercise's words
        assert messages.count(f"Received {EXERCISE_SIZE} bytes") == 3
        assert messages.count("Data sent back to client") == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_clients_are_served_at_the_same_time(core: str, mode: str) -> None:
    """One thread per client: both connections are in flight together, neither waits."""
    with running_server(mode=mode, size=EXERCISE_SIZE, core=core) as server:
        port = server.address[1]
        payloads = [bytes([i + 1]) * EXERCISE_SIZE for i in range(2)]
        socks = [connect(port) for _ in payloads]
        try:
            for sock, data in zip(socks, payloads, strict=True):
                sock.sendall(data[: EXERCISE_SIZE // 2])
            assert server.wait(lambda s: s.active == 2, 10)
            for sock, data in zip(socks, payloads, strict=True):
                sock.sendall(data[EXERCISE_SIZE // 2 :])
            for sock, data in zip(reversed(socks), reversed(payloads), strict=True):
                assert recv_exactly(sock, EXERCISE_SIZE) == data
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b""
        finally:
            for sock in socks:
                sock.close()
        assert server.wait(lambda s: s.active == 0 and s.total == 2, 10)


@pytest.mark.parametrize("mode", ["message", "stream"])
def test_exercise_lines_from_serve_command(mode: str) -> None:
    with ServeProcess("--host", LOCALHOST, "--port", "0", "--mode", mode) as serve:
        port = serve.wait_listening()
        assert serve.lines[-1] == f"Server at 127.0.0.1:{port}"
        results = _clients_at_once(port, 2, "message", "auto")
        results += _clients_at_once(port, 1, "message", "auto")
        assert all(r.intact for r in results), [r.problem for r in results]
        peers = set()
        for _ in range(3):
            peers.add(int(serve.wait_for(r"^Connection closed by client at "
                                         r"\('127\.0\.0\.1', (\d+)\)").group(1)))
        assert serve.stop() == 0
        out = serve.output()
    assert len(peers) == 3
    for peer_port in peers:
        assert f"Connected by client at ('127.0.0.1', {peer_port})" in out
    if mode == "message":
        assert out.count(f"Received {EXERCISE_SIZE} bytes") == 3
        assert out.count("Data sent back to client") == 3
    else:
        assert out.count(f", {EXERCISE_SIZE} bytes echoed") == 3
    assert "Traceback" not in out
    assert "Served 3 connections" in out
