"""The datagram commands: ``ping --udp`` and ``bench --udp``, from parsed options to
lines and an exit status (the parsers live in pytcpecho.cli)."""

from __future__ import annotations

import argparse
import json

from . import udpbench
from .constants import BENCH_DURATION, BENCH_SIZE, BENCH_UDP_SIZE, PING_UDP_INTERVAL
from .output import fail as _fail
from .output import finish_run, under_columns
from .output import note as _note
from .output import say as _say
from .starttime import wait_until
from .status import EXIT_INTERRUPTED, EXIT_NOT_INTACT, EXIT_OK, EXIT_UNREACHABLE, UsageError
from .udpclient import Event, UdpEchoClient, UdpEchoError, UdpResult, hops
from .units import format_hostport, plural


def ping(args: argparse.Namespace) -> int:
    """ping --udp: a line per echo, the statistics at the end (also after Ctrl-C)."""
    host, port = args.target
    try:
        client = UdpEchoClient(host, port, size=args.size, count=args.count,
                               interval=args.interval or PING_UDP_INTERVAL,
                               timeout=args.timeout, core=args.core)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"argument --size: {exc}" if "size" in str(exc) else str(exc)) \
            from None
    target = client.target
    if not args.json:
        _say(f"PING {target} (UDP echo): {args.size}-byte datagrams")
    try:
        result = client.run(None if args.json else lambda e: _say(event_line(e, args.size,
                                                                             target)))
    except UdpEchoError as exc:
        return _fail(args.prog, str(exc), EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        partial = client.partial()
        if partial is not None and not args.json:
            for line in summary_lines(partial, " (interrupted)"):
                _say(line)
        return EXIT_INTERRUPTED
    if args.json:
        _say(json.dumps(result.as_dict(), indent=2))
    elif result.received or result.corrupted or result.duplicates:
        for line in summary_lines(result):
            _say(line)
    if result.received == 0 and result.corrupted == 0:
        refused = " (port unreachable)" if result.refused else ""
        return _fail(args.prog, f"no echo from {target}{refused} within {args.timeout:g} s: "
                                f"{result.transmitted} of {result.transmitted} "
                                f"datagram{plural(result.transmitted)} lost (100% loss)",
                     EXIT_UNREACHABLE)
    return EXIT_OK if result.intact else EXIT_NOT_INTACT


def event_line(event: Event, size: int, target: str) -> str:
    """One echo as ping prints it."""
    seq, rtt_ns, ttl, kind = event
    if kind == "refused":
        return f"From {target}: port unreachable (ICMP)"
    if kind == "corrupted" and seq < 0:
        return f"{size} bytes from {target}: corrupted (not a datagram this ping sent)"
    head = f"{size} bytes from {target}: udp_seq={seq} ttl={ttl} time={rtt_ns / 1e6:.3f} ms"
    if kind == "duplicate":
        return head + " (DUP!)"
    if kind == "corrupted":
        return head + " CORRUPTED (payload differs from what was sent)"
    if kind == "late":
        return head + " (late: too old to count)"
    return head


def summary_lines(r: UdpResult, note: str = "") -> list[str]:
    """ping's statistics, and the path's: loss, order, corruption, time, hops."""
    lines = [f"--- {r.target} UDP echo statistics{note} ---",
             f"{r.transmitted} transmitted, {r.received} received, {r.loss * 100:.1f}% loss, "
             f"{r.corrupted} corrupted, {r.duplicates} duplicate{plural(r.duplicates)}, "
             f"{r.reordered} reordered, time {r.elapsed:.1f} s"]
    if r.received:
        lat = r.latency
        where = "" if r.ttl is None else f", hops {hops(r.ttl)} (ttl {r.ttl})"
        lines.append(f"rtt min/avg/p50/p99/max = {lat.min:.3f}/{lat.mean:.3f}/{lat.p50:.3f}/"
                     f"{lat.p99:.3f}/{lat.max:.3f} ms, jitter {r.jitter_ms:.3f} ms{where}")
    if r.refused:
        lines.append(f"{r.refused} port unreachable error{plural(r.refused)} (ICMP) from "
                     f"{format_hostport(*r.peer)}")
    return lines


def bench(args: argparse.Namespace) -> int:
    """bench --udp: the search's steps, a line per interval, the summary (or --json)."""
    if args.mode != "message" or args.connect_each or args.threads is not None:
        raise UsageError("--mode, --connect-each and --threads are TCP's: with --udp, -c is "
                         "the number of sockets, one thread each")
    host, port = args.target
    size = BENCH_UDP_SIZE if args.size == BENCH_SIZE else args.size  # TCP's default is not
    config = udpbench.UdpBenchConfig(
        host, port, size=size, sockets=args.connections,
        duration=None if args.count else (args.duration or BENCH_DURATION), count=args.count,
        rate=args.rate, rr=args.rr, max_loss=args.max_loss, core=args.core,
        timeout=args.timeout, interval=args.interval, seed=args.seed)
    try:
        gen = udpbench.UdpLoadGenerator(config)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"argument --size: {exc}" if "size" in str(exc) else str(exc)) \
            from None
    quiet = args.json
    if not quiet:
        _say(udpbench.header(config, gen.core.NAME))
    if args.start_at is not None:
        wait_until(args.start_at, _note if quiet else _say)
    on_interval = None if quiet else under_columns(udpbench.COLUMNS, udpbench.interval_line)
    on_step = None if quiet else lambda r, loss: _say(udpbench.step_line(r, loss))
    return finish_run(args.prog, quiet, lambda: gen.run(on_interval, on_step),
                      udpbench.summary_lines)
