"""
Helpers for integration tests: real nodes on 127.0.0.1, in this process's
reactor or as C{relay node} subprocesses, and bounded waits.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relaytx.config import build_config
from relaytx.node import RelayNode
from relaytx.server import Server, exposed
from tests import support

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


#: Where L{free_port} looks: below the kernel's ephemeral range (32768
#: and up), from which every outgoing connection takes its local port. A
#: port picked from that range and let go may be such a connection's by
#: the time a node binds it ("address already in use", under load).
_FREE_PORTS = range(12_000, 20_000)


def write_app(directory: str, name: str, source: str) -> str:
    """Write an app's C{source} to C{directory}/C{name}; :returns: its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(source)
    return path


def free_port() -> int:
    """:returns: a TCP port on 127.0.0.1 that nothing listens on or holds, a moment ago."""
    for port in random.sample(_FREE_PORTS, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_FREE_PORTS}")


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> float:
    """
    Poll C{predicate} (sync or returning an awaitable) on the reactor until
    it is true.

    :returns: the seconds it took.
    :raises AssertionError: after C{timeout} seconds.
    """
    start = reactor.seconds()
    while True:
        value = predicate()
        if isinstance(value, Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return reactor.seconds() - start
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await deferLater(reactor, interval, lambda: None)


class Counter(support.Counter):
    """The test counter, with a slow method that tracks overlap, and one that fails."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.max_running = 0

    @exposed
    async def slow_increment(self, delay: float) -> int:
        """Increment after C{delay} seconds, tracking overlap."""
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await deferLater(reactor, delay, lambda: None)
        finally:  # also when the call is cancelled (its caller gave up)
            self.running -= 1
        self.count += 1
        return self.count

    @exposed
    def fail(self, message: str) -> None:
        raise ValueError(message)


def start_node(
    case: Any,
    node_id: str,
    peers: Iterable[str] = (),
    port: int | None = None,
    servers: dict[str, Server] | None = None,
    **options: Any,
) -> RelayNode:
    """
    Start a node in this process on 127.0.0.1; it is stopped at the end of
    the test C{case}.
    """
    config = build_config(
        {"node_id": node_id, "port": port or free_port(), "add_peer": list(peers), **options}
    )
    node = RelayNode(config, reactor)
    if not getattr(case, "_settle_registered", False):
        case._settle_registered = True
        case.addCleanup(settle)  # cleanups run last-in first-out: this one last
    for name, server in (servers or {}).items():
        node.expose(name, server)
    node.privilegedStartService()
    node.startService()
    case.addCleanup(lambda: node.stopService() if node.running else None)
    return node


async def settle(timeout: float = 3.0) -> None:
    """
    Wait for Autobahn's batched timers on the global reactor to run out (a
    test's own Autobahn clients have them; relaytx's connections use timers
    of the reactor's own, stopped with the connection), so the test leaves
    a clean reactor.
    """

    def quiet() -> bool:
        return not any("_BatchedTimer" in repr(c) for c in reactor.getDelayedCalls())

    await wait_for(quiet, timeout, 0.05, "Autobahn's timers")


def url(node: RelayNode) -> str:
    """:returns: the base URL of an in-process node."""
    assert node.listening_port is not None
    return f"http://127.0.0.1:{node.listening_port.getHost().port}"


def ws(node: RelayNode) -> str:
    """:returns: the peer address of an in-process node."""
    return url(node).replace("http://", "ws://")


async def get_json(address: str) -> Any:
    response = await treq.get(address, persistent=False)
    return json.loads(await response.content())


async def rpc(base: str, method: str, params: Any = None, request_id: Any = 1) -> Any:
    """POST one JSON-RPC request; returns the decoded answer."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        body["params"] = params
    return await post_json(base + "/rpc", body)


async def post_json(address: str, body: Any) -> Any:
    """POST C{body} as JSON; returns the decoded answer."""
    response = await treq.post(address, data=json.dumps(body).encode(), persistent=False)
    return json.loads(await response.content())


class NodeProcess:
    """
    A C{relay node} subprocess. Killed (SIGKILL) at the end of the test.
    """

    def __init__(self, case: Any, node_id: str, port: int | None = None, *args: str) -> None:
        self.node_id = node_id
        self.port = port or free_port()
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        case.addCleanup(self.kill)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "relaytx.cli", "node",
            "--node-id", self.node_id, "--port", str(self.port), *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        async def healthy() -> bool:
            try:
                return (await get_json(self.url + "/health"))["status"] == "healthy"
            except Exception:
                assert self.process is not None and self.process.poll() is None, (
                    self.process.stderr.read().decode() if self.process.stderr else "exited"
                )
                return False

        await wait_for(healthy, timeout, 0.05, f"{self.node_id} to answer /health")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
