# -*- test-case-name: tests.test_rpc -*-
"""
What a node shows of itself: L{NodeViews}, the JSON bodies of its HTTP
endpoints (SPEC section 4), and L{NodeServer}, the built-in server C{node}
every node hosts so that a bare node can be called across the mesh.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from relaytx._balance import Balancer
from relaytx._calls import CallTarget
from relaytx._hosting import ServerHost
from relaytx._mesh import Mesh
from relaytx._meshview import MeshWatch
from relaytx._tracing import CallTrace
from relaytx.errors import HOP_CODES, CallError, CallTimeout, InvalidParams, NodeUnreachable
from relaytx.server import Server, exposed
from relaytx.wire import NODE_ID_RE, rfc3339

#: The codes of a call that did not reach its target, or may not have.
PATH_CODES = HOP_CODES | {CallTimeout.code}


class CallRates:
    """
    The calls per second of a node's servers, and its errors per second,
    over the last few seconds: its call counts sampled once a second, so
    that one look at a node (C{relay status}, the dashboard's first view)
    sees its rate now, not an average since someone last looked.

    :param totals: the node's calls so far, C{(ok, errors)}.
    """

    #: seconds of samples a rate spans (at most)
    WINDOW = 5

    def __init__(self, clock: IReactorTime, totals: Callable[[], tuple[int, int]]) -> None:
        self._clock = clock
        self._totals = totals
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=self.WINDOW + 1)
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = clock

    def start(self) -> None:
        """Sample once a second from now on."""
        if not self._sampler.running:
            self._sampler.start(1.0, now=True)

    def stop(self) -> None:
        if self._sampler.running:
            self._sampler.stop()

    def _sample(self) -> None:
        self._samples.append((self._clock.seconds(), *self._totals()))

    def now(self) -> tuple[float | None, float | None]:
        """
        :returns: C{(calls_per_s, errors_per_s)} since the oldest sample
            of the last L{WINDOW} seconds, or C{(None, None)} with less
            than half a second sampled.
        """
        if not self._samples:
            return None, None
        now = self._clock.seconds()
        # The oldest sample within the window; past it (a reactor that was
        # busy for a while samples late), the newest.
        since, ok_then, errors_then = self._samples[-1]
        for sample in reversed(self._samples):
            if now - sample[0] > self.WINDOW + 0.5:
                break
            since, ok_then, errors_then = sample
        elapsed = now - since
        if elapsed < 0.5:
            return None, None
        ok, errors = self._totals()
        calls = max(0, ok + errors - ok_then - errors_then)
        return round(calls / elapsed, 1), round(max(0, errors - errors_then) / elapsed, 1)


class NodeViews:
    """
    :param started_at: when the node started, in the clock's seconds.
    :param version: relaytx's version, for C{info()}.

    @ivar mesh_watch: the whole mesh as seen from here, made of every
        node's L{status} (C{relay status}, the dashboard).
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        host: ServerHost,
        mesh: Mesh,
        started_at: float,
        version: str,
        balancer: Balancer | None = None,
    ) -> None:
        self.node_id = node_id
        self._balancer = balancer
        self._clock = clock
        self._host = host
        self._mesh = mesh
        self._started_at = started_at
        self._version = version
        self.mesh_watch = MeshWatch(
            node_id,
            clock,
            self.status,
            mesh.registry.reachable,
            mesh.call,
            unrouted=lambda: not mesh.adverts.routes_are_complete(),
            lost=mesh.lost_nodes,
            servers_of=self._servers_of,
        )
        #: this node's calls per second now (sampled while the node runs)
        self.rates = CallRates(clock, mesh.metrics.server_calls.totals)
        #: the dialled peers this node cannot link to (L{PeerAdmin.failing})
        self.failing_peers: Callable[[], dict[str, dict[str, Any]]] = dict

    def _servers_of(self, node_id: str) -> dict[str, list[str]]:
        """:returns: the servers and methods C{node_id} told its neighbours (the registry's)."""
        route = self._mesh.router.route(node_id)
        if route is None:
            return {}
        return {name: list(methods) for name, methods in route.servers.items()}

    def timestamp(self) -> str:
        """:returns: the current time, RFC 3339."""
        return rfc3339(self._clock.seconds())

    def uptime(self) -> float:
        """:returns: seconds since the node started."""
        return max(0.0, self._clock.seconds() - self._started_at)

    def health(self) -> dict[str, Any]:
        """:returns: C{GET /health}."""
        return {
            "status": "healthy",
            "node_id": self.node_id,
            "peer_count": len(self._mesh.links),
            "server_count": len(self._host.local_servers()),
            "uptime_s": self.uptime(),
            "timestamp": self.timestamp(),
        }

    def registry(self) -> dict[str, Any]:
        """:returns: C{GET /registry}."""
        return {
            "node_id": self.node_id,
            "servers": self.servers(),
            "peers": self.peers(),
            "timestamp": self.timestamp(),
        }

    def servers(self) -> dict[str, list[dict[str, Any]]]:
        """:returns: C{GET /registry/servers}: every server this node knows, by name."""
        now = self.timestamp()
        directory = {
            name: [
                {
                    "name": name,
                    "node_id": self.node_id,
                    "methods": methods,
                    "is_local": True,
                    "last_seen": now,
                    "hops": 0,
                    "rtt_ms": 0.0,
                    "state": self._state(name, self.node_id),
                }
            ]
            for name, methods in self._host.local_servers().items()
        }
        for name, entries in self._mesh.registry.directory().items():
            for entry in entries:
                node = entry["node_id"]
                rtt = self._balancer.rtt(node) if self._balancer is not None else None
                entry["rtt_ms"] = None if rtt is None else round(rtt * 1000, 3)
                entry["state"] = self._state(name, node)
            directory.setdefault(name, []).extend(entries)
        return directory

    def _state(self, server: str, node: str) -> str:
        return "up" if self._balancer is None else self._balancer.state(server, node)

    def peers(self) -> dict[str, dict[str, Any]]:
        """:returns: C{GET /registry/peers}: directly connected peers by node id."""
        return self._mesh.registry.peers()

    def routes(self) -> dict[str, dict[str, Any]]:
        """:returns: C{GET /registry/routes}: the routing table."""
        return self._mesh.router.table()

    def status(self) -> dict[str, Any]:
        """
        :returns: what the built-in C{node.status()} answers: this node's
            part of the mesh view (L{relaytx._meshview}): its servers, its
            links with their RTT and health, and its calls so far and per
            second over the last few seconds (of its own servers, the
            built-in C{node} left out).
        """
        ok, errors = self._mesh.metrics.server_calls.totals()
        calls_per_s, errors_per_s = self.rates.now()
        return {
            "node_id": self.node_id,
            "version": self._version,
            "uptime_s": round(self.uptime(), 3),
            "timestamp": self.timestamp(),
            "servers": self._host.local_servers(),
            "peers": {
                peer: {
                    "direction": link["direction"],
                    "is_healthy": link["is_healthy"],
                    "rtt_ms": link["rtt_ms"],
                }
                for peer, link in self.peers().items()
            },
            "calls": {"ok": ok, "errors": errors},
            "calls_per_s": calls_per_s,
            "errors_per_s": errors_per_s,
            "pending": len(self._mesh.pending),
            "dialling": self.failing_peers(),
        }

    def traceroute(self, node_id: str, timeout: float = 2.0) -> Deferred[list[dict[str, Any]]]:
        """
        Probe each hop of the route to C{node_id} with a routed C{ping} (no
        mailbox is involved, so a busy server delays no answer) at once.

        :returns: a Deferred of C{[{"hop", "node_id", "rtt_ms"}, ...]}, the
            first hop first.
        :raises InvalidParams: if C{node_id} is not a node id.
        :raises NodeUnreachable: if no route to it is known.
        """
        if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
            raise InvalidParams(f"Invalid params: {node_id!r} is not a node id")
        if node_id == self.node_id:
            return succeed([{"hop": 0, "node_id": node_id, "rtt_ms": 0.0}])
        mesh = self._mesh
        route = mesh.router.route(node_id)
        if route is not None:
            return self._probe_path(route.path, timeout)
        if node_id in mesh.links:
            return self._probe_path((node_id,), timeout)
        if mesh.adverts.routes_are_complete():
            raise NodeUnreachable(f"No route to node {node_id!r}", node_id=self.node_id)
        # No route, but some neighbour tells none (a node with its registry
        # off, an original-design one): calls there are flooded, as this
        # one is, and the path it took is what is probed.
        hops: list[list[Any]] = []
        ping = CallTarget(node_id, "node", "ping", timeout=timeout, trace=CallTrace(None, hops))
        found = mesh.call(ping)
        found.addErrback(_answered_at_all, node_id)
        return found.addCallback(
            lambda _: self._probe_path(tuple(n for n, _ in hops[1:]) or (node_id,), timeout)
        )

    def _probe_path(self, path: tuple[str, ...], timeout: float) -> Deferred[list[dict[str, Any]]]:
        probes = [self._mesh.probes.probe(hop, timeout) for hop in path]
        hops: list[dict[str, Any]] = []
        for index, hop in enumerate(path):
            hops.append({"hop": index + 1, "node_id": hop, "rtt_ms": None})

        def measured(rtt: float | None, entry: dict[str, Any]) -> None:
            entry["rtt_ms"] = None if rtt is None else round(rtt * 1000.0, 3)

        for probe, entry in zip(probes, hops, strict=True):
            probe.addCallback(measured, entry)
        return gatherResults(probes).addCallback(lambda _: hops)

    def info(self) -> dict[str, Any]:
        """:returns: what the built-in C{node.info()} answers."""
        return {
            "node_id": self.node_id,
            "version": self._version,
            "uptime": self.uptime(),  # seconds, as SPEC section 2 names it
            "uptime_s": self.uptime(),  # the same, as /health names it
            "servers": self._host.local_servers(),
            "peers": sorted(self.peers()),
            "timestamp": self.timestamp(),
        }


