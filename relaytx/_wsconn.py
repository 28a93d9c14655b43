# -*- test-case-name: tests.test_wsconn -*-
"""
One WebSocket connection from a program to a node's C{/ws/rpc}, on
asyncio, for L{relaytx.client}.

The WebSocket protocol is the C{websockets} package's: its sans-I/O
L{ClientProtocol} makes and checks the opening handshake and handles
everything unusual (fragments, close frames, oversized or broken frames,
with RFC 6455's close codes). The common frames take a short way around
it, as C{relaytx._frames} does on the node: a whole unmasked text frame
from the node is handed over as it is, pings and pongs are answered and
noted in place, and text frames to the node are built and masked here,
written once per turn of the event loop however many calls were sent in
it. The first frame the short way does not know (a close frame, a
fragment, anything broken) and everything after it goes through
C{websockets}, which then has the connection to itself.

A silent node is found by pings: the node is checked every
C{ping_interval} seconds, and pinged when no byte came from it since the
last check; after C{ping_timeout} more without one, the connection is
dropped. While the owner has paused reading (L{WebSocketChannel.pause_reading}),
the node's answers wait unread: the pings go on (so the node hears from
this end), but the node is judged only once reading is on again.

Pausing takes effect at once, between two messages of one read: what
the read brought after the message that paused it is kept, as bytes,
and handed over when reading resumes. So the owner sees no message
after it paused (on the short way; through C{websockets}, after a close
or a fragment, the rest of that read still comes).

A message accepted by L{WebSocketChannel.send} leaves with the others
of its turn; one that never left, because the connection ended first
(the node closed its end or sent a close frame, or the connection
dropped), is given back by L{WebSocketChannel.unwritten}: it certainly
never reached the node.
"""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  # a build without the C extension
    from websockets.utils import apply_mask

from relaytx import __version__

USER_AGENT = f"relaytx-client/{__version__}"

_TEXT, _CLOSE, _PING, _PONG = 0x81, 0x88, 0x89, 0x8A  # first bytes of final, unfragmented frames
_MASK_BATCH = 4096  # bytes of fresh random masks drawn at a time
#: The first two bytes of a masked frame of each short length, by first byte.
_SHORT_HEADS = {
    first: [bytes((first, 0x80 | length)) for length in range(126)]
    for first in (_TEXT, _PING, _PONG)
}


