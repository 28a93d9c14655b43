"""
Tests for L{relaytx._protocol} and L{relaytx._dialer}: peer addresses, the
dialler's back-off, and the Autobahn adapters driven in memory.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from relaytx._dialer import Dialer, _WhileUnlinked, peer_url
from relaytx._frames import frame_header
from relaytx._linkauth import PENDING_TIMEOUT, SEND_BATCH_BYTES
from relaytx._protocol import AUTH_TIMEOUT, PeerServerFactory
from relaytx.node import RelayNode
from relaytx.peer import CLOSE_AUTH_FAILED, CLOSE_REMOVED
from relaytx.testing import link_nodes, memory_node

SECRET = b"0123456789abcdef-cluster"
OTHER_SECRET = b"fedcba9876543210-intruder"


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
        self.assertEqual(peer_url("[::1]:9000", "me")[0], "ws://[::1]:9000/ws/p2p?node_id=me")

    def test_refused(self) -> None:
        """
        Other schemes and junk are refused with ValueError, and so is a
        word with neither scheme nor port (a typo more likely than port 80).
        """
        for address in (
            "ftp://h:21", "mailto:x@y", "http://", "ws://h:99999", "", "notaurl", "localhost",
        ):  # fmt: skip
            self.assertRaises(ValueError, peer_url, address, "me")

    def test_bad_port_or_host(self) -> None:
        """
        Port 0 is no port (it was dialled as 80); a host that is no IP
        address or DNS name is no host (it failed at every attempt).
        """
        for address in (
            "ws://127.0.0.1:0",
            "ws://a b:1",
            "ws://-bad-.example:1",
            f"ws://{'a' * 64}.example:1",
            "ws://h%20x:1",
        ):
            self.assertRaises(ValueError, peer_url, address, "me")
        for address in ("ws://[::1]:1", "ws://node-1.example.:1", "ws://my_service_1:1"):
            peer_url(address, "me")


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

    def test_learns_the_id_of_a_peer_that_dialled(self) -> None:
        """Refused by a peer that holds the link it dialled itself, the dialler learns its id."""
        self.assertIsNone(self.dialer.node_id)
        reason = (
            "WebSocket connection upgrade failed [409]: already linked to me (the link p dialled)"
        )
        self.dialer.handshake_failed(1006, reason)
        self.assertEqual(self.dialer.node_id, "p")

    def test_duplicate_warned(self) -> None:
        """A refusal saying this node's id is linked already says so, not once per attempt."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        reason = "WebSocket connection upgrade failed [409]: me has a healthy link here; ..."
        for _ in range(8):
            self.dialer.handshake_failed(1006, reason)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 4)  # at 1, 2, 4 and 8 attempts
        self.assertIn("is another process running as me", warnings[0])
        self.assertIn("(8 attempt(s) in a row)", warnings[-1])


class FailingTests(SynchronousTestCase):
    """PeerAdmin.failing: the dialled peers a node cannot link to, and why."""

    def test_failing_until_linked(self) -> None:
        """A peer whose attempts fail is listed (their count, the last reason) until it links."""
        node = memory_node("me", MemoryReactorClock())
        admin = node.peer_admin
        admin.add_peer("ws://127.0.0.1:9")
        admin.add_peer("ws://127.0.0.1:10")
        [dialer, _] = admin.dialers.values()
        url = "ws://127.0.0.1:9"
        self.assertEqual(admin.failing(), {})  # (not tried yet)
        dialer.attempt_failed("ConnectionRefusedError: refused")
        dialer.attempt_failed("ConnectionRefusedError: refused again")
        self.assertEqual(
            admin.failing(),
            {
                url: {
                    "node_id": None,
                    "failures": 2,
                    "error": "ConnectionRefusedError: refused again",
                }
            },
        )
        self.assertEqual(node.views.status()["dialling"], admin.failing())
        dialer.link_opened("peer")
        self.assertEqual(admin.failing(), {})


