"""The benchmark suite: one group per workload, one entry per server, same load for all.

Each entry runs once (``benchmark.pedantic``, rounds=1) and stores the load
generator's figures in ``benchmark.extra_info``; ``bench/report.py`` turns
them into ratios against the C reference.  Quick by default (what CI runs);
``PYTCPECHO_BENCH_SECONDS=3`` makes the full run (see README, Benchmarks).
Nothing here asserts a speed: only that every echo came back intact.
"""

from __future__ import annotations

import os
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
    "seed-pattern": ["--size", "102400", "-c", "2", "--connect-each", "-t", S],
    "1000-connections": ["--size", "1024", "-c", "1000", "-t", S, "--timeout", "30"],
    "gil-100KiB-x10": ["--size", "102400", "-c", "10", "-t", S],
    "gil-1KiB-x10": ["--size", "1024", "-c", "10", "-t", S],
}
OWN = ("c-thread", "c-splice", "pytcpecho-cython", "pytcpecho-splice", "pytcpecho-python",
       "pytcpecho-workers2")


@pytest.fixture(scope="session")
def c_built() -> bool:
    return harness.build_c()


def _server(name: str, c_built: bool) -> Server:
    server = harness.SERVER_BY_NAME[name]
    if server.native and not c_built:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no C compiler, and CI must run the C references")
        pytest.skip("no C compiler: the C references are not built")
    return server


def _record(benchmark: Any, workload: str, server: str, doc: dict[str, Any]) -> None:
    info = {"workload": workload, "server": server}
    for key in ("messages", "messages_per_s", "mib_per_s", "errors", "integrity_failures",
                "duration_s", "connections_opened", "rss_mib", "rss_idle_mib",
                "kib_per_connection", "connections", "server_cpu_us_per_message"):
        if key in doc:
            info[key] = doc[key]
    lat = doc.get("latency_ms")
    if lat:
        info.update({f"latency_{k}_ms": v for k, v in lat.items()})
    benchmark.extra_info.update(info)


def _check(server: str, doc: dict[str, Any]) -> None:
    assert doc["integrity_failures"] == 0, doc.get("problems")
    if server in OWN:
        assert doc["errors"] == 0, doc.get("problems")


def _entries() -> list[tuple[str, str]]:
    """Every server in every workload; the seed's server in its own pattern only."""
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
    _check(server_name, doc)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("count", harness.IDLE_COUNTS)
@pytest.mark.parametrize("server_name", [s.name for s in SERVER_LIST
                                         if not s.seed_only and not s.only])
def test_idle_memory(benchmark: Any, c_built: bool, server_name: str, count: int) -> None:
    server = _server(server_name, c_built)
    benchmark.group = f"idle-{count}"
    with harness.running(server) as proc:
        doc = benchmark.pedantic(harness.hold_idle, args=(proc, count), rounds=1, iterations=1)
    _record(benchmark, f"idle-{count}", server_name, doc)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", [102400, 1024])
@pytest.mark.parametrize("generator", ["c-loadgen", "pytcpecho-bench"])
def test_load_generator(benchmark: Any, c_built: bool, generator: str, size: int) -> None:
    """The loadgen target: pytcpecho bench vs the C load generator, same C server."""
    server = _server("c-thread", c_built)
    workload = f"loadgen-{'100KiB' if size == 102400 else '1KiB'}-x10"
    benchmark.group = workload
    with harness.running(server) as proc:
        if generator == "c-loadgen":
            doc = benchmark.pedantic(harness.c_loadgen, args=(proc.port, size, 10, SECONDS),
                                     rounds=1, iterations=1)
        else:
            doc = benchmark.pedantic(harness.pytcpecho_bench,
                                     args=(proc.port, ["--size", str(size), "-c", "10",
                                                       "-t", S]),
                                     rounds=1, iterations=1)
    _record(benchmark, workload, generator, doc)
    _check("c-thread", doc)
