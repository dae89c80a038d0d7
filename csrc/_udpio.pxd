# Declarations for _udp.h: the datagram batches, guards and checks, in C, callable
# without the GIL; each call that can fail returns -1 with errno set.

cdef extern from "_udp.h" nogil:
    enum:
        PTE_UDP_HEADER
        PTE_UDP_BATCH
        PTE_UDP_WINDOW
        PTE_UDP_TRACE
        PTE_NDROP
        PTE_EV_ECHO
        PTE_EV_DUP
        PTE_EV_CORRUPT
        PTE_EV_LATE
        PTE_EV_REFUSED
        MSG_WAITFORONE

    ctypedef struct pte_src:
        unsigned char addr[16]
        int family
        int port

    ctypedef struct pte_rule:
        unsigned char net[16]
        int family
        int prefix

    ctypedef struct pte_udp_server:
        int fd
        double rate
        double burst
        pte_rule *deny
        pte_rule *allow
        int ndeny
        int nallow
        long long datagrams_in
        long long datagrams_out
        long long bytes_in
        long long bytes_out
        long long send_errors
        long long dropped[4]
        pte_src last[4]

    ctypedef struct pte_event:
        long long seq
        long long rtt_ns
        int ttl
        int kind

    ctypedef struct pte_udp_client:
        int fd
        long long sent
        long long received
        long long corrupted
        long long duplicates
        long long reordered
        long long late
        long long refused
        int closed
        long long bytes_sent
        long long bytes_received
        double jitter
        int ttl_last
        int ttl_min
        int ttl_max
        long long *hist
        long long lat_min
        long long lat_max
        long long lat_sum
        pte_event *events
        int nevents

    int pte_wait_readable(int fd, long long timeout_ns)
    int pte_set_rcvtimeo_ns(int fd, long long ns)
    int pte_udp_server_init(pte_udp_server *u, int fd, size_t max_size, int ndeny, int nallow)
    void pte_udp_server_free(pte_udp_server *u)
    void pte_udp_block_port(pte_udp_server *u, int port)
    int pte_udp_server_recv(pte_udp_server *u)
    void pte_udp_server_judge(pte_udp_server *u, int n)
    int pte_udp_server_send(pte_udp_server *u)
    int pte_udp_want_ttl(int fd)
    int pte_udp_client_init(pte_udp_client *c, int fd, size_t size, const unsigned char *base,
                            unsigned int id, int nbuckets, int trace)
    void pte_udp_client_free(pte_udp_client *c)
    int pte_udp_answered(const pte_udp_client *c, long long seq)
    int pte_udp_client_send(pte_udp_client *c, int n, long long t0, long long step)
    int pte_udp_client_recv(pte_udp_client *c, int flags, int sub_bits, int nbuckets)
