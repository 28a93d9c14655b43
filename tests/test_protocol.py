"""
Tests for L{relaytx._protocol}: peer addresses, the dialler's back-off and
socket tuning.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._dialer import Dialer, peer_url
from relaytx.testing import memory_node


class PeerUrlTests(SynchronousTestCase):
    """SPEC section 3's address forms."""

    def test_forms(self) -> None:
        """http and ws mean ws://h:p/ws/p2p, https and wss mean TLS; the dialler names itself."""
        self.assertEqual(
            peer_url("http://10.0.0.2:8080", "me"),
            ("ws://10.0.0.2:8080/ws/p2p?node_id=me", "10.0.0.2", 8080, False),
        )
        self.assertEqual(peer_url("ws://h:81", "me")[0], "ws://h:81/ws/p2p?node_id=me")
        self.assertEqual(peer_url("https://h:8443", "me")[2:], (8443, True))
        self.assertEqual(peer_url("wss://h", "me")[2:], (443, True))
        self.assertEqual(peer_url("h:9000", "me")[0], "ws://h:9000/ws/p2p?node_id=me")

    def test_refused(self) -> None:
        """Other schemes and junk are refused with ValueError."""
        for address in ("ftp://h:21", "mailto:x@y", "http://", "ws://h:99999", ""):
            self.assertRaises(ValueError, peer_url, address, "me")


class BackoffTests(SynchronousTestCase):
    """The dialler re-dials with exponential back-off that counts failed handshakes."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.node = memory_node("me", self.reactor)
        self.dialer = Dialer(self.node.mesh, "ws://127.0.0.1:9", self.reactor, 1 << 20)

    def test_grows_and_caps(self) -> None:
        """Delays double from the initial delay (plus jitter) up to the cap."""
        delays = [self.dialer._retry_delay(attempt) for attempt in range(1, 10)]
        for attempt, delay in enumerate(delays, start=1):
            base = min(Dialer.INITIAL_DELAY * 2**attempt, Dialer.MAX_DELAY)
            self.assertGreaterEqual(delay, base)
            self.assertLessEqual(delay, base + Dialer.INITIAL_DELAY)
        self.assertLessEqual(max(delays), Dialer.MAX_DELAY + Dialer.INITIAL_DELAY)

    def test_failed_handshakes_count(self) -> None:
        """ClientService restarts its count at each TCP connect; failed handshakes keep growing."""
        for _ in range(5):
            self.dialer.handshake_failed(1006, "refused")
        delay = self.dialer._retry_delay(1)  # what ClientService asks after a TCP connect
        self.assertGreaterEqual(delay, min(Dialer.INITIAL_DELAY * 2**5, Dialer.MAX_DELAY))

    def test_open_link_resets(self) -> None:
        """A link that opens starts the back-off over and teaches the dialler the peer's id."""
        for _ in range(5):
            self.dialer.handshake_failed(1006, "refused")
        self.dialer.link_opened("peer")
        self.assertEqual(self.dialer.node_id, "peer")
        self.assertLessEqual(self.dialer._retry_delay(1), 3 * Dialer.INITIAL_DELAY)

    def test_linked_otherwise_waits_long(self) -> None:
        """While the peer is linked through its own dial, the dialler checks back only rarely."""
        self.dialer.node_id = "peer"
        self.node.mesh.links["peer"] = object()  # type: ignore[assignment]  # presence is all it reads
        self.assertEqual(self.dialer._retry_delay(1), Dialer.MAX_DELAY)
