#!/usr/bin/env python
"""
A load worker for C{benchmarks/scale.py --links}: holds many bare WebSocket
peer links to one relaytx node and answers its pings.

Started by scale.py (one process per source address), never by hand::

    python benchmarks/_scale_client.py --port P --src 127.0.0.2 --first 0 --count 2500

Each link is C{GET /ws/p2p?node_id=c<k>} from the source address C{--src}
(bound before connect, so several workers do not share one ephemeral port
range). A link acts as a bare client: it never sends C{registry_sync}; it
answers the node's C{ping} with a C{pong} in the seed's shape (echoing
C{data.timestamp}) and answers WebSocket-level pings and closes; everything
else it receives is only counted.

It talks to scale.py over stdin/stdout, one JSON object a line:

  - it prints C{{"event": "ready"}} once started;
  - C{go} starts opening the links (at most C{--concurrency} handshakes at
    a time, each retried up to C{--retries} times); C{{"event": "opened",
    ...}} follows when every link is open or has finally failed;
  - C{stats} prints the counters (C{{"event": "stats", ...}});
  - C{quit} (or end of stdin) closes every link and exits.

The loop is plain asyncio with a hand-written client side of RFC 6455 (text,
ping, pong and close frames; no extensions): a few KiB per link, so one
worker holds thousands of links without being the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import resource
import struct
import sys
import time
from typing import Any

import orjson

#: frame opcodes (RFC 6455 section 5.2)
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Stats:
    """Counters shared by every link of this worker."""

    def __init__(self) -> None:
        self.opened = 0
        self.failed = 0
        self.retries = 0
        self.closed = 0
        self.frames_in = 0
        self.bytes_in = 0  # WebSocket payload bytes
        self.wire_in = 0  # TCP bytes, headers included
        self.frames_out = 0
        self.bytes_out = 0
        self.wire_out = 0
        self.ws_pings = 0  # WebSocket-level pings (the hub's nudges of idle links)
        self.by_type: dict[str, int] = {}
        self.bytes_by_type: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.close_codes: dict[str, int] = {}
        self.handshake_s: list[float] = []

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        hs = sorted(self.handshake_s)
        return {
            "event": "stats",
            "t": time.monotonic(),
            "opened": self.opened,
            "failed": self.failed,
            "retries": self.retries,
            "closed": self.closed,
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "wire_in": self.wire_in,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "wire_out": self.wire_out,
            "ws_pings": self.ws_pings,
            "by_type": dict(self.by_type),
            "bytes_by_type": dict(self.bytes_by_type),
            "errors": dict(self.errors),
            "close_codes": dict(self.close_codes),
            "handshake_p50_ms": hs[len(hs) // 2] * 1000 if hs else None,
            "handshake_max_ms": hs[-1] * 1000 if hs else None,
            "cpu_s": sum(os.times()[:2]),
        }


def _frame(opcode: int, payload: bytes) -> bytes:
    """:returns: one masked client frame (fin set)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return head + mask + payload


