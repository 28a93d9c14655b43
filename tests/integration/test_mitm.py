"""
A man in the middle between two members of a secret-protected mesh.

A stranger (who does not hold the secret) has node B dial it and relays
B's genuine handshake to node A and back, so A and B both see an ordinary
link. It then tries to use its place: inject, alter, drop and replace,
reorder and replay frames, in both directions. Every attempt must close
the link with 4003, be counted in C{relaytx_auth_failures_total}, and run
nothing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from relaytx.node import RelayNode

from .helpers import Counter, free_port, start_node, wait_for
from .test_security import SECRET, _Files, failures

#: One direction of the relay: "to_a" (from B, the dialler) or "to_b".
Tamper = Callable[[str, list[bytes]], list[bytes]]


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked, final WebSocket frame (as two relaytx nodes send them)."""
    size = len(payload)
    if size <= 125:
        head = bytes((0x80 | opcode, size))
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


class _Stream:
    """Splits one direction of a WebSocket connection into raw frames."""

    def __init__(self) -> None:
        self.upgraded = False
        self.buffer = b""

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """:returns: bytes to pass on as they are (the HTTP upgrade), and whole frames."""
        self.buffer += data
        passed = b""
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return b"", []
            passed, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            self.upgraded = True
        frames = []
        while len(self.buffer) >= 2:
            second = self.buffer[1]
            size, head = second & 0x7F, 2
            if size == 126:
                if len(self.buffer) < 4:
                    break
                size, head = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif size == 127:
                if len(self.buffer) < 10:
                    break
                size, head = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if second & 0x80:
                head += 4
            if len(self.buffer) < head + size:
                break
            frames.append(self.buffer[: head + size])
            self.buffer = self.buffer[head + size :]
        return passed, frames


def payload_of(frame: bytes) -> bytes:
    """The payload of an unmasked frame."""
    size, head = frame[1] & 0x7F, 2
    if size == 126:
        head = 4
    elif size == 127:
        head = 10
    return frame[head:]


class _Half(Protocol):
    """One side of the relay; the other side's transport is C{peer}."""

    def __init__(self, relay: Relay, direction: str) -> None:
        self.relay = relay
        self.direction = direction  # where what this side reads goes
        self.stream = _Stream()
        self.peer: _Half | None = None
        self.pending: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        passed, frames = self.stream.feed(data)
        out = passed + b"".join(self.relay.tamper(self.direction, frames))
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(out)
        else:
            self.pending.append(out)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class Relay:
    """
    Listens for node B and relays to node A, every frame through C{tamper}
    (which passes them on unchanged by default).
    """

    def __init__(self, case: TestCase, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.attack: Tamper | None = None
        self.seen: dict[str, list[bytes]] = {"to_a": [], "to_b": []}
        relay = self

        class FromB(_Half):
            def connectionMade(self) -> None:
                self.transport.pauseProducing()  # until A answers
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", relay.target_port)
                to_a = _Half(relay, "to_b")
                to_a.peer, self.peer = self, to_a

                def connected(_: Any) -> None:
                    self.transport.resumeProducing()

                endpoint.connect(Factory.forProtocol(lambda: to_a)).addCallbacks(
                    connected, lambda _: self.transport.loseConnection()
                )

        self._listening = TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FromB(relay, "to_a"))
        )
        case.addCleanup(lambda: self._listening.addCallback(lambda port: port.stopListening()))

    def tamper(self, direction: str, frames: list[bytes]) -> list[bytes]:
        self.seen[direction].extend(frames)
        if self.attack is None:
            return frames
        return self.attack(direction, frames)


def close_codes(relay: Relay) -> list[int]:
    """:returns: the codes of the close frames that crossed the relay, either way."""
    return [
        int.from_bytes(payload_of(frame)[:2], "big")
        for frames in relay.seen.values()
        for frame in frames
        if frame[0] & 0x0F == 8 and len(payload_of(frame)) >= 2
    ]


def calls_in(frames: list[bytes]) -> list[int]:
    """:returns: the indexes of the frames that carry a C{server_call}."""
    return [i for i, frame in enumerate(frames) if b'"server_call"' in payload_of(frame)]


