#!/usr/bin/env python
"""
A mesh worker for C{benchmarks/scale.py --mesh N --procs P}: hosts a slice
of the mesh's nodes in its own reactor, each on its own port of 127.0.0.1,
and answers the coordinator's commands. Started by scale.py, never by hand.

It talks to scale.py over stdin/stdout, one JSON object a line. Commands
(C{{"cmd": ...}}) and what it answers:

  - C{start} C{{"nodes": [id, ...], "settings"}}: starts the nodes, each
    on a free port, with C{settings} (C{ping_interval}, maybe
    C{peer_timeout}) besides their ids and ports;
    C{{"event": "started", "ports": {id: port}}};
  - C{graph} C{{"adj": {id: [id, ...]}, "dead": [id, ...]}}: the mesh as
    it should be now, for the convergence check; C{{"event": "graph"}};
  - C{dial} C{{"edges": [[from, to, port], ...]}}: C{from} dials C{to};
  - C{status}: C{{"event": "status", "converged", "nodes", "bad",
    "changed_at", "sync_frames", "sync_bytes", "route_changes", "cpu",
    "harness_cpu", "dropped", "silent"}}, where C{route_changes} counts
    the hosted nodes' route changes since start, C{cpu} is the worker's CPU time and
    C{harness_cpu} the part of it spent answering commands and watching
    (the checks, not the nodes), C{silent} counts the links the hosted nodes dropped
    because their peer left a request unanswered (the liveness rule), and
    C{changed_at} is the latest Unix time any hosted node's table changed
    and C{dropped} maps a watched node to when the last hosted node let go
    of its route (or C{null} while one still holds it);
  - C{cut} C{{"a", "b"}}: C{a} stops its link to C{b} (as C{remove_peer});
  - C{kill} C{{"node", "watch"}}: the node dies: its connections are
    aborted (no WebSocket close), it stops listening and dialling;
  - C{watch} C{{"node"}}: note when each hosted node drops its route to it;
  - C{turns}: C{{"event": "turns", "longest"}}: the longest turn of the
    worker's reactor since the last C{turns} (seconds between two ticks of
    a L{TICK} timer, so at least that), and a new count from now;
  - C{dropped}: C{{"event": "dropped", "dropped"}}, as in a status, without
    looking at the tables;
  - C{call} C{{"src", "dst"}}: C{{"event": "call", "ok", "ms", "error"}};
  - C{memory}: routing state per node (bytes of the routing table and
    everything the route exchange keeps) and RSS;
  - C{quit} (or end of stdin): stops every node and exits.

A command that fails answers C{{"event": "error", "error"}}.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

#: Seconds between the ticks that time the reactor's turns.
TICK = 0.05

sys.path.insert(0, os.path.dirname(HERE))


def deep_size(root: Any, seen: set[int] | None = None) -> int:
    """:returns: the bytes of C{root} and everything it holds (each object once)."""
    from relaytx._ribs import AdjRib, SharedAttributes

    seen = set() if seen is None else seen
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif type(obj).__name__ == "mappingproxy":
            stack.extend(obj.items())
        elif isinstance(obj, AdjRib):
            stack.extend(getattr(obj, slot) for slot in AdjRib.__slots__)
        elif isinstance(obj, SharedAttributes):
            stack.append(obj.latest)
    return total


def silent_drops(node: Any) -> float:
    """
    :returns: how many links C{node} dropped because their peer fell
        silent. (Read from that one counter: a whole registry's samples, as
        C{get_sample_value} collects them, cost the nodes a tenth of a core
        at each status of a thousand-node mesh.)
    """
    [family] = node.metrics.links_lost.collect()
    return sum(
        s.value
        for s in family.samples
        if s.name == "relaytx_links_lost_total" and s.labels.get("cause") == "silent"
    )


def routing_state(node: Any) -> int:
    """:returns: the bytes a node keeps for routing (its table, neighbours' and mirrors)."""
    router = node.mesh.router
    parts = [
        router._routes, router._ribs, router.exports._mirrors, router._attributes, router._links,
        router._own_servers, router._own_sn, router._marks, router.news.notices,
        router.news.ups, router.news.suspects, router.exports._readvertised,
        router.news._told, router.news._clear, router.news._since, node.mesh.adverts._state,
    ]  # fmt: skip
    return deep_size(parts)


def links_of(source: str, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """:returns: the links a route from C{source} along C{path} runs over."""
    return zip((source, *path[:-1]), path, strict=True)


def bfs(adj: dict[str, list[str]], source: str) -> dict[str, int]:
    dist = {source: 0}
    queue = collections.deque([source])
    while queue:
        u = queue.popleft()
        for v in adj.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


class Worker:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.nodes: dict[str, Any] = {}
        #: every link of the graph, both ways round
        self.edges: set[tuple[str, str]] = set()
        self.dead: set[str] = set()
        self.dist: dict[str, dict[str, int]] = {}
        self.ok: dict[str, int] = {}  # node -> router.changes when last found converged
        #: node -> destination -> the route found right for the graph (a
        #: route is immutable: the same object is still right)
        self.checked: dict[str, dict[str, Any]] = {}
        #: node -> the destination its table was last found wrong for
        self.failing: dict[str, str] = {}
        self.watching: dict[str, dict[str, float | None]] = {}
        #: CPU seconds spent on commands and watching, not on the nodes
        self.harness_cpu = 0.0
        #: the longest gap between two ticks since the last C{turns}
        self.longest_turn = 0.0
        self._ticked = time.monotonic()
        from twisted.internet.task import LoopingCall

        ticks = LoopingCall(self._tick)
        ticks.clock = reactor
        ticks.start(TICK, now=False)

    def _tick(self) -> None:
        now = time.monotonic()
        self.longest_turn = max(self.longest_turn, now - self._ticked)
        self._ticked = now

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def command(self, line: str) -> None:
        started = time.process_time()
        msg = json.loads(line)
        try:
            getattr(self, "do_" + msg.pop("cmd"))(**msg)
        except Exception as e:
            self.emit({"event": "error", "error": f"{type(e).__name__}: {e}"})
        finally:
            self.harness_cpu += time.process_time() - started

    def do_start(self, nodes: list[str], settings: dict[str, Any]) -> None:
        import socket

        from relaytx.config import build_config
        from relaytx.errors import StartupError
        from relaytx.node import RelayNode

        ports = {}
        for node_id in nodes:
            for _attempt in range(10):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                config = build_config({"node_id": node_id, "port": port, **settings})
                node = RelayNode(config, self.reactor)
                try:
                    node.privilegedStartService()
                except StartupError:
                    continue
                node.startService()
                break
            else:
                raise RuntimeError(f"could not start {node_id}")
            self.nodes[node_id] = node
            ports[node_id] = port
        self.emit({"event": "started", "pid": os.getpid(), "ports": ports})

    def do_graph(self, adj: dict[str, list[str]], dead: list[str]) -> None:
        edges = {(a, b) for a, peers in adj.items() for b in peers}
        removed = self.edges - edges
        if edges - self.edges:
            self.checked = {}  # (a new link may shorten any route)
        elif removed:
            # A route found right that uses no link taken away is right
            # still: it is as short as before, and nothing got shorter.
            ends = {a for a, _ in removed}
            for node_id, checked in self.checked.items():
                for dest in [
                    dest
                    for dest, route in checked.items()
                    if not ends.isdisjoint(route.path)
                    and not removed.isdisjoint(links_of(node_id, route.path))
                ]:
                    del checked[dest]
        self.edges = edges
        self.dead = set(dead)
        self.dist = {n: bfs(adj, n) for n in self.nodes if n not in self.dead}
        self.ok = {}
        self.failing = {}
        self.emit({"event": "graph"})

    def do_dial(self, edges: list[list[Any]]) -> None:
        for a, b, port in edges:
            self.nodes[a].add_peer(f"ws://127.0.0.1:{port}", node_id=b)

    def _converged(self, node_id: str, explain: bool) -> str:
        """
        :returns: what keeps C{node_id}'s table from BFS (the missing
            destination named only if C{explain}), or C{""} when every route
            has BFS's hop count and runs over links the mesh has.

        Each route is looked at once (a route is immutable: the same object
        is still right), and a table found wrong is looked at again where
        it was wrong first. Looking at every route of every changed table,
        a status of a thousand-node mesh held its worker's reactor, and so
        the nodes' adverts, for up to half a second.
        """
        node = self.nodes[node_id]
        dist = self.dist[node_id]
        table = node.mesh.router.routes()
        want = len(dist) - 1
        if len(table) != want:
            if not explain:
                return f"{node_id} knows {len(table)}/{want}"
            missing = next((d for d in dist if d != node_id and d not in table), None)
            if missing is None:
                return f"{node_id} knows {len(table)}/{want}"
            mark = node.mesh.router._marks.get(missing)
            held = f", marked unreachable at {mark[0]}" if mark is not None else ""
            return f"{node_id} knows {len(table)}/{want}: none to {missing}{held}"
        checked = self.checked.setdefault(node_id, {})
        first = self.failing.get(node_id)
        if first is not None:
            problem = self._wrong(node_id, first, table.get(first), dist)
            if problem:
                return problem
            del self.failing[node_id]
        for dest, route in table.items():
            if checked.get(dest) is route:
                continue
            problem = self._wrong(node_id, dest, route, dist)
            if problem:
                self.failing[node_id] = dest
                return problem
            checked[dest] = route
        return ""

    def _wrong(self, node_id: str, dest: str, route: Any, dist: dict[str, int]) -> str:
        """:returns: what is wrong with C{node_id}'s route to C{dest}, if anything."""
        if route is None:
            return f"{node_id} has no route to {dest}"
        path = route.path
        d = dist.get(dest)
        if d is None or len(path) != d:
            return f"{node_id}->{dest}: {len(path)} hops, BFS {d}"
        if not self.edges.issuperset(links_of(node_id, path)):
            prev, hop = next(link for link in links_of(node_id, path) if link not in self.edges)
            return f"{node_id}->{dest} uses a missing link {prev}-{hop}"
        return ""

    def do_links(self) -> None:
        live = [n for k, n in self.nodes.items() if k not in self.dead]
        self.emit({"event": "links", "links": sum(len(n.mesh.links) for n in live)})

    def do_status(self) -> None:
        """
        Answer with the hosted tables as they are now. (All at once: looked
        at a few at a time between the nodes' work, a status at the height
        of a thousand-node start-up took seconds, and the nodes' round trips
        grew past the liveness timeout, in two runs of three: a stall of
        the whole process is credited to every wait, work spread over every
        turn of the reactor is not.)
        """
        started = time.process_time()
        bad = ""
        for node_id, node in self.nodes.items():
            if node_id in self.dead:
                continue
            changes = node.mesh.router.changes
            if self.ok.get(node_id) != changes:
                problem = self._converged(node_id, explain=not bad)
                if problem:
                    bad = bad or problem
                else:
                    self.ok[node_id] = changes
        live = {k: n for k, n in self.nodes.items() if k not in self.dead}
        good = sum(1 for k, n in live.items() if self.ok.get(k) == n.mesh.router.changes)
        self.emit(
            {
                "event": "status",
                "links": sum(len(n.mesh.links) for n in live.values()),
                "converged": good,
                "nodes": len(live),
                "bad": bad,
                "changed_at": max(
                    (n.mesh.adverts.changed_at or 0.0 for n in live.values()), default=0.0
                ),
                "sync_frames": sum(n.mesh.adverts.writer.frames_sent for n in self.nodes.values()),
                "sync_bytes": sum(n.mesh.adverts.writer.bytes_sent for n in self.nodes.values()),
                "route_changes": sum(n.mesh.router.changes for n in self.nodes.values()),
                "cpu": sum(os.times()[:2]),
                # (This answer's own work, so far, counted in.)
                "harness_cpu": self.harness_cpu + time.process_time() - started,
                "dropped": self._dropped(),
                "silent": sum(silent_drops(n) for n in self.nodes.values()),
            }
        )

    def do_turns(self) -> None:
        self.emit({"event": "turns", "longest": self.longest_turn})
        self.longest_turn = 0.0

    def do_dropped(self) -> None:
        self.emit({"event": "dropped", "dropped": self._dropped()})

    def _dropped(self) -> dict[str, float | None]:
        # When the last hosted node let go of each watched node (None: not yet).
        dropped: dict[str, float | None] = {}
        for target, seen in self.watching.items():
            times = list(seen.values())
            dropped[target] = None if None in times else max(times, default=0.0)  # type: ignore[type-var]
        return dropped

    def do_cut(self, a: str, b: str) -> None:
        if a in self.nodes:
            self.nodes[a].remove_peer(b)

    def do_watch(self, node: str) -> None:
        from twisted.internet.task import LoopingCall

        seen: dict[str, float | None] = {n: None for n in self.nodes if n != node}
        self.watching[node] = seen

        def look() -> None:
            started = time.process_time()
            for other, at in seen.items():
                if at is None and self.nodes[other].mesh.router.route(node) is None:
                    seen[other] = time.time()
            if all(v is not None for v in seen.values()):
                loop.stop()
            self.harness_cpu += time.process_time() - started

        loop = LoopingCall(look)
        loop.start(0.005)

    def do_kill(self, node: str) -> None:
        victim = self.nodes.get(node)
        if victim is None:
            return
        for session in list(victim.mesh.links.values()):
            if session.transport is not None:
                session.transport.abort()
        victim.stopService()
        self.dead.add(node)

    def do_call(self, src: str, dst: str) -> None:
        started = time.monotonic()
        d = self.nodes[src].call(dst, "node", "ping", timeout=10)

        def done(result: Any) -> None:
            ok = isinstance(result, dict) and bool(result.get("pong"))
            error = None if ok else str(getattr(result, "value", result))
            ms = 1000 * (time.monotonic() - started)
            self.emit({"event": "call", "ok": ok, "ms": ms, "error": error})

        d.addBoth(done)

    def do_memory(self) -> None:
        gc.collect()
        sizes = [routing_state(n) for k, n in self.nodes.items() if k not in self.dead]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.emit({"event": "memory", "sizes": sizes, "max_rss_kib": rss})

    def do_quit(self) -> None:
        from twisted.internet.defer import DeferredList

        running = [n.stopService() for k, n in self.nodes.items() if n.running]
        d = DeferredList(running, consumeErrors=True)
        d.addTimeout(10, self.reactor)
        d.addBoth(lambda _: self.reactor.stop())


def main() -> None:
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from relaytx.tap import tune_collector

    log = open(sys.argv[1], "w") if len(sys.argv) > 1 else sys.stderr
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(log), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
            )
        ],
        redirectStandardIO=False,
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = Worker(reactor)
    # The worker's nodes live as long as it does, as a relay node's do:
    # its collector is tuned the same way.
    tune_collector()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    pending = [b""]

    class Input:
        def fileno(self) -> int:
            return fd

        def doRead(self) -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                reactor.removeReader(self)
                worker.do_quit()
                return
            pending[0] += chunk
            *lines, pending[0] = pending[0].split(b"\n")
            for line in lines:
                if line.strip():
                    worker.command(line.decode())

        def logPrefix(self) -> str:
            return "stdin"

        def connectionLost(self, reason: Any) -> None:
            pass

    reactor.addReader(Input())
    worker.emit({"event": "ready", "pid": os.getpid()})
    reactor.run()


if __name__ == "__main__":
    main()
