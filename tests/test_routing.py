# -*- test-case-name: tests.test_routing -*-
"""
Tests for L{relaytx._routing}: the path-vector routing table, on small
networks simulated in memory (one L{Router} per node, adverts delivered in
synchronous rounds until nothing changes).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from itertools import pairwise

from twisted.trial.unittest import SynchronousTestCase

from relaytx._routing import MAX_HOPS, Route, Router
from relaytx.wire import RegistrySync, RouteAdvert

# More rounds than any test network needs: a flood still busy after this
# many is not converging (count-to-infinity or flapping).
ROUND_LIMIT = 100


def servers_of(node: str) -> dict[str, tuple[str, ...]]:
    """The servers node C{node} hosts in these tests: one, named after it."""
    return {f"svc-{node}": ("echo", "ping")}


class Network:
    """
    One L{Router} per node over a set of undirected links, with no I/O.

    A round snapshots the advert every node would send to every neighbour
    (L{Router.advert_for}) and then delivers them all (L{Router.advert_from});
    L{flood} repeats rounds until one changes no table.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        nodes: Iterable[str],
        links: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.test = test
        self.routers = {node: Router(node) for node in nodes}
        self.servers = {node: servers_of(node) for node in self.routers}
        self.links: set[frozenset[str]] = set()
        for a, b in links:
            self.connect(a, b)

    def __getitem__(self, node: str) -> Router:
        return self.routers[node]

    def connect(self, a: str, b: str) -> tuple[bool, bool]:
        """Open the link a-b at both ends; returns each end's link_up result."""
        self.links.add(frozenset((a, b)))
        return self.routers[a].link_up(b), self.routers[b].link_up(a)

    def cut(self, a: str, b: str) -> tuple[bool, bool]:
        """Lose the link a-b at both ends; returns each end's link_down result."""
        self.links.discard(frozenset((a, b)))
        return self.routers[a].link_down(b), self.routers[b].link_down(a)

    def neighbours(self, node: str) -> set[str]:
        return {peer for link in self.links if node in link for peer in link - {node}}

    def round(self, reverse: bool = False) -> bool:
        """
        One round of adverts on every link, both ways.

        :param reverse: deliver in the opposite order (for order-independence).
        :returns: whether any table changed.
        """
        adverts = []
        for link in sorted(sorted(link) for link in self.links):
            a, b = link
            adverts.append((a, b, self.routers[a].advert_for(b, self.servers[a])))
            adverts.append((b, a, self.routers[b].advert_for(a, self.servers[b])))
        if reverse:
            adverts.reverse()
        changed = False
        for sender, receiver, advert in adverts:
            changed |= self.routers[receiver].advert_from(sender, advert)
        return changed

    def flood(self, reverse: bool = False) -> int:
        """
        Deliver adverts until quiet, checking after every round that no path
        holds a loop.

        :returns: the number of rounds that changed some table (the final,
            quiet round is not counted).
        """
        rounds = 0
        while self.round(reverse):
            rounds += 1
            self.assert_loop_free()
            if rounds > ROUND_LIMIT:
                self.test.fail(f"no convergence after {ROUND_LIMIT} rounds")
        self.assert_loop_free()
        return rounds

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
        Every node's table is exactly the shortest paths over the current
        links, ties broken towards the lowest neighbour id, with each
        destination's own servers.
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
                best_next = min(
                    peer
                    for peer in self.neighbours(node)
                    if everyone[peer].get(destination) == dist[destination] - 1
                )
                self.test.assertEqual(route.next_hop, best_next, f"{node} -> {destination}")
                walk = (node, *route.path)
                for a, b in pairwise(walk):
                    self.test.assertIn(frozenset((a, b)), self.links, f"{node}: path {walk}")
                self.test.assertEqual(route.servers, self.servers[destination])


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


