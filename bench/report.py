"""Turn a bench run (pytest-benchmark JSON) into ratios: a Markdown table and a PNG chart.

usage: python bench/report.py bench/results.json [--chart bench/results.png]

Every figure comes from the loadgen's numbers in ``extra_info``; each cell is
a ratio to the C reference measured in the same run (the C thread server, or
the C load generator in the loadgen groups), so a shared machine's drift
between runs cancels out as far as it can.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

Entries = dict[str, dict[str, dict[str, Any]]]  # workload -> server -> extra_info

SERVER_ORDER = ("c-thread", "c-splice", "pytcpecho-cython", "pytcpecho-cython-logged",
                "pytcpecho-splice", "pytcpecho-python", "pytcpecho-workers2", "threading",
                "asyncio", "uvloop", "exercise")
UDP_SERVER_ORDER = ("c-udp", "pytcpecho-udp")
NOT_TCP = ("idle-", "loadgen-", "keep-time-", "udp-")  # not in the TCP throughput table


def load(path: Path) -> Entries:
    doc = json.loads(path.read_text())
    entries: Entries = defaultdict(dict)
    for bench in doc["benchmarks"]:
        info = bench.get("extra_info") or {}
        if "workload" in info:
            entries[info["workload"]][info["server"]] = info
    return entries


def metric(workload: str) -> tuple[str, str]:
    """The figure that matters for a workload, and its unit."""
    if workload.endswith("-stream"):
        return "mib_per_s", "MiB/s"
    if workload.startswith("idle-"):
        return "rss_mib", "MiB RSS"
    if workload.startswith("udp-"):
        return "echoed_per_s", "pkt/s"
    if workload == "connect-each":
        return "messages_per_s", "conn/s"
    return "messages_per_s", "msg/s"


def reference(workload: str) -> str:
    if workload.startswith(("loadgen-", "udp-loadgen-")):
        return "c-loadgen"
    return "c-udp" if workload.startswith("udp-") else "c-thread"


def ratio(entries: Entries, workload: str, server: str, ref: str | None = None) -> float | None:
    key, _ = metric(workload)
    group = entries.get(workload, {})
    ref = ref or reference(workload)
    if server not in group or ref not in group or not group[ref].get(key):
        return None
    return float(group[server][key]) / float(group[ref][key])


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(entries: Entries) -> str:
    """One row per workload: the reference's figure, then each server's ratio to it."""
    workloads = [w for w in entries if not w.startswith(NOT_TCP)]
    servers = [s for s in SERVER_ORDER if any(s in entries[w] for w in workloads)]
    lines = ["| workload | C thread server | " + " | ".join(servers) + " |",
             "|---|---:|" + "---:|" * len(servers)]
    for w in workloads:
        key, unit = metric(w)
        ref = entries[w].get("c-thread", {}).get(key)
        cells = []
        for s in servers:
            r = ratio(entries, w, s)
            cells.append("" if r is None else f"{r:.2f}x")
        lines.append(f"| {w} | {_fmt(ref) + ' ' + unit if ref else ''} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def cpu_ratio(entries: Entries, workload: str, server: str, ref: str = "c-thread",
              key: str = "server_cpu_us_per_message") -> float | None:
    """Reference's server CPU per message / this server's: above 1 means cheaper than C."""
    group = entries.get(workload, {})
    mine, theirs = group.get(server, {}).get(key), group.get(ref, {}).get(key)
    return float(theirs) / float(mine) if mine and theirs else None


def cpu_table(entries: Entries) -> str:
    """Server CPU per message: far steadier than throughput on a shared machine."""
    workloads = [w for w in entries
                 if any("server_cpu_us_per_message" in i for i in entries[w].values())]
    if not workloads:
        return ""
    servers = [s for s in SERVER_ORDER if any(s in entries[w] for w in workloads)]
    lines = ["| workload | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    for w in workloads:
        cells = []
        for s in servers:
            us = entries[w].get(s, {}).get("server_cpu_us_per_message")
            r = cpu_ratio(entries, w, s)
            cells.append("" if us is None else f"{us:.2f} ({r:.2f}x)" if r else f"{us:.2f}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(entries: Entries) -> str:
    idle = sorted((w for w in entries if w.startswith("idle-")), key=lambda w: int(w[5:]))
    if not idle:
        return ""
    servers = [s for s in SERVER_ORDER if any(s in entries[w] for w in idle)]
    lines = ["| server | " + " | ".join(f"RSS, {w[5:]} idle connections" for w in idle) + " |",
             "|---|" + "---:|" * len(idle)]
    for s in servers:
        cells = []
        for w in idle:
            info = entries[w].get(s)
            held = "" if info is None or info.get("connections", int(w[5:])) == int(w[5:]) \
                else f", {info['connections']} held: the fd limit"
            cells.append("" if info is None else
                         f"{info['rss_mib']:.1f} MiB ({info['kib_per_connection']:.1f} "
                         f"KiB/conn{held})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _udp_cell(info: dict[str, Any], ratio_: float | None) -> str:
    """One UDP entry: echoed/s (or its ratio), p99, loss, server CPU per datagram."""
    if not info:
        return ""
    head = f"{ratio_:.2f}x" if ratio_ is not None else f"{_fmt(info['echoed_per_s'])} pkt/s"
    parts = [head]
    if "latency_p99_ms" in info:
        parts.append(f"p99 {info['latency_p99_ms']:.3g} ms")
    if info.get("loss"):
        parts.append(f"loss {info['loss']:.2%}")
    if "server_cpu_us_per_datagram" in info:
        parts.append(f"{info['server_cpu_us_per_datagram']:.2f} us CPU/pkt")
    return ", ".join(parts)


def udp_table(entries: Entries) -> str:
    """UDP echo: the C UDP server's echoed datagrams per second, pytcpecho's ratio to it;
    each with its p99 round trip, its loss and its CPU per echoed datagram."""
    workloads = [w for w in entries if w.startswith("udp-") and not w.startswith("udp-loadgen-")]
    if not workloads:
        return ""
    lines = ["| workload | C UDP server | pytcpecho-udp |", "|---|---:|---:|"]
    for w in workloads:
        g = entries[w]
        lines.append(f"| {w} | {_udp_cell(g.get('c-udp', {}), None)} | "
                     f"{_udp_cell(g.get('pytcpecho-udp', {}), ratio(entries, w, 'pytcpecho-udp'))}"
                     " |")
    return "\n".join(lines)


def udp_loadgen_table(entries: Entries) -> str:
    groups = [w for w in entries if w.startswith("udp-loadgen-")]
    if not groups:
        return ""
    lines = ["| against the C UDP server | C UDP load generator | pytcpecho bench --udp | ratio |",
             "|---|---:|---:|---:|"]
    for w in groups:
        g = entries[w]
        r = ratio(entries, w, "pytcpecho-bench")
        lines.append(f"| {w[12:]} | {_udp_cell(g.get('c-loadgen', {}), None)} | "
                     f"{_udp_cell(g.get('pytcpecho-bench', {}), None)} | "
                     f"{'' if r is None else f'{r:.2f}x'} |")
    return "\n".join(lines)


def cross_ratio(entries: Entries, workload: str, base: str, server: str) -> float | None:
    """One server's figure in ``workload`` over its own in ``base`` (same run)."""
    key, _ = metric(workload)
    mine = entries.get(workload, {}).get(server, {}).get(key)
    own = entries.get(base, {}).get(server, {}).get(key)
    return float(mine) / float(own) if mine is not None and own else None


