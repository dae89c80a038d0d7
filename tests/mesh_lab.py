"""A cluster in network namespaces for ``pytcpecho mesh``: two subnets, a router, faults.

Nodes ``n1``... sit on two subnets, 198.18.1.0/24 and 198.18.2.0/24 (half on
each), each subnet a bridge in one router namespace that routes between them.
Every node's hosts file names every node, and the name ``mesh`` stands for
the nodes that are members, one line each, as a Kubernetes headless Service
resolves to every pod: rewriting the files (in place: ``ip netns exec`` binds
them by inode) adds and removes members.  Spare nodes exist but are not
members until ``set_members`` says so.

Faults are made as they happen in real networks: a path-MTU blackhole (the
router's link into the second subnet carries smaller packets, and the
ICMP "fragmentation needed" it would send is dropped), corruption that TCP's
checksum does not catch (nftables rewrites a byte of the segments arriving at a
node's echo port; veth does not verify checksums again), and random loss
(nftables drops a share of what arrives at a node, or of the UDP datagrams alone
that arrive at its echo port).  Prometheus and Chromium run
in the router's namespace, which reaches every node.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from netns import PREFIX_LEN, Lab, _built, package_env, pytcpecho, run
from support import ServeProcess, require

T = TypeVar("T")
ECHO_PORT = 8000
HTTP_PORT = 9862
PROMETHEUS_PORT = 9090
SUBNETS = ("198.18.1", "198.18.2")
assert all(s.startswith("198.18.") for s in SUBNETS), "only 198.18.0.0/15 may be used"

FETCH = ("import sys, urllib.request\n"
          "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
          "    sys.stdout.buffer.write(r.read())\n")


def need(tool: str, package: str) -> str:
    """The path of ``tool``; skipped where it is missing (with CI=true, failed)."""
    path = shutil.which(tool)
    require(None if path else f"{tool} ({package}) is not installed",
            f"CI must install {package} for the mesh tests")
    assert path is not None
    return path


def wait_until(what: str, probe: Callable[[], T], timeout: float,
               until: Callable[[T], object] = bool, every: float = 0.25) -> T:
    """``probe()``'s first value for which ``until`` holds, asked again every ``every``
    s; fails after ``timeout`` s naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if until(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last seen: {last!r})")
        time.sleep(every)  # polling a condition another process changes, not a fixed wait


