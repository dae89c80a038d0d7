# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The hot loops of pytcpecho, in C, with the GIL released for a whole connection.

Every loop here runs inside one ``with nogil:`` block from its first recv()
to its last send(): a Python thread serving a client never competes for the
GIL while bytes flow, so clients on other threads keep their speed and other
Python code in the process keeps running.  The GIL is taken back only:

- in the main thread, every 50 ms of a client loop, to run Python's signal
  handlers (so Ctrl-C stops a loop that never blocks);
- after a call a signal interrupted (EINTR), to run them;
- to raise an error;
- to report a finished message, if the caller asks for it.

Every call's failure takes one path, check_rc(), and every blocking call is
retried the same way around it.  Timeouts are the socket's
SO_RCVTIMEO/SO_SNDTIMEO (set by the caller on a blocking fd) or poll()'s
timeout; an expired one is raised as TimeoutError.
"""

from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memcmp, strerror
from cpython.exc cimport PyErr_CheckSignals
import threading

from pytcpecho import constants as _constants
from pytcpecho.constants import DEFAULT_SIZE, MAX_BYTES, MAX_TIMEOUT, MODES

from _constants cimport (
    BLOCK_SHIFT, BLOCK, HEADER, SUB_BITS, SUB, NBUCKETS, CHUNK, PIPE_SIZE, EOF_WAIT_MS,
    SIGNAL_POLL_NS, UDP_HEADER, UDP_BATCH, UDP_WINDOW, UDP_TRACE,
)
from _udpio cimport PTE_UDP_HEADER, PTE_UDP_BATCH, PTE_UDP_WINDOW, PTE_UDP_TRACE
from _netio cimport pte_sleep_until
from _sys cimport (
    ssize_t, recv, send, shutdown, poll, pollfd, clock_gettime, timespec,
    MSG_NOSIGNAL, MSG_DONTWAIT, MSG_PEEK, SHUT_WR, POLLIN, POLLOUT, CLOCK_MONOTONIC,
    errno, EINTR, EAGAIN, ETIMEDOUT, ECONNRESET,
    mmap, munmap, MAP_FAILED, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS,
)

NAME = "cython"


cdef int check_constants() except -1:
    """Refuse to load when a compiled-in copy differs from pytcpecho.constants."""
    cdef tuple mirrored = (
        ("BLOCK_SHIFT", BLOCK_SHIFT), ("BLOCK", BLOCK), ("HEADER", HEADER),
        ("SUB_BITS", SUB_BITS), ("SUB", SUB), ("NBUCKETS", NBUCKETS), ("CHUNK", CHUNK),
        ("PIPE_SIZE", PIPE_SIZE), ("EOF_WAIT_MS", EOF_WAIT_MS),
        ("SIGNAL_POLL_NS", SIGNAL_POLL_NS), ("UDP_HEADER", UDP_HEADER),
        ("UDP_BATCH", UDP_BATCH), ("UDP_WINDOW", UDP_WINDOW), ("UDP_TRACE", UDP_TRACE),
        # and the C side's own copies, in _udp.h
        ("UDP_HEADER", PTE_UDP_HEADER), ("UDP_BATCH", PTE_UDP_BATCH),
        ("UDP_WINDOW", PTE_UDP_WINDOW), ("UDP_TRACE", PTE_UDP_TRACE),
    )
    for name, value in mirrored:
        expected = getattr(_constants, name)
        if value != expected:
            raise ImportError(
                f"pytcpecho._core was built with {name} = {value}, but pytcpecho.constants "
                f"says {expected}: change csrc/_constants.pxd to match and rebuild")
    return 0


check_constants()


# -- errors -----------------------------------------------------------------

cdef int raise_errno(int err) except -1 with gil:
    """Raise the OSError subclass for errno ``err``; an expired socket timeout
    (EAGAIN on a blocking fd) becomes TimeoutError."""
    if err == EAGAIN or err == ETIMEDOUT:
        raise TimeoutError(ETIMEDOUT, "timed out")
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef int check_signals() except -1 with gil:
    """Run Python's signal handlers; one that raises makes this raise."""
    PyErr_CheckSignals()
    return 0