class RetireTests(SynchronousTestCase):
    """A dialler whose peer was removed stops, after the link it holds has closed."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.node = memory_node("me", self.reactor)
        self.parent = MultiService()
        self.dialer = Dialer(self.node.mesh, "ws://127.0.0.1:9", self.reactor, 1 << 20)
        self.dialer.setServiceParent(self.parent)

    def test_without_a_link(self) -> None:
        """Holding no link, it stops at once."""
        self.dialer.retire()
        self.assertIsNone(self.dialer.parent)

    def test_link_closes_first(self) -> None:
        """Holding a link, it stops only when the link has closed (its close answered)."""
        self.dialer.link_opened("peer")
        self.dialer.retire()
        self.assertIs(self.dialer.parent, self.parent)
        self.dialer.link_closed()
        self.assertIsNone(self.dialer.parent)

    def test_closed_link_forgotten(self) -> None:
        """A link that closed before the peer was removed keeps nothing waiting."""
        self.dialer.link_opened("peer")
        self.dialer.link_closed()
        self.dialer.retire()
        self.assertIsNone(self.dialer.parent)

    def test_not_retired(self) -> None:
        """A link closing without a removal leaves the dialler to re-dial."""
        self.dialer.link_opened("peer")
        self.dialer.link_closed()
        self.assertIs(self.dialer.parent, self.parent)


class RemovedBeforeAnsweredTests(SynchronousTestCase):
    """A peer removed while this node's dialer of it had never reached it."""

    def test_removal_holds_for_a_dialer_that_never_answered(self) -> None:
        """
        The operator removes b (linked by b's own dial) while this node's
        dialer of b's address never got an answer, so knew no id: when
        that dialer reaches b, the removal holds (4002), and it dials no
        more. A dialer added afterwards may link to b.
        """
        reactor = MemoryReactorClock()
        me, b = memory_node("a", reactor), memory_node("b", reactor)
        admin = me.peer_admin
        admin.add_peer("ws://127.0.0.1:9")  # b's address, never answered
        [dialer] = admin.dialers.values()
        network = link_nodes(b, me).network  # b dialled this node
        network.settle()
        self.assertTrue(admin.remove_peer(node_id="b"))
        network.settle()
        self.assertNotIn("b", me.mesh.links)
        link = network.link(me, b)  # the old dialer reaches b at last
        dialer.link_opened("b")
        network.pump()
        self.assertEqual(link.close_code, CLOSE_REMOVED)
        self.assertEqual(admin.dialers, {})
        self.assertTrue(dialer.retired)
        admin.add_peer("ws://127.0.0.1:10")  # added again: it may link
        [again] = admin.dialers.values()
        self.assertFalse(admin.removed_since("b", again))

    def test_removal_by_any_spelling_of_the_address(self) -> None:
        """A dialled address is removed by any spelling of it, as it is added by any."""
        me = memory_node("a", MemoryReactorClock())
        admin = me.peer_admin
        for spelling in [
            "http://127.0.0.1:9",
            "127.0.0.1:9",
            "ws://127.0.0.1:9/ws/p2p",
            "ws://127.0.0.1:9",
        ]:
            with self.subTest(spelling=spelling):
                admin.add_peer("ws://127.0.0.1:9")
                self.assertTrue(admin.remove_peer(address=spelling))
                self.assertEqual(admin.dialers, {})
        self.assertFalse(admin.remove_peer(address="not an address"))

    def test_removal_that_found_nothing(self) -> None:
        """
        A removal of an id nothing is linked to nor dials (404) removes
        nothing: the dialer of an address whose id was not known yet links
        to that id later and keeps the link. And such removals leave no
        trace behind, however many.
        """
        reactor = MemoryReactorClock()
        me, b = memory_node("a", reactor), memory_node("b", reactor)
        admin = me.peer_admin
        admin.add_peer("ws://127.0.0.1:9")  # b's address, never answered yet
        [dialer] = admin.dialers.values()
        for n in range(2000):
            self.assertFalse(admin.remove_peer(node_id=f"x{n}"))
        self.assertFalse(admin.remove_peer(node_id="b"))
        self.assertEqual(admin._removed, {})
        link = link_nodes(me, b)
        dialer.link_opened("b")
        link.network.settle()
        self.assertIsNone(link.close_code)
        self.assertIn("b", me.mesh.links)
        self.assertFalse(dialer.retired)


