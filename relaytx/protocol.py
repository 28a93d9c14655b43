# -*- test-case-name: tests.test_protocol -*-
"""
Peer links over Autobahn WebSockets: thin adapters that feed a
L{PeerSession}, and L{Dialer}, which keeps one dialled link up.

Handshake (C{GET /ws/p2p?node_id=ID}):

  - the dialling side names itself in C{node_id} (required, 1-64 of
    C{A-Za-z0-9._-}); the accepting side answers with its own id in the
    C{X-Relaytx-Node-Id} header. A dialler that gets no such header (an
    original node) takes the id it was told to expect, or else the C{from}
    of the first frame;
  - a link to oneself is refused (400), and so is a browser (a request with
    an C{Origin} header) unless its origin is allowed;
  - a second link from the same node id replaces the first, which is closed
    with code 4001; when two nodes dial each other at once, the link dialled
    by the node with the smaller id is kept and the other dial is refused
    with 409 (the refused dialler waits and checks again later).

Frames are text only: a binary frame closes the link (1003). Message and
frame sizes are capped by Autobahn's own limits (1009 past them).
"""

from __future__ import annotations

import random
import re
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectingRequest, ConnectionDeny
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from relaytx import _json, auth
from relaytx.frames import LeanMessages, tune_socket
from relaytx.jsonrpc import NODE_ID_RE
from relaytx.mesh import LinkRefused, Mesh
from relaytx.peer import CLOSE_PROTOCOL_ERROR, CLOSE_REPLACED, ILinkTransport, PeerSession
from relaytx.wire import decode

NODE_ID_HEADER = "X-Relaytx-Node-Id"
CLOSE_AUTH_FAILED = 4003
AUTH_TIMEOUT = 10.0  # seconds an accepted link may take to prove the secret
PEER_PATH = "/ws/p2p"

#: Request and response header by which two relaytx nodes agree that the
#: dialler sends its frames unmasked. RFC 6455 masks client frames so that
#: a script in a browser cannot forge bytes a caching proxy would misread;
#: between two nodes there is no browser, and with Autobahn's masker, built
#: anew for every frame, masking cost about 8 us per call across the two
#: ends (a tenth of a forwarding node's work). A dialler or acceptor that
#: does not send the header (the original, a browser, any other client)
#: masks and must mask as usual.
UNMASKED_HEADER = "X-Relaytx-Unmasked"


