/* Small socket, splice and clock helpers for the Cython core.
 * Each behaves like a POSIX call: a result >= 0 on success, -1 with errno set on
 * failure.  None touches Python, so they run without the GIL, and none retries:
 * an interrupted call comes back to the core, which runs Python's signal handlers
 * and decides what to do (csrc/_core.pyx, check_rc). */
#ifndef PYTCPECHO_NETIO_H
#define PYTCPECHO_NETIO_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} pte_addr;

/* Fill a socket address from a packed IPv4 (4 bytes) or IPv6 (16 bytes) address. */
static int pte_addr_set(pte_addr *a, const char *packed, size_t n, int port,
                        unsigned int scope_id) {
    memset(a, 0, sizeof(*a));
    if (n == 4) {
        struct sockaddr_in *s = (struct sockaddr_in *)&a->ss;
        s->sin_family = AF_INET;
        s->sin_port = htons((unsigned short)port);
        memcpy(&s->sin_addr, packed, 4);
        a->len = sizeof(*s);
        return 0;
    }
    if (n == 16) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a->ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons((unsigned short)port);
        memcpy(&s->sin6_addr, packed, 16);
        s->sin6_scope_id = scope_id;  /* the interface of a link-local address */
        a->len = sizeof(*s);
        return 0;
    }
    errno = EINVAL;
    return -1;
}

/* A blocking TCP socket for `a` with TCP_NODELAY and SO_RCVTIMEO/SO_SNDTIMEO
 * (which also bound connect()); timeout_ms < 0 waits forever.  Returns the fd. */
static int pte_socket(const pte_addr *a, int timeout_ms) {
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (timeout_ms > 0) {
        struct timeval tv;
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return fd;
}

/* connect() fd to `a`.  A blocking connect() whose SO_SNDTIMEO expires fails with
 * EINPROGRESS; that is reported as the timeout it is (ETIMEDOUT). */
static int pte_connect(int fd, const pte_addr *a) {
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0)
        return 0;
    if (errno == EINPROGRESS)
        errno = ETIMEDOUT;
    return -1;
}

/* The outcome of a connect() that went on in the kernel (read once fd is writable):
 * 0 if it connected, else -1 with errno set to why it did not. */
static int pte_connect_result(int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return -1;
    if (err != 0) {
        errno = err;
        return -1;
    }
    return 0;
}

/* A non-blocking TCP socket for `a` with TCP_NODELAY, its connect() started; the fd.
 * *connecting says the kernel goes on connecting (EINPROGRESS, or a signal came):
 * wait until the fd is writable, then read pte_connect_result().  -1 with errno set
 * when it failed at once (refused, no route), the fd closed again. */
static int pte_connect_start(const pte_addr *a, int *connecting) {
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1, err;
    *connecting = 0;
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0)
        return fd;
    if (errno == EINPROGRESS || errno == EINTR) {
        *connecting = 1;
        return fd;
    }
    err = errno;
    close(fd);
    errno = err;
    return -1;
}

/* A pipe for splice(), sized to `size` bytes where the kernel lets us. */
static int pte_pipe(int fds[2], int size) {
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    if (size > 0)
        fcntl(fds[1], F_SETPIPE_SZ, size);  /* best effort: the default 64 KiB also works */
    return 0;
}

/* splice() up to n bytes from in to out: bytes moved, 0 at EOF, or -1. */
static ssize_t pte_splice(int in, int out, size_t n) {
    return splice(in, NULL, out, NULL, n, SPLICE_F_MOVE);
}

/* Sleep until the CLOCK_MONOTONIC time `due_ns`.  clock_nanosleep() returns its
 * error number instead of setting errno; this sets errno and returns -1. */
static int pte_sleep_until(long long due_ns) {
    struct timespec ts;
    int err;
    ts.tv_sec = (time_t)(due_ns / 1000000000);
    ts.tv_nsec = (long)(due_ns % 1000000000);
    err = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    if (err != 0) {
        errno = err;
        return -1;
    }
    return 0;
}

/* epoll_wait() with a timeout in nanoseconds (< 0: none): epoll_pwait2() where the C
 * library and the kernel have it (an open-loop timer must not round to whole
 * milliseconds), else epoll_wait() with the timeout rounded up, never down to a spin. */
static int pte_epoll_wait_ns(int epfd, struct epoll_event *events, int max, long long timeout_ns) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    static volatile int no_pwait2;  /* a kernel before 5.11: found once, then skipped */
    if (!no_pwait2) {
        struct timespec ts;
        int n;
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        n = epoll_pwait2(epfd, events, max, timeout_ns < 0 ? NULL : &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        no_pwait2 = 1;
    }
#endif
    return epoll_wait(epfd, events, max,
                      timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000));
}

#endif
