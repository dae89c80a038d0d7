# Included at the end of _core.pyx: the splice echo loop and the bench's
# connect-per-message client loop.  Both run without the GIL, like the rest.

from _netio cimport (pte_addr, pte_addr_set, pte_socket, pte_connect, pte_connect_result,
                     pte_pipe, pte_splice)
from _sys cimport close, EINVAL, ENOSYS, EOPNOTSUPP, EPIPE


cdef inline bint splice_refused(ssize_t rc) noexcept nogil:
    """Whether splice() failed because it cannot move this socket's bytes at all."""
    return failed_with(rc, EINVAL) or failed_with(rc, ENOSYS) or failed_with(rc, EOPNOTSUPP)


# -- server: splice() -------------------------------------------------------------

cdef class SpliceSession:
    """A stream connection echoed with splice(): socket -> pipe -> socket.

    The bytes stay in kernel pages; user space never copies them.  The pipe is
    made when the first byte arrives (an idle connection holds one fd, not
    three) and sized with F_SETPIPE_SZ.  Where the kernel refuses to splice
    the socket (EINVAL), the connection falls back to the copy loop of
    EchoSession.  Timeouts: splice() honours SO_RCVTIMEO/SO_SNDTIMEO like
    recv()/send(), so an idle peer ends as TimeoutError here too.
    ``attach()`` hands the session to the next connection, as EchoSession's does.
    """

    cdef int fd
    cdef int pipe_r
    cdef int pipe_w
    cdef size_t bufsize
    cdef long long max_bytes
    cdef long long _in
    cdef long long _out
    cdef EchoSession fallback

    def __cinit__(self, int fd, str mode="stream", Py_ssize_t size=DEFAULT_SIZE,
                  long long max_bytes=0, object on_message=None, Py_ssize_t bufsize=PIPE_SIZE):
        if mode != "stream":
            raise ValueError(f"the splice core echoes streams only: mode {mode!r} needs "
                             "another core (cython or python)")
        if size <= 0 or bufsize <= 0:
            raise ValueError("size and bufsize must be positive")
        self.fd = fd
        self.pipe_r = -1
        self.pipe_w = -1
        self.bufsize = bufsize
        self.max_bytes = max_bytes

    def __dealloc__(self):
        self._close_pipe()

    cdef void _close_pipe(self) noexcept nogil:
        if self.pipe_r >= 0:
            close(self.pipe_r)
            close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1

    def attach(self, int fd):
        """Serve a new connection on fd with this session: counters (bytes_in,
        bytes_out, messages) back to zero; a pipe left from the last connection
        is closed and its copy-loop fallback dropped."""
        self._close_pipe()
        self.fallback = None
        self.fd = fd
        self._in = self._out = 0

    @property
    def bytes_in(self):
        return self.fallback.bytes_in if self.fallback is not None else self._in

    @property
    def bytes_out(self):
        return self.fallback.bytes_out if self.fallback is not None else self._out

    @property
    def messages(self):
        return 0

    def run(self):
        cdef int rc
        try:
            with nogil:
                rc = self._splice()
            if rc == 2:
                self.fallback = EchoSession(self.fd, "stream", 1, self.max_bytes)
                self.fallback.bytes_in = self._in
                self.fallback.bytes_out = self._out
                with nogil:
                    rc = self.fallback._stream()
        finally:
            self._close_pipe()
        return "limit" if rc == 1 else "eof"

    cdef int _wait_first_byte(self) except -1 nogil:
        """Block (SO_RCVTIMEO applies) until data or EOF is there; 1 if data."""
        cdef char probe
        cdef ssize_t r
        while check_rc(r := recv(self.fd, &probe, 1, MSG_PEEK)):
            pass
        return 1 if r > 0 else 0

    cdef int _splice(self) except -1 nogil:
        """0 at EOF, 1 over max_bytes, 2 when splice is refused (nothing moved yet)."""
        cdef int fds[2]
        cdef ssize_t n, m, left
        cdef size_t want
        if not self._wait_first_byte():
            return 0
        while check_rc(pte_pipe(fds, <int>self.bufsize)):
            pass
        self.pipe_r = fds[0]
        self.pipe_w = fds[1]
        while True:
            want = self.bufsize
            if self.max_bytes > 0:
                if self._in >= self.max_bytes:
                    return 1 if self._wait_first_byte() else 0
                if <long long>want > self.max_bytes - self._in:
                    want = <size_t>(self.max_bytes - self._in)
            while not splice_refused(n := pte_splice(self.fd, self.pipe_w, want)) and check_rc(n):
                pass
            if n == 0:
                return 0
            if n < 0:
                if self._in == 0:
                    return 2
                raise_errno(errno)
            self._in += n
            left = n
            while left > 0:
                while check_rc(m := pte_splice(self.pipe_r, self.fd, <size_t>left)):
                    pass
                if m == 0:
                    raise_errno(EPIPE)
                left -= m
                self._out += m


