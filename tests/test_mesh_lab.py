"""``pytcpecho mesh`` on a cluster of network namespaces, with the faults it exists to find.

Six nodes on two subnets joined by a router each run ``pytcpecho mesh`` as a
process of its own and find each other by one name, as in a Kubernetes
headless Service (a seventh waits to join).  A real Prometheus scrapes them
all.  Each fault is injected once the mesh is green and removed again, and the
mesh must flag exactly the pairs it affects: a path-MTU blackhole between the
subnets, corruption on one node, loss on one node, UDP loss alone on one node
(lossy, not down), a node killed and restarted, a node added to and removed
from the name.  The UDP probes' echoes tell each node how many hops away each
peer is: one on its own subnet, two across the router.  The page is read by a
real browser.  The tests run in order, on one lab; each leaves it green.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from fakes import DNS_SERVER
from mesh_lab import FETCH, HTTP_PORT, MeshLab, mesh_lab, wait_until
from netns import NETNS_ETC, pytcpecho
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.netns, pytest.mark.slow]

INTERVAL = 1.0
RESOLVE = 1.0
TIMEOUT = 4.0
NODE_ARGS = ("--interval", str(INTERVAL), "--bulk-every", "1", "--timeout", str(TIMEOUT),
             "--resolve-interval", str(RESOLVE))
ARTIFACTS = Path(os.environ.get("PYTCPECHO_ARTIFACTS", "")) if os.environ.get(
    "PYTCPECHO_ARTIFACTS") else None
"""Where the page's screenshot is kept (besides the test's temp dir), if set."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    with mesh_lab(6, spare=1) as built:
        for host in built.members:
            built.start_node(host, *NODE_ARGS)
        workdir = tmp_path_factory.mktemp("prometheus")
        with built.prometheus(workdir) as url:
            built.prometheus_url = url  # type: ignore[attr-defined]
            yield built


def prom(lab: MeshLab) -> str:
    return str(lab.prometheus_url)  # type: ignore[attr-defined]


def green(lab: MeshLab, timeout: float = 30) -> None:
    """Every running node sees every other running member intact."""
    members = [h for h in lab.members if h in lab.nodes]
    want = lab.pairs(members)

    def not_intact() -> dict[tuple[str, str], str]:
        states = lab.states()
        return {p: states.get(p, "not listed") for p in want if states.get(p) != "intact"}
    wait_until("every pair intact", not_intact, timeout, until=lambda bad: not bad)


def flagged(lab: MeshLab, state: str) -> set[tuple[str, str]]:
    return {pair for pair, s in lab.states().items() if s == state}


def pairs_from_prometheus(lab: MeshLab, promql: str) -> set[tuple[str, str]]:
    """The (from, to) pairs of the series ``promql`` gives now."""
    by_instance = {f"{a}:{HTTP_PORT}": h for h, a in lab.addresses.items()}
    by_key = {lab.key(h): h for h in lab.addresses}
    return {(by_instance[r["metric"]["instance"]], by_key[r["metric"]["peer"]])
            for r in lab.query(prom(lab), promql)}


def wait_prometheus(lab: MeshLab, promql: str, want: set[tuple[str, str]],
                    timeout: float = 20) -> None:
    """Until Prometheus's answer to ``promql`` is exactly the pairs ``want``."""
    wait_until(f"Prometheus: {promql} gives {sorted(want)}",
               lambda: pairs_from_prometheus(lab, promql), timeout, until=lambda got: got == want)
    print(f"Prometheus: {promql}: {len(want)} series, {show(want)}")


def show(pairs: set[tuple[str, str]]) -> str:
    return " ".join(f"{a}->{b}" for a, b in sorted(pairs)) or "none"


@pytest.mark.timeout(150)
def test_the_mesh_goes_green(lab: MeshLab) -> None:
    """Every node finds the five others through the one name, leaves itself out, and
    checks each; Prometheus sees all 30 pairs up."""
    green(lab, timeout=60)
    for host in lab.members:
        status = lab.status(host)
        assert status["node"]["address"] == lab.key(host)  # itself, found and left out
        assert set(status["peers"]) == {lab.key(h) for h in lab.members if h != host}
        assert all(p["name"] in lab.members for p in status["peers"].values())
    wait_prometheus(lab, "pytcpecho_peer_up == 1", lab.pairs(lab.members), timeout=30)
    assert pairs_from_prometheus(lab, "pytcpecho_peer_up == 0") == set()


