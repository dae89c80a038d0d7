# Declarations for _netio.h: connect and splice helpers that run without the GIL.

cdef extern from "_netio.h" nogil:
    ctypedef struct pte_addr:
        pass
    int pte_addr_set(pte_addr *a, const char *packed, size_t n, int port,
                     unsigned int scope_id)
    int pte_connect(const pte_addr *a, int timeout_ms)
    int pte_pipe(int fds[2], int size)
    long pte_splice(int fd_in, int fd_out, size_t n, int more)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<errno.h>" nogil:
    enum:
        EINVAL
        ENOSYS
        EOPNOTSUPP
        EPIPE
        ECONNRESET
