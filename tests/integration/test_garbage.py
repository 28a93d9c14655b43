"""
Hostile input against a real node on 127.0.0.1: garbage bodies, content
types, chunked and stalled requests and oversized bodies on C{/rpc}, and
garbage frames on C{/ws/rpc} and C{/ws/p2p}, sent from a thread with raw
sockets or the C{websockets} sync client. After every barrage the node still
answers C{/health} and a good JSON-RPC call, and while it is under fire a
second node linked to it keeps getting its calls answered.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from relaytx._jsonrpc import MAX_BATCH
from relaytx.node import RelayNode

from .helpers import Counter, get_json, rpc, start_node, url, wait_for, ws

HOST = "127.0.0.1"
TIMEOUT = 10.0  # seconds any one socket operation may take
MiB = 1024 * 1024
JSONRPC_CODES = frozenset({-32700, -32600, -32601, -32602, -32603, *range(-32005, -31999)})
#: Slowest answer to a call between the two nodes while one is under fire.
MAX_LATENCY = 3.0


def _port(node: RelayNode) -> int:
    assert node.listening_port is not None
    port: int = node.listening_port.getHost().port
    return port


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# node.echo of params nested 1000 levels deep, and its answer, as bytes: the
# standard library's json cannot read them back (orjson can, up to 1024).
DEEP_ECHO = b'{"jsonrpc":"2.0","method":"node.echo","params":' + _deep(1000) + b',"id":1}'
DEEP_ANSWER = b'{"jsonrpc":"2.0","result":' + _deep(1000) + b',"id":1}'


# Raw HTTP.


def _read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    Read one HTTP response (the server closes the connection after it).
    Status 0 means no answer came before the socket's timeout.
    """
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            return 0, {}, data
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, {}, b""
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def _exchange(
    port: int, request: bytes, timeout: float = TIMEOUT
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send raw bytes and read the answer; the request should say C{Connection: close}."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early: read what it said
        return _read_response(sock)


def _post(
    port: int,
    body: bytes,
    path: bytes = b"/rpc",
    content_type: bytes | None = b"application/json",
    method: bytes = b"POST",
) -> tuple[int, dict[bytes, bytes], bytes]:
    headers = b"Host: %s\r\nConnection: close\r\nContent-Length: %d\r\n" % (
        HOST.encode(),
        len(body),
    )
    if content_type is not None:
        headers += b"Content-Type: " + content_type + b"\r\n"
    return _exchange(port, method + b" " + path + b" HTTP/1.1\r\n" + headers + b"\r\n" + body)


def _post_chunked(
    port: int, chunks: list[bytes], raw_tail: bytes | None = None, timeout: float = TIMEOUT
) -> Any:
    head = (
        b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    tail = b"0\r\n\r\n" if raw_tail is None else raw_tail
    return _exchange(port, head + body + tail, timeout)


def _rpc_answer(status: int, headers: dict[bytes, bytes], body: bytes) -> Any:
    """Check an HTTP answer is a JSON-RPC one and decode it."""
    assert status == 200, (status, body[:200])
    assert headers.get(b"content-type") == b"application/json", headers
    assert b"Traceback" not in body
    return json.loads(body)


def _error_code(answer: Any) -> int:
    assert isinstance(answer, dict), answer
    code: int = answer["error"]["code"]
    assert code in JSONRPC_CODES and isinstance(answer["error"]["message"], str), answer
    return code


def _request(method: str, params: Any = None, request_id: Any = 1) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


# Raw WebSocket.


def _ws_open(port: int, path: str) -> tuple[socket.socket, bytes]:
    """Open a WebSocket by hand; returns the socket and any bytes read past the 101."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"upgrade refused: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def _frame(
    opcode: int,
    payload: bytes,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame, masked as a client's must be (unless told otherwise)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_close_code(sock: socket.socket, buffered: bytes = b"") -> int | None:
    """Read frames until the server's close frame: its code, or None if the TCP closed first."""
    data = buffered
    with sock:
        while True:
            while len(data) >= 2:
                opcode, n = data[0] & 0x0F, data[1] & 0x7F
                offset = 2
                if n == 126:
                    n, offset = struct.unpack("!H", data[2:4])[0], 4
                elif n == 127:
                    n, offset = struct.unpack("!Q", data[2:10])[0], 10
                if len(data) < offset + n:
                    break
                payload, data = data[offset : offset + n], data[offset + n :]
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            data += chunk


def _ws_raw(port: int, path: str, frames: list[bytes]) -> int | None:
    """Send raw frames on a new WebSocket; returns the code the server closed it with."""
    sock, rest = _ws_open(port, path)
    try:
        for frame in frames:
            sock.sendall(frame)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return _ws_close_code(sock, rest)


def _ws_client_close_code(address: str, frame: str | bytes) -> int | None:
    """
    Send one frame with the websockets client; returns the server's close
    code. The server may close before the frame is all sent (it refuses a
    frame too large from its header): the send then fails like the reads.
    """
    with connect(address, open_timeout=TIMEOUT, max_size=None) as client:
        try:
            client.send(frame)
            while True:
                client.recv(timeout=TIMEOUT)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    return None


def _envelope(kind: str, data: Any, sender: str = "g1", to: str = "target", **extra: Any) -> str:
    return json.dumps({"type": kind, "from": sender, "to": to, "data": data, **extra})


DATA_KEYS = ("timestamp", "call", "response_id", "success", "servers", "routes")
DATA_KEYS += ("original_message", "result", "error", "error_code", "error_data")
DEEP_PING = '{"type":"ping","id":"deep","from":"g1","to":"target","data":{"timestamp":%s}}'
DEEP_PING = DEEP_PING.replace("%s", _deep(1000).decode())


class GarbageTests(TestCase):
    """A node under a barrage of garbage keeps serving everyone else."""

    timeout = 120

    async def _pair(self) -> tuple[RelayNode, RelayNode]:
        """Start the node under fire and a second node linked to it."""
        target = start_node(self, "target", servers={"counter": Counter()})
        other = start_node(self, "other", peers=[ws(target)])
        await wait_for(
            lambda: "other" in target.views.peers() and "target" in other.views.peers(),
            5.0,
            what="link",
        )
        return target, other

    async def _under_fire(
        self, target: RelayNode, other: RelayNode, barrage: Callable[..., Any], *args: Any
    ) -> Any:
        """
        Run C{barrage} in a thread while C{other} keeps calling C{target};
        every call must be answered within L{MAX_LATENCY} of wall-clock time.

        :returns: what the barrage returned.
        """
        d: Deferred[Any] = deferToThread(barrage, *args)
        latencies = []
        while not d.called:
            started = time.monotonic()
            await other.call("target", "counter", "get", timeout=MAX_LATENCY)
            latencies.append(time.monotonic() - started)
            await deferLater(reactor, 0.01, lambda: None)
        result = await d
        self.assertLess(max(latencies, default=0.0), MAX_LATENCY)
        await self._still_serving(target, other)
        return result

    async def _still_serving(self, target: RelayNode, other: RelayNode) -> None:
        """The node answers /health and a good call, and the other node's calls."""
        health = await get_json(url(target) + "/health")
        self.assertEqual((health["status"], health["node_id"]), ("healthy", "target"))
        before = await other.call("target", "counter", "get", timeout=5)
        self.assertEqual(
            await rpc(url(target), "counter.increment", [1]),
            {"jsonrpc": "2.0", "result": before + 1, "id": 1},
        )
        answer = await rpc(url(other), "target/counter.increment", [2], request_id="x")
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": before + 3, "id": "x"})
        self.assertIn("other", target.views.peers())

    async def test_rpc_garbage_bodies(self) -> None:
        """Random bytes, deep nesting, bad UTF-8 and odd JSON on /rpc get JSON-RPC errors."""
        target, other = await self._pair()
        port = _port(target)

        def barrage() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            rng = random.Random(2024)
            seen["random"] = [
                _error_code(_rpc_answer(*_post(port, rng.randbytes(rng.randrange(1, 3000)))))
                for _ in range(40)
            ]
            named = {
                "empty": b"",
                "open_brackets": b"[" * 100_000,
                "open_objects": b'{"a":' * 100_000,
                "too_deep": _deep(1025),
                "bad_utf8": b'{"jsonrpc":"2.0","method":"node.echo","params":["\xff\xfe"],"id":1}',
                "overlong_utf8": b'{"jsonrpc":"2.0","method":"node.echo","params":["\xc0\xaf"]}',
                "raw_surrogate": _request("node.echo", ["X"]).replace(b"X", b"\xed\xa0\x80"),
                "escaped_surrogate": _request("node.echo", ["\ud800"]),
                "nan": b'{"jsonrpc":"2.0","method":"node.echo","params":[NaN],"id":1}',
                "huge_float": b'{"jsonrpc":"2.0","method":"node.echo","params":[1e999],"id":1}',
                "truncated": _request("node.echo", [1])[:-3],
                "trailing": _request("node.echo", [1]) + b"}{",
                "nul": b"\x00" * 100,
                "utf16": _request("node.ping").decode().encode("utf-16"),
            }
            for name, body in named.items():
                seen[name] = _rpc_answer(*_post(port, body))
            for name, body in {
                "null": b"null",
                "string": b'"node.ping"',
                "number": b"12",
                "empty_batch": b"[]",
                "empty_object": b"{}",
                "bad_id": b'{"jsonrpc":"2.0","method":"node.ping","id":[1]}',
                "bad_version": b'{"jsonrpc":"1.0","method":"node.ping","id":1}',
            }.items():
                seen[name] = _rpc_answer(*_post(port, body))
            seen["deep_batch"] = _rpc_answer(*_post(port, _deep(1024)))
            seen["deep_echo"] = _post(port, DEEP_ECHO)
            seen["ones"] = _post(port, b"[" + b",".join([b"1"] * (MiB // 2 - 2)) + b"]")
            calls = [json.loads(_request("node.echo", [i], i)) for i in range(MAX_BATCH)]
            seen["full_batch"] = _rpc_answer(*_post(port, json.dumps(calls).encode()))
            return seen

        seen = await self._under_fire(target, other, barrage)
        self.assertTrue(set(seen["random"]) <= {-32700, -32600}, seen["random"])
        for name in (
            "empty",
            "open_brackets",
            "open_objects",
            "too_deep",
            "bad_utf8",
            "overlong_utf8",
            "raw_surrogate",
            "nan",
            "huge_float",
            "truncated",
            "trailing",
            "nul",
            "utf16",
        ):
            self.assertEqual((_error_code(seen[name]), seen[name]["id"]), (-32700, None), name)
        # An escaped lone surrogate is JSON (RFC 8259 8.2): echoed as it came.
        self.assertEqual(
            seen["escaped_surrogate"], {"jsonrpc": "2.0", "result": ["\ud800"], "id": 1}
        )
        for name in ("null", "string", "number", "empty_batch", "empty_object", "bad_id"):
            self.assertEqual((_error_code(seen[name]), seen[name]["id"]), (-32600, None), name)
        self.assertEqual((_error_code(seen["bad_version"]), seen["bad_version"]["id"]), (-32600, 1))
        [inner] = seen["deep_batch"]
        self.assertEqual(_error_code(inner), -32600)
        status, _, body = seen["deep_echo"]
        self.assertEqual((status, body), (200, DEEP_ANSWER))
        ones = _rpc_answer(*seen["ones"])
        self.assertEqual((_error_code(ones), ones["error"]["data"]["limit"]), (-32005, "max_batch"))
        self.assertEqual(
            [(a["id"], a["result"]) for a in seen["full_batch"]],
            [(i, [i]) for i in range(MAX_BATCH)],
        )

    async def test_rpc_content_types_and_methods(self) -> None:
        """Any content type is read as JSON; wrong methods and paths get 405, 404 and 400."""
        target, other = await self._pair()
        port = _port(target)

        def barrage() -> dict[str, Any]:
            good = _request("node.echo", ["ct"])
            seen: dict[str, Any] = {}
            for ct in (
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=xyz",
                b"application/json; charset=latin-1",
                b"\xff\xfe garbage/",
                None,
            ):
                seen[ct] = _rpc_answer(*_post(port, good, content_type=ct))
            seen["nul_header"] = _post(port, good, content_type=b"application/json\x00")
            seen["form"] = _rpc_answer(
                *_post(port, b"a=1&b=2", content_type=b"application/x-www-form-urlencoded")
            )
            # Bodies are never parsed as forms: no time spent, no 400.
            seen["form_flood"] = _rpc_answer(
                *_post(port, b"&" * (MiB - 1), content_type=b"application/x-www-form-urlencoded")
            )
            seen["multipart"] = _rpc_answer(
                *_post(
                    port,
                    b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--\r\n',
                    content_type=b"multipart/form-data; boundary=xyz",
                )
            )
            for method in (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"BREW"):
                seen[method] = _post(port, good, method=method)
            seen[b"HEAD"] = _post(port, b"", method=b"HEAD")
            for method in (b"OPTIONS", b"BREW", b"POST"):
                seen[b"health " + method] = _post(port, b"", path=b"/health", method=method)
            seen["sub_path"] = _post(port, good, path=b"/rpc/extra")
            seen["prefix"] = _post(port, good, path=b"/rpcx")
            seen["bad_request_line"] = _exchange(port, b"GARBAGE\r\n\r\n")
            seen["binary_line"] = _exchange(port, os.urandom(64) + b"\r\n\r\n")
            seen["long_header"] = _exchange(
                port, b"POST /rpc HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
            )
            seen["bad_length"] = _exchange(
                port, b"POST /rpc HTTP/1.1\r\nContent-Length: -5\r\nConnection: close\r\n\r\n"
            )
            seen["two_lengths"] = _exchange(
                port,
                b"POST /rpc HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 9\r\n"
                b"Connection: close\r\n\r\n{}",
            )
            return seen

        seen = await self._under_fire(target, other, barrage)
        for ct in (
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=xyz",
            b"application/json; charset=latin-1",
            b"\xff\xfe garbage/",
            None,
        ):
            self.assertEqual(seen[ct], {"jsonrpc": "2.0", "result": ["ct"], "id": 1}, ct)
        self.assertEqual(_error_code(seen["form"]), -32700)
        self.assertEqual(_error_code(seen["multipart"]), -32700)
        self.assertEqual(_error_code(seen["form_flood"]), -32700)
        for method in (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"BREW"):
            self.assertEqual(seen[method][0], 405, method)
            self.assertEqual(seen[method][1][b"allow"], b"POST")
            self.assertEqual(json.loads(seen[method][2])["status"], 405)
        self.assertEqual((seen[b"HEAD"][0], seen[b"HEAD"][2]), (405, b""))
        for method in (b"OPTIONS", b"BREW", b"POST"):
            status, _, body = seen[b"health " + method]
            self.assertEqual((status, json.loads(body)["status"]), (405, 405), method)
        self.assertEqual(seen["sub_path"][0], 404)
        self.assertEqual(seen["prefix"][0], 404)
        for name in (
            "nul_header",
            "bad_request_line",
            "binary_line",
            "long_header",
            "bad_length",
            "two_lengths",
        ):
            self.assertIn(seen[name][0], (0, 400), name)  # 400, or just closed

    async def test_rpc_chunked_bodies(self) -> None:
        """Chunked bodies are read whole, bounded by the body limit, and bad chunking is refused."""
        target, other = await self._pair()
        port = _port(target)

        def barrage() -> dict[str, Any]:
            good = _request("node.echo", ["chunked"])
            seen: dict[str, Any] = {}
            seen["three"] = _post_chunked(port, [good[:5], good[5:20], good[20:]])
            seen["bytewise"] = _post_chunked(port, [good[i : i + 1] for i in range(len(good))])
            seen["extension"] = _exchange(
                port,
                b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                + b"%x;name=value\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n"
                % (len(good), good),
            )
            seen["bad_size"] = _post_chunked(port, [], raw_tail=b"zz\r\n" + good + b"\r\n0\r\n\r\n")
            # A chunk announced as 2**160 bytes: the node reads on (discarding
            # past the limit) and never answers before the body ends; we give up.
            seen["huge_size"] = _post_chunked(
                port, [], raw_tail=b"f" * 40 + b"\r\n" + b" " * (2 * MiB), timeout=1.0
            )
            seen["short_chunk"] = _post_chunked(port, [], raw_tail=b"10\r\nabc\r\n0\r\n\r\n")
            seen["garbage_chunks"] = _post_chunked(port, [os.urandom(100) for _ in range(5)])
            seen["over_limit"] = _post_chunked(port, [b" " * 65536] * 33)
            return seen

        seen = await self._under_fire(target, other, barrage)
        for name in ("three", "bytewise", "extension"):
            self.assertEqual(
                _rpc_answer(*seen[name]), {"jsonrpc": "2.0", "result": ["chunked"], "id": 1}, name
            )
        self.assertIn(seen["bad_size"][0], (0, 400))
        # A body that stops short is closed at limits.header_timeout.
        self.assertIn(seen["short_chunk"][0], (0, 400, 408))
        self.assertIn(seen["huge_size"][0], (0, 400, 413))
        self.assertEqual(_error_code(_rpc_answer(*seen["garbage_chunks"])), -32700)
        status, _, body = seen["over_limit"]
        self.assertEqual((status, json.loads(body)["status"]), (413, 413))

    async def test_rpc_body_limit(self) -> None:
        """A body over 1 MiB gets 413 with a JSON body; one exactly at the limit is served."""
        target, other = await self._pair()
        port = _port(target)

        def barrage() -> dict[str, Any]:
            good = _request("node.echo", ["edge"])
            at_limit = good + b" " * (MiB - len(good))
            return {
                "two_mib": _post(port, b"[" + b"1," * (MiB - 1) + b"1]"),
                "at_limit": _post(port, at_limit),
                "one_over": _post(port, at_limit + b" "),
                "health_body": _post(port, b"x" * 2 * MiB, path=b"/health", method=b"GET"),
            }

        seen = await self._under_fire(target, other, barrage)
        for name in ("two_mib", "one_over", "health_body"):
            status, headers, body = seen[name]
            self.assertEqual(status, 413, name)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(json.loads(body), {"error": "request body too large", "status": 413})
        self.assertEqual(
            _rpc_answer(*seen["at_limit"]), {"jsonrpc": "2.0", "result": ["edge"], "id": 1}
        )

    async def test_rpc_stalled_and_slow(self) -> None:
        """Stalled requests hold no one up, and a body trickled in slowly is still answered."""
        target, other = await self._pair()
        port = _port(target)

        def stall() -> list[socket.socket]:
            socks = []
            for i in range(30):
                sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
                if i % 3 == 0:  # headers never finish
                    sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
                elif i % 3 == 1:  # the body never comes
                    sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: 1000\r\n\r\n[1,")
                else:  # a huge body is announced, then nothing
                    sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (100 * MiB))
                socks.append(sock)
            return socks

        stalled = await self._under_fire(target, other, stall)
        try:
            good = _request("node.echo", ["slow"])
            request = (
                b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(good), good)
            )
            slow = socket.create_connection((HOST, port), timeout=TIMEOUT)
            with slow:
                for i in range(0, len(request), len(request) // 6 + 1):
                    await deferToThread(slow.sendall, request[i : i + len(request) // 6 + 1])
                    await deferLater(reactor, 0.05, lambda: None)
                answer = _rpc_answer(*await deferToThread(_read_response, slow))
            self.assertEqual(answer, {"jsonrpc": "2.0", "result": ["slow"], "id": 1})
            await self._still_serving(target, other)
        finally:
            for sock in stalled:
                sock.close()
        await self._still_serving(target, other)

    async def test_ws_rpc_garbage(self) -> None:
        """Garbage on /ws/rpc gets JSON-RPC errors or a close, and other connections carry on."""
        target, other = await self._pair()
        port = _port(target)
        address = ws(target) + "/ws/rpc"

        def barrage() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            rng = random.Random(7)
            with connect(address, open_timeout=TIMEOUT, max_size=None) as client:

                def ask(frame: str) -> Any:
                    client.send(frame)
                    return json.loads(client.recv(timeout=TIMEOUT))

                seen["random"] = [
                    _error_code(ask("".join(chr(rng.randrange(32, 0x3000)) for _ in range(50))))
                    for _ in range(30)
                ]
                seen["not_json"] = ask("not json")
                seen["open_brackets"] = ask("[" * 100_000)
                client.send(DEEP_ECHO.decode())
                seen["deep_echo"] = client.recv(timeout=TIMEOUT)
                seen["empty_batch"] = ask("[]")
                seen["ones"] = ask("[" + ",".join(["1"] * (MAX_BATCH + 1)) + "]")
                client.send(json.dumps({"jsonrpc": "2.0", "method": "counter.get"}))  # no answer
                seen["good"] = ask(_request("node.echo", ["ws"], "w").decode())
            seen["binary"] = _ws_client_close_code(address, b"\x00\x01")
            seen["huge"] = _ws_client_close_code(address, "x" * (MiB + 1))
            seen["bad_utf8"] = _ws_raw(port, "/ws/rpc", [_frame(0x1, b"\xff\xfe\xfd")])
            seen["overlong_utf8"] = _ws_raw(port, "/ws/rpc", [_frame(0x1, b'["\xc0\xaf"]')])
            seen["bad_utf8_fragments"] = _ws_raw(
                port, "/ws/p2p?node_id=r8", [_frame(0x1, b"{", fin=False), _frame(0x0, b"\xff}")]
            )
            seen["unmasked"] = _ws_raw(port, "/ws/rpc", [_frame(0x1, b"[]", masked=False)])
            seen["huge_header"] = _ws_raw(port, "/ws/rpc", [_frame(0x1, b"", length=2**62)])
            return seen

        seen = await self._under_fire(target, other, barrage)
        self.assertTrue(set(seen["random"]) <= {-32700, -32600}, seen["random"])
        self.assertEqual(_error_code(seen["not_json"]), -32700)
        self.assertEqual(_error_code(seen["open_brackets"]), -32700)
        self.assertEqual(seen["deep_echo"], DEEP_ANSWER.decode())
        self.assertEqual(_error_code(seen["empty_batch"]), -32600)
        self.assertEqual(_error_code(seen["ones"]), -32005)
        self.assertEqual(seen["good"], {"jsonrpc": "2.0", "result": ["ws"], "id": "w"})
        self.assertEqual(seen["binary"], 1003)
        # Each closed with a close frame and its code, not by dropping TCP.
        self.assertEqual(seen["huge"], 1009)
        self.assertEqual(seen["bad_utf8"], 1007)
        self.assertEqual(seen["bad_utf8_fragments"], 1007)
        self.assertEqual(seen["overlong_utf8"], 1007)
        self.assertEqual(seen["unmasked"], 1002)
        self.assertEqual(seen["huge_header"], 1009)

    async def test_ws_p2p_garbage(self) -> None:
        """
        Garbage envelopes on a peer link are dropped and the link lives on;
        bad frames close only their own link, with the right code.
        """
        target, other = await self._pair()
        port = _port(target)
        base = ws(target) + "/ws/p2p?node_id="

        def barrage() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            rng = random.Random(11)
            junk: list[Any] = [None, True, -1, 2**70, 1.5, "", "x", [], {}, [1, {}], {"a": []}]
            kinds = ["ping", "pong", "server_call", "server_response", "registry_sync"]
            kinds += ["route_message", "chat", ""]
            with connect(base + "g1", open_timeout=TIMEOUT, max_size=None) as peer:
                for _ in range(200):
                    frame = {
                        key: rng.choice([*junk, rng.choice(kinds), "g1", "target", "other"])
                        for key in ("type", "from", "to", "id", "route", "ttl", "reply_to")
                        if rng.random() < 0.8
                    }
                    frame["data"] = {
                        key: rng.choice(junk) for key in DATA_KEYS if rng.random() < 0.5
                    }
                    peer.send(json.dumps(frame))
                shaped = [
                    _envelope("ping", {"timestamp": 1}, sender="other"),  # spoofed
                    _envelope("ping", {"timestamp": 1}, to="nowhere", ttl=2**40),
                    _envelope("server_call", {"call": {"server_name": "counter"}}),
                    _envelope(
                        "server_call",
                        {"call": {"server_name": "counter", "method": "increment", "args": "x"}},
                    ),
                    _envelope(
                        "server_call",
                        {
                            "call": {
                                "server_name": "nope",
                                "method": "x",
                                "args": [],
                                "timeout": 1e300,
                            },
                            "response_id": "r-nope",
                        },
                    ),
                    _envelope(
                        "server_call",
                        {
                            "call": {
                                "server_name": "counter",
                                "method": "increment",
                                "args": [],
                                "kwargs": {"self": 1, "by": 2},
                            },
                            "response_id": "r-self",
                        },
                    ),
                    _envelope("server_response", {"response_id": "never-sent", "success": True}),
                    _envelope("registry_sync", {"servers": {"s": {"methods": [1]}}}),
                    _envelope("registry_sync", {"servers": {}, "routes": {"x": {"path": ["y"]}}}),
                    _envelope(
                        "registry_sync",
                        {"servers": {}, "routes": {"target": {"path": ["target"]}}},
                    ),
                    _envelope("route_message", {"original_message": {"type": "ping"}}),
                    _envelope(
                        "route_message",
                        {
                            "original_message": json.loads(
                                _envelope("ping", {}, sender="zz", route=["zz", "g1"])
                            )
                        },
                    ),
                    DEEP_PING,
                    _envelope("ping", {"timestamp": "after"}, id="after"),
                ]
                for frame in shaped:
                    peer.send(frame)
                answers: dict[str, Any] = {}
                while "after" not in answers:
                    raw = peer.recv(timeout=TIMEOUT)
                    envelope = orjson.loads(raw)  # up to 1024 levels deep
                    if envelope["type"] in ("pong", "server_response"):
                        key = envelope.get("reply_to") or envelope["data"].get("response_id")
                        answers[key] = raw if key == "deep" else envelope
                seen["answers"] = answers
                seen["open"] = True
            for i, (name, frame) in enumerate(
                {
                    "not_json": "not json",
                    "list": "[1, 2]",
                    "binary": b"\x00\x01",
                    "huge": "x" * (MiB + 1),
                    "random_text": "".join(chr(rng.randrange(1, 0xD800)) for _ in range(200)),
                }.items()
            ):
                seen[name] = _ws_client_close_code(base + f"g-{i}", frame)
            seen["bad_utf8"] = _ws_raw(port, "/ws/p2p?node_id=r1", [_frame(0x1, b"\xff\xfe")])
            seen["unmasked"] = _ws_raw(
                port, "/ws/p2p?node_id=r2", [_frame(0x1, b"{}", masked=False)]
            )
            seen["opcode"] = _ws_raw(port, "/ws/p2p?node_id=r3", [_frame(0x3, b"x")])
            seen["rsv"] = _ws_raw(port, "/ws/p2p?node_id=r4", [_frame(0x1, b"{}", rsv=4)])
            seen["huge_header"] = _ws_raw(
                port, "/ws/p2p?node_id=r5", [_frame(0x1, b"", length=2**62)]
            )
            seen["long_ping"] = _ws_raw(port, "/ws/p2p?node_id=r6", [_frame(0x9, b"p" * 126)])
            seen["stray_continuation"] = _ws_raw(port, "/ws/p2p?node_id=r7", [_frame(0x0, b"x")])
            return seen

        seen = await self._under_fire(target, other, barrage)
        answers = seen["answers"]
        self.assertEqual(answers["after"]["data"]["timestamp"], "after")
        self.assertIn('"timestamp":' + _deep(1000).decode(), answers["deep"])
        self.assertEqual(answers["r-nope"]["data"]["success"], False)
        self.assertEqual(answers["r-self"]["data"]["error_code"], -32602)
        self.assertEqual(seen["not_json"], 1007)
        self.assertEqual(seen["list"], 1007)
        self.assertEqual(seen["random_text"], 1007)
        self.assertEqual(seen["binary"], 1003)
        self.assertEqual(seen["huge"], 1009)
        self.assertEqual(seen["bad_utf8"], 1007)
        for name in ("unmasked", "opcode", "rsv", "long_ping", "stray_continuation"):
            self.assertEqual(seen[name], 1002, name)
        self.assertEqual(seen["huge_header"], 1009)
        await wait_for(
            lambda: set(target.views.peers()) == {"other"}, 5.0, what="bad links to close"
        )
        dropped = target.metrics.registry.get_sample_value
        self.assertGreater(dropped("relaytx_messages_dropped_total", {"reason": "bad_field"}), 0)
        self.assertGreater(dropped("relaytx_messages_dropped_total", {"reason": "spoofed"}), 0)
        # The links Autobahn failed are counted too, each under its cause.
        for reason, count in {"too_large": 2, "websocket_protocol": 5}.items():
            self.assertEqual(
                dropped("relaytx_messages_dropped_total", {"reason": reason}), count, reason
            )
