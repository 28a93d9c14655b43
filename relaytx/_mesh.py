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

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from relaytx._adverts import Advertiser, Directory
from relaytx._balance import InstanceInfo
from relaytx._calls import CallTarget, ForwardedCalls, PendingCalls, SeenMessages
from relaytx._forwarding import RELAYTX_TYPES, Forwarder
from relaytx._guards import FailureTally
from relaytx._links import LinkRefused, LinkTable
from relaytx._liveness import DEFAULT_PEER_TIMEOUT, LinkWatch
from relaytx._meshcalls import MeshCalls
from relaytx._metrics import NodeMetrics
from relaytx._pki import EndToEnd, NodeIdentity, NodeRecord, RecordBook
from relaytx._records import RecordExchange
from relaytx._relay import OriginalRelay
from relaytx._routing import MARK_HOLD, Router
from relaytx.errors import InvalidRequest, ProtocolViolation
from relaytx.interfaces import ILinkTransport, IRemoteCalls, ISessionHost
from relaytx.peer import CLOSE_ABNORMAL, CLOSE_ON_PURPOSE, CLOSE_REMOVED, PeerSession
from relaytx.wire import (
    CopyDropped,
    Envelope,
    LinkClose,
    MessageTypes,
    Payload,
    Ping,
    RegistrySync,
    ServerCall,
    ServerResponse,
)

__all__ = ["LinkRefused", "Mesh"]


def _declared_paths(
    book: RecordBook, accept_path: Callable[[str, tuple[str, ...]], bool] | None
) -> Callable[[str, tuple[str, ...]], bool]:
    """
    :returns: the routing table's test of learned paths in PKI mode: every
        adjacency along the path declared by both its ends (the book checks
        the path after the neighbour; the table gives it whole, the
        neighbour first), and C{accept_path} too, if given.
    """
    declared = book.accept_path
    if accept_path is None:
        return lambda neighbour, path: declared(neighbour, path[1:])
    return lambda neighbour, path: declared(neighbour, path[1:]) and accept_path(neighbour, path)


class LostLinks:
    """
    The neighbours whose link failed lately (not closed on purpose), with
    when, for L{MARK_HOLD}: where no route mark tells of them (a node whose
    registry is off marks no one), the mesh view still shows them gone.
    """

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def lost(self, peer_id: str, now: float) -> None:
        at = self._at
        at.pop(peer_id, None)
        at[peer_id] = now  # (oldest first)
        if len(at) > 1024:
            del at[next(iter(at))]

    def found(self, peer_id: str) -> None:
        self._at.pop(peer_id, None)

    def since(self, now: float) -> dict[str, float]:
        """:returns: the links lost within L{MARK_HOLD} of C{now}, by peer."""
        at = self._at
        for peer_id in [p for p, when in at.items() if when + MARK_HOLD <= now]:
            del at[peer_id]
        return dict(at)


#: Seconds after a link went during which the nodes routed across it are
#: reached by flooding while the table finds them another way.
REROUTING = 2.0

#: Seconds a node whose route went is remembered for the mesh view, which
#: shows it gone for as long (L{relaytx._meshview.MeshWatch}'s C{forget_after}).
WENT_HOLD = 300.0


