"""
A link across a slow network, on real sockets: a userspace relay between
two nodes passes one direction at a set rate (as a congested uplink does),
with back-pressure, so the sender's socket fills as it would.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from .helpers import start_node, wait_for

#: How often the relay lets bytes through (seconds).
_STEP = 0.01


class _Back(Protocol):
    """The relay's connection to the node dialled: what it says goes back at once."""

    def __init__(self, front: _Front) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        if self.front.transport is not None:
            self.front.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.front.transport is not None:
            self.front.transport.loseConnection()


class _Front(Protocol):
    """A dialler's connection to the relay: what it sends goes on at C{rate}."""

    def __init__(self, relay: SlowRelay) -> None:
        self.relay = relay
        self.queue = bytearray()
        self.back: _Back | None = None
        self.paused = False

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # (until the far end is connected)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.target)
        back = _Back(self)
        d = endpoint.connect(Factory.forProtocol(lambda: back))
        d.addCallbacks(self._connected, lambda _: self.transport.loseConnection())
        self.relay.fronts.append(self)

    def _connected(self, back: _Back) -> None:
        self.back = back
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.queue += data
        if len(self.queue) > 8192 and not self.paused:
            self.paused = True  # the dialler's socket fills, as on a slow network
            self.transport.pauseProducing()

    def step(self) -> None:
        if self.back is None or self.back.transport is None or not self.queue:
            return
        allowance = int(self.relay.rate * _STEP)
        chunk, self.queue = bytes(self.queue[:allowance]), self.queue[allowance:]
        self.back.transport.write(chunk)
        if self.paused and len(self.queue) <= 8192:
            self.paused = False
            self.transport.resumeProducing()

    def connectionLost(self, reason: Any = None) -> None:
        if self.back is not None and self.back.transport is not None:
            self.back.transport.loseConnection()


class SlowRelay:
    """Listens on 127.0.0.1; relays to C{target}, dialler to target at C{rate} bytes/s."""

    def __init__(self, case: TestCase, target: int, rate: int) -> None:
        self.target = target
        self.rate = rate
        self.fronts: list[_Front] = []
        self.port: Any = None
        self._pacer = LoopingCall(lambda: [front.step() for front in self.fronts])
        self._pacer.start(_STEP)
        case.addCleanup(self.stop)

    async def listen(self) -> int:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(Factory.forProtocol(lambda: _Front(self)))
        number: int = self.port.getHost().port
        return number

    async def stop(self) -> None:
        if self._pacer.running:
            self._pacer.stop()
        for front in self.fronts:
            if front.transport is not None:
                front.transport.abortConnection()
            if front.back is not None and front.back.transport is not None:
                front.back.transport.abortConnection()
        if self.port is not None:
            await self.port.stopListening()


class SlowLinkTests(TestCase):
    """A large message crossing a slow link: its link is not taken for dead."""

    timeout = 60

    async def test_largeCallAcrossSlowLink(self) -> None:
        """
        A 200 KB call across a 100 KB/s link (2 s to cross, past the 1.25 s
        peer timeout) is answered, and the link kept: the far end, reading
        it, tells it is alive (the caller's probe waits behind the call).
        """
        a = start_node(self, "sa")
        assert a.listening_port is not None
        relay = SlowRelay(self, a.listening_port.getHost().port, 100_000)
        port = await relay.listen()
        b = start_node(self, "sb", [f"ws://127.0.0.1:{port}"])
        await wait_for(lambda: "sa" in b.mesh.links and "sb" in a.mesh.links, 10, what="the link")
        payload = "x" * 200_000
        started = reactor.seconds()
        answer = await b.call("sa", "node", "echo", payload, timeout=30)
        self.assertEqual(answer, [payload])
        self.assertGreater(reactor.seconds() - started, 1.5)  # (it did cross slowly)
        self.assertIn("sa", b.mesh.links)
        self.assertTrue(b.mesh.links["sa"].healthy)
