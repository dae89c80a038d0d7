"""``pytcpecho merge``: histograms add up exactly, real runs merge into one result that
merges again, and bad input is one line.

Property tests build histograms as the cores do (each latency into bucket_of's
bucket, the exact min, max and sum beside) and check that merging is exact and
that a percentile read from a histogram is within half a bucket of the exact
one; the CLI tests merge real ``bench --json`` results of real runs against a
real ``serve``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import LOCALHOST, ServeProcess, assert_one_line_error, cli

from pytcpecho import merge
from pytcpecho.constants import NBUCKETS, SUB
from pytcpecho.histogram import RELATIVE_ERROR, Histogram, bucket_of, bucket_value
from pytcpecho.loadgen import BenchConfig, BenchResult, Interval

QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))
LATENCY = st.one_of(st.integers(1, 300), st.integers(1, 10**10))
"""Round trips in ns: exact-bucket ones (below 128 ns) and any up to 10 s."""
PROPERTIES = settings(max_examples=300, deadline=None)
BOUND = RELATIVE_ERROR / 2
"""What the percentile tests hold summarize() to: within half a bucket, 1/128 of the exact
percentile (a bucket is at most 1/64 of its lower bound wide, and summarize() reads its
middle), which is tighter than the documented RELATIVE_ERROR (1/64)."""
FLOAT_SLACK = 1e-9
"""ms -> ns through floats: relative rounding far below any bucket's width."""


def histogram_of(latencies: Sequence[int]) -> Histogram:
    """As the cores count round trips: each into bucket_of's bucket, min, max, sum exact."""
    if not latencies:
        return Histogram.empty()
    counts = [0] * NBUCKETS
    for ns in latencies:
        counts[bucket_of(ns)] += 1
    return Histogram(tuple(counts), min(latencies), max(latencies), sum(latencies))


def exact_percentile(latencies: Sequence[int], q: float) -> int:
    """The nearest-rank percentile summarize() reads, from the raw samples: the rank-th
    smallest, rank = max(1, int(q*n + 0.5)).  (numpy's method="inverted_cdf" takes rank
    ceil(q*n), another sample: the 6th of 6 for q=0.9, where this takes the 5th.)"""
    ordered = sorted(latencies)
    return ordered[max(1, int(q * len(ordered) + 0.5)) - 1]


def merged(histograms: Sequence[Histogram]) -> Histogram:
    return functools.reduce(Histogram.merge, histograms, Histogram.empty())


# -- the histogram: property tests -----------------------------------------------------

@pytest.mark.timeout(120)
@PROPERTIES
@given(st.lists(st.tuples(LATENCY, st.integers(0, 7)), max_size=400), st.integers(1, 8))
def test_merged_parts_are_the_histogram_of_the_whole(samples: list[tuple[int, int]],
                                                     parts: int) -> None:
    latencies = [ns for ns, _ in samples]
    split = [[ns for ns, k in samples if k % parts == part] for part in range(parts)]
    whole = histogram_of(latencies)
    together = merged([histogram_of(p) for p in split])
    assert together == whole  # every bucket count, min, max and sum: exactly
    assert together.count == len(latencies)
    assert together.summary() == whole.summary()  # so every percentile too


@pytest.mark.timeout(120)
@PROPERTIES
@given(st.lists(LATENCY, min_size=1, max_size=400), st.lists(LATENCY, max_size=100))
def test_percentiles_are_within_half_a_bucket_of_the_exact_ones(latencies: list[int],
                                                                more: list[int]) -> None:
    everything = latencies + more  # read from a merged histogram, as merge does
    stats = histogram_of(latencies).merge(histogram_of(more)).summary()
    n = len(everything)
    assert stats.count == n
    assert stats.min * 1e6 == pytest.approx(min(everything), rel=FLOAT_SLACK)
    assert stats.max * 1e6 == pytest.approx(max(everything), rel=FLOAT_SLACK)
    assert stats.mean * 1e6 == pytest.approx(sum(everything) / n, rel=FLOAT_SLACK)
    for name, q in QUANTILES:
        exact = exact_percentile(everything, q)
        got = getattr(stats, name) * 1e6
        assert abs(got - exact) <= exact * BOUND * (1 + FLOAT_SLACK), (name, got, exact)
        assert abs(got - exact) <= exact * RELATIVE_ERROR
        if exact < 2 * SUB:  # below 128 ns every bucket holds one value
            assert got == pytest.approx(exact, rel=FLOAT_SLACK)


