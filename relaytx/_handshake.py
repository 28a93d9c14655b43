# -*- test-case-name: tests.test_handshake -*-
"""
The opening of a peer link, at each end, as a small state machine that
needs no transport: the Autobahn protocols in L{relaytx._protocol} feed it
what arrives (the upgrade request or answer, the link opening, the first
frame) and carry out what it decides (the headers to send, a frame to
send, a refusal).

Accepting end (L{AcceptorHandshake})::

    UPGRADING --upgrade()--> ACCEPTED --opened()--> OPEN          (no secret)
                                      --opened()--> PROVING        (secret)
    PROVING --first_frame(right proof)--> OPEN
    PROVING --first_frame(wrong proof) | timed_out()--> REFUSED

  - the dialler names itself in the C{node_id} query parameter (1-64 of
    C{A-Za-z0-9._-}), else 400; a browser (an C{Origin} header) whose
    origin is not allowed gets 403;
  - with a cluster secret, a dialler that sends no nonce gets 401 before
    anything is said of this node's links; then the node's link admission
    decides (409 to the second of two nodes dialling each other, 400 to
    oneself, 503 while stopping);
  - in PKI mode (C{[tls]} with a CA and client certificates required) the
    dialler's certificate must name the id it claims (403 otherwise);
  - the answer names this node (C{X-Relaytx-Node-Id}) and, with a secret,
    carries this node's nonce and proof (see L{relaytx._auth}); nothing is
    processed before the dialler's proof, its first frame. Once it is right,
    both ends hold the link's frame keys (L{relaytx._linkauth}).

Dialling end (L{DiallerHandshake})::

    CONNECTING --request_headers()--> REQUESTED --answered()--> ACCEPTED
    ACCEPTED --opened()--> OPEN               (the acceptor named itself)
    ACCEPTED --opened()--> IDENTIFYING        (it did not: an original node)
    IDENTIFYING --first_frame()--> OPEN       (the frame's sender names it)

  - a dialler told which node to expect (C{--add-peer ID@URL}) keeps the
    link only if the far side is that node: its header (proved by the
    secret, or by its certificate in PKI mode) or, for an original node,
    the sender of its first frame; anything else is refused and counted;
  - with a secret, the acceptor must prove it before the dialler says
    anything: an answer without a nonce, or with a wrong proof, is refused
    (401) and counted; the dialler's own proof is then its first frame;
  - in PKI mode the acceptor's certificate must name the id it answers with;
  - an original node names itself only in its frames, and sends its first
    ping up to 30 s after a link opens: the dialler pings it at once, so its
    pong names it.

A refusal is a L{HandshakeRefused}: an HTTP status while upgrading, a
WebSocket close code after, and, when the cause is a failed proof of the
secret, a reason to count it as an authentication failure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from relaytx import _auth, _json
from relaytx._linkauth import LinkKeys, link_keys
from relaytx._links import NOT_THE_NODE_EXPECTED, LinkRefused
from relaytx.peer import CLOSE_AUTH_FAILED
from relaytx.wire import NODE_ID_RE, AuthProof, Envelope, Ping, decode, encode

#: The acceptor names itself in this header of its upgrade answer.
NODE_ID_HEADER = "X-Relaytx-Node-Id"

#: A dialler that must reach one node (C{ID@URL}) names it in this header
#: of its upgrade request: any other node refuses the upgrade (421) before
#: the link is admitted, so a wrong id never costs the node a link it holds
#: (the dialler's own check of the answer stays, for other acceptors).
EXPECT_HEADER = "X-Relaytx-Expect-Id"

#: Request and response header by which a relaytx node with its registry
#: off (C{--disable-registry}) says so: it will send no advert, and its
#: neighbour tells others of its route at once rather than wait for one.
REGISTRY_OFF_HEADER = "X-Relaytx-Registry-Off"

#: Request and response header by which two relaytx nodes agree that the
#: dialler sends its frames unmasked. RFC 6455 masks client frames so that
#: a script in a browser cannot forge bytes a caching proxy would misread;
#: between two nodes there is no browser, and masking only costs time (the
#: README gives the figures). A dialler or acceptor that does not send the
#: header (the original, a browser, any other client) masks and must mask
#: as usual.
UNMASKED_HEADER = "X-Relaytx-Unmasked"


class HandshakeRefused(Exception):
    """
    The link may not open.

    @ivar status: the HTTP status to refuse the upgrade with, or the
        WebSocket close code once the connection is open.
    @ivar reason: a short explanation for the other end.
    @ivar auth_failure: why the other end failed to prove the cluster
        secret, when that is the cause (counted and logged); else C{None}.
    """

    def __init__(self, status: int, reason: str, auth_failure: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.auth_failure = auth_failure


class State(enum.Enum):
    """Where a handshake is."""

    UPGRADING = "upgrading"
    CONNECTING = "connecting"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    PROVING = "proving"
    IDENTIFYING = "identifying"
    OPEN = "open"
    REFUSED = "refused"


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


class _Machine:
    state: State
    #: the other end's node id, once known
    peer_id: str | None = None
    #: whether the dialler's frames go unmasked (both ends said so)
    unmasked = False
    #: whether this node's registry is off (it says so to the other end)
    registry_off = False
    #: whether the other end said its registry is off
    peer_registry_off = False

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise RuntimeError(
                f"{type(self).__name__}: not in {'/'.join(s.value for s in states)}"
                f" but {self.state.value}"
            )

    def _refuse(
        self, status: int, reason: str, auth_failure: str | None = None
    ) -> HandshakeRefused:
        self.state = State.REFUSED
        return HandshakeRefused(status, reason, auth_failure)


class AcceptorHandshake(_Machine):
    """
    The accepting end (see the module docstring).

    :param admit: the node's link admission for an inbound link from a
        peer id; raises L{LinkRefused} to refuse it.
    :param secret: the cluster secret, if the mesh has one.
    :param allowed_origins: browser origins allowed to link.
    :param pki: whether the dialler's certificate must name the id it
        claims (PKI mode).
    """

    def __init__(
        self,
        node_id: str,
        admit: Callable[[str], None],
        secret: bytes | None = None,
        allowed_origins: frozenset[str] = frozenset(),
        new_nonce: Callable[[], str] = _auth.new_nonce,
        pki: bool = False,
    ) -> None:
        self.state = State.UPGRADING
        self._node_id = node_id
        self._admit = admit
        self._secret = secret
        self._allowed_origins = allowed_origins
        self._new_nonce = new_nonce
        self._pki = pki
        self._expected_proof: str | None = None
        self._nonces = ("", "")
        #: the link's frame keys, once the secret is proved both ways
        self.keys: LinkKeys | None = None

    def upgrade(
        self,
        params: Mapping[str, list[str]],
        headers: Mapping[str, str],
        origin: str = "",
        peer_names: frozenset[str] = frozenset(),
    ) -> dict[str, str]:
        """
        The dialler's upgrade request arrived.

        :param params: its query parameters (each a list of values).
        :param origin: its browser origin, C{""} for none.
        :param peer_names: the node ids its TLS certificate names (PKI mode).
        :returns: the headers to answer with.
        :raises HandshakeRefused: with the HTTP status to refuse it with.
        """
        self._expect(State.UPGRADING)
        headers = _lower(headers)
        peer_id = (params.get("node_id") or [""])[0]
        if not NODE_ID_RE.fullmatch(peer_id):
            raise self._refuse(400, "node_id query parameter required: 1-64 of A-Za-z0-9._-")
        self.peer_id = peer_id  # as it claims: proved or refused below
        if origin and origin not in self._allowed_origins:
            raise self._refuse(403, "browser origins are not allowed on the peer endpoint")
        if self._pki and peer_id not in peer_names:
            raise self._refuse(
                403,
                f"the client certificate does not name {peer_id}",
                f"claimed {peer_id} with a certificate naming {sorted(peer_names)}",
            )
        dial_nonce = headers.get(_auth.NONCE_HEADER.lower())
        if self._secret is not None and not _auth.valid_nonce(dial_nonce):
            # Before the admission: a stranger learns nothing of our links.
            raise self._refuse(
                401,
                "this mesh requires the cluster secret",
                "no nonce: the dialler has no cluster secret",
            )
        expected = headers.get(EXPECT_HEADER.lower())
        if expected is not None and expected != self._node_id:
            raise self._refuse(
                421, f"this is {self._node_id}, {NOT_THE_NODE_EXPECTED} ({expected})"
            )
        try:
            self._admit(peer_id)
        except LinkRefused as e:
            raise self._refuse(e.status, e.reason) from None
        answer = {NODE_ID_HEADER: self._node_id}
        self.peer_registry_off = headers.get(REGISTRY_OFF_HEADER.lower()) == "1"
        if self.registry_off:
            answer[REGISTRY_OFF_HEADER] = "1"
        if headers.get(UNMASKED_HEADER.lower()) == "1":
            self.unmasked = True
            answer[UNMASKED_HEADER] = "1"
        if self._secret is not None:
            assert dial_nonce is not None  # valid_nonce above
            accept_nonce = self._new_nonce()
            self._expected_proof = _auth.dialler_proof(
                self._secret, dial_nonce, accept_nonce, peer_id, self._node_id
            )
            answer[_auth.NONCE_HEADER] = accept_nonce
            answer[_auth.PROOF_HEADER] = _auth.acceptor_proof(
                self._secret, dial_nonce, accept_nonce, self._node_id, peer_id
            )
            self._nonces = (dial_nonce, accept_nonce)
        self.state = State.ACCEPTED
        return answer

    def opened(self) -> bool:
        """
        The WebSocket is open.

        :returns: whether the link opens now; C{False} while the dialler's
            proof is awaited (set a timer: L{timed_out}).
        """
        self._expect(State.ACCEPTED)
        if self._expected_proof is None:
            self.state = State.OPEN
            return True
        self.state = State.PROVING
        return False

    def first_frame(self, payload: bytes, is_binary: bool) -> None:
        """
        The dialler's first frame, its proof of the secret, arrived: the
        link is open.

        :raises HandshakeRefused: (close code 4003) if it is no right proof.
        """
        self._expect(State.PROVING)
        proof = None if is_binary else _proof_in(payload)
        assert self._expected_proof is not None  # PROVING
        if not _auth.proofs_match(self._expected_proof, proof):
            raise self._refuse(
                CLOSE_AUTH_FAILED, "authentication failed", "wrong proof of the cluster secret"
            )
        self._expected_proof = None
        assert self._secret is not None and self.peer_id is not None
        self.keys = link_keys(self._secret, *self._nonces, self.peer_id, self._node_id, False)
        self.state = State.OPEN

    def timed_out(self) -> HandshakeRefused:
        """:returns: the refusal of a dialler whose proof did not come in time."""
        self._expect(State.PROVING)
        return self._refuse(CLOSE_AUTH_FAILED, "authentication failed", "no proof in time")


def _proof_in(payload: bytes) -> Any:
    try:
        envelope = decode(payload)
    except Exception:
        return None
    if envelope.type != AuthProof.TYPE:
        return None
    try:
        return AuthProof.from_data(envelope.data).proof
    except Exception:
        return None


class DiallerHandshake(_Machine):
    """
    The dialling end (see the module docstring).

    :param expected_id: the id the dialled node must have (C{ID@URL}), if
        the dialler was told one; else whichever node answers is kept.
    :param pki: whether the acceptor's certificate must name the id it
        answers with (PKI mode).
    """

    def __init__(
        self,
        node_id: str,
        secret: bytes | None = None,
        expected_id: str | None = None,
        new_nonce: Callable[[], str] = _auth.new_nonce,
        pki: bool = False,
    ) -> None:
        self.state = State.CONNECTING
        self._node_id = node_id
        self._secret = secret
        self._expected_id = expected_id
        self._new_nonce = new_nonce
        self._pki = pki
        self._dial_nonce: str | None = None
        self._accept_nonce: str | None = None
        #: the link's frame keys, once the secret is proved both ways
        self.keys: LinkKeys | None = None

    def request_headers(self) -> dict[str, str]:
        """:returns: the extra headers of the upgrade request."""
        self._expect(State.CONNECTING)
        headers = {UNMASKED_HEADER: "1"}
        if self._expected_id is not None:
            headers[EXPECT_HEADER] = self._expected_id
        if self.registry_off:
            headers[REGISTRY_OFF_HEADER] = "1"
        if self._secret is not None:
            self._dial_nonce = self._new_nonce()
            headers[_auth.NONCE_HEADER] = self._dial_nonce
        self.state = State.REQUESTED
        return headers

    def answered(
        self, headers: Mapping[str, str], peer_names: frozenset[str] = frozenset()
    ) -> None:
        """
        The acceptor answered the upgrade.

        :param peer_names: the node ids its TLS certificate names (PKI mode).
        :raises HandshakeRefused: (401 or 403, counted) if it proved no
            secret, is not the node expected, or its certificate does not
            name it.
        """
        self._expect(State.REQUESTED)
        headers = _lower(headers)
        self.unmasked = headers.get(UNMASKED_HEADER.lower()) == "1"
        self.peer_registry_off = headers.get(REGISTRY_OFF_HEADER.lower()) == "1"
        peer_id = headers.get(NODE_ID_HEADER.lower()) or None
        expected = self._expected_id
        if peer_id is not None and expected is not None and peer_id != expected:
            raise self._refuse(
                403, f"the peer is {peer_id}, not {expected}", f"answered as {peer_id}"
            )
        if (self._pki or self._secret is not None) and peer_id is None:
            raise self._refuse(401, "peer did not say who it is", "the acceptor named no node")
        if self._pki and peer_id not in peer_names:
            raise self._refuse(
                403,
                f"the peer's certificate does not name {peer_id}",
                f"answered as {peer_id} with a certificate naming {sorted(peer_names)}",
            )
        self.peer_id = peer_id
        if self._secret is not None:
            assert peer_id is not None
            accept_nonce = headers.get(_auth.NONCE_HEADER.lower())
            proof = headers.get(_auth.PROOF_HEADER.lower())
            if not _auth.valid_nonce(accept_nonce):
                raise self._refuse(
                    401, "peer did not prove the cluster secret", "the acceptor proved no secret"
                )
            assert self._dial_nonce is not None and accept_nonce is not None
            expected_proof = _auth.acceptor_proof(
                self._secret, self._dial_nonce, accept_nonce, peer_id, self._node_id
            )
            if not _auth.proofs_match(expected_proof, proof):
                raise self._refuse(
                    401,
                    "peer's proof of the cluster secret is wrong",
                    "wrong proof from the acceptor",
                )
            self._accept_nonce = accept_nonce
        self.state = State.ACCEPTED

    def opened(self, now: float) -> bytes | None:
        """
        The WebSocket is open.

        :param now: the current Unix time (for the ping to an original node).
        :returns: the frame to send first, if any: the proof of the secret;
            or, when the peer has not said who it is (an original node), a
            ping, whose pong names it (L{first_frame}). The link opens now
            if the peer's id is known.
        """
        self._expect(State.ACCEPTED)
        if self.peer_id is None:
            self.state = State.IDENTIFYING
            ping = Envelope.create(Ping(timestamp=now), self._node_id, self._expected_id or "", now)
            return encode(ping)
        self.state = State.OPEN
        if self._secret is None:
            return None
        assert self._dial_nonce is not None and self._accept_nonce is not None
        proof = _auth.dialler_proof(
            self._secret, self._dial_nonce, self._accept_nonce, self._node_id, self.peer_id
        )
        self.keys = link_keys(
            self._secret, self._dial_nonce, self._accept_nonce, self._node_id, self.peer_id, True
        )
        frame = {
            "type": AuthProof.TYPE,
            "from": self._node_id,
            "to": self.peer_id,
            "data": AuthProof(proof).to_data(),
        }
        return _json.dumps(frame)

    def first_frame(self, payload: bytes, is_binary: bool) -> Envelope:
        """
        An original node's first frame, which names it, arrived: the link is
        open under the frame's sender.

        :returns: the frame, decoded (it is then handled like any other).
        :raises HandshakeRefused: (close code 1002) if it names no one; (4003,
            counted) if it names another node than the one expected.
        """
        self._expect(State.IDENTIFYING)
        try:
            envelope = None if is_binary else decode(payload)
        except Exception:
            envelope = None
        if envelope is None or not NODE_ID_RE.fullmatch(envelope.sender):
            raise self._refuse(1002, "no session")
        expected = self._expected_id
        if expected is not None and envelope.sender != expected:
            raise self._refuse(
                CLOSE_AUTH_FAILED,
                f"the peer is {envelope.sender}, not {expected}",
                f"named itself {envelope.sender}",
            )
        self.peer_id = envelope.sender
        self.state = State.OPEN
        return envelope