@pytest.mark.timeout(60)
def test_hops_one_on_the_subnet_two_across_the_router(lab: MeshLab) -> None:
    """From the TTL of the UDP echoes: each peer on the node's own subnet is one hop away,
    each across the router two, in /status and in Prometheus; and every probe is intact."""
    pairs = lab.pairs(lab.members)
    across = {(a, b) for a, b in pairs if lab.subnet[a] != lab.subnet[b]}
    hops = {}
    for host in lab.members:
        for key, peer in lab.status(host)["peers"].items():
            to = next(h for h in lab.members if lab.key(h) == key)
            hops[(host, to)] = peer["hops"]
            assert peer["udp"] == "intact" and peer["udp_loss"] == 0, (host, to, peer)
    assert hops == {p: 2 if p in across else 1 for p in pairs}, hops
    wait_prometheus(lab, "pytcpecho_peer_hops == 2", across)
    wait_prometheus(lab, "pytcpecho_peer_hops == 1", pairs - across)
    print(f"hops: 1 for the {len(pairs - across)} pairs on one subnet, 2 for the "
          f"{len(across)} across the router")


@pytest.mark.timeout(120)
def test_path_mtu_blackhole_between_the_subnets(lab: MeshLab, tmp_path: Path) -> None:
    """Large packets dropped on the router's link into subnet 2, ICMP filtered: pings stay
    intact, bulk checks stall, and exactly the pairs across the router are flagged as a
    suspected path-MTU problem, in /status, in Prometheus and on the page."""
    across = {(a, b) for a, b in lab.pairs(lab.members) if lab.subnet[a] != lab.subnet[b]}
    assert len(across) == 18
    lab.mtu_blackhole(True)
    try:
        wait_until("the pairs across the router flagged mtu, and only they",
                   lambda: {p: s for p, s in lab.states().items() if (s == "mtu") != (p in across)},
                   30, until=lambda wrong: not wrong)
        print(f"mtu: flagged {show(across)}")
        for a, b in across:
            peer = lab.status(a)["peers"][lab.key(b)]
            assert peer["checks"]["ping"]["result"] == "intact", peer
            assert peer["checks"]["bulk"]["result"] in ("stalled", "timeout"), peer
            assert "path-MTU" in peer["problem"]
        assert flagged(lab, "intact") == lab.pairs(lab.members) - across
        wait_prometheus(lab, 'pytcpecho_peer_check_intact{check="bulk"} == 0', across)
        assert pairs_from_prometheus(lab, "pytcpecho_peer_up == 0") == set()
        check_page(lab, across, "mtu", tmp_path)
    finally:
        lab.mtu_blackhole(False)
    green(lab)


def check_page(lab: MeshLab, flagged_pairs: set[tuple[str, str]], state: str,
               tmp_path: Path) -> None:
    """n1's page, rendered by Chromium: a cell per pair, ``state`` exactly where flagged,
    intact elsewhere (rendered again while a node's last round says otherwise: a random
    fault's one lucky probe, a check slowed by a loaded machine); and a screenshot of it."""
    url = f"http://{lab.addresses['n1']}:{HTTP_PORT}/"
    by_key = {lab.key(h): h for h in lab.addresses}
    pairs = lab.pairs(lab.members)

    def cells() -> dict[tuple[str, str], str]:
        dom = lab.chromium(url, "--dump-dom", "--virtual-time-budget=5000")
        return {(by_key[a], by_key[b]): s for a, b, s in re.findall(
            r'<td class="[^"]*" data-from="([^"]+)" data-to="([^"]+)" data-state="([^"]+)"',
            dom) if a != b}

    def as_flagged(shown: dict[tuple[str, str], str]) -> bool:
        return set(shown) == pairs and all(
            shown[p] == (state if p in flagged_pairs else "intact") for p in pairs)
    wait_until(f"n1's page shows {state} exactly for {show(flagged_pairs)}, intact elsewhere",
               cells, 30, until=as_flagged, every=0.5)
    shot = tmp_path / f"mesh-{state}.png"
    lab.chromium(url, f"--screenshot={shot}", "--window-size=900,520")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if ARTIFACTS is not None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / shot.name)


