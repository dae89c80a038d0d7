"""The whole mesh as one matrix: every node's /status, gathered, and the page that shows it.

As goldpinger's check-all does, the node asked for the matrix asks each of its
peers for its /status (on the same HTTP port as its own), a few at a time,
each within ``GATHER_TIMEOUT``; a peer that does not answer, or answers with
something else, is a row that says so.  The page is plain HTML and CSS made
here, with nothing to fetch: rows are the checking nodes, columns the checked
ones, a cell's colour its state (a lossy one also shows its loss) and its title the
round trips, the hops and the problem.
"""

from __future__ import annotations

import html
import ipaddress
import json
import time
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .mesh import Mesh
from .units import format_hostport, parse_hostport

GATHER_TIMEOUT = 3.0
GATHER_AT_ONCE = 16
GATHER_BUDGET = 10.0
"""Seconds one gathering may take in all: peers not asked by then are rows that say so."""
MAX_PAGE_NODES = 200
"""Rows and columns the page shows at most (the first, in address order); /mesh has all."""
MAX_STATUS_BYTES = 8 << 20
"""A /status larger than this is not a peer's (4096 peers fit in a few MB)."""
SELF = "this node"


def gather(mesh: Mesh, http_port: int) -> dict[str, Any]:
    """Every node's view: this one's own status, and each peer's, fetched now."""
    own = mesh.status()
    me = mesh.own_key or SELF
    peers = mesh.snapshot()
    nodes: dict[str, Any] = {me: {**own, "reached": True, "error": None}}
    deadline = time.monotonic() + GATHER_BUDGET
    with ThreadPoolExecutor(min(GATHER_AT_ONCE, max(1, len(peers))),
                            thread_name_prefix="pytcpecho-gather") as pool:
        answers = pool.map(lambda p: _fetch(p.address[0], http_port, deadline), peers)
        for peer, answer in zip(peers, answers, strict=True):
            nodes[peer.key] = answer
    return {"from": me, "time": round(time.time(), 3), "nodes": nodes}


def _fetch(ip: str, port: int, deadline: float) -> dict[str, Any]:
    url = f"http://{format_hostport(ip, port)}/status"
    if time.monotonic() >= deadline:  # a large mesh: the page comes in time, partly
        return {"reached": False, "peers": {},
                "error": f"not asked: the {GATHER_BUDGET:g} s for gathering were up"}
    try:
        with urllib.request.urlopen(url, timeout=GATHER_TIMEOUT) as answer:
            body = answer.read(MAX_STATUS_BYTES + 1)
        if len(body) > MAX_STATUS_BYTES:
            raise ValueError(f"its /status is over {MAX_STATUS_BYTES >> 20} MiB")
        status = json.loads(body)
        if not isinstance(status, dict) or not isinstance(status.get("peers"), dict):
            raise ValueError("its /status is not a pytcpecho mesh status")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"reached": False, "error": f"no status from {url}: {reason}", "peers": {}}
    return {**status, "reached": True, "error": None}


# -- the page -----------------------------------------------------------------------

_LABELS = {"intact": "intact", "mtu": "MTU?", "corrupt": "corrupt", "down": "down",
           "degraded": "degraded", "lossy": "lossy", "unknown": "…"}
_LEGEND = {"intact": "every byte back intact",
           "mtu": "pings intact, bulk stalls: suspected path-MTU blackhole",
           "corrupt": "an echo differed from what was sent",
           "down": "the ping failed", "degraded": "bulk check failed otherwise",
           "lossy": "TCP intact, UDP datagrams lost (the share lost)",
           "unknown": "not checked yet"}
