# -*- test-case-name: tests.test_protocol -*-
"""
Peer links over Autobahn WebSockets: thin adapters that run a link's
handshake (L{relaytx._handshake}) and then feed its L{PeerSession}.

The adapters decide nothing themselves: the handshake machine says which
headers to send, whether the link opens and what to refuse with; the
session handles every frame after that. What is left here is Autobahn's
side: its callbacks, its close calls, and its swallowing of exceptions
(which are logged instead).

Frames are text only: a binary frame closes the link (1003). Message and
frame sizes are capped by Autobahn's own limits (1009 past them).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (  # type: ignore[attr-defined]  # two private helpers
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
    _is_tls_error,
    _maybe_tls_reason,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectingRequest, ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from relaytx import _json
from relaytx._flow import WatchedConnection, quietly
from relaytx._frames import LeanMessages, tune_socket
from relaytx._handshake import AcceptorHandshake, DiallerHandshake, HandshakeRefused
from relaytx._linkauth import OVERHEAD, PENDING_TIMEOUT, FrameOpener, FrameRejected, FrameSealer
from relaytx._links import LinkRefused
from relaytx._mesh import Mesh
from relaytx._tls import peer_certificate_names
from relaytx._wstimers import use_reactor_timers
from relaytx.errors import ProtocolViolation
from relaytx.interfaces import ILinkTransport
from relaytx.peer import (
    CLOSE_AUTH_FAILED,
    CLOSE_ON_PURPOSE,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    PeerSession,
)

#: Seconds an accepted link may take to prove the cluster secret.
AUTH_TIMEOUT = 10.0

#: Close codes with which Autobahn fails a link for what the peer sent,
#: and the drop reason each is counted under. (Text that is not UTF-8 is
#: found, closed with 1007 and counted by the session, as not JSON.)
_FAILED_FOR = {1002: "websocket_protocol", 1009: "too_large"}


@implementer(ILinkTransport)
class _Transport:
    """
    What a session sees of an Autobahn protocol.

    :param sealed: whether the link authenticates its frames (between
        holders of the cluster secret, L{relaytx._linkauth}): they go in
        sealed batches.
    """

    def __init__(self, protocol: Any, sealed: bool = False) -> None:
        self._protocol = protocol
        self.sealed = sealed
        self.peer_address = protocol.peer

    def send(self, frame: bytes) -> None:
        # A link the peer (or Autobahn) is closing takes nothing more (and
        # a frame not sent is not sealed: the peer counts the ones it gets);
        # its session hears of the close in a moment.
        if self._protocol.state == WebSocketProtocol.STATE_OPEN:
            if self.sealed:
                self._protocol.send_sealed(frame)
            else:
                self._protocol.sendMessage(frame, isBinary=False)

    def close(self, code: int, reason: str) -> None:
        # sendClose only takes application codes (1000, 3000-4999); protocol
        # codes such as 1003 and 1007 go through the frame-level call that
        # Autobahn itself uses to fail a connection.
        self._protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)

    def abort(self) -> None:
        self._protocol.dropConnection(abort=True)

    def ping(self) -> None:
        if self._protocol.state == WebSocketProtocol.STATE_OPEN:
            self._protocol.sendPing()


#: Calls a peer link holds back while its output is backed up, in bytes,
#: as a multiple of max_write_buffer: calls already read, waiting for room
#: (a neighbour's bursts of large calls ride through; past it, -32005).
HOLD_FACTOR = 4


class _PeerAdapter(WatchedConnection, LeanMessages):
    """
    The part shared by both ends: open the session once the handshake says
    so, then hand it frames and the close. Autobahn swallows exceptions
    from these callbacks, so failures are logged here.
    """

    _rlog = Logger()
    session: PeerSession | None = None
    direction = "inbound"
    reads_while_backed_up = True  # (see relaytx._flow)
    factory: Any
    handshake: AcceptorHandshake | DiallerHandshake
    #: checks each batch received, on a link between holders of the secret
    _opener: FrameOpener | None = None
    #: closes the link if a batch stays incomplete (see L{_pending_late})
    _pending_timer: IDelayedCall | None = None
    #: set once a frame failed its check: nothing more is read from the link
    _rejected = False
    maxMessagePayloadSize: int
    maxFramePayloadSize: int
    # As Autobahn's WebSocketAdapterProtocol declares it; its WebSocketProtocol
    # says str (and the two declare _transport_details differently too), so
    # mypy flags the protocols below whatever this says.
    peer: str | None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_socket(self.transport)

    @property
    def peer_id(self) -> str | None:
        """The other end's node id, once the handshake knows it."""
        handshake = getattr(self, "handshake", None)
        return None if handshake is None else handshake.peer_id

    def _open_session(self) -> None:
        mesh: Mesh = self.factory.mesh
        peer_id = self.peer_id
        assert peer_id is not None  # the handshake is open
        keys = self.handshake.keys
        if keys is not None:
            self._sealer, self._opener = FrameSealer(keys.send), FrameOpener(keys.receive)
            # A frame on an authenticated link carries its code too: the
            # message limit applies to what it carries.
            self.maxMessagePayloadSize += OVERHEAD
            self.maxFramePayloadSize += OVERHEAD
        # Two relaytx nodes agree in their handshake that the dialler's
        # frames go unmasked; any other peer is taken for an original node.
        original = not self.handshake.unmasked
        try:
            transport = _Transport(self, sealed=keys is not None)
            self.session = mesh.open_link(
                peer_id, self.direction, self._address(), transport, original,
                quiet=self.handshake.peer_registry_off,
            )  # fmt: skip
        except LinkRefused as e:
            # (What the other end sent before it heard is dropped: the
            # handshake is over, and no original node's first frame comes.)
            self._rejected = True
            self._close(CLOSE_REPLACED, e.reason)
            return
        self._opened()

    def output_backed_up(self) -> None:
        session = self.session
        if session is not None and self.flow is not None:
            session.hold_calls(HOLD_FACTOR * self.flow.watch.max_write_buffer, self.flow.unsent)

    def output_drained(self) -> None:
        session = self.session
        if session is not None:
            session.release_calls()

    def _peer_names(self) -> frozenset[str]:
        """The node ids the other end's TLS certificate names (none without TLS)."""
        return peer_certificate_names(self.transport)

    def _address(self) -> str:
        # Autobahn sets peer when the connection is made, before any link opens.
        return self.peer if self.peer is not None else "unknown"

    def _opened(self) -> None:
        pass

    def _close(self, code: int, reason: str) -> None:
        # sendClose refuses protocol codes such as 1002 (it raised, for every
        # frame a refused peer went on sending); the frame-level call takes
        # them, and ignores a link that is closing already.
        self.sendCloseFrame(  # type: ignore[attr-defined]  # from the Autobahn protocol
            code=code, reasonUtf8=reason.encode()[:120], isReply=False
        )

    def _refused(self, refusal: HandshakeRefused) -> None:
        if refusal.auth_failure is not None:
            # (A dialler refusing the answer knows no id yet: the address.)
            who = self.peer_id or self._address()
            self.factory.mesh.count_auth_failure(who, refusal.auth_failure)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            session = self.session
            if self._rejected:
                return
            if session is None:
                self._first_frame(payload, isBinary)
            elif isBinary:
                if self._opener is not None:
                    # No member sends one: on a sealed link it is a frame
                    # that failed authentication (SPEC section 9).
                    self._reject(session, "a binary frame")
                    return
                session.binary_received()
            elif self._opener is None:
                session.data_received(payload)
            else:
                try:
                    frames = self._opener.take(payload)
                except FrameRejected as e:
                    self._reject(session, str(e))
                    return
                for frame in frames:
                    session.data_received(frame)
                    if self.state != WebSocketProtocol.STATE_OPEN:
                        break
        except Exception:
            self._rlog.failure("error handling a frame from {peer}", peer=self.peer_id)

    def _reject(self, session: PeerSession, why: str) -> None:
        """A frame failed its check: count it, close the link with 4003."""
        self._rejected = True
        self.session = None
        self._cancel_pending_timer()
        self.factory.mesh.count_auth_failure(self.peer_id, why)
        self._close(CLOSE_AUTH_FAILED, "frame authentication failed")
        session.connection_lost(f"frame authentication failed: {why}")

    #: when this end last sent a heartbeat (L{_heartbeat})
    _heartbeat_at = float("-inf")

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        session = self.session
        if session is not None:
            # Any bytes: the peer is alive, part of a large frame crossing a
            # slow link however long it takes, or a heartbeat (SPEC section 8).
            session.reading()
            if self.unfinished_message:
                self._heartbeat()
        opener = self._opener
        if opener is not None and opener.pending and self._pending_timer is None:
            # A batch's frames arrived in pieces (or a stranger's frame
            # without a code came): the rest must follow at once.
            self._wait_for_code()

    def _heartbeat(self) -> None:
        """
        A large frame is arriving. Its sender waits to hear from this end
        meanwhile (a probe of its, queued behind the frame, is not read yet)
        and takes a peer that says nothing for its peer timeout for dead: a
        200 KB call across a 100 KB/s link was dropped so every time, at
        1.26 s. An unsolicited pong (RFC 6455 5.5.3: a heartbeat), every
        fifth of the timeout while it arrives, says this end is alive.
        """
        now = self.factory.reactor.seconds()
        if now - self._heartbeat_at >= self.factory.mesh.link_watch.probe_after:
            self._heartbeat_at = now
            self.sendPong()  # type: ignore[attr-defined]  # from the Autobahn protocol

    def _wait_for_code(self) -> None:
        reactor = self.factory.reactor
        assert self._opener is not None
        due = reactor.seconds() + PENDING_TIMEOUT
        self._pending_timer = reactor.callLater(
            PENDING_TIMEOUT, self._pending_late, self._opener.batch_start, due
        )

    def _pending_late(self, batch: int, due: float) -> None:
        self._pending_timer = None
        opener, session = self._opener, self.session
        if opener is None or session is None or not opener.pending:
            return
        if (
            opener.batch_start != batch
            or self.factory.reactor.seconds() - due > PENDING_TIMEOUT / 4
        ):
            # Another batch than the one timed (which came whole), or this
            # reactor was held up and the rest may be waiting to be read.
            self._wait_for_code()
            return
        self._reject(session, f"{len(opener.pending)} frames without a code")

    def _cancel_pending_timer(self) -> None:
        if self._pending_timer is not None and self._pending_timer.active():
            self._pending_timer.cancel()
        self._pending_timer = None

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        self._close(CLOSE_PROTOCOL_ERROR, "no session")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_pending_timer()
        heard = getattr(self, "remoteCloseCode", None)
        if not wasClean and heard in CLOSE_ON_PURPOSE:
            # The peer's close frame came, and said the link was closed on
            # purpose, before the handshake broke off (a timeout at either
            # end, with busy reactors): what ended the link is that close.
            code = heard
            said = getattr(self, "remoteCloseReason", None)
            reason = f"{said}, then the closing handshake broke off" if said else None
        session = self.session
        if session is not None and getattr(self, "failedByMe", False):
            # Autobahn failed the link for what the peer sent (a message
            # over the size limit, a frame breaking the protocol): malformed
            # input, counted as the rest is.
            code_sent = getattr(self, "localCloseCode", None)
            failed_for = _FAILED_FOR.get(code_sent) if code_sent is not None else None
            if failed_for is not None:
                violation = ProtocolViolation(f"close code {code_sent}", failed_for)
                self.factory.mesh.bad_input(violation, session)
        try:
            if self.session is not None:
                self.session.connection_lost(
                    f"close code {code}" + (f": {reason}" if reason else "")
                )
        except Exception:
            self._rlog.failure("error closing the link to {peer}", peer=self.peer_id)


