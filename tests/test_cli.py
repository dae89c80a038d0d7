"""The ``pytcpecho`` command: help, versions, bad input, and each subcommand's output.

Argument errors are checked in-process (``cli.main``, fast); everything that
runs a server, a client or the entry points goes through a real process.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import closed_port, echo_held_back, fake_server, flipping_echo
from support import LOCALHOST, ServeProcess, assert_one_line_error, cli, require, running_server

from pytcpecho import EchoClient, EchoError, EchoServer, __version__, supervisor
from pytcpecho import core as cores
from pytcpecho.cli import COMMANDS, build_parser, main
from pytcpecho.constants import WORKERS_PER_CPU
from pytcpecho.loadgen import BenchConfig

SUBCOMMANDS = ("serve", "mesh", "client", "ping", "demo", "bench", "merge")


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``pytcpecho ARGS`` in this process, as a CompletedProcess."""
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["pytcpecho", *args], status, out, err)


# -- help and version -------------------------------------------------------------------

def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(rf"pytcpecho {re.escape(__version__)} \(core: (cython|python)\)\n",
                        result.stdout)


def test_every_command_is_registered() -> None:
    assert len(COMMANDS) == len(SUBCOMMANDS)
    result = cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(capsys, command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: pytcpecho {command}")
    assert ("--core" in result.stdout) == (command != "merge")  # merge runs no echo loop
    assert result.stderr == ""


def test_python_m_pytcpecho() -> None:
    result = subprocess.run([sys.executable, "-m", "pytcpecho", "client", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: pytcpecho client")


def test_console_script() -> None:
    exe = shutil.which("pytcpecho")
    if exe is None:
        require("the package is not installed here (no pytcpecho on PATH)",
                "the pytcpecho console script is not installed")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("pytcpecho ")


# -- bad input: exit 2, one line ------------------------------------------------------------

BAD_INPUT = [
    # no or unknown command, unknown option, missing target
    (), ("bogus",), ("client",), ("client", "h", "--bogus"), ("ping",),
    # sizes
    ("client", "h", "--size", "0"), ("client", "h", "--size", "-1"),
    ("client", "h", "--size", "abc"), ("client", "h", "--size", "1.5"),
    ("client", "h", "--size", "1.1k"), ("client", "h", "--size", ""),
    ("ping", "h", "--size", "0"), ("serve", "--size", "0"), ("serve", "--size", "x"),
    ("serve", "--max-bytes", "lots"),
    # more than one run may move (1 EiB): 64-bit offsets must not overflow
    ("client", "h", "--size", "2000000TiB"), ("serve", "--max-bytes", "2000000TiB"),
    ("client", "h", "--count", str(2**61)), ("client", "h", "--count", str(2**64)),
    ("client", "h", "--mode", "stream", "--size", "1TiB", "--count", "8388608"),
    ("bench", "h", "--mode", "stream", "--size", "1TiB", "-n", "8388608"),
    # ports and hosts
    ("serve", "--port", "70000"), ("serve", "--port", "-1"), ("serve", "--port", "x"),
    ("client", "h:0"), ("client", "h:65536"), ("client", "h:x"), ("client", "h:"),
    ("client", ":8000"), ("client", ""), ("client", "[::1]x"), ("client", "[::1"),
    ("client", "[nope]:80"), ("client", "a:b:c"), ("ping", "h:99999"),
    # counts
    ("client", "h", "--count", "0"), ("client", "h", "--count", "-3"),
    ("client", "h", "--count", "x"), ("client", "h", "--count", "1.5"),
    ("ping", "h", "-c", "0"), ("serve", "--max-clients", "0"), ("ping", "h", "-i", "0"),
    ("ping", "h", "-i", "x"), ("client", "h", "-i", "0"), ("client", "h", "--json", "-i", "1"),
    # timeouts
    ("client", "h", "--timeout", "0"), ("client", "h", "--timeout", "-1"),
    ("client", "h", "--timeout", "x"), ("client", "h", "--timeout", "inf"),
    ("client", "h", "--timeout", "nan"), ("ping", "h", "--timeout", "0"),
    ("serve", "--idle-timeout", "0"), ("serve", "--grace", "-1"),
    # too long for the platform's timers (time_t, poll()'s int milliseconds)
    ("client", "h", "--timeout", "1e10"), ("client", "h", "--timeout", "3000000"),
    ("ping", "h", "--timeout", "1e300"), ("serve", "--idle-timeout", "1e10"),
    ("serve", "--grace", "1e10"),
    # choices and seeds
    ("client", "h", "--mode", "bogus"), ("serve", "--mode", "bogus"),
    ("serve", "--core", "rust"), ("demo", "--core", "rust"), ("client", "h", "--seed", "x"),
]


@pytest.mark.parametrize("args", BAD_INPUT, ids=lambda a: " ".join(a) or "(nothing)")
def test_bad_input_is_one_line(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    if args[:1] in (("serve",), ("demo",)):
        # In a child: if the input were wrongly accepted, a server would run (and be killed).
        result = cli(*args, timeout=30)
    else:
        result = run_main(capsys, *args)
    line = assert_one_line_error(result, 2)
    assert line.startswith("pytcpecho"), line


@pytest.mark.parametrize("args", [
    ("client", "h", "--size", "0"),
    ("client", "h:0"),
    ("ping", "h", "--count", "x"),
    ("serve", "--idle-timeout", "nan"),
])
def test_bad_input_from_a_real_process(args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(*args), 2)


def test_serve_on_a_port_in_use() -> None:
    holder, port = closed_port()
    with holder:
        holder.listen(1)
        line = assert_one_line_error(cli("serve", "--host", LOCALHOST, "--port", str(port)), 2)
    assert line.startswith(f"pytcpecho serve: error: cannot listen on 127.0.0.1:{port}: "), line


@pytest.mark.parametrize("args", [
    ("--host", "no-such-host.invalid"),
    ("--allow", "not-a-network"),
    ("--deny", "10.0.0.0/33"),
])
def test_serve_bad_address_or_network(args: tuple[str, ...]) -> None:
    assert_one_line_error(cli("serve", "--port", "0", *args), 2)


# -- the Cython core when it is missing ---------------------------------------------------

WITHOUT_CYTHON = (
    "import sys; sys.modules['pytcpecho._core'] = None; "  # as if the extension was not built
    "from pytcpecho import core; from pytcpecho.cli import main; "
    "assert not core.cython_available() and core.default.NAME == 'python'; "
    "sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("args", [
    ("client", "127.0.0.1:1", "--core", "cython"),
    ("ping", "127.0.0.1:1", "--core", "cython"),
    ("bench", "127.0.0.1:1", "--core", "cython"),
    ("serve", "--port", "0", "--core", "cython"),
    ("demo", "--core", "cython"),
    ("client", "127.0.0.1:1", "--core", "splice"),
    ("bench", "127.0.0.1:1", "--core", "splice"),
])
def test_a_core_that_is_not_built_is_one_line_naming_core(args: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_CYTHON, *args], capture_output=True,
                            text=True, timeout=60)
    line = assert_one_line_error(result, 2)
    assert "argument --core: the " in line, line
    assert "Cython core is not built" in line or "splice core needs" in line, line


def test_without_cython_auto_falls_back_to_python() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_CYTHON, "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip().endswith("(core: python)")


def test_cores_load_semantics() -> None:
    assert cores.load("python").NAME == "python"
    assert cores.load("auto") is cores.default
    with pytest.raises(ValueError, match="unknown core"):
        cores.load("rust")
    if cores.cython_available():
        assert cores.load("cython").NAME == "cython"
    else:
        with pytest.raises(RuntimeError, match="not built"):
            cores.load("cython")


SWITCH_ON = ("1", "true", "yes", "on", "TRUE", "Yes", "ON")
SWITCH_OFF = ("", "0", "false", "no", "off", "False", "NO", "Off")


@pytest.mark.parametrize("value", SWITCH_ON + SWITCH_OFF)
def test_pure_python_switch(value: str) -> None:
    result = cli("--version", env={"PYTCPECHO_PURE_PYTHON": value})
    assert result.returncode == 0, result
    compiled = "cython" if cores.cython_available() else "python"
    want = "python" if value in SWITCH_ON else compiled
    assert result.stdout.strip().endswith(f"(core: {want})")


@pytest.mark.parametrize("value", ["banana", "2", "-1", "y", "enabled", "of"])
@pytest.mark.parametrize("command", [("--version",), ("ping", "127.0.0.1:1"),
                                     ("serve", "--port", "0")])
def test_a_bad_pure_python_switch_is_one_line(value: str, command: tuple[str, ...]) -> None:
    """Not a silent choice of core: one line naming the variable and what it takes."""
    result = cli(*command, env={"PYTCPECHO_PURE_PYTHON": value}, timeout=30)
    line = assert_one_line_error(result, 2)
    assert line.startswith(f"pytcpecho: error: PYTCPECHO_PURE_PYTHON={value!r} "), line
    assert "1, true, yes or on" in line and "0, false, no, off" in line, line
    assert result.stdout == ""


def test_pure_python_switch_runs_the_python_core() -> None:
    """The switch decides which core moves the bytes, not only what --version says."""
    with running_server(mode="message", size=64) as server:
        target = f"127.0.0.1:{server.address[1]}"
        on = cli("bench", target, "--size", "64", "-c", "1", "-n", "20", "--json",
                 env={"PYTCPECHO_PURE_PYTHON": "1"})
        off = cli("bench", target, "--size", "64", "-c", "1", "-n", "20", "--json",
                  env={"PYTCPECHO_PURE_PYTHON": "0"})
    assert on.returncode == 0 and off.returncode == 0, (on, off)
    ran_on, ran_off = json.loads(on.stdout), json.loads(off.stdout)
    assert ran_on["core"] == "python" and ran_on["messages"] == 20
    assert ran_off["core"] == ("cython" if cores.cython_available() else "python")


# -- client, ping, demo ------------------------------------------------------------------

def test_client_lines_in_the_seeds_words(core: str, mode: str) -> None:
    with running_server(mode=mode) as server:
        port = server.address[1]
        result = cli("client", f"127.0.0.1:{port}", "--core", core)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"Connecting to 127.0.0.1:{port}"
    assert lines[1] == "Sent 102400 bytes"
    assert lines[2] == "Received 102400 bytes"
    assert re.fullmatch(r"Echo intact in \d+\.\d{3} ms, \d+\.\d MiB/s", lines[3]), lines[3]
    assert lines[4] == "Client finished."
    assert len(lines) == 5
    assert result.stderr == ""


@pytest.mark.parametrize("args", [("--mode", "stream", "--size", "1TiB"),
                                  ("--size", "1MiB", "--count", "1000000")])
def test_ctrl_c_stops_the_client_mid_transfer(core: str, args: tuple[str, ...]) -> None:
    """A loop that never blocks never sees EINTR: Ctrl-C must still end it at once."""
    with running_server(mode="stream") as server, \
            ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "client",
                              f"127.0.0.1:{server.address[1]}", "--core", core, *args]) as client:
        client.wait_for(r"^Connecting to ")
        assert server.wait(lambda s: s.bytes_out > 0, 10)  # the echo is flowing
        client.proc.send_signal(signal.SIGINT)
        assert client.proc.wait(timeout=10) == 130


