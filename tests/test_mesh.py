"""
Tests for L{relaytx._mesh}: several nodes linked in memory with
L{relaytx.testing.MemoryMesh}: registry sync, routing, calls across hops and
their failures.
"""

from __future__ import annotations

import string
from typing import Any

import attrs
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaytx import (
    CallTimeout,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    OutcomeUnknown,
    RemoteCallError,
    Server,
    exposed,
)
from relaytx._adverts import SYNC_DELAY
from relaytx._calls import PendingCalls
from relaytx._links import HEALTHY_LINK_HERE, LinkRefused
from relaytx._metrics import LINK_LOSS_CAUSES
from relaytx._routing import HOP_MARGIN, MAX_HOPS, hop_budget
from relaytx.node import RelayNode
from relaytx.peer import CLOSE_NORMAL, CLOSE_REMOVED, CLOSE_REPLACED
from relaytx.testing import MemoryMesh, line, link_nodes, memory_node
from relaytx.wire import (
    DEFAULT_TTL,
    CallSpec,
    Envelope,
    RouteMessage,
    ServerCall,
    encode,
)
from tests.support import Chat, ChatSession, Counter, Slow


class Where(Server):
    """Says which node it runs on."""

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id

    @exposed
    def where(self) -> str:
        return self.node_id


class Failing(Server):
    """Raises."""

    @exposed
    def boom(self) -> None:
        raise ValueError("kaboom")

    @exposed
    def leave(self) -> None:
        raise SystemExit("bye")

    @exposed
    def unjsonable(self) -> set[int]:
        return {1}

    @exposed
    def not_a_number(self) -> dict[str, Any]:
        return {"values": [1.5, None, float("nan")]}


def sample(node: RelayNode, name: str, labels: dict[str, str] | None = None) -> float:
    """:returns: the value of a sample of C{node}'s metrics (0 if absent)."""
    return node.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def dropped(node: RelayNode, reason: str) -> float:
    """:returns: how many messages C{node} dropped for C{reason}."""
    return sample(node, "relaytx_messages_dropped_total", {"reason": reason})


def pending_timers(node: RelayNode) -> list[Any]:
    """:returns: the delayed calls of C{node}'s pending-call timeouts."""
    pending = node.mesh.pending
    return [
        call
        for call in node.mesh.clock.getDelayedCalls()
        if getattr(call.func, "__func__", None) is PendingCalls._timed_out
        and call.func.__self__ is pending
    ]


class MeshTestCase(SynchronousTestCase):
    """Nodes on one shared clock, linked in memory."""

    registry = True

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()

    def nodes(self, names: str) -> list[RelayNode]:
        return [memory_node(name, self.clock, disable_registry=not self.registry) for name in names]

    def line(self, names: str) -> list[RelayNode]:
        """:returns: nodes called C{names}, linked in a line, settled."""
        nodes = self.nodes(names)
        line(nodes, self.network)
        self.network.settle()
        return nodes


class MemoryMeshTests(MeshTestCase):
    """The in-memory network itself."""

    def test_frames_wait_for_pump(self) -> None:
        """A frame is delivered only by pump(), not when it is sent."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        self.assertIs(link.network, self.network)
        self.assertEqual(link.delivered, 0)
        self.assertGreater(self.network.pump(), 0)
        self.assertGreater(link.delivered, 0)
        self.assertIsNotNone(link.session_of(b).last_seen)

    def test_link_nodes_own_network(self) -> None:
        """link_nodes without a network makes one that can pump the link."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b)
        link.network.settle()
        self.assertEqual(a.views.routes()["b"]["hops"], 1)
        self.assertEqual(b.views.peers()["a"]["direction"], "inbound")
        self.assertEqual(a.views.peers()["b"]["direction"], "outbound")

    def test_close_reaches_both(self) -> None:
        """A session's close reaches both sessions as connection_lost once pumped."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        link.session_of(a).close(CLOSE_NORMAL, "bye")
        self.assertIn("b", a.mesh.links)
        self.network.pump()
        self.assertEqual((a.mesh.links, b.mesh.links), ({}, {}))
        self.assertEqual(link.close_code, CLOSE_NORMAL)
        self.assertTrue(link.closed)

    def test_frames_before_close_delivered(self) -> None:
        """Frames sent before a close still arrive; the close follows them."""
        a, b = self.nodes("ab")
        counter = Counter()
        b.expose("counter", counter)
        link = link_nodes(a, b, self.network)
        self.network.settle()
        d = a.call("b", "counter", "increment")
        link.session_of(a).close(CLOSE_NORMAL, "bye")
        self.network.pump()
        # b ran the call, but its answer came after the close: a's call
        # failed when the link went down, outcome unknown, and the answer
        # was lost.
        self.assertEqual(counter.count, 1)
        self.assertEqual(link.discarded, 1)
        self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)

    def test_cut_is_immediate(self) -> None:
        """cut() drops both ends at once and loses frames in flight."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        link.cut()
        self.assertEqual((a.mesh.links, b.mesh.links), ({}, {}))
        self.assertGreater(link.discarded, 0)
        self.assertEqual(self.network.pump(), 0)

    def test_pause_holds_frames(self) -> None:
        """A paused link delivers nothing until resumed, then delivers in order."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        self.network.settle()
        link.pause()
        d = a.call("b", "node", "echo", "x")
        self.network.pump()
        self.assertNoResult(d)
        link.resume()
        self.network.pump()
        self.assertEqual(self.successResultOf(d), ["x"])

    def test_message_loop_detected(self) -> None:
        """pump() gives up with an error on endless traffic instead of hanging."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        self.network.pump()

        def echo_back(envelope: Envelope, chat: Chat) -> None:
            link.session_of(envelope.to).host.send(envelope.sender, chat)

        a.register_handler(Chat, echo_back)
        b.register_handler(Chat, echo_back)
        a.send("b", Chat("again"))
        self.assertRaises(RuntimeError, self.network.pump, 50)

    def test_long_advance_keeps_links(self) -> None:
        """A long advance stops at every ping, so links that answer stay up."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        self.network.advance(60)
        self.assertFalse(link.closed)
        self.assertEqual((list(a.mesh.links), list(b.mesh.links)), (["b"], ["a"]))
        self.assertEqual(len(link.sent_by(a, "ping")), 13)
        self.assertEqual(a.views.peers()["b"]["rtt_ms"], 0.0)
        self.assertEqual(self.clock.seconds(), 60)

    def test_stalled_link_dropped(self) -> None:
        """
        An idle link that stalls is dropped once the WebSocket ping its
        quiet brings (a nudge) goes unanswered for the peer timeout: within
        1.75 s of the last bytes either end heard (SPEC section 8: 2 s),
        long before the next keepalive.
        """
        a, b, c = self.line("abc")
        self.network.advance(10 - self.clock.seconds())  # idle, and nudged meanwhile
        link = self.network.link_between(a, b)
        self.assertFalse(link.closed)
        self.assertGreater(link.transport_of(a).pings + link.transport_of(b).pings, 15)
        self.assertEqual(len(link.sent_by(a, "ping")), 3)  # the keepalives at 0, 5 and 10 s
        heard = max(s.last_seen for s in link.sessions or ())
        link.pause()
        # A nudge sent after the stall (none can be older than the last bytes) waits 1.25 s.
        self.network.advance(heard + 1.24 - self.clock.seconds())
        self.assertFalse(link.closed)
        self.network.advance(heard + 1.75 - self.clock.seconds())
        self.assertTrue(link.closed)
        self.assertTrue(link.transport_of(a).aborted and link.transport_of(b).aborted)
        self.assertEqual((sorted(a.mesh.links), sorted(b.mesh.links)), ([], ["c"]))
        self.assertNotIn("a", c.views.routes())

    def test_stalled_link_with_call_dropped(self) -> None:
        """
        A link that stalls with a call on it is dropped within the peer
        timeout and a tick of the call (not at the next keepalive), and the
        call fails then with -32006.
        """
        a, b = self.line("ab")
        link = self.network.link_between(a, b)
        self.network.advance(1)
        link.pause()
        called = self.clock.seconds()
        d = a.call("b", "node", "ping", timeout=30)
        failed_at: list[float] = []

        def failed(failure: Any) -> Any:
            failed_at.append(self.clock.seconds())
            return failure

        d.addErrback(failed)
        self.network.advance(1.2)
        self.assertFalse(link.closed)
        self.assertNoResult(d)
        self.network.advance(0.2)
        self.assertTrue(link.closed)
        self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)
        self.assertGreaterEqual(failed_at[0] - called, 1.25)
        self.assertLessEqual(failed_at[0] - called, 1.3 + 1e-9)

    def test_separate_clocks(self) -> None:
        """advance() moves every linked node's clock when nodes have their own."""
        a = memory_node("a")
        b = memory_node("b")
        link_nodes(a, b, self.network)
        self.network.advance(3)
        self.assertEqual((a.clock.seconds(), b.clock.seconds()), (3, 3))
        self.assertEqual(len(self.network.clocks()), 2)


