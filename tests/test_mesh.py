"""The mesh: its three checks, the state they add up to, the engine, and ``pytcpecho mesh``.

``pytcpecho mesh`` is watched by Prometheus and by people, so each layer is tested
against real faults, not against hand-built values: the checks (ping, verified bulk,
the UDP probe) against real servers and the misbehaving fakes of fakes.py (UdpFake
drops, corrupts or ignores datagrams on a real socket), on both cores, each
ending in the one word the README promises; ``diagnose`` on the outcomes those
checks really produce; the engine (resolving, scheduling, stopping) on loopback
peers; and the process itself over HTTP (/metrics parsed as Prometheus parses it,
/status, /healthz, the page), its bad input (one line, exit status 2), and peers
that misbehave, which must never take the node down.  ``serve --metrics-port`` and
the server's closed-connection counters are here too: the mesh exports them.
Nothing waits by sleeping: a test waits for a log line, a port, or polls an HTTP
endpoint (or the engine's snapshot) until a condition holds, within a deadline.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from fakes import (
    UdpFake,
    closed_port,
    echo_held_back,
    echo_then_close,
    fake_server,
    flipping_echo,
    half_echo,
    resetting,
    scripted_reply,
    silent,
)
from prometheus_client.parser import text_string_to_metric_families
from support import (
    LOCALHOST,
    ServeProcess,
    assert_one_line_error,
    cli,
    connect,
    recv_exactly,
    running_server,
    unused_port,
)

from pytcpecho import checks, node
from pytcpecho import core as cores
from pytcpecho._version import __version__
from pytcpecho.checks import PROBE_SIZE
from pytcpecho.mesh import RTT_BUCKETS, Mesh, MeshOptions, diagnose

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
FLIP = PROBE_SIZE + 100_000
"""A byte of the connection inside the bulk stream, well past the 64-byte probe."""
UNROUTABLE = "255.255.255.255"
"""Linux refuses a TCP connect to a broadcast (or multicast) address with ENETUNREACH
before any packet leaves: 'unreachable' without namespaces, and without the network."""
CLOSED_REASONS = ("eof", "idle_timeout", "max_bytes", "refused", "shutdown", "error")

T = TypeVar("T")


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


def key(port: int) -> str:
    return f"{LOCALHOST}:{port}"


def poll(read: Callable[[], T], until: Callable[[T], bool], timeout: float = 10,
         what: str = "the condition") -> T:
    """read() again until ``until(value)`` holds; fail after ``timeout`` with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold in {timeout} s; last: {value!r}")
        time.sleep(0.05)  # the polling period, not a wait for anything in particular


# -- HTTP and Prometheus helpers --------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


@dataclass
class Answer:
    status: int
    content_type: str
    body: str


def get(url: str, timeout: float = 5) -> Answer:
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return Answer(r.status, r.headers.get("Content-Type", ""), r.read().decode())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers.get("Content-Type", ""), e.read().decode())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    """Every sample of /metrics, parsed as Prometheus does: (name, labels) -> value."""
    answer = get(base + "/metrics")
    assert answer.status == 200, answer
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample, which must be there."""
    found = sample(samples, name, **labels)
    assert found is not None, (name, labels, sorted(samples))
    return found


def wait_line(proc: ServeProcess, pattern: str, timeout: float = 15) -> str:
    """A line matching ``pattern``, printed already or to come."""
    regex = re.compile(pattern)
    for line in proc.lines_so_far():
        if regex.search(line):
            return line
    return proc.wait_for(pattern, timeout).string


def status(base: str) -> dict[str, Any]:
    answer = get(base + "/status")
    assert answer.status == 200 and answer.content_type == "application/json", answer
    data: dict[str, Any] = json.loads(answer.body)
    return data


def states(data: dict[str, Any]) -> dict[str, str]:
    return {k: p["state"] for k, p in data["peers"].items()}


# -- processes --------------------------------------------------------------------

@dataclass
class Node:
    proc: ServeProcess
    base: str
    """http://HOST:PORT of its /metrics, /status and pages."""
    echo_port: int


@contextlib.contextmanager
def mesh_node(*args: str, env: dict[str, str] | None = None) -> Iterator[Node]:
    """``pytcpecho mesh`` on loopback, any free ports, checking fast; stopped by SIGTERM at
    the end, which it must survive to exit 0 without a traceback."""
    cmd = [sys.executable, "-m", "pytcpecho", "mesh", "--host", LOCALHOST, "--port", "0",
           "--metrics-port", "0", "--peer-label", "none", "--grace", "1", *args]
    with ServeProcess(cmd=cmd, env=env) as proc:
        web = proc.wait_for(r"status at http://(\S+)/$").group(1)
        node = Node(proc, f"http://{web}", proc.wait_listening())
        yield node
        assert proc.stop() == 0, proc.output()
        assert "Traceback" not in proc.output()


def fast_mesh(*peers: tuple[str, int], port: int = 0, timeout: float = 1,
              **more: Any) -> Mesh:
    options = MeshOptions(peers=tuple(peers), port=port, name="t", interval=0.2,
                          bulk_every=1, timeout=timeout, resolve_interval=0.2,
                          peer_label="none", **more)
    return Mesh(options, cores.load("auto"))


@contextlib.contextmanager
def running_mesh(engine: Mesh) -> Iterator[Mesh]:
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


# == 1. the checks, on both cores =================================================

def test_intact_ping_and_bulk(core: str) -> None:
    """An echo server: the ping comes back with a round trip, the bulk with every byte."""
    loaded = cores.load(core)
    with running_server(core=core) as server:
        address = (LOCALHOST, server.address[1])
        ping = checks.ping(loaded, address, 2)
        bulk = checks.bulk(loaded, address, MIB, 5)
    assert (ping.check, ping.result, ping.offset) == ("ping", "intact", None)
    assert ping.seconds > 0 and ping.received == PROBE_SIZE
    assert ping.as_dict()["rtt_ms"] > 0 and one_line(ping.detail)
    assert (bulk.check, bulk.result, bulk.offset) == ("bulk", "intact", None)
    assert bulk.received == MIB and bulk.bytes_per_second > 0
    assert bulk.detail == "1 MiB back intact"


def test_refused(core: str) -> None:
    """A port where nothing listens: refused, at once, by both checks."""
    sock, port = closed_port()
    with sock:
        outcomes = [checks.ping(cores.load(core), (LOCALHOST, port), 2),
                    checks.bulk(cores.load(core), (LOCALHOST, port), MIB, 2)]
    for outcome in outcomes:
        assert (outcome.result, outcome.offset, outcome.received) == ("refused", None, 0)
        assert outcome.detail == "connection refused"


def test_unreachable(core: str) -> None:
    """No route to the address (ENETUNREACH, refused by the kernel before a packet
    leaves): unreachable, not refused nor timeout."""
    started = time.monotonic()
    for outcome in (checks.ping(cores.load(core), (UNROUTABLE, 7), 2),
                    checks.bulk(cores.load(core), (UNROUTABLE, 7), MIB, 2)):
        assert (outcome.result, outcome.offset) == ("unreachable", None), outcome
        assert outcome.detail == "cannot connect: Network is unreachable"
    assert time.monotonic() - started < 1


