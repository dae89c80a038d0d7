"""The original exercise on its own network (namespaces), then faults on that network.

Each test builds a fresh lab (tests/netns.py) laid out as the exercise's Docker
network: a bridge, z34_server2 at 198.18.0.1, z34_client1 at .2,
z34_client2 at .3; it is removed afterwards, failed or not.  Without root
these skip with the reason; with CI=true they must run.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from netns import NETNS_ETC, Lab, pytcpecho
from netns import lab as open_lab
from support import ServeProcess, proc_usage, wait_usage

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVER, C1, C2 = "z34_server2", "z34_client1", "z34_client2"  # the exercise's hostnames
EXERCISE_HOSTS = (SERVER, C1, C2)
TARGET = f"{SERVER}:8000"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with open_lab(EXERCISE_HOSTS) as built:
        yield built


def serve(lab: Lab, *args: str) -> ServeProcess:
    """``pytcpecho serve`` on the server host, port 8000; this worktree's package."""
    return lab.start(SERVER, pytcpecho("serve", "--port", "8000", *args))


def start_client(lab: Lab, host: str, *args: str) -> subprocess.Popen[str]:
    """``pytcpecho client ARGS`` started on ``host``."""
    return lab.popen(host, pytcpecho("client", *args))


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_back_to_baseline(server: ServeProcess, fds: int) -> None:
    usage = wait_usage(server.proc.pid, lambda u: u.threads == 2 and u.fds == fds, 20)
    assert usage.threads == 2 and usage.fds == fds


def test_exercise_network_two_clients_at_once_then_once_more(lab: Lab) -> None:
    with serve(lab, "--mode", "message", "--worker-idle", "1") as server:
        server.wait_for(r"Server at .*:8000")
        fds_idle = proc_usage(server.proc.pid).fds
        outputs = []
        for _round in range(2):
            clients = [start_client(lab, host, TARGET) for host in (C1, C2)]  # at the same time
            for client in clients:
                status, out, err = finish(client)
                assert status == 0, (out, err)
                outputs.append(out)
        for out in outputs:
            assert out.splitlines() == [f"Connecting to {TARGET}", "Sent 102400 bytes",
                                        "Received 102400 bytes", out.splitlines()[3],
                                        "Client finished."], out
            assert out.splitlines()[3].startswith("Echo intact in ")
        for _ in range(4):
            server.wait_for(r"Connection closed by client at")
        assert_back_to_baseline(server, fds_idle)
        assert server.stop() == 0
        log = server.output()
    for host in (C1, C2):
        address = re.escape(lab.addresses[host])
        connected = re.findall(rf"Connected by client at \('{address}', \d+\)", log)
        assert len(connected) == 2, log
    assert log.count("Received 102400 bytes") == 4 and log.count("Data sent back to client") == 4
    assert "Served 4 connections, echoed 409600 bytes, 0 errors" in log
    print(f"\nexercise network: 2 rounds x 2 clients ({lab.addresses[C1]}, {lab.addresses[C2]}) -> "
          f"{SERVER} ({lab.addresses[SERVER]}):8000, 4 x 102400 bytes intact, 0 mismatches, "
          f"threads/fds back to baseline")


