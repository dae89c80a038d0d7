/* The datagram side of the Cython core: batches of recvmmsg()/sendmmsg(), the server's
 * reflection guards and the client's verification, in C.  The loops that call these
 * live in _udp.pxi; as in _netio.h, each call that can fail returns -1 with errno set
 * and retries nothing, so a signal comes back to the core's one errno path. */
#ifndef PYTCPECHO_UDP_H
#define PYTCPECHO_UDP_H

#include "_netio.h"
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

/* Mirrored in pytcpecho/constants.py; the core refuses to import when they differ. */
#define PTE_UDP_HEADER 24
#define PTE_UDP_BATCH 64
#define PTE_UDP_WINDOW (1 << 20)
#define PTE_UDP_TRACE 4096
#define PTE_UDP_BUCKETS 4096
#define PTE_CTRL 64
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define PTE_GSO_MAX_BYTES 65000   /* a GSO send's payload in all: under IPv4's 65,507 */
#define PTE_GSO_GIVE_UP 8         /* refused GSO sends before a server stops trying */

enum { PTE_DROP_DENIED, PTE_DROP_LOOP, PTE_DROP_RATE, PTE_DROP_TRUNC, PTE_NDROP };
enum { PTE_EV_ECHO, PTE_EV_DUP, PTE_EV_CORRUPT, PTE_EV_LATE, PTE_EV_REFUSED };

static inline long long pte_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* FNV-1a, 32 bits: the check of a client datagram's header, and the rate table's hash. */
static inline uint32_t pte_fnv1a(const unsigned char *p, size_t n, uint32_t h) {
    while (n--) {
        h ^= *p++;
        h *= 0x01000193u;
    }
    return h;
}
#define PTE_FNV_BASIS 0x811C9DC5u

static inline uint64_t pte_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline void pte_put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}
static inline uint32_t pte_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void pte_put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

/* poll() fd for input, with a timeout in ns: 1 when readable, 0 on timeout, -1 with
 * errno (ppoll(): an open loop's timer must not round to whole milliseconds). */
static int pte_wait_readable(int fd, long long timeout_ns) {
    struct pollfd p;
    struct timespec ts;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
    ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
    return ppoll(&p, 1, &ts, NULL);
}

/* SO_RCVTIMEO of `ns` nanoseconds: how long a blocking receive waits before it comes
 * back (EAGAIN) to let its loop look for stop(). */
static int pte_set_rcvtimeo_ns(int fd, long long ns) {
    struct timeval tv;
    tv.tv_sec = (time_t)(ns / 1000000000LL);
    tv.tv_usec = (suseconds_t)((ns % 1000000000LL) / 1000);
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* -- the server -------------------------------------------------------------------- */

typedef struct {
    unsigned char addr[16];
    int family; /* AF_INET (4 bytes of addr used) or AF_INET6 */
    int port;
} pte_src;

typedef struct {
    unsigned char net[16];
    int family;
    int prefix;
} pte_rule;

typedef struct {
    unsigned char addr[16];
    int family; /* 0: free */
    long long last_ns;
    double tokens;
} pte_bucket;

typedef struct {
    int fd;
    size_t max_size;
    unsigned char *bufs; /* PTE_UDP_BATCH buffers of max_size bytes, mapped */
    size_t bufs_len;
    struct mmsghdr rmsg[PTE_UDP_BATCH], smsg[PTE_UDP_BATCH];
    struct iovec riov[PTE_UDP_BATCH], siov[PTE_UDP_BATCH];
    struct sockaddr_storage names[PTE_UDP_BATCH];
    unsigned char sctrl[PTE_UDP_BATCH][PTE_CTRL];
    int segs[PTE_UDP_BATCH];     /* datagrams in each message sent */
    long long sbytes[PTE_UDP_BATCH];
    int nsend, next_send;
    int gso, gso_refused;        /* GSO sends tried (until refused too often), refused */
    double rate, burst;
    pte_bucket *buckets;
    pte_rule *deny, *allow;
    int ndeny, nallow;
    unsigned char blocked[65536 / 8];
    long long datagrams_in, datagrams_out, bytes_in, bytes_out, send_errors;
    long long dropped[PTE_NDROP];
    pte_src last[PTE_NDROP];
} pte_udp_server;

/* A datagram's source as the guards read it: an IPv4-mapped IPv6 address is IPv4. */
static void pte_src_of(const struct sockaddr_storage *ss, pte_src *s) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(s, 0, sizeof(*s));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        s->family = AF_INET;
        memcpy(s->addr, &a->sin_addr, 4);
        s->port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        s->port = ntohs(a->sin6_port);
        if (memcmp(&a->sin6_addr, mapped, 12) == 0) {
            s->family = AF_INET;
            memcpy(s->addr, (const unsigned char *)&a->sin6_addr + 12, 4);
        } else {
            s->family = AF_INET6;
            memcpy(s->addr, &a->sin6_addr, 16);
        }
    }
}

