"""The mesh: this node checks every peer, keeps what it found, and says what it means.

Three kinds of thread share one table of peers under one lock:

- the resolver looks the peer names up every ``resolve_interval``, adds the
  peers that appeared and removes those that went (with everything known about
  them: their metrics go too);
- the scheduler keeps each peer's next due time in a heap: each peer starts at a
  random point of the first interval and keeps that phase, a little jittered,
  so the checks of N nodes spread over the interval instead of firing at once;
  a peer whose last check is still running skips a round rather than pile up;
- ``concurrency`` check threads take the due peers from a queue and run the
  checks (a ping each interval, then, with ``udp``, a UDP probe of ``udp_count``
  datagrams when the ping came back, and a bulk check every ``bulk_every``, in a
  round drawn at random for each peer, so the bulk transfers of a mesh that starts
  at once spread over that many intervals too), each bounded by ``timeout``: a
  dead peer holds one thread for one timeout, never the others.

Each peer's state is read from its last checks: intact, down (the ping failed),
corrupt (an echo differed), mtu (pings intact while nothing of a bulk transfer
comes back, the small round trip it starts with excepted: a suspected path-MTU
blackhole), degraded (bulk failed otherwise: a stall after some data came back
is loss, not MTU), lossy (TCP intact, but UDP datagrams lost: loss that TCP hides
as slowness) or unknown.  A peer that refuses the datagrams (no UDP echo there:
``mesh --no-udp``) is not lossy: its UDP check says ``refused``, the page "no UDP".
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import checks
from ._version import __version__
from .checks import CHECKS, PROBE_SIZE, UDP_SPREAD, Outcome
from .constants import (
    MESH_BULK_EVERY,
    MESH_BULK_SIZE,
    MESH_CONCURRENCY,
    MESH_INTERVAL,
    MESH_RESOLVE_INTERVAL,
    MESH_TIMEOUT,
    MESH_UDP_COUNT,
)
from .contract import Core
from .peers import LOOKUP_WAIT, Address, Resolution, Resolver

log = logging.getLogger("pytcpecho.mesh")

STATES = ("unknown", "intact", "mtu", "corrupt", "down", "degraded", "lossy")
"""What a peer's last checks say.  ``diagnose`` ranks them: corrupt, then down, mtu,
degraded, lossy (the least of the faults: every TCP check intact), intact; unknown
before the first ping."""
RTT_BUCKETS = checks.RTT_BUCKETS
"""Upper bounds, in seconds, of the ping and UDP round-trip histograms (Prometheus
buckets)."""
LOSSY = frozenset({"lossy", "lost", "unreachable"})
"""The UDP probe's results that make a peer whose TCP checks are intact lossy."""
LATE_SPREAD = 1.0
"""Seconds over which peers that appear after the first lookup get their first check:
a node that joins is checked at once (the first lookup's peers spread over an interval)."""
JITTER = 0.05
"""Each round's due time moves by up to this fraction of the interval, either way."""
STOP_WAIT = 1.0
"""Seconds stop() waits for its threads in all: a check still in flight is left to end
by its timeout in a daemon thread; its result goes nowhere."""


@dataclass(frozen=True)
class MeshOptions:
    """What the checking side of ``pytcpecho mesh`` needs."""

    peers: tuple[Address, ...]
    port: int
    name: str
    self_address: str | None = None
    interval: float = MESH_INTERVAL
    bulk_every: int = MESH_BULK_EVERY
    bulk_size: int = MESH_BULK_SIZE
    timeout: float = MESH_TIMEOUT
    resolve_interval: float = MESH_RESOLVE_INTERVAL
    concurrency: int = MESH_CONCURRENCY
    sample: int = 0
    peer_label: str = "dns"
    udp: bool = True
    udp_count: int = MESH_UDP_COUNT


@dataclass
class CheckState:
    """The last outcome of one check of one peer, since when its result holds, and how
    many times each result came."""

    last: Outcome | None = None
    since: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, outcome: Outcome) -> None:
        if self.last is None or self.last.result != outcome.result:
            self.since = outcome.at
        self.last = outcome
        self.counts[outcome.result] = self.counts.get(outcome.result, 0) + 1

    def as_dict(self) -> dict[str, Any] | None:
        if self.last is None:
            return None
        return {**self.last.as_dict(), "since": round(self.since, 3)}


