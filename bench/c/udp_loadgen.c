/* Reference UDP load generator: N connected sockets, one thread each, for D seconds.
 * usage: udp_loadgen PORT [-H HOST] [-c SOCKETS] [-s SIZE] [-t SECONDS]
 *                         [--rr | --rate PKT_PER_S [--batch N]] [--timeout S] [--drain S]
 *                         [--buffer BYTES]
 *
 * --rr (the default): request/response; each socket sends one datagram, waits for
 *   its echo (or --timeout, 1 s), sends the next.  Latency: each round trip.
 * --rate R: an open loop at R datagrams per second in all (R / SOCKETS each).
 *   Each thread sleeps until --batch datagrams (64) are due, or 1 ms after the
 *   first unsent one was due, then sends all that are due with sendmmsg(); echoes
 *   are read with recvmmsg() as they come.  Latency: from the sendmmsg() call to
 *   the echo.  A generator that falls behind sends as fast as it can: the offered
 *   rate it reaches is in "offered_per_s".
 *
 * The first 8 bytes of each datagram are its sequence number on its socket (host
 * order); the rest is filler.  A socket remembers the last 2^18 it sent: an echo
 * of one older than that, or of one never sent, is "late"; one seen before is a
 * "duplicate"; one of another length is "bad".  None of them is received.  When
 * the time is up no datagram starts, and the echoes in flight get --drain seconds
 * (0.25) to come back; what does not is lost.  "echoed_per_s" counts the echoes that
 * came within the SECONDS only (a server's queue emptied after them is not its
 * rate); "received" counts the drain's too.  "rcvbuf_drops" counts echoes the
 * generator's own sockets dropped for want of buffer space (SO_RXQ_OVFL): loss
 * that is not the server's; --buffer sets each socket's receive and send buffers
 * (4 MiB; past the kernel's maximum too when we may).
 * Prints one JSON line.  Exit status: 0, or 1 when nothing came back or a socket
 * failed (the JSON line is printed all the same), 2 for bad usage. */
#include "common.h"
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>

#define BATCH 64            /* datagrams one sendmmsg()/recvmmsg() moves at most */
#define WINDOW (1u << 18)   /* sequence numbers a socket remembers */
#define SUB_BITS 6          /* histogram: 64 buckets per octave (1.6%) */
#define SUB (1 << SUB_BITS)
#define NBUCKETS (SUB * 40)
#define MAX_DATAGRAM 65507
#define CMSG_SPACE_OVFL CMSG_SPACE(sizeof(uint32_t))

struct hist {
    uint64_t b[NBUCKETS], n, sum, min, max;
};

struct slot {
    uint64_t seq, t; /* t: send time, 0 once answered */
};

struct worker {
    pthread_t thread;
    int fd;
    uint64_t sent, received, in_window, late, duplicates, bad, refused, errors;
    uint32_t ovfl; /* the socket's drop count, as SO_RXQ_OVFL last said */
    struct slot *ring;
    struct hist h;
    char *rbuf, *sbuf;
    char ctrl[BATCH][CMSG_SPACE_OVFL];
    struct mmsghdr rmsg[BATCH], smsg[BATCH];
    struct iovec riov[BATCH], siov[BATCH];
};

static int size = 64, sockets = 1, rr = 1, batch = 64, bufsize = 4 << 20;
static double seconds = 1, rate, timeout_s = 1, drain_s = 0.25;
static uint64_t start_ns, end_ns;
static pthread_barrier_t go;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int bucket(uint64_t v) {
    if (v < SUB) return (int)v;
    int shift = 63 - __builtin_clzll(v) - SUB_BITS;
    int i = (shift + 1) * SUB + (int)((v >> shift) - SUB);
    return i < NBUCKETS ? i : NBUCKETS - 1;
}

static double bucket_mid(int i) { /* ns: the middle of the bucket's range */
    if (i < SUB) return i;
    int shift = i / SUB - 1;
    return (double)((uint64_t)(i % SUB + SUB) << shift) + ((1ull << shift) - 1) / 2.0;
}