class OriginalRouter(Router):
    """A node of the original design: it advertises its servers but no routes."""

    def advert_for(self, peer_id: str, own_servers: Mapping[str, tuple[str, ...]]) -> RegistrySync:
        return RegistrySync(own_servers, None)


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
        self.assertEqual(net[a].route(c).servers, servers_of(c))  # type: ignore[union-attr]
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
        # A path learned hop by hop needs about one round per hop of the
        # diameter (9), plus one for the servers the first adverts lacked.
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
        self.assertEqual(route.servers, {f"svc-{nodes[5]}": ("echo", "ping")})
        self.assertEqual(net[nodes[2]].table()[nodes[5]]["hops"], 3)

    def test_changed_servers_propagate(self) -> None:
        """When a node's servers change, the far end of the line learns the new set."""
        net, nodes = line(self, 5)
        net.flood()
        net.servers[nodes[4]] = {"billing": ("charge",)}
        self.assertGreater(net.flood(), 0)
        self.assertEqual(net[nodes[0]].route(nodes[4]).servers, {"billing": ("charge",)})  # type: ignore[union-attr]
        net.assert_converged()

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

    def test_tie_break_ignores_event_order(self) -> None:
        """Links opened and adverts delivered in the opposite order give the same tables."""
        net, nodes = ring(self, 6)
        net.flood()
        backwards = Network(self, reversed(nodes))
        for i in reversed(range(6)):
            backwards.connect(nodes[(i + 1) % 6], nodes[i])
        backwards.flood(reverse=True)
        for node in nodes:
            self.assertEqual(backwards[node].table(), net[node].table())
        backwards.assert_converged()

    def test_tie_between_neighbours(self) -> None:
        """Between equally short routes, the neighbour with the lower id wins."""
        router = Router("me")
        for peer in ("d", "c", "b"):
            router.link_up(peer)
            router.advert_from(peer, RegistrySync({}, {"z": RouteAdvert(("z",))}))
        self.assertEqual(router.next_hop("z"), "b")
        router.link_down("b")
        self.assertEqual(router.next_hop("z"), "c")

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
        self.assertLessEqual(rounds, 3)
        net.assert_converged()

    def test_link_comes_back(self) -> None:
        """A lost link that opens again restores the original shortest paths."""
        net, (r0, r1, r2, r3, r4) = ring(self, 5)
        net.flood()
        before = {node: net[node].table() for node in (r0, r1, r2, r3, r4)}
        net.cut(r0, r1)
        net.flood()
        self.assertEqual(net.connect(r0, r1), (True, True))
        net.flood()
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


