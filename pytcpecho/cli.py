"""The ``pytcpecho`` command: serve, client, ping, demo, bench.

This module parses arguments and hands each command to the code that runs it:
a serve process is ``pytcpecho.serving`` (one process) or
``pytcpecho.supervisor`` (``--workers``), which import nothing from here.
Bad input is one line on stderr and exit status 2; a server out of reach is
one line and status 3; an echo that did not come back intact is status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn

from . import config, loadgen, logs, serving, supervisor, switch
from . import core as cores
from ._version import __version__
from .client import EchoClient, EchoError, EchoResult, Progress
from .constants import (
    BENCH_CONNECTIONS,
    BENCH_DURATION,
    BENCH_INTERVAL,
    BENCH_SIZE,
    BENCH_UDP_MAX_LOSS,
    DEFAULT_GRACE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_PORT,
    DEFAULT_SIZE,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKER_IDLE,
    MAX_BYTES,
    MAX_MESSAGE_SIZE,
    MAX_TIMEOUT,
    MESH_BULK_EVERY,
    MESH_BULK_SIZE,
    MESH_CONCURRENCY,
    MESH_INTERVAL,
    MESH_MAX_BULK,
    MESH_MAX_CONCURRENCY,
    MESH_MAX_PEERS,
    MESH_METRICS_PORT,
    MESH_MIN_INTERVAL,
    MESH_RESOLVE_INTERVAL,
    MESH_TIMEOUT,
    MESH_UDP_COUNT,
    MIN_INTERVAL,
    MIN_TIMEOUT,
    MODES,
    PING_SIZE,
    PING_TIMEOUT,
    PING_UDP_INTERVAL,
    UDP_HEADER,
    UDP_MAX_SIZE,
    UDP_RATE,
    WORKERS_PER_CPU,
)
from .contract import ContractError
from .demo import run_demo
from .output import fail as _fail
from .output import finish_run, under_columns
from .output import note as _note
from .output import say as _say
from .server import serving_core
from .sockets import listen_address, resolve_error
from .starttime import parse_start_at
from .status import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_NOT_INTACT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
)
from .units import (
    format_hostport,
    numeric_address,
    parse_hostport,
    parse_int,
    parse_port,
    parse_size,
    plural,
    quote,
    shorten_quoted,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line, not a usage block, from the command it belongs
    to (``pytcpecho serve: error: ...``), with any long value in it shortened; and every
    ``type=int`` option reads its number with parse_int (a 5,000-digit one is too large)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", int, _arg(parse_int, "number"))

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {shorten_quoted(message)} (see --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        """Arguments this parser does not know are its error, in its name: a subcommand's
        parser would otherwise hand them up to ``pytcpecho``'s, and ``pytcpecho --bogus``
        would be reported as a missing command."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(map(quote, extras))}")
        return parsed, extras


