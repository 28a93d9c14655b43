"""
Tests for L{relaytx.client} and its workings (L{relaytx._rpcclient},
L{relaytx._clientopts}): calls over an in-memory node (L{tests.aiosupport})
on an event loop with a virtual clock, so deadlines and back-off are
checked to the millisecond without waiting. The same client against real
nodes is in C{tests/integration/test_client.py}.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase
from websockets.frames import Opcode

import relaytx.client as client
from relaytx._clientopts import (
    auth_headers,
    http_base_url,
    is_secure,
    ssl_context,
    ws_rpc_url,
)
from relaytx._rpcclient import ANSWER_GRACE, RpcCore
from relaytx._wsconn import ChannelError
from tests.aiosupport import FakeNode, run, turns
from tests.support import TempDirMixin
from tests.test_wsconn import Pair

URL = "ws://fake:1/ws/rpc"


async def connected(
    node: FakeNode, timeout: float = 30.0, **options: Any
) -> tuple[client.Client, RpcCore]:
    """:returns: a client of C{node} (and its core), connected."""
    core = RpcCore(URL, node.open, **options)
    await core.open()
    return client.Client(core, timeout), core


class CallTests(SynchronousTestCase):
    """Calls, their requests and their answers."""

    def test_call(self) -> None:
        """call() sends one remote_call with the args and the deadline, and returns the result."""
        node = FakeNode()

        async def scenario() -> Any:
            c, _ = await connected(node)
            return await c.call("node", "echo", 1, "x", [True])

        self.assertEqual(run(scenario()), [1, "x", [True]])
        [request] = node.calls()
        self.assertEqual(request["jsonrpc"], "2.0")
        self.assertEqual(request["method"], "remote_call")
        self.assertIsInstance(request["id"], int)
        self.assertEqual(
            request["params"],
            {"server_name": "node", "method": "echo", "args": [1, "x", [True]], "timeout": 30.0},
        )

    def test_notAnAnswer(self) -> None:
        """
        A message under a call's id with no JSON-RPC 2.0 result or error (a
        server that is no node, echoing the request, say) fails the call
        with -32603, saying what came; it is not taken for a null result.
        """
        node = FakeNode()
        node.hold = True
        odd = [
            lambda r: r,  # the request itself, echoed
            lambda r: {"jsonrpc": "2.0", "id": r["id"]},
            lambda r: {"jsonrpc": "1.0", "result": 5, "id": r["id"]},
        ]

        async def scenario() -> list[BaseException]:
            c, _ = await connected(node)
            tasks = [asyncio.ensure_future(c.node.ping()) for _ in odd]
            await asyncio.sleep(0)
            for (channel, request), make in zip(node.held, odd, strict=True):
                channel.deliver(make(request))
            return await asyncio.gather(*tasks, return_exceptions=True)

        for error in run(scenario()):
            assert isinstance(error, client.RemoteError), error
            self.assertEqual(error.code, -32603)
            self.assertIn("no JSON-RPC 2.0 result or error", error.message)

    def test_explicitNodeAndKeywords(self) -> None:
        """on(node) names the node; keyword arguments go as kwargs; timeout= is the deadline."""
        node = FakeNode()
        node.methods[("counter_server", "increment")] = lambda by=1: by

        async def scenario() -> Any:
            c, _ = await connected(node)
            return await c.on("node2").call("counter_server", "increment", by=4, timeout=2.5)

        self.assertEqual(run(scenario()), 4)
        self.assertEqual(
            node.calls()[0]["params"],
            {
                "node_id": "node2",
                "server_name": "counter_server",
                "method": "increment",
                "args": [],
                "kwargs": {"by": 4},
                "timeout": 2.5,
            },
        )

    def test_proxies(self) -> None:
        """Attribute and item proxies make the same calls; on() carries node and timeout."""
        node = FakeNode()
        node.methods[("counter_server", "increment")] = lambda by=1: by
        node.methods[("my-server", "get")] = lambda: "got"

        async def scenario() -> list[Any]:
            c, _ = await connected(node)
            return [
                await c.counter_server.increment(5),
                await c["my-server"].get(),
                await c.on("n2", timeout=2).counter_server["increment"](by=3),
                await c.on("n2").on(None).node.ping(),
            ]

        self.assertEqual(run(scenario()), [5, "got", 3, {"pong": True}])
        params = [r["params"] for r in node.calls()]
        self.assertEqual([p.get("node_id") for p in params], [None, None, "n2", None])
        self.assertEqual([p["timeout"] for p in params], [30.0, 30.0, 2, 30.0])
        self.assertEqual(params[2]["kwargs"], {"by": 3})

    def test_proxyPrivateNames(self) -> None:
        """Names starting with _ are never proxies (copy, pickle and the like probe them)."""
        node = FakeNode()

        async def scenario() -> None:
            c, _ = await connected(node)
            self.assertRaises(AttributeError, getattr, c, "_secret")
            self.assertRaises(AttributeError, getattr, c.counter_server, "__len__")
            self.assertEqual(repr(c.counter_server.get), "<MethodProxy counter_server.get>")

        run(scenario())

    def test_invoke(self) -> None:
        """invoke() passes a keyword argument named timeout to the method."""
        node = FakeNode()
        node.methods[("s", "m")] = lambda timeout: timeout

        async def scenario() -> Any:
            c, _ = await connected(node)
            return await c.invoke("s", "m", kwargs={"timeout": 9}, node="n3", timeout=4)

        self.assertEqual(run(scenario()), 9)
        params = node.calls()[0]["params"]
        self.assertEqual((params["node_id"], params["timeout"]), ("n3", 4))

    def test_pipelining(self) -> None:
        """Many calls are in flight at once on one connection; answers in any order find theirs."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> list[Any]:
            c, _ = await connected(node)
            calls = [asyncio.ensure_future(c.node.echo(i)) for i in range(100)]
            await turns()
            self.assertEqual(len(node.held), 100)  # all sent before any answer
            self.assertEqual(len(node.channels), 1)
            for channel, request in reversed(node.held):
                node.answer(channel, request)
            return await asyncio.gather(*calls)

        self.assertEqual(run(scenario()), [[i] for i in range(100)])
        self.assertEqual(len({r["id"] for r in node.calls()}), 100)

    def test_remoteError(self) -> None:
        """An error answer raises RemoteError with its code, message and data."""
        node = FakeNode()

        def fail() -> None:
            raise ValueError("no")

        node.methods[("s", "fail")] = fail

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node)
            try:
                await c.s.fail()
            except client.RemoteError as e:
                return e
            raise AssertionError("no error")

        error = run(scenario())
        self.assertEqual(error.code, client.SERVER_ERROR)
        self.assertEqual(error.message, "ValueError: no")
        self.assertEqual(error.data, {"node_id": "fake", "type": "ValueError", "message": "no"})
        self.assertEqual(str(error), "error -32000: ValueError: no")
        self.assertIsInstance(error, client.ClientError)

    def test_malformedErrors(self) -> None:
        """Error objects of odd shapes still become RemoteErrors with an int code and a dict."""
        make = client.RemoteError.from_jsonrpc
        self.assertEqual(make("boom").code, -32603)
        odd = make({"code": True, "message": 5, "data": [1]})
        self.assertEqual((odd.code, odd.message, odd.data), (-32603, "5", {"data": [1]}))
        self.assertEqual(make({"code": -32001, "message": "late"}).data, {})

    def test_notJson(self) -> None:
        """An argument that is not JSON raises TypeError at once; nothing is sent or kept."""
        node = FakeNode()

        async def scenario() -> RpcCore:
            c, core = await connected(node)
            with self.assertRaises(TypeError):
                await c.node.echo({1, 2})
            with self.assertRaises(TypeError):  # (not sent as null)
                await c.node.echo([1.0, float("nan")])
            return core

        core = run(scenario())
        self.assertEqual(node.requests, [])
        self.assertEqual(core._calls, {})

    def test_requestTooLarge(self) -> None:
        """
        A call whose request is over C{max_request} fails at once with
        -32005, unsent and not kept; the calls in flight go on (the node
        would have closed the connection on them all).
        """
        node = FakeNode()

        async def scenario() -> tuple[Any, RpcCore]:
            c, core = await connected(node, max_request=300)
            kept = asyncio.ensure_future(c.node.echo("small"))
            with self.assertRaises(client.RemoteError) as raised:
                await c.node.echo("x" * 300)
            self.assertEqual(raised.exception.code, -32005)
            self.assertIn("300-byte message limit", raised.exception.message)
            with self.assertRaises(client.RemoteError):
                async for _ in c.stream("node", "echo", "x" * 300):
                    pass
            return await kept, core

        answer, core = run(scenario())
        self.assertEqual(answer, ["small"])
        self.assertEqual([r["params"]["args"] for r in node.calls()], [["small"]])
        self.assertEqual(core._calls, {})

    def test_badTimeout(self) -> None:
        """A deadline outside (0, 86400] seconds is a ValueError."""
        node = FakeNode()

        async def scenario() -> None:
            c, _ = await connected(node)
            for bad in (0, -1, float("nan"), 86401):
                with self.assertRaises(ValueError):
                    await c.call("node", "ping", timeout=bad)

        run(scenario())
        self.assertRaises(ValueError, client.connect, URL, timeout=0)

    def test_answersOfNoCall(self) -> None:
        """Answers to no waiting call are counted and dropped; a batch is read item by item."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> tuple[Any, int]:
            c, core = await connected(node)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            _, request = node.held[0]
            node.channel.deliver({"jsonrpc": "2.0", "result": 1, "id": 999})
            node.channel.deliver({"jsonrpc": "2.0", "error": {"code": -32700}, "id": None})
            node.channel.listener.message_received(b"not json")
            node.channel.deliver([{"jsonrpc": "2.0", "result": "ok", "id": request["id"]}, 5])
            return await call, core.late_answers

        self.assertEqual(run(scenario()), ("ok", 1))

    def test_wideIntegers(self) -> None:
        """An answer's integers past 64 bits arrive as the node wrote them, not as floats."""
        node = FakeNode()
        node.hold = True
        wide = [2**64 + 1, -(2**70), -9999999999999999999]

        async def scenario() -> Any:
            c, _ = await connected(node)
            call = asyncio.ensure_future(c.node.echo())
            await turns()
            _, request = node.held[0]
            answer = b'{"jsonrpc":"2.0","result":%s,"id":%s}' % (
                json.dumps(wide).encode(),
                json.dumps(request["id"]).encode(),
            )
            node.channel.listener.message_received(answer)
            return await call

        result = run(scenario())
        self.assertEqual(result, wide)
        self.assertEqual({type(n) for n in result}, {int})