def test_client_json(core: str) -> None:
    with running_server(mode="message", size=1000) as server:
        port = server.address[1]
        result = cli("client", f"127.0.0.1:{port}", "--size", "1000", "--count", "5",
                     "--seed", "7", "--json", "--core", core)
    assert result.returncode == 0, result
    assert result.stderr == ""
    doc = json.loads(result.stdout)  # nothing but the document on stdout
    assert doc["target"] == doc["peer"] == f"127.0.0.1:{port}"
    assert (doc["mode"], doc["size"], doc["count"], doc["seed"]) == ("message", 1000, 5, 7)
    assert doc["bytes_sent"] == doc["bytes_received"] == 5000
    assert doc["messages"] == 5 and doc["intact"] is True and doc["problem"] is None
    lat = doc["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert doc["duration_s"] > 0 and doc["mib_per_s"] > 0


def test_client_json_not_intact_and_unreachable() -> None:
    with fake_server(flipping_echo(500)) as port:
        bad = cli("client", f"127.0.0.1:{port}", "--size", "1000", "--json")
    assert bad.returncode == 1, bad
    doc = json.loads(bad.stdout)
    assert doc["intact"] is False and doc["bytes_received"] == 500
    assert doc["problem"].startswith("echo differs from what was sent at byte 500 "), doc
    holder, closed = closed_port()
    with holder:
        unreachable = cli("client", f"127.0.0.1:{closed}", "--json")
    assert_one_line_error(unreachable, 3)
    assert unreachable.stdout == ""


def test_client_interval_prints_progress() -> None:
    """A long check says how far it got while it runs."""
    release = threading.Event()
    with fake_server(echo_held_back(1 << 20, release)) as port, \
            ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "client", f"127.0.0.1:{port}",
                              "--mode", "stream", "--size", "4MiB", "-i", "0.1"]) as client:
        try:
            line = client.wait_for(r"^ +\d+\.\d s  (\d+) of 4194304 bytes back intact, "
                                   r"\d+\.\d MiB/s$")
            assert int(line[1]) == 1 << 20  # all the server let through, so far
        finally:
            release.set()
        assert client.proc.wait(timeout=30) == 0
        client.wait_for(r"^Client finished\.$")


