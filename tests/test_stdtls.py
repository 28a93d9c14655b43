"""
The node's TLS layer (L{relaytx._stdtls}) between two memory transports: no
socket, a L{Clock} for the handshake's deadline.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from relaytx._stdtls import HANDSHAKE_TIMEOUT, TLSFactory, TLSProtocol, is_tls, peer_certificate
from relaytx._tls import TlsConfig, certificate_names
from tests.support import Authority


class Recorder(Protocol):
    """Keeps what reached it, and how it was connected and lost."""

    made = 0
    lost: Failure | None = None
    answer = False

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.answer:
            self.transport.write(b"re:" + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class Files:
    """A CA's certificates for named holders, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = Authority("test CA")
        (directory / "ca.pem").write_bytes(self.ca.pem)

    def config(self, name: str, ca: Authority | None = None, **kwargs: Any) -> TlsConfig:
        cert, key = (ca or self.ca).issue(name)
        (self.directory / f"{name}.pem").write_bytes(cert)
        (self.directory / f"{name}.key").write_bytes(key)
        return TlsConfig(
            cert=str(self.directory / f"{name}.pem"),
            key=str(self.directory / f"{name}.key"),
            ca=str(self.directory / "ca.pem"),
            **kwargs,
        )


def record_writes(layer: TLSProtocol) -> list[bytes]:
    """:returns: what C{layer} writes to its TCP transport from now on, each write as made."""
    sent: list[bytes] = []
    write = layer.transport.write

    def recorded(data: bytes) -> None:
        sent.append(data)
        write(data)

    layer.transport.write = recorded
    return sent


