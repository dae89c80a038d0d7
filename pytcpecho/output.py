"""What a command prints: its lines on stdout, each flushed as it comes, and an error as
one line on stderr, named by the command, with an exit status; and how a load run
(bench, bench --udp) ends."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .status import EXIT_INTERRUPTED, EXIT_NOT_INTACT, EXIT_OK, EXIT_UNREACHABLE
from .units import shorten_quoted


def say(line: str) -> None:
    print(line, flush=True)


def note(line: str) -> None:
    """A line beside a JSON document on stdout (a wait, a warning): on stderr."""
    print(line, file=sys.stderr, flush=True)


def fail(prog: str, message: str, status: int) -> int:
    """``prog: error: message`` on stderr (a long value in it shortened); ``status``."""
    print(f"{prog}: error: {shorten_quoted(message)}", file=sys.stderr, flush=True)
    return status


# -- the end of a load run (bench, bench --udp) -----------------------------------------

T = TypeVar("T")


class Reported(Protocol):
    """A load run's result, as the commands print it."""

    @property
    def ok(self) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Reported)


class RunUnreachable(Exception):
    """A load run reached nothing: its message is the command's one line (exit 3)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a load run; ``result`` holds what it measured until then."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def under_columns(columns: str, line: Callable[[T], str]) -> Callable[[T], None]:
    """What prints each interval's line: ``columns`` (the table's head) before the first,
    so it comes after any wait (--start-at), not before it."""
    todo = [columns]

    def print_line(interval: T) -> None:
        while todo:
            say(todo.pop())
        say(line(interval))
    return print_line


def finish_run(prog: str, as_json: bool, run: Callable[[], R],
               summary: Callable[[R], list[str]]) -> int:
    """Run a load; its summary lines (or its JSON document, with ``as_json``) and its exit
    status: 0 ok, 1 not, 3 nothing reached (one line), 130 Ctrl-C (the figures so far)."""
    status = EXIT_INTERRUPTED
    try:
        result = run()
    except RunUnreachable as exc:
        return fail(prog, str(exc), EXIT_UNREACHABLE)
    except RunInterrupted as stopped:  # Ctrl-C: what was measured, as ping does
        result = stopped.result
    else:
        status = EXIT_OK if result.ok else EXIT_NOT_INTACT
    if as_json:
        say(json.dumps(result.as_dict(), indent=2))
    else:
        for line in summary(result):
            say(line)
    return status