static int pte_rule_matches(const pte_rule *r, const pte_src *s) {
    int whole = r->prefix / 8, rest = r->prefix % 8;
    if (r->family != s->family)
        return 0;
    if (memcmp(r->net, s->addr, (size_t)whole) != 0)
        return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((r->net[whole] & mask) != (s->addr[whole] & mask))
            return 0;
    }
    return 1;
}

static int pte_denied(const pte_udp_server *u, const pte_src *s) {
    int i;
    for (i = 0; i < u->ndeny; i++)
        if (pte_rule_matches(&u->deny[i], s))
            return 1;
    if (u->nallow == 0)
        return 0;
    for (i = 0; i < u->nallow; i++)
        if (pte_rule_matches(&u->allow[i], s))
            return 0;
    return 1;
}

/* Take one token from the source's bucket: 1 if it had one.  The table is a fixed
 * array indexed by a hash of the address; a slot held by another address is taken
 * over only once that one's bucket would be full again (it lost nothing), and shared
 * until then, which can only limit more, never less. */
static int pte_rate_take(pte_udp_server *u, const pte_src *s, long long now) {
    unsigned char key[17];
    pte_bucket *b;
    double tokens;
    size_t n = s->family == AF_INET ? 4 : 16;
    key[0] = (unsigned char)s->family;
    memcpy(key + 1, s->addr, n);
    b = &u->buckets[pte_fnv1a(key, n + 1, PTE_FNV_BASIS) % PTE_UDP_BUCKETS];
    tokens = b->family ? b->tokens + (double)(now - b->last_ns) * 1e-9 * u->rate : u->burst;
    if (tokens > u->burst)
        tokens = u->burst;
    if (b->family != s->family || memcmp(b->addr, s->addr, n) != 0) {
        if (tokens >= u->burst) { /* idle long enough: the slot is this address's now */
            b->family = s->family;
            memset(b->addr, 0, sizeof(b->addr));
            memcpy(b->addr, s->addr, n);
        }
    }
    b->last_ns = now;
    if (tokens < 1.0) {
        b->tokens = tokens;
        return 0;
    }
    b->tokens = tokens - 1.0;
    return 1;
}

static void pte_udp_server_free(pte_udp_server *u) {
    if (u->bufs != NULL && u->bufs != MAP_FAILED)
        munmap(u->bufs, u->bufs_len);
    free(u->buckets);
    free(u->deny);
    free(u->allow);
    u->bufs = NULL;
    u->buckets = NULL;
    u->deny = u->allow = NULL;
}

/* Buffers for one batch: 0, or -1 with errno (ENOMEM).  Untouched pages of the mapping
 * are never resident: 64 buffers of 64 KiB cost memory only as large datagrams come. */