class _Endpoint:
    """An endpoint that records connection attempts and never completes them."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append(d)
        return d


class WhileUnlinkedTests(SynchronousTestCase):
    """A dialler whose peer is linked through the peer's own dial waits, without dialling."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.links: set[str] = set()  # the mesh's links: their keys are all it reads
        self.dialer = SimpleNamespace(
            node_id="peer",
            url="ws://127.0.0.1:9",
            mesh=SimpleNamespace(links=self.links, stopping=False),
        )
        self.endpoint = _Endpoint()
        self.waiting = _WhileUnlinked(self.dialer, self.endpoint, self.reactor)  # type: ignore[arg-type]

    def link(self) -> None:
        self.links.add("peer")

    def test_unlinked_dials(self) -> None:
        """A peer with no link here is dialled at once."""
        self.waiting.connect(object())
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_linked_waits(self) -> None:
        """While the peer is linked, nothing is dialled, however long; once it is not, it is."""
        self.link()
        d = self.waiting.connect(object())
        for _ in range(600):  # ten minutes: two mutually dialling nodes, quiet
            self.reactor.advance(1)
        self.assertEqual(self.endpoint.attempts, [])
        self.assertNoResult(d)
        self.links.clear()
        self.reactor.advance(_WhileUnlinked.INTERVAL)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.endpoint.attempts[0].callback("protocol")
        self.assertEqual(self.successResultOf(d), "protocol")

    def test_cancel(self) -> None:
        """Stopping the dialler while it waits leaves no timer behind."""
        self.link()
        d = self.waiting.connect(object())
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_logged_once_per_wait(self) -> None:
        """The wait is logged once (at info), not once a second."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.link()
        self.waiting.connect(object())
        self.reactor.advance(100)
        self.assertEqual(len([e for e in events if "waits until" in e["log_format"]]), 1)

    def test_dialer_waits(self) -> None:
        """A dialer whose peer dialled it opens no connection until that link is gone."""
        reactor = MemoryReactorClock()
        me, peer = memory_node("me", reactor), memory_node("peer", reactor)
        link = link_nodes(peer, me)  # the peer dialled
        link.network.settle()
        dialer = Dialer(me.mesh, "ws://127.0.0.1:9", reactor, 1 << 20, "peer")
        dialer.startService()
        self.addCleanup(dialer.stopService)
        reactor.advance(60)
        self.assertEqual(reactor.tcpClients, [])
        link.cut()
        reactor.advance(_WhileUnlinked.INTERVAL)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_no_dial_while_stopping(self) -> None:
        """
        Once the node is stopping (closing its links), nothing is dialled:
        a new link would only be closed again (4001), and its peer would
        see it come and go. Stopping the dialer cancels the wait.
        """
        self.dialer.mesh.stopping = True
        d = self.waiting.connect(object())
        self.reactor.advance(60)
        self.assertEqual(self.endpoint.attempts, [])
        d.cancel()
        self.failureResultOf(d)

    def test_stopping_while_linked(self) -> None:
        """A dial that waited for the peer's own link to go does not start once stopping."""
        self.link()
        d = self.waiting.connect(object())
        self.dialer.mesh.stopping = True
        self.links.clear()
        self.reactor.advance(60)
        self.assertEqual(self.endpoint.attempts, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        d.cancel()
        self.failureResultOf(d)

    def test_repr(self) -> None:
        """ClientService's log names the real endpoint."""
        self.assertEqual(repr(self.waiting), repr(self.endpoint))


class _Adapters:
    """Two memory nodes and the Autobahn adapters between them, over iosim."""

    def __init__(
        self, case: SynchronousTestCase, dial_secret: bytes | None, accept_secret: bytes | None
    ) -> None:
        self.clock = MemoryReactorClock()
        self.dialling = memory_node("hA", self.clock)
        self.accepting = memory_node("hB", self.clock)
        self.dialling.secret, self.accepting.secret = dial_secret, accept_secret
        self.server_factory = PeerServerFactory(
            self.accepting.mesh, 1 << 20, reactor=self.clock, secret=accept_secret
        )
        self.dialer = Dialer(
            self.dialling.mesh, "ws://127.0.0.1:9", self.clock, 1 << 20, secret=dial_secret
        )
        self.dialer.factory.setProtocolOptions(serverConnectionDropTimeout=0)
        address = IPv4Address("TCP", "127.0.0.1", 9)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(address),
            lambda: self.dialer.factory.buildProtocol(address),
            clock=self.clock,
        )
        case.addCleanup(self.close)

    def flush(self) -> None:
        self.pump.flush(advanceClock=False)

    def close(self) -> None:
        for node in (self.dialling, self.accepting):
            node.mesh.stop()
        self.flush()
        self.clock.advance(5)  # the mesh's grace timers


