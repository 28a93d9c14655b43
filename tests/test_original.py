"""
Nodes of the original design as neighbours (issue 16, B1-B6), each faked by
L{tests.support.OriginalPeer}: it writes frames as the original does and
takes nothing from a node that is not its direct peer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx import NodeUnreachable, NoSuchServer, OutcomeUnknown, Overloaded, RemoteCallError
from relaytx.node import RelayNode
from relaytx.testing import MemoryMesh, line, memory_node
from relaytx.wire import ServerResponse
from tests.support import Counter, OriginalPeer, Slow


def dropped(node: RelayNode, reason: str) -> float:
    """:returns: how many messages C{node} dropped for C{reason}."""
    value = node.metrics.registry.get_sample_value(
        "relaytx_messages_dropped_total", {"reason": reason}
    )
    return value or 0.0


def seed_call(server: str, method: str, args: list[Any], response_id: str) -> dict[str, Any]:
    """:returns: the data of a server_call as the original writes it."""
    call = {"args": args, "method": method, "server_name": server, "timeout": 30}
    return {"call": call, "response_id": response_id}


class OriginalTestCase(SynchronousTestCase):
    """Nodes on one clock, linked in memory."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()

    def nodes(self, names: str, **options: Any) -> list[RelayNode]:
        return [memory_node(name, self.clock, **options) for name in names]


class DuplicateIdTests(OriginalTestCase):
    """B1: duplicates are told by sender, id, type and response id, not by id alone."""

    def setUp(self) -> None:
        super().setUp()
        [self.node] = self.nodes("r")
        self.counter = Counter()
        self.node.expose("counter", self.counter)
        self.original = OriginalPeer(self.node)

    def test_colliding_ids_both_run(self) -> None:
        """Two distinct calls whose nanosecond ids collide both run and are both answered."""
        same_id = "1796024318382509572"
        self.original.frame("server_call", seed_call("counter", "increment", [1], "r-1"), same_id)
        self.original.frame("server_call", seed_call("counter", "increment", [2], "r-2"), same_id)
        self.original.serve()
        self.assertEqual(self.counter.count, 3)
        answers = {a["data"]["response_id"]: a["data"]["result"] for a in self.original.answers}
        self.assertEqual(answers, {"r-1": 1, "r-2": 3})
        self.assertEqual(dropped(self.node, "duplicate"), 0)

    def test_same_call_twice_runs_once(self) -> None:
        """The same call delivered twice (same id and response id) still runs once."""
        data = seed_call("counter", "increment", [1], "r-1")
        self.original.frame("server_call", data, "1796024318382509572")
        self.original.frame("server_call", data, "1796024318382509572")
        self.assertEqual(self.counter.count, 1)
        self.assertEqual(dropped(self.node, "duplicate"), 1)
        # (A relaytx neighbour is told its copy was dropped; an original,
        # which would take any word on its call for the answer, is not.)
        self.original.serve()
        self.assertEqual(len(self.original.answers), 1)
        self.assertEqual(self.original.other, [])

    def test_response_id_used_again(self) -> None:
        """
        A call whose response id an answered call had (the original's own
        peer picks them by hand) runs and is answered too.
        """
        for n, message_id in enumerate(["1796024318382509572", "1796024318382509999"]):
            data = seed_call("counter", "increment", [10**n], "py-r1")
            self.original.frame("server_call", data, message_id)
            self.original.serve()
        self.assertEqual(self.counter.count, 11)
        results = [a["data"]["result"] for a in self.original.answers]
        self.assertEqual(results, [1, 11])

    def test_response_id_used_again_while_out(self) -> None:
        """
        Two calls sharing a response id, the first still running when the
        second is answered, are each answered; a copy of a call seen before
        is owed no answer of its own.
        """
        slow = Slow()
        self.node.expose("slow", slow)
        first, second = "1796024318382500001", "1796024318382500002"
        self.original.frame("server_call", seed_call("slow", "wait", [], "V"), first)
        self.original.frame("server_call", seed_call("counter", "increment", [1], "V"), second)
        slow.waiting[0].callback("done")
        self.original.frame("server_call", seed_call("counter", "increment", [1], "V"), second)
        self.original.serve()
        results = [a["data"]["result"] for a in self.original.answers]
        self.assertEqual(results, [1, "done"])
        self.assertEqual(self.counter.count, 1)

    def test_other_types_with_the_same_id(self) -> None:
        """A call and a message of another type sharing an id are both taken."""
        same_id = "1796024318382509572"
        self.original.frame("server_call", seed_call("counter", "increment", [1], "r-1"), same_id)
        self.original.frame("registry_sync", {"servers": {"svc": {"methods": ["m"]}}}, same_id)
        self.assertEqual(self.counter.count, 1)
        self.assertIn("svc", self.node.views.servers())


