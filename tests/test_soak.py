"""Issue 4, soak: minutes of mixed traffic, every byte verified, nothing leaks.

Two ``pytcpecho serve`` children (stream mode on the Cython core, message
mode on the pure-Python core) take clients of every size and both client
modes from many threads at once, plus raw clients of random bytes.  Their
threads, fds and RSS are sampled from /proc throughout.  Afterwards the
threads and fds are back at their baseline, and the RSS of the last part of
the soak is not above that of the first part (after warm-up) by more than a
bound: a leak of even a few bytes per connection over thousands of
connections would show.  PYTCPECHO_SOAK_SECONDS sets the length (default 120).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from abusers import LOCALHOST, echo_clients
from support import (
    ProcUsage,
    ServeProcess,
    proc_usage,
    raise_fd_limit,
    require_cython,
    serve_cmd,
    settle,
)

from pytcpecho import EchoClient

SOAK_SECONDS = float(os.environ.get("PYTCPECHO_SOAK_SECONDS", "120"))
CLIENT_THREADS = 8
MESSAGE_SIZE = 65536
RSS_GROWTH_BOUND_KIB = 16 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 120)]


@dataclass
class Served:
    mode: str
    core: str
    proc: ServeProcess
    port: int
    baseline: ProcUsage
    samples: list[tuple[float, ProcUsage]] = field(default_factory=list)

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
                "--max-clients", "64", "--idle-timeout", "30", "--worker-idle", "1", "-q"))
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
    result = client.run()
    tally.add(result.intact and result.received == size * count, result.received,
              f"{served.mode} server, {client_mode} client {size}x{count}: {result.problem}")


def test_soak_mixed_traffic_no_mismatch_no_leak(servers: list[Served]) -> None:
    deadline = time.monotonic() + SOAK_SECONDS
    tally = Tally()
    stop = threading.Event()

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline and not stop.is_set():
            try:
                one_client(rng, rng.choice(servers), tally)
            except Exception as exc:
                tally.add(False, 0, repr(exc))

    def raw_loop() -> None:
        rng = random.Random(99)
        while time.monotonic() < deadline and not stop.is_set():
            served = rng.choice(servers)
            figures = echo_clients(served.port, 20, concurrency=20,
                                   max_size=3 * MESSAGE_SIZE + 1, liars=0.1,
                                   seed=rng.getrandbits(32))
            with tally.lock:
                tally.connections += figures.clients
                tally.bytes_verified += figures.bytes_verified
                tally.mismatches += figures.mismatches + len(figures.failures)
                tally.problems += figures.failures

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True)
               for i in range(CLIENT_THREADS)]
    threads.append(threading.Thread(target=raw_loop, daemon=True))
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

    assert tally.mismatches == 0, tally.problems[:5]
    assert tally.connections > 100
    print(f"\nsoak {SOAK_SECONDS:g} s: {tally.connections} connections, "
          f"{tally.bytes_verified} bytes verified, {tally.mismatches} mismatches")
    for served in servers:
        base = served.baseline
        after = settle(served.proc,
                       lambda u, b=base: u.threads == b.threads and u.fds == b.fds, 30)
        rss = [u.rss_kib for _, u in served.samples]
        assert len(rss) >= 5, f"only {len(rss)} samples"
        fifth = len(rss) // 5
        warm, late = rss[fifth : 2 * fifth], rss[4 * fifth :]
        peak_threads = max(u.threads for _, u in served.samples)
        growth = max(late) - max(warm)
        print(f"[{served.mode}/{served.core}] threads {after.threads} (baseline "
              f"{base.threads}, peak {peak_threads}), fds {after.fds} (baseline {base.fds}); "
              f"RSS KiB: start {base.rss_kib}, 20-40% max {max(warm)}, 80-100% max "
              f"{max(late)}, growth {growth}, after {after.rss_kib}")
        assert peak_threads <= 64 + 2
        assert growth <= RSS_GROWTH_BOUND_KIB, f"RSS grew by {growth} KiB over the soak"
