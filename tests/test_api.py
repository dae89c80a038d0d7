"""The Python API, the payload pattern shared by both cores, and what a demanding user
runs into that the original exercise never tried: mixed modes, many messages, big messages."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
from fakes import echo_held_back, fake_server, recording_echo, scripted_reply, silent
from hypothesis import given, settings
from hypothesis import strategies as st
from support import LOCALHOST, cli, connect, require_cython, running_server

from pytcpecho import EchoClient, EchoResult, EchoServer, Progress
from pytcpecho import core as cores
from pytcpecho.loadgen import BenchConfig
from pytcpecho.pattern import BLOCK, HEADER, Pattern, make_base
from pytcpecho.sockets import set_io_timeout

EXERCISE_SIZE = 102400
MIB = 1 << 20


# -- the pattern ---------------------------------------------------------------------------

def test_make_base_is_seeded() -> None:
    assert make_base(1) == make_base(1)
    assert make_base(1) != make_base(2)
    assert len(make_base(0)) == BLOCK


def test_blocks_differ_only_in_their_numbered_header() -> None:
    p = Pattern(make_base(5))
    b0, b1, b300 = p.block(0), p.block(1), p.block(300)
    assert b0 == make_base(5)  # block 0: header xored with 0
    assert b0[HEADER:] == b1[HEADER:] == b300[HEADER:]
    assert bytes(a ^ b for a, b in zip(b0[:HEADER], b300[:HEADER], strict=True)) == \
        (300).to_bytes(HEADER, "little")


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), off=st.integers(0, 5 * BLOCK), n=st.integers(0, 3 * BLOCK))
def test_slice_is_a_window_on_one_stream(seed: int, off: int, n: int) -> None:
    p = Pattern(make_base(seed))
    whole = b"".join(p.block(k) for k in range((off + n) // BLOCK + 1))
    assert p.slice(off, n) == whole[off : off + n]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), off=st.integers(0, 3 * BLOCK), n=st.integers(1, BLOCK),
       data=st.data())
def test_mismatch_finds_the_first_wrong_byte(seed: int, off: int, n: int,
                                             data: st.DataObject) -> None:
    p = Pattern(make_base(seed))
    good = p.slice(off, n)
    assert p.mismatch(good, off) == -1
    bad_at = data.draw(st.integers(0, n - 1))
    bad = bytearray(good)
    bad[bad_at] ^= data.draw(st.integers(1, 255))
    assert p.mismatch(bytes(bad), off) == bad_at
    assert p.mismatch(memoryview(bytes(bad)), off) == bad_at


@pytest.mark.parametrize(("client_mode", "size", "count"), [
    ("stream", 300_000, 1),       # crosses four blocks in one transfer
    ("message", 70_000, 3),       # offsets carry over from message to message
    ("message", 1, 5),
])
def test_both_cores_send_the_pattern(client_mode: str, size: int, count: int) -> None:
    """What each core's ClientSession puts on the wire is pattern.Pattern, byte for byte."""
    require_cython()
    expected = Pattern(make_base(99)).slice(0, size * count)
    for name in ("python", "cython"):
        record = bytearray()
        with fake_server(recording_echo(record)) as port:
            result = EchoClient(LOCALHOST, port, size=size, count=count, mode=client_mode,
                                seed=99, core=name).run()
        assert result.intact, (name, result.problem)
        assert bytes(record) == expected, name


def test_both_cores_verify_against_the_pattern(core: str) -> None:
    """A server that never echoes, but answers with pattern.Pattern's bytes computed in
    Python: each core's client must find them intact; one wrong byte, and it must not."""
    pattern = Pattern(make_base(123))
    with fake_server(scripted_reply(pattern.slice)) as port:
        result = EchoClient(LOCALHOST, port, size=3 * BLOCK + 5, count=2, seed=123,
                            core=core).run()
    assert result.intact, result.problem

    def off_by_one_block(off: int, n: int) -> bytes:
        return pattern.slice(off + BLOCK, n)  # a repeated or lost block must not pass

    with fake_server(scripted_reply(off_by_one_block)) as port:
        result = EchoClient(LOCALHOST, port, size=3 * BLOCK, seed=123, core=core).run()
    assert not result.intact
    assert result.problem is not None and "at byte 0 " in result.problem


def test_same_seed_same_bytes_different_seed_different_bytes() -> None:
    records = []
    for seed in (1, 1, 2):
        record = bytearray()
        with fake_server(recording_echo(record)) as port:
            result = EchoClient(LOCALHOST, port, size=1000, seed=seed).run()
        assert result.seed == seed
        records.append(bytes(record))
    assert records[0] == records[1] != records[2]