static void record(struct hist *h, uint64_t v) {
    h->b[bucket(v)]++;
    h->n++;
    h->sum += v;
    if (h->n == 1 || v < h->min) h->min = v;
    if (v > h->max) h->max = v;
}

static double percentile(const struct hist *h, double q) {
    if (!h->n) return 0;
    uint64_t want = (uint64_t)(q * h->n), seen = 0;
    if ((double)want < q * h->n || want < 1) want++;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            double v = bucket_mid(i);
            return v < h->min ? h->min : v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* One echo: matched against what this socket sent. */
static void take(struct worker *w, const char *buf, size_t len, uint64_t t) {
    if (len != (size_t)size || len < 8) { w->bad++; return; }
    uint64_t seq;
    memcpy(&seq, buf, 8);
    struct slot *s = &w->ring[seq & (WINDOW - 1)];
    if (s->seq != seq || seq >= w->sent) { w->late++; return; }
    if (s->t == 0) { w->duplicates++; return; }
    record(&w->h, t > s->t ? t - s->t : 0);
    s->t = 0;
    w->received++;
    w->in_window += t <= end_ns;
}

/* Read what has come (flags: MSG_DONTWAIT, or MSG_WAITFORONE to block for the first,
 * up to SO_RCVTIMEO); the number of echoes read, 0 if none, -1 on a socket error. */
static int receive(struct worker *w, int flags) {
    for (int i = 0; i < BATCH; i++) {
        w->rmsg[i].msg_hdr.msg_control = w->ctrl[i];
        w->rmsg[i].msg_hdr.msg_controllen = CMSG_SPACE_OVFL;
    }
    int n = recvmmsg(w->fd, w->rmsg, BATCH, flags, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        if (errno == ECONNREFUSED) { w->refused++; return 0; }
        w->errors++;
        return -1;
    }
    uint64_t t = now_ns();
    for (int i = 0; i < n; i++) {
        struct msghdr *m = &w->rmsg[i].msg_hdr;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL)
                memcpy(&w->ovfl, CMSG_DATA(c), sizeof(uint32_t));
        take(w, w->rbuf + (size_t)i * size, w->rmsg[i].msg_len, t);
    }
    return n;
}

/* Send the next n datagrams (n <= BATCH) in one sendmmsg(); how many went. */
static int send_batch(struct worker *w, int n, int flags) {
    uint64_t t = now_ns();
    for (int i = 0; i < n; i++) {
        uint64_t seq = w->sent + i;
        memcpy(w->sbuf + (size_t)i * size, &seq, 8);
    }
    int k = sendmmsg(w->fd, w->smsg, n, flags);
    if (k < 0) {
        if (errno == ECONNREFUSED) w->refused++;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EINTR)
            w->errors++;
        return 0;
    }
    for (int i = 0; i < k; i++) {
        uint64_t seq = w->sent + i;
        w->ring[seq & (WINDOW - 1)] = (struct slot){seq, t};
    }
    w->sent += k;
    return k;
}

/* After the run: the echoes still in flight get until deadline. */
static void drain(struct worker *w, uint64_t deadline) {
    for (uint64_t t = now_ns(); w->received < w->sent && t < deadline; t = now_ns()) {
        struct pollfd p = {w->fd, POLLIN, 0};
        struct timespec ts = {(time_t)((deadline - t) / 1000000000u),
                              (long)((deadline - t) % 1000000000u)};
        if (ppoll(&p, 1, &ts, NULL) > 0 && receive(w, MSG_DONTWAIT) < 0) return;
    }
}

static void run_rr(struct worker *w) {
    uint64_t timeout = (uint64_t)(timeout_s * 1e9), last = end_ns + (uint64_t)(drain_s * 1e9);
    while (now_ns() < end_ns) {
        uint64_t seq = w->sent;
        if (send_batch(w, 1, 0) != 1) {
            if (w->errors) return;
            continue;
        }
        uint64_t give_up = w->ring[seq & (WINDOW - 1)].t + timeout;
        if (give_up > last) give_up = last;
        /* Block for the echo (SO_RCVTIMEO wakes us every 10 ms to look at the clock); one
         * that does not come in time is lost, unless it comes later all the same. */
        while (w->ring[seq & (WINDOW - 1)].t != 0 && now_ns() < give_up)
            if (receive(w, MSG_WAITFORONE) < 0) return;
    }
}