def first_line_then_closed(*args: str, timeout: float) -> str:
    """``pytcpecho ARGS | head -1``: the first line; then, its stdout closed, the command
    must end with the status of a SIGPIPE and nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "pytcpecho", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        proc.stdout.close()  # what head does after its one line
        assert proc.wait(timeout=timeout) == 128 + signal.SIGPIPE
        assert proc.stderr.read() == ""
        return line
    finally:
        proc.kill()
        proc.wait()


def test_output_to_a_closed_pipe_ends_quietly() -> None:
    """`pytcpecho ping HOST -c 1000 | head -1`: no traceback, the status of a SIGPIPE."""
    with running_server() as server:
        line = first_line_then_closed("ping", f"127.0.0.1:{server.address[1]}", "-c", "1000",
                                      "-i", "0.01", timeout=30)
    assert ": intact, time=" in line


def test_server_whose_log_pipe_closes_serves_on() -> None:
    """`pytcpecho serve | head -1`: one line on stderr, then serving as before."""
    proc = subprocess.Popen([sys.executable, "-m", "pytcpecho", "serve", "--host", LOCALHOST,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = int(re.search(r":(\d+)", proc.stdout.readline())[1])  # type: ignore[index]
        proc.stdout.close()
        for _ in range(3):  # each logs lines into the closed pipe
            result = EchoClient(LOCALHOST, port).run()
            assert result.intact, result.problem
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ("pytcpecho: log output closed (broken pipe); "
                                      "serving on without it\n")
    finally:
        proc.kill()
        proc.wait()


def test_client_count_prints_round_trips() -> None:
    with running_server(mode="message", size=4096) as server:
        result = cli("client", f"127.0.0.1:{server.address[1]}", "--size", "4KiB",
                     "--count", "50", "--seed", "3")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[1:3] == ["Sent 204800 bytes", "Received 204800 bytes"]
    assert re.fullmatch(r"Round trips min/avg/p99/max = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms, "
                        r"[\d.]+ MiB/s", lines[3]), lines[3]
    assert lines[4] == "Client finished."


def test_ping(core: str) -> None:
    with running_server() as server:
        port = server.address[1]
        result = cli("ping", f"127.0.0.1:{port}", "-c", "3", "--core", core)
        assert server.wait(lambda s: s.total == 3, 10)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    for line in lines[:3]:
        assert re.fullmatch(rf"64 bytes from 127\.0\.0\.1:{port}: intact, time=\d+\.\d{{3}} ms",
                            line), line
    times = [float(line.rsplit("=", 1)[1].split()[0]) for line in lines[:3]]
    summary = re.fullmatch(rf"3 pings to 127\.0\.0\.1:{port}, all intact: time min/avg/max = "
                           r"(\d+\.\d{3})/(\d+\.\d{3})/(\d+\.\d{3}) ms", lines[3])
    assert summary, lines[3]
    assert float(summary[1]) == min(times) and float(summary[3]) == max(times)


def test_ping_interval_paces_the_pings() -> None:
    with running_server() as server:
        started = time.monotonic()
        result = cli("ping", f"127.0.0.1:{server.address[1]}", "-c", "3", "-i", "0.3")
        took = time.monotonic() - started
        assert server.wait(lambda s: s.total == 3, 10)
    assert result.returncode == 0, result
    assert took >= 0.6  # two pauses between three pings
    assert result.stdout.count(": intact, time=") == 3


def test_ping_closed_port() -> None:
    holder, port = closed_port()
    with holder:
        result = cli("ping", f"127.0.0.1:{port}")
    assert_one_line_error(result, 3)
    assert result.stdout == ""


@pytest.mark.parametrize(("core", "mode"), [("auto", "message"), ("python", "stream")])
def test_demo(core: str, mode: str) -> None:
    result = cli("demo", "--core", core, "--mode", mode)
    assert result.returncode == 0, result
    out = result.stdout
    assert out.count("Client finished.") == 3
    assert re.search(r"^server +\| Server at .+:\d+$", out, re.M)
    for name, n in (("client1", 2), ("client2", 1)):
        assert len(re.findall(rf"^{name} +\| Connecting to localhost:\d+$", out, re.M)) == n
        assert len(re.findall(rf"^{name} +\| Sent 102400 bytes$", out, re.M)) == n
        assert len(re.findall(rf"^{name} +\| Received 102400 bytes$", out, re.M)) == n
    assert len(re.findall(r"^server +\| Connected by client at \('[\d.:]+', \d+\)$",
                          out, re.M)) == 3
    assert len(re.findall(r"^server +\| Connection closed by client at ", out, re.M)) == 3
    if mode == "message":
        assert out.count("server   | Received 102400 bytes") == 3
        assert out.count("server   | Data sent back to client") == 3
    assert re.search(r"^Demo passed: 3 clients, 307200 bytes echoed, core \w+$", out, re.M)


def test_serve_quiet_has_no_connection_lines() -> None:
    with ServeProcess("--host", LOCALHOST, "--port", "0", "--mode", "message", "-q") as serve:
        port = serve.wait_listening()
        assert cli("client", f"127.0.0.1:{port}").returncode == 0
        assert cli("ping", f"127.0.0.1:{port}").returncode == 0
        assert serve.stop() == 0
        out = serve.output()
    assert "Served 2 connections" in out
    assert "Connected by" not in out and "Received" not in out and "closed by" not in out


@pytest.mark.parametrize("args", [
    ("client", "127.0.0.1:1", "--timeout", "5e-7"),
    ("ping", "127.0.0.1:1", "--timeout", "1e-9"),
    ("bench", "127.0.0.1:1", "--timeout", "1e-9"),
    ("serve", "--port", "0", "--idle-timeout", "1e-9"),
    ("serve", "--port", "0", "--grace", "0.0001"),
    ("ping", "127.0.0.1:1", "-i", "1e-9"),
    ("client", "127.0.0.1:1", "-i", "0.001"),
    ("bench", "127.0.0.1:1", "-i", "0.005"),
])
def test_durations_too_short_to_keep_are_refused(args: tuple[str, ...]) -> None:
    """A timeout below the millisecond the kernel's timers keep would round to 'no
    timeout' (a hang), and a reporting interval below 10 ms is a flood: both are one
    line with the floor, exit 2, not silently something else."""
    line = assert_one_line_error(cli(*args), 2)
    assert "at least 0.0" in line and args[-1] in line


@pytest.mark.parametrize(("make", "what"), [
    (lambda: EchoClient("127.0.0.1", 1, timeout=5e-7), "timeout"),
    (lambda: EchoServer(("127.0.0.1", 0), idle_timeout=1e-9), "idle_timeout"),
    (lambda: BenchConfig("127.0.0.1", 1, timeout=1e-9).check(), "timeout"),
    (lambda: BenchConfig("127.0.0.1", 1, interval=1e-9).check(), "interval"),
])
def test_the_api_refuses_them_too(make: Callable[[], object], what: str) -> None:
    with pytest.raises(ValueError, match=f"^{what} must be 0.0"):
        make()


HOSTILE_HOSTS = ["a..b", ".", "a" * 64 + ".example", "\udcff"]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
@pytest.mark.parametrize("command", [("client",), ("client", "--json"), ("ping",), ("bench",)])
def test_a_host_that_is_no_host_name_is_one_line(command: tuple[str, ...], host: str) -> None:
    """The idna codec refuses these (an empty or 64-character label, a lone dot, a byte
    that is not UTF-8): one line naming the host, exit 3 as for any host out of reach."""
    line = assert_one_line_error(cli(command[0], host, *command[1:], "-t" if command[0] ==
                                     "bench" else "--timeout", "1"), 3)
    assert "cannot resolve host" in line and "not a valid host name" in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_host_that_is_no_host_name(workers: str) -> None:
    line = assert_one_line_error(cli("serve", "--port", "0", "--host", "a..b",
                                     "--workers", workers), 2)
    assert "cannot resolve host 'a..b': not a valid host name" in line


def test_the_api_says_echoerror_for_it() -> None:
    with pytest.raises(EchoError, match="not a valid host name"):
        EchoClient("a..b", 1).run()
    with pytest.raises(ValueError, match="not a valid host name"):
        EchoServer(("a..b", 0))


def test_serve_host_in_brackets_as_for_clients() -> None:
    require(None if socket.has_ipv6 else "no IPv6 here", "CI must test IPv6")
    with ServeProcess("--host", "[::1]", "--port", "0", "-q") as server:
        port = server.wait_listening()
        ping = cli("ping", f"[::1]:{port}")
        assert ping.returncode == 0, ping.stderr


# -- issue 12: every bad input is one line naming the option, in its command's name ------

HUGE = "9" * 5000


@pytest.mark.parametrize("args", [
    ("client", "h", "--size", HUGE), ("client", "h", "--count", HUGE),
    ("client", "h", "--seed", HUGE), ("client", "h", "--seed", "-" + HUGE),
    ("client", f"h:{HUGE}"), ("client", "h", "--timeout", HUGE),
    ("ping", "h", "-c", HUGE), ("ping", "h", "--size", HUGE), ("ping", "h", "-i", HUGE),
    ("bench", "h", "-c", HUGE), ("bench", "h", "-n", HUGE), ("bench", "h", "--seed", HUGE),
    ("bench", "h", "--size", HUGE),
    ("serve", "--port", HUGE), ("serve", "--size", HUGE), ("serve", "--max-clients", HUGE),
    ("serve", "--max-bytes", HUGE), ("serve", "--workers", HUGE), ("serve", "--mode", HUGE),
    ("serve", "--grace", HUGE),
], ids=lambda a: " ".join(x[:12] for x in a))
def test_a_5000_digit_value_is_too_large_in_a_short_line(args: tuple[str, ...]) -> None:
    """Not Python's advice about sys.set_int_max_str_digits(), nor the value in full."""
    line = assert_one_line_error(cli(*args, timeout=30), 2)
    assert line.startswith(f"pytcpecho {args[0]}: error: "), line
    assert "set_int_max_str_digits" not in line and len(line) < 300, line
    assert "(5000 characters)" in line or "(5001 characters)" in line, line
    assert re.search(r": (too large|at most|invalid choice)", line), line