class LinkLossTests(MeshTestCase):
    """C{relaytx_links_lost_total{cause}}: each ended link, counted once, by what ended it."""

    def lost(self, node: RelayNode) -> dict[str, float]:
        """:returns: the links C{node} lost, by cause (causes at 0 left out)."""
        counts = {
            c: sample(node, "relaytx_links_lost_total", {"cause": c}) for c in LINK_LOSS_CAUSES
        }
        return {cause: n for cause, n in counts.items() if n}

    def test_every_cause_from_the_start(self) -> None:
        """Every cause's series is exposed, at 0, before any link ends."""
        (a,) = self.nodes("a")
        exposition = a.metrics.exposition().decode()
        for cause in LINK_LOSS_CAUSES:
            self.assertIn(f'relaytx_links_lost_total{{cause="{cause}"}} 0.0', exposition)

    def test_silent(self) -> None:
        """A link dropped because its peer left a ping unanswered counts as silent."""
        a, b = self.line("ab")
        self.network.link_between(a, b).pause()
        self.network.advance(5 + 1.3 - self.clock.seconds())
        self.assertEqual((a.mesh.links, b.mesh.links), ({}, {}))
        self.assertEqual(self.lost(a), {"silent": 1})
        self.assertEqual(self.lost(b), {"silent": 1})

    def test_removed(self) -> None:
        """A link closed on purpose counts as removed, at both ends."""
        a, b = self.line("ab")
        self.network.link_between(a, b).session_of(a).close(CLOSE_REMOVED, "removed")
        self.network.pump()
        self.assertEqual(self.lost(a), {"removed": 1})
        self.assertEqual(self.lost(b), {"removed": 1})

    def test_removed_stops_the_far_dialer(self) -> None:
        """
        A node removed by its peer (/registry/peers/remove there) dials that
        peer no more, though the link it lost was the peer's (both dialled:
        its own dialer waited while the peer's link stood).
        """
        a, b = self.line("ab")  # (a dialled b)
        b.peer_admin.add_peer("a@ws://127.0.0.1:9")
        b.peer_admin.add_peer("c@ws://127.0.0.1:10")
        self.assertTrue(a.remove_peer("b"))
        self.network.pump()
        self.assertEqual([d.node_id for d in b.peer_admin.dialers.values()], ["c"])
        # This node's own removal of a peer leaves its other dialers be.
        b.peer_admin.add_peer("a@ws://127.0.0.1:9")
        link = self.network.link(b, a)
        link.session_of(b).close(CLOSE_REMOVED, "removed by the operator")
        self.network.pump()
        self.assertEqual(sorted(d.node_id for d in b.peer_admin.dialers.values()), ["a", "c"])

    def test_closed(self) -> None:
        """A connection that breaks, or a close that gives no purpose, counts as closed."""
        a, b, c = self.line("abc")
        self.network.link_between(a, b).cut()
        self.network.link_between(b, c).session_of(c).close(CLOSE_NORMAL, "bye")
        self.network.pump()
        self.assertEqual(self.lost(a), {"closed": 1})
        self.assertEqual(self.lost(b), {"closed": 2})
        self.assertEqual(self.lost(c), {"closed": 1})

    def test_stopped(self) -> None:
        """The links of a node that stops count as stopped there, and as closed at its peers."""
        a, b = self.line("ab")
        a.stopService()
        self.network.pump()
        self.assertEqual(self.lost(a), {"stopped": 1})
        self.assertEqual(self.lost(b), {"closed": 1})


class ReroutingTests(MeshTestCase):
    """Calls while the table finds another way around a link that went."""

    def ring(self) -> list[RelayNode]:
        nodes = self.nodes("abcde")
        for x, y in zip(nodes, nodes[1:] + nodes[:1], strict=True):
            self.network.link(x, y)
        self.network.settle()
        return nodes

    def test_removed_link(self) -> None:
        """
        Right after a link is removed, before any advert has brought the
        way around, a call across it is flooded and answered (SPEC section
        7's fallback), not refused -32002 while a path is there.
        """
        b = self.ring()[1]
        self.assertEqual(b.mesh.router.route("a").path, ("a",))
        self.assertTrue(b.remove_peer("a"))
        self.network.pump()  # (closed; the adverts wait for their timer)
        self.assertIsNone(b.mesh.router.route("a"))
        call = b.call("a", "node", "ping", timeout=5)
        self.network.pump()
        self.assertEqual(self.successResultOf(call)["node_id"], "a")

    def test_dead_node(self) -> None:
        """A node whose link failed (marked unreachable) is refused at once, as before."""
        a, b, _, _, e = self.ring()
        self.network.link_between(a, b).cut()
        self.network.link_between(a, e).cut()
        self.network.pump()
        self.assertIsInstance(
            self.failureResultOf(b.call("a", "node", "ping", timeout=5)).value, NodeUnreachable
        )

    def test_restart_soon_after_losing_many_links(self) -> None:
        """
        A node restarted soon after its earlier life lost many links (each
        numbered it anew, past the number its new life starts at) hears at
        link-up the mark its neighbour holds, and numbers itself past it:
        reached at once, not after the mark expired a minute later.
        """
        a, b, x, *leaves = self.nodes("abxlmn")
        for one, other in [(a, b), (b, x), *((x, leaf) for leaf in leaves)]:
            self.network.link(one, other)
        self.network.settle()
        for leaf in leaves:
            self.network.link_between(x, leaf).cut()
        self.network.settle()
        self.network.link_between(b, x).cut()
        self.network.settle()
        self.assertIsNone(a.mesh.router.route("x"))
        again = memory_node("x", self.clock)
        mark = b.mesh.router.lost_for(["x"])["x"]
        self.assertLess(again.mesh.adverts.own_sn, mark)
        self.network.link(b, again)
        self.network.settle()
        route = a.mesh.router.route("x")
        assert route is not None
        self.assertEqual(route.path, ("b", "x"))
        self.assertGreater(again.mesh.adverts.own_sn, mark)
        call = a.call("x", "node", "ping", timeout=5)
        self.network.pump()
        self.assertEqual(self.successResultOf(call)["node_id"], "x")


