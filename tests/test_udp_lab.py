"""UDP echo (RFC 862 over UDP) on its own network: loss, corruption, hops, and the
reflection guards end to end, all as real processes in network namespaces.

One bridge lab (tests/netns.py) serves most tests: ``server`` at 198.18.0.1 runs
``pytcpecho serve --udp`` on port 8000, ``client`` (.2) runs ``ping --udp`` or a
test's own sockets, ``peer`` (.3) is a second allowed source and ``outsider`` (.4)
one the server denies.  Faults are nftables rules in a namespace (random loss on an
input hook, a payload rewrite on prerouting, which veth does not checksum again);
hops are measured once more through a router (netns.RoutedLab).  The test's crafted
datagrams come from plain sockets made inside a namespace (``ns_call``).  Without
root or nft these skip; with CI=true they fail instead.

Nothing sleeps to wait: a datagram the server must not answer is shown unanswered
by a marker sent after it from another socket, whose echo proves the server has
dealt with it (one socket, one loop, in order).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from netns import Lab, pytcpecho, routed_lab, run
from netns import lab as open_lab
from support import ServeProcess, assert_one_line_error, raise_fd_limit, require

from pytcpecho.constants import UDP_LOOP_PORTS, UDP_MIN_BURST

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

T = TypeVar("T")
HOSTS = ("server", "client", "peer", "outsider")
PORT = 8000
SERVER_IP = "198.18.0.1"
SERVER = (SERVER_IP, PORT)
TARGET = f"{SERVER_IP}:{PORT}"
OUTSIDER_NET = "198.18.0.4/32"
CLONE_NEWNET = 0x40000000

SUMMARY = re.compile(
    r"UDP: received (?P<datagrams_in>\d+) datagrams?, echoed (?P<echoed>\d+) \(\d+ bytes\), "
    r"dropped (?P<dropped>\d+) \((?P<denied>\d+) denied, (?P<loop_port>\d+) from loop-prone "
    r"ports, (?P<rate_limited>\d+) over --udp-rate, (?P<truncated>\d+) over --udp-max-size\), "
    r"(?P<failed>\d+) failed to send")
DROPPED = re.compile(r"Dropped (\d+) UDP datagrams? (.*) \(the last from (\S+)\)")
REASONS = {  # the drop lines' words for each guard (pytcpecho.udpserver)
    "denied": "from a network --allow/--deny refuses",
    "loop_port": "from a loop-prone source port",
    "rate_limited": "over --udp-rate",
    "truncated": "larger than --udp-max-size",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with open_lab(HOSTS) as built:
        yield built


# -- helpers ---------------------------------------------------------------------------

def require_nft() -> None:
    require(None if shutil.which("nft") else "nftables (nft) is not installed",
            "CI must install nftables for the UDP lab tests")


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ns_call(ns: str, make: Callable[[], T]) -> T:
    """``make()`` run in a thread that entered namespace ``ns`` (and ends with it):
    the sockets it makes stay in ``ns``, usable from any thread."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with open(f"/run/netns/{ns}") as handle:
                _setns(handle.fileno())
            out["value"] = make()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, name=f"in-{ns}")
    thread.start()
    thread.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def udp_socket(lab: Lab, host: str, port: int = 0) -> socket.socket:
    """A UDP socket in ``host``'s namespace, bound to ``port`` (0: any)."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", port))
        except BaseException:
            sock.close()
            raise
        return sock
    return ns_call(lab.ns[host], make)


@contextlib.contextmanager
def sockets(lab: Lab, host: str, ports: tuple[int, ...] = (0,)) -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    try:
        for port in ports:
            made.append(udp_socket(lab, host, port))
        yield made
    finally:
        for sock in made:
            sock.close()


def nft(lab: Lab, host: str, rules: str) -> None:
    require_nft()
    subprocess.run(["ip", "netns", "exec", lab.ns[host], "nft", "-f", "-"], input=rules,
                   text=True, check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def nft_table(lab: Lab, host: str, name: str, hook: str, rule: str) -> Iterator[None]:
    """nftables table ``name`` with ``rule`` on ``hook`` in ``host``'s namespace, for the
    block; deleted after it, failed or not."""
    nft(lab, host, f"table inet {name} {{\n chain c {{\n  type filter hook {hook};\n"
                   f"  {rule}\n }}\n}}\n")
    try:
        yield
    finally:
        nft(lab, host, f"delete table inet {name}\n")


def serve(lab: Lab, *args: str, host: str = "server") -> ServeProcess:
    """``pytcpecho serve --udp`` on port 8000 of ``host``, listening."""
    server = lab.start(host, pytcpecho("serve", "--udp", "--port", str(PORT), "-q", *args))
    server.wait_for(r"Server at .*TCP and UDP")
    return server


def stop(server: ServeProcess) -> tuple[dict[str, int], str]:
    """SIGTERM: the exit status is 0; the UDP counters of the summary line, and the log."""
    assert server.stop() == 0, server.output()
    log = server.output()
    m = SUMMARY.search(log)
    assert m, log
    return {k: int(v) for k, v in m.groupdict().items()}, log


def ping(lab: Lab, *args: str, host: str = "client", target: str = TARGET,
         status: int | tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    """``ping --udp --json ARGS`` on ``host``: its document (the exit status checked)."""
    result = lab.run(host, pytcpecho("ping", "--udp", "--json", *args, target), timeout=60)
    expected = (status,) if isinstance(status, int) else status
    assert result.returncode in expected, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    doc["status"] = result.returncode
    assert doc["received"] + doc["lost"] == doc["transmitted"], doc
    return doc


def rcvbuf_errors(lab: Lab, host: str) -> int:
    """Datagrams the kernel dropped in ``host``'s namespace for a full receive buffer
    (RcvbufErrors of /proc/net/snmp): ones the server never saw, so never counted."""
    snmp = run("ip", "netns", "exec", lab.ns[host], "cat", "/proc/net/snmp")
    names, values = (line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:"))
    return int(dict(zip(names, values, strict=True))["RcvbufErrors"])


def figures(what: str, d: dict[str, Any]) -> None:
    rtt = d["rtt_ms"]
    print(f"\n  {what}: transmitted {d['transmitted']}, received {d['received']}, "
          f"loss {d['loss'] * 100:.2f}%, corrupted {d['corrupted']}, duplicates "
          f"{d['duplicates']}, reordered {d['reordered']}, p50 {rtt['p50']} ms, "
          f"p99 {rtt['p99']} ms, ttl {d['ttl']}, hops {d['hops']}, exit {d['status']}")


_markers = iter(range(1 << 30))


def marker_round(marker: socket.socket, timeout: float = 5) -> None:
    """A marker from ``marker`` and its echo: everything sent before it has been dealt
    with by the server (one socket, one loop, in order)."""
    payload = f"marker {next(_markers)}".encode()
    marker.sendto(payload, SERVER)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the marker's echo did not come back"
        marker.settimeout(left)
        if marker.recv(65536) == payload:
            return


def drain(sock: socket.socket, grace: float = 0.1) -> list[bytes]:
    """What is waiting on ``sock`` (an echo still on its way gets ``grace`` s more)."""
    got = []
    while select.select([sock], [], [], grace)[0]:
        got.append(sock.recv(65536))
    return got


def send_then_marker(probe: socket.socket, payload: bytes, marker: socket.socket,
                     count: int = 1) -> list[bytes]:
    """``count`` datagrams from ``probe``, then a marker round: the echoes ``probe`` got."""
    for _ in range(count):
        probe.sendto(payload, SERVER)
    marker_round(marker)
    return drain(probe)


# -- 1. loss -----------------------------------------------------------------------------

def test_random_loss_of_the_echoes_is_measured(lab: Lab) -> None:
    require_nft()
    server = serve(lab, "--udp-rate", "0")
    try:
        clean = ping(lab, "-c", "2000", "-i", "0.001", "--timeout", "1", status=0)
        figures("no rule", clean)
        assert clean["loss"] == 0 and clean["intact"], clean
        assert clean["ttl"] == 64 and clean["hops"] == 1, clean

        with nft_table(lab, "client", "udploss", "input priority 0",
                       f"udp sport {PORT} numgen random mod 100 < 10 drop"):
            lossy = ping(lab, "-c", "5000", "-i", "0.001", "--timeout", "0.5", status=1)
        figures("10% of the echoes dropped", lossy)
        assert lossy["transmitted"] == 5000
        assert abs(lossy["loss"] - 0.10) <= 0.02, lossy
        assert lossy["corrupted"] == lossy["duplicates"] == 0 and not lossy["intact"], lossy
    finally:
        counts, _ = stop(server)
    # The server echoed every datagram it got: the loss was all on the way back.
    assert counts["datagrams_in"] == counts["echoed"] == 7000, counts


# -- 2. corruption -----------------------------------------------------------------------

@pytest.mark.parametrize(("where", "byte"), [("payload", 40), ("header", 0)])
def test_corrupted_echoes_are_counted_never_received(lab: Lab, where: str, byte: int) -> None:
    """20% of the echoes get 4 bytes rewritten at payload byte ``byte`` (the UDP header is
    8 bytes, so bit offset (8 + byte) * 8): past the client's 24-byte header, or in it."""
    require_nft()
    offset = (8 + byte) * 8
    server = serve(lab, "--udp-rate", "0")
    try:
        with nft_table(lab, "client", "udpcorrupt", "prerouting priority -300",
                       f"udp sport {PORT} numgen random mod 100 < 20 "
                       f"@th,{offset},32 set 0x41424344"):
            d = ping(lab, "-c", "1000", "-i", "0.001", "--timeout", "0.5", status=1)
        figures(f"20% corrupted in the {where} (byte {byte})", d)
    finally:
        stop(server)
    assert d["transmitted"] == 1000
    assert abs(d["corrupted"] / d["transmitted"] - 0.20) <= 0.05, d
    assert d["received"] + d["corrupted"] == d["transmitted"], d  # none lost, none both
    assert d["lost"] == d["corrupted"] and not d["intact"], d
    assert d["duplicates"] == 0, d


