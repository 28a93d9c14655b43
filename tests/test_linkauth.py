"""
Tests for L{relaytx._linkauth}: the keys of a link between holders of the
cluster secret, and the code every frame on it carries.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaytx._linkauth import (
    MAC_SIZE,
    OVERHEAD,
    FrameOpener,
    FrameRejected,
    FrameSealer,
    link_keys,
)
from tests.support import fuzz_settings

SECRET = b"0123456789abcdef-cluster"
NC, NS = "c" * 64, "5" * 64
FRAMES = [
    json.dumps({"type": "ping", "from": "hA", "to": "hB", "data": {"timestamp": i}}).encode()
    for i in range(5)
]


def without_mac(frame: bytes) -> dict[str, object]:
    """The JSON object of a sealed frame, without its code."""
    obj = json.loads(frame)
    del obj["mac"]
    return dict(obj)


def pair() -> tuple[FrameSealer, FrameOpener]:
    """The dialler's sealer and the acceptor's opener of one link."""
    dialler = link_keys(SECRET, NC, NS, "hA", "hB", dialling=True)
    acceptor = link_keys(SECRET, NC, NS, "hA", "hB", dialling=False)
    return FrameSealer(dialler.send), FrameOpener(acceptor.receive)


class KeyTests(SynchronousTestCase):
    """Keys depend on everything the handshake agreed on."""

    def test_ends_agree(self) -> None:
        """What one end sends with, the other receives with; the two directions differ."""
        dialler = link_keys(SECRET, NC, NS, "hA", "hB", dialling=True)
        acceptor = link_keys(SECRET, NC, NS, "hA", "hB", dialling=False)
        self.assertEqual((dialler.send, dialler.receive), (acceptor.receive, acceptor.send))
        self.assertNotEqual(dialler.send, dialler.receive)
        self.assertEqual(len(dialler.send), 32)

    def test_bound(self) -> None:
        """Another secret, nonce or id gives other keys."""
        keys = link_keys(SECRET, NC, NS, "hA", "hB", True)
        for other in (
            link_keys(b"another secret!!", NC, NS, "hA", "hB", True),
            link_keys(SECRET, "d" * 64, NS, "hA", "hB", True),
            link_keys(SECRET, NC, "6" * 64, "hA", "hB", True),
            link_keys(SECRET, NC, NS, "hC", "hB", True),
            link_keys(SECRET, NC, NS, "hA", "hC", True),
            link_keys(SECRET, NS, NC, "hB", "hA", True),
        ):
            self.assertNotEqual(other.send, keys.send)


class FrameTests(SynchronousTestCase):
    """Each frame carries a code for its place on the link."""

    def test_round_trip(self) -> None:
        """Sealed frames open, in order; each is what was sealed plus a last member, "mac"."""
        sealer, opener = pair()
        for frame in FRAMES:
            sealed = sealer.seal(frame)
            self.assertEqual(len(sealed), len(frame) + OVERHEAD)
            self.assertEqual(without_mac(opener.open(sealed)), json.loads(frame))
            self.assertEqual(list(json.loads(sealed))[-1], "mac")
            self.assertEqual(len(json.loads(sealed)["mac"]), 2 * MAC_SIZE)

    def test_same_frame_new_code(self) -> None:
        """The same frame sealed twice carries two codes: its place is in the code."""
        sealer, _ = pair()
        self.assertNotEqual(sealer.seal(FRAMES[0]), sealer.seal(FRAMES[0]))

    def opened(self, stream: list[bytes]) -> list[bytes]:
        _, opener = pair()
        return [opener.open(frame) for frame in stream]

    def test_unsealed(self) -> None:
        """A frame without a code (injected by someone without the keys) is refused."""
        self.assertRaises(FrameRejected, self.opened, [FRAMES[0]])
        self.assertRaises(FrameRejected, self.opened, [b"}"])
        self.assertRaises(FrameRejected, self.opened, [b""])

    def test_altered(self) -> None:
        """Changing any byte of a sealed frame is noticed."""
        sealer, _ = pair()
        sealed = sealer.seal(FRAMES[0])
        for at in range(len(sealed)):
            altered = bytearray(sealed)
            altered[at] ^= 0x01
            self.assertRaises(FrameRejected, self.opened, [bytes(altered)])

    def test_reordered_replayed_dropped(self) -> None:
        """Swapping, repeating or leaving out a frame is noticed at the first one out of place."""
        sealer, _ = pair()
        stream = [sealer.seal(frame) for frame in FRAMES]
        self.assertEqual(
            [without_mac(f) for f in self.opened(stream)], [json.loads(f) for f in FRAMES]
        )
        self.assertRaises(FrameRejected, self.opened, [stream[1], stream[0]])
        self.assertRaises(FrameRejected, self.opened, [stream[0], stream[0]])
        self.assertRaises(FrameRejected, self.opened, [stream[0], stream[2]])

    def test_other_link_or_direction(self) -> None:
        """A frame sealed for another link, or for the other direction, is refused."""
        other = FrameSealer(link_keys(SECRET, "d" * 64, NS, "hA", "hB", True).send)
        self.assertRaises(FrameRejected, self.opened, [other.seal(FRAMES[0])])
        back = FrameSealer(link_keys(SECRET, NC, NS, "hA", "hB", False).send)
        self.assertRaises(FrameRejected, self.opened, [back.seal(FRAMES[0])])

    @fuzz_settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, junk: bytes) -> None:
        """Bytes that were not sealed with the key never open."""
        self.assertRaises(FrameRejected, self.opened, [junk])