class RegistrySyncTests(MeshTestCase):
    """Registry syncs: prompt, coalesced, converging."""

    def test_sync_when_link_opens(self) -> None:
        """Both ends send a registry_sync as soon as the link opens, with no delay."""
        a, b = self.nodes("ab")
        link = link_nodes(a, b, self.network)
        self.network.advance(0)
        self.assertEqual(len(link.sent_by(a, "registry_sync")), 1)
        self.assertEqual(len(link.sent_by(b, "registry_sync")), 1)
        [entry] = [e for e in a.views.servers()["node"] if e["node_id"] == "b"]
        self.assertEqual(entry["hops"], 1)

    def test_expose_coalesced(self) -> None:
        """Several expose() calls within SYNC_DELAY give one registry_sync per neighbour."""
        a, b, c = self.nodes("abc")
        ab = self.network.link(a, b)
        ac = self.network.link(a, c)
        self.network.settle()
        before_b = len(ab.sent_by(a, "registry_sync"))
        before_c = len(ac.sent_by(a, "registry_sync"))
        a.expose("one", Counter())
        self.network.advance(SYNC_DELAY / 4)
        a.expose("two", Counter())
        self.network.advance(SYNC_DELAY / 4)
        a.expose("three", Counter())
        self.assertEqual(len(ab.sent_by(a, "registry_sync")), before_b)
        self.network.settle()
        for link, before in ((ab, before_b), (ac, before_c)):
            syncs = link.sent_by(a, "registry_sync")
            self.assertEqual(len(syncs), before + 1)
            self.assertEqual(set(syncs[-1].data["servers"]), {"node", "one", "two", "three"})
        self.assertLessEqual(self.clock.seconds(), 1.0)
        self.assertEqual({e["node_id"] for e in b.views.servers()["three"]}, {"a"})

    def test_line_of_four_converges(self) -> None:
        """On a line of four, the ends see each other's servers three hops away."""
        a, b, _c, d = self.line("abcd")
        d.expose("far", Counter())
        self.network.settle()
        [entry] = a.views.servers()["far"]
        self.assertEqual((entry["node_id"], entry["hops"], entry["is_local"]), ("d", 3, False))
        self.assertEqual(entry["methods"], ["get", "increment"])
        self.assertEqual(a.views.routes()["d"]["next_hop"], "b")
        self.assertEqual(
            d.views.routes()["a"],
            {"next_hop": "c", "hops": 3, "metric": 3, "path": ["c", "b", "a"]},
        )
        self.assertEqual(
            sorted((e["node_id"], e["hops"]) for e in b.views.servers()["node"]),
            [("a", 1), ("b", 0), ("c", 1), ("d", 2)],
        )

    def test_unexpose_propagates(self) -> None:
        """A server removed at one end disappears from the other end's directory."""
        a, _b, _c, d = self.line("abcd")
        d.expose("far", Counter())
        self.network.settle()
        d.unexpose("far")
        self.network.settle()
        self.assertNotIn("far", a.views.servers())

    def test_cut_withdraws_routes(self) -> None:
        """Cutting the middle of a line withdraws the routes across it at both ends."""
        a, b, c, d = self.line("abcd")
        self.network.link_between(b, c).cut()
        self.network.settle()
        self.assertEqual(sorted(a.views.routes()), ["b"])
        self.assertEqual(sorted(d.views.routes()), ["c"])


