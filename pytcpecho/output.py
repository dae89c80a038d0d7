"""What a command prints: its lines on stdout, each flushed as it comes, and an error as
one line on stderr, named by the command, with an exit status."""

from __future__ import annotations

import sys

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
