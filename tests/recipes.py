"""What the container files say, read as written, and a place to run it: network namespaces.

``dockerfile()`` parses the Dockerfile's final stage (ENV, ENTRYPOINT, CMD,
HEALTHCHECK, ...) so the tests run exactly the commands an image would run.
``Network`` is a Docker-like bridge network made of real network namespaces:
one namespace per service, each with its own address in 198.18.0.0/15 and an
/etc/hosts (through /etc/netns/NAME/hosts) that names every service.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
HAS_IP = shutil.which("ip") is not None


# -- the Dockerfile -------------------------------------------------------------

@dataclass
class Stage:
    """One FROM ... stage, its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV in the legacy 'KEY VALUE' form: {rest!r}"
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD as written: must be the JSON exec form."""
        text = self.last(keyword)
        assert text is not None, f"no {keyword}"
        argv = json.loads(text)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), text
        return argv

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as interval and timeout, the command in exec form)."""
        text = self.last("HEALTHCHECK")
        assert text is not None, "no HEALTHCHECK"
        options: dict[str, str] = {}
        while m := re.match(r"--([a-z-]+)=(\S+)\s+", text):
            options[m[1]] = m[2]
            text = text[m.end():]
        keyword, _, command = text.partition(" ")
        assert keyword == "CMD", text
        return options, json.loads(command)


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def tool(name: str) -> str | None:
    """A console script installed with this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def local_command(argv: list[str]) -> list[str]:
    """An image's command for this machine: ``pytcpecho`` if installed, else python -m."""
    if argv and argv[0] == "pytcpecho":
        script = tool("pytcpecho")
        return [script, *argv[1:]] if script else [sys.executable, "-m", "pytcpecho", *argv[1:]]
    return argv


def local_env(image_env: dict[str, str]) -> dict[str, str]:
    """The image's environment over ours, importing this checkout's package first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTCPECHO_")}
    env.update(image_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


# -- network namespaces ---------------------------------------------------------

_serial = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


class Network:
    """A bridge network with one namespace per host, like ``docker network create``."""

    def __init__(self, hosts: list[str]) -> None:
        self.tag = f"{os.getpid() % 10000}{next(_serial)}{random.randrange(100)}"
        self.subnet = f"198.18.{random.randrange(1, 255)}"
        self.hub = f"pte{self.tag}hub"
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.processes: list[ServeProcess] = []
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    def _build(self, hosts: list[str]) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, name in enumerate(hosts):
            self.addresses[name] = f"{self.subnet}.{i + 2}"
        for i, name in enumerate(hosts):
            ns = f"pte{self.tag}h{i}"
            self.namespaces[name] = ns
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(
                "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                + "".join(f"{addr} {host}\n" for host, addr in self.addresses.items()))
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            port = f"pv{self.tag}{i}"[:15]
            _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host], *argv]

    def start(self, host: str, argv: list[str], env: dict[str, str]) -> ServeProcess:
        """A long-running command on ``host``, its output read line by line."""
        proc = ServeProcess(cmd=self.argv(host, argv), env=env)
        self.processes.append(proc)
        return proc

    def run(self, host: str, argv: list[str], env: dict[str, str],
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)

    def close(self) -> None:
        for proc in self.processes:
            proc.__exit__()
        for ns in [*self.namespaces.values(), self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