class AdapterTests(SynchronousTestCase):
    """The Autobahn adapters, driven in memory: a real handshake with no socket."""

    def test_link_and_call(self) -> None:
        """Dialler and acceptor open a link, agree on unmasked frames, and carry a call."""
        pair = _Adapters(self, None, None)
        pair.flush()
        self.assertEqual(pair.accepting.mesh.links["hA"].direction, "inbound")
        self.assertEqual(pair.dialling.mesh.links["hB"].direction, "outbound")
        self.assertFalse(pair.client.maskClientFrames)
        self.assertFalse(pair.server.requireMaskedClientFrames)
        self.assertEqual(pair.dialer.node_id, "hB")
        d = pair.dialling.call("hB", "node", "echo", 1, "two")
        pair.flush()
        self.assertEqual(self.successResultOf(d), [1, "two"])

    def test_part_of_a_frame_is_heard(self) -> None:
        """
        Part of a large frame arriving shows the peer alive, as a whole
        frame does: a link slower than the peer timeout for one frame is
        not taken for silent while it carries it.
        """
        pair = _Adapters(self, None, None)
        pair.flush()
        session = pair.accepting.mesh.links["hA"]
        frame = frame_header(100_000, 1) + b" " * 50_000  # (the dialler's frames go unmasked)
        session.waiting_since = pair.clock.seconds()
        pair.clock.advance(1.0)
        self.assertIsNotNone(session.waiting_since)
        pair.server.dataReceived(frame)
        self.assertIsNone(session.waiting_since)
        self.assertEqual(session.last_seen, pair.clock.seconds())

    def test_dialler_refuses_a_second_link(self) -> None:
        """
        A dialler that finds, once the handshake is done, that it holds a
        healthy link for that id already (a second process under one id)
        closes the new one; what the other end sent meanwhile is dropped,
        not taken for an original node's first frame (an error each time).
        """
        pair = _Adapters(self, None, None)
        pair.flush()
        held = pair.dialling.mesh.links["hB"]
        twin = memory_node("hB", pair.clock)
        self.addCleanup(twin.mesh.stop)
        factory = PeerServerFactory(twin.mesh, 1 << 20, reactor=pair.clock)
        address = IPv4Address("TCP", "127.0.0.1", 10)
        _, _, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(address),
            lambda: pair.dialer.factory.buildProtocol(address),
            clock=pair.clock,
        )
        for _ in range(3):
            pump.flush(advanceClock=False)
            pair.clock.advance(0)
        self.assertIs(pair.dialling.mesh.links["hB"], held)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_same_secret(self) -> None:
        """With the same secret on both ends the link opens after the dialler's proof."""
        pair = _Adapters(self, SECRET, SECRET)
        pair.flush()
        self.assertIn("hA", pair.accepting.mesh.links)
        self.assertIn("hB", pair.dialling.mesh.links)
        d = pair.dialling.call("hB", "node", "echo", 3)
        pair.flush()
        self.assertEqual(self.successResultOf(d), [3])

    def test_dialler_without_secret(self) -> None:
        """A dialler without the secret is refused at the upgrade (401) and counted."""
        pair = _Adapters(self, None, SECRET)
        pair.flush()
        self.assertEqual(pair.accepting.mesh.links, {})
        self.assertEqual(pair.dialling.mesh.links, {})
        self.assertEqual(auth_failures(pair.accepting), 1)
        self.assertEqual(pair.dialer._failures, 1)

    def test_acceptor_with_another_secret(self) -> None:
        """A dialler hangs up on an acceptor whose proof is wrong, and counts it."""
        pair = _Adapters(self, SECRET, OTHER_SECRET)
        pair.flush()
        self.assertEqual(pair.accepting.mesh.links, {})
        self.assertEqual(pair.dialling.mesh.links, {})
        self.assertEqual(auth_failures(pair.dialling), 1)


