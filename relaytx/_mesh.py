# -*- test-case-name: tests.test_mesh -*-
"""
L{Mesh}: a node's side of the peer network, composed of four parts, each
in its own module:

  - L{LinkTable} (C{_links}): the open links and who may open one;
  - L{Advertiser} (C{_adverts}): the registry exchange and the routing
    table it feeds (L{Router}, C{_routing});
  - L{Forwarder} (C{_forwarding}): moving messages, here or on;
  - L{MeshCalls} (C{_meshcalls}): calls across the mesh, at both ends;
  - L{LinkWatch} (C{_liveness}): neighbours that stop answering;
  - L{OriginalRelay} (C{_relay}): calls for original-design neighbours,
    made by this node for others.

The mesh wires them together and is what each link's session sees of the
node (L{ISessionHost}): it turns link events (a link opened, lost) into the
work each part has to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from relaytx._adverts import Advertiser
from relaytx._calls import CallTarget, ForwardedCalls, PendingCalls, SeenMessages
from relaytx._forwarding import Forwarder
from relaytx._links import LinkRefused, LinkTable
from relaytx._liveness import DEFAULT_PEER_TIMEOUT, LinkWatch
from relaytx._meshcalls import MeshCalls
from relaytx._metrics import NodeMetrics
from relaytx._pki import EndToEnd, NodeIdentity, NodeRecord, RecordBook
from relaytx._records import RecordExchange
from relaytx._relay import OriginalRelay
from relaytx._routing import Router
from relaytx.errors import InvalidRequest, ProtocolViolation
from relaytx.interfaces import ILinkTransport, IRemoteCalls, ISessionHost
from relaytx.peer import PeerSession
from relaytx.wire import Envelope, MessageTypes, Payload, RegistrySync, ServerCall, ServerResponse

__all__ = ["LinkRefused", "Mesh"]


def routes_are_complete(adverts: Advertiser, router: Router, links: LinkTable) -> bool:
    """
    :returns: whether the routing table knows every node reachable at all:
        every neighbour advertises routes, or is an original-design node,
        which forwards nothing. Flooding a message would then find nothing
        more. (Counted, not checked link by link: a hub losing thousands of
        links asks once per link.)
    """
    if adverts.routes_are_complete():
        return True
    if not adverts.enabled:
        return False
    by_peer = links.links
    routers = sum(1 for p in router.routers() if p in by_peer and not by_peer[p].original)
    return links.originals + routers >= len(by_peer)


@implementer(ISessionHost, IRemoteCalls)
class Mesh:
    """
    The links, routes and calls in flight of node C{node_id}.

    :param run_arrived: runs a call that arrived over the mesh for a local
        server (the node's dispatcher); returns the result or a Deferred of
        it, or raises a L{relaytx.errors.CallError}.
    :param local_servers: returns this node's servers and their methods.
    :param strict_links: keep a healthy link against a second one for the
        same peer (a mesh with a secret or certificates; see L{LinkTable}).
    :param identity: this node's certified identity, in PKI mode: node
        records are then exchanged and checked, only paths both ends declare
        are used, and calls and answers that cross other nodes carry
        end-to-end codes (L{relaytx._pki}).
    :param peer_timeout: seconds a neighbour may leave a request (a call, a
        ping) unanswered, hearing nothing from it, before its link is
        dropped (L{relaytx._liveness}).

    @ivar links: the current session of each linked peer, by id.
    @ivar router: the routing table.
    @ivar pending: the calls this node waits on.
    @ivar forwarded: the calls this node passed on for others.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        run_arrived: Callable[[CallTarget], Any],
        local_servers: Callable[[], Mapping[str, list[str]]],
        ping_interval: float = 5.0,
        registry_enabled: bool = True,
        max_pending_calls: int = 10_000,
        max_message_size: int = 1024 * 1024,
        max_routes: int = 10_000,
        strict_links: bool = False,
        identity: NodeIdentity | None = None,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.metrics = metrics
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self._links = LinkTable(node_id, strict=strict_links)
        self.links = self._links.links
        book = e2e = None
        if identity is not None:
            book = RecordBook(identity, clock.seconds)
            e2e = EndToEnd(identity, book)
        self.router = Router(node_id, accept_path=book.accept_path if book else None)
        self.pending = PendingCalls(clock, on_late=metrics.late_answers.inc)
        metrics.pending_calls.set_function(lambda: len(self.pending))  # read when scraped
        self.forwarded = ForwardedCalls(
            clock, max_total=4 * max_pending_calls, max_per_neighbour=max_pending_calls
        )
        self.seen = SeenMessages(clock)
        self.adverts = Advertiser(
            node_id, clock, metrics, self.router, self._links, local_servers,
            enabled=registry_enabled, max_routes=max_routes,
        )  # fmt: skip
        self.link_watch = LinkWatch(clock, peer_timeout)
        complete = partial(routes_are_complete, self.adverts, self.router, self._links)
        self.forwarder = Forwarder(
            node_id, clock, metrics, self.router, self._links, self.forwarded, self.seen,
            routes_are_complete=complete, refuse=self._refuse, relay=self._relay,
        )  # fmt: skip
        self.calls = MeshCalls(
            node_id, clock, metrics, self.router, self._links, self.forwarder, self.pending,
            self.forwarded, complete, run_arrived, max_pending=max_pending_calls, e2e=e2e,
        )  # fmt: skip
        self.records: RecordExchange | None = None
        if identity is not None and book is not None:
            self.records = RecordExchange(
                identity, book, clock, metrics, self._links, self._records_changed
            )
            self._links.register_handler(NodeRecord, self.records.take)
        self.relay = OriginalRelay(node_id, clock, metrics, self.forwarder, self.calls)
        self._all_closed: Deferred[None] | None = None
        self._grace: IDelayedCall | None = None

    def _refuse(
        self, envelope: Envelope, came_from: str | None, why: str, overloaded: bool = False
    ) -> None:
        self.calls.refuse(envelope, came_from, why, overloaded)

    def _records_changed(self) -> None:
        # PKI mode: which advertised paths are acceptable may have changed.
        if self.router.reconsider():
            self.calls.routes_changed()
            self.adverts.routes_changed()

    def _relay(self, envelope: Envelope, came_from: str) -> None:
        self.relay.relay(envelope, came_from)

    # Extension.

    @property
    def message_types(self) -> MessageTypes:
        """The message types this node decodes (the core ones and any added)."""
        return self._links.message_types

    def use_session(self, session_class: type[PeerSession]) -> None:
        """Use C{session_class} for every link opened from now on."""
        self._links.use_session(session_class)

    def register_handler(self, payload_type: type[Payload], handler: Callable[..., None]) -> None:
        """Handle C{payload_type} messages addressed here with C{handler(envelope, payload)}."""
        self._links.register_handler(payload_type, handler)

    def handler_for(self, payload_type: type[Payload]) -> Callable[..., None] | None:
        return self._links.handler_for(payload_type)

    # Links.

    def check_new_link(self, peer_id: str, direction: str) -> None:
        """
        Decide whether a link with C{peer_id} may open.

        :raises LinkRefused: if it may not.
        """
        self._links.check(peer_id, direction)

    def open_link(
        self,
        peer_id: str,
        direction: str,
        address: str,
        transport: ILinkTransport,
        original: bool = False,
    ) -> PeerSession:
        """
        A link's WebSocket is open: start its session.

        :param original: whether the peer is a node of the original design
            (its handshake was not a relaytx node's).
        :raises LinkRefused: as L{check_new_link}.
        """
        self._links.check(peer_id, direction)
        session = self._links.session_class(self, peer_id, direction, address)
        session.original = original  # (a subclass need not take the argument)
        if self._links.add(session) is not None:
            self._log.info("a new link from {peer} replaces the old one", peer=peer_id)
        session.connection_made(transport)
        routes_changed = self.router.link_up(peer_id)
        self.metrics.peers.set(len(self.links))
        self._log.info(
            "linked to {peer} ({direction}, {address})",
            peer=peer_id,
            direction=direction,
            address=address,
        )
        self.adverts.link_opened(peer_id)
        if self.records is not None:
            self.records.link_opened(peer_id)
        if routes_changed:
            self.adverts.routes_changed()
        return session

    def link_lost(self, session: PeerSession, reason: str) -> None:
        """A session's link closed (called by the session)."""
        if not self._links.remove(session):
            return  # an old, replaced link: the peer is still linked
        peer_id = session.peer_id
        self.adverts.link_closed(peer_id)
        self.metrics.peers.set(len(self.links))
        self._log.info("link to {peer} lost ({reason})", peer=peer_id, reason=reason or "closed")
        self.router.link_down(peer_id)
        self.calls.path_lost(peer_id)
        self.adverts.routes_changed()
        if self.records is not None:
            self.records.link_closed(peer_id)
        if self._all_closed is not None and not self.links:
            self._closed_all()

    def count_auth_failure(self, peer_id: str | None, why: str) -> None:
        """Count (and log) a peer that failed to prove the cluster secret."""
        self.metrics.auth_failures.inc()
        self._log.warn("peer {peer} failed authentication: {why}", peer=peer_id, why=why)

    def bad_input(self, error: ProtocolViolation, session: PeerSession) -> None:
        """Count (and log) bad input from a link."""
        self.metrics.drop(error.reason)
        self._log.debug("bad input from {peer}: {error}", peer=session.peer_id, error=str(error))

    def bad_call(self, envelope: Envelope, error: ProtocolViolation, session: PeerSession) -> None:
        """
        A C{server_call} addressed here could not be read (it is counted and
        dropped already): answer it with -32600 when it names a response id,
        so that its caller hears why instead of timing out.
        """
        response_id = envelope.response_id
        if response_id is not None:
            invalid = InvalidRequest(f"malformed server_call: {error}")
            self.calls.answer_error(
                envelope.sender, response_id, invalid, envelope.route, session.peer_id
            )

    def watch(self, session: PeerSession) -> None:
        """A request left on C{session}'s link: watch that its peer answers."""
        self.link_watch.watch(session)

    # What a session hands over.

    def receive(self, envelope: Envelope, session: PeerSession) -> None:
        """A message arrived on C{session}'s link: deliver it here or send it on."""
        self.forwarder.receive(envelope, session)

    def run_call(self, envelope: Envelope, call: ServerCall, session: PeerSession) -> None:
        """A call addressed here arrived on C{session}'s link: run it and answer it."""
        self.calls.run(envelope, call, session.peer_id)

    def settle(self, envelope: Envelope, response: ServerResponse, session: PeerSession) -> None:
        """An answer to one of this node's calls arrived."""
        self.calls.settle(envelope, response, session.peer_id)

    def take_advert(self, sync: RegistrySync, session: PeerSession) -> None:
        """Take a neighbour's advert; re-announce if the routes changed."""
        if self.adverts.take(sync, session):
            self.calls.routes_changed()
            self.adverts.routes_changed()

    # Sending and calling.

    def send(self, destination: str, payload: Payload, reply_to: str | None = None) -> str | None:
        """
        Originate a message to C{destination}, routed like any other.

        :returns: the neighbour it went to, or C{None} if it was flooded or
            could not be sent.
        """
        return self.forwarder.send(destination, payload, reply_to=reply_to)

    def call(self, target: CallTarget) -> Deferred[Any]:
        """
        Call a server on another node.

        :returns: a Deferred with the result, failing with a L{CallError}.
        """
        return self.calls.call(target)

    def can_reach(self, destination: str) -> bool:
        """:returns: whether a link or a route to C{destination} is known."""
        return self.forwarder.can_reach(destination)

    def schedule_sync(self) -> None:
        """This node's servers changed: tell every neighbour soon."""
        self.adverts.schedule()

    # Views.

    def nearest_host(self, server: str) -> str | None:
        """:returns: the nearest node hosting C{server}, or C{None}."""
        return self.adverts.nearest_host(server)

    def directory(self) -> dict[str, list[dict[str, Any]]]:
        """:returns: the remote part of C{GET /registry/servers}."""
        return self.adverts.directory()

    def peers_view(self) -> dict[str, dict[str, Any]]:
        """:returns: C{GET /registry/peers}."""
        return self._links.view(self.adverts.server_count)

    # Stopping.

    def stop(self, grace: float = 2.0) -> Deferred[None]:
        """
        Close every link with 1000, fail every pending call and forget the
        forwarded ones.

        :returns: a Deferred that fires once every link has closed, or after
            C{grace} seconds at most.
        """
        self._links.stopping = True
        self.adverts.stop()
        if self.records is not None:
            self.records.stop()
        self.link_watch.stop()
        self.calls.stop()
        self._links.close_all("node stopping")
        if not self.links:
            return succeed(None)
        self._all_closed = Deferred()
        self._grace = self.clock.callLater(grace, self._closed_all)
        return self._all_closed

    def _closed_all(self) -> None:
        d, self._all_closed = self._all_closed, None
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if d is not None:
            self._links.lose_all("node stopped")
            d.callback(None)
