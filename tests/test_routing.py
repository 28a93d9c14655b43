# -*- test-case-name: tests.test_routing -*-
"""
Tests for L{relaytx._routing}: the path-vector routing table, on small
networks simulated in memory (one L{Router} per node; each round every
node sends each neighbour what changed, as C{registry_sync} would carry it
over the wire, until nothing changes).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaytx._news import crossed, crosses, crossing
from relaytx._routing import (
    HOP_MARGIN,
    MAX_HOPS,
    NOTICE_HOLD,
    Route,
    Router,
    hop_budget,
)
from relaytx.wire import DEFAULT_TTL, NO_SERVERS, RegistrySync, RouteAdvert, server_table
from tests.support import fuzz_settings

# More rounds than any test network needs: a flood still busy after this
# many is not converging (count-to-infinity or flapping).
ROUND_LIMIT = 100


def servers_of(node: str) -> dict[str, tuple[str, ...]]:
    """The servers node C{node} hosts in these tests: one, named after it."""
    return {f"svc-{node}": ("echo", "ping")}


class Network:
    """
    One L{Router} per node over a set of undirected links, with no I/O and
    no clock but the round counter (each round is C{step} seconds).

    A round collects, from every node for every neighbour, the advert the
    node's L{relaytx._adverts.Advertiser} would send (the whole table on a
    new link, else the changes, with the lost links the neighbour must hear
    of), encodes and decodes it, and then delivers them all.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        nodes: Iterable[str],
        links: Iterable[tuple[str, str]] = (),
        step: float = 0.05,
        accept: Callable[[str], Callable[[str, tuple[str, ...]], bool] | None] = lambda n: None,
    ) -> None:
        self.test = test
        self.now = 0.0
        self.step = step
        self.routers = {node: Router(node, accept(node)) for node in nodes}
        self.links: set[frozenset[str]] = set()
        self.costs: dict[tuple[str, str], int] = {}
        self._new: set[tuple[str, str]] = set()
        self.sent: list[tuple[str, str, RegistrySync]] = []
        #: each node's own sequence number, and the one each neighbour heard
        self.sn = dict.fromkeys(self.routers, 0)
        self._told_sn: dict[tuple[str, str], int] = {}
        for a, b in links:
            self.connect(a, b)

    def __getitem__(self, node: str) -> Router:
        return self.routers[node]

    def connect(self, a: str, b: str) -> tuple[bool, bool]:
        """Open the link a-b at both ends; returns each end's link_up result."""
        self.links.add(frozenset((a, b)))
        results = []
        for x, y in ((a, b), (b, a)):
            results.append(self.routers[x].link_up(y, now=self.now))
            self.routers[x].neighbour_servers(y, server_table(servers_of(y).items()))
            self.routers[x].neighbour_sn(y, self.sn[y])
            self._told_sn[y, x] = self.sn[y]
            self.routers[x].start_routing(y)
            self._new.add((x, y))
        return results[0], results[1]

    def cut(self, a: str, b: str, failed: bool = False) -> tuple[bool, bool]:
        """
        Lose the link a-b at both ends, removed on purpose (or C{failed});
        returns each end's link_down result.
        """
        self.links.discard(frozenset((a, b)))
        self._new -= {(a, b), (b, a)}
        if failed:
            self.sn[a] += 2  # each end numbers itself anew (Advertiser.link_closed)
            self.sn[b] += 2
        return (
            self.routers[a].link_down(b, self.now, mark=failed),
            self.routers[b].link_down(a, self.now, mark=failed),
        )

    def kill(self, node: str) -> None:
        """C{node} dies: every link of it fails (its router stays, unlinked)."""
        for peer in sorted(self.neighbours(node)):
            self.cut(node, peer, failed=True)

    def neighbours(self, node: str) -> set[str]:
        return {peer for link in self.links if node in link for peer in link - {node}}

    def adverts(self, node: str) -> list[tuple[str, RegistrySync]]:
        """The adverts C{node} would send now, one per neighbour that has news."""
        router = self.routers[node]
        out = []
        changed, _ = router.exports.ready(self.now)
        for peer in sorted(self.neighbours(node)):
            if (node, peer) in self._new:
                self._new.discard((node, peer))
                routes, withdrawn = router.exports.export_full(peer), []
                down = router.news.notices_for(peer)
                full = True
            else:
                down = router.news.notices_for(peer)
                routes, withdrawn = router.exports.export_changes(peer, changed)
                full = False
            up = router.news.ups_for(peer)
            sn = None if self._told_sn.get((node, peer)) == self.sn[node] else self.sn[node]
            self._told_sn[node, peer] = self.sn[node]
            lost = router.lost_for(withdrawn)
            if routes or withdrawn or down or up or full or sn is not None:
                advert = RegistrySync(
                    None, routes, tuple(withdrawn), 1, full=full, down=down, up=up, sn=sn,
                    lost=lost or None,
                )  # fmt: skip
                out.append((peer, RegistrySync.from_data(json.loads(json.dumps(advert.to_data())))))
        router.exports.exported(changed, self.now)
        return out

    def round(self, reverse: bool = False) -> bool:
        """
        One round of adverts on every link, both ways.

        :param reverse: deliver in the opposite order (for order-independence).
        :returns: whether any advert was sent.
        """
        batch = []
        for node in sorted(self.routers):
            for peer, advert in self.adverts(node):
                batch.append((node, peer, advert))
        if reverse:
            batch.reverse()
        for sender, receiver, advert in batch:
            if frozenset((sender, receiver)) not in self.links:
                continue
            router = self.routers[receiver]
            if advert.sn is not None:
                router.neighbour_sn(sender, advert.sn)
            if advert.full:
                rib = router.new_rib(sender)
                rib.apply(advert.routes)
                router.replace(sender, rib)
            else:
                router.advert_from(sender, advert.routes, advert.withdrawn)
            if advert.lost:
                router.take_lost(sender, advert.lost, self.now)
            if advert.down or advert.up:
                router.take_notices(sender, advert.down, self.now, advert.up)
        self.sent.extend(batch)
        self.now += self.step
        for router in self.routers.values():
            router.expire_notices(self.now)
        return bool(batch)

    def flood(self, reverse: bool = False) -> int:
        """
        Deliver adverts until quiet, checking after every round that no path
        holds a loop.

        :returns: the number of rounds that sent something (the final,
            quiet round is not counted).
        """
        rounds = 0
        while self.round(reverse) or any(r.dirty for r in self.routers.values()):
            rounds += 1
            self.assert_loop_free()
            if rounds > ROUND_LIMIT:
                self.test.fail(f"no convergence after {ROUND_LIMIT} rounds")
        self.assert_loop_free()
        return rounds

    def wait(self, seconds: float) -> None:
        """Let C{seconds} pass (held notices expire), delivering what follows."""
        self.now += seconds
        for router in self.routers.values():
            router.expire_notices(self.now)
        self.flood()

    def assert_loop_free(self) -> None:
        """Every route's path is well formed: no repeated node, not through its owner."""
        for node, router in self.routers.items():
            for destination, route in router.routes().items():
                path = route.path
                self.test.assertEqual(route.destination, destination)
                self.test.assertTrue(path, f"{node}: empty path to {destination}")
                self.test.assertEqual(path[-1], destination)
                self.test.assertNotIn(node, path, f"{node}: path {path} loops through itself")
                self.test.assertEqual(
                    len(set(path)), len(path), f"{node}: path {path} repeats a node"
                )
                self.test.assertLessEqual(len(path), MAX_HOPS)
                self.test.assertIn(path[0], self.neighbours(node))

    def distances(self, source: str) -> dict[str, int]:
        """Breadth-first hop counts from C{source} over the current links."""
        dist = {source: 0}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for peer in sorted(self.neighbours(node)):
                if peer not in dist:
                    dist[peer] = dist[node] + 1
                    queue.append(peer)
        return dist

    def assert_converged(self) -> None:
        """
        Every node's table holds a shortest path to every node reachable
        over the current links (which of equal ones: whichever it heard
        first), with each destination's own servers.
        """
        everyone = {node: self.distances(node) for node in self.routers}
        for node, router in self.routers.items():
            dist = everyone[node]
            reachable = {d for d in dist if d != node and dist[d] <= MAX_HOPS}
            self.test.assertEqual(set(router.routes()), reachable, f"destinations of {node}")
            for destination in reachable:
                route = router.route(destination)
                assert route is not None
                self.test.assertEqual(route.hops, dist[destination], f"{node} -> {destination}")
                self.test.assertEqual(route.metric, route.hops, f"{node} -> {destination}")
                nearer = {
                    peer
                    for peer in self.neighbours(node)
                    if everyone[peer].get(destination) == dist[destination] - 1
                }
                self.test.assertIn(route.next_hop, nearer, f"{node} -> {destination}")
                walk = (node, *route.path)
                for a, b in pairwise(walk):
                    self.test.assertIn(frozenset((a, b)), self.links, f"{node}: path {walk}")
                self.test.assertEqual(dict(route.servers), servers_of(destination))

    def entries_sent(self) -> int:
        """:returns: route entries and withdrawals sent so far, all links together."""
        return sum(len(advert.routes or ()) + len(advert.withdrawn) for _, _, advert in self.sent)