class DeadlineTests(SynchronousTestCase):
    """Deadlines and cancellation."""

    def test_timeout(self) -> None:
        """
        A sent call the node says nothing of fails with -32001 at its
        deadline and the grace its node's own answer is given, and the node
        is told to cancel it.
        """
        node = FakeNode()
        node.hold = True

        async def scenario() -> tuple[client.RemoteError, float, RpcCore]:
            c, core = await connected(node)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await c.call("node", "ping", timeout=2.5)
            except client.RemoteError as e:
                return e, loop.time() - started, core
            raise AssertionError("no timeout")

        error, waited, core = run(scenario())
        self.assertEqual(error.code, client.TIMED_OUT)
        self.assertEqual(error.message, "Call timed out after 2.5s")
        self.assertAlmostEqual(waited, 2.5 + ANSWER_GRACE, places=6)
        self.assertEqual(node.cancels(), [node.calls()[0]["id"]])
        self.assertEqual(core._calls, {})

    def test_nodes_timeout_answers(self) -> None:
        """
        The node's own -32001, sent at the deadline it started on receipt
        (so a moment after the client's), is the call's error: it names
        where the call timed out, not in one run the node's words and in
        the next the client's own.
        """
        node = FakeNode()
        node.hold = True

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node)
            call = asyncio.ensure_future(c.call("B", "slow", "wait", timeout=1.0))
            await asyncio.sleep(1.002)
            channel, request = node.held[0]
            error = {"code": -32001, "message": "Call to B timed out after 1s",
                     "data": {"target_node": "B", "timeout": 1.0, "node_id": "A"}}  # fmt: skip
            channel.deliver({"jsonrpc": "2.0", "error": error, "id": request["id"]})
            try:
                await call
            except client.RemoteError as e:
                return e
            raise AssertionError("no timeout")

        error = run(scenario())
        self.assertEqual((error.code, error.data["node_id"]), (client.TIMED_OUT, "A"))

    def test_graceTakesOnlyTheNodesTimeout(self) -> None:
        """
        Past the deadline, in the grace given to the node's own -32001, a
        success (the method finished late) or a lost connection is no
        outcome: the call timed out at its deadline (SPEC section 8), and
        the late answer is counted.
        """
        node = FakeNode()
        node.hold = True

        async def scenario() -> tuple[list[Any], int]:
            c, core = await connected(node)
            outcomes = []
            for lose in (False, True):
                call = asyncio.ensure_future(c.call("node", "ping", timeout=1.0))
                await asyncio.sleep(1.1)
                channel, request = node.held.pop()
                if lose:
                    channel.drop("reset")
                else:
                    channel.deliver({"jsonrpc": "2.0", "result": "late", "id": request["id"]})
                try:
                    outcomes.append(await call)
                except client.RemoteError as e:
                    outcomes.append(e.code)
            return outcomes, core.late_answers

        self.assertEqual(run(scenario()), ([client.TIMED_OUT, client.TIMED_OUT], 1))

    def test_lateAnswer(self) -> None:
        """An answer that comes after the deadline is dropped and counted."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> int:
            c, core = await connected(node)
            with self.assertRaises(client.RemoteError):
                await c.call("node", "ping", timeout=1)
            node.answer(*node.held[0])
            return core.late_answers

        self.assertEqual(run(scenario()), 1)

    def test_deadlinesInAnyOrder(self) -> None:
        """Calls with different deadlines each fail at their own."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> list[float]:
            c, _ = await connected(node)
            loop = asyncio.get_running_loop()
            started = loop.time()
            ended: dict[float, float] = {}

            async def one(timeout: float) -> None:
                with self.assertRaises(client.RemoteError):
                    await c.call("node", "ping", timeout=timeout)
                ended[timeout] = loop.time() - started

            await asyncio.gather(*(one(t) for t in (5, 1, 3, 2, 4)))
            return [ended[t] for t in sorted(ended)]

        for got, want in zip(run(scenario()), [1, 2, 3, 4, 5], strict=True):
            self.assertAlmostEqual(got, want + ANSWER_GRACE, places=6)

    def test_cancelTask(self) -> None:
        """Cancelling the awaiting task fails the call at once and asks the node to cancel it."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> RpcCore:
            c, core = await connected(node)
            task = asyncio.ensure_future(c.node.ping())
            await turns()
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            node.answer(*node.held[0])  # a late answer changes nothing
            return core

        core = run(scenario())
        self.assertEqual(node.cancels(), [node.calls()[0]["id"]])
        self.assertEqual(core._calls, {})
        self.assertEqual(core.late_answers, 1)

    def test_cancelBeforeSending(self) -> None:
        """A call cancelled while it waits for a connection is never sent."""
        node = FakeNode()

        async def scenario() -> None:
            c, _ = await connected(node, backoff=(10, 10))
            node.channel.drop()
            task = asyncio.ensure_future(c.node.ping())
            await turns()
            task.cancel()
            await asyncio.sleep(30)  # reconnected meanwhile

        run(scenario())
        self.assertEqual(len(node.channels), 2)
        self.assertEqual(node.requests, [])

    def test_cancelRacesAnswer(self) -> None:
        """An answer arriving between a task's cancellation and its handling is dropped quietly."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> None:
            c, _ = await connected(node)
            task = asyncio.ensure_future(c.node.ping())
            await turns()
            task.cancel()
            node.answer(*node.held[0])  # same turn: the task has not run yet
            with self.assertRaises(asyncio.CancelledError):
                await task

        run(scenario())