# -- 3. hops -----------------------------------------------------------------------------

def test_a_router_on_the_way_is_one_more_hop(lab: Lab) -> None:
    server = serve(lab)
    try:
        direct = ping(lab, "-c", "3", "-i", "0.01", "--timeout", "1", status=0)
    finally:
        stop(server)
    figures("direct (bridge)", direct)
    with routed_lab() as routed:
        routed_server = routed.start("server", pytcpecho("serve", "--udp", "--port", str(PORT),
                                                         "-q"))
        routed_server.wait_for(r"Server at .*TCP and UDP")
        try:
            result = routed.run("client", pytcpecho("ping", "--udp", "--json", "-c", "3", "-i",
                                                    "0.01", "--timeout", "1",
                                                    f"{routed.addresses['server']}:{PORT}"))
            assert result.returncode == 0, (result.stdout, result.stderr)
            via = {**json.loads(result.stdout), "status": result.returncode}
        finally:
            stop(routed_server)
    figures("through a router", via)
    assert (direct["hops"], direct["ttl"]) == (1, 64), direct
    assert via["hops"] == direct["hops"] + 1 and via["ttl"] == direct["ttl"] - 1, via
    assert via["intact"], via


# -- 4. the reflection guards ------------------------------------------------------------

BURST = 2000


