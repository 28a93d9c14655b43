"""
Tests for L{relaytx._wsconn}: the client's WebSocket connection, driven
byte by byte against the C{websockets} package's sans-I/O server protocol
over an in-memory transport, on an event loop with a virtual clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from relaytx._wsconn import USER_AGENT, ChannelError, WebSocketChannel
from tests.aiosupport import run, turns


class MemoryTransport(asyncio.Transport):
    """An asyncio transport that keeps what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.aborted = False
        self.eof = False
        self.reading = True
        self.protocol: WebSocketChannel | None = None

    def write(self, data: Any) -> None:
        if self.eof:  # as asyncio's transports
            raise RuntimeError("Cannot call write() after write_eof()")
        self.writes += 1
        self.written += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def take(self) -> bytes:
        """:returns: what was written since the last take."""
        data, self.written = bytes(self.written), bytearray()
        return data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


class Listener:
    """Records what the channel tells its owner."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost: list[str] = []

    def message_received(self, payload: bytes) -> None:
        self.messages.append(payload)

    def channel_lost(self, channel: Any, reason: str) -> None:
        self.lost.append(reason)


class Pair:
    """A channel and a websockets server protocol, joined by a memory transport."""

    def __init__(
        self,
        headers: list[tuple[str, str]] | None = None,
        max_size: int = 1 << 20,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        listener: Any = None,
    ) -> None:
        self.listener = listener if listener is not None else Listener()
        self.channel = WebSocketChannel(
            "ws://node:1/ws/rpc",
            self.listener,
            headers or [],
            max_size,
            ping_interval,
            ping_timeout,
        )
        self.transport = MemoryTransport()
        self.transport.protocol = self.channel
        self.server = ServerProtocol(max_size=None)
        self.channel.connection_made(self.transport)
        self.server.receive_data(self.transport.take())
        [request] = self.server.events_received()
        assert isinstance(request, Request)
        self.request = request

    def accept(self) -> None:
        """The node accepts the handshake."""
        self.server.send_response(self.server.accept(self.request))
        self.to_client()

    def to_client(self, chunks: list[bytes] | None = None) -> None:
        """Hand what the server wrote to the channel (in C{chunks} if given)."""
        data = b"".join(self.server.data_to_send())
        for chunk in chunks if chunks is not None else [data]:
            self.channel.data_received(chunk)

    def from_client(self) -> list[Any]:
        """:returns: the events the server reads from what the channel wrote."""
        self.server.receive_data(self.transport.take())
        return self.server.events_received()

    def node_ends(self) -> None:
        """The node closes its end of the connection (a FIN, no close frame)."""
        if not self.channel.eof_received():
            self.transport.close()


class HandshakeTests(SynchronousTestCase):
    """Opening the connection."""

    def test_headers(self) -> None:
        """The handshake carries the extra headers and relaytx's user agent, never an Origin."""

        async def scenario() -> Pair:
            pair = Pair([("Authorization", "Bearer t0k")])
            pair.accept()
            await pair.channel.opened
            return pair

        request = run(scenario()).request
        self.assertEqual(request.path, "/ws/rpc")
        self.assertEqual(request.headers["Authorization"], "Bearer t0k")
        self.assertEqual(request.headers["User-Agent"], USER_AGENT)
        self.assertNotIn("Origin", request.headers)

    def test_refused(self) -> None:
        """A refusal is a ChannelError with the HTTP status and the node's own words."""

        async def scenario() -> ChannelError:
            pair = Pair()
            body = b'{"error": "missing or bad token", "status": 401}'
            pair.server.send_response(Response(401, "Unauthorized", _headers(len(body)), body))
            pair.to_client()
            try:
                await pair.channel.opened
            except ChannelError as e:
                return e
            raise AssertionError("opened")

        error = run(scenario())
        self.assertEqual(error.status, 401)
        self.assertIn("HTTP 401 Unauthorized: missing or bad token", str(error))

    def test_notWebSocket(self) -> None:
        """Something that is not HTTP is a ChannelError saying so."""

        async def scenario() -> ChannelError:
            pair = Pair()
            pair.channel.data_received(b"SSH-2.0-OpenSSH\r\n\r\n")
            try:
                await pair.channel.opened
            except ChannelError as e:
                return e
            raise AssertionError("opened")

        error = run(scenario())
        self.assertIsNone(error.status)
        self.assertIn("not a WebSocket endpoint", str(error))

    def test_lostBeforeHandshake(self) -> None:
        """A connection closed before the handshake's answer fails the opening."""

        async def scenario() -> None:
            pair = Pair()
            pair.transport.close()
            with self.assertRaises(ChannelError):
                await pair.channel.opened

        run(scenario())


