# Included at the end of _core.pyx: the load generator's loop, many connections
# per thread.  One thread drives its connections from an epoll set, without the
# GIL, so a bench of 10,000 connections needs a few threads, not 10,000, and
# the thread that keeps the clock always gets the CPU it needs.

from libc.stdlib cimport realloc
from libc.string cimport memset
from _netio cimport pte_epoll_wait_ns, pte_connect_start
from _sys cimport (epoll_event, epoll_create1, epoll_ctl, EPOLLIN, EPOLLOUT, EPOLL_CTL_ADD,
                   EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLL_CLOEXEC)

cdef enum:
    WAITING = 0   # between messages, until the next one is due (open loop), unwatched
    BUSY = 1      # a message, or the stream, in flight
    CLOSING = 2   # half-closed after its last message: waiting for the server's close
    DONE = 3
    FAILED = 4
    CONNECTING = 5  # its own connection (connect()), not yet established
    EVENTS_MAX = 512
    SCAN_NS = 20000000  # how often timeouts are looked for: 20 ms
    STEP_ROUNDS = 8     # send/recv rounds one connection gets before the others' turn


cdef struct Conn:
    int fd
    bint owned                # the group opened the fd (connect()), and closes it
    pte_addr addr             # where an owned connection goes
    int state
    unsigned int watched      # the epoll events registered now (0: not in the set)
    int err                   # what ended it: an errno, or 0 for an echo not intact
    bint shut
    bint last                 # the message in flight is the last: half-close once sent
    long long count           # messages to exchange; 0: until the deadline or stop()
    long long done            # messages exchanged
    long long send_off
    long long recv_off
    long long end             # stream offset where the message (or stream) in flight ends
    long long due             # when it was due: its latency counts from here
    long long first_due       # open loop: message i is due at first_due + i * interval
    long long touched         # last progress, for the timeout (CLOSING: when to give up)
    long long bytes_sent
    long long bytes_received
    long long mismatch_offset
    bint short_echo
    long long long_echo


cdef class GroupMember:
    """How one connection of a ClientGroup ended: the fields verdict.py reads."""

    cdef readonly int index
    cdef readonly int fd
    cdef readonly object error
    cdef readonly long long bytes_sent
    cdef readonly long long bytes_received
    cdef readonly long long messages
    cdef readonly long long mismatch_offset
    cdef readonly bint short_echo
    cdef readonly long long long_echo


