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

Frames. Each frame the link carries after the handshake ends with one more
member, C{"mac"}: the first 16 bytes, in hex, of keyed BLAKE2b over the
frame's position on the link (a 64-bit counter per direction, starting at
0, never sent) and the frame as it would be without that member::

    {"type":"ping",...,"ttl":10,"mac":"3f0c...e1"}

A frame is still one JSON object (an original-design node would ignore the
member, though such nodes never hold a secret). The receiver recomputes the
code for the position it expects next over the frame without the member,
compares in constant time, and decodes the frame as it came (the envelope
ignores members it does not know). So a frame that was injected, altered, dropped and
replaced, moved or replayed fails, and the link is closed with 4003; TCP
keeps order, so a gap can only be an attack.
"""

from __future__ import annotations

import hashlib
import hmac

from attrs import frozen
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Bytes of the code each frame carries.
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


class _Counter:
    def __init__(self, key: bytes) -> None:
        # Keyed BLAKE2b's state after the key block, copied per frame: about
        # a third cheaper than keying anew each time.
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)
        self._position = 0


#: Bytes from the start of the C{"mac"} member to the end of the frame.
_SUFFIX = len(_HEAD) + 2 * MAC_SIZE + len(_TAIL)


class FrameSealer(_Counter):
    """Seals the frames one end sends, in order."""

    def seal(self, frame: bytes) -> bytes:
        """
        :param frame: one JSON object, as C{wire.encode} makes it (it ends
            with C{"}"}).
        :returns: the frame with its C{"mac"} member.
        """
        # The code covers the frame as it is: the frame sealed, without its
        # "mac" member, is the same bytes.
        h = self._keyed.copy()
        h.update(self._position.to_bytes(8, "big"))
        h.update(frame)
        self._position += 1
        return frame[:-1] + _HEAD + h.hexdigest().encode() + _TAIL


class FrameOpener(_Counter):
    """Checks the frames one end receives, in order."""

    def open(self, frame: bytes) -> bytes:
        """
        :returns: the frame, to decode as it is (the envelope ignores the
            C{"mac"} member).
        :raises FrameRejected: if it is not the next frame the sender sealed.
        """
        cut = len(frame) - _SUFFIX
        if cut < 1 or not frame.startswith(_HEAD, cut) or not frame.endswith(_TAIL):
            raise FrameRejected("frame carries no code")
        h = self._keyed.copy()
        h.update(self._position.to_bytes(8, "big"))
        h.update(memoryview(frame)[:cut])
        h.update(b"}")
        self._position += 1
        if not hmac.compare_digest(h.hexdigest().encode(), frame[cut + len(_HEAD) : -len(_TAIL)]):
            raise FrameRejected("frame code does not match")
        return frame
