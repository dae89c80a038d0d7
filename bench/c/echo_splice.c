/* Reference: a C thread-per-connection echo server with splice() through a pipe. */
#include "common.h"
#include <fcntl.h>

#define PIPE_SIZE (1024 * 1024)

static void *echo(void *arg) {
    int fd = (int)(long)arg, p[2];
    if (pipe2(p, O_CLOEXEC) != 0) { close(fd); return NULL; }
    fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
    for (;;) {
        ssize_t n = splice(fd, NULL, p[1], NULL, PIPE_SIZE, SPLICE_F_MOVE);
        if (n <= 0) break;
        while (n > 0) {
            ssize_t w = splice(p[0], NULL, fd, NULL, n, SPLICE_F_MOVE);
            if (w <= 0) goto out;
            n -= w;
        }
    }
out:
    close(p[0]);
    close(p[1]);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    serve(argc > 1 ? atoi(argv[1]) : 0, echo);
}
