# -*- test-case-name: tests.test_pki -*-
"""
Node identity from certificates (PKI mode, SPEC section 9): what a member
with its own valid certificate cannot do.

In PKI mode (C{[tls]} with a CA, a certificate and client certificates
required) a node's id is the one its certificate names, and a link is
accepted only from a certificate naming the id it claims (see
L{relaytx._handshake}). That keeps a member from linking under another
node's id. Two more things a member could do through the mesh are closed
here:

  - B{Claiming a link it does not have}, to draw the calls for a node C
    through itself. Each node publishes a signed record (L{NodeRecord}): its
    id, the ids it links to, a sequence number, an X25519 public key and its
    certificate. Records are flooded to every node and kept only when the
    certificate chains to the CA, names the node, and signs the record
    (L{RecordBook}). A route is used only if every adjacency on its path is
    declared by both ends' records (L{RecordBook.accept_path}): a member can
    list C among its links, but C will not list it back. The record also
    states the node's idempotent methods: only those are tried again on
    another instance when a call's outcome is unknown (L{relaytx._balance}),
    so a member cannot get another node's method run twice by calling it
    idempotent in an advert.
  - B{Forging an answer} (or a call) from another node. A caller and a
    callee share a key no one else holds: HKDF over their X25519 agreement,
    each side's public key vouched for by its signed record. A call that
    crossed other nodes carries a code under that key, and so does its
    answer (L{EndToEnd}); a node on the path cannot make either. So do a
    call's stream frames and cancels, and the messages of users' own types
    (SPEC section 7): one from a node other than the link's peer without
    its sender's code is dropped (C{forged_message}). It can
    still drop them: the caller then sees -32002, -32006 or -32001, never a
    forged success. (A call or answer between direct neighbours needs no
    code: their TLS link already says who sent it.)

With the cluster secret alone, members are trusted (one secret cannot tell
them apart), and none of this applies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relaytx import _json
from relaytx._tls import TlsError, certificate_names, read_pem
from relaytx.errors import MalformedMessage
from relaytx.wire import (
    MESSAGE_MAC,
    NO_SERVERS,
    NODE_ID_RE,
    Envelope,
    Payload,
    ServerCall,
    ServerResponse,
    server_table,
)

#: Bytes of the end-to-end code of a call or an answer.
E2E_MAC_SIZE = 16

#: A call with an end-to-end code is taken only this many seconds either
#: side of the time it was issued (its envelope's timestamp; the clocks of
#: the mesh are assumed to agree that closely), and each is taken once.
REPLAY_WINDOW = 120.0

#: ... and only if issued at most this many seconds before the newest call
#: taken from its caller (both times by the caller's clock): calls from one
#: caller arrive in about the order they were issued, so a node remembers
#: each caller's calls of about this long, not of the whole replay window.
REORDER_WINDOW = 30.0

#: The most calls a node remembers per caller; past it, that caller's calls
#: are refused (made faster than this in L{REORDER_WINDOW}: a flood).
MAX_TAKEN = 500_000


# Signing with whatever key a certificate holds.


def _sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise TlsError(f"tls.key: a {type(key).__name__} cannot sign node records")


def _verify(public: Any, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@frozen
class NodeRecord(Payload):
    """
    One node's signed statement of who it is and whom it links to
    (C{node_record} on the wire, between nodes in PKI mode only).

    @ivar seq: grows with each new record of the node (a newer one replaces).
    @ivar links: the node ids it has links to.
    @ivar x25519: its X25519 public key, hex (for end-to-end codes).
    @ivar cert: its certificate, PEM.
    @ivar signature: over L{signed_bytes}, base64, by the certificate's key.
    @ivar idempotent: its servers' idempotent methods (SPEC section 11):
        a call whose outcome is unknown is tried on another instance only
        when the signed record of the node it went to says so. Absent from
        the wire form when empty.
    """

    TYPE = "node_record"
    node_id: str
    seq: int
    links: tuple[str, ...]
    x25519: str
    cert: str
    signature: str = ""
    idempotent: Mapping[str, tuple[str, ...]] = NO_SERVERS

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> NodeRecord:
        node_id, seq, links = data.get("node_id"), data.get("seq"), data.get("links")
        x25519, cert, signature = data.get("x25519"), data.get("cert"), data.get("signature")
        if not (
            type(node_id) is str
            and NODE_ID_RE.fullmatch(node_id)
            and type(seq) is int
            and seq >= 0
            and type(links) is list
            and all(type(link) is str and NODE_ID_RE.fullmatch(link) for link in links)
            and len(links) <= 100_000
            and type(x25519) is str
            and len(x25519) == 64
            and type(cert) is str
            and len(cert) <= 16_384
            and type(signature) is str
            and len(signature) <= 2048
        ):
            raise MalformedMessage("node_record is not well formed", reason="bad_field")
        idempotent = _method_table(data.get("idempotent", {}))
        return cls(node_id, seq, tuple(links), x25519, cert, signature, idempotent)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "node_id": self.node_id,
            "seq": self.seq,
            "links": list(self.links),
            "x25519": self.x25519,
            "cert": self.cert,
            "signature": self.signature,
        }
        if self.idempotent:
            data["idempotent"] = {name: list(methods) for name, methods in self.idempotent.items()}
        return data

    def signed_bytes(self) -> bytes:
        """:returns: what the signature covers: every field but itself, canonically."""
        data = self.to_data()
        del data["signature"]
        return b"relaytx node record\n" + _json.canonical(data)


def _method_table(value: Any) -> Mapping[str, tuple[str, ...]]:
    """
    :returns: a record's C{idempotent} table (server -> method names).
    :raises MalformedMessage: if it is not one, or is too large.
    """
    if (
        type(value) is not dict
        or len(value) > 10_000
        or not all(
            type(name) is str
            and len(name) <= 256
            and type(methods) is list
            and len(methods) <= 10_000
            and all(type(m) is str and len(m) <= 256 for m in methods)
            for name, methods in value.items()
        )
    ):
        raise MalformedMessage("node_record's idempotent table is malformed", reason="bad_field")
    return server_table((name, methods) for name, methods in value.items() if methods)


class NodeIdentity:
    """
    This node's certified identity: its certificate and key, the mesh's CA,
    and an X25519 key made at start for end-to-end codes.

    :raises TlsError: if the files cannot be used, or the certificate does
        not name C{node_id}.
    """

    def __init__(self, node_id: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> None:
        self.node_id = node_id
        try:
            self.cert = x509.load_pem_x509_certificate(cert_pem)
            self.key = serialization.load_pem_private_key(key_pem, password=None)
            self.ca = x509.load_pem_x509_certificate(ca_pem)
        except (ValueError, TypeError) as e:
            raise TlsError(f"tls: cannot load the certificate, key or CA: {e}") from None
        names = certificate_names(self.cert)
        if node_id not in names:
            raise TlsError(
                f"tls.cert names {', '.join(sorted(names)) or 'nothing'}, not this node's id "
                f"{node_id!r}: in PKI mode a node's id is the one its certificate names"
            )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.x25519 = X25519PrivateKey.generate()
        self.x25519_public = self.x25519.public_key().public_bytes_raw().hex()

    def record(
        self,
        seq: int,
        links: Iterable[str],
        idempotent: Mapping[str, tuple[str, ...]] = NO_SERVERS,
    ) -> NodeRecord:
        """:returns: this node's record, signed (C{idempotent}: see L{NodeRecord})."""
        unsigned = NodeRecord(
            self.node_id, seq, tuple(sorted(links)), self.x25519_public, self.cert_pem,
            idempotent=idempotent,
        )  # fmt: skip
        signature = base64.b64encode(_sign(self.key, unsigned.signed_bytes())).decode()
        return attrs.evolve(unsigned, signature=signature)