def _arg(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = what
    return convert


def _positive_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise ValueError(f"invalid size {quote(text)}: must be at least 1 byte")
    return size


def _size_at_most(limit: int, why: str) -> Callable[[str], int]:
    """A positive size of at most ``limit`` bytes (whole MiB), refused saying ``why``."""
    def size_at_most(text: str) -> int:
        size = _positive_size(text)
        if size > limit:
            raise ValueError(f"invalid size {quote(text)}: at most {limit >> 20} MiB ({why})")
        return size
    return size_at_most


def _seconds(text: str, least: float = MIN_TIMEOUT) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid duration {quote(text)}: give seconds, e.g. 10 or 0.5") \
            from None
    if not value > 0:
        raise ValueError(f"invalid duration {quote(text)}: must be positive")
    if value < least:
        raise ValueError(f"invalid duration {quote(text)}: at least {least:g} seconds")
    if value > MAX_TIMEOUT:
        raise ValueError(f"invalid duration {quote(text)}: at most {MAX_TIMEOUT:g} seconds")
    return value


def _count(text: str) -> int:
    value = parse_int(text, "count")
    if value < 1:
        raise ValueError(f"invalid count {value}: must be at least 1")
    if value > MAX_BYTES:
        raise ValueError(f"invalid count {value}: at most {MAX_BYTES}")
    return value


def _workers(text: str) -> int:
    value = _count(text)
    most, cpus = supervisor.max_workers()
    if value > most:
        raise ValueError(f"invalid count {value}: at most {most} ({WORKERS_PER_CPU} per CPU, "
                         f"{cpus} CPU{plural(cpus)} here)")
    return value


def _network(text: str) -> str:
    """An --allow/--deny rule: kept as typed (the server reads it), checked now."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid network {quote(text)}: give an IPv4 or IPv6 address or "
                         "CIDR, e.g. 10.0.0.0/8 or fd00::/8") from None
    return text


def _runnable_core(name: str) -> str:
    """A client command's --core that can run here (built; splice: on Linux), refused
    while the options are read, before anything connects; an unknown name is left to
    argparse's choices."""
    if name in cores.CORES:
        try:
            cores.load(name)
        except (RuntimeError, ImportError) as exc:  # ImportError: a broken build
            raise ValueError(str(exc)) from None
    return name


SIZE = _arg(_positive_size, "size")
MESSAGE_SIZE = _arg(_size_at_most(MAX_MESSAGE_SIZE, "each connection holds a buffer of "
                                                    "this size"), "size")
WORKERS = _arg(_workers, "count")
NETWORK = _arg(_network, "network")
SECONDS = _arg(_seconds, "seconds")
INTERVAL = _arg(lambda t: _seconds(t, MIN_INTERVAL), "seconds")
MESH_SECONDS = _arg(lambda t: _seconds(t, MESH_MIN_INTERVAL), "seconds")
COUNT = _arg(_count, "count")
CLIENT_CORE = _arg(_runnable_core, "core")
PORT = _arg(lambda t: parse_port(t, allow_zero=True), "port")
TARGET = _arg(parse_hostport, "address")


# -- serve --------------------------------------------------------------------

def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", help="run the echo server",
                       description="Echo every client's bytes back, one thread per client.")
    _server_options(p, mesh=False)
    p.add_argument("--metrics-port", type=PORT, default=None,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    p.set_defaults(run=_serve)
    config.apply_env(p)


def _server_options(p: argparse.ArgumentParser, mesh: bool) -> None:
    """The options of the echo server, for serve and (but the mode) for mesh."""
    p.add_argument("--host", default="",
                   help="address to listen on (default: all, IPv4 and IPv6)")
    p.add_argument("--port", type=PORT, default=DEFAULT_PORT,
                   help=f"TCP port, 0 for any free one (default: {DEFAULT_PORT})")
    if not mesh:
        p.add_argument("--mode", choices=MODES, default="stream",
                       help="stream: echo bytes as they come (RFC 862); message: read --size "
                            "bytes, send them back, repeat (default: stream)")
        p.add_argument("--size", type=MESSAGE_SIZE, default=DEFAULT_SIZE,
                       help=f"message size in message mode, at most "
                            f"{MAX_MESSAGE_SIZE >> 20}MiB: each connection holds a buffer of "
                            f"this size (default: {DEFAULT_SIZE}, e.g. 100KiB, 1MiB)")
    p.add_argument("--core", choices=cores.CORES, default="auto",
                   help="echo loop implementation (default: auto, the Cython one if built)")
    p.add_argument("--max-clients", type=COUNT, default=DEFAULT_MAX_CLIENTS,
                   help="clients served at once; more wait in the backlog "
                        f"(default: {DEFAULT_MAX_CLIENTS})")
    p.add_argument("--idle-timeout", type=SECONDS, default=DEFAULT_IDLE_TIMEOUT,
                   help="close a connection that makes no progress for this many seconds "
                        f"(default: {DEFAULT_IDLE_TIMEOUT:g})")
    p.add_argument("--max-bytes", type=SIZE, default=0,
                   help="close a connection after it sent this many bytes (default: no limit)")
    p.add_argument("--allow", action="append", type=NETWORK, default=[], metavar="CIDR",
                   help="serve only clients in this network, IPv4 or IPv6 (repeatable; "
                        "default: every client)")
    p.add_argument("--deny", action="append", type=NETWORK, default=[], metavar="CIDR",
                   help="refuse clients in this network, at once (repeatable; default: none; "
                        "deny wins over allow)")
    p.add_argument("--grace", type=SECONDS, default=DEFAULT_GRACE,
                   help="on SIGTERM/SIGINT, stop accepting and let connections finish for "
                        "this many seconds, then close them and exit 0; a second signal exits "
                        f"at once (default: {DEFAULT_GRACE:g})")
    p.add_argument("--worker-idle", type=SECONDS, default=DEFAULT_WORKER_IDLE,
                   help="seconds an idle connection thread waits for the next client before "
                        f"it exits (default: {DEFAULT_WORKER_IDLE:g})")
    if not mesh:
        p.add_argument("--workers", type=WORKERS, default=1,
                       help="server processes sharing the port (SO_REUSEPORT), restarted if "
                            f"they die, at most {WORKERS_PER_CPU} per CPU "
                            f"({supervisor.max_workers()[0]} here) (default: 1)")
    p.add_argument("--reuse-port", action="store_true",
                   help="let other processes listen on the same port (SO_REUSEPORT)")
    if mesh:
        p.add_argument("--no-udp", dest="udp", action="store_false",
                       help="no UDP echo, and no datagram probe of the peers (default: both "
                            "on)")
    else:
        p.add_argument("--udp", action="store_true",
                       help="also echo UDP datagrams on the same port (RFC 862), guarded "
                            "against reflection: --allow/--deny apply, loop-prone source "
                            "ports are never answered, --udp-rate, --udp-max-size")
    p.add_argument("--udp-rate", type=_arg(_udp_rate, "rate"), default=UDP_RATE,
                   metavar="PKT_PER_S",
                   help="datagrams a second echoed to one source address at most, 0 for no "
                        f"limit (a benchmark's server) (default: {UDP_RATE})")
    p.add_argument("--udp-max-size", type=_arg(_udp_max_size, "size"), default=UDP_MAX_SIZE,
                   help="largest datagram echoed; larger ones are dropped and counted "
                        f"(default: {UDP_MAX_SIZE})")
    p.add_argument("--log-format", choices=logs.FORMATS, default="text",
                   help="text: plain lines; json: one JSON object per line (default: text)")
    if mesh:
        p.add_argument("--log-connections", action="store_true",
                       help="a line for each connection served, as serve writes (default: "
                            "off: every peer's checks would write them; variable: 1/0, "
                            "true/false, yes/no, on/off)")
    else:
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no per-connection lines (variable: 1/0, true/false, yes/no, "
                            "on/off)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="timestamps and detail (variable: as for --quiet)" if not mesh
                   else "timestamps and detail, each check's scheduling (variable: 1/0, ...)")


def _udp_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid rate {quote(text)}: give datagrams per second, e.g. "
                         "10000, or 0 for no limit") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"invalid rate {quote(text)}: 0 (no limit) or positive")
    return value


