"""Log output for people (text, the original exercise's lines) or for log collectors (JSON lines).

``--log-format json`` writes one JSON object per line: time, level, logger,
message, plus the structured fields a record carries: ``peer`` from an address
argument, ``bytes``/``connections``/``errors``/``seconds`` from the number
before that word in the message, anything passed as ``extra=``, and the
``worker``/``pid`` of a ``serve --workers`` process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .units import format_hostport

FORMATS = ("text", "json")

# Attributes every LogRecord has: anything else on a record is a structured field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_FIELD_NAMES = {"s": "seconds", "connection": "connections", "byte": "bytes",
                "error": "errors", "client": "clients", "idle": "idle_timeouts",
                "over": "over_max_bytes", "worker": "workers"}


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries besides its message, for machines to read."""
    fields: dict[str, Any] = {}
    args = record.args if isinstance(record.args, tuple) else ()
    text = str(record.msg)
    placeholders = [m for m in _PLACEHOLDER.finditer(text) if m.group() != "%%"]
    for placeholder, arg in zip(placeholders, args, strict=False):
        if isinstance(arg, tuple) and _is_address(arg):
            fields.setdefault("peer", format_hostport(str(arg[0]), int(arg[1])))
        elif placeholder.group()[-1] in "dig" and isinstance(arg, int | float):
            word = _WORD_AFTER.match(text, placeholder.end())
            if word:
                fields.setdefault(_FIELD_NAMES.get(word[1], word[1]), arg)
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return fields


def _is_address(arg: tuple[object, ...]) -> bool:
    return (len(arg) >= 2 and isinstance(arg[0], str)
            and isinstance(arg[1], int))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in structured_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The original exercise's plain lines; a worker of ``serve --workers`` prefixes its number."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        worker = getattr(record, "worker", None)
        return f"[worker {worker}] {text}" if worker is not None else text


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone (``| head``), so that no later
    write or the flush at exit raises BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to stdout; should stdout go away (``serve | head``), say so once on
    stderr and serve on without a log, rather than a traceback for every line.

    Batched (``wake`` given), a record is only queued by the thread that logs
    it, and ``flush_batch()`` formats the queue and writes it in one write()
    from the thread that ``wake`` wakes: a connection thread then neither
    formats, nor makes a syscall, nor lets go of the GIL for its lines, which
    under many short connections cost more than the connections themselves.
    The first record queued after a flush sets ``wake``.
    """

    SLICE = 16  # records formatted and written at a time

    def __init__(self, wake: threading.Event | None = None) -> None:
        super().__init__(sys.stdout)
        self.closed_under_us = False
        self._wake = wake
        self._queued: list[logging.LogRecord] = []
        self._writing = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._wake is None:
            super().emit(record)
            return
        self._queued.append(record)  # handle() holds the handler's lock; formatted later
        if len(self._queued) == 1:
            self._wake.set()

    def flush_batch(self, blocking: bool = True) -> None:
        """Write what is queued, in one go (a signal handler passes blocking=False)."""
        if not self._writing.acquire(blocking):
            return
        try:
            self.acquire()
            try:
                records, self._queued = self._queued, []
            finally:
                self.release()
            # In slices: each write() lets go of the GIL, so connection threads never
            # wait for a whole batch to be formatted.
            for start in range(0, len(records), self.SLICE):
                if self.closed_under_us:
                    break
                self.stream.write("".join(self._lines(records[start:start + self.SLICE])))
                self.stream.flush()
        except BrokenPipeError:
            self._output_closed()
        finally:
            self._writing.release()

    def _lines(self, records: list[logging.LogRecord]) -> Iterator[str]:
        for record in records:
            try:
                yield self.format(record) + self.terminator
            except Exception:
                self.handleError(record)

    def unbatch(self) -> None:
        """Write every line at once from now on (after what is queued)."""
        self.acquire()
        try:
            self._wake = None
        finally:
            self.release()
        self.flush_batch()

    def flush(self) -> None:
        self.flush_batch()
        super().flush()

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self._output_closed()
            return
        super().handleError(record)

    def _output_closed(self) -> None:
        if not self.closed_under_us:
            self.closed_under_us = True
            with contextlib.suppress(OSError):
                silence_stdout()
                sys.stderr.write("pytcpecho: log output closed (broken pipe); "
                                 "serving on without it\n")
                sys.stderr.flush()


def setup(verbose: int = 0, quiet: bool = False, fmt: str = "text",
          wake: threading.Event | None = None) -> StdoutHandler:
    """Send pytcpecho's log to stdout in ``fmt``; -v adds detail, -q drops per-connection
    lines; with ``wake``, batched (see StdoutHandler).  Returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = StdoutHandler(wake)
    detailed = verbose > 0
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(
        "%(asctime)s %(threadName)s %(message)s" if detailed else "%(message)s"))
    # Every field a record would gather for nobody costs each connection's lines time:
    # the caller's frame (a stack walk), the thread and the process, unless shown.
    logging._srcfile = None  # the switch the logging HOWTO documents for this
    logging.logThreads = detailed
    logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("pytcpecho")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if detailed else logging.INFO)
    logging.getLogger("pytcpecho.conn").setLevel(logging.WARNING if quiet else logging.NOTSET)
    return handler


def tag_records(**fields: Any) -> None:
    """Add ``fields`` to every log record of this process (a worker's number and pid)."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        for key, value in fields.items():
            setattr(record, key, value)
        return record

    logging.setLogRecordFactory(tagged)
