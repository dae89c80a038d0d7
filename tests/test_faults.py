"""What goes wrong on real networks: half-closes, resets, stalled readers, bad targets,
IPv6, and echoes that come back changed or short."""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
from fakes import (
    closed_port,
    echo_held_open,
    echo_then,
    fake_server,
    flipping_echo,
    half_echo,
    no_echo,
    resetting,
    silent,
)
from support import (
    LOCALHOST,
    ServeProcess,
    assert_one_line_error,
    cli,
    connect,
    recv_exactly,
    require_cython,
    require_ipv6,
    running_server,
)

from pytcpecho import EchoClient, EchoError, EchoServer

SEED_SIZE = 102400
UNKNOWN_HOST = "no-such-host.invalid"  # RFC 6761: never resolves


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("pytcpecho")]


def _next_client_is_fine(server: EchoServer, core: str) -> None:
    result = EchoClient(LOCALHOST, server.address[1], size=SEED_SIZE, core=core).run()
    assert result.intact, result.problem


# -- the client ends early ----------------------------------------------------------

def test_eof_mid_message_echoes_the_half(core: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    half = bytes(range(256)) * (SEED_SIZE // 2 // 256)
    with running_server(mode="message", size=SEED_SIZE, core=core) as server, \
            connect(server.address[1]) as sock:
        sock.sendall(half)
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, SEED_SIZE) == half  # the half, then EOF
        assert server.wait(lambda s: s.active == 0, 10)
        assert server.stats.bytes_out == len(half)
    assert f"Received {len(half)} bytes" in _messages(caplog)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_client_reset_mid_message(core: str, mode: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(mode=mode, size=SEED_SIZE, core=core) as server:
        sock = connect(server.address[1])
        sock.sendall(b"x" * (SEED_SIZE // 2))
        assert server.wait(lambda s: s.active == 1 and s.bytes_in == SEED_SIZE // 2, 10)
        _reset(sock)
        assert server.wait(lambda s: s.active == 0, 10)
        assert server.stats.errors == 0
        _next_client_is_fine(server, core)
    messages = _messages(caplog)
    assert any(m.startswith("Connection reset by client at ('127.0.0.1'") for m in messages), \
        messages
    assert not any("Traceback" in m or "failed" in m for m in messages)


def test_client_reset_while_the_server_is_sending(core: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A stream client that stops reading, then resets: the server's blocked send ends."""
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(mode="stream", core=core) as server:
        sock = _stuffed_connection(server.address[1])
        assert server.wait(lambda s: s.bytes_out > 0, 10)
        _reset(sock)
        assert server.wait(lambda s: s.active == 0, 10)
        assert server.stats.errors == 0
        _next_client_is_fine(server, core)
    assert any(m.startswith("Connection reset by client") for m in _messages(caplog))


def _stuffed_connection(port: int, *, tolerate_reset: bool = False) -> socket.socket:
    """A connection that sent until every buffer on the way is full, and never reads.

    ``tolerate_reset``: the server may end it while it is still being filled.
    """
    sock = socket.create_connection((LOCALHOST, port))
    sock.settimeout(0.2)  # a send blocked this long means every buffer is full
    chunk = b"z" * 65536
    try:
        for _ in range(4096):  # at most 256 MiB
            try:
                sock.send(chunk)
            except TimeoutError:
                return sock
            except ConnectionError:
                if tolerate_reset:
                    return sock
                raise
    except BaseException:
        sock.close()
        raise
    sock.close()
    raise AssertionError("256 MiB went out to a server whose echo nobody reads")


def test_client_that_never_reads_is_ended_by_the_send_timeout(
        core: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(mode=mode, size=65536, core=core, idle_timeout=0.5) as server:
        sock = _stuffed_connection(server.address[1], tolerate_reset=True)
        try:
            assert server.wait(lambda s: s.active == 0, 20), "the stalled client still holds on"
        finally:
            sock.close()
        _next_client_is_fine(server, core)
    assert any(m.startswith("Closed connection from ('127.0.0.1'") and "idle for 0.5 s" in m
               for m in _messages(caplog)), _messages(caplog)


def test_idle_client_is_ended_by_the_receive_timeout(core: str) -> None:
    with running_server(core=core, idle_timeout=0.3) as server, \
            connect(server.address[1]) as sock:
        assert sock.recv(1) == b""  # the server closed it
        assert server.wait(lambda s: s.active == 0, 10)


def test_connect_and_close_without_a_byte(core: str, mode: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Port probes (nc -z, health checks) are ordinary short connections."""
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(mode=mode, core=core) as server:
        for _ in range(5):
            connect(server.address[1]).close()
        assert server.wait(lambda s: s.total == 5 and s.active == 0, 10), server.stats
        assert server.stats.errors == 0
        _next_client_is_fine(server, core)
        # The client is done when its echo is back; the server's thread sees its EOF later.
        assert server.wait(lambda s: s.total == 6 and s.active == 0, 10), server.stats
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum(m.startswith("Connection closed by client") for m in _messages(caplog)) == 6


# -- the client cannot reach the server -------------------------------------------------

def test_unknown_host(core: str) -> None:
    with pytest.raises(EchoError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        EchoClient(UNKNOWN_HOST, 8000, core=core).run()


@pytest.mark.parametrize("command", ["client", "ping"])
def test_unknown_host_cli(command: str) -> None:
    line = assert_one_line_error(cli(command, f"{UNKNOWN_HOST}:8000"), 3)
    assert line.startswith(f"pytcpecho {command}: error: cannot resolve host"), line


def test_refused_port(core: str) -> None:
    holder, port = closed_port()
    with holder, pytest.raises(EchoError, match=f"connection refused by 127.0.0.1:{port}"):
        EchoClient(LOCALHOST, port, core=core).run()


@pytest.mark.parametrize("command", ["client", "ping"])
def test_refused_port_cli(command: str) -> None:
    holder, port = closed_port()
    with holder:
        line = assert_one_line_error(cli(command, f"127.0.0.1:{port}"), 3)
    assert line == f"pytcpecho {command}: error: connection refused by 127.0.0.1:{port}"


def test_connect_timeout_is_unreachable() -> None:
    """A full backlog on a server that never accepts: the connect times out, exit 3."""
    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    # With a backlog of 0, one established connection fills the accept queue, and the
    # kernel then drops every new SYN: the next connect cannot complete.
    filler = socket.create_connection((LOCALHOST, port), timeout=10)
    try:
        result = cli("client", f"127.0.0.1:{port}", "--timeout", "0.5")
    finally:
        filler.close()
        listener.close()
    line = assert_one_line_error(result, 3)
    assert line == (f"pytcpecho client: error: timed out connecting to 127.0.0.1:{port} "
                    "after 0.5 s"), line


# -- IPv6 ---------------------------------------------------------------------------

@pytest.fixture
def ipv6() -> None:
    require_ipv6()


@pytest.mark.usefixtures("ipv6")
def test_ipv6_loopback(core: str, mode: str) -> None:
    with running_server("::1", mode=mode, size=SEED_SIZE, core=core) as server:
        port = server.address[1]
        assert server.address[0] == "::1"
        result = EchoClient("::1", port, size=SEED_SIZE, core=core).run()
        assert result.intact, result.problem
        assert result.peer == ("::1", port)
        assert result.sent == result.received == SEED_SIZE


@pytest.mark.usefixtures("ipv6")
def test_ipv6_cli_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server("::1", mode="message") as server:
        port = server.address[1]
        result = cli("client", f"[::1]:{port}")
        assert result.returncode == 0, result
        assert result.stdout.splitlines()[0] == f"Connecting to [::1]:{port}"
        assert "Client finished." in result.stdout
        result = cli("ping", f"[::1]:{port}")
        assert result.returncode == 0, result
        assert f"64 bytes from [::1]:{port}: intact" in result.stdout
        assert server.wait(lambda s: s.active == 0, 10)
    assert any(m.startswith("Connected by client at ('::1', ") for m in _messages(caplog))


def test_dual_stack_serves_ipv4_and_ipv6(caplog: pytest.LogCaptureFixture) -> None:
    require_ipv6(dual_stack=True)
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server("", mode="message") as server:
        port = server.address[1]
        for host in (LOCALHOST, "::1"):
            result = EchoClient(host, port).run()
            assert result.intact, (host, result.problem)
        assert server.wait(lambda s: s.active == 0 and s.total == 2, 10)
    messages = _messages(caplog)
    assert any(m.startswith("Server at [::]:") and "IPv4 and IPv6" in m for m in messages)
    # An IPv4 client of a dual-stack socket shows as IPv4, not ::ffff:127.0.0.1.
    assert any(m.startswith("Connected by client at ('127.0.0.1', ") for m in messages)
    assert any(m.startswith("Connected by client at ('::1', ") for m in messages)


# -- echoes that come back wrong --------------------------------------------------------

@pytest.mark.parametrize("offset", [0, 5, 65536 + 3, 70000, SEED_SIZE - 1])
@pytest.mark.parametrize("client_mode", ["message", "stream"])
def test_mismatch_is_found_at_its_offset(core: str, client_mode: str, offset: int) -> None:
    with fake_server(flipping_echo(offset)) as port:
        result = EchoClient(LOCALHOST, port, size=SEED_SIZE, mode=client_mode, core=core).run()
    assert not result.intact
    assert result.problem is not None
    assert result.problem.startswith(f"echo differs from what was sent at byte {offset} ("), \
        result.problem
    assert result.received == offset


def test_mismatch_in_a_later_message(core: str) -> None:
    """Offsets count from the start of the connection, across messages."""
    offset = 3 * 1000 + 17
    with fake_server(flipping_echo(offset)) as port:
        result = EchoClient(LOCALHOST, port, size=1000, count=10, core=core).run()
    assert result.problem is not None
    assert f"at byte {offset} " in result.problem
    assert result.messages == 3


def test_mismatch_cli() -> None:
    offset = 77777
    with fake_server(flipping_echo(offset)) as port:
        result = cli("client", f"127.0.0.1:{port}")
    line = assert_one_line_error(result, 1)
    assert f"echo differs from what was sent at byte {offset} " in line
    assert "Client finished." not in result.stdout


@pytest.mark.parametrize("client_mode", ["message", "stream"])
def test_short_echo(core: str, client_mode: str) -> None:
    with fake_server(half_echo) as port:
        result = EchoClient(LOCALHOST, port, size=SEED_SIZE, mode=client_mode, core=core).run()
    assert not result.intact
    assert result.received == SEED_SIZE // 2
    assert result.problem is not None
    assert result.problem.startswith("short echo"), result.problem


@pytest.mark.parametrize(("handler", "command"), [
    (half_echo, "client"), (no_echo, "client"), (half_echo, "ping"), (no_echo, "ping"),
])
def test_short_echo_cli(handler: object, command: str) -> None:
    with fake_server(handler) as port:  # type: ignore[arg-type]
        line = assert_one_line_error(cli(command, f"127.0.0.1:{port}"), 1)
    assert "short echo" in line


@pytest.mark.parametrize("client_mode", ["message", "stream"])
@pytest.mark.parametrize("count", [1, 3])
def test_long_echo(core: str, client_mode: str, count: int) -> None:
    """Bytes after the last one sent are an echo that is not intact, too."""
    with fake_server(echo_then(b"GARBAGE" * 100)) as port:
        result = EchoClient(LOCALHOST, port, size=1000, count=count, mode=client_mode,
                            core=core).run()
    assert not result.intact
    assert result.received == 1000 * count  # every byte sent came back, then more
    assert result.problem is not None
    assert result.problem.startswith("long echo: after the last byte, "), result.problem
    assert "more came back that were never sent" in result.problem


@pytest.mark.parametrize("command", ["client", "ping"])
def test_long_echo_cli(command: str) -> None:
    with fake_server(echo_then(b"!")) as port:
        line = assert_one_line_error(cli(command, f"127.0.0.1:{port}"), 1)
    assert "long echo: after the last byte, 1 more came back that were never sent" in line


@pytest.mark.parametrize("client_mode", ["message", "stream"])
def test_server_that_stays_open_after_the_echo(core: str, client_mode: str) -> None:
    """Not closing after the client's half-close is no fault of the echo: intact, after
    one timeout spent waiting for anything more."""
    release = threading.Event()
    with fake_server(echo_held_open(release)) as port:
        try:
            result = EchoClient(LOCALHOST, port, size=SEED_SIZE, mode=client_mode, core=core,
                                timeout=0.5).run()
        finally:
            release.set()
    assert result.intact, result.problem
    assert result.received == SEED_SIZE


def test_silent_server_times_out(core: str) -> None:
    release = threading.Event()
    with fake_server(silent(release)) as port:
        try:
            result = EchoClient(LOCALHOST, port, size=1000, core=core, timeout=0.3).run()
        finally:
            release.set()
    assert not result.intact
    assert result.problem is not None
    assert result.problem.startswith("timed out after 0.3 s waiting for the echo"), \
        result.problem


def test_silent_server_cli() -> None:
    release = threading.Event()
    with fake_server(silent(release)) as port:
        try:
            result = cli("client", f"127.0.0.1:{port}", "--timeout", "0.3")
        finally:
            release.set()
    line = assert_one_line_error(result, 1)
    assert "timed out after 0.3 s" in line


@pytest.mark.parametrize("after", [0, 1000])
def test_server_reset(core: str, after: int) -> None:
    """The server resets the connection, at once or mid-message: the client says so in
    words (EchoError when it happens while connecting), never with a raw OSError.
    Fifty tries, because where the reset lands is a race."""
    outcomes = set()
    with fake_server(resetting(after)) as port:
        for _ in range(50):
            try:
                result = EchoClient(LOCALHOST, port, size=SEED_SIZE, core=core).run()
            except EchoError as exc:
                assert str(exc).startswith(f"cannot connect to 127.0.0.1:{port}: ") or \
                    str(exc).startswith(f"connection to 127.0.0.1:{port} failed: "), exc
                outcomes.add("EchoError")
                continue
            assert not result.intact
            assert result.problem is not None
            assert result.problem.startswith(("connection reset by the server", "short echo",
                                              "connection failed: Broken pipe")), \
                result.problem
            outcomes.add(result.problem.split(" (")[0])
    print(f"\nserver resets after {after} bytes, core {core}: {sorted(outcomes)}")


def test_server_reset_cli() -> None:
    with fake_server(resetting(1000)) as port:
        result = cli("client", f"127.0.0.1:{port}")
    assert_one_line_error(result, 1)


@pytest.mark.usefixtures("ipv6")
def test_serve_command_on_ipv6() -> None:
    with ServeProcess("--host", "::1", "--port", "0") as serve:
        port = int(serve.wait_for(r"^Server at \[::1\]:(\d+)$").group(1))
        result = cli("client", f"[::1]:{port}", "--mode", "stream")
        assert result.returncode == 0, result
        serve.wait_for(r"^Connection closed by client at \('::1', \d+\)")
        assert serve.stop() == 0


@pytest.mark.parametrize("client_core", ["cython", "python"])
def test_ctrl_c_while_waiting_for_the_echo(client_core: str) -> None:
    """SIGINT reaches a client blocked in the core's recv(): exit 130, no traceback."""
    if client_core == "cython":
        require_cython()
    waiting, release = threading.Event(), threading.Event()

    def handler(conn: socket.socket) -> None:
        while conn.recv(1 << 16):
            pass
        waiting.set()  # the client sent everything and half-closed: it waits for the echo
        release.wait(30)

    with fake_server(handler) as port:
        proc = subprocess.Popen([sys.executable, "-m", "pytcpecho", "client",
                                 f"127.0.0.1:{port}", "--timeout", "30", "--core", client_core],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert waiting.wait(30), "the client never sent its message"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in err


# -- the server cannot serve ----------------------------------------------------------------

HUGE = 1 << 50  # 1 PiB: beyond a 47-bit user address space, so no allocator can grant it


def test_message_size_beyond_the_cap_is_refused_at_once(core: str) -> None:
    """A message buffer no machine could hold per client is a clear error before serving."""
    with pytest.raises(ValueError, match=r"above the limit of 67108864 bytes \(64 MiB\)"):
        EchoServer((LOCALHOST, 0), mode="message", size=HUGE, core=core)