class RecordBook:
    """
    The verified records of every node known, and what they allow.

    :param identity: this node's identity (its own record is the first kept).
    :param now: the current Unix time, for certificate validity.
    """

    def __init__(self, identity: NodeIdentity, now: Callable[[], float] = time.time) -> None:
        self._identity = identity
        self._now = now
        self._records: dict[str, NodeRecord] = {}
        #: certificates already checked, by their PEM: whether they are good
        self._certs: dict[str, tuple[bool, str]] = {}

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._records

    def records(self) -> list[NodeRecord]:
        """:returns: every record held (to hand a new neighbour)."""
        return list(self._records.values())

    def idempotent_of(self, node_id: str) -> Mapping[str, tuple[str, ...]] | None:
        """:returns: the idempotent methods C{node_id}'s record states, if one is held."""
        record = self._records.get(node_id)
        return None if record is None else record.idempotent

    def take(self, record: NodeRecord) -> str | None:
        """
        Check a record and keep it if it is newer than the one held.

        :returns: C{None} if it was taken; else why not (C{"old"} for one
            not newer than what is held, which is not an attack).
        """
        held = self._records.get(record.node_id)
        if held is not None and held.seq >= record.seq:
            return "old"
        why = self._check(record)
        if why is not None:
            return why
        self._records[record.node_id] = record
        return None

    def _check(self, record: NodeRecord) -> str | None:
        known = self._certs.get(record.cert)
        if known is None:
            known = self._check_certificate(record.cert)
            if len(self._certs) > 100_000:
                self._certs.clear()
            self._certs[record.cert] = known
        good, why = known
        if not good:
            return why
        cert = x509.load_pem_x509_certificate(record.cert.encode())
        if record.node_id not in certificate_names(cert):
            return f"the certificate of {record.node_id}'s record does not name it"
        try:
            signature = base64.b64decode(record.signature, validate=True)
        except ValueError:
            return "the record's signature is not base64"
        if not _verify(cert.public_key(), signature, record.signed_bytes()):
            return f"the signature of {record.node_id}'s record is wrong"
        return None

    def _check_certificate(self, pem: str) -> tuple[bool, str]:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            return False, "not a PEM certificate"
        ca = self._identity.ca
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False, "a certificate the mesh's CA did not sign"
        now = self._now()
        if not (
            cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()
        ):
            return False, "an expired or not yet valid certificate"
        return True, ""

    def adjacent(self, a: str, b: str) -> bool:
        """:returns: whether C{a} and C{b} each declare a link to the other."""
        record_a, record_b = self._records.get(a), self._records.get(b)
        return (
            record_a is not None
            and record_b is not None
            and b in record_a.links
            and a in record_b.links
        )

    def accept_path(self, neighbour: str, path: tuple[str, ...]) -> bool:
        """
        :param neighbour: the neighbour that advertised C{path}.
        :param path: the nodes after the neighbour, up to the destination.
        :returns: whether every adjacency along C{neighbour, *path} is
            declared by both its ends. (The link to the neighbour itself is
            this node's own, proved by its certificate.)
        """
        previous = neighbour
        for node in path:
            if not self.adjacent(previous, node):
                return False
            previous = node
        return True

    def x25519_of(self, node_id: str) -> str | None:
        """:returns: C{node_id}'s X25519 public key (hex), if its record is held."""
        record = self._records.get(node_id)
        return None if record is None else record.x25519


