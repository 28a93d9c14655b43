# -*- test-case-name: tests.test_mesh -*-
"""
L{Forwarder}: moves every message a node reads or originates, to a local
handler when it is addressed here, otherwise one hop on towards its
destination.

A message for a direct neighbour goes to it as is; a message for a node
further away goes to the next hop of its best route. That hop gets it as
is too when it is a relaytx router (it advertises routes, and accepts a
message from a link when the message's route ends with that link's peer);
any other neighbour gets it wrapped in a C{route_message} addressed to it,
the original design's wrapper, which its nodes unwrap and pass on (they
take nothing else from a node that is not its sender). Between routers the
wrapper would only be one more envelope for each hop to make, write and
read.

Each forwarder appends itself to the message's C{route} and decrements its
C{ttl}. A message this node originates towards a relaytx router gets a hop
budget that covers its route (L{relaytx._routing.hop_budget}: the route's hops plus a
margin, at least the original design's 10, at most 64); one that would go
to any other neighbour, or be flooded, keeps the default 10. A message
whose TTL runs out while a route to its destination goes on through relaytx
nodes gets a budget for that route, within 64 hops in all; otherwise it is
dropped, as is one whose route already holds the forwarder (and a call
among them is refused, which answers it with -32002). With no known route,
the original's fallback applies: the message is flooded to every healthy
neighbour not already in its route; the destination runs it at most once
(L{SeenMessages}).

A link speaks only for its peer: a message must come from that peer or
have been forwarded by it (the last node of its C{route}); anything else is
spoofed, counted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from relaytx._calls import ForwardedCalls, SeenMessages
from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._routing import HOP_BUDGETS, HOP_MARGIN, MAX_HOPS, Router
from relaytx._tracing import TRACE_PATH, HopTraces
from relaytx.errors import MalformedMessage, MessageTooLarge
from relaytx.peer import PeerSession
from relaytx.wire import (
    MAX_ID_LENGTH,
    Envelope,
    Payload,
    RouteMessage,
    ServerCall,
    ServerResponse,
)

#: Messages that are harmless twice, so not remembered for deduplication
#: (pings and pongs alone would fill the memory of seen ids on a busy hub;
#: a second answer to a call finds it gone and is counted as late).
_NOT_DEDUPLICATED = frozenset({"route_message", "ping", "pong", "registry_sync", "server_response"})

#: Messages whose C{response_id} a forwarder checks before passing them on.
_ANSWERED = frozenset({"server_call", "server_response"})


def _short_response_id(envelope: Envelope) -> bool:
    response_id = envelope.data.get("response_id")
    return type(response_id) is not str or len(response_id) <= MAX_ID_LENGTH


#: At most this many neighbours get a flooded copy of one message.
MAX_FLOOD = 32

#: A call's time budget when it names none, for a forwarder's memory of it.
_UNKNOWN_BUDGET = 30.0


class Forwarder:
    """
    :param routes_are_complete: whether the routing table knows every node
        reachable at all (flooding would then find nothing more).
    :param refuse: called with a message that cannot travel on, the link
        it came from (C{None}: it was originated here), why, and whether
        this node is overloaded; a call among such messages is answered
        with -32002 (-32005 when overloaded).
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        router: Router,
        links: LinkTable,
        forwarded: ForwardedCalls,
        seen: SeenMessages,
        routes_are_complete: Callable[[], bool],
        refuse: Callable[..., None],
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._router = router
        self._links = links
        self._forwarded = forwarded
        self._seen = seen
        self._routes_are_complete = routes_are_complete
        self._refuse = refuse
        #: traced calls passing through (see L{relaytx._tracing.HopTraces})
        self.hops = HopTraces(node_id, clock)

    def receive(self, envelope: Envelope, session: PeerSession, unwrapped: bool = False) -> None:
        """
        A message arrived on C{session}'s link (C{unwrapped}: it came inside
        a C{route_message}). Deliver it here or send it on.
        """
        peer = session.peer_id
        node_id = self._node_id
        if not unwrapped and envelope.sender == peer:
            pass
        elif not envelope.route or envelope.route[-1] != peer or envelope.sender == node_id:
            self._metrics.drop("spoofed")
            return
        if envelope.to == node_id:
            if envelope.type == RouteMessage.TYPE:
                self._unwrap(envelope, session)
                return
            if envelope.type not in _NOT_DEDUPLICATED and not self._seen.first_time(
                envelope.sender, envelope.id
            ):
                self._metrics.drop("duplicate")
                return
            session.dispatch(envelope)
            return
        if node_id in envelope.route:
            self._metrics.drop("loop")
            return
        kind = envelope.type
        if kind in _ANSWERED and not _short_response_id(envelope):
            session.host.bad_input(
                MalformedMessage("response_id is too long", reason="bad_id"), session
            )
            return
        hopped = envelope.hop(node_id)
        if kind == ServerCall.TYPE and not self._forwarded.has_room(peer):
            # Remembered calls are bounded, in total and per neighbour
            # (SPEC section 10): one more is refused (-32005), not forwarded.
            self._metrics.drop("overloaded")
            self._refuse(hopped, peer, "too many forwarded calls", True)
            return
        hops = self.hops
        if kind == ServerCall.TYPE:
            if hops.tracer is not None or TRACE_PATH in envelope.data:
                hops.call_passing(hopped, peer, self._router.next_hop(envelope.to))
        elif hops.entries and kind == ServerResponse.TYPE:
            hops.answer_passing(hopped)
        try:
            self.forward(hopped, came_from=peer)
        except MessageTooLarge:
            self._metrics.drop("too_large")
            self._refuse(hopped, peer, "message too large to forward")

    def _unwrap(self, wrapper: Envelope, session: PeerSession) -> None:
        # The forwarder wraps, so the forwarder unwraps: a message passing
        # through skips the session's dispatch by type.
        try:
            inner = RouteMessage.from_data(wrapper.data).original_message
        except MalformedMessage as e:
            session.host.bad_input(e, session)
            return
        self.receive(inner, session, unwrapped=True)

    def send(
        self,
        destination: str,
        payload: Payload,
        reply_to: str | None = None,
        back_via: str | None = None,
    ) -> str | None:
        """
        Originate a message to C{destination}, routed like any other.

        :param back_via: for an answer, the neighbour its call came from.
        :returns: the neighbour it went to, or C{None} if it was flooded or
            could not be sent.
        :raises MessageTooLarge: if it is over the link's message limit.
        """
        envelope = Envelope.create(
            payload, self._node_id, destination, self._clock.seconds(), reply_to=reply_to
        )
        return self.forward(envelope, came_from=None, back_via=back_via)

    def forward(
        self, envelope: Envelope, came_from: str | None, back_via: str | None = None
    ) -> str | None:
        """
        Send C{envelope} (already stamped by this node) one hop on.

        :param came_from: the neighbour it arrived from (C{None}: it was
            originated here).
        :param back_via: for an answer, the neighbour its call came from:
            the way back when no route to the caller is known (yet).
        :returns: the neighbour it went to, or C{None} if it was flooded or
            dropped.
        :raises MessageTooLarge: if it is over the link's message limit.
        """
        destination = envelope.to
        if envelope.ttl <= 0:
            rebudgeted = self._rebudget(envelope)
            if rebudgeted is None:
                self._metrics.drop("ttl_exceeded")
                if self._may_refuse(came_from):
                    self._refuse(envelope, came_from, "TTL exceeded")
                return None
            envelope = rebudgeted
        links = self._links
        session = links.get(destination)
        if session is None or not session.healthy:
            route = self._router.route(destination)
            if route is None:
                session = None
            else:
                path = route.path
                session = links.get(path[0])
                if came_from is None and session is not None:
                    # Between relaytx nodes the hop budget covers the route.
                    # (A route of two hops or more was learned from a
                    # router; one of one hop keeps the default, 10.)
                    envelope.ttl = HOP_BUDGETS[len(path)]
        if session is None and envelope.type == ServerResponse.TYPE:
            # No route to the caller (its adverts may still be on the way):
            # an answer goes back the way its call came.
            back = back_via or self._forwarded.came_from(destination, envelope.response_id)
            session = links.get(back)
        if session is not None:
            self._send_via(session, envelope, came_from)
            return session.peer_id
        targets = links.healthy_except({*envelope.route, came_from})
        if not targets or self._routes_are_complete():
            self._metrics.drop("no_route")
            if self._may_refuse(came_from):
                self._refuse(envelope, came_from, "no route")
            return None
        for target in targets[:MAX_FLOOD]:  # the original's flood fallback, capped
            self._send_via(target, envelope, came_from, flooded=True)
        return None

    def _rebudget(self, envelope: Envelope) -> Envelope | None:
        """
        A message whose TTL ran out here while a loop-free route goes on
        through relaytx nodes: its budget is renewed to cover that route, as
        long as its hops in all stay within L{MAX_HOPS}; else C{None}.
        """
        destination = envelope.to
        router = self._router
        if destination in self._links:
            remaining = 1
        else:
            route = router.route(destination)
            if route is None or not router.is_router(route.path[0]):
                return None
            remaining = len(route.path)
        made = len(envelope.route) - 1
        budget = min(remaining + HOP_MARGIN, MAX_HOPS - made)
        if budget < remaining:
            return None
        return attrs.evolve(envelope, ttl=budget)

    def _may_refuse(self, came_from: str | None) -> bool:
        # A forwarder without a complete table may hold one flooded copy of
        # many: its dead end says nothing of the others, one of which may
        # reach the target, so it drops the copy silently (as the original
        # does) instead of failing the caller's call.
        return came_from is None or self._routes_are_complete()

    def _send_via(
        self, session: PeerSession, envelope: Envelope, came_from: str | None, flooded: bool = False
    ) -> None:
        if came_from is not None:
            self._metrics.messages_routed.inc()
            if envelope.type == ServerCall.TYPE:
                # One lost branch of a flood says nothing of the other copies.
                self._remember(envelope, came_from, None if flooded else session.peer_id)
            elif envelope.type == ServerResponse.TYPE:
                self._forwarded.answered(envelope.to, envelope.response_id)
        if session.peer_id == envelope.to or self._router.is_router(session.peer_id):
            # A relaytx router takes a message as is: its route ends with
            # the hop that sent it, which is all a wrapper would tell.
            session.send(envelope)
        else:
            wrapper = RouteMessage(envelope)
            session.send(
                Envelope.create(wrapper, self._node_id, session.peer_id, self._clock.seconds())
            )

    def _remember(self, envelope: Envelope, came_from: str, went_to: str | None) -> None:
        tracking = ServerCall.tracking(envelope.data)
        if tracking is not None:
            response_id, timeout = tracking
            self._forwarded.remember(
                envelope.sender, response_id, envelope.to, came_from, went_to,
                timeout or _UNKNOWN_BUDGET,
            )  # fmt: skip

    def can_reach(self, destination: str) -> bool:
        """:returns: whether a link or a route to C{destination} is known."""
        return destination in self._links or self._router.route(destination) is not None
