"""The HTTP side of a server or mesh node: /metrics for Prometheus, and pages for people.

One small threaded server from the standard library; each route is a function
that returns a content type and a body.  Whoever connects cannot take it down:
a request gets ``REQUEST_TIMEOUT`` seconds to arrive, at most ``MAX_REQUESTS``
are served at once (more are closed at once, unanswered), and a route that
fails answers 500 and logs the failure.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .sockets import listen_address
from .units import format_hostport

log = logging.getLogger("pytcpecho.web")

Route = Callable[[], tuple[str, bytes]]
"""A page: () -> (content type, body)."""
REQUEST_TIMEOUT = 10.0
MAX_REQUESTS = 32


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    routes: Mapping[str, Route] = {}
    registry: CollectorRegistry | None = None

    def __init__(self, address: tuple[Any, ...], family: int, dualstack: bool) -> None:
        self.address_family = family
        self._dualstack = dualstack
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self._dualstack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer's server_bind: it looks up the host's name, which may hang.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # flooded: no thread for this one
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"
    server_version = "pytcpecho"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics" and self.server.registry is not None:
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                status, body = 200, encoder(self.server.registry)
            elif path in self.server.routes:
                ctype, body = self.server.routes[path]()
                status = 200
            else:
                status, ctype = 404, "text/plain; charset=utf-8"
                listed = sorted([*self.server.routes, *(["/metrics"] if self.server.registry
                                                      else [])])
                body = f"not found; try {', '.join(listed)}\n".encode()
        except Exception:
            log.exception("Serving %s failed", path)
            status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        with contextlib.suppress(OSError):  # the client left: nothing to tell it
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s: " + format, self.address_string(), *args)


class WebServer:
    """Serves ``registry`` at /metrics and each route at its path, in threads of its own,
    from construction (which binds, raising OSError) to close()."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None,
                 routes: Mapping[str, Route] | None = None) -> None:
        family, address, dualstack = listen_address(host, port)
        self._httpd = _Server(address, family, dualstack)
        self._httpd.registry = registry
        self._httpd.routes = dict(routes or {})
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name="pytcpecho-web", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def describe(self) -> str:
        return format_hostport(*self.address)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