cdef int check_rc(ssize_t rc) except -1 nogil:
    """The one errno path: what a call that returned ``rc`` (-1 and errno on failure,
    as POSIX calls and the _netio.h helpers do) means for its caller.

    Returns 0 when the call succeeded, and 1 when a signal interrupted it: then
    Python's signal handlers have run (with the GIL) and none raised, so the
    caller retries.  A handler's exception propagates; any other failure raises
    (raise_errno).  Every call is retried in the same way::

        while check_rc(r := call(...)):
            pass

    A caller that handles an error itself (EAGAIN from a non-blocking call)
    tests for it first, and leaves the loop with r < 0 when it came::

        while not failed_with(r := call(...), EAGAIN) and check_rc(r):
            pass
    """
    cdef int err
    if rc >= 0:
        return 0
    err = errno
    if err == EINTR:
        check_signals()
        return 1
    raise_errno(err)
    return -1


cdef inline bint failed_with(ssize_t rc, int err) noexcept nogil:
    """Whether a call that returned ``rc`` failed with errno ``err``."""
    return rc < 0 and errno == err


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int sleep_until(long long due_ns) except -1 nogil:
    """Sleep until the monotonic clock reads ``due_ns``."""
    while check_rc(pte_sleep_until(due_ns)):
        pass
    return 0


cdef int send_all(int fd, const char *p, size_t n) except -1 nogil:
    """send() until all n bytes are gone; MSG_NOSIGNAL so a gone peer is EPIPE.

    A blocking send() comes back short when SO_SNDTIMEO expires with part of
    the data sent: one non-blocking try then tells a stalled reader (nothing
    fits: EAGAIN, raised as the timeout) from a slow one (progress: wait
    again), so a client that stops reading is dropped after one timeout, not two.
    """
    cdef ssize_t r
    cdef int probing = 0
    while n > 0:
        while check_rc(r := send(fd, p, n, MSG_NOSIGNAL | (MSG_DONTWAIT if probing else 0))):
            pass
        probing = not probing and <size_t>r < n
        p += r
        n -= r
    return 0


# -- the payload pattern --------------------------------------------------------

cdef inline void pattern_headers(const unsigned char *base, unsigned char *dst,
                                  long long off, size_t n, bint stamp) noexcept nogil:
    """In dst, which holds stream bytes [off, off+n) laid over the plain base
    block, stamp (or, with stamp false, wipe) each block's number into its first
    8 bytes: the pattern's only part that is not the base block itself."""
    cdef size_t pos = 0, j, i
    cdef unsigned long long k
    while pos < n:
        j = (off + pos) & (BLOCK - 1)
        k = <unsigned long long>((off + pos) >> BLOCK_SHIFT)
        i = j
        while i < HEADER and pos + i - j < n:
            dst[pos + i - j] = base[i] ^ (<unsigned char>((k >> (8 * i)) & 0xff) if stamp else 0)
            i += 1
        pos += BLOCK - j


cdef inline long long pattern_mismatch(const unsigned char *base, const unsigned char *src,
                                       long long off, size_t n) noexcept nogil:
    """Index in src of the first byte that differs from the pattern, or -1."""
    cdef size_t pos = 0, j, m, i, b
    cdef unsigned long long k
    cdef unsigned char want
    while pos < n:
        j = (off + pos) & (BLOCK - 1)
        k = <unsigned long long>((off + pos) >> BLOCK_SHIFT)
        m = BLOCK - j
        if m > n - pos:
            m = n - pos
        i = j
        while i < HEADER and i < j + m:
            want = base[i] ^ <unsigned char>((k >> (8 * i)) & 0xff)
            if src[pos + i - j] != want:
                return pos + i - j
            i += 1
        if i < j + m and memcmp(src + pos + (i - j), base + i, j + m - i) != 0:
            b = i
            while src[pos + b - j] == base[b]:
                b += 1
            return pos + b - j
        pos += m
    return -1


cdef inline int bucket_of(long long v) noexcept nogil:
    """Log-linear histogram bucket: exact below 128 ns, then 64 per octave."""
    cdef int e = 0
    if v < 0:
        v = 0
    if v < 2 * SUB:
        return <int>v
    while (v >> e) >= 2 * SUB:
        e += 1
    cdef int idx = SUB * e + <int>(v >> e)
    return idx if idx < NBUCKETS else NBUCKETS - 1