class ForwardedCopiesTests(OriginalTestCase):
    """
    An original-design node linked to two relaytx nodes, A and B, sends
    calls for B straight to it and wrapped in a C{route_message} to A,
    which forwards them: B tells its messages apart by sender, id, type
    and response id whichever link they came by.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = self.nodes("ab")
        line([self.a, self.b], self.network)
        self.counter = Counter()
        self.b.expose("counter", self.counter)
        self.to_a = OriginalPeer(self.a, "o")
        self.to_b = OriginalPeer(self.b, "o")
        self.network.settle()

    def via_a(self, data: dict[str, Any], message_id: str, wrapped: bool = True) -> None:
        """Send a call for B to A, wrapped as the original routes it, or as it is."""
        if wrapped:
            call = self.to_a.envelope("server_call", data, message_id, to="b")
            self.to_a.frame("route_message", {"original_message": call}, "1796024318380999999")
        else:
            self.to_a.frame("server_call", data, message_id, to="b")
        self.network.pump()

    def test_copy_by_each_link_runs_once(self) -> None:
        """One call, one copy straight to B and one through A, runs once, in either order."""
        for n, direct_first in enumerate((True, False)):
            data = seed_call("counter", "increment", [1], f"r-{n}")
            message_id = f"179602431838251000{n}"
            if direct_first:
                self.to_b.frame("server_call", data, message_id)
                self.via_a(data, message_id)
            else:
                self.via_a(data, message_id)
                self.to_b.frame("server_call", data, message_id)
            self.assertEqual(self.counter.count, n + 1)
        self.assertEqual(dropped(self.b, "duplicate"), 2)

    def test_answer_to_a_call_an_original_passed_on(self) -> None:
        """
        A call an original node passed on for another (its route holds
        both) is answered straight to the caller, a neighbour here, as the
        seed does: never through the original, which passes nothing on.
        """
        import json

        h_b = OriginalPeer(self.b, "hB")
        py_r = OriginalPeer(self.b, "pyR")
        self.network.settle()
        call = {
            "type": "server_call",
            "id": "inner-1796024318380999",
            "from": "pyR",
            "to": "b",
            "data": seed_call("counter", "increment", [1], "fwd-1"),
            "timestamp": "2026-11-30T07:38:38.405797Z",
            "route": ["pyR", "hB"],
            "ttl": 8,
        }
        h_b.session.data_received(json.dumps(call).encode() + b"\n")
        self.network.pump()
        h_b.serve()
        py_r.serve()
        self.assertEqual(self.counter.count, 1)
        [answer] = py_r.answers
        self.assertEqual((answer["to"], answer["data"]["response_id"]), ("pyR", "fwd-1"))
        self.assertEqual(answer["data"]["result"], 1)
        self.assertEqual([f for f in h_b.other if f["type"] == "route_message"], [])

    def test_budget_passed_on_at_most_64(self) -> None:
        """A frame an original node sends with a huge ttl goes on with at most 64 hops."""
        import json

        to_far = OriginalPeer(self.b, "far")
        self.network.settle()
        for ttl, passed_on in ((1000, 63), (65, 63), (9, 7)):
            ping = self.to_a.envelope("ping", {"timestamp": ttl}, f"17960243183826{ttl}", to="far")
            ping["ttl"] = ttl
            self.to_a.session.data_received(json.dumps(ping).encode() + b"\n")
            self.network.pump()
            to_far.serve()
            [arrived] = [f for f in to_far.ignored if f["data"] == {"timestamp": ttl}]
            self.assertEqual((arrived["route"], arrived["ttl"]), (["o", "a", "b"], passed_on))

    def test_flood_from_an_original_covers_the_mesh(self) -> None:
        """
        A call an original node sends (ttl 9) into a mesh that floods
        (registry off) reaches a node 11 hops away: it was dropped for TTL
        after 9.
        """
        nodes = self.nodes([f"n{i:02d}" for i in range(12)], disable_registry=True)
        line(nodes, self.network)
        counter = Counter()
        nodes[-1].expose("counter", counter)
        original = OriginalPeer(nodes[0], "pyR")
        self.network.settle()
        call = original.envelope(
            "server_call",
            seed_call("counter", "increment", [1], "f-1"),
            "1796024318382500001",
            to=nodes[-1].node_id,
        )
        call["ttl"] = 9
        original.frame("route_message", {"original_message": call}, "1796024318382500002")
        for _ in range(30):
            self.network.pump()
            original.serve()
        self.assertEqual(counter.count, 1)
        # Its answer comes as its neighbour's, which an original node takes
        # (from its direct peers only), with the default TTL of such frames.
        [answer] = original.answers
        self.assertEqual((answer["data"]["success"], answer["data"]["result"]), (True, 1))
        self.assertEqual(answer["data"]["node_id"], nodes[-1].node_id)
        self.assertEqual((answer["route"], answer["ttl"]), (["n00"], 10))
        self.assertEqual(original.ignored, [])
        self.assertEqual(sum(dropped(node, "ttl_exceeded") for node in nodes), 0)

    def test_one_answer_for_an_original(self) -> None:
        """
        An original-design node takes the first answer to its call for the
        answer: a second one that reaches its neighbour later (a flood's
        dead end told after the call's answer passed) goes no further.
        """
        data = seed_call("counter", "increment", [1], "r-late")
        self.via_a(data, "1796024318382509590", wrapped=False)
        self.to_a.serve()
        [answer] = [a for a in self.to_a.answers if a["data"]["response_id"] == "r-late"]
        self.assertTrue(answer["data"]["success"])
        late = ServerResponse(
            "r-late", False, "b", error="no route", error_code=-32002, error_data={"node_id": "b"}
        )
        self.b.mesh.forwarder.send("o", late, back_via="a")
        self.network.pump()
        self.to_a.serve()
        answers = [a for a in self.to_a.answers if a["data"]["response_id"] == "r-late"]
        self.assertEqual(answers, [answer])

    def test_response_id_used_again_through_a(self) -> None:
        """
        An answer from afar for a call whose response id an answered call
        had is the new call's own: A passes it on.
        """
        for n, wrapped in enumerate((False, True, False)):
            data = seed_call("counter", "increment", [10**n], "py-r1")
            self.via_a(data, f"17960243183825096{n}", wrapped)
            self.to_a.serve()
        self.assertEqual(self.counter.count, 111)
        results = [a["data"]["result"] for a in self.to_a.answers]
        self.assertEqual(results, [1, 11, 111])
        self.assertEqual(dropped(self.a, "duplicate"), 0)

    def test_response_id_used_again_while_out_through_a(self) -> None:
        """Through A, two calls sharing a response id, both out at once, are each answered."""
        slow = Slow()
        self.b.expose("slow", slow)
        self.via_a(seed_call("slow", "wait", [], "V"), "1796024318382500011", wrapped=False)
        self.via_a(seed_call("counter", "increment", [5], "V"), "1796024318382500012", wrapped=True)
        slow.waiting[0].callback("done")
        self.network.pump()
        self.to_a.serve()
        results = sorted(str(a["data"]["result"]) for a in self.to_a.answers)
        self.assertEqual(results, ["5", "done"])

    def test_colliding_ids_through_a_both_run(self) -> None:
        """Two distinct calls sharing an id, forwarded by A, both run at B."""
        for wrapped in (True, False):
            same_id = f"17960243183825095{int(wrapped)}"
            self.via_a(seed_call("counter", "increment", [1], f"w{wrapped}-1"), same_id, wrapped)
            self.via_a(seed_call("counter", "increment", [2], f"w{wrapped}-2"), same_id, wrapped)
        self.assertEqual(self.counter.count, 6)
        self.assertEqual(dropped(self.b, "duplicate"), 0)


class ToldTests(OriginalTestCase):
    """
    SPEC section 7: an original-design neighbour is told what the node
    reaches, when its link opens and whenever that changes, as a routing
    neighbour is; but not of the node's other original-design neighbours.
    """

    def syncs(self, original: OriginalPeer) -> list[dict[str, Any]]:
        original.serve()
        syncs = [f["data"] for f in original.other if f["type"] == "registry_sync"]
        original.other.clear()
        return syncs

    def test_told_on_open_and_on_change(self) -> None:
        """At open it hears of A; when C links to A, and when C goes, it hears at once."""
        a, b = self.nodes("ab")
        line([a, b], self.network)
        self.network.settle()
        original = OriginalPeer(b, "o")
        self.network.advance(0)
        [hello] = self.syncs(original)
        self.assertEqual(hello["seq"], 1)
        self.assertIn("node", hello["servers"])
        self.assertEqual(hello["routes"]["a"]["path"], ["a"])
        self.assertNotIn("o", hello["routes"])
        [c] = self.nodes("c")
        link = self.network.link(c, a)
        for _ in range(5):  # (A hears C's first advert, then tells B; B tells the original)
            self.network.advance(0.02)
        told = self.syncs(original)
        self.assertEqual([list(sync.get("routes", {})) for sync in told], [["c"]])
        self.assertEqual(told[0]["routes"]["c"]["p"], "a")
        link.cut("killed")
        self.network.settle()
        self.assertIn(["c"], [sync.get("withdraw") for sync in self.syncs(original)])

    def test_not_told_of_other_originals(self) -> None:
        """A node's original-design neighbours are not told of one another."""
        [hub] = self.nodes("h")
        originals = [OriginalPeer(hub, f"o{i}") for i in range(3)]
        self.network.settle()
        for original in originals:
            for sync in self.syncs(original):
                self.assertEqual((sync.get("routes"), sync.get("withdraw")), (None, None))
        [r] = self.nodes("r")
        self.network.link(r, hub)
        self.network.settle()
        for original in originals:
            [sync] = [s for s in self.syncs(original) if "routes" in s]
            self.assertEqual(list(sync["routes"]), ["r"])
        # One of them lost: the hub does not number itself anew (a node
        # that never routes marks no one), and the others hear nothing.
        sn = hub.mesh.adverts.own_sn
        originals[0].session.connection_lost("cable")
        self.network.settle()
        self.assertEqual(hub.mesh.adverts.own_sn, sn)
        for original in originals[1:]:
            self.assertEqual(self.syncs(original), [])
        # A routing neighbour lost: it numbers itself anew.
        self.network.link_between(r, hub).cut("cable")
        self.network.settle()
        self.assertGreater(hub.mesh.adverts.own_sn, sn)

    def test_routes_of_a_router_taken(self) -> None:
        """What an original says is its servers only; the routes of a router behind it stand."""
        a, b = self.nodes("ab")
        line([a, b], self.network)
        original = OriginalPeer(b, "o")
        self.network.settle()
        original.frame("registry_sync", {"servers": {"svc": {"methods": ["m"]}}})
        self.network.settle()
        self.assertIn("svc", a.views.servers())
        self.assertEqual(a.views.routes()["o"]["next_hop"], "b")


class RelayTests(OriginalTestCase):
    """
    B3: a call from another node for an original-design neighbour is made
    by the last relaytx hop, as itself, and the answer relayed.
    """

    def setUp(self) -> None:
        super().setUp()
        self.r1, self.r2 = self.nodes("ab")
        line([self.r1, self.r2], self.network)
        self.original = OriginalPeer(self.r2, "S")
        self.network.settle()
        self.original.serve()

    def call(self, *args: Any, timeout: float = 10) -> Any:
        d = self.r1.call("S", "svc", "m", *args, timeout=timeout)
        self.network.pump()
        self.original.serve()
        return d

    def test_route_advertised(self) -> None:
        """The original neighbour stays reachable through its relaytx neighbour."""
        self.assertEqual(self.r1.views.routes()["S"]["next_hop"], "b")

    def test_relayed_call(self) -> None:
        """R1's call reaches S as R2's own, and S's answer comes back to R1 as S's."""
        d = self.call(1, "a", {"k": True})
        self.assertEqual(self.original.ignored, [])
        [call] = self.original.calls
        self.assertEqual((call["from"], call["to"], call["route"]), ("b", "S", ["b"]))
        self.assertEqual(call["data"]["call"]["args"], [1, "a", {"k": True}])
        self.assertNoResult(d)
        self.original.answer(call, {"echo": [1, "a", {"k": True}]})
        self.network.pump()
        self.assertEqual(self.successResultOf(d), {"echo": [1, "a", {"k": True}]})
        [answer] = self.network.link_between(self.r1, self.r2).sent_by(self.r2, "server_response")
        self.assertEqual((answer.sender, answer.to, answer.route), ("S", "a", ("S", "b")))
        self.assertEqual(len(self.r2.mesh.pending), 0)

    def test_relayed_error(self) -> None:
        """S's error answer reaches R1 as S's, with its code (B5: not found is -32003)."""
        d = self.call()
        [call] = self.original.calls
        self.original.answer(call, error="server svc not found")
        self.network.pump()
        error = self.failureResultOf(d, NoSuchServer).value
        self.assertEqual((error.code, error.data["node_id"]), (-32003, "S"))
        d = self.call()
        self.original.answer(self.original.calls[1], error="boom")
        self.network.pump()
        self.assertEqual(self.failureResultOf(d, RemoteCallError).value.code, -32000)

    def test_link_lost_while_relayed(self) -> None:
        """When S's link goes down with the relayed call out, R1 hears -32006 at once."""
        d = self.call()
        self.original.session.connection_lost("cable")
        self.network.pump()
        error = self.failureResultOf(d, OutcomeUnknown).value
        self.assertEqual((error.code, error.data["node_id"]), (-32006, "b"))

    def test_relay_overloaded_is_32005(self) -> None:
        """A relay refused for R2's own pending limit fails R1's call with -32005 at once."""
        r2 = memory_node("c", self.clock, limits={"max_pending_calls": 1})
        self.network.link(self.r1, r2)
        original = OriginalPeer(r2, "T")
        self.network.settle()
        original.serve()
        first = self.r1.call("T", "svc", "m", timeout=10)
        second = self.r1.call("T", "svc", "m", timeout=10)
        self.network.pump()
        original.serve()
        self.assertEqual(len(original.calls), 1)
        self.assertNoResult(first)
        error = self.failureResultOf(second, Overloaded).value
        self.assertEqual((error.code, error.data["node_id"]), (-32005, "c"))

    def test_relayed_calls_bounded_per_neighbour(self) -> None:
        """
        One neighbour's calls relayed to an original take at most a quarter
        of the node's max_pending_calls (half for all neighbours): past it,
        -32005 at once, and the node's own calls still have room.
        """
        r2 = memory_node("c", self.clock, limits={"max_pending_calls": 8})
        self.network.link(self.r1, r2)
        original = OriginalPeer(r2, "T")
        self.network.settle()
        original.serve()
        calls = [self.r1.call("T", "svc", "m", timeout=10) for _ in range(3)]
        self.network.pump()
        original.serve()
        self.assertEqual(len(original.calls), 2)
        self.assertNoResult(calls[0])
        self.assertNoResult(calls[1])
        error = self.failureResultOf(calls[2], Overloaded).value
        self.assertEqual((error.code, error.data["node_id"]), (-32005, "c"))
        self.assertEqual(len(r2.mesh.pending), 2)
        own = r2.call("T", "svc", "m", timeout=10)
        self.network.pump()
        original.serve()
        self.assertEqual(len(original.calls), 3)
        self.assertNoResult(own)
        # An answer frees its place.
        original.answer(original.calls[0], "done")
        self.network.pump()
        self.assertEqual(self.successResultOf(calls[0]), "done")
        again = self.r1.call("T", "svc", "m", timeout=10)
        self.network.pump()
        original.serve()
        self.assertEqual(len(original.calls), 4)
        self.assertNoResult(again)

    def test_duplicate_copy_relayed_once(self) -> None:
        """Two copies of one call (a flood's) make one call to S."""
        from relaytx.wire import CallSpec, Envelope, ServerCall, encode

        call = ServerCall(CallSpec("svc", "m", (), timeout=5), "r-x")
        frame = encode(Envelope.create(call, "a", "S", self.clock.seconds()))
        session = self.network.link_between(self.r1, self.r2).session_of(self.r2)
        session.data_received(frame)
        session.data_received(frame)
        self.original.serve()
        self.assertEqual(len(self.original.calls), 1)
        self.assertEqual(dropped(self.r2, "duplicate"), 1)

    def test_own_calls_go_direct(self) -> None:
        """R2's own call to S goes to it as is (R2 is its direct peer)."""
        d = self.r2.call("S", "svc", "m", timeout=5)
        self.original.serve()
        [call] = self.original.calls
        self.assertEqual(call["from"], "b")
        self.original.answer(call, 7)
        self.assertEqual(self.successResultOf(d), 7)


class FailFastTests(OriginalTestCase):
    """B4: a node nobody can reach fails at once, and no copy goes to an original node."""

    def test_only_original_neighbours(self) -> None:
        """With only original-design neighbours, a call to a node nobody knows fails at once."""
        for registry in (True, False):
            [node] = self.nodes("r", disable_registry=not registry)
            originals = [OriginalPeer(node, "o1"), OriginalPeer(node, "o2")]
            now = self.clock.seconds()
            d = node.call("nowhere", "node", "ping", timeout=30)
            error = self.failureResultOf(d, NodeUnreachable).value
            self.assertEqual(error.code, -32002)
            self.assertEqual(self.clock.seconds(), now)
            for original in originals:
                original.serve()
                self.assertEqual((original.calls, original.other, original.ignored), ([], [], []))

    def test_original_does_not_make_the_table_incomplete(self) -> None:
        """
        Beside relaytx neighbours that advertise routes, an original-design
        neighbour (which forwards nothing) leaves the routing table complete:
        a call to a node nobody knows fails at once, with no copy sent anywhere.
        """
        r, x = self.nodes("rx")
        link = self.network.link(r, x)
        original = OriginalPeer(r, "o1")
        self.network.settle()
        before = len(link.sent_by(r))
        d = r.call("nowhere", "node", "ping", timeout=30)
        self.assertEqual(self.failureResultOf(d, NodeUnreachable).value.code, -32002)
        self.assertEqual(len(link.sent_by(r)), before)
        original.serve()
        self.assertEqual(original.calls, [])

    def test_original_gets_no_flooded_copy(self) -> None:
        """
        In flood mode, a relaytx neighbour gets a copy of a call for an
        unknown node, an original-design neighbour does not.
        """
        r, x = self.nodes("rx", disable_registry=True)
        self.network.link(r, x)
        original = OriginalPeer(r, "o1")
        self.network.settle()
        original.serve()
        d = r.call("nowhere", "node", "ping", timeout=3)
        original.serve()
        self.assertEqual((original.calls, original.other), ([], []))
        [wrapped] = self.network.link_between(r, x).sent_by(r, "route_message")
        self.assertEqual(wrapped.data["original_message"]["type"], "server_call")
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)

    def test_traceroute_to_an_original_beyond_a_neighbour(self) -> None:
        """
        node.traceroute to an original-design node two hops away, in flood
        mode, gives both hops: the ping it floods is made by the last hop,
        whose answer (the original has no node server: an error) says the
        way; the original, which takes frames from its peers alone, gets
        no RTT. (It failed with the original's error, -32003.)
        """
        r, x = self.nodes("rx", disable_registry=True)
        self.network.link(r, x)
        original = OriginalPeer(x, "o1")
        self.network.settle()
        d = r.views.traceroute("o1")
        self.network.pump()
        original.serve()
        [ping] = original.calls
        self.assertEqual(ping["data"]["call"]["server_name"], "node")
        original.answer(ping, error="unknown server: node")
        self.network.pump()
        self.network.advance(3)  # (the probe of the original goes unanswered)
        hops = self.successResultOf(d)
        self.assertEqual([(h["hop"], h["node_id"]) for h in hops], [(1, "x"), (2, "o1")])
        self.assertIsNotNone(hops[0]["rtt_ms"])
        self.assertIsNone(hops[1]["rtt_ms"])

    def test_original_destination_still_reached(self) -> None:
        """A call for the original neighbour itself still goes to it."""
        [node] = self.nodes("r")
        original = OriginalPeer(node, "o1")
        d = node.call("o1", "svc", "m", timeout=5)
        original.serve()
        [call] = original.calls
        original.answer(call, "yes")
        self.assertEqual(self.successResultOf(d), "yes")


