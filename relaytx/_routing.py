# -*- test-case-name: tests.test_routing -*-
"""
The routing table: which neighbour to hand a message to so it reaches a
node, and which servers every reachable node hosts.

The algorithm is a B{path vector}, the idea behind BGP, over the links the
mesh has:

  - Each node tells each neighbour, in C{registry_sync}, its own servers
    and, for every node it can reach, the path it uses (the nodes from
    itself to the destination), its metric there and that node's servers.
    After a link's first advert only changes travel (L{relaytx._ribs}).
  - A node keeps what each linked neighbour told it (an L{AdjRib}). A route
    to D via neighbour N is C{[N] + N's path to D}; a path that contains
    this node or any node twice is a loop and is ignored. This is what makes
    count-to-infinity impossible: a stale route can never come back through
    the node it would loop through, unlike a distance vector's bare counts.
  - A route's B{metric} adds up its links' costs: one per hop, more for a
    link that is slow (L{relaytx._latency}). The best route has the lowest
    metric, then the fewest hops, then the lowest next hop's id. With equal
    link costs (a LAN, loopback) that is a shortest path.
  - B{Hysteresis}: the route in use stays unless another has fewer hops and
    no higher metric, or a metric at least L{HYSTERESIS} lower. A link whose
    cost moves a little moves no route; link costs themselves move only in
    coarse steps. An equally good route (a pure tie) moves no route either,
    as BGP keeps its older route (RFC 5004): which of equal paths a node
    uses then depends on which it heard first. Moving to the lower id
    instead cost a thousand-node start-up a fifth of its route changes
    (0.32 a destination a node), each told on to every neighbour.
  - Split horizon: nothing is advertised to N along a path through N.
  - B{Lost links.} The node at each end of a lost link makes it news
    (C{down} in its adverts), for the neighbours it had told paths across
    that link. A node that hears it stops using, at once, every path that
    any neighbour gave across that link, until that neighbour says the path
    again (the link is back, or it never used it) or L{NOTICE_HOLD} passes;
    it passes the news on likewise. A link back up while its loss is news is
    news too (C{up}).
  - B{Sequence numbers} (as DSDV's): every node numbers itself (an even
    number, which grows when a link of it fails) and routes to it carry
    that number. When a link fails (not when it is removed on purpose: a
    node that closed it on purpose marks nobody, whether or not the peer
    answered), the node at each end marks its peer unreachable at the
    peer's next (odd) number, and its withdrawals carry the mark
    (C{lost}). A path numbered below a mark is stale, so a dead node's
    routes end everywhere in one pass, with no hunting through the stale
    paths that still lead to it; paths I{through} it are unused as long as
    it is unreachable. A node that only lost a link has numbered itself
    higher meanwhile, and its routes, with the new number, replace the mark
    as they spread.
  - B{Damping}: a destination re-routed again within L{MRAI} of its last
    re-advert waits for the rest of that time (BGP's minimum route
    advertisement interval). Withdrawals are never held.
  - B{Bounds}: at most C{max_routes} destinations in the table, and half
    of that from any one neighbour (so that none can fill it and leave the
    others no room); further ones are refused and counted. A direct
    neighbour always has its route, full table or not. A path longer than
    L{MAX_HOPS} is dropped, which also bounds how far a message travels.

The router is pure bookkeeping (no I/O, no clock: callers pass the time).
Events re-decide only the destinations they can affect, and every change
is recorded (L{Router.dirty}) for the next advert. L{Router} takes the
events; L{Choice} decides each destination's route; L{Exports} keeps what
each neighbour was told and damps re-adverts; L{relaytx._news.LinkNews}
keeps the news of lost links.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import compress, repeat
from operator import contains
from typing import Any, NamedTuple

from relaytx._news import NOTICE_HOLD as NOTICE_HOLD
from relaytx._news import LinkNews, Notice
from relaytx._ribs import AdjRib, SharedAttributes, Wanted, diff, export
from relaytx.wire import DEFAULT_TTL, NO_SERVERS, RouteAdvert

#: The longest path a route may have, and the most hops a message makes.
MAX_HOPS = 64

#: Hops a message may make beyond its route's, should the route change on the way.
HOP_MARGIN = 4

#: A candidate beats the route in use when its metric is this much lower.
HYSTERESIS = 0.10

#: A destination's route is re-advertised at most once in this many seconds.
MRAI = 0.2

#: How long a mark of an unreachable node is kept, in seconds: long
#: after every stale path to it is gone.
MARK_HOLD = 60.0


class Route(NamedTuple):
    """
    The best known way to C{destination}.

    @ivar path: the nodes after this one up to and including the
        destination; C{path[0]} is the next hop.
    @ivar servers: the destination's servers and their methods.
    @ivar metric: the sum of the link costs along the path.
    @ivar sn: the destination's sequence number the route carries.
    """

    destination: str
    path: tuple[str, ...]
    servers: Mapping[str, tuple[str, ...]]
    metric: int
    sn: int = 0

    @property
    def next_hop(self) -> str:
        return self.path[0]

    @property
    def hops(self) -> int:
        return len(self.path)


def _beats(candidate: tuple[int, int, str], incumbent: tuple[int, int, str]) -> bool:
    # What it takes to replace the route in use (metric, hops, next hop):
    # see the module docstring.
    metric, hops, _ = candidate
    in_metric, in_hops, _ = incumbent
    if hops < in_hops and metric <= in_metric:
        return True
    return metric <= in_metric * (1 - HYSTERESIS)


class Router:
    """
    The routing table of node C{node_id}.

    :param accept_path: consulted for every learned path considered, with
        the neighbour that advertised it and the whole path from this node
        (the neighbour first, the destination last); a path it refuses is
        not used. PKI mode checks adjacencies with it; call L{reconsider}
        when its answers change. By default every loop-free path is used.
    :param max_routes: the most destinations in the table (a direct
        neighbour's route aside), and twice the most that any one
        neighbour's adverts may hold.
    :param hearsay: take a neighbour's word on links and deaths elsewhere
        (news of lost links, marks of unreachable nodes) for the paths every
        neighbour offers. C{False} (PKI mode, where a member cannot speak
        for others): only for the paths that neighbour offers itself, and a
        mark only of a node routed through it, at most at the next number
        (which it could bring about anyway, by dropping what it passes on).

    @ivar dirty: destinations whose route (or servers) changed since they
        were last exported (L{Exports.exported}).
    @ivar rerouted: those of C{dirty} that had a route before and still
        have one, on another path (re-adverts, which L{Exports.ready} damps).
    @ivar news: the lost links this node knows of (L{LinkNews}).
    @ivar exports: what this node tells its routing neighbours (L{Exports}).
    @ivar table: the table as C{GET /registry/routes} shows it (L{Choice.table}).
    """

    def __init__(
        self,
        node_id: str,
        accept_path: Callable[[str, tuple[str, ...]], bool] | None = None,
        max_routes: int = 10_000,
        hearsay: bool = True,
    ) -> None:
        self.node_id = node_id
        self.max_routes = max_routes
        self.hearsay = hearsay
        #: linked neighbours -> the cost of the link
        self._links: dict[str, int] = {}
        #: linked neighbours -> their own servers, and sequence numbers
        self._own_servers: dict[str, Mapping[str, tuple[str, ...]]] = {}
        self._own_sn: dict[str, int] = {}
        #: destination -> (the number it is unreachable at, until when kept)
        self._marks: dict[str, tuple[int, float]] = {}
        #: the highest number a neighbour told this node it was marked
        #: unreachable at (a restarted node's own number must pass it)
        self.marked_at = 0
        #: linked neighbours not told to others yet: they have not said
        #: their servers and number (see L{link_up})
        self._unheard: set[str] = set()
        #: what each routing neighbour told us
        self._ribs: dict[str, AdjRib] = {}
        #: the servers and numbers of those tables and of the mirrors, kept once
        self._attributes = SharedAttributes(max(20_000, 2 * max_routes))
        mirrors: dict[str, AdjRib] = {}
        self.news = LinkNews(node_id, self._ribs, mirrors)
        self._suspects = self.news.suspects
        choice = Choice(
            node_id, accept_path, max_routes, self._links, (self._own_servers, self._own_sn),
            self._ribs, self._marks, self.news,
        )  # fmt: skip
        self._choice = choice
        self._routes = choice.routes
        self.dirty = choice.dirty
        self.rerouted = choice.rerouted
        self.exports = Exports(
            choice, mirrors, self.news, self._unheard, self._attributes, self._links, self._ribs
        )
        self._decide_all = choice.decide_all
        self._decide_from = choice.decide_from
        self._through = choice.through
        self.table = choice.table

    @property
    def refused(self) -> int:
        """Destinations refused for the table's bound, since start."""
        return self._choice.refused

    @property
    def changes(self) -> int:
        """How many times a route changed, since start."""
        return self._choice.changes

    # Link events.

    def link_up(
        self, peer_id: str, cost: int = 1, now: float | None = None, heard: bool = True
    ) -> bool:
        """
        A link to C{peer_id} opened. With C{now}, news of its loss that this
        node still holds is taken back, in this node's next adverts.

        :param heard: C{False} for a relaytx peer, whose first advert (its
            servers and number) comes in a moment: its route is used at
            once but told to no one until then (L{heard}). Told before, it
            would go out with no servers and number 0, and again, to every
            node of the mesh, once they came: at start-up, some 8% of all
            route entries a thousand-node mesh sent.
        :returns: whether the table changed.
        """
        if peer_id in self._links:
            return False
        self._links[peer_id] = cost
        if not heard:
            self._unheard.add(peer_id)
        if now is not None:
            self.news.own_link_up(peer_id, now)
        return self._decide_all((peer_id,))

    def link_down(self, peer_id: str, now: float | None = None, mark: bool = True) -> bool:
        """
        The link to C{peer_id} closed: forget what it said. With C{now},
        the loss becomes news that this node's next adverts carry.

        :param mark: the peer may be gone (the link failed, or the peer
            stopped): mark it unreachable at its next number. Not for a link
            removed on purpose while both ends go on.
        :returns: whether the table changed.
        """
        if self._links.pop(peer_id, None) is None:
            return False
        self._unheard.discard(peer_id)
        self._own_servers.pop(peer_id, None)
        known = self._own_sn.pop(peer_id, 0)
        self.exports.forget(peer_id)
        self.news.forget(peer_id)
        rib = self._ribs.pop(peer_id, None)
        if now is not None and rib is not None and mark:
            # It took part in numbering: unreachable here at the next number.
            self._mark(peer_id, known + 1 if known % 2 == 0 else known, now)
        affected = [peer_id, *(rib.paths if rib is not None else ())]
        if now is not None:
            self.news.own_link_down(peer_id, now)
        return self._decide_all(affected)

    def heard(self, peer_id: str) -> None:
        """
        Neighbour C{peer_id} said its servers and number (or was given the
        time to, see L{link_up}): its route may be told from now on.
        """
        if peer_id in self._unheard:
            self._unheard.discard(peer_id)
            if peer_id in self._routes:
                self.dirty.add(peer_id)

    def set_cost(self, peer_id: str, cost: int) -> bool:
        """The cost of the link to C{peer_id} changed. :returns: whether the table did."""
        if self._links.get(peer_id, cost) == cost:
            return False
        self._links[peer_id] = cost
        rib = self._ribs.get(peer_id)
        return self._decide_all([peer_id, *(rib.paths if rib is not None else ())])

    def neighbour_servers(self, peer_id: str, servers: Mapping[str, tuple[str, ...]]) -> bool:
        """Neighbour C{peer_id} gave its own servers. :returns: whether the table changed."""
        if peer_id not in self._links:
            return False
        self._own_servers[peer_id] = servers
        return self._decide_all((peer_id,))

    def neighbour_sn(self, peer_id: str, sn: int) -> bool:
        """Neighbour C{peer_id} gave its own number. :returns: whether the table changed."""
        if peer_id not in self._links or self._own_sn.get(peer_id) == sn:
            return False
        self._own_sn[peer_id] = sn
        return self._decide_all((peer_id,))

    # Unreachable nodes.

    def take_lost(self, peer_id: str, lost: Mapping[str, int], now: float) -> bool:
        """
        Neighbour C{peer_id} marks these destinations unreachable at these
        numbers. :returns: whether the table changed.
        """
        changed = False
        for destination, sn in lost.items():
            if destination == self.node_id:
                self.marked_at = max(self.marked_at, sn)
                continue
            if destination in self._links:
                continue
            if not self.hearsay:
                route = self._routes.get(destination)
                if route is None or route.path[0] != peer_id:
                    continue
                sn = min(sn, route.sn | 1)  # (the next odd number, or the mark's own)
            mark = self._marks.get(destination)
            if mark is None or mark[0] < sn:
                changed |= self._mark(destination, sn, now)
        return changed

    def lost_nodes(self) -> dict[str, float]:
        """
        :returns: the nodes marked unreachable (a link to them failed, here
            or elsewhere, within L{MARK_HOLD}), with when they were marked.
        """
        return {d: until - MARK_HOLD for d, (_, until) in self._marks.items()}

    def mark_of(self, destination: str) -> int | None:
        """:returns: the number C{destination} is marked unreachable at, if it is."""
        mark = self._marks.get(destination)
        return None if mark is None else mark[0]

    def is_marked(self, destination: str) -> bool:
        """:returns: whether C{destination} is marked unreachable (L{lost_nodes})."""
        return destination in self._marks

    def lost_for(self, withdrawn: Iterable[str]) -> dict[str, int]:
        """:returns: the marks to send with the withdrawal of C{withdrawn}."""
        marks = self._marks
        return {d: marks[d][0] for d in withdrawn if d in marks}

    def _mark(self, destination: str, sn: int, now: float) -> bool:
        self._marks[destination] = (sn, now + MARK_HOLD)
        if self._decide_all((destination,)):
            return True  # (which looked through it already)
        return self._through(destination)

    # The route exchange.

    def start_routing(self, peer_id: str) -> AdjRib | None:
        """
        Neighbour C{peer_id} takes part in the route exchange.

        :returns: its table (empty at first), or C{None} if it is not linked.
        """
        if peer_id not in self._links:
            return None
        rib = self._ribs.get(peer_id)
        if rib is None:
            rib = self._ribs[peer_id] = self.new_rib(peer_id)
        return rib

    def new_rib(self, peer_id: str) -> AdjRib:
        """:returns: an empty table for what C{peer_id} says."""
        limit = max(1, self.max_routes // 2)  # (one neighbour leaves the others room)
        return AdjRib(self.node_id, (peer_id,), MAX_HOPS, limit, self._attributes)

    def advert_from(
        self,
        peer_id: str,
        routes: Mapping[str, RouteAdvert] | None,
        withdrawn: Iterable[str] = (),
    ) -> bool:
        """
        Take a change routing neighbour C{peer_id} advertised.

        :returns: whether the table changed.
        """
        rib = self._ribs.get(peer_id)
        if rib is None:
            return False
        changed = rib.apply(routes, withdrawn)
        if self._suspects:
            self.news.restated(peer_id, changed, [*(routes or ()), *withdrawn])
        return self._decide_from(peer_id, rib, changed)

    def replace(self, peer_id: str, rib: AdjRib) -> bool:
        """
        Routing neighbour C{peer_id}'s whole table arrived (built in
        C{rib}): it replaces what it said before.

        :returns: whether the table changed.
        """
        old = self._ribs.get(peer_id)
        if old is None:
            return False
        self._ribs[peer_id] = rib
        self.news.forget(peer_id, told=False)
        affected = [
            d
            for d in {*old.paths, *rib.paths}
            if old.get(d) != rib.get(d) or old.servers_of(d) != rib.servers_of(d)
        ]
        return self._decide_all(affected)

    def is_router(self, peer_id: str) -> bool:
        """:returns: whether neighbour C{peer_id} takes part in the route exchange."""
        return peer_id in self._ribs

    def routers(self) -> set[str]:
        """:returns: the neighbours that take part in the route exchange."""
        return set(self._ribs)

    def advertises_routes(self) -> bool:
        """
        :returns: whether every neighbour takes part in the route exchange:
            the table then knows every node reachable at all, so flooding a
            message would find nothing more.
        """
        return len(self._ribs) == len(self._links)

    def take_vanished(self) -> set[str]:
        """:returns: the destinations whose route went since the last call."""
        vanished = self._choice.vanished
        if not vanished:
            return vanished
        self._choice.vanished = set()
        return vanished

    def partial(self) -> bool:
        """
        :returns: whether the table may lack reachable nodes for its bounds:
            a neighbour's adverts held more destinations than this node
            keeps of them, or the table is full with routes waiting.
        """
        return bool(self._choice.overflow) or any(rib.refused for rib in self._ribs.values())

    def refused_from(self, peer_id: str) -> int:
        """:returns: how many destinations C{peer_id}'s adverts had refused."""
        rib = self._ribs.get(peer_id)
        return 0 if rib is None else rib.refused

    # Lost links (L{LinkNews}).

    def take_notices(
        self,
        peer_id: str,
        down: Iterable[Notice],
        now: float,
        up: Iterable[Notice] = (),
    ) -> bool:
        """
        Neighbour C{peer_id} says these links are gone (C{down}) or back
        (C{up}). :returns: whether the table changed.
        """
        affected = self.news.take(down, now, up, None if self.hearsay else peer_id)
        return bool(affected) and self._decide_all(affected)

    def expire_notices(self, now: float) -> bool:
        """
        Forget the news, suspicions and marks held long enough.

        :returns: whether the table changed.
        """
        changed = self._decide_all(self.news.expire(now))
        for destination in [d for d, (_, until) in self._marks.items() if until <= now]:
            del self._marks[destination]
            changed |= self._decide_all((destination,)) | self._through(destination)
        return changed

    def next_notice_expiry(self) -> float | None:
        """:returns: when the first news, suspicion or mark held expires, if any."""
        first = self.news.next_expiry()
        marks = [u for _, u in self._marks.values()]
        if first is not None:
            marks.append(first)
        return min(marks, default=None)

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

    def linked_elsewhere(self, peer_id: str) -> bool:
        """:returns: whether another routing neighbour offers a link of its own to C{peer_id}."""
        return any(
            rib.paths.get(peer_id) == (neighbour, peer_id)
            for neighbour, rib in self._ribs.items()
            if neighbour != peer_id
        )

    def is_linked(self, peer_id: str) -> bool:
        """:returns: whether C{peer_id} is a linked neighbour."""
        return peer_id in self._links

    def reconsider(self, destinations: Iterable[str] | None = None) -> bool:
        """
        Decide C{destinations} again (all of them when C{None}), as after a
        change of L{accept_path}'s mind. :returns: whether the table changed.
        """
        if destinations is None:
            known: set[str] = set(self._links)
            for rib in self._ribs.values():
                known.update(rib.paths)
            destinations = known
        return self._decide_all(destinations)


class Choice:
    """
    The choice of each destination's route among what the links and the
    routing neighbours offer (see the module docstring): the core of
    L{Router}, whose state it shares, and which it runs for each
    destination an event may have changed.

    @ivar routes: the table: destination -> its route.
    @ivar dirty: destinations whose route (or servers) changed since they
        were last exported (L{Exports.exported}).
    @ivar rerouted: those of C{dirty} that had a route before and still
        have one, on another path (re-adverts, which L{Exports.ready} damps).
    @ivar refused: destinations refused for the table's bound, since start.
    @ivar overflow: destinations with a route to offer but no room in the
        table, now.
    @ivar vanished: destinations that lost their route with none other to
        take, until the set is emptied by whoever reads it.
    @ivar changes: how many times a route changed, since start.
    """

    def __init__(
        self,
        node_id: str,
        accept_path: Callable[[str, tuple[str, ...]], bool] | None,
        max_routes: int,
        links: Mapping[str, int],
        own: tuple[Mapping[str, Mapping[str, tuple[str, ...]]], Mapping[str, int]],
        ribs: Mapping[str, AdjRib],
        marks: Mapping[str, tuple[int, float]],
        news: LinkNews,
    ) -> None:
        """
        :param links: linked neighbours -> the cost of the link.
        :param own: linked neighbours' own servers, and their numbers.
        :param ribs: what each routing neighbour said.
        :param marks: unreachable destinations -> (at which number, until when).
        """
        self.node_id = node_id
        self.accept_path = accept_path
        self.max_routes = max_routes
        self.refused = 0
        self.changes = 0
        self.routes: dict[str, Route] = {}
        self._routes = self.routes
        self._links = links
        self._own_servers, self._own_sn = own
        self._ribs = ribs
        self._marks = marks
        self._suspects = news.suspects
        self.dirty: set[str] = set()
        self.rerouted: set[str] = set()
        #: destinations with a route to offer but no room in the table
        self.overflow: set[str] = set()
        #: destinations whose route went with no other to take, since the
        #: owner of the set last emptied it (L{relaytx._mesh.Rerouting})
        self.vanished: set[str] = set()

    def table(self) -> dict[str, dict[str, Any]]:
        """:returns: the table as C{GET /registry/routes} shows it."""
        return {
            dest: {
                "next_hop": route.path[0],
                "hops": len(route.path),
                "metric": route.metric,
                "path": list(route.path),
            }
            for dest, route in sorted(self._routes.items())
        }

    def decide_from(self, peer_id: str, rib: AdjRib, destinations: Iterable[str]) -> bool:
        """
        Decide again the destinations whose offer from C{peer_id} changed,
        skipping those whose route goes elsewhere and stays there: the new
        offer is not fresher and does not beat it (most of them, as a
        neighbour's subtree moves).
        """
        routes = self._routes
        links = self._links
        cost = links.get(peer_id, 1)
        paths, metrics, attributes, latest = rib.paths, rib.metrics, rib.attributes, rib.latest
        natural = rib.natural
        todo = []
        for destination in destinations:
            route = routes.get(destination)
            if route is None or destination in links:
                if destination not in links:
                    todo.append(destination)
                continue
            path = route.path
            if path[0] == peer_id:
                todo.append(destination)
                continue
            offer = paths.get(destination)
            if offer is None:
                continue  # nothing offered there: the route elsewhere stands
            sn = (attributes.get(destination) or latest[destination])[1]
            if sn < route.sn:
                continue
            if sn == route.sn and not _beats(
                (cost + metrics.get(destination, len(offer) - natural), len(offer), peer_id),
                (route.metric, len(path), path[0]),
            ):
                continue
            todo.append(destination)
        return self.decide_all(todo)

    def decide_all(self, destinations: Iterable[str]) -> bool:
        """
        Decide C{destinations} again (and, when a marked node's route
        changed, the paths offered through it). :returns: whether the table
        changed.
        """
        changed = False
        marks = self._marks
        for destination in destinations:
            if self._decide(destination):
                changed = True
                if destination in marks:
                    # A marked node reachable again (or no more): the
                    # paths through it are worth another look.
                    self.through(destination)
        if changed and self.overflow and len(self._routes) < self.max_routes:
            waiting, self.overflow = self.overflow, set()
            for destination in waiting:
                self._decide(destination)
        return changed

    def _decide(self, destination: str) -> bool:
        if destination == self.node_id:
            return False
        routes = self._routes
        old = routes.get(destination)
        cost = self._links.get(destination)
        if cost is not None:
            # A neighbour is reached over its link, whatever else is offered.
            new: Route | None = Route(
                destination,
                (destination,),
                self._own_servers.get(destination, NO_SERVERS),
                cost,
                self._own_sn.get(destination, 0),
            )
        else:
            new = self._best(destination, old)
        if new == old:
            return False
        if new is None:
            del routes[destination]
            self.overflow.discard(destination)
            self.vanished.add(destination)
        elif old is None and cost is None and len(routes) >= self.max_routes:
            if destination not in self.overflow:
                self.refused += 1
                self.overflow.add(destination)
            return False
        else:
            routes[destination] = new
            if old is not None and old.path != new.path:
                self.rerouted.add(destination)
        self.dirty.add(destination)
        self.changes += 1
        return True

    def _best(self, destination: str, old: Route | None) -> Route | None:
        links = self._links
        accept = self.accept_path
        suspects = self._suspects
        marks = self._marks
        gone = {n for n in marks if n not in self._routes} if marks else None
        in_use = old.path[0] if old is not None else None
        offers: list[tuple[int, tuple[int, int, str], AdjRib]] = []
        for peer_id, rib in self._ribs.items():
            path = rib.paths.get(destination)
            if path is None:
                continue
            if suspects and (peer_id, destination) in suspects:
                continue
            if gone and not gone.isdisjoint(path[:-1]):
                continue  # through a node unreachable from here: stale
            if accept is not None and not accept(peer_id, path):
                continue
            metric = rib.metrics.get(destination, len(path) - rib.natural)
            key = (links[peer_id] + metric, len(path), peer_id)
            sn = (rib.attributes.get(destination) or rib.latest[destination])[1]
            offers.append((sn, key, rib))
        if not offers:
            return None
        # Only the freshest number counts, and a mark above it leaves none.
        newest = max(offer[0] for offer in offers)
        mark = marks.get(destination) if marks else None
        if mark is not None and mark[0] > newest:
            return None
        best: tuple[int, int, str] | None = None
        best_rib: AdjRib | None = None
        incumbent: tuple[int, int, str] | None = None
        keys: list[tuple[int, int, str]] = []
        for sn, key, rib in offers:
            if sn != newest:
                continue
            keys.append(key)
            if best is None or key < best:
                best, best_rib = key, rib
            if key[2] == in_use:
                incumbent = key
        assert best is not None and best_rib is not None
        if incumbent is not None and best is not incumbent and not _beats(best, incumbent):
            challengers = [key for key in keys if _beats(key, incumbent)]
            best = min(challengers) if challengers else incumbent
            best_rib = self._ribs[best[2]]
        path = best_rib.paths[destination]
        servers = (best_rib.attributes.get(destination) or best_rib.latest[destination])[0]
        metric = best[0]
        if (
            old is not None
            and old.path is path
            and old.metric == metric
            and old.servers is servers
            and old.sn == newest
        ):
            return old
        return Route(destination, path, servers, metric, newest)

    def through(self, node: str) -> bool:
        """
        Decide again the destinations some neighbour offers through C{node}
        (it became unreachable, or reachable again). :returns: whether the
        table changed.
        """
        found: set[str] = set()
        for rib in self._ribs.values():
            paths = rib.paths
            # (Each path looked through in C: a dead hub's mark has every
            # node look through every table, ~1 ms a node this way.)
            found.update(compress(paths.keys(), map(contains, paths.values(), repeat(node))))
        found.discard(node)
        return bool(found) and self.decide_all(found)


class Exports:
    """
    What a node tells its routing neighbours: for each, a mirror of what it
    holds (L{AdjRib}, built from what it was sent), so that after the whole
    table only the changes are sent; and when a re-routed destination may
    be told again (L{MRAI}).

    Neighbours that hear without routing (L{listeners}: original-design
    nodes) are told the same way, less the other listeners: a node cannot
    reach through one, and a hub of thousands of them would otherwise tell
    each of them of all the others, at every link.

    :param choice: the routing table's choices: its routes, and which
        changed (C{dirty}, C{rerouted}), which this empties as they are told.
    :param mirrors: the mirrors, by neighbour (shared with L{LinkNews}).
    :param unheard: neighbours whose routes are told to no one yet
        (L{Router.link_up}).
    :param attributes: where the mirrors keep servers and numbers (the
        node's tables share one).
    :param links: the linked neighbours (their link costs).
    :param ribs: what each routing neighbour told us.
    """

    def __init__(
        self,
        choice: Choice,
        mirrors: dict[str, AdjRib],
        news: LinkNews,
        unheard: set[str],
        attributes: SharedAttributes,
        links: Mapping[str, int],
        ribs: Mapping[str, AdjRib],
    ) -> None:
        self.dirty = choice.dirty
        self.rerouted = choice.rerouted
        self._routes = choice.routes
        self._mirrors = mirrors
        self._news = news
        self._unheard = unheard
        self._attributes = attributes
        self._links = links
        self._ribs = ribs
        #: destination -> when its last re-advert went out
        self._readvertised: dict[str, float] = {}
        #: neighbours told what this node reaches, which tell it nothing of
        #: their own (original-design nodes)
        self.listeners: set[str] = set()

    def forget(self, peer_id: str) -> None:
        """The link to C{peer_id} closed: it holds nothing of ours any more."""
        self._mirrors.pop(peer_id, None)
        self.listeners.discard(peer_id)

    def wanted_by(self, peer_id: str) -> Callable[[str], Wanted]:
        """:returns: what neighbour C{peer_id} should hold for a destination."""
        routes = self._routes
        longest = MAX_HOPS - 1
        unheard = self._unheard
        mirror = self._mirrors.get(peer_id)

        def wanted(destination: str) -> Wanted:
            if unheard and destination in unheard:
                # Not told yet; what the neighbour holds already (a route
                # through others, from before the link) it keeps till then.
                held = None if mirror is None else mirror.get(destination)
                if mirror is None or held is None:
                    return None
                return held[0], held[1], mirror.servers_of(destination), mirror.sn_of(destination)
            route = routes.get(destination)
            if route is None or peer_id in route.path or len(route.path) > longest:
                return None
            return route.path, route.metric, route.servers, route.sn

        if peer_id not in self.listeners:
            return wanted
        listeners = self.listeners

        def heard(destination: str) -> Wanted:
            return None if destination in listeners else wanted(destination)

        return heard

    def export_full(self, peer_id: str) -> dict[str, RouteAdvert]:
        """
        :returns: the whole table for neighbour C{peer_id}, which from now
            on is taken to hold it.
        """
        self._news.told_nothing(peer_id)
        destinations: Iterable[str] = self._routes
        listeners = self.listeners
        if peer_id in listeners:
            if not self._ribs and len(self._links) == len(listeners):
                # Only listeners are reached (a hub of bare links, at each
                # link): nothing to tell, and no mirror kept till there is.
                self._mirrors.pop(peer_id, None)
                return {}
            destinations = self._routes.keys() - listeners
        mirror = self._mirrors[peer_id] = AdjRib(peer_id, (), MAX_HOPS - 1, None, self._attributes)
        return export(mirror, self.wanted_by(peer_id), destinations)

    def for_listeners(self, ready: set[str]) -> bool:
        """:returns: whether listeners are to hear of any of C{ready}."""
        return bool(ready) and not ready <= self.listeners

    def export_changes(
        self, peer_id: str, candidates: Iterable[str]
    ) -> tuple[dict[str, RouteAdvert], list[str]]:
        """
        :param candidates: the destinations that may have changed.
        :returns: what neighbour C{peer_id} must hear to hold the table
            (entries and withdrawals); it is taken to hold it from now on.
        """
        mirror = self._mirrors.get(peer_id)
        if mirror is None:
            return self.export_full(peer_id), []
        entries, withdrawn = diff(mirror, self.wanted_by(peer_id), candidates)
        if entries:
            self._news.exported(peer_id, entries)
        return entries, withdrawn

    def ready(self, now: float) -> tuple[set[str], float | None]:
        """
        The changed destinations that may be advertised now, and when the
        first of the others may: a destination re-routed within L{MRAI} of
        its last re-advert waits for the rest of that time, so a burst of
        changes goes out once (BGP's minimum route advertisement interval).
        New destinations and withdrawals are never held.
        """
        ready = set(self.dirty)
        release: float | None = None
        readvertised = self._readvertised
        for destination in self.rerouted:
            last = readvertised.get(destination)
            if last is not None and last + MRAI > now:
                ready.discard(destination)
                if release is None or last + MRAI < release:
                    release = last + MRAI
        return ready, release

    def exported(self, destinations: Iterable[str], now: float | None = None) -> None:
        """
        C{destinations} were exported to every routing neighbour (at C{now},
        for the L{MRAI} of those re-routed).
        """
        readvertised = self._readvertised
        if now is not None and readvertised:
            for destination in [d for d, at in readvertised.items() if at + MRAI <= now]:
                del readvertised[destination]
        for destination in destinations:
            self.dirty.discard(destination)
            if destination in self.rerouted:
                self.rerouted.discard(destination)
                if now is not None:
                    readvertised[destination] = now


def hop_budget(hops: int) -> int:
    """
    :returns: the TTL of a message between relaytx nodes whose route has
        C{hops} hops: the route plus a margin, never below the original
        design's default nor above L{MAX_HOPS}.
    """
    return min(MAX_HOPS, max(DEFAULT_TTL, hops + HOP_MARGIN))


#: L{hop_budget} of every route length a table holds (a lookup, on the call path).
HOP_BUDGETS = tuple(hop_budget(hops) for hops in range(MAX_HOPS + 1))
