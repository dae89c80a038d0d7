"""EchoServer: accepts connections and serves each on its own thread.

The life cycle follows ``socketserver``: ``serve_forever()`` in one thread,
``shutdown()`` from another, ``close()`` to release everything, or a ``with``
block.  Each connection runs the core's echo loop, which holds no GIL from the
first byte to the last; Python only accepts, logs and keeps the books.

Connection threads accept for themselves (leader/followers): a thread waiting
for a client sleeps in epoll on the listener, and one new client wakes one
waiting thread, which accepts it and serves it at once, with no hand-over to
another thread and no GIL to pass.  A thread that took the last waiting place
starts another, up to ``max_clients``; past that, clients wait in the backlog
until a thread is free.  Each thread keeps its session (and buffer) from one
client to the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from . import core as cores
from .constants import (
    CHUNK,
    DEFAULT_BACKLOG,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_PORT,
    DEFAULT_SIZE,
    DEFAULT_WORKER_IDLE,
    MAX_BYTES,
    MAX_MESSAGE_SIZE,
    MODES,
    UDP_MAX_SIZE,
    UDP_RATE,
)
from .contract import Core, ServerSession
from .sockets import Borrowed, listen_address, set_io_timeout, set_nodelay
from .udpserver import UdpEcho, UdpStats
from .units import check_seconds, format_hostport, format_size, parse_port, peer_name

log = logging.getLogger("pytcpecho.server")


class LineLog(Protocol):
    """Where a server's per-connection lines go: a ``logging.Logger`` (by default the
    ``pytcpecho.conn`` one), or anything that takes the same calls."""

    def isEnabledFor(self, level: int) -> bool: ...
    def info(self, msg: str, *args: object) -> None: ...
    def warning(self, msg: str, *args: object) -> None: ...
    def exception(self, msg: str, *args: object) -> None: ...

# accept(2) on Linux: errors of the new connection itself, to be retried like EAGAIN.
_RETRY_ACCEPT = frozenset({errno.ENETDOWN, errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                           errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
                           errno.ENETUNREACH, errno.ECONNABORTED, errno.EPERM})
# Out of fds or memory: the connection stays in the backlog until some are freed.
_PAUSE_ACCEPT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# socket.accept() without the socket object it wraps around the new fd: CPython's own
# primitive under accept(), which no public name exposes (typeshed omits it).
_accept_fd: Callable[[socket.socket], tuple[int, Any]] = socket.socket._accept  # type: ignore[attr-defined]
ACCEPT_PAUSE = 0.1
# Why a connection ended, as _finish() counts it.
_EOF, _SHUTDOWN, _ERROR, _IDLE, _LIMIT = "eof", "shutdown", "error", "idle", "limit"
LOG_EVERY = 5.0  # seconds between two log lines about the same recurring condition

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Peer = tuple[str, int]


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of the server's counters.

    Every connection counted in ``total`` is ``active`` or ended one way:
    ``closed_eof`` (the client closed), ``timed_out`` (idle), ``over_limit``
    (--max-bytes), ``closed_shutdown`` (the server stopped) or ``closed_error``
    (a reset or a failure); ``refused`` ones were never counted in.  ``errors``
    also counts failures outside any connection (accept(), threads).  The ``udp_``
    counters are the datagram side's (UdpStats): every datagram received
    (``udp_datagrams_in``) was echoed, dropped by a guard, or failed to send.
    """

    active: int
    total: int
    bytes_in: int
    bytes_out: int
    errors: int
    refused: int
    timed_out: int = 0
    over_limit: int = 0
    closed_eof: int = 0
    closed_shutdown: int = 0
    closed_error: int = 0
    udp_datagrams_in: int = 0
    udp_datagrams_out: int = 0
    udp_bytes_in: int = 0
    udp_bytes_out: int = 0
    udp_denied: int = 0
    udp_loop_port: int = 0
    udp_rate_limited: int = 0
    udp_truncated: int = 0
    udp_send_errors: int = 0


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4 clients of a dual-stack listener


def serving_core(core: str, mode: str) -> Core:
    """The core named ``core``, checked to serve ``mode``: what EchoServer() runs, checked
    once where many would (``serve --workers``, the demo) before anything starts.
    ValueError or RuntimeError as ``cores.load()``, ValueError for a mode it lacks."""
    loaded = cores.load(core)
    if mode not in loaded.MODES:
        raise ValueError(f"the {loaded.NAME} core serves {' and '.join(loaded.MODES)} "
                         f"mode only, not {mode!r}")
    return loaded