def test_mismatch_inside_the_probe(core: str) -> None:
    """A byte flipped in the first 64 bytes: the ping and the bulk check's own probe both
    say mismatch, at that byte."""
    loaded = cores.load(core)
    with fake_server(flipping_echo(10)) as port:
        outcomes = [checks.ping(loaded, (LOCALHOST, port), 2),
                    checks.bulk(loaded, (LOCALHOST, port), MIB, 2)]
    for outcome in outcomes:
        assert (outcome.result, outcome.offset) == ("mismatch", 10), outcome
        assert outcome.detail == "echo differs from what was sent at byte 10"


def test_mismatch_inside_the_bulk_stream(core: str) -> None:
    """A byte flipped deep in the bulk stream: a mismatch whose line names its offset."""
    with fake_server(flipping_echo(FLIP)) as port:
        outcome = checks.bulk(cores.load(core), (LOCALHOST, port), MIB, 5)
    assert outcome.result == "mismatch" and outcome.offset is not None, outcome
    assert outcome.offset >= FLIP - PROBE_SIZE
    assert outcome.detail == f"echo differs from what was sent at byte {outcome.offset}"


def test_mismatch_offset_counts_from_the_connections_first_byte(core: str) -> None:
    """The offset is where the flipped byte is on the connection (as in a packet capture,
    and as 'stalled: N of M bytes' counts), so two different bytes never share it."""
    loaded = cores.load(core)
    with fake_server(flipping_echo(FLIP)) as port:
        deep = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    with fake_server(flipping_echo(PROBE_SIZE + 10)) as port:
        early = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    assert (deep.offset, early.offset) == (FLIP, PROBE_SIZE + 10)
    assert deep.detail == f"echo differs from what was sent at byte {FLIP}"


def test_short_when_the_peer_closes_early(core: str) -> None:
    """Half the ping back then EOF, or EOF in the middle of the bulk stream: short, with
    how many bytes came back of how many."""
    loaded = cores.load(core)
    with fake_server(half_echo) as port:
        ping = checks.ping(loaded, (LOCALHOST, port), 2)
    with fake_server(echo_then_close(FLIP)) as port:
        bulk = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    assert (ping.result, ping.offset) == ("short", None), ping
    assert ping.detail == "the peer closed the connection after 32 of 64 bytes"
    assert (bulk.result, bulk.offset) == ("short", None), bulk
    assert bulk.detail == (f"the peer closed the connection after {FLIP} of "
                           f"{PROBE_SIZE + MIB} bytes")


def test_short_when_the_peer_resets(core: str) -> None:
    """A reset once the probe arrived, or in the middle of the bulk stream: short, saying so."""
    loaded = cores.load(core)
    with fake_server(resetting(PROBE_SIZE)) as port:
        at_once = [checks.ping(loaded, (LOCALHOST, port), 2),
                   checks.bulk(loaded, (LOCALHOST, port), MIB, 2)]
    with fake_server(echo_then_close(FLIP, reset=True)) as port:
        midway = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    for outcome in at_once:
        assert (outcome.result, outcome.offset) == ("short", None), outcome
        assert outcome.detail == "connection failed after 0 bytes: Connection reset by peer"
    assert (midway.result, midway.offset) == ("short", None), midway
    words = midway.detail.split()
    assert one_line(midway.detail) and midway.detail.endswith("Connection reset by peer")
    # What came back before the reset: at least the probe, at most what was echoed (a
    # reset drops what the kernel had not handed over yet).
    assert PROBE_SIZE <= int(words[words.index("after") + 1]) <= FLIP


RESET_AT_ONCE = """
import socket, struct
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
"""
"""A server, in a process of its own, that resets each connection as it accepts it."""


def test_reset_on_accept_is_short_never_unreachable(core: str) -> None:
    """A peer that accepts and resets at once (a server refusing the checker's address, a
    proxy with no backend) is reachable: 'short', wherever the reset lands. A thread kept
    busy here, as the mesh's other threads may be, makes it land inside connect()."""
    loaded = cores.load(core)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=busy, daemon=True)
    with ServeProcess(cmd=[sys.executable, "-c", RESET_AT_ONCE]) as server:
        port = int(server.wait_for(r"^(\d+)$").group(1))
        spinner.start()
        try:
            for _ in range(50):
                outcome = checks.ping(loaded, (LOCALHOST, port), 2)
                assert outcome.result == "short", outcome
                assert outcome.detail.endswith("Connection reset by peer")
        finally:
            stop.set()
            spinner.join()


def test_received_counts_what_came_back_intact(core: str) -> None:
    """Outcome.received, 'bytes that came back intact', agrees with the outcome's line."""
    loaded = cores.load(core)
    with fake_server(half_echo) as port:
        ping = checks.ping(loaded, (LOCALHOST, port), 2)
    with fake_server(echo_then_close(FLIP)) as port:
        bulk = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    assert (ping.received, bulk.received) == (32, FLIP)


def test_stalled_after_part_of_the_bulk(core: str) -> None:
    """The probe and 100,000 bytes of the stream come back, then nothing: stalled after
    exactly those bytes, within the check's timeout."""
    release = threading.Event()
    with fake_server(echo_held_back(FLIP, release)) as port:
        try:
            started = time.monotonic()
            outcome = checks.bulk(cores.load(core), (LOCALHOST, port), MIB, 0.5)
            took = time.monotonic() - started
        finally:
            release.set()
    assert (outcome.result, outcome.offset, outcome.received) == ("stalled", None, FLIP)
    assert outcome.detail == f"stalled: {FLIP} of {PROBE_SIZE + MIB} bytes came back in 0.5 s"
    assert 0.45 <= took < 2


def test_timeout_when_nothing_comes_back(core: str) -> None:
    """A server that takes everything and answers nothing: timeout, for both checks, each
    within its own timeout."""
    release = threading.Event()
    loaded = cores.load(core)
    with fake_server(silent(release)) as port:
        try:
            for check in (lambda: checks.ping(loaded, (LOCALHOST, port), 0.5),
                          lambda: checks.bulk(loaded, (LOCALHOST, port), MIB, 0.5)):
                started = time.monotonic()
                outcome = check()
                assert time.monotonic() - started < 2
                assert (outcome.result, outcome.offset, outcome.received) == \
                    ("timeout", None, 0), outcome
                assert outcome.detail == "nothing came back in 0.5 s"
        finally:
            release.set()


# -- the UDP probe --

UDP_COUNT = 20


