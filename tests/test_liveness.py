"""
Tests for L{relaytx._liveness}: noticing a neighbour that stops answering,
on the node's clock: the watch alone with stand-in sessions, then whole
nodes linked in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx import OutcomeUnknown
from relaytx._liveness import DEFAULT_PEER_TIMEOUT, IDLE_BUDGET, VERDICT_DELAY, LinkWatch
from relaytx.config import ConfigError, build_config
from relaytx.node import RelayNode
from relaytx.testing import MemoryLink, MemoryMesh, line, memory_node
from tests.support import Slow
from tests.test_streams import Work


async def _read_all(stream: Any) -> None:
    async for _ in stream:
        pass


class Watched:
    """A stand-in for a session: what the watch reads, and what it asks."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.closed = False
        self.last_seen = clock.seconds()
        self.waiting_since: float | None = None
        self.busy_until = 0.0
        self.probed_at = float("-inf")
        self.watched = False
        self.probes: list[float] = []
        self.nudges: list[float] = []
        self.dropped: list[float] = []
        #: whether a call sent on it still waits for its answer
        self.outstanding = True

    def request(self, watch: LinkWatch, until: float = 0.0) -> None:
        """A request leaves now (as PeerSession.awaiting does)."""
        now = self.clock.seconds()
        self.busy_until = max(self.busy_until, until)
        if self.waiting_since is None:
            self.waiting_since = now
            if not self.watched:
                self.watched = True
                watch.watch(self)

    def hear(self) -> None:
        """A frame arrives."""
        self.last_seen = self.clock.seconds()
        self.waiting_since = None

    def calls_out(self) -> bool:
        return self.outstanding

    def probe(self, now: float) -> None:
        self.probed_at = now
        self.probes.append(now)
        if self.waiting_since is None:
            self.waiting_since = now

    def nudge(self, now: float) -> None:
        self.probed_at = now
        self.nudges.append(now)
        if self.waiting_since is None:
            self.waiting_since = now

    def silent(self, waited: float) -> None:
        self.dropped.append(self.clock.seconds())
        self.closed = True


