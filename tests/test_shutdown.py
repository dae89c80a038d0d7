"""Graceful shutdown of ``pytcpecho serve`` on SIGTERM/SIGINT.

A 500 MiB transfer (500 verified round trips of 1 MiB, paced over a few
seconds so that the signal surely lands in the middle) runs while the
server is told to stop.  With a long grace it completes intact and the
server exits 0; with a short one the server ends it when the grace period
is over and exits 0.  That drain is timed by the server's own clock (the
timestamps of its JSON log lines, from "Shutting down" to "Grace period
over"), so neither the test's scheduling nor the interpreter's exit is in
the figure; the exit itself only has a generous wall-clock bound.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
from support import LOCALHOST, ServeProcess, require

from pytcpecho import core as cores
from pytcpecho.pattern import make_base
from pytcpecho.sockets import set_io_timeout

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20
MESSAGE = MIB
COUNT = 500  # 500 MiB in all
TOTAL = MESSAGE * COUNT


class Transfer:
    """500 MiB of verified round trips on one connection, in a thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        set_io_timeout(self.sock, 30)
        self.session = cores.load("auto").ClientSession(self.sock.fileno(), MESSAGE,
                                                        make_base(42), "message", 30.0)
        self.intact = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            # 10 ms apart: at least 5 s in all, so a signal lands mid-transfer.
            self.intact = bool(self.session.run(COUNT, 0.01))
        except OSError as exc:
            self.error = exc

    def wait_bytes(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.session.bytes_received < n:
            assert self.thread.is_alive(), "the transfer ended early"
            assert time.monotonic() < deadline, "the transfer did not start"
            time.sleep(0.01)

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the transfer did not end"
        self.sock.close()


def refused(port: int, timeout: float = 5) -> bool:
    """True once the port refuses connections (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOCALHOST, port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.01)
    return False


def test_sigterm_with_long_grace_completes_the_transfer() -> None:
    with ServeProcess("--port", "0", "--grace", "30", "-q") as server:
        port = server.wait_listening()
        transfer = Transfer(port)
        transfer.wait_bytes(50 * MIB)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"Shutting down: 1 connection in flight, up to 30 s to finish")
        assert refused(port), "still accepting after SIGTERM"
        assert transfer.thread.is_alive(), "the transfer was over before the check"
        transfer.join()
        status = server.proc.wait(30)
        output = server.output()
    assert transfer.error is None, transfer.error
    assert transfer.intact and transfer.session.bytes_received == TOTAL
    assert transfer.session.mismatch_offset == -1
    assert status == 0, output
    assert f"Served 1 connection, echoed {TOTAL} bytes, 0 errors" in output
    print(f"\nSIGTERM, --grace 30: {transfer.session.bytes_received} of {TOTAL} bytes "
          f"intact, exit {status}; {output.splitlines()[-1]}")


def log_time(server: ServeProcess, pattern: str, timeout: float = 30) -> datetime:
    """The server's own timestamp of its next JSON log line whose message matches."""
    while True:
        line = server.wait_for(r'^\{"time"', timeout).string
        entry = json.loads(line)
        if re.search(pattern, entry["message"]):
            return datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_short_grace_ends_the_transfer_and_exits_0_in_time(signum: int) -> None:
    grace = 1.0
    with ServeProcess("--port", "0", "--grace", str(grace), "-q",
                      "--log-format", "json") as server:
        port = int(server.wait_for(r"Server at .*:(\d+)").group(1))
        transfer = Transfer(port)
        transfer.wait_bytes(20 * MIB)
        server.proc.send_signal(signum)
        closed = log_time(server, r"^Shutting down: 1 connection in flight")
        over = log_time(server, r"^Grace period over: closing 1 connection$")
        served = log_time(server, r"^Served 1 connection, echoed \d+ bytes, 0 errors")
        status = server.proc.wait(30)
        transfer.join()
        output = server.output()
    assert status == 0, output
    drain = (over - closed).total_seconds()
    close = (served - over).total_seconds()
    # The server waits the grace period, no less (ms timestamps), and then not much more.
    assert grace - 0.002 <= drain <= grace + 2, f"drained for {drain:.3f} s (grace {grace} s)"
    assert close <= 2, f"closing the connection took {close:.3f} s"
    session = transfer.session
    assert not transfer.intact and session.bytes_received < TOTAL
    assert session.mismatch_offset == -1, "what did come back must be intact"
    print(f"\n{signal.Signals(signum).name}, --grace {grace:g}: drained {drain:.3f} s, then "
          f"closed in {close:.3f} s (server's clock); exit {status}; transfer ended at "
          f"{session.bytes_received} of {TOTAL} bytes, no mismatch")


@pytest.mark.parametrize(("workers", "second"), [("1", signal.SIGTERM), ("1", signal.SIGINT),
                                                 ("2", signal.SIGINT), ("2", signal.SIGTERM)])
def test_second_signal_exits_at_once(workers: str, second: int) -> None:
    """Quietly, from every process: one line saying so, no traceback (issue 12)."""
    with ServeProcess("--port", "0", "--grace", "30", "-q", "--workers", workers) as server:
        port = server.wait_listening()
        if workers != "1":
            server.wait_for(r"^\[worker \d\] Server at")  # both workers listen
        transfer = Transfer(port)
        transfer.wait_bytes(10 * MIB)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"Shutting down: 1 connection in flight")
        server.proc.send_signal(second)
        status = server.proc.wait(10)
        transfer.join()
        output = server.output()
    assert status == 1, output
    assert "SIGTERM again: exiting now" in output or "SIGINT again: exiting now" in output
    assert "Traceback" not in output and "Error" not in output, output


def _pid1_possible() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if os.geteuid() != 0:
        return "a PID namespace needs root"
    return None


def test_sigterm_works_when_the_server_is_pid_1() -> None:
    """In a new PID namespace the server is init: signals without a handler are ignored."""
    reason = _pid1_possible()
    if reason:
        require(reason, f"CI must test PID 1: {reason}")
    cmd = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "pytcpecho",
           "serve", "--port", "0"]
    with ServeProcess(cmd=cmd) as server:
        port = server.wait_listening()
        with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
            (child,) = (int(p) for p in f.read().split())
        with open(f"/proc/{child}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        assert nspid[-1] == "1", f"the server is not PID 1 in its namespace: {nspid}"
        ping = subprocess.run([sys.executable, "-m", "pytcpecho", "ping", f"{LOCALHOST}:{port}"],
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stderr
        os.kill(child, signal.SIGTERM)
        status = server.proc.wait(15)
        output = server.output()
    assert status == 0, output
    assert "Shutting down: 0 connections in flight" in output
    assert "Served 1 connection" in output
    print(f"\nPID 1 (NSpid {' '.join(nspid[1:])}): SIGTERM -> exit {status}; "
          f"{output.splitlines()[-1]}")
