"""
Tests for L{relaytx.node.RelayNode}: listening and its start-up warnings.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaytx._listen import warn_if_open
from relaytx.testing import memory_node


class _Port:
    def __init__(self, address: object) -> None:
        self._address = address

    def getHost(self) -> object:
        return self._address


class OpenMeshWarningTests(SynchronousTestCase):
    """Without a secret, a node listening beyond loopback says the mesh is open."""

    def warnings(self, node: object, address: object) -> list[str]:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        warn_if_open(_Port(address), node.secret is not None)  # type: ignore[arg-type]
        return [e["log_format"] for e in events if "open mesh" in e.get("log_format", "")]

    def test_all_interfaces(self) -> None:
        """Listening on 0.0.0.0 without a secret logs the open-mesh warning."""
        node = memory_node("n1")
        self.assertEqual(len(self.warnings(node, IPv4Address("TCP", "0.0.0.0", 8080))), 1)

    def test_loopback(self) -> None:
        """Listening on loopback is quiet."""
        node = memory_node("n1")
        self.assertEqual(self.warnings(node, IPv4Address("TCP", "127.0.0.1", 8080)), [])

    def test_unix_socket(self) -> None:
        """A UNIX socket reaches only this machine: quiet."""
        node = memory_node("n1")
        self.assertEqual(self.warnings(node, UNIXAddress("/tmp/relay.sock")), [])

    def test_with_secret(self) -> None:
        """With a cluster secret the mesh is not open: quiet."""
        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        secret = os.path.join(directory, "secret")
        with open(secret, "w") as f:
            f.write("s" * 32)
        node = memory_node("n1", secret_file=secret)
        self.assertEqual(self.warnings(node, IPv4Address("TCP", "10.1.2.3", 8080)), [])


class ListenTests(SynchronousTestCase):
    """How a node listens on a port number."""

    def test_backlog_and_interface(self) -> None:
        """A port number listens on the interface with a backlog of 1024, not Twisted's 50."""
        reactor = MemoryReactorClock()
        node = memory_node("n1", reactor, port=8123, interface="127.0.0.1")
        node.listen()
        ((port, _factory, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (8123, 1024, "127.0.0.1"))