class EndToEnd:
    """
    End-to-end codes on calls and answers between this node and another
    (see the module docstring). Keys are derived once per peer key.
    """

    def __init__(self, identity: NodeIdentity, book: RecordBook) -> None:
        self._identity = identity
        self._book = book
        self._keys: dict[tuple[str, str], hashlib.blake2b] = {}
        #: the calls taken, per caller
        self._taken: dict[str, _Taken] = {}

    def key(self, peer: str) -> hashlib.blake2b | None:
        """
        :returns: the keyed BLAKE2b state for codes between this node and
            C{peer} (copied for each code), if C{peer}'s record is held.
        """
        public = self._book.x25519_of(peer)
        if public is None:
            return None
        keyed = self._keys.get((peer, public))
        if keyed is None:
            shared = self._identity.x25519.exchange(
                X25519PublicKey.from_public_bytes(bytes.fromhex(public))
            )
            low, high = sorted((peer, self._identity.node_id))
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=f"relaytx end to end\n{low}\n{high}".encode(),
            ).derive(shared)
            keyed = hashlib.blake2b(key=key, digest_size=E2E_MAC_SIZE)
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[(peer, public)] = keyed
        return keyed

    @staticmethod
    def _code(keyed: hashlib.blake2b, kind: str, sender: str, to: str, body: Any) -> str:
        # What is coded: one JSON array, the same bytes at both ends (the
        # keys of any object in it sorted), of what the frame is, who sent
        # it to whom, and its body (see _call_body, _answer_body).
        h = keyed.copy()
        h.update(_json.canonical((kind, sender, to, body)))
        return h.hexdigest()

    def _matches(
        self, key: hashlib.blake2b, kind: str, sender: str, to: str, body: Any, mac: Any
    ) -> bool:
        if type(mac) is not str:
            return False
        expected = self._code(key, kind, sender, to, body)
        return hmac.compare_digest(expected, mac)

    def seal_call(self, callee: str, call: ServerCall, issued: str) -> str | None:
        """
        :param issued: the call's timestamp (its envelope's).
        :returns: the code of a call this node makes to C{callee}, if a key is known.
        """
        key = self.key(callee)
        if key is None:
            return None
        return self._code(key, "call", self._identity.node_id, callee, _call_body(call, issued))

    def check_call(
        self, caller: str, call: ServerCall, issued: str | None, now: float
    ) -> str | None:
        """
        :param issued: the call's timestamp (its envelope's).
        :param now: the current Unix time.
        :returns: C{None} if C{call.mac} is C{caller}'s code for this call to
            this node, issued within L{REPLAY_WINDOW} and not taken before;
            else why not.
        """
        key = self.key(caller)
        if key is None:
            return f"no record of {caller} is held"
        if issued is None or not self._matches(
            key, "call", caller, self._identity.node_id, _call_body(call, issued), call.mac
        ):
            return f"the call's code is not {caller}'s"
        try:
            when = datetime.fromisoformat(issued).timestamp()
        except ValueError:
            return "the call's timestamp is not RFC 3339"
        if abs(now - when) > REPLAY_WINDOW:
            return f"the call was issued {now - when:.0f} s from now"
        taken = self._taken.get(caller)
        if taken is None:
            taken = self._taken[caller] = _Taken()
        return taken.take(call.response_id or "", when, now)

    def seal_answer(self, caller: str, response: ServerResponse) -> str | None:
        """:returns: the code of this node's answer to C{caller}, if a key is known."""
        key = self.key(caller)
        if key is None:
            return None
        return self._code(key, "answer", self._identity.node_id, caller, _answer_body(response))

    def check_answer(self, callee: str, response: ServerResponse, mac: Any) -> bool:
        """:returns: whether C{mac} is C{callee}'s code for this answer to this node."""
        key = self.key(callee)
        return key is not None and self._matches(
            key, "answer", callee, self._identity.node_id, _answer_body(response), mac
        )

    def seal_message(self, envelope: Envelope) -> Envelope:
        """
        :param envelope: a message of a user's own type this node originates.
        :returns: it, with this node's code for it to its destination in
            its data (L{MESSAGE_MAC}), if a key is known.
        """
        key = self.key(envelope.to)
        if key is not None:
            body = _message_body(envelope, envelope.data)
            code = self._code(key, "message", self._identity.node_id, envelope.to, body)
            envelope.data = {**envelope.data, MESSAGE_MAC: code}
        return envelope

    def check_message(self, envelope: Envelope, now: float) -> bool:
        """
        :param envelope: a message of a user's own type to this node, which
            crossed other nodes.
        :param now: the current Unix time.
        :returns: whether it carries its sender's code (L{MESSAGE_MAC}) and
            was sent within L{REPLAY_WINDOW} (a copy within it is dropped as
            a duplicate).
        """
        key = self.key(envelope.sender)
        data = dict(envelope.data)
        mac = data.pop(MESSAGE_MAC, None)
        if key is None or envelope.timestamp is None:
            return False
        body = _message_body(envelope, data)
        if not self._matches(key, "message", envelope.sender, self._identity.node_id, body, mac):
            return False
        try:
            when = datetime.fromisoformat(envelope.timestamp).timestamp()
        except ValueError:
            return False
        return abs(now - when) <= REPLAY_WINDOW

    def seal_frame(self, kind: str, peer: str, body: Mapping[str, Any]) -> str | None:
        """
        :param kind: what the frame is (C{"item"}, C{"credit"}, C{"cancel"}).
        :param body: the frame's data without its C{mac}.
        :returns: this node's code for a frame of a call's stream or its
            cancel sent to C{peer}, if a key is known (see L{relaytx._streams}).
        """
        key = self.key(peer)
        if key is None:
            return None
        return self._code(key, kind, self._identity.node_id, peer, body)

    def check_frame(self, kind: str, peer: str, body: Mapping[str, Any], mac: Any) -> bool:
        """:returns: whether C{mac} is C{peer}'s code for this frame to this node."""
        key = self.key(peer)
        return key is not None and self._matches(key, kind, peer, self._identity.node_id, body, mac)