def test_udp_probe_intact(core: str) -> None:
    """A UDP echo server: every datagram back intact, each round trip counted into the
    histogram's buckets, the jitter measured, and one hop away (loopback: TTL 64); no
    waiting once the echoes are in."""
    with running_server(udp=True) as server:
        started = time.monotonic()
        outcome = checks.udp(cores.load(core), (LOCALHOST, server.address[1]), UDP_COUNT, 5)
        took = time.monotonic() - started
    assert (outcome.check, outcome.result, outcome.offset) == ("udp", "intact", None), outcome
    assert outcome.detail == "20 of 20 datagrams back intact"
    assert outcome.received == UDP_COUNT * PROBE_SIZE
    probe = outcome.probe
    assert probe is not None
    r = probe.result
    assert (r.transmitted, r.received, r.corrupted, r.duplicates) == (UDP_COUNT, UDP_COUNT, 0, 0)
    assert (r.ttl, r.hops, probe.loss) == (64, 1, 0.0)
    assert len(probe.rtt_counts) == len(RTT_BUCKETS) + 1 and sum(probe.rtt_counts) == UDP_COUNT
    assert 0 < probe.rtt_sum < UDP_COUNT * took  # round trips overlap: each within took
    assert 0 < r.latency.p50 <= r.latency.p99 and r.jitter_ms >= 0
    assert checks.UDP_SPREAD * 0.9 < took < 2  # sent over 0.2 s; no waiting for the 5 s
    data = outcome.as_dict()
    assert (data["loss"], data["hops"], data["sent"], data["received"]) == (0, 1, 20, 20)
    assert data["rtt_p50_ms"] > 0 and data["jitter_ms"] is not None


def test_udp_probe_refused_where_no_udp_echo_runs(core: str) -> None:
    """A server without UDP (its UDP port closed): refused at once (ICMP port unreachable),
    with no loss, for nothing was lost."""
    with running_server() as server:
        started = time.monotonic()
        outcome = checks.udp(cores.load(core), (LOCALHOST, server.address[1]), UDP_COUNT, 5)
        took = time.monotonic() - started
    assert (outcome.result, outcome.received) == ("refused", 0), outcome
    assert outcome.detail == "no UDP echo there: port unreachable (ICMP)"
    assert outcome.probe is not None and outcome.probe.loss is None
    assert outcome.probe.result.refused >= 1 and outcome.probe.result.hops is None
    assert took < 2  # the first refusal ends the 5 s wait: nothing more will come


@pytest.mark.parametrize(("fake", "result", "detail", "loss"), [
    ({"drop": {3, 7}}, "lossy", "2 of 20 datagrams not back intact (10% loss)", 0.1),
    ({"corrupt": {5}}, "lossy", "1 of 20 datagrams not back intact (5% loss, 1 corrupted)",
     0.05),
    ({"silent": True}, "lost", "none of 20 datagrams came back in 0.5 s", 1.0),
], ids=["dropped", "corrupted", "silent"])
def test_udp_probe_lossy_or_lost(core: str, fake: dict[str, Any], result: str, detail: str,
                                 loss: float) -> None:
    """Datagrams dropped or corrupted by the peer: lossy, with how many of how many; none
    answered: lost.  What is missing is waited for until the timeout, no longer."""
    with UdpFake(**fake) as peer:
        started = time.monotonic()
        outcome = checks.udp(cores.load(core), peer.address, UDP_COUNT, 0.5)
        took = time.monotonic() - started
        assert sorted(set(peer.seen)) == list(range(UDP_COUNT))
    assert (outcome.result, outcome.detail) == (result, detail), outcome
    assert outcome.probe is not None and outcome.probe.loss == loss
    assert outcome.probe.result.received == round((1 - loss) * UDP_COUNT)
    assert outcome.received == outcome.probe.result.received * PROBE_SIZE
    if "corrupt" in fake:
        assert outcome.probe.result.corrupted == 1 and took < 0.5  # every datagram answered
    else:
        assert 0.5 <= took < 2.5


def test_udp_probe_waits_for_missing_echoes_only_so_long(core: str) -> None:
    """Some echoes back, two missing: the probe waits UDP_GRACE after its last datagram
    (round trips on loopback are far shorter), not its 5 s timeout; none back at all: the
    whole timeout, for nothing says how slow the path is."""
    with UdpFake(drop={3, 7}) as peer:
        started = time.monotonic()
        outcome = checks.udp(cores.load(core), peer.address, UDP_COUNT, 5)
        took = time.monotonic() - started
    assert outcome.result == "lossy", outcome
    assert checks.UDP_SPREAD + checks.UDP_GRACE - 0.1 < took < 3
    with UdpFake(silent=True) as peer:
        started = time.monotonic()
        outcome = checks.udp(cores.load(core), peer.address, 2, 1.5)
        took = time.monotonic() - started
    assert (outcome.result, outcome.detail) == ("lost", "none of 2 datagrams came back in 1.5 s")
    assert 1.5 <= took < 4


def test_udp_probe_unreachable(core: str) -> None:
    """An address the kernel will not send to: unreachable at once, with why."""
    started = time.monotonic()
    outcome = checks.udp(cores.load(core), (UNROUTABLE, 7), UDP_COUNT, 2)
    assert (outcome.result, outcome.probe) == ("unreachable", None), outcome
    assert one_line(outcome.detail) and outcome.detail.startswith(f"cannot reach {UNROUTABLE}:7")
    assert time.monotonic() - started < 2


# == 2. diagnose, on real outcomes =================================================

def test_diagnose_mtu_when_pings_pass_and_bulk_stalls() -> None:
    """Pings intact, and the bulk check stalls once its 64-byte round trip is back:
    nothing large comes through, a suspected path-MTU blackhole."""
    loaded = cores.load("auto")
    release = threading.Event()
    with fake_server(echo_held_back(PROBE_SIZE, release)) as port:
        try:
            bulk = checks.bulk(loaded, (LOCALHOST, port), MIB, 0.5)
            ping = checks.ping(loaded, (LOCALHOST, port), 2)
        finally:
            release.set()
    assert (ping.result, bulk.result, bulk.received) == ("intact", "stalled", PROBE_SIZE)
    state, problem = diagnose(ping, bulk)
    assert state == "mtu"
    assert problem is not None and one_line(problem)
    assert "path-MTU blackhole" in problem and bulk.detail in problem


def test_diagnose_corrupt_names_the_offset() -> None:
    """An echo that differs is corruption, whichever check saw it, with its offset."""
    loaded = cores.load("auto")
    with fake_server(flipping_echo(10)) as port:
        bad_ping = checks.ping(loaded, (LOCALHOST, port), 2)
    with fake_server(flipping_echo(FLIP)) as port:
        good_ping = checks.ping(loaded, (LOCALHOST, port), 2)
        bad_bulk = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    assert (bad_ping.result, good_ping.result, bad_bulk.result) == \
        ("mismatch", "intact", "mismatch")
    for ping, bulk, offset in ((bad_ping, None, bad_ping.offset),
                               (good_ping, bad_bulk, bad_bulk.offset)):
        state, problem = diagnose(ping, bulk)
        assert state == "corrupt" and problem is not None and one_line(problem)
        assert problem.startswith(("ping check: ", "bulk check: "))
        assert f"at byte {offset}" in problem


def test_diagnose_down_degraded_intact_unknown() -> None:
    """A refused ping is down; a bulk that ends short with pings intact is degraded; all
    intact is intact, with no problem; nothing checked yet is unknown."""
    loaded = cores.load("auto")
    sock, closed = closed_port()
    with sock:
        refused = checks.ping(loaded, (LOCALHOST, closed), 2)
    with fake_server(echo_then_close(FLIP)) as port:
        ping = checks.ping(loaded, (LOCALHOST, port), 2)
        short = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    with running_server() as server:
        good = checks.ping(loaded, (LOCALHOST, server.address[1]), 2)
        whole = checks.bulk(loaded, (LOCALHOST, server.address[1]), MIB, 5)
    state, problem = diagnose(refused, None)
    assert state == "down" and problem is not None and one_line(problem)
    assert problem.endswith("ping refused: connection refused")
    state, problem = diagnose(ping, short)
    assert state == "degraded" and problem == f"bulk check short: {short.detail}"
    assert diagnose(good, whole) == ("intact", None)
    assert diagnose(None, None) == ("unknown", None)


