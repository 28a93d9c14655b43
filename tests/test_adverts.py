# -*- test-case-name: tests.test_adverts -*-
"""
Tests for L{relaytx._adverts}: the route exchange on a link, with nodes
linked in memory (L{relaytx.testing.MemoryMesh}) on one fake clock: the
first advert, whole tables split under the message limit, changes only
afterwards, sequence gaps and resyncs, reordered adverts, damping, the end
of a dead node's routes, and link costs.
"""

from __future__ import annotations

import random
from collections import deque
from itertools import pairwise
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._adverts import HELLO_WAIT, SYNC_DELAY
from relaytx._routing import MRAI, NOTICE_HOLD
from relaytx.node import RelayNode
from relaytx.testing import FakeLinkTransport, MemoryLink, MemoryMesh, memory_node
from relaytx.wire import Envelope, RegistrySync, RouteAdvert, encode
from tests.support import Counter

#: the built-in server's methods, as a first advert lists them
NODE_METHODS = ["echo", "info", "ping", "status", "traceroute"]


def syncs(link: Any, node: RelayNode) -> list[Envelope]:
    """:returns: the registry_sync frames C{node} sent on C{link}."""
    return list(link.sent_by(node, "registry_sync"))


def dropped(node: RelayNode, reason: str) -> float:
    """:returns: how many messages C{node} dropped for C{reason}."""
    return (
        node.metrics.registry.get_sample_value("relaytx_messages_dropped_total", {"reason": reason})
        or 0.0
    )


class ExchangeTestCase(SynchronousTestCase):
    """Nodes on one clock, linked in memory."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()

    def nodes(self, names: str, **options: Any) -> list[RelayNode]:
        return [memory_node(name, self.clock, **options) for name in names]

    def line(self, names: str, **options: Any) -> list[RelayNode]:
        nodes = self.nodes(names, **options)
        for a, b in pairwise(nodes):
            self.network.link(a, b)
        self.network.settle()
        return nodes


class FirstAdvertTests(ExchangeTestCase):
    """What a link says first, and to whom routes go."""

    def test_first_advert_is_the_original_shape(self) -> None:
        """A link's first advert is the sender's servers in the original's shape, numbered 1."""
        a, b = self.nodes("ab")
        link = self.network.link(a, b)
        self.network.advance(0)
        first = syncs(link, a)[0]
        self.assertEqual(
            dict(first.data),
            {"servers": {"node": {"methods": NODE_METHODS}}, "seq": 1, "sn": 0},
        )

    def test_original_node_gets_servers_only(self) -> None:
        """A neighbour that never numbers adverts hears only our servers, when they change."""
        hub = memory_node("hub", self.clock)
        far = memory_node("far", self.clock)
        self.network.link(hub, far)
        transport = FakeLinkTransport()
        session = hub.mesh.open_link("orig", "inbound", "test", transport)
        session.data_received(
            b'{"type":"registry_sync","from":"orig","to":"hub",'
            b'"data":{"servers":{"calc":{"methods":["add"]}}}}'
        )
        self.network.settle()
        hub.expose("counter", Counter())
        self.network.settle()
        sent = transport.envelopes("registry_sync")
        self.assertEqual(len(sent), 2)
        for envelope in sent:
            self.assertEqual(set(envelope.data) - {"seq", "sn"}, {"servers"})
        self.assertIn("counter", sent[-1].data["servers"])
        self.assertEqual(hub.views.routes()["orig"]["hops"], 1)
        self.assertEqual(far.views.servers()["calc"][0]["hops"], 2)

    def test_router_gets_whole_table_then_changes(self) -> None:
        """A neighbour that routes gets the whole table once, then only what changed."""
        a, b, c = self.line("abc")
        ab = self.network.link_between(a, b)
        whole = [s for s in syncs(ab, b) if s.data.get("full")]
        self.assertEqual(len(whole), 1)
        self.assertEqual(set(whole[0].data["routes"]), {"c"})
        before = len(syncs(ab, b))
        c.expose("counter", Counter())
        self.network.settle()
        [change] = syncs(ab, b)[before:]
        self.assertEqual(change.data["routes"], {"c": {"s": 0}})
        self.assertEqual(
            change.data["tables"],
            [{"counter": ["get", "increment"], "node": NODE_METHODS}],
        )
        self.assertNotIn("full", change.data)

    def test_numbers_follow_each_other(self) -> None:
        """Every advert on a link is numbered one more than the one before."""
        nodes = self.line("abcd")
        nodes[3].expose("counter", Counter())
        self.network.settle()
        link = self.network.link_between(nodes[1], nodes[2])
        for node in (nodes[1], nodes[2]):
            numbers = [s.data["seq"] for s in syncs(link, node)]
            self.assertEqual(numbers, list(range(1, len(numbers) + 1)))

    def test_steady_state_is_silent(self) -> None:
        """Once settled, a mesh sends no registry_sync at all, however long it runs."""
        nodes = self.nodes("abcde")
        for x, y in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2)]:
            self.network.link(nodes[x], nodes[y])
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        before = sum(len(syncs(link, n)) for link in self.network.links for n in link.nodes)
        self.network.advance(60)
        after = sum(len(syncs(link, n)) for link in self.network.links for n in link.nodes)
        self.assertEqual(after, before)


