"""UDP echo end to end on loopback: EchoServer(udp=True), UdpEchoClient, and the commands
(serve --udp, ping --udp, bench --udp) as real processes."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time

import pytest
from support import (
    LOCALHOST,
    ServeProcess,
    assert_one_line_error,
    cli,
    require_ipv6,
    running_server,
    unused_port,
)

from pytcpecho import EchoServer, UdpEchoClient, UdpEchoError
from pytcpecho.constants import UDP_LOOP_PORTS

pytestmark = pytest.mark.timeout(120)


# -- the API -----------------------------------------------------------------------------

def test_a_server_with_udp_echoes_datagrams_on_its_tcp_port(core: str) -> None:
    with running_server(core=core, udp=True, udp_rate=0) as server:
        port = server.address[1]
        result = UdpEchoClient(LOCALHOST, port, size=200, count=20, interval=0.001,
                               core=core).run()
        assert result.intact and result.as_dict()["intact"]
        assert (result.transmitted, result.received, result.corrupted) == (20, 20, 0)
        assert result.loss == 0.0 and result.ttl == 64 and result.hops == 1
        assert 0 < result.latency.min <= result.latency.p50 <= result.latency.max
        assert server.wait(lambda s: s.udp_datagrams_out == 20, 10)
        stats = server.stats
        assert (stats.udp_datagrams_in, stats.udp_bytes_in, stats.udp_bytes_out) == \
               (20, 4000, 4000)
        assert stats.total == 0  # no TCP connection was made


def test_a_server_without_udp_leaves_the_udp_port_alone() -> None:
    with running_server(udp=False) as server:
        port = server.address[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind((LOCALHOST, port))  # free: the server holds no UDP socket
        result = UdpEchoClient(LOCALHOST, port, count=1, timeout=1).run()
        assert result.received == 0 and result.refused == 1 and not result.intact


def test_the_dual_stack_server_answers_ipv4_and_ipv6() -> None:
    require_ipv6(dual_stack=True)
    with running_server(host="", udp=True) as server:
        port = server.address[1]
        for host in ("127.0.0.1", "::1"):
            assert UdpEchoClient(host, port, count=2, interval=0.001).run().intact


def test_the_guards_are_the_servers_allow_and_deny() -> None:
    with running_server(udp=True, deny=["127.0.0.0/8"]) as server:
        result = UdpEchoClient(LOCALHOST, server.address[1], count=3, interval=0.001,
                               timeout=0.3).run()
        assert result.received == 0
        assert server.wait(lambda s: s.udp_denied == 3, 10)
        assert server.stats.udp_datagrams_out == 0


def test_the_servers_own_port_and_the_small_services_are_never_answered() -> None:
    with running_server(udp=True) as server:
        port = server.address[1]
        sent = 0
        # Another echo server on this one's port (on another address) would bounce every
        # datagram back and forth for ever; so would chargen's port, or echo's.
        for host, source in (("127.0.0.2", port), (LOCALHOST, 19), (LOCALHOST, 7)):
            assert source == port or source in UDP_LOOP_PORTS
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                try:
                    peer.bind((host, source))
                except PermissionError:  # a port below 1024 needs root: CI has it
                    continue
                peer.sendto(b"bounce?", (LOCALHOST, port))
                sent += 1
                assert server.wait(lambda s, n=sent: s.udp_loop_port == n, 10)
                peer.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    peer.recv(100)
        assert sent >= 1 and server.stats.udp_datagrams_out == 0


def test_a_failing_constructor_closes_what_it_opened() -> None:
    port = unused_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOCALHOST, port))
        with pytest.raises(OSError):
            EchoServer((LOCALHOST, port), udp=True)
    # The TCP port it had bound is free again.
    EchoServer((LOCALHOST, port), udp=True).close()
    with pytest.raises(ValueError, match="udp_max_size"):
        EchoServer((LOCALHOST, 0), udp=True, udp_max_size=0)


def test_a_client_of_no_such_host_is_told_in_one_error() -> None:
    with pytest.raises(UdpEchoError, match="cannot resolve host"):
        UdpEchoClient("no-such-host.invalid", 8000).run()
    with pytest.raises(ValueError, match="out of range"):
        UdpEchoClient(LOCALHOST, 8000, size=65508)
    with pytest.raises(ValueError, match="out of range"):
        UdpEchoClient(LOCALHOST, 8000, size=23)


# -- the commands ------------------------------------------------------------------------

def test_serve_udp_logs_each_drop_reason_and_sums_them_up(tmp_path: object) -> None:
    with ServeProcess("--udp", "--host", LOCALHOST, "--port", "0", "--udp-rate", "50",
                      "--udp-max-size", "100", "-q") as server:
        port = server.wait_listening()
        assert "(TCP and UDP)" in server.lines[-1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x" * 101, (LOCALHOST, port))  # over --udp-max-size
            for _ in range(200):  # over the bucket of 32 (0.1 s of 50/s is less)
                s.sendto(b"y", (LOCALHOST, port))
            source = s.getsockname()[1]
        # One line per reason, in the order of the guards, within 5 s.
        rate = server.wait_for(r"Dropped (\d+) UDP datagrams over --udp-rate 50/s for one "
                               rf"source \(the last from 127\.0\.0\.1:{source}\)", 15)
        assert 200 - 32 - 2 <= int(rate.group(1)) <= 200 - 32  # a bucket of 32, + 50/s
        server.wait_for(rf"Dropped 1 UDP datagram larger than --udp-max-size 100 bytes "
                        rf"\(the last from 127\.0\.0\.1:{source}\)", 15)
        assert server.stop() == 0
        out = server.output()
        summary = next(line for line in out.splitlines() if line.startswith("UDP: "))
        numbers = [int(n) for n in re.findall(r"\d+", summary)]
        received, echoed, _bytes, dropped, denied, loop, rated, truncated, failed = numbers
        assert received == 201 and truncated == 1 and denied == loop == failed == 0
        assert received == echoed + dropped + failed and dropped == rated + truncated


def test_ping_udp_prints_a_line_per_echo_and_the_paths_figures() -> None:
    with ServeProcess("--udp", "--host", LOCALHOST, "--port", "0", "-q") as server:
        port = server.wait_listening()
        out = cli("ping", "--udp", f"{LOCALHOST}:{port}", "-c", "3", "-i", "0.01")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"PING {LOCALHOST}:{port} (UDP echo): 64-byte datagrams"
        for seq, line in enumerate(lines[1:4]):
            assert line.startswith(f"64 bytes from {LOCALHOST}:{port}: udp_seq={seq} ttl=64 "
                                   "time="), line
        assert lines[5].startswith("3 transmitted, 3 received, 0.0% loss, 0 corrupted, "
                                   "0 duplicates, 0 reordered"), lines[5]
        assert "hops 1 (ttl 64)" in lines[6]
        doc = json.loads(cli("ping", "--udp", f"{LOCALHOST}:{port}", "-c", "2", "-i", "0.01",
                             "--json").stdout)
        assert (doc["transmitted"], doc["received"], doc["loss"], doc["hops"], doc["intact"]) \
            == (2, 2, 0.0, 1, True)


def test_ping_udp_to_nothing_is_one_line_and_exit_3() -> None:
    port = unused_port()
    started = time.monotonic()
    out = cli("ping", "--udp", f"{LOCALHOST}:{port}", "-c", "2", "-i", "0.05",
              "--timeout", "5")
    line = assert_one_line_error(out, 3)
    # A closed port answers with ICMP: no need to wait out the timeout.
    assert time.monotonic() - started < 5
    assert line == (f"pytcpecho ping: error: no echo from {LOCALHOST}:{port} (port "
                    "unreachable) within 5 s: 2 of 2 datagrams lost (100% loss)")
    doc = cli("ping", "--udp", f"{LOCALHOST}:{port}", "--json", "--timeout", "0.2")
    assert doc.returncode == 3 and json.loads(doc.stdout)["loss"] == 1.0
    assert len(doc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--size", "65508"], "argument --size: size 65508 is out of range"),
    (["--size", "23"], "argument --size: size 23 is out of range"),
    (["--json"], "--json goes with --udp"),
])
def test_ping_udp_bad_input_is_one_line(args: list[str], says: str) -> None:
    udp = [] if "--json" in args else ["--udp"]
    line = assert_one_line_error(cli("ping", *udp, f"{LOCALHOST}:9", *args), 2)
    assert says in line, line


def test_ping_udp_stopped_by_ctrl_c_prints_what_it_measured() -> None:
    with ServeProcess("--udp", "--host", LOCALHOST, "--port", "0", "-q") as server:
        port = server.wait_listening()
        with ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "ping", "--udp",
                               f"{LOCALHOST}:{port}", "-c", "1000", "-i", "0.2"]) as ping:
            ping.wait_for(r"udp_seq=1 ")
            ping.proc.send_signal(signal.SIGINT)
            assert ping.proc.wait(10) == 130
            out = ping.output()
        assert "UDP echo statistics (interrupted) ---" in out
        assert "0.0% loss" in out and "Traceback" not in out


def test_bench_udp_open_loop_reports_intervals_and_loss() -> None:
    with ServeProcess("--udp", "--udp-rate", "0", "--host", LOCALHOST, "--port", "0",
                      "-q") as server:
        port = server.wait_listening()
        out = cli("bench", "--udp", f"{LOCALHOST}:{port}", "-c", "2", "-t", "1",
                  "--rate", "2000", "-i", "0.5", "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert (doc["protocol"], doc["mode"], doc["sockets"], doc["size"]) == \
               ("udp", "open", 2, 64)
        assert 1800 <= doc["sent"] <= 2100 and doc["received"] == doc["sent"]
        assert doc["loss"] == 0.0 and doc["corrupted"] == 0 and doc["ok"]
        assert 1500 <= doc["offered_per_s"] <= 2200
        assert len(doc["intervals"]) >= 2 and doc["latency_ms"]["p99"] > 0
        text = cli("bench", "--udp", f"{LOCALHOST}:{port}", "-c", "1", "-n", "500", "--rr")
        assert text.returncode == 0, text.stderr
        assert "request/response" in text.stdout.splitlines()[0]
        assert "Datagrams: 500 sent, 500 echoed intact" in text.stdout


def test_bench_udp_without_a_rate_searches_for_the_highest_rate() -> None:
    with ServeProcess("--udp", "--udp-rate", "0", "--host", LOCALHOST, "--port", "0",
                      "-q") as server:
        port = server.wait_listening()
        out = cli("bench", "--udp", f"{LOCALHOST}:{port}", "-c", "1", "-t", "0.4",
                  "--json", timeout=120)
        assert out.returncode in (0, 1), out.stderr  # 1: the measured run lost more
        doc = json.loads(out.stdout)
        rates = [step["rate"] for step in doc["search"]]
        assert rates[:2] == [10000, 20000] and doc["rate"] in rates
        good = [s["rate"] for s in doc["search"] if s["loss"] <= doc["max_loss"]]
        assert doc["rate"] == max(good)


def test_bench_udp_against_a_server_over_its_rate_limit_shows_the_loss() -> None:
    with ServeProcess("--udp", "--udp-rate", "100", "--host", LOCALHOST, "--port", "0",
                      "-q") as server:
        port = server.wait_listening()
        out = cli("bench", "--udp", f"{LOCALHOST}:{port}", "-c", "1", "-n", "1000",
                  "--rate", "5000", "--json")
        assert out.returncode == 1  # loss over --max-loss
        doc = json.loads(out.stdout)
        assert doc["loss"] > 0.5 and not doc["ok"] and doc["corrupted"] == 0


@pytest.mark.parametrize(("args", "says"), [
    (["--rr", "--rate", "100"], "--rr sends the next datagram when the echo came"),
    (["--mode", "stream"], "--mode, --connect-each and --threads are TCP's"),
    (["--max-loss", "100"], "invalid percentage '100'"),
    (["--size", "70000"], "argument --size: size 70000 is out of range"),
])
def test_bench_udp_bad_input_is_one_line(args: list[str], says: str) -> None:
    line = assert_one_line_error(cli("bench", "--udp", f"{LOCALHOST}:9", *args), 2)
    assert says in line, line


def test_bench_tcp_refuses_the_udp_options() -> None:
    line = assert_one_line_error(cli("bench", f"{LOCALHOST}:9", "--rr"), 2)
    assert "--rr goes with --udp" in line


def test_bench_udp_to_nothing_is_one_line_and_exit_3() -> None:
    out = cli("bench", "--udp", f"{LOCALHOST}:{unused_port()}", "-c", "1", "-n", "5",
              "--rate", "100", "--timeout", "1")
    line = assert_one_line_error(out, 3)
    assert "none came back" in line and "(port unreachable)" in line


def test_workers_sum_their_udp_counters() -> None:
    with ServeProcess("--udp", "--udp-rate", "0", "--workers", "2", "--host", LOCALHOST,
                      "--port", "0", "--metrics-port", "0") as server:
        port = server.wait_listening()
        server.wait_for(r"Server at ", 30)  # the second worker's
        assert UdpEchoClient(LOCALHOST, port, count=50, interval=0.001).run().intact
        assert server.stop() == 0
        out = server.output()
        assert "UDP: received 50 datagrams, echoed 50 (3200 bytes)" in out, out


def test_echoes_to_many_senders_keep_each_senders_order_and_bytes(core: str) -> None:
    """The server sends a batch's echoes to one sender together (one GSO send in the
    Cython core), wherever they stood in the batch: each sender still gets exactly its
    datagrams, in its order, whatever their sizes (a shorter one ends a GSO send, a
    larger one starts the next)."""
    sizes = [100, 100, 40, 100, 300, 300, 300, 1, 0, 300, 1200, 1200]
    with running_server(core=core, udp=True, udp_rate=0) as server:
        port = server.address[1]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for s in senders:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                s.connect((LOCALHOST, port))
                s.settimeout(10)
            sent: dict[int, list[bytes]] = {i: [] for i in range(len(senders))}
            for n in range(20):  # interleaved: A B C A B C ..., as fast as they go
                for i, s in enumerate(senders):
                    size = sizes[(n + i) % len(sizes)]
                    data = bytes([i, n]) * (size // 2) + bytes([i])[: size % 2]
                    s.send(data)
                    sent[i].append(data)
            for i, s in enumerate(senders):
                got = [s.recv(2000) for _ in sent[i]]
                assert got == sent[i], f"sender {i}"
        finally:
            for s in senders:
                s.close()
        assert server.wait(lambda st: st.udp_datagrams_out == 60, 10)


def test_bench_udp_starts_at_the_moment_given() -> None:
    with ServeProcess("--udp", "--udp-rate", "0", "--host", LOCALHOST, "--port", "0",
                      "-q") as server:
        port = server.wait_listening()
        start = time.time() + 1.5
        out = cli("bench", "--udp", f"{LOCALHOST}:{port}", "-c", "1", "-n", "50", "--rate",
                  "1000", "--start-at", f"{start:.3f}")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[1].startswith("Waiting ") and "to start at" in lines[1], lines
        assert time.time() >= start