class Rerouting:
    """
    The nodes whose route went with no other to take (a link on it went,
    here or further on), for L{REROUTING} seconds: the table has no way to
    them until the mesh's adverts bring one (0.05-0.2 s in rings of 6 and
    12), and a call to one meanwhile is flooded, as to a node no route
    knows (SPEC section 7), not refused -32002 while a path is there. A
    node marked unreachable is not among them (it may be dead: a call to
    it fails at once, as before).
    """

    __slots__ = ("_clock", "_since", "_went")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}
        #: destination -> when its route last went, oldest first, for
        #: L{WENT_HOLD} (the mesh view's memory of gone nodes)
        self._went: dict[str, float] = {}

    def note(self, router: Router) -> None:
        """Take the destinations whose route went since the last note."""
        vanished = router.take_vanished()
        if not vanished:
            return
        now = self._clock.seconds()
        since = self._since
        for destination in [d for d, at in since.items() if at + REROUTING <= now]:
            del since[destination]
        went = self._went
        for destination in vanished:
            since[destination] = now
            went.pop(destination, None)
            went[destination] = now
        while len(went) > 4096:
            del went[next(iter(went))]

    def went(self) -> dict[str, float]:
        """:returns: the destinations whose route went within L{WENT_HOLD}, with when."""
        went = self._went
        horizon = self._clock.seconds() - WENT_HOLD
        while went and next(iter(went.values())) <= horizon:
            del went[next(iter(went))]
        return dict(went)

    def lately(self, destination: str) -> bool:
        """:returns: whether C{destination} lost its route with a link, lately."""
        at = self._since.get(destination)
        return at is not None and self._clock.seconds() - at < REROUTING


def routes_are_complete(
    adverts: Advertiser,
    router: Router,
    links: LinkTable,
    rerouting: Rerouting,
    destination: str | None = None,
) -> bool:
    """
    :returns: whether the routing table knows every node reachable at all:
        every neighbour advertises routes, or is an original-design node,
        which forwards nothing. Flooding a message would then find nothing
        more. (Counted, not checked link by link: a hub losing thousands of
        links asks once per link.) With C{destination}: and it is not
        being rerouted (L{Rerouting}) unless it is marked unreachable.
    """
    if (
        destination is not None
        and rerouting.lately(destination)
        and destination not in router.lost_nodes()
    ):
        return False
    if adverts.routes_are_complete():
        return True
    if not adverts.enabled or router.partial():
        return False
    by_peer = links.links
    routers = sum(1 for p in router.routers() if p in by_peer and not by_peer[p].original)
    return links.originals + routers >= len(by_peer)


_PEER_CLOSED_ON_PURPOSE = tuple(f"close code {code}" for code in CLOSE_ON_PURPOSE)
_REMOVED_BY_PEER = f"close code {CLOSE_REMOVED}"


def _removed(session: PeerSession, reason: str) -> bool:
    """
    :param reason: why the link closed, as the session was told.
    :returns: whether both ends know that the link was removed on purpose
        (or replaced), which says nothing of either node. Any other loss may
        be a node's death: the peer's, to this node; this node's, to the
        peer, which marks it unreachable unless this node numbers itself
        above the mark.
    """
    if session.closed_with in CLOSE_ON_PURPOSE:
        # This node closed it. The peer knows why only if it got the close
        # frame, and then it answered: the closing handshake ended cleanly
        # (an answered close is told as its code; one that broke off as
        # 1006, or as whatever broke the connection).
        return reason.startswith("close code ") and not reason.startswith(
            f"close code {CLOSE_ABNORMAL}"
        )
    if not reason.startswith(_PEER_CLOSED_ON_PURPOSE):
        return False
    return session.peer_closed_on_purpose(_close_code(reason)) is not None


def _close_code(reason: str) -> int | None:
    """:returns: the close code in a reason C{"close code CODE[: why]"}, if any."""
    code = reason.removeprefix("close code ").partition(":")[0]
    return int(code) if code.isdigit() else None


def loss_cause(reason: str, removed: bool, stopping: bool) -> str:
    """
    :param reason: why the link closed, as the session was told.
    :param removed: whether it was closed on purpose: by this node, or
        by the peer and said so (L{_removed}).
    :param stopping: whether this node is stopping.
    :returns: one of L{relaytx._metrics.LINK_LOSS_CAUSES}: C{stopped}
        (this node is stopping), C{removed} (on purpose, or replaced),
        C{silent} (the peer left a request unanswered:
        see L{relaytx._liveness}), C{auth} (a frame failed authentication),
        or C{closed} (any other end: the peer closed it, stopped or died, or
        the connection broke).
    """
    if stopping:
        return "stopped"
    if removed:
        return "removed"
    if reason == "silent":
        return "silent"
    if reason.startswith("frame authentication failed"):
        return "auth"
    return "closed"


