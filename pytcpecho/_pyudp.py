"""The pure-Python UDP sessions: the same loops and API as the Cython core's (csrc/_udp.pxi).

``UdpEchoSession`` echoes each datagram of one bound socket back to its sender,
behind the reflection guards; ``UdpClientSession`` sends numbered, timed,
checked datagrams on a connected socket and sorts what comes back.  The wire
format (see ``contract.UdpClientSession``) is the Cython core's byte for byte,
so either client verifies either server.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._pytimed import TimedLoop
from .constants import (
    BLOCK,
    MAX_BYTES,
    MAX_TIMEOUT,
    UDP_BATCH,
    UDP_BURST_SECONDS,
    UDP_DROP_REASONS,
    UDP_HEADER,
    UDP_LOOP_PORTS,
    UDP_MAX_SIZE,
    UDP_MIN_BURST,
    UDP_RATE,
    UDP_TRACE,
    UDP_WINDOW,
)
from .sockets import Borrowed

__all__ = ["UdpClientSession", "UdpEchoSession", "check_of"]

_HEAD = struct.Struct("<QQII")  # sequence number, send time, session id, check
_CHECKED = 20  # the check covers the header's first 20 bytes
_FNV_BASIS = 0x811C9DC5
_FNV_PRIME = 0x01000193
_TICK_NS = 100_000_000  # the longest a loop waits before it looks at stop() again
_DEFAULT_WAIT_NS = 1_000_000_000  # lockstep's timeout and collect()'s wait without a timeout
_DATAGRAM_MAX = 65535  # the most one UDP datagram carries (less over IPv4, see UDP_MAX_SIZE)
_IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's value; Python does not name it
_ANC_SPACE = socket.CMSG_SPACE(4) * 2
_TABLE_PRUNE = 4096  # rate-limit buckets kept before idle ones are pruned
_TABLE_MAX = 1 << 16  # ... and at most (a flood of spoofed sources): some MiB
_SPEW = 4 * UDP_BATCH  # datagrams an open loop reads before it sends what is due


def check_of(head: bytes | memoryview) -> int:
    """FNV-1a (32 bits) of a datagram's first 20 bytes: its sequence number, time and id."""
    h = _FNV_BASIS
    for b in bytes(head[:_CHECKED]):
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def _positive_timeout(timeout: float | None, what: str) -> int:
    """``timeout`` seconds in ns (-1 for None); ValueError outside (0, MAX_TIMEOUT]."""
    if timeout is None:
        return -1
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"{what} must be positive, at most {MAX_TIMEOUT:g} s (None: none)")
    return max(1, int(timeout * 1e9))