class ForeignErrorTests(OriginalTestCase):
    """B5: the original's error answers keep their meaning."""

    def setUp(self) -> None:
        super().setUp()
        [self.node] = self.nodes("r")
        self.original = OriginalPeer(self.node, "o1")

    def test_not_found_is_32003(self) -> None:
        """The original's "server X not found" fails the call with -32003, naming the node."""
        d = self.node.call("o1", "nope", "get", timeout=5)
        self.original.serve()
        self.original.answer(self.original.calls[0], error="server nope not found")
        error = self.failureResultOf(d, NoSuchServer).value
        self.assertEqual(error.code, -32003)
        self.assertEqual(error.message, "server nope not found")
        self.assertEqual(error.data["node_id"], "o1")

    def test_error_data_kept_to_what_spec_names(self) -> None:
        """
        A peer's error data reaches the caller as SPEC words it: where it
        happened, the exception's type and message. Anything else (a
        traceback) or of the wrong type is left out.
        """
        d = self.node.call("o1", "svc", "m", timeout=5)
        self.original.serve()
        call = self.original.calls[-1]
        data = {
            "error": "KeyError: 'k'",
            "error_code": -32000,
            "error_data": {
                "type": "KeyError",
                "message": "'k'",
                "traceback": "Traceback (most recent call last):\n  File app.py",
                "route": ["o1", 7],
                "limit": True,
            },
            "node_id": "o1",
            "response_id": call["data"]["response_id"],
            "success": False,
        }
        self.original.frame("server_response", data, "1796024318380757041")
        error = self.failureResultOf(d, RemoteCallError).value
        self.assertEqual(
            error.data, {"type": "KeyError", "message": "'k'", "node_id": "o1", "route": ["r"]}
        )

    def test_other_errors_are_32000(self) -> None:
        """Any other error text from the original stays -32000."""
        for text in ("database is locked", "server not found", "my server x not found today"):
            d = self.node.call("o1", "svc", "m", timeout=5)
            self.original.serve()
            self.original.answer(self.original.calls[-1], error=text)
            self.assertEqual(self.failureResultOf(d, RemoteCallError).value.code, -32000, text)


