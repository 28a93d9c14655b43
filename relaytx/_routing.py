# -*- test-case-name: tests.test_routing -*-
"""
The routing table: which neighbour to hand a message to so it reaches a
node, and which servers every reachable node hosts.

The algorithm is a B{path vector}, the idea behind BGP, over the links the
mesh has:

  - Each node advertises to each neighbour, in C{registry_sync}, its own
    servers and, for every node it can reach, the path it uses (the nodes
    from itself to the destination) and that destination's servers.
  - A node keeps the latest advert of each linked neighbour. A route to D
    via neighbour N is C{[N] + N's path to D}; a path that already contains
    this node (or any node twice) is a loop and is ignored. This is what
    makes count-to-infinity impossible: a stale route can never come back
    through the node it would loop through, unlike a distance vector's bare
    hop counts.
  - The best route is the shortest path (hops); ties go to the neighbour
    with the lower node id. The choice is a pure function of the adverts,
    so every node decides the same way and nothing flaps (a tie broken by
    measured RTTs, which change at every pong, would flip equal paths and
    send new tables across the mesh at each flip).
  - Split horizon: a node does not advertise to N the routes whose next hop
    is N (N would reject them as loops anyway, so this only saves bytes).
  - Whenever a link comes up or goes down, or a neighbour advertises
    something new, the destinations it can affect are decided again; if
    what this node advertises changed, it sends new adverts (the mesh
    coalesces them).

Path hunting after a failure is bounded by the number of distinct loop-free
paths and ends within a few advert rounds. A path longer than C{MAX_HOPS}
is dropped, which also bounds how far a message can be routed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen

from relaytx.wire import RegistrySync, RouteAdvert

MAX_HOPS = 32


@frozen
class Route:
    """
    The best known way to C{destination}.

    @ivar path: the nodes after this one up to and including the
        destination; C{path[0]} is the next hop.
    @ivar servers: the destination's servers and their methods.
    """

    destination: str
    path: tuple[str, ...]
    servers: Mapping[str, tuple[str, ...]]

    @property
    def next_hop(self) -> str:
        return self.path[0]

    @property
    def hops(self) -> int:
        return len(self.path)


class _Neighbour:
    __slots__ = ("advert",)

    def __init__(self) -> None:
        self.advert: RegistrySync | None = None


class Router:
    """
    The routing table of node C{node_id}. Pure bookkeeping: no I/O, no clock.

    Callers report link events (L{link_up}, L{link_down}) and adverts
    (L{advert_from}); each returns whether the table changed. Each
    event re-decides only the destinations it can affect (an index records
    which neighbours advertise which destination), so a node with thousands
    of links pays per event for what changed, not for the whole table.
    """

    def __init__(
        self,
        node_id: str,
        accept_path: Callable[[str, tuple[str, ...]], bool] | None = None,
    ) -> None:
        """
        :param accept_path: decides whether a path a neighbour advertised
            may be used (called with the neighbour and the path after it);
            every path is accepted when C{None}. PKI mode refuses paths whose
            adjacencies are not declared by both ends.
        """
        self.node_id = node_id
        self._accept_path = accept_path
        self._neighbours: dict[str, _Neighbour] = {}
        self._routes: dict[str, Route] = {}
        #: destination -> the neighbours whose latest advert reaches it
        self._providers: dict[str, set[str]] = {}
        #: the neighbours that advertise routes (relaytx nodes, registry on)
        self._routers: set[str] = set()

    # Events.

    def link_up(self, peer_id: str) -> bool:
        """A link to C{peer_id} opened."""
        if peer_id in self._neighbours:
            return False
        self._neighbours[peer_id] = _Neighbour()
        return self._update((peer_id,))

    def link_down(self, peer_id: str) -> bool:
        """The link to C{peer_id} closed; forget its adverts."""
        neighbour = self._neighbours.pop(peer_id, None)
        if neighbour is None:
            return False
        advertised = self._advertised(neighbour)
        self._index(peer_id, advertised, ())
        self._routers.discard(peer_id)
        return self._update((peer_id, *advertised))

    def advert_from(self, peer_id: str, advert: RegistrySync) -> bool:
        """
        Take C{peer_id}'s latest advert, replacing its previous one.
        """
        neighbour = self._neighbours.get(peer_id)
        if neighbour is None:
            return False
        before = self._advertised(neighbour)
        neighbour.advert = advert
        after = self._advertised(neighbour)
        self._index(peer_id, before, after)
        if advert.routes is not None:
            self._routers.add(peer_id)
        else:
            self._routers.discard(peer_id)
        return self._update({peer_id, *before, *after})

    def reconsider(self) -> bool:
        """
        Decide every destination again (what C{accept_path} accepts has
        changed).

        :returns: whether the table changed.
        """
        return self._update({*self._providers, *self._neighbours, *self._routes})

    # Queries.

    def route(self, destination: str) -> Route | None:
        """:returns: the best route to C{destination}, or C{None}."""
        return self._routes.get(destination)

    def next_hop(self, destination: str) -> str | None:
        """:returns: the neighbour to send to for C{destination}, or C{None}."""
        route = self._routes.get(destination)
        return None if route is None else route.path[0]

    def routes(self) -> Mapping[str, Route]:
        """:returns: every reachable destination's best route."""
        return self._routes

    def is_linked(self, peer_id: str) -> bool:
        """:returns: whether C{peer_id} is a linked neighbour."""
        return peer_id in self._neighbours

    def advertises_routes(self) -> bool:
        """
        :returns: whether every neighbour has advertised routes: the table
            then knows every node reachable at all, so flooding a message
            would find nothing more.
        """
        return all(
            n.advert is not None and n.advert.routes is not None for n in self._neighbours.values()
        )

    def is_router(self, peer_id: str) -> bool:
        """
        :returns: whether neighbour C{peer_id} advertises routes (a relaytx
            node with its registry on), and so wants to hear ours.
        """
        neighbour = self._neighbours.get(peer_id)
        return (
            neighbour is not None
            and neighbour.advert is not None
            and neighbour.advert.routes is not None
        )

    def routers(self) -> set[str]:
        """:returns: the neighbours that advertise routes (see L{is_router})."""
        return set(self._routers)

    def table(self) -> dict[str, dict[str, Any]]:
        """:returns: the table as C{GET /registry/routes} shows it."""
        return {
            dest: {
                "next_hop": route.next_hop,
                "hops": route.hops,
                "metric": route.hops,
                "path": list(route.path),
            }
            for dest, route in sorted(self._routes.items())
        }

    def advert_for(self, peer_id: str, own_servers: Mapping[str, tuple[str, ...]]) -> RegistrySync:
        """
        :returns: what to advertise to neighbour C{peer_id}: this node's
            servers and every route whose next hop is not C{peer_id}.
        """
        return RegistrySync(
            servers=own_servers,
            routes={
                dest: RouteAdvert(route.path, route.servers)
                for dest, route in self._routes.items()
                if route.path[0] != peer_id
            },
        )

    # The computation.

    @staticmethod
    def _advertised(neighbour: _Neighbour) -> tuple[str, ...]:
        advert = neighbour.advert
        if advert is None or advert.routes is None:
            return ()
        return tuple(advert.routes)

    def _index(self, peer_id: str, before: tuple[str, ...], after: tuple[str, ...]) -> None:
        providers = self._providers
        for dest in before:
            holders = providers.get(dest)
            if holders is not None:
                holders.discard(peer_id)
                if not holders:
                    del providers[dest]
        for dest in after:
            providers.setdefault(dest, set()).add(peer_id)

    def _update(self, destinations: Any) -> bool:
        changed = False
        routes = self._routes
        for dest in destinations:
            best = self._best(dest)
            if best is None:
                if routes.pop(dest, None) is not None:
                    changed = True
            elif routes.get(dest) != best:
                routes[dest] = best
                changed = True
        return changed

    def _best(self, dest: str) -> Route | None:
        me = self.node_id
        if dest == me:
            return None
        best: Route | None = None
        best_key: tuple[Any, ...] = ()

        def offer(route: Route) -> None:
            nonlocal best, best_key
            key = (route.hops, route.next_hop)
            if best is None or key < best_key:
                best, best_key = route, key

        neighbours = self._neighbours
        direct = neighbours.get(dest)
        if direct is not None:
            servers = direct.advert.servers if direct.advert is not None else {}
            offer(Route(dest, (dest,), servers))
        for peer_id in self._providers.get(dest, ()):
            advert = neighbours[peer_id].advert
            # The index holds only neighbours whose advert reaches dest.
            assert advert is not None and advert.routes is not None
            learned = advert.routes[dest]
            path = learned.path
            if me in path or peer_id in path:
                continue  # a loop through this node or back to the advertiser
            if len(set(path)) != len(path):
                continue  # a loop further on: a faulty peer's advert
            if len(path) >= MAX_HOPS:
                continue
            if self._accept_path is not None and not self._accept_path(peer_id, path):
                continue
            offer(Route(dest, (peer_id, *path), learned.servers))
        return best
