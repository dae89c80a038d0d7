"""serve --workers N: every worker serves, a dead one is replaced, none outlives the supervisor,
and the supervisor's summary adds up every counter of the workers'."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from support import LOCALHOST, ServeProcess, assert_one_line_error, cli, connect, unused_port

from pytcpecho import EchoClient
from pytcpecho.serving import ServeOptions

pytestmark = pytest.mark.timeout(60)


def workers_of(supervisor: int) -> set[int]:
    """Live worker processes of this supervisor, found by their command line in /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"pytcpecho.supervisor" in argv and str(supervisor).encode() in argv and state != "Z":
            found.add(int(entry))
    return found


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for any process (not only a child) to exit: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def started(server: ServeProcess, count: int) -> tuple[int, dict[int, int]]:
    """The port and {worker number: pid} once ``count`` workers listen."""
    pids: dict[int, int] = {}
    ports = set()
    while len(ports) < count or len(pids) < count:
        m = server.wait_for(r"^Worker (\d+) started \(pid (\d+)\)$|^\[worker (\d+)\] Server at "
                            r"\[::\]:(\d+)", timeout=30)
        if m[1]:
            pids[int(m[1])] = int(m[2])
        else:
            ports.add((int(m[3]), int(m[4])))
    assert len({port for _, port in ports}) == 1, ports
    return ports.pop()[1], pids


def echo_many(port: int, n: int, size: int = 1024) -> None:
    for i in range(n):
        result = EchoClient(LOCALHOST, port, size=size, seed=i, timeout=10).run()
        assert result.intact, result.problem


@pytest.fixture
def supervisor() -> Iterator[ServeProcess]:
    with ServeProcess("--port", "0", "--workers", "3", "-q", "--grace", "5") as server:
        yield server
    for pid in workers_of(server.proc.pid):  # after a failure: PR_SET_PDEATHSIG ends them
        wait_gone(pid, 15)
    assert not workers_of(server.proc.pid), "a worker outlived its supervisor"


def served_by_worker(output: str) -> dict[int, int]:
    return {int(w): int(n) for w, n in
            re.findall(r"^\[worker (\d+)\] Served (\d+) connections?", output, re.M)}


def test_every_worker_serves_and_sigterm_stops_them_all(supervisor: ServeProcess) -> None:
    port, pids = started(supervisor, 3)
    assert len(set(pids.values())) == 3 and workers_of(supervisor.proc.pid) == set(pids.values())
    echo_many(port, 45)  # SO_REUSEPORT spreads them: each worker gets some
    assert supervisor.stop() == 0
    output = supervisor.output()
    served = served_by_worker(output)
    assert sorted(served) == [1, 2, 3] and all(n > 0 for n in served.values()), output
    assert re.search(r"^Served 45 connections, echoed 46080 bytes, 0 errors "
                     r"\(0 idle timeouts, 0 over --max-bytes, 0 refused\) in 3 workers$",
                     output, re.M), output
    assert not workers_of(supervisor.proc.pid)


def test_a_killed_worker_is_replaced(supervisor: ServeProcess) -> None:
    port, pids = started(supervisor, 3)
    os.kill(pids[2], signal.SIGKILL)
    supervisor.wait_for(rf"^Worker 2 \(pid {pids[2]}\) was killed by SIGKILL: starting a new one")
    new_pid = int(supervisor.wait_for(r"^Worker 2 started \(pid (\d+)\)$")[1])
    supervisor.wait_for(rf"^\[worker 2\] Server at \[::\]:{port} ")
    assert new_pid != pids[2]
    assert workers_of(supervisor.proc.pid) == {pids[1], new_pid, pids[3]}
    echo_many(port, 45)
    assert supervisor.stop() == 0
    output = supervisor.output()
    assert all(n > 0 for n in served_by_worker(output).values()), output
    assert re.search(r"^Served \d+ connections?, echoed \d+ bytes, 0 errors \(0 idle timeouts, "
                     r"0 over --max-bytes, 0 refused\) in 3 workers "
                     r"\(1 restarted, 1 lost their counters\)$", output, re.M), output


