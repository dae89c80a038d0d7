"""The serve process: one EchoServer, from its options to its exit status.

``pytcpecho serve`` runs this in its own process and each worker of
``serve --workers N`` runs it in a child, so both stop the same way: on
SIGTERM/SIGINT stop accepting, give connections ``grace`` seconds to finish,
close the rest, log one summary line and exit 0 (a second signal exits at
once).  What a worker needs crosses the process boundary as ``ServeOptions``,
a fixed set of typed fields in JSON, so a worker can check what it was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from . import logs
from .constants import UDP_MAX_SIZE, UDP_RATE
from .server import EchoServer, ServerStats
from .sockets import raise_nofile_limit
from .status import EXIT_FAILED, EXIT_OK, UsageError
from .units import format_hostport, plural

log = logging.getLogger("pytcpecho")

PROG = "pytcpecho serve"
THREAD_STACK = 256 * 1024
"""Connection threads run the core's loop in C: a small stack is enough, and many fit."""
CLOSE_TIMEOUT = 0.5
"""After the grace period: how long the threads of closed connections get to end."""
COUNTERS = tuple(f.name for f in dataclasses.fields(ServerStats) if f.name != "active")
"""The counters of ServerStats that add up over a run (and over the workers)."""
_SUMMARY = ("Served %d connection%s, echoed %d bytes, %d error%s "
            "(%d idle timeout%s, %d over --max-bytes, %d refused)")


@dataclass(frozen=True)
class ServeOptions:
    """Everything one serve process needs to know, and nothing else."""

    host: str
    port: int
    mode: str
    size: int
    core: str
    max_clients: int
    idle_timeout: float
    max_bytes: int
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    grace: float
    worker_idle: float
    reuse_port: bool
    verbose: int
    quiet: bool
    log_format: str
    udp: bool = False
    udp_rate: float = float(UDP_RATE)
    udp_max_size: int = UDP_MAX_SIZE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        """The options ``to_json`` wrote; ValueError for anything else (a missing,
        extra or mistyped field)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("serve options: not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeOptions:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if set(data) != set(fields):
            missing, extra = sorted(set(fields) - set(data)), sorted(set(data) - set(fields))
            raise ValueError(f"serve options: missing {missing}, unknown {extra}")
        values: dict[str, Any] = {}
        for name, kind in fields.items():
            values[name] = _checked(name, str(kind), data[name])
        return cls(**values)


def _checked(name: str, kind: str, value: Any) -> Any:
    """``value`` as a field of type ``kind`` (its annotation, as written above)."""
    if kind == "tuple[str, ...]" and isinstance(value, list | tuple) \
            and all(isinstance(item, str) for item in value):
        return tuple(value)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (kind, type(value)) in (("str", str), ("bool", bool)):
        return value
    raise ValueError(f"serve options: {name} must be {kind}, not {value!r}")


def log_summary(logger: logging.Logger, stats: ServerStats, more: str = "",
                *more_args: object, udp: bool = False) -> None:
    """The run's summary line, with every counter (``more`` extends it), and with ``udp``
    one more for the datagrams."""
    logger.info(_SUMMARY + more, stats.total, plural(stats.total), stats.bytes_out,
                stats.errors, plural(stats.errors), stats.timed_out, plural(stats.timed_out),
                stats.over_limit, stats.refused, *more_args)
    if udp:
        dropped = (stats.udp_denied + stats.udp_loop_port + stats.udp_rate_limited
                   + stats.udp_truncated)
        logger.info(_UDP_SUMMARY, stats.udp_datagrams_in, plural(stats.udp_datagrams_in),
                    stats.udp_datagrams_out, stats.udp_bytes_out, dropped, stats.udp_denied,
                    stats.udp_loop_port, stats.udp_rate_limited, stats.udp_truncated,
                    stats.udp_send_errors)


Companion = Callable[[Callable[[], ServerStats]], AbstractContextManager[object]]
"""What runs beside the server (pytcpecho.node: metrics, the mesh): made from a function
that reads the server's counters; entered once it listens, left at the stop signal."""

_UDP_SUMMARY = ("UDP: received %d datagram%s, echoed %d (%d bytes), dropped %d (%d denied, "
                "%d from loop-prone ports, %d over --udp-rate, %d over --udp-max-size), "
                "%d failed to send")

LOG_BATCH_DELAY = 0.02
"""Seconds a log line waits for the ones right behind it, to go out in one write."""


def run(options: ServeOptions,
        report_stats: Callable[[ServerStats], None] | None = None,
        companion: Companion | None = None) -> int:
    """Serve until SIGTERM/SIGINT, drain, log the summary; the exit status.

    ``report_stats`` gets the final counters (a worker sends them to its
    supervisor); ``companion`` runs beside the server until the stop signal.
    Options the server refuses, or an address it cannot listen on, raise
    UsageError.
    """
    # Handlers first: as PID 1 (a container), a signal without one is ignored.
    stop = threading.Event()
    wake = threading.Event()  # the main thread's: a stop signal, or log lines to write
    handler: logs.StdoutHandler | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            if handler is not None:
                handler.flush_batch(blocking=False)
            with contextlib.suppress(OSError):  # stdout may be gone (| head): exit anyway
                print(f"{signal.Signals(signum).name} again: exiting now", flush=True)
            os._exit(EXIT_FAILED)
        stop.set()
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    handler = logs.setup(options.verbose, options.quiet, options.log_format, wake)
    try:
        return _serve(options, report_stats, companion, stop, wake, handler)
    finally:
        handler.flush_batch()


def _serve(options: ServeOptions, report_stats: Callable[[ServerStats], None] | None,
           companion: Companion | None, stop: threading.Event, wake: threading.Event,
           handler: logs.StdoutHandler) -> int:
    """run() once its signal handlers and log are in place: the main thread writes the
    log lines the connection threads queue, in batches, until a stop signal."""
    raise_nofile_limit()
    threading.stack_size(THREAD_STACK)
    try:
        server = EchoServer((options.host, options.port), mode=options.mode,
                            size=options.size, core=options.core,
                            max_clients=options.max_clients,
                            idle_timeout=options.idle_timeout, max_bytes=options.max_bytes,
                            allow=options.allow, deny=options.deny,
                            worker_idle=options.worker_idle, reuse_port=options.reuse_port,
                            conn_log=logs.ConnectionLog(logging.getLogger("pytcpecho.conn"),
                                                        handler),
                            udp=options.udp, udp_rate=options.udp_rate,
                            udp_max_size=options.udp_max_size)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        where = format_hostport(options.host or "*", options.port)
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None

    beside = contextlib.ExitStack()
    try:
        if companion is not None:
            beside.enter_context(companion(lambda: server.stats))
    except BaseException:
        server.close()
        raise
    with beside:  # left at the stop signal, before the drain
        server.start()  # the connection threads accept: no thread of ours waits for them
        while not stop.is_set():
            wake.wait()
            stop.wait(LOG_BATCH_DELAY)  # the lines right behind the first join its write
            wake.clear()
            handler.flush_batch()
    handler.unbatch()  # from here on every line is written at once: the drain is watched
    server.shutdown()  # stop accepting before anything else
    active = server.stats.active
    log.info("Shutting down: %d connection%s in flight, up to %g s to finish",
             active, plural(active), options.grace)
    if not server.drain(options.grace):
        left = server.stats.active
        log.warning("Grace period over: closing %d connection%s", left, plural(left))
    server.close(timeout=CLOSE_TIMEOUT)
    stats = server.stats
    log_summary(log, stats, udp=options.udp)
    if report_stats is not None:
        report_stats(stats)
    return EXIT_OK
