# -*- test-case-name: tests.test_linkauth -*-
"""
Every frame of a link between two holders of the cluster secret is
authenticated, under keys bound to that one link.

Keys. Once the handshake has proved the secret both ways (see
L{relaytx._handshake}), both ends derive two 32-byte keys, one per
direction, with HKDF-SHA256: the secret is the input keying material, the
two nonces of the handshake are the salt, and both node ids (dialler first)
are the context. A party that does not hold the secret cannot derive them,
and a handshake relayed by a man in the middle gives the relay nothing: it
sees the nonces, but the keys need the secret too. Keys are never reused:
each link's nonces are fresh.

Frames. After the handshake the frames of each direction go in
B{batches}: the frames one end writes at once (those its node sent while
it handled one read, see L{relaytx._frames}), at most L{MAX_BATCH} of them
and about L{SEND_BATCH_BYTES} (a receiver takes up to L{MAX_BATCH_BYTES});
a frame longer than L{MAX_BATCHED} is a batch of its own. The last frame
of a batch ends with one more member, C{"mac"}: the first 16 bytes, in
hex, of keyed BLAKE2b over the position on the link of the batch's first
frame (a 64-bit count of the frames sent that way, starting at 0, never
sent), then each frame of the batch in order, as its length (32 bits)
and its bytes, the last one as it would be without that member::

    {"type":"call",...,"ttl":10}
    {"type":"ping",...,"ttl":10,"mac":"3f0c...e1"}

A frame sent alone is a batch of one. Every frame is still one JSON object
(an original-design node would ignore the member, though such nodes never
hold a secret). The receiver holds the frames without a code until the one
with the code comes, recomputes the code for the positions it expects next,
compares in constant time, and only then hands the batch on, each frame as
it came (the envelope ignores members it does not know). So a frame that
was injected, altered, dropped and replaced, moved or replayed fails with
its batch, and the link is closed with 4003; TCP keeps order, so a gap can
only be an attack. Frames without a code past a batch's bounds, or held
longer than L{PENDING_TIMEOUT}, fail too.

One code per batch rather than per frame: a node that forwards calls writes
a dozen frames per read on a busy link, and a code costs several
microseconds in a node's process, a large part of what the secret costs.
"""

from __future__ import annotations

import hashlib
import hmac

from attrs import frozen
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Bytes of the code each batch of frames carries.
MAC_SIZE = 16

_HEAD = b',"mac":"'
_TAIL = b'"}'
#: What sealing adds to a frame's length.
OVERHEAD = len(_HEAD) + 2 * MAC_SIZE + len(_TAIL) - 1


class FrameRejected(Exception):
    """A frame on an authenticated link is not the one its sender sealed next."""


@frozen
class LinkKeys:
    """One end's keys: for the frames it sends, and for those it receives."""

    send: bytes
    receive: bytes


def link_keys(
    secret: bytes, dial_nonce: str, accept_nonce: str, dialler: str, acceptor: str, dialling: bool
) -> LinkKeys:
    """
    :param dialling: whether these are the dialler's keys (else the acceptor's).
    :returns: the keys of one end of the link the handshake with these
        nonces and ids opened.
    """
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=f"{dial_nonce}\n{accept_nonce}".encode(),
        info=f"relaytx link keys\n{dialler}\n{acceptor}".encode(),
    ).derive(secret)
    outbound, inbound = material[:32], material[32:]  # dialler -> acceptor, and back
    return LinkKeys(outbound, inbound) if dialling else LinkKeys(inbound, outbound)


#: The most frames in one batch, and (about) the most bytes: the sender
#: ends a batch with the frame that reaches either; the receiver refuses a
#: frame without a code that reaches either. A frame longer than
#: L{MAX_BATCHED} goes alone (after the batch under way), so a batch is
#: always written, and arrives, in a moment.
MAX_BATCH = 64
MAX_BATCH_BYTES = 16 * 1024
MAX_BATCHED = 4096

