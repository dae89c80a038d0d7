"""Soak: minutes of mixed traffic, every byte verified, nothing leaks.

Two ``pytcpecho serve`` children (stream mode on the Cython core, message
mode on the pure-Python core) take clients of every size and both client
modes from many threads at once, plus raw clients of random bytes.  Their
threads, fds and RSS are sampled from /proc throughout.

Leaks are measured per connection, between two quiet points: after a
warm-up (the first quarter of the soak) and at the end, each once the
traffic has stopped and the connection threads have exited.  At both points
threads and fds are exactly at their baseline (one fd or thread kept per
connection would show at once).  The Python heap of each child, read with
tracemalloc after a full collection, may grow by at most
TRACED_BYTES_PER_CONNECTION bytes per connection served in between: an
object of any size kept per connection breaks it many times over.  The RSS,
which sees C allocations too, may grow by at most RSS_BYTES_PER_CONNECTION.
The children run with MALLOC_ARENA_MAX=1: with one malloc arena, memory
freed by a connection thread is reused by the next one instead of staying
in the arena of a thread that has exited, and the RSS of a server that
leaks nothing stays within tens of KiB.  PYTCPECHO_SOAK_SECONDS sets the
length (default 120).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from abusers import echo_clients
from support import (
    LOCALHOST,
    ProcUsage,
    ServeProcess,
    proc_usage,
    raise_fd_limit,
    require_cython,
    serve_cmd,
    settle,
    traced_memory,
)

from pytcpecho import EchoClient

SOAK_SECONDS = float(os.environ.get("PYTCPECHO_SOAK_SECONDS", "120"))
CLIENT_THREADS = 8
MESSAGE_SIZE = 65536
WARM_UP = 0.25  # of the soak: caches, free lists and thread stacks reach their size
TRACED_BYTES_PER_CONNECTION = 16
RSS_BYTES_PER_CONNECTION = 128

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 120)]


@dataclass
class Served:
    mode: str
    core: str
    proc: ServeProcess
    port: int
    baseline: ProcUsage
    samples: list[tuple[float, ProcUsage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0  # opened by the clients of this test

    def count(self, n: int) -> None:
        with self.lock:
            self.connections += n

    @property
    def pid(self) -> int:
        return self.proc.proc.pid


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    bytes_verified: int = 0
    mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, ok: bool, nbytes: int, problem: str | None = None) -> None:
        with self.lock:
            self.connections += 1
            self.bytes_verified += nbytes if ok else 0
            if not ok:
                self.mismatches += 1
                self.problems.append(problem or "not intact")


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    require_cython()
    raise_fd_limit()
    started: list[Served] = []
    try:
        for mode, core in (("stream", "cython"), ("message", "python")):
            proc = ServeProcess(cmd=serve_cmd(
                "--port", "0", "--mode", mode, "--core", core, "--size", str(MESSAGE_SIZE),
                "--max-clients", "64", "--idle-timeout", "30", "--worker-idle", "1", "-q",
                trace_memory=True), env={"MALLOC_ARENA_MAX": "1"})
            port = proc.wait_listening()
            # Baseline once the accept loop is up and a first client has come and gone.
            echo_clients(port, 1, concurrency=1, max_size=1000)
            baseline = settle(proc, lambda u: u.threads == 2, 15)
            started.append(Served(mode, core, proc, port, baseline))
        yield started
    finally:
        for served in started:
            served.proc.stop()
            served.proc.__exit__()


def one_client(rng: random.Random, served: Served, tally: Tally) -> None:
    """A random EchoClient: any size against stream; message mode uses whole messages."""
    client_mode = rng.choice(("message", "stream"))
    if served.mode == "message" and client_mode == "message":
        size = MESSAGE_SIZE * rng.randint(1, 8)
    else:
        size = int(2 ** rng.uniform(0, 21))  # 1 B .. 2 MiB, log-uniform
    count = max(1, min(rng.randint(1, 20), (8 << 20) // size))
    client = EchoClient(LOCALHOST, served.port, size=size, count=count, mode=client_mode,
                        timeout=30, seed=rng.getrandbits(32))
    served.count(1)
    result = client.run()
    tally.add(result.intact and result.received == size * count, result.received,
              f"{served.mode} server, {client_mode} client {size}x{count}: {result.problem}")


def run_traffic(servers: list[Served], seconds: float, tally: Tally) -> None:
    """Mixed clients against both servers for ``seconds``, /proc sampled every second."""
    deadline = time.monotonic() + seconds
    stop = threading.Event()

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline and not stop.is_set():
            try:
                one_client(rng, rng.choice(servers), tally)
            except Exception as exc:
                tally.add(False, 0, repr(exc))

    def raw_loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline and not stop.is_set():
            served = rng.choice(servers)
            served.count(20)
            figures = echo_clients(served.port, 20, concurrency=20,
                                   max_size=3 * MESSAGE_SIZE + 1, liars=0.1,
                                   seed=rng.getrandbits(32))
            with tally.lock:
                tally.connections += figures.clients
                tally.bytes_verified += figures.bytes_verified
                tally.mismatches += figures.mismatches + len(figures.failures)
                tally.problems += figures.failures

    seed = int(seconds * 1000)
    threads = [threading.Thread(target=client_loop, args=(seed + i,), daemon=True)
               for i in range(CLIENT_THREADS)]
    threads.append(threading.Thread(target=raw_loop, args=(seed,), daemon=True))
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        while any(t.is_alive() for t in threads):
            for served in servers:
                served.samples.append((time.monotonic() - started, proc_usage(served.pid)))
                assert served.proc.proc.poll() is None, "a server died: " + served.proc.output()
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)


@dataclass(frozen=True)
class Quiet:
    """A server at rest: what it holds, and how many connections it had been sent."""

    usage: ProcUsage
    traced: int
    connections: int


def at_rest(served: Served) -> Quiet:
    """Once every connection thread has exited: threads and fds at the baseline, exactly."""
    base = served.baseline
    usage = settle(served.proc, lambda u: u.threads == base.threads and u.fds == base.fds, 30)
    return Quiet(usage, traced_memory(served.proc), served.connections)


def test_soak_mixed_traffic_no_mismatch_no_leak(servers: list[Served]) -> None:
    tally = Tally()
    run_traffic(servers, SOAK_SECONDS * WARM_UP, tally)
    warm = [at_rest(served) for served in servers]
    run_traffic(servers, SOAK_SECONDS * (1 - WARM_UP), tally)
    end = [at_rest(served) for served in servers]

    assert tally.mismatches == 0, tally.problems[:5]
    assert tally.connections > 100
    print(f"\nsoak {SOAK_SECONDS:g} s: {tally.connections} connections, "
          f"{tally.bytes_verified} bytes verified, {tally.mismatches} mismatches")
    for served, before, after in zip(servers, warm, end, strict=True):
        connections = after.connections - before.connections
        assert connections >= 1000, f"only {connections} connections after the warm-up"
        traced = (after.traced - before.traced) / connections
        rss = (after.usage.rss_kib - before.usage.rss_kib) * 1024 / connections
        peak_threads = max(u.threads for _, u in served.samples)
        print(f"[{served.mode}/{served.core}] {connections} connections after the warm-up; "
              f"threads {after.usage.threads}, fds {after.usage.fds} (baseline "
              f"{served.baseline.threads}, {served.baseline.fds}; peak threads "
              f"{peak_threads}); Python heap {before.traced} -> {after.traced} bytes "
              f"({traced:+.2f} per connection, bound {TRACED_BYTES_PER_CONNECTION}); RSS "
              f"{before.usage.rss_kib} -> {after.usage.rss_kib} KiB ({rss:+.1f} bytes per "
              f"connection, bound {RSS_BYTES_PER_CONNECTION})")
        assert peak_threads <= 64 + 2
        assert traced <= TRACED_BYTES_PER_CONNECTION, \
            f"the Python heap grew by {traced:.1f} bytes per connection"
        assert rss <= RSS_BYTES_PER_CONNECTION, f"RSS grew by {rss:.1f} bytes per connection"