class LinkWatchTests(SynchronousTestCase):
    """The watch, with stand-in sessions on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.watch = LinkWatch(self.clock)
        self.session = Watched(self.clock)

    def run_for(self, seconds: float, step: float = 0.01) -> None:
        end = self.clock.seconds() + seconds
        while (left := end - self.clock.seconds()) > 0:
            self.clock.advance(min(step, left))

    def test_defaults(self) -> None:
        """The default peer timeout is 1.25 s, with a tick of 50 ms and a probe after 250 ms."""
        self.assertEqual(self.watch.peer_timeout, DEFAULT_PEER_TIMEOUT)
        self.assertEqual(DEFAULT_PEER_TIMEOUT, 1.25)
        self.assertAlmostEqual(self.watch.tick, 0.05)
        self.assertAlmostEqual(self.watch.probe_after, 0.25)
        self.assertAlmostEqual(self.watch.quiet_after, 0.4)
        self.assertRaises(ValueError, LinkWatch, self.clock, 0)

    def test_unanswered_request_dropped(self) -> None:
        """A request unanswered for the peer timeout drops the link, probed once on the way."""
        self.session.request(self.watch)
        started = self.clock.seconds()
        self.run_for(1.2)
        self.assertEqual(self.session.dropped, [])
        self.assertEqual(len(self.session.probes), 1)
        self.assertAlmostEqual(self.session.probes[0] - started, 0.25)
        self.run_for(0.12)
        [dropped] = self.session.dropped
        self.assertGreaterEqual(dropped - started, 1.25 - 1e-6)
        self.assertLessEqual(dropped - started, 1.25 + self.watch.tick + VERDICT_DELAY + 1e-6)

    def test_answered_request_forgotten(self) -> None:
        """An answered request leaves nothing watched and no timer behind."""
        self.session.request(self.watch)
        self.clock.advance(0.1)
        self.session.hear()
        self.run_for(5)
        self.assertEqual((self.session.dropped, self.session.probes), ([], []))
        self.assertEqual(len(self.watch), 0)
        self.assertFalse(self.session.watched)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_probe_answered_keeps_busy_link(self) -> None:
        """
        A link whose calls are outstanding is probed while it is quiet, and
        stays as long as the probes are answered; probing ends with the
        calls' deadline.
        """
        self.session.request(self.watch, until=self.clock.seconds() + 10)
        for _ in range(10 * 100):
            self.clock.advance(0.01)
            if self.session.probes and self.session.probes[-1] == self.clock.seconds() - 0.01:
                self.session.hear()  # answered 10 ms after each probe
        self.assertEqual(self.session.dropped, [])
        # The first probe 250 ms after the call, then one per 0.4 s of quiet.
        self.assertGreaterEqual(len(self.session.probes), 20)
        self.assertLessEqual(len(self.session.probes), 26)
        count = len(self.session.probes)
        self.run_for(10)
        self.assertEqual(len(self.session.probes), count)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answered_calls_end_probing(self) -> None:
        """
        A quiet link whose calls were all answered is not probed until
        their deadline, and leaves the watch.
        """
        self.session.request(self.watch, until=self.clock.seconds() + 120)
        self.clock.advance(0.05)
        self.session.hear()  # the answer
        self.session.outstanding = False
        self.run_for(10)
        self.assertEqual((self.session.probes, self.session.dropped), ([], []))
        self.assertEqual(len(self.watch), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_quiet_busy_link_bound(self) -> None:
        """
        A peer that falls silent after its last frame, with calls
        outstanding, is dropped within 1.75 s of that frame.
        """
        self.session.request(self.watch, until=self.clock.seconds() + 30)
        self.run_for(0.1)
        self.session.hear()  # its last frame
        last = self.clock.seconds()
        self.run_for(3)
        [dropped] = self.session.dropped
        self.assertGreater(dropped - last, 1.25)
        self.assertLessEqual(dropped - last, 1.75 + VERDICT_DELAY + 1e-6)

    def test_verdict_waits_for_reads(self) -> None:
        """
        A node that was itself stalled (its clock jumps) drops no peer whose
        answer is waiting to be read: the verdict comes after the reactor's
        next turn.
        """
        self.session.request(self.watch)
        self.clock.advance(10)  # this node was frozen: the tick fires late
        self.assertEqual(self.session.dropped, [])
        self.session.hear()  # the turn reads the answer that was waiting
        self.clock.advance(VERDICT_DELAY)
        self.assertEqual(self.session.dropped, [])
        self.clock.advance(self.watch.tick)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_verdict_drops_the_silent(self) -> None:
        """A suspect still unheard when the verdict comes is dropped."""
        self.session.request(self.watch)
        self.clock.pump([self.watch.tick] * 25)
        self.assertEqual(self.session.dropped, [])
        self.clock.advance(VERDICT_DELAY)
        self.assertEqual(len(self.session.dropped), 1)

    def test_own_stall_credited(self) -> None:
        """
        A stall of this node's own (its tick 1.6 s late) is not counted
        against a peer that answers once the machine runs again.
        """
        self.session.request(self.watch)
        self.run_for(1.0)
        self.clock.advance(1.6)  # nothing here ran for 1.6 s
        self.run_for(0.7)  # the peer catches up...
        self.assertEqual(self.session.dropped, [])
        self.session.hear()  # ...and answers
        self.run_for(5)
        self.assertEqual(self.session.dropped, [])

    def test_grace_after_stall(self) -> None:
        """
        After a stall of this node's own, a peer silent since before it gets
        twice the timeout, for five seconds; then the timeout is the usual one.
        """
        self.session.request(self.watch)
        self.clock.advance(1.0)  # a stall: the first tick a second late
        # Credited: the stall less a tick; what is left waited 0.1 s (the tick
        # it was due after, and the one it may run late).
        started = self.clock.seconds() - 2 * self.watch.tick
        self.run_for(3)
        [dropped] = self.session.dropped
        self.assertGreaterEqual(dropped - started, 2.5 - 1e-6)
        self.assertLessEqual(dropped - started, 2.5 + self.watch.tick + VERDICT_DELAY + 1e-6)
        self.run_for(5)
        later = Watched(self.clock)
        later.request(self.watch)
        begun = self.clock.seconds()
        self.run_for(1.4)
        [dropped] = later.dropped
        self.assertLessEqual(dropped - begun, 1.25 + self.watch.tick + VERDICT_DELAY + 1e-6)

    def test_request_after_stall_judged_as_usual(self) -> None:
        """
        A request sent once this node runs again, during the grace that
        follows its stall, gets the usual timeout: a fault after a stall is
        found as fast as any.
        """
        self.session.request(self.watch)
        self.clock.advance(1.0)  # a stall, with a wait under way
        self.session.hear()
        self.run_for(0.5)  # the node runs again; well within the grace
        later = Watched(self.clock)
        later.request(self.watch)
        begun = self.clock.seconds()
        self.run_for(1.4)
        [dropped] = later.dropped
        self.assertGreaterEqual(dropped - begun, 1.25 - 1e-6)
        self.assertLessEqual(dropped - begun, 1.25 + self.watch.tick + VERDICT_DELAY + 1e-6)
        self.assertEqual(self.session.dropped, [])

    def test_slow_node_still_finds_silent_peer(self) -> None:
        """A node whose every tick runs 0.15 s late still drops a silent peer, later."""
        self.session.request(self.watch)
        started = self.clock.seconds()
        for _ in range(200):
            if self.session.dropped:
                break
            self.clock.advance(self.watch.tick + 0.15)
            self.clock.advance(VERDICT_DELAY)
        [dropped] = self.session.dropped
        self.assertLess(dropped - started, 10)

    def test_closed_session_forgotten(self) -> None:
        """A session closed meanwhile is dropped from the watch, not judged."""
        self.session.request(self.watch)
        self.session.closed = True
        self.run_for(3)
        self.assertEqual(self.session.dropped, [])
        self.assertEqual(len(self.watch), 0)

    def test_stop(self) -> None:
        """Once stopped, the watch holds nothing, sets no timer and watches nothing new."""
        self.session.request(self.watch)
        self.clock.advance(2)  # a verdict is due
        self.watch.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        Watched(self.clock).request(self.watch)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.session.dropped, [])


class MeshLivenessTests(SynchronousTestCase):
    """Whole nodes linked in memory, on one clock."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()

    def pair(self, **options: Any) -> tuple[RelayNode, RelayNode, MemoryLink]:
        a, b = (memory_node(name, self.clock, **options) for name in "ab")
        line([a, b], self.network)
        self.network.settle()
        return a, b, self.network.link_between(a, b)

    def test_idle_link_nudged(self) -> None:
        """
        An idle link carries one keepalive ping per interval each way, as
        before, and a WebSocket ping (a nudge) whenever it has been quiet
        for 0.45 s, answered: no JSON, and nothing left waiting.
        """
        a, b, link = self.pair()
        self.network.advance(60.1)
        self.assertEqual(len(link.sent_by(a, "ping")), 13)
        self.assertEqual(len(link.sent_by(b, "ping")), 13)
        # On one clock both ends nudge at once; apart, the first heard spares the other.
        for end in link.transports:
            self.assertGreater(end.pings, 60 / 0.57)
            self.assertLess(end.pings, 60 / 0.45)
        self.assertFalse(link.closed)
        self.assertEqual(len(a.mesh.link_watch), 0)

    def test_nudges_within_budget(self) -> None:
        """
        A node nudges at most IDLE_BUDGET links a second: past 335 idle
        links each waits longer, and from 3,750 on only the keepalive
        tests them (a hub of thousands of links would spend a core).
        """
        clock = Clock()
        # links, and the fewest and most nudges in 10 s, every one answered at once
        for count, least, most in ((100, 100 * 10 / 0.5, 100 * 10 / 0.45 / 0.75),
                                   (1000, 1000 * 2, 10 * IDLE_BUDGET),
                                   (3750, 0, 0)):  # fmt: skip
            links = {str(k): Watched(clock) for k in range(count)}
            watch = LinkWatch(clock, links=links)
            watch.linked()
            for _ in range(1000):
                clock.advance(0.01)
                for session in links.values():
                    if session.waiting_since is not None:
                        session.hear()
            nudges = sum(len(s.nudges) for s in links.values())
            self.assertLessEqual(nudges, most)
            self.assertGreaterEqual(nudges, least)
            watch.stop()
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_answered_call_costs_no_probes(self) -> None:
        """
        A call answered at once, with a long deadline, leaves its links
        pinged by the keepalive alone, both its own and a forwarded hop.
        """
        a, b, c = (memory_node(name, self.clock) for name in "abc")
        line([a, b, c], self.network)
        self.network.settle()
        d = a.call("c", "node", "ping", timeout=120)
        self.network.pump()
        self.successResultOf(d)
        self.network.advance(60)
        ab, bc = self.network.link_between(a, b), self.network.link_between(b, c)
        # Keepalives only, one per 5 s (with the probes, ~2.5 a second).
        self.assertLessEqual(len(ab.sent_by(a, "ping")), 14)
        self.assertLessEqual(len(bc.sent_by(b, "ping")), 14)

    def test_frozen_link_routed_around(self) -> None:
        """
        A link frozen between two live nodes (a-b, in a triangle with c):
        once b drops it as silent, b reaches a through c at once. It marks
        a unreachable no more while c holds a link of its own to a (the
        mark held a, alive, unreachable from b until a noticed the loss
        itself, at its next keepalive: -32002 meanwhile).
        """
        # (a keepalive far apart: a, idle, notices nothing for a while)
        a, b, c = (memory_node(name, self.clock, ping_interval=30) for name in "abc")
        self.network.link(b, a)
        self.network.link(b, c)
        self.network.link(c, a)
        self.network.settle()
        frozen = self.network.link_between(a, b)
        frozen.pause()
        # A frozen path: b's reset of the link never reaches a either.
        b_end = frozen.transports[frozen.nodes.index(b)]
        b_end.abort = lambda: None  # type: ignore[method-assign]
        first = b.call("a", "node", "ping", timeout=30)
        self.network.advance(1.4)  # the peer timeout and a tick: b drops the link
        self.failureResultOf(first, OutcomeUnknown)
        self.assertNotIn("a", b.mesh.links)
        self.assertIn("b", a.mesh.links)  # (a has not noticed)
        self.network.pump()
        self.assertEqual(b.mesh.router.route("a").path, ("c", "a"))  # type: ignore[union-attr]
        d = b.call("a", "node", "ping", timeout=5)
        self.network.pump()
        self.assertTrue(self.successResultOf(d)["pong"])

    def test_frozen_stream_reader_found(self) -> None:
        """
        A stream's items going to a node that froze make the node that sends
        them find it silent within the peer timeout and a tick, as a call
        would, not at its next keepalive: the generator at the far end is
        stopped then, its server free again.
        """
        # (keepalives far apart: only the items can find the freeze)
        a, b, c = (memory_node(name, self.clock, ping_interval=30) for name in "abc")
        line([a, b, c], self.network)
        self.network.settle()
        work = Work()
        c.expose("work", work)
        self.network.settle()
        stream = a.stream("c", "work", "drip", 10_000, window=8)
        ensureDeferred(_read_all(stream)).addErrback(lambda _: None)
        self.network.advance(0)
        work.tick()
        self.network.advance(0)
        frozen = self.network.link_between(a, b)
        frozen.pause()  # a freezes: nothing from it arrives any more
        b_end = frozen.transports[frozen.nodes.index(b)]
        b_end.abort = lambda: None  # type: ignore[method-assign]  # nor reaches it
        work.tick()  # an item on its way to a, through b
        self.network.advance(0)
        self.assertEqual(work.closed, 0)
        self.network.advance(DEFAULT_PEER_TIMEOUT + 0.1)
        self.assertNotIn("a", b.mesh.links)
        self.assertEqual(work.closed, 1)

    def test_long_call_keeps_link(self) -> None:
        """A call the target takes a minute to run keeps its link: the probes are answered."""
        a, b, link = self.pair()
        slow = Slow()
        b.expose("slow", slow)
        d = a.call("b", "slow", "wait", timeout=120)
        self.network.advance(60)
        self.assertFalse(link.closed)
        self.assertNoResult(d)
        slow.waiting[0].callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), "done")
        # Probes only while the call was out and the link quiet: ~2.5 per second.
        pings = len(link.sent_by(a, "ping"))
        self.assertGreater(pings, 100)
        self.assertLess(pings, 160)

    def test_brief_stall_survived(self) -> None:
        """A link stalled for a second with a call on it is not dropped; the call completes."""
        a, _b, link = self.pair()
        self.network.advance(1)
        link.pause()
        d = a.call("b", "node", "echo", "x", timeout=10)
        self.network.advance(1.0)
        link.resume()
        self.network.advance(5)
        self.assertFalse(link.closed)
        self.assertEqual(self.successResultOf(d), ["x"])

    def test_busy_link_survives(self) -> None:
        """A link carrying calls all the time stays up and sends no probes."""
        a, _b, link = self.pair()
        for _ in range(300):
            d = a.call("b", "node", "ping")
            self.network.advance(0.05)
            self.successResultOf(d)
        self.assertFalse(link.closed)
        # Keepalives only (at 0, 5, 10, 15 s), no probes: every call was answered at once.
        self.assertEqual(len(link.sent_by(a, "ping")), 4)

    def test_frozen_peer_found_under_load(self) -> None:
        """
        A peer that freezes while calls go to it is dropped within the peer
        timeout and a tick of the first call it leaves unanswered; every call
        it held fails with -32006 then, none at its deadline.
        """
        a, _b, link = self.pair()
        self.network.advance(1)
        link.pause()  # b freezes: nothing from it arrives any more
        calls = []
        for _ in range(20):
            calls.append(a.call("b", "node", "ping", timeout=5))
            self.network.advance(0.1)
        self.assertTrue(link.closed)
        codes = [self.failureResultOf(d).value.code for d in calls]
        # Those sent before it was dropped (1.25-1.3 s after the first) may
        # have run; those sent after cannot have: no route.
        self.assertEqual(codes, [-32006] * 13 + [-32002] * 7)

    def test_peer_timeout_setting(self) -> None:
        """peer_timeout in the config sets the watch's timeout."""
        a, _b, _link = self.pair(peer_timeout=4.0)
        self.assertEqual(a.mesh.link_watch.peer_timeout, 4.0)
        self.assertEqual(build_config({"node_id": "n"}).peer_timeout, 1.25)
        for bad in (0, -1, 4000):
            self.assertRaises(ConfigError, build_config, {"node_id": "n", "peer_timeout": bad})

    def test_stop_leaves_no_timers(self) -> None:
        """Stopping a node with calls out cancels the watch's timers too."""
        a, b = memory_node("a"), memory_node("b")  # a clock each
        line([a, b], self.network)
        self.network.settle()
        b.expose("slow", Slow())
        d = a.call("b", "slow", "wait", timeout=60)
        self.network.advance(0.3)
        stopped = a.stopService()
        self.network.pump()
        self.successResultOf(stopped)
        self.failureResultOf(d, OutcomeUnknown)
        self.assertEqual(a.clock.getDelayedCalls(), [])