def test_workers_die_with_their_supervisor(supervisor: ServeProcess) -> None:
    _, pids = started(supervisor, 3)
    supervisor.proc.kill()  # no chance to stop them: PR_SET_PDEATHSIG must
    supervisor.proc.wait(10)
    for pid in pids.values():
        assert wait_gone(pid, 15), f"worker {pid} outlived its supervisor"
    assert not workers_of(supervisor.proc.pid)


def test_sigint_reaches_the_workers_once() -> None:
    """Ctrl-C in a terminal: workers sit in their own session, the supervisor forwards it."""
    with ServeProcess("--port", "0", "--workers", "2", "-q", "--grace", "5") as server:
        _, pids = started(server, 2)
        assert workers_of(server.proc.pid) == set(pids.values())
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(15) == 0
        output = server.output()
        assert "again" not in output, output
        assert output.count("Shutting down") == 2, output
    assert not workers_of(server.proc.pid)


def test_workers_on_a_taken_port_is_one_line_error() -> None:
    with socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True) as taken:
        port = taken.getsockname()[1]
        line = assert_one_line_error(cli("serve", "--port", str(port), "--workers", "2"), 2)
    assert f"cannot listen on *:{port}" in line


def test_workers_with_bad_options_is_one_line_error() -> None:
    result = cli("serve", "--port", "0", "--workers", "2", "--allow", "nonsense")
    assert "nonsense" in assert_one_line_error(result, 2)
    assert "Worker" not in result.stdout


def test_reuse_port_lets_two_servers_share_a_port() -> None:
    with ServeProcess("--port", "0", "--reuse-port") as first:
        port = first.wait_listening()
        with ServeProcess("--port", str(port), "--reuse-port") as second:
            assert second.wait_listening() == port
            echo_many(port, 4)
            assert second.stop() == 0
        assert first.stop() == 0


# -- the summary ------------------------------------------------------------------------

SUMMARY = (r"Served (\d+) connections?, echoed (\d+) bytes, (\d+) errors? "
           r"\((\d+) idle timeouts?, (\d+) over --max-bytes, (\d+) refused\)")


def read_to_the_end(sock: socket.socket) -> None:
    """Until the server closes the connection (a reset counts)."""
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass


def test_the_summary_adds_up_every_counter() -> None:
    """A refused client, an idle one and one over --max-bytes: each counted by the worker
    that met it, and all of them in the supervisor's line, in the one-process words."""
    with ServeProcess("--port", "0", "--workers", "2", "-q", "--grace", "5",
                      "--deny", "127.0.0.2/32", "--idle-timeout", "0.5",
                      "--max-bytes", "1000") as server:
        port, _ = started(server, 2)
        with socket.create_connection((LOCALHOST, port), timeout=10,
                                      source_address=("127.0.0.2", 0)) as refused:
            read_to_the_end(refused)
        server.wait_for(r"\] Refused client at \('127\.0\.0\.2', \d+\) \(not allowed\)$")
        with connect(port) as idle:
            read_to_the_end(idle)  # the server closes it after 0.5 s of nothing
        server.wait_for(r"\] Closed connection from .*: idle for 0\.5 s")
        with connect(port) as greedy:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                greedy.sendall(b"x" * 5000)
            read_to_the_end(greedy)
        server.wait_for(r"\] Closed connection from .*: it sent more than 1000 bytes$")
        echo_many(port, 4, size=100)
        assert server.stop() == 0
        output = server.output()
    workers = [tuple(map(int, m)) for m in re.findall(rf"^\[worker \d\] {SUMMARY}$",
                                                          output, re.M)]
    assert len(workers) == 2, output
    total = re.search(rf"^{SUMMARY} in 2 workers$", output, re.M)
    assert total, output
    sums = tuple(map(sum, zip(*workers, strict=True)))
    assert tuple(map(int, total.groups())) == sums, output
    connections, echoed, errors, idle, over, refused = sums
    assert (connections, errors, idle, over, refused) == (6, 0, 1, 1, 1), output
    assert echoed >= 4 * 100, output
    assert "(1 idle timeout, 1 over --max-bytes, 1 refused) in 2 workers" in output