def test_reflection_guards_end_to_end(lab: Lab) -> None:
    server = serve(lab, "--deny", OUTSIDER_NET, "--udp-rate", "100", "--udp-max-size", "1500")
    loop_ports = (7, 19, PORT)
    assert {7, 19} <= set(UDP_LOOP_PORTS)
    try:
        with sockets(lab, "client", (0, 0, *loop_ports)) as (marker, probe, *loopers), \
                sockets(lab, "outsider") as (outsider,), sockets(lab, "peer") as (burster,):
            # An empty datagram is echoed, empty.
            assert send_then_marker(probe, b"", marker) == [b""]
            # From a denied network: not echoed.
            assert send_then_marker(outsider, b"denied?", marker) == []
            # From a loop-prone source port (and the server's own): not echoed.
            for looper in loopers:
                assert send_then_marker(looper, b"loop?", marker) == []
            # Larger than --udp-max-size: not echoed (it is fragmented on the way).
            assert send_then_marker(probe, b"T" * 2000, marker) == []
            assert send_then_marker(probe, b"T" * 1500, marker) == [b"T" * 1500]
            # A burst over --udp-rate from one source: the bucket's worth echoed.
            overflowed = rcvbuf_errors(lab, "server")
            burst_echoed = len(send_then_marker(burster, b"B" * 64, marker, count=BURST))
            overflowed = rcvbuf_errors(lab, "server") - overflowed  # the server never saw
            last = {"denied": ("outsider", outsider), "loop_port": ("client", loopers[-1]),
                    "truncated": ("client", probe), "rate_limited": ("peer", burster)}
            sources = {reason: f"{lab.addresses[host]}:{sock.getsockname()[1]}"
                       for reason, (host, sock) in last.items()}
        print(f"\n  burst of {BURST} at --udp-rate 100: {burst_echoed} echoed, "
              f"{overflowed} dropped by the kernel (receive buffer full)")
        assert UDP_MIN_BURST <= burst_echoed <= 4 * UDP_MIN_BURST, burst_echoed

        # The drop lines, at most one per reason every 5 s: wait until they add up.
        expected = {"denied": 1, "loop_port": len(loop_ports), "truncated": 1,
                    "rate_limited": BURST - overflowed - burst_echoed}
        logged = dict.fromkeys(REASONS, 0)
        last_from: dict[str, str] = {}
        while logged != expected:
            m = server.wait_for(DROPPED.pattern, timeout=12)
            reason = next(r for r, words in REASONS.items() if m.group(2).startswith(words))
            logged[reason] += int(m.group(1))
            last_from[reason] = m.group(3)
            assert logged[reason] <= expected[reason], (logged, expected, server.lines)
        print(f"  drop lines: {logged}, the last from {last_from}")
    finally:
        counts, log = stop(server)
    print(f"  summary: {counts}")
    assert last_from == sources, (last_from, sources)  # IPv4, though the socket is dual-stack
    assert {k: counts[k] for k in expected} == expected, (counts, log)
    markers = 1 + 1 + len(loop_ports) + 1 + 1 + 1
    assert counts["echoed"] == markers + 1 + 1 + burst_echoed, counts  # + empty, + 1500
    assert counts["datagrams_in"] == counts["echoed"] + counts["dropped"] + counts["failed"]
    assert counts["failed"] == 0, counts


