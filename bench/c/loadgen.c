/* Reference load generator: N connections, each a message -> echo loop, for D seconds.
 * usage: loadgen PORT SIZE CONNECTIONS SECONDS [each]
 * "each" opens a new connection per message (the original exercise's pattern).
 * Prints: messages=M seconds=S messages_per_s=R mib_per_s=B errors=E */
#include "common.h"
#include <time.h>

static int port, size, each;
static double seconds;
static volatile int stop;
static long long total;
static int errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = loopback(port);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) { close(fd); return -1; }
    return fd;
}

/* Send size bytes while reading the echo, as pytcpecho's client does. */
static int exchange(int fd, char *sbuf, char *rbuf, int finish) {
    ssize_t sent = 0, got = 0;
    while (got < size) {
        if (sent < size) {
            ssize_t w = send(fd, sbuf + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) sent += w;
            else if (errno != EAGAIN) return -1;
            if (sent == size && finish) shutdown(fd, SHUT_WR);
        }
        if (got < sent) {
            ssize_t r = recv(fd, rbuf, size - got, sent < size ? MSG_DONTWAIT : 0);
            if (r > 0) got += r;
            else if (r == 0 || errno != EAGAIN) return -1;
        }
    }
    return 0;
}

static void *worker(void *arg) {
    (void)arg;
    char *sbuf = malloc(size), *rbuf = malloc(size);
    memset(sbuf, 'x', size);
    long long n = 0;
    int fd = each ? -1 : dial();
    if (!each && fd < 0) goto fail;
    while (!stop) {
        if (each && (fd = dial()) < 0) goto fail;
        if (exchange(fd, sbuf, rbuf, each) != 0) goto fail;
        if (each) { close(fd); fd = -1; }
        n++;
    }
    goto done;
fail:
    pthread_mutex_lock(&lock);
    errors++;
    pthread_mutex_unlock(&lock);
done:
    if (fd >= 0) close(fd);
    pthread_mutex_lock(&lock);
    total += n;
    pthread_mutex_unlock(&lock);
    free(sbuf);
    free(rbuf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: loadgen PORT SIZE CONNECTIONS SECONDS [each]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    port = atoi(argv[1]);
    size = atoi(argv[2]);
    int conns = atoi(argv[3]);
    seconds = atof(argv[4]);
    each = argc > 5 && strcmp(argv[5], "each") == 0;
    pthread_t *t = calloc(conns, sizeof(pthread_t));
    double t0 = now();
    for (int i = 0; i < conns; i++) pthread_create(&t[i], NULL, worker, NULL);
    struct timespec d = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&d, NULL);
    stop = 1;
    for (int i = 0; i < conns; i++) pthread_join(t[i], NULL);
    double el = now() - t0;
    printf("messages=%lld seconds=%.4f messages_per_s=%.1f mib_per_s=%.2f errors=%d\n", total,
           el, total / el, total * (double)size / el / 1048576.0, errors);
    return errors ? 1 : 0;
}