class PeerServerProtocol(  # type: ignore[misc]  # Autobahn's bases clash: see _PeerAdapter
    _PeerAdapter,
    WebSocketServerProtocol,
):
    """The accepting end of a peer link."""

    direction = "inbound"
    _auth_timer: IDelayedCall | None = None

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn's, without its two lines (info, then a warning) per
        # refused upgrade: a stranger or a second claimant retrying at
        # network speed would write them without end. Refusals that count
        # are counted and logged by the mesh, once per run of identical ones.
        self._rlog.debug("refused the upgrade from {peer}: {reason}", peer=self.peer, reason=reason)
        self.wasNotCleanReason = reason
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        quietly(self, self.dropConnection, abort=False)

    def onConnect(self, request: Any) -> tuple[None, dict[str, str]]:
        factory = self.factory
        self.handshake = handshake = AcceptorHandshake(
            factory.mesh.node_id,
            lambda peer_id: factory.mesh.check_new_link(peer_id, "inbound"),
            factory.secret,
            factory.allowed_origins,
            pki=factory.pki,
        )
        handshake.registry_off = not factory.mesh.adverts.enabled
        try:
            # Autobahn's own reading of the origin: the Origin header, or
            # Sec-WebSocket-Origin for the drafts before version 13, which
            # it still accepts; "" when there is none.
            headers = handshake.upgrade(
                request.params, request.headers, request.origin or "", self._peer_names()
            )
        except HandshakeRefused as refusal:
            self._refused(refusal)
            raise ConnectionDeny(refusal.status, refusal.reason) from None
        if handshake.unmasked:
            self.requireMaskedClientFrames = False
        return None, headers

    def onOpen(self) -> None:
        try:
            handshake = self.handshake
            assert isinstance(handshake, AcceptorHandshake)
            if handshake.opened():
                self._open_session()
            else:  # nothing is processed before the dialler's proof
                self._auth_timer = self.factory.reactor.callLater(AUTH_TIMEOUT, self._proof_late)
        except Exception:
            self._rlog.failure("error opening the link from {peer}", peer=self.peer_id)

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        handshake = self.handshake
        assert isinstance(handshake, AcceptorHandshake)
        if self._auth_timer is None:  # refused already, or no proof was asked for
            return super()._first_frame(payload, isBinary)
        self._cancel_timer()
        try:
            handshake.first_frame(payload, isBinary)
        except HandshakeRefused as refusal:
            self._refuse(refusal)
            return
        self._open_session()

    def _proof_late(self) -> None:
        self._auth_timer = None
        handshake = self.handshake
        assert isinstance(handshake, AcceptorHandshake)
        self._refuse(handshake.timed_out())

    def _refuse(self, refusal: HandshakeRefused) -> None:
        self._refused(refusal)
        self.sendClose(code=refusal.status, reason=refusal.reason)

    def _cancel_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_timer()
        super().onClose(wasClean, code, reason)