def _networks(cidrs: Iterable[str | Network]) -> tuple[Network, ...]:
    """The rules as networks, by address rather than by notation: a rule written in
    IPv4-mapped IPv6 form (inside ::ffff:0:0/96) names the IPv4 clients it maps, as
    the IPv4 network it is; peers are matched in plain IPv4 form, as peer_name()
    gives them.  A wider IPv6 rule (::/0) names IPv6 clients only."""
    out: list[Network] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False) if isinstance(cidr, str) else cidr
        mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) \
            else None
        if mapped is not None and net.prefixlen >= _MAPPED.prefixlen:
            net = ipaddress.IPv4Network((mapped, net.prefixlen - _MAPPED.prefixlen))
        out.append(net)
    return tuple(out)


def _bind(host: str | None, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    family, address, dualstack = listen_address(host, port)
    return socket.create_server(address, family=family, backlog=backlog,
                                reuse_port=reuse_port, dualstack_ipv6=dualstack)


class _Throttled:
    """Log a recurring condition at most once per ``every`` seconds, with a count of the rest."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self._every = every
        self._last = -every
        self._skipped = 0

    def __call__(self, logger: logging.Logger, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._skipped += 1
            return
        if self._skipped:
            msg += f" (and {self._skipped} more time(s) since the last such line)"
        self._last, self._skipped = now, 0
        logger.log(level, msg, *args)


class EchoServer:
    """A TCP echo server, one thread per connected client.

    ``mode="stream"`` echoes bytes as they come (RFC 862); ``mode="message"``
    reads ``size`` bytes, sends them back and repeats (the original exercise's
    protocol).
    Limits: at most ``max_clients`` connections at once (the rest wait in the
    kernel's backlog), ``idle_timeout`` seconds without progress ends a
    connection, ``max_bytes`` (0: no limit) caps what one connection may send,
    ``allow``/``deny`` filter peers by network.  ``size`` is at most
    MAX_MESSAGE_SIZE.  A connection thread waits ``worker_idle`` seconds for
    the next client before it exits, keeping its session (and buffer) for that
    client.  Each limit logs a line when it acts.  A constructor that fails
    closes whatever it had opened, as ``socketserver`` does.

    ``udp=True`` also echoes datagrams on the same address and port (RFC 862 over
    UDP), guarded against reflection: ``allow``/``deny`` apply, loop-prone source
    ports are never answered, one source address gets at most ``udp_rate``
    datagrams a second (0: no limit), and a datagram over ``udp_max_size`` bytes is
    dropped (see pytcpecho.udpserver).
    """

    def __init__(
        self,
        address: tuple[str | None, int] = ("", DEFAULT_PORT),
        *,
        mode: str = "stream",
        size: int = DEFAULT_SIZE,
        core: str = "auto",
        max_clients: int = DEFAULT_MAX_CLIENTS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_bytes: int = 0,
        allow: Iterable[str | Network] = (),
        deny: Iterable[str | Network] = (),
        backlog: int = DEFAULT_BACKLOG,
        reuse_port: bool = False,
        worker_idle: float = DEFAULT_WORKER_IDLE,
        conn_log: LineLog | None = None,
        udp: bool = False,
        udp_rate: float = UDP_RATE,
        udp_max_size: int = UDP_MAX_SIZE,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        parse_port(address[1], allow_zero=True)  # as on the command line
        if size <= 0:
            raise ValueError("size must be positive")
        if size > MAX_MESSAGE_SIZE:
            raise ValueError(f"size {size} is above the limit of {MAX_MESSAGE_SIZE} bytes "
                             f"(64 MiB): each connection holds a buffer of that size")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if idle_timeout is not None:
            check_seconds("idle_timeout", idle_timeout, none=" (None: no timeout)")
        if not 0 <= max_bytes <= MAX_BYTES:
            raise ValueError(f"max_bytes must be 0 (no limit) or positive, at most "
                             f"{MAX_BYTES >> 40} TiB")
        if worker_idle <= 0:
            raise ValueError("worker_idle must be positive")
        self.mode = mode
        self.size = size
        self.conn_log: LineLog = conn_log or logging.getLogger("pytcpecho.conn")
        self.core = serving_core(core, mode)
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.max_bytes = max_bytes
        self.allow = _networks(allow)
        self.deny = _networks(deny)

        # Linux hands an accepted socket the listener's SO_RCVTIMEO, SO_SNDTIMEO
        # and TCP_NODELAY (and a blocking fd): set them once, not per client.
        self._inherits_options = sys.platform.startswith("linux")
        self._listener = _bind(address[0], address[1], backlog, reuse_port)
        try:
            if self._inherits_options:
                set_io_timeout(self._listener, idle_timeout)
                set_nodelay(self._listener)
            self._listener.setblocking(False)
            self._dualstack = (self._listener.family == socket.AF_INET6
                               and not self._listener.getsockopt(socket.IPPROTO_IPV6,
                                                                 socket.IPV6_V6ONLY))
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._listener.close()
            raise
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._doorbell = _Doorbell(self._listener, self._wake_r)
        except BaseException:
            for sock in (self._wake_r, self._wake_w, self._listener):
                sock.close()
            raise
        self._udp: UdpEcho | None = None
        if udp:
            try:
                self._udp = UdpEcho(self.core, self._listener, self._dualstack,
                                    reuse_port=reuse_port, allow=self.allow, deny=self.deny,
                                    rate=udp_rate, max_size=udp_max_size)
            except BaseException:
                self._doorbell.close()
                for sock in (self._wake_r, self._wake_w, self._listener):
                    sock.close()
                raise

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # connection fd -> its session (None until its thread has taken it up)
        self._conns: dict[int, ServerSession | None] = {}
        self._total = self._refused = self._errors = self._timed_out = self._over_limit = 0
        self._done_in = self._done_out = 0
        self._eof = self._shut = self._failed = 0  # connections closed by each cause
        self._log_full = _Throttled()
        self._log_accept_error = _Throttled()
        self._worker_idle = worker_idle
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads waiting for a client
        self._accepting = False  # serve_forever() runs and has not been asked to stop
        self._stop_request = threading.Event()
        self._closing = False
        self._cut: set[int] = set()  # connections close() shut down
        self._closed = False
        self._serve_done = threading.Event()
        self._serve_done.set()

    # -- life cycle ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): with port 0, the port the kernel chose."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        """Accept clients until shutdown() or close() is called."""
        with self._lock:
            if self._closing:  # close() came first: nothing to serve
                return
            self._serve_done.clear()
            self._stop_request.clear()
        try:
            self.start()
            self._stop_request.wait()
        finally:
            self._stop_accepting()
            self._serve_done.set()

    def start(self) -> None:
        """Accept clients from now on, in the connection threads, and return at once:
        serve_forever() without a thread of its own to wait in; shutdown() stops it."""
        with self._lock:
            if self._closing or self._accepting:
                return
            self._drain_wakeups()  # from an earlier shutdown()
            self._doorbell.rearm()  # a thread that left with the last ring took it along
            self._accepting = True
        if self._udp is not None:
            self._udp.start()
        self._start_thread()
        self._log_start()  # only now: the line means ready, a thread waits for clients

    def _stop_accepting(self) -> None:
        """No more clients: every waiting thread leaves (busy ones after their client)."""
        with self._changed:
            self._accepting = False
            self._wake()
            self._changed.wait_for(lambda: self._waiting == 0)

    def _log_start(self) -> None:
        host, port = self.address
        kinds = [k for k, on in (("IPv4 and IPv6", self._dualstack),
                                 ("TCP and UDP", self._udp is not None)) if on]
        log.info("Server at %s%s", format_hostport(host, port),
                 f" ({', '.join(kinds)})" if kinds else "")
        log.debug("%s mode, %d-byte messages, core %s, at most %d clients, idle timeout %s, "
                  "max bytes %s", self.mode, self.size, self.core.NAME, self.max_clients,
                  f"{self.idle_timeout:g} s" if self.idle_timeout else "off",
                  self.max_bytes or "off")

    def shutdown(self) -> None:
        """Stop serve_forever() (or start()) and wait until it has returned; connections
        go on."""
        self._stop_request.set()
        self._serve_done.wait()
        self._stop_accepting()

    def drain(self, grace: float) -> bool:
        """Stop accepting, then let connections finish for up to ``grace`` seconds.

        Returns True when all finished in time; close() ends the rest.
        """
        self.shutdown()
        self._listener.close()
        if self._udp is not None:
            self._udp.stop()  # no datagram is in flight the way a connection is
        with self._changed:
            return self._changed.wait_for(lambda: not self._conns, grace)

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, end every connection, join every thread, release every fd.

        ``timeout`` bounds the wait for connection threads (None: wait for all);
        a thread still busy after it is left behind (they are daemon threads).
        """
        if self._closed:
            return
        with self._lock:
            self._closing = True  # a serve_forever() not yet started will not start
        self._stop_request.set()
        self._serve_done.wait()
        self._stop_accepting()
        self._listener.close()
        with self._lock:
            self._cut.update(self._conns)
            for fd in self._conns:
                # Wakes the core's blocked recv()/send(); the owner thread closes the fd
                # (after it left _conns, under this lock: the number is still this socket).
                _shutdown_fd(fd)
        with self._lock:
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._doorbell.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._udp is not None:
            self._udp.close()
        self._closed = True

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- counters -----------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Counters now; bytes include connections still in flight."""
        udp = self._udp.stats if self._udp is not None else UdpStats()
        with self._lock:
            live = [s for s in self._conns.values() if s is not None]
            return ServerStats(
                active=len(self._conns),
                total=self._total,
                bytes_in=self._done_in + sum(s.bytes_in for s in live),
                bytes_out=self._done_out + sum(s.bytes_out for s in live),
                errors=self._errors,
                refused=self._refused,
                timed_out=self._timed_out,
                over_limit=self._over_limit,
                closed_eof=self._eof,
                closed_shutdown=self._shut,
                closed_error=self._failed,
                **{f"udp_{name}": value for name, value in dataclasses.asdict(udp).items()},
            )

    @property
    def threads(self) -> int:
        """Connection threads alive now (busy or waiting for the next client)."""
        with self._lock:
            return len(self._threads)

    def wait(self, predicate: Callable[[ServerStats], bool], timeout: float) -> bool:
        """Block until ``predicate(stats)`` holds (re-checked as connections come
        and go) or ``timeout`` passes; returns whether it holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.stats):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:  # byte counters change unannounced: look again soon
                self._changed.wait(min(left, 0.05))
        return True

    # -- accepting ----------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _start_thread(self) -> None:
        """One more connection thread, unless a thread already waits or the limit is reached."""
        with self._lock:
            if not self._accepting or self._waiting or len(self._threads) >= self.max_clients:
                return
            thread = threading.Thread(target=self._connection_thread, name="pytcpecho-conn",
                                      daemon=True)
            self._threads.add(thread)
            self._waiting += 1  # counted now, so no second thread is started for it
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads or memory: the backlog holds the clients
            with self._changed:
                self._threads.discard(thread)
                self._waiting -= 1
                self._errors += 1
                self._changed.notify_all()
            self._log_accept_error(log, logging.WARNING,
                                   "Cannot start a connection thread: %s", exc)

    def _connection_thread(self) -> None:
        """Wait for a client, serve it, again; leave when serving stops or after
        worker_idle seconds of waiting while another thread waits too.

        This loop is the per-connection path of the server: what it does between
        one client's last byte and the next client's first is kept to the few
        steps it needs, with the lock taken twice and no notification where no
        one waits for it.
        """
        session: ServerSession | None = None
        try:
            counted = True  # _start_thread counted this thread as waiting
            while True:
                client = self._next_client(counted)
                counted = False
                if client is None:
                    return
                fd, peer = client
                if not self._waiting:  # this was the last waiting thread: start one
                    self._start_thread()
                if session is None:
                    session = self._new_session(peer)
                    if session is None:
                        self._finish(fd, None, _ERROR)
                        continue
                self._serve_client(session, fd, peer)
        finally:
            with self._changed:
                self._threads.discard(threading.current_thread())
                self._changed.notify_all()

    def _next_client(self, counted: bool) -> tuple[int, Peer] | None:
        """The next client (an accepted fd, admitted and counted), or None: leave."""
        with self._lock:
            if not counted:
                self._waiting += 1
            if not self._accepting:
                self._leave_locked()
                return None
        doorbell, listener = self._doorbell, self._listener
        while True:
            # Only a thread the doorbell woke accepts: one that comes back from a client
            # and tried accept() at once would race the thread already woken for it.
            if not doorbell.wait(self._worker_idle):
                with self._lock:
                    if self._waiting > 1 or not self._accepting:
                        self._leave_locked()  # idle, and another thread waits
                        return None
                continue
            if not self._accepting:
                with self._lock:
                    self._leave_locked()
                return None
            try:
                fd, addr = _accept_fd(listener)
            except BlockingIOError:  # another thread took it first
                doorbell.rearm()
                continue
            except OSError as exc:
                doorbell.rearm()
                if not self._accepting:  # the listener was closed under us
                    with self._lock:
                        self._leave_locked()
                    return None
                if exc.errno not in _RETRY_ACCEPT:
                    self._accept_failed(exc)
                continue
            doorbell.rearm()  # more clients waiting wake the next thread now
            peer = peer_name(addr)
            if self._admit(fd, peer):
                return fd, peer

    def _leave_locked(self) -> None:
        """A waiting thread leaves (the lock held): _stop_accepting() may wait for it."""
        self._waiting -= 1
        self._changed.notify_all()

    def _accept_failed(self, exc: OSError) -> None:
        """Out of fds (EMFILE) or memory, or unforeseen: never die, never spin."""
        with self._lock:
            self._errors += 1
        self._log_accept_error(log, logging.WARNING, "Cannot accept: %s; pausing for %g s",
                               exc.strerror or exc, ACCEPT_PAUSE)
        time.sleep(ACCEPT_PAUSE)

    def _permitted(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if any(addr in net for net in self.deny):
            return False
        return not self.allow or any(addr in net for net in self.allow)

    def _admit(self, fd: int, peer: Peer) -> bool:
        """Count the client in (True), or close it: refused, or already gone."""
        if (self.allow or self.deny) and not self._permitted(peer[0]):
            self.conn_log.warning("Refused client at %r (not allowed)", peer)
            os.close(fd)
            with self._lock:
                self._refused += 1
            return False
        if not self._inherits_options:
            try:
                _set_up(fd, self.idle_timeout)
            except OSError:  # the client is already gone
                os.close(fd)
                return False
        with self._lock:
            self._waiting -= 1
            self._conns[fd] = None
            self._total += 1
            full = len(self._conns) >= self.max_clients
            if not self._accepting:
                self._changed.notify_all()  # _stop_accepting() waits for the waiting count
        if full:
            self._log_full(log, logging.WARNING,
                           "At the limit of %d clients: not accepting until one leaves "
                           "(the rest wait in the backlog)", self.max_clients)
        return True

    # -- serving one client -------------------------------------------------

    def _new_session(self, peer: Peer) -> ServerSession | None:
        """This thread's session, made for its first client and kept for every next one."""
        on_message = self._report_message if self.conn_log.isEnabledFor(logging.INFO) else None
        try:
            return self.core.EchoSession(-1, self.mode, self.size, self.max_bytes, on_message)
        except MemoryError:  # e.g. a message size larger than this machine can hold
            self._count_error()
            self.conn_log.warning("Cannot serve client at %r: out of memory for a %s buffer", peer,
                             format_size(self.size if self.mode == "message" else CHUNK))
            return None

    def _serve_client(self, session: ServerSession, fd: int, peer: Peer) -> None:
        served = False
        cause = _ERROR
        try:
            session.attach(fd)
            self._conns[fd] = session  # the key is there already: no lock needed to set it
            served = True
            self.conn_log.info("Connected by client at %r", peer)
            ended = session.run()
            cause = self._log_end(peer, session, ended, fd in self._cut)
        except OSError as exc:
            cause = self._log_failure(peer, session, exc, fd in self._cut)
        except Exception:  # a bug: log it, keep serving others
            self._count_error()
            self.conn_log.exception("Connection with %r failed", peer)
        finally:
            self._finish(fd, session if served else None, cause)

    def _finish(self, fd: int, session: ServerSession | None, cause: str) -> None:
        with self._lock:
            del self._conns[fd]
            if self._cut:
                self._cut.discard(fd)
            if session is not None:
                self._done_in += session.bytes_in
                self._done_out += session.bytes_out
            if cause == _EOF:
                self._eof += 1
            elif cause == _SHUTDOWN:
                self._shut += 1
            elif cause == _ERROR:
                self._failed += 1
            elif cause == _IDLE:
                self._timed_out += 1
            else:  # _LIMIT
                self._over_limit += 1
            if not self._conns or self._closing:
                self._changed.notify_all()  # drain() waits for the last one
        os.close(fd)  # only now: close() shuts down what is in _conns, by number

    def _log_failure(self, peer: Peer, session: ServerSession | None, exc: OSError,
                     cut: bool) -> str:
        """The line for a connection that ended in an error; its cause (_EOF, _SHUTDOWN, ...)."""
        if cut:  # close() cut it short: not the client's doing
            self.conn_log.info("Connection closed by server at %r (shutting down)%s", peer,
                          _echoed(session))
            return _SHUTDOWN
        if isinstance(exc, TimeoutError):
            self.conn_log.warning("Closed connection from %r: idle for %g s%s", peer,
                             self.idle_timeout or 0, _echoed(session))
            return _IDLE
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.conn_log.info("Connection reset by client at %r%s", peer, _echoed(session))
        else:
            self._count_error()
            self.conn_log.warning("Connection with %r failed: %s", peer, exc.strerror or exc)
        return _ERROR

    def _log_end(self, peer: Peer, session: ServerSession, ended: str, cut: bool) -> str:
        """The line for a connection whose loop returned; its cause (_EOF, _SHUTDOWN, ...)."""
        if ended == "limit":
            self.conn_log.warning("Closed connection from %r: it sent more than %d bytes",
                             peer, self.max_bytes)
            return _LIMIT
        if cut:
            self.conn_log.info("Connection closed by server at %r (shutting down)%s", peer,
                          _echoed(session))
            return _SHUTDOWN
        if self.conn_log.isEnabledFor(logging.INFO):  # -q: not even the words are made
            self.conn_log.info("Connection closed by client at %r%s", peer,
                          _echoed(session) if self.mode == "stream" else "")
        return _EOF

    def _report_message(self, n: int) -> None:
        """Per-message lines, in the original exercise's words (needs the GIL: -q skips it)."""
        self.conn_log.info("Received %d bytes", n)
        self.conn_log.info("Data sent back to client")

    def _count_error(self) -> None:
        with self._lock:
            self._errors += 1




def _echoed(session: ServerSession | None) -> str:
    return f", {session.bytes_out} bytes echoed" if session is not None else ""


def _shutdown_fd(fd: int) -> None:
    """shutdown(SHUT_RDWR) on a bare connection fd, which stays open."""
    with contextlib.suppress(OSError), Borrowed(fd) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _set_up(fd: int, idle_timeout: float | None) -> None:
    """SO_RCVTIMEO/SO_SNDTIMEO and TCP_NODELAY on an accepted fd, where it does not
    inherit them from the listener (outside Linux)."""
    with Borrowed(fd) as sock:
        set_io_timeout(sock, idle_timeout)
        set_nodelay(sock)


class _Doorbell:
    """Where connection threads wait for a client, without the GIL.

    One epoll set for all of them holds the listener armed one-shot: a new
    client wakes one waiting thread, which re-arms it after its accept(), and so
    at once wakes the next thread if more clients wait.  The wake socket is
    level-triggered: written once when serving stops, it wakes every waiting
    thread, one after another.  Without epoll (not Linux), select() does the
    same, but wakes every waiting thread for each client.
    """

    _ARMED = select.EPOLLIN | select.EPOLLONESHOT if hasattr(select, "epoll") else 0

    def __init__(self, listener: socket.socket, wake: socket.socket) -> None:
        self._listener = listener
        self._wake = wake
        self._epoll: select.epoll | None = None
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
            try:
                self._epoll.register(listener, self._ARMED)
                self._epoll.register(wake, select.EPOLLIN)
            except BaseException:
                self._epoll.close()
                raise

    def wait(self, timeout: float) -> bool:
        """Whether a client (or the wake socket) rang within ``timeout`` seconds."""
        if self._epoll is not None:
            return bool(self._epoll.poll(timeout, 1))
        return bool(select.select([self._listener, self._wake], [], [], timeout)[0])

    def rearm(self) -> None:
        """After an accept() that followed a wait: the next client may ring again."""
        if self._epoll is not None:
            try:  # noqa: SIM105 (once per client: no context manager object for it)
                self._epoll.modify(self._listener, self._ARMED)
            except (OSError, ValueError):  # closed: serving has stopped
                pass

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