class _Taken:
    """
    The calls taken from one caller, exactly: every response id issued
    within L{REORDER_WINDOW} of the caller's newest call (and within
    L{REPLAY_WINDOW} of now), so a replay of any call the windows still let
    in is known as one. Older ones are forgotten: the windows refuse them.
    """

    __slots__ = ("ids", "newest", "order")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        #: (when issued, response id), in the order taken
        self.order: deque[tuple[float, str]] = deque()
        self.newest = float("-inf")

    def take(self, response_id: str, when: float, now: float) -> str | None:
        """
        :param when: when the call was issued (the caller's clock).
        :returns: C{None} if the call is taken; else why not.
        """
        ids = self.ids
        if response_id in ids:
            return "the call was taken before (a replay)"
        newest = self.newest
        if when < newest - REORDER_WINDOW:
            return f"the call was issued {newest - when:.0f} s before its caller's newest"
        if when > newest:
            self.newest = newest = when
        floor = max(newest - REORDER_WINDOW, now - REPLAY_WINDOW)
        order = self.order
        while order and order[0][0] < floor:
            ids.discard(order.popleft()[1])
        if len(ids) >= MAX_TAKEN:
            return "its caller made more calls than a node remembers"
        ids.add(response_id)
        order.append((when, response_id))
        return None