cdef class ClientGroup(ClientLoop):
    """Many connections' client loops in one thread: send, read back, verify, time.

    Each connection does what a ClientSession does on its own (message round
    trips timed into the shared histogram, or one continuous stream), but all
    are driven from one epoll set: the thread sleeps only when none of them
    can move.  Add the connected fds with add(), then run() once.  A failed
    connection drops out and the others go on; failures() says how each
    failed.  The fds stay the caller's to close.
    """

    cdef Conn *conns
    cdef int n
    cdef int capacity
    cdef int epfd
    cdef long long timeout_ns
    cdef long long *heap_due
    cdef int *heap_conn
    cdef int heap_n
    cdef int active
    cdef bint stopping
    cdef long long drain_ns
    cdef long long drain_end
    cdef bint finish
    cdef bint ran
    cdef long long interval_ns
    cdef long long deadline
    cdef readonly int failed
    cdef readonly int unfinished

    def __cinit__(self, long long size, bytes base, str mode="message", object timeout=None):
        # One send tile and one receive buffer for every connection: a send stamps
        # its block headers into the tile, sends, and wipes them again.
        self.epfd = -1
        self._setup(size, base, mode, timeout)
        self.timeout_ns = -1 if timeout is None else max(1000000, <long long>(timeout * 1e9))
        cdef int epfd
        while check_rc(epfd := epoll_create1(EPOLL_CLOEXEC)):
            pass
        self.epfd = epfd

    def __dealloc__(self):
        cdef int i
        for i in range(self.n):  # a run() a signal handler's exception cut short
            self._close_own(i)
        if self.epfd >= 0:
            close(self.epfd)
        free(self.conns)
        free(self.heap_due)
        free(self.heap_conn)

    @property
    def connections(self):
        return self.n

    def add(self, int fd, long long count=0):
        """One more connected fd, to exchange ``count`` messages (0: until the deadline)."""
        if self.ran:
            raise ValueError("add() connections before run()")
        if fd < 0 or count < 0:
            raise ValueError("fd and count must not be negative")
        if count > MAX_BYTES // self.size:  # 64-bit stream offsets must not overflow
            raise ValueError(f"size x count is too large: at most {MAX_BYTES} bytes a run")
        self._grow()
        memset(&self.conns[self.n], 0, sizeof(Conn))
        self.conns[self.n].fd = fd
        self.conns[self.n].count = count
        self.conns[self.n].mismatch_offset = -1
        self.n += 1
        return self.n - 1

    cdef int _grow(self) except -1:
        """Room for one more connection."""
        cdef int cap
        cdef void *p
        if self.n == self.capacity:
            cap = 2 * self.capacity if self.capacity else 16
            p = realloc(self.conns, cap * sizeof(Conn))
            if p == NULL:
                raise MemoryError()
            self.conns = <Conn *>p
            p = realloc(self.heap_due, cap * sizeof(long long))
            if p == NULL:
                raise MemoryError()
            self.heap_due = <long long *>p
            p = realloc(self.heap_conn, cap * sizeof(int))
            if p == NULL:
                raise MemoryError()
            self.heap_conn = <int *>p
            self.capacity = cap
        return 0

    def connect(self, bytes packed, int port, unsigned int scope_id=0, long long count=0):
        """One more connection, which the group itself opens when run() starts (all at
        once, without blocking), and closes at its end: a refused or unreachable
        server, or a connect that takes longer than the timeout, fails that connection
        alone.  ``packed``: a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        cdef pte_addr addr
        if pte_addr_set(&addr, <const char *>packed, len(packed), port, scope_id) != 0:
            raise ValueError("packed address must be 4 or 16 bytes")
        cdef int i = self.add(0, count)
        self.conns[i].addr = addr
        self.conns[i].fd = -1
        self.conns[i].owned = 1
        return i

    def failures(self):
        """A GroupMember for each connection that failed, in the order they were added."""
        cdef list out = []
        cdef Conn *c
        cdef GroupMember m
        cdef int i
        for i in range(self.n):
            c = &self.conns[i]
            if c.state != FAILED:
                continue
            m = GroupMember.__new__(GroupMember)
            m.index, m.fd = i, c.fd
            if c.err == ETIMEDOUT:
                m.error = TimeoutError(ETIMEDOUT, "timed out")
            elif c.err:
                m.error = OSError(c.err, strerror(c.err).decode("utf-8", "replace"))
            m.bytes_sent, m.bytes_received = c.bytes_sent, c.bytes_received
            m.messages = c.done if self.lockstep else c.bytes_received // self.size
            m.mismatch_offset, m.short_echo, m.long_echo = (c.mismatch_offset, c.short_echo,
                                                            c.long_echo)
            out.append(m)
        return out

    def run(self, double interval=0.0, double duration=0.0, bint finish=True,
            double drain=-1.0):
        """Drive every connection until each has exchanged its count, or ``duration``
        seconds pass, or stop().  ``interval`` > 0 runs each connection open loop, a
        message due every ``interval`` seconds (the connections' start times spread
        over one interval), its latency counted from when it was due.  ``finish``
        half-closes each connection at its end and waits for the server's close.

        Once time is up or stop() is called, no message starts, and what is in
        flight gets ``drain`` seconds to come back (< 0: as long as it takes, within
        the timeout); after that the run ends on time, each connection still owed
        an echo counted in ``unfinished`` (not verified, and no error), and one
        that only awaited the server's close done.
        Returns True when every connection's echo came back intact.
        """
        cdef int i
        if self.ran:
            raise ValueError("a ClientGroup runs once")
        for i in range(self.n):
            if self.conns[i].count == 0 and duration <= 0:
                raise ValueError("give a count or a duration")
        if not self.lockstep and interval > 0:
            raise ValueError("an interval needs message mode")
        if not (0 <= interval <= MAX_TIMEOUT and 0 <= duration <= MAX_TIMEOUT
                and drain <= MAX_TIMEOUT):
            raise ValueError(f"interval, duration and drain must be at most {MAX_TIMEOUT:g} s")
        self.ran = 1
        self.drain_ns = -1 if drain < 0 else <long long>(drain * 1e9)
        self.finish = finish
        self.interval_ns = <long long>(interval * 1e9)
        self._watch_signals_here()
        if duration > 0:
            self.deadline = now_ns() + <long long>(duration * 1e9)
        with nogil:
            self._run()
        return self.failed == 0

    # -- the loop ---------------------------------------------------------------------

    cdef int _run(self) except -1 nogil:
        cdef epoll_event events[EVENTS_MAX]
        cdef long long start = now_ns(), now, wait, next_scan = start + SCAN_NS
        cdef int i, k, ready
        cdef Conn *c
        self.active = self.n
        for i in range(self.n):
            c = &self.conns[i]
            c.touched = start
            if self.interval_ns > 0:  # spread the starts over one interval
                c.first_due = start + self.interval_ns * i // self.n
            if c.owned:
                self._open(i)
            else:
                self._start(i, start)
        while self.active > 0:
            now = now_ns()
            if not self.stopping and (self.stop_flag or (self.deadline and now >= self.deadline)):
                self._stop_all(now)
            if self.drain_end and now >= self.drain_end:
                self._abandon()
                break
            while self.heap_n and self.heap_due[0] <= now:
                i = self._pop()
                if self.stopping:
                    self._end(i)
                else:
                    self._begin(i, self.conns[i].due)
            if now >= next_scan:
                self._scan(now)
                next_scan = now + SCAN_NS
            if self.active == 0:
                break
            wait = next_scan - now
            if self.heap_n and self.heap_due[0] - now < wait:
                wait = self.heap_due[0] - now
            if self.deadline and not self.stopping and self.deadline - now < wait:
                wait = self.deadline - now
            if self.drain_end and self.drain_end - now < wait:
                wait = self.drain_end - now
            if wait < 0:
                wait = 0
            if check_rc(ready := pte_epoll_wait_ns(self.epfd, events, EVENTS_MAX, wait)):
                continue
            for k in range(ready):
                self._step(events[k].data.u32, events[k].events)
                if self.drain_end and k & 63 == 63 and now_ns() >= self.drain_end:
                    break  # the drain is over: the rest of this batch is abandoned too
            self._poll_signals(0)  # once per wake-up: the clock on every call
        return 0

    cdef int _watch(self, int i, unsigned int want) except -1 nogil:
        """Register interest in ``want`` (0: none) for connection i, if it changed."""
        cdef Conn *c = &self.conns[i]
        cdef epoll_event ev
        cdef int op
        if c.watched == want:
            return 0
        ev.events = want
        ev.data.u32 = i
        op = EPOLL_CTL_DEL if want == 0 else (EPOLL_CTL_MOD if c.watched else EPOLL_CTL_ADD)
        while check_rc(epoll_ctl(self.epfd, op, c.fd, &ev)):
            pass
        c.watched = want
        return 0

    cdef int _start(self, int i, long long now) except -1 nogil:
        """Connection i is connected: its first message goes now, or when it is due."""
        if self.interval_ns > 0 and self.conns[i].first_due > now:
            self.conns[i].state = WAITING
            self._watch(i, 0)
            return self._push(self.conns[i].first_due, i)
        return self._begin(i, self.conns[i].first_due if self.interval_ns > 0 else now)

    cdef int _open(self, int i) except -1 nogil:
        """Start connecting connection i, without blocking; it starts once connected."""
        cdef Conn *c = &self.conns[i]
        cdef int connecting
        c.fd = pte_connect_start(&c.addr, &connecting)
        if c.fd < 0:
            return self._fail(i, errno)
        if not connecting:
            return self._start(i, now_ns())
        c.state = CONNECTING
        c.touched = now_ns()
        return self._watch(i, EPOLLOUT)

    cdef int _begin(self, int i, long long due) except -1 nogil:
        """Start connection i's next message (or its stream), due at ``due``."""
        cdef Conn *c = &self.conns[i]
        c.state = BUSY
        c.due = due
        if self.lockstep:
            c.end = c.send_off + self.size
            c.last = self.finish and c.count > 0 and c.done + 1 == c.count
        else:
            c.end = self.size * c.count if c.count > 0 else (1LL << 62)
            c.last = self.finish
        c.touched = now_ns()
        return self._step(i, EPOLLOUT)

    cdef int _step(self, int i, unsigned int ready) except -1 nogil:
        """Move connection i's bytes as far as they go without blocking.

        ``ready`` says which calls may find work (EPOLLIN: bytes to read, EPOLLOUT:
        room to send; an error or hang-up, both): a call is not made when it would
        only say EAGAIN, such as a recv() right after a message went out, so a
        round trip costs one send(), one recv() and a share of one epoll wait.
        """
        cdef Conn *c = &self.conns[i]
        cdef unsigned char *p
        cdef ssize_t r
        cdef size_t want
        cdef long long bad, before
        cdef bint progressed
        cdef int rounds = 0
        if c.state == CLOSING:
            return self._await_close(i)
        if c.state == CONNECTING:
            if pte_connect_result(c.fd) != 0:
                return self._fail(i, errno)
            return self._start(i, now_ns())
        if c.state != BUSY:
            return 0
        if ready & ~(EPOLLIN | EPOLLOUT):  # EPOLLERR, EPOLLHUP: the calls say what happened
            ready = EPOLLIN | EPOLLOUT
        # A bounded turn: a fast peer must not keep the loop from its clock and the
        # other connections (level-triggered epoll brings this one back).
        while rounds < STEP_ROUNDS:
            rounds += 1
            progressed = 0
            if c.send_off < c.end and ready & EPOLLOUT:
                want = self.chunk if c.end - c.send_off > <long long>self.chunk else <size_t>(c.end - c.send_off)
                p = self.tile + (c.send_off & (BLOCK - 1))
                pattern_headers(self.base, p, c.send_off, want, 1)
                r = send(c.fd, p, want, MSG_NOSIGNAL | MSG_DONTWAIT)
                pattern_headers(self.base, p, c.send_off, want, 0)
                if r > 0:
                    c.send_off += r
                    c.bytes_sent += r
                    self.bytes_sent += r
                    progressed = 1
                elif not failed_with(r, EAGAIN) and not failed_with(r, EINTR):
                    return self._fail(i, errno)
                if r < <ssize_t>want:  # the send buffer is full: wait for EPOLLOUT
                    ready &= ~EPOLLOUT
            if c.last and c.send_off == c.end and not c.shut:
                shutdown(c.fd, SHUT_WR)  # all sent: a message-mode peer may echo a short tail now
                c.shut = 1
            if c.recv_off < c.send_off and ready & EPOLLIN:
                want = self.chunk if c.send_off - c.recv_off > <long long>self.chunk else <size_t>(c.send_off - c.recv_off)
                r = recv(c.fd, self.rbuf, want, MSG_DONTWAIT)
                if r < <ssize_t>want:  # drained (or all that is owed came): wait for EPOLLIN
                    ready &= ~EPOLLIN
                if r > 0:
                    bad = pattern_mismatch(self.base, self.rbuf, c.recv_off, <size_t>r)
                    if bad >= 0:
                        c.mismatch_offset = c.recv_off + bad
                        c.bytes_received += bad
                        self.bytes_received += bad
                        return self._fail(i, 0)
                    before = c.recv_off
                    c.recv_off += r
                    c.bytes_received += r
                    self.bytes_received += r
                    if not self.lockstep:  # a stream's messages are its size-unit boundaries
                        self.messages += c.recv_off // self.size - before // self.size
                    progressed = 1
                elif r == 0:
                    c.short_echo = 1
                    return self._fail(i, 0)
                elif not failed_with(r, EAGAIN) and not failed_with(r, EINTR):
                    return self._fail(i, errno)
            if progressed:
                c.touched = now_ns()
            if c.recv_off >= c.end:  # one clock read per message: touched is now
                self._complete(i, c.touched if progressed else now_ns())
                if c.state != BUSY:
                    return 0
                ready |= EPOLLOUT  # the next message: its bytes go out at once
                continue
            if not progressed:
                break
        return self._watch(i, EPOLLIN | (EPOLLOUT if c.send_off < c.end else 0))

    cdef int _complete(self, int i, long long now) except -1 nogil:
        """Connection i's message (or stream) came back whole: count it, go on or end."""
        cdef Conn *c = &self.conns[i]
        cdef long long due
        self._record(now - c.due)
        if not self.lockstep:
            return self._end(i)
        c.done += 1
        self.messages += 1
        if self.stopping or (c.count > 0 and c.done == c.count):
            return self._end(i)
        if self.interval_ns <= 0:
            c.due = now
            c.end = c.send_off + self.size
            c.last = self.finish and c.count > 0 and c.done + 1 == c.count
            return 0  # _step goes on with the next message
        due = c.first_due + c.done * self.interval_ns
        if due <= now:  # late already: it starts now, and its latency counts from due
            c.due = due
            c.end = c.send_off + self.size
            c.last = self.finish and c.count > 0 and c.done + 1 == c.count
            return 0
        c.state = WAITING
        self._watch(i, 0)
        return self._push(due, i)

    cdef int _end(self, int i) except -1 nogil:
        """No more messages on connection i: half-close and wait for the server's close."""
        cdef Conn *c = &self.conns[i]
        if self.finish and not c.shut:
            shutdown(c.fd, SHUT_WR)
            c.shut = 1
        if not self.finish or self.stop_flag:
            return self._retire(i, DONE)
        c.state = CLOSING
        c.touched = now_ns() + (self.timeout_ns if self.timeout_ns >= 0
                                else <long long>EOF_WAIT_MS * 1000000)
        self._watch(i, EPOLLIN)
        return self._await_close(i)

    cdef int _await_close(self, int i) except -1 nogil:
        """After the last echo, the server's close: any byte before it is a long echo."""
        cdef Conn *c = &self.conns[i]
        cdef ssize_t r = recv(c.fd, self.rbuf, self.chunk, MSG_DONTWAIT)
        if r > 0:
            c.long_echo = r
            return self._fail(i, 0)
        if r == 0 or failed_with(r, ECONNRESET):
            return self._retire(i, DONE)
        if not failed_with(r, EAGAIN) and not failed_with(r, EINTR):
            return self._fail(i, errno)
        return 0

    cdef int _fail(self, int i, int err) except -1 nogil:
        self.conns[i].err = err
        self.failed += 1
        return self._retire(i, FAILED)

    cdef int _retire(self, int i, int state) except -1 nogil:
        self.conns[i].state = state
        self.active -= 1
        self._watch(i, 0)
        return self._close_own(i)

    cdef int _close_own(self, int i) noexcept nogil:
        """Close connection i's fd if the group opened it (closing leaves the epoll set)."""
        if self.conns[i].owned and self.conns[i].fd >= 0:
            close(self.conns[i].fd)
            self.conns[i].fd = -1
            self.conns[i].watched = 0
        return 0

    cdef int _stop_all(self, long long now) except -1 nogil:
        """Time is up (or stop()): no new messages; a stream stops sending where it is."""
        cdef int i
        cdef Conn *c
        self.stopping = 1
        if self.drain_ns >= 0:
            self.drain_end = now + self.drain_ns + 1  # never 0: 0 means "no drain end"
        while self.heap_n:
            self._end(self._pop())
        for i in range(self.n):  # not connected yet: nothing owed, nothing to check
            if self.conns[i].state == CONNECTING:
                self._retire(i, DONE)
        if self.lockstep:
            return 0
        for i in range(self.n):
            c = &self.conns[i]
            if c.state == BUSY and c.send_off < c.end:
                c.end = c.send_off
                c.last = self.finish
                self._step(i, EPOLLIN | EPOLLOUT)
        return 0

    cdef int _abandon(self) except -1 nogil:
        """The drain is over: every connection still in flight or closing ends here
        (left in the epoll set, which goes with the group: no call per connection)."""
        cdef int i
        for i in range(self.n):
            if (self.conns[i].state == BUSY or self.conns[i].state == CLOSING
                    or self.conns[i].state == CONNECTING):
                self.unfinished += self.conns[i].state == BUSY
                self.conns[i].state = DONE
                self.active -= 1
                self._close_own(i)
        return 0

    cdef int _scan(self, long long now) except -1 nogil:
        """End every connection whose echo has not moved for the timeout, and every
        half-closed one the server kept open for its whole wait (that is no error)."""
        cdef int i
        cdef Conn *c
        for i in range(self.n):
            c = &self.conns[i]
            if ((c.state == BUSY or c.state == CONNECTING) and self.timeout_ns >= 0
                    and now - c.touched > self.timeout_ns):
                self._fail(i, ETIMEDOUT)
            elif c.state == CLOSING and now >= c.touched:
                self._retire(i, DONE)
        return 0

    # -- the open loop's timers: a binary min-heap of (due, connection) -------------

    cdef int _push(self, long long due, int i) noexcept nogil:
        cdef int k = self.heap_n, parent
        self.conns[i].due = due
        self.heap_n += 1
        while k > 0:
            parent = (k - 1) // 2
            if self.heap_due[parent] <= due:
                break
            self.heap_due[k] = self.heap_due[parent]
            self.heap_conn[k] = self.heap_conn[parent]
            k = parent
        self.heap_due[k] = due
        self.heap_conn[k] = i
        return 0

    cdef int _pop(self) noexcept nogil:
        cdef int top = self.heap_conn[0], k = 0, child
        cdef long long due
        cdef int i
        self.heap_n -= 1
        due = self.heap_due[self.heap_n]
        i = self.heap_conn[self.heap_n]
        while True:
            child = 2 * k + 1
            if child >= self.heap_n:
                break
            if child + 1 < self.heap_n and self.heap_due[child + 1] < self.heap_due[child]:
                child += 1
            if self.heap_due[child] >= due:
                break
            self.heap_due[k] = self.heap_due[child]
            self.heap_conn[k] = self.heap_conn[child]
            k = child
        self.heap_due[k] = due
        self.heap_conn[k] = i
        return top