def _integrity(info: dict[str, Any]) -> str:
    """Integrity failures as the load generator counted them; the C one checks nothing."""
    failures = info.get("integrity_failures")
    if failures is None or info.get("server") == "c-loadgen":
        return "not checked"
    return f"{failures} failures"


def loadgen_table(entries: Entries) -> str:
    groups = [w for w in entries if w.startswith("loadgen-")]
    lines = ["| against the C thread server | C load generator | pytcpecho bench | ratio | "
             "echo verified (C / pytcpecho) |",
             "|---|---:|---:|---:|---|"]
    for w in groups:
        g = entries[w]
        c, p = g.get("c-loadgen", {}), g.get("pytcpecho-bench", {})
        r = ratio(entries, w, "pytcpecho-bench")
        lines.append(f"| {w[8:]} | {_fmt(c.get('messages_per_s', 0))} msg/s | "
                     f"{_fmt(p.get('messages_per_s', 0))} msg/s | "
                     f"{'' if r is None else f'{r:.2f}x'} | "
                     f"{_integrity(c) if c else ''} / {_integrity(p) if p else ''} |")
    return "\n".join(lines) if groups else ""


def targets(entries: Entries) -> list[tuple[str, str, bool | None]]:
    """The performance targets, each as (what, measured, met)."""
    out: list[tuple[str, str, bool | None]] = []

    def add(what: str, value: float | None, goal: float, above: bool = True,
            unit: str = "x") -> None:
        if value is None:
            out.append((what, "not measured", None))
            return
        met = value >= goal if above else value < goal
        out.append((what, f"{value:.2f}{unit}", met))

    add("cython vs C thread, 100KiB-x10 (>= 1.0x)",
        ratio(entries, "100KiB-x10", "pytcpecho-cython"), 1.0)
    add("cython vs C thread, 1KiB-x10 (>= 0.95x)",
        ratio(entries, "1KiB-x10", "pytcpecho-cython"), 0.95)
    add("  same, by server CPU per message (C's / cython's)",
        cpu_ratio(entries, "100KiB-x10", "pytcpecho-cython"), 1.0)
    add("  same at 1KiB-x10, by server CPU per message",
        cpu_ratio(entries, "1KiB-x10", "pytcpecho-cython"), 0.95)
    add("splice vs C splice, 100KiB-x10 (>= 0.95x)",
        ratio(entries, "100KiB-x10", "pytcpecho-splice", "c-splice"), 0.95)
    for w in ("gil-100KiB-x10", "gil-1KiB-x10"):
        add(f"GIL pressure: cython vs C thread + CPU process, {w[4:]} (>= 0.8x)",
            ratio(entries, w, "pytcpecho-cython"), 0.8)
        add(f"GIL pressure: cython vs python core, {w[4:]} (>= 30x)",
            ratio(entries, w, "pytcpecho-cython", "pytcpecho-python"), 30)
    p99 = entries.get("gil-1KiB-x10", {}).get("pytcpecho-cython", {}).get("latency_p99_ms")
    add("GIL pressure: cython p99 at 1 KiB (< 2 ms)", p99, 2.0, above=False, unit=" ms")
    add("connect per message: cython -q vs C thread (>= 0.95x)",
        ratio(entries, "connect-each", "pytcpecho-cython"), 0.95)
    add("connect per message: cython with per-connection log lines vs C thread (>= 0.8x)",
        ratio(entries, "connect-each", "pytcpecho-cython-logged"), 0.8)
    add("connect per message: cython vs the original exercise's server (>= 2x)",
        ratio(entries, "connect-each", "pytcpecho-cython", "exercise"), 2.0)
    add("cython vs uvloop, 100KiB-x10 (>= 1.4x)",
        ratio(entries, "100KiB-x10", "pytcpecho-cython", "uvloop"), 1.4)
    idle = [w for w in entries if w.startswith("idle-")]
    if idle:
        most = max(idle, key=lambda w: int(w[5:]))
        rss = entries[most].get("pytcpecho-cython", {}).get("rss_mib")
        add(f"cython RSS with {most[5:]} idle connections (< 512 MiB)", rss, 512,
            above=False, unit=" MiB")
    errors = entries.get("1000-connections", {}).get("pytcpecho-cython", {}).get("errors")
    add("1000 active connections: errors (== 0)", None if errors is None else float(errors),
        0.5, above=False, unit="")
    add("pytcpecho bench vs C load generator, 100KiB-x10 (>= 0.9x)",
        ratio(entries, "loadgen-100KiB-x10", "pytcpecho-bench"), 0.9)
    add("pytcpecho bench vs C load generator, 1KiB-x10 (>= 0.95x)",
        ratio(entries, "loadgen-1KiB-x10", "pytcpecho-bench"), 0.95)
    add("pytcpecho bench vs C load generator, 1KiB-x1000 (>= 0.9x)",
        ratio(entries, "loadgen-1KiB-x1000", "pytcpecho-bench"), 0.9)
    keep = next((g.get("pytcpecho-bench", {}) for w, g in entries.items()
                 if w.startswith("keep-time-")), {})
    n = next((w[10:] for w in entries if w.startswith("keep-time-")), "10000")
    off = keep.get("duration_off_s")
    add(f"bench -c {n} -t {keep.get('seconds', 10):g}: run ends within 0.2 s of -t, "
        "off by (s)", None if off is None else abs(off), 0.2, above=False, unit=" s")
    add(f"bench -c {n}: latest interval line vs its due time (< 50 ms)",
        keep.get("interval_late_ms"), 50, above=False, unit=" ms")
    errors = keep.get("errors")
    add(f"bench -c {n}: errors (== 0)", None if errors is None else float(errors), 0.5,
        above=False, unit="")
    udp_targets(entries, add, out)
    return out


