"""``pytcpecho bench``: real servers, short runs; the numbers must add up."""

from __future__ import annotations

import datetime
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from fakes import echo_then, fake_server, flipping_echo, stalling_echo, stalling_once
from prometheus_client.parser import text_string_to_metric_families
from support import (
    LOCALHOST,
    ServeProcess,
    assert_one_line_error,
    cli,
    raise_fd_limit,
    running_server,
    unused_port,
)

from pytcpecho.histogram import Histogram

MIB = 1024 * 1024


def bench_json(port: int, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("bench", f"{LOCALHOST}:{port}", "--json", *args, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def assert_consistent(doc: dict[str, Any]) -> None:
    """The document's figures agree with each other."""
    for key in ("messages", "messages_per_s", "mib_per_s", "latency_ms", "errors",
                "integrity_failures", "intervals"):
        assert key in doc, key
    lat = doc["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert doc["bytes_received"] == doc["bytes_sent"]
    elapsed = doc["duration_s"]
    assert doc["messages_per_s"] == pytest.approx(doc["messages"] / elapsed, rel=0.01)
    assert doc["mib_per_s"] == pytest.approx(doc["bytes_received"] / elapsed / MIB, rel=0.01)
    assert isinstance(doc["intervals"], list) and doc["intervals"]
    assert sum(i["messages"] for i in doc["intervals"]) <= doc["messages"]
    for i in doc["intervals"]:
        assert i["end"] > i["start"]
        assert i["p50_ms"] <= i["p99_ms"]


def test_duration_run_reports_consistent_json(core: str) -> None:
    with running_server(mode="message", size=1024, core=core) as server:
        status, doc = bench_json(server.address[1], "--size", "1KiB", "-c", "4",
                                 "--duration", "0.6", "--interval", "0.2", "--core", core)
        assert status == 0, doc
        assert_consistent(doc)
        assert doc["messages"] > 0
        assert doc["bytes_received"] == doc["messages"] * 1024
        assert doc["errors"] == 0 and doc["integrity_failures"] == 0
        assert len(doc["intervals"]) >= 2
        assert doc["core"] == core
        assert server.wait(lambda s: s.bytes_out == doc["bytes_received"], 10)


def test_count_is_exact_in_both_modes(core: str, mode: str) -> None:
    with running_server(mode=mode, size=4096, core=core) as server:
        status, doc = bench_json(server.address[1], "--size", "4KiB", "-c", "3", "-n", "100",
                                 "--mode", "message" if mode == "message" else "stream",
                                 "--core", core)
        assert status == 0, doc
        assert doc["messages"] == 100
        assert doc["bytes_received"] == 100 * 4096
        assert server.wait(lambda s: s.bytes_out == 100 * 4096 and s.total == 3, 10)


def test_connect_each_opens_a_connection_per_message(core: str) -> None:
    with running_server(mode="message", size=102400, core=core) as server:
        status, doc = bench_json(server.address[1], "--size", "100KiB", "-c", "2", "-n", "40",
                                 "--connect-each", "--core", core)
        assert status == 0, doc
        assert_consistent(doc)
        assert doc["messages"] == 40 and doc["connections_opened"] == 40
        assert server.wait(lambda s: s.total == 40 and s.active == 0, 10)


def test_open_loop_rate_sends_the_count() -> None:
    with running_server(mode="message", size=512) as server:
        status, doc = bench_json(server.address[1], "--size", "512", "-c", "2", "-n", "50",
                                 "--rate", "500")
        assert status == 0, doc
        assert doc["messages"] == 50 and doc["rate"] == 500
        # 50 messages due over 0.1 s at the earliest: an open loop never runs ahead.
        assert doc["duration_s"] >= 0.09


def test_text_output_has_intervals_and_summary() -> None:
    with running_server(mode="message", size=1024) as server:
        result = cli("bench", f"{LOCALHOST}:{server.address[1]}", "-t", "0.5", "-i", "0.25",
                     "-c", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Benchmarking {LOCALHOST}:")
    assert "msg/s" in lines[1] and "p99 ms" in lines[1]
    assert any(re.match(r"\s+0\.0+-0\.\d+\s", line) for line in lines[2:])
    assert any(line.startswith("Messages: ") for line in lines)
    assert any(line.startswith("Latency ms: min ") and "p99.9" in line for line in lines)
    assert "0 errors, 0 integrity failures" in lines[-1]


def test_open_loop_shows_a_stall_in_the_percentiles() -> None:
    """Messages due while the server stalls count their wait (coordinated omission)."""
    with fake_server(stalling_echo(stall_after=10, stall=0.4)) as port:
        status, doc = bench_json(port, "--size", "64", "-c", "1", "-n", "100", "--rate", "200")
    assert status == 0, doc
    lat = doc["latency_ms"]
    # About 80 messages were due during the 0.4 s stall: most waited for it.
    assert lat["max"] >= 390
    assert lat["p50"] >= 50


def test_open_loop_connect_each_shows_a_stall_in_the_percentiles(core: str) -> None:
    """The same correction when every message is a new connection."""
    with fake_server(stalling_once(stall_after=10, stall=0.4)) as port:
        status, doc = bench_json(port, "--size", "64", "-c", "1", "-n", "100", "--rate", "200",
                                 "--connect-each", "--core", core)
    assert status == 0, doc
    lat = doc["latency_ms"]
    assert lat["max"] >= 390
    assert lat["p50"] >= 50, lat


def test_integrity_failure_exits_1(core: str) -> None:
    with fake_server(flipping_echo(5000)) as port:
        status, doc = bench_json(port, "--size", "1KiB", "-c", "1", "-n", "20", "--core", core)
    assert status == 1
    assert doc["integrity_failures"] == 1
    assert any("differs from what was sent at byte 5000" in p for p in doc["problems"])


@pytest.mark.parametrize("mode", ["message", "stream"])
def test_long_echo_is_an_integrity_failure(core: str, mode: str) -> None:
    with fake_server(echo_then(b"extra")) as port:
        status, doc = bench_json(port, "--size", "1KiB", "-c", "1", "-n", "20", "--mode", mode,
                                 "--core", core)
    assert status == 1
    assert doc["integrity_failures"] == 1
    assert doc["bytes_received"] == doc["bytes_sent"] == 20 * 1024  # all of it, then more
    assert any(p.startswith("long echo: after the last byte, 5 more came back")
               for p in doc["problems"]), doc["problems"]


def test_nothing_to_connect_to_exits_3() -> None:
    with socket.socket() as free:
        free.bind((LOCALHOST, 0))
        port = free.getsockname()[1]
    result = cli("bench", f"{LOCALHOST}:{port}", "-t", "1")
    assert "cannot connect" in assert_one_line_error(result, 3)


@pytest.mark.parametrize("args", [
    ["--mode", "stream", "--rate", "10"],
    ["--count", "2", "--connections", "5"],
    ["--count", "2", "--duration", "1"],
    ["--size", "0"],
])
def test_bad_options_exit_2(args: list[str]) -> None:
    result = cli("bench", f"{LOCALHOST}:9", *args)
    assert_one_line_error(result, 2)


@pytest.mark.timeout(120)
def test_thousands_of_connections_keep_time() -> None:
    """-c 2000 -t 2 -i 0.5 ends after about 2 s, each interval line at its due time (with
    a thread per connection it ran 17.9 s, its first line reading 0.0-17.8)."""
    server = ServeProcess("--port", "0", "--mode", "message", "--size", "1KiB",
                          "--max-clients", "2500")
    try:
        port = server.wait_listening()
        status, doc = bench_json(port, "--size", "1KiB", "-c", "2000", "-t", "2", "-i", "0.5")
    finally:
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(30)
    assert status == 0, doc["problems"]
    assert doc["connections_opened"] == 2000 and doc["errors"] == 0
    assert doc["messages"] > 0
    assert doc["duration_s"] <= 2.5, doc["duration_s"]
    ticks = [i for i in doc["intervals"] if i["end"] - i["start"] > 0.3]
    assert len(ticks) == 4, doc["intervals"]
    for k, i in enumerate(ticks, 1):
        assert abs(i["end"] - 0.5 * k) <= 0.25, doc["intervals"]


def _with_nofile(soft: int, hard: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return limit


def _bench_limited(port: int, soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytcpecho", "bench", f"{LOCALHOST}:{port}",
                           *args], capture_output=True, text=True, timeout=60,
                          preexec_fn=_with_nofile(soft, hard))


@pytest.mark.timeout(60)
def test_more_connections_than_fds_is_one_line_naming_the_limit() -> None:
    with running_server(mode="message", size=1024) as server:
        result = _bench_limited(server.address[1], 200, 200, "-c", "1000", "-t", "1")
        line = assert_one_line_error(result, 2)
        assert server.stats.total == 0  # refused before a single connection
    assert "1000 connections need about" in line and "RLIMIT_NOFILE 200" in line, line


@pytest.mark.timeout(60)
def test_bench_raises_its_soft_fd_limit_as_serve_does() -> None:
    raise_fd_limit(2000)
    with running_server(mode="message", size=1024) as server:
        result = _bench_limited(server.address[1], 200, 4096, "-c", "500", "-n", "1000",
                                "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["connections_opened"] == 500 and doc["messages"] == 1000


def test_threads_share_the_connections() -> None:
    with running_server(mode="message", size=1024) as server:
        status, doc = bench_json(server.address[1], "-c", "7", "--threads", "3", "-n", "70")
        assert status == 0, doc
        assert doc["messages"] == 70 and doc["connections_opened"] == 7
        assert server.wait(lambda s: s.total == 7 and s.bytes_out == 70 * 1024, 10)
    assert_one_line_error(cli("bench", f"{LOCALHOST}:9", "--threads", "0"), 2)


@pytest.mark.timeout(60)
def test_ctrl_c_prints_the_summary_so_far_then_exits_130() -> None:
    with running_server(mode="message", size=1024) as server:
        bench = ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "bench",
                                  f"{LOCALHOST}:{server.address[1]}", "-c", "4", "-t", "30",
                                  "-i", "0.2"])
        bench.wait_for(r"^\s+0\.0+-0\.2\d*\s")  # the first interval line
        bench.proc.send_signal(signal.SIGINT)
        assert bench.proc.wait(15) == 130
    out = bench.output()
    assert "Traceback" not in out
    lines = out.splitlines()
    interrupted = [line for line in lines if line.startswith("Interrupted after ")]
    assert interrupted, out
    assert float(interrupted[0].split()[2]) < 15
    assert any(line.startswith("Messages: ") for line in lines), out
    assert "Connections: 4 opened, 0 errors, 0 integrity failures" in out


@pytest.mark.timeout(60)
def test_ctrl_c_with_json_prints_the_document_so_far() -> None:
    with running_server(mode="message", size=1024) as server:
        bench = subprocess.Popen([sys.executable, "-m", "pytcpecho", "bench",
                                  f"{LOCALHOST}:{server.address[1]}", "-c", "2", "-t", "30",
                                  "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            assert server.wait(lambda s: s.active == 2 and s.bytes_out > 100 * 1024, 20)
            bench.send_signal(signal.SIGINT)
            out, err = bench.communicate(timeout=15)
        finally:
            bench.kill()
    assert bench.returncode == 130, err
    assert "Traceback" not in err
    doc = json.loads(out)
    assert doc["interrupted"] is True
    assert doc["messages"] > 100 and doc["errors"] == 0


# -- many machines: a result that merges, a common start, live metrics -------------------

def test_the_json_carries_what_merge_needs(core: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole histogram (its buckets count every message), when the load ran, and which
    pod of an Indexed Job made it."""
    with running_server(mode="message", size=1024, core=core) as server:
        before = time.time()
        result = cli("bench", f"{LOCALHOST}:{server.address[1]}", "--json", "--size", "1KiB",
                     "-c", "2", "-n", "300", "--core", core, env={"JOB_COMPLETION_INDEX": "3"})
        doc = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert (doc["format"], doc["index"]) == (1, 3)
    assert before <= doc["started_at"] <= doc["ended_at"] <= time.time()
    assert doc["ended_at"] - doc["started_at"] == pytest.approx(doc["duration_s"], abs=1e-3)
    histogram = Histogram.from_json(doc["histogram"])
    assert histogram.count == doc["messages"] == 300
    assert histogram.summary().p99 == pytest.approx(doc["latency_ms"]["p99"], abs=1e-4)
    assert histogram.min_ns == round(doc["latency_ms"]["min"] * 1e6) or \
        abs(histogram.min_ns / 1e6 - doc["latency_ms"]["min"]) < 1e-3


def test_start_at_connects_then_waits_for_the_moment() -> None:
    with running_server(mode="message", size=1024) as server:
        start = time.time() + 2.0
        with ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "bench",
                               f"{LOCALHOST}:{server.address[1]}", "--size", "1KiB", "-c", "3",
                               "-t", "0.5", "--start-at", f"{start:.3f}"]) as bench:
            bench.wait_for(r"^Waiting \d+\.\d s to start at \d{4}-\d\d-\d\dT[\d:.]+Z$")
            # Connected already, and not one message before the moment.
            assert server.wait(lambda st: st.active == 3, 10)
            assert server.stats.bytes_in == 0 and time.time() < start
            assert bench.proc.wait(30) == 0
            out = bench.output()
        assert "Messages: " in out
    with running_server(mode="message", size=1024) as server:
        start = time.time() + 1.0
        result = cli("bench", f"{LOCALHOST}:{server.address[1]}", "--json", "-c", "1",
                     "-t", "0.3", "--size", "1KiB", "--start-at",
                     datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
                     .strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # the waiting line went to stderr
    assert doc["started_at"] >= start and "Waiting" in result.stderr


@pytest.mark.parametrize(("value", "says"), [
    ("2020-01-01T00:00:00Z", "is 2"),  # ... seconds in the past
    ("soon", "give Unix time"),
    ("nan", "not a moment"),
])
def test_a_start_at_that_cannot_be_is_one_line(value: str, says: str) -> None:
    line = assert_one_line_error(cli("bench", f"{LOCALHOST}:9", "--start-at", value), 2)
    assert "argument --start-at: invalid time" in line and says in line, line


def test_metrics_port_shows_the_run_while_it_runs() -> None:
    with running_server(mode="message", size=1024) as server:
        port = unused_port()
        with ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "bench",
                               f"{LOCALHOST}:{server.address[1]}", "--size", "1KiB", "-c", "2",
                               "-t", "30", "--metrics-port", str(port)]) as bench:
            bench.wait_for(r"^\s+0\.0-1\.0 ")  # a second of load behind it

            def scrape() -> dict[str, float]:
                with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
                return {f"{s.name}{sorted(s.labels.items())}": s.value
                        for family in text_string_to_metric_families(text)
                        for s in family.samples}

            first = scrape()
            second = scrape()
            bench.proc.send_signal(signal.SIGINT)
            assert bench.proc.wait(30) == 130
        messages = "pytcpecho_bench_messages_total[]"
        assert 0 < first[messages] <= second[messages]
        assert first["pytcpecho_bench_bytes_total[]"] >= first[messages] * 1024
        assert first["pytcpecho_bench_errors_total[('kind', 'connection')]"] == 0
        assert first["pytcpecho_bench_errors_total[('kind', 'integrity')]"] == 0
        info = f"pytcpecho_bench_info[('mode', 'message'), ('size', '1024'), " \
               f"('target', '{LOCALHOST}:{server.address[1]}')]"
        assert first[info] == 1
        count = first["pytcpecho_bench_latency_seconds_count[]"]
        assert count == pytest.approx(first[messages], rel=0.01)
        assert first["pytcpecho_bench_latency_seconds_bucket[('le', '+Inf')]"] == count


def test_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_error(cli("bench", f"{LOCALHOST}:9", "--metrics-port",
                                         str(port)), 2)
    assert f"cannot serve metrics on *:{port}" in line, line
    line = assert_one_line_error(cli("bench", "--udp", f"{LOCALHOST}:9", "--metrics-port",
                                     "0"), 2)
    assert "--udp has none yet" in line
