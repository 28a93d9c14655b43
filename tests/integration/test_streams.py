"""
Cancellation and streams (SPEC section 12) on real sockets: an HTTP client
that disconnects, C{$/cancelRequest} and closing C{/ws/rpc}, and a stream
two hops away read by a slow consumer (the Python API and
L{relaytx.client}). Nodes run in this process's reactor on 127.0.0.1;
clients run in threads; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import websockets.sync.client
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

import relaytx.client as client
from relaytx.node import RelayNode
from relaytx.server import Server, exposed

from .helpers import rpc, start_node, url, wait_for, ws


class Work(Server):
    """A slow method that counts its cancellations, and an endless stream."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.made = 0
        self.closed = 0

    @exposed
    async def slow(self, seconds: float) -> str:
        self.started += 1
        try:
            await deferLater(reactor, seconds, lambda: None)
        except CancelledError:
            self.cancelled += 1
            raise
        return "done"

    @exposed
    def quick(self) -> str:
        return "quick"

    @exposed
    async def count(self, n: int, size: int = 0) -> Any:
        for i in range(n):
            yield "x" * size if size else i

    @exposed
    async def ticks(self, limit: int | None = None) -> Any:
        """Count up, never waiting: forever, or to C{limit}."""
        try:
            while limit is None or self.made < limit:
                self.made += 1
                yield self.made
        finally:
            self.closed += 1


