# -*- test-case-name: tests.test_stdtls -*-
"""
TLS for the node's own listener and links, on the standard library's
C{ssl.SSLObject} over memory BIOs.

Twisted's L{twisted.protocols.tls.TLSMemoryBIOProtocol} does the same job on
pyOpenSSL. Both end in the same OpenSSL; the difference is the way there:
pyOpenSSL reaches it through cffi and signals "nothing more to read" with a
Python exception built from OpenSSL's error queue, two or three of them for
each message received (4-6 us each), and Twisted puts every write off to
the next reactor iteration to batch small ones. Here a 300-byte message
sent alone costs 12.3 us through both ends against 22.9 us
(C{benchmarks/tls_layer.py}), and with 4 kB records (C{_BATCH}) PKI-mode
direct calls at 64 in flight run at 0.95 of an open mesh's calls/s,
against 0.46-0.58 on Twisted's layer (C{benchmarks/trust.py}).

What this layer does, and no more:
  - The handshake runs before the protocol it carries is connected: that
    protocol's C{connectionMade} means a verified peer, and it never has
    to buffer writes. A handshake that does not finish within
    C{HANDSHAKE_TIMEOUT} seconds, or fails verification, closes the
    connection (logged, with OpenSSL's reason).
  - Writes made while a read is handed up are encrypted together when it
    returns (a node answering calls, a caller sending its next one, a node
    passing calls on to another connection); others at the next reactor
    turn, or at once past 4 kB (C{_BATCH}).
    Encrypting each message alone costs more at many in flight than it
    saves at one.
  - Reading stops when both buffers are empty instead of by catching
    C{SSLWantReadError} (a record cut in two still raises it, and waits).
  - C{loseConnection} sends C{close_notify}; a peer's C{close_notify} ends
    the connection cleanly. No renegotiation (TLS 1.2 and later only).
  - The peer's certificate is offered as a C{cryptography} certificate by
    L{peer_certificate}. The layer does not claim C{ISSLTransport}: Autobahn
    takes any transport that does for Twisted's own TLS and reaches into it.
    HTTP requests that came over it say so in C{isSecure} (L{is_tls}).

Certificates and trust come from L{relaytx._tls.TlsConfig}, which builds the
C{ssl.SSLContext}s.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from relaytx._guards import FailureTally

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TLSClientEndpoint",
    "TLSServerEndpoint",
    "is_tls",
    "peer_certificate",
]

#: Seconds a connection may take to finish its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0

#: Failed handshakes of every TLS layer in the process, by kind (each dial
#: makes a factory of its own).
_FAILURES = FailureTally()

#: The most plaintext one C{SSLObject.read} returns: a whole TLS record.
_RECORD = 16384

#: Plaintext held for sending together before it is sent at once. A
#: receiver can decrypt only whole records, and relaytx reads 4 KiB at a time
#: (C{relaytx._frames.READ_CHUNK}): a record spread over several reads holds
#: back every message in it, and two nodes with many calls in flight then
#: take turns instead of working at once (at 64 in flight, half the calls/s
#: of 4 kB records with 64 kB ones).
_BATCH = 4000


class _Reads:
    """
    How deep in handing up decrypted reads this process is, and the
    connections written to meanwhile by the handling of another's read (a
    node relaying calls from one link to the next): they are sent when
    that read returns, rather than at the next reactor turn (a timer per
    read, and the forwarded frames a turn late).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[TLSProtocol] = []

    def send_waiting(self) -> None:
        waiting = self.waiting
        while waiting:
            connection = waiting.pop()
            connection._scheduled = None
            if not connection._closed:
                connection._send()


_READS = _Reads()


