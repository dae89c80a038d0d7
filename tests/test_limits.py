"""Each limit acts, logs a line when it does, and has a documented default."""

from __future__ import annotations

import logging
import shutil
import socket
import sys

import pytest
from support import (
    ServeProcess,
    assert_one_line_error,
    cli,
    connect,
    proc_usage,
    recv_exactly,
    require,
    require_ipv6,
    running_server,
    wait_usage,
)

from pytcpecho import EchoClient, EchoServer
from pytcpecho.server import MAX_MESSAGE_SIZE

pytestmark = pytest.mark.timeout(60)

NOT_SERVED_WINDOW = 0.5  # a client held back shows no echo for this long


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes (a RST ends it too)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_max_bytes_ends_the_connection_and_logs(core: str, mode: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(core=core, mode=mode, max_bytes=1000) as server:
        with connect(server.address[1]) as sock:
            sock.sendall(b"x" * 5000)
            echoed = read_until_closed(sock)
        assert server.wait(lambda s: s.active == 0 and s.over_limit == 1, 10), server.stats
    assert len(echoed) <= 1000 and set(echoed) <= {ord("x")}
    assert "it sent more than 1000 bytes" in caplog.text


def test_idle_timeout_closes_a_silent_client_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(idle_timeout=0.3) as server, connect(server.address[1]) as sock:
        assert read_until_closed(sock) == b""
        assert server.wait(lambda s: s.timed_out == 1 and s.active == 0, 10), server.stats
    assert "idle for 0.3 s" in caplog.text


def test_max_clients_holds_the_rest_in_the_backlog_and_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(max_clients=2) as server:
        port = server.address[1]
        first, second, third = connect(port), connect(port), connect(port)
        try:
            assert server.wait(lambda s: s.active == 2, 10)
            third.sendall(b"waiting")  # queued in the backlog, not served yet
            # Not served, for a while: no echo, and the server still counts two clients.
            third.settimeout(NOT_SERVED_WINDOW)
            with pytest.raises(TimeoutError):
                third.recv(7)
            third.settimeout(10)
            assert server.stats.total == 2 and server.threads <= 2
            assert "At the limit of 2 clients: not accepting" in caplog.text
            first.close()
            assert recv_exactly(third, 7) == b"waiting"  # served once a slot is free
            assert server.stats.total == 3 and server.threads <= 2
        finally:
            for sock in (first, second, third):
                sock.close()
    assert "At the limit of 2 clients: not accepting" in caplog.text


@pytest.mark.parametrize(("host", "peer"), [("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
@pytest.mark.parametrize(("allow", "deny", "served"), [
    ([], ["NET"], False),
    (["NET"], [], True),
    (["OTHER"], [], False),
    (["NET"], ["NET"], False),  # deny wins
])
def test_allow_and_deny(host: str, peer: str, allow: list[str], deny: list[str], served: bool,
                        caplog: pytest.LogCaptureFixture) -> None:
    if ":" in host:
        require_ipv6()
    nets = {"NET": f"{peer}/{128 if ':' in peer else 32}",
            "OTHER": "2001:db8::/32" if ":" in peer else "198.18.0.0/15"}
    caplog.set_level(logging.INFO, logger="pytcpecho")
    with running_server(host=host, allow=[nets[n] for n in allow],
                        deny=[nets[n] for n in deny]) as server:
        with socket.create_connection((host, server.address[1]), timeout=10) as sock:
            try:
                sock.sendall(b"hello")
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # refused: the server's RST may already be here
                assert not served
            echoed = read_until_closed(sock)
        assert server.wait(lambda s: s.active == 0 and s.total + s.refused == 1, 10)
    assert echoed == (b"hello" if served else b"")
    assert (f"Refused client at ('{peer}'" in caplog.text) is not served
    assert server.stats.refused == (0 if served else 1)


@pytest.mark.parametrize("rule", ["127.0.0.1/32", "::ffff:127.0.0.1/128", "::ffff:127.0.0.0/104",
                                  "::ffff:0:0/96", "0.0.0.0/0", "::/0"])
@pytest.mark.parametrize("client", ["127.0.0.1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("kind", ["allow", "deny"])
def test_rules_match_by_address_not_notation(kind: str, rule: str, client: str) -> None:
    """On a dual-stack listener an IPv4 client may arrive in either form, and a rule may
    name it in either form: the rule applies to the address, whatever the notation.
    ::/0 names IPv6 space, not the IPv4 clients a dual-stack socket maps into it."""
    require_ipv6(dual_stack=True)
    with running_server(host="", **{kind: [rule]}) as server:
        family = socket.AF_INET6 if ":" in client else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect((client, server.address[1]))
            try:
                sock.sendall(b"hello")
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # refused: the server's RST may already be here
                pass
            echoed = read_until_closed(sock)
        assert server.wait(lambda s: s.active == 0 and s.total + s.refused == 1, 10)
    served = (kind == "allow") != (rule == "::/0")
    assert echoed == (b"hello" if served else b""), (kind, rule, client)
    assert server.stats.refused == (0 if served else 1)


def test_a_rule_for_other_ipv6_addresses_leaves_ipv4_clients_alone() -> None:
    require_ipv6(dual_stack=True)
    with running_server(host="", deny=["2001:db8::/32", "::1/128"]) as server, \
            socket.create_connection(("127.0.0.1", server.address[1]), timeout=10) as sock:
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"hello"


def test_message_size_cap() -> None:
    with pytest.raises(ValueError, match="64 MiB"):
        EchoServer(("127.0.0.1", 0), mode="message", size=MAX_MESSAGE_SIZE + 1)
    EchoServer(("127.0.0.1", 0), mode="message", size=MAX_MESSAGE_SIZE).close()
    line = assert_one_line_error(cli("serve", "--port", "0", "--size", "65MiB"), 2)
    assert "argument --size: invalid size '65MiB': at most 64 MiB" in line


def test_help_documents_every_default() -> None:
    text = " ".join(cli("serve", "--help").stdout.split())
    for expected in ("at most 64MiB", "(default: 1024)", "(default: 60)", "(default: no limit)",
                     "default: every client", "default: none", "(default: 10)",
                     "(default: 30)", "exit 0"):
        assert expected in text, expected


def test_out_of_fds_pauses_accepting_and_keeps_serving() -> None:
    """EMFILE: the server logs, pauses, and serves again once fds are free."""
    if shutil.which("prlimit") is None:
        require("prlimit (util-linux) is not installed",
                "prlimit (util-linux) is needed to test EMFILE")
    limit = 32
    cmd = ["prlimit", f"--nofile={limit}:{limit}", sys.executable, "-m", "pytcpecho", "serve",
           "--port", "0", "--worker-idle", "0.5", "-q"]
    with ServeProcess(cmd=cmd) as server:
        port = server.wait_listening()
        assert EchoClient("127.0.0.1", port, size=1000).run().intact
        baseline = wait_usage(server.proc.pid, lambda u: u.threads == 2, 10)
        held = [connect(port) for _ in range(limit + 8)]  # more than the server can hold
        try:
            server.wait_for(r"Cannot accept: Too many open files; pausing for 0\.1 s")
            assert proc_usage(server.proc.pid).fds == limit
        finally:
            for sock in held:
                sock.close()
        result = EchoClient("127.0.0.1", port, size=100_000, timeout=30).run()
        assert result.intact, result.problem
        wait_usage(server.proc.pid,
                   lambda u: u.threads == baseline.threads and u.fds == baseline.fds, 15)
        assert server.stop() == 0
