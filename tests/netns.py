"""A Docker-like bridge network made of real network namespaces: the one lab of the tests.

One namespace holds a bridge; each host has a namespace of its own with
``eth0`` on that bridge, an address in 198.18.0.0/24 (the benchmarking
range, RFC 2544; no other addresses are ever used) and a hosts file in
/etc/netns/NAME/hosts, which ``ip netns exec`` mounts over /etc/hosts, so
hosts reach each other by name.  Every lab is a network of its own, so labs
built at the same time may use the same addresses.  Names carry the test
process's pid and a serial number, and ``close()`` removes everything the
lab made (namespaces, the processes in them, hosts files) even after a
failure.  ``require_lab()`` is the one availability check: where a lab
cannot be built the test is skipped, and with CI=true it fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from support import ServeProcess, require

ROOT = Path(__file__).resolve().parent.parent
NETNS_ETC = Path("/etc/netns")
SUBNET = "198.18.0"
PREFIX_LEN = 24
assert SUBNET.startswith("198.18."), "only 198.18.0.0/15 may be used"

_serial = itertools.count()
L = TypeVar("L", bound="Lab")


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    return None


def require_lab() -> None:
    """Skip a test that needs a lab where none can be built; with CI=true, fail."""
    reason = why_not()
    require(reason, f"CI must run the network-namespace tests: {reason}")


def run(*cmd: str, timeout: float = 20) -> str:
    """Run a command; a failure raises with its stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def package_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment plus ``env``, importing this worktree's package first."""
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), merged.get("PYTHONPATH")) if p)
    return merged


def pytcpecho(*args: str) -> list[str]:
    """``python -m pytcpecho ARGS``, for a lab host (it imports this worktree's package)."""
    return [sys.executable, "-m", "pytcpecho", *args]


