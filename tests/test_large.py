"""Scale: 1 GiB through one connection, and 200 clients at once, all intact."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from support import LOCALHOST, connect, recv_exactly, require_cython, running_server

from pytcpecho import EchoClient, EchoResult, EchoServer

GIB = 1 << 30
MIB = 1 << 20
SEED_SIZE = 102400
CLIENTS = 200

# Every pairing of server and client core moves 1 GiB.  (The pure-Python client
# verifies at a few hundred MiB/s, 1 GiB in about 4 s here.)
STREAM_CASES = [
    pytest.param(server, client, GIB, marks=pytest.mark.slow,
                 id=f"{server}-server-{client}-client-1GiB")
    for server in ("cython", "python") for client in ("cython", "python")
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("server_core", "client_core", "size"), STREAM_CASES)
def test_large_stream_through_one_connection(server_core: str, client_core: str,
                                             size: int) -> None:
    if "cython" in (server_core, client_core):
        require_cython()
    with running_server(mode="stream", core=server_core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=size, count=1, mode="stream",
                            core=client_core, timeout=60, seed=2024).run()
        assert server.wait(lambda s: s.active == 0, 30)
        stats = server.stats
    assert result.intact, result.problem
    assert result.sent == result.received == size
    assert stats.bytes_in == stats.bytes_out == size
    assert stats.errors == 0
    print(f"\n{size // MIB} MiB, server {server_core}, client {client_core}: "
          f"{result.elapsed:.2f} s, {result.mib_per_s:.0f} MiB/s")


@contextlib.contextmanager
def peak_active(server: EchoServer) -> Iterator[list[int]]:
    """Samples stats.active until the block ends; yields a one-item list with the peak."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], server.stats.active)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join(5)


@pytest.mark.timeout(180)
def test_200_clients_at_once(core: str, mode: str) -> None:
    """200 EchoClient threads let go together; every one gets its 100 KiB back intact."""
    results: list[EchoResult] = []
    errors: list[BaseException] = []
    with running_server(mode=mode, size=SEED_SIZE, core=core) as server:
        port = server.address[1]
        barrier = threading.Barrier(CLIENTS)

        def one(i: int) -> None:
            client = EchoClient(LOCALHOST, port, size=SEED_SIZE, mode="message", core=core,
                                timeout=60, seed=i)
            barrier.wait(30)
            try:
                results.append(client.run())
            except BaseException as exc:  # reported below
                errors.append(exc)

        with peak_active(server) as peak:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert server.wait(lambda s: s.active == 0, 30)
        stats = server.stats
    assert not errors, errors[:3]
    assert len(results) == CLIENTS
    bad = [r.problem for r in results if not r.intact]
    assert not bad, bad[:3]
    assert stats.total == CLIENTS
    assert stats.bytes_in == stats.bytes_out == CLIENTS * SEED_SIZE
    assert stats.errors == 0
    assert peak[0] > 1, "the clients were served one after another"
    print(f"\n{CLIENTS} clients, core {core}, {mode}: peak {peak[0]} served at once")


@pytest.mark.timeout(120)
def test_200_connections_held_open_together(core: str, mode: str) -> None:
    """200 connections, each half-way through its message, all in flight at once."""
    with running_server(mode=mode, size=SEED_SIZE, core=core) as server:
        port = server.address[1]
        payloads = [i.to_bytes(2, "big") * (SEED_SIZE // 2) for i in range(CLIENTS)]
        socks: list[socket.socket] = []
        try:
            for data in payloads:
                sock = connect(port, timeout=30)
                socks.append(sock)
                sock.sendall(data[: SEED_SIZE // 2])
            assert server.wait(lambda s: s.active == CLIENTS, 30), server.stats
            assert server.threads >= CLIENTS
            for sock, data in zip(socks, payloads, strict=True):
                sock.sendall(data[SEED_SIZE // 2 :])
                sock.shutdown(socket.SHUT_WR)
            for i, (sock, data) in enumerate(zip(socks, payloads, strict=True)):
                assert recv_exactly(sock, SEED_SIZE + 1) == data, f"client {i}"
        finally:
            for sock in socks:
                sock.close()
        assert server.wait(lambda s: s.active == 0 and s.total == CLIENTS, 30)
        assert server.stats.errors == 0


@pytest.mark.timeout(120)
def test_more_clients_than_max_clients_wait_their_turn(core: str) -> None:
    """50 clients, at most 10 served at once: the rest wait in the backlog, none fails."""
    results: list[EchoResult] = []
    with running_server(mode="message", size=SEED_SIZE, core=core, max_clients=10) as server:
        port = server.address[1]

        def one(i: int) -> None:
            results.append(EchoClient(LOCALHOST, port, size=SEED_SIZE, core=core, timeout=60,
                                      seed=i).run())

        with peak_active(server) as peak:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert server.wait(lambda s: s.active == 0 and s.total == 50, 30), server.stats
    assert len(results) == 50
    assert all(r.intact for r in results), [r.problem for r in results if not r.intact][:3]
    assert 1 <= peak[0] <= 10