@pytest.mark.timeout(60)
def test_every_bucket_middle_is_within_half_a_bucket_of_its_edges() -> None:
    """The bound, bucket by bucket over 1 ns to 10 s: both edges of each bucket land in
    it, and its middle (what summarize() reports) is within 1/128 of either."""
    for idx in range(2 * SUB, bucket_of(10**10) + 1):
        shift = idx // SUB - 1
        low = (idx % SUB + SUB) << shift
        high = low + (1 << shift) - 1
        assert bucket_of(low) == idx == bucket_of(high)
        for edge in (low, high):
            assert abs(bucket_value(idx) - edge) <= edge * BOUND


@pytest.mark.timeout(120)
@PROPERTIES
@given(st.lists(LATENCY, max_size=200), st.lists(LATENCY, max_size=200),
       st.lists(LATENCY, max_size=200))
def test_merge_is_commutative_and_associative_and_counts_add(a: list[int], b: list[int],
                                                             c: list[int]) -> None:
    x, y, z = histogram_of(a), histogram_of(b), histogram_of(c)
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(Histogram.empty()) == x == Histogram.empty().merge(x)
    both = x.merge(y)
    assert all(n == i + j for n, i, j in zip(both.counts, x.counts, y.counts, strict=True))
    assert both.count == len(a) + len(b)
    assert both.sum_ns == sum(a) + sum(b)


@pytest.mark.timeout(120)
@PROPERTIES
@given(st.lists(LATENCY, max_size=300))
def test_histogram_survives_json(latencies: list[int]) -> None:
    h = histogram_of(latencies)
    assert Histogram.from_json(json.loads(json.dumps(h.to_json()))) == h


# -- merging documents: in this process ------------------------------------------------

T0 = 1_795_939_200.0  # 2026-11-29T08:00:00Z


def bench_doc(latencies: Sequence[int], started_at: float, rates: Sequence[int],
              step: float = 0.1, size: int = 64, target: tuple[str, int] = (LOCALHOST, 8000),
              tail: int = 0, **extra: Any) -> dict[str, Any]:
    """A bench --json document as bench writes it (BenchResult.as_dict()): intervals of
    ``step`` s at ``rates`` messages a second, then ``tail`` messages after the last."""
    intervals = [Interval(k * step, (k + 1) * step, round(r * step), round(r * step) * size,
                          0.0, 0.0) for k, r in enumerate(rates)]
    messages = sum(i.messages for i in intervals) + tail
    elapsed = len(rates) * step + (0.01 if tail else 0.0)
    h = histogram_of(latencies)
    config = BenchConfig(target[0], target[1], size=size, connections=2, duration=elapsed)
    result = BenchResult(config, "python", elapsed, messages, messages * size, messages * size,
                         2, 0, 0, h.summary(), intervals, histogram=h, started_at=started_at)
    return {**result.as_dict(), **extra}


def read(*docs: dict[str, Any]) -> list[merge.Run]:
    return [merge.read_run(json.loads(json.dumps(d)), f"doc{k}") for k, d in enumerate(docs)]


