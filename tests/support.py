"""
Helpers shared by the test modules.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, settings
from twisted.internet.defer import Deferred

from relaytx.peer import PeerSession, handles
from relaytx.server import Server, exposed
from relaytx.wire import Envelope, Payload


def fuzz_settings(max_examples: int) -> Any:
    """
    Hypothesis settings for a property run the same on every machine: a
    fixed seed (C{derandomize}), no example database, no deadline.
    """
    return settings(
        derandomize=True,
        database=None,
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class TempDirMixin:
    """
    C{mktemp} under one temporary directory per test, removed afterwards
    (trial's own C{mktemp} writes beside the working directory under pytest).
    """

    def mktemp(self) -> str:
        """:returns: a new path, not yet created, in this test's temporary directory."""
        if not hasattr(self, "_temp_root"):
            self._temp_root = tempfile.mkdtemp(prefix="relaytx-test-")
            self.addCleanup(shutil.rmtree, self._temp_root, True)  # type: ignore[attr-defined]
        self._temp_count = getattr(self, "_temp_count", 0) + 1
        return os.path.join(self._temp_root, f"temp{self._temp_count}")


class Counter(Server):
    """The counter most tests call: C{increment(by=1)} and C{get()}."""

    def __init__(self) -> None:
        self.count = 0

    @exposed
    def increment(self, by: int = 1) -> int:
        self.count += by
        return self.count

    @exposed
    def get(self) -> int:
        return self.count


class Slow(Server):
    """Answers only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[Any]] = []

    @exposed
    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d


@frozen
class Chat(Payload):
    """A custom message type."""

    TYPE = "chat"
    text: str


class ChatSession(PeerSession):
    """A session that adds the C{chat} message type and records what it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chats: list[tuple[str, str]] = []

    @handles(Chat)
    def on_chat(self, envelope: Envelope, chat: Chat) -> None:
        self.chats.append((envelope.sender, chat.text))


day = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A certificate authority made at run time, issuing node certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, name: str, days: float = 1.0, dns: tuple[str, ...] = ("localhost",)
    ) -> tuple[bytes, bytes]:
        """
        :param days: how long it is valid (negative: it expired that long ago).
        :param dns: the DNS names it gives besides its common name.
        :returns: the PEM certificate and key of node C{name}, for 127.0.0.1
            and the C{dns} names.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5) + min(0, days) * 2 * day)
            .not_valid_after(now + days * day)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        *(x509.DNSName(n) for n in dns),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


class OriginalPeer:
    """
    A node of the original design, faked on a L{FakeLinkTransport} linked to
    C{node}: it writes frames as the original does (nanosecond-timestamp
    ids, which collide under load; route C{[self]}; ttl 9; a trailing
    newline), answers pings in the seed's shape, and, as the original,
    takes nothing whose C{from} is not C{node} (its only direct peer here):
    such frames are kept in C{ignored}.
    """

    def __init__(self, node: Any, peer_id: str = "orig", direction: str = "inbound") -> None:
        from relaytx.testing import FakeLinkTransport

        self.node = node
        self.peer_id = peer_id
        self.transport = FakeLinkTransport(f"original:{peer_id}")
        self.session = node.mesh.open_link(
            peer_id, direction, f"original:{peer_id}", self.transport, original=True
        )
        self._read = 0
        self.calls: list[dict[str, Any]] = []
        self.ignored: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.serve()

    def frame(
        self,
        kind: str,
        data: dict[str, Any],
        message_id: str = "1796024318380122731",
        to: str | None = None,
    ) -> None:
        """
        Send one frame of type C{kind} to the node, as the original would.

        :param to: its destination, when not the node.
        """
        import json

        self.session.data_received(
            json.dumps(self.envelope(kind, data, message_id, to), separators=(",", ":")).encode()
            + b"\n"
        )

    def envelope(
        self, kind: str, data: dict[str, Any], message_id: str, to: str | None = None
    ) -> dict[str, Any]:
        """:returns: an envelope as the original writes it (for the node, by default)."""
        return {
            "type": kind,
            "id": message_id,
            "from": self.peer_id,
            "to": self.node.node_id if to is None else to,
            "data": dict(sorted(data.items())),
            "timestamp": "2026-11-30T07:38:38.380123102Z",
            "route": [self.peer_id],
            "ttl": 9,
        }

    def serve(self) -> None:
        """Read what the node sent since last time: answer its pings, keep the rest."""
        import json

        frames = self.transport.frames
        while self._read < len(frames):
            envelope = json.loads(frames[self._read])
            self._read += 1
            if envelope["from"] != self.node.node_id:
                self.ignored.append(envelope)
            elif envelope["type"] == "ping":
                stamp = envelope["data"].get("timestamp")
                self.frame(
                    "pong", {"pong_time": 1796024335, "timestamp": stamp}, "1796024335540121004"
                )
            elif envelope["type"] == "server_call":
                self.calls.append(envelope)
            elif envelope["type"] == "server_response":
                self.answers.append(envelope)
            else:
                self.other.append(envelope)

    def answer(self, call: dict[str, Any], result: Any = None, error: str | None = None) -> None:
        """Answer C{call} in the seed's shapes (its error form has no node_id)."""
        response_id = call["data"].get("response_id")
        if error is None:
            data = {
                "node_id": self.peer_id,
                "response_id": response_id,
                "result": result,
                "success": True,
            }
        else:
            data = {"error": error, "response_id": response_id, "success": False}
        self.frame("server_response", data, "1796024318380757040")
