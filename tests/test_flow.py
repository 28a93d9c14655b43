"""
Tests for L{relaytx._flow}: what a WebSocket connection may hold of a node
and for how long, on a L{Clock} with fake connections (the real ones are
in C{tests/integration/test_guards.py}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from relaytx._flow import ROUNDS, ConnectionWatch, Flow
from relaytx._guards import InputBudget

IDLE = 8.0
ROUND = IDLE / ROUNDS


class FakeDescriptor(FileDescriptor):
    """A socket's transport that buffers what is written and records pauses."""

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1
        self.reading = True

    def startWriting(self) -> None:
        pass

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def drain(self) -> None:
        """The other end read everything."""
        self.dataBuffer, self.offset = b"", 0
        self._tempDataBuffer, self._tempDataLen = [], 0
        if self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()


class FakeTransport:
    """A transport that is not a socket's: the watch leaves its producer alone."""

    lost = False

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.lost = True


class FakeConnection:
    """What L{ConnectionWatch} reads and calls of a WebSocket protocol."""

    STATE_OPEN = 3

    def __init__(self, transport: Any = None) -> None:
        self.transport = transport or FakeTransport()
        self.state = self.STATE_OPEN
        self.read_since_round = False
        self.inside_message = False
        self.pings = 0
        self.closes: list[int] = []
        self.dropped = False

    @property
    def unfinished_message(self) -> bool:
        """As L{relaytx._frames.LeanMessages} says (Autobahn's flag, here)."""
        return getattr(self, "inside_message", False)

    def sendPing(self) -> None:
        self.pings += 1

    def sendCloseFrame(self, code: int, reasonUtf8: bytes, isReply: bool) -> None:
        self.closes.append(code)

    def dropConnection(self, abort: bool = False) -> None:
        self.dropped = True

    @property
    def lost(self) -> bool:
        """Whether the connection was closed once its close frame was written."""
        return bool(getattr(self.transport, "lost", False))