static int pte_udp_server_init(pte_udp_server *u, int fd, size_t max_size, int ndeny,
                               int nallow) {
    int i;
    memset(u, 0, sizeof(*u));
    u->fd = fd;
    u->max_size = max_size;
    u->bufs_len = PTE_UDP_BATCH * (max_size ? max_size : 1);
    u->bufs = mmap(NULL, u->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    u->buckets = calloc(PTE_UDP_BUCKETS, sizeof(pte_bucket));
    u->deny = calloc((size_t)ndeny + 1, sizeof(pte_rule));
    u->allow = calloc((size_t)nallow + 1, sizeof(pte_rule));
    if (u->bufs == MAP_FAILED || !u->buckets || !u->deny || !u->allow) {
        pte_udp_server_free(u);
        errno = ENOMEM;
        return -1;
    }
    for (i = 0; i < PTE_UDP_BATCH; i++) {
        u->riov[i].iov_base = u->bufs + (size_t)i * max_size;
        u->riov[i].iov_len = max_size;
        u->rmsg[i].msg_hdr.msg_iov = &u->riov[i];
        u->rmsg[i].msg_hdr.msg_iovlen = 1;
        u->rmsg[i].msg_hdr.msg_name = &u->names[i];
    }
    u->gso = 1;
    return 0;
}

static void pte_udp_block_port(pte_udp_server *u, int port) {
    if (port >= 0 && port < 65536)
        u->blocked[port >> 3] |= (unsigned char)(1 << (port & 7));
}

/* Wait for a datagram (SO_RCVTIMEO bounds the wait), then take what else is waiting,
 * up to a batch (MSG_WAITFORONE): one call per datagram when they come one by one, one
 * per batch under load.  How many, or -1 (EAGAIN: none came in time). */
static int pte_udp_server_recv(pte_udp_server *u) {
    int i;
    for (i = 0; i < PTE_UDP_BATCH; i++) {
        u->rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        u->rmsg[i].msg_hdr.msg_flags = 0;
    }
    return recvmmsg(u->fd, u->rmsg, PTE_UDP_BATCH, MSG_WAITFORONE, NULL);
}

static void pte_udp_drop(pte_udp_server *u, int why, const pte_src *s) {
    u->dropped[why]++;
    u->last[why] = *s;
}

/* Judge the n datagrams received; queue the echoes for pte_udp_server_send(), each
 * back to its sender, unchanged.  The echoes to one sender in a batch, of one size (the
 * last may be shorter), go as one GSO send (UDP_SEGMENT), wherever they stand in the
 * batch: the kernel makes them datagrams again after one trip down its stack instead of
 * one trip each.  Each sender's echoes keep their order; between senders, order means
 * nothing. */
static void pte_udp_server_judge(pte_udp_server *u, int n) {
    int i, a, b, k = 0, m = 0, nacc = 0;
    int acc[PTE_UDP_BATCH];
    unsigned char used[PTE_UDP_BATCH];
    long long now = u->rate > 0 ? pte_now_ns() : 0;
    pte_src s;
    for (i = 0; i < n; i++) {
        struct msghdr *h = &u->rmsg[i].msg_hdr;
        u->datagrams_in++;
        u->bytes_in += u->rmsg[i].msg_len;
        pte_src_of(&u->names[i], &s);
        if (h->msg_flags & MSG_TRUNC)
            pte_udp_drop(u, PTE_DROP_TRUNC, &s);
        else if ((u->ndeny || u->nallow) && pte_denied(u, &s))
            pte_udp_drop(u, PTE_DROP_DENIED, &s);
        else if (u->blocked[s.port >> 3] & (1 << (s.port & 7)))
            pte_udp_drop(u, PTE_DROP_LOOP, &s);
        else if (u->rate > 0 && !pte_rate_take(u, &s, now))
            pte_udp_drop(u, PTE_DROP_RATE, &s);
        else
            acc[nacc++] = i;
    }
    memset(used, 0, sizeof(used));
    for (a = 0; a < nacc; a++) {
        struct msghdr *g = &u->smsg[m].msg_hdr, *ha;
        size_t seg, len;
        if (used[a])
            continue;
        i = acc[a];
        ha = &u->rmsg[i].msg_hdr;
        seg = u->rmsg[i].msg_len;
        memset(g, 0, sizeof(*g));
        g->msg_name = &u->names[i];
        g->msg_namelen = ha->msg_namelen;
        g->msg_iov = &u->siov[k];
        g->msg_iovlen = 1;
        u->siov[k].iov_base = u->riov[i].iov_base;
        u->siov[k++].iov_len = seg;
        u->segs[m] = 1;
        u->sbytes[m] = (long long)seg;
        len = seg;
        /* Later echoes to the same sender join while they fit; the first that does not
         * (a larger one, or any after a shorter one) ends this send, and starts its own
         * later, so none overtakes another to its sender. */
        for (b = a + 1; u->gso && seg > 0 && len == seg && b < nacc; b++) {
            int j = acc[b];
            size_t lb = u->rmsg[j].msg_len;
            if (used[b] || u->rmsg[j].msg_hdr.msg_namelen != ha->msg_namelen ||
                memcmp(&u->names[j], &u->names[i], ha->msg_namelen) != 0)
                continue;
            if (lb == 0 || lb > seg || u->sbytes[m] + (long long)lb > PTE_GSO_MAX_BYTES)
                break;
            used[b] = 1;
            g->msg_iovlen++;
            u->siov[k].iov_base = u->riov[j].iov_base;
            u->siov[k++].iov_len = lb;
            u->segs[m]++;
            u->sbytes[m] += (long long)lb;
            len = lb;
        }
        if (u->segs[m] > 1) {  /* a send of several datagrams says their size */
            struct cmsghdr *cm;
            uint16_t size = (uint16_t)seg;
            g->msg_control = u->sctrl[m];
            g->msg_controllen = CMSG_SPACE(sizeof(size));
            cm = CMSG_FIRSTHDR(g);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(size));
            memcpy(CMSG_DATA(cm), &size, sizeof(size));
        }
        m++;
    }
    u->nsend = m;
    u->next_send = 0;
}