# -- server ------------------------------------------------------------------

cdef class EchoSession:
    """One server connection: recv into a preallocated buffer, send it back.

    mode "stream" echoes whatever arrives (RFC 862); mode "message" reads
    exactly ``size`` bytes, sends them back, and repeats (the original exercise's protocol).
    ``run()`` returns "eof" when the client closed, "limit" when it sent more
    than ``max_bytes``; errors raise OSError.  The counters are plain C fields,
    readable from Python while the loop runs.

    The buffer is allocated once, here; ``run()`` allocates nothing, and
    ``attach()`` hands the session (and its buffer) to the next connection, so
    a worker thread can serve connection after connection with one session.
    ``fd`` may be -1 when ``attach()`` comes before the first ``run()``.
    """

    cdef int fd
    cdef bint message_mode
    cdef char *buf
    cdef size_t bufsize
    cdef long long max_bytes
    cdef object on_message
    cdef readonly long long bytes_in
    cdef readonly long long bytes_out
    cdef readonly long long messages

    def __cinit__(self, int fd, str mode="stream", Py_ssize_t size=DEFAULT_SIZE,
                  long long max_bytes=0, object on_message=None, Py_ssize_t bufsize=CHUNK):
        if mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(map(repr, MODES))}, not {mode!r}")
        if size <= 0 or bufsize <= 0:
            raise ValueError("size and bufsize must be positive")
        self.fd = fd
        self.message_mode = mode == "message"
        self.bufsize = size if self.message_mode else bufsize
        self.max_bytes = max_bytes
        self.on_message = on_message
        # Its own anonymous mapping, not malloc: untouched pages are not resident
        # (an idle connection costs address space, not memory), and all of it goes
        # back to the system with the session, never left behind in a malloc arena.
        cdef void *p = mmap(NULL, self.bufsize, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            raise MemoryError()
        self.buf = <char *>p

    def __dealloc__(self):
        if self.buf != NULL:
            munmap(self.buf, self.bufsize)

    def attach(self, int fd):
        """Serve a new connection on fd with this session: counters (bytes_in,
        bytes_out, messages) back to zero, the buffer kept."""
        self.fd = fd
        self.bytes_in = self.bytes_out = self.messages = 0

    def run(self):
        cdef int rc
        with nogil:
            if self.message_mode:
                rc = self._messages()
            else:
                rc = self._stream()
        return "limit" if rc == 1 else "eof"

    cdef ssize_t _recv(self, char *p, size_t want) except -2 nogil:
        """recv() up to want bytes, honouring max_bytes; -1 means over the limit."""
        cdef ssize_t r
        cdef char probe
        if self.max_bytes > 0:
            if self.bytes_in >= self.max_bytes:
                # At the limit: one more byte means over it, EOF means done.
                while check_rc(r := recv(self.fd, &probe, 1, MSG_PEEK)):
                    pass
                return -1 if r > 0 else 0
            if <long long>want > self.max_bytes - self.bytes_in:
                want = <size_t>(self.max_bytes - self.bytes_in)
        while check_rc(r := recv(self.fd, p, want, 0)):
            pass
        self.bytes_in += r
        return r

    cdef int _stream(self) except -1 nogil:
        cdef ssize_t n
        while True:
            n = self._recv(self.buf, self.bufsize)
            if n == 0:
                return 0
            if n < 0:
                return 1
            send_all(self.fd, self.buf, n)
            self.bytes_out += n

    cdef int _messages(self) except -1 nogil:
        cdef size_t got
        cdef ssize_t n
        cdef int ending = 0
        while True:
            got = 0
            while got < self.bufsize:
                n = self._recv(self.buf + got, self.bufsize - got)
                if n <= 0:
                    ending = 1 if n < 0 else 2
                    break
                got += n
            if got > 0:
                # EOF mid-message echoes what came, as the original exercise's server did.
                send_all(self.fd, self.buf, got)
                self.bytes_out += got
                self.messages += 1
                if self.on_message is not None:
                    self._report(got)
            if ending:
                return 1 if ending == 1 else 0

    cdef int _report(self, size_t n) except -1 with gil:
        self.on_message(n)
        return 0


# -- client ------------------------------------------------------------------

cdef class ClientLoop:
    """What every client loop shares: its arguments' checks, the pattern tile it sends
    from, its receive buffer, its counters and its latency histogram in C memory.
    A subclass's __cinit__ calls _setup(); this one takes any arguments, as Cython
    passes a subclass's constructor arguments to it too."""

    cdef long long size
    cdef bint lockstep
    cdef bytes base_obj
    cdef const unsigned char *base
    cdef unsigned char *tile
    cdef unsigned char *rbuf
    cdef size_t chunk
    cdef long long *hist
    cdef int stop_flag
    cdef bint watch_signals
    cdef long long signals_checked_ns
    cdef unsigned int spins
    cdef readonly long long bytes_sent
    cdef readonly long long bytes_received
    cdef readonly long long messages
    cdef readonly long long latency_min_ns
    cdef readonly long long latency_max_ns
    cdef readonly long long latency_sum_ns

    def __cinit__(self, *args, **kwargs):
        pass

    cdef int _setup(self, long long size, bytes base, str mode, object timeout) except -1:
        if mode not in MODES:
            raise ValueError(f"mode must be {' or '.join(map(repr, MODES))}, not {mode!r}")
        if size <= 0:
            raise ValueError("size must be positive")
        if len(base) != BLOCK:
            raise ValueError(f"pattern base must be {BLOCK} bytes")
        if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:  # poll()'s int ms
            raise ValueError(f"timeout must be positive, at most {MAX_TIMEOUT:g} s (None: none)")
        self.size = size
        self.lockstep = mode == "message"
        self.base_obj = base
        self.base = <const unsigned char *>self.base_obj
        self.chunk = CHUNK if size > CHUNK else <size_t>size
        if self.chunk < BLOCK:
            self.chunk = BLOCK
        # The send side never copies the pattern: ``tile`` holds the base block
        # repeated, and a range of the stream is a window into it with its
        # block headers stamped in (and wiped when the next window is taken).
        self.tile = <unsigned char *>malloc(self.chunk + BLOCK)
        self.rbuf = <unsigned char *>malloc(self.chunk)
        self.hist = <long long *>calloc(NBUCKETS, sizeof(long long))
        if self.tile == NULL or self.rbuf == NULL or self.hist == NULL:
            raise MemoryError()
        cdef size_t i
        for i in range(0, self.chunk + BLOCK, BLOCK):
            memcpy(self.tile + i, self.base, BLOCK if self.chunk + BLOCK - i >= BLOCK
                   else self.chunk + BLOCK - i)
        self.latency_min_ns = -1
        return 0

    def __dealloc__(self):
        free(self.tile)
        free(self.rbuf)
        free(self.hist)

    def stop(self):
        """Ask run() to finish after the message in flight (safe from any thread)."""
        self.stop_flag = 1

    cdef int _watch_signals_here(self) except -1:
        """Called by run(), with the GIL: only the main thread runs Python's signal
        handlers, and there a fast loop that never blocks (so is never interrupted)
        must look for them itself (_poll_signals)."""
        self.watch_signals = threading.current_thread() is threading.main_thread()
        self.signals_checked_ns = now_ns()
        return 0

    cdef inline int _poll_signals(self, unsigned int every) except -1 nogil:
        """In the main thread, run Python's signal handlers (Ctrl-C) every 50 ms or so:
        the GIL is taken at most 20 times a second, and never in other threads.  The
        clock is read on one call in ``every`` + 1 (a mask: 63, or 0 for each call)."""
        cdef long long t
        if self.watch_signals:
            self.spins += 1
            if self.spins & every == 0:
                t = now_ns()
                if t - self.signals_checked_ns >= SIGNAL_POLL_NS:
                    self.signals_checked_ns = t
                    check_signals()
        return 0

    def histogram(self):
        """The latency histogram's counts, one per bucket."""
        return [self.hist[i] for i in range(NBUCKETS)]

    cdef void _record(self, long long lat) noexcept nogil:
        """Count one round trip (ns) into the histogram and the exact min/max/sum."""
        self.hist[bucket_of(lat)] += 1
        self.latency_sum_ns += lat
        if self.latency_min_ns < 0 or lat < self.latency_min_ns:
            self.latency_min_ns = lat
        if lat > self.latency_max_ns:
            self.latency_max_ns = lat


cdef class ClientSession(ClientLoop):
    """The client's loop: send the pattern, read the echo, verify, time it.

    In "message" mode each message of ``size`` bytes is a round trip, timed
    into a log-linear histogram held in C memory; in "stream" mode the whole
    run is one continuous transfer.  Either way the client sends and receives
    at once, so no payload size can deadlock it against an echoing peer.
    The connection's stream offset carries over between calls to run().
    """

    cdef int fd
    cdef int timeout_ms
    cdef long long offset
    cdef long long window_off
    cdef size_t window_len
    cdef int shut
    cdef readonly long long mismatch_offset
    cdef readonly bint short_echo
    cdef readonly long long long_echo

    def __cinit__(self, int fd, long long size, bytes base, str mode="message",
                  object timeout=None):
        self._setup(size, base, mode, timeout)
        self.fd = fd
        self.timeout_ms = -1 if timeout is None else max(1, <int>(timeout * 1000))
        self.window_off = self.window_len = 0
        self.mismatch_offset = -1

    def run(self, long long count, double interval=0.0, double duration=0.0,
            bint finish=True):
        """Exchange ``count`` messages (0: until ``duration`` or stop()).

        ``interval`` > 0 runs open loop: message i is due at start + i *
        interval, and its latency counts from then, so a stalled server shows
        in the percentiles.  ``finish`` half-closes the socket at the end.
        Returns True when every byte came back intact.
        """
        cdef long long interval_ns = <long long>(interval * 1e9)
        cdef long long deadline = 0
        cdef int rc
        if duration > 0:
            deadline = now_ns() + <long long>(duration * 1e9)
        if count <= 0 and deadline == 0:
            raise ValueError("give a count or a duration")
        if count > MAX_BYTES // self.size:  # 64-bit stream offsets must not overflow
            raise ValueError(f"size x count is too large: at most {MAX_BYTES} bytes a run")
        self._watch_signals_here()
        with nogil:
            if self.lockstep:
                rc = self._lockstep(count, interval_ns, deadline, finish)
            else:
                rc = self._stream(count, deadline, finish)
            if rc == 0 and finish and not self.stop_flag:
                rc = self._await_eof()
        return rc == 0

    cdef int _await_eof(self) except -1 nogil:
        """After the last echo, the server's close: any byte before it is a long echo.

        Returns 1 when bytes came back that were never sent.  A peer that
        stays open for the whole timeout (10 s without one), or resets, sent
        nothing extra.
        """
        cdef pollfd pfd
        cdef ssize_t r
        cdef int ready
        cdef int wait_ms = self.timeout_ms if self.timeout_ms >= 0 else EOF_WAIT_MS
        pfd.fd = self.fd
        pfd.events = POLLIN
        while True:
            while check_rc(ready := poll(&pfd, 1, wait_ms)):
                pass
            if ready == 0:
                return 0
            while (not failed_with(r := recv(self.fd, self.rbuf, self.chunk, MSG_DONTWAIT),
                                   EAGAIN)
                   and not failed_with(r, ECONNRESET) and check_rc(r)):
                pass
            if r > 0:
                self.long_echo = r
                return 1
            if r == 0 or errno == ECONNRESET:
                return 0
            # EAGAIN: nothing to read after all; wait again

    cdef int _lockstep(self, long long count, long long interval_ns, long long deadline,
                       bint finish) except -1 nogil:
        cdef long long i = 0, start = now_ns(), due, t
        cdef int rc
        cdef bint last
        while (count <= 0 or i < count) and not self.stop_flag:
            t = now_ns()
            if deadline and t >= deadline:
                break
            due = t
            if interval_ns > 0:
                due = start + i * interval_ns
                if due > t:
                    sleep_until(due)
            last = finish and count > 0 and i + 1 == count
            rc = self._transfer(self.size, last)
            if rc != 0:
                return rc
            self._record(now_ns() - due)
            self.messages += 1
            i += 1
        if finish and not self.shut:
            shutdown(self.fd, SHUT_WR)
            self.shut = 1
        return 0

    cdef int _stream(self, long long count, long long deadline, bint finish) except -1 nogil:
        cdef long long t0 = now_ns()
        cdef long long length = self.size * count if count > 0 else (1LL << 62)
        cdef int rc = self._transfer(length, finish, deadline, 1)
        self._record(now_ns() - t0)
        self.messages = self.bytes_received // self.size
        return rc

    cdef unsigned char *_window(self, long long off, size_t n) noexcept nogil:
        """Stream bytes [off, off+n) (n <= chunk), ready to send, without a copy."""
        cdef unsigned char *p
        if self.window_len:
            p = self.tile + (self.window_off & (BLOCK - 1))
            pattern_headers(self.base, p, self.window_off, self.window_len, 0)
        p = self.tile + (off & (BLOCK - 1))
        pattern_headers(self.base, p, off, n, 1)
        self.window_off = off
        self.window_len = n
        return p

    cdef int _transfer(self, long long length, bint finish, long long deadline=0,
                       bint stoppable=0) except -1 nogil:
        """Send pattern bytes [offset, offset+length) and read them back.

        Returns 0 when all came back intact, 1 on a mismatch or a short echo.
        At the deadline, or on stop() when ``stoppable`` (a stream), sending ends
        where it is and what is owed is collected.
        Sends never block while an echo is owed (MSG_DONTWAIT, then poll), so
        neither side's buffers can fill into a deadlock.
        """
        cdef long long send_off = self.offset, recv_off = self.offset
        cdef long long end = self.offset + length
        cdef long long sbuf_start = 0, sbuf_end = 0
        cdef unsigned char *sbuf = NULL
        cdef const unsigned char *p
        cdef ssize_t r
        cdef size_t want, left
        cdef long long bad
        cdef int progressed, ready, flags
        cdef pollfd pfd
        pfd.fd = self.fd
        while recv_off < end:
            self._poll_signals(63)
            if send_off < end and ((stoppable and self.stop_flag)
                                   or (deadline and now_ns() >= deadline)):
                end = send_off  # time is up: stop sending, collect what is owed
                if recv_off >= end:
                    break
            progressed = 0
            if send_off < end:
                if send_off >= sbuf_end:
                    want = self.chunk if end - send_off > <long long>self.chunk else <size_t>(end - send_off)
                    sbuf = self._window(send_off, want)
                    sbuf_start = send_off
                    sbuf_end = send_off + want
                p = sbuf + (send_off - sbuf_start)
                left = <size_t>(sbuf_end - send_off)
                while (not failed_with(r := send(self.fd, p, left, MSG_NOSIGNAL | MSG_DONTWAIT),
                                       EAGAIN)
                       and check_rc(r)):
                    pass
                if r > 0:
                    send_off += r
                    self.bytes_sent += r
                    progressed = 1
            if finish and send_off == end and not self.shut:
                shutdown(self.fd, SHUT_WR)  # all sent: a message-mode peer may echo a short tail now
                self.shut = 1
            if recv_off < send_off:
                want = self.chunk if send_off - recv_off > <long long>self.chunk else <size_t>(send_off - recv_off)
                # With nothing left to send, wait in recv() itself (SO_RCVTIMEO).
                flags = MSG_DONTWAIT if send_off < end else 0
                while (not failed_with(r := recv(self.fd, self.rbuf, want, flags), EAGAIN)
                       and check_rc(r)):
                    pass
                if r > 0:
                    bad = pattern_mismatch(self.base, self.rbuf, recv_off, <size_t>r)
                    if bad >= 0:
                        self.mismatch_offset = recv_off + bad
                        self.bytes_received += bad
                        return 1
                    recv_off += r
                    self.bytes_received += r
                    progressed = 1
                elif r == 0:
                    self.short_echo = 1
                    return 1
                elif send_off >= end:  # EAGAIN from the blocking recv(): SO_RCVTIMEO expired
                    raise_errno(ETIMEDOUT)
            if not progressed:
                pfd.events = POLLIN
                if send_off < end:
                    pfd.events |= POLLOUT
                while check_rc(ready := poll(&pfd, 1, self.timeout_ms)):
                    pass
                if ready == 0:
                    raise_errno(ETIMEDOUT)
        self.offset = end
        return 0


include "_extra.pxi"
include "_group.pxi"
include "_udp.pxi"