RUN = st.tuples(st.lists(LATENCY, max_size=60), st.floats(0, 0.5),
                st.lists(st.integers(0, 100).map(lambda r: r * 10), min_size=1, max_size=30),
                st.integers(0, 50))


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None)
@given(st.lists(RUN, min_size=1, max_size=6), st.integers(1, 5))
def test_documents_add_up_and_merge_again_in_any_grouping(
        runs: list[tuple[list[int], float, list[int], int]], cut: int) -> None:
    docs = [bench_doc(lat, T0 + start, rates, tail=tail) for lat, start, rates, tail in runs]
    whole = merge.merge_runs(read(*docs))
    doc = whole.as_dict()
    assert doc["messages"] == sum(d["messages"] for d in docs)
    for key in ("bytes_sent", "bytes_received", "connections", "connections_opened"):
        assert doc[key] == sum(d[key] for d in docs), key
    h = merged([Histogram.from_json(d["histogram"]) for d in docs])
    assert Histogram.from_json(doc["histogram"]) == h
    assert doc["latency_ms"] == h.summary().as_dict()
    assert sum(i["messages"] for i in doc["intervals"]) == doc["messages"]
    assert sum(i["bytes"] for i in doc["intervals"]) == doc["bytes_received"]
    assert doc["started_at"] == min(d["started_at"] for d in docs)
    assert doc["ended_at"] == max(d["ended_at"] for d in docs)
    # (first cut) + (the rest) again: the same totals, histogram, window and skew
    cut = min(cut, len(docs))
    parts = [merge.merge_runs(read(*docs[:cut])).as_dict()]
    if docs[cut:]:
        parts.append(merge.merge_runs(read(*docs[cut:])).as_dict())
    again = merge.merge_runs(read(*parts))
    redoc = again.as_dict()
    for key in ("messages", "bytes_sent", "bytes_received", "connections", "latency_ms",
                "histogram", "started_at", "ended_at", "errors", "unfinished"):
        assert redoc[key] == doc[key], key
    assert redoc["merged"]["inputs"] == len(docs)
    assert redoc["merged"]["skew_s"] == pytest.approx(doc["merged"]["skew_s"], abs=2e-6)
    if doc["merged"]["window"] is None:
        assert redoc["merged"]["window"] is None
    else:
        assert redoc["merged"]["window"] == pytest.approx(doc["merged"]["window"], abs=2e-6)


@pytest.mark.timeout(60)
def test_combined_rate_counts_the_window_all_ran_in() -> None:
    """Three steady runs, started 0.2 s apart and of different lengths: the rate over
    [latest start, earliest end] is the sum of their rates, not diluted by the edges."""
    docs = [bench_doc([1000], T0, [1000] * 20),           # 0.0-2.0 s at 1000/s
            bench_doc([2000], T0 + 0.2, [500] * 15),      # 0.2-1.7 s at 500/s
            bench_doc([3000], T0 + 0.4, [2000] * 20)]     # 0.4-2.4 s at 2000/s
    m = merge.merge_runs(read(*docs))
    assert m.window == pytest.approx((T0 + 0.4, T0 + 1.7))
    assert m.skew_s == pytest.approx(0.4)
    assert m.rate_per_s == pytest.approx(3500, rel=1e-6)
    assert m.mib_per_s == pytest.approx(3500 * 64 / 2**20, rel=1e-6)
    doc = m.as_dict()
    assert doc["merged"]["rate_per_s"] == 3500.0
    assert doc["messages"] == 20 * 100 + 15 * 50 + 20 * 200
    # interval boundaries cut by the window's edges are pro-rated: a run starting mid-step
    cut = merge.merge_runs(read(bench_doc([1000], T0, [1000] * 20),
                                bench_doc([1000], T0 + 0.05, [1000] * 20)))
    assert cut.rate_per_s == pytest.approx(2000, rel=1e-6)
    assert merge.warnings(cut) == []


@pytest.mark.timeout(60)
def test_runs_that_never_overlap_fall_back_to_the_sum_of_their_rates() -> None:
    docs = [bench_doc([1000], T0, [1000] * 10), bench_doc([1000], T0 + 5, [3000] * 10)]
    m = merge.merge_runs(read(*docs))
    assert m.window is None
    assert m.rate_per_s == pytest.approx(docs[0]["messages_per_s"] + docs[1]["messages_per_s"])
    lines = merge.warnings(m)
    assert "doc1: started 5.000 s after doc0" in lines
    assert any("never all ran at once" in line for line in lines)
    assert m.as_dict()["merged"]["window"] is None