def test_link_cut_mid_transfer(lab: Lab) -> None:
    idle = 3
    with serve(lab, "--mode", "message", "--size", "1MiB", "--idle-timeout", str(idle),
               "--worker-idle", "1") as server:
        server.wait_for(r"Server at .*:8000")
        fds_idle = proc_usage(server.proc.pid).fds
        client = start_client(lab, C1, TARGET, "--size", "1MiB", "--count", "1000000",
                              "--timeout", "3")
        for _ in range(5):  # in the middle of the transfer: messages are flowing
            server.wait_for(r"Received 1048576 bytes")
        cut = time.monotonic()  # just before: bytes move until the link is down
        lab.ip(None, "link", "set", lab.port(C1), "down")  # the cable
        reaped = server.wait_for(
            rf"Closed connection from \('{re.escape(lab.addresses[C1])}', \d+\): idle for {idle} s",
            timeout=idle + 10)
        reaped_after = time.monotonic() - cut
        status, out, err = finish(client, timeout=30)
        assert_back_to_baseline(server, fds_idle)
        assert server.stop() == 0
    # Reaped by the idle timeout: no sooner (bytes moved until the cut), and well before
    # a second idle period would have passed.
    assert idle - 0.5 <= reaped_after <= idle + 3, f"reaped {reaped_after:.2f} s after the cut"
    assert status == 1, (out, err)
    assert re.search(r"timed out after 3 s waiting for the echo \(\d+ of \d+ bytes came back "
                     r"intact\)", err), err
    assert "--size" not in err  # messages had flowed: no size mismatch to suspect
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    print(f"\nlink cut: client exit {status}: {err.strip()}; server: {reaped.string} "
          f"({reaped_after:.1f} s after the cut); threads/fds back to baseline")


def test_slow_link_10_mbit(lab: Lab) -> None:
    size = 2 << 20
    for host in (SERVER, C1):  # both directions
        lab.tc(host, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "10mbit",
               "burst", "32kbit", "latency", "400ms")
    with serve(lab, "--worker-idle", "1") as server:
        server.wait_for(r"Server at .*:8000")
        stream = start_client(lab, C1, TARGET, "--mode", "stream", "--size", str(size),
                              "--timeout", "30")
        s_status, s_out, s_err = finish(stream)
        message = start_client(lab, C1, TARGET, "--size", "256KiB", "--count", "4",
                               "--timeout", "30")
        m_status, m_out, m_err = finish(message)
        assert server.stop() == 0
    assert s_status == 0 and f"Received {size} bytes" in s_out, (s_out, s_err)
    assert m_status == 0 and f"Received {4 * 256 * 1024} bytes" in m_out, (m_out, m_err)
    shaped = lab.tc(SERVER, "-s", "qdisc", "show", "dev", "eth0")
    sent = int(re.search(r"Sent (\d+) bytes", shaped).group(1))  # type: ignore[union-attr]
    assert "tbf" in shaped and "10Mbit" in shaped and sent >= size, shaped
    speed = s_out.splitlines()[3]
    print(f"\nslow link (tbf 10 Mbit/s both ways): {size} + {4 * 256 * 1024} bytes intact, "
          f"0 mismatches; server tbf sent {sent} bytes; client: {speed}")


def test_small_mtu_576(lab: Lab) -> None:
    for host in (SERVER, C1):
        lab.ip(host, "link", "set", "eth0", "mtu", "576")
        lab.ip(None, "link", "set", lab.port(host), "mtu", "576")
    with serve(lab, "--mode", "message", "--size", "64KiB", "--worker-idle", "1") as server:
        server.wait_for(r"Server at .*:8000")
        message = start_client(lab, C1, TARGET, "--size", "64KiB", "--count", "16",
                               "--timeout", "30")
        m_status, m_out, m_err = finish(message)
        stream = start_client(lab, C1, TARGET, "--mode", "stream", "--size", "4MiB",
                              "--timeout", "30")
        s_status, s_out, s_err = finish(stream)
        assert server.stop() == 0
    assert m_status == 0 and f"Received {16 * 65536} bytes" in m_out, (m_out, m_err)
    assert s_status == 0 and f"Received {4 << 20} bytes" in s_out, (s_out, s_err)
    for host in (SERVER, C1):
        assert "mtu 576" in lab.ip(host, "link", "show", "eth0")
    print(f"\nMTU 576: {16 * 65536} bytes (message) + {4 << 20} bytes (stream) intact, "
          "0 mismatches")


def test_lab_is_removed_afterwards() -> None:
    """A lab built and closed leaves no namespace, process or hosts dir behind."""
    with open_lab(EXERCISE_HOSTS) as built:
        names = [built.bridge_ns, *built.ns.values()]
        built.start(SERVER, ["sleep", "600"])  # a process close() must end
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(name in listed for name in names), listed
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), listed
    assert not any((NETNS_ETC / name).exists() for name in names)