class CallTests(MeshTestCase):
    """node.call across hops, and its errors."""

    def test_call_across_hops(self) -> None:
        """node.call reaches nodes one, two and three hops away and returns their results."""
        nodes = self.line("abcd")
        for node in nodes[1:]:
            node.expose("where", Where(node.node_id))
        self.network.settle()
        a = nodes[0]
        for target in "bcd":
            d = a.call(target, "where", "where")
            self.assertNoResult(d)
            self.network.pump()
            self.assertEqual(self.successResultOf(d), target)
        self.assertEqual(len(a.mesh.pending), 0)
        self.assertEqual(sample(nodes[1], "relaytx_messages_routed_total"), 4)

    def test_as_is_between_routers(self) -> None:
        """
        Between relaytx nodes, which advertise routes, a call and its answer
        travel unwrapped; each hop appends itself to the route.
        """
        a, b, c = self.line("abc")
        c.expose("where", Where("c"))
        self.network.settle()
        d = a.call("c", "where", "where")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), "c")
        ab, bc = self.network.link_between(a, b), self.network.link_between(b, c)
        for link, node in [(ab, a), (ab, b), (bc, b), (bc, c)]:
            self.assertEqual(link.sent_by(node, "route_message"), [], node.node_id)
        [call] = bc.sent_by(b, "server_call")
        self.assertEqual((call.sender, call.to, call.route), ("a", "c", ("a", "b")))
        [answer] = ab.sent_by(b, "server_response")
        self.assertEqual((answer.sender, answer.to, answer.route), ("c", "a", ("c", "b")))

    def test_wrapped_for_other_hops(self) -> None:
        """
        A neighbour that does not advertise routes (as the original design's
        nodes) gets a message for a node beyond it wrapped in a
        C{route_message} addressed to it, and passes on what it unwraps.
        """
        a, c = self.nodes("ac")
        b = memory_node("b", self.clock, disable_registry=True)
        line([a, b, c], self.network)
        self.network.settle()
        c.expose("where", Where("c"))
        d = a.call("c", "where", "where")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), "c")
        [wrapper] = self.network.link_between(a, b).sent_by(a, "route_message")
        self.assertEqual((wrapper.sender, wrapper.to, wrapper.route), ("a", "b", ("a",)))
        inner = wrapper.data["original_message"]
        self.assertEqual((inner["type"], inner["to"]), ("server_call", "c"))
        [wrapped_answer] = self.network.link_between(b, c).sent_by(c, "route_message")
        self.assertEqual(wrapped_answer.data["original_message"]["to"], "a")

    def test_kwargs_across_hops(self) -> None:
        """Keyword arguments travel with a routed call."""
        a, _b, c = self.line("abc")
        counter = Counter()
        c.expose("counter", counter)
        d = a.call("c", "counter", "increment", by=5)
        self.network.pump()
        self.assertEqual(self.successResultOf(d), 5)

    def test_remote_exception(self) -> None:
        """A method that raises three hops away fails the call with -32000 naming the target."""
        a, _b, _c, d = self.line("abcd")
        d.expose("failing", Failing())
        call = a.call("d", "failing", "boom")
        self.network.pump()
        error = self.failureResultOf(call, RemoteCallError).value
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "ValueError")
        self.assertEqual(error.data["message"], "kaboom")
        self.assertEqual(error.data["node_id"], "d")
        self.assertEqual(error.data["route"], ["a", "b", "c", "d"])  # the way in
        self.assertNotIn("Traceback", repr(error.to_jsonrpc()))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unsendable_result(self) -> None:
        """A result JSON cannot express fails as the target's, with the way in as its route."""
        a, _b, c = self.line("abc")
        c.expose("failing", Failing())
        call = a.call("c", "failing", "unjsonable")
        self.network.pump()
        error = self.failureResultOf(call, RemoteCallError).value
        self.assertEqual((error.data["type"], error.data["node_id"]), ("TypeError", "c"))
        self.assertEqual(error.data["route"], ["a", "b", "c"])
        # NaN and infinities are no JSON: refused, not sent as null.
        call = a.call("c", "failing", "not_a_number")
        self.network.pump()
        error = self.failureResultOf(call, RemoteCallError).value
        self.assertEqual((error.code, error.data["type"]), (-32000, "TypeError"))
        self.assertIn("nan", error.data["message"])

    def test_wide_integers_across_hops(self) -> None:
        """Integers past 64 bits go three hops and back as the same integers."""
        a, _b, _c, _d = self.line("abcd")
        wide = [2**64, -(2**70), 10**40, 2**63 - 1]
        call = a.call("d", "node", "echo", *wide)
        self.network.pump()
        echoed = self.successResultOf(call)
        self.assertEqual(echoed, wide)
        self.assertEqual({type(n) for n in echoed}, {int})

    def test_remote_system_exit(self) -> None:
        """A method raising SystemExit fails its call with -32000; the links stay up."""
        a, _b, c = self.line("abc")
        c.expose("failing", Failing())
        call = a.call("c", "failing", "leave")
        self.network.pump()
        error = self.failureResultOf(call, RemoteCallError).value
        self.assertEqual((error.data["type"], error.data["message"]), ("SystemExit", "bye"))
        self.assertEqual((set(a.mesh.links), set(c.mesh.links)), ({"b"}, {"b"}))
        self.flushLoggedErrors(SystemExit)
        d = a.call("c", "node", "ping")
        self.network.pump()
        self.successResultOf(d)

    def test_unknown_server(self) -> None:
        """A server the target does not host fails the call with -32003."""
        a, _b, _c = self.line("abc")
        call = a.call("c", "nope", "get")
        self.network.pump()
        error = self.failureResultOf(call, NoSuchServer).value
        self.assertEqual(error.code, -32003)
        self.assertEqual(error.data["node_id"], "c")

    def test_unknown_method(self) -> None:
        """A method the target's server does not expose fails the call with -32003."""
        a, _b, _c = self.line("abc")
        call = a.call("c", "node", "_private")
        self.network.pump()
        failure = self.failureResultOf(call, NoSuchServer, NoSuchMethod)
        self.assertEqual(failure.value.code, -32003)

    def test_no_route(self) -> None:
        """A call to a node nobody knows fails with -32002 at once, without the clock moving."""
        a, _b = self.line("ab")
        now = self.clock.seconds()
        error = self.failureResultOf(a.call("z", "node", "ping"), NodeUnreachable).value
        self.assertEqual(error.code, -32002)
        self.assertEqual(self.clock.seconds(), now)
        self.assertEqual(len(a.mesh.pending), 0)
        self.assertEqual(pending_timers(a), [])

    def test_no_links(self) -> None:
        """A node with no links fails a remote call with -32002 at once."""
        [a] = self.nodes("a")
        self.failureResultOf(a.call("z", "node", "ping"), NodeUnreachable)

    def test_timeout(self) -> None:
        """A call with no answer fails with -32001 at its deadline and leaves nothing pending."""
        a, b = self.line("ab")
        b.expose("slow", Slow())
        d = a.call("b", "slow", "wait", timeout=4)
        self.assertEqual(sample(a, "relaytx_pending_calls"), 1)
        self.network.advance(3.999)
        self.assertNoResult(d)
        self.network.advance(0.001)
        error = self.failureResultOf(d, CallTimeout).value
        self.assertEqual(error.code, -32001)
        self.assertEqual(sample(a, "relaytx_pending_calls"), 0)
        self.assertEqual(len(a.mesh.pending), 0)
        self.assertEqual(pending_timers(a), [])

    def test_late_answer(self) -> None:
        """An answer arriving after the timeout is dropped and counted."""
        a, b = self.line("ab")
        link = self.network.link_between(a, b)
        link.pause()  # for less than the peer timeout
        d = a.call("b", "node", "echo", "late", timeout=1)
        self.network.advance(1)
        self.failureResultOf(d, CallTimeout)
        link.resume()
        self.network.pump()
        self.assertEqual(len(link.sent_by(b, "server_response")), 1)
        self.assertEqual(sample(a, "relaytx_late_answers_total"), 1)
        self.assertEqual(len(a.mesh.pending), 0)

    def test_own_link_cut_mid_call(self) -> None:
        """A call in flight fails with -32006 at once when the caller's own link is cut."""
        a, b, _c, d = self.line("abcd")
        slow = Slow()
        d.expose("slow", slow)
        call = a.call("d", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        self.network.link_between(a, b).cut()
        error = self.failureResultOf(call, OutcomeUnknown).value
        self.assertEqual(error.code, -32006)
        self.assertEqual(pending_timers(a), [])

    def test_route_withdrawn_while_the_path_holds(self) -> None:
        """
        A call whose caller loses its route to the target for a moment (the
        mesh settling after a change elsewhere) while the link it left by
        holds is not failed: it ran, and its answer comes back that way.
        A call whose way out is gone still fails at once (-32006).
        """
        a, b, c = self.line("abc")
        slow = Slow()
        c.expose("slow", slow)
        call = a.call("c", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        forwarder = a.mesh.forwarder
        can_reach = forwarder.can_reach
        forwarder.can_reach = lambda destination: destination != "c"  # type: ignore[method-assign]
        a.mesh.calls.routes_changed()
        forwarder.can_reach = can_reach  # type: ignore[method-assign]
        self.assertNoResult(call)
        slow.waiting[0].callback("ran")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "ran")
        # Its way out gone, with no route: at once.
        call = a.call("c", "slow", "wait", timeout=60)
        self.network.pump()
        self.network.link_between(a, b).cut()
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)

    def test_first_hop_lost_with_other_path(self) -> None:
        """A call in flight fails with -32006 when its first hop goes, though another path stays."""
        a, b, c, d = self.nodes("abcd")
        for x, y in [(a, b), (b, d), (a, c), (c, d)]:
            self.network.link(x, y)
        self.network.settle()
        slow = Slow()
        d.expose("slow", slow)
        self.assertEqual(a.views.routes()["d"]["next_hop"], "b")
        call = a.call("d", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        self.network.link_between(a, b).cut()
        self.assertEqual(a.views.routes()["d"]["next_hop"], "c")
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)

    def test_budget_spent_on_target(self) -> None:
        """A method outliving the call's budget times out at both ends and leaves no timer."""
        a, b = self.line("ab")
        slow = Slow()
        b.expose("slow", slow)
        call = a.call("b", "slow", "wait", timeout=2)
        self.network.pump()
        self.network.advance(2)
        self.assertEqual(self.failureResultOf(call, CallTimeout).value.code, -32001)
        [answer] = self.network.link_between(a, b).sent_by(b, "server_response")
        self.assertEqual(answer.data["error_code"], -32001)
        self.assertEqual(sample(a, "relaytx_late_answers_total"), 1)
        slow.waiting[0].callback("much too late")
        self.network.pump()
        self.assertEqual(len(self.network.link_between(a, b).sent_by(b, "server_response")), 1)
        # No Deferred.addTimeout timer of the execution is left behind.
        timers = [
            c
            for c in self.clock.getDelayedCalls()
            if getattr(c.func, "__name__", "") == "timeItOut"
        ]
        self.assertEqual(timers, [])

    def test_far_link_cut_mid_call(self) -> None:
        """
        A call in flight fails with -32006 at once when a link further along
        is cut: the node before the cut reports it, back along the path.
        """
        a, b, c, d = self.line("abcd")
        slow = Slow()
        d.expose("slow", slow)
        for far in [("b", "c"), ("c", "d")]:
            call = a.call("d", "slow", "wait", timeout=60)
            self.network.pump()
            self.assertNoResult(call)
            now = self.clock.seconds()
            self.network.link_between(*far).cut()
            self.network.pump()
            error = self.failureResultOf(call, OutcomeUnknown).value
            self.assertEqual(error.code, -32006)
            self.assertEqual(error.data["node_id"], far[0])
            self.assertEqual(self.clock.seconds(), now)
            self.network.link(*(n for n in (a, b, c, d) if n.node_id in far))
            self.network.settle()
        self.assertEqual(len(a.mesh.pending), 0)

    def test_forwarder_forgets_answered_calls(self) -> None:
        """A forwarder forgets a call once its answer passed back, so a later cut fails nothing."""
        a, b, _c = self.line("abc")
        d = a.call("c", "node", "ping")
        self.network.pump()
        self.successResultOf(d)
        self.assertEqual(len(b.mesh.forwarded), 0)

    def test_duplicate_call_frame(self) -> None:
        """The same server_call frame delivered twice executes once."""
        a, b = self.line("ab")
        counter = Counter()
        b.expose("counter", counter)
        call = ServerCall(CallSpec("counter", "increment", (1,), timeout=5), "r-dup")
        data = encode(Envelope.create(call, "a", "b", self.clock.seconds()))
        link = self.network.link_between(a, b)
        session = link.session_of(b)
        session.data_received(data)
        session.data_received(data)
        self.network.pump()
        self.assertEqual(counter.count, 1)
        self.assertEqual(len(link.sent_by(b, "server_response")), 1)
        self.assertEqual(dropped(b, "duplicate"), 1)

    def test_hop_budget_covers_the_route(self) -> None:
        """
        A call along a route longer than the original design's TTL of 10
        succeeds: between relaytx nodes its TTL is the route's hops plus a
        margin, and so is its answer's.
        """
        nodes = self.line(string.ascii_lowercase[:13])
        a, m = nodes[0], nodes[12]
        counter = Counter()
        m.expose("counter", counter)
        self.network.settle()
        self.assertEqual(a.views.routes()["m"]["hops"], 12)
        far = a.call("m", "counter", "increment")
        self.network.pump()
        self.assertEqual(self.successResultOf(far), 1)
        [call] = self.network.link_between(a, nodes[1]).sent_by(a, "server_call")
        self.assertEqual(call.ttl, hop_budget(12))
        [answer] = self.network.link_between(nodes[11], m).sent_by(m, "server_response")
        self.assertEqual(answer.ttl, hop_budget(12))
        near = a.call("c", "node", "ping")
        self.network.pump()
        self.successResultOf(near)
        [call] = [
            c
            for c in self.network.link_between(a, nodes[1]).sent_by(a, "server_call")
            if c.to == "c"
        ]
        self.assertEqual(call.ttl, DEFAULT_TTL)

    def test_default_ttl_towards_original_nodes(self) -> None:
        """A message whose next hop does not route (as an original node) keeps the TTL of 10."""
        a, c = self.nodes("ac")
        b = memory_node("b", self.clock, disable_registry=True)
        line([a, b, c], self.network)
        self.network.settle()
        d = a.call("b", "node", "ping")
        self.network.pump()
        self.successResultOf(d)
        [call] = self.network.link_between(a, b).sent_by(a, "server_call")
        self.assertEqual(call.ttl, DEFAULT_TTL)

    def test_flooded_past_a_quiet_node(self) -> None:
        """
        Behind a node whose registry is off, a call floods: a copy that can
        go nowhere (a neighbour that knows all it can reach, and not the
        target) is -32002 for that copy only; the copy through the quiet
        node runs the call, and its answer is the call's. When every copy
        ends so, the call fails with -32002 at once, as before.
        """
        a, c, d = self.nodes("acd")
        b = memory_node("b", self.clock, disable_registry=True)
        line([a, b, c, d], self.network)
        counter = Counter()
        a.expose("counter", counter)
        self.network.settle()
        self.assertNotIn("a", c.views.routes())
        for n in range(1, 4):
            call = c.call("a", "counter", "increment")
            self.network.pump()
            self.assertEqual(self.successResultOf(call), n)
        self.assertEqual(counter.count, 3)
        now = self.clock.seconds()
        nowhere = c.call("z", "node", "ping", timeout=30)
        self.network.pump()
        self.assertEqual(self.failureResultOf(nowhere, NodeUnreachable).value.code, -32002)
        self.assertEqual(self.clock.seconds(), now)

    def test_spent_budget_renewed(self) -> None:
        """A call whose TTL runs out where a route still goes on through routers is passed on."""
        a, b, c, d = self.line("abcd")
        counter = Counter()
        d.expose("counter", counter)
        self.network.settle()
        call = ServerCall(CallSpec("counter", "increment", timeout=5), "r-spent")
        spent = attrs.evolve(Envelope.create(call, "a", "d", 0), ttl=1)
        self.network.link_between(a, b).session_of(b).data_received(encode(spent))
        self.network.pump()
        self.assertEqual(counter.count, 1)
        [passed] = self.network.link_between(b, c).sent_by(b, "server_call")
        self.assertEqual(passed.ttl, 2 + HOP_MARGIN)
        self.assertEqual(dropped(b, "ttl_exceeded"), 0)

    def test_sixty_four_hops_at_most(self) -> None:
        """A call that has made 63 hops and needs two more is dropped: TTL exceeded."""
        a, b, _c, d = self.line("abcd")
        counter = Counter()
        d.expose("counter", counter)
        self.network.settle()
        call = ServerCall(CallSpec("counter", "increment", timeout=5), "r-far")
        history = tuple(f"x{i}" for i in range(MAX_HOPS - 2))
        envelope = Envelope(
            "server_call", "x0", "d", call.to_data(), "far-1", None, (*history, "a"), 1
        )
        self.network.link_between(a, b).session_of(b).data_received(encode(envelope))
        self.network.pump()
        self.assertEqual(counter.count, 0)
        self.assertEqual(dropped(b, "ttl_exceeded"), 1)

    def test_loop_dropped(self) -> None:
        """A message whose route already holds the forwarder is dropped and counted."""
        a, b, c = self.line("abc")
        counter = Counter()
        c.expose("counter", counter)
        # It went a -> b -> a before and now comes back to b.
        call = ServerCall(CallSpec("counter", "increment"), "r-loop")
        inner = Envelope.create(call, "a", "c", 0).hop("b").hop("a")
        outer = Envelope.create(RouteMessage(inner), "a", "b", 0)
        bc = self.network.link_between(b, c)
        before = len(bc.sent_by(b))
        self.network.link_between(a, b).session_of(b).data_received(encode(outer))
        self.network.pump()
        self.assertEqual(dropped(b, "loop"), 1)
        self.assertEqual(len(bc.sent_by(b)), before)
        self.assertEqual(counter.count, 0)

    def test_nearest_host(self) -> None:
        """A call by server name alone goes to the nearest node hosting it; a local one wins."""
        a, b, c, d = self.line("abcd")
        c.expose("svc", Where("c"))
        d.expose("svc", Where("d"))
        self.network.settle()
        call = a.call(None, "svc", "where")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "c")
        self.assertEqual(self.successResultOf(d.call(None, "svc", "where")), "d")
        b.expose("svc", Where("b"))
        self.network.settle()
        call = a.call(None, "svc", "where")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "b")

    def test_custom_message_routed(self) -> None:
        """A custom message type crosses a node that does not know it and is handled at its end."""
        a, b, c = self.nodes("abc")
        a.use_session(ChatSession)
        c.use_session(ChatSession)
        line([a, b, c], self.network)
        self.network.settle()
        self.assertTrue(a.send("c", Chat("hello")))
        self.network.pump()
        [session] = [s for s in c.mesh.links.values()]
        self.assertEqual(session.chats, [("a", "hello")])  # type: ignore[attr-defined]
        self.assertEqual(dropped(b, "unknown_type"), 0)

    def test_registered_handler_routed(self) -> None:
        """A handler registered on the far node receives a custom message sent two hops."""
        a, _b, c = self.line("abc")
        got: list[str] = []
        c.register_handler(Chat, lambda envelope, chat: got.append(chat.text))
        a.send("c", Chat("hi"))
        self.network.pump()
        self.assertEqual(got, ["hi"])


