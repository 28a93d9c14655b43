# -*- test-case-name: tests.test_calls -*-
"""
Tests for L{relaytx._calls}: calls in flight, on a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._calls import ForwardedCalls, OwedAnswers, PendingCalls, SeenMessages
from relaytx.errors import CallError, CallTimeout, NodeUnreachable, RemoteCallError


def unreachable(destination: str) -> CallError:
    """The error factory handed to the fail_* methods."""
    return NodeUnreachable(f"lost the way to {destination}", target_node=destination)


class PendingCallsTests(SynchronousTestCase):
    """L{PendingCalls}: answers, timeouts, cancellation and lost paths."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.late: list[None] = []
        self.calls = PendingCalls(self.clock, on_late=lambda: self.late.append(None))

    def assertNothingPending(self) -> None:
        self.assertEqual(len(self.calls), 0)
        self.assertEqual(self.calls.destinations(), set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shorter_timeout_later(self) -> None:
        """A call with a shorter timeout, made later, still times out at its own deadline."""
        # (Steps that are exact in binary, so the clock lands on each deadline.)
        slow = self.calls.expect("slow", "n2", "n2", timeout=10)
        self.clock.advance(1)
        fast = self.calls.expect("fast", "n2", "n2", timeout=2)
        self.clock.advance(1.75)
        self.assertNoResult(fast)
        self.clock.advance(0.25)
        self.failureResultOf(fast, CallTimeout)
        self.assertNoResult(slow)
        self.clock.advance(6.75)
        self.assertNoResult(slow)
        self.clock.advance(0.25)
        self.failureResultOf(slow, CallTimeout)
        self.assertNothingPending()

    def test_answered_calls_do_not_pile_up(self) -> None:
        """Deadlines of answered calls are dropped: the heap stays near the live count."""
        keep = self.calls.expect("keep", "n2", "n2", timeout=30)
        for i in range(10_000):
            self.calls.expect(f"r{i}", "n2", "n2", timeout=30)
            self.calls.resolve(f"r{i}", result=i)
        self.assertLessEqual(len(self.calls._deadlines), 130)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(30)
        self.failureResultOf(keep, CallTimeout)
        self.assertNothingPending()

    def test_answered_earliest_deadline(self) -> None:
        """
        When the call with the earliest deadline is answered, the timer set
        for it fires for nothing and the next call still times out at its
        own deadline, not before or after.
        """
        first = self.calls.expect("a", "n2", "n2", timeout=5)
        self.clock.advance(1)
        second = self.calls.expect("b", "n2", "n2", timeout=5)
        self.calls.resolve("a", result=1)
        self.assertEqual(self.successResultOf(first), 1)
        self.clock.advance(4)  # the first call's deadline: nothing is due
        self.assertNoResult(second)
        self.clock.advance(0.999)
        self.assertNoResult(second)
        self.clock.advance(0.001)
        self.failureResultOf(second, CallTimeout)
        self.assertNothingPending()

    def test_resolve_with_result(self) -> None:
        """An answer fires the call's Deferred with its result and leaves nothing pending."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.assertIn("r1", self.calls)
        self.assertNoResult(d)
        self.assertTrue(self.calls.resolve("r1", result={"sum": 3}))
        self.assertEqual(self.successResultOf(d), {"sum": 3})
        self.assertNotIn("r1", self.calls)
        self.assertNothingPending()
        self.assertEqual(self.late, [])

    def test_resolve_with_error(self) -> None:
        """An error answer fails the call's Deferred with that very error."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        error = RemoteCallError("ValueError: bad", node_id="n2")
        self.assertTrue(self.calls.resolve("r1", result="ignored", error=error))
        failure = self.failureResultOf(d, RemoteCallError)
        self.assertIs(failure.value, error)
        self.assertEqual(failure.value.code, -32000)
        self.assertNothingPending()

    def test_timeout_at_deadline(self) -> None:
        """An unanswered call fails with CallTimeout (-32001) exactly at its deadline."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.clock.advance(4.999)
        self.assertNoResult(d)
        self.assertIn("r1", self.calls)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, CallTimeout)
        self.assertEqual(failure.value.code, -32001)
        self.assertIsInstance(failure.value, DeferTimeoutError)
        self.assertEqual(failure.value.data, {"target_node": "n2", "timeout": 5})
        self.assertIn("n2", failure.value.message)
        self.assertNotIn("r1", self.calls)
        self.assertNothingPending()

    def test_callee_timeout_at_the_deadline_is_the_callers(self) -> None:
        """
        The callee's -32001 for the call's own deadline, which it starts on
        receipt and so reaches no sooner than the caller's, can still win
        the race with the caller's timer by a hair: it fails the call as
        that timer would have (the timeout is the caller's, SPEC section
        8), not in the callee's name. A -32001 well before the deadline (a
        call the method made timed out) stays the callee's.
        """
        d = self.calls.expect("r1", "n2", "n2", timeout=0.5)
        self.clock.advance(0.499)
        remote = CallTimeout("Call timed out after 0.5s", node_id="n2", timeout=0.5)
        self.assertTrue(self.calls.resolve("r1", error=remote))
        failure = self.failureResultOf(d, CallTimeout)
        self.assertEqual(failure.value.data, {"target_node": "n2", "timeout": 0.5})
        self.assertNothingPending()

        early = self.calls.expect("r2", "n2", "n2", timeout=5)
        nested = CallTimeout("Call to n3 timed out after 1s", node_id="n2", timeout=1)
        self.clock.advance(1)
        self.calls.resolve("r2", error=nested)
        self.assertIs(self.failureResultOf(early, CallTimeout).value, nested)

    def test_timeouts_are_independent(self) -> None:
        """Each call times out at its own deadline; the others keep waiting."""
        short = self.calls.expect("r1", "n2", "n2", timeout=1)
        long = self.calls.expect("r2", "n3", "n2", timeout=3)
        self.clock.advance(1)
        self.failureResultOf(short, CallTimeout)
        self.assertNoResult(long)
        self.assertEqual(self.calls.destinations(), {"n3"})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.failureResultOf(long, CallTimeout)
        self.assertNothingPending()

    def test_count_follows_calls(self) -> None:
        """len() counts the pending calls through a timeout, an answer and a cancel, back to 0."""
        d1 = self.calls.expect("r1", "n2", None, timeout=5)
        d2 = self.calls.expect("r2", "n2", None, timeout=1)
        d3 = self.calls.expect("r3", "n3", None, timeout=5)
        self.assertEqual(len(self.calls), 3)
        self.clock.advance(1)  # r2 times out
        self.assertEqual(len(self.calls), 2)
        self.calls.resolve("r1", result=1)
        self.assertEqual(len(self.calls), 1)
        d3.cancel()
        self.assertEqual(len(self.calls), 0)
        self.successResultOf(d1)
        self.failureResultOf(d2, CallTimeout)
        self.failureResultOf(d3, CancelledError)
        self.assertNothingPending()

    def test_late_answer(self) -> None:
        """An answer after the timeout is discarded: resolve returns False and on_late is called."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.clock.advance(5)
        self.failureResultOf(d, CallTimeout)
        self.assertFalse(self.calls.resolve("r1", result="too late"))
        self.assertEqual(self.late, [None])
        self.assertNothingPending()

    def test_unknown_and_missing_ids_are_late(self) -> None:
        """An answer for an id never expected, or with no id, counts as late."""
        self.assertFalse(self.calls.resolve("nobody", result=1))
        self.assertFalse(self.calls.resolve(None, error=NodeUnreachable()))
        self.assertEqual(self.late, [None, None])
        self.assertEqual(len(self.calls), 0)

    def test_answer_twice(self) -> None:
        """A second answer to the same call is late and leaves the first result alone."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.assertTrue(self.calls.resolve("r1", result="first"))
        self.assertFalse(self.calls.resolve("r1", result="second"))
        self.assertEqual(self.successResultOf(d), "first")
        self.assertEqual(self.late, [None])

    def test_cancel_forgets_call(self) -> None:
        """Cancelling the Deferred forgets the call and its timer; its answer is then late."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertNotIn("r1", self.calls)
        self.assertNothingPending()
        self.clock.advance(10)  # no timer left to fire on a forgotten call
        self.assertFalse(self.calls.resolve("r1", result=1))
        self.assertEqual(self.late, [None])

    def test_cancel_after_answer(self) -> None:
        """Cancelling a call that was already answered changes nothing."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.calls.resolve("r1", result="done")
        self.calls.expect("r1", "n3", "n3", timeout=5)  # the id is free again
        d.cancel()
        self.assertEqual(self.successResultOf(d), "done")
        self.assertIn("r1", self.calls)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_duplicate_response_id(self) -> None:
        """Expecting an id already pending raises ValueError and leaves the first call alone."""
        d = self.calls.expect("r1", "n2", "n2", timeout=5)
        self.assertRaises(ValueError, self.calls.expect, "r1", "n3", "n3", 5)
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.calls.resolve("r1", result="ok")
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertNothingPending()

    def test_fail_via(self) -> None:
        """fail_via fails exactly the calls sent through that neighbour, with NodeUnreachable."""
        d1 = self.calls.expect("r1", "far", "b", timeout=5)
        d2 = self.calls.expect("r2", "b", "b", timeout=5)
        d3 = self.calls.expect("r3", "other", "c", timeout=5)
        d4 = self.calls.expect("r4", "far", None, timeout=5)
        self.assertEqual(self.calls.fail_via("b", unreachable), 2)
        for d, destination in [(d1, "far"), (d2, "b")]:
            failure = self.failureResultOf(d, NodeUnreachable)
            self.assertEqual(failure.value.code, -32002)
            self.assertEqual(failure.value.data, {"target_node": destination})
        self.assertNoResult(d3)
        self.assertNoResult(d4)
        self.assertEqual(self.calls.destinations(), {"other", "far"})
        # One timer, for the earliest deadline, serves every pending call.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.calls.fail_via("b", unreachable), 0)
        self.assertEqual(self.calls.fail_all(unreachable), 2)
        self.failureResultOf(d3, NodeUnreachable)
        self.failureResultOf(d4, NodeUnreachable)
        self.assertNothingPending()

    def test_fail_destination(self) -> None:
        """fail_destination fails exactly the calls to that node, whatever way they went."""
        d1 = self.calls.expect("r1", "far", "b", timeout=5)
        d2 = self.calls.expect("r2", "far", None, timeout=5)
        d3 = self.calls.expect("r3", "near", "b", timeout=5)
        self.assertEqual(self.calls.fail_destination("far", unreachable), 2)
        self.failureResultOf(d1, NodeUnreachable)
        self.failureResultOf(d2, NodeUnreachable)
        self.assertNoResult(d3)
        self.assertEqual(self.calls.destinations(), {"near"})
        self.clock.advance(5)
        self.failureResultOf(d3, CallTimeout)
        self.assertNothingPending()

    def test_fail_destination_keeping_live_ways(self) -> None:
        """
        With C{keep_via}, the calls that left through a neighbour still
        linked stay, and so do, with C{keep_flooded}, flooded calls with a
        copy out through one; the others fail.
        """
        through_b = self.calls.expect("r1", "far", "b", timeout=5)
        through_gone = self.calls.expect("r2", "far", "x", timeout=5)
        flooded = self.calls.expect("r3", "far", None, timeout=5)
        self.calls.set_via("r3", None, ["b", "x"])
        flooded_gone = self.calls.expect("r4", "far", None, timeout=5)
        self.calls.set_via("r4", None, ["x"])
        self.assertEqual(
            self.calls.fail_destination("far", unreachable, keep_via={"b"}, keep_flooded=True), 2
        )
        self.failureResultOf(through_gone, NodeUnreachable)
        self.failureResultOf(flooded_gone, NodeUnreachable)
        self.assertNoResult(through_b)
        self.assertNoResult(flooded)
        # Not keeping flooded calls (a target marked unreachable): those go too.
        self.assertEqual(self.calls.fail_destination("far", unreachable, keep_via={"b"}), 1)
        self.failureResultOf(flooded, NodeUnreachable)
        self.assertNoResult(through_b)
        self.assertEqual(self.calls.fail_destination("far", unreachable), 1)
        self.failureResultOf(through_b, NodeUnreachable)
        self.assertNothingPending()

    def test_fail_all(self) -> None:
        """fail_all fails every pending call with the error built for its destination."""
        ds = {
            rid: self.calls.expect(rid, dest, via, timeout=5)
            for rid, dest, via in [("r1", "a", "a"), ("r2", "b", None), ("r3", "c", "a")]
        }
        self.assertEqual(self.calls.fail_all(unreachable), 3)
        for rid, dest in [("r1", "a"), ("r2", "b"), ("r3", "c")]:
            failure = self.failureResultOf(ds[rid], NodeUnreachable)
            self.assertEqual(failure.value.data["target_node"], dest)
        self.assertNothingPending()
        self.assertEqual(self.calls.fail_all(unreachable), 0)

    def test_fail_counts_only_calls_it_failed(self) -> None:
        """A call settled by an earlier failure's errback is neither failed again nor counted."""
        d1 = self.calls.expect("r1", "far", "b", timeout=5)
        d2 = self.calls.expect("r2", "far", "b", timeout=5)
        seen: list[Any] = []

        def cancel_other(failure: Any) -> None:
            seen.append(failure.value)
            d2.cancel()

        d1.addErrback(cancel_other)
        self.assertEqual(self.calls.fail_via("b", unreachable), 1)
        self.assertIsInstance(seen[0], NodeUnreachable)
        self.failureResultOf(d2, CancelledError)
        self.assertNothingPending()

    def test_new_call_from_errback_survives(self) -> None:
        """A call made again from a failed call's errback is not failed by the same sweep."""
        retried: list[Deferred[Any]] = []
        d = self.calls.expect("r1", "far", "b", timeout=5)
        d.addErrback(lambda _: retried.append(self.calls.expect("r2", "far", "b", timeout=5)))
        self.assertEqual(self.calls.fail_via("b", unreachable), 1)
        self.assertNoResult(retried[0])
        self.assertIn("r2", self.calls)

    def test_set_via(self) -> None:
        """A call expected without a neighbour is failed by fail_via once set_via names it."""
        d = self.calls.expect("r1", "far", None, timeout=5)
        self.assertEqual(self.calls.fail_via("b", unreachable), 0)
        self.calls.set_via("r1", "b")
        self.calls.set_via("nobody", "b")  # unknown ids are ignored
        self.assertNotIn("nobody", self.calls)
        self.assertEqual(self.calls.fail_via("c", unreachable), 0)
        self.assertEqual(self.calls.fail_via("b", unreachable), 1)
        self.failureResultOf(d, NodeUnreachable)
        self.assertNothingPending()


