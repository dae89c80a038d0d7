"""The core contract: what a core module and its sessions must provide.

A core is a module with a ``NAME``, the ``MODES`` its server loop echoes, and
six session classes: ``EchoSession`` (one server connection at a time),
``ClientSession`` (send, read back, verify, time), ``ConnectEachSession``
(a new connection per message), ``ClientGroup`` (many connections'
client loops in one thread, for the load generator), ``UdpEchoSession``
(the datagram echo loop of one UDP socket) and ``UdpClientSession``
(datagrams sent, verified, timed, counted lost or reordered).  The Cython
core (``csrc/_core.pyx``, typed by ``pytcpecho/_core.pyi``), the pure-Python
core and the splice core all implement it; mypy checks each caller against these protocols, and
``check_core`` checks a module at run time, so a missing name fails at
import, not in the middle of a connection.

Every session's loop runs on a raw, blocking fd that the caller owns: a
session never closes it.  Timeouts are the fd's SO_RCVTIMEO/SO_SNDTIMEO (server)
or the session's own (client); an expired one raises TimeoutError, other
failures OSError, and a Python signal handler that raises interrupts ``run()``
with its exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class ServerSession(Protocol):
    """One server connection's echo loop; reusable, one connection after another."""

    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def messages(self) -> int: ...

    def attach(self, fd: int) -> None:
        """Serve the connection on ``fd`` next: counters back to zero, buffer kept."""

    def run(self) -> str:
        """Echo until the client closes ("eof") or sends more than max_bytes ("limit")."""
        ...


class ServerSessionClass(Protocol):
    def __call__(self, fd: int, mode: str = ..., size: int = ..., max_bytes: int = ...,
                 on_message: Callable[[int], object] | None = ...,
                 bufsize: int = ...) -> ServerSession: ...


class Counted(Protocol):
    """What a client loop has moved so far, readable from any thread while it runs."""

    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def messages(self) -> int: ...


class Echoed(Counted, Protocol):
    """What an exchange says about its echo so far: all that verdict.py reads."""

    @property
    def mismatch_offset(self) -> int: ...
    @property
    def short_echo(self) -> bool: ...
    @property
    def long_echo(self) -> int: ...


class Timed(Counted, Protocol):
    """A client loop that times its round trips, and can be stopped from another thread."""

    @property
    def latency_min_ns(self) -> int: ...
    @property
    def latency_max_ns(self) -> int: ...
    @property
    def latency_sum_ns(self) -> int: ...

    def stop(self) -> None:
        """Ask run() to finish: a message in flight completes (safe from any thread)."""

    def histogram(self) -> list[int]:
        """The latency histogram's counts, one per bucket (constants.NBUCKETS)."""
        ...


class ClientSession(Echoed, Timed, Protocol):
    """The client's loop on one connection: see the Cython core's ClientSession."""

    def run(self, count: int, interval: float = ..., duration: float = ...,
            finish: bool = ...) -> bool:
        """Exchange ``count`` messages (0: until ``duration`` or stop()); True if intact."""
        ...


class ClientSessionClass(Protocol):
    def __call__(self, fd: int, size: int, base: bytes, mode: str = ...,
                 timeout: float | None = ...) -> ClientSession: ...


class ConnectEachSession(ClientSession, Protocol):
    """The connect-per-message loop: construct with fd=-1, target(), run_each()."""

    @property
    def connections(self) -> int: ...

    def target(self, packed: bytes, port: int, scope_id: int = ...) -> None:
        """The server: packed IPv4 or IPv6 address, port, link-local scope id."""

    def run_each(self, count: int, interval: float = ..., duration: float = ...) -> bool:
        """``count`` connections (0: until ``duration`` or stop()); True if all intact."""
        ...


class ConnectEachSessionClass(Protocol):
    def __call__(self, fd: int, size: int, base: bytes, mode: str = ...,
                 timeout: float | None = ...) -> ConnectEachSession: ...


class GroupMember(Echoed, Protocol):
    """How one connection of a ClientGroup failed."""

    @property
    def index(self) -> int: ...
    @property
    def fd(self) -> int: ...
    @property
    def error(self) -> OSError | None:
        """What ended it; None when its echo was not intact (see ``Echoed``)."""


