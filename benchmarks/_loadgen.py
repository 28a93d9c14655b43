"""
Lean load generators for the benchmarks: single-threaded epoll loops over
non-blocking sockets, with pre-encoded requests, so that the client costs
far less CPU than the server it drives.

  - L{http_load}: N keep-alive HTTP/1.1 connections, one request
    outstanding on each (N in flight).
  - L{ws_load}: one WebSocket connection with N messages in flight
    (pipelined), answers matched by count (each request gets one answer).

Both return C{{"requests", "errors", "seconds", "per_s", "p50_ms",
"p99_ms", "client_cpu_s"}} over the C{duration} seconds after C{warmup}.
"""

from __future__ import annotations

import base64
import errno
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"

#: Header lines (each ending in CRLF) every request carries, such as a
#: bearer token's C{Authorization} (C{benchmarks/run.py --token}).
EXTRA_HEADERS = ""


def percentile_ms(ordered: list[float], p: float) -> float | None:
    """:returns: the C{p} quantile of C{ordered} seconds, in ms (C{None} if empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def _summary(latencies: list[float], errors: int, duration: float, cpu: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": duration,
        "per_s": len(latencies) / duration,
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "client_cpu_s": cpu,
    }


def http_load(
    port: int,
    connections: int,
    warmup: float,
    duration: float,
    body: Callable[[int], bytes],
    check: Callable[[bytes], bool],
    path: str = "/rpc",
) -> dict[str, Any]:
    """
    POST C{body(k)} to C{path} on C{connections} keep-alive connections.

    :param check: says whether an answer body is a success.
    """
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{EXTRA_HEADERS}"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()

    def request(k: int) -> bytes:
        payload = body(k)
        return b"%s%d\r\n\r\n%s" % (head, len(payload), payload)

    perf = time.perf_counter
    poll = select.epoll()
    socks: dict[int, socket.socket] = {}
    sent_at: dict[int, float] = {}
    buffers: dict[int, bytes] = {}
    counter = 0
    latencies: list[float] = []
    errors = 0

    def send(fd: int) -> None:
        nonlocal counter
        counter += 1
        sent_at[fd] = perf()
        socks[fd].sendall(request(counter))

    for _ in range(connections):
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        buffers[s.fileno()] = b""
        poll.register(s.fileno(), select.EPOLLIN)
    start = perf()  # once every connection is up
    measure_from = start + warmup
    stop_at = measure_from + duration
    cpu0 = time.process_time()
    for fd in list(socks):
        send(fd)

    while True:
        now = perf()
        if now >= stop_at:
            break
        for fd, _ in poll.poll(0.5):
            try:
                chunk = socks[fd].recv(262144)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    continue
                raise
            if not chunk:
                raise RuntimeError("server closed a connection")
            data = buffers[fd] + chunk
            while True:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    break
                header = data[:end]
                length = 0
                for line in header.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                total = end + 4 + length
                if len(data) < total:
                    break
                answer = data[end + 4 : total]
                data = data[total:]
                done = perf()
                if sent_at[fd] >= measure_from and done <= stop_at:
                    if header.startswith(b"HTTP/1.1 200") and check(answer):
                        latencies.append(done - sent_at[fd])
                    else:
                        errors += 1
                send(fd)
            buffers[fd] = data
    cpu = time.process_time() - cpu0
    for s in socks.values():
        s.close()
    poll.close()
    return _summary(latencies, errors, duration, cpu)


def _ws_frame(payload: bytes) -> bytes:
    """A masked text frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    # XOR with the repeating mask, as one big integer: fast at these sizes.
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big") if length else b""
    return header + mask + masked


def ws_load(
    port: int,
    path: str,
    inflight: int,
    warmup: float,
    duration: float,
    message: Callable[[int], bytes],
    check: Callable[[bytes], bool],
) -> dict[str, Any]:
    """
    Keep C{inflight} messages outstanding on one WebSocket to C{path};
    every message is answered by exactly one message, in order.
    """
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{EXTRA_HEADERS}Upgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("WebSocket upgrade refused")
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"WebSocket upgrade refused: {head[:80]!r}")
    s.setblocking(False)
    poll = select.epoll()
    poll.register(s.fileno(), select.EPOLLIN)

    perf = time.perf_counter
    sent: deque[float] = deque()
    counter = 0
    latencies: list[float] = []
    errors = 0
    start = perf()
    measure_from = start + warmup
    stop_at = measure_from + duration
    cpu0 = time.process_time()

    def next_frame() -> bytes:
        nonlocal counter
        counter += 1
        sent.append(perf())
        return _ws_frame(message(counter))

    # Like any pipelining client (Autobahn's, through Twisted), the frames
    # that one read's answers call for leave in one write.
    s.sendall(b"".join(next_frame() for _ in range(inflight)))
    buffer = data
    while perf() < stop_at:
        for _fd, _ in poll.poll(0.5):
            try:
                chunk = s.recv(1048576)
            except BlockingIOError:
                continue
            if not chunk:
                raise RuntimeError("server closed the WebSocket")
            buffer += chunk
        outgoing: list[bytes] = []
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length = struct.unpack("!H", buffer[2:4])[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length = struct.unpack("!Q", buffer[2:10])[0]
                offset = 10
            if len(buffer) < offset + length:
                break
            payload = buffer[offset : offset + length]
            buffer = buffer[offset + length :]
            if opcode == 0x8:
                raise RuntimeError(f"server closed the WebSocket: {payload[:80]!r}")
            if opcode != 0x1:
                continue
            sent_time = sent.popleft()
            done = perf()
            if sent_time >= measure_from and done <= stop_at:
                if check(payload):
                    latencies.append(done - sent_time)
                else:
                    errors += 1
            outgoing.append(next_frame())
        if outgoing:
            s.sendall(b"".join(outgoing))
    cpu = time.process_time() - cpu0
    s.close()
    poll.close()
    return _summary(latencies, errors, duration, cpu)
