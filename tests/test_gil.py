"""The Cython core keeps the GIL released for the whole connection.

A child process runs an EchoServer next to a Python thread that spins forever,
with the switch interval raised to 0.5 s: any thread that needs the GIL waits
up to half a second for it, every time.  The Cython core needs it only to
accept and start a connection, so 200 round trips of 1 KiB on one connection
finish in a few seconds, while another connection sits idle in recv() (a core
that held the GIL there would freeze the whole server); the pure-Python core
needs it for every recv() and send(), so it manages only a handful of round
trips in 5 s.

The timed assertion has wide margins: the Cython core must do the 200
within 30 s, where a core that took the GIL for every recv() and send()
would need at least 200 * 0.5 s = 100 s.  The same holds for the UDP echo
loop on the same port: 200 datagrams echoed one after another.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LOCALHOST, connect, recv_exactly, require_cython

from pytcpecho import EchoClient
from pytcpecho import core as cores
from pytcpecho.pattern import make_base

SERVER_SCRIPT = """
import logging, os, sys, threading
from pytcpecho import EchoServer

logging.getLogger("pytcpecho.conn").setLevel(logging.WARNING)  # no per-message callback
server = EchoServer(("127.0.0.1", 0), mode="stream", core=sys.argv[1], udp=True, udp_rate=0)
threading.Thread(target=server.serve_forever, daemon=True).start()

def spin():
    while True:
        pass

threading.Thread(target=spin, daemon=True).start()
sys.setswitchinterval(0.5)
print(server.address[1], server.core.NAME, flush=True)
sys.stdin.read()  # until the test ends this process
os._exit(0)
"""

ROUND_TRIPS = 200
MESSAGE = 1024
BOUND_S = 30.0
WINDOW_S = 5.0
REPO = Path(__file__).resolve().parent.parent


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    assert box and box[0], f"the server process printed no port in {timeout} s"
    return box[0]


@contextlib.contextmanager
def busy_server(core: str, tmp_path: Path) -> Iterator[int]:
    """Port of a server on ``core`` in a process whose GIL a spinning thread holds."""
    script = tmp_path / "busy_server.py"
    script.write_text(SERVER_SCRIPT)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), core], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        port, name = _read_line(proc, 30).split()
        assert name == core
        yield int(port)
    finally:
        proc.kill()  # a clean exit would wait seconds for the GIL
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _round_trips_in_window(port: int) -> int:
    """Round trips of 1 KiB completed on one connection within WINDOW_S seconds."""
    rng = random.Random(7)
    done = 0
    with connect(port, timeout=30) as sock:
        deadline = time.monotonic() + WINDOW_S
        while time.monotonic() < deadline and done < ROUND_TRIPS:
            data = rng.randbytes(MESSAGE)
            sock.sendall(data)
            assert recv_exactly(sock, MESSAGE) == data
            if time.monotonic() <= deadline:
                done += 1
    return done


@pytest.mark.timeout(120)
def test_cython_core_serves_while_python_spins(tmp_path: Path) -> None:
    require_cython()
    with busy_server("cython", tmp_path) as port, connect(port, timeout=60) as idle:
        # A first connection, now idle: its session waits in recv().  Were the GIL held
        # there, no other thread of the server (accepting, serving) could ever run again.
        idle.sendall(b"!")
        assert recv_exactly(idle, 1) == b"!"
        started = time.perf_counter()
        result = EchoClient(LOCALHOST, port, size=MESSAGE, count=ROUND_TRIPS, mode="message",
                            core="cython", timeout=BOUND_S, seed=7).run()
        elapsed = time.perf_counter() - started
    print(f"\nGIL held by a spinning thread, switch interval 0.5 s: Cython core server did "
          f"{result.messages} round trips of {MESSAGE} B in {elapsed:.2f} s "
          f"(connect and first echo included; median round trip {result.latency.p50:.3f} ms, "
          f"slowest {result.latency.max:.0f} ms)")
    assert result.intact, result.problem
    assert result.messages == ROUND_TRIPS
    assert elapsed < BOUND_S, f"{ROUND_TRIPS} round trips took {elapsed:.1f} s"


@pytest.mark.timeout(120)
def test_cython_udp_loop_serves_while_python_spins(tmp_path: Path) -> None:
    require_cython()
    with busy_server("cython", tmp_path) as port, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOCALHOST, port))
        session = cores.load("cython").UdpClientSession(sock.fileno(), MESSAGE, make_base(7),
                                                        BOUND_S)
        started = time.perf_counter()
        intact = session.run(ROUND_TRIPS)  # one in flight at a time
        elapsed = time.perf_counter() - started
    print(f"\nGIL held by a spinning thread, switch interval 0.5 s: Cython core UDP loop "
          f"echoed {session.received} datagrams of {MESSAGE} B one after another in "
          f"{elapsed:.2f} s (slowest {session.latency_max_ns / 1e6:.1f} ms)")
    assert intact and session.received == ROUND_TRIPS
    assert elapsed < BOUND_S, f"{ROUND_TRIPS} datagrams took {elapsed:.1f} s"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_python_core_stalls_while_python_spins(tmp_path: Path) -> None:
    """The contrast: the same server on the pure-Python core, round trips counted for 5 s.

    On a machine overloaded by other processes the spinning thread, woken to
    take the GIL, may not get a CPU before the server thread takes it back,
    and the pure-Python core then runs unhindered for a while.  That says
    nothing about pytcpecho, so up to five fresh servers get a chance to show
    the stall (on a quiet machine the first one does).
    """
    figures = []
    for _ in range(5):
        with busy_server("python", tmp_path) as port:
            figures.append(_round_trips_in_window(port))
        print(f"\nGIL held by a spinning thread, switch interval 0.5 s: pure-Python core "
              f"server did {figures[-1]} round trips of {MESSAGE} B in {WINDOW_S:g} s")
        if figures[-1] < 50:
            break
    assert min(figures) < 50, f"round trips in {WINDOW_S:g} s: {figures}"