class PeerClientProtocol(  # type: ignore[misc]  # Autobahn's bases clash: see _PeerAdapter
    _PeerAdapter,
    WebSocketClientProtocol,
):
    """The dialling end of a peer link."""

    direction = "outbound"

    def failHandshake(self, reason: str) -> None:
        # Autobahn's, without its lines per attempt: the dialer logs the
        # failure (onClose), once per run of identical ones.
        self.wasNotCleanReason = reason
        quietly(self, self.dropConnection, abort=True)

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        factory = self.factory
        dialer = factory.dialer
        self.handshake = handshake = DiallerHandshake(
            factory.mesh.node_id, dialer.secret, dialer.expected_id, pki=factory.pki
        )
        handshake.registry_off = not factory.mesh.adverts.enabled
        return ConnectingRequest(
            host=factory.host,
            port=factory.port,
            resource=factory.resource,
            headers=handshake.request_headers(),
        )

    def onConnect(self, response: Any) -> Deferred[None] | None:  # type: ignore[override]  # Autobahn waits on a Deferred
        handshake = self.handshake
        assert isinstance(handshake, DiallerHandshake)
        try:
            handshake.answered(response.headers, self._peer_names())
        except HandshakeRefused as refusal:
            self._refused(refusal)
            # The dialer logs it, once for a run of identical failures
            # (raised, Autobahn would log an error with a traceback and a
            # warning at every attempt). The link never opens: Autobahn
            # waits for an answer that never comes, and the connection is cut.
            self.factory.dialer.attempt_failed(f"refused: {refusal.reason}")
            self._failure_told = True
            self.transport.abortConnection()
            return Deferred()
        if handshake.unmasked:
            self.maskClientFrames = False
        return None

    def onOpen(self) -> None:
        try:
            handshake = self.handshake
            assert isinstance(handshake, DiallerHandshake)
            first = handshake.opened(self.factory.reactor.seconds())
            if first is not None:
                self.sendMessage(first, isBinary=False)
            if handshake.peer_id is not None:
                self._open_session()
        except Exception:
            self._rlog.failure("error opening the link to {peer}", peer=self.peer_id)

    def _address(self) -> str:
        url: str = self.factory.dialer.url
        return url

    #: whether this connection's link opened (its dialer is told when it closes)
    _link_opened = False

    def _opened(self) -> None:
        self._link_opened = True
        self.factory.dialer.link_opened(self.peer_id)

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        # An original node says who it is only in its frames.
        handshake = self.handshake
        assert isinstance(handshake, DiallerHandshake)
        try:
            handshake.first_frame(payload, isBinary)
        except HandshakeRefused as refusal:
            self._refused(refusal)
            self._close(refusal.status, refusal.reason)
            return
        self._open_session()
        if self.session is not None:
            self.session.data_received(payload)

    def connectionLost(self, reason: Any = None) -> None:
        if reason is not None and _is_tls_error(reason.value):
            # A failed TLS verification: the dialer logs it once for a run
            # of identical failures; Autobahn would log an error each time.
            self.factory.dialer.attempt_failed(_maybe_tls_reason(reason.value))
            self._failure_told = True
            reason = Failure(ConnectionLost("TLS handshake failed"))
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is None:
            told = getattr(self, "_failure_told", False)
            self.factory.dialer.handshake_failed(code, reason, told=told)
        super().onClose(wasClean, code, reason)
        if self._link_opened:
            session = self.session
            removed = (
                session is not None
                and not getattr(self, "closedByMe", False)
                and session.peer_closed_on_purpose(getattr(self, "remoteCloseCode", None))
                == CLOSE_REMOVED
            )
            self.factory.dialer.link_closed(removed)


