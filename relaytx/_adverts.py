# -*- test-case-name: tests.test_mesh -*-
"""
L{Advertiser}: a node's side of the registry exchange (C{registry_sync}).
It tells neighbours what this node hosts and what it can reach, takes
their adverts into the routing table, and answers the questions the
registry answers: which nodes host a server, and which is nearest.

Adverts go out within L{SYNC_DELAY} of a change, coalesced, and only to
the neighbours a change concerns (a new link; the routers, after a route
change; everyone, when this node's own servers change). A neighbour that
has not advertised routes (an original-design node, a node with its
registry off) hears only this node's servers, with an empty table that
says "we route: send yours"; a neighbour that answers with routes becomes
a router and gets the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._routing import Router
from relaytx.errors import MessageTooLarge
from relaytx.peer import PeerSession
from relaytx.wire import Envelope, RegistrySync, rfc3339

#: Changes within this many seconds are announced in one registry_sync.
SYNC_DELAY = 0.02


class Advertiser:
    """
    :param local_servers: returns this node's servers and their methods.
    :param enabled: C{False} with C{--disable-registry}: nothing is sent or
        taken, and the directory is empty.
    :param max_routes: the most destinations one neighbour's advert may
        hold; a bigger one is dropped, counted and logged.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        router: Router,
        links: LinkTable,
        local_servers: Callable[[], Mapping[str, list[str]]],
        enabled: bool = True,
        max_routes: int = 10_000,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._router = router
        self._links = links
        self._local_servers = local_servers
        self.enabled = enabled
        self._max_routes = max_routes
        self._call: IDelayedCall | None = None
        self._everyone = False
        self._peers: set[str] = set()
        self._sent: dict[str, RegistrySync] = {}

    # Sending.

    def schedule(self, at_once: bool = False, peers: Iterable[str] | None = None) -> None:
        """
        Announce this node's servers and routes soon, coalescing changes
        that come close together.

        :param peers: the neighbours that need to hear; all of them when
            C{None} (this node's servers changed). Only those are visited,
            so a hub with thousands of bare links pays per change for whom
            it concerns.
        """
        if not self.enabled or self._links.stopping:
            return
        if peers is None:
            self._everyone = True
        else:
            self._peers.update(peers)
        if self._call is not None and self._call.active():
            if not at_once:
                return
            self._call.cancel()
        self._call = self._clock.callLater(0 if at_once else SYNC_DELAY, self._send)

    def link_opened(self, peer_id: str) -> None:
        """A new link: it hears from us at once, whatever it heard before."""
        self._sent.pop(peer_id, None)
        self.schedule(at_once=True, peers=[peer_id])

    def link_closed(self, peer_id: str) -> None:
        """A link closed: forget what it was told."""
        self._sent.pop(peer_id, None)

    def routes_changed(self) -> None:
        """The table changed: the routers hear the new one."""
        self.schedule(peers=self._router.routers())

    def stop(self) -> None:
        """Send nothing more (the node is stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _send(self) -> None:
        self._call = None
        links = self._links.links
        if self._everyone:
            targets = list(links.items())
        else:
            targets = [(p, links[p]) for p in self._peers if p in links]
        self._everyone = False
        self._peers = set()
        own = {name: tuple(methods) for name, methods in self._local_servers().items()}
        now = self._clock.seconds()
        router = self._router
        for peer_id, session in targets:
            if router.is_router(peer_id):
                advert = router.advert_for(peer_id, own)
            else:
                advert = RegistrySync(own, {})
            if self._sent.get(peer_id) == advert:
                continue
            try:
                session.send(Envelope.create(advert, self._node_id, peer_id, now))
            except MessageTooLarge as e:
                self._metrics.drop("advert_too_large")
                self._log.warn("cannot advertise to {peer}: {error}", peer=peer_id, error=str(e))
                continue
            self._sent[peer_id] = advert

    # Taking.

    def take(self, sync: RegistrySync, session: PeerSession) -> bool:
        """
        Take a neighbour's advert.

        :returns: whether the routing table changed.
        """
        if not self.enabled or self._links.get(session.peer_id) is not session:
            return False
        peer_id = session.peer_id
        if sync.routes is not None and len(sync.routes) > self._max_routes:
            self._metrics.drop("too_many_routes")
            self._log.warn(
                "ignoring an advert of {n} routes from {peer} (limit {limit})",
                n=len(sync.routes),
                peer=peer_id,
                limit=self._max_routes,
            )
            return False
        was_router = self._router.is_router(peer_id)
        changed = self._router.advert_from(peer_id, sync)
        if not was_router and sync.routes is not None:
            # It routes: it gets our whole table now.
            self.schedule(peers=[peer_id])
        return changed

    def routes_are_complete(self) -> bool:
        """
        :returns: whether the table knows every node reachable at all (the
            registry is on and every neighbour advertises routes), so that
            flooding a message would find nothing more.
        """
        return self.enabled and self._router.advertises_routes()

    # The registry's answers.

    def server_count(self, peer_id: str) -> int:
        """:returns: how many servers neighbour C{peer_id} advertised."""
        route = self._router.route(peer_id)
        return 0 if route is None else len(route.servers)

    def directory(self) -> dict[str, list[dict[str, Any]]]:
        """:returns: the remote part of C{GET /registry/servers}."""
        result: dict[str, list[dict[str, Any]]] = {}
        if not self.enabled:
            return result
        for destination, route in sorted(self._router.routes().items()):
            hop = self._links.get(route.next_hop)
            last_seen = rfc3339(hop.last_seen if hop is not None else self._clock.seconds())
            for name, methods in route.servers.items():
                result.setdefault(name, []).append(
                    {
                        "name": name,
                        "node_id": destination,
                        "methods": list(methods),
                        "is_local": False,
                        "last_seen": last_seen,
                        "hops": route.hops,
                    }
                )
        for entries in result.values():
            entries.sort(key=lambda e: (e["hops"], e["node_id"]))
        return result

    def nearest_host(self, server: str) -> str | None:
        """:returns: the nearest node hosting C{server}, or C{None}."""
        if not self.enabled:
            return None
        best: tuple[int, str] | None = None
        for destination, route in self._router.routes().items():
            if server in route.servers:
                key = (route.hops, destination)
                if best is None or key < best:
                    best = key
        return None if best is None else best[1]
