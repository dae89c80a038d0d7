"""Abuse: clients that reset, stall, never read, flood or send garbage.

One ``pytcpecho serve`` child per (mode, core) takes every case in turn while
a well-behaved client keeps one connection exchanging verified messages.
After each case the server must be alive, that client intact and still
moving, and the child's threads and fds (read from /proc) back at their
baseline.  Idle worker threads are not excused: the child runs with
``--worker-idle 0.5``, so a thread left over is a leak.  When the child
stops, the connections it counts must be exactly those the cases opened.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from abusers import (
    Figures,
    SteadyClient,
    echo_clients,
    nonreading_clients,
    reset_clients,
    silent_clients,
)
from support import (
    ProcUsage,
    ServeProcess,
    proc_usage,
    raise_fd_limit,
    require_cython,
    serve_cmd,
    settle,
    wait_usage,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MAX_CLIENTS = 512  # room for the 500 silent clients at once: reaped in one idle period
FLOOD_MAX_CLIENTS = 16  # the flood's own server: 2,000 clients, 1,000 at once, against 16
IDLE = 10.0  # short for quick reaping, long enough for a client starved of CPU
WORKER_IDLE = 0.5
SIZE = 16384  # the server's message size (message mode); the steady client's too
SETTLE = IDLE + WORKER_IDLE + 20  # bound on the return to baseline after a case
MODES_AND_CORES = [("stream", "cython"), ("message", "python")]
IDS = ["stream-cython", "message-python"]


class PeakThreads:
    """Samples the child's thread count every few ms: the peak must stay within the limit.

    A sampler that could not read /proc would leave the peak unwatched from then on:
    ``checked()`` fails the test if that happened.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self._peak = max(self._peak, proc_usage(self.pid).threads)
            except (OSError, KeyError, ValueError) as exc:
                self.error = exc
                return
            self.samples += 1

    @property
    def peak(self) -> int:
        """The highest thread count seen; fails if sampling stopped early."""
        assert self.error is None, f"the thread sampler stopped: {self.error!r}"
        assert self._thread.is_alive() or self._stop.is_set(), "the thread sampler died"
        assert self.samples > 0, "no thread count sampled yet"
        return self._peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Target:
    proc: ServeProcess
    port: int
    mode: str
    core: str
    max_clients: int
    steady: SteadyClient
    baseline: ProcUsage
    peak: PeakThreads
    connections: int = 1  # opened by the cases and served to the end; the steady client's

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def wait_lines(self, pattern: str, n: int, timeout: float) -> None:
        """Wait for n more output lines matching ``pattern``."""
        deadline = time.monotonic() + timeout
        for _ in range(n):
            self.proc.wait_for(pattern, max(0.1, deadline - time.monotonic()))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.proc.lines_so_far() if regex.search(line))


def need_core(core: str) -> None:
    if core == "cython":
        require_cython()


@contextlib.contextmanager
def serving(mode: str, core: str, max_clients: int) -> Iterator[Target]:
    """A serve child with a steady client on it; at the end, both checked."""
    need_core(core)
    raise_fd_limit()  # 2,000 sockets here, as many in the child (it inherits the limit)
    cmd = serve_cmd("--port", "0", "--mode", mode, "--size", str(SIZE), "--core", core,
                    "--max-clients", str(max_clients), "--idle-timeout", str(IDLE),
                    "--worker-idle", str(WORKER_IDLE), "-q")
    with ServeProcess(cmd=cmd) as proc:
        port = proc.wait_listening()
        steady = SteadyClient(port, SIZE)
        # Baseline: main thread, accept thread, the steady client's worker.
        baseline = settle(proc, lambda u: u.threads == 3, 15)
        peak = PeakThreads(proc.proc.pid)
        target = Target(proc, port, mode, core, max_clients, steady, baseline, peak)
        try:
            yield target
        finally:
            peak.stop()
            steady.stop()
            status = proc.stop()
        assert steady.problem() is None, (steady.problem(), proc.output()[-3000:])
        assert status == 0, proc.output()
        summary = proc.output().splitlines()[-1]
        # Every client the cases opened was accepted and counted, even those that reset
        # before the server got to them.
        assert re.match(rf"Served {target.connections} connections?, echoed \d+ bytes",
                        summary), (summary, target.connections)
        print(f"\n[{mode}/{core}, --max-clients {max_clients}] steady client: "
              f"{steady.messages} messages intact; peak threads {peak.peak}; {summary}")


