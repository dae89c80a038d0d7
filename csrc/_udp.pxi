# Included at the end of _core.pyx: the datagram loops, server and client.  The work on
# each datagram is C in _udp.h; here are the loops around it, which hold no GIL while
# they run, and take every failure through check_rc() as the stream loops do.

import ipaddress
import os

from pytcpecho.constants import (
    UDP_BURST_SECONDS, UDP_DROP_REASONS, UDP_LOOP_PORTS, UDP_MAX_SIZE, UDP_MIN_BURST, UDP_RATE,
)
from _udpio cimport (
    pte_src, pte_rule, pte_udp_server, pte_udp_client, pte_event,
    PTE_EV_ECHO, PTE_EV_DUP, PTE_EV_CORRUPT, PTE_EV_LATE, PTE_EV_REFUSED,
    MSG_WAITFORONE, pte_wait_readable, pte_set_rcvtimeo_ns, pte_udp_server_init, pte_udp_server_free,
    pte_udp_block_port, pte_udp_server_recv, pte_udp_server_judge, pte_udp_server_send,
    pte_udp_want_ttl, pte_udp_client_init, pte_udp_client_free, pte_udp_answered,
    pte_udp_client_send, pte_udp_client_recv,
)

cdef extern from "<sys/socket.h>":
    enum:
        AF_INET_ "AF_INET"
        AF_INET6_ "AF_INET6"


cdef long long UDP_WAIT_SLICE_NS = 100000000
"""The longest a datagram loop waits at once (the socket's SO_RCVTIMEO while a session
runs on it): stop() is seen within 0.1 s."""
cdef long long UDP_SEND_SLACK_NS = 1000000
"""An open loop fast enough to fill a batch within this time (1 ms: 64,000 datagrams a
second on one socket) sends whole batches: the first due datagram waits for the batch."""
_EVENT_KINDS = {PTE_EV_ECHO: "echo", PTE_EV_DUP: "duplicate", PTE_EV_CORRUPT: "corrupted",
                PTE_EV_LATE: "late", PTE_EV_REFUSED: "refused"}


cdef int _fill_rules(pte_rule *rules, object given) except -1:
    """(packed network address, prefix length) pairs into C rules."""
    cdef int i = 0
    cdef bytes packed
    for packed, prefix in given:
        if len(packed) not in (4, 16) or not 0 <= prefix <= 8 * len(packed):
            raise ValueError(f"a network rule must be a packed IPv4 or IPv6 address and its "
                             f"prefix length, not {(packed, prefix)!r}")
        rules[i].family = AF_INET_ if len(packed) == 4 else AF_INET6_
        memcpy(rules[i].net, <const char *>packed, len(packed))
        rules[i].prefix = prefix
        i += 1
    return 0