def _udp_max_size(text: str) -> int:
    size = _positive_size(text)
    if size > 65535:
        raise ValueError(f"invalid size {quote(text)}: at most 65535 bytes (a UDP datagram's "
                         "limit)")
    return size


def _serve(args: argparse.Namespace) -> int:
    """serve: options from the environment too, and one process or a supervisor of many."""
    options = _serve_options(args)
    companion = None
    if args.metrics_port is not None:
        from . import node  # prometheus_client: imported only where metrics are served
        core = serving_core(args.core, args.mode).NAME
        companion = partial(node.metrics, args.host, args.metrics_port, core, udp=args.udp)
    if args.workers > 1:  # the supervisor serves the metrics, of all its workers
        return supervisor.run(options, args.workers, companion)
    return serving.run(options, companion=companion)


def _serve_options(args: argparse.Namespace) -> serving.ServeOptions:
    """The serve process's options, once the environment's are in and checked."""
    try:
        config.finish(args)
    except config.EnvError as exc:
        raise UsageError(str(exc)) from None
    _check_serve(args)
    return serving.ServeOptions(
        host=args.host, port=args.port, mode=args.mode, size=args.size, core=args.core,
        max_clients=args.max_clients, idle_timeout=args.idle_timeout,
        max_bytes=args.max_bytes, allow=tuple(args.allow), deny=tuple(args.deny),
        grace=args.grace, worker_idle=args.worker_idle, reuse_port=args.reuse_port,
        verbose=args.verbose, quiet=args.quiet, log_format=args.log_format, udp=args.udp,
        udp_rate=args.udp_rate, udp_max_size=args.udp_max_size)