# -- 5. a flood from many source ports ---------------------------------------------------

FLOOD_PORTS = 1000
FLOOD_EACH = 20


def test_a_flood_from_many_ports_leaves_the_server_serving(lab: Lab) -> None:
    raise_fd_limit(4 * FLOOD_PORTS)
    server = serve(lab)
    try:
        with sockets(lab, "client", (0,) * FLOOD_PORTS) as flooders:
            payload = b"F" * 64
            started = time.monotonic()
            sent = 0
            for _ in range(FLOOD_EACH):
                for sock in flooders:
                    sock.sendto(payload, SERVER)
                    sent += 1
            took = time.monotonic() - started
            after = ping(lab, "-c", "20", "-i", "0.005", "--timeout", "1", status=0)
        figures("ping after the flood", after)
        assert after["intact"], after
    finally:
        counts, _ = stop(server)
    print(f"  flood: {sent} datagrams from {FLOOD_PORTS} ports in {took:.2f} s; "
          f"server: {counts}")
    assert counts["datagrams_in"] == counts["echoed"] + counts["dropped"] + counts["failed"], \
        counts
    assert counts["datagrams_in"] <= sent + after["transmitted"], counts
    assert counts["echoed"] >= after["received"], counts
    assert counts["dropped"] == counts["rate_limited"] > 0, counts  # one source, over 10000/s


# -- 6. a server that never answers ------------------------------------------------------

def _ping_unanswered(lab: Lab, port: int) -> float:
    """``ping --udp -c 3 --timeout 1`` at ``port``: exit 3, one line, after about the
    timeout (timed from its 'PING' line, which it prints as it starts sending, so that
    the time Python takes to start under load does not count)."""
    proc = lab.popen("client", pytcpecho("ping", "--udp", "-c", "3", "-i", "0.01",
                                         "--timeout", "1", f"{SERVER_IP}:{port}"))
    assert proc.stdout is not None
    first = proc.stdout.readline()
    started = time.monotonic()
    assert first.startswith(f"PING {SERVER_IP}:{port} (UDP echo)"), first
    proc.wait(30)
    took = time.monotonic() - started
    out, err = proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)
    line = assert_one_line_error(result, 3)
    assert "no echo from" in line and "3 of 3" in line and "unreachable" not in line, line
    assert out == "", out  # no echo lines, no statistics
    assert 1.0 <= took < 2.0, took
    print(f"\n  port {port}: exit 3 {took:.2f} s after it started sending: {line}")
    return took


def test_a_port_that_never_answers(lab: Lab) -> None:
    require_nft()
    with sockets(lab, "server", (9000,)):  # bound, never read
        _ping_unanswered(lab, 9000)
    with nft_table(lab, "server", "udpsilent", "input priority 0", "udp dport 9001 drop"):
        _ping_unanswered(lab, 9001)  # nothing bound, and no ICMP either