cdef class UdpEchoSession:
    """The datagram echo loop of one bound UDP socket, with its reflection guards: see
    pytcpecho.contract.UdpServerSession.  A batch of up to UDP_BATCH datagrams comes in
    with one recvmmsg() and goes back with one sendmmsg(), from buffers made once."""

    cdef pte_udp_server u
    cdef bint ready
    cdef int stop_flag

    def __cinit__(self, int fd, Py_ssize_t max_size=UDP_MAX_SIZE, double rate=UDP_RATE,
                  object deny=(), object allow=(), object blocked_ports=UDP_LOOP_PORTS):
        if not 1 <= max_size <= 65535:
            raise ValueError("max_size must be 1 to 65535 bytes")
        if not rate >= 0:
            raise ValueError("rate must be 0 (no limit) or positive")
        deny, allow = list(deny), list(allow)
        ports = list(blocked_ports)
        if any(not 0 <= p <= 65535 for p in ports):
            raise ValueError("blocked ports must be 0 to 65535")
        if pte_udp_server_init(&self.u, fd, max_size, len(deny), len(allow)) != 0:
            raise MemoryError()
        self.ready = True
        _fill_rules(self.u.deny, deny)
        _fill_rules(self.u.allow, allow)
        self.u.ndeny, self.u.nallow = len(deny), len(allow)
        self.u.rate = rate
        self.u.burst = max(rate * UDP_BURST_SECONDS, UDP_MIN_BURST)
        for p in ports:
            pte_udp_block_port(&self.u, p)

    def __dealloc__(self):
        if self.ready:
            pte_udp_server_free(&self.u)

    @property
    def datagrams_in(self):
        return self.u.datagrams_in

    @property
    def datagrams_out(self):
        return self.u.datagrams_out

    @property
    def bytes_in(self):
        return self.u.bytes_in

    @property
    def bytes_out(self):
        return self.u.bytes_out

    @property
    def denied(self):
        return self.u.dropped[0]

    @property
    def loop_port(self):
        return self.u.dropped[1]

    @property
    def rate_limited(self):
        return self.u.dropped[2]

    @property
    def truncated(self):
        return self.u.dropped[3]

    @property
    def send_errors(self):
        return self.u.send_errors

    def last_dropped(self, str reason):
        """(address, port) of the last datagram dropped for ``reason``, or None."""
        if reason not in UDP_DROP_REASONS:
            raise ValueError(f"reason must be one of {', '.join(UDP_DROP_REASONS)}, "
                             f"not {reason!r}")
        cdef int i = UDP_DROP_REASONS.index(reason)
        if self.u.dropped[i] == 0:
            return None
        cdef pte_src s = self.u.last[i]
        packed = bytes(s.addr[:4] if s.family == AF_INET_ else s.addr[:16])
        return str(ipaddress.ip_address(packed)), s.port

    def stop(self):
        """Make run() return within 0.1 s (safe from any thread, and before run())."""
        self.stop_flag = 1

    def run(self):
        """Echo until stop().  The socket's SO_RCVTIMEO becomes 0.1 s: each wait for a
        datagram comes back that often to look for stop()."""
        if pte_set_rcvtimeo_ns(self.u.fd, UDP_WAIT_SLICE_NS) != 0:
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
        with nogil:
            self._loop()

    cdef int _loop(self) except -1 nogil:
        cdef int n
        while not self.stop_flag:
            while not failed_with(n := pte_udp_server_recv(&self.u), EAGAIN) and check_rc(n):
                pass
            if n < 0:  # none came in 0.1 s: look at stop_flag again
                continue
            pte_udp_server_judge(&self.u, n)
            while check_rc(pte_udp_server_send(&self.u)):
                pass
        return 0


