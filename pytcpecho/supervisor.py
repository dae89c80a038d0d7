"""``serve --workers N``: N server processes on one port, kept alive and stopped together.

Every worker runs the serve process of ``pytcpecho.serving`` (the same code,
the same graceful stop as one ``serve``) listening with SO_REUSEPORT, so the
kernel spreads new connections over them and no GIL is shared.  The supervisor
holds the port (bound, never listening, so it gets no connections) for the
workers to rebind after a restart, forwards SIGTERM/SIGINT, starts a new worker
when one dies, and sums the counters the workers send back on exit over a
pipe.  A worker also dies with its supervisor (PR_SET_PDEATHSIG), so none is
ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from . import logs
from .constants import WORKERS_PER_CPU
from .server import ServerStats, serving_core
from .serving import COUNTERS, PROG, Companion, ServeOptions, log_summary
from .serving import run as serve
from .sockets import listen_address
from .status import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from .units import format_hostport, plural

log = logging.getLogger("pytcpecho.supervisor")

def max_workers() -> tuple[int, int]:
    """(the most workers ``serve --workers`` runs, the CPUs this process may run on)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return WORKERS_PER_CPU * cpus, cpus


REPORT_EVERY = 1.0
"""Seconds between two reports of a worker's counters, where the supervisor serves metrics."""
STOP_MARGIN = 5.0  # seconds past --grace before a worker that has not stopped is killed
QUICK_DEATH = 1.0  # a worker that dies younger than this is restarted after a pause
_PR_SET_PDEATHSIG = 1


@dataclass
class Worker:
    """One server process and the pipe its counters come back on: every REPORT_EVERY
    seconds while it serves (where metrics are on), and once more as it exits."""

    index: int
    proc: subprocess.Popen[bytes]
    stats_fd: int
    started: float = field(default_factory=time.monotonic)
    latest: dict[str, int] | None = None
    _partial: bytes = b""

    def read_reports(self) -> None:
        """Take what the worker has written so far (the pipe is non-blocking)."""
        data = b""
        with contextlib.suppress(OSError):  # EAGAIN: nothing more for now
            while chunk := os.read(self.stats_fd, 65536):
                data += chunk
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in reversed(lines):
            report = _parse_report(line)
            if report is not None:
                self.latest = report
                return

    def counters(self) -> dict[str, int] | None:
        """What the worker reported last, on a clean exit; None if it died without it."""
        self.read_reports()
        os.close(self.stats_fd)
        if self.latest is None or not self.latest.get("final"):
            return None
        return {key: self.latest[key] for key in COUNTERS}


