#!/usr/bin/env python
"""
Several instances of one server (SPEC section 11), measured:

    python benchmarks/instances.py [--scenarios transparent,cpu,kill]
                                   [--duration 2] [--connections 32]
                                   [--root TREE] [--json]

It starts C{relay node} processes on 127.0.0.1: an entry node n0 (no
servers of its own) linked to n1 and n2, and drives n0 with keep-alive
HTTP clients (L{benchmarks._loadgen}) making location-transparent calls
(C{SERVER.METHOD}):

  - C{transparent}: C{counter_server.increment} hosted on n1 and n2, with
    n0's policy C{nearest}, C{least_loaded} and C{round_robin}: what the
    choice costs per call (C{--root} runs another tree's code, e.g. a
    checkout of the code before balancing, for C{nearest} alone);
  - C{cpu}: C{worker.spin(N)} (CPU-bound, C{examples/worker.py}) with one
    instance (n1) and with two (n1, n2) under C{round_robin} and
    C{least_loaded};
  - C{kill}: C{worker.lookup} (idempotent) and C{worker.work} (not) on n1
    and n2 with C{round_robin}; n1 is killed (SIGKILL) a third of the way
    through: the answers are counted by outcome (error codes).
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _loadgen import http_load  # noqa: E402
from run import Processes, cpu_seconds, free_port, wait_drained  # noqa: E402


def start_mesh(
    procs: Processes, root: Path, logs: Path, policy: str | None, apps: dict[str, str]
) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    """
    Start n1, n2 (with the apps C{apps} names) and n0 dialling both, and
    wait until n0 knows every instance.

    :returns: each node's process and port.
    """
    nodes: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for name in ("n1", "n2"):
        port = free_port()
        argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", name, "--port", str(port)]
        if name in apps:
            argv += ["--app", str(root / apps[name])]
        child = procs.start(name, argv)
        nodes[name] = (child, port)
    port = free_port()
    argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", "n0", "--port", str(port)]
    for name in ("n1", "n2"):
        argv += ["--add-peer", f"http://127.0.0.1:{nodes[name][1]}"]
    if policy is not None:
        config = logs / f"n0-{policy}.toml"
        config.write_text(f'[balance]\ndefault = "{policy}"\n')
        argv += ["--config", str(config)]
    nodes["n0"] = (procs.start("n0", argv), port)
    for child, p in nodes.values():
        procs.wait_port(child, p)
    wanted = {(server, node) for node, app in apps.items() for server in _servers(app)}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        known = _get(port, "/registry/servers")
        have = {(name, e["node_id"]) for name, entries in known.items() for e in entries}
        if wanted <= have:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"n0 never knew every instance: {wanted}")
    time.sleep(0.5)  # instance entries (idempotent methods) follow the routes
    return nodes


def _servers(app: str) -> list[str]:
    return ["counter_server"] if "counter" in app else ["worker"]


def _get(port: int, path: str) -> Any:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path)
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def body_of(method: str, params: list[Any]) -> Any:
    text = json.dumps(params).encode()
    prefix = b'{"jsonrpc":"2.0","method":"%s","params":%s,"id":' % (method.encode(), text)
    return lambda k: b"%s%d}" % (prefix, k)


class Outcomes:
    """Counts answers by outcome: C{ok} or the error code."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, answer: bytes) -> bool:
        try:
            decoded = json.loads(answer)
        except ValueError:
            self.counts["bad"] += 1
            return False
        if "result" in decoded:
            self.counts["ok"] += 1
            return True
        self.counts[str(decoded.get("error", {}).get("code"))] += 1
        return False


def run_load(
    port: int,
    method: str,
    params: list[Any],
    args: argparse.Namespace,
    nodes: dict[str, tuple[subprocess.Popen[bytes], int]] | None = None,
) -> Any:
    """
    :returns: the load's figures, and its answers counted by outcome plus
        each node's CPU seconds over the whole load (C{cpu_NODE}).
    """
    outcomes = Outcomes()
    before = {n: cpu_seconds(c.pid) for n, (c, _) in (nodes or {}).items()}
    figures = http_load(
        port, args.connections, args.warmup, args.duration, body_of(method, params), outcomes
    )
    counts: dict[str, Any] = dict(outcomes.counts)
    for name, (child, _) in (nodes or {}).items():
        counts[f"cpu_{name}"] = round(cpu_seconds(child.pid) - before[name], 2)
    return figures, counts


def transparent(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    rows = []
    apps = {"n1": "examples/counter.py", "n2": "examples/counter.py"}
    cases: list[tuple[str, Path, str | None]] = [
        ("nearest", ROOT, "nearest"),
        ("least_loaded", ROOT, "least_loaded"),
        ("round_robin", ROOT, "round_robin"),
    ]
    if args.root is not None:
        cases.insert(0, ("nearest (--root)", Path(args.root), None))
    for _ in range(args.passes):
        for label, root, policy in cases:
            procs = Processes(logs)
            try:
                nodes = start_mesh(procs, root, logs, policy, apps)
                port = nodes["n0"][1]
                figures, counts = run_load(port, "counter_server.increment", [], args, nodes)
                wait_drained(port)
                rows.append({"scenario": "transparent", "case": label, **figures, **counts})
            finally:
                procs.stop_all()
            _report(rows[-1])
    return rows


def cpu(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    rows = []
    one = {"n1": "examples/worker.py"}
    two = {"n1": "examples/worker.py", "n2": "examples/worker.py"}
    cases: list[tuple[str, dict[str, str], str]] = [
        ("one instance", one, "nearest"),
        ("two, round_robin", two, "round_robin"),
        ("two, least_loaded", two, "least_loaded"),
    ]
    for _ in range(args.passes):
        for label, apps, policy in cases:
            procs = Processes(logs)
            try:
                nodes = start_mesh(procs, ROOT, logs, policy, apps)
                port = nodes["n0"][1]
                figures, counts = run_load(port, "worker.spin", [args.spin], args, nodes)
                wait_drained(port)
                rows.append({"scenario": "cpu", "case": label, **figures, **counts})
            finally:
                procs.stop_all()
            _report(rows[-1])
    return rows


def kill(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    rows = []
    apps = {"n1": "examples/worker.py", "n2": "examples/worker.py"}
    for method, params in (("worker.lookup", ["k", 0.002]), ("worker.work", [0.002])):
        procs = Processes(logs)
        try:
            nodes = start_mesh(procs, ROOT, logs, "round_robin", apps)
            port = nodes["n0"][1]
            victim = nodes["n1"][0]
            timer = threading.Timer(
                args.warmup + args.duration / 3, victim.send_signal, (signal.SIGKILL,)
            )
            timer.start()
            figures, counts = run_load(port, method, params, args)
            timer.join()
            rows.append({"scenario": "kill", "case": method, **figures, **counts})
        finally:
            procs.stop_all()
        _report(rows[-1])
    return rows


def _report(row: dict[str, Any]) -> None:
    extra = {k: v for k, v in row.items() if k not in ("scenario", "case")}
    print(f"{row['scenario']:12} {row['case']:22} {json.dumps(extra)}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="transparent,cpu,kill")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--spin", type=int, default=200_000, help="spin's N (CPU per call)")
    parser.add_argument("--root", help="another tree, for nearest in transparent")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relaytx-instances-") as logs:
        for name in args.scenarios.split(","):
            rows += {"transparent": transparent, "cpu": cpu, "kill": kill}[name](args, Path(logs))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