def test_a_5000_digit_switch_value_is_shortened_too() -> None:
    line = assert_one_line_error(cli("--version", env={"PYTCPECHO_PURE_PYTHON": HUGE}), 2)
    assert "(5000 characters) is not a switch value" in line and len(line) < 300, line


@pytest.mark.parametrize(("option", "value"), [("--allow", "abc"), ("--deny", "10.0.0.0/33"),
                                               ("--allow", "::1/129")])
def test_a_bad_network_names_its_option(option: str, value: str) -> None:
    line = assert_one_line_error(cli("serve", "--port", "0", option, value, timeout=30), 2)
    assert line.startswith(f"pytcpecho serve: error: argument {option}: invalid network "
                           f"{value!r}: "), line


def test_an_unknown_top_level_option_is_named() -> None:
    line = assert_one_line_error(cli("--bogus"), 2)
    assert line.startswith("pytcpecho: error: unrecognized arguments: '--bogus'"), line
    assert "command" not in line, line


def test_no_command_asks_for_one() -> None:
    line = assert_one_line_error(cli(), 2)
    assert "a command is required: serve, mesh, client, ping, demo, bench" in line, line


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("client", "h"), ("ping", "h"),
                                     ("demo",), ("bench", "h"), ("mesh", "--peers", "h")])
