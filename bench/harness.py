"""The bench's moving parts: C references built on demand, servers as processes, loads.

Every server runs in its own process on a port the kernel picks, and every
load is ``pytcpecho bench --json`` (or the C load generator) in another, so
server, load and pytest never share a GIL.  Durations are short unless
PYTCPECHO_BENCH_SECONDS asks for more: the default is the quick mode CI runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = BENCH / "bin"
SERVERS = BENCH / "servers"
SECONDS = float(os.environ.get("PYTCPECHO_BENCH_SECONDS", "0.3"))
FULL = SECONDS >= 2
IDLE_COUNTS = (1000, 10000) if FULL else (100, 300)
STREAM_MIB = 1024 if FULL else 64
C_PROGRAMS = ("echo_thread", "echo_splice", "loadgen", "udp_echo", "udp_loadgen")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT), str(SERVERS), os.environ.get("PYTHONPATH", "")])}

sys.path.insert(0, str(ROOT / "tests"))
import support  # noqa: E402

require = support.require  # the tests' one rule: skip here, fail with CI=true


# -- C references --------------------------------------------------------------------

def build_c() -> bool:
    """Compile bench/c/*.c into bench/bin/ when a C compiler exists; False if none."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    BIN.mkdir(exist_ok=True)
    for name in C_PROGRAMS:
        src, out = BENCH / "c" / f"{name}.c", BIN / name
        newest = max(src.stat().st_mtime, (BENCH / "c" / "common.h").stat().st_mtime)
        if out.exists() and out.stat().st_mtime >= newest:
            continue
        subprocess.run([cc, "-O2", "-pthread", "-Wall", "-o", str(out), str(src)], check=True,
                       timeout=120)
    return True


# -- servers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    """A peer server: how to start it, and which workloads its protocol can serve."""

    name: str
    argv: Callable[[], list[str]]
    native: bool = False  # C: GIL pressure comes from a separate process
    exercise_only: bool = False  # reads 100 KiB, echoes, closes: connect-each only
    only: tuple[str, ...] = ()  # run in these workloads only (all when empty)
    fds_per_idle: int = 1  # fds an idle connection holds in the server

    def runs(self, workload: str) -> bool:
        if self.exercise_only:
            return workload == "connect-each"
        return not self.only or workload in self.only


def _py(script: str, *args: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, str(SERVERS / script), "0", *args]


SERVER_LIST = (
    Server("c-thread", lambda: [str(BIN / "echo_thread"), "0"], native=True),
    Server("c-splice", lambda: [str(BIN / "echo_splice"), "0"], native=True,
           fds_per_idle=3),  # its pipe is made at accept
    Server("pytcpecho-cython", _py("pytcpecho_server.py", "cython")),
    # its per-connection log lines on (no -q), where they cost most: a connection per message
    Server("pytcpecho-cython-logged", _py("pytcpecho_server.py", "cython", "--logged"),
           only=("connect-each",)),
    Server("pytcpecho-splice", _py("pytcpecho_server.py", "splice")),
    Server("pytcpecho-python", _py("pytcpecho_server.py", "python")),
    # serve --workers 2: two processes on one port (SO_REUSEPORT), where it should help
    Server("pytcpecho-workers2", _py("pytcpecho_server.py", "cython", "--workers", "2"),
           only=("connect-each", "1KiB-x10")),
    Server("threading", _py("threading_server.py")),
    Server("asyncio", _py("asyncio_server.py")),
    Server("uvloop", _py("asyncio_server.py", "--uvloop")),
    Server("exercise", _py("exercise.py"), exercise_only=True),
)
SERVER_BY_NAME = {s.name: s for s in SERVER_LIST}

# UDP echo servers: a plain recvfrom/sendto loop in C (one thread), and pytcpecho serve
# --udp (TCP and UDP on one port, the per-source rate limit off: it would throttle a load).
UDP_SERVER_LIST = (
    Server("c-udp", lambda: [str(BIN / "udp_echo"), "0"], native=True),
    Server("pytcpecho-udp", _py("udp_pytcpecho_server.py", "cython")),
)
UDP_SERVER_BY_NAME = {s.name: s for s in UDP_SERVER_LIST}

BURN_CODE = "import time\nend = time.monotonic() + {0}\nwhile time.monotonic() < end: pass\n"


def _parent(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


class ServerProcess:
    """A server in a child process; ``port`` from its 'Server at HOST:PORT' line."""

    def __init__(self, server: Server, burn: bool = False, burn_seconds: float = 600) -> None:
        raise_nofile()  # before the server starts: it inherits the limits
        argv = server.argv()
        if burn and not server.native:
            argv.append("--burn")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=ENV, cwd=ROOT)
        self.burner: subprocess.Popen[str] | None = None
        if burn and server.native:
            self.burner = subprocess.Popen([sys.executable, "-c", BURN_CODE.format(burn_seconds)],
                                           text=True)
        self.lines: list[str] = []
        self._port: list[int] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30) or not self._port:
            self.close()
            raise RuntimeError(f"{server.name} did not start: {self.lines[-5:]}")
        self.port = self._port[0]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keep reading: a chatty server must never block
            if not self._ready.is_set():
                self.lines.append(line.rstrip())
                if m := re.search(r"Server at .*:(\d+)", line):
                    self._port.append(int(m.group(1)))
                    self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far (all its threads, and the
        worker processes of serve --workers)."""
        pids = [self.pid] + [int(p.name) for p in Path("/proc").iterdir()
                             if p.name.isdigit() and _parent(p) == self.pid]
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def open_sockets(self) -> int:
        """Sockets among the open fds (a splice server also holds two pipe fds per
        connection: sockets count the connections)."""
        fd_dir = f"/proc/{self.pid}/fd"
        count = 0
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):  # closed meanwhile
                count += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
        return count

    def close(self) -> None:
        for proc in (self.burner, self.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


@contextlib.contextmanager
def running(server: Server, burn: bool = False) -> Iterator[ServerProcess]:
    proc = ServerProcess(server, burn, burn_seconds=SECONDS * 4 + 60)
    try:
        yield proc
    finally:
        proc.close()


# -- loads ---------------------------------------------------------------------------

def pytcpecho_bench(port: int, args: list[str], timeout: float = 300) -> dict[str, Any]:
    """``pytcpecho bench --json`` in its own process; its JSON document, plus the status."""
    result = subprocess.run([sys.executable, "-m", "pytcpecho", "bench", f"127.0.0.1:{port}",
                             "--json", *args], capture_output=True, text=True, env=ENV,
                            timeout=timeout, cwd=ROOT)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"bench exited {result.returncode}: {result.stderr.strip()}")
    doc: dict[str, Any] = json.loads(result.stdout)
    doc["status"] = result.returncode
    return doc


def c_loadgen(port: int, size: int, connections: int, seconds: float,
              each: bool = False) -> dict[str, Any]:
    """The C reference load generator: it counts messages and errors (a connection that
    fails, or an echo that ends short), but never looks at the bytes, so its figures carry
    no integrity claim (no ``integrity_failures``)."""
    argv = [str(BIN / "loadgen"), str(port), str(size), str(connections), str(seconds)]
    result = subprocess.run(argv + (["each"] if each else []), capture_output=True, text=True,
                            timeout=seconds + 60)
    try:
        fields = dict(kv.split("=") for kv in result.stdout.split())
        return {"messages": int(fields["messages"]), "duration_s": float(fields["seconds"]),
                "messages_per_s": float(fields["messages_per_s"]),
                "mib_per_s": float(fields["mib_per_s"]), "errors": int(fields["errors"]),
                "status": result.returncode}
    except (KeyError, ValueError):
        raise RuntimeError(f"loadgen exited {result.returncode}: {result.stdout.strip()} "
                           f"{result.stderr.strip()}") from None


def pytcpecho_udp_bench(port: int, args: list[str], timeout: float = 300) -> dict[str, Any]:
    """``pytcpecho bench --udp --json`` in its own process; its JSON document, plus the
    status (1 is a run that finished with loss or damage: the document says which)."""
    result = subprocess.run([sys.executable, "-m", "pytcpecho", "bench", "--udp",
                             f"127.0.0.1:{port}", "--json", *args], capture_output=True,
                            text=True, env=ENV, timeout=timeout, cwd=ROOT)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"bench --udp exited {result.returncode}: {result.stderr.strip()}")
    doc: dict[str, Any] = json.loads(result.stdout)
    doc["status"] = result.returncode
    return doc


def c_udp_loadgen(port: int, size: int, sockets: int, seconds: float,
                  rate: float = 0) -> dict[str, Any]:
    """The C UDP load generator (bench/c/udp_loadgen.c): request/response with ``rate``
    0, else an open loop at ``rate`` datagrams per second in all, sent with sendmmsg in
    batches as they fall due.  Its JSON line, plus the status; it counts sent, received,
    lost, duplicate and wrong-length echoes by sequence number, but never looks at the
    payload, so its figures carry no integrity claim (no ``corrupted``)."""
    argv = [str(BIN / "udp_loadgen"), str(port), "-s", str(size), "-c", str(sockets),
            "-t", f"{seconds:g}"]
    argv += ["--rate", f"{rate:g}"] if rate else ["--rr"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        raise RuntimeError(f"udp_loadgen exited {result.returncode}: {result.stdout.strip()} "
                           f"{result.stderr.strip()}") from None
    doc["status"] = result.returncode
    return doc


NOFILE_WANTED = 1 << 17  # 10,000 connections of a splice server hold 30,000 fds, plus the load's


def raise_nofile() -> None:
    """Room for the largest entry's fds, in this process and the servers it starts: the
    hard limit raised where we may (root), the soft one up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < NOFILE_WANTED:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
            return
        except (ValueError, OSError):  # not root: make do with the hard limit
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def hold_idle(proc: ServerProcess, count: int, timeout: float = 120) -> dict[str, Any]:
    """Open ``count`` idle connections; the server's RSS once it holds them all.

    Then one byte goes out on up to ECHO_SAMPLE of them, spread over all, and must
    come back on each (every idle server here is a stream echo server): ``errors``
    counts those that did not echo it, ``alive`` says whether the server was still
    running at the end.  A sample, not all: a splice server's echoing connection
    holds a pipe (two more fds), and 10,000 of them would need 30,000 fds where the
    hard limit may be lower than that (20,000 here).
    """
    raise_nofile()
    base_sockets = proc.open_sockets()
    base_rss = proc.rss_mib()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", proc.port), timeout=30))
        deadline = time.monotonic() + timeout
        while proc.open_sockets() < base_sockets + count:
            if time.monotonic() > deadline or proc.proc.poll() is not None:
                raise RuntimeError(f"server holds {proc.open_sockets() - base_sockets} of "
                                   f"{count}")
            time.sleep(0.05)  # polling the server's /proc: no event to wait on
        # Threads may still be starting: settle on a stable RSS (bounded).
        rss = proc.rss_mib()
        for _ in range(40):
            time.sleep(0.05)
            now = proc.rss_mib()
            if abs(now - rss) < 0.5:
                break
            rss = now
        held = proc.open_sockets() - base_sockets
        step = max(1, len(socks) // ECHO_SAMPLE)
        errors = sum(not _echoes_a_byte(s) for s in socks[::step])
        return {"connections": count, "held": held, "rss_mib": round(rss, 1),
                "rss_idle_mib": round(base_rss, 1),
                "kib_per_connection": round((rss - base_rss) * 1024 / count, 2),
                "errors": errors, "alive": proc.proc.poll() is None}
    finally:
        for s in socks:
            s.close()


ECHO_SAMPLE = 1000


def idle_fd_budget(fds_per_connection: int) -> int:
    """Idle connections a server can hold within the fd limit (with room for its own)."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (limit - 256) // fds_per_connection


def _echoes_a_byte(sock: socket.socket) -> bool:
    """Whether an idle connection still echoes: one byte out, the same byte back."""
    try:
        sock.settimeout(5)
        sock.sendall(b"!")
        return sock.recv(1) == b"!"
    except OSError:
        return False
