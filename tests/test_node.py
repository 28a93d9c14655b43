"""
Tests for L{relaytx.node.RelayNode}: listening and its start-up warnings.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaytx.node import RelayNode
from relaytx.testing import memory_node


class _Port:
    def __init__(self, address: object) -> None:
        self._address = address

    def getHost(self) -> object:
        return self._address


class StartupWarningTests(SynchronousTestCase):
    """The start-up warnings of SPEC section 9, one log line each."""

    def warnings(self, node: RelayNode, address: object) -> list[str]:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        said = node._warn(_Port(address))  # type: ignore[arg-type]
        logged = [e["text"] for e in events if "text" in e and e["log_format"] == "{text}"]
        self.assertEqual(said, logged)
        return said

    def directory(self) -> str:
        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def secret(self, mode: int) -> str:
        path = os.path.join(self.directory(), "secret")
        with open(path, "w") as f:
            f.write("s" * 32)
        os.chmod(path, mode)
        return path

    def test_all_interfaces(self) -> None:
        """Beyond loopback with no secret and no tokens: the open-mesh and HTTP warnings."""
        said = self.warnings(memory_node("n1"), IPv4Address("TCP", "0.0.0.0", 8080))
        self.assertEqual(len(said), 2)
        self.assertIn("open mesh", said[0])
        self.assertIn("HTTP clients are not authenticated", said[1])

    def test_loopback(self) -> None:
        """On loopback, an open mesh and open HTTP are fine: quiet."""
        self.assertEqual(self.warnings(memory_node("n1"), IPv4Address("TCP", "127.0.0.1", 1)), [])
        mapped = IPv6Address("TCP", "::ffff:127.0.0.1", 1)
        self.assertEqual(self.warnings(memory_node("n1"), mapped), [])

    def test_unix_socket(self) -> None:
        """A UNIX socket reaches only this machine: quiet."""
        self.assertEqual(self.warnings(memory_node("n1"), UNIXAddress("/tmp/relay.sock")), [])

    def test_tokens_beside_an_open_mesh(self) -> None:
        """
        HTTP clients that need a token beside an open mesh are named, on
        loopback too: a peer link needs no token, and calls any server.
        Not with a secret.
        """
        tokens = {"http": {"tokens": {"ci": "0" * 64}}}
        loopback = IPv4Address("TCP", "127.0.0.1", 1)
        [said] = self.warnings(memory_node("n1", **tokens), loopback)
        self.assertIn("HTTP clients need a token, but anyone who can reach 127.0.0.1", said)
        self.assertIn("/ws/p2p", said)
        secret = self.secret(0o600)
        self.assertEqual(
            self.warnings(memory_node("n1", secret_file=secret, **tokens), loopback), []
        )
        everywhere = IPv4Address("TCP", "0.0.0.0", 8080)
        [said] = self.warnings(memory_node("n1", **tokens), everywhere)
        self.assertIn("open mesh: listening on 0.0.0.0 without --secret-file", said)

    def test_with_secret(self) -> None:
        """With a private secret file the mesh is not open: only the HTTP warning is left."""
        node = memory_node("n1", secret_file=self.secret(0o600))
        said = self.warnings(node, IPv4Address("TCP", "10.1.2.3", 8080))
        self.assertEqual(len(said), 1)
        self.assertIn("HTTP clients", said[0])

    def test_readable_secret(self) -> None:
        """A secret file its group or others may read (or write) is named, on loopback too."""
        for mode in (0o640, 0o604, 0o644, 0o602):
            path = self.secret(mode)
            said = self.warnings(
                memory_node("n1", secret_file=path), IPv4Address("TCP", "127.0.0.1", 1)
            )
            self.assertEqual(len(said), 1, oct(mode))
            self.assertIn(path, said[0])
            self.assertIn(f"{mode:o}", said[0])
            self.assertIn("open to its group or others", said[0])

    def test_readable_endpoint_key(self) -> None:
        """An ssl: endpoint's privateKey that others may read is named too."""
        from tests.support import Authority

        cert, key = Authority("CA").issue("n1")
        directory = self.directory()
        cert_file, key_file = os.path.join(directory, "n1.pem"), os.path.join(directory, "n:1.key")
        for path, data in ((cert_file, cert), (key_file, key)):
            with open(path, "wb") as f:
                f.write(data)
        escaped = key_file.replace(":", "\\:")
        port = f"ssl:0:interface=127.0.0.1:privateKey={escaped}:certKey={cert_file}"
        loopback = IPv4Address("TCP", "127.0.0.1", 1)
        os.chmod(key_file, 0o600)
        self.assertEqual(self.warnings(memory_node("n1", port=port), loopback), [])
        os.chmod(key_file, 0o644)
        [said] = self.warnings(memory_node("n1", port=port), loopback)
        self.assertIn(f"--port privateKey {key_file} is open to its group or others", said)

    def test_interface_ignored(self) -> None:
        """
        An --interface given with a --port that is an endpoint is named as
        ignored (the endpoint listens where it says: on every address, for
        a bare tcp:PORT); not when the port is a number, or none is given.
        """
        loopback = IPv4Address("TCP", "127.0.0.1", 1)
        everywhere = IPv4Address("TCP", "0.0.0.0", 8080)
        [*_, said] = self.warnings(
            memory_node("n1", port="tcp:8080", interface="127.0.0.2"), everywhere
        )
        self.assertEqual(
            said,
            "--interface 127.0.0.2 is ignored: --port tcp:8080 is an endpoint, and listens"
            " where it says (0.0.0.0); give tcp:PORT:interface=ADDR",
        )
        self.assertEqual(
            self.warnings(memory_node("n1", port="8080", interface="127.0.0.2"), loopback), []
        )
        self.assertEqual(
            self.warnings(memory_node("n1", port="tcp:8080:interface=127.0.0.1"), loopback), []
        )