@dataclass
class PeerState:
    """All this node knows about one peer."""

    key: str
    address: Address
    added: float
    name: str | None = None
    checks: dict[str, CheckState] = field(
        default_factory=lambda: {check: CheckState() for check in CHECKS})
    rtt_counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    rtt_sum: float = 0.0
    udp_rtt_counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    udp_rtt_sum: float = 0.0
    hops: int | None = None
    """From the TTL of the last UDP echo that came (kept while none comes)."""
    state: str = "unknown"
    problem: str | None = None
    state_since: float = 0.0
    rounds: int = 0
    bulk_phase: int = 0
    """The round, modulo bulk_every, of this peer's bulk checks."""
    busy: bool = False
    generation: int = 0

    def observe_rtt(self, seconds: float) -> None:
        i = next((i for i, bound in enumerate(RTT_BUCKETS) if seconds <= bound),
                 len(RTT_BUCKETS))
        self.rtt_counts[i] += 1
        self.rtt_sum += seconds

    def observe_udp(self, counts: tuple[int, ...], seconds: float) -> None:
        self.udp_rtt_counts = [a + b for a, b in zip(self.udp_rtt_counts, counts, strict=True)]
        self.udp_rtt_sum += seconds

    def as_dict(self) -> dict[str, Any]:
        ping, bulk = self.checks["ping"].last, self.checks["bulk"].last
        last = self.checks["udp"].last
        udp = last.probe.as_dict() if last is not None and last.probe is not None else {}
        return {
            "name": self.name or None,
            "state": self.state,
            "problem": self.problem,
            "since": round(self.state_since, 3),
            "rtt_ms": round(ping.seconds * 1000, 3) if ping and ping.intact else None,
            "bulk_bytes_per_second": round(bulk.bytes_per_second) if bulk and bulk.intact
            else None,
            "udp": last.result if last is not None else None,
            "udp_loss": udp.get("loss"),
            "udp_rtt_p50_ms": udp.get("rtt_p50_ms"),
            "udp_rtt_p99_ms": udp.get("rtt_p99_ms"),
            "udp_jitter_ms": udp.get("jitter_ms"),
            "hops": self.hops,
            "checks": {check: state.as_dict() for check, state in self.checks.items()},
        }


def diagnose(ping: Outcome | None, bulk: Outcome | None, ping_since: float = 0.0,
             udp: Outcome | None = None) -> tuple[str, str | None]:
    """A peer's state and its problem in words (what the state word does not say), from
    its last ping, bulk check and UDP probe.  A bulk check or probe older than
    ``ping_since`` (when the pings' present result began) is from before the peer came
    back, and not read.  A probe the peer refused (no UDP echo there) is no fault."""
    if ping is None:
        return "unknown", None
    if bulk is not None and bulk.at < ping_since:
        bulk = None
    if udp is not None and udp.at < ping_since:
        udp = None
    for outcome in (ping, bulk):
        if outcome is not None and outcome.result == "mismatch":
            return "corrupt", f"{outcome.check} check: {outcome.detail}"
    if not ping.intact:
        return "down", f"ping {ping.result}: {ping.detail}"
    if bulk is not None and not bulk.intact:
        if bulk.result == "timeout" or (bulk.result == "stalled"
                                        and bulk.received <= PROBE_SIZE):
            return "mtu", (f"suspected path-MTU blackhole: pings intact, but no large packet "
                           f"came back in the bulk check ({bulk.detail})")
        return "degraded", f"bulk check {bulk.result}: {bulk.detail}"
    if udp is not None and udp.result in LOSSY:
        return "lossy", f"UDP probe {udp.result}: {udp.detail}"
    return "intact", None