class MalformedCallTests(OriginalTestCase):
    """B6: a malformed call that names a response id is answered, not left to time out."""

    def setUp(self) -> None:
        super().setUp()
        [self.node] = self.nodes("r")
        self.original = OriginalPeer(self.node, "o1")
        self.original.serve()

    def test_answered_with_error(self) -> None:
        """Each malformed call gets success false, its response id and an error text."""
        bad_calls = [
            {"call": [], "response_id": "r-1"},
            {"call": {"method": "m", "args": []}, "response_id": "r-2"},
            {"call": {"server_name": 5, "method": "m"}, "response_id": "r-3"},
            {"call": {"server_name": "s", "method": "m", "args": "x"}, "response_id": "r-4"},
            {"call": {"server_name": "s", "method": "m", "timeout": -1}, "response_id": "r-5"},
        ]
        for i, data in enumerate(bad_calls):
            self.original.frame("server_call", data, f"17960243183825095{i:02d}")
        self.original.serve()
        answers = [a["data"] for a in self.original.answers]
        self.assertEqual([a["response_id"] for a in answers], ["r-1", "r-2", "r-3", "r-4", "r-5"])
        for answer in answers:
            self.assertIs(answer["success"], False)
            self.assertIsInstance(answer["error"], str)
            self.assertEqual(answer["error_code"], -32600)
        self.assertEqual(self.node.mesh.links["o1"], self.original.session)

    def test_unreadable_response_id_not_answered(self) -> None:
        """A malformed call whose response id is missing or not a string gets no answer."""
        self.original.frame("server_call", {"call": []})
        self.original.frame("server_call", {"call": [], "response_id": 12}, "1796024318382509573")
        self.original.serve()
        self.assertEqual(self.original.answers, [])