def names(prefix: str, count: int) -> list[str]:
    """C{count} node ids that sort in numeric order."""
    return [f"{prefix}{i:02d}" for i in range(count)]


def line(test: SynchronousTestCase, count: int) -> tuple[Network, list[str]]:
    nodes = names("n", count)
    return Network(test, nodes, pairwise(nodes)), nodes


def ring(test: SynchronousTestCase, count: int) -> tuple[Network, list[str]]:
    nodes = names("r", count)
    return Network(test, nodes, [(nodes[i], nodes[(i + 1) % count]) for i in range(count)]), nodes


def path_summary(router: Router) -> dict[str, tuple[str, int]]:
    """:returns: destination -> (next hop, hops) for a whole table."""
    return {dest: (route.next_hop, route.hops) for dest, route in router.routes().items()}


def advert(routes: dict[str, RouteAdvert], withdrawn: Iterable[str] = ()) -> RegistrySync:
    """:returns: an advert of C{routes} as it arrives off the wire."""
    sync = RegistrySync(None, routes, tuple(withdrawn), 1)
    return RegistrySync.from_data(json.loads(json.dumps(sync.to_data())))


def feed(router: Router, peer: str, routes: dict[str, RouteAdvert], *gone: str) -> bool:
    """Give C{router} an advert from C{peer} (linked and routing first if need be)."""
    if not router.is_linked(peer):
        router.link_up(peer)
    router.start_routing(peer)
    sync = advert(routes, gone)
    return router.advert_from(peer, sync.routes, sync.withdrawn)


class LineTests(SynchronousTestCase):
    """Nodes in a line: every route runs along it."""

    def test_line_of_three(self) -> None:
        """In a-b-c, the ends reach each other through the middle in 2 hops."""
        net, (a, b, c) = line(self, 3)
        rounds = net.flood()
        self.assertEqual(path_summary(net[a]), {b: (b, 1), c: (b, 2)})
        self.assertEqual(path_summary(net[b]), {a: (a, 1), c: (c, 1)})
        self.assertEqual(path_summary(net[c]), {b: (b, 1), a: (b, 2)})
        self.assertEqual(net[a].route(c).path, (b, c))  # type: ignore[union-attr]
        self.assertEqual(dict(net[a].route(c).servers), servers_of(c))  # type: ignore[union-attr]
        self.assertLessEqual(rounds, 3)
        net.assert_converged()

    def test_line_of_ten(self) -> None:
        """In a line of 10, every node reaches every other at |i - j| hops, stepping towards it."""
        net, nodes = line(self, 10)
        rounds = net.flood()
        for i, node in enumerate(nodes):
            for j, destination in enumerate(nodes):
                if i == j:
                    self.assertIsNone(net[node].route(destination))
                    continue
                self.assertEqual(net[node].route(destination).hops, abs(i - j))  # type: ignore[union-attr]
                step = nodes[i + 1] if j > i else nodes[i - 1]
                self.assertEqual(net[node].next_hop(destination), step)
        net.assert_converged()
        # A path learned hop by hop needs about one round per hop of the diameter (9).
        self.assertGreaterEqual(rounds, 8)
        self.assertLessEqual(rounds, 10)

    def test_server_three_hops_away(self) -> None:
        """A server hosted 3 hops away is listed with hops 3 and the destination's methods."""
        net, nodes = line(self, 10)
        net.flood()
        route = net[nodes[2]].route(nodes[5])
        assert route is not None
        self.assertEqual(route.hops, 3)
        self.assertEqual(route.path, (nodes[3], nodes[4], nodes[5]))
        self.assertEqual(dict(route.servers), {f"svc-{nodes[5]}": ("echo", "ping")})
        self.assertEqual(net[nodes[2]].table()[nodes[5]]["hops"], 3)

    def test_changed_servers_propagate_alone(self) -> None:
        """When a node's servers change, the far end learns them from servers-only entries."""
        net, nodes = line(self, 5)
        net.flood()
        before = len(net.sent)
        net[nodes[3]].neighbour_servers(nodes[4], server_table([("billing", ("charge",))]))
        self.assertGreater(net.flood(), 0)
        self.assertEqual(dict(net[nodes[0]].route(nodes[4]).servers), {"billing": ("charge",)})  # type: ignore[union-attr]
        entries = [e for _, _, a in net.sent[before:] for e in (a.routes or {}).values()]
        self.assertTrue(entries)
        for entry in entries:
            self.assertEqual((entry.path, entry.parent), (None, None))
            self.assertEqual(dict(entry.servers or {}), {"billing": ("charge",)})

    def test_max_hops_limits_reach(self) -> None:
        """In a line longer than MAX_HOPS, a node reaches exactly MAX_HOPS nodes down the line."""
        net, nodes = line(self, MAX_HOPS + 3)
        net.flood()
        first = net[nodes[0]]
        self.assertEqual(first.route(nodes[MAX_HOPS]).hops, MAX_HOPS)  # type: ignore[union-attr]
        self.assertIsNone(first.route(nodes[MAX_HOPS + 1]))
        self.assertEqual(len(first.routes()), MAX_HOPS)
        net.assert_converged()