class WatchTests(SynchronousTestCase):
    """L{ConnectionWatch}: rounds over the connections while there are some."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.watch = ConnectionWatch(self.clock, IDLE, max_write_buffer=1000)

    def rounds(self, n: int, connection: FakeConnection | None = None, reads: bool = False) -> None:
        """Let C{n} rounds pass (C{reads}: C{connection} reads in each)."""
        for _ in range(n):
            if reads and connection is not None:
                connection.read_since_round = True
            self.clock.advance(ROUND)

    def test_noConnectionNoTimer(self) -> None:
        """The watch sets a timer only while it has connections."""
        self.assertEqual(self.clock.getDelayedCalls(), [])
        flow = self.watch.watch(FakeConnection(), pings=True)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.watch.forget(flow)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silentPinged(self) -> None:
        """A silent connection is pinged, then closed when nothing answers for idle_timeout."""
        connection = FakeConnection()
        self.watch.watch(connection, pings=True)
        self.rounds(ROUNDS // 2)
        self.assertEqual((connection.pings, connection.dropped), (1, False))
        self.rounds(ROUNDS // 2 - 1)
        self.assertFalse(connection.dropped)
        self.rounds(1)
        self.assertTrue(connection.dropped)
        self.assertEqual(self.watch.closed["silent"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answeringStays(self) -> None:
        """A connection that answers its pings (any read) stays open."""
        connection = FakeConnection()
        self.watch.watch(connection, pings=True)
        for _ in range(5):
            self.rounds(ROUNDS // 2 + 1)
            connection.read_since_round = True  # the pong
        self.assertFalse(connection.dropped)
        self.assertGreaterEqual(connection.pings, 5)

    def test_peerLinksNotPinged(self) -> None:
        """A connection that pings by itself (a peer link) is neither pinged nor closed here."""
        connection = FakeConnection()
        self.watch.watch(connection, pings=False)
        self.rounds(ROUNDS * 3)
        self.assertEqual((connection.pings, connection.dropped), (0, False))

    def test_unfinishedMessage(self) -> None:
        """A message still arriving after idle_timeout closes its connection (1008)."""
        connection = FakeConnection()
        self.watch.watch(connection, pings=False)
        # Begun just after a round's look: idle_timeout later, ROUNDS
        # looks have seen it, and it is not closed before that time.
        self.clock.advance(ROUND * 1.01)
        connection.inside_message = True
        self.rounds(ROUNDS, connection, reads=True)  # trickling in, never done
        self.assertEqual(connection.closes, [])
        self.rounds(1, connection, reads=True)
        self.assertEqual(connection.closes, [1008])
        self.assertTrue(connection.lost)
        self.assertFalse(connection.dropped)

    def test_openingConnection(self) -> None:
        """A connection still in its opening handshake (no message state yet) stops no round."""
        opening = FakeConnection()
        del opening.inside_message  # Autobahn sets it once the handshake is done
        other = FakeConnection()
        self.watch.watch(opening, pings=False)
        self.watch.watch(other, pings=False)
        other.inside_message = True
        self.rounds(ROUNDS + 1, other, reads=True)
        self.assertEqual(other.closes, [1008])  # the rounds went on, for every connection
        self.assertEqual(opening.closes, [])

    def test_finishedMessages(self) -> None:
        """Messages that finish between rounds never add up."""
        connection = FakeConnection()
        self.watch.watch(connection, pings=False)
        for n in range(ROUNDS * 3):
            connection.inside_message = n % 2 == 0
            self.rounds(1, connection, reads=True)
        self.assertFalse(connection.dropped)

    def test_budgetGivenBack(self) -> None:
        """What a connection held of the input budget is given back when it goes."""
        watch = ConnectionWatch(self.clock, IDLE, budget=InputBudget(100))
        flow = watch.watch(FakeConnection(), pings=False)
        self.assertTrue(watch.budget.take(60))
        flow.held_input = 60
        watch.forget(flow)
        self.assertEqual(watch.budget.held, 0)


class BackPressureTests(SynchronousTestCase):
    """L{Flow}: reading stops while unsent output is over max_write_buffer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.watch = ConnectionWatch(self.clock, IDLE, max_write_buffer=1000)
        self.fd = FakeDescriptor()
        self.fd.bufferSize = 100  # what tune_socket sets: the read size, too
        self.connection = FakeConnection(self.fd)
        self.flow = self.watch.watch(self.connection, pings=False)

    def test_registered(self) -> None:
        """The flow replaces the producer the connection had (its HTTP channel's)."""
        self.assertIs(self.fd.producer, self.flow)
        other = FakeDescriptor()
        other.registerProducer(Flow(FakeConnection(), self.watch, False), True)
        flow = self.watch.watch(FakeConnection(other), pings=False)
        self.assertIs(other.producer, flow)

    def test_pauseOnlyPastTheBound(self) -> None:
        """Output past bufferSize but under max_write_buffer keeps the reading on."""
        self.fd.write(b"x" * 500)
        self.assertTrue(self.fd.reading)
        self.fd.write(b"x" * 501)
        self.assertFalse(self.fd.reading)
        self.assertEqual(self.flow.unsent(), 1001)
        self.fd.drain()
        self.assertTrue(self.fd.reading)
        self.assertFalse(self.flow.reading_paused)

    def test_closedWhenStuck(self) -> None:
        """A connection paused for idle_timeout is closed."""
        self.fd.write(b"x" * 2000)
        for _ in range(ROUNDS):
            self.connection.read_since_round = True
            self.clock.advance(ROUND)
        self.assertFalse(self.connection.dropped)
        self.clock.advance(ROUND)
        self.assertTrue(self.connection.dropped)
        self.assertEqual(self.watch.closed["unread"], 1)

    def test_drainedInTime(self) -> None:
        """A connection that drains before idle_timeout stays open."""
        self.fd.write(b"x" * 2000)
        self.clock.advance(ROUND * (ROUNDS - 1))
        self.fd.drain()
        self.connection.read_since_round = True
        self.clock.advance(ROUND * 2)
        self.assertFalse(self.connection.dropped)

    def test_readingResumesBeforeDrainedCallbacks(self) -> None:
        """What a drained callback writes past the bound pauses the reading again."""
        self.fd.write(b"x" * 2000)
        self.flow.when_drained(lambda: self.fd.write(b"x" * 2000))
        self.fd.drain()
        self.assertFalse(self.fd.reading)
        self.assertTrue(self.flow.reading_paused)

    def test_peerLinkReadOn(self) -> None:
        """
        A peer link's output past the bound leaves reading on (two nodes
        that stopped reading each other would wait for ever): the
        connection is told instead, and told again when it drains. Still
        backed up after idle_timeout, it is closed as unread.
        """
        told: list[str] = []
        self.connection.reads_while_backed_up = True  # type: ignore[attr-defined]
        self.connection.output_backed_up = lambda: told.append("backed up")  # type: ignore[attr-defined]
        self.connection.output_drained = lambda: told.append("drained")  # type: ignore[attr-defined]
        self.fd.write(b"x" * 2000)
        self.fd.write(b"x" * 2000)
        self.assertTrue(self.fd.reading)
        self.assertEqual((told, self.flow.backed_up), (["backed up"], True))
        self.fd.drain()
        self.assertEqual((told, self.flow.backed_up), (["backed up", "drained"], False))
        self.fd.write(b"x" * 2000)
        for _ in range(ROUNDS + 1):
            self.connection.read_since_round = True
            self.clock.advance(ROUND)
        self.assertTrue(self.connection.dropped)
        self.assertEqual(self.watch.closed["unread"], 1)

    def test_releasedWhenGone(self) -> None:
        """A connection gone lets go of its unsent output at once, not at the next collection."""
        self.fd.write(b"x" * 2000)
        self.flow.release()
        self.assertEqual(self.flow.unsent(), 0)
        self.assertEqual((self.fd.dataBuffer, self.fd._tempDataBuffer), (b"", []))