static void run_batch(struct worker *w) {
    double period = 1e9 * sockets / rate; /* ns between two datagrams of this socket */
    uint64_t max_wait = 1000000;          /* 1 ms */
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end_ns) break;
        uint64_t due = (uint64_t)((t - start_ns) / period) + 1; /* datagram k: start + k period */
        uint64_t first = start_ns + (uint64_t)(w->sent * period);
        /* A batch when one is due, or when the first due has waited max_wait (an echo that
         * woke us sends nothing sooner); behind, at most 4 batches before the echoes are
         * read, so they never pile up. */
        int send_now = due >= w->sent + batch || (due > w->sent && t >= first + max_wait);
        for (int rounds = 0; send_now && w->sent < due && rounds < 4; rounds++) {
            uint64_t n = due - w->sent;
            if (send_batch(w, n < BATCH ? (int)n : BATCH, MSG_DONTWAIT) == 0) break;
        }
        if (w->errors) return;
        while (receive(w, MSG_DONTWAIT) == BATCH) {}
        if (w->errors) return;
        first = start_ns + (uint64_t)(w->sent * period);
        uint64_t wake = start_ns + (uint64_t)((w->sent + batch - 1) * period);
        if (wake > first + max_wait) wake = first + max_wait;
        if (wake > end_ns) wake = end_ns;
        t = now_ns();
        if (wake > t) {
            struct pollfd p = {w->fd, POLLIN, 0};
            struct timespec ts = {(time_t)((wake - t) / 1000000000u),
                                  (long)((wake - t) % 1000000000u)};
            ppoll(&p, 1, &ts, NULL);
        }
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    pthread_barrier_wait(&go);
    if (rr) run_rr(w);
    else run_batch(w);
    if (!w->errors) drain(w, end_ns + (uint64_t)(drain_s * 1e9));
    return NULL;
}

static int dial(const char *host, const char *port) {
    struct addrinfo hints, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "udp_loadgen: %s:%s: %s\n", host, port, gai_strerror(rc));
        exit(2);
    }
    int fd = socket(ai->ai_family, SOCK_DGRAM, 0), one = 1;
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("udp_loadgen: connect");
        exit(1);
    }
    freeaddrinfo(ai);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof(bufsize)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof(bufsize)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));
    setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
    struct timeval tv = {0, 10000}; /* a blocked rr receive looks at the clock every 10 ms */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static struct worker *make_worker(const char *host, const char *port) {
    struct worker *w = calloc(1, sizeof(*w));
    w->ring = calloc(WINDOW, sizeof(struct slot));
    w->rbuf = malloc((size_t)size * BATCH);
    w->sbuf = malloc((size_t)size * BATCH);
    if (!w->ring || !w->rbuf || !w->sbuf) {
        perror("udp_loadgen: memory");
        exit(1);
    }
    memset(w->sbuf, 'x', (size_t)size * BATCH);
    for (int i = 0; i < BATCH; i++) {
        w->riov[i] = (struct iovec){w->rbuf + (size_t)i * size, (size_t)size};
        w->siov[i] = (struct iovec){w->sbuf + (size_t)i * size, (size_t)size};
        w->rmsg[i].msg_hdr.msg_iov = &w->riov[i];
        w->rmsg[i].msg_hdr.msg_iovlen = 1;
        w->smsg[i].msg_hdr.msg_iov = &w->siov[i];
        w->smsg[i].msg_hdr.msg_iovlen = 1;
    }
    w->fd = dial(host, port);
    return w;
}

