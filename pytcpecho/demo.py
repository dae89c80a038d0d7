"""``pytcpecho demo``: the original exercise, replayed on this machine.

The report ran one server on port 8000 and clients that connected to it by
hostname; two clients ran at the same time, then one more.  Here the server
listens on a free port of localhost, and each party's lines are prefixed with
its name, as ``docker compose`` prints them.
"""

from __future__ import annotations

import logging
import sys
import threading

from .client import EchoClient, EchoError
from .constants import DEFAULT_SIZE
from .server import EchoServer

_print_lock = threading.Lock()


def _say(who: str, line: str) -> None:
    with _print_lock:
        print(f"{who:<8} | {line}", flush=True)


class _ServerLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say("server", record.getMessage())


def _client(name: str, host: str, port: int, core: str, results: list[bool]) -> None:
    client = EchoClient(host, port, size=DEFAULT_SIZE, core=core)
    _say(name, f"Connecting to {client.target}")
    try:
        result = client.run()
    except EchoError as exc:
        _say(name, f"error: {exc}")
        results.append(False)
        return
    _say(name, f"Sent {result.sent} bytes")
    _say(name, f"Received {result.received} bytes")
    if result.intact:
        _say(name, "Client finished.")
    else:
        _say(name, f"error: {result.problem}")
    results.append(result.intact)


def run_demo(core: str = "auto", mode: str = "message") -> bool:
    """Replay the original exercise; True when every client got its 102,400 bytes back intact."""
    logger = logging.getLogger("pytcpecho")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [_ServerLines()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    results: list[bool] = []
    try:
        with EchoServer(("localhost", 0), mode=mode, size=DEFAULT_SIZE, core=core) as server:
            serving = threading.Thread(target=server.serve_forever, name="demo-server")
            serving.start()
            host, port = "localhost", server.address[1]
            rounds = [["client1", "client2"], ["client1"]]
            for names in rounds:
                threads = [threading.Thread(target=_client, args=(n, host, port, core, results))
                           for n in names]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                server.wait(lambda s: s.active == 0, timeout=5)
            server.shutdown()
            serving.join()
            stats = server.stats
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    ok = len(results) == 3 and all(results)
    print(f"Demo {'passed' if ok else 'FAILED'}: {stats.total} clients, "
          f"{stats.bytes_out} bytes echoed, core {server.core.NAME}", file=sys.stdout)
    return ok