class Link(asyncio.Protocol):
    """One bare peer link."""

    def __init__(self, worker: Worker, node_id: str) -> None:
        self.worker = worker
        self.stats = worker.stats
        self.node_id = node_id
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seq = 0
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.remote_id: str | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        w = self.worker
        request = (
            f"GET /ws/p2p?node_id={self.node_id} HTTP/1.1\r\n"
            f"Host: {w.host}:{w.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.stats.wire_in += len(data)
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake: {lines[0].decode(errors='replace')[:60]}")
                return
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-relaytx-node-id":
                    self.remote_id = value.strip().decode()
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if size - at < 2:
                    break
                n = struct.unpack_from("!H", buf, at)[0]
                at += 2
            elif n == 127:
                if size - at < 8:
                    break
                n = struct.unpack_from("!Q", buf, at)[0]
                at += 8
            if b1 & 0x80:  # a masked server frame is a protocol error; count it
                self.stats.error("masked server frame")
                at += 4
            if size - at < n:
                break
            payload = buf[at : at + n]
            pos = at + n
            self._frame(b0 & 0x0F, payload)
            if self.transport is None:
                return
        self.buffer = buf[pos:]

    def _frame(self, opcode: int, payload: bytes) -> None:
        stats = self.stats
        if opcode == OP_TEXT:
            stats.frames_in += 1
            stats.bytes_in += len(payload)
            try:
                message = orjson.loads(payload)
                kind = message.get("type", "?")
            except (orjson.JSONDecodeError, AttributeError):
                stats.error("bad frame")
                return
            stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
            stats.bytes_by_type[kind] = stats.bytes_by_type.get(kind, 0) + len(payload)
            if kind == "ping":
                self._pong(message)
        elif opcode == OP_PING:
            stats.ws_pings += 1
            self._send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            stats.close_codes[str(code)] = stats.close_codes.get(str(code), 0) + 1
            self._send(OP_CLOSE, payload[:2])
            self._drop()
        elif opcode != OP_PONG:
            stats.error(f"opcode {opcode}")

    def _pong(self, ping: dict[str, Any]) -> None:
        data = ping.get("data") or {}
        now = time.time()
        self.seq += 1
        pong = {
            "type": "pong",
            "id": f"{self.node_id}-{self.seq}",
            "from": self.node_id,
            "to": ping.get("from") or "hub",
            "data": {"timestamp": data.get("timestamp"), "pong_time": int(now)},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1e6):06d}Z",
            "route": [self.node_id],
            "ttl": 9,
            "reply_to": ping.get("id"),
        }
        self.stats.frames_out += 1
        payload = orjson.dumps(pong)
        self.stats.bytes_out += len(payload)
        self._send(OP_TEXT, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            frame = _frame(opcode, payload)
            self.stats.wire_out += len(frame)
            self.transport.write(frame)

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        self._drop()

    def _drop(self) -> None:
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.upgraded and self.opened.done() and self.opened.exception() is None
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before 101: {exc}"))
        elif was_open and not self.worker.quitting:
            self.stats.closed += 1
            self.worker.links.pop(self.node_id, None)


class Worker:
    """Opens and holds the links of node ids C{c<first>} .. C{c<first+count-1>}."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.host = args.host
        self.port = args.port
        self.src = args.src
        self.ids = [f"{args.prefix}{k}" for k in range(args.first, args.first + args.count)]
        self.concurrency = args.concurrency
        self.retries = args.retries
        self.stats = Stats()
        self.links: dict[str, Link] = {}
        self.quitting = False
        self.done = asyncio.Event()
        self.opening: asyncio.Task[None] | None = None

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
        sys.stdout.buffer.flush()

    async def open_one(self, node_id: str, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        async with gate:
            for attempt in range(self.retries + 1):
                started = time.monotonic()
                link = Link(self, node_id)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(
                            lambda link=link: link,  # type: ignore[misc]
                            self.host,
                            self.port,
                            local_addr=(self.src, 0),
                        ),
                        10,
                    )
                    await asyncio.wait_for(link.opened, 20)
                except (TimeoutError, OSError, ConnectionError) as e:
                    link._drop()
                    self.stats.error(f"{type(e).__name__}: {str(e)[:60]}")
                    if attempt < self.retries:
                        self.stats.retries += 1
                        await asyncio.sleep(0.2 * 2**attempt)
                        continue
                    self.stats.failed += 1
                    return
                self.stats.handshake_s.append(time.monotonic() - started)
                self.links[node_id] = link
                self.stats.opened += 1
                return

    async def open_all(self) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self.open_one(i, gate) for i in self.ids))
        self.emit(
            {
                "event": "opened",
                "seconds": time.monotonic() - started,
                "opened": self.stats.opened,
                "failed": self.stats.failed,
            }
        )

    def command(self, line: str) -> None:
        line = line.strip()
        if line == "go" and self.opening is None:
            self.opening = asyncio.ensure_future(self.open_all())
        elif line == "stats":
            self.emit(self.stats.snapshot())
        elif line == "quit":
            self.done.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        os.set_blocking(fd, False)
        pending = [b""]

        def readable() -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                loop.remove_reader(fd)
                self.done.set()
                return
            pending[0] += chunk
            *lines, pending[0] = pending[0].split(b"\n")
            for line in lines:
                self.command(line.decode())

        loop.add_reader(fd, readable)
        self.emit({"event": "ready", "pid": os.getpid()})
        await self.done.wait()
        self.quitting = True
        if self.opening is not None and not self.opening.done():
            self.opening.cancel()
            with contextlib.suppress(BaseException):
                await self.opening
        for link in list(self.links.values()):
            link._send(OP_CLOSE, struct.pack("!H", 1000))
            link._drop()
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--src", default="127.0.0.1", help="source address to bind")
    parser.add_argument("--prefix", default="c")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--retries", type=int, default=4)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    asyncio.run(Worker(args).run())


if __name__ == "__main__":
    main()