def told_about(link: MemoryLink, node: RelayNode, destination: str) -> list[Envelope]:
    """:returns: the adverts C{node} sent on C{link} that name C{destination}."""
    return [
        sync
        for sync in syncs(link, node)
        if destination in sync.data.get("routes", ())
        or destination in sync.data.get("withdrawn", ())
    ]


class HelloTests(ExchangeTestCase):
    """
    A new relaytx neighbour's route is told once its first advert came (its
    servers and number), so that it goes out once, whole.
    """

    def joined(self) -> tuple[RelayNode, RelayNode, RelayNode, MemoryLink]:
        """
        C{a}-C{b} settled, then C{c} (with a counter) linked to C{b}, its
        frames held.
        """
        a, b = self.line("ab")
        [c] = self.nodes("c")
        c.expose("counter", Counter())
        link = self.network.link(b, c)
        link.pause()
        return a, b, c, link

    def test_told_once_its_first_advert_came(self) -> None:
        """
        Until C{c}'s first advert reaches C{b}, C{b} tells C{a} nothing of
        C{c}; then at once, all of it.
        """
        a, b, _, bc = self.joined()
        ab = self.network.link_between(a, b)
        self.network.settle()
        self.assertIn("c", b.views.routes())
        self.assertNotIn("c", a.views.routes())
        self.assertEqual(told_about(ab, b, "c"), [])
        bc.resume()
        self.network.pump()  # c's first advert reaches b ...
        self.network.advance(0)  # ... and b tells a at once, as a link's own route was
        self.assertEqual(a.views.routes()["c"]["hops"], 2)
        self.assertIn("counter", a.views.servers())
        [told] = told_about(ab, b, "c")
        self.assertIn("s", told.data["routes"]["c"])

    def test_silent_neighbour_told_after_a_while(self) -> None:
        """
        A relaytx neighbour that says nothing for L{HELLO_WAIT} seconds (its
        first advert late, or a registry off that it did not announce) has
        its route told anyway.
        """
        hub, far = self.line(["hub", "far"])
        quiet = memory_node("quiet", self.clock, disable_registry=True)
        self.network.link(quiet, hub, registry_said=False)
        self.network.advance(HELLO_WAIT - 0.1)
        self.assertIn("quiet", hub.views.routes())
        self.assertNotIn("quiet", far.views.routes())
        self.network.advance(0.1 + SYNC_DELAY)
        self.assertEqual(far.views.routes()["quiet"]["hops"], 2)

    def test_registry_off_neighbour_told_at_once(self) -> None:
        """A neighbour that said in its handshake that its registry is off is told at once."""
        hub, far = self.line(["hub", "far"])
        quiet = memory_node("quiet", self.clock, disable_registry=True)
        self.network.link(quiet, hub)  # (each hears whether the other's registry is off)
        self.network.settle()
        self.assertEqual(far.views.routes()["quiet"]["hops"], 2)

    def test_original_design_neighbour_told_at_once(self) -> None:
        """A neighbour of the original design, which may never advertise, is told at once."""
        hub, far = self.line(["hub", "far"])
        hub.mesh.open_link("orig", "inbound", "test", FakeLinkTransport(), original=True)
        self.network.settle()
        self.assertEqual(far.views.routes()["orig"]["hops"], 2)

    def test_route_held_from_before_is_kept(self) -> None:
        """
        A destination a neighbour holds through others already is not taken
        back while the new direct link's first advert is on its way.
        """
        a, b, c, d = self.nodes("abcd")
        for x, y in [(a, b), (b, c), (d, a)]:
            self.network.link(x, y)
        self.network.settle()
        self.assertEqual(d.views.routes()["c"]["hops"], 3)
        ad = self.network.link_between(a, d)
        before = len(told_about(ad, a, "c"))
        ac = self.network.link(a, c)
        ac.pause()
        self.network.settle()
        self.assertEqual(a.views.routes()["c"]["hops"], 1)
        self.assertEqual(d.views.routes()["c"]["hops"], 3)
        self.assertEqual(len(told_about(ad, a, "c")), before)
        ac.resume()
        self.network.settle()
        self.assertEqual(d.views.routes()["c"]["hops"], 2)
        self.assertEqual(len(told_about(ad, a, "c")), before + 1)

    def test_wait_ends_with_the_link(self) -> None:
        """A link that closes, or a node that stops, leaves no wait behind."""
        _, b, c, bc = self.joined()
        late = b.mesh.adverts._hello_late

        def waits() -> list[object]:
            return [call for call in self.clock.getDelayedCalls() if call.func == late]

        self.assertEqual(len(waits()), 1)
        bc.cut()
        self.assertEqual(waits(), [])
        self.network.link(b, c).pause()
        self.assertEqual(len(waits()), 1)
        b.mesh.adverts.stop()
        self.assertEqual(waits(), [])


