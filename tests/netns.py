"""The seed's Docker network, rebuilt from network namespaces (issue 4).

One namespace holds a bridge; each host (a server, two clients) has its own
namespace with ``eth0`` on that bridge, an address in 198.18.0.0/24 (the
benchmarking range, RFC 2544; no other addresses are ever used) and a hosts
file in /etc/netns/NAME/hosts, which ``ip netns exec`` mounts over
/etc/hosts, so the clients reach the server by name as the seed's did.
Names carry the test process's pid, and ``close()`` removes everything it
made even after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import CI, ServeProcess

ROOT = Path(__file__).resolve().parent.parent
NETNS_ETC = Path("/etc/netns")
PREFIX_LEN = 24
SERVER = "z34_server2"  # the seed's server hostname
HOSTS = {SERVER: "198.18.0.1", "z34_client1": "198.18.0.2", "z34_client2": "198.18.0.3"}
for _address in HOSTS.values():
    assert _address.startswith("198.18."), "only 198.18.0.0/15 may be used"


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


def run(*cmd: str, timeout: float = 20) -> str:
    """Run a command; a failure raises with its stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


class Lab:
    """A bridge and three hosts, each in a namespace of its own."""

    def __init__(self) -> None:
        tag = f"pte{os.getpid()}"
        self.bridge_ns = f"{tag}-br"
        self.ns = {host: f"{tag}-{host.split('_')[-1]}" for host in HOSTS}
        self.made: list[str] = []
        self.etc_dirs: list[Path] = []

    # -- building and removing ---------------------------------------------------

    def build(self) -> Lab:
        hosts_file = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{address} {host}\n" for host, address in HOSTS.items())
        self._add_ns(self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for host, address in HOSTS.items():
            ns = self.ns[host]
            self._add_ns(ns)
            port = self.port(host)
            run("ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=False)
            self.etc_dirs.append(etc)
            (etc / "hosts").write_text(hosts_file)
        return self

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.made.append(name)

    def close(self) -> list[str]:
        """Remove every namespace, process in it and hosts dir made; returns what failed."""
        problems = []
        for ns in reversed(self.made):
            try:
                pids = run("ip", "netns", "pids", ns).split()
                for pid in pids:  # only processes this test started in its own namespace
                    os.kill(int(pid), 9)
                run("ip", "netns", "del", ns)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"{ns}: {exc}")
        for etc in self.etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
            if etc.exists():
                problems.append(f"{etc} is still there")
        left = [ns for ns in self.made if ns in run("ip", "netns", "list")]
        if left:
            problems.append(f"namespaces left: {left}")
        return problems

    # -- using -------------------------------------------------------------------

    def port(self, host: str) -> str:
        """The bridge-side veth of ``host`` (the cable to cut)."""
        return f"v-{host.split('_')[-1]}"

    def command(self, host: str, *args: str) -> list[str]:
        """``python -m pytcpecho ARGS`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns[host], sys.executable, "-m", "pytcpecho", *args]

    def serve(self, *args: str) -> ServeProcess:
        """``pytcpecho serve`` on the server host, port 8000; this worktree's package."""
        return ServeProcess(cmd=self.command(SERVER, "serve", "--port", "8000", *args),
                            env={"PYTHONPATH": str(ROOT)})

    def client(self, host: str, *args: str) -> subprocess.Popen[str]:
        """``pytcpecho client ARGS`` started on ``host`` (cwd: the worktree)."""
        return subprocess.Popen(self.command(host, "client", *args), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def ip(self, host: str | None, *args: str) -> str:
        """``ip ARGS`` in ``host``'s namespace (None: the bridge's)."""
        return run("ip", "-n", self.ns[host] if host else self.bridge_ns, *args)

    def tc(self, host: str, *args: str) -> str:
        return run("ip", "netns", "exec", self.ns[host], "tc", *args)


__all__ = ["CI", "HOSTS", "SERVER", "Lab", "why_not"]