def udp_targets(entries: Entries, add: Callable[..., None],
                out: list[tuple[str, str, bool | None]]) -> None:
    """The UDP targets; rows that only inform (p99s, what CPU contention alone costs the
    C server) have no verdict."""

    def note(what: str, value: str | None) -> None:
        out.append((what, "not measured" if value is None else value, None))

    def p99s(workload: str) -> str | None:
        g = entries.get(workload, {})
        mine, c = (g.get(s, {}).get("latency_p99_ms") for s in ("pytcpecho-udp", "c-udp"))
        return None if mine is None or c is None else f"{mine:.3g} / {c:.3g} ms"

    def cpu(workload: str) -> float | None:
        return cpu_ratio(entries, workload, "pytcpecho-udp", "c-udp",
                         "server_cpu_us_per_datagram")

    def gil(mode: str, server: str) -> float | None:
        return cross_ratio(entries, f"udp-gil-{mode}-64B", f"udp-{mode}-64B", server)

    for size in ("64B", "1400B"):
        add(f"UDP request/response {size}: pytcpecho vs C UDP server (>= 1.0x)",
            ratio(entries, f"udp-rr-{size}", "pytcpecho-udp"), 1.0)
        note("  p99 round trip, pytcpecho / C", p99s(f"udp-rr-{size}"))
        add("  same, by server CPU per echoed datagram (C's / pytcpecho's)",
            cpu(f"udp-rr-{size}"), 1.0)
    add("UDP batched open loop 64B, echoed/s: pytcpecho vs C UDP server (>= 1.5x)",
        ratio(entries, "udp-batch-64B", "pytcpecho-udp"), 1.5)
    note("  p99 round trip, pytcpecho / C", p99s("udp-batch-64B"))
    add("  same, by server CPU per echoed datagram (C's / pytcpecho's)",
        cpu("udp-batch-64B"), 1.5)
    for mode in ("rr", "batch"):
        add(f"pytcpecho bench --udp vs C UDP load generator, {mode} 64B (>= 0.9x)",
            ratio(entries, f"udp-loadgen-{mode}-64B", "pytcpecho-bench"), 0.9)
    # GIL pressure in request/response: the server mostly waits for the next datagram,
    # so a CPU-bound thread costs it little CPU, and whatever it loses is the GIL's.
    add("UDP GIL pressure: pytcpecho with a CPU-bound thread vs without, rr 64B (>= 0.8x)",
        gil("rr", "pytcpecho-udp"), 0.8)
    c = gil("rr", "c-udp")
    note("  for scale: C UDP server with a CPU-bound process beside it vs without",
         None if c is None else f"{c:.2f}x")
    # Saturated, a server needs a whole core, and on 2 cores the CPU-bound thread takes
    # one from it and the load: the C server's figure says what that alone costs.
    mine, c = gil("batch", "pytcpecho-udp"), gil("batch", "c-udp")
    note("UDP GIL pressure, batch 64B (no target: the CPU-bound thread takes a core): "
         "pytcpecho with a CPU-bound thread vs without",
         None if mine is None else f"{mine:.2f}x")
    note("  for scale: C UDP server with a CPU-bound process beside it vs without",
         None if c is None else f"{c:.2f}x")


