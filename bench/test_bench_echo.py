"""The benchmark suite: one group per workload, one entry per server, same load for all.

Each entry runs once (``benchmark.pedantic``, rounds=1) and stores the load
generator's figures in ``benchmark.extra_info``; ``bench/report.py`` turns
them into ratios against the C reference.  Quick by default (what CI runs);
``PYTCPECHO_BENCH_SECONDS=3`` makes the full run (see README, Benchmarks).
Nothing here asserts a speed, only correctness, for every entry, peers
included: messages moved, no connection failed, every echo the load
generator verifies came back intact, and every idle connection was held.
"""

from __future__ import annotations

from typing import Any

import harness
import pytest
from harness import SECONDS, SERVER_LIST, Server

S = f"{SECONDS:g}"
WORKLOADS: dict[str, list[str]] = {
    "100KiB-x10": ["--size", "102400", "-c", "10", "-t", S],
    "1KiB-x10": ["--size", "1024", "-c", "10", "-t", S],
    "1GiB-stream" if harness.FULL else f"{harness.STREAM_MIB}MiB-stream":
        ["--size", "1MiB", "--mode", "stream", "-c", "1", "-n", str(harness.STREAM_MIB)],
    "connect-each": ["--size", "102400", "-c", "2", "--connect-each", "-t", S],
    "1000-connections": ["--size", "1024", "-c", "1000", "-t", S, "--timeout", "30"],
    "gil-100KiB-x10": ["--size", "102400", "-c", "10", "-t", S],
    "gil-1KiB-x10": ["--size", "1024", "-c", "10", "-t", S],
}


@pytest.fixture(scope="session")
def c_built() -> bool:
    return harness.build_c()


def _server(name: str, c_built: bool) -> Server:
    server = harness.SERVER_BY_NAME[name]
    if server.native:
        harness.require(None if c_built else "no C compiler: the C references are not built",
                        "no C compiler, and CI must run the C references")
    return server


def _record(benchmark: Any, workload: str, server: str, doc: dict[str, Any]) -> None:
    info = {"workload": workload, "server": server}
    for key in ("messages", "messages_per_s", "mib_per_s", "errors", "integrity_failures",
                "duration_s", "connections_opened", "rss_mib", "rss_idle_mib",
                "kib_per_connection", "connections", "held", "server_cpu_us_per_message"):
        if key in doc:
            info[key] = doc[key]
    lat = doc.get("latency_ms")
    if lat:
        info.update({f"latency_{k}_ms": v for k, v in lat.items()})
    benchmark.extra_info.update(info)


# Messages a workload with a count (-n) must move exactly.
EXACT = {w: int(args[args.index("-n") + 1]) for w, args in WORKLOADS.items() if "-n" in args}


def _check(workload: str, server: str, doc: dict[str, Any]) -> None:
    """Correctness of one entry, whoever the server: something moved, no connection
    failed, and whatever the load generator verifies came back intact."""
    where = f"{server} in {workload}"
    assert doc["messages"] > 0, f"{where}: nothing moved: {doc}"
    if workload in EXACT:
        assert doc["messages"] == EXACT[workload], f"{where}: {doc['messages']} messages"
    assert doc["errors"] == 0, f"{where}: {doc['errors']} errors: {doc.get('problems')}"
    if "integrity_failures" in doc:  # pytcpecho bench; the C load generator checks nothing
        assert doc["integrity_failures"] == 0, f"{where}: {doc.get('problems')}"
    assert doc["status"] == 0, f"{where}: the load generator exited {doc['status']}"
    if workload == "1000-connections":  # the README: 0 errors at 1000 connections
        assert doc["connections_opened"] == 1000, f"{where}: {doc['connections_opened']}"
    if workload == "connect-each":  # a connection per message
        assert doc["connections_opened"] == doc["messages"], f"{where}: {doc}"


def _entries() -> list[tuple[str, str]]:
    """Every server in every workload; the original exercise's server in its own pattern only."""
    return [(w, s.name) for w in WORKLOADS for s in SERVER_LIST if s.runs(w)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("workload", "server_name"), _entries())
def test_echo(benchmark: Any, c_built: bool, workload: str, server_name: str) -> None:
    server = _server(server_name, c_built)
    benchmark.group = workload
    burn = workload.startswith("gil-")
    with harness.running(server, burn=burn) as proc:
        cpu = proc.cpu_seconds()
        doc = benchmark.pedantic(harness.pytcpecho_bench, args=(proc.port, WORKLOADS[workload]),
                                 rounds=1, iterations=1)
        cpu = proc.cpu_seconds() - cpu
    if doc.get("messages") and not burn:
        # CPU per message: a figure other jobs on a shared machine disturb far less.
        doc["server_cpu_us_per_message"] = round(cpu / doc["messages"] * 1e6, 3)
    _record(benchmark, workload, server_name, doc)
    _check(workload, server_name, doc)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("count", harness.IDLE_COUNTS)