class LinkCountTests(OriginalTestCase):
    """The link table counts its original-design links (what completeness is told by)."""

    def test_counted_through_replacement_and_loss(self) -> None:
        """Opening, replacing and losing links keeps the count of original links right."""
        [node] = self.nodes("r")
        links = node.mesh._links
        first = OriginalPeer(node, "o1")
        OriginalPeer(node, "o2")
        self.assertEqual(links.originals, 2)
        # A link this node dialled replaces the one o1 dialled once that one
        # is found dead (a second link is refused while the first is healthy).
        first.session.healthy = False
        again = OriginalPeer(node, "o1", direction="outbound")
        self.assertEqual(links.originals, 2)
        first.session.connection_lost("old link closing")  # the replaced one: no change
        self.assertEqual(links.originals, 2)
        again.session.connection_lost("gone")
        self.assertEqual(links.originals, 1)
        x = memory_node("x", self.clock)
        self.network.link(node, x)
        self.assertEqual((links.originals, len(links)), (1, 2))


class NudgeTests(OriginalTestCase):
    """An idle link to an original-design node is tested within 2 s too."""

    def test_nudged_with_its_own_ping(self) -> None:
        """
        The nudge of an idle link to an original node is a ping of the
        original's own shape, which the original answers (SPEC section 7),
        not a WebSocket ping, which a minimal WebSocket might leave
        unanswered: the link stays, and a silent original is dropped
        within 2 s as any peer is.
        """
        [node] = self.nodes("r")
        original = OriginalPeer(node)
        for _ in range(100):  # 5 s, every ping answered as it comes
            self.clock.advance(0.05)
            original.serve()
        self.assertEqual(original.transport.pings, 0)
        # The keepalive at 0 s, and a nudge about every half second since.
        self.assertGreater(len(original.transport.envelopes("ping")), 8)
        self.assertIn("orig", node.mesh.links)
        for _ in range(40):  # the original falls silent: 2 s
            self.clock.advance(0.05)
        self.assertNotIn("orig", node.mesh.links)