def _parse_report(line: bytes) -> dict[str, int] | None:
    try:
        report = json.loads(line.decode())
        return {key: int(report[key]) for key in (*COUNTERS, "active", "final")}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) where the workers will listen: resolves port 0, holds the port."""
    family, address, dualstack = listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if dualstack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


class Supervisor:
    """Runs ``count`` workers with the serve ``options`` until SIGTERM/SIGINT."""

    def __init__(self, options: ServeOptions, count: int,
                 companion: Companion | None = None) -> None:
        self.options = options
        self.count = count
        self.companion = companion
        self._report_every = REPORT_EVERY if companion is not None else 0.0
        self.workers: dict[int, Worker] = {}
        self.totals = dict.fromkeys(COUNTERS, 0)
        self.lost = 0  # workers whose counters died with them
        self.restarts = 0
        self._signal: int | None = None
        self._fatal: int | None = None
        self._restart_at: dict[int, float] = {}
        self._lock = threading.Lock()  # the workers' reports, read by the metrics thread

    # -- starting -------------------------------------------------------------

    def _spec(self, port: int) -> str:
        """The worker's options: this serve's, on the held port, sharing it."""
        return dataclasses.replace(self.options, port=port, reuse_port=True).to_json()

    def _spawn(self, index: int, spec: str) -> None:
        read_fd, write_fd = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            os.set_blocking(read_fd, False)
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytcpecho.supervisor", spec, str(index),
                 str(os.getpid()), str(write_fd), str(self._report_every)],
                pass_fds=(write_fd,), env=env,
                start_new_session=True)  # a terminal's Ctrl-C reaches us only; we forward it
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.workers[index] = Worker(index, proc, read_fd)
        log.info("Worker %d started (pid %d)", index, proc.pid)

    # -- running --------------------------------------------------------------

    def run(self) -> int:
        """Serve until a signal, then stop every worker; the exit status of ``serve``."""
        host, port = self.options.host, self.options.port
        for cidr in [*self.options.allow, *self.options.deny]:  # one error line, not N later
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        try:
            holder = reserve_port(host, port)
        except ValueError as exc:  # no host name at all
            raise UsageError(str(exc)) from None
        except OSError as exc:
            where = format_hostport(host or "*", port)
            raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.getsignal(sig)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_stop_signal)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select()
            bound = holder.getsockname()
            spec = self._spec(bound[1])
            log.info("Supervisor (pid %d): %d worker%s on %s", os.getpid(), self.count,
                     plural(self.count), format_hostport(host or "*", bound[1]))
            with self.companion(self.stats) if self.companion else contextlib.nullcontext():
                for index in range(1, self.count + 1):
                    self._spawn(index, spec)
                self._watch(wake_r, spec)
            return self._stop()
        finally:
            for worker in self.workers.values():  # only after an error: normally all reaped
                with contextlib.suppress(OSError):
                    worker.proc.kill()
                worker.proc.wait()
                os.close(worker.stats_fd)
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            holder.close()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:  # a second one during the stop: pass it on too
            self._forward()
        self._signal = signum

    def _forward(self) -> None:
        """SIGTERM to every worker, whichever signal we got: it stops a worker that serves
        as SIGINT would, and one still starting up (before its handlers) quietly, where
        SIGINT would end it in a KeyboardInterrupt traceback."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    def _watch(self, wake_r: int, spec: str) -> None:
        """Until a stop signal: reap dead workers and start their replacements."""
        while self._signal is None and self._fatal is None:
            timeout = None
            if self._restart_at:
                timeout = max(0.0, min(self._restart_at.values()) - time.monotonic())
            ready = select.select([wake_r, *(w.stats_fd for w in self.workers.values())], [],
                                  [], timeout)[0]
            _drain(wake_r)
            for worker in self.workers.values():
                if worker.stats_fd in ready:
                    with self._lock:
                        worker.read_reports()
            for worker in list(self.workers.values()):
                if self._signal is None and worker.proc.poll() is not None:
                    self._bury(worker)
            now = time.monotonic()
            for index, when in list(self._restart_at.items()):
                if when <= now and self._signal is None and self._fatal is None:
                    del self._restart_at[index]
                    self._spawn(index, spec)

    def stats(self) -> ServerStats:
        """The counters of every worker now: the dead ones' last and the living ones'
        latest reports (each a second old at most)."""
        with self._lock:
            totals = dict(self.totals)
            active = 0
            for worker in self.workers.values():
                if worker.latest is not None:
                    active += worker.latest["active"]
                    for key in COUNTERS:
                        totals[key] += worker.latest[key]
        return ServerStats(active=active, **totals)

    def _bury(self, worker: Worker) -> None:
        """Count what a dead worker reported and plan its replacement."""
        with self._lock:
            del self.workers[worker.index]
            self._collect(worker)
        status = worker.proc.returncode
        lived = time.monotonic() - worker.started
        if status == EXIT_USAGE and lived < QUICK_DEATH * 5:  # so would the others
            log.error("Worker %d (pid %d) could not start (status %d): stopping",
                      worker.index, worker.proc.pid, status)
            self._fatal = EXIT_USAGE
            return
        pause = QUICK_DEATH if lived < QUICK_DEATH else 0.0
        log.warning("Worker %d (pid %d) %s: starting a new one%s", worker.index,
                    worker.proc.pid, _describe_exit(status),
                    f" in {pause:g} s" if pause else "")
        self.restarts += 1
        self._restart_at[worker.index] = time.monotonic() + pause

    def _collect(self, worker: Worker) -> None:
        """Add a dead worker's final counters (or, without them, its last report) to the
        totals."""
        counters = worker.counters()
        if counters is None:
            self.lost += 1
            if worker.latest is None:
                return
            counters = {key: worker.latest[key] for key in COUNTERS}
        for key, value in counters.items():
            self.totals[key] += value

    # -- stopping -------------------------------------------------------------

    def _stop(self) -> int:
        self._forward()
        deadline = time.monotonic() + self.options.grace + STOP_MARGIN
        failed = self._fatal is not None
        for worker in list(self.workers.values()):
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("Worker %d (pid %d) did not stop in time: killing it",
                            worker.index, worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
            if worker.proc.returncode not in (0, -signal.SIGTERM):  # stopped before serving
                failed = True
            with self._lock:
                self._collect(worker)
                del self.workers[worker.index]
        totals = ServerStats(active=0, **self.totals)
        if self.restarts or self.lost:
            log_summary(log, totals, " in %d worker%s (%d restarted, %d lost their counters)",
                        self.count, plural(self.count), self.restarts, self.lost,
                        udp=self.options.udp)
        else:
            log_summary(log, totals, " in %d worker%s", self.count, plural(self.count),
                        udp=self.options.udp)
        if self._fatal is not None:
            return self._fatal
        return EXIT_FAILED if failed else EXIT_OK


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def run(options: ServeOptions, workers: int, companion: Companion | None = None) -> int:
    """``serve --workers N`` (N >= 2): the exit status; UsageError if they cannot run.
    ``companion`` runs beside the supervisor, on the sum of the workers' counters."""
    most, _ = max_workers()
    if not 1 <= workers <= most:
        raise UsageError(f"--workers must be 1 to {most} here ({WORKERS_PER_CPU} per CPU)")
    logs.setup(options.verbose, options.quiet, options.log_format)
    try:
        serving_core(options.core, options.mode)  # one error line here, not one per worker
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    return Supervisor(options, workers, companion).run()


# -- the worker side ------------------------------------------------------------

def die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor dies, however it dies (Linux); exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        sys.exit(0)


def worker_main(argv: list[str]) -> int:
    """A worker: the ordinary serve process with the supervisor's options, reporting its
    counters every few seconds (where the supervisor asks) and on exit."""
    index, parent, stats_fd = int(argv[1]), int(argv[2]), int(argv[3])
    every = float(argv[4]) if len(argv) > 4 else 0.0
    try:
        options = ServeOptions.from_json(argv[0])
    except ValueError as exc:  # not from this version's supervisor: stop, do not respawn
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    die_with_parent(parent)
    logs.tag_records(worker=index, pid=os.getpid())

    def report(stats: ServerStats, final: bool = True) -> None:
        counters = {key: getattr(stats, key) for key in (*COUNTERS, "active")}
        line = json.dumps({"pid": os.getpid(), "final": int(final), **counters})
        with contextlib.suppress(BrokenPipeError):  # the supervisor died: nobody to tell
            os.write(stats_fd, line.encode() + b"\n")  # one write, under PIPE_BUF: whole

    @contextlib.contextmanager
    def reporting(stats: Callable[[], ServerStats]) -> Iterator[None]:
        done = threading.Event()

        def loop() -> None:
            while not done.wait(every):
                report(stats(), final=False)
        thread = threading.Thread(target=loop, name="pytcpecho-report", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()  # before the final report: that one comes last

    try:
        return serve(options, report, reporting if every > 0 else None)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