# -- client: connect, one message, close, again -----------------------------------

cdef class ConnectEachSession(ClientSession):
    """The original exercise's pattern in C: each message on a new connection.

    Construct like ClientSession with fd=-1, name the server with target(),
    then run_each().  Latency of a message counts from its due time through
    connect, send, echo and verify, so connection set-up cost shows.  A
    failed connect raises OSError (``connections`` says how many succeeded).
    """

    cdef pte_addr addr
    cdef readonly long long connections

    def target(self, bytes packed, int port, unsigned int scope_id=0):
        """Server address: packed IPv4 (4 bytes) or IPv6 (16 bytes), port, and the
        interface index of a link-local IPv6 address."""
        if pte_addr_set(&self.addr, <const char *>packed, len(packed), port, scope_id) != 0:
            raise ValueError("packed address must be 4 or 16 bytes")

    def run_each(self, long long count, double interval=0.0, double duration=0.0):
        """``count`` connections (0: until ``duration`` or stop()); True if all intact."""
        cdef long long interval_ns = <long long>(interval * 1e9)
        cdef long long deadline = 0
        cdef int rc
        if duration > 0:
            deadline = now_ns() + <long long>(duration * 1e9)
        if count <= 0 and deadline == 0:
            raise ValueError("give a count or a duration")
        with nogil:
            rc = self._each(count, interval_ns, deadline)
        return rc == 0

    cdef int _connect(self) except -1 nogil:
        """A new connected socket to the target; on failure it is closed and this raises."""
        cdef int fd, ready
        cdef bint connected = 0
        cdef pollfd pfd
        while check_rc(fd := pte_socket(&self.addr, self.timeout_ms)):
            pass
        try:
            if check_rc(pte_connect(fd, &self.addr)):
                # A signal interrupted connect(), and the kernel goes on connecting
                # (connect() again would say EALREADY): wait until the socket is
                # writable, then read how the attempt ended.
                pfd.fd = fd
                pfd.events = POLLOUT
                while check_rc(ready := poll(&pfd, 1, self.timeout_ms)):
                    pass
                if ready == 0:
                    raise_errno(ETIMEDOUT)
                while check_rc(pte_connect_result(fd)):
                    pass
            connected = 1
        finally:
            if not connected:
                close(fd)
        return fd

    cdef int _each(self, long long count, long long interval_ns, long long deadline) except -1 nogil:
        cdef long long i = 0, start = now_ns(), due, t
        cdef int rc, fd
        while (count <= 0 or i < count) and not self.stop_flag:
            t = now_ns()
            if deadline and t >= deadline:
                break
            due = t
            if interval_ns > 0:
                due = start + i * interval_ns
                if due > t:
                    sleep_until(due)
            fd = self._connect()
            self.connections += 1
            self.fd = fd
            self.offset = 0
            self.shut = 0
            try:
                rc = self._transfer(self.size, 1)
            finally:
                close(fd)
                self.fd = -1
            if rc != 0:
                return rc
            self._record(now_ns() - due)
            self.messages += 1
            i += 1
        return 0
