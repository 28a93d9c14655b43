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
    """Each batch of frames carries a code for its frames and their place on the link."""

    def test_round_trip(self) -> None:
        """Sealed frames open, in order; each is what was sealed plus a last member, "mac"."""
        sealer, opener = pair()
        for frame in FRAMES:
            sealed = sealer.seal(frame)
            self.assertEqual(len(sealed), len(frame) + OVERHEAD)
            [opened] = opener.take(sealed)
            self.assertEqual(without_mac(opened), json.loads(frame))
            self.assertEqual(list(json.loads(sealed))[-1], "mac")
            self.assertEqual(len(json.loads(sealed)["mac"]), 2 * MAC_SIZE)

    def test_batches(self) -> None:
        """
        A batch's frames are held until its last, which carries the code,
        and then handed on together, in order; batches follow each other.
        """
        sealer, opener = pair()
        first, second = list(FRAMES[:3]), list(FRAMES[3:])
        sealer.seal_batch(first)
        sealer.seal_batch(second)
        self.assertEqual(first[:2], list(FRAMES[:2]))  # only the last is changed
        self.assertEqual(opener.take(first[0]), [])
        self.assertEqual(opener.take(first[1]), [])
        self.assertEqual(opener.pending, first[:2])
        self.assertEqual(opener.take(first[2]), first)
        self.assertEqual(opener.pending, [])
        self.assertEqual(opener.take(second[0]), [])
        self.assertEqual(opener.take(second[1]), second)
        [alone] = opener.take(sealer.seal(FRAMES[0]))
        self.assertEqual(without_mac(alone), json.loads(FRAMES[0]))

    def test_same_frame_new_code(self) -> None:
        """The same frame sealed twice carries two codes: its place is in the code."""
        sealer, _ = pair()
        self.assertNotEqual(sealer.seal(FRAMES[0]), sealer.seal(FRAMES[0]))

    def opened(self, stream: list[bytes]) -> list[bytes]:
        """:returns: the frames of C{stream} one opener hands on."""
        _, opener = pair()
        return [frame for sent in stream for frame in opener.take(sent)]

    def test_unsealed(self) -> None:
        """
        A frame without a code (injected by someone without the keys) is
        never handed on, and the next code fails.
        """
        sealer, _ = pair()
        for junk in (FRAMES[0], b"}", b""):
            self.assertEqual(self.opened([junk]), [])
            self.assertRaises(FrameRejected, self.opened, [junk, sealer.seal(FRAMES[1])])
        _, opener = pair()
        genuine = pair()[0].seal(FRAMES[1])
        self.assertEqual(opener.take(FRAMES[0]), [])
        self.assertRaises(FrameRejected, opener.take, genuine)

    def test_bounds(self) -> None:
        """
        A sender ends its batches within the bounds; frames without a code
        past them are refused at once.
        """
        from relaytx._linkauth import MAX_BATCH, MAX_BATCH_BYTES, MAX_BATCHED

        _, opener = pair()
        for _ in range(MAX_BATCH - 1):
            self.assertEqual(opener.take(FRAMES[0]), [])
        self.assertRaises(FrameRejected, opener.take, FRAMES[0])

        def frame(size: int) -> bytes:
            return b'{"data":"' + b"a" * (size - 11) + b'"}'

        _, opener = pair()
        self.assertEqual(len(frame(MAX_BATCHED)), MAX_BATCHED)
        for _ in range(MAX_BATCH_BYTES // MAX_BATCHED - 1):
            self.assertEqual(opener.take(frame(MAX_BATCHED)), [])
        self.assertRaises(FrameRejected, opener.take, frame(MAX_BATCHED))
        _, opener = pair()
        self.assertRaises(FrameRejected, opener.take, frame(MAX_BATCHED + 1))

    def test_altered(self) -> None:
        """
        Changing any byte of a sealed frame, or of a frame of its batch, is
        noticed by the time the next batch comes, and nothing of it is
        handed on.
        """
        sealer, _ = pair()
        batch = list(FRAMES[:2])
        sealer.seal_batch(batch)
        after = sealer.seal(FRAMES[2])
        for which in range(2):
            for at in range(len(batch[which])):
                altered = list(batch)
                changed = bytearray(altered[which])
                changed[at] ^= 0x01
                altered[which] = bytes(changed)
                self.assertEqual(self._handed_before_failing([*altered, after]), [])

    def _handed_before_failing(self, stream: list[bytes]) -> list[bytes]:
        """:returns: what an opener hands on of C{stream} before it fails (it must)."""
        _, opener = pair()
        handed = []
        for sent in stream:
            try:
                handed.extend(opener.take(sent))
            except FrameRejected:
                return handed
        raise self.failureException(f"{stream!r} opened")

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

    def test_batch_reordered_split_or_joined(self) -> None:
        """
        Within a batch too: frames swapped, left out, repeated, split
        differently or sent as another batch's are noticed.
        """
        sealer, _ = pair()
        batch = list(FRAMES[:3])
        sealer.seal_batch(batch)
        a, b, c = batch
        for forged in ([b, a, c], [a, c], [a, a, b, c], [c], [a + b[:1], b[1:], c]):
            self.assertRaises(FrameRejected, self.opened, forged)
        # The first two frames, then the last, sealed by other batches: the
        # code says where its batch starts.
        other, _ = pair()
        head = [FRAMES[0], FRAMES[1]]
        other.seal_batch(head)
        tail = other.seal(FRAMES[2])
        self.assertRaises(FrameRejected, self.opened, [a, b, tail])

    def test_other_link_or_direction(self) -> None:
        """A frame sealed for another link, or for the other direction, is refused."""
        other = FrameSealer(link_keys(SECRET, "d" * 64, NS, "hA", "hB", True).send)
        self.assertRaises(FrameRejected, self.opened, [other.seal(FRAMES[0])])
        back = FrameSealer(link_keys(SECRET, NC, NS, "hA", "hB", False).send)
        self.assertRaises(FrameRejected, self.opened, [back.seal(FRAMES[0])])

    @fuzz_settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, junk: bytes) -> None:
        """Bytes that were not sealed with the key are never handed on, with or without a code."""
        sealer, _ = pair()
        try:
            handed = self.opened([junk, sealer.seal(FRAMES[0])])
        except FrameRejected:
            return
        self.fail(f"{junk!r} handed on {handed}")