def test_diagnose_lossy_ranks_below_every_tcp_fault() -> None:
    """UDP datagrams lost while TCP is intact: lossy, saying how many; but a peer down,
    corrupt, mtu or degraded is that first.  A refused probe (no UDP echo there) is no
    fault, and a probe from before the pings' present result is not read."""
    loaded = cores.load("auto")
    with UdpFake(drop={0}) as fake, running_server(port=fake.port):
        ping = checks.ping(loaded, (LOCALHOST, fake.port), 2)
        lossy = checks.udp(loaded, (LOCALHOST, fake.port), UDP_COUNT, 0.5)
        lost = checks.udp(loaded, (LOCALHOST, fake.port), 1, 0.5)
    with running_server() as server:
        refused = checks.udp(loaded, (LOCALHOST, server.address[1]), UDP_COUNT, 2)
    sock, closed = closed_port()
    with sock:
        down = checks.ping(loaded, (LOCALHOST, closed), 2)
    with fake_server(flipping_echo(10)) as port:
        bad_ping = checks.ping(loaded, (LOCALHOST, port), 2)
    with fake_server(echo_then_close(FLIP)) as port:
        short = checks.bulk(loaded, (LOCALHOST, port), MIB, 5)
    release = threading.Event()
    with fake_server(echo_held_back(PROBE_SIZE, release)) as port:
        try:
            stalled = checks.bulk(loaded, (LOCALHOST, port), MIB, 0.5)
        finally:
            release.set()
    assert (ping.result, lossy.result, lost.result, refused.result) == \
        ("intact", "lossy", "lost", "refused")
    assert diagnose(ping, None, 0.0, lossy) == (
        "lossy", "UDP probe lossy: 1 of 20 datagrams not back intact (5% loss)")
    assert diagnose(ping, None, 0.0, lost) == (
        "lossy", "UDP probe lost: none of 1 datagram came back in 0.5 s")
    assert diagnose(ping, None, 0.0, refused) == ("intact", None)
    assert diagnose(ping, None, lossy.at + 1, lossy) == ("intact", None)
    assert [diagnose(p, b, 0.0, lossy)[0] for p, b in (
        (down, None), (bad_ping, None), (ping, stalled), (ping, short))] == \
        ["down", "corrupt", "mtu", "degraded"]


# == 3. the engine on loopback ======================================================

def test_engine_finds_every_peer_intact() -> None:
    """Three echo servers: each becomes a peer, pinged and bulk-checked, intact."""
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(running_server()).address[1] for _ in range(3)]
        engine = stack.enter_context(running_mesh(fast_mesh(
            *[(LOCALHOST, p) for p in ports], port=unused_port())))
        peers = poll(engine.snapshot, lambda ps: len(ps) == 3 and all(
            p.state == "intact" and p.checks["bulk"].last is not None for p in ps),
            what="every peer intact")
    assert [p.key for p in peers] == sorted(key(p) for p in ports)
    for peer in peers:
        assert peer.problem is None and sum(peer.rtt_counts) >= 1
        assert peer.checks["bulk"].counts == {"intact": peer.checks["bulk"].counts["intact"]}
    assert set(engine.status()["peers"]) == {key(p) for p in ports}


def test_engine_peer_goes_down_when_its_server_closes() -> None:
    """A peer whose server closes goes from intact to down (refused); the others stay."""
    with contextlib.ExitStack() as stack:
        stays = stack.enter_context(running_server()).address[1]
        leaving = EchoServerInThread()
        stack.callback(leaving.close)
        engine = stack.enter_context(running_mesh(fast_mesh(
            (LOCALHOST, stays), (LOCALHOST, leaving.port), port=unused_port())))
        poll(lambda: {p.key: p.state for p in engine.snapshot()},
             lambda s: s == {key(stays): "intact", key(leaving.port): "intact"},
             what="both intact")
        leaving.close()
        peers = poll(lambda: {p.key: p for p in engine.snapshot()},
                     lambda ps: ps[key(leaving.port)].state == "down", what="down")
    gone = peers[key(leaving.port)]
    assert gone.problem is not None
    assert gone.problem.endswith("ping refused: connection refused")
    assert peers[key(stays)].state == "intact"


def test_engine_logs_a_peer_going_down_in_one_plain_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """The line for a peer that goes down says 'down' once, then why."""
    sock, port = closed_port()
    with sock, caplog.at_level("INFO", logger="pytcpecho.mesh"), \
            running_mesh(fast_mesh((LOCALHOST, port), port=unused_port())) as engine:
        poll(engine.snapshot, lambda ps: len(ps) == 1 and ps[0].state == "down",
             what="the peer down")
    lines = [r.getMessage() for r in caplog.records if "-> down" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"Peer {key(port)}: unknown -> down")
    assert lines[0].count("down") == 1 and "ping refused: connection refused" in lines[0]


def test_a_peer_that_comes_up_is_intact_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A peer refused at first (its server not started yet), then up: down, then intact,
    never 'degraded' for the bulk check it failed while it was down."""
    sock, port = closed_port()
    with caplog.at_level("INFO", logger="pytcpecho.mesh"), \
            running_mesh(fast_mesh((LOCALHOST, port), port=unused_port())) as engine:
        poll(engine.snapshot, lambda ps: len(ps) == 1 and ps[0].state == "down",
             what="the peer down")
        assert engine.snapshot()[0].checks["bulk"].last.result == "refused"  # type: ignore[union-attr]
        sock.close()
        with running_server(port=port):
            poll(engine.snapshot, lambda ps: ps[0].state == "intact", what="the peer intact")
    changes = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert changes == [f"Peer {key(port)}: unknown -> down: ping refused: connection refused",
                       f"Peer {key(port)}: down -> intact"], changes


class EchoServerInThread:
    """An echo server that a test can close midway (running_server closes at its end)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.server = self._stack.enter_context(running_server())
        self.port = self.server.address[1]

    def close(self) -> None:
        self._stack.close()


