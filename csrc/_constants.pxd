# Typed copies of the numbers in pytcpecho/constants.py that the C loops need at
# compile time.  _core.pyx compares each with its Python original when it is
# imported, and refuses to load if one differs: change both together.

cdef enum:
    BLOCK_SHIFT = 16
    BLOCK = 1 << BLOCK_SHIFT
    HEADER = 8
    SUB_BITS = 6
    SUB = 1 << SUB_BITS
    NBUCKETS = SUB * 40
    CHUNK = 256 * 1024
    PIPE_SIZE = 1024 * 1024
    EOF_WAIT_MS = 10000
    SIGNAL_POLL_NS = 50000000
    UDP_HEADER = 24
    UDP_BATCH = 64
    UDP_WINDOW = 1 << 20
    UDP_TRACE = 4096