class ForwardedCallsTests(SynchronousTestCase):
    """L{ForwardedCalls}: calls passed on for others, until answered, lost or expired."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = ForwardedCalls(self.clock)

    def tearDown(self) -> None:
        # The table never sets a reactor timer.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_taken(self) -> None:
        """An answer passing back forgets the call and learns the way back."""
        self.calls.remember("caller", "r1", "target", "in", "out", budget=10)
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(self.calls.take("caller", "r1"), "in")
        self.assertEqual(len(self.calls), 0)
        self.assertIsNone(self.calls.take("caller", "r1"))

    def test_taken_unknown(self) -> None:
        """An answer with no id, another caller's id or an unknown id forgets nothing."""
        self.calls.remember("caller", "r1", "target", "in", "out", budget=10)
        self.assertIsNone(self.calls.take("caller", None))
        self.assertIsNone(self.calls.take("someone-else", "r1"))
        self.assertIsNone(self.calls.take("caller", "r2"))
        self.assertEqual(len(self.calls), 1)

    def test_keyed_by_caller_and_id(self) -> None:
        """The same response id from two callers is two calls."""
        self.calls.remember("c1", "r1", "t", "in1", "out", budget=10)
        self.calls.remember("c2", "r1", "t", "in2", "out", budget=10)
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(self.calls.take("c1", "r1"), "in1")
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(self.calls.lost_link("out"), [("c2", "r1", "t", "in2")])

    def test_lost_link(self) -> None:
        """Losing a link forgets, and reports, exactly the calls that left through it."""
        self.calls.remember("c1", "r1", "t1", "in", "out", budget=10)
        self.calls.remember("c2", "r2", "t2", "in", "other", budget=10)
        self.calls.remember("c3", "r3", "t3", "out", "in", budget=10)
        self.calls.remember("c4", "r4", "t4", "in", None, budget=10)
        self.calls.remember("c5", "r5", "t5", "x", "out", budget=20)
        self.assertEqual(
            sorted(self.calls.lost_link("out")),
            [("c1", "r1", "t1", "in"), ("c5", "r5", "t5", "x")],
        )
        self.assertEqual(len(self.calls), 3)
        self.assertEqual(self.calls.lost_link("out"), [])
        self.assertEqual(self.calls.lost_link("nowhere"), [])

    def test_lost_link_acts_at_once(self) -> None:
        """lost_link forgets the calls even when its result is not looked at."""
        self.calls.remember("c1", "r1", "t1", "in", "out", budget=10)
        self.calls.lost_link("out")
        self.assertEqual(len(self.calls), 0)

    def test_expiry(self) -> None:
        """A call never answered is forgotten when its budget runs out."""
        self.calls.remember("c1", "r1", "t1", "in", "out", budget=10)
        self.calls.remember("c2", "r2", "t2", "in", "out", budget=10)
        self.clock.advance(9.999)
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(self.calls.take("c1", "r1"), "in")
        self.clock.advance(0.001)
        self.assertEqual(len(self.calls), 0)
        self.assertEqual(self.calls.take("c2", "r2"), None)
        self.assertEqual(self.calls.lost_link("out"), [])

    def test_expired_not_reported(self) -> None:
        """A link lost after a call's budget ran out reports only the calls still live."""
        self.calls.remember("c1", "r1", "t1", "in", "out", budget=1)
        self.calls.remember("c2", "r2", "t2", "in", "out", budget=5)
        self.clock.advance(2)
        self.assertEqual(self.calls.lost_link("out"), [("c2", "r2", "t2", "in")])

    def test_bounded(self) -> None:
        """Answered calls leave nothing behind; unanswered ones go a sweep after their budget."""
        for i in range(10_000):
            self.calls.remember("c", f"r{i}", "t", "in", "out", budget=30)
            if i % 100:
                self.calls.take("c", f"r{i}")
        self.assertEqual(len(self.calls._calls), 100)
        self.clock.advance(30 + ForwardedCalls.SWEEP_INTERVAL)
        self.calls.remember("c", "new", "t", "in", "out", budget=30)
        self.assertEqual(list(self.calls._calls), [("c", "new")])

    def test_remember_again_replaces(self) -> None:
        """Remembering the same call again replaces it and restarts its budget."""
        self.calls.remember("c1", "r1", "t1", "in", "out", budget=10)
        self.clock.advance(5)
        self.calls.remember("c1", "r1", "t1", "in", "elsewhere", budget=10)
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(self.calls.lost_link("out"), [])
        self.clock.advance(9)
        self.assertEqual(len(self.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.calls), 0)

    def test_clear(self) -> None:
        """clear forgets every call."""
        for i in range(3):
            self.calls.remember("c", f"r{i}", "t", "in", "out", budget=10 + i)
        self.calls.clear()
        self.assertEqual(len(self.calls), 0)
        self.clock.advance(20)
        self.assertEqual(len(self.calls), 0)