# -- the command: real runs of bench against a real serve --------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Three bench --json runs at once against one serve (as three pods would: started
    together with --start-at), and a bench --udp --json run: their files by name."""
    out = tmp_path_factory.mktemp("results")
    with ServeProcess("--port", "0", "--udp", "--udp-rate", "0") as server:
        port = server.wait_listening()
        start = f"{time.time() + 4:.3f}"  # time to start four processes
        argv = [sys.executable, "-m", "pytcpecho", "bench", f"{LOCALHOST}:{port}", "--json"]
        runs = {name: subprocess.Popen(
                    [*argv, "-c", "2", "-t", "0.5", "--size", "1KiB", "--start-at", start],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("a", "b", "c")}
        runs["udp"] = subprocess.Popen([*argv, "--udp", "-c", "1", "-t", "0.3", "--rate", "500"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        files = {}
        for name, proc in runs.items():
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, (name, stdout, stderr)
            files[name] = out / f"{name}.json"
            files[name].write_text(stdout)
        server.stop()
    yield files


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def merge_json(*args: str, input: bytes | None = None) -> dict[str, Any]:
    result = cli("merge", "--json", *args, input=input, timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def tcp(results: dict[str, Path]) -> list[Path]:
    return [results[name] for name in ("a", "b", "c")]


@pytest.mark.timeout(120)
def test_real_runs_merge_exactly(results: dict[str, Path]) -> None:
    files = tcp(results)
    docs = [load(f) for f in files]
    doc = merge_json(*map(str, files))
    assert doc["format"] == 1 and doc["index"] is None
    for key in ("messages", "bytes_sent", "bytes_received", "connections",
                "connections_opened", "errors", "integrity_failures", "unfinished"):
        assert doc[key] == sum(d[key] for d in docs), key
    assert doc["messages"] > 0 and doc["errors"] == 0
    h = merged([Histogram.from_json(d["histogram"]) for d in docs])
    assert Histogram.from_json(doc["histogram"]) == h
    assert h.count == sum(Histogram.from_json(d["histogram"]).count for d in docs)
    assert doc["latency_ms"] == h.summary().as_dict()
    starts, ends = [d["started_at"] for d in docs], [d["ended_at"] for d in docs]
    assert doc["started_at"] == min(starts) and doc["ended_at"] == max(ends)
    m = doc["merged"]
    assert m["inputs"] == 3
    assert m["skew_s"] == pytest.approx(max(starts) - min(starts), abs=2e-6)
    assert m["skew_s"] < 0.5  # --start-at: together
    assert m["window"] == pytest.approx([max(starts), min(ends)], abs=2e-6)
    # each run ran at a steady rate all through the common window
    assert m["rate_per_s"] == pytest.approx(sum(d["messages_per_s"] for d in docs), rel=0.2)

    text = cli("merge", *map(str, files), timeout=60)
    assert text.returncode == 0 and text.stderr == "", text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("Merged 3 runs of ")
    assert f"Messages: {doc['messages']} in " in text.stdout
    lat = h.summary()
    assert (f"Latency ms: min {lat.min:.3f} p50 {lat.p50:.3f} p90 {lat.p90:.3f} "
            f"p99 {lat.p99:.3f} p99.9 {lat.p999:.3f} max {lat.max:.3f}") in lines
    assert "Connections: 6 opened, 0 errors, 0 integrity failures" in lines
    assert any(line.startswith("Start skew: ") for line in lines)
    assert any(line.startswith("Window all ran in: ") for line in lines)
    assert f"Combined rate: {m['rate_per_s']:.1f} msg/s" in text.stdout


@pytest.mark.timeout(120)
def test_standard_input_and_json_lines_read_alike(results: dict[str, Path],
                                                  tmp_path: Path) -> None:
    files = tcp(results)
    expected = merge_json(*map(str, files))
    pretty = b"".join(f.read_bytes() for f in files)  # cat a.json b.json c.json
    lines = "".join(json.dumps(load(f)) + "\n" for f in files)
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text(lines)
    assert merge_json("-", input=pretty) == expected
    assert merge_json("-", input=lines.encode()) == expected
    assert merge_json(str(jsonl)) == expected
    assert merge_json(str(files[0]), "-", input=b"".join(f.read_bytes() for f in files[1:])) \
        == expected


@pytest.mark.timeout(120)
def test_a_merged_result_merges_again(results: dict[str, Path], tmp_path: Path) -> None:
    a, b, c = tcp(results)
    all_three = merge_json(str(a), str(b), str(c))
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps(merge_json(str(a), str(b)), indent=2))
    again = merge_json(str(ab), str(c))
    for key in ("messages", "bytes_sent", "bytes_received", "connections",
                "connections_opened", "errors", "latency_ms", "histogram", "started_at",
                "ended_at"):
        assert again[key] == all_three[key], key
    assert again["merged"]["inputs"] == 3
    assert again["merged"]["window"] == pytest.approx(all_three["merged"]["window"], abs=2e-6)
    assert again["merged"]["skew_s"] == pytest.approx(all_three["merged"]["skew_s"], abs=2e-6)
    assert again["merged"]["rate_per_s"] == pytest.approx(all_three["merged"]["rate_per_s"],
                                                          rel=0.05)
    text = cli("merge", str(ab), str(c), timeout=60)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("Merged 3 runs (2 inputs) of ")


def write(tmp_path: Path, name: str, doc: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("change", [{"errors": 2, "problems": ["connection reset by peer"]},
                                    {"integrity_failures": 1}, {"interrupted": True}])
def test_an_input_not_intact_makes_the_merge_not_ok(results: dict[str, Path], tmp_path: Path,
                                                    change: dict[str, Any]) -> None:
    a, b = load(results["a"]), load(results["b"])
    bad = write(tmp_path, "bad.json", {**b, **change})
    out = cli("merge", str(results["a"]), bad, timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr)
    warned = out.stderr.strip().splitlines()
    assert len(warned) == 1 and "Traceback" not in out.stderr
    assert warned[0].startswith(f"pytcpecho merge: warning: {bad}: ")
    assert "the merged result is not ok" in warned[0]
    doc = json.loads(cli("merge", "--json", str(results["a"]), bad, timeout=60).stdout)
    for key in ("errors", "integrity_failures"):
        assert doc[key] == a[key] + change.get(key, 0)
    assert doc["interrupted"] == bool(change.get("interrupted"))
    if "problems" in change:
        assert f"Problem: {bad}: connection reset by peer" in out.stdout
        assert doc["problems"] == [f"{bad}: connection reset by peer"]


def _truncated(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    text = results["a"].read_text()
    path = tmp_path / "cut.json"
    path.write_text(text[:len(text) // 2])
    return [str(path)], f"{path}: truncated JSON"


def _truncated_line(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    lines = [json.dumps(load(results[n])) for n in ("a", "b", "c")]
    lines[1] = lines[1][:-40]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return [str(path)], f"{path}:2: truncated JSON"


def _changed(key: str, value: object, expect: str) -> Any:
    def make(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
        doc = load(results["b"])
        if value is None:
            del doc[key]
        else:
            doc[key] = value
        path = write(tmp_path, f"{key}.json", doc)
        return [str(results["a"]), path], f"{path}: {expect}"
    return make


def _udp(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    return ([str(results["a"]), str(results["udp"])],
            f"{results['udp']}: a UDP bench result: merge reads TCP bench results only")


def _no_files(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    return [], "no input"


def _missing(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    return [str(results["a"]), str(tmp_path / "nope.json")], \
        f"cannot read {tmp_path / 'nope.json'}: No such file or directory"


def _directory(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    return [str(tmp_path)], f"cannot read {tmp_path}: Is a directory"


def _empty(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "empty.json"
    path.write_text("\n")
    return [str(path)], f"{path}: empty"


def _not_an_object(results: dict[str, Path], tmp_path: Path) -> tuple[list[str], str]:
    path = write(tmp_path, "list.json", [load(results["a"])])
    return [path], f"{path}: not a bench result"


ANOTHER_LAYOUT = {"layout": {"unit": "ns", "sub_bits": 5, "buckets": 1280},
                  "counts": [[40, 3]], "min_ns": 40, "max_ns": 40, "sum_ns": 120}

BAD_INPUTS = {
    "truncated": _truncated,
    "truncated-line": _truncated_line,
    "another-format": _changed("format", 2, "format 2 (from pytcpecho "),
    "no-format": _changed("format", None,
                          'not a bench --json result that merge reads: no "format"'),
    "no-histogram": _changed("histogram", None, 'no "histogram"'),
    "another-layout": _changed("histogram", ANOTHER_LAYOUT, "its histogram has another layout"),
    "bad-bucket": _changed("histogram", {**ANOTHER_LAYOUT, "layout": {"unit": "ns",
                           "sub_bits": 6, "buckets": 2560}, "counts": [[9999, 1]]},
                           "its histogram has a bad bucket"),
    "bad-count": _changed("messages", -1, '"messages" is missing, or not a whole number'),
    "udp": _udp,
    "no-files": _no_files,
    "missing-file": _missing,
    "directory": _directory,
    "empty-file": _empty,
    "not-an-object": _not_an_object,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_it(results: dict[str, Path], tmp_path: Path,
                                         case: str) -> None:
    files, expect = BAD_INPUTS[case](results, tmp_path)
    out = cli("merge", *files, timeout=60)
    line = assert_one_line_error(out, 2)
    assert line.startswith("pytcpecho merge: error: "), line
    assert expect in line, line
    assert out.stdout == ""


@pytest.mark.timeout(120)
def test_a_bad_document_on_standard_input_is_named_by_its_line(
        results: dict[str, Path]) -> None:
    lines = [json.dumps(load(results[n])) for n in ("a", "b")] + ['{"format": 1}']
    out = cli("merge", "-", input="\n".join(lines).encode(), timeout=60)
    line = assert_one_line_error(out, 2)
    assert '<stdin>:3: no "histogram"' in line, line


@pytest.mark.timeout(120)
def test_another_target_is_a_named_warning(results: dict[str, Path], tmp_path: Path) -> None:
    a = load(results["a"])
    other = write(tmp_path, "other.json", {**load(results["b"]), "target": "10.0.0.5:8000"})
    out = cli("merge", str(results["a"]), other, str(results["c"]), timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stderr.splitlines() == [
        f"pytcpecho merge: warning: {other}: target 10.0.0.5:8000, not {a['target']} as "
        f"{results['a']}"]
    assert "Merged 3 runs of " in out.stdout


@pytest.mark.timeout(120)
def test_a_start_more_than_a_second_apart_is_a_named_warning(results: dict[str, Path],
                                                             tmp_path: Path) -> None:
    b = load(results["b"])
    late = write(tmp_path, "late.json", {**b, "started_at": b["started_at"] + 1.5,
                                         "ended_at": b["ended_at"] + 1.5})
    out = cli("merge", str(results["a"]), late, timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    warned = out.stderr.splitlines()
    apart = b["started_at"] + 1.5 - load(results["a"])["started_at"]
    assert (f"pytcpecho merge: warning: {late}: started {apart:.3f} s after {results['a']}"
            in warned), warned
    # 0.5 s runs 1.5 s apart never ran at once: said too, and the rate falls back
    assert any("never all ran at once" in line for line in warned), warned
    assert "Window all ran in: none" in out.stdout