class ConnectionTests(SynchronousTestCase):
    """Connecting, losing the connection, reconnecting, closing."""

    def test_firstConnectionFails(self) -> None:
        """connect fails with ConnectError (keeping a refusal's HTTP status)."""
        node = FakeNode()
        node.refuse = ChannelError("refused: HTTP 401 Unauthorized", 401)

        async def scenario() -> client.ConnectError:
            try:
                await connected(node)
            except client.ConnectError as e:
                return e
            raise AssertionError("connected")

        error = run(scenario())
        self.assertEqual(error.status, 401)
        self.assertIn("401", str(error))
        self.assertIsInstance(error, ConnectionError)

    def test_lostAfterSending(self) -> None:
        """Calls sent on a connection that drops fail at once with -32006 (outcome unknown)."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            node.channel.drop("connection reset")
            try:
                await call
            except client.RemoteError as e:
                return e
            raise AssertionError("no error")

        error = run(scenario())
        self.assertEqual(error.code, client.OUTCOME_UNKNOWN)
        self.assertIn("may or may not have run", error.message)
        self.assertEqual(error.data, {"url": URL, "reason": "connection reset"})

    def test_reconnects(self) -> None:
        """After a drop the client reconnects with back-off; calls made meanwhile wait, then go."""
        node = FakeNode()

        async def scenario() -> tuple[Any, float, bool]:
            c, _ = await connected(node, backoff=(0.5, 5.0))
            loop = asyncio.get_running_loop()
            node.channel.drop()
            node.refuse = ChannelError("connection refused")
            self.assertFalse(c.connected)
            call = asyncio.ensure_future(c.call("node", "echo", "later", timeout=20))
            await asyncio.sleep(1.4)
            node.refuse = None  # the node is back
            result = await call
            return result, loop.time(), c.connected

        result, _, connected_now = run(scenario())
        self.assertEqual(result, ["later"])
        self.assertTrue(connected_now)
        self.assertEqual(len(node.channels), 2)
        gaps = [b - a for a, b in zip(node.attempts, node.attempts[1:], strict=False)]
        # 0.5, 1, 2 s doubling, each less up to half of it (jitter).
        for gap, delay in zip(gaps, [0.5, 1.0, 2.0], strict=False):
            self.assertTrue(delay / 2 <= gap <= delay, (gap, delay))
        # The call left on the new connection with the time it had left.
        [(channel, request)] = node.requests
        self.assertIs(channel, node.channels[1])
        self.assertLess(request["params"]["timeout"], 20)
        self.assertGreater(request["params"]["timeout"], 20 - 4)

    def test_backoffBounded(self) -> None:
        """Waits between attempts grow to the longest one given and stay there."""
        node = FakeNode()

        async def scenario() -> None:
            await connected(node, backoff=(0.1, 2.0))
            node.refuse = ChannelError("down")
            node.channel.drop()
            await asyncio.sleep(60)

        run(scenario())
        gaps = [b - a for a, b in zip(node.attempts[1:], node.attempts[2:], strict=False)]
        self.assertGreater(len(gaps), 20)
        self.assertTrue(all(gap <= 2.0 for gap in gaps))
        self.assertTrue(all(gap >= 1.0 for gap in gaps[-10:]))

    def test_notSentInTime(self) -> None:
        """A call no connection could take fails at its deadline with -32002 and the reason."""
        node = FakeNode()

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node)
            node.refuse = ChannelError("cannot connect to fake: refused")
            node.channel.drop()
            try:
                await c.call("node", "ping", timeout=3)
            except client.RemoteError as e:
                return e
            raise AssertionError("no error")

        error = run(scenario())
        self.assertEqual(error.code, client.UNREACHABLE)
        self.assertIn("not sent", error.message)
        self.assertIn("cannot connect to fake: refused", error.message)
        self.assertEqual(node.requests, [])

    def test_noReconnect(self) -> None:
        """Without reconnection, calls after a drop fail at once with -32002."""
        node = FakeNode()

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node, reconnect=False)
            node.channel.drop("gone")
            try:
                await c.node.ping()
            except client.RemoteError as e:
                return e
            raise AssertionError("no error")

        error = run(scenario())
        self.assertEqual(error.code, client.UNREACHABLE)
        self.assertIn("gone", error.message)
        self.assertEqual(len(node.attempts), 1)

    def test_close(self) -> None:
        """close() fails calls in flight with ClientClosed, closes the connection, refuses more."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> None:
            c, core = await connected(node)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            await c.close()
            with self.assertRaises(client.ClientClosed):
                await call
            with self.assertRaises(client.ClientClosed):
                await c.node.ping()
            self.assertRaises(client.ClientClosed, c.stream, "s", "m")
            await c.close()  # twice is fine
            self.assertEqual(core._calls, {})

        run(scenario())
        self.assertTrue(node.channel.closed)
        self.assertEqual(len(node.channels), 1)  # no reconnection after close

    def test_closeWhileReconnecting(self) -> None:
        """Closing stops reconnection attempts."""
        node = FakeNode()

        async def scenario() -> None:
            c, _ = await connected(node)
            node.refuse = ChannelError("down")
            node.channel.drop()
            await asyncio.sleep(1)
            await c.close()
            attempts = len(node.attempts)
            await asyncio.sleep(60)
            self.assertEqual(len(node.attempts), attempts)

        run(scenario())

    def test_connectContext(self) -> None:
        """connect() works as an async context manager and as an awaitable."""
        node = FakeNode()

        async def scenario() -> list[Any]:
            options = client.connect(URL)
            options._open_one = node.open
            async with options as c:
                first = await c.node.ping()
                self.assertTrue(c.connected)
                self.assertEqual(c.url, URL)
            options = client.connect(URL)
            options._open_one = node.open
            c = await options
            second = await c.node.ping()
            await c.close()
            return [first, second]

        self.assertEqual(run(scenario()), [{"pong": True}] * 2)
        self.assertTrue(all(channel.closed for channel in node.channels))