class SplitTests(ExchangeTestCase):
    """Adverts never outgrow the message limit."""

    def test_whole_table_split(self) -> None:
        """A table past the limit goes in several frames, each under it, marked full/more."""
        limit = 4096
        a, b = self.nodes("ab", limits={"max_message_size": limit})
        feeder = self.nodes("f", limits={"max_message_size": 1 << 20})[0]
        self.network.link(feeder, a)
        self.network.settle()
        routes = {f"far{i:03d}": RouteAdvert((f"far{i:03d}",), {"svc": ("m",)}) for i in range(250)}
        session = a.mesh.links["f"]
        seq = a.mesh.adverts._state["f"].expect
        session.data_received(
            encode(Envelope.create(RegistrySync(None, routes, seq=seq), "f", "a", 0.0))
        )
        link = self.network.link(a, b)
        self.network.settle()
        whole = [s for s in syncs(link, a) if "routes" in s.data]
        self.assertGreater(len(whole), 1)
        for frame in link.transport_of(a).frames:
            self.assertLessEqual(len(frame), limit)
        self.assertTrue(whole[0].data.get("full"))
        self.assertEqual(
            [s.data.get("more", False) for s in whole], [True] * (len(whole) - 1) + [False]
        )
        self.assertEqual(len(b.views.routes()), 252)
        self.assertEqual(b.views.routes()["far249"]["hops"], 3)
        self.assertEqual(dropped(a, "advert_too_large"), 0)

    def test_large_change_split(self) -> None:
        """A change past the limit also goes in several frames, each under it."""
        limit = 4096
        a, b = self.line("ab", limits={"max_message_size": limit})
        feeder = memory_node("f", self.clock)
        self.network.link(feeder, a)
        self.network.settle()
        routes = {f"far{i:03d}": RouteAdvert((f"far{i:03d}",)) for i in range(200)}
        seq = a.mesh.adverts._state["f"].expect
        a.mesh.links["f"].data_received(
            encode(Envelope.create(RegistrySync(None, routes, seq=seq), "f", "a", 0.0))
        )
        self.network.settle()
        for frame in self.network.link_between(a, b).transport_of(a).frames:
            self.assertLessEqual(len(frame), limit)
        self.assertEqual(len(b.views.routes()), 202)