def test_random_seed_is_reported() -> None:
    with running_server() as server:
        a = EchoClient(LOCALHOST, server.address[1], size=10).run()
        b = EchoClient(LOCALHOST, server.address[1], size=10).run()
    assert a.intact and b.intact
    assert a.seed != b.seed


# -- sessions --------------------------------------------------------------------------------

def test_client_session_offset_carries_over_runs(core: str) -> None:
    """Two run() calls on one connection continue one stream, as the docstring promises."""
    mod = cores.load(core)
    record = bytearray()
    with fake_server(recording_echo(record)) as port, connect(port) as sock:
        set_io_timeout(sock, 10)  # the cores need a blocking fd
        session = mod.ClientSession(sock.fileno(), 5000, make_base(4), "message", 10.0)
        assert session.run(2, finish=False)
        assert session.run(3)
        assert session.messages == 5
        assert session.bytes_sent == session.bytes_received == 25000
        assert sock.recv(1) == b""  # finish=True half-closed it; the echo server closed
    assert bytes(record) == Pattern(make_base(4)).slice(0, 25000)


def test_client_session_duration_and_stop(core: str) -> None:
    mod = cores.load(core)
    with running_server(core=core) as server:
        with connect(server.address[1]) as sock:
            set_io_timeout(sock, 10)
            session = mod.ClientSession(sock.fileno(), 100, make_base(1), "message", 10.0)
            with pytest.raises(ValueError, match="count or a duration"):
                session.run(0)
            assert session.run(0, duration=0.2)
            assert session.messages > 0
            assert session.latency_min_ns > 0
            assert sum(session.histogram()) == session.messages

        with connect(server.address[1]) as sock:
            set_io_timeout(sock, 10)
            stopper = mod.ClientSession(sock.fileno(), 100, make_base(1), "message", 10.0)
            stopper.stop()  # before it starts: no message goes out, the run ends at once
            assert stopper.run(10)
            assert stopper.messages == 0
            assert sock.recv(1) == b""  # half-closed; the server saw EOF and closed


def test_progress_reports_while_the_echo_is_held(core: str) -> None:
    release, reported = threading.Event(), threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        reported.set()

    with fake_server(echo_held_back(300_000, release)) as port:
        client = EchoClient(LOCALHOST, port, size=1_000_000, mode="stream", core=core)
        results: list[EchoResult] = []
        runner = threading.Thread(target=lambda: results.append(client.run(on_progress, 0.05)))
        runner.start()
        try:
            assert reported.wait(30)
        finally:
            release.set()
            runner.join(30)
    assert results and results[0].intact, results
    first = seen[0]
    assert first.received == 300_000 and first.expected == 1_000_000 and first.elapsed > 0
    assert [p.elapsed for p in seen] == sorted(p.elapsed for p in seen)
    with pytest.raises(ValueError, match="interval"):
        client.run(on_progress, 0)


def test_stop_ends_a_stream_in_the_middle(core: str) -> None:
    """A stream is one transfer: stop() must end it there, not after 1 TiB."""
    mod = cores.load(core)
    with running_server(core=core) as server, connect(server.address[1]) as sock:
        set_io_timeout(sock, 10)
        session = mod.ClientSession(sock.fileno(), 1 << 40, make_base(1), "stream", 10.0)
        outcome: list[bool] = []
        runner = threading.Thread(target=lambda: outcome.append(session.run(1)))
        runner.start()
        try:
            for _ in range(1000):  # until bytes flow both ways, 10 s at most
                if session.bytes_received > 0:
                    break
                runner.join(0.01)
        finally:
            session.stop()
            runner.join(30)
        assert not runner.is_alive()
        assert outcome == [True]  # everything sent before the stop came back intact
        assert 0 < session.bytes_received == session.bytes_sent < 1 << 40


@pytest.mark.parametrize("mode", ["bogus", ""])
def test_sessions_reject_a_bad_mode(core: str, mode: str) -> None:
    mod = cores.load(core)
    with pytest.raises(ValueError, match="mode"):
        mod.EchoSession(0, mode)
    with pytest.raises(ValueError, match="mode"):
        mod.ClientSession(0, 10, make_base(0), mode)


def test_sessions_reject_bad_sizes(core: str) -> None:
    mod = cores.load(core)
    with pytest.raises(ValueError):
        mod.EchoSession(0, "message", 0)
    with pytest.raises(ValueError):
        mod.ClientSession(0, 0, make_base(0))
    with pytest.raises(ValueError, match="pattern base"):
        mod.ClientSession(0, 10, b"short")
    for timeout in (0, -1, float("nan"), 3e6):  # poll() takes int milliseconds
        with pytest.raises(ValueError, match="timeout"):
            mod.ClientSession(0, 10, make_base(0), "message", timeout)
    with pytest.raises(ValueError, match="too large"):  # 2**63 bytes would overflow
        mod.ClientSession(0, 1 << 40, make_base(0), "stream").run(1 << 23)