class FloodTests(MeshTestCase):
    """The original's fallback when no routes are known."""

    registry = False

    def test_two_hops(self) -> None:
        """With the registry disabled, a call still reaches a node two hops away by flooding."""
        a, b, _c = self.line("abc")
        self.assertEqual(sorted(a.views.routes()), ["b"])
        d = a.call("c", "node", "echo", "flood")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), ["flood"])
        self.assertGreater(sample(b, "relaytx_messages_routed_total"), 0)
        self.assertEqual(self.network.link_between(a, b).sent_by(a, "registry_sync"), [])

    def test_dead_end_route(self) -> None:
        """
        A flood that finds nothing fails -32002 from the node where its last
        branch ended, with the route the call took there (SPEC section 5's
        data), whichever end it starts from.
        """
        a, _b, c = self.line("abc")
        for caller, route in ((a, ["a", "b"]), (c, ["c", "b"])):
            d = caller.call("zz", "node", "ping", timeout=5)
            self.network.pump()
            error = self.failureResultOf(d, NodeUnreachable).value
            self.assertEqual((error.data["node_id"], error.data["route"]), ("b", route))

    def test_send_flooded(self) -> None:
        """node.send of a message that leaves by flooding says it left; to nowhere, not."""
        a, _b, c = self.line("abc")
        got: list[str] = []
        c.register_handler(Chat, lambda envelope, chat: got.append(chat.text))
        self.assertTrue(a.send("c", Chat("by flood")))
        self.network.pump()
        self.assertEqual(got, ["by flood"])
        [lone] = self.nodes("z")
        self.assertFalse(lone.send("c", Chat("nowhere")))

    def test_flooded_copies_run_once(self) -> None:
        """Copies of a flooded call arriving by two paths execute once."""
        a, b, c, d = self.nodes("abcd")
        for x, y in [(a, b), (a, c), (b, d), (c, d)]:
            self.network.link(x, y)
        self.network.settle()
        counter = Counter()
        d.expose("counter", counter)
        call = a.call("d", "counter", "increment")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), 1)
        self.assertEqual(counter.count, 1)
        self.assertGreaterEqual(dropped(d, "duplicate"), 1)

    def test_dead_end_copy(self) -> None:
        """A flooded copy that reaches a dead end does not fail a call another copy completes."""
        a, b, c, leaf = self.nodes("abcx")
        for x, y in [(a, b), (a, leaf), (b, c)]:
            self.network.link(x, y)
        self.network.settle()
        counter = Counter()
        c.expose("counter", counter)
        call = a.call("c", "counter", "increment")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), 1)
        self.assertEqual(dropped(leaf, "no_route"), 1)

    def test_unrelated_link_lost(self) -> None:
        """A flooded call in flight survives the loss of a link it never used."""
        a, b, c, q = self.nodes("abcq")
        for x, y in [(a, b), (b, c), (a, q)]:
            self.network.link(x, y)
        self.network.settle()
        slow = Slow()
        c.expose("slow", slow)
        call = a.call("c", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        self.network.link_between(a, q).cut()
        self.assertNoResult(call)
        slow.waiting[0].callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "done")

    def test_lost_flood_branch(self) -> None:
        """A forwarder that flooded a call does not fail it when one of its branches is lost."""
        a, x, y, z, t = self.nodes("axyzt")
        for p, q in [(a, x), (x, y), (x, z), (y, t)]:
            self.network.link(p, q)
        self.network.settle()
        slow = Slow()
        t.expose("slow", slow)
        call = a.call("t", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        self.network.link_between(x, z).cut()
        self.network.pump()
        self.assertNoResult(call)
        slow.waiting[0].callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "done")

    def _running_flood(self, links: str, hold: str | None = None) -> tuple[Any, dict[str, Any]]:
        # A mesh of the named links ("ax xy": a-x, x-y) and a slow call from
        # a to t, flooded, running there; with hold, that link is paused first.
        names = sorted(set(links.replace(" ", "")))
        nodes = dict(zip(names, self.nodes("".join(names)), strict=True))
        for pair in links.split():
            self.network.link(nodes[pair[0]], nodes[pair[1]])
        self.network.settle()
        slow = Slow()
        nodes["t"].expose("slow", slow)
        if hold is not None:
            self.network.link_between(nodes[hold[0]], nodes[hold[1]]).pause()
        call = nodes["a"].call("t", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        return call, nodes

    def test_lost_last_flood_branch(self) -> None:
        """
        A call a forwarder flooded fails at once when the link its only copy
        left by goes down while it runs (-32006: it reached the target), not
        at its timeout (SPEC section 8).
        """
        call, nodes = self._running_flood("ax xy yt")
        now = self.clock.seconds()
        self.network.link_between(nodes["x"], nodes["y"]).cut()
        self.network.pump()
        error = self.failureResultOf(call, OutcomeUnknown).value
        self.assertEqual(
            (error.code, error.data["node_id"], self.clock.seconds()), (-32006, "x", now)
        )
        self.assertEqual([len(nodes[n].mesh.forwarded) for n in "xy"], [0, 0])
        self.assertEqual(nodes["x"].mesh.forwarded.floods, {})

    def test_caller_loses_last_flood_branch(self) -> None:
        """
        The caller that flooded a call fails it at once when the link its
        last copy still out left by goes down (the other copy came to a dead
        end), though it has other links.
        """
        call, nodes = self._running_flood("ax aq xt")
        self.network.link_between(nodes["a"], nodes["x"]).cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)
        self.assertEqual(len(nodes["a"].mesh.pending), 0)

    def _dead_end_after_lost(self, links: str, flooder: str, lost: str, late: str) -> None:
        # The dead end's report is held back until the other branch is lost.
        call, nodes = self._running_flood(links, hold=flooder + late)
        self.network.link_between(nodes[flooder], nodes[lost]).cut()
        self.network.pump()
        self.assertNoResult(call)
        self.network.link_between(nodes[flooder], nodes[late]).resume()
        self.network.pump()
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)

    def test_caller_dead_end_after_a_lost_branch(self) -> None:
        """
        A flood whose last copy comes to a dead end after another branch
        was lost fails -32006, not -32002: the lost copy may have run.
        """
        self._dead_end_after_lost("ax aq xt", "a", "x", "q")

    def test_forwarder_dead_end_after_a_lost_branch(self) -> None:
        """So too at a forwarder that flooded the call: it reports -32006."""
        self._dead_end_after_lost("ax xy xz yt", "x", "y", "z")

    def _ran_and_dropped(self, nodes: dict[str, Any], ways: str) -> tuple[str, str]:
        # Of two neighbours of t, the one whose copy ran and the one whose
        # copy t dropped (and told it so).
        told = [
            n for n in ways if self.network.link_between("t", n).sent_by("t", "call_copy_dropped")
        ]
        self.assertEqual(len(told), 1)
        [ran] = set(ways) - set(told)
        return ran, told[0]

    def test_dropped_copy_told(self) -> None:
        """
        A copy of a flooded call that reaches its target after another is
        dropped there, and the word goes back to the caller that flooded
        it: so when the link its running copy left by goes down, the call
        fails at once (-32006), not at its timeout.
        """
        call, nodes = self._running_flood("ax ay xt yt")
        ran, dropped_at = self._ran_and_dropped(nodes, "xy")
        self.assertEqual(len(nodes[dropped_at].mesh.forwarded), 0)
        self.assertNoResult(call)
        self.network.link_between("a", ran).cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)

    def test_dropped_copy_call_runs_on(self) -> None:
        """Meanwhile the call runs on, and its answer comes back."""
        call, nodes = self._running_flood("ax ay xt yt")
        self._ran_and_dropped(nodes, "xy")
        nodes["t"].servers.server("slow").waiting.pop().callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "done")

    def test_dropped_copy_told_to_a_forwarder(self) -> None:
        """
        A forwarder that flooded the call takes the word, and reports the
        loss of the copy that ran (-32006) once no other copy is out.
        """
        call, nodes = self._running_flood("af fx fy xt yt")
        ran, _ = self._ran_and_dropped(nodes, "xy")
        self.network.link_between("f", ran).cut()
        self.network.pump()
        error = self.failureResultOf(call, OutcomeUnknown).value
        self.assertEqual((error.code, error.data["node_id"]), (-32006, "f"))
        self.assertEqual(nodes["f"].mesh.forwarded.floods, {})

    def test_copies_meeting_before_the_target(self) -> None:
        """
        Two copies that meet at the target's neighbour go on once: the
        second is dropped there, its branch told so, and the loss of the
        target fails the call at once (-32006). (The second copy went on
        too, took the first's place in that node's memory, and the target's
        word on it made the node forget the call: -32001 at the timeout.)
        """
        call, nodes = self._running_flood("ab ad be de et")
        self.assertEqual(len(self.network.link_between("e", "t").sent_by("e", "server_call")), 1)
        self.network.link_between("e", "t").cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)
        self.assertEqual([len(nodes[n].mesh.forwarded) for n in "bde"], [0, 0, 0])

    def test_flood_to_nowhere_ends(self) -> None:
        """
        A call flooded round a ring for a node that does not exist dies out,
        and fails at once (-32002): every copy came to a dead end, each
        told back to the node it came from (SPEC section 7).
        """
        a, b, c = self.nodes("abc")
        for x, y in [(a, b), (b, c), (c, a)]:
            self.network.link(x, y)
        self.network.settle()
        now = self.clock.seconds()
        call = a.call("nobody", "node", "ping", timeout=3)
        self.assertLess(self.network.pump(), 20)
        self.assertGreaterEqual(dropped(b, "no_route") + dropped(c, "no_route"), 2)
        error = self.failureResultOf(call, NodeUnreachable).value
        self.assertEqual((error.code, self.clock.seconds()), (-32002, now))
        self.assertEqual(len(a.mesh.pending), 0)
        self.assertEqual([len(n.mesh.forwarded) for n in (b, c)], [0, 0])

    def test_flood_one_branch_ends(self) -> None:
        """
        A flooded call whose copy down one branch comes to a dead end, and
        down another runs, is answered by the one that ran: the dead end
        says -32002 for its branch only.
        """
        a, b, c, d, e = self.nodes("abcde")
        for x, y in [(a, b), (b, c), (a, d), (d, e)]:  # e: a dead end; c: the target
            self.network.link(x, y)
        self.network.settle()
        for order in (0, 1):
            if order:  # the copy to the target held back: the dead end answers first
                self.network.link_between(a, b).pause()
            call = a.call("c", "node", "echo", order)
            self.network.pump()
            self.assertNoResult(call) if order else None
            self.network.link_between(a, b).resume()
            self.network.pump()
            self.assertEqual(self.successResultOf(call), [order])

    def test_longer_than_the_default_ttl(self) -> None:
        """
        A flooded call crosses more hops than the original design's 10: its
        hop budget between relaytx nodes covers any loop-free path (64).
        """
        nodes = self.line("abcdefghijklmn")  # 13 hops
        d = nodes[0].call("n", "node", "echo", "far")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), ["far"])
        self.assertEqual(sum(dropped(node, "ttl_exceeded") for node in nodes), 0)

    def test_each_node_floods_once(self) -> None:
        """
        Each node passes on one copy of a flooded message, however many
        reach it: in a full mesh of six, some 25 copies, not one per loop-free
        path (325).
        """
        nodes = self.nodes("abcdef")
        for i, x in enumerate(nodes):
            for y in nodes[i + 1 :]:
                self.network.link(x, y)
        self.network.settle()
        call = nodes[0].call("nobody", "node", "ping", timeout=3)
        self.network.pump()
        copies = sum(
            len(link.sent_by(node, "server_call"))
            for link in self.network.links
            for node in link.nodes
        )
        self.assertLessEqual(copies, 5 + 5 * 4)
        self.assertGreater(sum(dropped(node, "duplicate") for node in nodes), 0)
        self.assertEqual(self.failureResultOf(call, NodeUnreachable).value.code, -32002)

    def test_bare_name_is_local_only(self) -> None:
        """With the registry disabled, a bare server name never reaches another node."""
        a, b = self.line("ab")
        b.expose("svc", Where("b"))
        self.network.settle()
        self.assertEqual(self.failureResultOf(a.call(None, "svc", "where")).value.code, -32601)