def test_engine_probes_udp_and_tells_lossy_from_no_udp() -> None:
    """Three peers, all TCP intact: a UDP echo server (intact, one hop, every datagram's
    round trip in the histogram), a server without UDP (intact: refused, not lossy), and
    one whose UDP side drops two datagrams in twenty (lossy, its ping and bulk intact)."""
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(running_server(udp=True)).address[1]
        plain = stack.enter_context(running_server()).address[1]
        fake = stack.enter_context(UdpFake(drop={3, 7}))
        stack.enter_context(running_server(port=fake.port))
        engine = stack.enter_context(running_mesh(fast_mesh(
            (LOCALHOST, live), (LOCALHOST, plain), (LOCALHOST, fake.port), port=unused_port(),
            udp_count=UDP_COUNT)))
        peers = poll(lambda: {p.key: p for p in engine.snapshot()}, lambda ps: len(ps) == 3
                     and all(p.checks["udp"].last and p.checks["bulk"].last for p in ps.values())
                     and [ps[key(p)].state for p in (live, plain, fake.port)] == [
                         "intact", "intact", "lossy"], timeout=15, what="intact, intact, lossy")
        data = engine.status()
    good, no_udp, lossy = peers[key(live)], peers[key(plain)], peers[key(fake.port)]
    assert good.hops == 1 and no_udp.hops is None and lossy.hops == 1
    probes = good.checks["udp"].counts["intact"]
    assert sum(good.udp_rtt_counts) == UDP_COUNT * probes and good.udp_rtt_sum > 0
    assert no_udp.checks["udp"].counts == {"refused": no_udp.checks["udp"].counts["refused"]}
    assert sum(no_udp.udp_rtt_counts) == 0 and no_udp.problem is None
    assert lossy.problem == "UDP probe lossy: 2 of 20 datagrams not back intact (10% loss)"
    assert lossy.checks["ping"].last.intact and lossy.checks["bulk"].last.intact  # type: ignore[union-attr]
    assert data["udp_count"] == UDP_COUNT
    assert data["peers"][key(live)]["udp_loss"] == 0 and data["peers"][key(live)]["hops"] == 1
    assert data["peers"][key(plain)]["udp"] == "refused"
    assert data["peers"][key(plain)]["udp_loss"] is None
    assert data["peers"][key(fake.port)]["udp_loss"] == 0.1
    assert data["peers"][key(fake.port)]["checks"]["udp"]["received"] == 18


def test_engine_leaves_itself_out() -> None:
    """Its own address and port among the peers: left out as mesh.own_key, never checked
    (its own server, listening, is never connected to), while the other peer is."""
    with running_server() as own, running_server() as other:
        own_port, other_port = own.address[1], other.address[1]
        engine = fast_mesh((LOCALHOST, own_port), (LOCALHOST, other_port), port=own_port)
        with running_mesh(engine):
            assert engine.wait_resolved(5)
            peers = poll(engine.snapshot, lambda ps: len(ps) == 1 and ps[0].rounds >= 3
                         and ps[0].state == "intact", what="three rounds of the other peer")
            assert engine.own_key == key(own_port)
            assert [p.key for p in peers] == [key(other_port)]
            assert key(own_port) not in engine.status()["peers"]
            assert engine.status()["node"]["address"] == key(own_port)
        assert own.stats.total == 0 and other.stats.total >= 3


def test_engine_stops_promptly_with_a_check_in_flight() -> None:
    """A peer that never answers holds a check for its whole timeout (5 s): stop() still
    returns within two seconds, and every thread of the engine but that check's has ended."""
    release = threading.Event()
    with fake_server(silent(release)) as port:
        try:
            engine = fast_mesh((LOCALHOST, port), port=unused_port(), timeout=5)
            engine.start()
            try:
                poll(engine.snapshot, lambda ps: len(ps) == 1 and ps[0].busy,
                     what="a check in flight")
            finally:
                started = time.monotonic()
                engine.stop()
                took = time.monotonic() - started
            names = [t.name for t in threading.enumerate() if t.name.startswith(
                ("pytcpecho-resolve", "pytcpecho-schedule"))]
        finally:
            release.set()
    assert took < 2
    assert names == []


# == 4. the mesh process over HTTP ===================================================

def test_mesh_metrics_status_and_pages() -> None:
    """Two echo servers checked by ``pytcpecho mesh``: /metrics as Prometheus reads it,
    /status with both intact, /healthz, the page, and 404 for anything else."""
    with running_server() as a, running_server() as b:
        ports = [a.address[1], b.address[1]]
        with mesh_node("--interval", "0.2", "--bulk-every", "1", "--bulk-size", "64KiB",
                       "--timeout", "2", *[f"--peers={key(p)}" for p in ports]) as node:
            data = poll(lambda: status(node.base),
                        lambda d: states(d) == {key(p): "intact" for p in ports},
                        what="both peers intact in /status")
            samples = poll(lambda: scrape(node.base), lambda s: all(
                sample(s, "pytcpecho_peer_checks_total", peer=key(p), check="bulk",
                       result="intact") for p in ports), what="a bulk check of each")
            health = get(node.base + "/healthz")
            page = get(node.base + "/")
            missing = get(node.base + "/no-such-page")
    assert data["node"]["address"] is None and data["bulk_size"] == 65536
    for p in ports:
        peer = data["peers"][key(p)]
        assert peer["problem"] is None and peer["rtt_ms"] > 0
        assert peer["checks"]["ping"]["result"] == "intact"
        assert sample(samples, "pytcpecho_peer_up", peer=key(p)) == 1
        assert sample(samples, "pytcpecho_peer_check_intact", peer=key(p), check="ping") == 1
        assert value(samples, "pytcpecho_peer_checks_total", peer=key(p), check="ping",
                     result="intact") >= 1
        buckets = [(float(dict(labels)["le"]), value) for (name, labels), value
                   in samples.items() if name == "pytcpecho_peer_rtt_seconds_bucket"
                   and dict(labels)["peer"] == key(p)]
        assert sorted(le for le, _ in buckets) == [*RTT_BUCKETS, float("inf")]
        counts = [value for _, value in sorted(buckets)]
        assert counts == sorted(counts) and counts[-1] >= 1
        assert sample(samples, "pytcpecho_peer_rtt_seconds_count", peer=key(p)) == counts[-1]
        assert value(samples, "pytcpecho_peer_bulk_bytes_per_second", peer=key(p)) > 0
    for reason in CLOSED_REASONS:
        assert sample(samples, "pytcpecho_connections_closed_total", reason=reason) is not None
    assert sample(samples, "pytcpecho_connections_total") is not None
    assert (health.status, health.body) == (200, "ok\n")
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert '<table id="matrix">' in page.body
    assert all(f'data-to="{key(p)}"' in page.body for p in ports)
    assert missing.status == 404 and "/metrics" in missing.body


def test_mesh_metrics_peer_up_falls_to_zero() -> None:
    """A peer whose server stops: pytcpecho_peer_up 0 for it, still 1 for the other, and
    /status says down."""
    with running_server() as stays:
        kept, leaving = stays.address[1], EchoServerInThread()
        try:
            with mesh_node("--interval", "0.2", "--timeout", "1", "--bulk-size", "64KiB",
                           "--peers", key(kept), "--peers", key(leaving.port)) as node:
                def ups() -> dict[int, float | None]:
                    samples = scrape(node.base)
                    return {p: sample(samples, "pytcpecho_peer_up", peer=key(p))
                            for p in (kept, leaving.port)}
                poll(ups, lambda u: set(u.values()) == {1}, what="both up")
                leaving.close()
                up = poll(ups, lambda u: u[leaving.port] == 0, what="the stopped peer down")
                data = status(node.base)
        finally:
            leaving.close()
    assert up[kept] == 1
    assert states(data)[key(leaving.port)] == "down"


def udp_buckets(samples: Samples, peer: str) -> list[float]:
    """pytcpecho_peer_udp_rtt_seconds's cumulative counts for ``peer``, by bound."""
    found = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                   if name == "pytcpecho_peer_udp_rtt_seconds_bucket"
                   and dict(labels)["peer"] == peer)
    assert [le for le, _ in found] == [*RTT_BUCKETS, float("inf")], found
    return [v for _, v in found]


