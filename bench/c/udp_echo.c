/* Reference: a C UDP echo server, a plain recvfrom() -> sendto() loop.
 * usage: udp_echo [-t THREADS] [-r RCVBUF_BYTES] [PORT [HOST]]
 * Binds HOST (default 127.0.0.1; IPv4 or IPv6, numeric) on PORT (default 0: the
 * kernel picks) and prints "Server at HOST:PORT" once bound, as the TCP references
 * do.  -t N runs N threads, each the same loop on the one socket (default 1).
 * -r asks for a receive buffer of that many bytes, as pytcpecho's UDP socket asks
 * for 4 MiB (SO_RCVBUF: the kernel grants at most net.core.rmem_max; default: the
 * kernel's default, net.core.rmem_default). */
#include "common.h"
#include <arpa/inet.h>
#include <netdb.h>

#define BUF 65536

static int fd;

static void *loop(void *arg) {
    (void)arg;
    char *buf = malloc(BUF);
    struct sockaddr_storage peer;
    for (;;) {
        socklen_t len = sizeof(peer);
        ssize_t n = recvfrom(fd, buf, BUF, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED) continue;
            perror("recvfrom");
            exit(1);
        }
        /* A send that fails (a full queue, an unreachable peer) drops that echo only. */
        sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
    }
    return NULL;
}

static int bind_udp(const char *host, const char *port, int rcvbuf) {
    struct addrinfo hints, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "udp_echo: %s:%s: %s\n", host, port, gai_strerror(rc));
        exit(2);
    }
    int s = socket(ai->ai_family, SOCK_DGRAM, 0);
    if (s < 0 || bind(s, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("bind");
        exit(1);
    }
    freeaddrinfo(ai);
    if (rcvbuf > 0) setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_storage a;
    socklen_t len = sizeof(a);
    char name[INET6_ADDRSTRLEN];
    getsockname(s, (struct sockaddr *)&a, &len);
    int bound;
    if (a.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
        inet_ntop(AF_INET6, &a6->sin6_addr, name, sizeof(name));
        bound = ntohs(a6->sin6_port);
        printf("Server at [%s]:%d\n", name, bound);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&a;
        inet_ntop(AF_INET, &a4->sin_addr, name, sizeof(name));
        bound = ntohs(a4->sin_port);
        printf("Server at %s:%d\n", name, bound);
    }
    fflush(stdout);
    return s;
}

int main(int argc, char **argv) {
    int threads = 1, rcvbuf = 0, opt;
    while ((opt = getopt(argc, argv, "t:r:")) != -1) {
        if (opt == 't') threads = atoi(optarg);
        else if (opt == 'r') rcvbuf = atoi(optarg);
        else {
            fprintf(stderr, "usage: udp_echo [-t THREADS] [-r RCVBUF_BYTES] [PORT [HOST]]\n");
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    const char *port = optind < argc ? argv[optind] : "0";
    const char *host = optind + 1 < argc ? argv[optind + 1] : "127.0.0.1";
    fd = bind_udp(host, port, rcvbuf);
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, loop, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    loop(NULL);
}