def _check_serve(args: argparse.Namespace) -> None:
    """What a serve process would refuse only once it runs (in each worker of --workers),
    refused before anything starts, naming the option or the variable that gave it: a core
    that cannot serve the mode, a host that is no host name or does not resolve."""
    try:
        serving_core(args.core, args.mode)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"{config.origin(args, 'core', '--core')}: {exc}") from None
    if args.host:
        try:
            listen_address(args.host, args.port)
        except ValueError as exc:  # no host name at all: the message says so
            raise UsageError(f"{config.origin(args, 'host', '--host')}: {exc}") from None
        except OSError as exc:
            raise UsageError(f"{config.origin(args, 'host', '--host')}: "
                             f"{resolve_error(args.host, exc)}") from None


# -- mesh -----------------------------------------------------------------------

def _peer(text: str) -> tuple[str, int | None]:
    """A --peers entry: NAME or NAME:PORT (None: the node's own --port)."""
    host, port = parse_hostport(text, default_port=-1)
    return host, None if port == -1 else port


def _address(text: str) -> str:
    """--self: an IP address, as peers resolve it."""
    plain = numeric_address(text)
    if plain is None:
        raise ValueError(f"invalid address {quote(text)}: give this node's IPv4 or IPv6 "
                         "address, e.g. 10.0.0.5")
    return plain


def _sample(text: str) -> int:
    value = parse_int(text, "count")
    if not 0 <= value <= MESH_MAX_PEERS:
        raise ValueError(f"invalid count {value}: 0 (every peer) to {MESH_MAX_PEERS}")
    return value


def _concurrency(text: str) -> int:
    value = _count(text)
    if value > MESH_MAX_CONCURRENCY:
        raise ValueError(f"invalid count {value}: at most {MESH_MAX_CONCURRENCY}")
    return value


BULK_SIZE = _arg(_size_at_most(MESH_MAX_BULK, "every peer gets one each bulk round"), "size")


def _add_mesh(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "mesh", help="serve echo and check every peer: metrics, status page",
        description="Serve echo (stream mode) and check every peer: a 64-byte ping each "
                    "interval, a byte-verified bulk transfer every --bulk-every; export "
                    "Prometheus metrics at /metrics, this node's view at /status, the whole "
                    "mesh at /mesh and as a page at /.")
    p.add_argument("--peers", action="append", type=_arg(_peer, "address"), default=[],
                   metavar="NAME[:PORT]",
                   help="peers to check (repeatable, or comma-separated in the variable): a "
                        "name with many addresses (a headless Service) means all of them; "
                        "PORT defaults to --port")
    p.add_argument("--self", dest="self_address", type=_arg(_address, "address"),
                   default=None, metavar="ADDR",
                   help="this node's address among the peers' (default: any address this "
                        "host has, with --port)")
    p.add_argument("--name", default=None,
                   help="this node's name on the status page (default: the host name)")
    p.add_argument("--interval", type=MESH_SECONDS, default=MESH_INTERVAL,
                   help=f"seconds between two pings of a peer (default: {MESH_INTERVAL:g})")
    p.add_argument("--bulk-every", type=COUNT, default=MESH_BULK_EVERY, metavar="N",
                   help="a bulk check of each peer every N intervals (default: "
                        f"{MESH_BULK_EVERY})")
    p.add_argument("--bulk-size", type=BULK_SIZE, default=MESH_BULK_SIZE,
                   help=f"bytes each bulk check streams and verifies (default: "
                        f"{MESH_BULK_SIZE >> 20}MiB)")
    p.add_argument("--timeout", type=SECONDS, default=MESH_TIMEOUT,
                   help=f"seconds a check may take, in all (default: {MESH_TIMEOUT:g})")
    p.add_argument("--resolve-interval", type=MESH_SECONDS, default=MESH_RESOLVE_INTERVAL,
                   help="seconds between two lookups of the peer names (default: "
                        f"{MESH_RESOLVE_INTERVAL:g})")
    p.add_argument("--concurrency", type=_arg(_concurrency, "count"),
                   default=MESH_CONCURRENCY,
                   help=f"checks in flight at most (default: {MESH_CONCURRENCY})")
    p.add_argument("--sample-peers", type=_arg(_sample, "count"), default=0, metavar="K",
                   help="check only K peers, a stable sample of each node's own (default: "
                        "0, every peer; see the README's scale section)")
    p.add_argument("--udp-count", type=COUNT, default=MESH_UDP_COUNT, metavar="N",
                   help="datagrams in each peer's UDP probe, every interval: loss, RTT, "
                        f"jitter and hops (default: {MESH_UDP_COUNT}; --no-udp: none)")
    p.add_argument("--peer-label", choices=("dns", "none"), default="dns",
                   help="dns: name peers by reverse DNS (pytcpecho_peer_info, the page); "
                        "none: addresses only (default: dns)")
    p.add_argument("--metrics-port", type=PORT, default=MESH_METRICS_PORT,
                   help="HTTP port for /metrics, /status, /mesh and the page; the same on "
                        f"every node (default: {MESH_METRICS_PORT})")
    _server_options(p, mesh=True)
    p.set_defaults(run=_mesh, mode="stream", size=DEFAULT_SIZE, quiet=False)
    config.apply_env(p)


