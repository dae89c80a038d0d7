"""``pytcpecho merge``: the ``bench --json`` results of many machines, added up exactly.

N pods each run ``bench --json``; merge reads their documents and sums what sums
(messages, bytes, connections, errors), merges the latency histograms bucket by
bucket and reads every percentile from the merged histogram (a percentile of
percentiles means nothing), and takes min, max and mean from the exact min, max
and sum.  The combined rate counts only the window in which every run was
loading the target, [latest start, earliest end], from each run's intervals: a
pod that started late or ended early does not dilute it.  The merged result is
itself a bench result of the same format, so merges merge.  TCP results only,
for now: a UDP result has no histogram to add.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._version import __version__
from .constants import BENCH_FORMAT
from .histogram import Histogram
from .loadgen import MIB, BenchConfig, BenchResult, summary_lines
from .output import note, say
from .starttime import WAITING_LINE, format_utc
from .status import EXIT_NOT_INTACT, EXIT_OK, UsageError
from .units import format_size, parse_hostport, plural

STDIN = "-"
START_APART = 1.0
"""Runs whose starts lie further apart than this many seconds are named: they were
hardly one load (the pods of one Job start together with bench --start-at)."""
MAX_INTERVALS = 10_000
"""The most intervals a merged result carries: runs hours apart get longer ones."""
MAX_WHOLE = 1 << 128
"""The largest count or sum a result may hold: far beyond any counter (many merged runs'
sums of nanoseconds included), and well within what a float holds for the rates."""


# -- one input ------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """What a run moved between two moments (Unix time): its messages and bytes received,
    taken as spread evenly over that time."""

    start: float
    end: float
    messages: int
    bytes: int

    def share(self, lo: float, hi: float) -> float:
        """The part of the segment that lies in [lo, hi]: 0 to 1."""
        if self.end <= self.start:
            return 1.0 if lo <= self.start <= hi else 0.0
        return max(0.0, min(self.end, hi) - max(self.start, lo)) / (self.end - self.start)


@dataclass(frozen=True)
class Run:
    """One input document, read and checked: a bench run, or a merge of runs."""

    name: str
    """The input it came from: FILE, or FILE:LINE for one of several documents in it."""
    target: str
    core: str
    mode: str
    size: int
    connections: int
    connect_each: bool
    rate: float | None
    duration_s: float
    messages: int
    bytes_sent: int
    bytes_received: int
    connections_opened: int
    errors: int
    integrity_failures: int
    unfinished: int
    problems: tuple[str, ...]
    interrupted: bool
    rate_per_s: float
    """Its own rate: messages/s over its run (a merge's: its combined rate)."""
    mib_per_s: float
    started_at: float
    ended_at: float
    histogram: Histogram
    segments: tuple[Segment, ...]
    """Its intervals in Unix time, and what came after the last one: all its messages."""
    step: float | None
    """Its reporting interval (the first one's length); None when it has none."""
    runs: int = 1
    """Bench runs in it: more than one for a merged result."""
    skew_s: float = 0.0
    """Its runs started in [started_at, started_at + skew_s]."""
    window: tuple[float, float] | None = None
    """When all its runs were running (Unix time): a bench run's whole span; None when
    they never all ran at once."""

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.integrity_failures == 0


def display(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def read_text(path: str) -> str:
    """The text of a file, or of standard input for ``-``; ValueError saying why not."""
    name = display(path)
    try:
        if path == STDIN:
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")  # a byte order mark, as some editors write, is no harm
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not UTF-8 text, as bench --json writes") from None


_DECODER = json.JSONDecoder()


def _decode_at(text: str, pos: int, where: str, one_line: bool) -> tuple[object, int]:
    """The JSON document at ``pos`` and where it ends; ValueError naming ``where`` (and
    the line, unless ``where`` is one line already) for anything else."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        # cut short, not wrong: the parser wanted more at the end, or found no closing
        # quote for a string before it
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise ValueError(f"{where}: truncated JSON (it ends mid-document)") from None
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"{where}: not JSON: {exc.msg} ({at})") from None
    except RecursionError:
        raise ValueError(f"{where}: not a bench result (JSON nested too deeply)") from None
    except ValueError:  # a number of more digits than int() reads (4300)
        raise ValueError(f"{where}: not a bench result (a number thousands of digits "
                         "long)") from None


def _line(text: str, where: str) -> object:
    """The one document of a line of JSON Lines."""
    text = text.strip()
    doc, end = _decode_at(text, 0, where, True)
    if end < len(text):
        raise ValueError(f"{where}: not JSON Lines: more after the document (column "
                         f"{end + 1})")
    return doc


def _stream(text: str, name: str) -> list[tuple[str, object]]:
    """Documents one after another, each any number of lines (cat a.json b.json)."""
    found: list[tuple[int, object]] = []
    pos, line, counted = 0, 1, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        line += text.count("\n", counted, pos)  # counted as we go: many documents, one pass
        counted = pos
        doc, pos = _decode_at(text, pos, f"{name}:{line}" if found else name, False)
        found.append((line, doc))
    if len(found) == 1:
        return [(name, found[0][1])]
    return [(f"{name}:{line}", doc) for line, doc in found]


def documents(text: str, name: str) -> list[tuple[str, object]]:
    """The JSON documents of one input, each with the name to call it by: NAME for a lone
    document, NAME:LINE (where it starts) for one of several: JSON Lines, or documents
    one after another (bench --json prints one over many lines); bench's own waiting line
    (``--start-at``, as a pod's log has it) is skipped."""
    # A pod's log (kubectl logs) has bench's waiting line before the document: not data.
    text = "\n".join("" if WAITING_LINE.fullmatch(line.strip()) else line
                     for line in text.splitlines())
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise ValueError(f"{name}: empty: no bench result in it")
    first = numbered[0][1]
    if len(numbered) > 1 and first.lstrip().startswith("{") and first.rstrip().endswith("}"):
        try:  # JSON Lines: each line a document, and an error named by its line
            return [(f"{name}:{n}", _line(line, f"{name}:{n}")) for n, line in numbered]
        except ValueError as exc:
            per_line = exc
        try:  # or documents one after another whose first line happens to be one
            return _stream(text, name)
        except ValueError:
            raise per_line from None
    return _stream(text, name)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            type(None): "null"}.get(type(value), "a number")


class _Fields:
    """The checked values of one JSON object; ValueError naming the input for a bad one."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self.doc = doc
        self.where = where

    def bad(self, what: str) -> ValueError:
        return ValueError(f"{self.where}: {what}")

    def whole(self, key: str) -> int:
        v = self.doc.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise self.bad(f'"{key}" is missing, or not a whole number >= 0')
        if v > MAX_WHOLE:
            raise self.bad(f'"{key}" is too large to be a count')
        return v

    def number(self, key: str, least: float | None = None) -> float:
        v = self.doc.get(key)
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or abs(v) > MAX_WHOLE
                or not math.isfinite(v) or (least is not None and v < least)):
            more = f" from {least:g} to {MAX_WHOLE:.0e}" if least is not None else ""
            raise self.bad(f'"{key}" is missing, or not a number{more}')
        return float(v)

    def optional_number(self, key: str) -> float | None:
        return None if self.doc.get(key) is None else self.number(key, 0)

    def text(self, key: str) -> str:
        v = self.doc.get(key)
        if not isinstance(v, str):
            raise self.bad(f'"{key}" is missing, or not a string')
        return v

    def flag(self, key: str) -> bool:
        v = self.doc.get(key)
        if not isinstance(v, bool):
            raise self.bad(f'"{key}" is missing, or not true or false')
        return v

    def texts(self, key: str) -> tuple[str, ...]:
        v = self.doc.get(key)
        if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
            raise self.bad(f'"{key}" is missing, or not a list of strings')
        return tuple(v)


def _check_kind(doc: object, name: str) -> dict[str, Any]:
    """The document as a bench result of the format this version reads, or ValueError."""
    if not isinstance(doc, dict):
        raise ValueError(f"{name}: not a bench result (a JSON object), but {_kind(doc)}")
    protocol = doc.get("protocol", "tcp")
    if protocol != "tcp":
        what = "a UDP bench result" if protocol == "udp" else f"protocol {protocol!r}"
        raise ValueError(f"{name}: {what}: merge reads TCP bench results only, for now")
    fmt = doc.get("format")
    if fmt is None:
        raise ValueError(f'{name}: not a bench --json result that merge reads: no "format" '
                         f"(bench --json writes format {BENCH_FORMAT}, with its histogram)")
    if fmt != BENCH_FORMAT or isinstance(fmt, bool):
        made = doc.get("version")
        by = f" (from pytcpecho {made})" if isinstance(made, str) else ""
        raise ValueError(f"{name}: format {fmt!r}{by}: this version ({__version__}) reads "
                         f"bench results of format {BENCH_FORMAT}")
    if "histogram" not in doc:
        raise ValueError(f'{name}: no "histogram": not a whole bench --json result')
    return doc


def _histogram(doc: dict[str, Any], name: str) -> Histogram:
    try:
        h = Histogram.from_json(doc["histogram"])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if h.count and not 0 <= h.min_ns <= h.max_ns:
        raise ValueError(f"{name}: its histogram's min_ns and max_ns do not fit its counts")
    if max(h.count, h.max_ns, h.sum_ns) > MAX_WHOLE:
        raise ValueError(f"{name}: its histogram holds numbers too large to be counts")
    return h


def _segments(f: _Fields, started_at: float, ended_at: float, messages: int,
              received: int) -> tuple[tuple[Segment, ...], float | None]:
    """The run's intervals in Unix time, then what came after the last one (a run
    reports no sliver of less than a quarter interval at its end): all its messages."""
    raw = f.doc.get("intervals")
    if not isinstance(raw, list):
        raise f.bad('"intervals" is missing, or not a list')
    segments = []
    for k, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise f.bad(f"interval {k} is not an object")
        i = _Fields(item, f"{f.where}: interval {k}")
        start, end = i.number("start", 0), i.number("end", 0)
        if end < start:
            raise i.bad("it ends before it starts")
        segments.append(Segment(started_at + start, started_at + end, i.whole("messages"),
                                i.whole("bytes")))
    counted = sum(s.messages for s in segments), sum(s.bytes for s in segments)
    if counted[0] > messages or counted[1] > received:
        raise f.bad(f"its intervals count more ({counted[0]} messages, {counted[1]} bytes) "
                    f"than the run ({messages} messages, {received} bytes received)")
    if counted != (messages, received):
        last = segments[-1].end if segments else started_at
        segments.append(Segment(last, max(last, ended_at), messages - counted[0],
                                received - counted[1]))
    step = segments[0].end - segments[0].start if raw else 0.0
    return tuple(segments), (step or None)


def read_run(doc: object, name: str) -> Run:
    """A Run from one document; ValueError, naming ``name``, when it is not a bench result
    of this format, or does not add up."""
    f = _Fields(_check_kind(doc, name), name)
    histogram = _histogram(f.doc, name)
    started_at, ended_at = f.number("started_at", 0), f.number("ended_at", 0)
    if ended_at < started_at:
        raise f.bad('it ends before it starts ("ended_at" before "started_at")')
    messages, received = f.whole("messages"), f.whole("bytes_received")
    segments, step = _segments(f, started_at, ended_at, messages, received)
    runs, skew = 1, 0.0
    window: tuple[float, float] | None = (started_at, ended_at)
    rate_per_s, mib_per_s = f.number("messages_per_s", 0), f.number("mib_per_s", 0)
    if "merged" in f.doc:  # a merge's result: when its runs ran, and their combined rate
        if not isinstance(f.doc["merged"], dict):
            raise f.bad('"merged" is not an object')
        m = _Fields(f.doc["merged"], f'{name}: "merged"')
        runs, skew = m.whole("inputs"), m.number("skew_s", 0)
        rate_per_s, mib_per_s = m.number("rate_per_s", 0), m.number("mib_per_s", 0)
        w = m.doc.get("window")
        if w is None:
            window = None
        elif (isinstance(w, list) and len(w) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) for v in w) and w[0] <= w[1]):
            window = (float(w[0]), float(w[1]))
        else:
            raise m.bad('"window" is not null or [start, end]')
        if runs < 1:
            raise m.bad('"inputs" is 0')
    return Run(
        name=name, target=f.text("target"), core=f.text("core"), mode=f.text("mode"),
        size=f.whole("size"), connections=f.whole("connections"),
        connect_each=f.flag("connect_each"), rate=f.optional_number("rate"),
        duration_s=f.number("duration_s", 0), messages=messages,
        bytes_sent=f.whole("bytes_sent"), bytes_received=received,
        connections_opened=f.whole("connections_opened"), errors=f.whole("errors"),
        integrity_failures=f.whole("integrity_failures"), unfinished=f.whole("unfinished"),
        problems=f.texts("problems"), interrupted=f.flag("interrupted"),
        rate_per_s=rate_per_s, mib_per_s=mib_per_s, started_at=started_at,
        ended_at=ended_at, histogram=histogram, segments=segments, step=step, runs=runs,
        skew_s=skew, window=window)


def read_input(path: str) -> list[Run]:
    """Every run in one input (a file, or ``-``); ValueError naming it for a bad one."""
    return [read_run(doc, where) for where, doc in documents(read_text(path), display(path))]


# -- adding up -------------------------------------------------------------------------

def _whole_counts(parts: Sequence[float], total: int) -> list[int]:
    """Shares of ``total`` in whole numbers, each within 1 of its part, adding up to it
    exactly (the cumulative sums rounded)."""
    out, before, cum = [], 0, 0.0
    for k, part in enumerate(parts):
        cum += part
        upto = total if k == len(parts) - 1 else min(total, max(before, round(cum)))
        out.append(upto - before)
        before = upto
    return out


def _distinct(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(values))


@dataclass(frozen=True)
class Merged:
    """The runs added up; ``result`` holds the totals as a bench result."""

    runs: tuple[Run, ...]
    result: BenchResult
    target: str
    core: str
    started_at: float
    ended_at: float
    skew_s: float
    window: tuple[float, float] | None
    """[latest start, earliest end] of all the runs (Unix time); None if they never all
    ran at once."""
    rate_per_s: float
    """Messages a second in the window, of all the runs together; without a window, the
    sum of each run's own rate."""
    mib_per_s: float
    intervals: tuple[dict[str, Any], ...]

    @property
    def count(self) -> int:
        """Bench runs in it."""
        return sum(r.runs for r in self.runs)

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.result.interrupted

    def as_dict(self) -> dict[str, Any]:
        """A bench --json document (so it can be merged again), with "merged" beside."""
        doc = self.result.as_dict()
        doc.update(target=self.target, core=self.core, intervals=list(self.intervals),
                   started_at=round(self.started_at, 6), ended_at=round(self.ended_at, 6),
                   index=None)
        w = self.window
        doc["merged"] = {"inputs": self.count, "skew_s": round(self.skew_s, 6),
                         "window": [round(w[0], 6), round(w[1], 6)] if w else None,
                         "rate_per_s": round(self.rate_per_s, 1),
                         "mib_per_s": round(self.mib_per_s, 2)}
        return doc

    def lines(self) -> list[str]:
        """The summary bench prints, then the merge's own lines."""
        r = self.result
        c = r.config
        what = "messages" if c.mode == "message" else "units of a stream"
        inputs = f" ({len(self.runs)} inputs)" if len(self.runs) != self.count else ""
        lines = [f"Merged {self.count} run{plural(self.count)}{inputs} of {self.target}: "
                 f"{c.connections} connection{plural(c.connections)}, "
                 f"{format_size(c.size)} {what}, core {self.core}"]
        lines += summary_lines(r)
        lines.append(f"Start skew: {self.skew_s:.3f} s (first start "
                     f"{format_utc(self.started_at)})")
        if self.window is None:
            lines += ["Window all ran in: none (the runs never all ran at once)",
                      f"Combined rate: {self.rate_per_s:.1f} msg/s, {self.mib_per_s:.1f} "
                      "MiB/s: the sum of each run's own"]
        else:
            lo, hi = self.window
            lines += [f"Window all ran in: {hi - lo:.3f} s, {format_utc(lo)} to "
                      f"{format_utc(hi)}",
                      f"Combined rate: {self.rate_per_s:.1f} msg/s, {self.mib_per_s:.1f} "
                      "MiB/s in that window"]
        return lines


def _grid(runs: Sequence[Run], t0: float, t1: float) -> tuple[dict[str, Any], ...]:
    """The runs' messages and bytes over time, as intervals after ``t0`` of the shortest
    reporting interval (each run's spread evenly over each of its own intervals; whole
    numbers adding up to the totals).  They have no percentiles: a run keeps no
    histogram per interval, and percentiles do not add."""
    span = t1 - t0
    steps = [r.step for r in runs if r.step]
    step = max(min(steps, default=span), span / MAX_INTERVALS)
    n = max(1, math.ceil(span / step - 1e-9)) if span > 0 and step > 0 else 1
    bounds = [t0 + k * step for k in range(n)] + [t1]
    messages, received = [0.0] * n, [0.0] * n

    def cell(t: float) -> int:
        return min(n - 1, max(0, int((t - t0) // step))) if step > 0 else 0

    for seg in (s for r in runs for s in r.segments):
        first, last = cell(seg.start), cell(seg.end)
        for k in range(first, last + 1):
            lo = -math.inf if k == 0 else bounds[k]
            hi = math.inf if k == n - 1 else bounds[k + 1]
            share = 1.0 if first == last else seg.share(lo, hi)
            messages[k] += seg.messages * share
            received[k] += seg.bytes * share
    whole_m = _whole_counts(messages, sum(r.messages for r in runs))
    whole_b = _whole_counts(received, sum(r.bytes_received for r in runs))
    out = []
    for k in range(n):
        start, end = bounds[k] - t0, bounds[k + 1] - t0
        length = end - start
        out.append({"start": round(start, 3), "end": round(end, 3), "messages": whole_m[k],
                    "bytes": whole_b[k],
                    "messages_per_s": round(whole_m[k] / length, 1) if length > 0 else 0.0,
                    "mib_per_s": round(whole_b[k] / length / MIB, 2) if length > 0 else 0.0,
                    "p50_ms": None, "p99_ms": None})
    return tuple(out)


def _config(run: Run, runs: Sequence[Run], duration: float) -> BenchConfig:
    try:
        host, port = parse_hostport(run.target)
    except ValueError:
        host, port = run.target, 0
    rates = [r.rate for r in runs]
    return BenchConfig(host, port, size=run.size, connections=sum(r.connections for r in runs),
                       duration=duration, mode=run.mode,
                       rate=None if None in rates else sum(r for r in rates if r is not None),
                       connect_each=run.connect_each)


def merge_runs(runs: Sequence[Run]) -> Merged:
    """The runs added up: sums, the histograms merged bucket by bucket, the percentiles
    read from the merged histogram, the combined rate over the window all ran in."""
    if not runs:
        raise ValueError("nothing to merge")
    histogram = runs[0].histogram
    for r in runs[1:]:
        histogram = histogram.merge(r.histogram)
    t0, t1 = min(r.started_at for r in runs), max(r.ended_at for r in runs)
    skew = max(r.started_at + r.skew_s for r in runs) - t0
    window: tuple[float, float] | None = None
    if all(r.window is not None for r in runs):
        lo = max(r.window[0] for r in runs if r.window is not None)
        hi = min(r.window[1] for r in runs if r.window is not None)
        window = (lo, hi) if hi > lo else None
    if window is None:
        rate = sum(r.rate_per_s for r in runs)
        mib = sum(r.mib_per_s for r in runs)
    else:
        lo, hi = window
        shares = [(s.messages * s.share(lo, hi), s.bytes * s.share(lo, hi))
                  for r in runs for s in r.segments]
        rate = sum(m for m, _ in shares) / (hi - lo)
        mib = sum(b for _, b in shares) / (hi - lo) / MIB
    problems = [f"{r.name}: {p}" for r in runs for p in r.problems]
    result = BenchResult(
        _config(runs[0], runs, t1 - t0), runs[0].core, t1 - t0,
        sum(r.messages for r in runs), sum(r.bytes_sent for r in runs),
        sum(r.bytes_received for r in runs), sum(r.connections_opened for r in runs),
        sum(r.errors for r in runs), sum(r.integrity_failures for r in runs),
        histogram.summary(), [], problems, interrupted=any(r.interrupted for r in runs),
        unfinished=sum(r.unfinished for r in runs), histogram=histogram, started_at=t0)
    return Merged(tuple(runs), result, _distinct(r.target for r in runs),
                  _distinct(r.core for r in runs), t0, t1, skew, window, rate, mib,
                  _grid(runs, t0, t1))


def warnings(merged: Merged) -> list[str]:
    """A line for every input that disagrees with the first, was interrupted or not
    intact, or repeats another; and for runs that never all ran at once."""
    runs = merged.runs
    first = runs[0]
    out = []
    seen: dict[tuple[float, float, int, int], Run] = {}
    for r in runs:
        if r is not first:
            for what, mine, theirs in (("target", r.target, first.target),
                                       ("mode", r.mode, first.mode),
                                       ("size", f"{r.size} bytes", f"{first.size} bytes")):
                if mine != theirs:
                    out.append(f"{r.name}: {what} {mine}, not {theirs} as {first.name}")
            apart = r.started_at - first.started_at
            if abs(apart) > START_APART:
                out.append(f"{r.name}: started {abs(apart):.3f} s "
                           f"{'after' if apart > 0 else 'before'} {first.name}")
        if r.interrupted:
            out.append(f"{r.name}: interrupted after {r.duration_s:.3f} s (its figures stop "
                       "there): the merged result is not ok")
        if not r.ok:
            out.append(f"{r.name}: not intact: {r.errors} error{plural(r.errors)}, "
                       f"{r.integrity_failures} integrity failure"
                       f"{plural(r.integrity_failures)}: the merged result is not ok")
        key = (r.started_at, r.ended_at, r.messages, r.histogram.sum_ns)
        if key in seen:
            out.append(f"{r.name}: the same run as {seen[key].name}: counted twice")
        seen.setdefault(key, r)
    if merged.window is None:
        out.append(f"the {merged.count} runs never all ran at once (no window common to "
                   "all): the combined rate is the sum of each run's own")
    return out


# -- the command -----------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    """``pytcpecho merge FILE...``: exit 0, 1 when a run was interrupted or not intact, and
    UsageError (exit 2) for inputs that cannot be merged."""
    if not args.files:
        raise UsageError("no input: give the bench --json results to merge (FILE ..., "
                         "or - for standard input)")
    try:
        runs = [run for path in args.files for run in read_input(path)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    merged = merge_runs(runs)
    for line in warnings(merged):
        note(f"{args.prog}: warning: {line}")
    if args.json:
        say(json.dumps(merged.as_dict(), indent=2))
    else:
        for line in merged.lines():
            say(line)
    return EXIT_OK if merged.ok else EXIT_NOT_INTACT
