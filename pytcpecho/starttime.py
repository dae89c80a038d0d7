"""``bench --start-at``: one moment on every machine's clock, so the pods of one Job
start their load together (and, with --duration, end it together)."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable

from .units import quote

LATE_BY = 1.0
"""A start this many seconds in the past is an error (the others have begun); less late,
the run starts at once."""
WAITING_LINE = re.compile(r"Waiting \d+\.\d s to start at \S+Z")
"""The line wait_until() writes: a pod's log (``kubectl logs``: its stderr and stdout in
one) has it before the JSON document, and ``merge`` knows it for what it is."""
WAIT_STEP = 0.5
"""The longest sleep of the wait: Ctrl-C is seen, and a clock stepped by NTP followed."""


def parse_start_at(text: str, now: float | None = None) -> float:
    """A start time as Unix seconds: a number (Unix time), or ISO 8601 (UTC when it names
    no zone: 2026-11-29T08:30:00Z, 2026-11-29 08:30:00).  ValueError for anything else,
    or for a time more than LATE_BY seconds ago."""
    try:
        when = float(text)
    except ValueError:
        try:
            parsed = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"invalid time {quote(text)}: give Unix time (e.g. 1795939200) "
                             "or ISO 8601 in UTC (e.g. 2026-11-29T08:30:00Z)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        when = parsed.timestamp()
    if not when == when or when in (float("inf"), float("-inf")) or when < 0:
        raise ValueError(f"invalid time {quote(text)}: not a moment")
    ago = (time.time() if now is None else now) - when
    if ago > LATE_BY:
        raise ValueError(f"invalid time {quote(text)}: {format_utc(when)} is {ago:.1f} s "
                         "in the past")
    return when


def format_utc(when: float) -> str:
    """Unix seconds as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wait_until(when: float, say: Callable[[str], None] | None = None) -> None:
    """Sleep until the wall clock reads ``when`` (a line first, through ``say``)."""
    left = when - time.time()
    if left <= 0:
        return
    if say is not None:
        say(f"Waiting {left:.1f} s to start at {format_utc(when)}")
    while (left := when - time.time()) > 0:
        time.sleep(min(left, WAIT_STEP))
