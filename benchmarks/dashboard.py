#!/usr/bin/env python
"""
What the dashboard's live feed costs the node that serves it, in a mesh of
many nodes (SPEC section 13; the target: under 5% of a core for 50 nodes).

Usage (from the repository root, with the project's virtualenv)::

    python benchmarks/dashboard.py [--nodes 50] [--window 20] [--rounds 2] [--json]

  - starts the serving node, C{n0}, as a C{relay node} subprocess;
  - starts the other C{--nodes - 1} nodes in this process's reactor, each
    on its own port of 127.0.0.1, on a random connected topology of average
    degree 3 (a random spanning tree plus random extra edges, from
    C{--seed}); C{n0} is linked to three of them;
  - waits until C{n0}'s routing table reaches every node;
  - then, in turns, measures C{n0}'s CPU time (user + system, from
    C{/proc}) over C{--window} seconds with nobody watching, and over as
    long with one client reading C{GET /dashboard/events} (as the page
    does), C{--rounds} times; and reports each as a share of one core,
    with the events the client got and their size.

Every wait is bounded; the subprocess is stopped by its pid at the end. All
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from relaytx.config import build_config  # noqa: E402
from relaytx.node import RelayNode  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """:returns: the user + system CPU seconds of process C{pid} so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def topology(n: int, degree: float, rng: random.Random) -> set[tuple[int, int]]:
    """:returns: the edges of a random connected graph on C{n} nodes."""
    edges = set()
    for k in range(1, n):
        edges.add((rng.randrange(k), k))
    while len(edges) < n * degree / 2:
        a, b = rng.sample(range(n), 2)
        edges.add((min(a, b), max(a, b)))
    return edges


class Feed(Protocol):
    """A client of C{/dashboard/events} that reads and counts the events."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"GET /dashboard/events HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.bytes += len(data)
        self.events += data.count(b"event: mesh")

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.nodes
    port0 = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "relaytx.cli", "node", "--node-id", "n0", "--port", str(port0)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes: list[RelayNode] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port0), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("n0 did not start") from None
                await sleep(0.1)
        ports = [port0] + [free_port() for _ in range(1, n)]
        for i in range(1, n):
            config = build_config({"node_id": f"n{i}", "port": ports[i]})
            node = RelayNode(config, reactor)
            node.privilegedStartService()
            node.startService()
            nodes.append(node)
        edges = topology(n, args.degree, rng)
        edges |= {(0, k) for k in rng.sample(range(1, n), 3)}
        for a, b in sorted(edges):
            if a == 0:
                nodes[b - 1].add_peer(f"ws://{HOST}:{port0}")
            else:
                nodes[b - 1].add_peer(f"ws://{HOST}:{ports[a]}")
        started = time.monotonic()
        while True:
            import treq

            routes = json.loads(
                await (await treq.get(f"http://{HOST}:{port0}/registry/routes")).content()
            )
            if len(routes) >= n - 1:
                break
            if time.monotonic() - started > 60:
                raise SystemExit(f"n0 reaches {len(routes)} of {n - 1} nodes after 60 s")
            await sleep(0.5)
        print(f"mesh of {n} nodes converged; n0 has {len(routes)} routes", file=sys.stderr)
        await sleep(2.0)
        samples: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for watched in (False, True):
                feed = None
                if watched:
                    feed = Feed()
                    factory = ClientFactory()
                    factory.buildProtocol = lambda addr, feed=feed: feed  # type: ignore[method-assign,misc]
                    reactor.connectTCP(HOST, port0, factory)
                    await sleep(1.0)  # the first round of status calls
                before, t0 = cpu_seconds(child.pid), time.monotonic()
                events0 = feed.events if feed else 0
                await sleep(args.window)
                used, wall = cpu_seconds(child.pid) - before, time.monotonic() - t0
                sample = {
                    "round": round_ + 1,
                    "watched": watched,
                    "cpu_percent": round(100 * used / wall, 2),
                    "events": (feed.events - events0) if feed else 0,
                    "event_kib": round(feed.bytes / max(feed.events, 1) / 1024, 1) if feed else 0,
                }
                samples.append(sample)
                print(json.dumps(sample), file=sys.stderr)
                if feed is not None and feed.transport is not None:
                    feed.transport.loseConnection()
                    await feed.lost
                    await sleep(1.0)
        idle = [s["cpu_percent"] for s in samples if not s["watched"]]
        watched = [s["cpu_percent"] for s in samples if s["watched"]]
        return {
            "nodes": n,
            "window_s": args.window,
            "samples": samples,
            "idle_cpu_percent": idle,
            "watched_cpu_percent": watched,
            "feed_cost_percent": round(sum(watched) / len(watched) - sum(idle) / len(idle), 2),
        }
    finally:
        for node in nodes:
            node.stopService()
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--degree", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {}

    async def go() -> None:
        result.update(await run(args))
        await sleep(2.5)  # links close

    def done(outcome: Any) -> None:
        if hasattr(outcome, "printTraceback"):  # a Failure: say why, exit non-zero
            outcome.printTraceback(file=sys.stderr)
            result["error"] = str(outcome.value)
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(go()).addBoth(done))
    reactor.run()
    if "error" in result:
        raise SystemExit(f"benchmarks/dashboard.py: {result['error']}")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"dashboard feed on n0, a mesh of {result['nodes']} nodes, {args.window:g} s windows")
    print("round  watched  n0 CPU %  events  KiB/event")
    for s in result["samples"]:
        print(
            f"{s['round']:>5}  {'yes' if s['watched'] else 'no':>7}  {s['cpu_percent']:>8.2f}"
            f"  {s['events']:>6}  {s['event_kib']:>9}"
        )
    print(f"the feed's cost: {result['feed_cost_percent']:.2f}% of a core (watched - idle, mean)")


if __name__ == "__main__":
    main()