class SequenceTests(ExchangeTestCase):
    """Gaps, resyncs and reordered adverts."""

    def setUp(self) -> None:
        super().setUp()
        self.a, self.b, self.c = self.line("abc")
        self.session = self.network.link_between(self.a, self.b).session_of(self.a)
        self.expect = self.a.mesh.adverts._state["b"].expect

    def frame(self, seq: int, routes: dict[str, RouteAdvert] | None = None, **kw: Any) -> bytes:
        return encode(Envelope.create(RegistrySync(None, routes, seq=seq, **kw), "b", "a", 0.0))

    def test_gap_asks_for_the_whole_table(self) -> None:
        """After a lost advert the next is taken, and the whole table is asked for and comes."""
        link = self.network.link_between(self.a, self.b)
        link.pause()
        self.c.expose("counter", Counter())
        self.network.settle()
        lost = [e for e in link._held if e[0] == "frame" and b'"registry_sync"' in e[2]]
        self.assertEqual(len(lost), 1)
        link._held.remove(lost[0])  # the advert that told a of c's new server is lost
        link.resume()
        self.network.settle()
        self.assertNotIn("counter", self.a.views.servers())
        fulls = len([s for s in syncs(link, self.b) if s.data.get("full")])
        self.c.expose("other", Counter())
        self.network.settle()
        asks = [s for s in syncs(link, self.a) if s.data.get("resync")]
        self.assertEqual(len(asks), 1)
        self.assertEqual(dropped(self.a, "advert_gap"), 1)
        self.assertEqual(len([s for s in syncs(link, self.b) if s.data.get("full")]), fulls + 1)
        self.assertEqual({e["node_id"] for e in self.a.views.servers()["counter"]}, {"c"})
        self.assertEqual({e["node_id"] for e in self.a.views.servers()["other"]}, {"c"})

    def test_reordered_advert_ignored(self) -> None:
        """An advert numbered below what is expected (late, reordered) is ignored and counted."""
        self.session.data_received(self.frame(self.expect + 1, {"x": RouteAdvert(("x",))}))
        self.session.data_received(self.frame(self.expect, None, withdrawn=("c",)))
        self.assertIn("c", self.a.views.routes())
        self.assertEqual(dropped(self.a, "stale_advert"), 1)

    def test_resync_asked_again_only_after_a_while(self) -> None:
        """Until the whole table comes, the request is repeated, at most every RESYNC_RETRY."""
        link = self.network.link_between(self.a, self.b)
        link.pause()  # b's answer will not come
        self.session.data_received(self.frame(self.expect + 1))
        self.session.data_received(self.frame(self.expect + 3))
        self.network.advance(0)
        self.network.advance(SYNC_DELAY)
        asks = [s for s in syncs(link, self.a) if s.data.get("resync")]
        self.assertEqual(len(asks), 1)
        self.clock.advance(2.0)
        self.network.advance(0.01)
        asks = [s for s in syncs(link, self.a) if s.data.get("resync")]
        self.assertEqual(len(asks), 2)

    def test_resync_answered_with_whole_table(self) -> None:
        """A neighbour that asks gets the whole table at once."""
        link = self.network.link_between(self.a, self.b)
        before = len([s for s in syncs(link, self.b) if s.data.get("full")])
        seq = self.b.mesh.adverts._state["a"].expect
        self.network.link_between(self.a, self.b).session_of(self.b).data_received(
            encode(Envelope.create(RegistrySync(resync=True, seq=seq), "a", "b", 0.0))
        )
        self.network.advance(0)
        after = [s for s in syncs(link, self.b) if s.data.get("full")]
        self.assertEqual(len(after), before + 1)
        self.assertEqual(set(after[-1].data["routes"]), {"c"})

    def test_no_resync_to_a_neighbour_that_does_not_route(self) -> None:
        """A neighbour that never numbered an advert is never asked for anything."""
        transport = FakeLinkTransport()
        session = self.a.mesh.open_link("orig", "inbound", "test", transport)
        session.data_received(
            b'{"type":"registry_sync","from":"orig","to":"a","data":{"servers":{}}}'
        )
        session.data_received(
            b'{"type":"registry_sync","from":"orig","to":"a","data":{"servers":{}}}'
        )
        self.network.settle()
        for envelope in transport.envelopes("registry_sync"):
            self.assertEqual(set(envelope.data) - {"seq", "sn"}, {"servers"})


