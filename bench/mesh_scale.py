"""What a mesh costs, measured: N nodes in network namespaces, each ``pytcpecho mesh``.

    python bench/mesh_scale.py --nodes 24 [--measure 60] [--json FILE]

Builds the lab of the mesh tests (two subnets and a router, one name for all
nodes), starts every node with the default options, and reports: the seconds
from the last node's start until every node has pinged every other once, and
until it has bulk-checked every other once, then, over ``--measure`` seconds of steady state,
each node's CPU (user + system, percent of one core) and resident memory, and
the series one node exports.  Needs root (namespaces), as the netns tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mesh_lab import HTTP_PORT, MeshLab, mesh_lab  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def statuses(lab: MeshLab) -> dict[str, dict[str, Any]]:
    """Every node's /status, asked eight at a time; a node too busy to answer is left out."""
    def ask(host: str) -> tuple[str, dict[str, Any] | None]:
        try:
            return host, lab.status(host)
        except RuntimeError as exc:
            print(f"{host}: {str(exc)[-200:]}", file=sys.stderr)
            return host, None
    with ThreadPoolExecutor(8) as pool:
        return {h: s for h, s in pool.map(ask, list(lab.nodes)) if s is not None}


def all_checked(lab: MeshLab, check: str, each: int) -> bool:
    """Every node has a result of ``check`` for each of its ``each`` peers."""
    answers = statuses(lab)
    if len(answers) < len(lab.nodes):
        return False
    for status in answers.values():
        peers = status["peers"]
        if len(peers) != each:
            return False
        if any(p["checks"][check] is None for p in peers.values()):
            return False
    return True


NEIGH = Path("/proc/sys/net/ipv4/neigh/default")
NEIGH_ROOM = {"gc_thresh1": 8192, "gc_thresh2": 16384, "gc_thresh3": 32768}
"""The kernel's ARP table is one for all namespaces, and its default limit (1024 entries)
overflows at about 40 nodes on one subnet, each knowing every other: room for the lab."""


@contextlib.contextmanager
def neighbour_room() -> Iterator[None]:
    before = {name: (NEIGH / name).read_text() for name in NEIGH_ROOM}
    try:
        for name, value in NEIGH_ROOM.items():
            if int(before[name]) < value:
                (NEIGH / name).write_text(str(value))
        yield
    finally:
        for name in reversed(list(NEIGH_ROOM)):  # thresh3 last down, as it went up first
            (NEIGH / name).write_text(before[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--measure", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="more options for every node")
    args = parser.parse_args()
    with neighbour_room(), mesh_lab(args.nodes, spare=0) as lab:
        for host in lab.members:
            lab.start_node(host, *args.extra)
        sample = int(args.extra[args.extra.index("--sample-peers") + 1]) \
            if "--sample-peers" in args.extra else 0
        each = min(sample or args.nodes, args.nodes - 1)
        started = time.monotonic()
        covered = {}
        for check in ("ping", "bulk"):
            while not all_checked(lab, check, each):
                if time.monotonic() - started > 900:
                    raise SystemExit(f"not every pair had a {check} check in 900 s")
                time.sleep(0.5)  # polling the nodes' status, not waiting for a fixed time
            covered[check] = round(time.monotonic() - started, 1)
        pids = {h: p.proc.pid for h, p in lab.nodes.items()}
        before = {h: cpu_seconds(pid) for h, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(args.measure)  # the measurement window itself
        elapsed = time.monotonic() - t0
        cpu = {h: (cpu_seconds(pid) - before[h]) / elapsed * 100 for h, pid in pids.items()}
        rss = {h: rss_mib(pid) for h, pid in pids.items()}
        metrics = lab.fetch(f"http://{lab.addresses['n1']}:{HTTP_PORT}/metrics").decode()
        series = sum(1 for line in metrics.splitlines() if line and not line.startswith("#"))
        states = {(h, k): p["state"] for h, st in statuses(lab).items()
                  for k, p in st["peers"].items()}
        problems = Counter(p["problem"].split(":")[0] for st in statuses(lab).values()
                           for p in st["peers"].values() if p["problem"])
    report = {
        "nodes": args.nodes, "options": args.extra or "defaults",
        "seconds_until_every_pair_checked": covered,
        "cpu_percent_per_node": {"mean": round(statistics.mean(cpu.values()), 2),
                                 "max": round(max(cpu.values()), 2)},
        "rss_mib_per_node": {"mean": round(statistics.mean(rss.values()), 1),
                             "max": round(max(rss.values()), 1)},
        "series_per_node": series,
        "pairs_intact": sum(1 for s in states.values() if s == "intact"),
        "pairs": len(states),
        "states": Counter(states.values()),
        "problems": problems.most_common(5),
        "measured_s": round(elapsed, 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