def _post_and_leave(port: int, body: bytes, after: float) -> None:
    """Send a POST /rpc, wait C{after} seconds, close the socket unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(after)


class StreamsTestCase(TestCase):
    timeout = 60

    def line(self, work: Work) -> list[RelayNode]:
        """Three nodes s1 - s2 - s3, with C{work} on s3."""
        s3 = start_node(self, "s3", servers={"work": work})
        s2 = start_node(self, "s2", peers=[ws(s3)])
        s1 = start_node(self, "s1", peers=[ws(s2)])
        return [s1, s2, s3]

    async def linked(self, nodes: list[RelayNode]) -> None:
        async def ready() -> bool:
            answer = await rpc(url(nodes[0]), "s3/node.ping")
            return "result" in answer

        await wait_for(ready, 10, 0.05, "s1 to reach s3")


class CancelTests(StreamsTestCase):
    """Callers that give up free the server two hops away."""

    async def test_http_disconnect(self) -> None:
        """An HTTP client leaving after 0.3 s cancels its 3 s call two hops away."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)
        port = nodes[0].listening_port.getHost().port
        body = json.dumps({"jsonrpc": "2.0", "method": "s3/work.slow", "params": [3], "id": 1})
        await deferToThread(_post_and_leave, port, body.encode(), 0.3)
        await wait_for(lambda: work.cancelled == 1, 2, 0.01, "the call to be cancelled")
        started = time.monotonic()
        answer = await rpc(url(nodes[0]), "s3/work.quick")
        self.assertEqual(answer["result"], "quick")
        self.assertLess(time.monotonic() - started, 1.0)  # not behind the 3 s call

    async def test_ws_cancel_request_and_close(self) -> None:
        """$/cancelRequest answers -32800 and cancels; closing /ws/rpc cancels the rest."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)
        address = ws(nodes[0]) + "/ws/rpc"

        def cancel_one() -> Any:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send(
                    json.dumps({"jsonrpc": "2.0", "method": "s3/work.slow", "params": [5], "id": 5})
                )
                time.sleep(0.3)
                conn.send(
                    json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 5}})
                )
                return json.loads(conn.recv(timeout=5))

        answer = await deferToThread(cancel_one)
        self.assertEqual(answer["id"], 5)
        self.assertEqual(answer["error"]["code"], -32800)
        await wait_for(lambda: work.cancelled == 1, 2, 0.01, "the call to be cancelled")

        def close_one() -> None:
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                conn.send(
                    json.dumps({"jsonrpc": "2.0", "method": "s3/work.slow", "params": [5], "id": 6})
                )
                time.sleep(0.3)

        await deferToThread(close_one)
        await wait_for(lambda: work.cancelled == 2, 2, 0.01, "the call to be cancelled")

        def close_unnamed() -> None:
            # Two requests under one id, then a notification: all three go.
            with websockets.sync.client.connect(address, open_timeout=5) as conn:
                for request_id in (7, 7, None):
                    call = {"jsonrpc": "2.0", "method": "s3/work.slow", "params": [5]}
                    conn.send(json.dumps(call if request_id is None else {**call, "id": 7}))
                time.sleep(0.3)

        await deferToThread(close_unnamed)
        await wait_for(lambda: work.cancelled == 3, 2, 0.01, "the running call to be cancelled")
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual((work.started, work.cancelled), (3, 3))  # the queued two never ran


class SlowConsumerTests(StreamsTestCase):
    """A stream two hops away runs only as far ahead of its consumer as its window."""

    async def test_python_api(self) -> None:
        """node.stream read at 50 items/s: the generator stays within the window, stops at break."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)
        stream = nodes[0].stream("s3", "work", "ticks", window=16, timeout=30)
        got = []
        ahead = []
        async for item in stream:
            got.append(item)
            await deferLater(reactor, 0.02, lambda: None)
            ahead.append(work.made - len(got))
            if len(got) == 40:
                break
        self.assertEqual(got, list(range(1, 41)))
        self.assertLessEqual(max(ahead), 16 + 1)
        del stream
        await wait_for(lambda: work.closed == 1, 2, 0.01, "the generator's finally")

    async def test_client_stream(self) -> None:
        """relaytx.client read slowly: the generator's lead is bounded; break stops it."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)
        got, stalled, lead = await deferToThread(_read_slowly, url(nodes[0]), work)
        self.assertEqual(got, list(range(1, 31)))
        # The generator waited for the client instead of running on; its
        # lead is bounded by the client's window, 64 KiB of the node's and
        # the kernel's socket buffers (megabytes on loopback: some 40,000
        # of these small notifications).
        self.assertTrue(stalled)
        self.assertLess(lead, 250_000)
        made = work.made
        await wait_for(lambda: work.closed == 1, 2, 0.01, "the generator's finally")
        self.assertLessEqual(work.made, made + 64)

    async def test_client_stream_on_the_host(self) -> None:
        """
        The same read from the node that runs the generator: its first
        items are sent while the request's read is still being handled,
        and the generator, which never waits, must still stop for the
        client rather than run to its end (300,000 items) inside that read.
        """
        work = Work()
        node = start_node(self, "h1", servers={"work": work})
        got, stalled, lead = await deferToThread(_read_slowly, url(node), work, 300_000)
        self.assertEqual(got, list(range(1, 31)))
        self.assertTrue(stalled)
        self.assertLess(lead, 250_000)
        await wait_for(lambda: work.closed == 1, 2, 0.01, "the generator's finally")
        self.assertLess(work.made, 300_000)


def _read_slowly(base: str, work: Work, *args: Any) -> tuple[list[int], bool, int]:
    """
    Read C{work.ticks(*args)} through relaytx.client (in a thread): 5
    items, then nothing until the generator has stood still for 0.5 s
    (or 10 s passed), then 25 more, 10 ms apart, and break.

    :returns: the items, whether the generator stood still, and its lead
        over the client then.
    """

    async def main() -> tuple[list[int], bool, int]:
        got: list[int] = []
        stalled, lead = False, 0
        async with client.connect(base) as c:
            async for item in c.stream("work", "ticks", *args):
                got.append(item)
                if len(got) == 5:
                    # Stop reading: once the buffers on the way are
                    # full, the generator must stop too.
                    last, since = work.made, time.monotonic()
                    deadline = since + 10
                    while time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                        if work.made != last:
                            last, since = work.made, time.monotonic()
                        elif time.monotonic() - since >= 0.5:
                            stalled = True
                            break
                    lead = work.made - len(got)
                await asyncio.sleep(0.01)
                if len(got) == 30:
                    break
        return got, stalled, lead

    return asyncio.run(main())


class ItemTooLargeTests(StreamsTestCase):
    """An item past the message limit fails its stream as a result past it does."""

    async def test_ws_item_too_large(self) -> None:
        """On /ws/rpc, local or two hops away: -32000 ResultTooLarge, as for a result."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)

        def stream(node: RelayNode, method: str) -> list[Any]:
            with websockets.sync.client.connect(ws(node) + "/ws/rpc", open_timeout=5) as conn:
                request = {"jsonrpc": "2.0", "method": method, "params": [2, 1_100_000], "id": 1}
                conn.send(json.dumps(request))
                got = []
                while not got or "id" not in got[-1]:
                    got.append(json.loads(conn.recv(timeout=10)))
                return got

        for node, method in [(nodes[2], "work.count"), (nodes[0], "s3/work.count")]:
            *items, answer = await deferToThread(stream, node, method)
            self.assertEqual(items, [], method)  # (each item alone is past 1 MiB)
            self.assertEqual(answer["error"]["code"], -32000, method)
            self.assertEqual(answer["error"]["data"]["type"], "ResultTooLarge", method)


class CollectedTests(StreamsTestCase):
    """POST /rpc gets a streaming method's items as one list, within the message limit."""

    async def test_list_and_limit(self) -> None:
        """Items two hops away come back as a list; past 1 MiB, -32000 ResultTooLarge."""
        work = Work()
        nodes = self.line(work)
        await self.linked(nodes)
        answer = await rpc(url(nodes[0]), "s3/work.count", [5])
        self.assertEqual(answer["result"], [0, 1, 2, 3, 4])
        answer = await rpc(url(nodes[0]), "s3/work.count", [300, 10_000])
        self.assertEqual(answer["error"]["code"], -32000)
        self.assertEqual(answer["error"]["data"]["type"], "ResultTooLarge")