class DampingTests(ExchangeTestCase):
    """Re-adverts of one destination go out at most once per MRAI."""

    def test_second_change_waits(self) -> None:
        """A destination re-routed twice in quick succession is re-advertised once, then later."""
        a, b, c = self.nodes("abc")
        self.network.link(a, b)
        self.network.link(b, c)
        self.network.settle()
        self.network.advance(MRAI)
        router = b.mesh.router
        link = self.network.link_between(a, b)
        start = len(syncs(link, b))
        seq = b.mesh.adverts._state["c"].expect
        session = self.network.link_between(b, c).session_of(b)
        session.data_received(
            encode(
                Envelope.create(
                    RegistrySync(None, {"z": RouteAdvert(("z",))}, seq=seq),
                    "c",
                    "b",
                    self.clock.seconds(),
                )
            )
        )
        self.network.advance(SYNC_DELAY)
        session.data_received(
            encode(
                Envelope.create(
                    RegistrySync(None, {"z": RouteAdvert(("y", "z"))}, seq=seq + 1),
                    "c",
                    "b",
                    self.clock.seconds(),
                )
            )
        )
        self.network.advance(SYNC_DELAY)
        session.data_received(
            encode(
                Envelope.create(
                    RegistrySync(None, {"z": RouteAdvert(("x", "y", "z"))}, seq=seq + 2),
                    "c",
                    "b",
                    self.clock.seconds(),
                )
            )
        )
        self.network.advance(SYNC_DELAY)
        about_z = [s for s in syncs(link, b)[start:] if "z" in s.data.get("routes", {})]
        self.assertEqual(len(about_z), 2)  # new, then the first change
        self.network.advance(MRAI)
        about_z = [s for s in syncs(link, b)[start:] if "z" in s.data.get("routes", {})]
        self.assertEqual(len(about_z), 3)
        self.assertEqual(router.route("z").hops, 4)  # type: ignore[union-attr]
        self.assertEqual(a.views.routes()["z"]["hops"], 5)