def _headers(length: int) -> Any:
    from websockets.datastructures import Headers

    return Headers([("Content-Length", str(length)), ("Content-Type", "application/json")])


class MessageTests(SynchronousTestCase):
    """Messages both ways."""

    def opened(self) -> Pair:
        """:returns: an open pair (call inside a running loop)."""
        pair = Pair()
        pair.accept()
        return pair

    def test_receive(self) -> None:
        """Text frames from the node are handed over whole, in order, however they are cut."""

        async def scenario() -> list[list[bytes]]:
            got = []
            for cut in (None, 1, 7):
                pair = self.opened()
                for text in (b'{"a":1}', b"x" * 300, b"y" * 70000):
                    pair.server.send_text(text)
                data = b"".join(pair.server.data_to_send())
                chunks = (
                    None if cut is None else [data[i : i + cut] for i in range(0, len(data), cut)]
                )
                for chunk in chunks if chunks is not None else [data]:
                    pair.channel.data_received(chunk)
                got.append(pair.listener.messages)
            return got

        for messages in run(scenario()):
            self.assertEqual(messages, [b'{"a":1}', b"x" * 300, b"y" * 70000])

    def test_send(self) -> None:
        """Messages sent in one turn leave in one write, as valid masked frames."""

        async def scenario() -> tuple[list[Any], int]:
            pair = self.opened()
            pair.transport.writes = 0
            for i in range(50):
                pair.channel.send(b'{"id":%d}' % i)
            pair.channel.send(b"z" * 70000)
            self.assertEqual(pair.transport.writes, 0)
            await turns(1)
            return pair.from_client(), pair.transport.writes

        frames, writes = run(scenario())
        self.assertEqual(writes, 1)
        self.assertEqual(
            [bytes(f.data) for f in frames], [b'{"id":%d}' % i for i in range(50)] + [b"z" * 70000]
        )
        self.assertTrue(all(f.opcode is Opcode.TEXT and f.fin for f in frames))

    def test_ping(self) -> None:
        """A ping from the node is answered with a pong carrying its data."""

        async def scenario() -> list[Any]:
            pair = self.opened()
            pair.server.send_ping(b"are you there")
            pair.to_client()
            await turns(1)
            return pair.from_client()

        [pong] = run(scenario())
        self.assertEqual((pong.opcode, bytes(pong.data)), (Opcode.PONG, b"are you there"))

    def test_fragments(self) -> None:
        """A fragmented message is joined, and messages after it still arrive."""

        async def scenario() -> list[bytes]:
            pair = self.opened()
            pair.server.send_text(b'{"par', fin=False)
            pair.server.send_continuation(b"ts", fin=False)
            pair.server.send_continuation(b'":2}', fin=True)
            pair.server.send_text(b"after")
            pair.to_client()
            pair.channel.send(b"still sending")
            await turns(1)
            self.assertEqual([bytes(f.data) for f in pair.from_client()], [b"still sending"])
            return pair.listener.messages

        self.assertEqual(run(scenario()), [b'{"parts":2}', b"after"])

    def test_binary(self) -> None:
        """A binary frame closes the connection with 1003."""

        async def scenario() -> list[Any]:
            pair = self.opened()
            pair.server.send_binary(b"\x00")
            pair.to_client()
            return pair.from_client()

        [close] = run(scenario())
        self.assertEqual(Close.parse(close.data).code, 1003)

    def test_tooBig(self) -> None:
        """A message over max_size closes the connection with 1009."""

        async def scenario() -> tuple[list[Any], list[bytes]]:
            pair = Pair(max_size=100)
            pair.accept()
            pair.server.send_text(b"x" * 101)
            pair.to_client()
            return pair.from_client(), pair.listener.messages

        [close], messages = run(scenario())
        self.assertEqual(Close.parse(close.data).code, 1009)
        self.assertEqual(messages, [])

    def test_nodeCloses(self) -> None:
        """A close from the node is answered, and the listener hears why."""

        async def scenario() -> tuple[list[Any], list[str]]:
            pair = self.opened()
            pair.server.send_close(1001, "going away")
            pair.to_client()
            events = pair.from_client()
            pair.transport.close()
            await turns()
            self.assertRaises(ChannelError, pair.channel.send, b"late")
            return events, pair.listener.lost

        [close], lost = run(scenario())
        self.assertEqual(Close.parse(close.data).code, 1001)
        self.assertEqual(lost, ["closed by the node (1001 going away)"])

    def test_close(self) -> None:
        """close() sends 1000 and drops the connection if the node does not close it."""

        async def scenario() -> tuple[list[Any], list[str], bool]:
            pair = self.opened()
            pair.channel.send(b"first")
            pair.channel.close()
            self.assertRaises(ChannelError, pair.channel.send, b"after close")
            events = pair.from_client()
            await asyncio.sleep(5)
            return events, pair.listener.lost, pair.transport.aborted

        events, lost, aborted = run(scenario())
        self.assertEqual([e.opcode for e in events], [Opcode.TEXT, Opcode.CLOSE])
        self.assertEqual(Close.parse(events[1].data).code, 1000)
        self.assertTrue(aborted)
        self.assertEqual(lost, ["closed by this client"])

    def test_pauseReading(self) -> None:
        """Reading pauses and resumes through the transport."""

        async def scenario() -> list[bool]:
            pair = self.opened()
            pair.channel.pause_reading()
            paused = pair.transport.reading
            pair.channel.resume_reading()
            return [paused, pair.transport.reading]

        self.assertEqual(run(scenario()), [False, True])