class ClosingHandshakeTests(SynchronousTestCase):
    """
    A link removed on purpose whose closing handshake then breaks off (a
    timeout at a busy end): what each end makes of it decides whether
    either marks the other unreachable.
    """

    def lost(self, node: RelayNode, cause: str) -> float:
        value = node.metrics.registry.get_sample_value("relaytx_links_lost_total", {"cause": cause})
        return 0.0 if value is None else value

    def test_heard_then_broke_off(self) -> None:
        """The end that heard the close is told removed, though its handshake broke off."""
        pair = _Adapters(self, None, None)
        pair.flush()
        number = pair.dialling.mesh.adverts.own_sn
        self.assertTrue(pair.accepting.remove_peer("hA"))
        pair.pump.pump(advanceClock=False)  # the close reaches the dialler, which answers
        # The acceptor is too busy to drop the connection in time: the
        # dialler gives up waiting and drops it (Autobahn's timer, fired).
        pair.client.onServerConnectionDropTimeout()
        pair.flush()
        self.assertEqual((pair.dialling.mesh.links, pair.accepting.mesh.links), ({}, {}))
        self.assertEqual(self.lost(pair.dialling, "removed"), 1)
        self.assertEqual(self.lost(pair.dialling, "closed"), 0)
        self.assertEqual(pair.dialling.mesh.adverts.own_sn, number)
        self.assertIsNone(pair.dialling.mesh.router._marks.get("hB"))

    def test_remover_not_answered(self) -> None:
        """
        The remover whose close went unanswered (a frozen peer) numbers
        itself anew but marks nobody, and counts the link as removed, as
        it was.
        """
        pair = _Adapters(self, None, None)
        pair.flush()
        number = pair.dialling.mesh.adverts.own_sn
        self.assertTrue(pair.dialling.remove_peer("hB"))
        pair.client.onCloseHandshakeTimeout()  # no answer in time: it drops the connection
        pair.flush()
        self.assertEqual(pair.dialling.mesh.links, {})
        self.assertEqual(self.lost(pair.dialling, "removed"), 1)
        self.assertEqual(self.lost(pair.dialling, "closed"), 0)
        self.assertGreater(pair.dialling.mesh.adverts.own_sn, number)
        self.assertIsNone(pair.dialling.mesh.router._marks.get("hB"))

    def removing(self, pair: _Adapters, at: float) -> int:
        """
        Let the dialler wait for the answer to its close as a node's links
        do (1 s), set the clock to C{at} past a whole second, and remove
        the link there.

        :returns: the dialler's number before.
        """
        pair.flush()
        now = pair.clock.seconds()
        pair.clock.advance(math.floor(now) + 1 + at - now)
        number = pair.dialling.mesh.adverts.own_sn
        self.assertTrue(pair.dialling.remove_peer("hB"))
        return number

    def test_remover_waits_a_second(self) -> None:
        """
        The remover waits a second for the answer to its close, wherever in
        a second it closed (Autobahn's own timer, filed under whole seconds,
        gave up after 0.05 s for a close at x.95 s), and then drops the link.
        """
        pair = _Adapters(self, None, None)
        self.removing(pair, 0.95)
        pair.clock.advance(0.99)
        self.assertEqual(pair.client.state, WebSocketProtocol.STATE_CLOSING)
        self.assertIn("hB", pair.dialling.mesh.links)
        pair.clock.advance(0.02)
        pair.flush()
        self.assertEqual(pair.client.state, WebSocketProtocol.STATE_CLOSED)
        self.assertEqual(pair.dialling.mesh.links, {})
        self.assertEqual(self.lost(pair.dialling, "removed"), 1)  # (by the operator)

    def test_answered_after_a_stall(self) -> None:
        """
        A remover held up past its timeout (a stall: the timer runs before
        the answer waiting on the socket is read) waits its second again,
        and takes the answer then: removed, and numbered as it was.
        """
        pair = _Adapters(self, None, None)
        number = self.removing(pair, 0.5)
        pair.clock.advance(1.5)
        self.assertEqual(pair.client.state, WebSocketProtocol.STATE_CLOSING)
        pair.flush()
        self.assertEqual((pair.dialling.mesh.links, pair.accepting.mesh.links), ({}, {}))
        self.assertEqual(self.lost(pair.dialling, "removed"), 1)
        self.assertEqual(pair.dialling.mesh.adverts.own_sn, number)
        self.assertIsNone(pair.client.closeHandshakeTimeoutCall)  # (cancelled)


