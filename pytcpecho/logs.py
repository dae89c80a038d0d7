"""Log output for people (text, the original exercise's lines) or for log collectors (JSON lines).

``--log-format json`` writes one JSON object per line: time, level, logger,
message, plus the structured fields a record carries: ``peer`` from an address
argument, ``bytes``/``connections``/``errors``/``seconds`` from the number
before that word in the message, anything passed as ``extra=``, and the
``worker``/``pid`` of a ``serve --workers`` process.
"""

from __future__ import annotations

import collections
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
        return plain_line(super().format(record))


_tags: dict[str, Any] = {}  # what tag_records() adds to every record of this process


def plain_line(text: str) -> str:
    """A plain line as this process writes one: a worker's number (tag_records) before it."""
    worker = _tags.get("worker")
    return f"[worker {worker}] {text}" if worker is not None else text


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone (``| head``), so that no later
    write or the flush at exit raises BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


Queued = logging.LogRecord | tuple[str, tuple[object, ...]]
"""A batched handler's queue entry: a record, or a plain line's message and arguments."""


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to stdout; should stdout go away (``serve | head``), say so once on
    stderr and serve on without a log, rather than a traceback for every line.

    Batched (``wake`` given), a line is only queued by the thread that logs it,
    and ``flush_batch()`` formats the queue and writes it in one write() from
    the thread that ``wake`` wakes: a connection thread then neither formats,
    nor makes a syscall, nor lets go of the GIL for its lines, which under many
    short connections cost more than the connections themselves.  ``plain``
    output (text, no -v) can also queue a line as its message and arguments
    alone (``queue``), with no record made at all.
    """

    SLICE = 16  # lines formatted and written at a time

    def __init__(self, wake: threading.Event | None = None, plain: bool = False) -> None:
        super().__init__(sys.stdout)
        self.closed_under_us = False
        self.plain = plain
        self._wake = wake
        self._queued: collections.deque[Queued] = collections.deque()
        self._writing = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._wake is None:
            super().emit(record)
            return
        self._queued.append(record)  # formatted later, in order with every other line
        self._ring(self._wake)

    def queue(self, msg: str, args: tuple[object, ...]) -> None:
        """A plain line, ``msg % args``, without a record (only where ``plain``)."""
        wake = self._wake
        if wake is None:  # no longer batched: write it now
            self.acquire()
            try:
                self._write([(msg, args)])
            except BrokenPipeError:
                self._output_closed()
            finally:
                self.release()
            return
        self._queued.append((msg, args))
        self._ring(wake)

    @staticmethod
    def _ring(wake: threading.Event) -> None:
        if not wake.is_set():  # any line queued after the writer cleared it rings again
            wake.set()

    def flush_batch(self, blocking: bool = True) -> None:
        """Write what is queued, in order (a signal handler passes blocking=False)."""
        if not self._writing.acquire(blocking):
            return
        try:
            entries: list[Queued] = []
            with contextlib.suppress(IndexError):
                while True:  # popleft() and append() are atomic: no lock, nothing lost
                    entries.append(self._queued.popleft())
            # In slices: each write() lets go of the GIL, so connection threads never
            # wait for a whole batch to be formatted.
            for start in range(0, len(entries), self.SLICE):
                if self.closed_under_us:
                    break
                self._write(entries[start:start + self.SLICE])
        except BrokenPipeError:
            self._output_closed()
        finally:
            self._writing.release()

    def _write(self, entries: list[Queued]) -> None:
        self.stream.write("".join(self._lines(entries)))
        self.stream.flush()

    def _lines(self, entries: list[Queued]) -> Iterator[str]:
        for entry in entries:
            if isinstance(entry, logging.LogRecord):
                try:
                    yield self.format(entry) + self.terminator
                except Exception:
                    self.handleError(entry)
            else:
                msg, args = entry
                try:
                    text = msg % args if args else msg
                except (TypeError, ValueError):
                    text = f"{msg} {args!r}"
                yield plain_line(text) + self.terminator

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


class ConnectionLog:
    """``serve``'s per-connection lines, as cheap as can be for the thread that logs them.

    It takes a logger's calls (the server's ``conn_log``).  Where the output is
    plain and batched, an enabled ``info`` line is queued on the handler as its
    message and arguments, without a record, and written by the main thread in
    order with every other line; anything else (warnings, exceptions, JSON or
    -v output) goes to the logger as usual.
    """

    def __init__(self, logger: logging.Logger, handler: StdoutHandler) -> None:
        self._logger = logger
        self._handler = handler

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def info(self, msg: str, *args: object) -> None:
        if self._handler.plain:
            if self._logger.isEnabledFor(logging.INFO):
                self._handler.queue(msg, args)
        else:
            self._logger.info(msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._logger.warning(msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self._logger.exception(msg, *args)


def setup(verbose: int = 0, quiet: bool = False, fmt: str = "text",
          wake: threading.Event | None = None) -> StdoutHandler:
    """Send pytcpecho's log to stdout in ``fmt``; -v adds detail, -q drops per-connection
    lines; with ``wake``, batched (see StdoutHandler).  Returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    detailed = verbose > 0
    handler = StdoutHandler(wake, plain=fmt == "text" and not detailed)
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
    _tags.update(fields)
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        for key, value in fields.items():
            setattr(record, key, value)
        return record

    logging.setLogRecordFactory(tagged)