class Lab:
    """A bridge and one host per name, each in a namespace of its own.

    Host ``hosts[i]`` gets the address 198.18.0.(i + 1).
    """

    def __init__(self, hosts: Sequence[str]) -> None:
        assert 0 < len(hosts) < 250 and len(set(hosts)) == len(hosts), hosts
        tag = f"pte{os.getpid()}-{next(_serial)}"
        self.bridge_ns = f"{tag}-br"
        self.ns = {host: f"{tag}-h{i}" for i, host in enumerate(hosts)}
        self.addresses = {host: f"{SUBNET}.{i + 1}" for i, host in enumerate(hosts)}
        self._ports = {host: f"v{i}" for i, host in enumerate(hosts)}
        self.made: list[str] = []
        self.etc_dirs: list[Path] = []
        self.processes: list[ServeProcess] = []

    # -- building and removing ---------------------------------------------------

    def build(self) -> Lab:
        hosts_file = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" + "".join(
            f"{address} {host}\n" for host, address in self.addresses.items())
        self._add_ns(self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "set", "lo", "up")
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for host, address in self.addresses.items():
            ns = self._add_host(host, hosts_file)
            port = self.port(host)
            run("ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            self._up(ns, address)
        return self

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.made.append(name)

    def _add_host(self, host: str, hosts_file: str) -> str:
        """``host``'s namespace with its hosts file; its name."""
        ns = self.ns[host]
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=False)
        self.etc_dirs.append(etc)
        (etc / "hosts").write_text(hosts_file)
        self._add_ns(ns)
        return ns

    @staticmethod
    def _up(ns: str, address: str) -> None:
        """``eth0`` of ``ns``, moved there already, up with ``address``; and loopback."""
        run("ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self) -> list[str]:
        """Remove every namespace, process in it and hosts dir made; returns what failed."""
        problems = []
        for proc in self.processes:
            proc.__exit__()
        for ns in reversed(self.made):
            try:
                for pid in run("ip", "netns", "pids", ns).split():
                    os.kill(int(pid), 9)  # only processes this lab started in its namespace
                run("ip", "netns", "del", ns)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"{ns}: {exc}")
        for etc in self.etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
            if etc.exists():
                problems.append(f"{etc} is still there")
        listed = run("ip", "netns", "list").split()
        left = [ns for ns in self.made if ns in listed]
        if left:
            problems.append(f"namespaces left: {left}")
        return problems

    # -- using -------------------------------------------------------------------

    def port(self, host: str) -> str:
        """The bridge-side veth of ``host`` (the cable to cut)."""
        return self._ports[host]

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def start(self, host: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> ServeProcess:
        """A long-running command on ``host``, its output read line by line; ended by
        close() at the latest.  ``env`` goes over ours, with this worktree's package."""
        proc = ServeProcess(cmd=self.argv(host, argv), env=package_env(env))
        self.processes.append(proc)
        return proc

    def popen(self, host: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A command started on ``host``, stdout and stderr piped apart (cwd: the worktree)."""
        return subprocess.Popen(self.argv(host, argv), cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=package_env(env))

    def run(self, host: str, argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command run to completion on ``host`` (cwd: the worktree)."""
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True,
                              timeout=timeout, env=package_env(env), cwd=ROOT)

    def ip(self, host: str | None, *args: str) -> str:
        """``ip ARGS`` in ``host``'s namespace (None: the bridge's)."""
        return run("ip", "-n", self.ns[host] if host else self.bridge_ns, *args)

    def tc(self, host: str, *args: str) -> str:
        return run("ip", "netns", "exec", self.ns[host], "tc", *args)


class RoutedLab(Lab):
    """Two hosts on two subnets and a router between them, each in a namespace:
    ``client`` (198.18.1.2) - router (198.18.1.1, 198.18.2.1) - ``server``
    (198.18.2.2), names in hosts files as in Lab.  For what a bridge cannot show:
    a link with a smaller MTU on the way, where the router must drop what does
    not fit (a bridge lets veth's large segments through whatever its MTU).
    """

    HOSTS = ("client", "server")

    def __init__(self) -> None:
        super().__init__(self.HOSTS)
        self.router_ns = self.bridge_ns.replace("-br", "-rt")
        self.addresses = {"client": "198.18.1.2", "server": "198.18.2.2"}
        self._gateways = {"client": "198.18.1.1", "server": "198.18.2.1"}
        assert all(a.startswith("198.18.") for a in [*self.addresses.values(),
                                                       *self._gateways.values()])

    def build(self) -> RoutedLab:
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{address} {host}\n" for host, address in self.addresses.items())
        self._add_ns(self.router_ns)
        self.ip(None, "link", "set", "lo", "up")
        run("ip", "netns", "exec", self.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for host, address in self.addresses.items():
            ns = self._add_host(host, hosts_file)
            port, gateway = self.port(host), self._gateways[host]
            self.ip(None, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
            self.ip(None, "addr", "add", f"{gateway}/{PREFIX_LEN}", "dev", port)
            self.ip(None, "link", "set", port, "up")
            self._up(ns, address)
            run("ip", "-n", ns, "route", "add", "default", "via", gateway)
        return self

    def ip(self, host: str | None, *args: str) -> str:
        """``ip ARGS`` in ``host``'s namespace (None: the router's)."""
        return run("ip", "-n", self.ns[host] if host else self.router_ns, *args)

    def mtu_blackhole(self, mtu: int) -> None:
        """Make the router's link to the server carry at most ``mtu`` bytes a packet, and
        drop the ICMP 'fragmentation needed' it would send back: a path-MTU blackhole."""
        require(None if shutil.which("nft") else "nftables (nft) is not installed",
                "CI must install nftables for the path-MTU tests")
        rules = ("table inet pmtu_blackhole {\n chain out {\n"
                 "  type filter hook output priority 0;\n"
                 "  icmp type destination-unreachable icmp code frag-needed drop\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", self.router_ns, "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True, timeout=20)
        # Only now: a 'fragmentation needed' let through first would teach the path's MTU.
        self.ip(None, "link", "set", self.port("server"), "mtu", str(mtu))


def routed_lab() -> contextlib.AbstractContextManager[RoutedLab]:
    """A built RoutedLab, as lab() gives a Lab."""
    return _built(RoutedLab)


def lab(hosts: Sequence[str]) -> contextlib.AbstractContextManager[Lab]:
    """A built lab for the test (or the test skipped, or failed in CI, where none can be);
    removed afterwards, completely, or the test fails."""
    return _built(lambda: Lab(hosts))


@contextlib.contextmanager
def _built(make: Callable[[], L]) -> Iterator[L]:
    require_lab()
    built = make()
    try:
        built.build()
        yield built
    finally:
        problems = built.close()
        assert not problems, f"the lab was not fully removed: {problems}"