def forged_call(sender: str, to: str, response_id: str) -> bytes:
    """A C{server_call} the stranger makes up (it has no key to seal it)."""
    envelope = {
        "type": "server_call",
        "id": response_id,
        "from": sender,
        "to": to,
        "data": {
            "call": {"server_name": "counter", "method": "increment", "args": [100]},
            "response_id": response_id,
        },
        "route": [sender],
        "ttl": 9,
    }
    return ws_frame(json.dumps(envelope).encode())


class ManInTheMiddleTests(_Files, TestCase):
    """Every way of using a relayed, genuine handshake fails."""

    timeout = 60

    async def mesh(self, **options: Any) -> tuple[RelayNode, RelayNode, Counter, Counter, Relay]:
        """
        :param options: both nodes' other settings.
        """
        secret = self.write("secret", SECRET)
        counter_a, counter_b = Counter(), Counter()
        a = start_node(self, "nodeA", secret_file=secret, servers={"counter": counter_a}, **options)
        assert a.listening_port is not None
        relay = Relay(self, a.listening_port.getHost().port)
        b = start_node(
            self,
            "nodeB",
            [f"ws://127.0.0.1:{relay.port}"],
            secret_file=secret,
            servers={"counter": counter_b},
            **options,
        )
        await wait_for(
            lambda: "nodeB" in a.mesh.links and "nodeA" in b.mesh.links, 10, what="the link"
        )
        # The relay is invisible: a genuine call goes through it.
        self.assertEqual(await b.call("nodeA", "counter", "increment", timeout=5), 1)
        self.assertTrue(relay.seen["to_a"] and relay.seen["to_b"])
        return a, b, counter_a, counter_b, relay

    async def attempt(
        self, attack: Tamper, towards: str, **options: Any
    ) -> tuple[RelayNode, RelayNode, Counter]:
        """Arm C{attack}, make calls that cross the relay, and check the link closes with 4003."""
        a, b, counter_a, counter_b, relay = await self.mesh(**options)
        before = failures(a) + failures(b)
        relay.attack = attack
        victim, caller = (a, b) if towards == "to_a" else (b, a)
        target_id = victim.node_id
        calls = [caller.call(target_id, "counter", "increment", timeout=3) for _ in range(3)]
        for d in calls:
            d.addErrback(lambda _: None)  # they may fail: the link is going
        await wait_for(
            lambda: "nodeB" not in a.mesh.links or "nodeA" not in b.mesh.links,
            10,
            what="the link to close",
        )
        await wait_for(lambda: failures(a) + failures(b) > before, 5, what="the failure count")
        # The closing node's close frame crosses the relay too.
        await wait_for(lambda: 4003 in close_codes(relay), 5, what="a close frame with 4003")
        counter = counter_a if towards == "to_a" else counter_b
        return a, b, counter

    async def inject(self, towards: str) -> None:
        target, sender = ("nodeA", "nodeB") if towards == "to_a" else ("nodeB", "nodeA")
        injected: list[bool] = []

        def inject(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction == towards and not injected:
                injected.append(True)
                return [forged_call(sender, target, "forged1"), *frames]
            return frames

        _, _, counter = await self.attempt(inject, towards)
        self.assertTrue(injected)
        self.assertLess(counter.count, 100)  # the forged increment by 100 never ran

    async def test_inject_towards_acceptor(self) -> None:
        """A call injected towards the node that accepted the link closes it and never runs."""
        await self.inject("to_a")

    async def test_inject_binary(self) -> None:
        """A binary frame injected on a sealed link fails authentication too (4003)."""
        injected: list[bool] = []

        def inject(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction == "to_a" and not injected:
                injected.append(True)
                return [ws_frame(b"\x00\x01binary", opcode=2), *frames]
            return frames

        await self.attempt(inject, "to_a")
        self.assertTrue(injected)

    async def test_inject_towards_dialler(self) -> None:
        """A call injected towards the node that dialled closes the link and never runs."""
        await self.inject("to_b")

    async def test_alter(self) -> None:
        """A genuine call changed on its way (its argument) closes the link and never runs."""

        def alter(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction != "to_a":
                return frames
            for i in calls_in(frames):
                payload = payload_of(frames[i]).replace(b'"args":[]', b'"args":[50]')
                frames[i] = ws_frame(payload)
            return frames

        _, _, counter = await self.attempt(alter, "to_a")
        self.assertLess(counter.count, 50)

    async def test_drop_and_replace(self) -> None:
        """A genuine call dropped and a forged one put in its place closes the link."""

        def replace(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction == "to_a":
                for i in calls_in(frames):
                    frames[i] = forged_call("nodeB", "nodeA", f"swap{i}")
            return frames

        _, _, counter = await self.attempt(replace, "to_a")
        self.assertLess(counter.count, 100)

    async def test_reorder(self) -> None:
        """Two genuine frames swapped close the link."""
        held: list[bytes] = []

        def reorder(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction != "to_a":
                return frames
            out = []
            for frame in frames:
                if not held:
                    held.append(frame)
                    continue
                out.extend([frame, held.pop()])
            return out

        await self.attempt(reorder, "to_a")

    async def test_replay(self) -> None:
        """A genuine call sent again closes the link; it runs once at most."""

        def replay(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction != "to_a":
                return frames
            out = []
            for i, frame in enumerate(frames):
                out.append(frame)
                if i in calls_in(frames):
                    out.append(frame)
            return out

        _, _, counter = await self.attempt(replay, "to_a")
        self.assertLessEqual(counter.count, 1 + 3)  # the first genuine call and these, once each

    async def test_replay_old_frame(self) -> None:
        """A frame from earlier on the link, replayed later, closes the link."""
        a, b, _, _, relay = await self.mesh()
        before = failures(a)
        old = relay.seen["to_a"][0]

        def replay_old(direction: str, frames: list[bytes]) -> list[bytes]:
            return [old, *frames] if direction == "to_a" else frames

        relay.attack = replay_old
        b.call("nodeA", "counter", "get", timeout=3).addErrback(lambda _: None)
        await wait_for(lambda: "nodeB" not in a.mesh.links, 10, what="the link to close")
        await wait_for(lambda: failures(a) > before, 5, what="the failure count")

    async def test_codes_removed(self) -> None:
        """
        Genuine frames with their codes removed are never handed on: the
        batch waits for a code that never comes, and the link closes.
        """
        mac = re.compile(rb',"mac":"[0-9a-f]{32}"\}$')

        def strip(direction: str, frames: list[bytes]) -> list[bytes]:
            if direction != "to_b":
                return frames
            out = []
            for frame in frames:
                payload = payload_of(frame)
                if frame[0] & 0x0F == 1 and mac.search(payload):
                    frame = ws_frame(mac.sub(b"}", payload))
                out.append(frame)
            return out

        # (A caller gives up on a link that answers nothing within
        # peer_timeout, 1.25 s by default, and the waiting node on the
        # codes after 1 s: a slow test machine could swap the two.)
        _, _, counter = await self.attempt(strip, "to_b", peer_timeout=5.0)
        self.assertEqual(counter.count, 0)

    async def test_forged_removal(self) -> None:
        """
        A close frame "removed by the operator" (4002), forged towards the
        dialler, does not stop it for good: a close frame is not
        authenticated, so the dialler dials again and the link comes back.
        """
        a, b, _, _, relay = await self.mesh()
        forged = ws_frame(struct.pack("!H", 4002) + b"removed by the operator", opcode=8)
        sent: list[bool] = []

        def forge(direction: str, frames: list[bytes]) -> list[bytes]:
            # The forged close goes to B; nothing else crosses, so B's
            # answer to it never reaches A.
            if direction == "to_b" and not sent:
                sent.append(True)
                return [forged]
            return []

        relay.attack = forge
        a.call("nodeB", "counter", "increment", timeout=3).addErrback(lambda _: None)
        await wait_for(lambda: "nodeA" not in b.mesh.links, 10, what="B to drop the link")
        self.assertTrue(sent)
        relay.attack = None
        await wait_for(
            lambda: "nodeA" in b.mesh.links and "nodeB" in a.mesh.links,
            20,
            what="B to dial again, and the link to come back",
        )
        self.assertEqual(await b.call("nodeA", "counter", "increment", timeout=5), 2)
