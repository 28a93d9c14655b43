# -*- test-case-name: tests.test_cli -*-
"""
What C{relay status} and C{relay call --trace} print (SPEC section 13).
Plain functions of plain data, without Twisted or C{typing}: the commands
start fast.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Rows of nodes, and of links, shown before the rest is summarised
#: (C{relay status --all} shows every one).
SCREEN_ROWS = 20


def _rate(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f}"


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


def _servers(names: list[str], width: int = 40) -> str:
    shown = [n for n in names if n != "node"]  # every node has it
    text = ""
    for index, name in enumerate(shown):
        more = len(shown) - index
        candidate = f"{text}, {name}" if text else name
        if len(candidate) > width and text:
            return f"{text} +{more}"
        text = candidate
    return text or "-"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


_ORDER = {"silent": 0, "gone": 1, "up": 2}


def format_status(view: dict[str, Any], everything: bool = False) -> str:
    """
    :param view: the mesh view (C{GET /dashboard/mesh}).
    :param everything: list every node and link, however many.
    :returns: the view as one screen: a summary, what is wrong, the nodes
        (the unhealthy first) and the links (the unhealthy first, then the
        slowest); past L{SCREEN_ROWS} of either, the rest in one line.
    """
    summary = view.get("summary") or {}
    nodes: dict[str, Any] = view.get("nodes") or {}
    links: list[dict[str, Any]] = view.get("links") or []
    problems: list[str] = view.get("problems") or []
    out = [
        f"mesh seen from {view.get('node_id')} at {view.get('timestamp')}",
        f"{summary.get('nodes', len(nodes))} nodes: {summary.get('up', 0)} up, "
        f"{summary.get('silent', 0)} silent, {summary.get('gone', 0)} gone; "
        f"{summary.get('links', len(links))} links ({summary.get('unhealthy_links', 0)} "
        f"unhealthy); {summary.get('servers', 0)} servers; "
        f"{_rate(summary.get('calls_per_s'))} calls/s, "
        f"{_rate(summary.get('errors_per_s'))} errors/s",
        "",
    ]
    if problems:
        out.append(f"PROBLEMS ({len(problems)})")
        shown = problems if everything else problems[:SCREEN_ROWS]
        out.extend(f"  {problem}" for problem in shown)
        if len(shown) < len(problems):
            out.append(f"  ... and {len(problems) - len(shown)} more (--all to list them)")
        out.append("")
    ordered = sorted(
        nodes.values(),
        key=lambda n: (_ORDER.get(n.get("state"), 3), n.get("hops") or 0, n.get("node_id", "")),
    )
    shown_nodes = ordered if everything else ordered[:SCREEN_ROWS]
    rows = [["NODE", "STATE", "HOPS", "CALLS/S", "ERR/S", "UPTIME", "SERVERS"]]
    for node in shown_nodes:
        hops = node.get("hops")
        rows.append(
            [
                str(node.get("node_id")),
                str(node.get("state")),
                "-" if hops is None else str(hops),
                _rate(node.get("calls_per_s")),
                _rate(node.get("errors_per_s")),
                _uptime(node.get("uptime_s")),
                _servers(list(node.get("servers") or [])),
            ]
        )
    out.extend(_table(rows, {2, 3, 4}))
    hidden = ordered[len(shown_nodes) :]
    if hidden:
        states: dict[str, int] = {}
        for node in hidden:
            states[node.get("state", "?")] = states.get(node.get("state", "?"), 0) + 1
        counts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        out.append(f"... and {len(hidden)} more nodes ({counts}; --all to list them)")
    out.append("")

    def link_key(link: dict[str, Any]) -> tuple[Any, ...]:
        rtt = link.get("rtt_ms")
        return (bool(link.get("healthy")), -(rtt if isinstance(rtt, int | float) else 0))

    ordered_links = sorted(links, key=link_key)
    shown_links = ordered_links if everything else ordered_links[:SCREEN_ROWS]
    rows = [["LINK", "RTT MS", "HEALTH"]]
    for link in shown_links:
        rtt = link.get("rtt_ms")
        rows.append(
            [
                f"{link.get('a')} - {link.get('b')}",
                f"{rtt:.2f}" if isinstance(rtt, int | float) else "-",
                "ok" if link.get("healthy") else "UNHEALTHY",
            ]
        )
    if links:
        out.extend(_table(rows, {1}))
    else:
        out.append("no links")
    hidden_links = ordered_links[len(shown_links) :]
    if hidden_links:
        rtts = [x["rtt_ms"] for x in hidden_links if isinstance(x.get("rtt_ms"), int | float)]
        healthy = all(x.get("healthy") for x in hidden_links)
        spread = f", RTT {min(rtts):.2f}-{max(rtts):.2f} ms" if rtts else ""
        out.append(
            f"... and {len(hidden_links)} more links"
            f" ({'all healthy' if healthy else 'some unhealthy'}{spread}; --all to list them)"
        )
    return "\n".join(out) + "\n"


def parse_server_timing(header: str | None) -> list[list[Any]]:
    """
    :param header: a C{Server-Timing} header as a node writes it for a
        call's path (see L{relaytx._http.server_timing}).
    :returns: C{[node_id, role, ms or None]} per hop, in order.
    """
    hops: list[list[Any]] = []
    for part in (header or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        if not fields or not fields[0]:
            continue
        role, ms = "", None
        for field in fields[1:]:
            name, _, value = field.partition("=")
            if name == "desc":
                role = value.strip('"')
            elif name == "dur":
                try:
                    ms = float(value)
                except ValueError:
                    ms = None
        hops.append([fields[0], role, ms])
    return hops


def format_path(hops: list[list[Any]], trace_id: str) -> str:
    """
    :returns: the path a call took, one hop a line with the time spent
        there in all (from receiving the call to passing its answer back)
        and by that node itself (less the next hop's time).
    """
    if not hops:
        return f"trace {trace_id}: the node reported no path\n"
    out = [f"trace {trace_id}: " + " -> ".join(str(h[0]) for h in hops)]
    rows = [["HOP", "NODE", "MS", "SELF MS", "ROLE"]]
    for index, (node, role, ms) in enumerate(hops):
        after = hops[index + 1][2] if index + 1 < len(hops) else 0.0
        own = ms - after if ms is not None and after is not None else None
        rows.append(
            [
                str(index),
                str(node),
                "-" if ms is None else f"{ms:.3f}",
                "-" if own is None else f"{max(own, 0.0):.3f}",
                role,
            ]
        )
    out.extend(_table(rows, {0, 2, 3}))
    return "\n".join(out) + "\n"
