"""
asyncio for unit tests without waiting: an event loop whose clock is
virtual (a wait is skipped at once, the clock moves on), and an in-memory
node's C{/ws/rpc} for L{relaytx.client} to talk to.
"""

from __future__ import annotations

import asyncio
import selectors
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from relaytx._wsconn import ChannelError, ChannelListener


class Deadlock(AssertionError):
    """The loop has nothing to run and nothing to wait for."""


class _VirtualSelector(selectors.DefaultSelector):
    """Never sleeps: instead of waiting C{timeout} seconds, moves the clock on."""

    def __init__(self, clock: VirtualClockLoop) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Deadlock("the event loop has nothing left to run: a test waits forever")
        self._clock.now += timeout
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """
    An event loop whose C{time()} moves only when it would wait: timers
    fire at once, in order, at their own virtual times.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, Any], limit: float = 3600.0) -> Any:
    """
    Run C{coro} to its end on a new L{VirtualClockLoop}.

    :param limit: virtual seconds after which it fails (a test that waits
        on a timer that keeps coming back).
    :returns: its result.
    """
    loop = VirtualClockLoop()
    try:

        async def bounded() -> Any:
            async with asyncio.timeout(limit):
                return await coro

        return loop.run_until_complete(bounded())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


async def turns(n: int = 5) -> None:
    """Let the loop run C{n} turns (callbacks scheduled meanwhile run)."""
    for _ in range(n):
        await asyncio.sleep(0)


class FakeChannel:
    """One connection to a L{FakeNode}: what L{relaytx._wsconn.WebSocketChannel} offers."""

    def __init__(self, node: FakeNode, listener: ChannelListener) -> None:
        self.node = node
        self.listener = listener
        self.closed = False
        self.reading = True
        #: requests this channel took and "never wrote" (see unwritten())
        self.not_written: list[bytes] = []
        #: what the node wrote with push() that the client has not read yet
        self.wire: deque[Any] = deque()

    def send(self, payload: bytes) -> None:
        if self.closed:
            raise ChannelError("closed")
        self.node.received(self, orjson.loads(payload))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(
                self.listener.channel_lost, self, "closed by this client"
            )

    def drop(self, reason: str = "connection lost") -> None:
        """The network drops this connection."""
        self.closed = True
        self.listener.channel_lost(self, reason)

    def deliver(self, message: Any) -> None:
        """The node sends C{message} (JSON) on this connection."""
        self.listener.message_received(orjson.dumps(message))

    def push(self, message: Any) -> None:
        """
        The node writes C{message} (JSON) to the connection: unlike
        L{deliver}, it arrives only while the client reads, after what was
        pushed before it (a socket).
        """
        self.wire.append(message)
        self.pump()

    def pump(self) -> None:
        """Hand the client what waits on the wire, while it reads."""
        while self.reading and self.wire and not self.closed:
            self.deliver(self.wire.popleft())

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        asyncio.get_running_loop().call_soon(self.pump)

    def unwritten(self) -> list[bytes]:
        return self.not_written


class FakeNode:
    """
    A node's C{/ws/rpc} in memory. Requests are answered on the next turn
    of the loop by C{methods[(server, method)](*args, **kwargs)} (an
    exception is a -32000 error) unless C{hold} is set: then they wait in
    C{held} to be answered by hand.

    @ivar requests: every request received, in order, with its channel.
    @ivar refuse: an error the next connection attempts fail with.
    """

    def __init__(self) -> None:
        self.methods: dict[tuple[str, str], Callable[..., Any]] = {
            ("node", "echo"): lambda *args: list(args),
            ("node", "ping"): lambda: {"pong": True},
        }
        self.requests: list[tuple[FakeChannel, dict[str, Any]]] = []
        self.held: list[tuple[FakeChannel, dict[str, Any]]] = []
        self.channels: list[FakeChannel] = []
        self.attempts: list[float] = []
        self.refuse: ChannelError | None = None
        self.hold = False

    async def open(self, listener: ChannelListener) -> FakeChannel:
        """The opener the client is given."""
        self.attempts.append(asyncio.get_running_loop().time())
        if self.refuse is not None:
            raise self.refuse
        channel = FakeChannel(self, listener)
        self.channels.append(channel)
        return channel

    @property
    def channel(self) -> FakeChannel:
        """The latest connection."""
        return self.channels[-1]

    def calls(self) -> list[dict[str, Any]]:
        """:returns: the requests that were calls (not notifications)."""
        return [r for _, r in self.requests if "id" in r]

    def cancels(self) -> list[Any]:
        """:returns: the ids of the C{$/cancelRequest} notifications received."""
        return [r["params"]["id"] for _, r in self.requests if r["method"] == "$/cancelRequest"]

    def received(self, channel: FakeChannel, request: dict[str, Any]) -> None:
        self.requests.append((channel, request))
        if "id" not in request:
            return
        if self.hold:
            self.held.append((channel, request))
            return
        asyncio.get_running_loop().call_soon(self.answer, channel, request)

    def answer(self, channel: FakeChannel, request: dict[str, Any]) -> None:
        """Answer C{request} as the methods say (nothing if the channel closed)."""
        if channel.closed:
            return
        params = request["params"]
        method = self.methods.get((params["server_name"], params["method"]))
        if method is None:
            error = {"code": -32601, "message": "Method not found", "data": {"node_id": "fake"}}
            channel.deliver({"jsonrpc": "2.0", "error": error, "id": request["id"]})
            return
        try:
            result = method(*params.get("args", []), **params.get("kwargs", {}))
        except Exception as e:
            error = {
                "code": -32000,
                "message": f"{type(e).__name__}: {e}",
                "data": {"node_id": "fake", "type": type(e).__name__, "message": str(e)},
            }
            channel.deliver({"jsonrpc": "2.0", "error": error, "id": request["id"]})
            return
        channel.deliver({"jsonrpc": "2.0", "result": result, "id": request["id"]})