def _mesh(args: argparse.Namespace) -> int:
    serve = _serve_options(args)
    serve = dataclasses.replace(serve, quiet=not args.log_connections)
    if not args.peers:
        raise UsageError("give the peers to check: --peers NAME[:PORT] (or PYTCPECHO_PEERS)")
    if args.metrics_port == args.port and args.port != 0:
        raise UsageError(f"--metrics-port {args.metrics_port} is the echo --port too: "
                         "give them different ports")
    from .mesh import MeshOptions  # the mesh's modules: loaded by this command only
    peers = tuple((host, args.port if port is None else port) for host, port in args.peers)
    options = MeshOptions(
        peers=peers, port=args.port, name=args.name or socket.gethostname(),
        self_address=args.self_address, interval=args.interval, bulk_every=args.bulk_every,
        bulk_size=args.bulk_size, timeout=args.timeout,
        resolve_interval=args.resolve_interval, concurrency=args.concurrency,
        sample=args.sample_peers, peer_label=args.peer_label, udp=args.udp,
        udp_count=args.udp_count)
    core = serving_core(args.core, "stream")
    from . import node  # prometheus_client: imported only where metrics are served
    return serving.run(serve, companion=lambda stats: node.mesh(
        args.host, args.metrics_port, options, core, stats))


# -- client and ping ------------------------------------------------------------

def _client_options(p: argparse.ArgumentParser, size: int, timeout: float) -> None:
    p.add_argument("target", type=TARGET, metavar="HOST[:PORT]",
                   help=f"server to reach ([IPv6]:PORT for IPv6; default port {DEFAULT_PORT})")
    p.add_argument("--size", type=SIZE, default=size,
                   help=f"bytes per message (default: {size}; e.g. 100KiB, 1GiB)")
    p.add_argument("--timeout", type=SECONDS, default=timeout,
                   help=f"seconds to wait for the connection and for data (default: {timeout:g})")
    p.add_argument("--core", type=CLIENT_CORE, choices=cores.CORES, default="auto",
                   help="client loop implementation")