def _message_body(envelope: Envelope, data: Mapping[str, Any]) -> tuple[Any, ...]:
    # What a user's message's code covers: its type, id, time and data.
    return (envelope.type, envelope.id, envelope.timestamp, data)


def _call_body(call: ServerCall, issued: str) -> tuple[Any, ...]:
    # A call's fields in a fixed order: a tuple, not an object, so no
    # keys are written or sorted. The caller a node relays for is its
    # word too.
    spec = call.call
    kwargs = spec.kwargs
    return (
        issued,
        call.response_id,
        spec.server_name,
        spec.method,
        spec.args,
        kwargs if type(kwargs) is dict else dict(kwargs),
        call.caller,
    )


def _answer_body(response: ServerResponse) -> tuple[Any, ...]:
    # The answer's fields as its JSON form carries them (ServerResponse.to_data).
    # Not its path report: diagnostics that each forwarder adds its time to
    # on the way back (relaytx._tracing), not the callee's word.
    if response.success:
        return (response.response_id, True, response.node_id, response.result)
    return (
        response.response_id,
        False,
        response.node_id,
        response.error or "",
        response.error_code,
        response.error_data or None,
    )


def load_identity(
    node_id: str, cert: str, key: str | None, ca: str, now: float | None = None
) -> NodeIdentity:
    """
    :param key: the key file; C{None} when the key is in the certificate's file.
    :param now: the current Unix time (the system's by default).
    :returns: the identity in the C{[tls]} files.
    :raises TlsError: if they cannot be used, or the certificate does not
        name C{node_id}, or is one its peers refuse: not signed by the CA,
        expired or not yet valid (a node that started with it could link
        to no one).
    """

    cert_pem = read_pem(cert, "cert")
    key_pem = read_pem(key, "key") if key else cert_pem
    identity = NodeIdentity(node_id, cert_pem, key_pem, read_pem(ca, "ca"))
    try:
        identity.cert.verify_directly_issued_by(identity.ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsError(
            "tls.cert is not signed by tls.ca: in PKI mode every peer would refuse it"
        ) from None
    now = time.time() if now is None else now
    before, after = identity.cert.not_valid_before_utc, identity.cert.not_valid_after_utc
    if now < before.timestamp():
        raise TlsError(f"tls.cert is not valid yet: not before {before.isoformat()}")
    if now > after.timestamp():
        raise TlsError(f"tls.cert has expired: not after {after.isoformat()}")
    return identity