class DeathTests(ExchangeTestCase):
    """A dead node's routes end everywhere, promptly, with no hunting."""

    def test_dead_node_gone_without_hunting(self) -> None:
        """Once a node's links all drop, every node forgets it within a second, hunting nothing."""
        names = "abcdefghi"
        nodes = {n.node_id: n for n in self.nodes(names)}
        grid = [("a", "b"), ("b", "c"), ("d", "e"), ("e", "f"), ("g", "h"), ("h", "i"),
                ("a", "d"), ("d", "g"), ("b", "e"), ("e", "h"), ("c", "f"), ("f", "i"),
                ("a", "e"), ("b", "f"), ("d", "h"), ("e", "i")]  # fmt: skip
        for x, y in grid:
            self.network.link(nodes[x], nodes[y])
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        marks = {
            id(link): {n.node_id: len(syncs(link, n)) for n in link.nodes}
            for link in self.network.links
        }
        for link in self.network.links:
            if "e" in {n.node_id for n in link.nodes}:
                link.cut("killed")
        start = self.clock.seconds()
        while any("e" in n.views.routes() for k, n in nodes.items() if k != "e"):
            self.network.advance(0.01)
            self.assertLess(self.clock.seconds() - start, 1.0)
        self.network.advance(MRAI)
        for link in self.network.links:
            for node in link.nodes:
                for sync in syncs(link, node)[marks[id(link)][node.node_id] :]:
                    self.assertNotIn("e", sync.data.get("routes", {}), node.node_id)

    def test_failure_renumbers_its_ends_alone(self) -> None:
        """
        A failed link renumbers its two ends and no one else, even on a
        clock whose first numbers are 0 (one before late 2023, as a board
        without a real-time clock has until it is set): the mark of a node
        elsewhere is no mark of one's own.
        """
        nodes = {n.node_id: n for n in self.line("abcd")}
        self.network.advance(NOTICE_HOLD + 1)
        before = {name: node.mesh.adverts.own_sn for name, node in nodes.items()}
        self.assertEqual(set(before.values()), {0})
        self.network.link_between("c", "d").cut("connection reset")
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        self.assertIsNotNone(nodes["a"].mesh.router.mark_of("d"))
        after = {name: node.mesh.adverts.own_sn for name, node in nodes.items()}
        self.assertEqual(after, {"a": 0, "b": 0, "c": 2, "d": 2})

    def _square_removed(self, close_arrives: bool) -> tuple[dict[str, RelayNode], int]:
        # a removes its link to b in the square a-b-c-d-a; the close frame
        # reaches b, or the connection breaks first. Returns the nodes and
        # a's number before.
        nodes = {n.node_id: n for n in self.nodes("abcd")}
        for x, y in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]:
            self.network.link(nodes[x], nodes[y])
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        number = nodes["a"].mesh.adverts.own_sn
        nodes["a"].remove_peer("b")
        if not close_arrives:
            self.network.link_between("a", "b").cut("connection reset")
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        return nodes, number

    def test_removal_whose_close_is_lost(self) -> None:
        """A node that removed a link whose peer never heard why stays reachable through others."""
        nodes, number = self._square_removed(close_arrives=False)
        route = nodes["b"].mesh.router.route("a")
        self.assertIsNotNone(route, "b holds a unreachable")
        self.assertEqual(route.path, ("c", "d", "a"))
        self.assertGreater(nodes["a"].mesh.adverts.own_sn, number)

    def test_removal_heard_but_not_answered(self) -> None:
        """
        A removal its peer heard, whose remover never heard the answer,
        holds neither end unreachable: the remover marks nobody.
        """
        nodes = {n.node_id: n for n in self.nodes("abcd")}
        for x, y in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]:
            self.network.link(nodes[x], nodes[y])
        self.network.settle()
        self.network.advance(NOTICE_HOLD + 1)
        link = self.network.link_between("a", "b")
        nodes["a"].remove_peer("b")
        link.closing = link.closed = True  # the close frame, queued, is delivered by hand
        link.session_of("b").connection_lost("close code 4002: removed by the operator")
        link.session_of("a").connection_lost(
            "close code 1006: connection was closed uncleanly (closing handshake timeout)"
        )
        self.network.settle()
        self.network.advance(SYNC_DELAY * 10)
        for name, node in nodes.items():
            self.assertEqual(set(node.views.routes()), set(nodes) - {name}, name)
        self.assertEqual(nodes["d"].mesh.router.route("b").path, ("c", "b"))  # type: ignore[union-attr]

    def test_removal_told(self) -> None:
        """A removal its peer heard renumbers nobody: a keeps its number and b routes around."""
        nodes, number = self._square_removed(close_arrives=True)
        self.assertEqual(nodes["a"].mesh.adverts.own_sn, number)
        self.assertEqual(nodes["b"].mesh.router.route("a").path, ("c", "d", "a"))


