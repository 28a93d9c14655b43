"""
The persistent JSON-RPC entry, C{/ws/rpc}, on a real socket, driven by
C{examples/ws_client.py}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import websockets.exceptions
import websockets.sync.client
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaytx import Server, exposed
from tests.support import Slow

from .helpers import EXAMPLES, rpc, start_node, url, wait_for
from .test_garbage import _frame, _ws_open


class Ticker(Server):
    """An endless stream, counting the items it made."""

    def __init__(self) -> None:
        self.made = 0

    @exposed
    async def ticks(self) -> AsyncIterator[int]:
        while True:
            self.made += 1
            yield self.made


class Heavy(Server):
    """Endless streams of items of any size, counting the items they made."""

    def __init__(self) -> None:
        self.made = 0

    @exposed(concurrent=True)
    async def items(self, size: int) -> AsyncIterator[str]:
        while True:
            self.made += 1
            yield "x" * size


class Big(Server):
    """Results of any size, at once or later."""

    @exposed
    def now(self, size: int) -> str:
        return "x" * size

    @exposed
    async def later(self, size: int) -> str:
        return "y" * size

    @exposed
    def fail_now(self, size: int) -> None:
        raise ValueError("z" * size)

    @exposed
    async def fail_later(self, size: int) -> None:
        raise ValueError("z" * size)


class WsRpcTests(TestCase):
    """Many calls in flight on one WebSocket, answered by id."""

    timeout = 60

    async def test_example_client(self) -> None:
        """The example client's 500 pipelined increments all succeed and count to 500."""
        node = start_node(self, "ws1")
        node.load_app(os.path.join(EXAMPLES, "counter.py"))
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "ws_client.py"), address, "500"],
                capture_output=True,
                text=True,
                timeout=30,
            )

        done = await deferToThread(run)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("500 calls", done.stdout)
        self.assertIn("0 errors", done.stdout)
        self.assertIn("last count: 500", done.stdout)
        answer = await rpc(url(node), "counter_server.get")
        self.assertEqual(answer["result"], 500)

    async def test_cancel_request_in_batch(self) -> None:
        """
        A C{$/cancelRequest} inside a batch cancels as one alone does: an
        earlier request, or one of its own batch; none of them is answered.
        """
        slow = Slow()
        node = start_node(self, "ws3", servers={"slow": slow})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def cancel(request_id: int) -> dict[str, object]:
            return {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}}

        def request(request_id: int, method: str) -> dict[str, object]:
            return {"jsonrpc": "2.0", "method": method, "id": request_id}

        def talk() -> list[object]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send(json.dumps(request(7, "slow.wait")))
                conn.send(json.dumps([cancel(7)]))
                first = json.loads(conn.recv(timeout=5))
                conn.send(json.dumps([request(8, "slow.wait"), cancel(8)]))
                second = json.loads(conn.recv(timeout=5))
                conn.send(json.dumps(request(9, "node.ping")))
                third = json.loads(conn.recv(timeout=5))
                return [first, second, third]

        first, second, third = await deferToThread(talk)
        self.assertEqual(first["id"], 7)
        self.assertEqual(first["error"]["code"], -32800)
        [eighth] = second
        self.assertEqual((eighth["id"], eighth["error"]["code"]), (8, -32800))
        self.assertEqual(third["id"], 9)
        self.assertIn("result", third)

    async def test_cancel_request_wide_id(self) -> None:
        """
        A request whose integer id is wider than 64 bits is cancelled by
        that id, alone or in a batch, and answered -32800 under it exactly.
        """
        slow = Slow()
        node = start_node(self, "ws6", servers={"slow": slow})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"
        wide = [123456789012345678901234567890, -(2**70) - 1]

        def talk() -> list[bytes | str]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                answers = []
                for request_id, batch in zip(wide, (False, True), strict=True):
                    # (Written by hand: the ids must reach the node as integers, unrounded.)
                    conn.send(f'{{"jsonrpc":"2.0","method":"slow.wait","id":{request_id}}}')
                    params = f'{{"id":{request_id}}}'
                    cancel = f'{{"jsonrpc":"2.0","method":"$/cancelRequest","params":{params}}}'
                    conn.send(f"[{cancel}]" if batch else cancel)
                    answers.append(conn.recv(timeout=5))
                return answers

        for request_id, raw in zip(wide, await deferToThread(talk), strict=True):
            self.assertIn(b'"id":%d' % request_id, raw.encode() if isinstance(raw, str) else raw)
            self.assertEqual(json.loads(raw)["error"]["code"], -32800)
        self.assertEqual([d.called for d in slow.waiting], [True, True])  # cancelled there

    async def test_invalid_cancel_request(self) -> None:
        """
        A C{$/cancelRequest} or C{$/streamCredit} that is no valid request
        (no C{"jsonrpc": "2.0"}) is answered -32600 with id null, as by
        POST /rpc, and cancels nothing.
        """
        slow = Slow()
        node = start_node(self, "ws9", servers={"slow": slow})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def talk() -> list[Any]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send('{"jsonrpc":"2.0","method":"slow.wait","id":"x"}')
                answers = []
                for message in (
                    '{"method":"$/cancelRequest","params":{"id":"x"}}',
                    '{"jsonrpc":"1.0","method":"$/cancelRequest","params":{"id":"x"}}',
                    '{"jsonrpc":"1.0","method":"$/streamCredit","params":{"id":"x","window":2}}',
                ):
                    conn.send(message)
                    answers.append(json.loads(conn.recv(timeout=5)))
                # Had one cancelled "x", its -32800 would come before this.
                conn.send('{"jsonrpc":"2.0","method":"node.ping","id":"p"}')
                answers.append(json.loads(conn.recv(timeout=5)))
                return answers

        *refused, ping = await deferToThread(talk)
        for answer in refused:
            self.assertEqual((answer["error"]["code"], answer["id"]), (-32600, None))
        self.assertEqual(ping["id"], "p")

    async def test_cancel_request_escaped(self) -> None:
        """
        A C{$/cancelRequest} whose method name is escaped, as some JSON
        writers do (PHP writes a slash as backslash-slash), is the same
        notification: it cancels.
        """
        slow = Slow()
        node = start_node(self, "ws8", servers={"slow": slow})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"
        spellings = ["$\\/cancelRequest", "\\u0024/cancelRequest"]

        def talk() -> list[Any]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                answers = []
                for request_id, method in enumerate(spellings):
                    conn.send(
                        json.dumps({"jsonrpc": "2.0", "method": "slow.wait", "id": request_id})
                    )
                    params = f'{{"id":{request_id}}}'
                    conn.send(f'{{"jsonrpc":"2.0","method":"{method}","params":{params}}}')
                    answers.append(json.loads(conn.recv(timeout=5)))
                return answers

        for request_id, answer in enumerate(await deferToThread(talk)):
            self.assertEqual((answer["id"], answer["error"]["code"]), (request_id, -32800))

    async def test_answer_past_the_message_limit(self) -> None:
        """
        An answer past /ws/rpc's message limit is an error (-32000
        ResultTooLarge) under the request's id, at once or later; of a
        batch, the largest results become errors until it fits; an error
        answer as large has its message cut short; the connection stays
        open.
        """
        node = start_node(self, "ws7", servers={"big": Big()}, limits={"max_body_size": 65536})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def call(request_id: int, method: str, size: int) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "method": method, "params": [size], "id": request_id}

        def talk() -> list[Any]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                answers = []
                for message in (
                    call(1, "big.now", 100_000),
                    call(2, "big.later", 100_000),
                    [
                        call(3, "big.now", 30_000),
                        call(4, "big.later", 40_000),
                        call(5, "big.now", 10),
                    ],
                    call(6, "big.now", 10),
                    call(7, "big.fail_now", 40_000),  # (its message twice: 80 KB)
                    call(8, "big.fail_later", 40_000),
                    call(9, "big.now", 10),
                    [call(10 + k, "big.fail_now", 2_000) for k in range(40)],
                ):
                    conn.send(json.dumps(message))
                    raw = conn.recv(timeout=5)
                    self.assertLessEqual(len(raw), 65536)
                    answers.append(json.loads(raw))
                return answers

        one, later, batch, after, failed, failed_later, last, errors = await deferToThread(talk)
        for answer, request_id in ((one, 1), (later, 2)):
            self.assertEqual(answer["id"], request_id)
            self.assertEqual(answer["error"]["code"], -32000)
            self.assertEqual(answer["error"]["data"]["type"], "ResultTooLarge")
            self.assertEqual(answer["error"]["data"]["node_id"], "ws7")
        by_id = {a["id"]: a for a in batch}
        self.assertEqual(by_id[4]["error"]["data"]["type"], "ResultTooLarge")  # the largest
        self.assertEqual((len(by_id[3]["result"]), by_id[5]["result"]), (30_000, "x" * 10))
        self.assertEqual(after["result"], "x" * 10)
        # An error as large: the same error, its message cut short.
        for answer, request_id in ((failed, 7), (failed_later, 8)):
            self.assertEqual(answer["id"], request_id)
            self.assertEqual(answer["error"]["code"], -32000)
            self.assertEqual(answer["error"]["data"]["type"], "ValueError")
            self.assertIn("cut for /ws/rpc", answer["error"]["message"])
        self.assertEqual(last["result"], "x" * 10)
        # Many errors, each cut short and still too many together: each in a
        # few words, with where it happened.
        self.assertEqual([e["id"] for e in errors], list(range(10, 50)))
        for error in errors:
            self.assertEqual(error["error"]["code"], -32000)
            self.assertEqual(error["error"]["data"], {"node_id": "ws7", "type": "ValueError"})
        self.flushLoggedErrors(ValueError)

    async def test_node_stopping(self) -> None:
        """
        A node that stops answers a call in flight on /ws/rpc (-32006),
        then closes the connection with a close frame, 1001 (going away).
        """
        slow = Slow()
        node = start_node(self, "ws4", servers={"slow": slow})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def talk() -> tuple[object, int | None]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send(json.dumps({"jsonrpc": "2.0", "method": "slow.wait", "id": 1}))
                answer = json.loads(conn.recv(timeout=5))
                try:
                    conn.recv(timeout=5)
                except websockets.exceptions.ConnectionClosed as closed:
                    return answer, closed.rcvd.code if closed.rcvd else None
                return answer, None

        talking = deferToThread(talk)
        await wait_for(lambda: slow.waiting, 5, what="the call to run")
        await node.stopService()
        answer, code = await talking
        self.assertEqual(answer["error"]["code"], -32006)
        self.assertEqual(code, 1001)

    async def test_stream_paced_by_client(self) -> None:
        """
        A client that tells a stream's window before its request gets that
        many items, then as many more as it says its consumer took
        ($/streamCredit), however fast it reads.
        """
        ticker = Ticker()
        node = start_node(self, "ws5", servers={"ticker": ticker})
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def credit(**params: int) -> str:
            return json.dumps({"jsonrpc": "2.0", "method": "$/streamCredit", "params": params})

        def items(conn: Any, count: int) -> list[int]:
            got = [json.loads(conn.recv(timeout=5))["params"]["item"] for _ in range(count)]
            with self.assertRaises(TimeoutError):
                conn.recv(timeout=0.3)  # and no more
            return got

        def talk() -> tuple[list[int], list[int], int]:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send(credit(id=1, window=8))
                conn.send(json.dumps({"jsonrpc": "2.0", "method": "ticker.ticks", "id": 1}))
                first = items(conn, 8)
                conn.send(credit(id=1, consumed=8))
                second = items(conn, 8)
                return first, second, ticker.made

        first, second, made = await deferToThread(talk)
        self.assertEqual((first, second), (list(range(1, 9)), list(range(9, 17))))
        self.assertLessEqual(made, 17)

    async def test_stream_to_a_client_that_reads_nothing(self) -> None:
        """
        A stream to a client that reads nothing stops once the sockets' buffers
        and a few items are full, paced or not, one or many at once: a
        window of items of a megabyte each (64, or the 4096 a client may
        ask, or 4 for each of a batch's streams) is not held in the node's
        memory.
        """
        heavy = Heavy()
        node = start_node(self, "ws8", servers={"heavy": heavy})
        port = node.listening_port.getHost().port

        def open_stalled(*messages: dict[str, Any]) -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before it connects)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            sock.sendall(
                b"GET /ws/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)  # (no byte past the 101 taken)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            for message in messages:
                sock.sendall(_frame(0x1, json.dumps(message).encode()))
            self.addCleanup(sock.close)
            return sock

        async def made_when_stalled() -> int:
            seen: list[int] = []

            def stalled() -> bool:
                seen.append(heavy.made)
                return len(seen) > 5 and seen[-1] == seen[-6]  # none for a second

            await wait_for(stalled, 15, 0.2, "the stream to stall")
            return heavy.made

        call = {"jsonrpc": "2.0", "method": "heavy.items", "params": [1_000_000], "id": 1}
        await deferToThread(open_stalled, call)
        unpaced = await made_when_stalled()
        self.assertLess(unpaced, 32)  # (the window is 64)
        pace = {"jsonrpc": "2.0", "method": "$/streamCredit", "params": {"id": 2, "window": 4096}}
        call = {"jsonrpc": "2.0", "method": "heavy.items", "params": [20_000], "id": 2}
        await deferToThread(open_stalled, pace, call)
        paced = await made_when_stalled() - unpaced
        self.assertLess(paced, 1000)
        # Many streams at once, in one batch: past the first, each makes an
        # item only as the connection's output drains (4 at once each, 120
        # in all, before; the sockets take some 25 of 200 KB).
        batch = [
            {"jsonrpc": "2.0", "method": "heavy.items", "params": [200_000], "id": 10 + k}
            for k in range(30)
        ]
        sock = await deferToThread(open_stalled)
        await deferToThread(sock.sendall, _frame(0x1, json.dumps(batch).encode()))
        many = await made_when_stalled() - unpaced - paced
        self.assertLess(many, 60)

    async def test_fragmented_request(self) -> None:
        """A request split over a text frame and continuations is one request."""
        node = start_node(self, "ws2")
        port = node.listening_port.getHost().port

        def ask() -> bytes:
            sock, data = _ws_open(port, "/ws/rpc")
            body = b'{"jsonrpc":"2.0","method":"node.echo","params":["fr\xc3\xa9"],"id":3}'
            with sock:
                sock.sendall(_frame(0x1, body[:20], fin=False))
                sock.sendall(_frame(0x0, body[20:41], fin=False))
                sock.sendall(_frame(0x0, body[41:]))
                while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
                    data += sock.recv(4096)
            return data[2 : 2 + (data[1] & 0x7F)]

        answer = await deferToThread(ask)
        self.assertEqual(json.loads(answer), {"jsonrpc": "2.0", "result": ["fré"], "id": 3})