class ClosingConnectionTests(SynchronousTestCase):
    """Calls made as the connection ends, over the real channel (L{relaytx._wsconn})."""

    def test_unwrittenWaits(self) -> None:
        """A call the lost channel took but never wrote is not -32006: it runs on the next one."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> tuple[Any, client.RemoteError]:
            c, _ = await connected(node, backoff=(0.5, 0.5))
            sent = asyncio.ensure_future(c.node.echo("sent"))
            unwritten = asyncio.ensure_future(c.node.echo("unwritten"))
            await turns()
            [_, (first, request)] = node.held
            first.not_written.append(orjson.dumps(request))
            node.hold = False
            first.drop("connection closed")
            with self.assertRaises(client.RemoteError) as caught:
                await sent
            return await unwritten, caught.exception

        result, error = run(scenario())
        self.assertEqual(result, ["unwritten"])
        self.assertEqual(error.code, client.OUTCOME_UNKNOWN)
        (channel, again) = node.requests[-1]
        self.assertIs(channel, node.channels[1])
        self.assertEqual(again["params"]["args"], ["unwritten"])
        self.assertLess(again["params"]["timeout"], 30)

    def test_unwrittenWithoutReconnecting(self) -> None:
        """Without reconnection, a call never written fails -32002: it did not run."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> client.RemoteError:
            c, _ = await connected(node, reconnect=False)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            [(channel, request)] = node.held
            channel.not_written.append(orjson.dumps(request))
            channel.drop("connection closed")
            with self.assertRaises(client.RemoteError) as caught:
                await call
            return caught.exception

        self.assertEqual(run(scenario()).code, client.UNREACHABLE)

    def check_callAsTheNodeCloses(self, closing: Callable[[Pair], None]) -> None:
        """
        A call made in the turn the node's end closes (by C{closing}) was
        never written: no stray error, and it waits for the reconnection
        and runs there.
        """
        pairs: list[Pair] = []

        async def opener(listener: Any) -> Any:
            pair = Pair(listener=listener)
            pair.accept()
            await pair.channel.opened
            pairs.append(pair)
            return pair.channel

        async def scenario() -> tuple[Any, list[Any]]:
            errors: list[Any] = []
            asyncio.get_running_loop().set_exception_handler(lambda _, e: errors.append(e))
            core = RpcCore(URL, opener, backoff=(0.1, 0.1))
            await core.open()
            c = client.Client(core, 30.0)
            call = asyncio.ensure_future(c.node.ping())
            await turns(1)  # the request waits to leave at the end of the turn...
            closing(pairs[0])  # ...and the node's end closes first
            while len(pairs) < 2:
                await asyncio.sleep(0.05)
            await turns()
            [request] = pairs[1].from_client()
            answer = {"jsonrpc": "2.0", "result": "pong", "id": orjson.loads(request.data)["id"]}
            pairs[1].server.send_text(orjson.dumps(answer))
            pairs[1].to_client()
            result = await call
            await c.close()
            return result, errors

        result, errors = run(scenario())
        self.assertEqual(errors, [])
        self.assertEqual(result, "pong")
        self.assertEqual([e.opcode for e in pairs[0].from_client()], [])

    def test_callAsTheNodeEnds(self) -> None:
        """A call made in the turn the node's EOF arrives runs on the next connection."""
        self.check_callAsTheNodeCloses(Pair.node_ends)

    def test_callAsTheNodeSaysClose(self) -> None:
        """A call made in the turn the node's close frame arrives runs on the next connection."""

        def close(pair: Pair) -> None:
            pair.server.send_close(1001, "node stopping")
            pair.to_client()
            pair.transport.take()  # the close reply
            pair.transport.close()

        self.check_callAsTheNodeCloses(close)