def _add_client(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("client", help="send a payload and verify its echo",
                       description="Send --size bytes, read the echo, check every byte. "
                                   "Exit 0 intact, 1 not intact, 3 unreachable.")
    _client_options(p, DEFAULT_SIZE, DEFAULT_TIMEOUT)
    p.add_argument("--count", type=COUNT, default=1,
                   help="messages to exchange on the connection (default: 1)")
    p.add_argument("--mode", choices=MODES, default="message",
                   help="message: each message is a timed round trip; stream: send everything "
                        "as one stream while reading the echo (default: message)")
    p.add_argument("--seed", type=int, default=None, help="payload seed (default: random)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the result as one JSON document instead of the lines")
    output.add_argument("--interval", "-i", type=INTERVAL, default=None,
                        help="print progress every S seconds while the echo comes back")
    p.set_defaults(run=_client)


def _report(prog: str, result: EchoResult, say: Callable[[str], None]) -> int:
    say(f"Sent {result.sent} bytes")
    say(f"Received {result.received} bytes")
    if not result.intact:
        return _fail(prog, result.problem or "echo not intact", EXIT_NOT_INTACT)
    lat = result.latency
    if result.mode == "message" and result.count > 1:
        say(f"Round trips min/avg/p99/max = {lat.min:.3f}/{lat.mean:.3f}/{lat.p99:.3f}/"
            f"{lat.max:.3f} ms, {result.mib_per_s:.1f} MiB/s")
    else:
        say(f"Echo intact in {result.elapsed * 1000:.3f} ms, {result.mib_per_s:.1f} MiB/s")
    say("Client finished.")
    return EXIT_OK


def _client(args: argparse.Namespace) -> int:
    host, port = args.target
    try:
        client = EchoClient(host, port, size=args.size, count=args.count, mode=args.mode,
                            timeout=args.timeout, seed=args.seed, core=args.core)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if not args.json:
        _say(f"Connecting to {client.target}")
    def progress(p: Progress) -> None:
        with contextlib.suppress(BrokenPipeError):  # the main thread's next line says it
            _say(f"{p.elapsed:7.1f} s  {p.received} of {p.expected} bytes back intact, "
                 f"{p.mib_per_s:.1f} MiB/s")

    try:
        result = client.run(progress if args.interval else None, args.interval or 1.0)
    except EchoError as exc:
        return _fail(args.prog, str(exc), EXIT_UNREACHABLE)
    if args.json:
        _say(json.dumps(result.as_dict(), indent=2))
        return EXIT_OK if result.intact else EXIT_NOT_INTACT
    return _report(args.prog, result, _say)


def _add_ping(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ping", help="health check: echo a few bytes, exit 0 if intact",
                       description="Open a connection, echo --size bytes, check them. "
                                   "Exit 0 when every echo came back intact.")
    _client_options(p, PING_SIZE, PING_TIMEOUT)
    p.add_argument("--count", "-c", type=COUNT, default=1,
                   help="pings, one connection each (default: 1)")
    p.add_argument("--interval", "-i", type=SECONDS, default=None,
                   help="seconds between pings (default: none, one right after another; "
                        f"--udp: {PING_UDP_INTERVAL:g})")
    p.add_argument("--udp", action="store_true",
                   help="datagrams instead (RFC 862 over UDP): loss, RTT percentiles, "
                        "jitter, reordering, duplicates, corruption and hop count; --size "
                        f"{UDP_HEADER} to {UDP_MAX_SIZE}; exit 0 when every echo came back "
                        "intact, 1 on loss or corruption, 3 when none came back")
    p.add_argument("--json", action="store_true",
                   help="with --udp: one JSON document at the end instead of the lines")
    p.set_defaults(run=_ping)


def _ping(args: argparse.Namespace) -> int:
    """Ping after ping; stopped by Ctrl-C, the summary of those done so far (as iputils
    ping prints its statistics), then exit 130."""
    if args.udp:
        from . import udpcli  # the datagram client: loaded by the commands that use it
        return udpcli.ping(args)
    if args.json:
        raise UsageError("--json goes with --udp (a TCP ping prints its lines)")
    host, port = args.target
    times: list[float] = []
    try:
        for i in range(args.count):
            if i and args.interval:
                time.sleep(args.interval)  # pacing, as ping -i does
            status = _ping_once(args, times)
            if status != EXIT_OK:
                return status
    except KeyboardInterrupt:
        if times:
            _say(_ping_summary(format_hostport(host, port), times,
                               f" (interrupted, {len(times)} of {args.count})"))
        return EXIT_INTERRUPTED
    if len(times) > 1:
        _say(_ping_summary(format_hostport(host, port), times))
    return EXIT_OK


def _ping_once(args: argparse.Namespace, times: list[float]) -> int:
    """One ping: its line, its time added to ``times``; the exit status so far."""
    host, port = args.target
    try:
        client = EchoClient(host, port, size=args.size, timeout=args.timeout, core=args.core)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    try:
        result = client.run()
    except EchoError as exc:
        return _fail(args.prog, str(exc), EXIT_UNREACHABLE)
    if not result.intact:
        return _fail(args.prog, result.problem or "echo not intact", EXIT_NOT_INTACT)
    times.append(result.elapsed * 1000)
    _say(f"{result.received} bytes from {format_hostport(*result.peer)}: "
         f"intact, time={times[-1]:.3f} ms")
    return EXIT_OK


def _ping_summary(target: str, times: list[float], note: str = "") -> str:
    return (f"{len(times)} ping{plural(len(times))} to {target}{note}, all intact: "
            f"time min/avg/max = {min(times):.3f}/{sum(times) / len(times):.3f}/"
            f"{max(times):.3f} ms")


# -- demo -----------------------------------------------------------------------

def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("demo", help="replay the original exercise on this machine",
                       description="Start a server on a free port, connect two clients at "
                                   "once, then one more, each echoing 100 KiB.")
    p.add_argument("--core", choices=cores.CORES, default="auto", help="core to demonstrate")
    p.add_argument("--mode", choices=MODES, default="message", help="server mode")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    try:
        serving_core(args.core, args.mode)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"argument --core: {exc}") from None
    return EXIT_OK if run_demo(core=args.core, mode=args.mode) else EXIT_NOT_INTACT


