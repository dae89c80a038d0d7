"""Tiny misbehaving servers, so the client's verdicts can be tested against known faults."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from support import LOCALHOST, recv_exactly

Handler = Callable[[socket.socket], None]


@contextlib.contextmanager
def fake_server(handler: Handler, host: str = LOCALHOST) -> Iterator[int]:
    """Serve each connection with ``handler`` on its own thread; yields the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family)
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                handler(conn)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for t in threads:
            t.join(10)


def flipping_echo(offset: int) -> Handler:
    """Echo as bytes come, but with the byte at stream ``offset`` inverted."""
    def handle(conn: socket.socket) -> None:
        pos = 0
        while data := conn.recv(1 << 16):
            if pos <= offset < pos + len(data):
                buf = bytearray(data)
                buf[offset - pos] ^= 0xFF
                data = bytes(buf)
            conn.sendall(data)
            pos += len(data)
    return handle


def half_echo(conn: socket.socket) -> None:
    """Read until the client's EOF, echo only the first half, close."""
    received = bytearray()
    while data := conn.recv(1 << 16):
        received += data
    conn.sendall(received[: len(received) // 2])


def no_echo(conn: socket.socket) -> None:
    """Read until the client's EOF, then close without a byte back."""
    while conn.recv(1 << 16):
        pass


def silent(release: threading.Event) -> Handler:
    """Read everything, answer nothing, keep the connection open until ``release``."""
    def handle(conn: socket.socket) -> None:
        while conn.recv(1 << 16):
            pass
        release.wait(30)
    return handle


def closed_port() -> tuple[socket.socket, int]:
    """A port bound but not listening: connecting to it is refused, and no one can take it."""
    sock = socket.socket()
    sock.bind((LOCALHOST, 0))
    return sock, sock.getsockname()[1]


def recording_echo(record: bytearray) -> Handler:
    """Echo as bytes come, and keep a copy of everything received in ``record``."""
    def handle(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            record.extend(data)
            conn.sendall(data)
    return handle


def scripted_reply(reply: Callable[[int, int], bytes]) -> Handler:
    """Answer each chunk received at stream offset ``off`` with ``reply(off, len)``, not
    with the chunk itself."""
    def handle(conn: socket.socket) -> None:
        off = 0
        while data := conn.recv(1 << 16):
            conn.sendall(reply(off, len(data)))
            off += len(data)
    return handle


def resetting(after: int) -> Handler:
    """Read ``after`` bytes (0: none), then reset the connection (SO_LINGER 0)."""
    def handle(conn: socket.socket) -> None:
        got = 0
        while got < after and (data := conn.recv(after - got)):
            got += len(data)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return handle


def _echo_to_eof(conn: socket.socket) -> None:
    while data := conn.recv(1 << 16):
        conn.sendall(data)


def echo_then(extra: bytes) -> Handler:
    """Echo as bytes come; at the client's EOF send ``extra``, never sent by it, and close."""
    def handle(conn: socket.socket) -> None:
        _echo_to_eof(conn)
        conn.sendall(extra)
    return handle


def echo_held_open(release: threading.Event) -> Handler:
    """Echo as bytes come; at the client's EOF keep the connection open until ``release``."""
    def handle(conn: socket.socket) -> None:
        _echo_to_eof(conn)
        release.wait(30)
    return handle


def echo_held_back(after: int, release: threading.Event) -> Handler:
    """Echo as bytes come, but hold back everything past stream offset ``after`` until
    ``release``: a transfer caught in the middle, for as long as a test needs."""
    def handle(conn: socket.socket) -> None:
        pos = 0
        while data := conn.recv(1 << 16):
            if pos + len(data) > after and not release.is_set():
                conn.sendall(data[: max(0, after - pos)])
                held = data[max(0, after - pos):]
                release.wait(30)
                conn.sendall(held)
            else:
                conn.sendall(data)
            pos += len(data)
    return handle


def stalling_echo(stall_after: int, stall: float) -> Handler:
    """Echo 64-byte messages, but stop for ``stall`` s once, after some."""
    def handle(conn: socket.socket) -> None:
        for i in itertools.count():
            data = recv_exactly(conn, 64)
            if len(data) < 64:
                return
            if i == stall_after:
                time.sleep(stall)  # the stall under test, not a wait for anything
            conn.sendall(data)
    return handle


def stalling_once(stall_after: int, stall: float) -> Handler:
    """Echo one 64-byte message per connection; the connection number ``stall_after``
    waits ``stall`` s first."""
    numbers = itertools.count()

    def handle(conn: socket.socket) -> None:
        data = recv_exactly(conn, 64)
        if next(numbers) == stall_after:
            time.sleep(stall)  # the stall under test, not a wait for anything
        conn.sendall(data)
    return handle


def echo_then_close(after: int, reset: bool = False) -> Handler:
    """Echo the first ``after`` bytes as they come, then end the echo: close the sending
    side and drain the rest unanswered (with ``reset``: reset the connection at once).
    A peer that goes away in the middle of a transfer."""
    def handle(conn: socket.socket) -> None:
        pos = 0
        while pos < after and (data := conn.recv(min(1 << 16, after - pos))):
            conn.sendall(data)
            pos += len(data)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):
            pass
    return handle


DNS_SERVER = r'''
import os, socket, struct, sys
pause, records = sys.argv[1], {}
for item in sys.argv[3:]:
    name, _, addrs = item.partition("=")
    records[name.lower()] = [socket.inet_aton(a) for a in addrs.split(",")]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[2], 53))
print("listening", flush=True)
while True:
    query, client = sock.recvfrom(512)
    if os.path.exists(pause) or len(query) < 17:
        continue
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode())
        i += 1 + query[i]
    qtype = struct.unpack("!H", query[i + 1:i + 3])[0]
    question = query[12:i + 5]
    found = records.get(".".join(labels).lower())
    answers = found if found is not None and qtype == 1 else []
    rcode = 3 if found is None else 0  # NXDOMAIN for a name it does not know
    head = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180 | rcode, 1,
                       len(answers), 0, 0)
    body = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + a for a in answers)
    sock.sendto(head + question + body, client)
'''
"""A DNS server to run as ``python -c DNS_SERVER PAUSE_FILE ADDR NAME=ADDR,...`` (port 53,
so in a namespace of its own): A queries answered from the arguments, AAAA with no
records, other names NXDOMAIN; while PAUSE_FILE exists, no answer at all (glibc's
lookups then fail with EAI_AGAIN, as when a DNS server is down)."""


class UdpFake:
    """A misbehaving UDP echo peer on a real socket (127.0.0.1 or ::1, the kernel's port),
    served by a thread: it reads each datagram's sequence number from its first 8 bytes
    (little-endian) and answers ``twice`` of them twice, drops ``drop``, inverts the last
    byte of ``corrupt`` (a payload byte, past a client's header), holds each of ``hold``
    back until it has answered the sequence number it maps to (then sends it: reordered),
    and with ``silent`` answers nothing at all.  ``seen`` lists what came, in order.
    ``with UdpFake(...) as fake`` starts it; the exit stops it and closes its socket."""

    def __init__(self, host: str = LOCALHOST, *, twice: Collection[int] = (),
                 drop: Collection[int] = (), corrupt: Collection[int] = (),
                 hold: Mapping[int, int] | None = None, silent: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)  # how often the thread looks at the stop flag
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.twice, self.drop, self.corrupt = set(twice), set(drop), set(corrupt)
        self.hold = dict(hold or {})
        self.silent = silent
        self.seen: list[int] = []
        self._held: dict[int, list[tuple[bytes, Any]]] = {}  # released after -> datagrams
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="udp-fake", daemon=True)

    @property
    def port(self) -> int:
        return self.address[1]

    def __enter__(self) -> UdpFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            seq = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
            self.seen.append(seq)
            if self.silent or seq in self.drop:
                continue
            if seq in self.corrupt and data:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            if seq in self.hold:
                self._held.setdefault(self.hold[seq], []).append((data, peer))
                continue
            for _ in range(2 if seq in self.twice else 1):
                self.sock.sendto(data, peer)
            for held, to in self._held.pop(seq, []):
                self.sock.sendto(held, to)