/* A GSO send the kernel refused (a device without checksum offload: EIO; a datagram
 * over the path's MTU: EINVAL), sent again one datagram at a time; after a few such,
 * the server stops trying GSO. */
static void pte_udp_send_apart(pte_udp_server *u, struct msghdr *g) {
    struct msghdr one;
    size_t j;
    ssize_t r;
    if (++u->gso_refused >= PTE_GSO_GIVE_UP)
        u->gso = 0;
    for (j = 0; j < g->msg_iovlen; j++) {
        memset(&one, 0, sizeof(one));
        one.msg_name = g->msg_name;
        one.msg_namelen = g->msg_namelen;
        one.msg_iov = &g->msg_iov[j];
        one.msg_iovlen = 1;
        do  /* EINTR: this is no main thread, no signal handler of Python's runs here */
            r = sendmsg(u->fd, &one, 0);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            u->send_errors++;
        } else {
            u->datagrams_out++;
            u->bytes_out += (long long)g->msg_iov[j].iov_len;
        }
    }
}

/* Send the queued echoes.  A datagram the network refuses (EPERM from a firewall,
 * ENETUNREACH, EMSGSIZE, ...) is counted in send_errors and skipped: no peer can end
 * the loop.  Returns 0 when all are done, -1 with errno EINTR to be called again. */
static int pte_udp_server_send(pte_udp_server *u) {
    int r, j, i;
    while (u->next_send < u->nsend) {
        i = u->next_send;
        r = sendmmsg(u->fd, u->smsg + i, (unsigned int)(u->nsend - i), 0);
        if (r < 0) {
            if (errno == EINTR)
                return -1;
            if (u->segs[i] > 1 && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP ||
                                   errno == ENOPROTOOPT))
                pte_udp_send_apart(u, &u->smsg[i].msg_hdr);
            else
                u->send_errors += u->segs[i];
            u->next_send++;
            continue;
        }
        for (j = 0; j < r; j++) {
            u->datagrams_out += u->segs[i + j];
            u->bytes_out += u->sbytes[i + j];
        }
        u->next_send += r;
    }
    return 0;
}

/* -- the client -------------------------------------------------------------------- */

typedef struct {
    long long seq, rtt_ns;
    int ttl, kind;
} pte_event;

typedef struct {
    int fd;
    size_t size;
    const unsigned char *base;
    uint32_t id;
    unsigned char *sbufs, *rbufs; /* PTE_UDP_BATCH datagrams each */
    unsigned char ctrl[PTE_UDP_BATCH][PTE_CTRL];
    struct mmsghdr smsg[PTE_UDP_BATCH], rmsg[PTE_UDP_BATCH];
    struct iovec siov[PTE_UDP_BATCH], riov[PTE_UDP_BATCH];
    uint64_t *seen; /* PTE_UDP_WINDOW bits: the sequence numbers answered */
    long long sent, received, corrupted, duplicates, reordered, late, refused;
    int closed; /* an ICMP error came after the last echo: the port is closed now */
    long long bytes_sent, bytes_received;
    long long next_expected;
    double jitter;
    long long prev_transit;
    int have_transit;
    int ttl_last, ttl_min, ttl_max;
    long long *hist;
    long long lat_min, lat_max, lat_sum;
    int trace;
    pte_event *events;
    int nevents;
} pte_udp_client;

static void pte_udp_client_free(pte_udp_client *c) {
    free(c->sbufs);
    free(c->rbufs);
    free(c->seen);
    free(c->hist);
    free(c->events);
    c->sbufs = c->rbufs = NULL;
    c->seen = NULL;
    c->hist = NULL;
    c->events = NULL;
}

/* Ask for each datagram's TTL or hop limit, as ancillary data. */
static int pte_udp_want_ttl(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int one = 1;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof(one)); /* IPv4-mapped peers */
        return setsockopt(fd, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, &one, sizeof(one));
    }
    return setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one, sizeof(one));
}