@pytest.mark.parametrize("options", [
    {"mode": "bogus"}, {"size": 0}, {"max_clients": 0}, {"idle_timeout": 0},
    {"idle_timeout": -1}, {"idle_timeout": float("nan")}, {"idle_timeout": float("inf")},
    {"idle_timeout": 1e10}, {"max_bytes": -1}, {"max_bytes": 1 << 61}, {"core": "rust"},
    {"allow": ["nope"]},
])
def test_server_rejects_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EchoServer((LOCALHOST, 0), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [-1, 65536, 85566, 1 << 70])
def test_ports_are_checked_in_the_api_as_on_the_command_line(port: int) -> None:
    """Not the port modulo 65536 (85566 would be 20030): refused, naming the range."""
    with pytest.raises(ValueError, match="must be 1-65535"):
        EchoClient(LOCALHOST, port)
    with pytest.raises(ValueError, match="must be 0-65535"):
        EchoServer((LOCALHOST, port))
    with pytest.raises(ValueError, match="must be 1-65535"):
        BenchConfig(LOCALHOST, port).check()


@pytest.mark.parametrize("options", [
    {"mode": "bogus"}, {"size": 0}, {"count": 0}, {"size": -5}, {"timeout": 0},
    {"timeout": -1}, {"timeout": float("nan")}, {"timeout": float("inf")}, {"timeout": 1e10},
    {"timeout": 3e6}, {"core": "rust"}, {"size": 1 << 40, "count": 1 << 23},
])
def test_client_rejects_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EchoClient(LOCALHOST, 1, **options)  # type: ignore[arg-type]


def test_result_fields(core: str) -> None:
    with running_server(core=core) as server:
        port = server.address[1]
        r = EchoClient(LOCALHOST, port, size=1000, count=4, core=core, seed=8).run()
    assert (r.host, r.port, r.peer, r.mode, r.size, r.count, r.seed) == \
        (LOCALHOST, port, (LOCALHOST, port), "message", 1000, 4, 8)
    assert r.sent == r.received == r.expected == 4000
    assert r.messages == 4 and r.latency.count == 4
    assert 0 < r.latency.min <= r.latency.p50 <= r.latency.max
    assert r.elapsed > 0 and r.mib_per_s > 0
    assert r.problem is None


# -- what a demanding user tries -------------------------------------------------------------

@pytest.mark.parametrize(("size", "count"), [(EXERCISE_SIZE, 3), (1000, 1), (150_000, 1),
                                             (150_000, 7)])
def test_stream_client_against_message_server(core: str, size: int, count: int) -> None:
    """The server's unit does not matter to a stream client: whole messages come back at
    once, the tail when the client half-closes."""
    with running_server(mode="message", size=EXERCISE_SIZE, core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=size, count=count,
                            mode="stream", core=core).run()
    assert result.intact, result.problem
    assert result.received == size * count


def test_message_client_many_round_trips_against_message_server(core: str) -> None:
    with running_server(mode="message", size=EXERCISE_SIZE, core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=EXERCISE_SIZE, count=20,
                            core=core).run()
        assert server.wait(lambda s: s.active == 0, 10)
        assert server.stats.total == 1  # one connection for all 20
    assert result.intact, result.problem
    assert result.messages == 20


def test_smaller_messages_than_the_server_expects_time_out_cleanly(core: str) -> None:
    """A message-mode server waits for a whole message: a client sending smaller ones,
    more than one, gets no echo until its timeout, and says so (no hang, no traceback)."""
    with running_server(mode="message", size=EXERCISE_SIZE, core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=1000, count=2, core=core,
                            timeout=0.3).run()
        assert server.wait(lambda s: s.active == 0, 10)
    assert not result.intact
    assert result.problem is not None
    assert result.problem.startswith("timed out after 0.3 s waiting for the echo")
    assert result.problem.endswith("check that its --size is 1000 bytes too"), result.problem
    assert result.received == 0


@pytest.mark.parametrize("command", [
    ["client", "--size", "1000", "--count", "2"],
    ["bench", "--size", "1000", "--count", "4", "--connections", "2"],
])
def test_size_mismatch_is_named_on_the_command_line(command: list[str]) -> None:
    with running_server(mode="message", size=EXERCISE_SIZE) as server:
        result = cli(command[0], f"127.0.0.1:{server.address[1]}", *command[1:],
                     "--timeout", "0.3")
    assert result.returncode == 1, result
    assert "if the server runs in message mode, check that its --size is 1000 bytes too" \
        in result.stdout + result.stderr, result
    assert "Traceback" not in result.stderr