def _ttl_of(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The TTL (IPv4) or hop limit (IPv6) in a datagram's ancillary data; -1 if none."""
    for level, kind, data in ancdata:
        if ((level == socket.IPPROTO_IP and kind == socket.IP_TTL)
                or (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT)):
            return int.from_bytes(data[:4], sys.byteorder)
    return -1


# -- the client ---------------------------------------------------------------------------

class UdpClientSession(TimedLoop):
    """Numbered datagrams on a connected UDP socket, each echo verified and timed; its
    histogram, latency figures and stop() are TimedLoop's.

    ``fd`` is a connected, blocking UDP socket the caller owns and keeps open;
    the session turns on the TTL (hop limit) ancillary data on it, and otherwise
    leaves it as it was (it waits in poll() and reads with MSG_DONTWAIT).
    """

    sent: int
    received: int
    corrupted: int
    duplicates: int
    reordered: int
    late: int
    refused: int
    jitter_ns: float
    ttl_last: int
    ttl_min: int
    ttl_max: int
    bytes_sent: int
    bytes_received: int

    def __init__(self, fd: int, size: int, base: bytes, timeout: float | None = None,
                 trace: bool = False) -> None:
        if not UDP_HEADER <= size <= UDP_MAX_SIZE:
            raise ValueError(f"size must be {UDP_HEADER} to {UDP_MAX_SIZE} bytes")
        if len(base) != BLOCK:
            raise ValueError(f"pattern base must be {BLOCK} bytes")
        self._timeout_ns = _positive_timeout(timeout, "timeout")
        self._fd = fd
        self._size = size
        self._payload = bytes(base[UDP_HEADER:size])
        self._id = random.getrandbits(32)
        self._sbuf = bytearray(size)
        self._sbuf[UDP_HEADER:] = self._payload
        self._rbuf = bytearray(size + 1)  # one more: a longer echo shows as such
        self._seen = bytearray(UDP_WINDOW // 8)  # one bit per sequence number in the window
        self._highest = -1
        self._prev_transit: int | None = None
        self._trace = trace
        self._events: list[tuple[int, int, int, str]] = []
        super().__init__()
        self.sent = self.received = self.corrupted = self.duplicates = 0
        self.reordered = self.late = self.refused = 0
        self._closed = False
        self.jitter_ns = 0.0
        self.ttl_last = self.ttl_min = self.ttl_max = -1
        self.bytes_sent = self.bytes_received = 0
        with Borrowed(fd) as sock:
            if sock.type != socket.SOCK_DGRAM:
                raise ValueError("a UDP client needs a datagram socket")
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                # An IPv4-mapped peer's echoes carry an IPv4 TTL instead.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)

    # -- what callers read --

    @property
    def messages(self) -> int:
        return self.received

    def events(self) -> list[tuple[int, int, int, str]]:
        """What came since the last call (with ``trace``), oldest first."""
        events, self._events = self._events, []
        return events

    # -- the loops --

    def run(self, count: int, rate: float = 0.0, duration: float = 0.0,
            wait: float | None = None) -> bool:
        if count < 0 or rate < 0 or duration < 0:
            raise ValueError("count, rate and duration must not be negative")
        if not math.isfinite(rate) or duration > MAX_TIMEOUT:
            raise ValueError(f"rate must be finite and duration at most {MAX_TIMEOUT:g} s")
        if count == 0 and duration == 0:
            raise ValueError("give a count or a duration")
        if count > MAX_BYTES // self._size:
            raise ValueError(f"size x count is too large: at most {MAX_BYTES} bytes a run")
        wait_ns = self._wait_ns(wait)
        deadline = time.monotonic_ns() + int(duration * 1e9) if duration > 0 else 0
        with Borrowed(self._fd) as sock:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            if rate > 0:
                self._open_loop(sock, poller, count, rate, deadline)
            else:
                self._lockstep(sock, poller, count, deadline)
            self._collect(sock, poller, wait_ns)
        return self._intact()

    def collect(self, wait: float | None = None) -> bool:
        wait_ns = self._wait_ns(wait)
        with Borrowed(self._fd) as sock:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._collect(sock, poller, wait_ns)
        return self._intact()

    def _intact(self) -> bool:
        """Every datagram sent came back intact, and nothing came back damaged."""
        return self.received == self.sent and self.corrupted == 0

    def _wait_ns(self, wait: float | None) -> int:
        if wait is None:
            return self._timeout_ns if self._timeout_ns >= 0 else _DEFAULT_WAIT_NS
        if not 0 <= wait <= MAX_TIMEOUT:
            raise ValueError(f"wait must be 0 to {MAX_TIMEOUT:g} s (None: the timeout)")
        return int(wait * 1e9)

    def _lockstep(self, sock: socket.socket, poller: select.poll, count: int,
                  deadline: int) -> None:
        """One datagram at a time: the next once its intact echo came or the timeout (1 s
        without one) passed; other arrivals are sorted meanwhile."""
        timeout_ns = self._timeout_ns if self._timeout_ns >= 0 else _DEFAULT_WAIT_NS
        i = 0
        while (count == 0 or i < count) and not self._stop:
            now = time.monotonic_ns()
            if deadline and now >= deadline:
                return
            seq = self.sent
            if not self._send(sock, now):
                self._await(sock, poller, select.POLLOUT, _TICK_NS)
                continue
            i += 1
            end = now + timeout_ns
            if deadline:
                end = min(end, deadline)  # collect() waits for the rest
            refused = self.refused  # an ICMP error from here on answers this one
            while not self._stop and not self._answered(seq):
                self._drain(sock, 0)
                if self._answered(seq) or self.refused > refused:
                    break
                left = end - time.monotonic_ns()
                if left <= 0:
                    break
                self._await(sock, poller, select.POLLIN, min(left, _TICK_NS))

    def _open_loop(self, sock: socket.socket, poller: select.poll, count: int, rate: float,
                   deadline: int) -> None:
        """Datagram i is due at start + i/rate and carries that time: whatever is due goes
        out at once (UDP_BATCH at most between two reads), echoes are read in between.
        With a duration, the loop reads on until it is over, though nothing is due."""
        period = max(1, int(1e9 / rate))  # whole ns, as the Cython core stamps them
        start = time.monotonic_ns()
        i = 0
        while (count == 0 or i < count) and not self._stop:
            now = time.monotonic_ns()
            if deadline and now >= deadline:
                return
            due = start + i * period
            if deadline and due >= deadline:
                due = deadline  # nothing more to send: read until the end
            elif due <= now:
                batch = 0
                while batch < UDP_BATCH and due <= now and (count == 0 or i < count):
                    if deadline and due >= deadline:
                        break
                    if not self._send(sock, due):  # the send buffer is full
                        self._await(sock, poller, select.POLLOUT | select.POLLIN, _TICK_NS)
                        break
                    i += 1
                    batch += 1
                    due = start + i * period
                self._drain(sock, _SPEW)
                continue
            self._drain(sock, _SPEW)
            self._await(sock, poller, select.POLLIN, min(due - now, _TICK_NS))

    def _collect(self, sock: socket.socket, poller: select.poll, wait_ns: int) -> None:
        """Read until every datagram sent is answered, the port is closed (an ICMP error
        came after the last echo: none is coming), ``wait_ns`` passes or stop()."""
        end = time.monotonic_ns() + wait_ns
        self._drain(sock, 0)
        while self.received < self.sent and not self._closed and not self._stop:
            left = end - time.monotonic_ns()
            if left <= 0:
                return
            self._await(sock, poller, select.POLLIN, min(left, _TICK_NS))
            self._drain(sock, 0)

    @staticmethod
    def _await(sock: socket.socket, poller: select.poll, events: int, wait_ns: int) -> None:
        """Wait until ``events`` on the socket, at most ``wait_ns``."""
        poller.modify(sock.fileno(), events)
        poller.poll(max(0, wait_ns) / 1e6)  # ms, rounded up

    # -- one datagram --

    def _send(self, sock: socket.socket, send_ns: int) -> bool:
        """Send datagram number ``sent`` stamped ``send_ns``; False when the send buffer
        is full (nothing sent).  A refusal reported here belongs to an earlier datagram:
        it is counted, and this one is sent again."""
        seq = self.sent
        _HEAD.pack_into(self._sbuf, 0, seq, send_ns, self._id, 0)
        struct.pack_into("<I", self._sbuf, _CHECKED, check_of(memoryview(self._sbuf)))
        slot = seq & (UDP_WINDOW - 1)  # forget seq - UDP_WINDOW: its slot is this one's
        self._seen[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
        while True:
            try:
                sock.send(self._sbuf, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except ConnectionRefusedError:  # reported once: the next try goes out
                self._refuse()
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # ENOBUFS: dropped on the way out, lost
                    raise
            break
        self.sent += 1
        self.bytes_sent += self._size
        return True

    def _answered(self, seq: int) -> bool:
        slot = seq & (UDP_WINDOW - 1)
        return bool(self._seen[slot >> 3] & (1 << (slot & 7)))

    def _drain(self, sock: socket.socket, most: int) -> None:
        """Read and sort every datagram waiting (``most`` at most, 0: no limit, but a
        flood does not keep stop() waiting)."""
        n = 0
        view = memoryview(self._rbuf)
        while (not most or n < most) and not self._stop:
            try:
                got, ancdata, _, _ = sock.recvmsg_into([view], _ANC_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # an ICMP error: one datagram lost
                self._refuse()
                continue
            n += 1
            self._sort(view[:got], time.monotonic_ns(), _ttl_of(ancdata))

    def _sort(self, data: memoryview, now: int, ttl: int) -> None:
        """Count one echo as received, duplicate, late or corrupted, and time it."""
        if ttl >= 0:
            self.ttl_last = ttl
            self.ttl_min = ttl if self.ttl_min < 0 else min(self.ttl_min, ttl)
            self.ttl_max = max(self.ttl_max, ttl)
        if len(data) < UDP_HEADER:
            self._corrupt(-1, -1, ttl)
            return
        seq, send_ns, session_id, check = _HEAD.unpack_from(data)
        if check != check_of(data) or session_id != self._id or seq >= self.sent:
            self._corrupt(-1, -1, ttl)  # not a header this session wrote
            return
        rtt = now - send_ns
        if len(data) != self._size or data[UDP_HEADER:] != self._payload:
            self._corrupt(seq, rtt, ttl)
            return
        if seq < self.sent - UDP_WINDOW:
            self.late += 1
            self._event(seq, rtt, ttl, "late")
            return
        slot = seq & (UDP_WINDOW - 1)
        bit = 1 << (slot & 7)
        if self._seen[slot >> 3] & bit:
            self.duplicates += 1
            self._event(seq, rtt, ttl, "duplicate")
            return
        self._seen[slot >> 3] |= bit
        if seq < self._highest:
            self.reordered += 1
        else:
            self._highest = seq
        self.received += 1
        self._closed = False
        self.bytes_received += len(data)
        self._record(rtt)
        if self._prev_transit is not None:  # RFC 3550, 6.4.1
            self.jitter_ns += (abs(rtt - self._prev_transit) - self.jitter_ns) / 16
        self._prev_transit = rtt
        self._event(seq, rtt, ttl, "echo")

    def _corrupt(self, seq: int, rtt: int, ttl: int) -> None:
        self.corrupted += 1
        self._event(seq, rtt, ttl, "corrupted")

    def _refuse(self) -> None:
        self.refused += 1
        self._closed = True  # until an echo comes: the port is closed now
        self._event(-1, -1, -1, "refused")

    def _event(self, seq: int, rtt: int, ttl: int, kind: str) -> None:
        if self._trace and len(self._events) < UDP_TRACE:
            self._events.append((seq, rtt, ttl, kind))


# -- the server ---------------------------------------------------------------------------

_Rule = tuple[int, int]  # (network as an int, mask as an int), for one address length
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _rules(networks: Sequence[tuple[bytes, int]], what: str) -> dict[int, list[_Rule]]:
    """deny or allow networks by address length (4, 16): ValueError for a bad one."""
    rules: dict[int, list[_Rule]] = {4: [], 16: []}
    for packed, prefix in networks:
        if len(packed) not in rules:
            raise ValueError(f"{what}: a packed address is 4 or 16 bytes, not {len(packed)}")
        bits = 8 * len(packed)
        if not 0 <= prefix <= bits:
            raise ValueError(f"{what}: prefix length must be 0 to {bits}, not {prefix}")
        mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
        rules[len(packed)].append((int.from_bytes(packed, "big") & mask, mask))
    return rules


def _matches(rules: list[_Rule], address: int) -> bool:
    return any(address & mask == network for network, mask in rules)


class UdpEchoSession:
    """The echo loop of one bound UDP socket, behind the reflection guards.

    ``fd`` is a bound, blocking UDP socket (IPv4, or IPv6 and maybe dual-stack) the
    caller owns and keeps open.  run() waits in poll() on it and on a wake pipe that
    stop() writes to, and reads with MSG_DONTWAIT until nothing is left.
    """

    datagrams_in: int
    datagrams_out: int
    bytes_in: int
    bytes_out: int
    denied: int
    loop_port: int
    rate_limited: int
    truncated: int
    send_errors: int

    def __init__(self, fd: int, max_size: int = UDP_MAX_SIZE, rate: float = UDP_RATE,
                 deny: Sequence[tuple[bytes, int]] = (),
                 allow: Sequence[tuple[bytes, int]] = (),
                 blocked_ports: Sequence[int] = UDP_LOOP_PORTS) -> None:
        self._wake_r = self._wake_w = -1  # for __del__, should a check below fail
        if not 1 <= max_size <= _DATAGRAM_MAX:
            raise ValueError(f"max_size must be 1 to {_DATAGRAM_MAX} bytes")
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError("rate must be a finite number, 0 or more (0: no limit)")
        if any(not 0 <= p <= 65535 for p in blocked_ports):
            raise ValueError("blocked ports must be 0 to 65535")
        self._fd = fd
        self._max_size = max_size
        self._rate = float(rate)
        self._burst = max(rate * UDP_BURST_SECONDS, UDP_MIN_BURST)
        self._deny = _rules(deny, "deny")
        self._allow = _rules(allow, "allow")
        self._allowing = bool(allow)
        self._blocked = frozenset(blocked_ports)
        self._buckets: dict[bytes, list[float]] = {}  # source -> [tokens, last refill ns]
        self._prune_at = _TABLE_PRUNE
        self._buf = bytearray(max_size)
        self._last: dict[str, tuple[str, int]] = {}
        self._stopped = False
        self.datagrams_in = self.datagrams_out = self.bytes_in = self.bytes_out = 0
        self.denied = self.loop_port = self.rate_limited = self.truncated = 0
        self.send_errors = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def __del__(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def last_dropped(self, reason: str) -> tuple[str, int] | None:
        if reason not in UDP_DROP_REASONS:
            raise ValueError(f"reason must be one of {', '.join(UDP_DROP_REASONS)}, "
                             f"not {reason!r}")
        return self._last.get(reason)

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):  # full (already woken) or closed: nothing to do
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        if self._stopped:
            return
        with Borrowed(self._fd) as sock:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            view = memoryview(self._buf)
            while not self._stopped:
                for _ in range(UDP_BATCH):
                    if not self._echo_one(sock, view) or self._stopped:
                        break
                else:
                    continue  # more may be waiting: read on before sleeping
                if not self._stopped:
                    poller.poll()

    def _echo_one(self, sock: socket.socket, view: memoryview) -> bool:
        """Read one datagram and echo it, or drop it; False when none was waiting."""
        try:
            # MSG_TRUNC: the datagram's whole length, even past the buffer.
            n, _, flags, source = sock.recvmsg_into([view], 0,
                                                    socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except BlockingIOError:
            return False
        except (ConnectionRefusedError, ConnectionResetError):
            return True  # a peer's ICMP error, reported on this socket: not ours to end on
        got = min(n, self._max_size)
        self.datagrams_in += 1
        self.bytes_in += got
        address = _packed_source(source)
        if n > self._max_size or flags & socket.MSG_TRUNC:
            self._drop("truncated", address, source[1])
        elif self._is_denied(address):
            self._drop("denied", address, source[1])
        elif source[1] in self._blocked:
            self._drop("loop_port", address, source[1])
        elif self._rate > 0 and not self._take_token(address):
            self._drop("rate_limited", address, source[1])
        else:
            try:
                sock.sendto(view[:got], socket.MSG_DONTWAIT, source)
            except OSError:
                self.send_errors += 1  # the network said no: this datagram only
            else:
                self.datagrams_out += 1
                self.bytes_out += got
        return True

    def _drop(self, reason: str, address: bytes, port: int) -> None:
        # The source first: whoever sees the count sees where the datagram came from.
        self._last[reason] = (str(ipaddress.ip_address(address)), port)
        setattr(self, reason, getattr(self, reason) + 1)

    def _is_denied(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        if _matches(self._deny[len(address)], value):
            return True
        return self._allowing and not _matches(self._allow[len(address)], value)

    def _take_token(self, address: bytes) -> bool:
        """The source's token bucket: refilled at ``rate``/s up to the burst; one token a
        datagram, none left is over the rate."""
        now = time.monotonic_ns()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            self._buckets[address] = [self._burst - 1, now]
            return True
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate / 1e9)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def _prune(self, now: int) -> None:
        """Forget the sources whose bucket has filled up again (a new one starts full:
        the same); past _TABLE_MAX sources, all of them, so memory stays bounded."""
        for address in [a for a, (tokens, last) in self._buckets.items()
                        if tokens + (now - last) * self._rate / 1e9 >= self._burst]:
            del self._buckets[address]
        if len(self._buckets) * 2 > _TABLE_MAX:
            self._buckets.clear()
        # Twice what is left, so pruning costs O(1) a datagram, amortised.
        self._prune_at = min(max(_TABLE_PRUNE, 2 * len(self._buckets)), _TABLE_MAX)


def _packed_source(source: tuple[Any, ...]) -> bytes:
    """A source address as 4 (IPv4, an IPv4-mapped IPv6 one too) or 16 packed bytes."""
    host = source[0]
    if len(source) == 2:
        return socket.inet_pton(socket.AF_INET, host)
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    return packed[12:] if packed[:12] == _V4_MAPPED else packed