class OwedAnswersTests(SynchronousTestCase):
    """The answers an original-design neighbour is owed: one per call, bounded, for a while."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.owed = OwedAnswers(self.clock, ttl=120.0, capacity=3)

    def test_one_per_call(self) -> None:
        """Each call is owed one answer; a copy of one (same id) none more."""
        for message_id in ("m1", "m2", "m2"):
            self.owed.called("o", "r", message_id)
        self.assertEqual([self.owed.answered("o", "r") for _ in range(3)], [True, True, False])
        self.owed.called("o", "r", "m3")  # the id again, for a new call
        self.assertTrue(self.owed.answered("o", "r"))

    def test_call_not_seen(self) -> None:
        """An answer to a call that went another way is owed once."""
        self.assertTrue(self.owed.answered("o", "r"))
        self.assertFalse(self.owed.answered("o", "r"))
        self.assertTrue(self.owed.answered("p", "r"))  # another neighbour's

    def test_kept_for_a_while_and_bounded(self) -> None:
        """Past its time an entry is as new; past the capacity the oldest goes."""
        self.owed.answered("o", "r")
        self.clock.advance(121)
        self.assertTrue(self.owed.answered("o", "r"))
        for n in range(5):
            self.owed.called("o", f"x{n}", "m")
        self.assertEqual(len(self.owed), 3)


class SeenMessagesTests(SynchronousTestCase):
    """L{SeenMessages}: at-most-once delivery, bounded in time and size."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.seen = SeenMessages(self.clock, ttl=60, capacity=3)

    def test_first_time_then_duplicate(self) -> None:
        """A message id is new once per sender and a duplicate after that."""
        self.assertTrue(self.seen.first_time("a", "m1"))
        self.assertFalse(self.seen.first_time("a", "m1"))
        self.assertFalse(self.seen.first_time("a", "m1"))
        self.assertTrue(self.seen.first_time("b", "m1"))
        self.assertTrue(self.seen.first_time("a", "m2"))
        self.assertEqual(len(self.seen), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_id(self) -> None:
        """A message without an id is always new and never remembered."""
        for _ in range(5):
            self.assertTrue(self.seen.first_time("a", None))
        self.assertEqual(len(self.seen), 0)

    def test_duplicate_within_ttl(self) -> None:
        """A copy arriving just before the id's ttl runs out is still a duplicate."""
        self.seen.first_time("a", "m1")
        self.clock.advance(59.999)
        self.assertFalse(self.seen.first_time("a", "m1"))

    def test_expires_by_time(self) -> None:
        """Once its ttl has passed, the same id is new again even if nothing else arrived."""
        self.seen.first_time("a", "m1")
        self.clock.advance(60)
        self.assertTrue(self.seen.first_time("a", "m1"))
        self.assertFalse(self.seen.first_time("a", "m1"))
        self.assertEqual(len(self.seen), 1)

    def test_expired_ids_are_dropped(self) -> None:
        """Adding an id drops the ids whose ttl has passed."""
        self.seen.first_time("a", "m1")
        self.clock.advance(30)
        self.seen.first_time("a", "m2")
        self.clock.advance(30)
        self.seen.first_time("a", "m3")
        self.assertEqual(len(self.seen), 2)
        self.assertFalse(self.seen.first_time("a", "m2"))
        self.assertFalse(self.seen.first_time("a", "m3"))

    def test_renewed_id_expires_last(self) -> None:
        """An id seen again after expiring gets a fresh ttl and outlives ids added before it."""
        self.seen.first_time("a", "old")
        self.clock.advance(50)
        self.seen.first_time("a", "mid")
        self.clock.advance(10)
        self.assertTrue(self.seen.first_time("a", "old"))  # renewed at t=60
        self.clock.advance(55)  # t=115: "mid" (t=110) is gone, "old" (t=120) is not
        self.seen.first_time("a", "new")
        self.assertFalse(self.seen.first_time("a", "old"))
        self.assertTrue(self.seen.first_time("a", "mid"))

    def test_capacity(self) -> None:
        """Past its capacity the memory forgets the oldest ids first."""
        for i in range(5):
            self.assertTrue(self.seen.first_time("a", f"m{i}"))
        self.assertEqual(len(self.seen), 3)
        for i in (2, 3, 4):
            self.assertFalse(self.seen.first_time("a", f"m{i}"))
        self.assertTrue(self.seen.first_time("a", "m0"))
        self.assertEqual(len(self.seen), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ForwardedBoundsTests(SynchronousTestCase):
    """Forwarded calls are bounded in total and per neighbour, for at most a day."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = ForwardedCalls(self.clock, max_total=5, max_per_neighbour=3)

    def remember(self, came_from: str, n: int, budget: float = 10) -> None:
        """Remember call C{n} from neighbour C{came_from}."""
        self.calls.remember("caller", f"r{came_from}{n}", "t", came_from, "out", budget)

    def test_perNeighbour(self) -> None:
        """A neighbour has room for max_per_neighbour calls; others still have theirs."""
        for n in range(3):
            self.assertTrue(self.calls.has_room("a"))
            self.remember("a", n)
        self.assertFalse(self.calls.has_room("a"))
        self.assertTrue(self.calls.has_room("b"))

    def test_total(self) -> None:
        """Past max_total, no neighbour has room."""
        for n in range(3):
            self.remember("a", n)
        for n in range(2):
            self.remember("b", n)
        self.assertFalse(self.calls.has_room("c"))
        self.calls.take("caller", "rb0")
        self.assertTrue(self.calls.has_room("c"))

    def test_roomComesBack(self) -> None:
        """Answers, lost links and expiry each give the room back."""
        for n in range(3):
            self.remember("a", n)
        self.calls.take("caller", "ra0")
        self.assertTrue(self.calls.has_room("a"))
        self.remember("a", 3)
        self.assertEqual(len(self.calls.lost_link("out")), 3)
        self.assertTrue(self.calls.has_room("a"))
        for n in range(3):
            self.remember("a", 10 + n)
        self.clock.advance(11)
        self.assertTrue(self.calls.has_room("a"))
        self.assertEqual(self.calls._per_neighbour, {})

    def test_floodedCopies(self) -> None:
        """One call remembered twice (flooded copies) counts once."""
        self.remember("a", 0)
        self.remember("a", 0)
        self.assertEqual(self.calls._per_neighbour, {"a": 1})

    def test_clamped(self) -> None:
        """A call asking for a billion seconds is remembered for a day at most."""
        self.remember("a", 0, budget=1e9)
        self.clock.advance(86400 + 1)
        self.assertEqual(len(self.calls), 0)
