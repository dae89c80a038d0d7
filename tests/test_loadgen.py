"""``pytcpecho bench``: real servers, short runs; the numbers must add up."""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fakes import echo_then, fake_server, flipping_echo, stalling_echo, stalling_once
from support import (
    LOCALHOST,
    ServeProcess,
    assert_one_line_error,
    cli,
    raise_fd_limit,
    running_server,
)

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