class LivenessTests(SynchronousTestCase):
    """Pings find a silent node."""

    def test_silentNode(self) -> None:
        """A node silent for ping_interval is pinged, and dropped after ping_timeout more."""

        async def scenario() -> tuple[list[Any], list[str], float]:
            loop = asyncio.get_running_loop()
            pair = Pair(ping_interval=10.0)
            pair.accept()
            started = loop.time()
            await asyncio.sleep(20.5)  # a whole interval without a word, and a bit
            pings = pair.from_client()
            while not pair.listener.lost:
                await asyncio.sleep(1)
            return pings, pair.listener.lost, loop.time() - started

        pings, lost, waited = run(scenario())
        self.assertEqual([f.opcode for f in pings], [Opcode.PING])
        self.assertEqual(lost, ["the node answered no ping within 20s"])
        self.assertLessEqual(waited, 41)

    def test_talkingNode(self) -> None:
        """A node that answers (anything, a pong included) keeps the connection."""

        async def scenario() -> list[str]:
            pair = Pair(ping_interval=10.0)
            pair.accept()
            for _ in range(10):
                await asyncio.sleep(15)
                for event in pair.from_client():
                    if isinstance(event, Frame) and event.opcode is Opcode.PING:
                        pair.server.send_pong(event.data)
                pair.to_client()
            return pair.listener.lost

        self.assertEqual(run(scenario()), [])


class PausingListener(Listener):
    """Pauses its channel's reading when it receives C{b"pause"}."""

    channel: WebSocketChannel

    def message_received(self, payload: bytes) -> None:
        super().message_received(payload)
        if payload == b"pause":
            self.channel.pause_reading()


