"""What runs beside a serve process: its metrics endpoint, and for ``mesh`` the checks.

``serving.run`` takes a *companion*: a function of the server's counters that
returns a context manager, entered once the server listens and left when a
stop signal comes, before the drain.  ``metrics`` serves /metrics (and
/healthz); ``mesh`` also checks the peers and serves /status, /mesh and the
page.  A port already in use is a UsageError, one line, before serving starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import matrix
from .contract import Core
from .mesh import Mesh, MeshOptions
from .metrics import MeshCollector, ServerCollector, registry
from .server import ServerStats
from .status import UsageError
from .units import format_hostport, plural
from .web import Route, WebServer

log = logging.getLogger("pytcpecho")

Stats = Callable[[], ServerStats]
MATRIX_CACHE = 2.0
"""Seconds a gathered matrix is served again before the peers are asked anew: a page
reloaded by many people costs the mesh one round of requests."""


def _json(make: Callable[[], Any]) -> Route:
    return lambda: ("application/json", (json.dumps(make(), indent=1) + "\n").encode())


def _healthz() -> tuple[str, bytes]:
    return "text/plain; charset=utf-8", b"ok\n"


def _web(host: str, port: int, *collectors: Any, routes: dict[str, Route]) -> WebServer:
    try:
        return WebServer(host, port, registry(*collectors), {"/healthz": _healthz, **routes})
    except ValueError as exc:  # no host name at all
        raise UsageError(str(exc)) from None
    except OSError as exc:
        where = format_hostport(host or "*", port)
        raise UsageError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def metrics(host: str, port: int, core: str, stats: Stats, *,
            udp: bool = False) -> Iterator[WebServer]:
    """/metrics of the server's counters (with ``udp``, its UDP counters too), and
    /healthz."""
    web = _web(host, port, ServerCollector(stats, core, udp), routes={})
    log.info("Metrics at http://%s/metrics", web.describe())
    try:
        yield web
    finally:
        web.close()


class _Cached:
    """The last gathered matrix, reused for MATRIX_CACHE seconds; one gathering at a time."""

    def __init__(self, make: Callable[[], dict[str, Any]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > MATRIX_CACHE:
                self._value, self._at = self._make(), time.monotonic()
            return self._value


@contextlib.contextmanager
def mesh(host: str, port: int, options: MeshOptions, core: Core,
         stats: Stats) -> Iterator[Mesh]:
    """The mesh's checks of its peers, and its HTTP side: /metrics, /status, /mesh, /."""
    checker = Mesh(options, core)
    gathered = _Cached(lambda: matrix.gather(checker, web.address[1]))  # the port bound
    web = _web(host, port, ServerCollector(stats, core.NAME, options.udp),
               MeshCollector(checker), routes={
        "/status": _json(checker.status),
        "/mesh": _json(gathered),
        "/": lambda: ("text/html; charset=utf-8", matrix.render(gathered()).encode()),
    })
    try:
        checker.start()
        names = ", ".join(format_hostport(*p) for p in options.peers[:3])
        more = f" and {len(options.peers) - 3} more" if len(options.peers) > 3 else ""
        udp = f", {options.udp_count} UDP datagrams each" if options.udp else ""
        log.info("Mesh node %s: checking the peers %s%s every %g s%s, a bulk check every %d "
                 "round%s; status at http://%s/", options.name, names, more, options.interval,
                 udp, options.bulk_every, plural(options.bulk_every), web.describe())
        yield checker
    finally:
        checker.stop()
        web.close()
