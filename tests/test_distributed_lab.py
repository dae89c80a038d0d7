"""Load from many machines, end to end, in network namespaces.

One namespace runs the server; four more each run ``pytcpecho bench`` as a process of
its own, as the four pods of deploy/kubernetes/bench-job.yaml would (its index in
``JOB_COMPLETION_INDEX``, one start time for all with ``--start-at``, an open loop
so the load is steady, metrics on :9100); a sixth runs a real Prometheus scraping the
four each second.  Then three independent accounts of the one run must agree:

1. ``pytcpecho merge`` of the four JSON documents counts exactly the messages the
   server says it echoed (its own count, in its summary at SIGTERM);
2. the four loads started within 50 ms of each other, and of the start time;
3. Prometheus's ``sum(rate(pytcpecho_bench_messages_total[10s]))`` over the steady
   part of the run is within 10% of merge's combined rate (and so is the server's own
   ``rate(pytcpecho_bytes_echoed_total[10s])``, in messages).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from mesh_lab import FETCH, need, wait_until
from netns import Lab, lab, pytcpecho
from support import ServeProcess, cli

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLIENTS = ("c0", "c1", "c2", "c3")
ECHO_PORT = 8000
METRICS_PORT = 9100
SERVER_METRICS_PORT = 9862
PROMETHEUS_PORT = 9090
SIZE = 1024
RATE = 2000
"""Messages a second from each client (open loop): 8,000 in all, light for two cores."""
CONNECTIONS = 8
DURATION = 18.0
"""Long enough for rate() over 10 s to be read at several moments wholly inside the run."""
WINDOW = 10.0
LEAD = 4.0
"""Seconds from launching the clients to the start time: they start and connect first."""
STEADY_FROM = WINDOW + 0.5
STEADY_TO = DURATION - 1.0
"""rate()[10s] is read at each second from STEADY_FROM to STEADY_TO after the start:
windows that hold only the run, and no scrape after its end."""


def get(net: Lab, url: str, timeout: float = 5) -> bytes:
    """GET ``url`` from Prometheus's namespace (which reaches every other)."""
    result = net.run("prom", [sys.executable, "-c", FETCH, url, str(timeout)],
                     timeout=timeout + 15)
    if result.returncode != 0:
        raise RuntimeError(f"GET {url}: {result.stderr[-500:]}")
    return result.stdout.encode()


def api(net: Lab, url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    answer = json.loads(get(net, f"{url}/api/v1/{path}?{urlencode(params)}"))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def ready(net: Lab, url: str, proc: ServeProcess) -> bool:
    if proc.proc.poll() is not None:
        raise AssertionError(f"Prometheus exited: {proc.output()[-2000:]}")
    try:
        return b"Ready" in get(net, f"{url}/-/ready", timeout=2)
    except RuntimeError:
        return False


@pytest.fixture
def net() -> Iterator[Lab]:
    with lab(["server", *CLIENTS, "prom"]) as built:
        yield built


def start_prometheus(net: Lab, workdir: Path) -> tuple[str, ServeProcess]:
    """A real Prometheus in namespace ``prom`` scraping the four clients and the server
    each second; its URL, once it is ready."""
    binary = need("prometheus", "prometheus")
    clients = [f"{net.addresses[c]}:{METRICS_PORT}" for c in CLIENTS]
    server = [f"{net.addresses['server']}:{SERVER_METRICS_PORT}"]
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: pytcpecho-bench\n    static_configs:\n"
        f"      - targets: {json.dumps(clients)}\n"
        f"  - job_name: pytcpecho\n    static_configs:\n"
        f"      - targets: {json.dumps(server)}\n")
    listen = f"{net.addresses['prom']}:{PROMETHEUS_PORT}"
    proc = net.start("prom", [binary, f"--config.file={config}",
                              f"--storage.tsdb.path={workdir / 'data'}",
                              f"--web.listen-address={listen}"])
    return f"http://{listen}", proc


def steady_rate(net: Lab, url: str, promql: str, start: float) -> list[float]:
    """``promql`` at each second of the run's steady part (a range query, after the run:
    what a dashboard shows over it)."""
    (series,) = api(net, url, "query_range", query=promql, start=f"{start + STEADY_FROM:.3f}",
                    end=f"{start + STEADY_TO:.3f}", step="1")
    return [float(v) for _, v in series["values"]]


