"""Clients that misbehave on purpose, and one that behaves while they do.

Each abuser returns figures (clients, bytes, mismatches) for the report; the
well-behaved SteadyClient keeps one connection exchanging verified messages
the whole time, so a server that slows, drops or corrupts it is caught.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from support import LOCALHOST

from pytcpecho import core as cores
from pytcpecho.pattern import make_base
from pytcpecho.sockets import set_io_timeout


@dataclass
class Figures:
    """What one abuse case did: for assertions and for the report."""

    clients: int = 0
    bytes_sent: int = 0
    bytes_verified: int = 0
    mismatches: int = 0
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.clients} clients, {self.bytes_sent} bytes sent, "
                f"{self.bytes_verified} bytes verified, {self.mismatches} mismatches")


class SteadyClient:
    """One long connection exchanging verified messages of ``size`` bytes until stop()."""

    def __init__(self, port: int, size: int, *, interval: float = 0.01, timeout: float = 30,
                 host: str = LOCALHOST) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        set_io_timeout(self.sock, timeout)
        self.session = cores.load("auto").ClientSession(self.sock.fileno(), size,
                                                        make_base(1234), "message", timeout)
        self.intact: bool | None = None
        self.error: BaseException | None = None
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="steady-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.intact = bool(self.session.run(0, self._interval, 3600.0))
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self.intact = False

    @property
    def messages(self) -> int:
        return int(self.session.messages)

    def stop(self, timeout: float = 30) -> None:
        """End after the message in flight; the caller checks ``intact`` and ``error``."""
        self.session.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the steady client did not stop"
        self.sock.close()

    def problem(self) -> str | None:
        """None while every echo so far came back intact."""
        s = self.session
        if self.error is not None:
            return f"steady client failed: {self.error!r} after {s.messages} messages"
        if s.mismatch_offset >= 0 or s.short_echo:
            return (f"steady client: echo not intact (mismatch at {s.mismatch_offset}, "
                    f"short {s.short_echo})")
        return None


def reset_clients(port: int, n: int, seed: int = 1) -> Figures:
    """Connect, maybe send a few bytes, then close with SO_LINGER 0: a RST, not a FIN."""
    rng = random.Random(seed)
    figures = Figures()
    linger = struct.pack("ii", 1, 0)
    for _ in range(n):
        with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
            if rng.random() < 0.5:
                data = os.urandom(rng.randrange(1, 4096))
                sock.sendall(data)
                figures.bytes_sent += len(data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        figures.clients += 1
    return figures


async def _each(n: int, concurrency: int, job: object) -> list[object]:
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> object:
        async with limit:
            return await job(i)  # type: ignore[operator]

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def silent_clients(port: int, n: int, timeout: float) -> Figures:
    """Connect n clients at once that never send; each must be closed by the server."""
    figures = Figures()

    async def job(i: int) -> None:
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        try:
            data = await asyncio.wait_for(reader.read(1), timeout)
            if data:
                raise AssertionError(f"server sent {data!r} to a silent client")
        except ConnectionResetError:
            pass
        finally:
            writer.close()

    for result in asyncio.run(_each(n, n, job)):
        if isinstance(result, BaseException):
            figures.failures.append(repr(result))
        else:
            figures.clients += 1
    return figures


def nonreading_clients(port: int, n: int, cap: int, reaped: Callable[[], None],
                       timeout: float) -> Figures:
    """n clients send until they block (at most ``cap`` bytes each) and never read.

    A tiny receive buffer makes the server's send() block once its own send
    buffer is full, which only the idle timeout can end.  ``reaped()`` waits
    for the server to report them closed; only then does each client read,
    to confirm the server hung up (its FIN waits behind the unread echo).
    """
    figures = Figures()
    socks: list[socket.socket] = []
    sent = dict.fromkeys(range(n), 0)
    chunk = b"\x5a" * 65536
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            sock.settimeout(30)
            sock.connect((LOCALHOST, port))
            sock.setblocking(False)
            socks.append(sock)
        blocked: set[int] = set()
        # Fill every connection until it blocks (or reaches the cap): bounded rounds.
        for _ in range(cap // len(chunk) + 1):
            for i, sock in enumerate(socks):
                if i in blocked or sent[i] >= cap:
                    continue
                try:
                    sent[i] += sock.send(chunk[: cap - sent[i]])
                except BlockingIOError:
                    blocked.add(i)
                except OSError as exc:
                    figures.failures.append(f"send: {exc!r}")
                    blocked.add(i)
        figures.bytes_sent = sum(sent.values())
        reaped()
        deadline = time.monotonic() + timeout
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while sock.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
            except TimeoutError:
                figures.failures.append("a never-reading client was not closed by the server")
                continue
            figures.clients += 1
    finally:
        for sock in socks:
            sock.close()
    return figures


def echo_clients(port: int, n: int, *, concurrency: int, max_size: int, liars: float = 0.0,
                 seed: int = 1, timeout: float = 60) -> Figures:
    """n clients send random bytes of random length (0..max_size), half-close, and
    check the echo byte for byte; a ``liars`` fraction instead resets mid-send."""
    rng = random.Random(seed)
    plan = [(rng.randrange(0, max_size + 1), rng.random() < liars) for _ in range(n)]
    figures = Figures()

    async def job(i: int) -> tuple[int, int, bool]:
        size, liar = plan[i]
        payload = os.urandom(size)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port),
                                                timeout)
        try:
            if liar:
                writer.write(payload[: size // 2])
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return size // 2, 0, True
            writer.write(payload)
            writer.write_eof()
            echo = await asyncio.wait_for(reader.read(-1), timeout)
            if echo != payload:
                return size, 0, False
            return size, size, True
        finally:
            writer.close()

    for result in asyncio.run(_each(n, concurrency, job)):
        if isinstance(result, BaseException):
            figures.failures.append(repr(result))
            continue
        sent, verified, ok = result  # type: ignore[misc]
        figures.clients += 1
        figures.bytes_sent += sent
        figures.bytes_verified += verified
        figures.mismatches += 0 if ok else 1
    return figures