@pytest.mark.timeout(120)
def test_corruption_on_one_node(lab: MeshLab, tmp_path: Path) -> None:
    """A byte rewritten in the segments arriving at n2's echo port (the checksum left as
    it is): every bulk check to n2 reports a mismatch with its offset, no other pair."""
    to_n2 = {(a, "n2") for a in lab.members if a != "n2"}
    lab.corrupt("n2", True)
    try:
        wait_until("every bulk check to n2 a mismatch, and only they",
                   lambda: {p: s for p, s in lab.states().items()
                            if (s == "corrupt") != (p in to_n2)}, 30, until=lambda wrong: not wrong)
        print(f"corrupt: flagged {show(to_n2)}: " + ", ".join(
            f"{a}: {lab.status(a)['peers'][lab.key('n2')]['problem']}" for a, _ in sorted(to_n2)))
        for a, _ in to_n2:
            peer = lab.status(a)["peers"][lab.key("n2")]
            assert peer["checks"]["bulk"]["result"] == "mismatch"
            assert isinstance(peer["checks"]["bulk"]["offset"], int)
            assert peer["checks"]["ping"]["result"] == "intact"  # 64 bytes: not rewritten
            assert re.fullmatch(r"bulk check: echo differs from what was sent at byte \d+",
                                peer["problem"]), peer
        assert flagged(lab, "intact") == lab.pairs(lab.members) - to_n2
        check_page(lab, to_n2, "corrupt", tmp_path)
    finally:
        lab.corrupt("n2", False)
    green(lab)


@pytest.mark.timeout(120)
def test_loss_on_one_node(lab: MeshLab) -> None:
    """20% of what arrives at n3 dropped: TCP recovers, so its checks stay intact, but the
    bulk throughput to n3 falls."""
    before = bulk_samples(lab, "n3", seconds=4)
    lab.lose("n3", 20)
    try:
        during = bulk_samples(lab, "n3", seconds=8)
        others = flagged(lab, "intact")
    finally:
        lab.lose("n3", 20, on=False)
    results = [r for r, _ in during]
    assert "mismatch" not in results
    assert results.count("intact") >= 0.8 * len(results), results
    # Bytes over time, all checks together (the harmonic mean of their rates): a few
    # transfers that wait out a retransmission timeout weigh as the time they took.
    rate_before, rate_during = throughput(before), throughput(during)
    print(f"bulk to n3: {rate_before / 2**20:.1f} MiB/s before, {rate_during / 2**20:.1f} "
          f"MiB/s with 20% loss ({len(during)} checks, {results.count('intact')} intact)")
    assert rate_during < rate_before / 2, (before, during)
    unaffected = {p for p in lab.pairs(lab.members) if "n3" not in p}
    assert unaffected <= others
    green(lab)


@pytest.mark.timeout(90)
def test_udp_loss_on_one_node_is_lossy_not_down(lab: MeshLab, tmp_path: Path) -> None:
    """30% of the UDP datagrams arriving at n3's echo port dropped, TCP untouched: every
    other node reports n3 lossy, with a loss ratio well above 0 in Prometheus, while
    pytcpecho_peer_up stays 1; no other pair changes; the page shows the loss."""
    to_n3 = {(a, "n3") for a in lab.members if a != "n3"}
    lab.lose_udp("n3", 30)
    try:
        by_key = {lab.key(h): h for h in lab.addresses}

        def seen() -> dict[tuple[str, str], dict[str, Any]]:
            return {(host, by_key.get(key, key)): peer for host in lab.nodes
                    for key, peer in lab.status(host)["peers"].items()}
        entries = wait_until("every node reports n3 lossy, and only n3", seen, 30,
                             until=lambda e: all((p["state"] == "lossy") == (pair in to_n3)
                                                 for pair, p in e.items()))
        peers = {a: entries[(a, b)] for a, b in to_n3}
        wait_prometheus(lab, f'pytcpecho_peer_udp_loss_ratio{{peer="{lab.key("n3")}"}} > 0.05',
                        to_n3)
        by_instance = {f"{address}:{HTTP_PORT}": h for h, address in lab.addresses.items()}
        ratios = {by_instance[r["metric"]["instance"]]: float(r["value"][1]) for r in lab.query(
            prom(lab), f'pytcpecho_peer_udp_loss_ratio{{peer="{lab.key("n3")}"}}')}
        assert pairs_from_prometheus(lab, "pytcpecho_peer_up == 0") == set()
        wait_prometheus(lab, f'pytcpecho_peer_up{{peer="{lab.key("n3")}"}} == 1', to_n3)
        assert pairs_from_prometheus(lab, "pytcpecho_peer_udp_loss_ratio > 0") <= to_n3
        check_page(lab, to_n3, "lossy", tmp_path)
    finally:
        lab.lose_udp("n3", 30, on=False)
    print("udp loss 30% at n3: loss ratio in Prometheus " + ", ".join(
        f"{host} {ratio:.2f}" for host, ratio in sorted(ratios.items()))
        + f" (mean {statistics.mean(ratios.values()):.2f}); "
        + ", ".join(f"{a}: {p['problem']}" for a, p in sorted(peers.items())))
    assert len(ratios) == len(to_n3)
    assert 0.1 < statistics.mean(ratios.values()) < 0.55, ratios
    for a, peer in peers.items():
        assert peer["checks"]["ping"]["result"] == "intact", (a, peer)
        assert peer["checks"]["bulk"]["result"] == "intact", (a, peer)
        assert re.fullmatch(r"UDP probe lossy: \d+ of 20 datagrams not back intact "
                            r"\(\d+% loss\)", peer["problem"]), peer
        assert peer["udp_loss"] > 0
        assert peer["hops"] == (1 if lab.subnet[a] == lab.subnet["n3"] else 2), (a, peer)
    green(lab)