def test_mesh_udp_metrics_and_a_peer_without_udp() -> None:
    """Node B runs --no-udp; node A checks B and a UDP echo server.  A exports the
    server's probe (no loss, every datagram's round trip, the jitter, one hop) and shows B
    intact with 'no UDP' (/status, the page), with no loss series; A's own echo counts
    datagrams.  B probes nobody and exports no UDP series at all."""
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(running_server(udp=True)).address[1]
        b = stack.enter_context(mesh_node("--no-udp", "--interval", "0.2", "--timeout", "1",
                                          "--peers", key(live)))
        a = stack.enter_context(mesh_node("--interval", "0.2", "--timeout", "1",
                                          "--udp-count", "10", "--peers", key(live),
                                          "--peers", key(b.echo_port)))

        def settled(s: Samples) -> bool:
            return all((value or 0) >= 2 for value in (
                sample(s, "pytcpecho_peer_checks_total", peer=key(live), check="udp",
                       result="intact"),
                sample(s, "pytcpecho_peer_checks_total", peer=key(b.echo_port), check="udp",
                       result="refused")))
        samples = poll(lambda: scrape(a.base), settled, what="two probes of each peer")
        data = poll(lambda: status(a.base), lambda d: states(d) == {
            key(live): "intact", key(b.echo_port): "intact"}, what="both intact")
        page = get(a.base + "/")
        probe = checks.udp(cores.load("auto"), (LOCALHOST, a.echo_port), UDP_COUNT, 2)
        echoed = poll(lambda: scrape(a.base), lambda s: sample(
            s, "pytcpecho_udp_datagrams_echoed_total") == UDP_COUNT, what="A echoed 20")
        refused_by_b = checks.udp(cores.load("auto"), (LOCALHOST, b.echo_port), UDP_COUNT, 2)
        b_samples = poll(lambda: scrape(b.base), lambda s: (sample(
            s, "pytcpecho_peer_checks_total", peer=key(live), check="ping", result="intact")
            or 0) >= 2, what="B pinged the server twice")
        b_status = status(b.base)
    live_key, b_key = key(live), key(b.echo_port)
    # The live server's probe: all ten back, each counted in the histogram, one hop.
    assert value(samples, "pytcpecho_peer_udp_loss_ratio", peer=live_key) == 0
    assert value(samples, "pytcpecho_peer_check_intact", peer=live_key, check="udp") == 1
    assert value(samples, "pytcpecho_peer_hops", peer=live_key) == 1
    assert 0 <= value(samples, "pytcpecho_peer_udp_jitter_seconds", peer=live_key) < 1
    counts = udp_buckets(samples, live_key)
    probes = value(samples, "pytcpecho_peer_checks_total", peer=live_key, check="udp",
                   result="intact")
    assert counts == sorted(counts) and counts[-1] == 10 * probes
    assert value(samples, "pytcpecho_peer_udp_rtt_seconds_count", peer=live_key) == counts[-1]
    assert 0 < value(samples, "pytcpecho_peer_udp_rtt_seconds_sum", peer=live_key) \
        < counts[-1]  # under a second each, on loopback
    # B, without UDP: intact, its probes refused; no loss, jitter or hops; 'no UDP'.
    assert value(samples, "pytcpecho_peer_up", peer=b_key) == 1
    assert value(samples, "pytcpecho_peer_check_intact", peer=b_key, check="udp") == 0
    for name in ("pytcpecho_peer_udp_loss_ratio", "pytcpecho_peer_udp_jitter_seconds",
                 "pytcpecho_peer_hops"):
        assert sample(samples, name, peer=b_key) is None, name
    assert udp_buckets(samples, b_key)[-1] == 0
    peer = data["peers"][b_key]
    assert (peer["udp"], peer["udp_loss"], peer["hops"], peer["problem"]) == (
        "refused", None, None, None)
    assert peer["checks"]["udp"]["detail"] == "no UDP echo there: port unreachable (ICMP)"
    assert data["peers"][live_key]["udp_loss"] == 0 and data["peers"][live_key]["hops"] == 1
    assert data["peers"][live_key]["udp_rtt_p50_ms"] > 0 and data["udp_count"] == 10
    cell = re.search(rf'<td class="intact" data-from="[^"]+" data-to="{b_key}"[^>]*>(.*?)</td>',
                     page.body)
    assert cell is not None and 'data-udp="refused"' in cell[0], page.body
    assert cell[1].endswith('<small class="udp">no UDP</small>') and "no UDP" in cell[0]
    live_cell = re.search(rf'<td class="intact" [^>]*data-to="{live_key}"[^>]*>', page.body)
    assert live_cell is not None and 'data-hops="1"' in live_cell[0]
    assert "1 hop" in live_cell[0] and "UDP loss 0.0%" in live_cell[0]
    # A's own UDP echo, as its metrics count it.
    assert probe.result == "intact" and refused_by_b.result == "refused"
    assert value(echoed, "pytcpecho_udp_datagrams_received_total") == UDP_COUNT
    assert value(echoed, "pytcpecho_udp_bytes_received_total") == \
        value(echoed, "pytcpecho_udp_bytes_echoed_total") == UDP_COUNT * PROBE_SIZE
    for reason in ("denied", "loop_port", "rate_limited", "truncated", "send_error"):
        assert value(echoed, "pytcpecho_udp_dropped_total", reason=reason) == 0
    # B: no probe of anyone, no UDP series of its own.
    assert b_status["udp_count"] == 0
    assert b_status["peers"][live_key]["udp"] is None
    assert b_status["peers"][live_key]["checks"]["udp"] is None
    assert not [name for name, labels in b_samples if "udp" in name or name ==
                "pytcpecho_peer_hops" or ("check", "udp") in labels]


def test_mesh_reports_a_lossy_peer_lossy_not_down() -> None:
    """A peer whose UDP side drops two datagrams in twenty, its TCP side intact: lossy,
    with a loss ratio of 0.1, while pytcpecho_peer_up stays 1; the page shows the loss."""
    with UdpFake(drop={3, 7}) as fake, running_server(port=fake.port), mesh_node(
            "--interval", "0.2", "--timeout", "0.5", "--bulk-every", "1", "--bulk-size",
            "64KiB", "--peers", key(fake.port)) as node:
        peer = key(fake.port)
        samples = poll(lambda: scrape(node.base), lambda s: sample(
            s, "pytcpecho_peer_udp_loss_ratio", peer=peer) is not None and sample(
            s, "pytcpecho_peer_check_intact", peer=peer, check="bulk") is not None,
            what="a UDP probe and a bulk check")
        data = poll(lambda: status(node.base), lambda d: states(d) == {peer: "lossy"},
                    what="the peer lossy")
        page = get(node.base + "/")
        line = wait_line(node.proc, rf"Peer {re.escape(peer)}: .*-> lossy")
    assert value(samples, "pytcpecho_peer_udp_loss_ratio", peer=peer) == 0.1
    assert value(samples, "pytcpecho_peer_up", peer=peer) == 1
    assert value(samples, "pytcpecho_peer_check_intact", peer=peer, check="ping") == 1
    assert value(samples, "pytcpecho_peer_check_intact", peer=peer, check="bulk") == 1
    assert value(samples, "pytcpecho_peer_check_intact", peer=peer, check="udp") == 0
    assert value(samples, "pytcpecho_peer_checks_total", peer=peer, check="udp",
                 result="lossy") >= 1
    assert value(samples, "pytcpecho_peer_hops", peer=peer) == 1
    assert udp_buckets(samples, peer)[-1] % 18 == 0
    problem = "UDP probe lossy: 2 of 20 datagrams not back intact (10% loss)"
    assert data["peers"][peer]["problem"] == problem and data["peers"][peer]["udp_loss"] == 0.1
    assert line.endswith(f"-> lossy: {problem}")
    cell = re.search(rf'<td class="lossy" [^>]*data-to="{peer}" data-state="lossy"[^>]*>'
                     r"(.*?)</td>", page.body)
    assert cell is not None and cell[1] == "10% lost", page.body
    assert "UDP loss 10.0%" in cell[0] and "1 hop" in cell[0]