# -- bench ----------------------------------------------------------------------

def _add_bench(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("bench", help="load generator: msg/s, MiB/s, latency percentiles",
                       description="Drive an echo server from many connections, verify every "
                                   "byte, report per interval and in total. Exit 0 when all "
                                   "came back intact, 1 on any failure, 3 if none connected.")
    _client_options(p, BENCH_SIZE, DEFAULT_TIMEOUT)
    p.add_argument("--connections", "-c", type=COUNT, default=BENCH_CONNECTIONS,
                   help=f"connections (default: {BENCH_CONNECTIONS})")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="threads driving the connections, each many from one epoll set "
                        "(default: one per core; --connect-each: one per connection)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--duration", "-t", type=SECONDS, default=None,
                     help=f"seconds to run (default: {BENCH_DURATION:g})")
    how.add_argument("--count", "-n", type=COUNT, default=None,
                     help="messages in all, spread over the connections")
    p.add_argument("--mode", choices=MODES, default="message",
                   help="message: round trips of --size; stream: continuous transfer")
    p.add_argument("--interval", "-i", type=INTERVAL, default=BENCH_INTERVAL,
                   help=f"seconds between report lines (default: {BENCH_INTERVAL:g})")
    p.add_argument("--rate", type=_arg(_rate, "rate"), default=None, metavar="MSG_PER_S",
                   help="open loop at this many messages/s in all (default: closed loop)")
    p.add_argument("--connect-each", action="store_true",
                   help="a new connection for every message (the original exercise's pattern)")
    p.add_argument("--seed", type=int, default=None, help="payload seed (default: random)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document at the end: the figures, the whole latency "
                        "histogram and when it ran, for pytcpecho merge")
    p.add_argument("--start-at", type=_arg(parse_start_at, "time"), default=None,
                   metavar="TIME",
                   help="connect, then start the load at this moment: Unix time or ISO 8601 "
                        "in UTC (e.g. 2026-11-29T08:30:00Z), so the pods of one Job start "
                        "together (default: at once)")
    p.add_argument("--metrics-port", type=PORT, default=None,
                   help="serve the run's counters and latency histogram as Prometheus metrics "
                        "at http://*:PORT/metrics while it runs (default: off)")
    p.add_argument("--udp", action="store_true",
                   help="datagrams instead (RFC 862 over UDP): -c sockets, one thread each; "
                        "--rate in datagrams/s in all (default: search for the highest rate "
                        "with loss under --max-loss, then measure it); loss, latency "
                        "percentiles, jitter; exit 1 on corruption or loss over --max-loss")
    p.add_argument("--rr", action="store_true",
                   help="with --udp: request/response, one datagram in flight per socket")
    p.add_argument("--max-loss", type=_arg(_percent, "percent"), default=BENCH_UDP_MAX_LOSS,
                   metavar="PERCENT",
                   help="with --udp: the loss the rate search accepts, and a run may have "
                        f"(default: {BENCH_UDP_MAX_LOSS * 100:g}, in percent)")
    p.set_defaults(run=_bench)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid rate {quote(text)}: give messages per second, "
                         "e.g. 1000") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"invalid rate {quote(text)}: must be positive")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise ValueError(f"invalid percentage {quote(text)}: e.g. 0.1 or 0.1%") from None
    if not 0 <= value < 100:
        raise ValueError(f"invalid percentage {quote(text)}: from 0 up to 100")
    return value / 100


