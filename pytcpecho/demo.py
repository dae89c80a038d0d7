"""``pytcpecho demo``: the original exercise, replayed on this machine.

The report ran one server on port 8000 and clients that connected to it by
hostname; two clients ran at the same time, then one more.  Here the server
listens on a free port of localhost, and each party's lines are prefixed with
its name, as ``docker compose`` prints them.
"""

from __future__ import annotations

import logging
import threading

from .client import EchoClient, EchoError
from .constants import DEFAULT_SIZE
from .logs import silence_stdout
from .server import EchoServer


class _Output:
    """The demo's lines, from every thread, one at a time; should stdout go away
    (``| head -1``), the demo runs on without them, and run_demo() says so at the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.closed = False

    def say(self, who: str, line: str) -> None:
        self.write(f"{who:<8} | {line}")

    def write(self, line: str) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                print(line, flush=True)
            except BrokenPipeError:
                self.closed = True
                silence_stdout()  # nor any later write, nor the flush at exit


class _ServerLines(logging.Handler):
    def __init__(self, out: _Output) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        self._out.say("server", record.getMessage())


def _client(name: str, host: str, port: int, core: str, results: list[bool],
            out: _Output) -> None:
    client = EchoClient(host, port, size=DEFAULT_SIZE, core=core)
    out.say(name, f"Connecting to {client.target}")
    try:
        result = client.run()
    except EchoError as exc:
        out.say(name, f"error: {exc}")
        results.append(False)
        return
    out.say(name, f"Sent {result.sent} bytes")
    out.say(name, f"Received {result.received} bytes")
    if result.intact:
        out.say(name, "Client finished.")
    else:
        out.say(name, f"error: {result.problem}")
    results.append(result.intact)


def run_demo(core: str = "auto", mode: str = "message") -> bool:
    """Replay the original exercise; True when every client got its 102,400 bytes back intact.

    Raises BrokenPipeError at the end if stdout was closed under it (the caller's exit
    status for that), having run to the end quietly."""
    out = _Output()
    logger = logging.getLogger("pytcpecho")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [_ServerLines(out)]
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
                threads = [threading.Thread(target=_client,
                                            args=(n, host, port, core, results, out))
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
    out.write(f"Demo {'passed' if ok else 'FAILED'}: {stats.total} clients, "
              f"{stats.bytes_out} bytes echoed, core {server.core.NAME}")
    if out.closed:
        raise BrokenPipeError("stdout was closed")
    return ok