class ListenTests(SynchronousTestCase):
    """How a node listens on a port number."""

    def test_backlog_and_interface(self) -> None:
        """A port number listens on the interface with a backlog of 1024, not Twisted's 50."""
        reactor = MemoryReactorClock()
        node = memory_node("n1", reactor, port=8123, interface="127.0.0.1")
        node.listen()
        ((port, _factory, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (8123, 1024, "127.0.0.1"))


class StopTests(SynchronousTestCase):
    """How a node stops."""

    def test_listening_ends_first(self) -> None:
        """
        A stopping node stops listening at once, while its links close: a
        call that came meanwhile ran, and its client was cut off unanswered.
        """
        reactor = MemoryReactorClock()
        node = memory_node("n1", reactor, port=8123)
        node.listen()
        stopped: list[bool] = []
        port = node.listening_port
        assert port is not None
        self.patch(port, "stopListening", lambda: stopped.append(True))
        links_closed: Deferred[None] = Deferred()
        self.patch(node.mesh, "stop", lambda: links_closed)
        done = node.stopService()
        self.assertEqual(stopped, [True])
        self.assertNoResult(done)
        links_closed.callback(None)
        self.successResultOf(done)
        self.assertEqual(stopped, [True])


class ExposeTests(SynchronousTestCase):
    """The names a node's servers may have."""

    def test_reserved_names_refused(self) -> None:
        """
        JSON-RPC 2.0 keeps method names that begin with C{rpc.} for itself:
        a server named C{rpc} (or C{rpc.x}) could not be called by name,
        so it is refused, saying why; names merely holding C{rpc} are fine.
        """
        from relaytx.server import Server

        node = memory_node("n1")
        for name in ["rpc", "rpc.math"]:
            error = self.assertRaises(ValueError, node.expose, name, Server())
            self.assertIn("'rpc.'", str(error))
            self.assertNotIn(name, node.local_servers())
        for name in ["rpcx", "my.rpc", "rpc_tools"]:
            node.expose(name, Server())
            self.assertIn(name, node.local_servers())

    def test_one_server_under_two_names(self) -> None:
        """
        A server exposed under two names is still one server: it runs one
        call at a time, whichever name each call uses, in arrival order.
        """
        from twisted.internet.defer import Deferred

        from relaytx.server import Server, exposed

        started: list[Deferred[None]] = []

        class Slow(Server):
            @exposed
            def work(self) -> Deferred[None]:
                started.append(Deferred())
                return started[-1]

        node = memory_node("n1")
        slow = Slow()
        node.expose("x1", slow)
        node.expose("x2", slow)
        first = node.call("n1", "x1", "work")
        second = node.call("n1", "x2", "work")
        third = node.call("n1", "x1", "work")
        self.assertEqual(len(started), 1)
        self.assertEqual(node.servers.queue_depth(), 2)
        started[0].callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(len(started), 2)
        self.assertNoResult(second)
        node.unexpose("x1")  # the queued call still runs, and the other name stays
        started[1].callback(None)
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(len(started), 3)
        started[2].callback(None)
        self.assertIsNone(self.successResultOf(third))
        fourth = node.call("n1", "x2", "work")
        self.assertEqual(len(started), 4)
        started[3].callback(None)
        self.assertIsNone(self.successResultOf(fourth))


class MethodErrorLogTests(SynchronousTestCase):
    """What a node logs of a method that raised."""

    def test_logged_as_error(self) -> None:
        """
        A method that raised is logged at level error with its traceback,
        not critical: the node is well, and its caller has the exception.
        """
        from twisted.logger import LogLevel

        from relaytx.server import Server, exposed

        class Failing(Server):
            @exposed
            def boom(self) -> None:
                raise KeyError("k")

        node = memory_node("n1")
        node.expose("f", Failing())
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.failureResultOf(node.call("n1", "f", "boom"))
        raised = [e for e in events if e.get("log_format") == "{server}.{method} raised"]
        self.assertEqual([e["log_level"] for e in raised], [LogLevel.error])
        self.assertIsInstance(raised[0]["log_failure"].value, KeyError)
        self.flushLoggedErrors(KeyError)


class NestedTimeoutTests(SynchronousTestCase):
    """A method whose own call to a server of its node times out."""

    def test_nested_local_timeout_is_the_methods_failure(self) -> None:
        """
        A call the method made to a server of its own node that times out
        (running, or waiting for its turn) is the method's failure, -32000
        CallTimeout: not its own call's timeout (-32001, which callers count
        against the instance's circuit). Its own deadline is still -32001.
        """
        from twisted.internet.defer import Deferred

        from relaytx.errors import CallTimeout, RemoteCallError
        from relaytx.server import Server, exposed

        clock = MemoryReactorClock()
        node = memory_node("n1", clock)

        class Slow(Server):
            @exposed
            def hold(self) -> Deferred[None]:
                return Deferred()

        class Outer(Server):
            @exposed
            async def nested(self) -> None:
                await node.call("n1", "slow", "hold", timeout=0.2)

        node.expose("slow", Slow())
        node.expose("outer", Outer())
        for busy in (False, True):
            held = node.call("n1", "slow", "hold", timeout=5) if busy else None
            d = node.call("n1", "outer", "nested", timeout=30)
            clock.advance(0.2)
            error = self.failureResultOf(d, RemoteCallError).value
            self.assertEqual((error.code, error.data["type"]), (-32000, "CallTimeout"), busy)
            if held is not None:
                clock.advance(5)
                self.failureResultOf(held, CallTimeout)
        d = node.call("n1", "slow", "hold", timeout=1)
        clock.advance(1)
        self.assertEqual(self.failureResultOf(d, CallTimeout).value.code, -32001)
        self.flushLoggedErrors(CallTimeout)