def test_an_unknown_option_is_the_subcommands_error(command: tuple[str, ...]) -> None:
    line = assert_one_line_error(cli(*command, "--bogus", timeout=30), 2)
    assert line.startswith(f"pytcpecho {command[0]}: error: unrecognized arguments: "
                           "'--bogus'"), line


def test_workers_that_cannot_serve_the_mode_are_one_line_before_any_starts() -> None:
    result = cli("serve", "--port", "0", "--workers", "2", "--mode", "message",
                 "--core", "splice", timeout=30)
    line = assert_one_line_error(result, 2)
    assert line.startswith("pytcpecho serve: error: argument --core: "), line
    assert result.stdout == ""  # no supervisor line, no worker started


def test_demo_on_a_core_that_cannot_serve_the_mode_is_one_line() -> None:
    result = cli("demo", "--core", "splice", timeout=30)
    line = assert_one_line_error(result, 2)
    assert line.startswith("pytcpecho demo: error: argument --core: "), line
    assert result.stdout == ""


def test_workers_have_an_upper_bound() -> None:
    most, cpus = supervisor.max_workers()
    assert most == WORKERS_PER_CPU * cpus
    assert "at most" in assert_one_line_error(cli("serve", "--port", "0", "--workers",
                                                  str(most + 1), timeout=30), 2)
    line = assert_one_line_error(cli("serve", "--port", "0", "--workers", "1000"), 2)
    assert line == (f"pytcpecho serve: error: argument --workers: invalid count 1000: at most "
                    f"{most} ({WORKERS_PER_CPU} per CPU, {cpus} CPU{'s' * (cpus != 1)} here) "
                    "(see --help)"), line
    assert f"at most {WORKERS_PER_CPU} per CPU" in " ".join(cli("serve", "--help").stdout.split())