@implementer(ISessionHost, IRemoteCalls)
class Mesh:
    """
    The links, routes and calls in flight of node C{node_id}.

    :param run_arrived: runs a call that arrived over the mesh for a local
        server (the node's dispatcher); returns the result or a Deferred of
        it, or raises a L{relaytx.errors.CallError}.
    :param local_servers: returns this node's servers and their methods.
    :param max_routes: the most destinations in the routing table, and the
        most one neighbour's adverts may hold.
    :param strict_links: keep a healthy link against a second one for the
        same peer (a mesh with a secret or certificates; see L{LinkTable}).
    :param identity: this node's certified identity, in PKI mode: node
        records are then exchanged and checked, only paths both ends declare
        are used, and calls and answers that cross other nodes carry
        end-to-end codes (L{relaytx._pki}).
    :param accept_path: the routing table's test of learned paths (see
        L{Router}); in PKI mode, a path must pass it and the adjacency check.
    :param peer_timeout: seconds a neighbour may leave a request (a call, a
        ping) unanswered, hearing nothing from it, before its link is
        dropped (L{relaytx._liveness}).

    @ivar links: the current session of each linked peer, by id.
    @ivar router: the routing table.
    @ivar registry: the registry's answers (L{Directory}).
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
        accept_path: Callable[[str, tuple[str, ...]], bool] | None = None,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.metrics = metrics
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self._links = LinkTable(node_id, strict=strict_links)
        self._lost_links = LostLinks()
        self.links = self._links.links
        book = None if identity is None else RecordBook(identity, clock.seconds)
        e2e = None if identity is None or book is None else EndToEnd(identity, book)
        if book is not None:
            accept_path = _declared_paths(book, accept_path)
        self.router = Router(node_id, accept_path, max_routes, hearsay=book is None)
        self.pending = PendingCalls(clock, on_late=metrics.late_answers.inc)
        metrics.pending_calls.set_function(lambda: len(self.pending))  # read when scraped
        self.forwarded = ForwardedCalls(
            clock, max_total=4 * max_pending_calls, max_per_neighbour=max_pending_calls
        )
        self.seen = SeenMessages(clock)
        self._auth_failures = FailureTally()
        #: the nodes' loads and idempotent methods (SPEC section 11)
        self.info = InstanceInfo(node_id, clock, max_entries=max_routes)
        self.adverts = Advertiser(
            node_id, clock, metrics, self.router, self._links, local_servers,
            enabled=registry_enabled, max_message_size=max_message_size,
            on_change=self._routes_changed, info=self.info,
        )  # fmt: skip
        metrics.routes.set_function(lambda: len(self.router.routes()))
        metrics.routes_changed.set_function(lambda: self.adverts.changed_at or 0.0)
        self.registry = Directory(self.router, self._links, clock, registry_enabled)
        self.link_watch = LinkWatch(clock, peer_timeout, self._links.links, ping_interval)
        self._rerouting = Rerouting(clock)
        complete = partial(
            routes_are_complete, self.adverts, self.router, self._links, self._rerouting
        )
        self.forwarder = Forwarder(
            node_id, clock, metrics, self.router, self._links, self.forwarded, self.seen,
            routes_are_complete=complete, refuse=self._refuse, relay=self._relay,
            dead_end=self._dead_end,
        )  # fmt: skip
        self._e2e = e2e
        if e2e is not None:
            self.forwarder.check_origin = lambda envelope: e2e.check_message(
                envelope, clock.seconds()
            )
        self.calls = MeshCalls(
            node_id, clock, metrics, self._links, self.forwarder, self.pending,
            self.forwarded, complete, run_arrived, max_pending=max_pending_calls, e2e=e2e,
        )  # fmt: skip
        metrics.forwarded_calls.set_function(lambda: len(self.forwarded))
        metrics.running_calls.set_function(lambda: len(self.calls.running))
        metrics.streams_producing.set_function(lambda: len(self.calls.streams.producing))
        self.records: RecordExchange | None = None
        if identity is not None and book is not None:
            self.records = RecordExchange(
                identity, book, clock, metrics, self._links, self._records_changed,
                self.info.own_idempotent,
            )  # fmt: skip
            self.info.attested = book.idempotent_of  # retries trust signed records only
            self._links.register_handler(NodeRecord, self.records.take)
        for frame, handler in self.calls.streams.handlers().items():  # streams and cancels
            self._links.register_handler(frame, handler)
        self.relay = OriginalRelay(
            node_id, clock, metrics, self.forwarder, self.calls, max_pending_calls
        )
        #: routed pings timed for C{node.traceroute}
        self.probes = Probes(node_id, clock, self.forwarder)
        self._links.register_handler(LinkClose, self._close_told)
        self._links.register_handler(CopyDropped, self._copy_dropped)
        #: told the id of a peer that removed this node (closed a link with
        #: 4002): its dialers of that peer dial no more (L{PeerAdmin.removed_by})
        self.removed_by: Callable[[str], None] | None = None

    def refuse_held(self, envelope: Envelope, session: PeerSession) -> None:
        self.metrics.drop("overloaded")
        why = f"the link from {session.peer_id} is backed up: too many calls wait"
        self.calls.refuse(envelope, session.peer_id, why, overloaded=True)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        # (The forwarder is made before the calls it refuses: MeshCalls.refuse.)
        self.calls.refuse(*args, **kwargs)

    def _dead_end(self, *args: Any) -> None:
        # (The forwarder is made before the calls: MeshCalls.dead_end.)
        self.calls.dead_end(*args)

    def _copy_dropped(self, envelope: Envelope, notice: CopyDropped) -> None:
        # A neighbour's word on a copy of a flooded call (never routed).
        if envelope.sender in self._links and envelope.route[-1:] == (envelope.sender,):
            self.calls.copy_dropped(notice.caller, notice.response_id, envelope.sender)

    def _close_told(self, envelope: Envelope, notice: LinkClose) -> None:
        # A neighbour says why it closes its link, where a close frame
        # cannot be trusted (PeerSession.close).
        session = self._links.get(envelope.sender)
        if session is not None and envelope.route[-1:] == (envelope.sender,):
            session.close_told = notice.code

    def _records_changed(self) -> None:
        # PKI mode: which advertised paths are acceptable may have changed.
        if self.router.reconsider():
            self.calls.routes_changed()
            self.adverts.schedule(peers=())

    def _routes_changed(self) -> None:
        # The table changed: calls to nodes now out of reach fail at once.
        self.calls.routes_changed()

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
        quiet: bool = False,
    ) -> PeerSession:
        """
        A link's WebSocket is open: start its session.

        :param original: whether the peer is a node of the original design
            (its handshake was not a relaytx node's).
        :param quiet: whether the peer said its registry is off: it will
            send no advert (L{relaytx._adverts.Advertiser.link_opened}).
        :raises LinkRefused: as L{check_new_link}.
        """
        self._links.check(peer_id, direction)
        session = self._links.session_class(self, peer_id, direction, address)
        session.original = original  # (a subclass need not take the argument)
        if self._links.add(session) is not None:
            self._log.info("a new link from {peer} replaces the old one", peer=peer_id)
        session.connection_made(transport)
        self.link_watch.linked()
        self.metrics.peers.set(len(self.links))
        self._log.info(
            "linked to {peer} ({direction}, {address})",
            peer=peer_id,
            direction=direction,
            address=address,
        )
        self._lost_links.found(peer_id)
        self.adverts.link_opened(peer_id, original, quiet)
        if self.records is not None:
            self.records.link_opened(peer_id)
        return session

    def link_lost(self, session: PeerSession, reason: str) -> None:
        """A session's link closed (called by the session)."""
        if not self._links.remove(session):
            return  # an old, replaced link: the peer is still linked
        peer_id = session.peer_id
        self.metrics.peers.set(len(self.links))
        self._log.info("link to {peer} lost ({reason})", peer=peer_id, reason=reason or "closed")
        removed = _removed(session, reason)
        # A link this node closed on purpose says nothing of the peer, even
        # when the closing handshake broke off: the peer, if it heard the
        # close, goes on under its number, and a mark here would hold it
        # unreachable everywhere the mark spread (for MARK_HOLD). It is
        # counted as removed, as the operator did (a frozen peer's broken
        # handshake had it counted as closed).
        by_us = session.closed_with in CLOSE_ON_PURPOSE
        cause = loss_cause(reason, removed or by_us, self._links.stopping)
        self.metrics.links_lost.labels(cause).inc()
        if not (removed or by_us or self._links.stopping):
            self._lost_links.lost(peer_id, self.clock.seconds())
        mark = not (removed or by_us)
        if mark and reason == "silent" and self.router.linked_elsewhere(peer_id):
            # Silent to this node, while a neighbour still holds a link of
            # its own to it: the peer may well be alive, this link the only
            # one broken (a freeze on one path), and a mark would hold it
            # unreachable from here until it noticed the loss itself and
            # numbered itself anew, at its next keepalive (seconds: calls to
            # it were refused -32002 meanwhile). If it is dead, that
            # neighbour finds it so and withdraws it.
            mark = False
        self.adverts.link_closed(peer_id, failed=not removed, mark=mark)
        self._rerouting.note(self.router)
        self.calls.path_lost(peer_id)
        if self.records is not None:
            self.records.link_closed(peer_id)
        self._links.closed()
        if (
            self.removed_by is not None
            and session.closed_with is None
            and reason.startswith(_REMOVED_BY_PEER)
            and session.peer_closed_on_purpose(CLOSE_REMOVED) is not None
        ):
            self.removed_by(peer_id)

    def count_auth_failure(self, peer_id: str | None, why: str) -> None:
        """
        Count (and log) a peer that failed to prove the cluster secret: the
        first time, then at 2, 4, 8... times the same failure, whatever
        id the peer claimed (a stranger picks its own).
        """
        self.metrics.auth_failures.inc()
        count = self._auth_failures.failed(why)
        if count is not None:
            self._log.warn(
                "peer {peer} failed authentication: {why} ({count} time(s))",
                peer=peer_id,
                why=why,
                count=count,
            )

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

    def calls_out(self, session: PeerSession) -> bool:
        """
        :returns: whether some call sent on C{session}'s link may still be
            waiting for its answer (a flooded one, sent on several, counts
            for every link).
        """
        peer_id = session.peer_id
        return self.pending.any_via(peer_id) or self.forwarded.any_to(peer_id)

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
        self.adverts.take(sync, session)
        self._rerouting.note(self.router)

    def link_measured(self, session: PeerSession, rtt: float) -> None:
        """A round trip on C{session}'s link was measured (it feeds the link's cost)."""
        if self._links.get(session.peer_id) is session:
            self.adverts.link_measured(session.peer_id, rtt)

    # Sending and calling.

    def send(self, destination: str, payload: Payload, reply_to: str | None = None) -> str | None:
        """
        Originate a message to C{destination}, routed like any other.

        :returns: the neighbour it went to, or C{None} if it was flooded or
            could not be sent (C{forwarder.floods} counts the floods).
        """
        e2e = self._e2e
        if e2e is None or payload.TYPE in RELAYTX_TYPES:
            return self.forwarder.send(destination, payload, reply_to=reply_to)
        # A user's own type, in PKI mode: its code goes with it (see relaytx._pki).
        now = self.clock.seconds()
        envelope = Envelope.create(payload, self.node_id, destination, now, reply_to=reply_to)
        return self.forwarder.forward(e2e.seal_message(envelope), came_from=None)

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
        if self.records is not None:  # its record states its idempotent methods
            self.records.idempotent_changed()

    def probe_answered(self, envelope: Envelope) -> bool:
        """Settle the probe a C{pong} answers, if any (see L{ISessionHost})."""
        return self.probes.answered(envelope)

    # Views.

    def lost_nodes(self) -> dict[str, float]:
        """
        :returns: the nodes known unreachable lately, with when: marked by
            the routing table, a neighbour whose link failed, or a node whose
            route went (within L{WENT_HOLD}) and no route reaches now.
        """
        route = self.router.route
        lost = {d: at for d, at in self._rerouting.went().items() if route(d) is None}
        lost.update(self._lost_links.since(self.clock.seconds()))
        lost.update(self.router.lost_nodes())
        return lost

    def nearest_host(self, server: str) -> str | None:
        """:returns: the nearest node hosting C{server}, or C{None}."""
        return self.registry.nearest_host(server)

    # Stopping.

    @property
    def stopping(self) -> bool:
        """Whether this node is stopping: no link opens any more."""
        return self._links.stopping

    def stop(self, grace: float = 2.0) -> Deferred[None]:
        """
        Close every link with 1000, fail every pending call and forget the
        forwarded ones.

        :returns: a Deferred that fires once every link has closed, or after
            C{grace} seconds at most.
        """
        self._links.stopping = True
        self.probes.stop()
        self.adverts.stop()
        self.info.stop()
        if self.records is not None:
            self.records.stop()
        self.link_watch.stop()
        self.calls.stop()
        return self._links.close_all(self.clock, grace)


class Probes:
    """
    Routed C{ping}s to any node (the original design's nodes answer them
    too), timed by their C{pong}s: what C{node.traceroute} measures.
    """

    _log = Logger()

    def __init__(self, node_id: str, clock: IReactorTime, forwarder: Forwarder) -> None:
        self.node_id = node_id
        self.clock = clock
        self._forwarder = forwarder
        #: routed pings in flight: ping id -> (its Deferred, when sent (its
        #: timestamp), its deadline, where to)
        self._probes: dict[str, tuple[Deferred[float | None], float, IDelayedCall, str]] = {}
        #: the same by (destination, the ping's timestamp): an original-design
        #: node's pong has no reply_to, and echoes the timestamp
        self._stamps: dict[tuple[str, float], str] = {}

    def probe(self, destination: str, timeout: float = 2.0) -> Deferred[float | None]:
        """
        Send a routed C{ping} to C{destination} and time its C{pong}.

        :returns: a Deferred of the round trip in seconds, or of C{None} if
            no pong came within C{timeout} (it never fails).
        """
        now = self.clock.seconds()
        envelope = Envelope.create(Ping(timestamp=now), self.node_id, destination, now)
        probe_id = envelope.id or ""
        d: Deferred[float | None] = Deferred()
        timer = self.clock.callLater(timeout, self._done, probe_id, None)
        self._probes[probe_id] = (d, now, timer, destination)
        self._stamps[destination, now] = probe_id
        try:
            self._forwarder.forward(envelope, came_from=None)
        except Exception:  # too large cannot be; anything else: no answer
            self._log.failure("probing {node} failed", node=destination)
        return d

    def answered(self, envelope: Envelope) -> bool:
        """
        Settle the probe a C{pong} answers: C{reply_to} its ping's id, or,
        from an original-design node (which sends no C{reply_to}), the
        ping's timestamp echoed.

        :returns: whether it answered one.
        """
        probe_id = envelope.reply_to
        if probe_id is None:
            stamp = envelope.data.get("timestamp") if isinstance(envelope.data, dict) else None
            if type(stamp) is not float:
                return False
            probe_id = self._stamps.get((envelope.sender, stamp))
        entry = self._probes.get(probe_id or "")
        if entry is None:
            return False
        self._done(probe_id or "", self.clock.seconds() - entry[1])
        return True

    def _done(self, probe_id: str, rtt: float | None) -> None:
        entry = self._probes.pop(probe_id, None)
        if entry is not None:
            d, sent, timer, destination = entry
            self._stamps.pop((destination, sent), None)
            if timer.active():
                timer.cancel()
            d.callback(rtt)

    def stop(self) -> None:
        """Settle every probe in flight with C{None}."""
        for probe_id in list(self._probes):
            self._done(probe_id, None)