static int pte_udp_client_init(pte_udp_client *c, int fd, size_t size, const unsigned char *base,
                               uint32_t id, int nbuckets, int trace) {
    int i;
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->size = size;
    c->base = base;
    c->id = id;
    c->ttl_last = c->ttl_min = c->ttl_max = -1;
    c->lat_min = -1;
    c->trace = trace;
    c->sbufs = malloc(PTE_UDP_BATCH * size);
    c->rbufs = malloc(PTE_UDP_BATCH * size);
    c->seen = calloc(PTE_UDP_WINDOW / 64, sizeof(uint64_t));
    c->hist = calloc((size_t)nbuckets, sizeof(long long));
    c->events = trace ? calloc(PTE_UDP_TRACE, sizeof(pte_event)) : NULL;
    if (!c->sbufs || !c->rbufs || !c->seen || !c->hist || (trace && !c->events)) {
        pte_udp_client_free(c);
        errno = ENOMEM;
        return -1;
    }
    for (i = 0; i < PTE_UDP_BATCH; i++) {
        /* Every datagram of a batch is the header, then the base block from there on. */
        memcpy(c->sbufs + (size_t)i * size + PTE_UDP_HEADER, base + PTE_UDP_HEADER,
               size - PTE_UDP_HEADER);
        c->siov[i].iov_base = c->sbufs + (size_t)i * size;
        c->siov[i].iov_len = size;
        c->smsg[i].msg_hdr.msg_iov = &c->siov[i];
        c->smsg[i].msg_hdr.msg_iovlen = 1;
        c->riov[i].iov_base = c->rbufs + (size_t)i * size;
        c->riov[i].iov_len = size;
        c->rmsg[i].msg_hdr.msg_iov = &c->riov[i];
        c->rmsg[i].msg_hdr.msg_iovlen = 1;
        c->rmsg[i].msg_hdr.msg_control = c->ctrl[i];
    }
    return 0;
}

static inline int pte_udp_answered(const pte_udp_client *c, long long seq) {
    uint64_t bit = (uint64_t)seq % PTE_UDP_WINDOW;
    return (c->seen[bit >> 6] >> (bit & 63)) & 1;
}

static void pte_udp_event(pte_udp_client *c, long long seq, long long rtt, int ttl, int kind) {
    if (c->trace && c->nevents < PTE_UDP_TRACE) {
        pte_event *e = &c->events[c->nevents++];
        e->seq = seq;
        e->rtt_ns = rtt;
        e->ttl = ttl;
        e->kind = kind;
    }
}

/* Send n datagrams, the next sequence numbers, stamped t0, t0 + step, ...: how many
 * went, or -1 with errno.  An ICMP error the socket reports here belongs to an earlier
 * datagram: it is counted in refused, and the send is tried again. */
static int pte_udp_client_send(pte_udp_client *c, int n, long long t0, long long step) {
    int i, r;
    for (i = 0; i < n; i++) {
        unsigned char *p = c->sbufs + (size_t)i * c->size;
        long long seq = c->sent + i;
        uint64_t bit = (uint64_t)seq % PTE_UDP_WINDOW;
        pte_put_le64(p, (uint64_t)seq);
        pte_put_le64(p + 8, (uint64_t)(t0 + step * i));
        pte_put_le32(p + 16, c->id);
        pte_put_le32(p + 20, pte_fnv1a(p, 20, PTE_FNV_BASIS));
        c->seen[bit >> 6] &= ~((uint64_t)1 << (bit & 63));
    }
    for (;;) {
        r = sendmmsg(c->fd, c->smsg, (unsigned int)n, 0);
        if (r >= 0 || errno != ECONNREFUSED)
            break;
        c->refused++;
        c->closed = 1;
        pte_udp_event(c, -1, -1, -1, PTE_EV_REFUSED);
    }
    if (r > 0) { /* a short batch: the rest go with the next one, stamped again */
        c->sent += r;
        c->bytes_sent += (long long)r * (long long)c->size;
    }
    return r;
}

static int pte_ttl_of(struct msghdr *h) {
    struct cmsghdr *cm;
    int v;
    for (cm = CMSG_FIRSTHDR(h); cm != NULL; cm = CMSG_NXTHDR(h, cm)) {
        if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TTL) ||
            (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_HOPLIMIT)) {
            memcpy(&v, CMSG_DATA(cm), sizeof(v));
            return v;
        }
    }
    return -1;
}

