"""The pure-Python core: the same loops and API as the Cython core (csrc/_core.pyx).

It stands in where the extension was not built, or with PYTCPECHO_PURE_PYTHON=1.
The behaviour is the same; the difference is that every recv() and send() here
must win the GIL back, so it slows down when other Python threads are busy.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import mmap
import os
import select
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from ._pytimed import TimedLoop
from ._pyudp import UdpClientSession, UdpEchoSession
from .constants import (
    BLOCK,
    CHUNK,
    DEFAULT_SIZE,
    EOF_WAIT_MS,
    MAX_BYTES,
    MAX_TIMEOUT,
    MODES,
)
from .pattern import Pattern
from .sockets import Borrowed, set_io_timeout, set_nodelay

NAME = "python"
__all__ = [  # the contract
    "MODES", "NAME", "ClientGroup", "ClientSession", "ConnectEachSession", "EchoSession",
    "UdpClientSession", "UdpEchoSession",
]


def _timeout() -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, "timed out")


def _os_error(err: int) -> OSError:
    """The OSError subclass for errno ``err`` (ConnectionRefusedError for ECONNREFUSED)."""
    return OSError(err, os.strerror(err))


Address = tuple[int, tuple[Any, ...]]


def _sockaddr(packed: bytes, port: int, scope_id: int) -> Address:
    """(family, socket address) for a packed IPv4 (4 bytes) or IPv6 (16 bytes) address,
    the scope id being the interface of a link-local IPv6 address, as the Cython core's
    pte_addr_set() makes it; ValueError for any other length."""
    families = {4: socket.AF_INET, 16: socket.AF_INET6}
    if len(packed) not in families:
        raise ValueError("packed address must be 4 or 16 bytes")
    family = families[len(packed)]
    host = socket.inet_ntop(family, packed)
    return family, (host, port, 0, scope_id) if family == socket.AF_INET6 else (host, port)


def _buffer(n: int) -> mmap.mmap:
    """A zeroed buffer whose pages become resident only once written.

    (A bytearray is zero-filled up front: 10,000 idle connections would pin
    2.5 GiB.  Anonymous mmap pages cost nothing until a client's bytes land.)
    """
    try:
        return mmap.mmap(-1, n)
    except OSError:
        raise MemoryError(f"cannot allocate a {n}-byte buffer") from None


def _send_all(sock: socket.socket, data: memoryview) -> None:
    """sendall(), but a reader that stalls is a timeout after one SO_SNDTIMEO, not two.

    A blocking send() returns short when the timeout expires mid-way; one
    non-blocking try then tells a stalled reader (nothing fits: BlockingIOError,
    the caller's timeout) from a slow one (progress: wait again).
    """
    probing = False
    while data:
        n = sock.send(data, socket.MSG_DONTWAIT if probing else 0)
        probing = not probing and n < len(data)
        data = data[n:]


class EchoSession:
    """One server connection: see the Cython core's EchoSession.

    ``attach()`` hands the session, and its buffer, to the next connection;
    ``fd`` may be -1 when ``attach()`` comes before the first ``run()``.
    """

    bytes_in: int
    bytes_out: int
    messages: int

    def __init__(self, fd: int, mode: str = "stream", size: int = DEFAULT_SIZE,
                 max_bytes: int = 0, on_message: Callable[[int], object] | None = None,
                 bufsize: int = CHUNK) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(map(repr, MODES))}, not {mode!r}")
        if size <= 0 or bufsize <= 0:
            raise ValueError("size and bufsize must be positive")
        self._fd = fd
        self._message_mode = mode == "message"
        self._buf = _buffer(size if self._message_mode else bufsize)
        self._max_bytes = max_bytes
        self._on_message = on_message
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages = 0

    def attach(self, fd: int) -> None:
        """Serve a new connection on fd with this session: counters (bytes_in,
        bytes_out, messages) back to zero, the buffer kept."""
        self._fd = fd
        self.bytes_in = self.bytes_out = self.messages = 0

    def run(self) -> str:
        if self._fd < 0:  # as recv() on fd -1 says in the Cython core
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        with Borrowed(self._fd) as sock:
            try:
                ended = self._messages(sock) if self._message_mode else self._stream(sock)
            except BlockingIOError:  # SO_RCVTIMEO / SO_SNDTIMEO expired
                raise _timeout() from None
        return "limit" if ended else "eof"

    def _recv(self, sock: socket.socket, view: memoryview) -> int:
        """recv_into up to len(view) bytes, honouring max_bytes; -1 means over the limit."""
        if self._max_bytes > 0:
            room = self._max_bytes - self.bytes_in
            if room <= 0:
                return -1 if sock.recv(1, socket.MSG_PEEK) else 0
            view = view[:room]
        n = sock.recv_into(view)
        self.bytes_in += n
        return n

    def _stream(self, sock: socket.socket) -> bool:
        view = memoryview(self._buf)
        while True:
            n = self._recv(sock, view)
            if n <= 0:
                return n < 0
            _send_all(sock, view[:n])
            self.bytes_out += n

    def _messages(self, sock: socket.socket) -> bool:
        view = memoryview(self._buf)
        size = len(view)
        while True:
            got = 0
            ending = 0
            while got < size:
                n = self._recv(sock, view[got:])
                if n <= 0:
                    ending = 1 if n < 0 else 2
                    break
                got += n
            if got:
                _send_all(sock, view[:got])
                self.bytes_out += got
                self.messages += 1
                if self._on_message is not None:
                    self._on_message(got)
            if ending:
                return ending == 1


class _ClientLoop(TimedLoop):
    """What every stream client loop shares: its arguments' checks, its pattern and
    receive buffer, its counters, and (TimedLoop) its latency histogram and stop()."""

    bytes_sent: int
    bytes_received: int
    messages: int

    def __init__(self, size: int, base: bytes, mode: str, timeout: float | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(map(repr, MODES))}, not {mode!r}")
        if size <= 0:
            raise ValueError("size must be positive")
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:  # poll()'s int ms
            raise ValueError(f"timeout must be positive, at most {MAX_TIMEOUT:g} s (None: none)")
        self._size = size
        self._lockstep = mode == "message"
        self._pattern = Pattern(base)
        self._chunk = max(min(size, CHUNK), BLOCK)
        self._rbuf = bytearray(self._chunk)
        super().__init__()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages = 0


class ClientSession(_ClientLoop):
    """The client's loop: see the Cython core's ClientSession."""

    mismatch_offset: int
    short_echo: bool
    long_echo: int

    def __init__(self, fd: int, size: int, base: bytes, mode: str = "message",
                 timeout: float | None = None) -> None:
        super().__init__(size, base, mode, timeout)
        self._fd = fd
        self._timeout_ms = -1 if timeout is None else max(1, int(timeout * 1000))
        self._offset = 0
        self._shut = False
        self.mismatch_offset = -1
        self.short_echo = False
        self.long_echo = 0

    def run(self, count: int, interval: float = 0.0, duration: float = 0.0,
            finish: bool = True) -> bool:
        deadline = time.monotonic_ns() + int(duration * 1e9) if duration > 0 else 0
        if count <= 0 and deadline == 0:
            raise ValueError("give a count or a duration")
        if count > MAX_BYTES // self._size:
            raise ValueError(f"size x count is too large: at most {MAX_BYTES} bytes a run")
        with Borrowed(self._fd) as sock:
            if self._lockstep:
                ok = self._run_lockstep(sock, count, int(interval * 1e9), deadline, finish)
            else:
                ok = self._run_stream(sock, count, deadline, finish)
            if ok and finish and not self._stop:
                ok = self._await_eof(sock)
            return ok

    def _await_eof(self, sock: socket.socket) -> bool:
        """After the last echo, the server's close: any byte before it is a long echo."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        wait_ms = self._timeout_ms if self._timeout_ms >= 0 else EOF_WAIT_MS
        while poller.poll(wait_ms):
            try:
                r = sock.recv_into(self._rbuf, self._chunk, socket.MSG_DONTWAIT)
            except BlockingIOError:  # nothing to read after all: wait again
                continue
            except ConnectionResetError:
                return True
            if r > 0:
                self.long_echo = r
                return False
            return True
        return True  # open for the whole timeout (10 s without one): nothing extra came

    def _run_lockstep(self, sock: socket.socket, count: int, interval_ns: int, deadline: int,
                      finish: bool) -> bool:
        start = time.monotonic_ns()
        i = 0
        while (count <= 0 or i < count) and not self._stop:
            now = time.monotonic_ns()
            if deadline and now >= deadline:
                break
            due = now
            if interval_ns > 0:
                due = start + i * interval_ns
                if due > now:
                    time.sleep((due - now) / 1e9)
            last = finish and count > 0 and i + 1 == count
            if not self._transfer(sock, self._size, last, 0):
                return False
            self._record(time.monotonic_ns() - due)
            self.messages += 1
            i += 1
        self._half_close(sock, finish)
        return True

    def _run_stream(self, sock: socket.socket, count: int, deadline: int, finish: bool) -> bool:
        t0 = time.monotonic_ns()
        length = self._size * count if count > 0 else 1 << 62
        ok = self._transfer(sock, length, finish, deadline, stoppable=True)
        self._record(time.monotonic_ns() - t0)
        self.messages = self.bytes_received // self._size
        return ok

    def _half_close(self, sock: socket.socket, finish: bool) -> None:
        if finish and not self._shut:
            # As in the Cython core, a failed half-close is not the error to report: a
            # reset peer makes it ENOTCONN, and the next recv() says what happened.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            self._shut = True

    def _transfer(self, sock: socket.socket, length: int, finish: bool, deadline: int,
                  stoppable: bool = False) -> bool:
        """Send pattern bytes [offset, offset+length) and read them back, at once; at the
        deadline, or on stop() when ``stoppable`` (a stream), collect what is owed."""
        send_off = recv_off = self._offset
        end = self._offset + length
        sbuf = memoryview(b"")
        sbuf_start = 0
        rview = memoryview(self._rbuf)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        try:
            while recv_off < end:
                if send_off < end and ((stoppable and self._stop)
                                       or (deadline and time.monotonic_ns() >= deadline)):
                    end = send_off
                    if recv_off >= end:
                        break
                progressed = False
                if send_off < end:
                    if send_off >= sbuf_start + len(sbuf):
                        sbuf = memoryview(self._pattern.slice(send_off, min(self._chunk,
                                                                           end - send_off)))
                        sbuf_start = send_off
                    try:
                        r = sock.send(sbuf[send_off - sbuf_start :],
                                      socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                        send_off += r
                        self.bytes_sent += r
                        progressed = r > 0
                    except BlockingIOError:
                        pass
                if finish and send_off == end:
                    self._half_close(sock, True)
                if recv_off < send_off:
                    want = min(self._chunk, send_off - recv_off)
                    try:
                        # recv_into(buffer, nbytes, flags): the flags are the third argument.
                        r = sock.recv_into(rview, want,
                                           0 if send_off >= end else socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        if send_off >= end:
                            raise _timeout() from None
                    else:
                        if r == 0:
                            self.short_echo = True
                            return False
                        bad = self._pattern.mismatch(rview[:r], recv_off)
                        if bad >= 0:
                            self.mismatch_offset = recv_off + bad
                            self.bytes_received += bad
                            return False
                        recv_off += r
                        self.bytes_received += r
                        progressed = True
                if not progressed:
                    events = select.POLLIN | (select.POLLOUT if send_off < end else 0)
                    poller.modify(sock.fileno(), events)
                    if not poller.poll(self._timeout_ms):
                        raise _timeout()
        finally:
            poller.unregister(sock.fileno())
        self._offset = end
        return True


class ConnectEachSession(ClientSession):
    """The original exercise's pattern: each message on a new connection (see the Cython
    core's).  Construct with fd=-1, name the server with target(), then run_each().
    """

    connections: int

    def __init__(self, fd: int, size: int, base: bytes, mode: str = "message",
                 timeout: float | None = None) -> None:
        super().__init__(fd, size, base, mode, timeout)
        self._timeout = timeout
        self._address: Address | None = None
        self.connections = 0

    def target(self, packed: bytes, port: int, scope_id: int = 0) -> None:
        """Server address: packed IPv4 (4 bytes) or IPv6 (16 bytes), port, and the
        interface index of a link-local IPv6 address."""
        self._address = _sockaddr(packed, port, scope_id)

    def run_each(self, count: int, interval: float = 0.0, duration: float = 0.0) -> bool:
        """``count`` connections (0: until ``duration`` or stop()); True if all intact."""
        if self._address is None:
            raise ValueError("call target() first")
        family, address = self._address
        start = time.monotonic_ns()
        deadline = start + int(duration * 1e9) if duration > 0 else 0
        if count <= 0 and deadline == 0:
            raise ValueError("give a count or a duration")
        interval_ns = int(interval * 1e9)
        i = 0
        while (count <= 0 or i < count) and not self._stop:
            now = time.monotonic_ns()
            if deadline and now >= deadline:
                break
            # Open loop: latency counts from the intended time, even one already past.
            due = start + i * interval_ns if interval_ns > 0 else now
            if due > now:
                time.sleep((due - now) / 1e9)
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(address)
                self.connections += 1
                set_io_timeout(sock, self._timeout)
                set_nodelay(sock)
                self._offset, self._shut = 0, False
                if not self._transfer(sock, self._size, True, 0):
                    return False
            self._record(time.monotonic_ns() - due)
            self.messages += 1
            i += 1
        return True


# -- many connections per thread -----------------------------------------------------

_WAITING, _BUSY, _CLOSING, _DONE, _FAILED, _CONNECTING = range(6)
_SCAN_NS = 20_000_000
_READABLE, _WRITABLE = selectors.EVENT_READ, selectors.EVENT_WRITE
_STEP_ROUNDS = 8


class GroupMember:
    """How one connection of a ClientGroup went (see the Cython core's)."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self.fd = fd
        self.sock: socket.socket | None = None  # over fd while the group runs
        self.own = False  # the group opened it (connect()), and closes it
        self.address: Address | None = None
        self.error: OSError | None = None
        self.state = _WAITING
        self.count = 0
        self.done = 0
        self.shut = False
        self.last = False
        self.send_off = self.recv_off = self.end = 0
        self.due = self.first_due = self.touched = 0
        self.watched = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages = 0
        self.mismatch_offset = -1
        self.short_echo = False
        self.long_echo = 0


class ClientGroup(_ClientLoop):
    """Many connections' client loops in one thread (see the Cython core's ClientGroup)."""

    failed: int
    unfinished: int

    def __init__(self, size: int, base: bytes, mode: str = "message",
                 timeout: float | None = None) -> None:
        super().__init__(size, base, mode, timeout)
        self._timeout_ns = -1 if timeout is None else max(1_000_000, int(timeout * 1e9))
        self._members: list[GroupMember] = []
        self._selector: selectors.BaseSelector | None = None
        self._heap: list[tuple[int, int]] = []
        self._stopping = False
        self._drain_ns = -1
        self._drain_end = 0
        self._finish = True
        self._ran = False
        self._interval_ns = 0
        self._deadline = 0
        self._active = 0
        self.failed = 0
        self.unfinished = 0

    @property
    def connections(self) -> int:
        return len(self._members)

    def add(self, fd: int, count: int = 0) -> int:
        if self._ran:
            raise ValueError("add() connections before run()")
        if fd < 0 or count < 0:
            raise ValueError("fd and count must not be negative")
        if count > MAX_BYTES // self._size:
            raise ValueError(f"size x count is too large: at most {MAX_BYTES} bytes a run")
        member = GroupMember(len(self._members), fd)
        member.count = count
        self._members.append(member)
        return member.index

    def connect(self, packed: bytes, port: int, scope_id: int = 0, count: int = 0) -> int:
        """One more connection, which the group opens itself (see the Cython core's)."""
        address = _sockaddr(packed, port, scope_id)
        index = self.add(0, count)
        self._members[index].fd = -1
        self._members[index].address = address
        return index

    def failures(self) -> list[GroupMember]:
        for m in self._members:
            m.messages = m.done if self._lockstep else m.bytes_received // self._size
        return [m for m in self._members if m.state == _FAILED]

    def run(self, interval: float = 0.0, duration: float = 0.0, finish: bool = True,
            drain: float = -1.0) -> bool:
        if self._ran:
            raise ValueError("a ClientGroup runs once")
        if duration <= 0 and any(m.count == 0 for m in self._members):
            raise ValueError("give a count or a duration")
        if not self._lockstep and interval > 0:
            raise ValueError("an interval needs message mode")
        if not (0 <= interval <= MAX_TIMEOUT and 0 <= duration <= MAX_TIMEOUT
                and drain <= MAX_TIMEOUT):
            raise ValueError(f"interval, duration and drain must be at most {MAX_TIMEOUT:g} s")
        self._ran = True
        self._drain_ns = -1 if drain < 0 else int(drain * 1e9)
        self._finish = finish
        self._interval_ns = int(interval * 1e9)
        if duration > 0:
            self._deadline = time.monotonic_ns() + int(duration * 1e9)
        with selectors.DefaultSelector() as self._selector, contextlib.ExitStack() as lent:
            for m in self._members:  # one socket object each for the run, not one per call
                if m.address is None:
                    m.sock = lent.enter_context(Borrowed(m.fd))
            self._run()
        return self.failed == 0

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        start = time.monotonic_ns()
        next_scan = start + _SCAN_NS
        self._active = len(self._members)
        n = len(self._members)
        for m in self._members:
            m.touched = start
            if self._interval_ns > 0:  # spread the starts over one interval
                m.first_due = start + self._interval_ns * m.index // n
            if m.address is not None:
                self._open(m)
            else:
                self._start(m, start)
        while self._active > 0:
            now = time.monotonic_ns()
            if not self._stopping and (self._stop or (self._deadline and now >= self._deadline)):
                self._stop_all(now)
            if self._drain_end and now >= self._drain_end:
                self._abandon()
                break
            while self._heap and self._heap[0][0] <= now:
                _, index = heapq.heappop(self._heap)
                m = self._members[index]
                if self._stopping:
                    self._end(m)
                else:
                    self._begin(m, m.due)
            if now >= next_scan:
                self._scan(now)
                next_scan = now + _SCAN_NS
            if self._active == 0:
                break
            wait = next_scan - now
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
            if self._deadline and not self._stopping:
                wait = min(wait, self._deadline - now)
            if self._drain_end:
                wait = min(wait, self._drain_end - now)
            for k, (key, events) in enumerate(selector.select(max(0, wait) / 1e9)):
                self._step(key.data, events)
                if self._drain_end and k & 63 == 63 and time.monotonic_ns() >= self._drain_end:
                    break  # the drain is over: the rest of this batch is abandoned too

    @staticmethod
    def _sock(m: GroupMember) -> socket.socket:
        assert m.sock is not None, "a connection's socket is there while it runs"
        return m.sock

    def _watch(self, m: GroupMember, want: int) -> None:
        if m.watched == want:
            return
        assert self._selector is not None
        if want == 0:
            self._selector.unregister(m.fd)
        elif m.watched:
            self._selector.modify(m.fd, want, m)
        else:
            self._selector.register(m.fd, want, m)
        m.watched = want

    def _start(self, m: GroupMember, now: int) -> None:
        """m is connected: its first message goes now, or when it is due."""
        if self._interval_ns > 0 and m.first_due > now:
            m.state = _WAITING
            self._watch(m, 0)
            self._push(m.first_due, m)
        else:
            self._begin(m, m.first_due if self._interval_ns > 0 else now)

    def _open(self, m: GroupMember) -> None:
        """Start connecting m without blocking; it starts once connected."""
        assert m.address is not None
        family, address = m.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        set_nodelay(sock)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EINTR):
            sock.close()
            self._fail(m, _os_error(err))
            return
        m.sock, m.own, m.fd = sock, True, sock.fileno()
        if err == 0:
            self._start(m, time.monotonic_ns())
            return
        m.state = _CONNECTING
        m.touched = time.monotonic_ns()
        self._watch(m, _WRITABLE)

    def _begin(self, m: GroupMember, due: int) -> None:
        m.state = _BUSY
        m.due = due
        if self._lockstep:
            m.end = m.send_off + self._size
            m.last = self._finish and m.count > 0 and m.done + 1 == m.count
        else:
            m.end = self._size * m.count if m.count > 0 else 1 << 62
            m.last = self._finish
        m.touched = time.monotonic_ns()
        self._step(m, _WRITABLE)

    def _step(self, m: GroupMember, ready: int) -> None:
        """Move m's bytes as far as they go; ``ready`` says which calls may find work
        (see the Cython core's _step)."""
        if m.state == _CLOSING:
            self._await_close(m)
            return
        if m.state == _CONNECTING:
            if err := self._sock(m).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._fail(m, _os_error(err))
            else:
                self._start(m, time.monotonic_ns())
            return
        if m.state != _BUSY:
            return
        sock = self._sock(m)
        for _ in range(_STEP_ROUNDS):
            progressed = False
            if m.send_off < m.end and ready & _WRITABLE:
                want = min(self._chunk, m.end - m.send_off)
                try:
                    r = sock.send(self._pattern.slice(m.send_off, want),
                                  socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except BlockingIOError:
                    r = 0
                except OSError as exc:
                    self._fail(m, exc)
                    return
                m.send_off += r
                m.bytes_sent += r
                self.bytes_sent += r
                progressed = r > 0
                if r < want:  # the send buffer is full: wait until it is writable
                    ready &= ~_WRITABLE
            if m.last and m.send_off == m.end and not m.shut:
                with contextlib.suppress(OSError):  # the next recv() says what happened
                    sock.shutdown(socket.SHUT_WR)
                m.shut = True
            if m.recv_off < m.send_off and ready & _READABLE:
                want = min(self._chunk, m.send_off - m.recv_off)
                try:
                    r = sock.recv_into(self._rbuf, want, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    ready &= ~_READABLE
                except OSError as exc:
                    self._fail(m, exc)
                    return
                else:
                    if r < want:  # drained: wait until it is readable
                        ready &= ~_READABLE
                    if r == 0:
                        m.short_echo = True
                        self._fail(m, None)
                        return
                    bad = self._pattern.mismatch(memoryview(self._rbuf)[:r], m.recv_off)
                    if bad >= 0:
                        m.mismatch_offset = m.recv_off + bad
                        m.bytes_received += bad
                        self.bytes_received += bad
                        self._fail(m, None)
                        return
                    before = m.recv_off
                    m.recv_off += r
                    m.bytes_received += r
                    self.bytes_received += r
                    if not self._lockstep:
                        self.messages += m.recv_off // self._size - before // self._size
                    progressed = True
            if progressed:
                m.touched = time.monotonic_ns()
            if m.recv_off >= m.end:
                self._complete(m)
                if m.state != _BUSY:
                    return
                ready |= _WRITABLE  # the next message: its bytes go out at once
                continue
            if not progressed:
                break
        self._watch(m, selectors.EVENT_READ | (selectors.EVENT_WRITE if m.send_off < m.end
                                               else 0))

    def _complete(self, m: GroupMember) -> None:
        now = time.monotonic_ns()
        self._record(now - m.due)
        if not self._lockstep:
            self._end(m)
            return
        m.done += 1
        self.messages += 1
        if self._stopping or (m.count > 0 and m.done == m.count):
            self._end(m)
            return
        due = m.first_due + m.done * self._interval_ns if self._interval_ns > 0 else now
        if due <= now:  # at once; when late, its latency still counts from due
            m.due = due
            m.end = m.send_off + self._size
            m.last = self._finish and m.count > 0 and m.done + 1 == m.count
            return
        m.state = _WAITING
        self._watch(m, 0)
        self._push(due, m)

    def _end(self, m: GroupMember) -> None:
        if self._finish and not m.shut:
            with contextlib.suppress(OSError):
                self._sock(m).shutdown(socket.SHUT_WR)
            m.shut = True
        if not self._finish or self._stop:
            self._retire(m, _DONE)
            return
        m.state = _CLOSING
        wait_ns = self._timeout_ns if self._timeout_ns >= 0 else EOF_WAIT_MS * 1_000_000
        m.touched = time.monotonic_ns() + wait_ns
        self._watch(m, selectors.EVENT_READ)
        self._await_close(m)

    def _await_close(self, m: GroupMember) -> None:
        sock = self._sock(m)
        try:
            r = sock.recv_into(self._rbuf, self._chunk, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except ConnectionResetError:
            r = 0
        except OSError as exc:
            self._fail(m, exc)
            return
        if r > 0:
            m.long_echo = r
            self._fail(m, None)
        else:
            self._retire(m, _DONE)

    def _fail(self, m: GroupMember, error: OSError | None) -> None:
        m.error = error
        self.failed += 1
        self._retire(m, _FAILED)

    def _retire(self, m: GroupMember, state: int) -> None:
        m.state = state
        self._active -= 1
        self._watch(m, 0)
        if m.own and m.sock is not None:  # the group opened it: the group closes it
            m.sock.close()
            m.sock, m.fd = None, -1

    def _stop_all(self, now: int) -> None:
        self._stopping = True
        if self._drain_ns >= 0:
            self._drain_end = now + self._drain_ns + 1
        while self._heap:
            self._end(self._members[heapq.heappop(self._heap)[1]])
        for m in self._members:  # not connected yet: nothing owed, nothing to check
            if m.state == _CONNECTING:
                self._retire(m, _DONE)
        if self._lockstep:
            return
        for m in self._members:
            if m.state == _BUSY and m.send_off < m.end:
                m.end = m.send_off
                m.last = self._finish
                self._step(m, _READABLE | _WRITABLE)

    def _abandon(self) -> None:
        for m in self._members:
            if m.state in (_BUSY, _CLOSING, _CONNECTING):
                self.unfinished += m.state == _BUSY
                self._retire(m, _DONE)

    def _scan(self, now: int) -> None:
        for m in self._members:
            if (m.state in (_BUSY, _CONNECTING) and self._timeout_ns >= 0
                    and now - m.touched > self._timeout_ns):
                self._fail(m, _timeout())
            elif m.state == _CLOSING and now >= m.touched:
                self._retire(m, _DONE)

    def _push(self, due: int, m: GroupMember) -> None:
        m.due = due
        heapq.heappush(self._heap, (due, m.index))