NO_UDP = "no UDP"
"""What a cell adds when the peer refuses datagrams (it runs ``mesh --no-udp``)."""
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: center; }
th { background: #f3f3f3; font-weight: 600; }
th.from { text-align: left; }
td.intact { background: #bfe8c4; } td.mtu { background: #ffd27f; }
td.corrupt { background: #f08fb0; } td.down { background: #f59a8a; }
td.degraded { background: #f7e08a; } td.unknown { background: #e6e6e6; }
td.lossy { background: #c9b8f0; } td small.udp { display: block; font-size: 11px; }
td.self { background: #fff; color: #999; } td.missing { background: #fafafa; color: #aaa; }
td.noreply { background: #d7d7d7; color: #555; }
small { color: #555; } .legend td { text-align: left; }
"""


def render(matrix: Mapping[str, Any]) -> str:
    """The matrix as an HTML page: rows check columns."""
    nodes: Mapping[str, Any] = matrix.get("nodes", {})
    every = sorted({*nodes, *(k for n in nodes.values() for k in n.get("peers", {}))},
                   key=_order)
    columns = every[:MAX_PAGE_NODES]
    rows = sorted(nodes, key=_order)[:MAX_PAGE_NODES]
    names = {key: _name(key, nodes) for key in columns}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>pytcpecho mesh</title>", f"<style>{_STYLE}</style></head><body>",
           "<h1>pytcpecho mesh</h1>",
           f"<p>Gathered by {_e(matrix.get('from', '?'))} at "
           f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(matrix.get('time', 0))))}"
           f": {len(nodes)} node(s) reporting on {len(every)}. Rows check columns."
           + (f" The first {MAX_PAGE_NODES} are shown; /mesh has them all." if
              len(every) > MAX_PAGE_NODES else "") + "</p>",
           '<table id="matrix"><thead><tr><th>from \\ to</th>']
    out += [f'<th title="{_e(key)}">{_e(names[key])}</th>' for key in columns]
    out.append("</tr></thead><tbody>")
    for row in rows:
        node = nodes[row]
        out.append(f'<tr data-from="{_e(row)}"><th class="from" title="{_e(row)}">'
                   f"{_e(names.get(row, row))}</th>")
        for col in columns:
            out.append(_cell(row, col, node))
        out.append("</tr>")
    out.append("</tbody></table><h2>Legend</h2><table class=\"legend\">")
    out += [f'<tr><td class="{state}">{_e(_LABELS[state])}</td><td>{_e(text)}</td></tr>'
            for state, text in _LEGEND.items()]
    out.append(f"</table><p><small>{NO_UDP}: the peer refuses datagrams (ICMP port "
               "unreachable: it runs <code>--no-udp</code>), so only its TCP is checked."
               "</small></p><p><small>pytcpecho mesh; machine-readable: "
               '<a href="/mesh">/mesh</a>, <a href="/status">/status</a>, '
               '<a href="/metrics">/metrics</a>.</small></p></body></html>')
    return "\n".join(out)


def _cell(row: str, col: str, node: Mapping[str, Any]) -> str:
    where = f'data-from="{_e(row)}" data-to="{_e(col)}"'
    if row == col:
        return f'<td class="self" {where} data-state="self">—</td>'
    if not node.get("reached"):
        return (f'<td class="noreply" {where} data-state="noreply" '
                f'title="{_e(node.get("error") or "")}">?</td>')
    peer = node.get("peers", {}).get(col)
    if not isinstance(peer, dict):
        return f'<td class="missing" {where} data-state="missing">·</td>'
    state = str(peer.get("state")) if peer.get("state") in _LABELS else "unknown"
    rtt, loss = _number(peer, "rtt_ms"), _number(peer, "udp_loss")
    text = f"{rtt:.2f} ms" if state == "intact" and rtt is not None else _LABELS[state]
    if state == "lossy" and loss is not None:
        text = f"{loss * 100:.0f}% lost"
    title = [f"{row} → {col}: {state}"]
    if rtt is not None:
        title.append(f"RTT {rtt:.3f} ms")
    rate = _number(peer, "bulk_bytes_per_second")
    if rate is not None:
        title.append(f"bulk {rate / 1048576:.1f} MiB/s")
    no_udp = peer.get("udp") == "refused"
    if no_udp:
        title.append(f"{NO_UDP} (port unreachable)")
    elif loss is not None:
        udp = f"UDP loss {loss * 100:.1f}%"
        p50, p99 = _number(peer, "udp_rtt_p50_ms"), _number(peer, "udp_rtt_p99_ms")
        if p50 is not None and p99 is not None:
            udp += f", RTT p50 {p50:.3f} ms, p99 {p99:.3f} ms"
        jitter = _number(peer, "udp_jitter_ms")
        if jitter is not None:
            udp += f", jitter {jitter:.3f} ms"
        title.append(udp)
    hops = _number(peer, "hops")
    if hops is not None:
        title.append(f"{hops:.0f} hop{'' if hops == 1 else 's'}")
    if peer.get("problem"):
        title.append(str(peer["problem"]))
    extra = ""
    if no_udp and state != "down":  # a peer down: that probe is from before
        extra = f'<small class="udp">{NO_UDP}</small>'
    udp_attr = f' data-udp="{_e(peer["udp"])}"' if isinstance(peer.get("udp"), str) else ""
    hops_attr = f' data-hops="{hops:.0f}"' if hops is not None else ""
    return (f'<td class="{state}" {where} data-state="{state}"{udp_attr}{hops_attr} '
            f'title="{_e("; ".join(title))}">{_e(text)}{extra}</td>')


def _number(peer: Mapping[str, Any], key: str) -> float | None:
    """A number a peer's status gives (another node's: anything else is None)."""
    value = peer.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _name(key: str, nodes: Mapping[str, Any]) -> str:
    """A node's own name where it reports one, else the name a peer gives it, else ADDR."""
    node = nodes.get(key)
    if isinstance(node, dict) and isinstance(node.get("node"), dict) \
            and node["node"].get("name"):
        return str(node["node"]["name"])
    for other in nodes.values():
        peer = other.get("peers", {}).get(key) if isinstance(other, dict) else None
        if isinstance(peer, dict) and peer.get("name"):
            return str(peer["name"])
    return key


def _order(key: str) -> tuple[int, int, bytes, int]:
    """Addresses in numeric order (198.18.0.2 before 198.18.0.10), then anything else."""
    try:
        host, port = parse_hostport(key)
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (1, 0, key.encode(), 0)
    return (0, ip.version, ip.packed, port)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