def _protocol_options(factory: Any, max_message_size: int) -> None:
    factory.setProtocolOptions(
        maxMessagePayloadSize=max_message_size,
        maxFramePayloadSize=max_message_size,
        autoPingInterval=0,  # liveness is the session's, on the node's clock
        openHandshakeTimeout=10,
        closeHandshakeTimeout=1,
        failByDrop=False,
        # The session decodes every frame with a strict UTF-8 JSON parser and
        # closes the link with 1007 on invalid UTF-8, as Autobahn would; its
        # validating each frame first cost a visible share of a busy node.
        utf8validateIncoming=False,
    )
    use_reactor_timers(factory)  # closeHandshakeTimeout is 1 s, not 0-1 s


class PeerServerFactory(WebSocketServerFactory):
    """Accepts peer links for C{mesh}."""

    protocol = PeerServerProtocol
    noisy = False

    def __init__(
        self,
        mesh: Mesh,
        max_message_size: int,
        allowed_origins: frozenset[str] = frozenset(),
        reactor: Any = None,
        secret: bytes | None = None,
        pki: bool = False,
        watch: Any = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.mesh = mesh
        self.allowed_origins = allowed_origins
        self.secret = secret
        self.pki = pki
        #: the node's L{relaytx._flow.ConnectionWatch}, if any
        self.watch = watch
        _protocol_options(self, max_message_size)


class PeerClientFactory(WebSocketClientFactory):
    """
    Dials one peer for a dialer (L{relaytx._dialer.Dialer}), which has the
    C{secret}, the C{expected_id}, the C{url} and the back-off.
    """

    protocol = PeerClientProtocol
    noisy = False

    def __init__(
        self,
        dialer: Any,
        mesh: Mesh,
        url: str,
        max_message_size: int,
        reactor: Any,
        pki: bool = False,
        watch: Any = None,
    ) -> None:
        super().__init__(url, reactor=reactor)
        self.dialer = dialer
        self.mesh = mesh
        self.pki = pki
        self.watch = watch
        _protocol_options(self, max_message_size)


class UpgradeOnly(WebSocketResource):
    """
    A WebSocket endpoint that answers a request which is not a WebSocket
    upgrade with 400 and a JSON body (as the original answers a plain GET
    on C{/ws/p2p}), rather than Autobahn's HTML page naming its version.
    """

    def render(self, request: Any) -> Any:
        if request.postpath:
            # A leaf: /ws/rpc/x (or /ws/rpc/) is no endpoint (SPEC section 4).
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return _json.dumps({"error": "not found", "status": 404})
        if request.method not in (b"GET", b"HEAD"):
            # An upgrade is a GET (RFC 6455 4.1); anything else, 405 as on
            # every path (SPEC section 4).
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET")
            request.setHeader(b"content-type", b"application/json")
            return _json.dumps({"error": "method not allowed: use GET", "status": 405})
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() != b"websocket":
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"sec-websocket-version", b"13")
            return _json.dumps({"error": "a WebSocket endpoint: upgrade to use it", "status": 400})
        channel = request.channel
        transport = channel.transport
        result = super().render(request)
        hand_over = getattr(channel, "hand_over", None)
        if transport is not None and channel.transport is None and hand_over is not None:
            # Upgraded: the WebSocket protocol now holds the connection's
            # place among the node's connections (see relaytx._http.NodeSite).
            slot = hand_over()
            protocol = _upgraded(transport)
            if isinstance(protocol, WatchedConnection):
                protocol.slot = slot
            elif slot is not None:
                slot[0].release(slot[1])
        return result


def _upgraded(transport: Any) -> Any:
    # Where Autobahn's WebSocketResource.render puts the new protocol.
    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    if isinstance(transport.protocol, ProtocolWrapper):
        return transport.protocol.wrappedProtocol
    return transport.protocol


def peer_resource(factory: PeerServerFactory) -> WebSocketResource:
    """:returns: the resource to mount at C{/ws/p2p}."""
    return UpgradeOnly(factory)
