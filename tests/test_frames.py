"""
Tests for L{relaytx._frames}: socket tuning, and the short path for whole
messages in single frames, held to what Autobahn alone does with the same
bytes.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import struct
from types import SimpleNamespace
from typing import Any

from autobahn.exception import Disconnected, PayloadExceededError
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaytx._frames import (
    MAX_HELD_BYTES,
    READ_CHUNK,
    SHORT_FRAME,
    LeanMessages,
    frame_header,
    tune_socket,
    unmask,
)
from tests.support import fuzz_settings

FUZZ = fuzz_settings(max_examples=150)

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
LIMIT = 100_000  # the test servers' message and frame size limit


class Wire(StringTransport):
    """A string transport that, as a TCP one, lets a protocol unregister no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None


class _Recording:
    """Keeps every message it is handed."""

    messages: list[tuple[bytes, bool]]

    def onOpen(self) -> None:
        self.messages = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))


class LeanServer(LeanMessages, _Recording, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class PlainServer(_Recording, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class LeanClient(LeanMessages, _Recording, WebSocketClientProtocol):  # type: ignore[misc]
    pass


def open_server(protocol: type, require_masks: bool = True, limit: int = LIMIT) -> Any:
    """A server protocol of class C{protocol}, its handshake done, on a string transport."""
    factory = WebSocketServerFactory(reactor=MemoryReactorClock())
    factory.protocol = protocol
    factory.setProtocolOptions(
        autoPingInterval=0,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        utf8validateIncoming=False,
        requireMaskedClientFrames=require_masks,
        maxMessagePayloadSize=limit,
        maxFramePayloadSize=limit,
    )
    factory.serverConnectionDropTimeout = 0  # no timer after a close
    server = factory.buildProtocol(None)
    transport = Wire()
    server.makeConnection(transport)
    server.dataReceived(HANDSHAKE)
    assert server.state == WebSocketProtocol.STATE_OPEN, transport.value()
    transport.clear()
    return server


def frame(
    payload: bytes,
    opcode: int = 1,
    fin: bool = True,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame as a client (C{mask}) or a server sends it; C{length} forces the length field."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask is not None else 0
    if size <= 125 and length is None:
        head = bytes((first, bit | size))
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", first, bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def feed(protocol: Any, stream: bytes, cuts: list[int]) -> None:
    """Hand C{stream} to C{protocol} in pieces, cut at C{cuts}."""
    at = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut > at:
            protocol.dataReceived(stream[at:cut])
            at = cut


def same_as_autobahn(
    test: SynchronousTestCase, stream: bytes, cuts: list[int], limit: int = LIMIT
) -> Any:
    """
    Feed C{stream} to a L{LeanMessages} server in pieces and to a plain
    Autobahn server whole; both hear the same messages, write the same
    bytes and end in the same state. :returns: the lean server.
    """
    lean = open_server(LeanServer, limit=limit)
    plain = open_server(PlainServer, limit=limit)
    feed(lean, stream, cuts)
    plain.dataReceived(stream)
    test.assertEqual(lean.messages, plain.messages)
    test.assertEqual(lean.transport.value(), plain.transport.value())
    test.assertEqual(lean.state, plain.state)
    return lean


MASK = b"\x11\x22\x33\x44"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class UnmaskTests(SynchronousTestCase):
    """L{unmask} is RFC 6455's XOR with the repeated mask."""

    @FUZZ
    @given(payload=st.binary(max_size=600), mask=st.binary(min_size=4, max_size=4))
    def test_xor(self, payload: bytes, mask: bytes) -> None:
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.assertEqual(unmask(payload, mask), expected)

    def test_header(self) -> None:
        """Headers use the shortest length field; binary is opcode 2."""
        self.assertEqual(frame_header(0), b"\x81\x00")
        self.assertEqual(frame_header(125, 2), b"\x82\x7d")
        self.assertEqual(frame_header(126), b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_header(0x10000), b"\x81\x7f" + (0x10000).to_bytes(8, "big"))


class ShortPathInTests(SynchronousTestCase):
    """Incoming frames: the short path hears what Autobahn would, in the same order."""

    def test_many_in_one_read(self) -> None:
        """Several whole messages in one read each reach onMessage, unmasked."""
        payloads = [b"", b"a", b"x" * 125, b"y" * 126, b"z" * 3000]
        stream = b"".join(frame(p, mask=MASK) for p in payloads)
        server = same_as_autobahn(self, stream, [])
        self.assertEqual(server.messages, [(p, False) for p in payloads])

    def test_every_cut(self) -> None:
        """A stream cut at any byte gives the same messages."""
        stream = (
            frame(b"hello", mask=MASK) + frame(b"b" * 300, 2, mask=MASK) + frame(b"!", mask=MASK)
        )
        for cut in range(len(stream)):
            same_as_autobahn(self, stream, [cut])
        for cut in range(0, len(stream), 7):
            same_as_autobahn(self, stream, list(range(cut, len(stream), 5)))

    def test_autobahn_not_needed(self) -> None:
        """Short whole messages, cut anywhere, never reach Autobahn's frame parser."""
        server = open_server(LeanServer)
        server.processData = lambda: self.fail("Autobahn parsed a short frame")
        stream = b"".join(frame(b"m%d" % i * 40, mask=MASK) for i in range(30))
        feed(server, stream, list(range(1, len(stream), 97)))
        self.assertEqual([m for m, _ in server.messages], [b"m%d" % i * 40 for i in range(30)])

    def test_trickled(self) -> None:
        """A long short frame sent a byte at a time is held in a few pieces, then delivered."""
        server = open_server(LeanServer)
        payload = os.urandom(8000)
        stream = frame(payload, mask=MASK)
        pieces = []
        for at in range(len(stream) - 1):
            server.dataReceived(stream[at : at + 1])
            pieces.append(len(server._partial or ()))
        self.assertLessEqual(max(pieces), 32)
        self.assertEqual(server.messages, [])
        server.dataReceived(stream[-1:])
        self.assertEqual(server.messages, [(payload, False)])

    def test_control_frames_between(self) -> None:
        """A ping among the messages is answered by Autobahn, and order is kept."""
        stream = (
            frame(b"one", mask=MASK)
            + frame(b"are you there", 9, mask=MASK)
            + frame(b"two", mask=MASK)
        )
        server = same_as_autobahn(self, stream, [])
        self.assertEqual(server.messages, [(b"one", False), (b"two", False)])
        self.assertEqual(server.transport.value(), b"\x8a\x0dare you there")

    def test_fragmented(self) -> None:
        """A message in fragments is put together by Autobahn; the next one is short again."""
        stream = (
            frame(b"frag", fin=False, mask=MASK)
            + frame(b"ment", 0, fin=False, mask=MASK)
            + frame(b"ed", 0, mask=MASK)
            + frame(b"next", mask=MASK)
        )
        server = same_as_autobahn(self, stream, [3, 11])
        self.assertEqual(server.messages, [(b"fragmented", False), (b"next", False)])

    def test_long_message(self) -> None:
        """A message longer than a short frame goes through Autobahn, whole."""
        payload = os.urandom(SHORT_FRAME + 10)
        stream = (
            frame(b"before", mask=MASK) + frame(payload, mask=MASK) + frame(b"after", mask=MASK)
        )
        server = same_as_autobahn(self, stream, list(range(0, len(stream), READ_CHUNK)))
        self.assertEqual([m for m, _ in server.messages], [b"before", payload, b"after"])

    def test_unmasked_refused(self) -> None:
        """A server that requires masks fails an unmasked frame as Autobahn does."""
        server = same_as_autobahn(self, frame(b"ok", mask=MASK) + frame(b"bare"), [])
        self.assertEqual(server.messages, [(b"ok", False)])
        self.assertEqual(server.state, WebSocketProtocol.STATE_CLOSED)
        self.assertTrue(server.transport.disconnecting)

    def test_unmasked_agreed(self) -> None:
        """Where masks are not required, unmasked frames take the short path too."""
        server = open_server(LeanServer, require_masks=False)
        server.dataReceived(frame(b"bare") + frame(b"masked", mask=MASK))
        self.assertEqual(server.messages, [(b"bare", False), (b"masked", False)])

    def test_over_limit(self) -> None:
        """A frame over the size limit is failed by Autobahn, as too big."""
        for limit, size in ((LIMIT, LIMIT + 1), (1000, 1001)):
            payload = b"x" * size
            stream = frame(b"ok", mask=MASK) + frame(payload, mask=MASK)
            server = same_as_autobahn(self, stream, [], limit)
            self.assertEqual(server.messages, [(b"ok", False)])
            self.assertTrue(server.wasMaxMessagePayloadSizeExceeded)
            self.assertEqual(server.state, WebSocketProtocol.STATE_CLOSED)

    def test_not_shortest_length(self) -> None:
        """A 16-bit length field holding a length under 126 is Autobahn's to refuse."""
        server = same_as_autobahn(self, frame(b"tiny", mask=MASK, length=4), [])
        self.assertEqual(server.messages, [])
        self.assertNotEqual(server.state, WebSocketProtocol.STATE_OPEN)

    def test_reserved_bits(self) -> None:
        """A frame with a reserved bit set is failed by Autobahn."""
        stream = frame(b"ok", mask=MASK) + bytes([0xC1]) + frame(b"no", mask=MASK)[1:]
        server = same_as_autobahn(self, stream, [])
        self.assertEqual(server.messages, [(b"ok", False)])

    def test_closed_by_a_message(self) -> None:
        """A message that closes the connection: what follows goes as Autobahn has it."""
        for close, state in (
            (lambda p: p.sendClose(1000), WebSocketProtocol.STATE_CLOSING),
            (lambda p: p.dropConnection(abort=True), WebSocketProtocol.STATE_CLOSED),
        ):
            servers = []
            for base in (LeanServer, PlainServer):

                class Closing(base):  # type: ignore[valid-type, misc]
                    def onMessage(self, payload: bytes, isBinary: bool, close: Any = close) -> None:
                        super().onMessage(payload, isBinary)
                        if payload == b"bye":
                            close(self)

                server = open_server(Closing)
                server.dataReceived(b"".join(frame(p, mask=MASK) for p in (b"a", b"bye", b"late")))
                servers.append(server)
            lean, plain = servers
            self.assertEqual(lean.messages, plain.messages)
            self.assertEqual(lean.transport.value(), plain.transport.value())
            self.assertEqual(lean.state, state)
        self.assertEqual(lean.messages, [(b"a", False), (b"bye", False)])

    @FUZZ
    @given(
        messages=st.lists(
            st.tuples(
                st.sampled_from([1, 2, 9]),  # text, binary, or a ping between
                st.binary(max_size=400) | st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 2000]),
                st.booleans(),  # in fragments
            ),
            max_size=8,
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=12),
    )
    def test_any_stream(self, messages: list[tuple[int, bytes, bool]], cuts: list[int]) -> None:
        """Any mix of messages, pings and fragments, cut anywhere, gives Autobahn's outcome."""
        stream = b""
        for opcode, payload, fragmented in messages:
            if opcode == 9:
                stream += frame(payload[:125], 9, mask=MASK)
            elif fragmented and len(payload) > 1:
                half = len(payload) // 2
                stream += frame(payload[:half], opcode, fin=False, mask=MASK)
                stream += frame(payload[half:], 0, mask=MASK)
            else:
                stream += frame(payload, opcode, mask=MASK)
        same_as_autobahn(self, stream, cuts)


class ShortPathOutTests(SynchronousTestCase):
    """Outgoing messages: one write of header and payload, or Autobahn's way."""

    def test_server_frames(self) -> None:
        """A server's message is one unmasked frame, written at once."""
        server = open_server(LeanServer)
        server.sendMessage(b"hi")
        server.sendMessage(b"\x00\x01", isBinary=True)
        server.sendMessage(b"m" * 300)
        self.assertEqual(
            server.transport.value(),
            frame(b"hi") + frame(b"\x00\x01", 2) + frame(b"m" * 300),
        )

    def test_as_autobahn_sends(self) -> None:
        """The bytes are those Autobahn writes for the same messages."""
        lean, plain = open_server(LeanServer), open_server(PlainServer)
        for payload in (b"", b"a" * 125, b"b" * 126, b"c" * SHORT_FRAME, b"d" * (SHORT_FRAME + 1)):
            lean.sendMessage(payload)
            plain.sendMessage(payload)
        self.assertEqual(lean.transport.value(), plain.transport.value())

    def test_masking_client(self) -> None:
        """A client that must mask leaves its frames to Autobahn, which masks them."""
        factory = WebSocketClientFactory("ws://localhost/", reactor=MemoryReactorClock())
        factory.protocol = LeanClient
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        client = factory.buildProtocol(None)
        client.makeConnection(Wire())
        request = client.transport.value()
        key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        client.transport.clear()
        client.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.assertEqual(client.state, WebSocketProtocol.STATE_OPEN)
        client.sendMessage(b"secret")
        written = client.transport.value()
        self.assertEqual(written[:2], b"\x81\x86")  # masked, 6 bytes
        self.assertEqual(unmask(written[6:], written[2:6]), b"secret")

    def test_over_limit(self) -> None:
        """A message over the size limit is refused by Autobahn, as before."""
        server = open_server(LeanServer)
        self.assertRaises(PayloadExceededError, server.sendMessage, b"x" * (LIMIT + 1))
        self.assertEqual(server.transport.value(), b"")

    def test_closed(self) -> None:
        """A closed connection refuses to send, as Autobahn does."""
        server = open_server(LeanServer)
        server.state = WebSocketProtocol.STATE_CLOSED
        self.assertRaises(Disconnected, server.sendMessage, b"late")


class OptionsTests(SynchronousTestCase):
    """
    A connection takes its factory's options as Autobahn's own would, and
    Autobahn is left none to pretty-print for its debug line.
    """

    def _client(self, protocol: type) -> Any:
        factory = WebSocketClientFactory("ws://localhost/", reactor=MemoryReactorClock())
        factory.protocol = protocol
        factory.setProtocolOptions(openHandshakeTimeout=0, maxMessagePayloadSize=1234)
        client = factory.buildProtocol(None)
        client.makeConnection(Wire())
        return client

    def test_factory_options(self) -> None:
        """Server and client hold each option Autobahn's own would copy: the factory's."""
        server, client = open_server(LeanServer), self._client(LeanClient)
        for connection, names in (
            (server, WebSocketServerProtocol.CONFIG_ATTRS),
            (client, WebSocketClientProtocol.CONFIG_ATTRS),
        ):
            self.assertGreater(len(names), 20)
            for name in names:
                self.assertIs(getattr(connection, name), getattr(connection.factory, name), name)
        self.assertEqual(server.maxMessagePayloadSize, LIMIT)
        self.assertEqual(client.maxMessagePayloadSize, 1234)

    def test_own_option_kept(self) -> None:
        """An option the protocol sets itself is not taken from the factory."""

        class Own(LeanServer):
            maxMessagePayloadSize = 77

        self.assertEqual(open_server(Own).maxMessagePayloadSize, 77)

    def test_nothing_to_print(self) -> None:
        """Autobahn pretty-prints a plain connection's options as it opens, a lean one's never."""
        printed: list[Any] = []
        self.patch(autobahn_protocol, "pformat", lambda value: printed.append(value) or "")
        open_server(PlainServer)
        self.assertTrue(printed[0])  # what is spared below
        del printed[:]
        open_server(LeanServer)
        self.assertEqual(printed, [[]])


class CountingWire(Wire):
    """A string transport that counts its writes."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class Relaying(LeanServer):
    """Answers each message on itself and passes it on to C{onward}, if set."""

    onward: Any = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)
        if payload == b"boom":
            raise RuntimeError(payload)
        self.sendMessage(b"re:" + payload)
        if payload == b"ping them":
            self.sendPing(b"p")
        elif payload == b"long":
            self.sendMessage(b"L" * (SHORT_FRAME + 1))
        elif payload == b"many":
            for i in range(20):
                self.sendMessage(b"%02d" % i * 5000)
        if self.onward is not None:
            self.onward.sendMessage(payload)


class HeldFramesTests(SynchronousTestCase):
    """Frames sent while a read is handled are written once per connection, in order."""

    def relay_pair(self) -> tuple[Any, Any]:
        first, second = open_server(Relaying), open_server(LeanServer)
        for server in (first, second):
            server.transport = CountingWire()
        first.onward = second
        return first, second

    def test_one_write_per_connection(self) -> None:
        """A read of many messages ends in one write on each connection it sent on."""
        first, second = self.relay_pair()
        payloads = [b"m%d" % i for i in range(12)]
        first.dataReceived(b"".join(frame(p, mask=MASK) for p in payloads))
        self.assertEqual(first.transport.value(), b"".join(frame(b"re:" + p) for p in payloads))
        self.assertEqual(second.transport.value(), b"".join(frame(p) for p in payloads))
        self.assertEqual((first.transport.writes, second.transport.writes), (1, 1))

    def test_written_when_the_read_is_handled(self) -> None:
        """Nothing is held once a read is handled: a send after it is written at once."""
        first, second = self.relay_pair()
        first.dataReceived(frame(b"a", mask=MASK))
        second.sendMessage(b"later")
        self.assertEqual(second.transport.value(), frame(b"a") + frame(b"later"))
        self.assertEqual(second.transport.writes, 2)

    def test_held_bytes_bounded(self) -> None:
        """
        A read that sends without end (a stream whose generator never
        waits) holds at most MAX_HELD_BYTES: past them, what is held is
        written at once, where flow control sees it; the order stays.
        """
        first, _ = self.relay_pair()
        first.dataReceived(frame(b"many", mask=MASK))
        sent = [b"re:many"] + [b"%02d" % i * 5000 for i in range(20)]
        self.assertEqual(first.transport.value(), b"".join(frame(p) for p in sent))
        # 200 KB of payloads: written as the 7th and 14th 10 KB frame pass
        # MAX_HELD_BYTES, and the rest when the read is handled.
        self.assertEqual(MAX_HELD_BYTES // 10_000, 6)
        self.assertEqual(first.transport.writes, 3)
        self.assertIsNone(first._held)

    def test_order_with_autobahn_frames(self) -> None:
        """Frames Autobahn writes itself (a ping, a long message) keep their place."""
        first, _ = self.relay_pair()
        first.dataReceived(
            b"".join(frame(p, mask=MASK) for p in (b"x", b"ping them", b"long", b"y"))
        )
        self.assertEqual(
            first.transport.value(),
            frame(b"re:x")
            + frame(b"re:ping them")
            + frame(b"p", 9)
            + frame(b"re:long")
            + frame(b"L" * (SHORT_FRAME + 1))
            + frame(b"re:y"),
        )

    def test_a_failing_handler(self) -> None:
        """A handler that raises: what was sent before is written, and nothing stays held."""
        first, second = self.relay_pair()
        self.assertRaises(
            RuntimeError, first.dataReceived, frame(b"a", mask=MASK) + frame(b"boom", mask=MASK)
        )
        self.assertEqual(first.transport.value(), frame(b"re:a"))
        self.assertEqual(second.transport.value(), frame(b"a"))
        second.sendMessage(b"next")
        self.assertEqual(second.transport.value(), frame(b"a") + frame(b"next"))

    def test_a_failing_transport(self) -> None:
        """A connection whose transport fails costs the connection being read nothing."""
        first, second = self.relay_pair()

        def broken(data: bytes) -> None:
            raise OSError("gone")

        second.transport.write = broken
        first.dataReceived(frame(b"a", mask=MASK) + frame(b"b", mask=MASK))
        self.assertEqual(first.transport.value(), frame(b"re:a") + frame(b"re:b"))
        [logged] = self.flushLoggedErrors(OSError)
        self.assertEqual(str(logged.value), "gone")


class PaceReadsTests(SynchronousTestCase):
    """L{tune_socket} finds the socket's transport, under TLS too."""

    def test_under_tls(self) -> None:
        """Through a wrapping transport, the socket's read size is set."""
        tcp = FileDescriptor(reactor=MemoryReactorClock())
        self.assertGreater(tcp.bufferSize, READ_CHUNK)
        tune_socket(SimpleNamespace(transport=tcp))
        self.assertEqual(tcp.bufferSize, READ_CHUNK)

    def test_no_socket(self) -> None:
        """A transport with no socket under it (a test's) is left alone."""
        transport = StringTransport()
        tune_socket(transport)
        self.assertFalse(hasattr(transport, "bufferSize"))


class AnyBytesTests(SynchronousTestCase):
    """Whatever bytes arrive, the short path ends where Autobahn alone would."""

    @FUZZ
    @given(
        chunks=st.lists(
            st.one_of(
                # Frames with any first byte (opcode, reserved bits, fin), masked or not,
                # of any declared length: the headers the short path reads.
                st.tuples(
                    st.integers(min_value=0, max_value=255),
                    st.booleans(),
                    st.binary(max_size=300),
                    st.sampled_from([None, 0, 125, 126, 127, 0xFFFF, 0x10000]),
                ).map(
                    lambda t: (
                        bytes((t[0],)) + frame(t[2], mask=MASK if t[1] else None, length=t[3])[1:]
                    )
                ),
                st.binary(max_size=40),  # and plain garbage
            ),
            max_size=6,
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
        require_masks=st.booleans(),
    )
    def test_any_bytes(self, chunks: list[bytes], cuts: list[int], require_masks: bool) -> None:
        """Any byte stream, cut anywhere: same messages, same bytes written, same state."""
        stream = b"".join(chunks)
        lean = open_server(LeanServer, require_masks=require_masks)
        plain = open_server(PlainServer, require_masks=require_masks)
        feed(lean, stream, cuts)
        plain.dataReceived(stream)
        self.assertEqual(lean.messages, plain.messages)
        self.assertEqual(lean.transport.value(), plain.transport.value())
        self.assertEqual(lean.state, plain.state)


class AutobahnInternalsTests(SynchronousTestCase):
    """
    L{LeanMessages} reads Autobahn's own attributes and calls its private
    methods; pyproject.toml bounds Autobahn's version to the ones tested.
    If a release renames or drops any of them, this says which, loudly.
    """

    #: state read on every frame, and settings, on an open server connection
    STATE = (
        "state", "data", "current_frame", "inside_message", "failedByMe",
        "message_data", "message_is_binary", "send_queue", "_perMessageCompress",
        "autoPingTimeoutCall", "trackedTimings",
    )  # fmt: skip
    #: protocol options each end takes from its factory
    SERVER_OPTIONS = (
        "utf8validateIncoming", "logFrames", "logOctets", "applyMask",
        "requireMaskedClientFrames", "maxFramePayloadSize", "maxMessagePayloadSize",
        "maskServerFrames", "autoFragmentSize",
    )  # fmt: skip
    CLIENT_OPTIONS = (
        "utf8validateIncoming", "logFrames", "logOctets", "applyMask",
        "acceptMaskedServerFrames", "maskClientFrames", "maxFramePayloadSize",
        "maxMessagePayloadSize", "autoFragmentSize",
    )  # fmt: skip
    METHODS = {
        "_dataReceived": ["data"],
        "_onMessage": ["payload", "isBinary"],
        "sendData": ["data", "sync", "chopsize"],
        "sendMessage": ["payload", "isBinary", "fragmentSize", "sync", "doNotCompress"],
        "onMessageEnd": [],
        "sendCloseFrame": ["code", "reasonUtf8", "isReply"],
        "dropConnection": ["abort"],
    }

    def test_attributes(self) -> None:
        """Every attribute the short path reads exists on an open Autobahn connection."""
        server = open_server(PlainServer)
        # (Autobahn makes the message state at the first message it reads.)
        server.dataReceived(frame(b"a", fin=False, mask=MASK) + frame(b"b", 0, mask=MASK))
        self.assertEqual(server.messages, [(b"ab", False)])
        missing = [
            name for name in (*self.STATE, *self.SERVER_OPTIONS) if not hasattr(server, name)
        ]
        self.assertEqual(missing, [], "Autobahn's server protocol no longer has these")
        self.assertEqual(server.state, WebSocketProtocol.STATE_OPEN)
        self.assertEqual(
            [n for n in self.SERVER_OPTIONS if n not in WebSocketServerProtocol.CONFIG_ATTRS], []
        )
        self.assertEqual(
            [n for n in self.CLIENT_OPTIONS if n not in WebSocketClientProtocol.CONFIG_ATTRS], []
        )
        self.assertTrue(WebSocketServerFactory.isServer)
        self.assertFalse(WebSocketClientFactory.isServer)

    def test_methods(self) -> None:
        """Every Autobahn method the short path calls or overrides takes what it passes."""
        for cls in (WebSocketServerProtocol, WebSocketClientProtocol):
            for name, params in self.METHODS.items():
                method = getattr(cls, name, None)
                self.assertIsNotNone(method, f"Autobahn's {cls.__name__} no longer has {name}")
                names = list(inspect.signature(method).parameters)[1:]
                self.assertEqual(names[: len(params)], params, f"{cls.__name__}.{name}")