@pytest.mark.timeout(90)
def test_four_clients_one_server_three_accounts_agree(net: Lab, tmp_path: Path) -> None:
    began = time.monotonic()
    server = net.start("server", pytcpecho(
        "serve", "--mode", "message", "--size", str(SIZE), "--port", str(ECHO_PORT), "-q",
        "--metrics-port", str(SERVER_METRICS_PORT)))
    prom_url, prom = start_prometheus(net, tmp_path)
    server.wait_for(r"^Server at ", timeout=20)
    wait_until("Prometheus is ready", lambda: ready(net, prom_url, prom), 60)

    # The four pods: one start time, each its own process, index and stdout (its log).
    start = round(time.time() + LEAD, 3)
    outputs = {c: tmp_path / f"pytcpecho-bench-{i}.json" for i, c in enumerate(CLIENTS)}
    clients = {}
    for i, c in enumerate(CLIENTS):
        argv = pytcpecho("bench", f"{net.addresses['server']}:{ECHO_PORT}", "--mode", "message",
                         "--size", str(SIZE), "-c", str(CONNECTIONS), "--rate", str(RATE),
                         "--threads", "1", "--start-at", f"{start:.3f}",
                         "--duration", f"{DURATION:g}", "--json",
                         "--metrics-port", str(METRICS_PORT))
        # stdout (the document) to the file; stderr (the wait line) read as it comes.
        clients[c] = net.start(c, ["sh", "-c", 'exec "$@" > "$0"', str(outputs[c]), *argv],
                               env={"JOB_COMPLETION_INDEX": str(i)})
    for proc in clients.values():  # all connected, each waiting for the start time
        proc.wait_for(r"^Waiting [\d.]+ s to start at ", timeout=max(0.1, start - time.time()))
    up = wait_until("Prometheus scrapes the four clients", lambda: api(
        net, prom_url, "query", query='sum(up{job="pytcpecho-bench"})'), timeout=10,
        until=lambda r: r and float(r[0]["value"][1]) == len(CLIENTS))
    assert up

    for proc in clients.values():
        assert proc.proc.wait(timeout=start + DURATION + 20 - time.time()) == 0, proc.output()
    prometheus_rates = steady_rate(net, prom_url,
                                   f"sum(rate(pytcpecho_bench_messages_total[{WINDOW:g}s]))",
                                   start)
    server_rates = steady_rate(net, prom_url,
                               f"sum(rate(pytcpecho_bytes_echoed_total[{WINDOW:g}s])) / {SIZE}",
                               start)
    assert server.stop() == 0
    served = re.search(r"^Served (\d+) connections?, echoed (\d+) bytes, 0 errors",
                       server.output(), re.M)
    assert served, server.output()
    prom.stop()

    documents = [json.loads(outputs[c].read_text()) for c in CLIENTS]
    assert [d["index"] for d in documents] == list(range(len(CLIENTS)))
    for d in documents:
        assert (d["errors"], d["integrity_failures"], d["interrupted"]) == (0, 0, False), d
    merged = cli("merge", "--json", *map(str, outputs.values()))
    assert merged.returncode == 0, merged.stderr
    assert merged.stderr == "", merged.stderr  # no warning: one target, one start
    result = json.loads(merged.stdout)
    text = cli("merge", *map(str, outputs.values()))
    assert text.returncode == 0, text.stderr

    # 1. What the clients count, merged, is what the server echoed: its own count.
    connections, echoed = int(served[1]), int(served[2])
    assert echoed % SIZE == 0
    assert result["merged"]["inputs"] == len(CLIENTS)
    assert result["messages"] == sum(d["messages"] for d in documents)
    assert result["messages"] == echoed // SIZE, (result["messages"], echoed // SIZE)
    assert connections == result["connections_opened"] == len(CLIENTS) * CONNECTIONS

    # 2. One start: within 50 ms of each other, and of the time given.
    starts = [d["started_at"] for d in documents]
    skew = max(starts) - min(starts)
    assert skew < 0.05, starts
    assert math.isclose(result["merged"]["skew_s"], skew, abs_tol=1e-5)
    late = [s - start for s in starts]
    assert all(0 <= x < 0.05 for x in late), late

    # 3. The live view (Prometheus adding the four pods' counters) agrees with merge.
    combined = result["merged"]["rate_per_s"]
    assert math.isclose(combined, len(CLIENTS) * RATE, rel_tol=0.05), combined
    live = statistics.fmean(prometheus_rates)
    assert len(prometheus_rates) >= 5
    assert all(math.isclose(r, combined, rel_tol=0.10) for r in prometheus_rates), \
        (prometheus_rates, combined)
    assert math.isclose(statistics.fmean(server_rates), combined, rel_tol=0.10), server_rates

    own_p99 = [d["latency_ms"]["p99"] for d in documents]
    took = time.monotonic() - began
    sys.stdout.write(
        f"\n$ pytcpecho merge {' '.join(p.name for p in outputs.values())}\n{text.stdout}"
        f"\nserver echoed {echoed} bytes = {echoed // SIZE} messages on {connections} "
        f"connections; merged count {result['messages']}\n"
        f"start skew {skew * 1000:.1f} ms (merge: {result['merged']['skew_s'] * 1000:.1f} "
        f"ms); starts after the start time: "
        f"{', '.join(f'{x * 1000:.1f}' for x in late)} ms\n"
        f"Prometheus sum(rate(pytcpecho_bench_messages_total[10s])) over "
        f"{len(prometheus_rates)} s of the run: mean {live:.1f} msg/s (min "
        f"{min(prometheus_rates):.1f}, max {max(prometheus_rates):.1f}); server's "
        f"rate(pytcpecho_bytes_echoed_total[10s])/{SIZE}: {statistics.fmean(server_rates):.1f}"
        f"; merged combined rate {combined:.1f} msg/s ({(live / combined - 1) * 100:+.2f}%)\n"
        f"p99 of each client: {', '.join(f'{p:.3f}' for p in own_p99)} ms (their mean "
        f"{statistics.fmean(own_p99):.3f}); p99 of all, merged: "
        f"{result['latency_ms']['p99']:.3f} ms\n"
        f"test took {took:.1f} s\n")