#: The bytes after which a sender ends a batch: well under the receiver's
#: L{MAX_BATCH_BYTES}, and under one read (C{relaytx._frames.READ_CHUNK},
#: 4 KiB). A receiver holds a batch's frames until the code comes, so a
#: batch spread over several reads holds up work it could already do; at 64
#: calls in flight on one link, ending batches at 3 KiB rather than 16 KiB
#: took direct calls from 0.77 to 1.01 of an open link's rate (median of
#: alternating rounds), at no cost in CPU per call.
SEND_BATCH_BYTES = 3 * 1024

#: Seconds frames without a code may wait for theirs (the rest of an
#: honest batch is on its way: it was written at once, and it is small).
#: Under the default C{peer_timeout} (1.25 s), so that a relay that strips
#: codes is caught as such (4003, counted) before the link is taken for dead.
PENDING_TIMEOUT = 1.0

#: Bytes from the start of the C{"mac"} member to the end of the frame.
_SUFFIX = len(_HEAD) + 2 * MAC_SIZE + len(_TAIL)


class _Counter:
    def __init__(self, key: bytes) -> None:
        # Keyed BLAKE2b's state after the key block, copied per batch: about
        # a third cheaper than keying anew each time.
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)
        self._position = 0


class FrameSealer(_Counter):
    """Seals the batches one end sends, in order."""

    def seal_batch(self, frames: list[bytes]) -> None:
        """
        Seal a batch: its last frame gets its C{"mac"} member, in place.

        :param frames: JSON objects, as C{wire.encode} makes them (each
            ends with C{"}"}), in the order they go.
        """
        h = self._keyed.copy()
        h.update(self._position.to_bytes(8, "big"))
        for frame in frames:
            h.update(len(frame).to_bytes(4, "big"))
            h.update(frame)
        self._position += len(frames)
        last = frames[-1]
        frames[-1] = last[:-1] + _HEAD + h.hexdigest().encode() + _TAIL

    def seal(self, frame: bytes) -> bytes:
        """:returns: C{frame} sealed as a batch of one."""
        batch = [frame]
        self.seal_batch(batch)
        return batch[0]


class FrameOpener(_Counter):
    """
    Checks the batches one end receives, in order.

    @ivar pending: the frames of the batch under way, not checked yet.
    """

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.pending: list[bytes] = []
        self._pending_bytes = 0
        #: the code of the batch under way, as far as it has come (see _start)
        self._hash = self._keyed

    def take(self, frame: bytes) -> list[bytes]:
        """
        :returns: the frames to decode now, as they came: none while a batch
            is under way; the whole batch once its last frame has come and
            its code holds (the envelope ignores the C{"mac"} member).
        :raises FrameRejected: if the batch is not the next one the sender
            sealed, or frames without a code pass a batch's bounds.
        """
        pending = self.pending
        h = self._hash if pending else self._start()
        cut = len(frame) - _SUFFIX
        if cut < 1 or not frame.startswith(_HEAD, cut) or not frame.endswith(_TAIL):
            h.update(len(frame).to_bytes(4, "big"))
            h.update(frame)
            pending.append(frame)
            self._pending_bytes += len(frame)
            if (
                len(pending) >= MAX_BATCH
                or self._pending_bytes >= MAX_BATCH_BYTES
                or len(frame) > MAX_BATCHED
            ):
                raise FrameRejected("frames without a code past a batch's bounds")
            return []
        h.update((cut + 1).to_bytes(4, "big"))
        h.update(memoryview(frame)[:cut])
        h.update(b"}")
        if not hmac.compare_digest(h.hexdigest().encode(), frame[cut + len(_HEAD) : -len(_TAIL)]):
            raise FrameRejected("frame code does not match")
        if not pending:
            self._position += 1
            return [frame]
        self._position += len(pending) + 1
        pending.append(frame)
        self.pending, self._pending_bytes = [], 0
        return pending

    @property
    def batch_start(self) -> int:
        """The position on the link of the first frame of the batch under way."""
        return self._position

    def _start(self) -> hashlib.blake2b:
        """Begin the code of a new batch, at the position it starts."""
        self._hash = h = self._keyed.copy()
        h.update(self._position.to_bytes(8, "big"))
        return h
