"""Who the mesh checks: peer names resolved to addresses, this node left out.

A name that resolves to many addresses (a Kubernetes headless Service, or one
name on several lines of a hosts file) stands for all of them; it is resolved
again every resolve interval, so nodes that come and go are picked up and
dropped.  The node leaves itself out: an address it can bind to is its own
(with its own port), and so is ``--self``.  Names are looked up a few at a
time, so a list of thousands, or names that do not resolve, cost time in the
resolver's threads and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .constants import MESH_MAX_PEERS
from .units import format_hostport, numeric_address, peer_name

Address = tuple[str, int]
LOOKUPS_AT_ONCE = 8
LOOKUP_WAIT = 2.0
"""Seconds a round of lookups waits for slow names before it goes on without them."""


def peer_key(address: Address) -> str:
    """ADDR:PORT, the peer's name in metrics and status (IPv6 in brackets)."""
    return format_hostport(*address)


@dataclass
class Resolution:
    """One round of lookups: the peers found, this node's own address among them, and a
    line for each name that did not resolve."""

    peers: dict[str, Address] = field(default_factory=dict)
    own: str | None = None
    problems: list[str] = field(default_factory=list)
    dropped: int = 0
    """Peers left out by --sample-peers or MESH_MAX_PEERS."""
    pending: int = 0
    """Names whose first lookup has not ended yet."""


class Resolver:
    """Turns ``--peers`` into the set of addresses to check, again on every resolve().

    Lookups run in LOOKUPS_AT_ONCE daemon threads of the resolver's own, and resolve()
    waits for them at most ``wait`` seconds: a name that is slow to answer (a DNS server
    that does not reply) keeps its last answer until its lookup ends, and never holds
    up the others, an address given as such least of all (it needs no lookup).
    """

    def __init__(self, names: Sequence[Address], port: int, self_address: str | None = None,
                 sample: int = 0, wait: float = LOOKUP_WAIT) -> None:
        self.names = list(dict.fromkeys(names))  # each name once, in the order given
        self.port = port
        self.self_address = (numeric_address(self_address) or self_address) if self_address \
            else None
        self.sample = sample
        self.wait = wait
        self._local: dict[str, bool] = {}
        self._answers: dict[Address, list[str] | str] = {}  # the last answer for each name
        self._asked: set[Address] = set()  # lookups in flight
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._todo: queue.SimpleQueue[Address | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    @property
    def own_key(self) -> str | None:
        """This node's ADDR:PORT when --self gives it."""
        if self.self_address is None:
            return None
        return peer_key((self.self_address, self.port))

    def resolve(self) -> Resolution:
        found = Resolution(own=self.own_key)
        self._look_up()
        with self._lock:
            answers = dict(self._answers)
        self._local.clear()
        for name, port in self.names:
            answer = answers.get((name, port))
            if answer is None:
                found.pending += 1
                continue
            if isinstance(answer, str):
                found.problems.append(f"{format_hostport(name, port)}: {answer}")
                continue
            if isinstance(answer, _Kept):
                found.problems.append(f"{format_hostport(name, port)}: {answer.why}; "
                                      f"checking its last {len(answer)} address(es)")
            for ip in answer:
                key = peer_key((ip, port))
                if port == self.port and (ip == self.self_address or self._is_local(ip)):
                    found.own = found.own or key
                    continue
                found.peers[key] = (ip, port)
        limit = min(self.sample or MESH_MAX_PEERS, MESH_MAX_PEERS)
        if len(found.peers) > limit:
            keep = rendezvous(found.own or socket.gethostname(), found.peers, limit)
            found.dropped = len(found.peers) - len(keep)
            found.peers = {key: found.peers[key] for key in keep}
        return found

    def _look_up(self) -> None:
        """Ask again for every name not being looked up now; wait for the answers, at
        most ``wait`` seconds.  An address is its own answer, at once."""
        with self._lock:
            for name in self.names:
                if name in self._asked:
                    continue
                numeric = numeric_address(name[0])
                if numeric is not None:
                    self._answers[name] = [numeric]
                    continue
                self._asked.add(name)
                self._todo.put(name)
            while len(self._threads) < min(LOOKUPS_AT_ONCE, len(self._asked)):
                thread = threading.Thread(target=self._lookups, name="pytcpecho-lookup",
                                          daemon=True)  # a lookup that hangs ends with us
                thread.start()
                self._threads.append(thread)
            self._answered.wait_for(lambda: not self._asked, self.wait)

    def _lookups(self) -> None:
        while (name := self._todo.get()) is not None:
            answer = _lookup(name)
            with self._answered:
                before = self._answers.get(name)
                if isinstance(answer, _ForNow) and isinstance(before, list):
                    answer = _Kept(before, answer)  # a DNS hiccup forgets no peer
                self._answers[name] = answer
                self._asked.discard(name)
                self._answered.notify_all()

    def close(self) -> None:
        """End the lookup threads (one in a lookup ends with it)."""
        for _ in self._threads:
            self._todo.put(None)

    def _is_local(self, ip: str) -> bool:
        """Whether ``ip`` is one of this host's addresses: only those can be bound to."""
        if ip not in self._local:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((ip, 0))
                self._local[ip] = True
            except OSError:
                self._local[ip] = False
        return self._local[ip]


def rendezvous(me: str, keys: Iterable[str], count: int) -> list[str]:
    """The ``count`` keys this node picks: the lowest hashes of (me, key), so each node
    picks its own stable sample, and a node that joins or leaves moves few picks."""
    def weight(key: str) -> bytes:
        return hashlib.blake2b(f"{me}|{key}".encode(), digest_size=8).digest()
    return sorted(keys, key=weight)[:count]


class _ForNow(str):
    """Why a name did not resolve this time, where it may next time (EAI_AGAIN: the
    DNS server did not answer): the name keeps the addresses it had."""


def _lookup(name_port: Address) -> list[str] | str:
    """Every address ``name`` resolves to (TCP), in a stable order; or why none."""
    name, port = name_port
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            return _ForNow(f"does not resolve for now ({exc.strerror})")
        return f"does not resolve ({exc.strerror})"
    except (UnicodeError, OSError) as exc:
        return f"does not resolve ({exc})"
    ips = dict.fromkeys(peer_name(info[4])[0] for info in infos)
    return sorted(ips, key=_sort_key)


class _Kept(list[str]):
    """A name's last addresses, kept while its lookups fail for now, and why they do."""

    def __init__(self, addresses: list[str], why: str) -> None:
        super().__init__(addresses)
        self.why = why


def _sort_key(ip: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with contextlib.suppress(OSError):
        return family, socket.inet_pton(family, ip.split("%")[0])
    return family, ip.encode()

