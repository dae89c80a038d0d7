# Declarations for _netio.h: socket, splice and clock helpers that run without the
# GIL and fail like POSIX calls (-1 with errno set).

from _sys cimport ssize_t, epoll_event

cdef extern from "_netio.h" nogil:
    ctypedef struct pte_addr:
        pass
    int pte_addr_set(pte_addr *a, const char *packed, size_t n, int port,
                     unsigned int scope_id)
    int pte_socket(const pte_addr *a, int timeout_ms)
    int pte_connect(int fd, const pte_addr *a)
    int pte_connect_result(int fd)
    int pte_connect_start(const pte_addr *a, int *connecting)
    int pte_pipe(int fds[2], int size)
    ssize_t pte_splice(int fd_in, int fd_out, size_t n)
    int pte_sleep_until(long long due_ns)
    int pte_epoll_wait_ns(int epfd, epoll_event *events, int max, long long timeout_ns)