def test_options_cross_to_a_worker_as_exactly_their_fields() -> None:
    options = ServeOptions(host="::1", port=8000, mode="message", size=1024, core="auto",
                           max_clients=7, idle_timeout=2.5, max_bytes=0,
                           allow=("10.0.0.0/8",), deny=(), grace=1.0, worker_idle=30.0,
                           reuse_port=True, verbose=1, quiet=False, log_format="json")
    assert ServeOptions.from_json(options.to_json()) == options
    fields = {f.name for f in dataclasses.fields(ServeOptions)}
    good = dataclasses.asdict(options)
    assert set(good) == fields
    for bad in ({**good, "report_stats": None}, {k: v for k, v in good.items() if k != "port"},
                {**good, "port": "8000"}, {**good, "quiet": 0}, {**good, "allow": "10/8"},
                {**good, "max_clients": True}):
        with pytest.raises(ValueError, match="serve options"):
            ServeOptions.from_dict(bad)
    assert ServeOptions.from_dict({**good, "grace": 2}).grace == 2.0  # JSON's 2 for 2.0


def test_workers_of_a_killed_supervisor_end_quietly(supervisor: ServeProcess) -> None:
    """Their counters have nobody to go to: each worker drains and ends, without a
    BrokenPipeError traceback for the report it could not send."""
    _, pids = started(supervisor, 3)
    supervisor.proc.kill()
    supervisor.proc.wait(10)
    for pid in pids.values():
        assert wait_gone(pid, 15), f"worker {pid} outlived its supervisor"
    output = supervisor.output()  # complete: every writer to the pipe has exited
    assert "Traceback" not in output and "Error" not in output, output
    assert len(re.findall(r"^\[worker \d\] Served 0 connections", output, re.M)) == 3, output


def test_ctrl_c_while_the_workers_start_is_quiet() -> None:
    """A worker still importing has no handler yet: what the supervisor forwards must stop
    it without a KeyboardInterrupt traceback, and the stop is still a clean one."""
    with ServeProcess("--port", "0", "--workers", "2", "-q") as server:
        server.wait_for(r"^Worker 2 started")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(30) == 0
        output = server.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.splitlines()[-1].startswith("Served 0 connections"), output


def metric(url: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` at ``url`` now."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families
    with urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name and not s.labels)


def test_metrics_of_every_worker_in_one_place() -> None:
    """serve --workers 3 --metrics-port: the supervisor serves the sum of its workers'
    counters, each reported every second, and a worker's count outlives the worker."""
    metrics_port = unused_port()
    with ServeProcess("--port", "0", "--workers", "3", "-q",
                      "--metrics-port", str(metrics_port)) as server:
        port, pids = started(server, 3)
        url = f"http://{LOCALHOST}:{metrics_port}/metrics"
        echo_many(port, 30, size=100)
        deadline = time.monotonic() + 10
        while metric(url, "pytcpecho_connections_total") < 30:
            assert time.monotonic() < deadline, "the workers' reports never added up to 30"
            time.sleep(0.1)  # polling a counter that a report updates every second
        assert metric(url, "pytcpecho_bytes_echoed_total") == 3000
        os.kill(pids[1], signal.SIGKILL)  # its last report stays counted
        server.wait_for(r"^Worker 1 started \(pid \d+\)$")
        echo_many(port, 6, size=100)
        deadline = time.monotonic() + 10
        while metric(url, "pytcpecho_connections_total") < 36:
            assert time.monotonic() < deadline, "the count went back after a worker died"
            time.sleep(0.1)  # as above
        assert metric(url, "pytcpecho_connections_total") == 36
        assert server.stop() == 0
