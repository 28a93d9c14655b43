# -*- test-case-name: tests.test_mesh -*-
"""
L{Mesh}: a node's side of the peer network. It keeps the open links, the
routing table and the calls in flight, and moves every message: to a local
handler when it is addressed here, otherwise on towards its destination.

Forwarding. A message for a direct neighbour goes to it as is; a message for
a node further away goes to the next hop of its best route. That hop gets it
as is too when it is a relaytx router (it advertises routes, and accepts a
message from a link when the message's route ends with that link's peer);
any other neighbour gets it wrapped in a C{route_message} addressed to it,
the original design's wrapper, which its nodes unwrap and pass on (they
take nothing else from a node that is not its sender). A wrapper is one
more envelope for each hop to make, write and read: without them, two-hop
calls between relaytx nodes went about 15% faster. Each forwarder appends
itself to the message's C{route} and decrements its C{ttl}; a message whose
TTL runs out or whose route already holds the forwarder is dropped (and a
call among them is answered with -32002). With no known route, the
original's fallback applies: the message is flooded to every healthy
neighbour not already in its route; the destination executes it at most
once (L{SeenMessages}).

Calls. A call leaves with the caller's remaining time budget. The caller
waits in L{PendingCalls}; every forwarder remembers the call in
L{ForwardedCalls}. When a link goes down, the calls sent through it fail at
once: the caller's own with -32002, and a forwarder sends a -32002 answer
back towards each caller whose call it had passed into that link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx.calls import ForwardedCalls, PendingCalls, SeenMessages
from relaytx.errors import (
    CallError,
    MalformedMessage,
    MessageTooLarge,
    NodeUnreachable,
    Overloaded,
    ProtocolViolation,
    RemoteCallError,
    error_for_code,
    failure_exception,
)
from relaytx.jsonrpc import CallTarget
from relaytx.metrics import NodeMetrics
from relaytx.peer import CLOSE_NORMAL, CLOSE_REPLACED, PeerSession
from relaytx.routing import Router
from relaytx.wire import (
    CORE_TYPES,
    CallSpec,
    Envelope,
    MessageTypes,
    Payload,
    RegistrySync,
    RouteMessage,
    ServerCall,
    ServerResponse,
    rfc3339,
    secret_id,
)

#: Messages that are harmless twice, so not remembered for deduplication
#: (pings and pongs alone would fill the memory of seen ids on a busy hub;
#: a second answer to a call finds it gone and is counted as late).
_NOT_DEDUPLICATED = frozenset({"route_message", "ping", "pong", "registry_sync", "server_response"})

#: At most this many neighbours get a flooded copy of one message.
MAX_FLOOD = 32

#: Changes within this many seconds are announced in one registry_sync.
SYNC_DELAY = 0.02


class LinkRefused(Exception):
    """A link cannot be opened; the message says why (for the HTTP answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Mesh:
    """
    The links, routes and calls in flight of node C{node_id}.

    :param execute_local: runs a call addressed to this node (the node's
        servers); returns the result or a Deferred of it, or raises.
    :param local_servers: returns this node's servers and their methods.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        execute_local: Callable[[CallTarget], Any],
        local_servers: Callable[[], Mapping[str, list[str]]],
        ping_interval: float = 5.0,
        registry_enabled: bool = True,
        max_pending_calls: int = 10_000,
        max_message_size: int = 1024 * 1024,
        max_routes: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.metrics = metrics
        self.ping_interval = ping_interval
        self.registry_enabled = registry_enabled
        self.max_pending_calls = max_pending_calls
        self.max_message_size = max_message_size
        self.max_routes = max_routes
        self.router = Router(node_id)
        self.links: dict[str, PeerSession] = {}
        self.pending = PendingCalls(clock, on_late=metrics.late_answers.inc)
        metrics.pending_calls.set_function(lambda: len(self.pending))  # read when scraped
        self.forwarded = ForwardedCalls(clock)
        self.seen = SeenMessages(clock)
        self.session_class: type[PeerSession] = PeerSession
        self.handlers: dict[type[Payload], Callable[[Envelope, Any], None]] = {}
        self.message_types: MessageTypes = CORE_TYPES
        self._execute_local = execute_local
        self._local_servers = local_servers
        self._sync_call: Any = None
        self._sync_everyone = False
        self._sync_peers: set[str] = set()
        self._sent_adverts: dict[str, RegistrySync] = {}
        self._stopping = False
        self._all_closed: Deferred[None] | None = None
        #: calls running here for others: Deferred -> (caller, the link it came by)
        self._executing: dict[Deferred[Any], tuple[str, str | None]] = {}

    # Extension.

    def use_session(self, session_class: type[PeerSession]) -> None:
        """Use C{session_class} for every link opened from now on."""
        self.session_class = session_class
        self._refresh_types()

    def register_handler(self, payload_type: type[Payload], handler: Callable[..., None]) -> None:
        """Handle C{payload_type} messages addressed here with C{handler(envelope, payload)}."""
        self.handlers[payload_type] = handler
        self._refresh_types()

    def _refresh_types(self) -> None:
        extra = {*self.session_class.handlers, *self.handlers} - set(CORE_TYPES)
        self.message_types = CORE_TYPES.extended(*sorted(extra, key=lambda c: c.TYPE))

    # Links.

    def check_new_link(self, peer_id: str, direction: str) -> None:
        """
        Decide whether a link with C{peer_id} may open.

        When two nodes dial each other, the link dialled by the node with
        the smaller id is kept: an inbound link is refused while this node,
        having the smaller id, holds an outbound one to the same peer.
        Otherwise a new link replaces the old one.

        :raises LinkRefused: if it may not.
        """
        if peer_id == self.node_id:
            raise LinkRefused(400, "a node cannot link to itself")
        if self._stopping:
            raise LinkRefused(503, "node is stopping")
        existing = self.links.get(peer_id)
        if (
            existing is not None
            and direction == "inbound"
            and existing.direction == "outbound"
            and self.node_id < peer_id
        ):
            raise LinkRefused(409, f"already linked to {peer_id} (the link {self.node_id} dialled)")

    def open_link(self, peer_id: str, direction: str, address: str, transport: Any) -> PeerSession:
        """
        A link's WebSocket is open: start its session.

        :raises LinkRefused: as L{check_new_link}.
        """
        self.check_new_link(peer_id, direction)
        old = self.links.get(peer_id)
        session = self.session_class(self, peer_id, direction, address)
        self.links[peer_id] = session
        if old is not None:
            self._log.info("a new link from {peer} replaces the old one", peer=peer_id)
            old.close(CLOSE_REPLACED, "replaced by a newer link")
        session.connection_made(transport)
        routes_changed = self.router.link_up(peer_id)
        self.metrics.peers.set(len(self.links))
        self._log.info(
            "linked to {peer} ({direction}, {address})",
            peer=peer_id,
            direction=direction,
            address=address,
        )
        self._sent_adverts.pop(peer_id, None)
        self.schedule_sync(at_once=True, peers=[peer_id])
        if routes_changed:
            self.schedule_sync(peers=self.router.routers())
        return session

    def link_lost(self, session: PeerSession, reason: str) -> None:
        """A session's link closed (called by the session)."""
        peer_id = session.peer_id
        if self.links.get(peer_id) is not session:
            return  # an old, replaced link: the peer is still linked
        del self.links[peer_id]
        self._sent_adverts.pop(peer_id, None)
        self.metrics.peers.set(len(self.links))
        self._log.info("link to {peer} lost ({reason})", peer=peer_id, reason=reason or "closed")
        self.router.link_down(peer_id)
        self._path_lost(peer_id)
        self.schedule_sync(peers=self.router.routers())
        if self._all_closed is not None and not self.links:
            self._closed_all()

    def _path_lost(self, peer_id: str) -> None:
        """Fail at once whatever was travelling through C{peer_id}."""

        def unreachable(destination: str) -> CallError:
            return NodeUnreachable(
                f"Path to node {destination!r} lost: link to {peer_id} went down",
                node_id=self.node_id,
                route=[self.node_id, peer_id],
            )

        self.pending.fail_via(peer_id, unreachable)
        # Flooded calls (sent via no one neighbour) fail here only when the
        # table is complete or no link is left: in flood mode the table never
        # knows far nodes, so "no route" would fail calls this loss never touched.
        if self._routes_are_complete() or not self.links:
            for destination in list(self._pending_destinations()):
                if destination not in self.links and self.router.route(destination) is None:
                    self.pending.fail_destination(destination, unreachable)
        for caller, response_id, target in list(self.forwarded.lost_link(peer_id)):
            self._reply(caller, response_id, unreachable(target))
        # Calls running here for a caller now out of reach: it has been told
        # -32002 by its side; stop working on them (queued ones are skipped).
        for execution, (caller, via) in list(self._executing.items()):
            if via == peer_id and not self.can_reach(caller):
                execution.cancel()

    def _pending_destinations(self) -> set[str]:
        return self.pending.destinations()

    def neighbour_server_count(self, peer_id: str) -> int:
        """:returns: how many servers neighbour C{peer_id} advertised."""
        route = self.router.route(peer_id)
        return 0 if route is None else len(route.servers)

    def count_auth_failure(self, peer_id: str | None, why: str) -> None:
        """Count (and log) a peer that failed to prove the cluster secret."""
        self.metrics.auth_failures.inc()
        self._log.warn("peer {peer} failed authentication: {why}", peer=peer_id, why=why)

    def count_bad_input(self, error: ProtocolViolation, session: PeerSession) -> None:
        """Count (and log) bad input from a link."""
        self.metrics.drop(error.reason)
        self._log.debug("bad input from {peer}: {error}", peer=session.peer_id, error=str(error))

    # Registry sync.

    def schedule_sync(self, at_once: bool = False, peers: Iterable[str] | None = None) -> None:
        """
        Announce this node's servers and routes soon, coalescing changes
        that come close together.

        :param peers: the neighbours that need to hear (a new link; the
            routers, after a route change); all of them when C{None} (this
            node's servers changed). Only those are visited, so a hub with
            thousands of bare links pays per change for whom it concerns.
        """
        if not self.registry_enabled or self._stopping:
            return
        if peers is None:
            self._sync_everyone = True
        else:
            self._sync_peers.update(peers)
        if self._sync_call is not None and self._sync_call.active():
            if not at_once:
                return
            self._sync_call.cancel()
        self._sync_call = self.clock.callLater(0 if at_once else SYNC_DELAY, self._sync)

    def _sync(self) -> None:
        self._sync_call = None
        if self._sync_everyone:
            targets = list(self.links.items())
        else:
            links = self.links
            targets = [(p, links[p]) for p in self._sync_peers if p in links]
        self._sync_everyone = False
        self._sync_peers = set()
        own = {name: tuple(methods) for name, methods in self._local_servers().items()}
        now = self.clock.seconds()
        router = self.router
        for peer_id, session in targets:
            if router.is_router(peer_id):
                advert = router.advert_for(peer_id, own)
            else:
                # A peer that has not advertised routes (yet) hears only our
                # servers, with an empty table that says "we route: send
                # yours". Its answer makes it a router and gets it the full
                # table; a peer that never answers (an original node, a bare
                # client) never costs us more than this.
                advert = RegistrySync(own, {})
            if self._sent_adverts.get(peer_id) == advert:
                continue
            try:
                session.send(Envelope.create(advert, self.node_id, peer_id, now))
            except MessageTooLarge as e:
                self.metrics.drop("advert_too_large")
                self._log.warn("cannot advertise to {peer}: {error}", peer=peer_id, error=str(e))
                continue
            self._sent_adverts[peer_id] = advert

    def advert_from(self, session: PeerSession, sync: RegistrySync) -> None:
        """Take a neighbour's advert; re-announce if the routes changed."""
        if not self.registry_enabled or self.links.get(session.peer_id) is not session:
            return
        if sync.routes is not None and len(sync.routes) > self.max_routes:
            self.metrics.drop("too_many_routes")
            self._log.warn(
                "ignoring an advert of {n} routes from {peer} (limit {limit})",
                n=len(sync.routes),
                peer=session.peer_id,
                limit=self.max_routes,
            )
            return
        was_router = self.router.is_router(session.peer_id)
        if self.router.advert_from(session.peer_id, sync, self.clock.seconds()):
            self._after_route_change()
        if not was_router and sync.routes is not None:
            # It routes: it gets our whole table now.
            self.schedule_sync(peers=[session.peer_id])

    def _after_route_change(self) -> None:
        for destination in list(self._pending_destinations()):
            if destination not in self.links and self.router.route(destination) is None:
                self.pending.fail_destination(
                    destination,
                    lambda d: NodeUnreachable(
                        f"Node {d!r} became unreachable", node_id=self.node_id
                    ),
                )
        self.schedule_sync(peers=self.router.routers())

    # Moving messages.

    def receive(self, envelope: Envelope, session: PeerSession, unwrapped: bool = False) -> None:
        """
        A message arrived on C{session}'s link (C{unwrapped}: it came inside
        a C{route_message}). Deliver it here or send it on.

        A link speaks only for its peer: a message must come from that peer
        or have been forwarded by it (the last node of its C{route});
        anything else is spoofed, counted and dropped.
        """
        peer = session.peer_id
        if not unwrapped and envelope.sender == peer:
            pass
        elif not envelope.route or envelope.route[-1] != peer or envelope.sender == self.node_id:
            self.metrics.drop("spoofed")
            return
        if envelope.to == self.node_id:
            if envelope.type == RouteMessage.TYPE:
                self._unwrap(envelope, session)
                return
            if envelope.type not in _NOT_DEDUPLICATED and not self.seen.first_time(
                envelope.sender, envelope.id
            ):
                self.metrics.drop("duplicate")
                return
            session.dispatch(envelope)
            return
        if self.node_id in envelope.route:
            self.metrics.drop("loop")
            return
        hopped = envelope.hop(self.node_id)
        try:
            self.forward(hopped, came_from=session.peer_id)
        except MessageTooLarge:
            self.metrics.drop("too_large")
            self._refuse_call(hopped, session.peer_id, "message too large to forward")

    def _unwrap(self, wrapper: Envelope, session: PeerSession) -> None:
        # The mesh wraps (in _send_via), so the mesh unwraps: a message
        # passing through skips the session's dispatch by type.
        try:
            inner = RouteMessage.from_data(wrapper.data).original_message
        except MalformedMessage as e:
            self.count_bad_input(e, session)
            return
        self.receive(inner, session, unwrapped=True)

    def forward(
        self, envelope: Envelope, came_from: str | None, back_via: str | None = None
    ) -> str | None:
        """
        Send C{envelope} (already stamped by this node) one hop on.

        :param back_via: for an answer, the neighbour its call came from:
            the way back when no route to the caller is known (yet).
        :returns: the neighbour it went to, or C{None} if it was flooded or
            dropped.
        """
        destination = envelope.to
        if envelope.ttl <= 0:
            self.metrics.drop("ttl_exceeded")
            if self._may_refuse(came_from):
                self._refuse_call(envelope, came_from, "TTL exceeded")
            return None
        session = self.links.get(destination)
        if session is None or not session.healthy:
            next_hop = self.router.next_hop(destination)
            session = self.links.get(next_hop) if next_hop is not None else None
        if session is None and envelope.type == ServerResponse.TYPE:
            # No route to the caller (its adverts may still be on the way):
            # an answer goes back the way its call came.
            back = back_via or self.forwarded.came_from(
                destination, envelope.data.get("response_id")
            )
            session = self.links.get(back) if back is not None else None
        if session is not None:
            self._send_via(session, envelope, came_from)
            return session.peer_id
        targets = [
            s
            for peer, s in self.links.items()
            if s.healthy and peer not in envelope.route and peer != came_from
        ]
        if not targets or self._routes_are_complete():
            self.metrics.drop("no_route")
            if self._may_refuse(came_from):
                self._refuse_call(envelope, came_from, "no route")
            return None
        for target in targets[:MAX_FLOOD]:  # the original's flood fallback, capped
            self._send_via(target, envelope, came_from, flooded=True)
        return None

    def _may_refuse(self, came_from: str | None) -> bool:
        # A forwarder without a complete table may hold one flooded copy of
        # many: its dead end says nothing of the others, one of which may
        # reach the target, so it drops the copy silently (as the original
        # does) instead of failing the caller's call.
        return came_from is None or self._routes_are_complete()

    def _routes_are_complete(self) -> bool:
        # With the registry on and every neighbour advertising routes, the
        # table knows every reachable node: flooding would find nothing more.
        if not self.registry_enabled:
            return False
        neighbours = self.router._neighbours
        return all(
            n.advert is not None and n.advert.routes is not None for n in neighbours.values()
        )

    def _send_via(
        self, session: PeerSession, envelope: Envelope, came_from: str | None, flooded: bool = False
    ) -> None:
        if came_from is not None:
            self.metrics.messages_routed.inc()
            if envelope.type == ServerCall.TYPE:
                # One lost branch of a flood says nothing of the other copies.
                self._remember_forwarded(envelope, came_from, None if flooded else session.peer_id)
            elif envelope.type == ServerResponse.TYPE:
                self.forwarded.answered(envelope.to, envelope.data.get("response_id"))
        if session.peer_id == envelope.to or self.router.is_router(session.peer_id):
            # A relaytx router takes a message as is: its route ends with
            # the hop that sent it, which is all a wrapper would tell.
            session.send(envelope)
        else:
            wrapper = RouteMessage(envelope)
            session.send(
                Envelope.create(wrapper, self.node_id, session.peer_id, self.clock.seconds())
            )

    def _remember_forwarded(self, envelope: Envelope, came_from: str, went_to: str | None) -> None:
        tracking = ServerCall.tracking(envelope.data)
        if tracking is not None:
            response_id, timeout = tracking
            self.forwarded.remember(
                envelope.sender, response_id, envelope.to, came_from, went_to, timeout or 30.0
            )

    def _refuse_call(self, envelope: Envelope, came_from: str | None, why: str) -> None:
        """A call that cannot travel on is answered with -32002 at once."""
        if envelope.type != ServerCall.TYPE:
            return
        response_id = envelope.data.get("response_id")
        error = NodeUnreachable(
            f"Node {envelope.to!r} unreachable from {self.node_id}: {why}",
            node_id=self.node_id,
            route=[*envelope.route],
        )
        if came_from is None:
            if isinstance(response_id, str):
                self.pending.resolve(response_id, error=error)
            return
        if isinstance(response_id, str):
            self._reply(envelope.sender, response_id, error)

    def send(
        self,
        destination: str,
        payload: Payload,
        reply_to: str | None = None,
        back_via: str | None = None,
    ) -> str | None:
        """
        Originate a message to C{destination}, routed like any other.

        :returns: the neighbour it went to, or C{None} if it was flooded or
            could not be sent.
        """
        envelope = Envelope.create(
            payload, self.node_id, destination, self.clock.seconds(), reply_to=reply_to
        )
        return self.forward(envelope, came_from=None, back_via=back_via)

    def can_reach(self, destination: str) -> bool:
        """:returns: whether a link or a route to C{destination} is known."""
        return destination in self.links or self.router.route(destination) is not None

    # Calls.

    def call(self, target: CallTarget) -> Deferred[Any]:
        """
        Call a server on another node.

        :returns: a Deferred with the result, failing with a L{CallError}.
        """
        destination = target.node_id
        assert destination is not None and destination != self.node_id
        if self._stopping:
            return fail(NodeUnreachable("node is stopping", node_id=self.node_id))
        if len(self.pending) >= self.max_pending_calls:
            return fail(
                Overloaded(
                    f"Overloaded: {len(self.pending)} calls already pending on {self.node_id}",
                    node_id=self.node_id,
                )
            )
        if not self.can_reach(destination) and (self._routes_are_complete() or not self.links):
            return fail(
                NodeUnreachable(
                    f"No route to node {destination!r}",
                    node_id=self.node_id,
                    route=[self.node_id],
                )
            )
        response_id = secret_id()  # unguessable: only the callee can answer
        spec = CallSpec(target.server, target.method, target.args, target.kwargs, target.timeout)
        call = ServerCall(spec, response_id)
        now = self.clock.seconds()
        envelope = Envelope.create(call, self.node_id, destination, now)
        d = self.pending.expect(response_id, destination, None, target.timeout)
        try:
            self.pending.set_via(response_id, self.forward(envelope, came_from=None))
        except MessageTooLarge as e:
            self.pending.resolve(response_id, error=Overloaded(f"Call too large: {e}"))
        return d

    def execute(
        self, envelope: Envelope, call: ServerCall, session: PeerSession | None = None
    ) -> None:
        """
        Run a call addressed here and route the answer to its caller.

        Access rules judge the caller the envelope names; limits count
        against the neighbour it arrived from (C{session}), which is the
        only identity a link proves: a neighbour cannot escape its share by
        claiming to relay for others.
        """
        spec = call.call
        budget = spec.timeout if spec.timeout else 30.0
        target = CallTarget(
            self.node_id,
            spec.server_name,
            spec.method,
            spec.args,
            dict(spec.kwargs),
            budget,
            caller=envelope.sender,
            via=session.peer_id if session is not None else None,
        )
        back_via = session.peer_id if session is not None else None
        try:
            result = self._execute_local(target)
        except Exception:
            self._answer_call(Failure(), envelope, call, back_via)
            return
        if not isinstance(result, Deferred):  # answered at once: the common case
            self._answer_call(result, envelope, call, back_via)
            return
        # (The node times the call out at its budget, target.timeout.)
        self._executing[result] = (envelope.sender, back_via)
        result.addBoth(self._executed, result)
        result.addBoth(self._answer_call, envelope, call, back_via)

    def _executed(self, outcome: Any, d: Deferred[Any]) -> Any:
        self._executing.pop(d, None)
        return outcome

    def _answer_call(
        self, outcome: Any, envelope: Envelope, call: ServerCall, back_via: str | None
    ) -> None:
        if isinstance(outcome, Failure):
            error = failure_exception(outcome)
            if isinstance(error, CancelledError):  # cancelled by stop() or a lost caller
                why = "stopped" if self._stopping else "lost the caller"
                error = NodeUnreachable(f"node {self.node_id} {why} before answering")
            elif not isinstance(error, CallError):
                error = RemoteCallError.from_exception(error, self.node_id)
            self._reply(
                envelope.sender, call.response_id, error, route=envelope.route, back_via=back_via
            )
        else:
            response = ServerResponse(
                response_id=call.response_id, success=True, node_id=self.node_id, result=outcome
            )
            self._send_response(envelope.sender, response, back_via)

    def _reply(
        self,
        caller: str,
        response_id: str | None,
        error: CallError,
        route: tuple[str, ...] | list[str] | None = None,
        back_via: str | None = None,
    ) -> None:
        error.with_data(node_id=self.node_id)
        if route is not None:
            error.with_data(route=[*route, self.node_id])
        response = ServerResponse(
            response_id=response_id,
            success=False,
            node_id=self.node_id,
            error=error.message,
            error_code=error.code,
            error_data=error.data,
        )
        if caller == self.node_id:
            if response_id is not None:
                self.pending.resolve(response_id, error=error)
            return
        self._send_response(caller, response, back_via)

    def _send_response(
        self, caller: str, response: ServerResponse, back_via: str | None = None
    ) -> None:
        try:
            self.send(caller, response, back_via=back_via)
        except TypeError as e:  # the result cannot be encoded as JSON
            error = RemoteCallError(f"TypeError: result is not JSON-serialisable: {e}")
            self._reply(caller, response.response_id, error.with_data(type="TypeError"))
        except MessageTooLarge as e:
            error = RemoteCallError(f"ResultTooLarge: {e}")
            self._reply(caller, response.response_id, error.with_data(type="ResultTooLarge"))

    def answer(self, envelope: Envelope, response: ServerResponse) -> None:
        """
        An answer to one of this node's calls arrived. Only the node the
        call went to may answer it; a node on the way may only report the
        path lost (-32002). Anything else is a forgery: dropped, counted.
        """
        destination = self.pending.destination_of(response.response_id)
        if destination is not None and envelope.sender != destination:
            if response.success or response.error_code != NodeUnreachable.code:
                self.metrics.drop("forged_answer")
                return
        if response.success:
            self.pending.resolve(response.response_id, result=response.result)
            return
        data = dict(response.error_data or {})
        data.setdefault("node_id", response.node_id or envelope.sender)
        error = error_for_code(
            response.error_code if response.error_code is not None else RemoteCallError.code,
            response.error or "remote error",
            data,
        )
        self.pending.resolve(response.response_id, error=error)

    # Views.

    def peers_view(self) -> dict[str, dict[str, Any]]:
        """:returns: C{GET /registry/peers}."""
        return {peer: session.view() for peer, session in sorted(self.links.items())}

    def directory(self) -> dict[str, list[dict[str, Any]]]:
        """:returns: the remote part of C{GET /registry/servers}."""
        result: dict[str, list[dict[str, Any]]] = {}
        if not self.registry_enabled:
            return result
        for destination, route in sorted(self.router.routes().items()):
            hop = self.links.get(route.next_hop)
            last_seen = rfc3339(hop.last_seen if hop is not None else self.clock.seconds())
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
        """:returns: the nearest healthy node hosting C{server}, or C{None}."""
        if not self.registry_enabled:
            return None
        best: tuple[int, str] | None = None
        for destination, route in self.router.routes().items():
            if server in route.servers and self.router.is_healthy(route.next_hop):
                key = (route.hops, destination)
                if best is None or key < best:
                    best = key
        return None if best is None else best[1]

    # Stopping.

    def stop(self, grace: float = 2.0) -> Deferred[None]:
        """
        Close every link with 1000, fail every pending call and forget the
        forwarded ones.

        :returns: a Deferred that fires once every link has closed, or after
            C{grace} seconds at most.
        """
        self._stopping = True
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None
        self.pending.fail_all(
            lambda d: NodeUnreachable(f"node {self.node_id} is stopping", node_id=self.node_id)
        )
        self.forwarded.clear()
        for execution in list(self._executing):
            execution.cancel()  # and its budget timer; the caller hears -32002
        for session in list(self.links.values()):
            session.close(CLOSE_NORMAL, "node stopping")
        if not self.links:
            return succeed(None)
        self._all_closed = Deferred()
        timer = self.clock.callLater(grace, self._closed_all)
        return self._all_closed.addBoth(lambda _: timer.cancel() if timer.active() else None)

    def _closed_all(self) -> None:
        d, self._all_closed = self._all_closed, None
        if d is not None:
            for session in list(self.links.values()):
                session.connection_lost("node stopped")
            d.callback(None)