def targets_table(entries: Entries) -> str:
    lines = ["| target | measured | met |", "|---|---:|:---:|"]
    for what, value, met in targets(entries):
        lines.append(f"| {what} | {value} | {'' if met is None else ('yes' if met else 'no')} |")
    return "\n".join(lines)


def chart(entries: Entries, path: Path) -> None:
    """Grouped bars: each server's ratio to the C thread server, per workload (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in entries if not w.startswith(NOT_TCP)]
    servers = [s for s in SERVER_ORDER if any(s in entries[w] for w in workloads)]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(servers)
    for i, s in enumerate(servers):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            r = ratio(entries, w, s)
            if r:
                xs.append(j + i * width - 0.4 + width / 2)
                ys.append(r)
        ax.bar(xs, ys, width, label=s, color=plt.get_cmap("tab20")(i))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)), workloads, rotation=15)
    ax.set_ylabel("throughput / C thread server (log)")
    ax.set_title("pytcpecho bench: echo throughput relative to a C thread-per-connection server")
    ax.legend(ncol=5, fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--chart", type=Path, default=None, help="write a PNG chart here")
    args = parser.parse_args()
    entries = load(args.results)
    parts = ["Throughput, as a ratio to the C thread server in the same run:", table(entries)]
    if cpu := cpu_table(entries):
        parts += ["Server CPU per message, microseconds (ratio: the C thread server's CPU per "
                  "message / this server's; above 1 is cheaper than C):", cpu]
    if lg := loadgen_table(entries):
        parts += ["Load generator (message -> echo loop; xN: N connections):", lg]
    if udp := udp_table(entries):
        parts += ["UDP echo, the C UDP load generator's load (rr: request/response; batch: "
                  "open loop, sendmmsg batches); pytcpecho as a ratio to the C UDP server "
                  "in the same run:", udp]
    if ulg := udp_loadgen_table(entries):
        parts += ["UDP load generator (echoed datagrams per second):", ulg]
    if mem := memory_table(entries):
        parts += ["Server memory with idle connections:", mem]
    parts += ["Targets:", targets_table(entries)]
    print("\n\n".join(parts))
    if args.chart:
        chart(entries, args.chart)


if __name__ == "__main__":
    main()