class SealedBatchTests(SynchronousTestCase):
    """Frames between holders of the secret go in sealed batches."""

    def setUp(self) -> None:
        self.pair = _Adapters(self, SECRET, SECRET)
        self.pair.flush()
        self.assertIn("hB", self.pair.dialling.mesh.links)

    def _frames_taken_by_caller(self) -> list[bytes]:
        """:returns: a list of every frame the dialling end's opener takes from now on."""
        opener = self.pair.client._opener
        taken: list[bytes] = []
        take = opener.take

        def spy(frame: bytes) -> list[bytes]:
            taken.append(frame)
            return take(frame)

        opener.take = spy
        return taken

    def test_answers_in_one_batch(self) -> None:
        """
        The answers to calls that arrived in one read go in one batch: only
        the last carries the code, and the caller takes them all.
        """
        pair = self.pair
        taken = self._frames_taken_by_caller()
        calls = [pair.dialling.call("hB", "node", "echo", i) for i in range(5)]
        pair.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [[i] for i in range(5)])
        answers = [f for f in taken if b'"server_response"' in f]
        self.assertEqual(len(answers), 5)
        self.assertEqual([b'"mac":"' in f for f in answers], [False] * 4 + [True])

    def test_batches_end_within_a_read(self) -> None:
        """
        Answers that outgrow L{SEND_BATCH_BYTES} go in several batches,
        each ended by the frame that passed the bound, so no batch is much
        longer than a read; the caller takes every answer.
        """
        pair = self.pair
        taken = self._frames_taken_by_caller()
        payload = "a" * 400
        calls = [pair.dialling.call("hB", "node", "echo", payload, i) for i in range(40)]
        pair.flush()
        answered = [self.successResultOf(d) for d in calls]
        self.assertEqual(answered, [[payload, i] for i in range(40)])
        answers = [f for f in taken if b'"server_response"' in f]
        self.assertEqual(len(answers), 40)
        batches: list[list[bytes]] = [[]]
        for frame in answers:
            batches[-1].append(frame)
            if b'"mac":"' in frame:
                batches.append([])
        self.assertEqual(batches.pop(), [])
        self.assertGreater(len(batches), 4)
        for batch in batches:
            self.assertLess(sum(map(len, batch[:-1])), SEND_BATCH_BYTES)

    def test_unfinished_batch(self) -> None:
        """
        A frame without a code (a stranger's) is never handed on; when no
        code follows within the time allowed the link closes with 4003 and
        the failure is counted.
        """
        pair = self.pair
        frame = (
            b'{"type":"server_call","id":"x1","from":"hA","to":"hB","data":{"call":'
            b'{"server_name":"node","method":"echo","args":[9],"kwargs":{},"timeout":5},'
            b'"response_id":"forged"},"route":["hA"],"ttl":10}'
        )
        before = auth_failures(pair.accepting)
        pair.server.dataReceived(bytes((0x81, 126)) + len(frame).to_bytes(2, "big") + frame)
        self.assertEqual(pair.server._opener.pending, [frame])
        # (No flush: nothing else reaches the acceptor meanwhile.)
        pair.clock.advance(PENDING_TIMEOUT - 0.1)
        self.assertIn("hA", pair.accepting.mesh.links)
        pair.clock.advance(0.2)
        self.assertNotIn("hA", pair.accepting.mesh.links)
        self.assertEqual(auth_failures(pair.accepting), before + 1)
        self.assertEqual(links_lost(pair.accepting, "auth"), 1)
        self.assertEqual(pair.server.closedByMe, True)
        self.assertEqual(pair.server.localCloseCode, CLOSE_AUTH_FAILED)

    def test_batch_in_pieces(self) -> None:
        """
        A batch whose frames come in pieces within the time allowed is
        taken; the next batch gets its own time, whenever the first began.
        """
        pair = self.pair
        sealer = pair.client._sealer
        server = pair.server

        def batch(n: int) -> list[bytes]:
            frames = [
                b'{"type":"ping","from":"hA","to":"hB","data":{"n":%d}}' % i for i in range(n)
            ]
            sealer.seal_batch(frames)
            return frames

        def send(frame: bytes) -> None:
            server.dataReceived(bytes((0x81, len(frame))) + frame)

        first, second = batch(3), batch(2)
        send(first[0])
        pair.clock.advance(PENDING_TIMEOUT * 0.5)
        send(first[1])
        send(first[2])
        self.assertEqual(server._opener.pending, [])
        pair.clock.advance(PENDING_TIMEOUT * 0.4)
        send(second[0])  # just before the first batch's time was up
        pair.clock.advance(PENDING_TIMEOUT * 0.2)
        self.assertIn("hA", pair.accepting.mesh.links)
        send(second[1])
        self.assertEqual(server._opener.pending, [])
        pair.clock.advance(PENDING_TIMEOUT * 2)
        self.assertIn("hA", pair.accepting.mesh.links)

    def test_held_up_reactor(self) -> None:
        """A reactor held up past the time allowed gets one more turn to read the rest."""
        pair = self.pair
        frames = [b'{"type":"ping","from":"hA","to":"hB","data":{"n":%d}}' % i for i in range(2)]
        pair.client._sealer.seal_batch(frames)
        server = pair.server
        server.dataReceived(bytes((0x81, len(frames[0]))) + frames[0])
        pair.clock.advance(PENDING_TIMEOUT * 3)  # one late turn
        self.assertIn("hA", pair.accepting.mesh.links)
        server.dataReceived(bytes((0x81, len(frames[1]))) + frames[1])
        self.assertEqual(server._opener.pending, [])
        pair.clock.advance(PENDING_TIMEOUT * 2)
        self.assertIn("hA", pair.accepting.mesh.links)


