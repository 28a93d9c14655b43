# -*- test-case-name: tests.test_mesh -*-
"""
L{LinkTable}: a node's open links, who may open one, and the session class
and message types they run with.

Admission. A link to oneself is refused, and so is any link while the node
stops. When two nodes dial each other, each refuses (409) a dial that
arrives while its own is open, except that the smaller id's own dial,
opening within L{CROSSING} seconds after the larger's was accepted,
replaces it: both ends keep one link, the first dial the larger id
accepted. Only a node's own dial ever replaces a healthy link, so a
connection that claims a neighbour's id is refused in a link's first
seconds as later (below).

A second link for a peer whose link is healthy is refused (409), in every
mode: one process cannot take over another's link, and a second process
started with a node id already in use (a copied command line, a node
restarted elsewhere while the first still runs) is refused where it
would take the first one's place, with a warning on both sides, instead of
silently taking its routes. The old link is replaced only once it has
been found dead or has closed, as a restarted node's does at once when its
process ended. A refused claim makes the node ping the link it keeps
(L{PeerSession.challenge}): one that died without a FIN is found within
the peer timeout, so the claimant's next try gets in. (Two processes with one id that link to
different neighbours are not detected in an open mesh; in PKI mode a
node's id is its certificate's.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaytx.peer import CLOSE_NORMAL, CLOSE_REPLACED, PeerSession
from relaytx.wire import CORE_TYPES, MessageTypes, Payload

#: What a refusal for a peer id that has a healthy link says (dialers spot it).
HEALTHY_LINK_HERE = "has a healthy link here"
#: How a node refusing a dialler says it holds the link it dialled itself
#: (with its own id: the dialler learns whom it dials).
DIALLED_BY = "the link {} dialled"

#: Seconds within which two links between the same nodes, one dialled by
#: each, are taken for dials that crossed (rather than a second claim).
CROSSING = 2.0

#: What a node says to a dialler that expects another node (dialers spot it).
NOT_THE_NODE_EXPECTED = "not the node the dialler expects"


class LinkRefused(Exception):
    """A link cannot be opened; C{status} and C{reason} are for the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LinkTable:
    """
    The links of node C{node_id}, by peer id.

    @ivar links: the current session of each linked peer.
    @ivar stopping: set once the node stops: no link opens after that.
    @ivar strict: whether the mesh authenticates its links (a secret or
        certificates); admission is the same either way.
    """

    _log = Logger()

    def __init__(self, node_id: str, strict: bool = False) -> None:
        self.node_id = node_id
        self.strict = strict
        #: refused second claims per peer id, while its current link lasts
        self._claims: dict[str, int] = {}
        self.links: dict[str, PeerSession] = {}
        #: how many of the links are to original-design nodes
        self.originals = 0
        self.stopping = False
        self.session_class: type[PeerSession] = PeerSession
        self.message_types: MessageTypes = CORE_TYPES
        self._handlers: dict[type[Payload], Callable[..., None]] = {}
        #: the wait of L{close_all}, and its deadline
        self._all_closed: Deferred[None] | None = None
        self._grace: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self.links)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.links

    def __iter__(self) -> Iterator[str]:
        return iter(self.links)

    def get(self, peer_id: str | None) -> PeerSession | None:
        """:returns: the session of C{peer_id}'s link, if there is one."""
        return self.links.get(peer_id) if peer_id is not None else None

    # Message types.

    def use_session(self, session_class: type[PeerSession]) -> None:
        """Use C{session_class} for every link opened from now on."""
        self.session_class = session_class
        self._refresh_types()

    def register_handler(self, payload_type: type[Payload], handler: Callable[..., None]) -> None:
        """Handle C{payload_type} messages addressed here with C{handler(envelope, payload)}."""
        self._handlers[payload_type] = handler
        self._refresh_types()

    def handler_for(self, payload_type: type[Payload]) -> Callable[..., None] | None:
        """:returns: the handler registered for C{payload_type}, if any."""
        return self._handlers.get(payload_type)

    def _refresh_types(self) -> None:
        extra = {*self.session_class.handlers, *self._handlers} - set(CORE_TYPES)
        self.message_types = CORE_TYPES.extended(*sorted(extra, key=lambda c: c.TYPE))

    # Admission.

    def check(self, peer_id: str, direction: str) -> None:
        """
        Decide whether a link with C{peer_id} may open (see the module
        docstring).

        :raises LinkRefused: if it may not.
        """
        if peer_id == self.node_id:
            raise LinkRefused(400, "a node cannot link to itself")
        if self.stopping:
            raise LinkRefused(503, "node is stopping")
        existing = self.links.get(peer_id)
        if existing is None:
            return
        healthy = existing.healthy and not existing.closed
        crossing = (
            healthy
            and existing.direction != direction
            and existing.host.clock.seconds() - existing.opened_at < CROSSING
        )
        if crossing and direction == "outbound" and self.node_id < peer_id:
            # Both dialled, and both links opened: this node's own dial, the
            # smaller id's, replaces the peer's. Only ever its own: an
            # inbound link never replaces a healthy one, or whoever claimed
            # a neighbour's id in the first seconds of its link would take
            # it over. The larger id refuses the smaller's dial (below), so
            # both ends keep one link, whichever opened first at each.
            return
        if direction == "inbound" and existing.direction == "outbound":
            if healthy or self.node_id < peer_id:
                existing.challenge()  # the peer dials as if that link were gone: is it?
                if healthy and not crossing:
                    self._refuse_claim(peer_id, existing)
                raise LinkRefused(
                    409, f"already linked to {peer_id} ({DIALLED_BY.format(self.node_id)})"
                )
            return
        if direction == "outbound" and existing.direction == "inbound":
            if healthy:
                raise LinkRefused(409, f"already linked to {peer_id} (the link it dialled)")
            return
        if healthy:
            existing.challenge()
            self._refuse_claim(peer_id, existing)
            raise LinkRefused(
                409, f"{peer_id} {HEALTHY_LINK_HERE}; a second one waits until it is gone"
            )

    def _refuse_claim(self, peer_id: str, existing: PeerSession) -> None:
        claims = self._claims[peer_id] = self._claims.get(peer_id, 0) + 1
        if claims == 1:
            self._log.warn(
                "a second connection claims node id {peer}, which has a healthy link here "
                "({address}): refused (409). Is a second process running as {peer}?",
                peer=peer_id,
                address=existing.address,
            )
        else:
            self._log.debug(
                "second claim for {peer} refused again ({count} times)", peer=peer_id, count=claims
            )

    def add(self, session: PeerSession) -> PeerSession | None:
        """
        Make C{session} its peer's link.

        :returns: the link it replaces, if any (closed with 4001 once the
            new one is in place).
        """
        old = self.links.get(session.peer_id)
        self.links[session.peer_id] = session
        self._claims.pop(session.peer_id, None)
        self.originals += session.original
        if old is not None:
            self.originals -= old.original
            old.close(CLOSE_REPLACED, "replaced by a newer link")
        return old

    def remove(self, session: PeerSession) -> bool:
        """
        C{session}'s link closed.

        :returns: whether it was its peer's current link (a replaced link
            closing changes nothing).
        """
        if self.links.get(session.peer_id) is not session:
            return False
        del self.links[session.peer_id]
        self._claims.pop(session.peer_id, None)
        self.originals -= session.original
        return True

    def close_all(self, clock: IReactorTime, grace: float) -> Deferred[None]:
        """
        Close every link with 1000 (the node is stopping).

        :returns: a Deferred that fires once every link has closed (see
            L{closed}), or after C{grace} seconds, when the links still open
            are taken as lost.
        """
        for session in list(self.links.values()):
            session.close(CLOSE_NORMAL, "node stopping")
        if not self.links:
            return succeed(None)
        self._all_closed = Deferred()
        self._grace = clock.callLater(grace, self._closed_all)
        return self._all_closed

    def closed(self) -> None:
        """A link was removed: the last one to close ends L{close_all}'s wait."""
        if self._all_closed is not None and not self.links:
            self._closed_all()

    def _closed_all(self) -> None:
        d, self._all_closed = self._all_closed, None
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if d is not None:
            for session in list(self.links.values()):
                session.connection_lost("node stopped")
            d.callback(None)

    def flood_targets(self, excluded: Any) -> list[PeerSession]:
        """
        :returns: the healthy links whose peer is not in C{excluded} and is
            a relaytx node: an original-design node forwards nothing, so a
            flooded copy sent to it would only be dropped (SPEC section 7).
        """
        return [
            s for p, s in self.links.items() if s.healthy and not s.original and p not in excluded
        ]

    def view(self, server_count: Callable[[str], int]) -> dict[str, dict[str, Any]]:
        """
        :param server_count: how many servers a neighbour advertised.
        :returns: C{GET /registry/peers}.
        """
        return {
            peer: session.view(server_count(peer)) for peer, session in sorted(self.links.items())
        }
