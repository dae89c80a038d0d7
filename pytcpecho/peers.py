"""Who the mesh checks: peer names resolved to addresses, this node left out.

A name that resolves to many addresses (a Kubernetes headless Service, or one
name on several lines of a hosts file) stands for all of them; it is resolved
again every resolve interval, so nodes that come and go are picked up and
dropped.  The node leaves itself out: an address it can bind to is its own
(with its own port), and so is ``--self``.  Names are looked up a few at a
time, so a list of thousands, or names that do not resolve, cost time in the
resolver's thread and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .constants import MESH_MAX_PEERS
from .units import format_hostport, peer_name

Address = tuple[str, int]
LOOKUPS_AT_ONCE = 8


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


class Resolver:
    """Turns ``--peers`` into the set of addresses to check, again on every resolve()."""

    def __init__(self, names: Sequence[Address], port: int, self_address: str | None = None,
                 sample: int = 0) -> None:
        self.names = list(dict.fromkeys(names))  # each name once, in the order given
        self.port = port
        self.self_address = _plain(self_address) if self_address else None
        self.sample = sample
        self._local: dict[str, bool] = {}

    @property
    def own_key(self) -> str | None:
        """This node's ADDR:PORT when --self gives it."""
        if self.self_address is None:
            return None
        return peer_key((self.self_address, self.port))

    def resolve(self) -> Resolution:
        found = Resolution(own=self.own_key)
        workers = min(LOOKUPS_AT_ONCE, max(1, len(self.names)))
        with ThreadPoolExecutor(workers, thread_name_prefix="pytcpecho-resolve") as pool:
            answers = list(pool.map(_lookup, self.names))
        self._local.clear()
        for (name, port), answer in zip(self.names, answers, strict=True):
            if isinstance(answer, str):
                found.problems.append(f"{format_hostport(name, port)}: {answer}")
                continue
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


def _lookup(name_port: Address) -> list[str] | str:
    """Every address ``name`` resolves to (TCP), in a stable order; or why none."""
    name, port = name_port
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"does not resolve ({exc.strerror})"
    except (UnicodeError, OSError) as exc:
        return f"does not resolve ({exc})"
    ips = dict.fromkeys(peer_name(info[4])[0] for info in infos)
    return sorted(ips, key=_sort_key)


def _sort_key(ip: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with contextlib.suppress(OSError):
        return family, socket.inet_pton(family, ip.split("%")[0])
    return family, ip.encode()


def _plain(address: str) -> str:
    """An address as resolution gives it: no brackets, IPv4-mapped as IPv4."""
    address = address.strip()
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    return peer_name((address, 0))[0]