class LinkLifecycleTests(MeshTestCase):
    """Link replacement and stopping a node."""

    def test_replacement_keeps_calls(self) -> None:
        """A link found dead is replaced by a new one without failing calls via it."""
        a, b = self.line("ab")
        slow = Slow()
        b.expose("slow", slow)
        call = a.call("b", "slow", "wait", timeout=60)
        self.network.pump()
        old = self.network.link_between(a, b)
        for node in (a, b):  # as missed pings leave it
            old.session_of(node).healthy = False
        new = self.network.link(a, b)
        self.network.pump()
        self.assertEqual(old.close_code, CLOSE_REPLACED)
        self.assertTrue(old.closed)
        self.assertIs(a.mesh.links["b"], new.session_of(a))
        self.assertIs(b.mesh.links["a"], new.session_of(b))
        self.assertNoResult(call)
        slow.waiting[0].callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(call), "done")
        self.assertEqual(len(new.sent_by(b, "server_response")), 1)

    def test_strict_keeps_healthy_link(self) -> None:
        """Strict links: a second link for a healthy peer is refused 409; the first stays."""
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        b.mesh._links.strict = True
        first = self.network.link(a, b)
        self.network.settle()
        refused = self.assertRaises(LinkRefused, self.network.link, a, b)
        self.assertEqual(refused.status, 409)
        self.assertIs(b.mesh.links["a"], first.session_of(b))
        self.assertFalse(first.closed)
        # Once that link is found dead, a new one is taken.
        first.cut()
        second = self.network.link(a, b)
        self.assertIs(b.mesh.links["a"], second.session_of(b))

    def test_open_mesh_keeps_healthy_link(self) -> None:
        """In an open mesh too, a second link for a healthy peer is refused, with one warning."""
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        first = self.network.link(a, b)
        self.network.settle()
        for _ in range(3):  # a second process as "a" keeps trying
            refused = self.assertRaises(LinkRefused, self.network.link, a, b)
            self.assertEqual(refused.status, 409)
            self.assertIn(HEALTHY_LINK_HERE, refused.reason)
        self.assertIs(b.mesh.links["a"], first.session_of(b))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("a healthy link here", formatEvent(warnings[0]))
        self.assertIn("Is a second process running as", formatEvent(warnings[0]))
        # Once the link is gone, a new one is taken, and a later duplicate warned of again.
        first.cut()
        self.network.link(a, b)
        self.network.settle()
        self.assertRaises(LinkRefused, self.network.link, a, b)
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 2)

    def test_refused_claim_tests_the_kept_link(self) -> None:
        """
        A claim refused for a link that died without a FIN has that link
        tested at once: it is dropped within the peer timeout (not at the
        next keepalive), and the claimant's next try gets in.
        """
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        first = self.network.link(a, b)
        self.network.advance(5.1)  # just past a keepalive, answered
        first.pause()  # the connection dies without a FIN: nothing crosses it
        restarted = memory_node("a", self.clock)  # "a" again, dialling anew
        pings = len(first.sent_by(b, "ping"))
        self.assertRaises(LinkRefused, self.network.link, restarted, b)
        self.assertRaises(LinkRefused, self.network.link, restarted, b)
        self.assertEqual(len(first.sent_by(b, "ping")), pings + 1)  # one test for both claims
        self.network.advance(1.25 + 0.06)  # the peer timeout and a tick; the keepalive is 3.6 s off
        self.assertNotIn(first.session_of(b), b.mesh.links.values())
        second = self.network.link(restarted, b)
        self.assertIs(b.mesh.links["a"], second.session_of(b))

    def test_refused_claim_keeps_a_live_link(self) -> None:
        """A live peer answers the test a refused claim makes, and keeps its link."""
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        first = self.network.link(a, b)
        self.network.settle()
        impostor = memory_node("a", self.clock)
        for _ in range(3):
            self.assertRaises(LinkRefused, self.network.link, impostor, b)
            self.network.advance(1.0)
        self.assertIs(b.mesh.links["a"], first.session_of(b))
        self.assertFalse(first.closed)

    def test_healthy_link_this_node_dialled_kept(self) -> None:
        """
        A second process under a smaller id that dials a node holding a
        healthy link it dialled to that id is refused (409): the link stays.
        """
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        first = self.network.link(b, a)  # b dialled a
        self.network.advance(5.0)  # (no dials crossing: a link that has lasted)
        impostor = memory_node("a", self.clock)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        refused = self.assertRaises(LinkRefused, self.network.link, impostor, b)
        self.assertEqual(refused.status, 409)
        self.assertIn("the link b dialled", refused.reason)
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("Is a second process running as a?", formatEvent(warning))
        self.assertIs(b.mesh.links["a"], first.session_of(b))
        self.assertFalse(first.closed)

    def test_new_link_not_taken_over(self) -> None:
        """
        A connection that claims a neighbour's id in the first seconds of
        the link this node dialled to it is refused (409), as any later
        claim is, whichever id is smaller: only a node's own dial is ever
        taken for one of two that crossed. (The smaller id's claim took
        the link over, two seconds long after each dial.)
        """
        for peer, holder in (("a", "b"), ("b", "a")):
            with self.subTest(peer=peer):
                network = MemoryMesh()
                p, h = memory_node(peer, self.clock), memory_node(holder, self.clock)
                first = network.link(h, p)  # h dialled p
                impostor = memory_node(peer, self.clock)
                refused = self.assertRaises(LinkRefused, network.link, impostor, h)
                self.assertEqual(refused.status, 409)
                self.assertIs(h.mesh.links[peer], first.session_of(h))
                self.assertFalse(first.closed)

    def test_lasting_link_kept_by_the_smaller_id(self) -> None:
        """
        A node with the smaller id that dials a second process under the
        id of a neighbour linked for a while keeps the lasting link: its
        new one is refused, not the lasting one replaced.
        """
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        first = self.network.link(b, a)  # the real b dialled a
        self.network.advance(5.0)
        refused = self.assertRaises(LinkRefused, a.mesh.check_new_link, "b", "outbound")
        self.assertEqual(refused.status, 409)
        self.assertIs(a.mesh.links["b"], first.session_of(a))

    def test_crossing_dials_opened_both(self) -> None:
        """
        Two nodes dialled each other and both links opened: each end keeps
        the link the smaller id dialled, whichever opened first there.
        """
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        self.network.link(b, a)  # b's dial opened first, at both ends
        self.network.settle()
        a.mesh.check_new_link("b", "outbound")  # a's own dial then opens: a keeps it
        c = memory_node("c", self.clock)
        d = memory_node("d", self.clock)
        self.network.link(c, d)  # c's dial opened first
        self.network.settle()
        dropped = self.assertRaises(LinkRefused, d.mesh.check_new_link, "c", "outbound")
        self.assertEqual(dropped.status, 409)  # d drops its own dial

    def test_strict_crossing_dials(self) -> None:
        """Strict links: two nodes dialling each other keep one link, the smaller id's."""
        a = memory_node("a", self.clock)
        b = memory_node("b", self.clock)
        for node in (a, b):
            node.mesh._links.strict = True
        self.network.link(a, b)
        self.assertEqual(self.assertRaises(LinkRefused, self.network.link, b, a).status, 409)
        self.assertEqual(a.mesh.links["b"].direction, "outbound")

    def test_stop_service(self) -> None:
        """stopService closes links with 1000, fails pending calls and leaves no delayed calls."""
        a = memory_node("a")
        b = memory_node("b")
        c = memory_node("c")
        slow = Slow()
        b.expose("slow", slow)
        ab = self.network.link(a, b)
        self.network.link(c, a)
        self.network.settle()
        call = a.call("b", "slow", "wait", timeout=60)
        self.network.pump()
        stopped = a.stopService()
        error = self.failureResultOf(call, OutcomeUnknown).value
        self.assertEqual(error.code, -32006)
        self.assertEqual(ab.transport_of(a).closes[0][0], CLOSE_NORMAL)
        self.network.pump()
        self.successResultOf(stopped)
        self.assertEqual(a.mesh.links, {})
        self.assertEqual((b.mesh.links, c.mesh.links), ({}, {}))
        self.assertEqual(a.clock.getDelayedCalls(), [])

    def test_stop_service_while_executing(self) -> None:
        """A node stopped while running a call for a peer leaves no delayed calls behind."""
        a = memory_node("a")
        b = memory_node("b")
        slow = Slow()
        a.expose("slow", slow)
        link_nodes(a, b, self.network)
        self.network.settle()
        call = b.call("a", "slow", "wait", timeout=60)
        self.network.pump()
        self.assertEqual(len(slow.waiting), 1)
        stopped = a.stopService()
        self.network.pump()
        self.successResultOf(stopped)
        self.assertEqual(a.clock.getDelayedCalls(), [])
        # It was running when a stopped: it may have done part of its work.
        self.assertEqual(self.failureResultOf(call, OutcomeUnknown).value.code, -32006)
        slow.waiting[0].callback("too late")  # the mailbox shrugs it off

    def test_stop_service_unanswered_close(self) -> None:
        """stopService finishes after its grace period when a peer never completes the close."""
        a = memory_node("a")
        b = memory_node("b")
        link = link_nodes(a, b, self.network)
        self.network.settle()
        link.pause()
        stopped = a.stopService()
        self.assertNoResult(stopped)
        a.clock.advance(2)
        self.successResultOf(stopped)
        self.assertEqual(a.mesh.links, {})
        self.assertEqual(a.clock.getDelayedCalls(), [])