class ClientGroup(Timed, Protocol):
    """Many connections' client loops in one thread: see the Cython core's ClientGroup.
    Its counters and histogram are all its connections' together."""

    @property
    def connections(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def unfinished(self) -> int:
        """Connections still owed an echo when the drain after the deadline ran out."""

    def add(self, fd: int, count: int = ...) -> int:
        """One more connected fd, for ``count`` messages (0: until the deadline); its index."""
        ...

    def connect(self, packed: bytes, port: int, scope_id: int = ..., count: int = ...) -> int:
        """One more connection, to a packed IPv4 or IPv6 address, that the group opens
        itself when run() starts, without blocking, and closes at its end (a refused or
        unreachable server, or a slow connect, fails that connection alone); its index."""
        ...

    def failures(self) -> Sequence[GroupMember]:
        """Each connection that failed, in the order they were added."""
        ...

    def run(self, interval: float = ..., duration: float = ..., finish: bool = ...,
            drain: float = ...) -> bool:
        """Drive them all until done, ``duration`` or stop() (then ``drain`` seconds for
        what is in flight); True if every echo was intact."""
        ...


class ClientGroupClass(Protocol):
    def __call__(self, size: int, base: bytes, mode: str = ...,
                 timeout: float | None = ...) -> ClientGroup: ...


class UdpServerSession(Protocol):
    """The datagram echo loop on one bound UDP socket, with its reflection guards.

    Each datagram goes back to its sender unchanged, unless a guard drops it
    (counted by reason, the last such source kept): its source is in ``deny`` or,
    with ``allow`` given, outside every network of it ("denied"); its source port
    is one of ``blocked_ports`` ("loop_port"); its source address is over ``rate``
    datagrams per second, with a bucket of UDP_BURST_SECONDS of it and at least
    UDP_MIN_BURST ("rate_limited"; rate 0: no limit); it is longer than
    ``max_size`` ("truncated").  An IPv4-mapped IPv6 source is read as the IPv4
    address it is.  A datagram that cannot be sent back (the network says no) is
    counted in ``send_errors``; none of this ends the loop.  The socket is blocking
    (a core may set its SO_RCVTIMEO to wake up for stop()).
    """

    @property
    def datagrams_in(self) -> int:
        """Every datagram received, dropped ones included."""
    @property
    def datagrams_out(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def denied(self) -> int: ...
    @property
    def loop_port(self) -> int: ...
    @property
    def rate_limited(self) -> int: ...
    @property
    def truncated(self) -> int: ...
    @property
    def send_errors(self) -> int: ...

    def last_dropped(self, reason: str) -> tuple[str, int] | None:
        """(address, port) of the last datagram dropped for ``reason`` (one of
        constants.UDP_DROP_REASONS), None if none was; ValueError for another reason."""

    def run(self) -> None:
        """Echo until stop(); OSError only when the socket itself fails."""

    def stop(self) -> None:
        """Make run() return soon, from any thread (before run() too: it returns at once)."""


class UdpServerSessionClass(Protocol):
    def __call__(self, fd: int, max_size: int = ..., rate: float = ...,
                 deny: Sequence[tuple[bytes, int]] = ...,
                 allow: Sequence[tuple[bytes, int]] = ...,
                 blocked_ports: Sequence[int] = ...) -> UdpServerSession: ...


class UdpClientSession(Timed, Protocol):
    """Datagrams to an echo server on a connected UDP socket, each one verified and timed.

    Each datagram carries its sequence number, its send time (CLOCK_MONOTONIC ns;
    the due time in an open loop), this session's random id and a check of the
    three (constants.UDP_HEADER bytes, little-endian), then the pattern base block
    from that offset on.  An echo is ``received`` once per sequence number when it
    is whole; one whose header or payload differs, or of another length, is
    ``corrupted`` and never received; one seen before is a ``duplicate``; one with
    a sequence number below the highest received is ``reordered`` as well (RFC
    4737).  ``jitter_ns`` is RFC 3550's interarrival jitter estimate over the
    echoes in arrival order.  The TTL or hop limit of each echo (IP_RECVTTL,
    IPV6_RECVHOPLIMIT, which the session turns on) is kept: ``ttl_last``,
    ``ttl_min``, ``ttl_max`` (-1 until one came).  An ICMP error the socket reports
    (a closed port) is counted in ``refused``.  ``messages`` is ``received``; what
    is not received is lost or still in flight.  The socket is blocking (a core may set
    its SO_RCVTIMEO to bound its waits).
    """

    @property
    def sent(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def corrupted(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def reordered(self) -> int: ...
    @property
    def late(self) -> int:
        """Echoes of datagrams sent more than UDP_WINDOW sequence numbers ago: not received."""
    @property
    def refused(self) -> int: ...
    @property
    def jitter_ns(self) -> float: ...
    @property
    def ttl_last(self) -> int: ...
    @property
    def ttl_min(self) -> int: ...
    @property
    def ttl_max(self) -> int: ...

    def run(self, count: int, rate: float = ..., duration: float = ...,
            wait: float | None = ...) -> bool:
        """Send ``count`` datagrams (0: until ``duration`` or stop()), then collect(wait).

        ``rate`` > 0: an open loop at that many datagrams per second, several sent
        at once (sendmmsg) when they are due together; 0: one at a time, the next
        when its echo came or the timeout passed.  True when every datagram sent
        so far came back intact.  In lockstep an ICMP error ends the wait for the
        datagram just sent."""

    def collect(self, wait: float | None = None) -> bool:
        """Receive until every datagram sent is answered, the port is closed (an ICMP
        error came after the last echo: none is coming; the kernel keeps one such error
        at a time, not one per datagram), ``wait`` seconds pass (None: the session's
        timeout, or 1 s without one) or stop(); True as for run()."""

    def events(self) -> list[tuple[int, int, int, str]]:
        """With ``trace``: what came since the last call, in order, as (sequence number,
        round trip ns, TTL, kind), kind "echo", "duplicate", "corrupted" (sequence number
        and time -1 when the header is not ours), "late" or "refused" (-1, -1, -1);
        at most UDP_TRACE of them (counters count the rest)."""


class UdpClientSessionClass(Protocol):
    def __call__(self, fd: int, size: int, base: bytes, timeout: float | None = ...,
                 trace: bool = ...) -> UdpClientSession: ...


class Core(Protocol):
    """A core module."""

    @property
    def NAME(self) -> str: ...
    @property
    def MODES(self) -> tuple[str, ...]: ...
    @property
    def EchoSession(self) -> ServerSessionClass: ...
    @property
    def ClientSession(self) -> ClientSessionClass: ...
    @property
    def ConnectEachSession(self) -> ConnectEachSessionClass: ...
    @property
    def ClientGroup(self) -> ClientGroupClass: ...
    @property
    def UdpEchoSession(self) -> UdpServerSessionClass: ...
    @property
    def UdpClientSession(self) -> UdpClientSessionClass: ...


class ContractError(ImportError):
    """A core module lacks part of the contract."""


def members(protocol: type) -> list[str]:
    """The public names a protocol requires, its bases' included, in definition order."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or cls.__name__ in ("Protocol", "Generic"):
            continue
        names += [n for n in vars(cls) if not n.startswith("_") and n not in names]
    return names


SESSIONS: dict[str, type] = {
    "EchoSession": ServerSession,
    "ClientSession": ClientSession,
    "ConnectEachSession": ConnectEachSession,
    "ClientGroup": ClientGroup,
    "UdpEchoSession": UdpServerSession,
    "UdpClientSession": UdpClientSession,
}


def missing(module: object) -> list[str]:
    """Every name of the contract that ``module`` lacks, as 'Class.member' for a session's."""
    absent = [name for name in members(Core) if not hasattr(module, name)]
    for name, protocol in SESSIONS.items():
        cls = getattr(module, name, None)
        if cls is not None:
            absent += [f"{name}.{m}" for m in members(protocol) if not _has(cls, m)]
    return absent


def _has(cls: type, name: str) -> bool:
    """A class attribute or method, or an instance attribute the class declares."""
    return hasattr(cls, name) or any(name in vars(k).get("__annotations__", {})
                                     for k in cls.__mro__)


def check_core(module: Core, label: str) -> Core:
    """``module``, once checked: ContractError, one line naming what is missing, if it
    is not a whole core (mypy checks the same statically; this catches a stale build)."""
    if absent := missing(module):
        raise ContractError(f"the {label} core does not implement the core contract: "
                            f"missing {', '.join(absent)}")
    return module