class CostTests(ExchangeTestCase):
    """Measured round trips move routes around a slow link, and back."""

    def test_slow_link_routed_around(self) -> None:
        """
        When a-b turns slow, a reaches c through d. When it is fast again,
        a stays there (as good a route: a tie moves no route), until a-d
        turns slow in its turn.
        """
        a, b, c, d = self.nodes("abcd")
        for x, y in [(a, b), (b, c), (a, d), (d, c)]:
            self.network.link(x, y)
        self.network.settle()
        self.assertEqual(a.views.routes()["c"]["next_hop"], "b")
        measured = a.mesh.adverts
        for _ in range(4):
            measured.link_measured("b", 0.3)
            measured.link_measured("d", 0.001)
        self.network.settle()
        self.assertEqual(a.views.routes()["c"]["next_hop"], "d")
        self.assertEqual(a.views.routes()["b"]["metric"], 17)
        measured.link_measured("b", 0.001)
        self.network.settle()
        self.assertEqual(a.views.routes()["c"]["next_hop"], "d")
        for _ in range(4):
            measured.link_measured("d", 0.3)
        self.network.settle()
        self.assertEqual(a.views.routes()["c"]["next_hop"], "b")


def hops_from(source: str, edges: set[frozenset[str]]) -> dict[str, int]:
    """:returns: the hops from C{source} to every node it reaches over C{edges} (BFS)."""
    distance = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for edge in edges:
            if node in edge:
                (other,) = edge - {node}
                if other not in distance:
                    distance[other] = distance[node] + 1
                    queue.append(other)
    del distance[source]
    return distance


class ShuffledOrderTests(SynchronousTestCase):
    """
    Meshes whose links deliver in random orders (each link in order, links
    overtaking one another) through random link failures, removals (some
    broken before their close arrives), new links and a node's death:
    after each, every table holds the shortest path to every node reached.
    """

    NODES = 14
    CHANGES = 8

    def _mesh_run(self, seed: int) -> None:
        rng = random.Random(seed)
        clock = MemoryReactorClock()
        network = MemoryMesh(shuffle=rng)
        names = [f"n{i:02d}" for i in range(self.NODES)]
        nodes = {name: memory_node(name, clock) for name in names}
        links: dict[frozenset[str], MemoryLink] = {}

        def link(a: str, b: str) -> None:
            links[frozenset((a, b))] = network.link(nodes[a], nodes[b])

        for i in range(1, self.NODES):  # a random tree, then some more links
            link(names[i], names[rng.randrange(i)])
        while len(links) < self.NODES * 3 // 2:
            a, b = rng.sample(names, 2)
            if frozenset((a, b)) not in links:
                link(a, b)
        dead: set[str] = set()
        history: list[str] = []
        for _ in range(self.CHANGES):
            self._settle_and_check(network, nodes, links, dead, seed, history)
            edge = rng.choice(sorted(links, key=sorted))
            a, b = sorted(edge)
            roll = rng.random()
            if roll < 0.3:
                links.pop(edge).cut("connection reset")
                history.append(f"{a}-{b} failed")
            elif roll < 0.6:
                nodes[a].remove_peer(b)
                gone = links.pop(edge)
                if rng.random() < 0.5:
                    gone.cut("connection reset")  # before the close arrived
                history.append(f"{a} removed {b}")
            elif roll < 0.9:
                a, b = rng.sample([n for n in names if n not in dead], 2)
                if frozenset((a, b)) not in links:
                    link(a, b)
                    history.append(f"{a}-{b} linked")
            elif len(dead) < 2:
                victim = rng.choice([n for n in names if n not in dead])
                dead.add(victim)
                for edge in [e for e in links if victim in e]:
                    links.pop(edge).cut("killed")
                history.append(f"{victim} died")
        self._settle_and_check(network, nodes, links, dead, seed, history)

    def _settle_and_check(
        self,
        network: MemoryMesh,
        nodes: dict[str, RelayNode],
        links: dict[frozenset[str], MemoryLink],
        dead: set[str],
        seed: int,
        history: list[str],
    ) -> None:
        network.settle()
        network.advance(NOTICE_HOLD + 1)  # well under a mark's hold (60 s)
        edges = set(links)
        for name, node in nodes.items():
            if name in dead:
                continue
            held = {d: len(route.path) for d, route in node.mesh.router.routes().items()}
            self.assertEqual(held, hops_from(name, edges), f"seed {seed}, {name}, after {history}")

    def test_shuffled_orders(self) -> None:
        """Twenty random meshes, eight changes each: every table is right after every change."""
        for seed in range(20):
            self._mesh_run(seed)