def _bench(args: argparse.Namespace) -> int:
    if args.udp:
        if args.metrics_port is not None:
            raise UsageError("--metrics-port serves a TCP bench's counters; --udp has none yet")
        from . import udpcli  # the datagram load: loaded by the commands that use it
        return udpcli.bench(args)
    for option, given in (("--rr", args.rr),
                          ("--max-loss", args.max_loss != BENCH_UDP_MAX_LOSS)):
        if given:
            raise UsageError(f"{option} goes with --udp")
    host, port = args.target
    bench = loadgen.BenchConfig(
        host, port, size=args.size, connections=args.connections,
        duration=None if args.count else (args.duration or BENCH_DURATION), count=args.count,
        mode=args.mode, rate=args.rate, connect_each=args.connect_each, core=args.core,
        timeout=args.timeout, interval=args.interval, seed=args.seed, threads=args.threads,
        start_at=args.start_at)
    try:
        gen = loadgen.LoadGenerator(bench)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if not args.json:
        _say(loadgen.header(bench, gen.core.NAME))
    on_interval = None if args.json else under_columns(loadgen.COLUMNS, loadgen.interval_line)
    with contextlib.ExitStack() as beside:
        if args.metrics_port is not None:
            beside.enter_context(_bench_metrics(gen, args))
        return finish_run(args.prog, args.json,
                          lambda: gen.run(on_interval, _note if args.json else _say),
                          loadgen.summary_lines)


def _bench_metrics(gen: loadgen.LoadGenerator,
                   args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    from . import benchmetrics  # prometheus_client: loaded where metrics are served

    def live() -> benchmetrics.Live:
        messages, received, errors, histogram = gen.live()
        return benchmetrics.Live(messages, received, errors, histogram)

    c = gen.config
    collector = benchmetrics.BenchCollector(live, format_hostport(c.host, c.port), c.size,
                                            "connect-each" if c.connect_each else c.mode)
    return benchmetrics.serve("", args.metrics_port, collector)


# -- merge ----------------------------------------------------------------------

def _add_merge(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("merge", help="add up bench --json results of many machines",
                       description="Add up the results of bench --json runs (one document per "
                                   "file, or per line; - for standard input): counts and bytes "
                                   "summed, latency histograms merged bucket by bucket, "
                                   "percentiles from the merged histogram, the combined rate "
                                   "over the window all ran in. Exit 0, 1 when a run was not "
                                   "intact, 2 for inputs that cannot be merged.")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="bench --json results (- : standard input)")
    p.add_argument("--json", action="store_true",
                   help="print the merged result as one JSON document, as bench --json does")
    p.set_defaults(run=_merge)


def _merge(args: argparse.Namespace) -> int:
    from . import merge  # loaded by the command that uses it
    return merge.main(args)


# -- main -----------------------------------------------------------------------

COMMANDS = (_add_serve, _add_mesh, _add_client, _add_ping, _add_demo, _add_bench, _add_merge)


def build_parser() -> _Parser:
    parser = _Parser(prog="pytcpecho",
                     description="TCP and UDP echo server and verifying client with a GIL-free "
                                 "Cython core.")
    parser.add_argument("--version", action="version",
                        version=f"pytcpecho {__version__} (core: {cores.load('auto').NAME})")
    # Not required=True: argparse would report `pytcpecho --bogus` as a missing command
    # before the option it does not know; main() asks for the command instead.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices]


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit status; Ctrl-C and a closed stdout end it quietly wherever they
    come, in a command or in its --help."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout went away (| head): stop quietly, as cat does
        logs.silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    try:  # before anything else: a bad switch or a broken build must not pick a core silently
        cores.load("auto")
    except (switch.SwitchError, ContractError) as exc:
        return _fail("pytcpecho", str(exc), EXIT_USAGE)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"a command is required: {', '.join(_command_names(parser))}")
    args.prog = f"pytcpecho {args.command}"
    try:
        status: int = args.run(args)
    except UsageError as exc:
        return _fail(args.prog, str(exc), EXIT_USAGE)
    return status


if __name__ == "__main__":
    sys.exit(main())