cdef class UdpClientSession:
    """Datagrams to an echo server on a connected UDP socket, each verified and timed:
    see pytcpecho.contract.UdpClientSession.  Batches go out with sendmmsg() and come
    back with recvmmsg(); the check of each echo, the duplicate window, the jitter and
    the histogram are C memory, so a run costs no Python object per datagram."""

    cdef pte_udp_client c
    cdef bint ready
    cdef bytes base_obj
    cdef long long size
    cdef long long wait_ns
    cdef int stop_flag
    cdef bint watch_signals
    cdef long long signals_checked_ns

    def __cinit__(self, int fd, long long size, bytes base, object timeout=None,
                  bint trace=False):
        if not UDP_HEADER <= size <= UDP_MAX_SIZE:
            raise ValueError(f"size must be {UDP_HEADER} to {UDP_MAX_SIZE} bytes")
        if len(base) != BLOCK:
            raise ValueError(f"pattern base must be {BLOCK} bytes")
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be positive, at most {MAX_TIMEOUT:g} s (None: none)")
        self.base_obj = base
        self.size = size
        self.wait_ns = 1000000000 if timeout is None else <long long>(timeout * 1e9)
        if pte_udp_client_init(&self.c, fd, size, <const unsigned char *>self.base_obj,
                               int.from_bytes(os.urandom(4), "little"), NBUCKETS, trace) != 0:
            raise MemoryError()
        self.ready = True
        if pte_udp_want_ttl(fd) != 0 or pte_set_rcvtimeo_ns(fd, UDP_WAIT_SLICE_NS) != 0:
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))

    def __dealloc__(self):
        if self.ready:
            pte_udp_client_free(&self.c)

    @property
    def sent(self):
        return self.c.sent

    @property
    def received(self):
        return self.c.received

    @property
    def messages(self):
        return self.c.received

    @property
    def corrupted(self):
        return self.c.corrupted

    @property
    def duplicates(self):
        return self.c.duplicates

    @property
    def reordered(self):
        return self.c.reordered

    @property
    def late(self):
        return self.c.late

    @property
    def refused(self):
        return self.c.refused

    @property
    def bytes_sent(self):
        return self.c.bytes_sent

    @property
    def bytes_received(self):
        return self.c.bytes_received

    @property
    def jitter_ns(self):
        return self.c.jitter

    @property
    def ttl_last(self):
        return self.c.ttl_last

    @property
    def ttl_min(self):
        return self.c.ttl_min

    @property
    def ttl_max(self):
        return self.c.ttl_max

    @property
    def latency_min_ns(self):
        return self.c.lat_min

    @property
    def latency_max_ns(self):
        return self.c.lat_max

    @property
    def latency_sum_ns(self):
        return self.c.lat_sum

    def histogram(self):
        """The latency histogram's counts, one per bucket."""
        return [self.c.hist[i] for i in range(NBUCKETS)]

    def stop(self):
        """Make run() or collect() return within 0.1 s (safe from any thread)."""
        self.stop_flag = 1

    def events(self):
        """With trace: (sequence number, round trip ns, TTL, kind) of what came since the
        last call."""
        cdef int i
        cdef pte_event *e
        out = []
        for i in range(self.c.nevents):
            e = &self.c.events[i]
            out.append((e.seq, e.rtt_ns, e.ttl, _EVENT_KINDS[e.kind]))
        self.c.nevents = 0
        return out

    def run(self, long long count, double rate=0.0, double duration=0.0, object wait=None):
        """Send ``count`` datagrams (0: until ``duration`` or stop()), then collect(wait)."""
        cdef long long deadline = 0
        cdef long long interval_ns = 0
        if count < 0 or not rate >= 0 or not duration >= 0:
            raise ValueError("count, rate and duration must not be negative")
        if count == 0 and duration == 0:
            raise ValueError("give a count or a duration")
        if duration > 0:
            deadline = now_ns() + <long long>(duration * 1e9)
        if rate > 0:
            interval_ns = max(1, <long long>(1e9 / rate))
        self._watch_signals_here()
        with nogil:
            if interval_ns:
                self._open_loop(count, interval_ns, deadline)
            else:
                self._lockstep(count, deadline)
        return self.collect(wait)

    def collect(self, object wait=None):
        """Receive until every datagram sent is answered, the port is closed (an ICMP
        error came after the last echo: none is coming), ``wait`` seconds pass or stop()."""
        cdef long long until = now_ns() + (self.wait_ns if wait is None
                                           else <long long>(float(wait) * 1e9))
        self._watch_signals_here()
        with nogil:
            while self.c.received < self.c.sent and not self.c.closed and not self.stop_flag:
                if not self._receive(until):
                    break
        return self.c.received == self.c.sent and self.c.corrupted == 0

    cdef int _watch_signals_here(self) except -1:
        self.watch_signals = threading.current_thread() is threading.main_thread()
        self.signals_checked_ns = now_ns()
        return 0

    cdef int _poll_signals(self, long long t) except -1 nogil:
        """In the main thread, Python's signal handlers every 50 ms of a busy loop."""
        if self.watch_signals and t - self.signals_checked_ns >= SIGNAL_POLL_NS:
            self.signals_checked_ns = t
            check_signals()
        return 0

    cdef int _receive(self, long long until) except -1 nogil:
        """Take what comes until ``until``, at most 0.1 s at a time: 0 once ``until`` has
        passed, else 1.  With 0.1 s or more to go, the wait is the receive itself (one
        call per echo, as a plain blocking loop makes; SO_RCVTIMEO bounds it); nearer
        the end, a poll() of exactly what is left."""
        cdef int n, w
        cdef long long t = now_ns()
        cdef int flags = MSG_WAITFORONE if until - t >= UDP_WAIT_SLICE_NS else MSG_DONTWAIT
        while not failed_with(n := pte_udp_client_recv(&self.c, flags, SUB_BITS, NBUCKETS),
                              EAGAIN) and check_rc(n):
            pass
        t = now_ns()
        self._poll_signals(t)
        if n > 0:
            return 1
        if t >= until:
            return 0
        if flags == MSG_DONTWAIT:
            while check_rc(w := pte_wait_readable(self.c.fd, min(until - t, UDP_WAIT_SLICE_NS))):
                pass
        return 1

    cdef int _lockstep(self, long long count, long long deadline) except -1 nogil:
        """One datagram at a time: the next once its echo came or the wait ran out."""
        cdef long long i = 0, t, seq, refused
        cdef int r
        while (count <= 0 or i < count) and not self.stop_flag:
            t = now_ns()
            if deadline and t >= deadline:
                break
            while check_rc(r := pte_udp_client_send(&self.c, 1, t, 0)):
                pass
            seq = self.c.sent - 1
            refused = self.c.refused  # an ICMP error from here on answers this one
            i += 1
            while (not pte_udp_answered(&self.c, seq) and self.c.refused == refused
                   and not self.stop_flag):
                if not self._receive(t + self.wait_ns):
                    break
        return 0

    cdef int _open_loop(self, long long count, long long interval_ns, long long deadline) \
            except -1 nogil:
        """Datagram i is due at start + i * interval, and carries that time: a sender that
        falls behind shows as latency, not as a lower rate measured from late sends.
        What is due goes at once, a batch to a sendmmsg(); at rates that fill a batch
        within UDP_SEND_SLACK_NS, the first waits for its whole batch (the wait is in its
        latency), so a fast loop costs a few calls per batch, not three per datagram."""
        cdef long long start = now_ns(), i = 0, t, due, n, next_due, oldest
        cdef long long slack = interval_ns * UDP_BATCH
        if slack > UDP_SEND_SLACK_NS:
            slack = 0
        cdef int r, got
        while not self.stop_flag:
            t = now_ns()
            if (deadline and t >= deadline) or (count > 0 and i >= count):
                break
            self._poll_signals(t)
            due = (t - start) // interval_ns + 1
            if count > 0 and due > count:
                due = count
            n = due - i
            if n > UDP_BATCH:
                n = UDP_BATCH
            oldest = start + i * interval_ns
            if (0 < n < UDP_BATCH and t - oldest < slack and due != count
                    and not (deadline and oldest + slack >= deadline)):
                n = 0  # a whole batch soon: wait for it, or for the slack to run out
            if n > 0:
                while check_rc(r := pte_udp_client_send(&self.c, <int>n, oldest, interval_ns)):
                    pass
                i += r
            while not failed_with(got := pte_udp_client_recv(&self.c, MSG_DONTWAIT, SUB_BITS,
                                                             NBUCKETS), EAGAIN) and check_rc(got):
                pass
            if n <= 0 and got < 0:  # nothing to send yet, nothing come: wait for either
                next_due = start + i * interval_ns
                if slack and next_due <= t:  # some are due, waiting for a batch
                    next_due = min(next_due + slack,
                                   start + (i + UDP_BATCH - 1) * interval_ns)
                if deadline and next_due > deadline:
                    next_due = deadline
                t = now_ns()
                if next_due > t:
                    while check_rc(r := pte_wait_readable(
                            self.c.fd, min(next_due - t, UDP_WAIT_SLICE_NS))):
                        pass
        return 0
