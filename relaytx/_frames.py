# -*- test-case-name: tests.test_frames -*-
"""
How relaytx's WebSocket connections (peer links and C{/ws/rpc}) move
bytes: Autobahn does the WebSocket protocol, and L{LeanMessages} takes
the shortest way through it for the frames a busy connection carries.

On a busy link nearly every frame is a whole text message of a few hundred
bytes. Autobahn handles each one in about two dozen Python calls: a frame
header object, a null masker, the buffer copied twice, message-begin,
frame-begin, frame-data, frame-end and message-end hooks, traffic counters:
a large share of a forwarding node's time. L{LeanMessages} hands such a
frame to C{onMessage} straight from the bytes read, and sends one as a
header and the payload in one write. Everything else (control frames,
fragments, compression, frames past a size limit, broken frames, a
connection that is closing, frames that must be masked on the way out)
goes to Autobahn, exactly as it arrived, at a frame boundary, so its
checks and its answers (1002, 1009, ...) stay the only ones.

Frames sent while a read is being handled (the answers to the calls it
brought, the calls a forwarding node passes on) are held per connection and
written once when the handling ends. Twisted puts nothing on the wire
before the reactor's next turn anyway, and each C{transport.write} on the
way costs Python work: a forwarding node handling a dozen frames per read
makes one write per link instead of a dozen. A connection holds at most
L{MAX_HELD_BYTES} so: past them, what it holds is written at once, where
the connection's flow control sees it (a stream whose generator never
waits sends all its items inside the read that asked for them).
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger

from relaytx._linkauth import MAX_BATCH, MAX_BATCHED, SEND_BATCH_BYTES, FrameSealer

#: Bytes a WebSocket connection reads from its socket per reactor turn.
#: Twisted reads up to 64 KiB at once; on a busy link that is hundreds of
#: frames, all handled before any answer is written, so the two ends of the
#: link take turns instead of working at the same time (each near half a
#: core, on two cores). A few KiB (a dozen calls or so) per turn lets the
#: answers leave while the next frames are still arriving (the README's
#: benchmark notes give the figures). A large message takes more turns, at
#: a few microseconds each.
READ_CHUNK = 4096

#: The largest frame payload the short path takes (the largest with a
#: 16-bit length). A longer frame goes to Autobahn, which streams it in
#: pieces instead of holding it whole until it is complete.
SHORT_FRAME = 0xFFFF

#: Bytes of frames a connection holds while a read is handled, at most;
#: past them they are written at once (see the module docstring).
MAX_HELD_BYTES = 64 * 1024

#: A short frame still arriving is held in at most this many pieces (joined
#: when there are more), so one sent a byte at a time costs no more memory
#: than its size.
_MAX_PIECES = 32

_OPEN = WebSocketProtocol.STATE_OPEN
#: The options Autobahn copies onto each connection, which LeanMessages copies.
_SERVER_OPTIONS = (*WebSocketProtocol.CONFIG_ATTRS_COMMON, *WebSocketProtocol.CONFIG_ATTRS_SERVER)
_CLIENT_OPTIONS = (*WebSocketProtocol.CONFIG_ATTRS_COMMON, *WebSocketProtocol.CONFIG_ATTRS_CLIENT)
_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_MASKED = 0x80


def tune_socket(transport: Any) -> None:
    """
    Make the TCP transport of a WebSocket connection (under its TLS layer,
    if any) read at most L{READ_CHUNK} bytes per reactor turn and send
    without Nagle's delay.

    Autobahn means to turn Nagle off itself, but asks before the protocol
    has its options, and the error is swallowed: a dialled link kept
    Nagle, and an answer written in pieces waited up to 40 ms for the
    other end's delayed acknowledgement.
    """
    while transport is not None:
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = READ_CHUNK
            if ITCPTransport.providedBy(transport):
                transport.setTcpNoDelay(True)
            return
        transport = getattr(transport, "transport", None)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """
    C{payload} XORed with the 4-byte C{mask} repeated (RFC 6455 5.3), as one
    big-integer XOR: about a microsecond for a small frame, where Autobahn's
    masker costs four to build and run.
    """
    size = len(payload)
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def frame_header(size: int, opcode: int = 1) -> bytes:
    """The header of an unmasked, final frame with a C{size}-byte payload."""
    if size <= 125:
        return bytes((0x80 | opcode, size))
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


class _HeldFrames:
    """
    The frames held while reads are handled (see the module docstring):
    how deep in the handling of reads we are, and the connections holding
    frames. One per process: a frame a read brings in may leave on any
    connection.
    """

    _log = Logger()

    def __init__(self) -> None:
        self.depth = 0
        self.holders: list[LeanMessages] = []

    def write_all(self) -> None:
        """
        Write every connection's held frames. One whose transport fails is
        logged and left to its own close: the read that ends here belongs
        to some other connection, which must not pay for it.
        """
        holders = self.holders
        while holders:
            connection = holders.pop()
            try:
                connection._write_held()
            except Exception:
                self._log.failure(
                    "writing frames to {peer}", peer=getattr(connection, "peer", None)
                )


_HELD = _HeldFrames()


class LeanMessages:
    """
    Mixed in ahead of Autobahn's protocol classes: whole messages in single
    frames go in and out without Autobahn's per-frame machinery (see the
    module docstring), and Autobahn's per-message work that relaytx has no
    use for is left out:

      - each message is also fired to Autobahn's observers ("message"
        listeners, which relaytx never registers) through a Deferred and a
        gather, a visible share of a node's time on a busy link;
      - every socket read and every frame sent builds the arguments of a
        debug log line (C{hltype}, C{hlval}), with debug logging off too;
      - every connection, as it opens, copies its factory's options onto
        itself and pretty-prints all of them (C{pprint.pformat}) for a debug
        line, logged or not: about 0.15 ms a connection (opening one took
        231 us, 75 us without it). L{connectionMade} copies them instead,
        and Autobahn is given none to copy or print (C{CONFIG_ATTRS}).

    Autobahn's traffic statistics (C{trafficStats}) do not count the frames
    that take the short path; relaytx keeps its own figures.
    """

    # Autobahn's, read here.
    state: int
    data: bytes
    current_frame: Any
    inside_message: bool
    failedByMe: bool
    message_data: list[bytes] | None
    message_is_binary: bool
    send_queue: Any
    transport: Any
    factory: Any
    _perMessageCompress: Any

    #: The start of a short frame that has not fully arrived, in pieces,
    #: with the size it will have once whole (see L{dataReceived}).
    _partial: list[bytes] | None = None
    _partial_size = 0
    _partial_needs = 0

    #: Frames sent while a read is handled, not written yet (L{_HELD}),
    #: and the bytes of their payloads.
    _held: list[bytes] | None = None
    _held_bytes = 0

    #: On a link that authenticates its frames, what seals each batch
    #: (L{relaytx._linkauth}); the frames of the batch under way, not
    #: sealed yet, and their bytes.
    _sealer: FrameSealer | None = None
    _unsealed: list[bytes] | None = None
    _unsealed_bytes = 0

    #: Whether anything was read since L{relaytx._flow.ConnectionWatch}'s
    #: last round (a flag, rather than the time of each read: no clock
    #: read per read).
    read_since_round = False

    #: The options Autobahn copies from the factory as a connection opens:
    #: none, so it prints none (see L{connectionMade}).
    CONFIG_ATTRS: tuple[str, ...] = ()

    def connectionMade(self) -> None:
        # The factory's options, copied as Autobahn copies them: each
        # one the connection does not set itself.
        factory = self.factory
        for name in _SERVER_OPTIONS if factory.isServer else _CLIENT_OPTIONS:
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        super().connectionMade()  # type: ignore[misc]  # Autobahn's, next in the MRO

    def connectionLost(self, reason: Any) -> None:
        # Autobahn leaves the wait for the answer to its close frame running
        # when the connection is lost without one (it finds the connection
        # closed when the wait ends): a timer of the reactor's own since
        # relaytx._wstimers, stopped here with the connection.
        waiting = getattr(self, "closeHandshakeTimeoutCall", None)
        if waiting is not None:
            self.closeHandshakeTimeoutCall = None
            waiting.cancel()
        super().connectionLost(reason)  # type: ignore[misc]

    def dataReceived(self, data: bytes) -> None:
        self.read_since_round = True
        held = _HELD
        held.depth += 1
        try:
            self._frames_received(data)
        finally:
            held.depth -= 1
            if not held.depth and held.holders:
                held.write_all()

    def _frames_received(self, data: bytes) -> None:
        partial = self._partial
        if partial is not None:
            partial.append(data)
            self._partial_size += len(data)
            if self._partial_size < self._partial_needs:
                if len(partial) >= _MAX_PIECES:  # a frame trickling in: keep one piece
                    self._partial = [b"".join(partial)]
                return
            data = b"".join(partial)
            self._partial = None
            self.short_frame_done()
        if (
            self.state != _OPEN
            or self.current_frame is not None
            or self.data
            or not self._short_frames_in()
        ):
            self._dataReceived(data)  # type: ignore[attr-defined]  # Autobahn's
            return
        self._receive_short(data)

    def _short_frames_in(self) -> bool:
        """Whether incoming frames may take the short path at all."""
        return (
            self._perMessageCompress is None
            and not self.inside_message
            and not self.utf8validateIncoming  # type: ignore[attr-defined]
            and not self.logFrames  # type: ignore[attr-defined]
            and not self.logOctets  # type: ignore[attr-defined]
            and not self.trackedTimings  # type: ignore[attr-defined]
            and self.applyMask  # type: ignore[attr-defined]
            and self.autoPingTimeoutCall is None  # type: ignore[attr-defined]
        )

    def _receive_short(self, data: bytes) -> None:
        """
        Hand each whole short message at the start of C{data} to
        C{onMessage}; what follows the last of them goes to Autobahn, or,
        when it is the start of a short frame, waits for the rest.
        """
        end = len(data)
        at = 0
        is_server = self.factory.isServer
        # Frames the other end must mask, and frames it must not: one that
        # breaks the rule goes to Autobahn, which fails the connection.
        must_mask = is_server and self.requireMaskedClientFrames  # type: ignore[attr-defined]
        may_mask = is_server or self.acceptMaskedServerFrames  # type: ignore[attr-defined]
        limit = SHORT_FRAME
        for cap in (self.maxFramePayloadSize, self.maxMessagePayloadSize):  # type: ignore[attr-defined]
            if 0 < cap < limit:
                limit = cap
        on_message = self.onMessage  # type: ignore[attr-defined]  # as Autobahn's _onMessage would
        while end - at >= 2:
            first = data[at]
            if first != _FIN_TEXT and first != _FIN_BINARY:
                break
            second = data[at + 1]
            size = second & 0x7F
            head = 2
            if size == 126:
                if end - at < 4:
                    self._wait(data, at, 4)
                    return
                size = (data[at + 2] << 8) | data[at + 3]
                if size < 126:  # not the shortest encoding: Autobahn's to refuse
                    break
                head = 4
            elif size == 127:
                break
            if size > limit:
                break
            if second & _MASKED:
                if not may_mask:
                    break
                head += 4
            elif must_mask:
                break
            stop = at + head + size
            if stop > end:
                self._wait(data, at, head + size)
                return
            payload = data[at + head : stop]
            if second & _MASKED:
                payload = unmask(payload, data[at + head - 4 : at + head])
            at = stop
            on_message(payload, first == _FIN_BINARY)
            if self.state != _OPEN:
                break
        else:
            if at < end:  # one byte of the next frame
                self._wait(data, at, 2)
            return
        if at < end:
            self._dataReceived(data[at:] if at else data)  # type: ignore[attr-defined]

    def _wait(self, data: bytes, at: int, needs: int) -> None:
        """Keep C{data[at:]}, the start of a short frame C{needs} bytes long."""
        rest = data[at:] if at else data
        self._partial = [rest]
        self._partial_size = len(rest)
        self._partial_needs = needs
        self.short_frame_begins(needs)

    def short_frame_begins(self, size: int) -> None:
        """A short frame of C{size} bytes began arriving, and waits for the rest."""

    def short_frame_done(self) -> None:
        """The short frame that waited (L{short_frame_begins}) is whole."""

    @property
    def unfinished_message(self) -> bool:
        """Whether a message (or a short frame) has begun arriving and not ended."""
        return self._partial is not None or getattr(self, "inside_message", False)

    def drop_message(self) -> None:
        """Let go of the pieces of a message that will never end (its connection is gone)."""
        self.message_data = None
        self._partial = None

    def onMessageEnd(self) -> None:
        data, self.message_data = self.message_data, None
        if not self.failedByMe and data is not None:
            self._onMessage(b"".join(data), self.message_is_binary)  # type: ignore[attr-defined]

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        if (
            len(payload) <= SHORT_FRAME
            and fragmentSize is None
            and not sync
            and self.state == _OPEN
            and self._short_frames_out()
        ):
            cap = self.maxMessagePayloadSize  # type: ignore[attr-defined]
            if not 0 < cap < len(payload):
                header = frame_header(len(payload), 2 if isBinary else 1)
                if _HELD.depth:
                    held = self._held
                    if held is None:
                        self._held = held = []
                        _HELD.holders.append(self)
                    held.append(header)
                    held.append(payload)
                    self._held_bytes += len(payload)
                    if self._held_bytes > MAX_HELD_BYTES:
                        self._write_held()
                else:
                    self.transport.write(header + payload)
                return
        super().sendMessage(  # type: ignore[misc]  # Autobahn's
            payload, isBinary, fragmentSize, sync, doNotCompress
        )

    def send_sealed(self, frame: bytes) -> None:
        """
        Send C{frame} on a link that authenticates its frames: frames sent
        while a read is handled make one batch, sealed when they are
        written (or when the batch is full); any other frame goes at once,
        after the batch under way, as a batch of its own.
        """
        sealer = self._sealer
        assert sealer is not None
        if (
            _HELD.depth
            and len(frame) <= MAX_BATCHED
            and self.state == _OPEN
            and self._short_frames_out()
        ):
            batch = self._unsealed
            if batch is None:
                self._unsealed = batch = []
                if self._held is None:
                    self._held = []
                    _HELD.holders.append(self)
            batch.append(frame)
            self._unsealed_bytes += len(frame)
            if len(batch) >= MAX_BATCH or self._unsealed_bytes >= SEND_BATCH_BYTES:
                self._seal_held()
                if self._held_bytes > MAX_HELD_BYTES:
                    self._write_held()
            return
        if self._unsealed:
            self._seal_held()
        self.sendMessage(sealer.seal(frame), isBinary=False)

    def _seal_held(self) -> None:
        """Seal the batch under way, and hold its frames for the write."""
        batch, self._unsealed, self._unsealed_bytes = self._unsealed, None, 0
        if not batch:
            return
        assert self._sealer is not None
        self._sealer.seal_batch(batch)
        held = self._held
        assert held is not None  # a batch is under way only while a read is handled
        for frame in batch:
            held.append(frame_header(len(frame)))
            held.append(frame)
            self._held_bytes += len(frame)

    def _short_frames_out(self) -> bool:
        """Whether outgoing messages may take the short path now."""
        if self.factory.isServer:
            masks = self.maskServerFrames  # type: ignore[attr-defined]
        else:
            masks = self.maskClientFrames  # type: ignore[attr-defined]
        return (
            not masks
            and not self.send_queue
            and self._perMessageCompress is None
            and not self.autoFragmentSize  # type: ignore[attr-defined]
            and not self.logFrames  # type: ignore[attr-defined]
            and not self.trackedTimings  # type: ignore[attr-defined]
        )

    def _write_held(self) -> None:
        if self._unsealed:
            self._seal_held()
        held, self._held, self._held_bytes = self._held, None, 0
        if held:
            self.transport.write(b"".join(held))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Every byte Autobahn writes comes through here: frames held before
        # it go first.
        if self._held or self._unsealed:
            self._write_held()
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]  # Autobahn's
        else:
            self.transport.write(data)
