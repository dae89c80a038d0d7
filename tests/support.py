"""Helpers shared by the tests: real servers, real processes, no sleeps."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pytcpecho import EchoServer
from pytcpecho import core as cores

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LOCALHOST = "127.0.0.1"


@contextlib.contextmanager
def running_server(host: str = LOCALHOST, port: int = 0, **options: Any) -> Iterator[EchoServer]:
    """An EchoServer serving in a thread; closed, and its thread joined, on exit."""
    server = EchoServer((host, port), **options)
    thread = threading.Thread(target=server.serve_forever, name="test-server")
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(10)
        assert not thread.is_alive(), "serve_forever did not return after close()"


def require(missing: str | None, in_ci: str | None = None) -> None:
    """Skip a test that cannot run here (``missing`` says why); with CI=true fail
    instead, with ``in_ci`` as the reason: in CI nothing that matters may be skipped."""
    if missing:
        if CI:
            pytest.fail(in_ci or f"CI must run this: {missing}")
        pytest.skip(missing)


def require_cython() -> None:
    """The Cython core must be built for this test; CI always has it."""
    require(None if cores.cython_available() else "the Cython core is not built here",
            "the Cython core did not build, and CI must test it")


def require_splice() -> None:
    """The splice core must be available for this test (Linux, and built); CI has it."""
    require(None if cores.splice_available() else "the splice core is not available here",
            "the splice core is not available, and CI must test it")


def ipv6_loopback() -> str | None:
    """Why this host cannot serve on ::1, or None if it can."""
    if not socket.has_ipv6:
        return "this Python has no IPv6 support"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"this host has no IPv6 loopback (::1): {exc}"
    return None


def require_ipv6(dual_stack: bool = False) -> None:
    """An IPv6 loopback (and, with ``dual_stack``, sockets that take IPv4 too); CI has both."""
    reason = ipv6_loopback()
    if reason is None and dual_stack and not socket.has_dualstack_ipv6():
        reason = "this host has no dual-stack (IPv4 and IPv6) sockets"
    require(reason, f"CI must test IPv6: {reason}")


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pytcpecho ARGS`` to completion (bytes that are not UTF-8, as an
    argument that is not may be echoed, read as backslash escapes)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytcpecho", *args], capture_output=True,
                          text=True, errors="backslashreplace", timeout=timeout, env=full_env,
                          input=input.decode() if input else None)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The CLI's contract for bad input: one clear line on stderr, no traceback."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in lines[0]
    return lines[0]


class ServeProcess:
    """``pytcpecho serve`` (or any command) in a child process, its output read as it comes."""

    def __init__(self, *args: str, cmd: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        argv = cmd or [sys.executable, "-m", "pytcpecho", "serve", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """The first new output line matching ``pattern``; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.lines}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process exited before {pattern!r}: {self.lines}")
            self.lines.append(line)
            if m := regex.search(line):
                return m

    def lines_so_far(self) -> list[str]:
        """Every line printed so far, without waiting."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if line is None:
                self._queue.put(None)  # keep the end mark for wait_for()
                return self.lines
            self.lines.append(line)

    def wait_listening(self, timeout: float = 15) -> int:
        """The port from the 'Server at HOST:PORT' line."""
        return int(self.wait_for(r"Server at .*:(\d+)", timeout).group(1))

    def output(self) -> str:
        """All output, after the process has exited."""
        self._reader.join(10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def unused_port() -> int:
    """A port nothing listens on (bound and released: good for a refusal, or for a
    process to take next)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def connect(port: int, host: str = LOCALHOST, timeout: float = 10) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# -- process resources (leak checks) ---------------------------------------------

@dataclass(frozen=True)
class ProcUsage:
    """What a process holds now, read from /proc: threads, open fds, resident memory."""

    threads: int
    fds: int
    rss_kib: int


def proc_usage(pid: int) -> ProcUsage:
    """Threads (status Threads:), open fds (ls fd/) and VmRSS of process ``pid``."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return ProcUsage(threads=int(fields["Threads"]), fds=len(os.listdir(f"/proc/{pid}/fd")),
                     rss_kib=int(fields["VmRSS"].split()[0]))


def wait_usage(pid: int, predicate: Callable[[ProcUsage], bool], timeout: float,
               every: float = 0.05) -> ProcUsage:
    """Re-read /proc until ``predicate(usage)`` holds; fail after ``timeout`` with the last one."""
    deadline = time.monotonic() + timeout
    usage = proc_usage(pid)
    while not predicate(usage):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not reach the expected state in "
                                 f"{timeout} s: {usage}")
        time.sleep(every)
        usage = proc_usage(pid)
    return usage


def raise_fd_limit(want: int = 16384) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it) toward ``want``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


TRACE_MEMORY = """
import gc, tracemalloc
tracemalloc.start()

def report_traced(signum, frame):
    gc.collect()
    print(f"traced-memory {tracemalloc.get_traced_memory()[0]}", flush=True)

signal.signal(signal.SIGUSR2, report_traced)
"""


def serve_cmd(*args: str, trace_memory: bool = False) -> list[str]:
    """``pytcpecho serve ARGS`` that prints every thread's stack on SIGUSR1 (for diagnosis);
    with ``trace_memory``, it runs under tracemalloc and answers SIGUSR2 with the bytes
    the Python heap holds (see traced_memory())."""
    boot = ("import faulthandler, signal, sys\n"
            "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
            + (TRACE_MEMORY if trace_memory else "")
            + "from pytcpecho.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", boot, "serve", *args]


def traced_memory(server: ServeProcess, timeout: float = 15) -> int:
    """Bytes allocated by Python in a ``serve_cmd(trace_memory=True)`` child, after a full
    garbage collection: a Python-level leak grows it by exactly what is leaked."""
    server.proc.send_signal(signal.SIGUSR2)
    return int(server.wait_for(r"^traced-memory (\d+)$", timeout).group(1))


def thread_dump(server: ServeProcess, wait: float = 2.0) -> str:
    """Every thread's stack in a serve_cmd() child, as it prints them."""
    before = len(server.lines_so_far())
    server.proc.send_signal(signal.SIGUSR1)
    with contextlib.suppress(AssertionError):
        server.wait_for(r"^$|File ", wait)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "\n".join(server.lines_so_far()[before:])


def settle(server: ServeProcess, predicate: Callable[[ProcUsage], bool],
           timeout: float) -> ProcUsage:
    """wait_usage() on a serve_cmd() child; on failure the message carries its thread stacks."""
    try:
        return wait_usage(server.proc.pid, predicate, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{thread_dump(server)}") from None
