/* Small socket and splice helpers for the Cython core (bench and splice additions).
 * Each returns 0 or a result >= 0 on success and -errno on failure, never touching
 * Python, so they run without the GIL. */
#ifndef PYTCPECHO_NETIO_H
#define PYTCPECHO_NETIO_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    return -EINVAL;
}

/* The end of a connect() a signal interrupted: the kernel goes on connecting (calling
 * connect() again would say EALREADY), so wait for it and read its outcome. */
static int pte_connect_outcome(int fd, int timeout_ms) {
    struct pollfd p;
    int err = 0, r;
    socklen_t len = sizeof(err);
    p.fd = fd;
    p.events = POLLOUT;
    do {
        r = poll(&p, 1, timeout_ms > 0 ? timeout_ms : -1);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return ETIMEDOUT;
    if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

/* A blocking, connected TCP socket with TCP_NODELAY and SO_RCVTIMEO/SO_SNDTIMEO
 * (which also bounds connect()); timeout_ms < 0 waits forever. Returns the fd. */
static int pte_connect(const pte_addr *a, int timeout_ms) {
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, err;
    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (timeout_ms > 0) {
        struct timeval tv;
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
        err = errno;
        if (err == EINTR)
            err = pte_connect_outcome(fd, timeout_ms);
        else if (err == EINPROGRESS)  /* SO_SNDTIMEO expired */
            err = ETIMEDOUT;
        if (err != 0) {
            close(fd);
            return -err;
        }
    }
    return fd;
}

/* A pipe for splice(), sized to `size` bytes where the kernel lets us. */
static int pte_pipe(int fds[2], int size) {
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    if (size > 0)
        fcntl(fds[1], F_SETPIPE_SZ, size);  /* best effort: the default 64 KiB also works */
    return 0;
}

/* splice() up to n bytes from in to out; returns bytes moved or -errno. */
static ssize_t pte_splice(int in, int out, size_t n, int more) {
    ssize_t r = splice(in, NULL, out, NULL, n,
                       SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
    return r >= 0 ? r : -errno;
}

#endif