def test_stream_timeout_has_no_size_hint(core: str) -> None:
    release = threading.Event()
    with fake_server(silent(release)) as port:
        try:
            result = EchoClient(LOCALHOST, port, size=1000, mode="stream", core=core,
                                timeout=0.3).run()
        finally:
            release.set()
    assert result.problem is not None
    assert result.problem.startswith("timed out after 0.3 s waiting for the echo")
    assert "--size" not in result.problem


@pytest.mark.parametrize("server_mode", ["message", "stream"])
def test_ping_against_either_server_mode(server_mode: str) -> None:
    with running_server(mode=server_mode, size=EXERCISE_SIZE) as server:
        result = cli("ping", f"127.0.0.1:{server.address[1]}", "-c", "2", "--size", "1KiB")
    assert result.returncode == 0, result
    assert result.stdout.count("1024 bytes from 127.0.0.1:") == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_mode", ["message", "stream"])
def test_messages_larger_than_every_socket_buffer(core: str, server_mode: str) -> None:
    """8 MiB round trips: the client sends and reads at once, so nothing deadlocks."""
    size = 8 * MIB if core == "cython" else 2 * MIB
    with running_server(mode=server_mode, size=size, core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=size, count=2, core=core,
                            timeout=10).run()
    assert result.intact, result.problem


def test_close_ends_connections_in_flight(core: str) -> None:
    """close() wakes every connection thread and joins it, even mid-message."""
    with running_server(mode="message", size=EXERCISE_SIZE, core=core) as server:
        socks = [connect(server.address[1]) for _ in range(3)]
        for sock in socks:
            sock.sendall(b"x" * 100)
        assert server.wait(lambda s: s.active == 3, 10)
        closer = threading.Thread(target=server.close)
        closer.start()
        closer.join(15)
        assert not closer.is_alive(), "close() hangs on connections in flight"
        assert server.threads == 0
        for sock in socks:
            with sock:
                sock.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1 << 20) in (b"x" * 100, b"")


def test_server_in_a_process_with_a_default_socket_timeout(core: str) -> None:
    """socket.setdefaulttimeout() makes accepted sockets non-blocking: the server undoes it,
    or the cores' blocking recv() would fail at once."""
    socket.setdefaulttimeout(5)
    try:
        with running_server(mode="message", size=1000, core=core, idle_timeout=60) as server:
            # Between messages the server waits for the next one: it must block there.
            result = EchoClient(LOCALHOST, server.address[1], size=1000, count=50,
                                core=core).run()
            assert server.wait(lambda s: s.total == 1 and s.active == 0, 10)
            stats = server.stats
    finally:
        socket.setdefaulttimeout(None)
    assert result.intact, result.problem
    assert stats.timed_out == 0 and stats.errors == 0


def test_server_address_and_context_manager() -> None:
    with EchoServer((LOCALHOST, 0)) as server:
        host, port = server.address
        assert host == LOCALHOST and port > 0
        probe = socket.create_connection((LOCALHOST, port), timeout=5)  # kernel backlog
        probe.close()
    with pytest.raises(OSError):
        socket.create_connection((LOCALHOST, port), timeout=5).close()


def test_client_with_the_longest_timeout(core: str) -> None:
    with running_server(core=core) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=100, core=core,
                            timeout=1e6).run()
    assert result.intact, result.problem


def test_client_without_timeout(core: str) -> None:
    with running_server(core=core, mode="message", size=5000) as server:
        result = EchoClient(LOCALHOST, server.address[1], size=5000, count=3, core=core,
                            timeout=None).run()
    assert result.intact, result.problem


@pytest.mark.parametrize("spare", [1, 3])
def test_a_constructor_that_fails_closes_what_it_opened(spare: int) -> None:
    """Out of fds half-way (after the listener: 1 spare; after the wake-up socket pair:
    3), EchoServer() raises and leaves no fd behind, as socketserver does."""
    code = textwrap.dedent("""
        import os, resource, sys
        from pytcpecho import EchoServer

        def open_fds():
            found = set()
            for n in range(4096):
                try:
                    os.fstat(n)  # opens nothing itself
                except OSError:
                    continue
                found.add(n)
            return found

        EchoServer(("127.0.0.1", 0)).close()  # everything imported and warmed up once
        before = open_fds()
        free = [n for n in range(4096) if n not in before]
        # RLIMIT_NOFILE bounds fd numbers: exactly sys.argv[1] more fds can be opened.
        resource.setrlimit(resource.RLIMIT_NOFILE, (free[int(sys.argv[1]) - 1] + 1, 4096))
        try:
            EchoServer(("127.0.0.1", 0))
        except OSError as exc:
            print(exc.errno == 24, open_fds() == before)
        else:
            print("constructed")
    """)
    out = subprocess.run([sys.executable, "-c", code, str(spare)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