class LivenessTests(SynchronousTestCase):
    """connect()'s ping_interval, over the real channel."""

    def test_pingInterval(self) -> None:
        """With ping_interval=1 a silent node is pinged and dropped within 3 s, not 20 s more."""
        pairs: list[Pair] = []

        async def open_channel(
            url: str,
            listener: Any,
            *,
            ping_interval: float | None,
            ping_timeout: float = 20.0,
            max_size: int,
            **_: Any,
        ) -> Any:
            pair = Pair(
                listener=listener,
                max_size=max_size,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
            )
            pair.accept()
            await pair.channel.opened
            pairs.append(pair)
            return pair.channel

        self.patch(client, "open_channel", open_channel)

        async def scenario() -> float:
            loop = asyncio.get_running_loop()
            c = await client.connect(URL, ping_interval=1, reconnect=False)
            started = loop.time()
            while c.connected and loop.time() - started < 60:
                await asyncio.sleep(0.1)
            await c.close()
            return loop.time() - started

        waited = run(scenario())
        self.assertLessEqual(waited, 3.1)
        self.assertEqual([e.opcode for e in pairs[0].from_client()], [Opcode.PING])
        self.assertEqual(pairs[0].listener.last_error, "the node answered no ping within 1s")


def stream_item(request_id: Any, item: Any) -> dict[str, Any]:
    """:returns: the notification that carries C{item} of stream C{request_id}."""
    return {"jsonrpc": "2.0", "method": "$/stream", "params": {"id": request_id, "item": item}}


def streaming(node: FakeNode, items: list[Any], result: Any = None) -> None:
    """Make C{node} stream C{items} from C{("s", "items")}, then answer C{result} (the count)."""

    def answer(channel: Any, request: dict[str, Any]) -> None:
        for item in items:
            channel.deliver(stream_item(request["id"], item))
        final = len(items) if result is None else result
        channel.deliver({"jsonrpc": "2.0", "result": final, "id": request["id"]})

    node.answer = answer  # type: ignore[method-assign]