# -- issue 12: quiet endings ------------------------------------------------------------

def test_demo_to_a_closed_pipe_ends_quietly() -> None:
    """`pytcpecho demo | head -1`: every thread's line finds stdout gone; none may say so
    with a traceback, and the status is a SIGPIPE's, as for the other commands."""
    assert first_line_then_closed("demo", timeout=60)


def test_ctrl_c_stops_ping_with_the_summary_so_far() -> None:
    """As iputils ping: the statistics of the pings done, then the status of a SIGINT."""
    with running_server() as server, \
            ServeProcess(cmd=[sys.executable, "-m", "pytcpecho", "ping",
                              f"127.0.0.1:{server.address[1]}", "-c", "100", "-i", "0.2"]) as ping:
        ping.wait_for(": intact, time=")
        ping.wait_for(": intact, time=")
        ping.proc.send_signal(signal.SIGINT)
        assert ping.proc.wait(timeout=30) == 130
        lines = ping.output().splitlines()
    done = sum(": intact, time=" in line for line in lines)
    assert done >= 2 and "Traceback" not in "\n".join(lines), lines
    assert re.fullmatch(rf"{done} pings to 127\.0\.0\.1:\d+ \(interrupted, {done} of 100\), "
                        r"all intact: time min/avg/max = [\d.]+/[\d.]+/[\d.]+ ms", lines[-1]), lines


def test_the_readme_documents_every_option() -> None:
    """Each long option of each command is named in the README: an option added without
    a word there fails here."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {option}" for name, command in sub.choices.items()
               for action in command._actions for option in action.option_strings
               if option.startswith("--") and option != "--help"
               and f"`{option}" not in readme]
    assert not missing, missing