class TLSProtocol(ProtocolWrapper):
    """
    TLS between the TCP connection below and the protocol it carries; to
    that protocol it is the transport.
    """

    _log = Logger()

    factory: TLSFactory
    transport: Any  # the TCP connection's: ITCPTransport, with abortConnection
    _tls: ssl.SSLObject | None = None
    _handshake_done = False
    _closed = False
    _timer: Any = None
    #: plaintext written and not yet sent, and its size
    _unsent: list[bytes]
    _unsent_size = 0
    #: the reactor turn that sends it, when it is not sent after a read
    _scheduled: Any = None
    _reading = False
    #: why the handshake failed, once it has
    _refusal: Exception | None = None
    #: who waits for the handshake (L{secured})
    _waiting: list[Deferred[Any]]

    def makeConnection(self, transport: Any) -> None:
        """Start the handshake on the new TCP connection."""
        # ProtocolWrapper.makeConnection would connect the carried protocol
        # at once; it is connected only once the handshake is done.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self._unsent = []
        self._waiting = []
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = self.factory.context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=self.factory.server_side,
            server_hostname=self.factory.hostname,
        )
        self._timer = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_late
        )
        self._handshake()

    def _handshake_late(self) -> None:
        self._timer = None
        self.factory.failed(
            "TLS handshake with {peer} not done after {seconds}s; closing",
            peer=self.transport.getPeer(),
            seconds=self.factory.handshake_timeout,
        )
        self.transport.abortConnection()

    def _handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as e:
            self._flush()  # the alert that says why, if OpenSSL made one
            self._refuse(e)
            return
        self._flush()
        self._handshake_done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The TCP transport's interfaces were copied onto this layer above.
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.wrappedProtocol)
        if self._incoming.pending and not self._closed:
            self._read()

    def secured(self) -> Deferred[Any]:
        """
        :returns: a Deferred that fires with the carried protocol once the
            handshake is done, or fails with why it was not (the TLS error,
            or the connection's loss).
        """
        if self._handshake_done:
            return succeed(self.wrappedProtocol)
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    def _refuse(self, error: Exception) -> None:
        self._refusal = error
        self.factory.failed(
            "TLS handshake with {peer} failed: {reason}",
            peer=self.transport.getPeer(),
            reason=getattr(error, "verify_message", None) or error,
        )
        self._closed = True
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        """Decrypt what arrived and hand the plaintext up."""
        if self._closed:
            return
        self._incoming.write(data)
        if self._handshake_done:
            self._read()
        else:
            self._handshake()

    def _read(self) -> None:
        tls, incoming = self._tls, self._incoming
        assert tls is not None
        self._reading = True
        reads = _READS
        reads.depth += 1
        try:
            self._read_records(tls, incoming)
        finally:
            self._reading = False
            reads.depth -= 1
        if self._unsent:
            self._send()
        elif self._outgoing.pending:  # post-handshake messages, key updates
            self._flush()
        if not reads.depth and reads.waiting:
            reads.send_waiting()

    def _read_records(self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO) -> None:
        while True:
            try:
                data = tls.read(_RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self.loseConnection()
                return
            except ssl.SSLError as e:
                self._log.info(
                    "TLS from {peer} failed: {reason}", peer=self.transport.getPeer(), reason=e
                )
                self._closed = True
                self.transport.abortConnection()
                return
            if not data:
                # The peer's close_notify (the standard library's SSLObject
                # reads it as no data, not SSLZeroReturnError): answered
                # with ours, or a peer that waits for it (Twisted's own TLS)
                # holds the connection open until our side gives up.
                self.loseConnection()
                return
            self.wrappedProtocol.dataReceived(data)
            if self._closed or not (incoming.pending or tls.pending()):
                break

    def write(self, data: bytes) -> None:
        """
        Send C{data}: at the end of the data being read now, or in the
        next reactor turn, together with what else was written by then.
        """
        if self._closed or not self._handshake_done:
            return
        self._unsent.append(data)
        self._unsent_size += len(data)
        if self._unsent_size >= _BATCH:
            self._send()
        elif not self._reading and self._scheduled is None:
            if _READS.depth:  # in another connection's read: sent when it returns
                self._scheduled = _READS
                _READS.waiting.append(self)
            else:
                self._scheduled = self.factory.clock.callLater(0, self._send)

    def _send(self) -> None:
        scheduled = self._scheduled
        if scheduled is not None:
            self._scheduled = None
            if scheduled is _READS:
                if self in _READS.waiting:  # sent before that read returned
                    _READS.waiting.remove(self)
            elif scheduled.active():
                scheduled.cancel()
        if not self._unsent:
            return
        data = b"".join(self._unsent)
        self._unsent.clear()
        self._unsent_size = 0
        assert self._tls is not None
        self._tls.write(data)
        self.transport.write(self._outgoing.read())

    def writeSequence(self, data: Any) -> None:
        """Send the pieces of C{data} together."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Say C{close_notify}, then close once what was written is sent."""
        if self._closed:
            return
        if self._handshake_done:
            self._send()
        # (A protocol parsing a read looks at this to stop at once: HTTP
        # after a bad request line, with requests behind it in the read.)
        self.disconnecting = True
        self._closed = True
        if self._handshake_done:
            assert self._tls is not None
            try:
                self._tls.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # not waiting for the peer's close_notify
            self._flush()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        """Close at once, sending nothing more."""
        self.disconnecting = True
        self._closed = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the carried protocol, if it was ever connected."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is _READS:
            if self in _READS.waiting:
                _READS.waiting.remove(self)
        elif scheduled is not None:
            scheduled.cancel()
        self._unsent.clear()
        self._closed = True
        self.factory.unregisterProtocol(self)
        if self._handshake_done:
            self.wrappedProtocol.connectionLost(reason)
            return
        # The carried protocol was never connected: what its factory gave it
        # (a place among the node's connections) goes back all the same.
        never = getattr(self.factory.wrappedFactory, "never_connected", None)
        if never is not None:
            never(self.wrappedProtocol)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(Failure(self._refusal) if self._refusal is not None else reason)

    def peer_certificate(self) -> x509.Certificate | None:
        """:returns: the certificate the peer presented, if it presented one."""
        if self._tls is None or not self._handshake_done:
            return None
        der = self._tls.getpeercert(binary_form=True)
        return None if der is None else x509.load_der_x509_certificate(der)


class TLSFactory(WrappingFactory):
    """Builds the TLS layer of each connection, around C{wrappedFactory}'s protocol."""

    protocol = TLSProtocol
    #: A dialler's factory starts and stops with each attempt: a peer that
    #: stays down would otherwise log two lines an attempt, past the
    #: dialler's own count of its failures (SPEC section 10).
    noisy = False
    _log = Logger()

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        context: ssl.SSLContext,
        server_side: bool,
        clock: Any,
        hostname: str | None = None,
    ) -> None:
        """
        :param context: the standard library's TLS context to use.
        :param server_side: whether this end accepted the connection.
        :param clock: the reactor, for the handshake's deadline.
        :param hostname: the name the server's certificate must give (dialling only).
        """
        super().__init__(wrappedFactory)
        self.context = context
        self.server_side = server_side
        self.clock = clock
        self.hostname = hostname
        #: a connection's handshake is due within this: the site's
        #: C{header_timeout}, when it is shorter (the head cannot come before)
        self.handshake_timeout = min(
            HANDSHAKE_TIMEOUT, getattr(wrappedFactory, "header_timeout", HANDSHAKE_TIMEOUT)
        )
        self._failures = _FAILURES

    def buildProtocol(self, addr: Any) -> Any:
        """
        A connection the carried factory turns away (its connection limits)
        is closed at once, before any handshake; others get their TLS layer.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(cast(Any, self), wrapped)

    def failed(self, text: str, peer: Any, **fields: Any) -> None:
        """
        Log a failed handshake: each kind (the same words, whoever's) the
        first time, then as its count doubles, with the count; a stranger
        failing 300 handshakes makes a few lines, not 300.
        """
        kind = text.format(peer="", **fields)
        count = self._failures.failed(kind)
        if count is not None:
            self._log.info(text + " ({count} time(s))", peer=peer, count=count, **fields)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """A TCP listener whose connections speak TLS."""

    def __init__(self, tcp: IStreamServerEndpoint, context: ssl.SSLContext, clock: Any) -> None:
        """
        :param tcp: where to listen.
        :param context: a server-side context (L{relaytx._tls.TlsConfig.server_context}).
        :param clock: the reactor.
        """
        self._tcp = tcp
        self._context = context
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """:returns: the listening port, as the TCP endpoint gives it."""
        return self._tcp.listen(TLSFactory(protocolFactory, self._context, True, self._clock))


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """A TCP dial that speaks TLS, checking the server's name."""

    def __init__(
        self, tcp: IStreamClientEndpoint, context: ssl.SSLContext, hostname: str, clock: Any
    ) -> None:
        """
        :param tcp: where to dial.
        :param context: a client context (L{relaytx._tls.TlsConfig.client_context}).
        :param hostname: the name or address the server's certificate must give.
        :param clock: the reactor.
        """
        self._tcp = tcp
        self._context = context
        self._hostname = hostname
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        :returns: the carried protocol, once the handshake is done; a
            failed handshake fails the connection attempt, as a refused
            TCP connection does.
        """
        factory = TLSFactory(protocolFactory, self._context, False, self._clock, self._hostname)
        connecting: Deferred[Any] = self._tcp.connect(factory)
        return connecting.addCallback(lambda tls: tls.secured())


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """
    :param transport: a connection's transport, or a wrapper whose
        C{transport} leads to one.
    :returns: the certificate the other end presented over TLS, or none.
    """
    while transport is not None:
        own = getattr(type(transport), "peer_certificate", None)
        if own is not None:
            return own(transport)  # type: ignore[no-any-return]
        get = getattr(transport, "getPeerCertificate", None)
        if get is not None:
            peer = get()
            return None if peer is None else peer.to_cryptography()
        transport = getattr(transport, "transport", None)
    return None


def is_tls(transport: Any) -> bool:
    """:returns: whether C{transport} is this module's TLS layer."""
    return isinstance(transport, TLSProtocol)