class StreamTests(SynchronousTestCase):
    """Streams (SPEC section 12) as the client reads them."""

    def test_items(self) -> None:
        """Items arrive in order and the stream ends at the answer."""
        node = FakeNode()
        streaming(node, [1, {"a": 2}, None, "x"])

        async def scenario() -> list[Any]:
            c, core = await connected(node)
            items = [item async for item in c.stream("s", "items", 4)]
            self.assertEqual(core._calls, {})
            return items

        self.assertEqual(run(scenario()), [1, {"a": 2}, None, "x"])
        self.assertEqual(node.calls()[0]["params"]["args"], [4])
        self.assertEqual(node.cancels(), [])

    def test_proxyStream(self) -> None:
        """A method proxy streams with .stream()."""
        node = FakeNode()
        streaming(node, ["a", "b"])

        async def scenario() -> list[Any]:
            c, _ = await connected(node)
            return [item async for item in c.on("n2").s.items.stream()]

        self.assertEqual(run(scenario()), ["a", "b"])
        self.assertEqual(node.calls()[0]["params"]["node_id"], "n2")

    def test_leaveEarly(self) -> None:
        """Leaving the loop early and closing the iterator cancels the stream at the node."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> list[Any]:
            c, core = await connected(node)
            items = c.stream("s", "items")
            got = []
            reading = asyncio.ensure_future(items.__anext__())
            await turns()
            channel, request = node.held[0]
            for i in range(3):
                channel.deliver(
                    {
                        "jsonrpc": "2.0",
                        "method": "$/stream",
                        "params": {"id": request["id"], "item": i},
                    }
                )
            got.append(await reading)
            got.append(await items.__anext__())
            await items.aclose()  # what `break` and dropping the iterator come to
            self.assertEqual(core._calls, {})
            return got

        self.assertEqual(run(scenario()), [0, 1])
        self.assertEqual(node.cancels(), [node.calls()[0]["id"]])

    def test_breakAndDrop(self) -> None:
        """break in an async for, and dropping the iterator, cancels the stream."""
        node = FakeNode()
        streaming(node, list(range(10)), result=10)
        node.hold = True

        async def scenario() -> None:
            c, _ = await connected(node)

            async def consume() -> None:
                async for item in c.stream("s", "items"):
                    if item == 1:
                        break

            task = asyncio.ensure_future(consume())
            await turns()
            channel, request = node.held[0]
            for i in range(3):
                channel.deliver(
                    {
                        "jsonrpc": "2.0",
                        "method": "$/stream",
                        "params": {"id": request["id"], "item": i},
                    }
                )
            await task
            await turns()  # the loop finalises the dropped generator

        run(scenario())
        self.assertEqual(node.cancels(), [node.calls()[0]["id"]])

    def test_streamError(self) -> None:
        """An error answer ends the stream with RemoteError after the items before it."""
        node = FakeNode()

        def answer(channel: Any, request: dict[str, Any]) -> None:
            channel.deliver(
                {"jsonrpc": "2.0", "method": "$/stream", "params": {"id": request["id"], "item": 1}}
            )
            error = {"code": -32000, "message": "ValueError: bad"}
            channel.deliver({"jsonrpc": "2.0", "error": error, "id": request["id"]})

        node.answer = answer  # type: ignore[method-assign]

        async def scenario() -> list[Any]:
            c, _ = await connected(node)
            got = []
            with self.assertRaises(client.RemoteError):
                async for item in c.stream("s", "items"):
                    got.append(item)
            return got

        self.assertEqual(run(scenario()), [1])

    def test_nodeCannotStream(self) -> None:
        """A node from before streaming gives StreamingNotSupported, a NotImplementedError."""
        node = FakeNode()

        def answer(channel: Any, request: dict[str, Any]) -> None:
            error = {
                "code": -32000,
                "message": "TypeError: result is not JSON-serialisable: Type is not JSON "
                "serializable: async_generator",
            }
            channel.deliver({"jsonrpc": "2.0", "error": error, "id": request["id"]})

        node.answer = answer  # type: ignore[method-assign]

        async def scenario() -> None:
            c, _ = await connected(node)
            with self.assertRaises(NotImplementedError) as caught:
                async for _ in c.stream("s", "items"):
                    pass
            self.assertIsInstance(caught.exception, client.StreamingNotSupported)
            self.assertIn("does not stream results yet", str(caught.exception))

        run(scenario())

    def test_notAStream(self) -> None:
        """A method that answers a plain result is NotAStream, which keeps the result."""
        node = FakeNode()

        async def scenario() -> Any:
            c, _ = await connected(node)
            try:
                async for _ in c.stream("node", "echo", 1):
                    pass
            except client.NotAStream as e:
                return e.result
            raise AssertionError("no error")

        self.assertEqual(run(scenario()), [1])

    def test_streamTimeout(self) -> None:
        """A stream's deadline covers all of it: -32001, and the node is told to cancel."""
        node = FakeNode()
        node.hold = True

        async def scenario() -> int:
            c, _ = await connected(node)
            with self.assertRaises(client.RemoteError) as caught:
                async for _ in c.stream("s", "items", timeout=2):
                    pass
            return caught.exception.code

        self.assertEqual(run(scenario()), client.TIMED_OUT)
        self.assertEqual(node.cancels(), [node.calls()[0]["id"]])

    def test_pacedByCredit(self) -> None:
        """
        A stream's window goes to the node ahead of its request, and the
        items its consumer takes, every half window ($/streamCredit).
        """
        node = FakeNode()
        streaming(node, list(range(10)))

        async def scenario() -> list[Any]:
            c, _ = await connected(node, window=4)
            return [item async for item in c.stream("s", "items")]

        self.assertEqual(run(scenario()), list(range(10)))
        told = [r for _, r in node.requests if r["method"] != "remote_call"]
        self.assertEqual(told[0]["params"], {"id": 1, "window": 4})
        self.assertEqual([r["params"] for r in told[1:]], [
            {"id": 1, "consumed": n} for n in (2, 4, 6, 8, 10)
        ])  # fmt: skip
        self.assertEqual(node.requests[0][1], told[0])  # ahead of the request

    def test_unpacedFlowControl(self) -> None:
        """
        Against a node that does not pace streams by credit, twice the
        window held pauses reading, a call waiting or not; taking an item
        resumes it.
        """
        node = FakeNode()
        node.hold = True

        async def scenario() -> None:
            c, _ = await connected(node, window=3)
            items = c.stream("s", "items")
            reading = asyncio.ensure_future(items.__anext__())
            await turns()
            channel, request = node.held.pop()

            def item(i: int) -> None:
                channel.deliver(stream_item(request["id"], i))

            for i in range(5):
                item(i)
            self.assertTrue(channel.reading)
            item(5)
            self.assertFalse(channel.reading)  # 6 held: paused
            self.assertEqual(await reading, 0)
            self.assertTrue(channel.reading)  # below it again
            item(6)
            self.assertFalse(channel.reading)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            self.assertFalse(channel.reading)  # a call waiting does not lift the bound
            self.assertEqual(await items.__anext__(), 1)
            self.assertTrue(channel.reading)
            node.answer(*node.held.pop())
            self.assertEqual(await call, {"pong": True})
            item(7)
            self.assertFalse(channel.reading)
            await items.aclose()  # a stream given up holds nothing back
            self.assertTrue(channel.reading)

        run(scenario())

    def test_streamEndsWhileFull(self) -> None:
        """A stream that ends holding its window no longer holds reading back."""
        node = FakeNode()
        streaming(node, list(range(5)))

        async def scenario() -> tuple[bool, list[Any]]:
            c, _ = await connected(node, window=3)
            items = c.stream("s", "items")
            first = await items.__anext__()  # all five and the end arrived meanwhile
            reading = node.channel.reading
            return reading, [first] + [item async for item in items]

        self.assertEqual(run(scenario()), (True, [0, 1, 2, 3, 4]))

    def test_slowConsumerWithCalls(self) -> None:
        """
        A slow consumer of an endless stream bounds what the client reads
        while calls come and go on the connection (SPEC 12); the calls
        behind the stream's items fail at their deadline.
        """
        node = FakeNode()
        window, socket_buffers = 16, 500
        produced = [0]
        tasks: list[asyncio.Future[Any]] = []

        def answer(channel: Any, request: dict[str, Any]) -> None:
            if request["params"]["method"] != "endless":
                channel.push({"jsonrpc": "2.0", "result": "pong", "id": request["id"]})
                return

            async def generate() -> None:
                # The node writes items while the socket takes them (its own
                # flow control), 1000 a second.
                while not channel.closed:
                    if len(channel.wire) < socket_buffers:
                        for _ in range(10):
                            produced[0] += 1
                            params = {"id": request["id"], "item": produced[0]}
                            channel.push({"jsonrpc": "2.0", "method": "$/stream", "params": params})
                    await asyncio.sleep(0.01)

            tasks.append(asyncio.ensure_future(generate()))

        node.answer = answer  # type: ignore[method-assign]

        async def scenario() -> tuple[int, int, list[Any], RpcCore]:
            c, core = await connected(node, window=window)
            loop = asyncio.get_running_loop()
            outcomes: list[Any] = []

            async def ping() -> None:
                started = loop.time()
                try:
                    outcomes.append(await c.call("node", "ping", timeout=2))
                except client.RemoteError as e:
                    outcomes.append((e.code, round(loop.time() - started, 6)))

            async def pinger() -> None:
                while True:
                    tasks.append(asyncio.ensure_future(ping()))
                    await asyncio.sleep(0.5)

            pinging = asyncio.ensure_future(pinger())
            taken = 0
            stream = c.stream("s", "endless")
            async for _ in stream:
                taken += 1
                if taken == 200:  # 10 s at 20 items a second
                    break
                await asyncio.sleep(0.05)
            pinging.cancel()
            await asyncio.sleep(3)  # the last pings' deadlines
            await c.close()
            return taken, produced[0], outcomes, core

        taken, made, outcomes, core = run(scenario())
        self.assertEqual(taken, 200)
        # Without the bound, the calls kept the client reading: 10,000 made.
        self.assertLessEqual(made, taken + window + socket_buffers + 10)
        self.assertEqual(core._calls, {})
        self.assertGreater(len(outcomes), 15)
        for outcome in outcomes:
            self.assertIn(outcome, ["pong", (client.TIMED_OUT, 2.0 + ANSWER_GRACE)])
        self.assertIn((client.TIMED_OUT, 2.0 + ANSWER_GRACE), outcomes)

    def test_callBehindFullStream(self) -> None:
        """
        Against a node that does not pace streams by credit, a call's answer
        behind a held stream's items comes once the consumer takes them.
        """
        node = FakeNode()
        node.hold = True

        async def scenario() -> list[Any]:
            c, _ = await connected(node, window=2)
            items = c.stream("s", "items")
            reading = asyncio.ensure_future(items.__anext__())
            await turns()
            channel, request = node.held.pop()

            def item(i: int) -> None:
                channel.push(stream_item(request["id"], i))

            for i in range(5):
                item(i)
            got = [await reading]  # 0 taken, 1 to 4 held: paused
            self.assertFalse(channel.reading)
            call = asyncio.ensure_future(c.node.ping())
            await turns()
            _, ping = node.held.pop()
            item(5)
            channel.push({"jsonrpc": "2.0", "result": "pong", "id": ping["id"]})
            await turns()
            self.assertFalse(call.done())  # behind item 5, which waits on the wire
            got.append(await items.__anext__())  # 1: room for 5, and full again
            await turns()
            self.assertFalse(call.done())
            got.append(await items.__anext__())  # 2: room for the answer
            got.append(await call)
            got += [await items.__anext__() for _ in range(3)]
            await items.aclose()
            return got

        self.assertEqual(run(scenario()), [0, 1, 2, "pong", 3, 4, 5])


