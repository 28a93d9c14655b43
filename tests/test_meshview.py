"""
Tests for L{relaytx._meshview} (the mesh as one node sees it), the built-in
C{node.status()} and C{node.traceroute()}, on in-memory meshes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx.errors import NodeUnreachable
from relaytx.node import RelayNode
from relaytx.testing import MemoryMesh, memory_node
from tests.support import Counter, OriginalPeer


class NonsenseStatusTests(SynchronousTestCase):
    """A node whose status answer is of the wrong shape spoils only its own entry."""

    def test_nonsense_status(self) -> None:
        """Fields of the wrong shape are left out; the rest of the view, and its problems, stand."""
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        from relaytx._meshview import MeshWatch

        answers: dict[str, Any] = {
            "odd": {"peers": 7, "servers": 5, "uptime_s": "x", "calls": [1], "version": 3},
            "none": None,
            "good": {
                "version": "1",
                "uptime_s": 2.0,
                "servers": {"svc": ["m"]},
                "peers": {
                    "me": {"is_healthy": True, "rtt_ms": 0.5},
                    **{f"fake{i}": {"is_healthy": False} for i in range(50)},
                },
                "calls": {"ok": 1, "errors": 0},
                "dialling": {"ws://h:1": {"node_id": None, "failures": 2, "error": "refused"}},
            },
        }
        own = {"version": "1", "servers": {}, "peers": {"good": {"is_healthy": True}}}
        watch = MeshWatch(
            "me",
            Clock(),
            lambda: own,
            lambda: {"odd": 1, "good": 1, "none": 1},
            lambda target: succeed(answers[target.node_id]),
        )
        view = self.successResultOf(watch.snapshot())
        self.assertEqual(
            {n: v["state"] for n, v in view["nodes"].items()},
            {"me": "up", "odd": "up", "good": "up", "none": "silent"},
        )
        # Links only between nodes of the view: the 50 made-up peers make no problems.
        self.assertEqual([(link["a"], link["b"]) for link in view["links"]], [("good", "me")])
        odd = view["nodes"]["odd"]
        self.assertEqual((odd["peers"], odd["servers"], odd["uptime_s"]), ([], [], None))
        self.assertEqual(view["nodes"]["good"]["servers"], ["svc"])
        self.assertEqual(
            view["problems"],
            [
                "none: reachable but answered its status call with no status (not a relaytx node?)",
                "good: cannot link to ws://h:1: refused (2 attempts in a row)",
            ],
        )


class MeshViewTests(SynchronousTestCase):
    """A line n0 - n1 - n2 seen from n0."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()
        self.nodes = [memory_node(name, self.clock) for name in ("n0", "n1", "n2")]
        self.nodes[2].expose("counter_server", Counter())
        self.links = [
            self.network.link(a, b) for a, b in zip(self.nodes, self.nodes[1:], strict=False)
        ]
        self.network.settle()
        self.watch = self.nodes[0].views.mesh_watch

    def view(self) -> dict[str, Any]:
        """:returns: the next view (after the round's deadline, if some node is slow)."""
        d = self.watch.snapshot()
        self.network.pump()
        if not d.called:
            self.clock.advance(self.watch.round_deadline)
        view: dict[str, Any] = self.successResultOf(d)
        return view

    def test_view(self) -> None:
        """Every node is up with its servers, hops and links; nothing is wrong."""
        view = self.view()
        self.assertEqual(view["node_id"], "n0")
        self.assertEqual(sorted(view["nodes"]), ["n0", "n1", "n2"])
        n2 = view["nodes"]["n2"]
        self.assertEqual((n2["state"], n2["hops"]), ("up", 2))
        self.assertEqual(n2["servers"], ["counter_server", "node"])
        self.assertEqual(n2["peers"], ["n1"])
        self.assertEqual(
            [(link["a"], link["b"], link["healthy"]) for link in view["links"]],
            [("n0", "n1", True), ("n1", "n2", True)],
        )
        self.assertEqual(view["problems"], [])
        self.assertEqual(view["summary"]["up"], 3)

    def test_rates(self) -> None:
        """Calls per second come from the difference between two rounds."""
        self.view()
        for _ in range(10):
            self.nodes[0].call("n2", "counter_server", "increment")
        failed = self.nodes[0].call("n2", "counter_server", "nope")
        self.network.pump()
        self.failureResultOf(failed)
        self.clock.advance(2.0)
        n2 = self.view()["nodes"]["n2"]
        self.assertEqual(n2["calls"], {"ok": 10, "errors": 0})
        self.assertEqual(n2["calls_per_s"], 5.0)  # the made-up method makes no series

    def test_rates_of_the_last_seconds(self) -> None:
        """
        A running node gives its own calls per second, over its last few
        seconds: the first view shows them, and one after a quiet spell
        shows the rate now, not an average since the last view.
        """
        n2 = self.nodes[2]
        n2.views.rates.start()
        self.addCleanup(n2.views.rates.stop)

        def calls(count: int) -> None:
            for _ in range(count):
                self.nodes[0].call("n2", "counter_server", "increment")
            self.network.pump()

        self.clock.advance(1.0)
        calls(10)
        self.clock.advance(1.0)
        self.assertEqual(self.view()["nodes"]["n2"]["calls_per_s"], 5.0)  # 10 in 2 s
        for _ in range(20):
            self.clock.advance(1.0)
        calls(30)
        self.clock.advance(1.0)
        seen = self.view()["nodes"]["n2"]
        self.assertEqual(seen["calls"], {"ok": 40, "errors": 0})
        self.assertEqual(seen["calls_per_s"], 6.0)  # 30 in its last 5 s (not 30 in 21 s)
        self.assertEqual(n2.views.status()["errors_per_s"], 0.0)

    def test_fresh_view_shared(self) -> None:
        """Asking twice within an interval makes one round, not two."""
        first = self.view()
        self.assertIs(self.view(), first)
        self.assertEqual(self.watch.rounds, 1)
        self.clock.advance(1.0)
        self.assertIsNot(self.view(), first)
        self.assertEqual(self.watch.rounds, 2)

    def test_gone(self) -> None:
        """A node no route reaches any more is shown as gone, and why."""
        self.view()
        self.links[1].cut()
        self.network.settle()
        self.clock.advance(1.0)
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "gone")
        self.assertEqual(view["nodes"]["n2"]["servers"], ["counter_server", "node"])
        self.assertTrue(any(p.startswith("n2: gone") for p in view["problems"]))
        self.clock.advance(self.watch.forget_after + 1)
        self.assertNotIn("n2", self.view()["nodes"])

    def test_gone_long_after_the_last_view(self) -> None:
        """
        A node lost long after the last view (past the time a gone node is
        shown) is gone in the next one, shown from when it was lost: even
        after its mark is let go, for as long as a gone node is shown.
        """
        self.view()
        self.clock.advance(self.watch.forget_after + 5)
        self.links[1].cut()
        self.network.settle()
        self.clock.advance(2.0)
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "gone")
        self.assertEqual(view["summary"]["gone"], 1)
        self.clock.advance(self.watch.forget_after)
        self.assertNotIn("n2", self.view()["nodes"])

    def test_gone_unseen_past_its_mark(self) -> None:
        """
        A node lost between two views far apart is gone in the second, even
        once its mark is let go, while it is within the time a gone node is
        shown (a monitor looking every five minutes sees every death).
        """
        self.view()
        self.clock.advance(self.watch.forget_after / 2)
        self.links[1].cut()
        self.network.settle()
        self.clock.advance(self.watch.forget_after / 2 + 10)  # (past the mark's hold)
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "gone")
        self.assertTrue(any(p.startswith("n2: gone") for p in view["problems"]), view["problems"])
        self.clock.advance(self.watch.forget_after / 2)
        self.assertNotIn("n2", self.view()["nodes"])

    def test_original_node_up(self) -> None:
        """
        A node of the original design (no status to give: -32003) is up,
        with the servers it told its neighbour, and no problem of the mesh's.
        """
        original = OriginalPeer(self.nodes[0], "o1")
        servers = {"distributed_counter": {"methods": ["get_count", "increment"]}}
        original.frame("registry_sync", {"servers": servers})
        d = self.watch.snapshot()
        self.network.pump()
        original.serve()
        [call] = [c for c in original.calls if c["data"]["call"]["method"] == "status"]
        original.answer(call, error="server node not found")
        self.network.pump()
        view: dict[str, Any] = self.successResultOf(d)
        o1 = view["nodes"]["o1"]
        self.assertEqual((o1["state"], o1["servers"]), ("up", ["distributed_counter"]))
        self.assertEqual(o1["methods"], {"distributed_counter": ["get_count", "increment"]})
        self.assertEqual(view["problems"], [])

    def test_lost_before_any_view(self) -> None:
        """
        A node whose link failed before anyone asked for a view is gone in
        the first one, as it would be had a view seen it before.
        """
        self.links[1].cut()
        self.network.settle()
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "gone")
        self.assertTrue(any(p.startswith("n2: gone") for p in view["problems"]), view["problems"])

    def test_old_view_not_watched(self) -> None:
        """A new watcher is given the last view only while it is fresh."""
        self.view()
        self.links[1].cut()
        self.network.settle()
        self.clock.advance(self.watch.interval)
        seen: list[dict[str, Any]] = []
        self.watch.watch(seen.append)
        self.network.pump()
        self.assertEqual([view["nodes"]["n2"]["state"] for view in seen], ["gone"])

    def test_silent(self) -> None:
        """
        A node whose status call fails (here: times out) is silent. So is
        one whose call is still out at the round's deadline, answered
        before or not (a node frozen since its last answer is not up), and
        the view is not held up for it.
        """
        self.view()
        self.links[1].pause()
        self.clock.advance(1.0)
        d = self.watch.snapshot()
        self.network.pump()
        self.clock.advance(self.watch.round_deadline)
        view = self.successResultOf(d)
        self.assertEqual(view["nodes"]["n2"]["state"], "silent")
        self.assertIn("n2: reachable but has not answered in 0.5s", view["problems"])
        self.clock.advance(self.watch.timeout)
        self.network.pump()
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "silent")
        self.assertEqual(view["summary"]["silent"], 1)
        self.assertIn("n2: reachable but did not answer within 2s", view["problems"])

    def test_never_answers(self) -> None:
        """
        A node that takes its status call and never answers is shown silent
        from the first view on, while the call is still out: not left out.
        """
        self.links[1].pause()
        view = self.view()
        self.assertEqual(view["nodes"]["n2"]["state"], "silent")
        self.assertIn("n2: reachable but has not answered in 0.5s", view["problems"])
        self.clock.advance(1.0)
        view = self.view()  # its call is still out: not asked again
        self.assertEqual(view["nodes"]["n2"]["state"], "silent")
        self.assertIn("n2: reachable but has not answered in 1.5s", view["problems"])

    def test_failing_dials(self) -> None:
        """A peer some node dials and cannot link to is a problem of the mesh."""
        admin = self.nodes[1].peer_admin
        admin.add_peer("ws://127.0.0.1:9")
        [dialer] = admin.dialers.values()
        for _ in range(3):
            dialer.attempt_failed("ConnectionRefusedError: refused")
        view = self.view()
        self.assertEqual(
            view["problems"],
            [
                "n1: cannot link to ws://127.0.0.1:9:"
                " ConnectionRefusedError: refused (3 attempts in a row)"
            ],
        )

    def test_watch(self) -> None:
        """A watcher gets a view each interval while it watches, and none after."""
        seen: list[dict[str, Any]] = []
        stop = self.watch.watch(seen.append)
        self.network.pump()
        self.assertEqual(len(seen), 1)
        self.clock.advance(1.0)
        self.network.pump()
        self.assertEqual(len(seen), 2)
        stop()
        self.clock.advance(5.0)
        self.network.pump()
        self.assertEqual(len(seen), 2)
        self.assertEqual(self.watch.watchers, 0)

    def test_no_spans(self) -> None:
        """The status calls are unsampled: a tracing node records nothing for them."""
        from tests.test_tracing import trace

        exporter = trace(self.nodes[2])
        self.view()
        assert self.nodes[2].tracer is not None
        self.nodes[2].tracer.flush()
        self.assertEqual(exporter.spans, [])

    def test_stop(self) -> None:
        """Stopping the node stops the rounds."""
        self.watch.watch(lambda view: None)
        self.network.pump()
        self.watch.stop()
        self.clock.advance(10)
        self.assertEqual(self.watch.rounds, 1)

    def test_stop_ends_the_watchers(self) -> None:
        """
        Stopping tells each watcher that its watch ended (a dashboard feed
        ends then), and one that watches after is told at once.
        """
        ended: list[str] = []
        self.watch.watch(lambda view: None, lambda: ended.append("first"))
        stop = self.watch.watch(lambda view: None, lambda: ended.append("gone"))
        stop()  # (stopped watching: not told)
        self.watch.stop()
        self.assertEqual(ended, ["first"])
        self.watch.watch(lambda view: None, lambda: ended.append("late"))
        self.assertEqual(ended, ["first", "late"])
        self.assertEqual(self.watch.watchers, 0)