class MeshLab(Lab):
    """``count`` nodes, the first half on subnet 1, the rest on subnet 2, plus ``spare``
    nodes on subnet 1 that are not members yet."""

    def __init__(self, count: int = 6, spare: int = 1) -> None:
        names = [f"n{i + 1}" for i in range(count + spare)]
        super().__init__(names)
        self.router_ns = self.bridge_ns.replace("-br", "-rt")
        half = (count + 1) // 2
        self.subnet = {name: 0 if i < half or i >= count else 1 for i, name in enumerate(names)}
        serial = {0: 2, 1: 2}
        for name in names:
            s = self.subnet[name]
            self.addresses[name] = f"{SUBNETS[s]}.{serial[s]}"
            serial[s] += 1
        self.members = names[:count]
        self.spares = names[count:]
        self.nodes: dict[str, ServeProcess] = {}

    # -- building ---------------------------------------------------------------

    def build(self) -> MeshLab:
        self._add_ns(self.router_ns)
        self.ip(None, "link", "set", "lo", "up")
        run("ip", "netns", "exec", self.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for s, prefix in enumerate(SUBNETS):
            bridge = f"br{s}"
            self.ip(None, "link", "add", bridge, "type", "bridge")
            self.ip(None, "addr", "add", f"{prefix}.1/{PREFIX_LEN}", "dev", bridge)
            self.ip(None, "link", "set", bridge, "up")
        for host, address in self.addresses.items():
            ns = self._add_host(host, self._hosts_file())
            port = self.port(host)
            self.ip(None, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
            self.ip(None, "link", "set", port, "master", f"br{self.subnet[host]}", "up")
            self._up(ns, address)
            run("ip", "-n", ns, "route", "add", "default", "via",
                f"{SUBNETS[self.subnet[host]]}.1")
        return self

    def ip(self, host: str | None, *args: str) -> str:
        """``ip ARGS`` in ``host``'s namespace (None: the router's)."""
        return run("ip", "-n", self.ns[host] if host else self.router_ns, *args)

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost"]
        for host, address in self.addresses.items():
            lines.append(f"{address} {host}" + (" mesh" if host in self.members else ""))
        return "\n".join(lines) + "\n"

    def set_members(self, members: Sequence[str]) -> None:
        """Make ``mesh`` resolve to these nodes, on every node, from now on."""
        self.members = list(members)
        text = self._hosts_file()
        for etc in self.etc_dirs:
            with open(etc / "hosts", "w") as hosts:  # in place: the same inode stays bound
                hosts.write(text)

    # -- the mesh ---------------------------------------------------------------

    def key(self, host: str) -> str:
        return f"{self.addresses[host]}:{ECHO_PORT}"

    def start_node(self, host: str, *extra: str) -> ServeProcess:
        """``pytcpecho mesh`` on ``host``, its metrics port answering."""
        argv = pytcpecho("mesh", "--peers", "mesh", "--name", host, "--port", str(ECHO_PORT),
                         "--metrics-port", str(HTTP_PORT), *extra)
        proc = self.start(host, argv)
        self.nodes[host] = proc
        proc.wait_for(r"Server at ", timeout=30)
        return proc

    def kill_node(self, host: str) -> None:
        proc = self.nodes.pop(host)
        proc.proc.kill()
        proc.proc.wait(10)

    def fetch(self, url: str, timeout: float = 10) -> bytes:
        """GET ``url`` from the router's namespace (which reaches every node)."""
        result = subprocess.run(["ip", "netns", "exec", self.router_ns, sys.executable, "-c",
                                 FETCH, url, str(timeout)], capture_output=True,
                                timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"GET {url}: {result.stderr.decode(errors='replace')[-500:]}")
        return result.stdout

    def status(self, host: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.fetch(
            f"http://{self.addresses[host]}:{HTTP_PORT}/status"))
        return data

    def states(self) -> dict[tuple[str, str], str]:
        """(from, to) -> the state ``from`` reports for ``to``, for every running node."""
        by_key = {self.key(h): h for h in self.addresses}
        out = {}
        for host in self.nodes:
            for key, peer in self.status(host)["peers"].items():
                out[(host, by_key.get(key, key))] = peer["state"]
        return out

    def pairs(self, hosts: Sequence[str] | None = None) -> set[tuple[str, str]]:
        hosts = list(self.nodes) if hosts is None else hosts
        return {(a, b) for a in hosts for b in hosts if a != b}

    # -- faults -----------------------------------------------------------------

    def nft(self, host: str | None, rules: str) -> None:
        need("nft", "nftables")
        ns = self.ns[host] if host else self.router_ns
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                       check=True, capture_output=True, timeout=20)

    def _table(self, host: str | None, name: str, hook: str, rule: str, on: bool) -> None:
        """nftables table ``name`` with ``rule`` on ``hook`` in ``host``'s namespace (None:
        the router's), or (``on=False``) that table deleted."""
        if on:
            self.nft(host, f"table inet {name} {{\n chain c {{\n"
                     f"  type filter hook {hook};\n  {rule}\n }}\n}}\n")
        else:
            self.nft(host, f"delete table inet {name}\n")

    def mtu_blackhole(self, on: bool, mtu: int = 1400) -> None:
        """The router's link into subnet 2 carries at most ``mtu`` bytes a packet, and the
        ICMP 'fragmentation needed' it sends is dropped; ``on=False`` mends it."""
        # The ICMP filter comes first and goes last: one 'fragmentation needed' let through
        # in between would teach the sender the path's MTU (for 10 minutes), and its
        # connections would pass.
        if on:
            self._table(None, "pmtu", "output priority 0",
                        "icmp type destination-unreachable icmp code frag-needed drop", on)
        self.ip(None, "link", "set", "br1", "mtu", str(mtu if on else 1500))
        if not on:
            self._table(None, "pmtu", "output priority 0", "", on)

    def corrupt(self, host: str, on: bool) -> None:
        """Rewrite one byte (500 bytes into the TCP header, so only full segments) of what
        arrives at ``host``'s echo port: corruption the checksum does not catch."""
        self._table(host, "corrupt", "prerouting priority -300",
                    f"tcp dport {ECHO_PORT} @th,4000,8 set 0x41", on)

    def lose(self, host: str, percent: int, on: bool = True) -> None:
        """Drop ``percent`` % of the packets arriving at ``host``, at random."""
        self._table(host, "loss", "input priority 0", f"numgen random mod 100 < {percent} drop",
                    on)

    def lose_udp(self, host: str, percent: int, on: bool = True) -> None:
        """Drop ``percent`` % of the UDP datagrams arriving at ``host``'s echo port, at
        random; TCP, and the echoes of ``host``'s own probes, pass."""
        self._table(host, "udploss", "input priority 0",
                    f"meta l4proto udp udp dport {ECHO_PORT} numgen random mod 100 < {percent} "
                    "drop", on)

    # -- Prometheus and the browser ---------------------------------------------

    @contextlib.contextmanager
    def prometheus(self, workdir: Path, every_ms: int = 500) -> Iterator[str]:
        """A real Prometheus in the router's namespace scraping every node; its URL."""
        binary = need("prometheus", "prometheus")
        targets = [f"{address}:{HTTP_PORT}" for address in self.addresses.values()]
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {every_ms}ms\n"
            f"  scrape_timeout: {every_ms}ms\n"
            "scrape_configs:\n"
            "  - job_name: pytcpecho-mesh\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        url = f"http://{SUBNETS[0]}.1:{PROMETHEUS_PORT}"
        proc = self.start(None, [binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address={SUBNETS[0]}.1:{PROMETHEUS_PORT}"])
        try:
            wait_until("Prometheus is ready", lambda: self._ready(url, proc), 60)
            yield url
        finally:
            proc.stop()

    def _ready(self, url: str, proc: ServeProcess) -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited: {proc.output()[-2000:]}")
        try:
            return b"Ready" in self.fetch(f"{url}/-/ready", timeout=2)
        except RuntimeError:
            return False

    def query(self, url: str, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` gives now, from Prometheus's HTTP API."""
        answer = json.loads(self.fetch(f"{url}/api/v1/query?query={quote(promql)}"))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def chromium(self, url: str, *args: str) -> str:
        """Headless Chromium in the router's namespace, given ``args`` (e.g. --dump-dom)
        on ``url``; its standard output."""
        binary = need("chromium", "chromium")
        result = subprocess.run(
            ["ip", "netns", "exec", self.router_ns, binary, "--headless", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--hide-scrollbars", *args, url],
            capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def start(self, host: str | None, argv: Sequence[str],  # type: ignore[override]
              env: dict[str, str] | None = None) -> ServeProcess:
        if host is not None:
            return super().start(host, argv, env)
        proc = ServeProcess(cmd=["ip", "netns", "exec", self.router_ns, *argv],
                            env=package_env(env))
        self.processes.append(proc)
        return proc


def mesh_lab(count: int = 6, spare: int = 1) -> contextlib.AbstractContextManager[MeshLab]:
    """A built MeshLab, removed afterwards (or the test skipped, or failed in CI)."""
    return _built(lambda: MeshLab(count, spare))
