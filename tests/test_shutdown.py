"""Issue 4, graceful shutdown of ``pytcpecho serve`` on SIGTERM/SIGINT.

A 500 MiB transfer (500 verified round trips of 1 MiB, paced over a few
seconds so that the signal surely lands in the middle) runs while the
server is told to stop.  With a long grace it completes intact and the
server exits 0; with a short one the server ends it and exits 0 within
grace + 1 s (the one timed bound, asked for by the issue).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_short_grace_ends_the_transfer_and_exits_0_in_time(signum: int) -> None:
    grace = 1.0
    with ServeProcess("--port", "0", "--grace", str(grace), "-q") as server:
        port = server.wait_listening()
        transfer = Transfer(port)
        transfer.wait_bytes(20 * MIB)
        signalled = time.monotonic()
        server.proc.send_signal(signum)
        status = server.proc.wait(grace + 10)
        took = time.monotonic() - signalled
        transfer.join()
        output = server.output()
    assert status == 0, output
    assert took <= grace + 1, f"exited {took:.2f} s after the signal (grace {grace} s)"
    assert "Grace period over: closing 1 connection" in output
    session = transfer.session
    assert not transfer.intact and session.bytes_received < TOTAL
    assert session.mismatch_offset == -1, "what did come back must be intact"
    print(f"\n{signal.Signals(signum).name}, --grace {grace:g}: exit {status} after "
          f"{took:.2f} s; transfer ended at {session.bytes_received} of {TOTAL} bytes, "
          f"no mismatch")


def test_second_signal_exits_at_once() -> None:
    with ServeProcess("--port", "0", "--grace", "30", "-q") as server:
        port = server.wait_listening()
        transfer = Transfer(port)
        transfer.wait_bytes(10 * MIB)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"Shutting down")
        server.proc.send_signal(signal.SIGTERM)
        status = server.proc.wait(10)
        transfer.join()
        output = server.output()
    assert status == 1, output
    assert "SIGTERM again: exiting now" in output


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