class TLSLayerTests(SynchronousTestCase):
    """A server and a client layer over one memory connection."""

    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.files = Files(Path(directory.name))
        self.clock = Clock()

    def link(
        self, server: TlsConfig, client: TlsConfig, hostname: str = "localhost"
    ) -> tuple[TLSProtocol, TLSProtocol, Recorder, Recorder, IOPump]:
        carried = {"server": Recorder(), "client": Recorder()}
        server_factory = TLSFactory(
            Factory.forProtocol(lambda: carried["server"]),
            server.server_context(),
            True,
            self.clock,
        )
        client_factory = TLSFactory(
            Factory.forProtocol(lambda: carried["client"]),
            client.client_context(),
            False,
            self.clock,
            hostname,
        )
        server_tls = server_factory.buildProtocol(None)
        client_tls = client_factory.buildProtocol(None)
        assert isinstance(server_tls, TLSProtocol) and isinstance(client_tls, TLSProtocol)
        pump = connect(
            server_tls,
            FakeTransport(server_tls, isServer=True),
            client_tls,
            FakeTransport(client_tls, isServer=False),
            greet=False,
            clock=self.clock,
        )
        return server_tls, client_tls, carried["server"], carried["client"], pump

    def test_quiet_factory(self) -> None:
        """A factory starting and stopping (a dialler's, each attempt) logs nothing."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = self.files.config("client")
        wrapped = Factory.forProtocol(Recorder)
        wrapped.noisy = False  # (as a node's own factories are)
        factory = TLSFactory(wrapped, config.client_context(), False, self.clock, "localhost")
        for _ in range(3):
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_handshakeThenData(self) -> None:
        """
        The carried protocols are connected once the handshake is done, not
        before, and bytes cross in both directions.
        """
        _server_tls, client_tls, server, client, pump = self.link(
            self.files.config("n1", require_client_cert=True), self.files.config("n0")
        )
        self.assertEqual((server.made, client.made), (0, 0))
        pump.flush()
        self.assertEqual((server.made, client.made), (1, 1))
        server.answer = True
        client_tls.write(b"hello")
        pump.flush()
        self.assertEqual(b"".join(server.received), b"hello")
        self.assertEqual(b"".join(client.received), b"re:hello")

    def test_peerCertificate(self) -> None:
        """Each end sees the certificate the other presented, through wrappers too."""
        _server_tls, _client_tls, server, client, pump = self.link(
            self.files.config("n1", require_client_cert=True), self.files.config("n0")
        )
        pump.flush()
        names = certificate_names
        server_peer = peer_certificate(server.transport)
        client_peer = peer_certificate(client.transport)
        assert server_peer is not None and client_peer is not None
        self.assertIn("n0", names(server_peer))
        self.assertIn("n1", names(client_peer))
        self.assertTrue(is_tls(server.transport))

    def test_untrustedClientRefused(self) -> None:
        """
        With client certificates required, one another CA signed ends the
        connection in the handshake: the carried protocol never hears of it.
        """
        stranger = self.files.config("n0", ca=Authority("other CA"))
        server_tls, _client_tls, server, _client, pump = self.link(
            self.files.config("n1", require_client_cert=True), stranger
        )
        pump.flush()
        self.assertEqual(server.made, 0)
        self.assertTrue(server_tls.transport.disconnecting)
        self.assertEqual(server.received, [])

    def test_wrongServerNameRefused(self) -> None:
        """
        A server certificate that does not name the host dialled is refused
        by the client, and the dial fails with the reason: the carried
        protocol is never connected.
        """
        _server_tls, client_tls, _server, client, pump = self.link(
            self.files.config("n1"), self.files.config("n0"), hostname="elsewhere.example"
        )
        secured = client_tls.secured()
        pump.flush()
        self.assertEqual(client.made, 0)
        self.assertTrue(client_tls.transport.disconnecting)
        self.failureResultOf(secured, ssl.SSLCertVerificationError)
        self.assertIsNone(client.lost)

    def test_securedAfterHandshake(self) -> None:
        """A dial succeeds with the carried protocol once the handshake is done."""
        _server_tls, client_tls, _server, client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        secured = client_tls.secured()
        self.assertNoResult(secured)
        pump.flush()
        self.assertIs(self.successResultOf(secured), client)
        self.assertIs(self.successResultOf(client_tls.secured()), client)

    def test_handshakeDeadline(self) -> None:
        """A peer that never finishes its handshake is cut off after the deadline."""
        server_tls, _client_tls, _server, _client, _pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        # Nothing is pumped: the client's hello never arrives.
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(server_tls.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(server_tls.transport.disconnecting)

    def test_deadlineCancelled(self) -> None:
        """A finished handshake leaves no deadline behind."""
        _server_tls, _client_tls, _server, _client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writesDuringReadSentTogether(self) -> None:
        """
        What the carried protocol writes while handling a read goes out when
        the read returns, as one TLS record: no reactor turn is waited for.
        """
        server_tls, client_tls, server, client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        sent = record_writes(server_tls)

        def answer_twice(data: bytes) -> None:
            server.transport.write(b"one:" + data)  # type: ignore[union-attr]
            server.transport.write(b"two:" + data)  # type: ignore[union-attr]

        server.dataReceived = answer_twice  # type: ignore[method-assign]
        client_tls.write(b"x")
        self.clock.advance(0)  # the client's write, made outside a read
        scheduled: list[object] = []
        call_later = self.clock.callLater

        def counted(*args: Any, **kwargs: Any) -> Any:
            scheduled.append(args)
            return call_later(*args, **kwargs)

        self.clock.callLater = counted  # type: ignore[method-assign]
        pump.flush(advanceClock=False)
        self.assertEqual(len(sent), 1)
        self.assertEqual(scheduled, [])
        self.assertEqual(b"".join(client.received), b"one:xtwo:x")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writesToAnotherDuringReadSentWithIt(self) -> None:
        """
        What the handling of a read on one connection writes to another (a
        node passing calls on) goes out when that read returns, as one TLS
        record, with no reactor turn waited for.
        """
        _, first_client_tls, first, _, first_pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        second_tls, _, second, second_client, second_pump = self.link(
            self.files.config("n1"), self.files.config("n2")
        )
        first_pump.flush()
        second_pump.flush()
        sent = record_writes(second_tls)

        def pass_on(data: bytes) -> None:
            second.transport.write(b"one:" + data)  # type: ignore[union-attr]
            self.assertEqual(sent, [])  # not before the read returns
            second.transport.write(b"two:" + data)  # type: ignore[union-attr]

        first.dataReceived = pass_on  # type: ignore[method-assign]
        first_client_tls.write(b"x")
        self.clock.advance(0)  # the client's write, made outside a read
        first_pump.flush(advanceClock=False)
        self.assertEqual(len(sent), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        second_pump.flush(advanceClock=False)
        self.assertEqual(b"".join(second_client.received), b"one:xtwo:x")

    def test_writesOutsideReadSentNextTurn(self) -> None:
        """Writes made outside a read are sent together in the next reactor turn."""
        _server_tls, client_tls, server, _client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        client_tls.write(b"a")
        client_tls.write(b"b")
        pump.flush(advanceClock=False)
        self.assertEqual(server.received, [])
        self.clock.advance(0)
        pump.flush(advanceClock=False)
        self.assertEqual(server.received, [b"ab"])

    def test_closeNotify(self) -> None:
        """
        Closing one end sends what was written, then C{close_notify}; the
        other end closes its side in turn.
        """
        server_tls, client_tls, server, _client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        client_tls.write(b"last words")
        client_tls.loseConnection()
        pump.flush(advanceClock=False)
        self.assertEqual(b"".join(server.received), b"last words")
        self.assertTrue(server_tls.transport.disconnecting)

    def test_garbageAfterHandshake(self) -> None:
        """Bytes that are not TLS records abort the connection."""
        server_tls, _client_tls, server, _client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        server_tls.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        self.assertTrue(server_tls.transport.disconnecting)
        self.assertEqual(server.received, [])
        server_tls.connectionLost(Failure(Exception("gone")))
        self.assertIsNotNone(server.lost)

    def test_largeWritesSentAtOnce(self) -> None:
        """
        Once 4 kB wait, they are sent without waiting for the next turn: the
        other end, reading 4 KiB at a time, can decrypt them as they come.
        """
        _server_tls, client_tls, server, _client, pump = self.link(
            self.files.config("n1"), self.files.config("n0")
        )
        pump.flush()
        client_tls.write(b"a" * 3000)
        pump.flush(advanceClock=False)
        self.assertEqual(server.received, [])
        client_tls.write(b"b" * 1000)
        pump.flush(advanceClock=False)
        self.assertEqual(b"".join(server.received), b"a" * 3000 + b"b" * 1000)
