/* Reference: a C thread-per-connection stream echo server (recv, send back). */
#include "common.h"

#define BUF (256 * 1024)

static void *echo(void *arg) {
    int fd = (int)(long)arg;
    char *buf = malloc(BUF);
    for (;;) {
        ssize_t n = recv(fd, buf, BUF, 0);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
            if (w <= 0) goto out;
            off += w;
        }
    }
out:
    free(buf);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    serve(argc > 1 ? atoi(argv[1]) : 0, echo);
}
