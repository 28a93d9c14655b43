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

An answer goes back the way its call came, while that way holds: the
callee sends it to the neighbour the call arrived from, and each forwarder
to the neighbour it had the call from (L{ForwardedCalls}), so a route
change downstream does not lose the answer of a call that ran. Only when
that link is gone does the answer follow the routing table.

A call for an original-design neighbour (which takes frames only from its
direct peers) that another node sent is not passed on as is: this node
calls the neighbour as itself and relays the answer (C{relay}).

Each forwarder appends itself to the message's C{route} and decrements its
C{ttl}. A message this node originates towards a relaytx router gets a hop
budget that covers its route (L{relaytx._routing.hop_budget}: the route's
hops plus a margin, at least the original design's 10, at most 64); one
that would go to any other neighbour keeps the default 10, and one flooded
from here gets 64 (as does one an original-design neighbour sent, flooded on
from here). A message whose TTL runs out while a route to its
destination goes on through relaytx nodes gets a budget for that route,
within 64 hops in all, and so does the answer of a call forwarded here, on
its way back; otherwise it is dropped, as is one whose route already holds
the forwarder (and a call among them is refused, which answers it with
-32002). With no known route, the original's fallback applies: the message
is flooded to every healthy relaytx neighbour not already in its route (an
original-design node forwards nothing, so it gets no copy); each node
passes on the first copy it gets, and only that one, and the destination
runs it at most once (L{SeenMessages}).

Every call sent on a link tells the link's session (C{awaiting}): its peer
must be heard from soon, or the link is dropped (L{relaytx._liveness}).

A link speaks only for its peer: a message must come from that peer or
have been forwarded by it (the last node of its C{route}); anything else is
spoofed, counted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Container

import attrs
from twisted.internet.interfaces import IReactorTime

from relaytx._calls import ForwardedCalls, OwedAnswers, SeenMessages
from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._routing import HOP_BUDGETS, HOP_MARGIN, MAX_HOPS, Router
from relaytx._tracing import TRACE_PATH, HopTraces
from relaytx.errors import LinkBackedUp, MalformedMessage, MessageTooLarge, NodeUnreachable
from relaytx.peer import PeerSession
from relaytx.wire import (
    DEFAULT_TTL,
    MAX_ID_LENGTH,
    STREAM_TYPES,
    CopyDropped,
    Envelope,
    Payload,
    RouteMessage,
    ServerCall,
    ServerResponse,
    StreamItem,
    new_id,
    rfc3339,
)

#: Messages that are harmless twice, so not remembered for deduplication
#: (pings and pongs alone would fill the memory of seen ids on a busy hub;
#: a second answer to a call finds it gone and is counted as late).
_NOT_DEDUPLICATED = frozenset(
    {
        "route_message",
        "ping",
        "pong",
        "registry_sync",
        "server_response",
        # numbered, cumulative or idempotent (relaytx._streams)
        "stream_item",
        "stream_credit",
        "call_cancel",
    }
)

#: The message types relaytx speaks itself; any other is a user's own
#: (SPEC section 7), whose origin PKI mode checks end to end.
RELAYTX_TYPES = frozenset(
    {
        *_NOT_DEDUPLICATED,
        "server_call",
        "link_close",
        "call_copy_dropped",
        "auth",
        "node_record",
    }
)

#: Messages whose C{response_id} a forwarder checks before passing them on.
_ANSWERED = frozenset({"server_call", "server_response"})

#: The types the forwarder looks at, as plain names (read for every message).
_CALL = ServerCall.TYPE
_ANSWER = ServerResponse.TYPE
_ITEM = StreamItem.TYPE


def _short_response_id(envelope: Envelope) -> bool:
    response_id = envelope.data.get("response_id")
    return type(response_id) is not str or len(response_id) <= MAX_ID_LENGTH


#: At most this many neighbours get a flooded copy of one message.
MAX_FLOOD = 32

#: What a flooded copy passing through is remembered as (L{SeenMessages}),
#: apart from the messages delivered here.
_FLOODED = "flooded"

#: A call's time budget when it names none, for a forwarder's memory of it.
_UNKNOWN_BUDGET = 30.0

#: What one forwarder may add to a message: its id in C{route}
#: (C{,"ID"}, an id of at most 64 characters), and in a traced answer its
#: time too (C{,"ID":123456.789}).
HOP_BYTES = 3 + 64
TRACED_HOP_BYTES = HOP_BYTES + 4 + 64 + 12


def room_for_hops(envelope: Envelope) -> int:
    """
    :returns: the bytes a message originated here keeps free under the
        message limit for what the forwarders on its way add, so that none
        of them finds it too large to pass on: its hop budget's worth.
    """
    per_hop = TRACED_HOP_BYTES if TRACE_PATH in envelope.data else HOP_BYTES
    return max(envelope.ttl - 1, 0) * per_hop


class Forwarder:
    """
    :param routes_are_complete: whether the routing table knows every node
        reachable at all (flooding would then find nothing more); given a
        destination, whether it knows the way to that one (see
        L{relaytx._mesh.Rerouting}).
    :param refuse: called with a message that cannot travel on, the link
        it came from (C{None}: it was originated here), why, and whether
        this node is overloaded; a call among such messages is answered
        with -32002 (-32005 when overloaded). With C{lost=True}, an answer
        or a stream item among them is lost for good, and its caller told.
    :param relay: called with a call from another node for an
        original-design neighbour, and the link it came from: this node
        makes the call itself and relays the answer.
    :param dead_end: called with a flooded call's caller, response id and
        target, the neighbour it came from, the route it came by and how
        its copies ended (L{relaytx._calls.ForwardedCalls.dead_end}), when
        none of the copies this node passed on got further: the call is
        answered -32002 (or -32006) that way, for this node's whole branch
        of the flood.
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
        routes_are_complete: Callable[..., bool],
        refuse: Callable[..., None],
        relay: Callable[[Envelope, str], None] | None = None,
        dead_end: Callable[[str, str, str, str, tuple[str, ...], str | None], None] | None = None,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._router = router
        self._links = links
        #: peer id -> session: the link table's own dict, read directly
        #: (a lookup for every message; a method call would double it)
        self._by_peer = links.links
        self._forwarded = forwarded
        self._seen = seen
        self._owed = OwedAnswers(clock)
        self._routes_are_complete = routes_are_complete
        self._refuse = refuse
        #: traced calls passing through (see L{relaytx._tracing.HopTraces})
        self.hops = HopTraces(node_id, clock)
        #: in PKI mode: whether a message of a user's own type to this node
        #: that another node passed on carries its sender's code
        self.check_origin: Callable[[Envelope], bool] | None = None
        #: messages this node originated and flooded, for want of a route
        self.floods = 0
        #: the neighbours the latest of them went to
        self.flooded_to: list[str] = []
        self._relay = relay
        self._dead_end = dead_end

    def receive(self, envelope: Envelope, session: PeerSession, unwrapped: bool = False) -> None:
        """
        A message arrived on C{session}'s link (C{unwrapped}: it came inside
        a C{route_message}). Deliver it here or send it on.
        """
        peer = session.peer_id
        node_id = self._node_id
        if envelope.sender == peer and (not unwrapped or not envelope.route):
            pass  # (an original node's minimal envelope has no route, wrapped too)
        elif not envelope.route or envelope.route[-1] != peer or envelope.sender == node_id:
            self._metrics.drop("spoofed")
            return
        if session.original and envelope.type == _CALL:
            owe_original(envelope, self._owed, peer)
        if envelope.to == node_id:
            if envelope.type == RouteMessage.TYPE:
                self._unwrap(envelope, session)
                return
            check = self.check_origin
            if (
                check is not None
                and envelope.sender != peer
                and envelope.type not in RELAYTX_TYPES
                and not check(envelope)
            ):
                self._metrics.drop("forged_message")
                return
            if envelope.type not in _NOT_DEDUPLICATED:
                # relaytx ids are unique; an original-design node's
                # (nanosecond timestamps) collide under load, so messages
                # are told apart by type and response id too. Whichever
                # link a copy came by: an original's message may come
                # straight from it and forwarded by a relaytx node alike.
                if not self._seen.first_time(
                    envelope.sender, envelope.id, envelope.type, envelope.response_id
                ):
                    self._metrics.drop("duplicate")
                    if envelope.type == _CALL and envelope.response_id is not None:
                        self.tell_dropped(peer, envelope.sender, envelope.response_id)
                    return
            session.dispatch(envelope)
            return
        if node_id in envelope.route:
            self._metrics.drop("loop")
            return
        kind = envelope.type
        if (
            kind == _ANSWER
            and self._forwarded.floods
            and envelope.data.get("error_code") == NodeUnreachable.code
        ):
            # A branch of a call this node flooded went no further: this
            # node's own dead end goes back once all its branches are.
            taken, ended = self._forwarded.dead_end(envelope.to, envelope.response_id, peer)
            if taken:
                if ended is not None and self._dead_end is not None:
                    self._dead_end(envelope.to, envelope.response_id or "", *ended)
                return
        if kind in _ANSWERED and not _short_response_id(envelope):
            session.host.bad_input(
                MalformedMessage("response_id is too long", reason="bad_id"), session
            )
            return
        hopped = envelope.hop(node_id)
        if hopped.ttl > MAX_HOPS:
            # (A budget past any loop-free path: from an original node, say,
            # which takes any ttl.)
            hopped.ttl = MAX_HOPS
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
            # (A call is refused; an answer or a stream item is lost here,
            # and its caller told so.)
            self._metrics.drop("too_large")
            self._refuse(hopped, peer, "message too large to forward", lost=True)
        except LinkBackedUp as e:
            self._metrics.drop("overloaded")
            self._refuse(hopped, peer, e.message, True)

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
        self,
        envelope: Envelope,
        came_from: str | None,
        back_via: str | None = None,
        budget: float | None = None,
        now: float | None = None,
    ) -> str | None:
        """
        Send C{envelope} (already stamped by this node) one hop on.

        :param came_from: the neighbour it arrived from (C{None}: it was
            originated here).
        :param back_via: for an answer, the neighbour its call came from
            (when this node did not forward that call itself: it ran it, or
            relayed it).
        :param budget: for a call originated here, its time budget.
        :param now: the clock's time, if the caller has just read it.
        :returns: the neighbour it went to, or C{None} if it was flooded or
            dropped.
        :raises MessageTooLarge: if it is over the link's message limit.
        """
        destination = envelope.to
        if envelope.ttl <= 0:
            rebudgeted = self._renewed(envelope, came_from)
            if rebudgeted is None:
                self._metrics.drop("ttl_exceeded")
                self._refuse(envelope, came_from, "TTL exceeded")
                return None
            envelope = rebudgeted
        kind = envelope.type
        if kind == _ANSWER or kind == _ITEM:
            # Back the way the call came, while that link holds; else routed.
            # (A stream's items go that way too, the call still remembered.)
            back = back_via
            if came_from is not None:
                forwarded = self._forwarded
                if kind == _ANSWER:
                    back = forwarded.take(destination, envelope.response_id) or back_via
                else:
                    back = forwarded.way_back(destination, envelope.response_id) or back_via
                if back == came_from:  # it came from there: routed, not sent back
                    back = None
            session = self._by_peer.get(back)  # type: ignore[arg-type]  # None finds nothing
            if (
                session is None
                or not session.healthy
                or (session.original and session.peer_id != destination)
            ):
                # (An original-design node passes nothing on: an answer to
                # a call it relayed goes the way the routes say, straight to
                # its caller where that is a neighbour, as the seed does.)
                session = self._routed(envelope, came_from)
            elif came_from is None and destination != back:
                # Its own answer, back along the call's path: a budget for
                # the route to the caller, as a call of its own would get.
                route = self._router.route(destination)
                if route is not None:
                    envelope.ttl = HOP_BUDGETS[len(route.path)]
        else:
            session = self._routed(envelope, came_from)
        if session is not None:
            if session.original:
                if kind in STREAM_TYPES:
                    # An original-design node never sees the frames of
                    # streams and cancels (relaytx._streams).
                    self._metrics.drop("not_understood")
                    return None
                if (
                    came_from is not None
                    and session.peer_id == destination
                    and kind == _CALL
                    and self._relay is not None
                ):
                    # It would drop a frame from anyone but its direct peers.
                    if self._seen.first_time(
                        envelope.sender, envelope.id, kind, envelope.response_id
                    ):
                        self._relay(envelope, came_from)
                    else:
                        self._metrics.drop("duplicate")
                    return destination
            self._send_via(session, envelope, came_from, False, budget, now)
            return session.peer_id
        if kind == _ITEM:
            # No way back: items follow their call, and are never flooded.
            self._metrics.drop("no_route")
            return None
        targets = self._links.flood_targets({*envelope.route, came_from})
        # (A route this node has but did not take is stale, see _routed: the
        # table is not all there is for that destination.)
        if not targets or (
            self._routes_are_complete(destination) and self._router.route(destination) is None
        ):
            # A dead end: the copy that came here goes no further (-32002,
            # which the node it came from takes for this branch only).
            self._metrics.drop("no_route")
            self._refuse(envelope, came_from, "no route")
            return None
        if came_from is None:
            # Flooded copies go to relaytx nodes only (and each passes on one
            # copy at most, below): a budget for any loop-free path.
            envelope.ttl = MAX_HOPS
            self.floods += 1
            self.flooded_to = [target.peer_id for target in targets[:MAX_FLOOD]]
        elif not self._seen.first_time(
            envelope.sender, envelope.id, _FLOODED, envelope.response_id
        ):
            # Another copy passed here already, and went wherever this one
            # could go: a flood costs each link a copy or two, whatever the
            # TTL. This branch ends here (the other copy's goes on).
            self._metrics.drop("duplicate")
            self._refuse(envelope, came_from, "another copy went on from here")
            return None
        else:
            entry = self._by_peer.get(came_from)
            if entry is not None and entry.original:
                # It enters the relaytx mesh here, from an original-design
                # node whose ten hops cover no mesh: from here on, a budget
                # for any loop-free path, as a flood started here gets.
                envelope.ttl = max(envelope.ttl, MAX_HOPS - (len(envelope.route) - 1))
        copies = targets[:MAX_FLOOD]  # the original's flood fallback, capped
        for target in copies:
            self._send_via(target, envelope, came_from, True, budget, now)
        if came_from is not None and kind == _CALL and envelope.response_id is not None:
            self._forwarded.flooded(
                envelope.sender,
                envelope.response_id,
                [t.peer_id for t in copies],
                tuple(envelope.route),
            )
        return None

    def _renewed(self, envelope: Envelope, came_from: str | None) -> Envelope | None:
        """
        A message whose TTL ran out here: with a new budget if a loop-free
        way on is known (L{rebudget}), or if it is the answer (or a stream
        item) of a call forwarded here, which goes back the way the call
        came (a flooded call's answer, where no route is known); else
        C{None}.
        """
        renewed = rebudget(envelope, self._router, self._links)
        if renewed is not None or came_from is None:
            return renewed
        kind = envelope.type
        if (kind == _ANSWER or kind == _ITEM) and self._forwarded.way_back(
            envelope.to, envelope.response_id
        ) is not None:
            made = len(envelope.route) - 1
            if made < MAX_HOPS:
                return attrs.evolve(envelope, ttl=MAX_HOPS - made)
        return None

    def _routed(self, envelope: Envelope, came_from: str | None) -> PeerSession | None:
        """
        :returns: the link to C{envelope}'s destination, or to the next hop
            of its route (setting the hop budget of a message originated
            here to cover that route), or C{None}.
        """
        destination = envelope.to
        by_peer = self._by_peer
        session = by_peer.get(destination)
        if session is not None and session.healthy:
            return session
        route = self._router.route(destination)
        if route is None:
            return None
        path = route.path
        if came_from is not None and path[0] in envelope.route:
            # It came that way: this node's route is stale (a link on it
            # went, and the news is on its way). Sent back it would loop:
            # the fallback sends it on to the neighbours it has not passed.
            return None
        session = by_peer.get(path[0])
        if came_from is None and session is not None:
            # Between relaytx nodes the hop budget covers the route. (A route
            # of two hops or more was learned from a router; one of one hop
            # keeps the default, 10.)
            envelope.ttl = HOP_BUDGETS[len(path)]
        return session

    def _send_via(
        self,
        session: PeerSession,
        envelope: Envelope,
        came_from: str | None,
        flooded: bool = False,
        budget: float | None = None,
        now: float | None = None,
    ) -> None:
        if envelope.type == _CALL:
            if session.holding and session.backed_up_past_bound():
                # The link holds as much as it may: a call more would only
                # wait behind the others (and grow this node's memory).
                raise LinkBackedUp(
                    f"the link from {self._node_id} to {session.peer_id} is backed up",
                    node_id=self._node_id,
                )
            if now is None:
                now = self._clock.seconds()
            if came_from is not None:
                tracking = ServerCall.tracking(envelope.data)
                if tracking is not None:
                    response_id, timeout = tracking
                    budget = timeout or _UNKNOWN_BUDGET
                    # One lost branch of a flood says nothing of the other copies.
                    if not self._forwarded.remember(
                        envelope.sender, response_id, envelope.to, came_from,
                        None if flooded else session.peer_id, budget, now,
                    ):  # fmt: skip
                        # Copies of a flood met here: one goes on, and the
                        # other's branch ends (as at the target).
                        self._metrics.drop("duplicate")
                        self.tell_dropped(came_from, envelope.sender, response_id)
                        return
                self._metrics.messages_routed.inc()
            # The peer must answer soon, and is probed while the call is out:
            # session.awaiting(now, until), inlined (every call comes here).
            until = now + (budget or _UNKNOWN_BUDGET)
            if until > session.busy_until:
                session.busy_until = until
            if session.waiting_since is None:
                session.waiting_since = now
                if not session.watched:
                    session.awaiting(now)  # the watch takes it
        else:
            if came_from is not None:
                self._metrics.messages_routed.inc()
            if envelope.type == _ITEM and session.waiting_since is None:
                # A stream's items go on while its reader takes them, and its
                # credit comes back: a reader gone silent must be found as a
                # call's callee would be, or the generator runs (and holds
                # its server) until the next keepalive finds it.
                session.awaiting(self._clock.seconds() if now is None else now)
        if session.peer_id == envelope.to:
            if session.original and envelope.type == _ANSWER:
                answer = for_original(envelope, self._owed, self._node_id, self._clock.seconds())
                if answer is None:
                    self._metrics.drop("duplicate")
                    return
                envelope = answer
            session.send(envelope)
        elif self._router.is_router(session.peer_id):
            # A relaytx router takes a message as is: its route ends with
            # the hop that sent it, which is all a wrapper would tell. One
            # originated here keeps room for the hops it will take.
            session.send(envelope, 0 if came_from is not None else room_for_hops(envelope))
        else:
            wrapper = RouteMessage(envelope)
            session.send(
                Envelope.create(wrapper, self._node_id, session.peer_id, self._clock.seconds())
            )

    def tell_dropped(self, peer_id: str, caller: str, response_id: str) -> None:
        """
        Tell neighbour C{peer_id} that its copy of flooded call
        C{response_id} of C{caller} went no further than here, where
        another copy had been (L{CopyDropped}): a relaytx neighbour only.
        """
        session = self._by_peer.get(peer_id)
        if session is None or session.original or not session.healthy:
            return
        notice = CopyDropped(response_id, caller)
        session.send(Envelope.create(notice, self._node_id, peer_id, self._clock.seconds()))

    def can_reach(self, destination: str) -> bool:
        """:returns: whether a link or a route to C{destination} is known."""
        return destination in self._links or self._router.route(destination) is not None

    def marked(self, destination: str) -> bool:
        """:returns: whether C{destination} is marked unreachable (a link to it failed)."""
        return self._router.is_marked(destination)


def for_original(
    envelope: Envelope, owed: OwedAnswers, node_id: str, now: float
) -> Envelope | None:
    """
    :param envelope: an answer that node C{node_id} sends an
        original-design neighbour, the caller.
    :returns: what to send it: C{None} if it is owed no more answers to
        that call (it takes the first for the answer: a later one, such as
        a flood's dead end told after the answer passed, would mislead it;
        L{OwedAnswers}); else the answer, as a frame of C{node_id}'s own if
        it came from afar (L{as_own}).
    """
    response_id = envelope.response_id
    if response_id is not None and not owed.answered(envelope.to, response_id):
        return None
    return envelope if envelope.sender == node_id else as_own(envelope, node_id, now)


def owe_original(call: Envelope, owed: OwedAnswers, peer_id: str) -> None:
    """
    A call came from original-design neighbour C{peer_id}: if it is the
    neighbour's own, it is owed an answer (L{for_original}).
    """
    response_id = call.response_id
    if call.sender == peer_id and response_id is not None:
        owed.called(peer_id, response_id, call.id)


def as_own(envelope: Envelope, node_id: str, now: float) -> Envelope:
    """
    :returns: C{envelope}, an answer from afar for an original-design
        neighbour, as a frame of C{node_id}'s own: such a node takes frames
        from its direct peers only. The answer is the same (its response
        id, its callee's C{node_id}), as a call to it from afar is made by
        its neighbour (L{relaytx._relay}); its TTL is the default of frames
        to such nodes.
    """
    return attrs.evolve(
        envelope, sender=node_id, id=new_id(), timestamp=rfc3339(now), route=(node_id,),
        ttl=DEFAULT_TTL,
    )  # fmt: skip


def rebudget(envelope: Envelope, router: Router, links: Container[str]) -> Envelope | None:
    """
    A message whose TTL ran out here while a loop-free route goes on
    through relaytx nodes: its budget is renewed to cover that route, as
    long as its hops in all stay within L{MAX_HOPS}.

    :param links: the peers this node has a link to.
    :returns: the message with its new budget, or C{None}.
    """
    destination = envelope.to
    if destination in links:
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
