"""Socket options shared by the server and the client."""

from __future__ import annotations

import os
import resource
import socket
import struct
from typing import Any


def make_blocking(sock: socket.socket) -> None:
    """Blocking underneath, as the cores need, whatever socket.setdefaulttimeout() set
    for the process (a socket with a Python-level timeout is non-blocking)."""
    if sock.gettimeout() is not None:
        sock.settimeout(None)


def raise_nofile_limit() -> int:
    """Room for as many connections as the hard limit allows (soft RLIMIT_NOFILE up to
    it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if soft < hard else soft


def open_fds() -> int:
    """How many file descriptors this process holds now (Linux; 0 where it cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class Borrowed:
    """A blocking socket object over an fd someone else owns (a core's session, the
    server's connection table): ``with Borrowed(fd) as sock``; it never closes the fd."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        make_blocking(self.sock)  # block in recv(), bounded by SO_RCVTIMEO

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.detach()


def set_io_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Make ``sock`` blocking, with SO_RCVTIMEO/SO_SNDTIMEO bounding each wait.

    The cores call recv()/send() on the raw fd without the GIL, so the timeout
    must live in the kernel: a Python-level timeout would make the fd
    non-blocking underneath.  ``None`` (or 0) waits forever.
    """
    make_blocking(sock)
    whole = int(seconds or 0)
    micro = int(((seconds or 0) - whole) * 1_000_000)
    if seconds and not whole and not micro:  # 0 would mean "forever": the shortest instead
        micro = 1
    tv = struct.pack("@ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def set_nodelay(sock: socket.socket) -> None:
    """Echo small messages without waiting for Nagle's algorithm."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def resolve_error(host: str, exc: OSError | UnicodeError) -> str:
    """One line for a host name that cannot be resolved, or is no host name at all
    (the idna codec refuses an empty or 64-character label, 'a..b', '.')."""
    shown = host if len(host) <= 80 else host[:77] + "..."
    if isinstance(exc, UnicodeError):
        return f"cannot resolve host {shown!r}: not a valid host name"
    return f"cannot resolve host {shown!r}: {exc.strerror or exc}"


def listen_address(host: str | None, port: int) -> tuple[int, tuple[Any, ...], bool]:
    """(family, address, dual-stack) to listen on: all interfaces (no host, or "::")
    means IPv4 and IPv6 where the host has both; "[::1]" is "::1", as for clients.
    A host that is no host name raises ValueError; one that does not resolve, OSError."""
    if host and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in (None, "", "::") and socket.has_dualstack_ipv6():
        return socket.AF_INET6, ("::", port), True
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except UnicodeError as exc:
        raise ValueError(resolve_error(host or "", exc)) from None
    return family, sockaddr, False