@implementer(ILinkTransport)
class _Transport:
    """What a session sees of an Autobahn protocol."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self.peer_address = protocol.peer

    def send(self, frame: bytes) -> None:
        # A link the peer (or Autobahn) is closing takes nothing more; its
        # session hears of the close in a moment.
        if self._protocol.state == WebSocketProtocol.STATE_OPEN:
            self._protocol.sendMessage(frame, isBinary=False)

    def close(self, code: int, reason: str) -> None:
        # sendClose only takes application codes (1000, 3000-4999); protocol
        # codes such as 1003 and 1007 go through the frame-level call that
        # Autobahn itself uses to fail a connection.
        self._protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)

    def abort(self) -> None:
        self._protocol.dropConnection(abort=True)


class _PeerAdapter(LeanMessages):
    """
    The part shared by both ends: hand frames and the close to the session.
    Autobahn swallows exceptions from these callbacks, so failures are
    logged here.
    """

    _rlog = Logger()
    session: PeerSession | None = None
    peer_id: str | None = None
    direction = "inbound"
    factory: Any
    # As Autobahn's WebSocketAdapterProtocol declares it; its WebSocketProtocol
    # says str (and the two declare _transport_details differently too), so
    # mypy flags the protocols below whatever this says.
    peer: str | None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]  # Autobahn's, next in the MRO
        tune_socket(self.transport)

    def _open_session(self, peer_id: str) -> None:
        mesh: Mesh = self.factory.mesh
        try:
            self.session = mesh.open_link(
                peer_id, self.direction, self._address(), _Transport(self)
            )
        except LinkRefused as e:
            self.sendClose(  # type: ignore[attr-defined]  # from the Autobahn protocol
                code=CLOSE_REPLACED, reason=e.reason[:120]
            )
            return
        self.peer_id = peer_id
        self._opened()

    def _address(self) -> str:
        # Autobahn sets peer when the connection is made, before any link opens.
        return self.peer if self.peer is not None else "unknown"

    def _opened(self) -> None:
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            session = self.session
            if session is None:
                self._first_frame(payload, isBinary)
            elif isBinary:
                session.binary_received()
            else:
                session.data_received(payload)
        except Exception:
            self._rlog.failure("error handling a frame from {peer}", peer=self.peer_id)

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        # sendClose refuses protocol codes such as 1002 (it raised here, for
        # every frame a refused peer went on sending); the frame-level call
        # takes them, and ignores a link that is closing already.
        self.sendCloseFrame(  # type: ignore[attr-defined]  # from the Autobahn protocol
            code=CLOSE_PROTOCOL_ERROR, reasonUtf8=b"no session", isReply=False
        )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
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

    def onConnect(self, request: Any) -> tuple[None, dict[str, str]]:
        mesh: Mesh = self.factory.mesh
        peer_id = (request.params.get("node_id") or [""])[0]
        if not NODE_ID_RE.fullmatch(peer_id):
            raise ConnectionDeny(400, "node_id query parameter required: 1-64 of A-Za-z0-9._-")
        # Autobahn's own reading of the origin: the Origin header, or
        # Sec-WebSocket-Origin for the WebSocket drafts before version 13,
        # which it still accepts; "" when there is none.
        origin = request.origin
        if origin and origin not in self.factory.allowed_origins:
            raise ConnectionDeny(403, "browser origins are not allowed on the peer endpoint")
        secret = self.factory.secret
        dial_nonce = request.headers.get(auth.NONCE_HEADER.lower())
        if secret is not None and not auth.valid_nonce(dial_nonce):
            # Before check_new_link: a stranger learns nothing of our links.
            mesh.count_auth_failure(peer_id, "no nonce: the dialler has no cluster secret")
            raise ConnectionDeny(401, "this mesh requires the cluster secret")
        try:
            mesh.check_new_link(peer_id, "inbound")
        except LinkRefused as e:
            raise ConnectionDeny(e.status, e.reason) from None
        self.peer_id = peer_id
        headers = {NODE_ID_HEADER: mesh.node_id}
        if request.headers.get(UNMASKED_HEADER.lower()) == "1":
            self.requireMaskedClientFrames = False
            headers[UNMASKED_HEADER] = "1"
        if secret is not None:
            accept_nonce = auth.new_nonce()
            self._expected_proof = auth.dialler_proof(
                secret, dial_nonce, accept_nonce, peer_id, mesh.node_id
            )
            headers[auth.NONCE_HEADER] = accept_nonce
            headers[auth.PROOF_HEADER] = auth.acceptor_proof(
                secret, dial_nonce, accept_nonce, mesh.node_id, peer_id
            )
        return None, headers

    _expected_proof: str | None = None
    _auth_timer: Any = None

    def onOpen(self) -> None:
        try:
            assert self.peer_id is not None
            if self._expected_proof is None:
                self._open_session(self.peer_id)
            else:  # nothing is processed before the dialler's proof
                self._auth_timer = self.factory.reactor.callLater(
                    AUTH_TIMEOUT, self._refuse, "no proof in time"
                )
        except Exception:
            self._rlog.failure("error opening the link from {peer}", peer=self.peer_id)

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        if self._expected_proof is None or self._auth_timer is None:
            return super()._first_frame(payload, isBinary)
        self._auth_timer.cancel()
        self._auth_timer = None
        proof = None
        if not isBinary:
            try:
                envelope = decode(payload)
                if envelope.type == auth.AUTH_TYPE:
                    proof = envelope.data.get("proof")
            except Exception:
                pass
        if not auth.proofs_match(self._expected_proof, proof):
            self._refuse("wrong proof of the cluster secret")
            return
        self._expected_proof = None
        assert self.peer_id is not None
        self._open_session(self.peer_id)

    def _refuse(self, why: str) -> None:
        self._auth_timer = None
        self.factory.mesh.count_auth_failure(self.peer_id, why)
        self.sendClose(code=CLOSE_AUTH_FAILED, reason="authentication failed")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        super().onClose(wasClean, code, reason)


class PeerClientProtocol(  # type: ignore[misc]  # Autobahn's bases clash: see _PeerAdapter
    _PeerAdapter,
    WebSocketClientProtocol,
):
    """The dialling end of a peer link."""

    direction = "outbound"
    _expected: str | None = None
    _dial_nonce: str | None = None
    _accept_nonce: str | None = None

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        factory = self.factory
        headers = {UNMASKED_HEADER: "1"}
        if factory.dialer.secret is not None:
            self._dial_nonce = auth.new_nonce()
            headers[auth.NONCE_HEADER] = self._dial_nonce
        return ConnectingRequest(
            host=factory.host, port=factory.port, resource=factory.resource, headers=headers
        )

    def onConnect(self, response: Any) -> None:
        dialer = self.factory.dialer
        if response.headers.get(UNMASKED_HEADER.lower()) == "1":
            self.maskClientFrames = False
        self._expected = response.headers.get(NODE_ID_HEADER.lower()) or dialer.node_id
        if dialer.secret is None:
            return
        # The acceptor must prove the secret before we say anything.
        accept_nonce = response.headers.get(auth.NONCE_HEADER.lower())
        proof = response.headers.get(auth.PROOF_HEADER.lower())
        if self._expected is None or not auth.valid_nonce(accept_nonce):
            dialer.mesh.count_auth_failure(self._expected, "the acceptor proved no secret")
            raise ConnectionDeny(401, "peer did not prove the cluster secret")
        assert self._dial_nonce is not None
        expected = auth.acceptor_proof(
            dialer.secret, self._dial_nonce, accept_nonce, self._expected, dialer.mesh.node_id
        )
        if not auth.proofs_match(expected, proof):
            dialer.mesh.count_auth_failure(self._expected, "wrong proof from the acceptor")
            raise ConnectionDeny(401, "peer's proof of the cluster secret is wrong")
        self._accept_nonce = accept_nonce

    def onOpen(self) -> None:
        try:
            if self._expected is None:
                return  # an original node: it names itself in its first frame
            dialer = self.factory.dialer
            if dialer.secret is not None:
                assert self._dial_nonce is not None and self._accept_nonce is not None
                proof = auth.dialler_proof(
                    dialer.secret,
                    self._dial_nonce,
                    self._accept_nonce,
                    dialer.mesh.node_id,
                    self._expected,
                )
                frame = {
                    "type": auth.AUTH_TYPE,
                    "from": dialer.mesh.node_id,
                    "to": self._expected,
                    "data": {"proof": proof},
                }
                self.sendMessage(_json.dumps(frame), isBinary=False)
            self._open_session(self._expected)
        except Exception:
            self._rlog.failure("error opening the link to {peer}", peer=self._expected)

    def _address(self) -> str:
        dialer: Dialer = self.factory.dialer
        return dialer.url

    def _opened(self) -> None:
        self.factory.dialer.link_opened(self.peer_id)

    def _first_frame(self, payload: bytes, isBinary: bool) -> None:
        # An original node says who it is only in its frames.
        if isBinary:
            return super()._first_frame(payload, isBinary)
        try:
            sender = decode(payload).sender
        except Exception:
            return super()._first_frame(payload, isBinary)
        self._open_session(sender)
        if self.session is not None:
            self.session.data_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is None:
            self.factory.dialer.handshake_failed(code, reason)
        super().onClose(wasClean, code, reason)


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
        # validating each frame first cost about 5% of a busy node.
        utf8validateIncoming=False,
    )


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
    ) -> None:
        super().__init__(reactor=reactor)
        self.mesh = mesh
        self.allowed_origins = allowed_origins
        self.secret = secret
        _protocol_options(self, max_message_size)


class UpgradeOnly(WebSocketResource):
    """
    A WebSocket endpoint that answers a request which is not a WebSocket
    upgrade with 400 and a JSON body (as the original answers a plain GET
    on C{/ws/p2p}), rather than Autobahn's HTML page naming its version.
    """

    def render(self, request: Any) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() != b"websocket":
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"sec-websocket-version", b"13")
            return _json.dumps({"error": "a WebSocket endpoint: upgrade to use it", "status": 400})
        return super().render(request)


def peer_resource(factory: PeerServerFactory) -> WebSocketResource:
    """:returns: the resource to mount at C{/ws/p2p}."""
    return UpgradeOnly(factory)


class PeerClientFactory(WebSocketClientFactory):
    """Dials one peer for a L{Dialer}."""

    protocol = PeerClientProtocol
    noisy = False

    def __init__(self, dialer: Dialer, url: str, max_message_size: int, reactor: Any) -> None:
        super().__init__(url, reactor=reactor)
        self.dialer = dialer
        self.mesh = dialer.mesh
        _protocol_options(self, max_message_size)


def peer_url(address: str, own_id: str) -> tuple[str, str, int, bool]:
    """
    Normalise a peer address (SPEC section 3): C{http://h:p} and C{ws://h:p}
    mean C{ws://h:p/ws/p2p}; C{https}/C{wss} mean TLS.

    :returns: C{(url, host, port, secure)}, the URL carrying C{node_id}.
    :raises ValueError: if C{address} is not such a URL.
    """
    address = address.strip()
    if "://" not in address:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/.*)?", address):
            raise ValueError(f"{address!r} is not a ws://, wss://, http:// or https:// address")
        address = "ws://" + address
    parts = urlsplit(address)
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"{address!r} is not a ws://, wss://, http:// or https:// address")
    secure = scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise ValueError(f"{address!r} has a bad port") from None
    path = parts.path if parts.path not in ("", "/") else PEER_PATH
    host = parts.hostname
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}?node_id={own_id}", host, port, secure


class Dialer(Service):
    """
    Keeps a link to the peer at C{address} up: dials it, and re-dials with
    exponential back-off and jitter whenever the link is down. Failed
    WebSocket handshakes count as failed attempts too (ClientService alone
    would restart its back-off at every TCP connect).

    @ivar node_id: the peer's id once known (or as given).
    """

    _log = Logger()

    INITIAL_DELAY = 0.25
    MAX_DELAY = 8.0

    def __init__(
        self,
        mesh: Mesh,
        address: str,
        reactor: Any,
        max_message_size: int,
        node_id: str | None = None,
        secret: bytes | None = None,
        tls: Any = None,
    ) -> None:
        self.mesh = mesh
        self.address = address
        self.node_id = node_id
        self.secret = secret
        self.url, host, port, secure = peer_url(address, mesh.node_id)
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=5)
        if secure:
            endpoint = wrapClientTLS(
                tls.client_options(host) if tls is not None else optionsForClientTLS(host),
                endpoint,
            )
        self.factory = PeerClientFactory(self, self.url, max_message_size, reactor)
        self._failures = 0
        self._backoff = backoffPolicy(
            initialDelay=self.INITIAL_DELAY,
            maxDelay=self.MAX_DELAY,
            factor=2.0,
            jitter=lambda: random.uniform(0, self.INITIAL_DELAY),
        )
        self._client = ClientService(
            endpoint, self.factory, retryPolicy=self._retry_delay, clock=reactor
        )

    def _retry_delay(self, attempt: int) -> float:
        if self.node_id is not None and self.node_id in self.mesh.links:
            # Linked through another connection (the peer dialled us):
            # check back later instead of competing with it.
            return self.MAX_DELAY
        delay: float = self._backoff(max(attempt, self._failures))
        return delay

    def link_opened(self, peer_id: str | None) -> None:
        """The handshake succeeded: the back-off starts over."""
        self._failures = 0
        if peer_id is not None:
            self.node_id = peer_id

    def handshake_failed(self, code: int | None, reason: str | None) -> None:
        """A connection closed before its link opened."""
        self._failures += 1
        self._log.debug(
            "dialling {url} failed ({code} {reason}); attempt {n}",
            url=self.url,
            code=code,
            reason=reason,
            n=self._failures,
        )

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._client.running:
            d: Deferred[None] = self._client.stopService()
            return d
        return succeed(None)
