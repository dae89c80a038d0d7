"""Every number and name that more than one module needs, defined once, low in the package.

The CLI, the server, the client, the load generator and both cores read these;
nothing here imports anything.  The Cython core keeps typed copies of the wire
and loop constants in ``csrc/_constants.pxd`` and refuses to import when they
differ from the values here, so the two can never drift apart silently.
"""

from __future__ import annotations

# -- the protocol -------------------------------------------------------------------

DEFAULT_PORT = 8000
MODES = ("stream", "message")
"""stream: echo bytes as they come (RFC 862); message: read ``size`` bytes, send them
back, repeat (the original exercise's protocol)."""
DEFAULT_SIZE = 102400
"""100 KiB: the message the original exercise sent."""

# -- limits ---------------------------------------------------------------------------

MAX_BYTES = 1 << 60
"""The most one run may move (sizes, counts, size x count): 1 EiB, more than any link
carries in a lifetime, and far below where 64-bit stream offsets overflow."""
MAX_TIMEOUT = 1_000_000.0
"""Longest timeout in seconds (11.5 days): longer ones overflow the platform's timers
(time_t in settimeout(), poll()'s int milliseconds, lock waits)."""
MIN_TIMEOUT = 0.001
"""Shortest timeout or duration in seconds: the finest step poll() takes (milliseconds);
a shorter one would round to nothing, which the kernel's socket timeouts read as
"wait forever"."""
MIN_INTERVAL = 0.01
"""Shortest reporting interval (-i) in seconds: a line every 10 ms is already a flood."""
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest message-mode size: each connection holds one buffer of it, so 1024 clients
still fit in 64 GiB of address space that the kernel commits only as clients fill it."""

MAX_DIGITS = 100
"""Most digits a whole number on the command line may have: far more than any value an
option takes (a seed included), and far below Python's own limit (4300 digits), whose
message would otherwise speak of sys.set_int_max_str_digits()."""
QUOTE_MAX = 80
"""Longest value an error message repeats as typed; a longer one is cut, with its length."""

# -- the server -------------------------------------------------------------------------

DEFAULT_MAX_CLIENTS = 1024
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_WORKER_IDLE = 30.0
DEFAULT_GRACE = 10.0
DEFAULT_BACKLOG = 1024
WORKERS_PER_CPU = 4
"""``serve --workers``: at most this many processes per CPU this process may run on (one
per CPU already uses them all; more only add memory and context switches)."""

# -- clients ----------------------------------------------------------------------------

DEFAULT_TIMEOUT = 10.0
PING_SIZE = 64
PING_TIMEOUT = 3.0
BENCH_SIZE = 1024
BENCH_CONNECTIONS = 10
BENCH_DURATION = 10.0
BENCH_INTERVAL = 1.0
BENCH_FORMAT = 1
"""The version of bench --json's document that ``pytcpecho merge`` reads."""
BENCH_DRAIN = 0.05
"""Seconds a timed bench waits at least, after its duration, for echoes in flight (at
most its timeout; 0.5% of a long duration): then it ends on time, and counts what is
still owed as unfinished, not as an error."""

# -- the mesh ----------------------------------------------------------------------------

MESH_INTERVAL = 10.0
MESH_BULK_EVERY = 6
"""A bulk check every 6 intervals: each peer gets 1 MiB a minute by default."""
MESH_BULK_SIZE = 1 << 20
MESH_MAX_BULK = 1 << 30
MESH_TIMEOUT = 5.0
MESH_RESOLVE_INTERVAL = 30.0
MESH_MIN_INTERVAL = 0.1
"""Shortest --interval and --resolve-interval: a peer checked more often is a load test."""
MESH_CONCURRENCY = 16
MESH_MAX_CONCURRENCY = 1024
MESH_MAX_PEERS = 4096
"""The most peers one node checks; past it, a stable sample as --sample-peers picks."""
MESH_METRICS_PORT = 9862

# -- UDP echo (RFC 862 over UDP) ---------------------------------------------------------

UDP_MAX_SIZE = 65507
"""Largest UDP payload over IPv4 (65,535 less the IPv4 and UDP headers): the largest
datagram a client sends, and the server's default --udp-max-size."""
UDP_RATE = 10000
"""Datagrams per second the server echoes to one source address by default: UDP echo is a
classic reflection vector, and this bounds what a spoofed source can make it send."""
UDP_BURST_SECONDS = 0.1
UDP_MIN_BURST = 32
"""A source's rate-limit bucket holds 0.1 s of --udp-rate, and at least 32 datagrams."""
UDP_LOOP_PORTS = (0, 7, 9, 11, 13, 17, 19, 37, 53, 69, 111, 123, 137, 138, 161, 162, 389,
                  520, 1900, 5353, 11211)
"""Source ports the server never answers: port 0, inetd's small services (echo, discard,
systat, daytime, qotd, chargen, time) and other services that answer any datagram (DNS,
TFTP, portmap, NTP, NetBIOS, SNMP, CLDAP, RIP, SSDP, mDNS, memcached): an echo to one
of them could bounce between the two forever.  The server's own port is added."""
UDP_DROP_REASONS = ("denied", "loop_port", "rate_limited", "truncated")
PING_UDP_INTERVAL = 1.0
BENCH_UDP_SIZE = 64
BENCH_UDP_MAX_LOSS = 0.001
"""bench --udp without --rate: the highest rate whose loss stays under 0.1%."""
MESH_UDP_COUNT = 20

# -- the cores' loops (mirrored in csrc/_constants.pxd) ----------------------------------

CHUNK = 256 * 1024
"""Bytes one recv()/send() moves at most: the stream buffer of a server connection."""
PIPE_SIZE = 1024 * 1024
"""The splice core's pipe, where the kernel lets us size it."""
EOF_WAIT_MS = 10000
"""How long a client without a timeout waits for the server's close after an intact echo."""
SIGNAL_POLL_NS = 50_000_000
"""How often a client loop in the main thread runs Python's signal handlers (Ctrl-C)."""
UDP_HEADER = 24
"""Bytes at the head of each client datagram: sequence number, send time, session id and
a check of the three (csrc/_udp.pxi): the smallest --size of a UDP client."""
UDP_BATCH = 64
"""Datagrams one recvmmsg()/sendmmsg() moves at most."""
UDP_WINDOW = 1 << 20
"""Sequence numbers a UDP client remembers as answered (duplicates are told apart within
it); an echo older than that is counted as late, not received."""
UDP_TRACE = 4096
"""Events a tracing UDP client (ping) keeps between two reads."""

# -- the payload pattern and the latency histogram (mirrored in csrc/_constants.pxd) ----

BLOCK_SHIFT = 16
BLOCK = 1 << BLOCK_SHIFT
"""The pattern repeats a seeded block of this many bytes..."""
HEADER = 8
"""...whose first HEADER bytes are xored with the block number."""
SUB_BITS = 6
SUB = 1 << SUB_BITS
"""Histogram buckets per octave of latency (about 1.6% precision)."""
NBUCKETS = SUB * 40