class SyncClientTests(SynchronousTestCase):
    """The blocking client, over the same in-memory node, on its own thread."""

    def client(self, node: FakeNode, **options: Any) -> client.SyncClient:
        """:returns: a blocking client of C{node}, closed after the test."""
        connect = client.connect(URL, **options)
        connect._open_one = node.open
        sync = client.SyncClient(connect)
        self.addCleanup(sync.close)
        return sync

    def test_calls(self) -> None:
        """Calls and proxies return results; errors raise RemoteError."""
        node = FakeNode()
        node.methods[("counter_server", "increment")] = lambda by=1: by
        c = self.client(node)
        self.assertEqual(c.call("node", "echo", 1, 2), [1, 2])
        self.assertEqual(c.counter_server.increment(by=7), 7)
        self.assertEqual(c.on("n2", timeout=3)["counter_server"].increment(), 1)
        self.assertEqual(c.invoke("node", "echo", [3], node="n4"), [3])
        error = self.assertRaises(client.RemoteError, c.nosuch.method)
        self.assertEqual(error.code, -32601)
        self.assertRaises(TypeError, c.node.echo, object())
        params = [r["params"] for r in node.calls()]
        self.assertEqual(
            [(p.get("node_id"), p["timeout"]) for p in params],
            [(None, 30.0), (None, 30.0), ("n2", 3), ("n4", 30.0), (None, 30.0)],
        )
        self.assertTrue(c.connected)
        self.assertEqual(c.url, URL)

    def test_threads(self) -> None:
        """Threads share one blocking client; every call gets its own answer."""
        node = FakeNode()
        c = self.client(node)
        results: dict[int, Any] = {}

        def work(k: int) -> None:
            for i in range(20):
                results[k * 100 + i] = c.node.echo(k * 100 + i)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(results, {key: [key] for key in results})
        self.assertEqual(len(results), 160)
        self.assertEqual(len(node.channels), 1)

    def test_timeout(self) -> None:
        """A blocking call fails at its deadline like an asyncio one."""
        node = FakeNode()
        node.hold = True
        c = self.client(node)
        error = self.assertRaises(client.RemoteError, c.call, "node", "ping", timeout=0.05)
        self.assertEqual(error.code, client.TIMED_OUT)

    def test_stream(self) -> None:
        """A blocking stream is an iterator; closing it early cancels the stream."""
        node = FakeNode()
        streaming(node, ["a", "b", "c"])
        c = self.client(node)
        self.assertEqual(list(c.stream("s", "items")), ["a", "b", "c"])
        self.assertEqual(list(c.s.items.stream()), ["a", "b", "c"])
        node.hold = True
        items = c.stream("s", "items")
        reader = threading.Thread(target=lambda: next(items, None))
        reader.start()
        while not node.held:
            reader.join(0.01)
        channel, request = node.held[0]
        c._loop.call_soon_threadsafe(
            channel.deliver,
            {"jsonrpc": "2.0", "method": "$/stream", "params": {"id": request["id"], "item": 1}},
        )
        reader.join(10)
        items.close()
        self.assertEqual(node.cancels(), [request["id"]])

    def test_streamInterrupted(self) -> None:
        """
        Ctrl-C while a blocking stream waits for an item raises
        KeyboardInterrupt (not an error of the stream's closing), and the
        stream is cancelled at the node.
        """
        node = FakeNode()
        streaming(node, ["a"])
        node.hold = True
        c = self.client(node)
        items = c.stream("s", "items")
        self.assertIs(threading.current_thread(), threading.main_thread())
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        main = threading.get_ident()

        def interrupt() -> None:
            while not node.held:
                time.sleep(0.01)
            signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with self.assertRaises(KeyboardInterrupt) as caught:
            next(items)
        interrupter.join(10)
        self.assertIsNone(caught.exception.__context__)
        [(_, request)] = node.held
        self.assertEqual(node.cancels(), [request["id"]])

    def test_close(self) -> None:
        """close() ends the thread; calls after it raise ClientClosed."""
        node = FakeNode()
        c = self.client(node)
        c.close()
        self.assertFalse(c._thread.is_alive())
        self.assertRaises(client.ClientClosed, c.node.ping)
        c.close()
        with self.client(FakeNode()) as other:
            self.assertEqual(other.node.ping(), {"pong": True})
        self.assertFalse(other._thread.is_alive())

    def test_connectFails(self) -> None:
        """A blocking client that cannot connect raises ConnectError and leaves no thread."""
        node = FakeNode()
        node.refuse = ChannelError("nobody there")
        before = threading.active_count()
        self.assertRaises(client.ConnectError, self.client, node)
        self.assertEqual(threading.active_count(), before)

    def test_fromItsOwnLoop(self) -> None:
        """Calling a blocking client from its own event loop is an error, not a deadlock."""
        node = FakeNode()
        c = self.client(node)
        caught: list[BaseException] = []

        def inside() -> None:
            try:
                c.node.ping()
            except RuntimeError as e:
                caught.append(e)

        done = threading.Event()
        c._loop.call_soon_threadsafe(lambda: (inside(), done.set()))
        done.wait(10)
        self.assertEqual(len(caught), 1)