static void usage(void) {
    fprintf(stderr, "usage: udp_loadgen PORT [-H HOST] [-c SOCKETS] [-s SIZE] [-t SECONDS] "
                    "[--rr | --rate PKT_PER_S [--batch N]] [--timeout S] [--drain S] "
                    "[--buffer BYTES]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longs[] = {
        {"host", required_argument, NULL, 'H'}, {"sockets", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'}, {"seconds", required_argument, NULL, 't'},
        {"rr", no_argument, NULL, 'R'},         {"rate", required_argument, NULL, 'r'},
        {"batch", required_argument, NULL, 'b'}, {"timeout", required_argument, NULL, 'T'},
        {"drain", required_argument, NULL, 'D'}, {"buffer", required_argument, NULL, 'B'},
        {NULL, 0, NULL, 0}};
    const char *host = "127.0.0.1";
    int opt;
    while ((opt = getopt_long(argc, argv, "H:c:s:t:", longs, NULL)) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'c': sockets = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'R': rr = 1; rate = 0; break;
        case 'r': rate = atof(optarg); rr = 0; break;
        case 'b': batch = atoi(optarg); break;
        case 'T': timeout_s = atof(optarg); break;
        case 'D': drain_s = atof(optarg); break;
        case 'B': bufsize = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 1 || sockets < 1 || size < 8 || size > MAX_DATAGRAM || seconds <= 0 ||
        (!rr && !(rate > 0)) || batch < 1 || batch > BATCH || timeout_s <= 0 || drain_s < 0)
        usage();
    const char *port = argv[optind];
    struct worker **w = calloc(sockets, sizeof(*w));
    for (int i = 0; i < sockets; i++) w[i] = make_worker(host, port);
    pthread_barrier_init(&go, NULL, sockets + 1);
    for (int i = 0; i < sockets; i++)
        if (pthread_create(&w[i]->thread, NULL, worker_main, w[i]) != 0) {
            perror("udp_loadgen: pthread_create");
            return 1;
        }
    start_ns = now_ns();
    end_ns = start_ns + (uint64_t)(seconds * 1e9);
    pthread_barrier_wait(&go);

    struct hist *h = calloc(1, sizeof(*h));
    uint64_t sent = 0, received = 0, in_window = 0, late = 0, dups = 0, bad = 0, refused = 0, errors = 0,
             drops = 0;
    for (int i = 0; i < sockets; i++) {
        pthread_join(w[i]->thread, NULL);
        struct worker *x = w[i];
        sent += x->sent, received += x->received, in_window += x->in_window, late += x->late, dups += x->duplicates;
        bad += x->bad, refused += x->refused, errors += x->errors, drops += x->ovfl;
        for (int b = 0; b < NBUCKETS; b++) h->b[b] += x->h.b[b];
        if (x->h.n && (!h->n || x->h.min < h->min)) h->min = x->h.min;
        if (x->h.max > h->max) h->max = x->h.max;
        h->n += x->h.n;
        h->sum += x->h.sum;
    }
    double el = (end_ns - start_ns) / 1e9, ms = 1e-6;
    uint64_t lost = sent - received;
    printf("{\"generator\": \"c\", \"mode\": \"%s\", \"size\": %d, \"sockets\": %d, "
           "\"rate\": %.0f, \"batch\": %d, \"duration_s\": %.4f, \"sent\": %" PRIu64
           ", \"received\": %" PRIu64 ", \"received_in_window\": %" PRIu64 ", \"lost\": %" PRIu64 ", \"loss\": %.6f, "
           "\"late\": %" PRIu64 ", \"duplicates\": %" PRIu64 ", \"bad\": %" PRIu64
           ", \"refused\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"rcvbuf_drops\": %" PRIu64
           ", \"offered_per_s\": %.1f, \"echoed_per_s\": %.1f, \"latency_ms\": {\"min\": %.4f, "
           "\"mean\": %.4f, \"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, \"p999\": %.4f, "
           "\"max\": %.4f}}\n",
           rr ? "rr" : "batch", size, sockets, rr ? 0 : rate, rr ? 1 : batch, el, sent,
           received, in_window, lost, sent ? (double)lost / sent : 0.0, late, dups, bad, refused, errors,
           drops, sent / el, in_window / el, h->min * ms, h->n ? h->sum / (double)h->n * ms : 0,
           percentile(h, 0.5) * ms, percentile(h, 0.9) * ms, percentile(h, 0.99) * ms,
           percentile(h, 0.999) * ms, h->max * ms);
    return received == 0 || errors ? 1 : 0;
}
