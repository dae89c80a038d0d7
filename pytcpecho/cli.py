"""The ``pytcpecho`` command: serve, client, ping, demo.

Bad input is one line on stderr and exit status 2; a server out of reach is
one line and status 3; an echo that did not come back intact is status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from . import core as cores
from ._version import __version__
from .client import DEFAULT_TIMEOUT, EchoClient, EchoError, EchoResult
from .server import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CLIENTS, DEFAULT_SIZE, MODES, EchoServer
from .sockets import MAX_TIMEOUT
from .units import DEFAULT_PORT, format_hostport, parse_hostport, parse_port, parse_size

EXIT_OK, EXIT_NOT_INTACT, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_GRACE = 10.0

log = logging.getLogger("pytcpecho")


class UsageError(Exception):
    """Bad input found after parsing: reported like an argparse error."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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
        raise ValueError(f"invalid size {text!r}: must be at least 1 byte")
    return size


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: give seconds, e.g. 10 or 0.5") from None
    if not value > 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    if value > MAX_TIMEOUT:
        raise ValueError(f"invalid duration {text!r}: at most {MAX_TIMEOUT:g} seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid count {text!r}: not a whole number") from None
    if value < 1:
        raise ValueError(f"invalid count {value}: must be at least 1")
    return value


SIZE = _arg(_positive_size, "size")
SECONDS = _arg(_seconds, "seconds")
COUNT = _arg(_count, "count")
PORT = _arg(lambda t: parse_port(t, allow_zero=True), "port")
TARGET = _arg(parse_hostport, "address")


def _setup_logging(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    detailed = verbose > 0
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(threadName)s %(message)s" if detailed else "%(message)s"))
    root = logging.getLogger("pytcpecho")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if detailed else logging.INFO)
    logging.getLogger("pytcpecho.conn").setLevel(logging.WARNING if quiet else logging.NOTSET)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status


# -- serve --------------------------------------------------------------------

def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", help="run the echo server",
                       description="Echo every client's bytes back, one thread per client.")
    p.add_argument("--host", default="",
                   help="address to listen on (default: all, IPv4 and IPv6)")
    p.add_argument("--port", type=PORT, default=DEFAULT_PORT,
                   help=f"TCP port, 0 for any free one (default: {DEFAULT_PORT})")
    p.add_argument("--mode", choices=MODES, default="stream",
                   help="stream: echo bytes as they come (RFC 862); message: read --size "
                        "bytes, send them back, repeat (default: stream)")
    p.add_argument("--size", type=SIZE, default=DEFAULT_SIZE,
                   help="message size in message mode (default: 102400, e.g. 100KiB, 1MiB)")
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
    p.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="serve only clients in this network (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="CIDR",
                   help="refuse clients in this network (repeatable)")
    p.add_argument("--grace", type=SECONDS, default=DEFAULT_GRACE,
                   help="on SIGTERM/SIGINT, let connections finish for this many seconds "
                        f"(default: {DEFAULT_GRACE:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-connection lines")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose, args.quiet)
    try:
        server = EchoServer((args.host, args.port), mode=args.mode, size=args.size,
                            core=args.core, max_clients=args.max_clients,
                            idle_timeout=args.idle_timeout, max_bytes=args.max_bytes,
                            allow=args.allow, deny=args.deny)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        where = format_hostport(args.host or "*", args.port)
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            _say(f"{signal.Signals(signum).name} again: exiting now")
            os._exit(EXIT_NOT_INTACT)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    serving = threading.Thread(target=server.serve_forever, name="pytcpecho-accept")
    serving.start()
    stop.wait()
    active = server.stats.active
    log.info("Shutting down: %d connection%s in flight, up to %g s to finish",
             active, "" if active == 1 else "s", args.grace)
    if not server.drain(args.grace):
        log.warning("Grace period over: closing %d connection(s)", server.stats.active)
    server.close()
    serving.join()
    s = server.stats
    log.info("Served %d connections, echoed %d bytes, %d errors", s.total, s.bytes_out, s.errors)
    return EXIT_OK


# -- client and ping ------------------------------------------------------------

def _client_options(p: argparse.ArgumentParser, size: int, timeout: float) -> None:
    p.add_argument("target", type=TARGET, metavar="HOST[:PORT]",
                   help=f"server to reach ([IPv6]:PORT for IPv6; default port {DEFAULT_PORT})")
    p.add_argument("--size", type=SIZE, default=size,
                   help=f"bytes per message (default: {size}; e.g. 100KiB, 1GiB)")
    p.add_argument("--timeout", type=SECONDS, default=timeout,
                   help=f"seconds to wait for the connection and for data (default: {timeout:g})")
    p.add_argument("--core", choices=cores.CORES, default="auto", help="client loop implementation")


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
    _say(f"Connecting to {client.target}")
    try:
        result = client.run()
    except EchoError as exc:
        return _fail(args.prog, str(exc), EXIT_UNREACHABLE)
    return _report(args.prog, result, _say)


def _add_ping(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ping", help="health check: echo a few bytes, exit 0 if intact",
                       description="Open a connection, echo --size bytes, check them. "
                                   "Exit 0 when every echo came back intact.")
    _client_options(p, 64, 3.0)
    p.add_argument("--count", "-c", type=COUNT, default=1,
                   help="pings, one connection each (default: 1)")
    p.set_defaults(run=_ping)


def _ping(args: argparse.Namespace) -> int:
    host, port = args.target
    for _ in range(args.count):
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
        _say(f"{result.received} bytes from {format_hostport(*result.peer)}: "
             f"intact, time={result.elapsed * 1000:.3f} ms")
    return EXIT_OK


# -- demo -----------------------------------------------------------------------

def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("demo", help="replay the seed's test on this machine",
                       description="Start a server on a free port, connect two clients at "
                                   "once, then one more, each echoing 100 KiB.")
    p.add_argument("--core", choices=cores.CORES, default="auto", help="core to demonstrate")
    p.add_argument("--mode", choices=MODES, default="message", help="server mode")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        cores.load(args.core)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK if run_demo(core=args.core, mode=args.mode) else EXIT_NOT_INTACT


# -- main -----------------------------------------------------------------------

COMMANDS = (_add_serve, _add_client, _add_ping, _add_demo)


def build_parser() -> _Parser:
    parser = _Parser(prog="pytcpecho",
                     description="TCP echo server and verifying client with a GIL-free "
                                 "Cython core.")
    parser.add_argument("--version", action="version",
                        version=f"pytcpecho {__version__} (core: {cores.default.NAME})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prog = f"pytcpecho {args.command}"
    try:
        status: int = args.run(args)
    except UsageError as exc:
        return _fail(args.prog, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