class OptionTests(TempDirMixin, SynchronousTestCase):
    """The addresses and TLS options a client takes (L{relaytx._clientopts})."""

    def test_wsRpcUrl(self) -> None:
        """Every form of a node's address leads to its /ws/rpc."""
        for given, expected in [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws/rpc"),
            ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws/rpc"),
            ("127.0.0.1:8080", "ws://127.0.0.1:8080/ws/rpc"),
            ("ws://h:1", "ws://h:1/ws/rpc"),
            ("https://h:1", "wss://h:1/ws/rpc"),
            ("wss://h:1/ws/rpc", "wss://h:1/ws/rpc"),
            ("https://h/proxy/ws/rpc?x=1", "wss://h/proxy/ws/rpc?x=1"),
            ("HTTP://[::1]:8", "ws://[::1]:8/ws/rpc"),
            ("http://h:1/rpc", "ws://h:1/ws/rpc"),  # (the node's other entry named)
            ("https://h/proxy/rpc/", "wss://h/proxy/ws/rpc"),
        ]:
            self.assertEqual(ws_rpc_url(given), expected, given)

    def test_httpBaseUrl(self) -> None:
        """relay call's base URL: http(s), no trailing slash."""
        self.assertEqual(http_base_url("ws://h:1/"), "http://h:1")
        self.assertEqual(http_base_url("wss://h:1"), "https://h:1")
        self.assertEqual(http_base_url("h:2"), "http://h:2")
        self.assertEqual(http_base_url("http://h:3/rpc"), "http://h:3")  # (was /rpc/rpc)
        self.assertEqual(http_base_url("ws://h:4/ws/rpc/"), "http://h:4")
        self.assertEqual(http_base_url("https://h/proxy/rpc"), "https://h/proxy")
        self.assertTrue(is_secure("https://h"))
        self.assertFalse(is_secure("h:1"))

    def test_badUrls(self) -> None:
        """Anything else is a ValueError naming it."""
        for bad in ["ftp://h:1", "http://", "http://h:99999", "http://h:x", ""]:
            self.assertRaises(ValueError, ws_rpc_url, bad)
            self.assertRaises(ValueError, client.connect, bad)

    def test_tlsOptionsNeedTls(self) -> None:
        """TLS options with a plain address, or both ssl and files, are ValueErrors."""
        error = self.assertRaises(ValueError, client.connect, "http://h:1", cacert="ca.pem")
        self.assertIn("https://", str(error))
        self.assertRaises(ValueError, client.connect, "https://h:1", cacert="x", ssl=ssl_context())
        # (Not a context at all: said so, not an AttributeError later.)
        error = self.assertRaises(ValueError, client.connect, "https://h:1", ssl="yes")
        self.assertIn("ssl.SSLContext", str(error))

    def test_sslContext(self) -> None:
        """The context verifies host names; missing files and a lone key are ValueErrors."""
        context = ssl_context()
        self.assertTrue(context.check_hostname)
        missing = self.mktemp()
        self.assertIn("--cacert", str(self.assertRaises(ValueError, ssl_context, missing)))
        self.assertIn("--cert", str(self.assertRaises(ValueError, ssl_context, None, missing)))
        self.assertIn("--key", str(self.assertRaises(ValueError, ssl_context, None, None, "k")))

    def test_authHeaders(self) -> None:
        """A token is a bearer Authorization header; none means no header; no Origin ever."""
        self.assertEqual(auth_headers("s3cret"), [("Authorization", "Bearer s3cret")])
        self.assertEqual(auth_headers(None), [])
        for bad in ["", "a\r\nX-Evil: 1", "tab\there"]:
            self.assertRaises(ValueError, auth_headers, bad)


class ImportTests(SynchronousTestCase):
    """What importing the client costs."""

    def test_noTwisted(self) -> None:
        """Importing relaytx.client imports no Twisted module, and relaytx still exports its API."""
        code = (
            "import sys, relaytx.client\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'twisted'], 'twisted'\n"
            "import relaytx\n"
            "assert relaytx.Server.__name__ == 'Server'\n"
            "assert 'exposed' in dir(relaytx)\n"
            "print('ok')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.assertEqual((done.returncode, done.stdout), (0, "ok\n"), done.stderr)

    def test_unknownName(self) -> None:
        """relaytx has no other attributes than its API."""
        import relaytx

        self.assertRaises(AttributeError, getattr, relaytx, "nothing_here")