# == 5. serve --metrics-port and the server's counters ===============================

def test_server_metrics_count_udp_datagrams() -> None:
    """The metrics of a server that echoes UDP (node.metrics(udp=True), as serve --udp
    --metrics-port serves them): datagrams and bytes received and echoed, and those
    dropped by reason: here two over --udp-max-size."""
    with running_server(udp=True, udp_max_size=100) as server, node.metrics(
            LOCALHOST, 0, "test", lambda: server.stats, udp=True) as web, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect((LOCALHOST, server.address[1]))
        for i in range(3):
            sock.send(bytes([i]) * 64)
            assert sock.recv(1000) == bytes([i]) * 64
        for _ in range(2):
            sock.send(b"x" * 200)  # over --udp-max-size: dropped, counted
        samples = poll(lambda: scrape(f"http://{web.describe()}"), lambda s: sample(
            s, "pytcpecho_udp_datagrams_received_total") == 5, what="five datagrams counted")
    assert value(samples, "pytcpecho_udp_datagrams_echoed_total") == 3
    # A datagram over --udp-max-size counts as the bytes of it that were read.
    assert value(samples, "pytcpecho_udp_bytes_received_total") == 3 * 64 + 2 * 100
    assert value(samples, "pytcpecho_udp_bytes_echoed_total") == 3 * 64
    assert {r: value(samples, "pytcpecho_udp_dropped_total", reason=r) for r in (
        "denied", "loop_port", "rate_limited", "truncated", "send_error")} == {
        "denied": 0, "loop_port": 0, "rate_limited": 0, "truncated": 2, "send_error": 0}
    with running_server() as server, node.metrics(LOCALHOST, 0, "test",
                                                  lambda: server.stats) as web:
        plain = scrape(f"http://{web.describe()}")
    assert not [name for name, _ in plain if "udp" in name]
    assert sample(plain, "pytcpecho_connections_total") == 0

def _close_with_reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_serve_metrics_count_why_each_connection_closed() -> None:
    """One connection closed by the client, one reset by it, one over --max-bytes, one
    idle past --idle-timeout: one of each reason, and they add up to the total."""
    with ServeProcess("--host", LOCALHOST, "--port", "0", "--metrics-port", "0",
                      "--max-bytes", "1000", "--idle-timeout", "0.3", "--grace", "1") as proc:
        base = "http://" + proc.wait_for(r"Metrics at http://(\S+)/metrics").group(1)
        port = proc.wait_listening()
        with connect(port) as normal:
            normal.sendall(b"x" * 100)
            assert recv_exactly(normal, 100) == b"x" * 100
        reset = connect(port)
        reset.sendall(b"y" * 50)
        assert recv_exactly(reset, 50) == b"y" * 50
        _close_with_reset(reset)
        # The server may reset this one in the middle of the send.
        with connect(port) as over, contextlib.suppress(OSError):
            over.sendall(b"z" * 5000)
            while over.recv(1 << 16):
                pass
        with connect(port) as idle, contextlib.suppress(OSError):
            assert idle.recv(1) == b""  # the server closes it after 0.3 s
        samples = poll(lambda: scrape(base), lambda s: sample(
            s, "pytcpecho_connections_total") == 4 and sample(
            s, "pytcpecho_connections_active") == 0, what="four connections ended")
        assert proc.stop() == 0
    closed = {r: sample(samples, "pytcpecho_connections_closed_total", reason=r)
              for r in CLOSED_REASONS}
    assert closed == {"eof": 1, "idle_timeout": 1, "max_bytes": 1, "refused": 0,
                      "shutdown": 0, "error": 1}
    assert value(samples, "pytcpecho_connections_total") == \
        value(samples, "pytcpecho_connections_active") + sum(
            value(samples, "pytcpecho_connections_closed_total", reason=r)
            for r in CLOSED_REASONS if r != "refused")
    echoed = value(samples, "pytcpecho_bytes_echoed_total")
    assert 150 <= echoed <= value(samples, "pytcpecho_bytes_received_total")
    assert value(samples, "pytcpecho_info", version=__version__,
                 core=cores.load("auto").NAME) == 1


def test_serve_metrics_count_refused_clients_apart() -> None:
    """Clients --deny refuses: counted as refused, never in connections_total."""
    with ServeProcess("--host", LOCALHOST, "--port", "0", "--metrics-port", "0",
                      "--deny", "127.0.0.0/8") as proc:
        base = "http://" + proc.wait_for(r"Metrics at http://(\S+)/metrics").group(1)
        port = proc.wait_listening()
        for _ in range(2):
            with connect(port) as sock, contextlib.suppress(OSError):
                assert sock.recv(1) == b""
        samples = poll(lambda: scrape(base), lambda s: sample(
            s, "pytcpecho_connections_closed_total", reason="refused") == 2,
            what="two refused")
        assert proc.stop() == 0
    assert sample(samples, "pytcpecho_connections_total") == 0
    assert sample(samples, "pytcpecho_connections_active") == 0


def test_server_stats_add_up() -> None:
    """Every connection counted in total is active or closed for exactly one reason: the
    client's close, idle, over --max-bytes, a reset, or the server's own close()."""
    def parts(s: Any) -> int:
        return (s.active + s.closed_eof + s.closed_shutdown + s.closed_error + s.timed_out
                + s.over_limit)

    with running_server(idle_timeout=0.3, max_bytes=1000) as server:
        port = server.address[1]
        with connect(port) as normal:
            normal.sendall(b"a" * 10)
            assert recv_exactly(normal, 10) == b"a" * 10
        with connect(port) as over, contextlib.suppress(OSError):
            over.sendall(b"b" * 5000)
            while over.recv(1 << 16):
                pass
        with connect(port) as idle, contextlib.suppress(OSError):
            assert idle.recv(1) == b""
        reset = connect(port)
        reset.sendall(b"c")
        assert recv_exactly(reset, 1) == b"c"
        _close_with_reset(reset)
        assert server.wait(lambda s: s.total == 4 and s.active == 0, 10), server.stats
        middle = server.stats
        cut = connect(port)
        cut.sendall(b"d")
        assert recv_exactly(cut, 1) == b"d"
        assert server.wait(lambda s: s.active == 1, 10)
    with cut:
        final = server.stats
    assert parts(middle) == middle.total == 4
    assert (middle.closed_eof, middle.over_limit, middle.timed_out, middle.closed_error) == \
        (1, 1, 1, 1)
    assert parts(final) == final.total == 5
    assert (final.active, final.closed_shutdown, final.refused) == (0, 1, 0)


