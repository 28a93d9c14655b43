# -*- test-case-name: tests.test_meshview -*-
"""
L{MeshWatch}: the whole mesh as seen from one node, for C{relay status}
and the dashboard (SPEC section 13).

A B{round} asks every node this node can reach for its C{node.status()}
(its servers, its links with their RTT and health, its calls so far), all
at once with a short deadline, and builds one view: the nodes, the links
between them, and what is wrong. Rounds run every C{interval} seconds
while someone watches (a dashboard's live feed), and on demand otherwise
(C{relay status}), never more than one at a time and never more often than
once an C{interval}, however many ask: a view a moment old is served as is.

Nodes are:
  - C{up}: it answered this round;
  - C{silent}: a route reaches it but it did not answer (too slow, not a
    relaytx node, or its access rules refuse this node);
  - C{gone}: it was seen before and no route reaches it any more (kept in
    the view for C{forget_after} seconds, then forgotten).

The status calls carry an unsampled trace context, so a node that traces
records no span for them, and they are not counted among the calls per
second the view shows (those are of the nodes' own servers, the built-in
C{node} server left out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx._calls import CallTarget
from relaytx._tracing import CallTrace, SpanContext, _new_span_id, _new_trace_id
from relaytx.errors import CallTimeout, MethodNotFound, NoSuchServer
from relaytx.wire import rfc3339


def _number(value: Any) -> float | int | None:
    """:returns: C{value} if it is a finite number (not a bool), else C{None}."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _not_relaytx(outcome: Any) -> bool:
    """
    :returns: whether a status call's failure is an answer that the node
        hosts no status (it is not a relaytx node: an original-design one
        answers -32003, "server node not found").
    """
    error = outcome.value if isinstance(outcome, Failure) else None
    return getattr(error, "code", None) in (NoSuchServer.code, MethodNotFound.code)


def _clean_status(status: dict[str, Any]) -> dict[str, Any]:
    """
    :returns: what the view takes of a node's C{node.status()} answer, each
        field of the shape it must have (else left out): a node that
        answers nonsense (not a relaytx node, or a broken one) spoils
        nothing but its own entry.
    """
    clean: dict[str, Any] = {}
    if isinstance(status.get("version"), str):
        clean["version"] = status["version"]
    uptime = _number(status.get("uptime_s"))
    if uptime is not None and uptime >= 0:
        clean["uptime_s"] = uptime
    servers = status.get("servers")
    if isinstance(servers, dict):
        clean["servers"] = {
            name: [m for m in methods if isinstance(m, str)]
            for name, methods in servers.items()
            if isinstance(name, str) and isinstance(methods, list)
        }
    peers = status.get("peers")
    if isinstance(peers, dict):
        clean["peers"] = {
            peer: {
                "direction": link.get("direction"),
                "is_healthy": link.get("is_healthy") is True,
                "rtt_ms": _number(link.get("rtt_ms")),
            }
            for peer, link in peers.items()
            if isinstance(peer, str) and isinstance(link, dict)
        }
    calls = status.get("calls")
    if isinstance(calls, dict):
        ok, errors = _number(calls.get("ok")), _number(calls.get("errors"))
        if isinstance(ok, int) and isinstance(errors, int):
            clean["calls"] = {"ok": ok, "errors": errors}
    for rate in ("calls_per_s", "errors_per_s"):
        value = _number(status.get(rate))
        if value is not None and value >= 0:
            clean[rate] = value
    pending = _number(status.get("pending"))
    if isinstance(pending, int):
        clean["pending"] = pending
    dialling = status.get("dialling")
    if isinstance(dialling, dict):
        clean["dialling"] = {
            address: {
                "node_id": peer.get("node_id") if isinstance(peer.get("node_id"), str) else None,
                "failures": _number(peer.get("failures")),
                "error": str(peer.get("error"))[:200],
            }
            for address, peer in dialling.items()
            if isinstance(address, str) and isinstance(peer, dict)
        }
    return clean


def _unsampled() -> CallTrace:
    trace_id, span_id = _new_trace_id(), _new_span_id()
    return CallTrace(SpanContext(trace_id, span_id, False, f"00-{trace_id}-{span_id}-00"))