def throughput(samples: list[tuple[str, int]]) -> float:
    """The intact bulk checks' bytes over their time: each moved the same bytes."""
    rates = [rate for result, rate in samples if result == "intact"]
    return statistics.harmonic_mean(rates)


def bulk_samples(lab: MeshLab, target: str, seconds: float) -> list[tuple[str, int]]:
    """Each bulk check of ``target`` the other nodes made in the next ``seconds``:
    (result, bytes per second or 0)."""
    seen: dict[tuple[str, float], tuple[str, int]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for host in lab.members:
            if host == target:
                continue
            bulk = lab.status(host)["peers"][lab.key(target)]["checks"]["bulk"]
            if bulk is not None:
                seen[(host, bulk["at"])] = (bulk["result"], bulk.get("bytes_per_second", 0))
        time.sleep(0.3)  # sampling what the nodes report, not waiting for a condition
    assert len(seen) >= len(lab.members), seen
    return list(seen.values())


@pytest.mark.timeout(120)
def test_a_node_killed_and_back(lab: MeshLab) -> None:
    """n6 killed: every other node reports it down within two intervals, in /status and in
    Prometheus; started again: up again."""
    killed_at = time.time()
    lab.kill_node("n6")
    to_n6 = {(a, "n6") for a in lab.members if a != "n6"}
    wait_until("every node reports n6 down, and only n6",
               lambda: {p: s for p, s in lab.states().items() if (s == "down") != (p in to_n6)},
               20, until=lambda wrong: not wrong)
    print(f"down: flagged {show(to_n6)}, " + ", ".join(
        f"{a} after {lab.status(a)['peers'][lab.key('n6')]['since'] - killed_at:.2f} s"
        for a, _ in sorted(to_n6)))
    for a, _ in to_n6:
        peer = lab.status(a)["peers"][lab.key("n6")]
        assert peer["checks"]["ping"]["result"] == "refused", peer
        assert peer["since"] - killed_at <= 2 * INTERVAL, (peer, killed_at)
    wait_prometheus(lab, "pytcpecho_peer_up == 0", to_n6)
    lab.start_node("n6", *NODE_ARGS)
    green(lab)
    wait_prometheus(lab, "pytcpecho_peer_up == 0", set())


@pytest.mark.timeout(120)
def test_a_node_added_and_removed(lab: MeshLab) -> None:
    """n7 joins the name: every node checks it within a resolve interval (and a second to
    spread the first checks); it leaves: its series are gone from every node's metrics."""
    lab.start_node("n7", *NODE_ARGS)
    added_at = time.time()
    lab.set_members([*lab.members, "n7"])
    green(lab)
    for host in lab.members:
        if host != "n7":
            ping = lab.status(host)["peers"][lab.key("n7")]["checks"]["ping"]
            assert ping["since"] - added_at <= RESOLVE + 1.0 + 0.5, (host, ping, added_at)
            print(f"n7 added: {host} checked it {ping['since'] - added_at:.2f} s later")
    wait_prometheus(lab, f'pytcpecho_peer_up{{peer="{lab.key("n7")}"}} == 1',
                    {(a, "n7") for a in lab.members if a != "n7"})
    lab.set_members([h for h in lab.members if h != "n7"])

    def forgotten() -> bool:
        return all(lab.key("n7") not in metrics_text(lab, h) for h in lab.members)
    wait_until("n7's series gone from every node", forgotten, 10)
    for host in lab.members:
        families = {f.name: f for f in text_string_to_metric_families(metrics_text(lab, host))}
        peers = {s.labels.get("peer") for f in families.values() for s in f.samples}
        assert peers - {None} == {lab.key(h) for h in lab.members if h != host}
    wait_prometheus(lab, f'pytcpecho_peer_up{{peer="{lab.key("n7")}"}}', set())
    lab.kill_node("n7")


def metrics_text(lab: MeshLab, host: str) -> str:
    return lab.fetch(f"http://{lab.addresses[host]}:{HTTP_PORT}/metrics").decode()


@pytest.mark.timeout(90)
def test_names_slow_to_resolve_hold_up_no_peer() -> None:
    """A DNS server that never answers (resolv.conf names an address no host has), and
    forty peer names that wait on it, 3 s each, eight at a time: the peer given by its
    address is checked at once all the same, and the node serves on."""
    with netns.lab(["a", "b"]) as plain:
        (NETNS_ETC / plain.ns["a"] / "resolv.conf").write_text(
            "nameserver 198.18.0.250\noptions timeout:3 attempts:1\n")
        plain.start("b", pytcpecho("serve", "--port", "8000", "-q")).wait_for("Server at ")
        slow = [f"--peers=slow{i}.example" for i in range(40)]
        node = plain.start("a", pytcpecho("mesh", *slow, "--peers", plain.addresses["b"],
                                          "--interval", "1", "--port", "8000"))
        node.wait_for("Server at ")
        started = time.monotonic()
        node.wait_for(rf"Peer {re.escape(plain.addresses['b'])}:8000.* -> intact", timeout=15)
        waited = time.monotonic() - started
        print(f"the peer given by address: intact {waited:.1f} s after the node started")
        assert waited < 40 * 3 / 8  # sooner than the slow lookups could all have ended
        assert node.proc.poll() is None


@pytest.mark.timeout(90)
def test_a_dns_server_that_stops_answering_forgets_no_peer(tmp_path: Path) -> None:
    """The peers' name comes from a real DNS server; when it stops answering (lookups fail
    with EAI_AGAIN), the node keeps checking the addresses the name had, and says so."""
    with netns.lab(["a", "b", "dns"]) as plain:
        pause = tmp_path / "pause"
        dns, b = plain.addresses["dns"], plain.addresses["b"]
        plain.start("dns", [sys.executable, "-c", DNS_SERVER, str(pause), dns,
                            f"peers.test={b}"]).wait_for("listening")
        (NETNS_ETC / plain.ns["a"] / "resolv.conf").write_text(
            f"nameserver {dns}\noptions timeout:1 attempts:1\n")
        plain.start("b", pytcpecho("serve", "--port", "8000", "-q")).wait_for("Server at ")
        node = plain.start("a", pytcpecho("mesh", "--peers", "peers.test", "--port", "8000",
                                          "--interval", "0.5", "--resolve-interval", "0.5"))
        node.wait_for(rf"Peer {re.escape(b)}:8000.* -> intact", timeout=20)
        pause.touch()
        node.wait_for(r"Peer peers\.test:8000: does not resolve for now \(.*\); checking its "
                      r"last 1 address", timeout=20)

        def pings_of_b() -> int:
            result = plain.run("a", [sys.executable, "-c", FETCH,
                                     f"http://127.0.0.1:{HTTP_PORT}/metrics", "5"])
            found = re.search(rf'pytcpecho_peer_checks_total\{{check="ping",peer="'
                              rf'{re.escape(b)}:8000",result="intact"\}} (\S+)', result.stdout)
            return int(float(found[1])) if found else 0
        before = pings_of_b()
        wait_until("b still checked while DNS is down", pings_of_b, 15,
                   until=lambda count: count >= before + 3)
        assert not any("left" in line for line in node.lines_so_far()), node.lines
