# -*- test-case-name: tests.test_peer -*-
"""
The seams between relaytx's parts, as zope interfaces.

  - L{ILinkTransport}: what a L{relaytx.peer.PeerSession} needs of the
    connection under it (an Autobahn protocol in a node, a list in a test).
  - L{ISessionHost}: what a session needs of its node's mesh: where to hand
    the messages it reads, and the few settings that shape a link. A
    session subclass that adds message types reaches the node only through
    this.
  - L{IRemoteCalls}: what the call dispatcher needs of the mesh to run a
    call on another node.
  - L{IPeerAdmin}: the peers an operator adds and removes at run time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from relaytx.errors import ProtocolViolation
from relaytx.wire import Envelope, Payload, RegistrySync, ServerCall, ServerResponse

#: A L{relaytx.peer.PeerSession} (which imports this module, so it is not
#: named here).
Session = Any


class ILinkTransport(Interface):
    """What a session needs from the connection under it."""

    peer_address = Attribute("A printable address of the other end.")
    sealed = Attribute(
        "Whether the link authenticates its frames (between holders of the cluster secret)."
    )

    def send(frame: bytes) -> None:
        """Send one text frame."""

    def close(code: int, reason: str) -> None:
        """Close the link with a WebSocket close code."""

    def abort() -> None:
        """Drop the connection at once (the peer is not answering)."""

    def ping() -> None:
        """
        Send a WebSocket ping: the peer's WebSocket answers with a pong
        (RFC 6455 section 5.5.2), which the session hears as it hears any
        bytes (C{reading}).
        """


class ISessionHost(Interface):
    """
    A node's mesh as one of its links sees it.

    Every method takes the session it is called for, so one host serves
    every link; none of them raises for bad input from the peer (it is
    counted and dropped).
    """

    node_id = Attribute("This node's id.")
    clock = Attribute("The node's IReactorTime: liveness timers run on it.")
    ping_interval = Attribute("Seconds between liveness pings on an idle link.")
    max_message_size = Attribute("The largest frame, in bytes, a link may send.")
    message_types = Attribute("The L{relaytx.wire.MessageTypes} the node decodes.")

    def receive(envelope: Envelope, session: Session) -> None:
        """A message arrived on C{session}'s link: deliver it here or send it on."""

    def refuse_held(envelope: Envelope, session: Session) -> None:
        """
        A call arrived on C{session}'s link while its output is backed up
        and as many calls wait as may: refuse it (-32005).
        """

    def handler_for(payload_type: type[Payload]) -> Any:
        """
        :returns: the function registered on the node for C{payload_type}
            (called with the envelope and the payload), or C{None}.
        """

    def send(destination: str, payload: Payload, reply_to: str | None = None) -> str | None:
        """Originate a message to C{destination}, routed like any other."""

    def run_call(envelope: Envelope, call: ServerCall, session: Session) -> None:
        """A C{server_call} addressed to this node arrived: run it, answer it."""

    def settle(envelope: Envelope, response: ServerResponse, session: Session) -> None:
        """A C{server_response} to one of this node's calls arrived."""

    def take_advert(sync: RegistrySync, session: Session) -> None:
        """The neighbour at the other end of C{session} advertised its routes."""

    def link_measured(session: Session, rtt: float) -> None:
        """A round trip of C{rtt} seconds was measured on C{session}'s link."""

    def bad_input(error: ProtocolViolation, session: Session) -> None:
        """Count (and log) a L{relaytx.errors.ProtocolViolation} from the link."""

    def link_lost(session: Session, reason: str) -> None:
        """C{session}'s link is gone, whatever the cause."""

    def probe_answered(envelope: Envelope) -> bool:
        """
        A C{pong} arrived: if it answers one of the node's probes
        (C{reply_to} its ping's id), settle it.

        :returns: whether it did.
        """

    def watch(session: Session) -> None:
        """
        A request left on C{session}'s link: watch that its peer answers
        (see L{relaytx._liveness}).
        """

    def calls_out(session: Session) -> bool:
        """
        :returns: whether some call sent on C{session}'s link (this node's,
            or one it forwarded) may still be waiting for its answer.
        """

    def bad_call(envelope: Envelope, error: ProtocolViolation, session: Session) -> None:
        """
        A C{server_call} addressed to this node could not be read
        (C{error}): answer it with an error if it names a response id.
        """


class IRemoteCalls(Interface):
    """The mesh, as the call dispatcher sees it."""

    def call(target: Any) -> Deferred[Any]:
        """
        Call a server on another node (C{target.node_id}).

        :returns: a Deferred that fires with the result or fails with a
            L{relaytx.errors.CallError}.
        """

    def nearest_host(server: str) -> str | None:
        """:returns: the id of the nearest healthy node hosting C{server}, or C{None}."""


class IPeerAdmin(Interface):
    """The dialled peers of a node, as its admin endpoints change them."""

    def add_peer(address: str, node_id: str | None = None) -> None:
        """
        Dial the peer at C{address} and keep re-dialling it.

        :raises ValueError: if C{address} is not a peer URL or is already
            dialled.
        """

    def remove_peer(node_id: str | None = None, address: str | None = None) -> bool:
        """
        Close the link to C{node_id} and stop re-dialling it, or stop
        dialling C{address}.

        :returns: whether there was such a peer.
        """