static inline int pte_bucket_of(long long v, int sub_bits, int nbuckets) {
    int e = 0, idx, sub = 1 << sub_bits;
    if (v < 0)
        v = 0;
    if (v < 2 * sub)
        return (int)v;
    while ((v >> e) >= 2 * sub)
        e++;
    idx = sub * e + (int)(v >> e);
    return idx < nbuckets ? idx : nbuckets - 1;
}

/* One echo: verified, counted, timed. */
static void pte_udp_client_take(pte_udp_client *c, const unsigned char *p, size_t len,
                                int truncated, int ttl, long long now, int sub_bits,
                                int nbuckets) {
    long long seq, rtt, transit, d;
    uint64_t bit;
    if (ttl >= 0) {
        c->ttl_last = ttl;
        if (c->ttl_min < 0 || ttl < c->ttl_min)
            c->ttl_min = ttl;
        if (ttl > c->ttl_max)
            c->ttl_max = ttl;
    }
    if (len < PTE_UDP_HEADER || pte_le32(p + 20) != pte_fnv1a(p, 20, PTE_FNV_BASIS) ||
        pte_le32(p + 16) != c->id || pte_le64(p) >= (uint64_t)c->sent) {
        c->corrupted++;
        pte_udp_event(c, -1, -1, ttl, PTE_EV_CORRUPT);
        return;
    }
    seq = (long long)pte_le64(p);
    rtt = now - (long long)pte_le64(p + 8);
    if (truncated || len != c->size ||
        memcmp(p + PTE_UDP_HEADER, c->base + PTE_UDP_HEADER, len - PTE_UDP_HEADER) != 0) {
        c->corrupted++;
        pte_udp_event(c, seq, rtt, ttl, PTE_EV_CORRUPT);
        return;
    }
    if (seq + PTE_UDP_WINDOW < c->sent) {
        c->late++;
        pte_udp_event(c, seq, rtt, ttl, PTE_EV_LATE);
        return;
    }
    bit = (uint64_t)seq % PTE_UDP_WINDOW;
    if ((c->seen[bit >> 6] >> (bit & 63)) & 1) {
        c->duplicates++;
        pte_udp_event(c, seq, rtt, ttl, PTE_EV_DUP);
        return;
    }
    c->seen[bit >> 6] |= (uint64_t)1 << (bit & 63);
    c->received++;
    c->closed = 0;
    c->bytes_received += (long long)len;
    if (seq < c->next_expected)
        c->reordered++;
    else
        c->next_expected = seq + 1;
    c->hist[pte_bucket_of(rtt, sub_bits, nbuckets)]++;
    c->lat_sum += rtt;
    if (c->lat_min < 0 || rtt < c->lat_min)
        c->lat_min = rtt;
    if (rtt > c->lat_max)
        c->lat_max = rtt;
    transit = now - (long long)pte_le64(p + 8);
    if (c->have_transit) {
        d = transit - c->prev_transit;
        if (d < 0)
            d = -d;
        c->jitter += ((double)d - c->jitter) / 16.0;
    }
    c->prev_transit = transit;
    c->have_transit = 1;
    pte_udp_event(c, seq, rtt, ttl, PTE_EV_ECHO);
}

/* Receive and judge a batch: what is waiting (flags MSG_DONTWAIT), or once one came
 * (MSG_WAITFORONE, the wait bounded by SO_RCVTIMEO).  How many datagrams came (an ICMP
 * error counts as one, in refused), or -1 with errno (EAGAIN: nothing). */
static int pte_udp_client_recv(pte_udp_client *c, int flags, int sub_bits, int nbuckets) {
    int i, n;
    long long now;
    for (i = 0; i < PTE_UDP_BATCH; i++) {
        c->rmsg[i].msg_hdr.msg_controllen = PTE_CTRL;
        c->rmsg[i].msg_hdr.msg_flags = 0;
    }
    n = recvmmsg(c->fd, c->rmsg, PTE_UDP_BATCH, flags, NULL);
    if (n < 0) {
        if (errno != ECONNREFUSED)
            return -1;
        c->refused++;
        c->closed = 1;
        pte_udp_event(c, -1, -1, -1, PTE_EV_REFUSED);
        return 1;
    }
    now = pte_now_ns();
    for (i = 0; i < n; i++)
        pte_udp_client_take(c, c->rbufs + (size_t)i * c->size, c->rmsg[i].msg_len,
                            (c->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0,
                            pte_ttl_of(&c->rmsg[i].msg_hdr), now, sub_bits, nbuckets);
    return n;
}

#endif