class ShapeTests(SynchronousTestCase):
    """Rings, stars and meshes."""

    def test_ring_of_five(self) -> None:
        """In a ring of 5, each node reaches its neighbours directly and the rest the short way."""
        net, (r0, r1, r2, r3, r4) = ring(self, 5)
        rounds = net.flood()
        self.assertEqual(
            path_summary(net[r0]), {r1: (r1, 1), r2: (r1, 2), r3: (r4, 2), r4: (r4, 1)}
        )
        self.assertEqual(
            path_summary(net[r2]), {r1: (r1, 1), r0: (r1, 2), r3: (r3, 1), r4: (r3, 2)}
        )
        self.assertLessEqual(rounds, 3)
        net.assert_converged()

    def test_tie_goes_to_lower_id(self) -> None:
        """In a ring of 4, the opposite node is 2 hops both ways and the lower neighbour id wins."""
        net, (r0, r1, r2, r3) = ring(self, 4)
        net.flood()
        self.assertEqual(net[r0].route(r2).path, (r1, r2))  # type: ignore[union-attr]
        self.assertEqual(net[r2].route(r0).path, (r1, r0))  # type: ignore[union-attr]
        self.assertEqual(net[r1].route(r3).path, (r0, r3))  # type: ignore[union-attr]
        self.assertEqual(net[r3].route(r1).path, (r0, r1))  # type: ignore[union-attr]
        net.assert_converged()

    def test_event_order_keeps_lengths(self) -> None:
        """
        Links opened and adverts delivered in the opposite order give routes
        of the same lengths and metrics; only which of two equal paths a
        node uses may differ (a tie moves no route in use).
        """
        net, nodes = ring(self, 6)
        net.flood()
        backwards = Network(self, reversed(nodes))
        for i in reversed(range(6)):
            backwards.connect(nodes[(i + 1) % 6], nodes[i])
        backwards.flood(reverse=True)

        def lengths(table: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
            return {d: (row["hops"], row["metric"]) for d, row in table.items()}

        for node in nodes:
            self.assertEqual(lengths(backwards[node].table()), lengths(net[node].table()))
        # The node opposite each in the ring is 3 hops either way: the two
        # orders meet it by different sides.
        self.assertNotEqual(backwards[nodes[0]].table(), net[nodes[0]].table())
        net.assert_converged()
        backwards.assert_converged()

    def test_tie_between_neighbours(self) -> None:
        """
        An equally good route moves no route in use; between equally good
        routes with none in use, the neighbour with the lower id wins.
        """
        router = Router("me")
        for peer in ("d", "c", "b"):
            feed(router, peer, {"z": RouteAdvert(("z",))})
        self.assertEqual(router.next_hop("z"), "d")
        self.assertEqual(router.changes, 4)  # d, c and b, and z once
        router.link_down("d")
        self.assertEqual(router.next_hop("z"), "b")

    def test_star(self) -> None:
        """In a star, the hub reaches each leaf directly and leaves reach each other via the hub."""
        leaves = names("leaf", 4)
        net = Network(self, ["hub", *leaves], [("hub", leaf) for leaf in leaves])
        net.flood()
        self.assertEqual(path_summary(net["hub"]), {leaf: (leaf, 1) for leaf in leaves})
        for leaf in leaves:
            expected = {other: ("hub", 2) for other in leaves if other != leaf}
            expected["hub"] = ("hub", 1)
            self.assertEqual(path_summary(net[leaf]), expected)
        net.assert_converged()

    def test_full_mesh_of_four(self) -> None:
        """In a full mesh of 4, every route is the direct link; adverts settle within 2 rounds."""
        nodes = names("m", 4)
        net = Network(self, nodes, [(a, b) for a in nodes for b in nodes if a < b])
        rounds = net.flood()
        for node in nodes:
            self.assertEqual(
                path_summary(net[node]), {other: (other, 1) for other in nodes if other != node}
            )
        self.assertLessEqual(rounds, 2)
        net.assert_converged()

    def test_grid_converges(self) -> None:
        """A 5x5 grid, whose nodes have many equal paths, settles on shortest paths."""
        grid = {(x, y): f"g{x}{y}" for x in range(5) for y in range(5)}
        links = [(grid[x, y], grid[x + 1, y]) for x in range(4) for y in range(5)]
        links += [(grid[x, y], grid[x, y + 1]) for x in range(5) for y in range(4)]
        net = Network(self, grid.values(), links)
        net.flood()
        net.assert_converged()


def via(router: Router, peer_id: str) -> list[str]:
    """:returns: the destinations C{router} reaches through neighbour C{peer_id}."""
    return [d for d, r in router.routes().items() if r.next_hop == peer_id]


class LinkLossTests(SynchronousTestCase):
    """Links going down: routes are withdrawn or go round, never loop."""

    def test_link_down_drops_routes_through_it_at_once(self) -> None:
        """Right after link_down, before any advert, nothing is routed via the lost neighbour."""
        net, (a, b, c, d) = line(self, 4)
        net.flood()
        self.assertEqual(sorted(via(net[b], c)), [c, d])
        self.assertEqual(net.cut(b, c), (True, True))
        self.assertEqual(via(net[b], c), [])
        self.assertEqual(set(net[b].routes()), {a})
        self.assertEqual(set(net[c].routes()), {d})
        # a has not heard yet: it still believes in c and d through b.
        self.assertEqual(set(net[a].routes()), {b, c, d})

    def test_line_cut_far_side_unreachable(self) -> None:
        """Cutting a line of 10 in the middle leaves each half unable to reach the other."""
        net, nodes = line(self, 10)
        net.flood()
        net.cut(nodes[4], nodes[5])
        rounds = net.flood()
        left, right = set(nodes[:5]), set(nodes[5:])
        for node in nodes:
            side = left if node in left else right
            self.assertEqual(set(net[node].routes()), side - {node})
        # The withdrawal travels one hop per round: 4 hops to the far end.
        self.assertGreaterEqual(rounds, 4)
        self.assertLessEqual(rounds, 5)
        net.assert_converged()

    def test_no_count_to_infinity(self) -> None:
        """A tail cut off a triangle is forgotten within bounded rounds, with no counting up."""
        # a, b and c form a triangle; d hangs off c. With bare hop counts, a
        # and b would keep offering d to each other with ever larger metrics.
        net = Network(self, "abcd", [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")])
        net.flood()
        self.assertEqual(net["a"].route("d").hops, 2)  # type: ignore[union-attr]
        net.cut("c", "d")
        rounds = net.flood()
        for node in "abc":
            self.assertIsNone(net[node].route("d"), node)
        self.assertLessEqual(rounds, 3)
        net.assert_converged()

    def test_ring_cut_reroutes(self) -> None:
        """Cutting one link of a ring of 5 sends the traffic the long way round."""
        net, (r0, r1, r2, r3, r4) = ring(self, 5)
        net.flood()
        net.cut(r0, r1)
        rounds = net.flood()
        self.assertEqual(net[r0].route(r1).path, (r4, r3, r2, r1))  # type: ignore[union-attr]
        self.assertEqual(net[r1].route(r0).path, (r2, r3, r4, r0))  # type: ignore[union-attr]
        self.assertEqual(
            path_summary(net[r0]), {r1: (r4, 4), r2: (r4, 3), r3: (r4, 2), r4: (r4, 1)}
        )
        self.assertGreaterEqual(rounds, 1)
        self.assertLessEqual(rounds, 4)
        net.assert_converged()

    def test_link_comes_back(self) -> None:
        """A lost link that opens again while its loss is news restores the shortest paths."""
        net, (r0, r1, r2, r3, r4) = ring(self, 5)
        net.flood()
        before = {node: net[node].table() for node in (r0, r1, r2, r3, r4)}
        net.cut(r0, r1)
        net.flood()
        self.assertEqual(net.connect(r0, r1), (True, True))
        net.flood()
        self.assertLess(net.now, NOTICE_HOLD)
        self.assertEqual({node: net[node].table() for node in before}, before)

    def test_partition_and_repeated_cuts(self) -> None:
        """Cutting links of a 3x3 grid one by one keeps every table loop-free and shortest."""
        grid = {(x, y): f"g{x}{y}" for x in range(3) for y in range(3)}
        links = [(grid[x, y], grid[x + 1, y]) for x in range(2) for y in range(3)]
        links += [(grid[x, y], grid[x, y + 1]) for x in range(3) for y in range(2)]
        net = Network(self, grid.values(), links)
        net.flood()
        net.assert_converged()
        for a, b in [("g11", "g12"), ("g01", "g11"), ("g10", "g11"), ("g11", "g21")]:
            net.cut(a, b)
            net.flood()
            net.assert_converged()
        self.assertEqual(net["g11"].routes(), {})

    def test_flapping_links(self) -> None:
        """Links of a grid lost and restored in turn, each while the last loss is news, converge."""
        grid = {(x, y): f"g{x}{y}" for x in range(4) for y in range(4)}
        links = [(grid[x, y], grid[x + 1, y]) for x in range(3) for y in range(4)]
        links += [(grid[x, y], grid[x, y + 1]) for x in range(4) for y in range(3)]
        net = Network(self, grid.values(), links)
        net.flood()
        for a, b in [("g11", "g12"), ("g12", "g22"), ("g01", "g11"), ("g12", "g22")]:
            net.cut(a, b)
            net.round()
            net.connect(a, b)
            net.flood()
            net.assert_converged()


class CrossingTests(SynchronousTestCase):
    """L{crossing}: the paths of a table that run over a lost link."""

    def test_either_way_and_only_adjacent(self) -> None:
        """A path over the link, either way round, crosses it; one with both ends apart does not."""
        paths = {
            "d": ("a", "b", "d"),
            "e": ("x", "b", "a", "e"),
            "f": ("a", "x", "b", "f"),
            "g": ("b",),
        }
        self.assertEqual(crossing(paths, [("a", "b", 1)]), {"d", "e"})
        self.assertEqual(crossing(paths, [("x", "b", 1), ("q", "r", 1)]), {"e", "f"})
        self.assertEqual(crossing(paths, []), set())

    @fuzz_settings(max_examples=300)
    @given(
        st.dictionaries(
            st.sampled_from("defghij"),
            st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True).map(tuple),
        ),
        st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcdefgh"), st.just(1))),
    )
    def test_as_crosses_says(
        self, paths: dict[str, tuple[str, ...]], lost: list[tuple[str, str, int]]
    ) -> None:
        """The destinations found are those whose path L{crosses} a lost link."""
        self.assertEqual(
            crossing(paths, lost), {d for d, path in paths.items() if crosses(path, lost)}
        )

    def test_crossed_hub(self) -> None:
        """
        L{crossed} finds the links some path runs over: of a hub's links,
        those next to it on a path, either way round.
        """
        held = [("a", "hub", "b"), ("c", "d", "hub"), ("hub", "e")]
        lost = [(n, "hub", 1) for n in "abcde"] + [("x", "y", 1)]
        self.assertEqual(crossed(held, lost), {(n, "hub", 1) for n in "abde"})
        self.assertEqual(crossed([], lost), set())

    @fuzz_settings(max_examples=300)
    @given(
        st.lists(
            st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True).map(tuple)
        ),
        st.lists(
            st.tuples(st.sampled_from("abcd"), st.sampled_from("abcdefgh"), st.integers(1, 2))
        ),
    )
    def test_crossed_as_crosses_says(
        self, held: list[tuple[str, ...]], lost: list[tuple[str, str, int]]
    ) -> None:
        """The links found are those some path L{crosses}."""
        self.assertEqual(
            crossed(held, lost), {n for n in lost if any(crosses(path, [n]) for path in held)}
        )


class WithdrawalTests(SynchronousTestCase):
    """A dead node's routes end in one pass: no hunting through stale paths."""

    def mesh(self) -> Network:
        """A 4x4 grid with diagonals: many equally short paths to every node."""
        grid = {(x, y): f"g{x}{y}" for x in range(4) for y in range(4)}
        links = [(grid[x, y], grid[x + 1, y]) for x in range(3) for y in range(4)]
        links += [(grid[x, y], grid[x, y + 1]) for x in range(4) for y in range(3)]
        links += [(grid[x, y], grid[x + 1, y + 1]) for x in range(3) for y in range(3)]
        net = Network(self, grid.values(), links)
        net.flood()
        return net

    def test_dead_node_gone_everywhere(self) -> None:
        """Every node drops its routes to a dead node within rounds as many as the diameter."""
        net = self.mesh()
        net.kill("g11")
        rounds = 0
        while any(router.route("g11") for router in net.routers.values()):
            net.round()
            rounds += 1
            self.assertLessEqual(rounds, 3)
        net.flood()
        net.assert_converged()

    def test_no_path_hunting(self) -> None:
        """
        While a dead node's routes are withdrawn, no node adopts (and
        re-advertises) another path to it: its neighbours' news of the lost
        links goes with the withdrawals, so the stale paths are not tried.
        """
        net = self.mesh()
        before = len(net.sent)
        net.kill("g11")
        net.flood()
        readvertised = [
            (sender, receiver)
            for sender, receiver, advert in net.sent[before:]
            for dest, entry in (advert.routes or {}).items()
            if dest == "g11"
        ]
        self.assertEqual(readvertised, [])

    def test_mark_looks_through_once(self) -> None:
        """A node marked unreachable has the paths through it decided again once, not twice."""
        router = Router("me")
        feed(router, "a", {"x": RouteAdvert(("x",)), "y": RouteAdvert(("x", "y"))})
        feed(router, "b", {"y": RouteAdvert(("c", "y"))})
        looked: list[str] = []
        through = router._choice.through

        def counting(node: str) -> bool:
            looked.append(node)
            return through(node)

        router._choice.through = counting  # type: ignore[method-assign]
        router._through = counting
        self.assertTrue(router.take_lost("a", {"x": 3}, 0.0))
        self.assertEqual(looked, ["x"])
        self.assertIsNone(router.route("x"))
        self.assertEqual(router.route("y").path, ("b", "c", "y"))  # type: ignore[union-attr]

    def test_members_speak_for_their_own_paths(self) -> None:
        """
        Without hearsay (PKI mode), a neighbour's mark counts only for a
        node routed through it, at most at the next number, and its news
        of a lost link only for the paths it offers itself.
        """
        router = Router("me", hearsay=False)
        feed(router, "a", {"x": RouteAdvert(("x",)), "y": RouteAdvert(("q", "y"))})
        feed(router, "b", {"x": RouteAdvert(("c", "x")), "y": RouteAdvert(("q", "y"))})
        self.assertFalse(router.take_lost("b", {"x": 2**62 + 1}, 0.0))
        self.assertEqual(router.route("x").path, ("a", "x"))  # type: ignore[union-attr]
        self.assertEqual(router.lost_nodes(), {})
        # Lost links told by b: b's paths across them only (a's stands).
        router.take_notices("b", [("q", "y", 5)], 0.0)
        self.assertEqual(router.route("y").path, ("a", "q", "y"))  # type: ignore[union-attr]
        self.assertEqual(set(router.news.suspects), {("b", "y")})
        # The next hop may mark x, at the next number (it could drop x's calls).
        self.assertTrue(router.take_lost("a", {"x": 2**62 + 1}, 0.0))
        self.assertIsNone(router.route("x"))
        self.assertEqual(router._marks["x"][0], 1)
        feed(router, "b", {"x": RouteAdvert(("c", "x"), sn=2)})
        self.assertEqual(router.route("x").path, ("b", "c", "x"))  # type: ignore[union-attr]

    def test_stale_paths_hunted_without_the_marks(self) -> None:
        """Without the marks and news of lost links, the same death makes nodes try stale paths."""
        net = self.mesh()
        for router in net.routers.values():
            router.news.notices_for = lambda peer: ()  # type: ignore[method-assign]
            router.lost_for = lambda withdrawn: {}  # type: ignore[method-assign]
        before = len(net.sent)
        net.kill("g11")
        net.flood()
        readvertised = [
            1 for _, _, advert in net.sent[before:] for dest in advert.routes or {} if dest == "g11"
        ]
        self.assertGreater(len(readvertised), 0)
        net.assert_converged()

    def test_suspicion_ends(self) -> None:
        """Paths that crossed a lost link are used again once the news is old, if still offered."""
        router = Router("me")
        feed(router, "a", {"x": RouteAdvert(("b", "x"))})
        feed(router, "c", {"x": RouteAdvert(("d", "e", "x"))})
        self.assertEqual(router.next_hop("x"), "a")
        self.assertTrue(router.take_notices("c", [("b", "x", 5)], now=10.0))
        self.assertEqual(router.next_hop("x"), "c")
        self.assertFalse(router.expire_notices(10.0 + NOTICE_HOLD / 2))
        self.assertTrue(router.expire_notices(10.0 + NOTICE_HOLD))
        self.assertEqual(router.next_hop("x"), "a")

    def test_said_again_is_news(self) -> None:
        """A path given again after news of a lost link it crosses is used (the link is back)."""
        router = Router("me")
        feed(router, "a", {"x": RouteAdvert(("b", "x"))})
        router.take_notices("a", [("b", "x", 5)], now=10.0)
        self.assertIsNone(router.route("x"))
        feed(router, "a", {"x": RouteAdvert(("b", "x"), None, None, 3)})
        self.assertEqual(router.route("x").metric, 4)  # type: ignore[union-attr]

    def test_news_of_a_link_back_up(self) -> None:
        """A link back up takes back its loss: suspected paths are used again at once."""
        router = Router("me")
        feed(router, "a", {"x": RouteAdvert(("b", "x"))})
        router.take_notices("c", [("b", "x", 5)], now=10.0)
        self.assertIsNone(router.route("x"))
        self.assertTrue(router.take_notices("c", [], now=10.1, up=[("b", "x", 7)]))
        self.assertEqual(router.next_hop("x"), "a")
        # A late copy of the loss, older than the link's return, is ignored.
        self.assertFalse(router.take_notices("d", [("b", "x", 6)], now=10.2))
        self.assertEqual(router.next_hop("x"), "a")

    def _news_no_path_crosses(self) -> Router:
        # A router that told neighbour p its table, then heard of the loss
        # of q-r, which no path it told crosses.
        router = Router("me")
        feed(router, "p", {})
        feed(router, "a", {"x": RouteAdvert(("x",))})
        router.exports.export_full("p")
        router.take_notices("a", [("q", "r", 5)], now=10.0)
        return router

    def test_news_told_when_a_path_across_comes_later(self) -> None:
        """News no path told to a neighbour crossed is told once one does, and once only."""
        router = self._news_no_path_crosses()
        news = router.news
        self.assertEqual(news.notices_for("p"), ())
        self.assertEqual(news.notices_for("p"), ())
        feed(router, "a", {"z": RouteAdvert(("z",))})
        router.exports.export_changes("p", {"z"})
        self.assertEqual(news.notices_for("p"), ())
        # Said after the news, this path is used, and told: p now holds one across q-r.
        feed(router, "a", {"y": RouteAdvert(("q", "r", "y"))})
        self.assertEqual(router.route("y").path, ("a", "q", "r", "y"))  # type: ignore[union-attr]
        router.exports.export_changes("p", {"y"})
        self.assertEqual(news.notices_for("p"), (("q", "r", 5),))
        self.assertEqual(news.notices_for("p"), ())

    def test_news_for_a_neighbour_told_everything_again(self) -> None:
        """A neighbour that gets the whole table again is looked through again, whole."""
        router = self._news_no_path_crosses()
        self.assertEqual(router.news.notices_for("p"), ())
        feed(router, "a", {"y": RouteAdvert(("q", "r", "y"))})
        router.exports.export_full("p")
        self.assertEqual(router.news.notices_for("p"), (("q", "r", 5),))

    def test_own_notice_taken_back(self) -> None:
        """A node whose lost link opens again while its loss is news tells that it is back."""
        net, (a, b, c) = line(self, 3)
        net.flood()
        net.cut(b, c)
        self.assertEqual([n[:2] for n in net[b].news.notices], [(b, c)])
        net.connect(b, c)
        self.assertEqual(net[b].news.notices, {})
        self.assertEqual(list(net[b].news.ups), [(b, c)])
        self.assertEqual([n[:2] for n in net[b].news.ups_for(a)], [(b, c)])
        self.assertEqual(net[b].news.ups_for(a), ())  # told once


class IncrementalTests(SynchronousTestCase):
    """After the first exchange only changes travel, and only to whom they concern."""

    def test_steady_state_sends_nothing(self) -> None:
        """Once converged, further rounds send no advert at all."""
        net, _ = ring(self, 6)
        net.flood()
        before = len(net.sent)
        self.assertFalse(net.round())
        self.assertEqual(len(net.sent), before)

    def test_cut_touches_routes_that_used_it(self) -> None:
        """
        After a cut, only nodes whose routes crossed the lost link send
        anything, only about those routes, and far less than their tables.
        """
        grid = {(x, y): f"g{x}{y}" for x in range(5) for y in range(5)}
        links = [(grid[x, y], grid[x + 1, y]) for x in range(4) for y in range(5)]
        links += [(grid[x, y], grid[x, y + 1]) for x in range(5) for y in range(4)]
        net = Network(self, grid.values(), links)
        net.flood()
        table_entries = net.entries_sent()
        lost = [("g22", "g23", 0)]
        crossed = {
            node: {d for d, route in router.routes().items() if crosses((node, *route.path), lost)}
            for node, router in net.routers.items()
        }
        before = len(net.sent)
        net.cut("g22", "g23")
        net.flood()
        net.assert_converged()
        cut_entries = 0
        for sender, _, sync in net.sent[before:]:
            said = {*(sync.routes or {}), *sync.withdrawn}
            cut_entries += len(said)
            self.assertLessEqual(said, crossed[sender], sender)
        self.assertGreater(cut_entries, 0)
        self.assertLess(cut_entries * 5, table_entries)

    def test_references_on_the_wire(self) -> None:
        """A whole table refers to parents: most entries carry no path."""
        net, nodes = line(self, 6)
        net.flood()
        full = [a for s, r, a in net.sent if a.full and s == nodes[0]]
        entries = [e for _, _, a in net.sent for e in (a.routes or {}).values()]
        with_path = [e for e in entries if e.path is not None and len(e.path) > 1]
        self.assertLessEqual(len(with_path), 1)
        self.assertTrue(full)


class AdvertTests(SynchronousTestCase):
    """What a router takes from adverts and what it sends."""

    def test_direct_route_before_any_advert(self) -> None:
        """A neighbour that has not advertised yet is reachable in 1 hop with no known servers."""
        router = Router("me")
        self.assertTrue(router.link_up("b"))
        self.assertEqual(router.route("b"), Route("b", ("b",), NO_SERVERS, 1))
        self.assertEqual(router.next_hop("b"), "b")
        self.assertFalse(router.is_router("b"))
        self.assertFalse(router.advertises_routes())

    def test_original_node_without_routes(self) -> None:
        """An original node (servers only, no route exchange) still gets a direct route."""
        router = Router("me")
        router.link_up("orig")
        sync = RegistrySync.from_data({"servers": {"calc": {"methods": ["add", "mul"]}}})
        self.assertIsNone(sync.seq)
        assert sync.servers is not None
        self.assertTrue(router.neighbour_servers("orig", sync.servers))
        self.assertEqual(
            router.route("orig"), Route("orig", ("orig",), {"calc": ("add", "mul")}, 1)
        )
        self.assertEqual(list(router.routes()), ["orig"])
        self.assertFalse(router.advert_from("orig", {"z": RouteAdvert(("z",))}))
        self.assertEqual(list(router.routes()), ["orig"])

    def test_original_node_in_network(self) -> None:
        """An original node in the middle of a line is reachable but routes nothing through it."""
        a, b, c = names("n", 3)
        net = Network(self, [a, b, c], [(a, b), (b, c)])
        for x in (a, c):
            net[x]._ribs.pop(b)  # b never numbers its adverts: no route exchange with it
        net._new = {(x, y) for x, y in net._new if y != b and x != b}
        net.flood()
        self.assertEqual(path_summary(net[a]), {b: (b, 1)})
        self.assertEqual(dict(net[a].route(b).servers), servers_of(b))  # type: ignore[union-attr]
        self.assertEqual(path_summary(net[c]), {b: (b, 1)})

    def test_split_horizon(self) -> None:
        """What a neighbour N hears has every route except those through N."""
        net, (a, b, c, d) = line(self, 4)
        net.flood()
        want = net[b].exports.wanted_by(a)
        self.assertEqual({x for x in (a, b, c, d) if want(x) is not None}, {c, d})
        self.assertEqual(want(d)[:2], ((c, d), 2))  # type: ignore[index]
        self.assertEqual(dict(want(d)[2]), servers_of(d))  # type: ignore[index]
        wanted_by_c = net[b].exports.wanted_by(c)
        self.assertEqual({x for x in (a, b, c, d) if wanted_by_c(x) is not None}, {a})

    def test_table_survives_the_wire(self) -> None:
        """A whole table encoded to JSON and decoded again builds the same table as the original."""
        net, (a, b, _, _) = line(self, 4)
        net.flood()
        sync = advert(net[b].exports.export_full(a))
        fresh = Router(a)
        fresh.link_up(b)
        fresh.neighbour_servers(b, server_table(servers_of(b).items()))
        rib = fresh.start_routing(b)
        assert rib is not None
        rib.apply(sync.routes)
        fresh.replace(b, fresh.new_rib(b))  # an empty table first: nothing
        staged = fresh.new_rib(b)
        staged.apply(sync.routes)
        fresh.replace(b, staged)
        self.assertEqual(fresh.table(), net[a].table())

    def test_advert_from_unknown_peer_ignored(self) -> None:
        """An advert from a peer not linked, or not routing, changes nothing and is not kept."""
        router = Router("me")
        router.link_up("b")
        before = router.table()
        self.assertFalse(router.advert_from("x", {"z": RouteAdvert(("z",))}))
        self.assertFalse(router.advert_from("b", {"z": RouteAdvert(("z",))}))
        self.assertIsNone(router.start_routing("x"))
        self.assertEqual(router.table(), before)
        router.link_up("x")
        router.start_routing("x")
        self.assertIsNone(router.route("z"))

    def test_same_advert_twice(self) -> None:
        """Repeating an advert reports no change; a withdrawal does."""
        router = Router("me")
        self.assertTrue(feed(router, "b", {"z": RouteAdvert(("z",))}))
        self.assertFalse(feed(router, "b", {"z": RouteAdvert(("z",))}))
        self.assertTrue(feed(router, "b", {}, "z"))
        self.assertIsNone(router.route("z"))

    def test_loops_rejected(self) -> None:
        """Paths through this node or the advertiser, with a repeat, or to this node are ignored."""
        router = Router("me")
        feed(
            router,
            "b",
            {
                "me": RouteAdvert(("me",)),
                "x": RouteAdvert(("me", "x")),
                "y": RouteAdvert(("q", "b", "y")),
                "w": RouteAdvert(("p", "q", "p", "w")),
                "ok": RouteAdvert(("p", "ok")),
            },
        )
        self.assertEqual(set(router.routes()), {"b", "ok"})
        self.assertEqual(router.route("ok").path, ("b", "p", "ok"))  # type: ignore[union-attr]

    def test_max_hops_boundary(self) -> None:
        """A route of exactly MAX_HOPS hops is kept; one hop more is dropped."""
        router = Router("me")
        longest = tuple(f"h{i}" for i in range(MAX_HOPS - 1))
        too_long = tuple(f"k{i}" for i in range(MAX_HOPS))
        feed(router, "b", {longest[-1]: RouteAdvert(longest), too_long[-1]: RouteAdvert(too_long)})
        self.assertEqual(router.route(longest[-1]).hops, MAX_HOPS)  # type: ignore[union-attr]
        self.assertIsNone(router.route(too_long[-1]))
        self.assertIsNone(
            router.exports.wanted_by("c")(longest[-1])
        )  # it would be one too long there

    def test_shorter_route_replaces_longer(self) -> None:
        """A neighbour's new, shorter path to a destination replaces the longer one."""
        router = Router("me")
        feed(router, "c", {"z": RouteAdvert(("q", "r", "z"))})
        self.assertEqual(router.route("z").hops, 4)  # type: ignore[union-attr]
        self.assertTrue(feed(router, "b", {"z": RouteAdvert(("z",))}))
        self.assertEqual(router.route("z").path, ("b", "z"))  # type: ignore[union-attr]

    def test_neighbour_always_direct(self) -> None:
        """A linked neighbour is reached over its link even when a cheaper path is offered."""
        router = Router("me")
        router.link_up("b", cost=50)
        feed(router, "c", {"b": RouteAdvert(("b",))})
        self.assertEqual(router.route("b"), Route("b", ("b",), NO_SERVERS, 50))


class EventTests(SynchronousTestCase):
    """Return values of link events, and the table's shape."""

    def test_link_up_return(self) -> None:
        """link_up reports a change for a new neighbour and none for one already linked."""
        router = Router("me")
        self.assertTrue(router.link_up("b"))
        feed(router, "b", {"z": RouteAdvert(("z",))})
        self.assertFalse(router.link_up("b"))
        self.assertEqual(set(router.routes()), {"b", "z"})

    def test_link_down_return(self) -> None:
        """link_down reports a change when routes go; none for unknown neighbours."""
        router = Router("me")
        router.link_up("b")
        router.link_up("c")
        self.assertFalse(router.link_down("stranger"))
        self.assertTrue(router.link_down("c"))
        self.assertTrue(router.link_down("b"))
        self.assertFalse(router.link_down("b"))
        self.assertEqual(router.routes(), {})
        self.assertFalse(router.is_linked("b"))

    def test_link_down_forgets_advert(self) -> None:
        """A neighbour that comes back after link_down starts without its old advert."""
        router = Router("me")
        feed(router, "b", {"z": RouteAdvert(("z",))})
        router.link_down("b")
        router.link_up("b")
        self.assertEqual(
            router.table(), {"b": {"next_hop": "b", "hops": 1, "metric": 1, "path": ["b"]}}
        )

    def test_link_down_notice(self) -> None:
        """A lost link, with the time, becomes a notice for the node's next adverts."""
        router = Router("me")
        feed(router, "b", {"z": RouteAdvert(("z",))})
        router.link_down("b", now=12.5)
        self.assertEqual(router.news.notices, {("me", "b", 12500): 12.5 + NOTICE_HOLD})
        self.assertEqual(router.next_notice_expiry(), 12.5 + NOTICE_HOLD)

    def test_table_shape(self) -> None:
        """table() maps sorted destinations to next hop, hops, metric and path."""
        net, (a, b, c) = line(self, 3)
        net.flood()
        table = net[c].table()
        self.assertEqual(list(table), [a, b])
        self.assertEqual(
            table,
            {
                a: {"next_hop": b, "hops": 2, "metric": 2, "path": [b, a]},
                b: {"next_hop": b, "hops": 1, "metric": 1, "path": [b]},
            },
        )
        self.assertEqual(json.loads(json.dumps(table)), table)

    def test_empty_router(self) -> None:
        """A router with no links has no routes and no next hops."""
        router = Router("me")
        self.assertEqual(router.table(), {})
        self.assertIsNone(router.route("x"))
        self.assertIsNone(router.next_hop("x"))
        self.assertEqual(via(router, "x"), [])


class LatencyTests(SynchronousTestCase):
    """Routes by metric: slow links cost more; hysteresis keeps routes still."""

    def diamond(self) -> Router:
        """
        'me' linked to a and b; a offers z in 2 hops, b in 3 (metric = hops).
        """
        router = Router("me")
        feed(router, "a", {"z": RouteAdvert(("x", "z"))})
        feed(router, "b", {"z": RouteAdvert(("y", "w", "z"))})
        return router

    def test_metric_adds_link_cost(self) -> None:
        """A route's metric is its first link's cost plus what the neighbour said."""
        router = self.diamond()
        self.assertEqual(router.route("z"), Route("z", ("a", "x", "z"), NO_SERVERS, 3))
        router.set_cost("a", 4)
        self.assertEqual(router.route("a").metric, 4)  # type: ignore[union-attr]

    def test_slow_link_routed_around(self) -> None:
        """A link that turns slow is left for a path that is clearly faster, though longer."""
        router = self.diamond()
        self.assertTrue(router.set_cost("a", 9))
        self.assertEqual(router.next_hop("z"), "b")
        self.assertEqual(router.table()["z"]["metric"], 4)
        self.assertEqual(router.table()["z"]["hops"], 4)
        self.assertTrue(router.set_cost("a", 1))
        self.assertEqual(router.next_hop("z"), "a")

    def test_small_gain_ignored(self) -> None:
        """A candidate less than 10% cheaper with no fewer hops does not move the route."""
        router = Router("me")
        feed(router, "a", {"z": RouteAdvert(("x", "z"), None, None, 20)})
        self.assertEqual(router.route("z").metric, 21)  # type: ignore[union-attr]
        feed(router, "b", {"z": RouteAdvert(("y", "z"), None, None, 19)})
        self.assertEqual(router.next_hop("z"), "a")
        feed(router, "b", {"z": RouteAdvert(("y", "z"), None, None, 17)})
        self.assertEqual(router.next_hop("z"), "b")

    def test_fewer_hops_wins_at_equal_metric(self) -> None:
        """A candidate with fewer hops and no higher metric replaces the route in use."""
        router = Router("me")
        feed(router, "a", {"z": RouteAdvert(("x", "y", "z"), None, None, 20)})
        feed(router, "b", {"z": RouteAdvert(("z",), None, None, 20)})
        self.assertEqual(router.route("z").path, ("b", "z"))  # type: ignore[union-attr]

    def test_choice_depends_on_incumbent_only_within_margin(self) -> None:
        """Order of arrival decides between routes within the margin, never beyond it."""
        first = Router("me")
        feed(first, "a", {"z": RouteAdvert(("x", "z"), None, None, 20)})
        feed(first, "b", {"z": RouteAdvert(("y", "z"), None, None, 19)})
        second = Router("me")
        feed(second, "b", {"z": RouteAdvert(("y", "z"), None, None, 19)})
        feed(second, "a", {"z": RouteAdvert(("x", "z"), None, None, 20)})
        self.assertEqual((first.next_hop("z"), second.next_hop("z")), ("a", "b"))

    def test_no_flapping_on_wobbling_costs(self) -> None:
        """A link cost that wobbles a little never moves the route between two near-equal paths."""
        router = Router("me")
        feed(router, "b", {"z": RouteAdvert(("y", "z"), None, None, 19)})
        feed(router, "c", {"z": RouteAdvert(("x", "z"), None, None, 19)})
        self.assertEqual(router.next_hop("z"), "b")
        for cost in [2, 1, 2, 3, 2, 1, 2]:
            router.set_cost("b", cost)
            self.assertEqual(router.next_hop("z"), "b", cost)
        router.set_cost("b", 4)  # 22 against 20: clearly worse
        self.assertEqual(router.next_hop("z"), "c")

    def test_metric_travels(self) -> None:
        """A far node's metric includes the slow link two hops away."""
        net, (a, _b, c, d) = line(self, 4)
        net.flood()
        net[c].set_cost(d, 17)
        net[d].set_cost(c, 17)
        net.flood()
        self.assertEqual(net[a].route(d).metric, 19)  # type: ignore[union-attr]
        self.assertEqual(net[d].route(a).metric, 19)  # type: ignore[union-attr]


class BoundTests(SynchronousTestCase):
    """The table is bounded in total and per neighbour."""

    def test_per_neighbour(self) -> None:
        """
        One neighbour's adverts hold at most half of max_routes; the rest
        are counted, and another neighbour still finds room.
        """
        router = Router("me", max_routes=6)
        feed(router, "b", {f"n{i}": RouteAdvert((f"n{i}",)) for i in range(5)})
        self.assertEqual(router.refused_from("b"), 2)
        self.assertEqual(len(router.routes()), 4)  # b and three of them
        feed(router, "c", {"m1": RouteAdvert(("m1",))})
        self.assertEqual(set(router.routes()) - {"b", "n0", "n1", "n2", "n3", "n4"}, {"c", "m1"})

    def test_neighbour_always_routed(self) -> None:
        """A direct neighbour has its route even when the table is full."""
        router = Router("me", max_routes=4)
        feed(router, "b", {"n1": RouteAdvert(("n1",)), "n2": RouteAdvert(("n2",))})
        feed(router, "c", {"n3": RouteAdvert(("n3",))})
        self.assertEqual(len(router.routes()), 4)
        router.link_up("d")
        self.assertEqual(router.route("d").path, ("d",))

    def test_total(self) -> None:
        """The whole table holds at most max_routes destinations, and takes more as room frees."""
        router = Router("me", max_routes=4)
        feed(router, "b", {"n1": RouteAdvert(("n1",)), "n2": RouteAdvert(("n2",))})
        feed(router, "c", {"n3": RouteAdvert(("n3",)), "n4": RouteAdvert(("n4",))})
        self.assertEqual(len(router.routes()), 4)
        self.assertEqual(router.refused, 2)
        self.assertIn(router.route("n3"), [None])
        router.link_down("b")
        self.assertEqual(set(router.routes()), {"c", "n3", "n4"})


class AcceptPathTests(SynchronousTestCase):
    """The pluggable test of learned paths (for PKI mode)."""

    def test_consulted_with_neighbour_and_path(self) -> None:
        """Every path that could be chosen is shown, whole from this node, with its advertiser."""
        seen: list[tuple[str, tuple[str, ...]]] = []

        def accept(neighbour: str, path: tuple[str, ...]) -> bool:
            seen.append((neighbour, path))
            return True

        router = Router("me", accept)
        feed(router, "a", {"z": RouteAdvert(("x", "y", "z"))})
        feed(router, "b", {"z": RouteAdvert(("z",))})
        self.assertIn(("a", ("a", "x", "y", "z")), seen)
        self.assertIn(("b", ("b", "z")), seen)
        self.assertEqual(router.next_hop("z"), "b")

    def test_refused_path_unused(self) -> None:
        """A path the test refuses is not used; reconsider applies a change of its mind."""
        refused = {("a", "x")}

        def accept(neighbour: str, path: tuple[str, ...]) -> bool:
            return not any((p, q) in refused for p, q in pairwise(path))

        router = Router("me", accept)
        feed(router, "a", {"z": RouteAdvert(("x", "z"))})
        feed(router, "b", {"z": RouteAdvert(("y", "w", "z"))})
        self.assertEqual(router.next_hop("z"), "b")
        refused.clear()
        self.assertTrue(router.reconsider())
        self.assertEqual(router.next_hop("z"), "a")
        refused.add(("b", "y"))
        refused.add(("a", "x"))
        self.assertTrue(router.reconsider(["z"]))
        self.assertIsNone(router.route("z"))


class HopBudgetTests(SynchronousTestCase):
    """The TTL of messages between relaytx nodes."""

    def test_budget(self) -> None:
        """The budget covers the route plus a margin, at least the default, at most MAX_HOPS."""
        self.assertEqual(hop_budget(1), DEFAULT_TTL)
        self.assertEqual(hop_budget(DEFAULT_TTL - HOP_MARGIN), DEFAULT_TTL)
        self.assertEqual(hop_budget(12), 12 + HOP_MARGIN)
        self.assertEqual(hop_budget(MAX_HOPS - 1), MAX_HOPS)
        self.assertEqual(hop_budget(MAX_HOPS), MAX_HOPS)