class AnswerPathTests(MeshTestCase):
    """
    Answers travel back along the path their call took while it holds, not
    by the callee's routing table.

    Two paths of three hops join a and t: a-b-z-t and a-y-c-t. The link
    a-y is slow as a measures it, and t-z as t does, so a's calls to t go
    by b, while t's own route to a goes by c.
    """

    def setUp(self) -> None:
        super().setUp()
        nodes = {n.node_id: n for n in self.nodes("abzyct")}
        for x, y in ["ab", "bz", "zt", "ay", "yc", "ct"]:
            self.network.link(nodes[x], nodes[y])
        self.network.settle()
        for node, slow, fast in (("a", "y", "b"), ("t", "z", "c")):
            for _ in range(4):
                nodes[node].mesh.adverts.link_measured(slow, 0.3)
                nodes[node].mesh.adverts.link_measured(fast, 0.001)
        self.network.settle()
        self.n = nodes
        self.slow = Slow()
        nodes["t"].expose("slow", self.slow)
        self.network.settle()

    def test_routes_differ(self) -> None:
        """The fixture: a reaches t by b, t reaches a by c."""
        self.assertEqual(self.n["a"].views.routes()["t"]["path"], ["b", "z", "t"])
        self.assertEqual(self.n["t"].views.routes()["a"]["path"], ["c", "y", "a"])

    def test_answer_retraces_the_call(self) -> None:
        """The answer goes t-z-b-a, the way the call came, not t-c-y-a."""
        d = self.n["a"].call("t", "node", "echo", "x")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), ["x"])
        [answer] = self.network.link_between("z", "t").sent_by("t", "server_response")
        self.assertEqual(answer.route, ("t",))
        self.assertEqual(self.network.link_between("c", "t").sent_by("t", "server_response"), [])
        [back] = self.network.link_between("a", "b").sent_by("b", "server_response")
        self.assertEqual(back.route, ("t", "z", "b"))
        self.assertEqual(len(self.n["b"].mesh.forwarded), 0)

    def test_route_change_downstream_keeps_answer(self) -> None:
        """
        The callee's own route to the caller breaking while the call runs
        (the issue's lost answers) does not lose the answer.
        """
        d = self.n["a"].call("t", "slow", "wait", timeout=60)
        self.network.pump()
        self.network.link_between("a", "y").pause()  # t's route to a, stalled
        self.slow.waiting[0].callback("ran")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), "ran")

    def test_way_back_gone_follows_routes(self) -> None:
        """
        When the link the call came by is gone, the answer follows the
        callee's table; the caller, told -32006 by the node before the
        break, counts it as late.
        """
        a = self.n["a"]
        d = a.call("t", "slow", "wait", timeout=60)
        self.network.pump()
        self.network.link_between("z", "t").cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)
        self.slow.waiting[0].callback("ran")
        self.network.pump()
        [answer] = self.network.link_between("c", "t").sent_by("t", "server_response")
        self.assertEqual(answer.data["result"], "ran")
        self.assertEqual(sample(a, "relaytx_late_answers_total"), 1)

    def test_path_lost_report_goes_back_along_path(self) -> None:
        """
        A forwarder's -32006 report also retraces the call's path: t, whose
        own route to a is stalled, reports a lost link to u back by z.
        """
        u = memory_node("u", self.clock)
        u.expose("slow", Slow())
        self.network.link(self.n["t"], u)
        self.network.settle()
        self.assertEqual(self.n["a"].views.routes()["u"]["next_hop"], "b")
        d = self.n["a"].call("u", "slow", "wait", timeout=60)
        self.network.pump()
        self.network.link_between("a", "y").pause()
        self.network.link_between("t", "u").cut()
        self.network.pump()
        error = self.failureResultOf(d, OutcomeUnknown).value
        self.assertEqual((error.code, error.data["node_id"]), (-32006, "t"))
