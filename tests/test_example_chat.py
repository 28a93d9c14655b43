"""
Tests for C{examples/chat.py}: a custom message type between nodes, routed
through a node that does not know it.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx.testing import MemoryMesh, memory_node

CHAT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "chat.py"
)


class ChatTests(SynchronousTestCase):
    """Chat lines travel as their own message type."""

    def test_two_nodes(self) -> None:
        """A line said on one node lands in the other's inbox, with its sender."""
        reactor = MemoryReactorClock()
        alice, bob = memory_node("alice", reactor), memory_node("bob", reactor)
        for node in (alice, bob):
            node.load_app(CHAT)
        network = MemoryMesh()
        network.link(bob, alice)
        network.settle()
        self.assertTrue(self.successResultOf(bob.call(None, "chat", "say", "alice", "hi alice")))
        network.pump()
        inbox = self.successResultOf(alice.call(None, "chat", "inbox"))
        self.assertEqual([(m["from"], m["text"]) for m in inbox], [("bob", "hi alice")])
        sent = network.link_between(bob, alice).sent_by(bob, "chat")
        self.assertEqual([e.data for e in sent], [{"text": "hi alice"}])

    def test_through_a_node_without_the_app(self) -> None:
        """A chat line crosses a middle node that has no handler for it."""
        reactor = MemoryReactorClock()
        alice, relay, bob = (memory_node(n, reactor) for n in ("alice", "relay", "bob"))
        alice.load_app(CHAT)
        bob.load_app(CHAT)
        network = MemoryMesh()
        network.link(alice, relay)
        network.link(relay, bob)
        network.settle()
        self.assertEqual(alice.views.routes()["bob"]["hops"], 2)
        self.successResultOf(alice.call(None, "chat", "say", "bob", "over the relay"))
        network.pump()
        inbox = self.successResultOf(bob.call(None, "chat", "inbox"))
        self.assertEqual([(m["from"], m["text"]) for m in inbox], [("alice", "over the relay")])