@pytest.fixture(scope="module", params=MODES_AND_CORES, ids=IDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    mode, core = request.param
    with serving(mode, core, MAX_CLIENTS) as target:
        yield target


def after_case(target: Target, name: str, figures: Figures, moved_from: int) -> None:
    """The checks every case ends with; prints the figures for the report."""
    target.connections += figures.clients
    assert not figures.failures, (figures.failures[:5], target.proc.lines_so_far()[-20:])
    assert figures.mismatches == 0, figures
    assert target.proc.proc.poll() is None, "the server died: " + target.proc.output()
    assert target.steady.problem() is None, (target.steady.problem(),
                                             target.proc.lines_so_far()[-20:])
    # The steady client kept moving through the case and after it.
    wait_usage(target.pid, lambda u: target.steady.messages > moved_from + 10, 30)
    assert target.peak.peak <= target.max_clients + 2, f"{target.peak.peak} threads"
    base = target.baseline
    after = settle(target.proc, lambda u: u.threads == base.threads and u.fds == base.fds,
                   SETTLE)
    print(f"\n[{target.mode}/{target.core}] {name}: {figures}; threads {after.threads} "
          f"(baseline {base.threads}), fds {after.fds} (baseline {base.fds}), "
          f"leaked 0/0; peak threads {target.peak.peak}")


def test_thousand_connect_and_reset(target: Target) -> None:
    moved = target.steady.messages
    figures = reset_clients(target.port, 1000)  # each one opened, or it raised
    after_case(target, "1000 connect-and-reset", figures, moved)


def test_five_hundred_silent_clients_are_reaped(target: Target) -> None:
    moved = target.steady.messages
    before = target.count(r"idle for 10 s")
    figures = silent_clients(target.port, 500, timeout=IDLE + 60)
    assert figures.clients == 500, figures
    after_case(target, "500 silent clients", figures, moved)
    assert target.count(r"Closed connection from .*: idle for 10 s") - before >= 500


def test_two_hundred_clients_that_never_read(target: Target) -> None:
    moved = target.steady.messages
    target.proc.lines_so_far()  # wait_lines counts from here

    def reaped() -> None:
        target.wait_lines(r"Closed connection from .*: idle for 10 s", 200, IDLE + 60)

    figures = nonreading_clients(target.port, 200, cap=8 << 20, reaped=reaped, timeout=60)
    assert figures.clients == 200, figures
    after_case(target, "200 never-reading clients", figures, moved)


@pytest.mark.parametrize(("mode", "core"), MODES_AND_CORES, ids=IDS)
def test_flood_far_beyond_max_clients(mode: str, core: str) -> None:
    """2,000 clients, 1,000 at once, against --max-clients 16: all served, in turn."""
    with serving(mode, core, FLOOD_MAX_CLIENTS) as flooded:
        moved = flooded.steady.messages
        figures = echo_clients(flooded.port, 2000, concurrency=1000, max_size=8192, seed=2)
        assert figures.clients == 2000, (figures.failures[:3],
                                         flooded.proc.lines_so_far()[-20:])
        after_case(flooded, f"flood of 2000 (1000 at once) against --max-clients "
                   f"{FLOOD_MAX_CLIENTS}", figures, moved)
        assert flooded.count(r"At the limit of 16 clients: not accepting") >= 1


def test_random_bytes_and_sizes(target: Target) -> None:
    moved = target.steady.messages
    figures = echo_clients(target.port, 300, concurrency=50, max_size=3 * SIZE + 17,
                           liars=0.25, seed=3)
    assert figures.clients == 300, (figures.failures[:3], target.proc.lines_so_far()[-20:])
    assert figures.bytes_verified > 0
    after_case(target, "300 random-size clients (1/4 reset mid-send)", figures, moved)


def test_fresh_client_after_abuse(target: Target) -> None:
    """After everything, new clients are served (nothing is stuck)."""
    moved = target.steady.messages
    figures = echo_clients(target.port, 20, concurrency=20, max_size=SIZE * 4, seed=4)
    assert figures.clients == 20 and figures.bytes_verified > 0
    after_case(target, "20 fresh clients after the abuse", figures, moved)
