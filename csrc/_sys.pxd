# POSIX declarations the echo loops need, all callable without the GIL.

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t write(int fd, const void *buf, size_t n)

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    void *MAP_FAILED
    enum:
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int shutdown(int fd, int how)
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_PEEK
        SHUT_WR

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        unsigned int u32
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN
        ETIMEDOUT
        ECONNRESET
        EPIPE
        EINVAL
        ENOSYS
        EOPNOTSUPP