class UnroutedViewTests(SynchronousTestCase):
    """A line n0 - n1 - n2 of nodes whose registry is off, seen from n0."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()
        self.nodes = [
            memory_node(name, self.clock, disable_registry=True) for name in ("n0", "n1", "n2")
        ]
        for a, b in zip(self.nodes, self.nodes[1:], strict=False):
            self.network.link(a, b)
        self.network.settle()

    def test_view(self) -> None:
        """The nodes no route reaches but a node names as its peers are asked too."""
        d = self.nodes[0].views.mesh_watch.snapshot()
        self.network.pump()
        view = self.successResultOf(d)
        self.assertEqual(
            {n: v["state"] for n, v in view["nodes"].items()},
            dict.fromkeys(("n0", "n1", "n2"), "up"),
        )
        self.assertEqual(view["nodes"]["n2"]["hops"], 2)
        self.assertEqual([(k["a"], k["b"]) for k in view["links"]], [("n0", "n1"), ("n1", "n2")])
        self.assertEqual(view["problems"], [])

    def test_lost_neighbour(self) -> None:
        """A neighbour whose link failed before any view is gone, marks or none."""
        self.network.link_between("n0", "n1").cut()
        self.network.settle()
        d = self.nodes[0].views.mesh_watch.snapshot()
        self.network.pump()
        view = self.successResultOf(d)
        self.assertEqual(view["nodes"]["n1"]["state"], "gone")
        self.assertEqual(view["summary"]["gone"], 1)

    def test_frozen(self) -> None:
        """A node the round asks late (a peer named in an answer) is silent if frozen."""
        watch = self.nodes[0].views.mesh_watch
        d = watch.snapshot()
        self.network.pump()
        self.successResultOf(d)
        self.network.link_between("n1", "n2").pause()
        first = self.network.link_between("n0", "n1")
        first.pause()
        self.clock.advance(watch.interval)
        d = watch.snapshot()
        self.network.pump()
        self.clock.advance(watch.round_deadline * 0.6)  # n1 answers late in the round,
        first.resume()
        self.network.pump()  # and n2 is asked then
        self.clock.advance(watch.round_deadline * 0.4)
        view = self.successResultOf(d)
        self.assertEqual(view["nodes"]["n2"]["state"], "silent")
        self.assertEqual(view["nodes"]["n1"]["state"], "up")

    def test_traceroute(self) -> None:
        """With no route, the hops are those a call there took."""
        d = self.nodes[0].call(None, "node", "traceroute", "n2")
        self.network.pump()
        hops = self.successResultOf(d)
        self.assertEqual([(h["hop"], h["node_id"]) for h in hops], [(1, "n1"), (2, "n2")])
        d = self.nodes[0].call(None, "node", "traceroute", "zz")
        self.network.pump()
        self.assertIsInstance(self.failureResultOf(d).value, NodeUnreachable)


class TracerouteTests(SynchronousTestCase):
    """node.traceroute(node_id): the hops, with their RTT."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()
        self.nodes: list[RelayNode] = [memory_node(f"n{i}", self.clock) for i in range(4)]
        for a, b in zip(self.nodes, self.nodes[1:], strict=False):
            self.network.link(a, b)
        self.network.settle()

    def test_hops(self) -> None:
        """Each hop is listed in order with its round-trip time from the caller."""
        d = self.nodes[0].call(None, "node", "traceroute", "n3")
        self.network.pump()
        hops = self.successResultOf(d)
        self.assertEqual(
            [(h["hop"], h["node_id"]) for h in hops], [(1, "n1"), (2, "n2"), (3, "n3")]
        )
        for hop in hops:
            self.assertEqual(hop["rtt_ms"], 0.0)  # the memory mesh's clock does not move
        self.assertEqual(self.nodes[0].mesh.probes._probes, {})

    def test_silent_hop(self) -> None:
        """A hop that does not answer in time has no RTT; the others still do."""
        self.network.link_between("n2", "n3").pause()
        d = self.nodes[0].call(None, "node", "traceroute", "n3")
        self.network.pump()
        self.clock.advance(2.0)
        self.network.pump()
        hops = self.successResultOf(d)
        self.assertEqual([h["rtt_ms"] for h in hops], [0.0, 0.0, None])
        self.assertEqual(self.nodes[0].mesh.probes._probes, {})
        self.assertEqual([c for c in self.clock.getDelayedCalls() if "Probes._done" in repr(c)], [])

    def test_original_neighbour(self) -> None:
        """
        An original-design neighbour's RTT is measured too: its pong has
        no reply_to, and is known by the ping's timestamp it echoes.
        """
        original = OriginalPeer(self.nodes[0], "o1")
        original.frame("registry_sync", {"servers": {}})
        d = self.nodes[0].call(None, "node", "traceroute", "o1")
        self.clock.advance(0.004)
        original.serve()
        self.assertEqual(self.successResultOf(d), [{"hop": 1, "node_id": "o1", "rtt_ms": 4.0}])
        self.assertEqual(self.nodes[0].mesh.probes._probes, {})
        self.assertEqual(self.nodes[0].mesh.probes._stamps, {})

    def test_unknown(self) -> None:
        """A node no route reaches is -32002 at once; a bad id is -32602."""
        self.assertIsInstance(
            self.failureResultOf(self.nodes[0].call(None, "node", "traceroute", "zz")).value,
            NodeUnreachable,
        )
        failure = self.failureResultOf(self.nodes[0].call(None, "node", "traceroute", "a b"))
        self.assertEqual(getattr(failure.value, "code", None), -32602)

    def test_self(self) -> None:
        """The route to this node itself is this node, at no distance."""
        d = self.nodes[0].call(None, "node", "traceroute", "n0")
        self.assertEqual(self.successResultOf(d), [{"hop": 0, "node_id": "n0", "rtt_ms": 0.0}])