def links_lost(node: RelayNode, cause: str) -> float:
    """:returns: the node's C{relaytx_links_lost_total} for C{cause}."""
    value = node.metrics.registry.get_sample_value("relaytx_links_lost_total", {"cause": cause})
    assert value is not None
    return value


def auth_failures(node: RelayNode) -> float:
    """:returns: the node's C{relaytx_auth_failures_total}."""
    value = node.metrics.registry.get_sample_value("relaytx_auth_failures_total")
    return 0.0 if value is None else value


class _TolerantTransport(StringTransport):
    """A string transport that lets Autobahn unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None


class RawUpgradeTests(SynchronousTestCase):
    """The accepting adapter answers hand-written upgrade requests."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.node = memory_node("hB", self.clock)

    def connect(self, secret: bytes | None = None) -> tuple[Any, StringTransport]:
        factory = PeerServerFactory(self.node.mesh, 1 << 20, reactor=self.clock, secret=secret)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        transport = _TolerantTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol.makeConnection(transport)
        self.addCleanup(lambda: protocol.connectionLost(Failure(ConnectionDone())))
        return protocol, transport

    def upgrade(self, *headers: str) -> bytes:
        lines = [
            "GET /ws/p2p?node_id=hA HTTP/1.1",
            "Host: 127.0.0.1:9",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def test_browser_refused(self) -> None:
        """An upgrade from a browser origin not allowed is answered 403, and no link opens."""
        protocol, transport = self.connect()
        protocol.dataReceived(self.upgrade("Origin: https://evil.example"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403"), transport.value())
        self.assertEqual(self.node.mesh.links, {})

    def test_proof_deadline(self) -> None:
        """A dialler that upgrades with a nonce but never proves the secret is closed with 4003."""
        protocol, transport = self.connect(SECRET)
        protocol.dataReceived(self.upgrade("X-Relaytx-Nonce: " + "a" * 64))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"), transport.value())
        transport.clear()
        self.clock.advance(AUTH_TIMEOUT)
        close = transport.value()
        self.assertEqual(close[0], 0x88)  # a close frame
        self.assertEqual(int.from_bytes(close[2:4], "big"), CLOSE_AUTH_FAILED)
        self.assertEqual(self.node.mesh.links, {})
        self.assertEqual(auth_failures(self.node), 1)
