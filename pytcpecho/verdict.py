"""What went wrong with an echo, in one line: for the client and the load generator alike.

A stalled echo has several likely causes, and the kernel can tell them apart:
bytes the server never acknowledged are being lost on the way to it (and when
a small echo still passes, large packets are: a path-MTU blackhole); bytes it
acknowledged but never echoed mean the server holds them, which in message
mode with nothing back at all is a server waiting for a message of its own,
larger ``--size``.  A hint is given only where it can be the cause.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .contract import Echoed
from .units import plural

# struct tcp_info (linux/tcp.h): the u32 fields read here, by byte offset.
_TCPI_UNACKED = 24
_TCPI_TOTAL_RETRANS = 100
_TCPI_SIZE = 104


def describe_error(exc: OSError, timeout: float | None) -> str:
    """One line for an error that ended a session's exchange."""
    if isinstance(exc, TimeoutError):
        if timeout is None:  # the kernel gave up (retransmissions, keepalive), not us
            return "timed out waiting for the echo: the kernel gave up on the connection"
        return f"timed out after {timeout:g} s waiting for the echo"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    return f"connection failed: {exc.strerror or exc}"


def describe_failure(session: Echoed) -> str:
    """One line for a session whose run() found the echo not intact."""
    if session.mismatch_offset >= 0:
        return f"echo differs from what was sent at byte {session.mismatch_offset}"
    if session.long_echo > 0:
        return (f"long echo: after the last byte, {session.long_echo} more came back "
                "that were never sent")
    return "short echo: the server closed the connection early"


@dataclass(frozen=True)
class Unacked:
    """Bytes in flight that the server has not acknowledged, and the retransmissions."""

    segments: int
    retransmissions: int


def unacked(sock: socket.socket) -> Unacked | None:
    """What the kernel says is unacknowledged on ``sock``; None where it cannot say."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_SIZE:
        return None
    (segments,) = struct.unpack_from("=I", info, _TCPI_UNACKED)
    (retrans,) = struct.unpack_from("=I", info, _TCPI_TOTAL_RETRANS)
    return Unacked(segments, retrans)


def stall_hint(exc: OSError, mode: str, size: int, session: Echoed,
               sock: socket.socket | None = None,
               small_echo_passes: Callable[[], bool] | None = None) -> str:
    """'; likely cause' for an exchange that timed out, or '' where none can be named.

    ``sock`` (still open) lets the kernel say whether the server acknowledged
    what was sent; ``small_echo_passes`` (called only when that matters) tries
    a small echo on a new connection, to tell large packets lost from all lost.
    """
    if not isinstance(exc, TimeoutError):
        return ""
    lost = unacked(sock) if sock is not None else None
    if lost is not None and lost.segments and lost.retransmissions:
        where = (f"; {lost.segments} segment{plural(lost.segments)} sent are not acknowledged "
                 f"by the server after {lost.retransmissions} "
                 f"retransmission{plural(lost.retransmissions)}")
        if small_echo_passes is not None and small_echo_passes():
            return (f"{where}, while a small echo on a new connection passes: large packets "
                    "are dropped on the way, likely a path-MTU blackhole (a link with a "
                    "smaller MTU, and ICMP 'fragmentation needed' filtered); try a smaller "
                    "--size or check the path's MTU")
        return f"{where}: packets are being lost on the way to the server"
    if mode == "message" and session.bytes_received == 0:
        return f"; if the server runs in message mode, check that its --size is {size} bytes too"
    if session.bytes_received > 0:
        return ("; the echo stalled after part of it came back: the server, or the path back "
                "from it, stopped moving data")
    return ""