# == 6. bad input ======================================================================

PEER = f"--peers={LOCALHOST}:1"


@pytest.mark.parametrize(("args", "words"), [
    (["mesh"], "give the peers to check"),
    (["mesh", PEER, "--port", "17001", "--metrics-port", "17001"],
     "--metrics-port 17001 is the echo --port too"),
    (["mesh", PEER, "--bulk-size", "2GiB"], "argument --bulk-size: invalid size '2GiB'"),
    (["mesh", PEER, "--sample-peers", "-1"], "argument --sample-peers: invalid count -1"),
    (["mesh", PEER, "--self", "not-an-address"], "argument --self: invalid address"),
    (["mesh", PEER, "--interval", "0"], "argument --interval: invalid duration '0'"),
    (["mesh", PEER, "--resolve-interval", "0.05"],
     "argument --resolve-interval: invalid duration '0.05': at least 0.1 seconds"),
    (["mesh", PEER, "--udp-count", "0"], "argument --udp-count: invalid count 0"),
], ids=["no-peers", "same-port", "bulk-2GiB", "sample-negative", "self", "interval-0",
        "resolve-too-often", "udp-count-0"])
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    """Each is refused before anything listens: one line naming what is wrong, status 2."""
    line = assert_one_line_error(cli(*args, timeout=30, env={"PYTCPECHO_PEERS": ""}), 2)
    assert line.startswith(f"pytcpecho {args[0]}: error: ") and words in line, line


@pytest.mark.parametrize("command", ["mesh", "serve", "serve --workers 2"])
def test_metrics_port_in_use_is_one_line(command: str) -> None:
    """A metrics port another socket listens on: exit 2 with one line naming the port,
    not a traceback, and nothing left serving (with --workers, before any worker starts)."""
    with socket.create_server((LOCALHOST, 0)) as taken:
        port = taken.getsockname()[1]
        extra = [PEER] if command == "mesh" else []
        result = cli(*command.split(), "--host", LOCALHOST, "--port", "0", "--metrics-port",
                     str(port), *extra, timeout=30)
    assert "Worker 1 started" not in result.stdout
    line = assert_one_line_error(result, 2)
    assert f"cannot serve metrics on {LOCALHOST}:{port}: Address already in use" in line
    assert "Traceback" not in result.stdout


def test_peers_from_the_environment() -> None:
    """PYTCPECHO_PEERS, comma-separated, gives the peers: both are checked."""
    with running_server() as a, running_server() as b:
        ports = [a.address[1], b.address[1]]
        env = {"PYTCPECHO_PEERS": ",".join(key(p) for p in ports)}
        with mesh_node("--interval", "0.2", "--timeout", "1", env=env) as node:
            poll(lambda: status(node.base),
                 lambda d: states(d) == {key(p): "intact" for p in ports},
                 what="both peers from the variable intact")
        assert a.stats.total >= 1 and b.stats.total >= 1


# == 7. peers that misbehave ===========================================================

QUICK_DNS = {"RES_OPTIONS": "timeout:1 attempts:1"}
"""glibc's resolver waits 1 s for a DNS answer, not 5 s twice: a name that does not
resolve costs a second where the DNS server drops queries (as this sandbox's does)."""


def _garbage(offset: int, size: int) -> bytes:
    text = b"HTTP/1.1 400 Bad Request\r\n\r\n"
    return (text * (size // len(text) + 1))[:size]


def _ping(port: int) -> None:
    result = cli("ping", f"{LOCALHOST}:{port}", "--timeout", "5", timeout=30)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "intact" in result.stdout


def test_misbehaving_peers_never_take_the_node_down() -> None:
    """A peer that answers garbage is corrupt, one that never answers is down, a name
    that does not resolve is listed as such; the node keeps serving echo and /status."""
    release = threading.Event()
    with contextlib.ExitStack() as stack:
        garbage = stack.enter_context(fake_server(scripted_reply(_garbage)))
        quiet = stack.enter_context(fake_server(silent(release)))
        stack.callback(release.set)  # after the node stops: its checks end first
        good = stack.enter_context(running_server()).address[1]
        node = stack.enter_context(mesh_node(
            "--interval", "0.2", "--timeout", "0.5", "--bulk-every", "1", "--bulk-size",
            "64KiB", "--peers", key(garbage), "--peers", key(quiet), "--peers", key(good),
            "--peers", "no-such-host.invalid:7", env=QUICK_DNS))
        data = poll(lambda: status(node.base), lambda d: states(d) == {
            key(garbage): "corrupt", key(quiet): "down", key(good): "intact"}
            and d["unresolved"], timeout=20, what="each peer's state")
        _ping(node.echo_port)
        assert node.proc.proc.poll() is None
        assert states(status(node.base))[key(good)] == "intact"
    assert len(data["unresolved"]) == 1
    assert data["unresolved"][0].startswith("no-such-host.invalid:7: does not resolve (")
    assert data["peers"][key(garbage)]["problem"].startswith(
        "ping check: echo differs from what was sent at byte 0")
    assert data["peers"][key(quiet)]["problem"].endswith(
        "ping timeout: nothing came back in 0.5 s")


# Lookups here hit the network: this sandbox's DNS server answers some queries at once and
# drops others, which glibc then waits 5 s for (100 .invalid names one after another took
# 15 s; 1,000 at the resolver's 8 at a time, 195 s). So the 10,000 names fail without any
# lookup: a first label of 64 characters, which Python's IDNA codec refuses before calling
# getaddrinfo(). What is tested is the same: names that do not resolve, in bulk.
LONG_LABEL = "x" * 51


def test_ten_thousand_names_that_do_not_resolve() -> None:
    """10,000 peer names that do not resolve: a handful of log lines about them, every one
    listed in /status, and the node keeps checking its real peer and serving echo."""
    count = 10_000
    names = [f"--peers=nosuch-{i:05d}-{LONG_LABEL}.invalid:7" for i in range(count)]
    assert len(names[0].split("=")[1].split(".")[0]) == 64
    with running_server() as good, mesh_node(
            "--interval", "0.2", "--timeout", "1", "--resolve-interval", "0.5",
            "--peers", key(good.address[1]), *names) as node:
        wait_line(node.proc, r"\.\.\. and \d+ more peer names that do not resolve")
        data = poll(lambda: status(node.base), lambda d: len(d["unresolved"]) == count
                    and states(d) == {key(good.address[1]): "intact"},
                    what="every name listed, the real peer intact")
        _ping(node.echo_port)
        assert status(node.base)["unresolved"] == data["unresolved"]
        lines = list(node.proc.lines_so_far())
    about = [line for line in lines if "nosuch-" in line or "peer names" in line]
    # The start line, five names, and one line for the rest; not one line per round.
    assert len(about) <= 7, about
    assert sum(f"... and {count - 5} more peer names that do not resolve" in line
               for line in about) == 1, about
    assert data["unresolved"][0].startswith(f"nosuch-00000-{LONG_LABEL}.invalid:7: does not "
                                            "resolve (")