class PauseTests(SynchronousTestCase):
    """Pausing reading, as a stream's consumer does (SPEC section 12)."""

    def test_holdsTheRestOfARead(self) -> None:
        """No message comes after the one that paused; resuming hands the rest over, in order."""

        async def scenario() -> tuple[list[bytes], list[bytes], bool]:
            listener = PausingListener()
            pair = Pair(listener=listener)
            listener.channel = pair.channel
            pair.accept()
            for text in (b"a", b"pause", b"b", b"x" * 300, b"c"):
                pair.server.send_text(text)
            pair.to_client()
            held = list(listener.messages)
            paused = not pair.transport.reading
            pair.channel.resume_reading()
            await turns()
            return held, listener.messages, paused

        held, messages, paused = run(scenario())
        self.assertEqual(held, [b"a", b"pause"])
        self.assertTrue(paused)
        self.assertEqual(messages, [b"a", b"pause", b"b", b"x" * 300, b"c"])

    def test_pingsWhilePaused(self) -> None:
        """A paused channel pings on but never drops the node; reading again, a silent one goes."""

        async def scenario() -> tuple[int, list[str], list[str]]:
            pair = Pair(ping_interval=10.0, ping_timeout=10.0)
            pair.accept()
            pair.channel.pause_reading()
            await asyncio.sleep(100)  # the node's pongs would wait unread
            pings = [e for e in pair.from_client() if e.opcode is Opcode.PING]
            lost_while_paused = list(pair.listener.lost)
            pair.channel.resume_reading()
            await asyncio.sleep(25)
            return len(pings), lost_while_paused, pair.listener.lost

        pings, lost_while_paused, lost = run(scenario())
        self.assertGreaterEqual(pings, 8)  # the node hears from this end all along
        self.assertEqual(lost_while_paused, [])
        self.assertEqual(lost, ["the node answered no ping within 10s"])


class EndingTests(SynchronousTestCase):
    """Messages taken by send() when the connection ends before they leave."""

    def test_nodeEndsBeforeFlush(self) -> None:
        """Sent in the turn the node's EOF arrives: never written after it, given back, no error."""

        async def scenario() -> tuple[Pair, list[Any]]:
            errors: list[Any] = []
            asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
            pair = Pair()
            pair.accept()
            for message in (b'{"id":1}', b"y" * 300, b"z" * 70000):
                pair.channel.send(message)
            pair.node_ends()  # read in the same turn, before the messages leave
            self.assertRaises(ChannelError, pair.channel.send, b"after")
            await turns()
            return pair, errors

        pair, errors = run(scenario())
        self.assertEqual(errors, [])
        self.assertTrue(pair.transport.eof)
        self.assertEqual(pair.transport.take(), b"")
        self.assertEqual(pair.channel.unwritten(), [b'{"id":1}', b"y" * 300, b"z" * 70000])
        self.assertEqual(pair.listener.lost, ["connection closed"])

    def test_nodeClosesBeforeFlush(self) -> None:
        """Sent in the turn the node's close frame arrives: never written, only the close reply."""

        async def scenario() -> tuple[Pair, list[Any]]:
            pair = Pair()
            pair.accept()
            pair.channel.send(b'{"id":1}')
            pair.server.send_close(1001, "node stopping")
            pair.to_client()
            self.assertRaises(ChannelError, pair.channel.send, b"after")
            await turns()
            events = pair.from_client()
            pair.transport.close()
            await turns()
            return pair, events

        pair, events = run(scenario())
        self.assertEqual([e.opcode for e in events], [Opcode.CLOSE])
        self.assertEqual(pair.channel.unwritten(), [b'{"id":1}'])
        self.assertEqual(pair.listener.lost, ["closed by the node (1001 node stopping)"])

    def test_lostBeforeFlush(self) -> None:
        """Taken in the turn the connection drops: given back, not written."""

        async def scenario() -> Pair:
            pair = Pair()
            pair.accept()
            pair.server.send_ping(b"p")
            pair.to_client()  # a pong waits to leave too: it is not a message
            pair.channel.send(b"a")
            pair.channel.connection_lost(ConnectionResetError("reset"))
            await turns()
            return pair

        pair = run(scenario())
        self.assertEqual(pair.transport.take(), b"")
        self.assertEqual(pair.channel.unwritten(), [b"a"])
        self.assertEqual(pair.listener.lost, ["connection lost (reset)"])

    def test_writtenIsNotGivenBack(self) -> None:
        """What left before the connection ended is not in unwritten()."""

        async def scenario() -> Pair:
            pair = Pair()
            pair.accept()
            pair.channel.send(b"left")
            await turns()
            pair.node_ends()
            await turns()
            return pair

        pair = run(scenario())
        self.assertEqual([bytes(f.data) for f in pair.from_client()], [b"left"])
        self.assertEqual(pair.channel.unwritten(), [])
