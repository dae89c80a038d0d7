"""The UDP part of the benchmark suite: pytcpecho's UDP echo against a C reference.

Same shape as test_bench_echo.py: each entry runs once and stores the load's
figures in ``benchmark.extra_info``; ``bench/report.py`` turns them into ratios
measured in the same run, and holds them to the UDP targets (reported, never
asserted here, in quick mode or full, as the TCP ones).  What is asserted is
correctness: echoes came back, none damaged, duplicated or of another length, no
socket failed, and request/response (one datagram in flight per socket, on
loopback) lost next to nothing.

The servers: ``c-udp`` (bench/c/udp_echo.c, a plain recvfrom/sendto loop, one
thread) and ``pytcpecho-udp`` (``pytcpecho serve --udp --udp-rate 0``).  The
load, the same for both: the C UDP load generator (bench/c/udp_loadgen.c) in
request/response (``rr``) or in an open loop at a rate that saturates the C
server, sent with sendmmsg in batches (``batch``).  The ``udp-gil-`` groups add
a CPU-bound Python thread to pytcpecho's server process (a CPU-bound process
beside the C server): the target compares pytcpecho's figure there with its own
in the group without.  The ``udp-loadgen-`` groups put ``pytcpecho bench --udp``
and the C load generator against the same C server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import harness
import pytest
from harness import SECONDS

S = f"{SECONDS:g}"
RR_SOCKETS = 4
BATCH_SOCKETS = 2  # two sending threads: the C generator offers BATCH_RATE then, on 2 cores
BATCH_RATE = 300_000
"""Datagrams per second in all: about twice what the C server echoes on 2 cores, so it
saturates, with room above it for a server that echoes more."""
RR_MAX_LOSS = 0.01
"""Request/response on loopback has one datagram in flight per socket: loss means a
server that drops what it was sent, unless a datagram waits past the generator's timeout
(1 s), which a stalled 2-core machine can cause; 1% allows for that much, no more."""


@dataclass(frozen=True)
class Load:
    size: int
    sockets: int
    rate: float = 0  # 0: request/response

    @property
    def mode(self) -> str:
        return "batch" if self.rate else "rr"

    def bench_args(self) -> list[str]:
        """The same load for ``pytcpecho bench --udp``."""
        args = ["--size", str(self.size), "-c", str(self.sockets), "-t", S]
        return args + (["--rate", f"{self.rate:g}"] if self.rate else ["--rr"])


RR_64 = Load(64, RR_SOCKETS)
RR_1400 = Load(1400, RR_SOCKETS)
BATCH_64 = Load(64, BATCH_SOCKETS, BATCH_RATE)

WORKLOADS: dict[str, Load] = {
    "udp-rr-64B": RR_64,
    "udp-rr-1400B": RR_1400,
    "udp-batch-64B": BATCH_64,
    "udp-gil-rr-64B": RR_64,
    "udp-gil-batch-64B": BATCH_64,
}
LOADGEN_WORKLOADS: dict[str, Load] = {
    "udp-loadgen-rr-64B": RR_64,
    "udp-loadgen-batch-64B": BATCH_64,
}

KEYS = ("mode", "size", "sockets", "rate", "duration_s", "sent", "received", "received_in_window",
        "lost", "loss", "late", "duplicates", "reordered", "corrupted", "bad", "refused", "errors",
        "rcvbuf_drops", "offered_per_s", "echoed_per_s", "jitter_ms", "ok", "status",
        "server_cpu_us_per_datagram")


@pytest.fixture(scope="session")
def c_built() -> bool:
    return harness.build_c()


def _need_c(c_built: bool) -> None:
    harness.require(None if c_built else "no C compiler: the C references are not built",
                    "no C compiler, and CI must run the C references")


def _record(benchmark: Any, workload: str, who: str, doc: dict[str, Any]) -> None:
    info: dict[str, Any] = {"workload": workload, "server": who}
    info.update({k: doc[k] for k in KEYS if k in doc})
    lat = doc.get("latency_ms")
    if lat:
        info.update({f"latency_{k}_ms": v for k, v in lat.items()})
    benchmark.extra_info.update(info)


def _check(workload: str, who: str, load: Load, doc: dict[str, Any]) -> None:
    """Correctness of one entry, whoever serves or loads: echoes came back, none damaged
    (pytcpecho bench verifies each payload; the C generator each length and sequence
    number), none twice, no socket failed; in request/response, next to no loss."""
    where = f"{who} in {workload}"
    assert doc["received"] > 0, f"{where}: nothing echoed: {doc}"
    assert doc.get("corrupted", 0) == 0, f"{where}: {doc['corrupted']} damaged echoes"
    assert doc.get("bad", 0) == 0, f"{where}: {doc['bad']} echoes of another length"
    assert doc.get("duplicates", 0) == 0, f"{where}: {doc['duplicates']} duplicates"
    assert doc.get("errors", 0) == 0, f"{where}: {doc['errors']} socket errors: {doc}"
    assert doc["received"] <= doc["sent"], f"{where}: {doc}"
    if doc.get("generator") == "c":  # 1: nothing came back, or a socket failed
        assert doc["status"] == 0, f"{where}: the load generator exited {doc['status']}"
    if load.mode == "rr":
        assert doc["loss"] <= RR_MAX_LOSS, f"{where}: lost {doc['lost']} of {doc['sent']}"


def _entries() -> list[tuple[str, str]]:
    return [(w, s.name) for w in WORKLOADS for s in harness.UDP_SERVER_LIST]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("workload", "server_name"), _entries())
def test_udp_echo(benchmark: Any, c_built: bool, workload: str, server_name: str) -> None:
    """One UDP echo server under the C load generator's load."""
    _need_c(c_built)  # the load is the C generator, whichever server
    server = harness.UDP_SERVER_BY_NAME[server_name]
    load = WORKLOADS[workload]
    benchmark.group = workload
    burn = workload.startswith("udp-gil-")
    with harness.running(server, burn=burn) as proc:
        cpu = proc.cpu_seconds()
        doc = benchmark.pedantic(harness.c_udp_loadgen,
                                 args=(proc.port, load.size, load.sockets, SECONDS, load.rate),
                                 rounds=1, iterations=1)
        cpu = proc.cpu_seconds() - cpu
    if doc.get("received") and not burn:
        # Server CPU per echoed datagram: steadier than throughput on a shared machine.
        doc["server_cpu_us_per_datagram"] = round(cpu / doc["received"] * 1e6, 3)
    _record(benchmark, workload, server_name, doc)
    _check(workload, server_name, load, doc)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workload", list(LOADGEN_WORKLOADS))
@pytest.mark.parametrize("generator", ["c-loadgen", "pytcpecho-bench"])
def test_udp_load_generator(benchmark: Any, c_built: bool, generator: str,
                            workload: str) -> None:
    """The UDP loadgen targets: pytcpecho bench --udp vs the C generator, same C server."""
    _need_c(c_built)
    load = LOADGEN_WORKLOADS[workload]
    benchmark.group = workload
    with harness.running(harness.UDP_SERVER_BY_NAME["c-udp"]) as proc:
        if generator == "c-loadgen":
            doc = benchmark.pedantic(harness.c_udp_loadgen,
                                     args=(proc.port, load.size, load.sockets, SECONDS,
                                           load.rate), rounds=1, iterations=1)
        else:
            doc = benchmark.pedantic(harness.pytcpecho_udp_bench,
                                     args=(proc.port, load.bench_args()),
                                     rounds=1, iterations=1)
    _record(benchmark, workload, generator, doc)
    _check(workload, generator, load, doc)