class ChannelError(ConnectionError):
    """
    A connection could not be opened, or was refused by the node.

    @ivar status: the HTTP status of a refused handshake (401, 403, ...),
        else C{None}.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChannelListener(Protocol):
    """What a channel tells its owner."""

    def message_received(self, payload: bytes) -> None:
        """One text message from the node arrived (its UTF-8 bytes)."""

    def channel_lost(self, channel: Any, reason: str) -> None:
        """The open connection C{channel} is gone, for C{reason} (one line)."""


def _refusal(url: str, response: Response) -> str:
    detail = ""
    try:
        body = orjson.loads(response.body or b"null")
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = f": {body['error']}"
    status = f"HTTP {response.status_code} {response.reason_phrase}"
    return f"{url} refused the connection: {status}{detail}"


def _unmasked(frame: bytes) -> bytes:
    """:returns: the payload of a whole masked frame this end built."""
    length, head = frame[1] & 0x7F, 2
    if length == 126:
        head = 4
    elif length == 127:
        head = 10
    return apply_mask(frame[head + 4 :], frame[head : head + 4])


class WebSocketChannel(asyncio.Protocol):
    """
    The client end of one connection (an asyncio protocol). Built and
    opened by L{open_channel}.
    """

    def __init__(
        self,
        url: str,
        listener: ChannelListener,
        headers: Iterable[tuple[str, str]],
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float,
    ) -> None:
        self.url = url
        self._ws = ClientProtocol(parse_uri(url), max_size=max_size)
        self._listener = listener
        self._headers = list(headers)
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flushing: asyncio.Handle | None = None
        self._fast = False  # frames take the short way (see the module docstring)
        self._buffer = bytearray()  # the start of a frame the short way waits to complete
        self._fragments: list[bytes] | None = None
        self._masks = b""
        self._mask_at = 0
        self._heard = True
        self._pinged = False
        self._timer: asyncio.TimerHandle | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._lost = False
        self._reason: str | None = None
        self._holding = False  # the owner paused reading (see pause_reading)
        self._ended = False  # the node closed its end, or EOF was written: no more writes
        self._unwritten: list[bytes] = []  # frames send() took that never left

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        request = self._ws.connect()
        for name, value in self._headers:
            request.headers[name] = value
        request.headers["User-Agent"] = USER_AGENT
        self._ws.send_request(request)
        transport.writelines(self._ws.data_to_send())

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._fast:
            self._read_fast(data)
        else:
            self._read_slow(data)

    def eof_received(self) -> bool:
        # The node closed its end: the connection is over. What send() took
        # and has not written yet stays unwritten (it is given back, see
        # unwritten()), and nothing more is taken: websockets has the rest.
        self._end_writing()
        self._fast = False
        self._ws.receive_eof()
        self._handle_events(self._ws.events_received())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._fast = False
        self._end_writing()
        for timer in (self._timer, self._closer):
            if timer is not None:
                timer.cancel()
        self._ws.receive_eof()
        reason = self._reason or self._close_reason(exc)
        if not self.opened.done():
            self.opened.set_exception(ChannelError(f"{self.url}: {reason} before the handshake"))
            return
        self._listener.channel_lost(self, reason)

    def _close_reason(self, exc: Exception | None) -> str:
        received = self._ws.close_rcvd
        if received is not None:
            reason = f" {received.reason}" if received.reason else ""
            return f"closed by the node ({received.code}{reason})"
        if exc is not None:
            return f"connection lost ({exc or type(exc).__name__})"
        return "connection closed"

    # Reading.

    def _read_fast(self, data: bytes) -> None:
        buffer = self._buffer
        if self._holding:  # (a transport may hand over a read it had already made)
            buffer += data
            return
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        end = len(view)
        at = 0
        deliver = self._listener.message_received
        slow = False
        while end - at >= 2:
            first, second = view[at], view[at + 1]
            if second & 0x80 or first not in (_TEXT, _PING, _PONG):
                slow = True  # masked, fragmented, closing, binary or reserved bits
                break
            length, head = second, 2
            if length == 126:
                if end - at < 4:
                    break
                length, head = (view[at + 2] << 8) | view[at + 3], 4
            elif length == 127:
                if end - at < 10:
                    break
                length, head = int.from_bytes(view[at + 2 : at + 10], "big"), 10
            if length > self._max_size or (first != _TEXT and length > 125):
                slow = True  # websockets closes with the right code
                break
            stop = at + head + length
            if stop > end:
                break
            payload = bytes(view[at + head : stop])
            at = stop
            if first == _TEXT:
                deliver(payload)
                if self._holding:
                    break  # the rest waits in the buffer until reading resumes
            elif first == _PING:
                self._send_frame(_PONG, payload)
        if buffer:
            del buffer[:at]
            rest: bytes | bytearray = buffer
        else:
            rest = data[at:]
            if rest and not slow:
                buffer += rest
        if slow:
            self._fast = False
            self._buffer = bytearray()
            if rest[0] == _CLOSE:
                # The node is closing: what send() took and has not written
                # stays unwritten (a node going away could run it and never
                # answer); it is given back (see unwritten()).
                self._end_writing()
            else:
                self._flush()  # what went out so far goes first
            self._read_slow(bytes(rest))

    def _read_slow(self, data: bytes) -> None:
        self._ws.receive_data(data)
        self._handle_events(self._ws.events_received())

    def _handle_events(self, events: list[Any]) -> None:
        opening = self._ws.state is not State.OPEN and not self.opened.done()
        for event in events:
            if isinstance(event, Response):
                self._opened(event, events)
            elif isinstance(event, Frame):
                self._frame(event)
        if opening and not self.opened.done() and self._ws.handshake_exc is not None:
            self.opened.set_exception(
                ChannelError(f"{self.url}: not a WebSocket endpoint ({self._ws.handshake_exc})")
            )
        self._write_protocol_data()

    def _opened(self, response: Response, events: list[Any]) -> None:
        exc = self._ws.handshake_exc
        if exc is not None:
            status = response.status_code if isinstance(exc, InvalidStatus) else None
            if status is not None:
                message = _refusal(self.url, response)
            else:
                message = f"{self.url}: bad WebSocket handshake ({exc})"
            self.opened.set_exception(ChannelError(message, status))
            return
        # The short way starts on a frame boundary: nothing but the answer
        # to the handshake has arrived.
        self._fast = len(events) == 1 and not self._ws.reader.buffer
        self.opened.set_result(None)
        self._schedule(self._ping_interval)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if opcode is Opcode.TEXT:
                self._fragments = []
            if self._fragments is None:  # websockets refuses this already
                return
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                payload, self._fragments = b"".join(self._fragments), None
                self._listener.message_received(payload)
        elif opcode is Opcode.BINARY:
            self._ws.fail(1003, "JSON-RPC messages are text")

    # Writing.

    def _send_frame(self, first: int, payload: bytes) -> None:
        length = len(payload)
        at = self._mask_at
        if at + 4 > len(self._masks):
            self._masks, at = os.urandom(_MASK_BATCH), 0
        self._mask_at = at + 4
        mask = self._masks[at : at + 4]
        if length < 126:
            head = _SHORT_HEADS[first][length]
        elif length < 65536:
            head = bytes((first, 0xFE)) + length.to_bytes(2, "big")
        else:
            head = bytes((first, 0xFF)) + length.to_bytes(8, "big")
        self._out.append(head + mask + apply_mask(payload, mask))
        if self._flushing is None:
            self._flushing = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = None
        out, self._out = self._out, []
        if self._ended:  # (cannot happen: _end_writing took _out; but never write after EOF)
            self._unwritten += out
        elif out and self._transport is not None and not self._lost:
            self._transport.write(b"".join(out))

    def _end_writing(self) -> None:
        """Write nothing more of what send() took: keep it as unwritten."""
        self._ended = True
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if self._out:
            self._unwritten += self._out
            self._out = []

    def _write_protocol_data(self) -> None:
        for data in self._ws.data_to_send():
            if self._transport is None or self._lost:
                return
            if data:
                self._transport.write(data)
            else:
                self._end_writing()
                if self._transport.can_write_eof():
                    self._transport.write_eof()
                else:
                    self._transport.close()

    def send(self, payload: bytes) -> None:
        """
        Send one text message (UTF-8 bytes); messages sent in one turn of
        the event loop leave together at its end.

        :raises ChannelError: if the connection is not open (or is ending:
            the message would never leave).
        """
        if self._lost or self._closer is not None or self._ended:
            raise ChannelError(f"{self.url}: the connection is closed")
        if not self._fast:
            if self._ws.state is not State.OPEN:
                raise ChannelError(f"{self.url}: the connection is not open")
            self._ws.send_text(payload)
            self._write_protocol_data()
            return
        self._send_frame(_TEXT, payload)

    def unwritten(self) -> list[bytes]:
        """
        :returns: the messages L{send} took that were never written, because
            the connection ended first (the node closed its end or sent a
            close frame, or the connection dropped): they certainly never
            reached the node.
            Meaningful once the listener has heard the channel is lost.
        """
        return [_unmasked(frame) for frame in self._unwritten if frame[0] == _TEXT]

    # Liveness and closing.

    def _schedule(self, delay: float | None) -> None:
        if delay is not None and not self._lost:
            self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        if self._heard:
            self._heard = self._pinged = False
            self._schedule(self._ping_interval)
        elif not self._pinged or self._holding:
            # (Not reading: the node's answer would wait unread. Ping on, so
            # the node hears from this end, and judge it once reading again.)
            self._pinged = True
            self._ping()
            self._schedule(self._ping_timeout)
        else:
            self.abort(f"the node answered no ping within {self._ping_timeout:g}s")

    def _ping(self) -> None:
        if self._fast:
            self._send_frame(_PING, b"relaytx")
        elif self._ws.state is State.OPEN:
            self._ws.send_ping(b"relaytx")
            self._write_protocol_data()

    def pause_reading(self) -> None:
        """
        Stop reading from the node (its messages wait in the network): no
        message is handed over after this one, until L{resume_reading}.
        """
        if self._transport is not None and not self._lost:
            self._holding = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the node again, starting with what a read brought and is held."""
        if not self._holding or self._transport is None or self._lost:
            return
        self._holding = False
        self._pinged = False  # the node's answers are read again: give it its time
        if not self._transport.is_reading():
            self._transport.resume_reading()
        if self._buffer and self._fast:
            self._loop.call_soon(self._read_held)

    def _read_held(self) -> None:
        if self._fast and not self._holding and not self._lost and self._buffer:
            self._read_fast(b"")

    def close(self, timeout: float = 2.0) -> None:
        """
        Close with code 1000; the connection is dropped if the node has
        not closed it within C{timeout} seconds. The listener hears of it.
        """
        if self._lost or self._closer is not None:
            return
        self._reason = "closed by this client"
        self._flush()
        if self._ws.state is State.OPEN:
            self._ws.send_close(1000)
            self._write_protocol_data()
        self._closer = self._loop.call_later(timeout, self.abort, self._reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once, for C{reason}."""
        if self._reason is None:
            self._reason = reason
        if self._transport is not None and not self._lost:
            self._transport.abort()


async def open_channel(
    url: str,
    listener: ChannelListener,
    *,
    headers: Iterable[tuple[str, str]] = (),
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    open_timeout: float = 10.0,
    max_size: int = 64 * 1024 * 1024,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
) -> WebSocketChannel:
    """
    Open a connection to the C{ws://} or C{wss://} address C{url}.

    :param headers: extra handshake headers (C{Authorization}).
    :param ssl: the TLS context for C{wss://} (the default context when
        C{None}); C{server_hostname} names the host its certificate must
        name, if not the URL's.
    :param max_size: the largest message accepted from the node.
    :returns: the open channel.
    :raises ChannelError: if it cannot be opened within C{open_timeout}
        seconds, or the node refuses it.
    """
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    channel = WebSocketChannel(url, listener, headers, max_size, ping_interval, ping_timeout)
    extra: dict[str, Any] = {}
    if uri.secure:
        extra["ssl"] = ssl if ssl is not None else _ssl.create_default_context()
        extra["server_hostname"] = server_hostname or uri.host
    try:
        async with asyncio.timeout(open_timeout):
            await loop.create_connection(lambda: channel, uri.host, uri.port, **extra)
            await channel.opened
    except TimeoutError:
        channel.abort("handshake timed out")
        raise ChannelError(f"{url}: no answer within {open_timeout:g}s") from None
    except ChannelError:
        channel.abort("handshake refused")
        raise
    except _ssl.SSLError as e:
        why = f"{e.reason or e}"
        verify_message = getattr(e, "verify_message", None)
        if verify_message:  # "certificate has expired", ...
            why = f"{verify_message} ({why})"
        raise ChannelError(f"{url}: TLS failed: {why}") from None
    except OSError as e:
        raise ChannelError(f"cannot connect to {url}: {e.strerror or e}") from None
    return channel