@pytest.mark.parametrize("server_name", [s.name for s in SERVER_LIST
                                         if not s.exercise_only and not s.only])
def test_idle_memory(benchmark: Any, c_built: bool, server_name: str, count: int) -> None:
    server = _server(server_name, c_built)
    benchmark.group = f"idle-{count}"
    harness.raise_nofile()
    # A server whose idle connection holds more than one fd holds fewer within the fd
    # limit: its entry says how many it held (the report shows it per connection).
    count = min(count, harness.idle_fd_budget(server.fds_per_idle))
    with harness.running(server) as proc:
        doc = benchmark.pedantic(harness.hold_idle, args=(proc, count), rounds=1, iterations=1)
    _record(benchmark, benchmark.group, server_name, doc)
    # Held every connection, still echoes on each one sampled, and lived through it; the
    # memory is recorded, not bounded.
    assert doc["held"] == count, doc
    assert doc["errors"] == 0, f"{doc['errors']} sampled idle connections did not echo"
    assert doc["alive"], f"{server_name} died holding {count} idle connections"
    assert doc["rss_mib"] > 0 and "kib_per_connection" in doc, doc


LOADGEN_CASES = [(102400, 10), (1024, 10), (1024, 1000)]


def loadgen_workload(size: int, connections: int) -> str:
    return f"loadgen-{'100KiB' if size == 102400 else '1KiB'}-x{connections}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("size", "connections"), LOADGEN_CASES)
@pytest.mark.parametrize("generator", ["c-loadgen", "pytcpecho-bench"])
def test_load_generator(benchmark: Any, c_built: bool, generator: str, size: int,
                        connections: int) -> None:
    """The loadgen targets: pytcpecho bench vs the C load generator, same C server."""
    server = _server("c-thread", c_built)
    workload = loadgen_workload(size, connections)
    benchmark.group = workload
    harness.raise_nofile()
    with harness.running(server) as proc:
        if generator == "c-loadgen":
            doc = benchmark.pedantic(harness.c_loadgen,
                                     args=(proc.port, size, connections, SECONDS),
                                     rounds=1, iterations=1)
        else:
            doc = benchmark.pedantic(harness.pytcpecho_bench,
                                     args=(proc.port, ["--size", str(size), "-c",
                                                       str(connections), "-t", S]),
                                     rounds=1, iterations=1)
    _record(benchmark, workload, generator, doc)
    _check(workload, generator, doc)


KEEP_TIME_CONNECTIONS = 10000
KEEP_TIME_SECONDS = 10.0 if harness.FULL else 1.0
KEEP_TIME_INTERVAL = 1.0 if harness.FULL else 0.25


@pytest.mark.timeout(300)
def test_bench_keeps_time_at_10000_connections(benchmark: Any, c_built: bool) -> None:
    """bench -c 10000 -t 10 against the C thread server: when the run ends and when each
    interval line falls, against when they are due (the report holds them to targets)."""
    server = _server("c-thread", c_built)
    workload = f"keep-time-{KEEP_TIME_CONNECTIONS}"
    benchmark.group = workload
    harness.raise_nofile()
    args = ["--size", "1024", "-c", str(KEEP_TIME_CONNECTIONS), "-t", f"{KEEP_TIME_SECONDS:g}",
            "-i", f"{KEEP_TIME_INTERVAL:g}", "--timeout", "30"]
    with harness.running(server) as proc:
        doc = benchmark.pedantic(harness.pytcpecho_bench, args=(proc.port, args),
                                 rounds=1, iterations=1)
    due = round(KEEP_TIME_SECONDS / KEEP_TIME_INTERVAL)  # lines; then at most a last sliver
    ticks = doc["intervals"][:due]
    doc["interval_late_ms"] = round(max(abs(i["end"] - k * KEEP_TIME_INTERVAL) * 1000
                                        for k, i in enumerate(ticks, 1)), 1)
    doc["duration_off_s"] = round(doc["duration_s"] - KEEP_TIME_SECONDS, 4)
    doc["seconds"] = KEEP_TIME_SECONDS
    _record(benchmark, workload, "pytcpecho-bench", doc)
    benchmark.extra_info.update({k: doc[k] for k in ("interval_late_ms", "duration_off_s",
                                                     "seconds", "unfinished")})
    _check(workload, "pytcpecho-bench", doc)
    assert doc["connections_opened"] == KEEP_TIME_CONNECTIONS, doc["connections_opened"]
    assert len(ticks) == due, doc["intervals"]