class Mesh:
    """This node's checks of its peers: start(), then read snapshot() or status();
    stop() ends every thread it started."""

    def __init__(self, options: MeshOptions, core: Core,
                 resolver: Resolver | None = None) -> None:
        self.options = options
        self.core = core
        self.resolver = resolver or Resolver(options.peers, options.port,
                                             options.self_address, options.sample)
        self.own_key: str | None = self.resolver.own_key
        self.started = time.time()
        self.unresolved: list[str] = []
        self._peers: dict[str, PeerState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)  # the heap has a new first entry
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._jobs: queue.Queue[tuple[PeerState, int] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._generations = itertools.count(1)
        self._resolved = threading.Event()
        self._last_problems: frozenset[str] = frozenset()
        self._warned_cap = False
        self._random = random.Random()

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("pytcpecho-resolve", self._resolve_loop), ("pytcpecho-schedule", self._schedule)]
        targets += [("pytcpecho-check", self._check_loop)] * self.options.concurrency
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.resolver.close()
        with self._changed:
            self._changed.notify_all()
        for _ in range(self.options.concurrency):
            self._jobs.put(None)
        deadline = time.monotonic() + STOP_WAIT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_resolved(self, timeout: float) -> bool:
        """Whether the first round of lookups has finished within ``timeout``."""
        return self._resolved.wait(timeout)

    # -- reading ----------------------------------------------------------------

    def snapshot(self) -> list[PeerState]:
        """A copy of every peer's state, in key order (safe to read without the lock)."""
        with self._lock:
            peers = [_copy(p) for p in self._peers.values()]
        return sorted(peers, key=lambda p: p.key)

    def status(self) -> dict[str, Any]:
        """This node's view of every peer, for /status."""
        peers = self.snapshot()
        return {
            "node": {"name": self.options.name, "address": self.own_key,
                     "version": __version__, "core": self.core.NAME,
                     "started": round(self.started, 3)},
            "time": round(time.time(), 3),
            "interval_s": self.options.interval,
            "bulk_every": self.options.bulk_every,
            "bulk_size": self.options.bulk_size,
            "udp_count": self.options.udp_count if self.options.udp else 0,
            "unresolved": list(self.unresolved),
            "peers": {p.key: p.as_dict() for p in peers},
        }

    # -- resolving --------------------------------------------------------------

    def _resolve_loop(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.resolver.resolve()
                self._apply(found)
                if self.options.peer_label == "dns":
                    self._label()
            except Exception:  # never die of a name: log it, try again next round
                log.exception("Resolving the peers failed")
            self._resolved.set()
            self._stop.wait(self.options.resolve_interval)

    def _apply(self, found: Resolution) -> None:
        """Take the peers ``found``: new ones scheduled, gone ones forgotten."""
        now = time.time()
        problems = frozenset(found.problems)
        if problems != self._last_problems:  # once per change, not every round
            for line in sorted(problems - self._last_problems)[:5]:
                log.warning("Peer %s", line)
            if len(problems - self._last_problems) > 5:
                log.warning("... and %d more peer names that do not resolve",
                            len(problems - self._last_problems) - 5)
            self._last_problems = problems
        if found.dropped and not self.options.sample and not self._warned_cap:
            self._warned_cap = True
            log.warning("%d peers: checking %d of them, a stable sample (at most %d; "
                        "--sample-peers chooses fewer)", len(found.peers) + found.dropped,
                        len(found.peers), len(found.peers))
        if found.pending:
            log.debug("%d peer names still being looked up", found.pending)
        with self._changed:
            self.unresolved = sorted(problems)
            if found.own is not None:
                self.own_key = found.own
            gone = [key for key in self._peers if key not in found.peers]
            for key in gone:
                del self._peers[key]
            added = [key for key in found.peers if key not in self._peers]
            spread = min(self.options.interval, LATE_SPREAD) if self._resolved.is_set() \
                else self.options.interval
            for key in added:
                peer = PeerState(key, found.peers[key], now, state_since=now,
                                 bulk_phase=self._random.randrange(self.options.bulk_every),
                                 generation=next(self._generations))
                self._peers[key] = peer
                first = time.monotonic() + self._random.uniform(0, spread)
                heapq.heappush(self._heap, (first, next(self._seq), key, peer.generation))
            if added:
                self._changed.notify_all()
        for key in gone:
            log.info("Peer %s left: no longer among the peers' addresses", key)
        if added:
            log.info("Checking %d new peer%s: %s", len(added), "" if len(added) == 1 else "s",
                     ", ".join(added[:5]) + (", ..." if len(added) > 5 else ""))

    def _label(self) -> None:
        """Readable names for new peers, from reverse DNS (or the hosts file), for at most
        LOOKUP_WAIT seconds a round: a slow DNS server delays no lookup of the peers."""
        with self._lock:
            todo = [(p.key, p.address[0]) for p in self._peers.values() if p.name is None]
        until = time.monotonic() + LOOKUP_WAIT
        for key, ip in todo:
            if self._stop.is_set() or time.monotonic() > until:
                return  # the rest next round
            try:
                name = socket.gethostbyaddr(ip)[0]
            except (OSError, UnicodeError):
                name = ""
            with self._lock:
                if key in self._peers:
                    self._peers[key].name = name

    # -- scheduling and checking ------------------------------------------------

    def _schedule(self) -> None:
        """Hand each peer to a check thread when it is due."""
        interval = self.options.interval
        with self._changed:
            while not self._stop.is_set():
                if not self._heap:
                    self._changed.wait()
                    continue
                due, _, key, generation = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._heap)
                peer = self._peers.get(key)
                if peer is None or peer.generation != generation:
                    continue  # gone (or gone and back, under a new generation)
                step = interval * (1 + self._random.uniform(-JITTER, JITTER))
                # Behind by a whole interval (a stopped process, a suspended VM): no bursts.
                nxt = max(due + step, time.monotonic() + step * JITTER)
                heapq.heappush(self._heap, (nxt, next(self._seq), key, generation))
                if peer.busy:
                    log.debug("Peer %s: last round's check still running, skipping", key)
                    continue
                peer.busy = True
                self._jobs.put((peer, peer.rounds))
                peer.rounds += 1

    def _check_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            peer, round_ = job
            try:
                self._check(peer, round_)
            except Exception:  # a bug, not the peer's doing: say so, keep checking
                log.exception("Checking peer %s failed", peer.key)
            finally:
                with self._lock:
                    peer.busy = False

    def _check(self, peer: PeerState, round_: int) -> None:
        options = self.options
        ping = checks.ping(self.core, peer.address, options.timeout)
        self._record(peer, ping)
        # The probe only when the ping came back: a peer down is down, and its probe would
        # hold this thread for a timeout to say so again.  Before the bulk check, so the
        # bulk stream's own queueing never counts as the path's loss or jitter.
        if options.udp and ping.intact and not self._stop.is_set():
            spread = min(options.interval / 4, UDP_SPREAD)
            self._record(peer, checks.udp(self.core, peer.address, options.udp_count,
                                          options.timeout, spread))
        if round_ % options.bulk_every == peer.bulk_phase and not self._stop.is_set():
            self._record(peer, checks.bulk(self.core, peer.address, options.bulk_size,
                                           options.timeout))

    def _record(self, peer: PeerState, outcome: Outcome) -> None:
        with self._lock:
            if self._peers.get(peer.key) is not peer:
                return  # removed while it was checked: forget the result too
            peer.checks[outcome.check].record(outcome)
            if outcome.check == "ping" and outcome.intact:
                peer.observe_rtt(outcome.seconds)
            if outcome.probe is not None:
                peer.observe_udp(outcome.probe.rtt_counts, outcome.probe.rtt_sum)
                if outcome.probe.result.hops is not None:
                    peer.hops = outcome.probe.result.hops
            ping = peer.checks["ping"]
            state, problem = diagnose(ping.last, peer.checks["bulk"].last, ping.since,
                                      peer.checks["udp"].last)
            before = peer.state
            peer.problem = problem
            if state != before:
                peer.state, peer.state_since = state, outcome.at
        if state != before:
            level = logging.INFO if state == "intact" else logging.WARNING
            name = f" ({peer.name})" if peer.name else ""
            log.log(level, "Peer %s%s: %s -> %s%s", peer.key, name, before, state,
                    f": {problem}" if problem else "")


def _copy(peer: PeerState) -> PeerState:
    return PeerState(
        peer.key, peer.address, peer.added, peer.name,
        {check: CheckState(s.last, s.since, dict(s.counts)) for check, s in peer.checks.items()},
        list(peer.rtt_counts), peer.rtt_sum, list(peer.udp_rtt_counts), peer.udp_rtt_sum,
        peer.hops, peer.state, peer.problem, peer.state_since, peer.rounds, peer.bulk_phase,
        peer.busy, peer.generation)