class AdvertTests(SynchronousTestCase):
    """What a router takes from adverts and what it sends."""

    def test_direct_route_before_any_advert(self) -> None:
        """A neighbour that has not advertised yet is reachable in 1 hop with no known servers."""
        router = Router("me")
        self.assertTrue(router.link_up("b"))
        self.assertEqual(router.route("b"), Route("b", ("b",), {}))
        self.assertEqual(router.next_hop("b"), "b")

    def test_original_node_without_routes(self) -> None:
        """An original node (routes=None) still gets a direct route with its servers."""
        router = Router("me")
        router.link_up("orig")
        sync = RegistrySync.from_data({"servers": {"calc": {"methods": ["add", "mul"]}}})
        self.assertIsNone(sync.routes)
        self.assertTrue(router.advert_from("orig", sync))
        self.assertEqual(router.route("orig"), Route("orig", ("orig",), {"calc": ("add", "mul")}))
        self.assertEqual(list(router.routes()), ["orig"])

    def test_original_node_in_network(self) -> None:
        """An original node in the middle of a line is reachable but routes nothing through it."""
        a, b, c = names("n", 3)
        net = Network(self, [a, b, c])
        net.routers[b] = OriginalRouter(b)
        net.connect(a, b)
        net.connect(b, c)
        net.flood()
        self.assertEqual(path_summary(net[a]), {b: (b, 1)})
        self.assertEqual(net[a].route(b).servers, servers_of(b))  # type: ignore[union-attr]
        self.assertEqual(path_summary(net[c]), {b: (b, 1)})

    def test_split_horizon(self) -> None:
        """An advert to N has this node's servers and every route whose next hop is not N."""
        net, (a, b, c, d) = line(self, 4)
        net.flood()
        to_a = net[b].advert_for(a, {"own": ("m",)})
        self.assertEqual(to_a.servers, {"own": ("m",)})
        self.assertEqual(set(to_a.routes or {}), {c, d})
        self.assertEqual(to_a.routes[d], RouteAdvert((c, d), servers_of(d)))  # type: ignore[index]
        to_c = net[b].advert_for(c, {})
        self.assertEqual(set(to_c.routes or {}), {a})
        self.assertEqual(to_c.routes[a], RouteAdvert((a,), servers_of(a)))  # type: ignore[index]

    def test_advert_for_stranger(self) -> None:
        """An advert for a node that is not a neighbour carries every route."""
        net, (a, b, c) = line(self, 3)
        net.flood()
        self.assertEqual(set(net[b].advert_for("elsewhere", {}).routes or {}), {a, c})

    def test_advert_survives_the_wire(self) -> None:
        """An advert encoded to JSON and decoded again builds the same table as the original."""
        net, (a, b, _, _) = line(self, 4)
        net.flood()
        advert = net[b].advert_for(a, servers_of(b))
        decoded = RegistrySync.from_data(json.loads(json.dumps(advert.to_data())))
        fresh = Router(a)
        fresh.link_up(b)
        fresh.advert_from(b, decoded)
        self.assertEqual(fresh.table(), net[a].table())

    def test_advert_from_unknown_peer_ignored(self) -> None:
        """An advert from a peer that is not linked changes nothing and is not kept for later."""
        router = Router("me")
        router.link_up("b")
        before = router.table()
        sync = RegistrySync(servers_of("x"), {"z": RouteAdvert(("z",))})
        self.assertFalse(router.advert_from("x", sync))
        self.assertEqual(router.table(), before)
        router.link_up("x")
        self.assertEqual(router.route("x").servers, {})  # type: ignore[union-attr]
        self.assertIsNone(router.route("z"))

    def test_same_advert_twice(self) -> None:
        """Repeating an advert reports no change; a different one does."""
        router = Router("me")
        router.link_up("b")
        sync = RegistrySync(servers_of("b"), {"z": RouteAdvert(("z",))})
        self.assertTrue(router.advert_from("b", sync))
        self.assertFalse(router.advert_from("b", sync))
        self.assertTrue(router.advert_from("b", RegistrySync(servers_of("b"), {})))
        self.assertIsNone(router.route("z"))

    def test_loops_rejected(self) -> None:
        """Paths through this node or the advertiser, with a repeat, or to this node are ignored."""
        router = Router("me")
        router.link_up("b")
        router.advert_from(
            "b",
            RegistrySync(
                {},
                {
                    "me": RouteAdvert(("me",)),
                    "x": RouteAdvert(("me", "x")),
                    "y": RouteAdvert(("q", "b", "y")),
                    "w": RouteAdvert(("p", "q", "p", "w")),
                    "ok": RouteAdvert(("p", "ok")),
                },
            ),
        )
        self.assertEqual(set(router.routes()), {"b", "ok"})
        self.assertEqual(router.route("ok").path, ("b", "p", "ok"))  # type: ignore[union-attr]

    def test_max_hops_boundary(self) -> None:
        """A route of exactly MAX_HOPS hops is kept; one hop more is dropped."""
        router = Router("me")
        router.link_up("b")
        longest = tuple(f"h{i}" for i in range(MAX_HOPS - 1))
        too_long = tuple(f"k{i}" for i in range(MAX_HOPS))
        router.advert_from(
            "b",
            RegistrySync(
                {}, {longest[-1]: RouteAdvert(longest), too_long[-1]: RouteAdvert(too_long)}
            ),
        )
        self.assertEqual(router.route(longest[-1]).hops, MAX_HOPS)  # type: ignore[union-attr]
        self.assertIsNone(router.route(too_long[-1]))

    def test_shorter_route_replaces_longer(self) -> None:
        """A neighbour's new, shorter path to a destination replaces the longer one."""
        router = Router("me")
        router.link_up("b")
        router.link_up("c")
        router.advert_from("c", RegistrySync({}, {"z": RouteAdvert(("q", "r", "z"))}))
        self.assertEqual(router.route("z").hops, 4)  # type: ignore[union-attr]
        self.assertTrue(router.advert_from("b", RegistrySync({}, {"z": RouteAdvert(("z",))})))
        self.assertEqual(router.route("z").path, ("b", "z"))  # type: ignore[union-attr]


class EventTests(SynchronousTestCase):
    """Return values of link events, and the table's shape."""

    def test_link_up_return(self) -> None:
        """link_up reports a change for a new neighbour and none for one already linked."""
        router = Router("me")
        self.assertTrue(router.link_up("b"))
        router.advert_from("b", RegistrySync(servers_of("b"), {"z": RouteAdvert(("z",))}))
        self.assertFalse(router.link_up("b"))
        self.assertEqual(set(router.routes()), {"b", "z"})

    def test_link_down_return(self) -> None:
        """link_down reports a change when routes go; none for unknown or routeless neighbours."""
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
        router.link_up("b")
        router.advert_from("b", RegistrySync(servers_of("b"), {"z": RouteAdvert(("z",))}))
        router.link_down("b")
        router.link_up("b")
        self.assertEqual(
            router.table(), {"b": {"next_hop": "b", "hops": 1, "metric": 1, "path": ["b"]}}
        )

    def test_table_shape(self) -> None:
        """table() maps sorted destinations to next hop, hops, metric (= hops) and path."""
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