def _answered_at_all(failure: Failure, node_id: str) -> None:
    """
    A flooded C{node.ping} that node C{node_id} itself answered with an
    error reached it all the same: an original-design node has no built-in
    C{node} server. What its path was is probed as for a ping answered.

    :raises: the failure again, if the node did not answer (its path was
        lost, it is unreachable, or the ping timed out).
    """
    error = failure.value
    if isinstance(error, CallError) and error.code not in PATH_CODES:
        return
    failure.raiseException()


class NodeServer(Server):
    """The built-in server C{node}."""

    _relaytx_owns_delivery_errors = True  # (traceroute: -32002 for a node no route reaches)

    def __init__(self, views: NodeViews) -> None:
        self._views = views

    @exposed
    def info(self) -> dict[str, Any]:
        """This node's id, version, uptime, servers and peers."""
        return self._views.info()

    @exposed
    def ping(self) -> dict[str, Any]:
        """A liveness answer with this node's id and time."""
        return {"pong": True, "node_id": self._views.node_id, "timestamp": self._views.timestamp()}

    @exposed
    def echo(self, *args: Any) -> list[Any]:
        """Its arguments, as a list."""
        return list(args)

    @exposed
    def status(self) -> dict[str, Any]:
        """This node's servers, links (RTT, health) and call counts: its part of the mesh view."""
        return self._views.status()

    @exposed
    def traceroute(self, node_id: str) -> Deferred[list[dict[str, Any]]]:
        """
        The hops from this node to C{node_id}, each with its round-trip time
        in ms from here (C{None} when it did not answer in time).
        """
        return self._views.traceroute(node_id)