class MeshWatch:
    """
    :param status: this node's own C{node.status()}.
    :param reachable: the other nodes a route reaches, with their hop counts.
    :param call: makes a call across the mesh (the mesh's C{call}).
    :param interval: seconds between rounds while watched, and the age of a
        view still served as fresh.
    :param timeout: each status call's deadline.
    :param forget_after: seconds a gone node stays in the view.
    :param unrouted: whether some nodes may be reachable with no route
        (a neighbour tells no routes: its registry is off, or it is of the
        original design), calls to them being flooded: the nodes that
        answered name their peers, and those are asked too.
    :param lost: the nodes known to have become unreachable lately (a link
        to them failed, here or elsewhere, or their route went), with when,
        for C{forget_after} at least: they are C{gone} from then, even if no
        view had seen them, or none since long before.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        status: Callable[[], dict[str, Any]],
        reachable: Callable[[], Mapping[str, int]],
        call: Callable[[CallTarget], Deferred[Any]],
        interval: float = 1.0,
        timeout: float = 2.0,
        forget_after: float = 300.0,
        unrouted: Callable[[], bool] = bool,
        lost: Callable[[], Mapping[str, float]] = dict,
        servers_of: Callable[[str], Mapping[str, list[str]]] = lambda node: {},
    ) -> None:
        self.node_id = node_id
        self._servers_of = servers_of
        self._unrouted = unrouted
        self._lost = lost
        self.clock = clock
        self._status = status
        self._reachable = reachable
        self._call = call
        self.interval = interval
        self.timeout = timeout
        self.forget_after = forget_after
        self.view: dict[str, Any] | None = None
        self._made_at = float("-inf")
        self._round: Deferred[None] | None = None
        self._waiters: list[Deferred[dict[str, Any]]] = []
        self._watchers: list[Callable[[dict[str, Any]], None]] = []
        #: what to call for each watcher when the watch stops first
        self._ended: dict[Callable[[dict[str, Any]], None], Callable[[], None]] = {}
        self._timer: IDelayedCall | None = None
        #: every node seen: node id -> its last status, when it was seen, its state
        self._known: dict[str, dict[str, Any]] = {}
        #: each node's last call counts and rates: node id -> (when, ok, errors, rates)
        self._counts: dict[str, tuple[float, int, int, float | None, float | None]] = {}
        self.rounds = 0
        self._stopped = False
        #: nodes with a status call out (when it left), and those whose
        #: last one failed
        self._asking: dict[str, float] = {}
        #: (why, in words)
        self._silent: dict[str, str] = {}
        #: how long a round waits for answers before making its view
        self.round_deadline = min(0.5, interval / 2)

    # Asking.

    def snapshot(self) -> Deferred[dict[str, Any]]:
        """
        :returns: a Deferred of the view: the last one if it is less than
            an C{interval} old, else the next round's.
        """
        if self.view is not None and self.clock.seconds() - self._made_at < self.interval:
            return succeed(self.view)
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiters.append(d)
        self._start_round()
        return d

    def watch(
        self,
        watcher: Callable[[dict[str, Any]], None],
        ended: Callable[[], None] = lambda: None,
    ) -> Callable[[], None]:
        """
        Call C{watcher} with each new view, a round every C{interval}
        seconds from now on (the first at once).

        :param ended: called if the watch stops first (the node stops).
        :returns: a function that stops watching.
        """
        if self._stopped:  # (a feed opened on a connection still up as the node stopped)
            ended()
            return lambda: None
        self._watchers.append(watcher)
        self._ended[watcher] = ended
        if self.view is not None and self.clock.seconds() - self._made_at < self.interval:
            watcher(self.view)  # (an older one would show what may have changed since)
        if len(self._watchers) == 1:
            self._start_round()

        def stop() -> None:
            self._ended.pop(watcher, None)
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            if not self._watchers and self._timer is not None and self._timer.active():
                self._timer.cancel()
                self._timer = None

        return stop

    @property
    def watchers(self) -> int:
        """How many watch the view now."""
        return len(self._watchers)

    def stop(self) -> None:
        """No more rounds (the node is stopping): the watchers are told."""
        self._stopped = True
        self._watchers.clear()
        ended, self._ended = self._ended, {}
        for end in ended.values():
            end()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Rounds.

    def _start_round(self) -> None:
        if self._round is not None or self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        hops = dict(self._reachable())
        hops.pop(self.node_id, None)
        # A node whose status call of an earlier round is still out is not
        # asked again; its last answer stands until that call ends.
        asked = [node for node in hops if node not in self._asking]
        done: Deferred[None] = Deferred()
        self._round = done
        left = [0]  # calls out this round
        unrouted = self._unrouted()

        def answered(outcome: Any, node: str) -> None:
            self._asking.pop(node, None)
            if isinstance(outcome, dict):
                status = _clean_status(outcome)
                self._known[node] = {"status": status, "seen": self.clock.seconds()}
                self._silent.pop(node, None)
                if unrouted and not done.called:
                    # Its peers that no route reaches are asked too.
                    further = [
                        peer
                        for peer in status.get("peers") or ()
                        if peer not in hops and peer != self.node_id and peer not in self._asking
                    ]
                    for peer in further:
                        hops[peer] = hops.get(node, 0) + 1
                    ask(further)
            elif _not_relaytx(outcome):
                # It answered, without a status to give: a node of the
                # original design, up, with the servers it told its
                # neighbours (no problem of the mesh's).
                status = {"servers": dict(self._servers_of(node))}
                self._known[node] = {"status": status, "seen": self.clock.seconds()}
                self._silent.pop(node, None)
            else:
                self._silent[node] = self._why_silent(outcome)
            left[0] -= 1
            if not left[0] and not done.called:
                done.callback(None)

        def ask(nodes: list[str]) -> None:
            now = self.clock.seconds()
            left[0] += len(nodes)
            for node in nodes:
                self._asking[node] = now
                target = CallTarget(
                    node, "node", "status", timeout=self.timeout, trace=_unsampled()
                )
                try:
                    d = self._call(target)
                except Exception:
                    d = Deferred()
                    d.errback(Failure())
                d.addBoth(answered, node)

        ask(asked)
        if not left[0] and not done.called:
            done.callback(None)
        if not done.called:
            # Slow answers do not hold the view up: it is made at the
            # round's deadline with what has come, the rest count later.
            deadline = self.clock.callLater(self.round_deadline, done.callback, None)

            def made(_: None) -> None:
                if deadline.active():
                    deadline.cancel()

            done.addCallback(made)
        done.addCallback(lambda _: self._finish_round(hops))

    def _why_silent(self, outcome: Any) -> str:
        """:returns: why a status call gave no status, in words."""
        if not isinstance(outcome, Failure):
            return "answered its status call with no status (not a relaytx node?)"
        error = outcome.value
        if isinstance(error, CallTimeout):
            return f"did not answer within {self.timeout:g}s"
        code = getattr(error, "code", None)
        what = f"{code}: {error}" if code is not None else f"{type(error).__name__}: {error}"
        return f"its status call failed ({what})"[:300]

    def _finish_round(self, hops: dict[str, int]) -> None:
        self._round = None
        self.rounds += 1
        try:
            view = self._build(hops)
        except Exception:
            self._log.failure("building the mesh view failed")
            view = self.view or {"node_id": self.node_id, "nodes": {}, "links": [], "problems": []}
        self.view = view
        self._made_at = self.clock.seconds()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(view)
        for watcher in list(self._watchers):
            try:
                watcher(view)
            except Exception:
                self._log.failure("a mesh view watcher failed")
        if self._watchers and not self._stopped:
            self._timer = self.clock.callLater(self.interval, self._start_round)

    def _build(self, hops: dict[str, int]) -> dict[str, Any]:
        now = self.clock.seconds()
        known = self._known
        known[self.node_id] = {"status": self._status(), "seen": now}
        for node_id, lost_at in self._lost().items():
            if node_id in hops or node_id == self.node_id:
                continue
            entry = known.get(node_id)
            if entry is None:
                known[node_id] = {"status": {}, "seen": lost_at}  # (gone before any view saw it)
            elif entry["seen"] < lost_at:
                # Reached until then, since the last view that asked it:
                # gone from then on (a view long after that one would
                # otherwise forget it at once).
                entry["seen"] = lost_at
        nodes: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for node_id, entry in sorted(known.items()):
            status = entry["status"]
            asked_at = self._asking.get(node_id)
            if node_id in hops and node_id not in self._silent and asked_at is not None:
                # Its call is still out as the view is made: its last
                # answer does not make it up (a node frozen since).
                self._silent[node_id] = f"has not answered in {now - asked_at:.1f}s"
            if node_id == self.node_id or (node_id in hops and node_id not in self._silent):
                state = "up"
            elif node_id in hops:
                state = "silent"
                problems.append(f"{node_id}: reachable but {self._silent[node_id]}")
            elif now - entry["seen"] > self.forget_after:
                continue
            else:
                state = "gone"
                problems.append(f"{node_id}: gone (last seen {rfc3339(entry['seen'])})")
            nodes[node_id] = self._node(node_id, state, status, entry["seen"], hops, now)
        for node_id in hops:
            if node_id in nodes:
                continue
            # Reachable, and never answered: its call failed (e.g. an
            # original node's), or is still out past the round's deadline
            # (a node that takes every call and answers none).
            asked_at = self._asking.get(node_id)
            if asked_at is None:
                problem = self._silent.get(node_id, f"did not answer within {self.timeout:g}s")
            elif now - asked_at >= self.round_deadline:
                problem = f"has not answered in {now - asked_at:.1f}s"
            else:
                continue
            nodes[node_id] = self._node(node_id, "silent", {}, None, hops, now)
            problems.append(f"{node_id}: reachable but {problem}")
        for gone in [n for n in known if n not in nodes]:
            del known[gone]
            self._counts.pop(gone, None)
        for node_id, node in nodes.items():
            if node["state"] != "up":
                continue
            dialling = known[node_id]["status"].get("dialling")
            if not isinstance(dialling, dict):
                continue
            for url, peer in sorted(dialling.items()):
                if isinstance(peer, dict):
                    problems.append(
                        f"{node_id}: cannot link to {url}: {peer.get('error')}"
                        f" ({peer.get('failures')} attempts in a row)"
                    )
        links = self._links(nodes, problems)
        up = sum(1 for n in nodes.values() if n["state"] == "up")
        return {
            "node_id": self.node_id,
            "timestamp": rfc3339(now),
            "summary": {
                "nodes": len(nodes),
                "up": up,
                "silent": sum(1 for n in nodes.values() if n["state"] == "silent"),
                "gone": sum(1 for n in nodes.values() if n["state"] == "gone"),
                "links": len(links),
                "unhealthy_links": sum(1 for link in links if not link["healthy"]),
                "servers": sum(len(n["servers"]) for n in nodes.values()),
                "calls_per_s": round(sum(n["calls_per_s"] or 0 for n in nodes.values()), 1),
                "errors_per_s": round(sum(n["errors_per_s"] or 0 for n in nodes.values()), 1),
            },
            "nodes": nodes,
            "links": links,
            "problems": problems,
        }

    def _node(
        self,
        node_id: str,
        state: str,
        status: dict[str, Any],
        seen: float | None,
        hops: dict[str, int],
        now: float,
    ) -> dict[str, Any]:
        calls = status.get("calls") if state == "up" else None
        per_s = errors_per_s = None
        if calls is not None and "calls_per_s" in status and "errors_per_s" in status:
            # The node's own rates, over its last few seconds.
            per_s, errors_per_s = status["calls_per_s"], status["errors_per_s"]
        elif isinstance(calls, dict) and seen is not None:
            # A node that gives no rates (an older relaytx): rates between
            # its last two answers (the same answer seen again keeps the
            # rates it gave).
            ok, errors = calls.get("ok", 0), calls.get("errors", 0)
            before = self._counts.get(node_id)
            if before is not None and seen == before[0]:
                per_s, errors_per_s = before[3], before[4]
            elif before is not None and seen > before[0]:
                elapsed = seen - before[0]
                per_s = round(max(0, ok + errors - before[1] - before[2]) / elapsed, 1)
                errors_per_s = round(max(0, errors - before[2]) / elapsed, 1)
            if before is None or seen != before[0]:
                self._counts[node_id] = (seen, ok, errors, per_s, errors_per_s)
        servers = status.get("servers")
        return {
            "node_id": node_id,
            "state": state,
            "hops": 0 if node_id == self.node_id else hops.get(node_id),
            "version": status.get("version"),
            "uptime_s": status.get("uptime_s"),
            "servers": sorted(servers) if isinstance(servers, dict) else [],
            "methods": servers if isinstance(servers, dict) else {},
            "peers": sorted(status.get("peers") or {}),
            "calls": calls,
            "calls_per_s": per_s,
            "errors_per_s": errors_per_s,
            "pending": status.get("pending"),
            "last_seen": None if seen is None else rfc3339(seen),
        }

    def _links(self, nodes: dict[str, dict[str, Any]], problems: list[str]) -> list[dict[str, Any]]:
        # Each link once, from what both its ends said (an end gone or
        # silent said nothing this round).
        sides: dict[tuple[str, str], dict[str, Any]] = {}
        for node_id, entry in self._known.items():
            if node_id not in nodes or nodes[node_id]["state"] != "up":
                continue
            peers = entry["status"].get("peers") or {}
            for peer, link in peers.items():
                if not isinstance(link, dict) or peer not in nodes:
                    continue  # (a link to no node of the view is not drawn: nor told)
                key = (node_id, peer) if node_id < peer else (peer, node_id)
                side = sides.setdefault(key, {"rtt": [], "healthy": []})
                rtt = link.get("rtt_ms")
                if isinstance(rtt, int | float):
                    side["rtt"].append(rtt)
                side["healthy"].append(bool(link.get("is_healthy")))
        links = []
        for (a, b), side in sorted(sides.items()):
            healthy = all(side["healthy"])
            rtt = round(min(side["rtt"]), 3) if side["rtt"] else None
            links.append({"a": a, "b": b, "rtt_ms": rtt, "healthy": healthy})
            if not healthy:
                problems.append(f"link {a} - {b}: unhealthy")
        return links
