# -*- test-case-name: tests.test_streams -*-
"""
Cancellation that reaches the callee, and streamed results with end-to-end
credit (SPEC section 12), on in-memory meshes and one shared clock.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx.errors import Cancelled, OutcomeUnknown, RemoteCallError
from relaytx.node import RelayNode
from relaytx.server import Server, exposed
from relaytx.testing import FakeLinkTransport, MemoryMesh, line, memory_node
from relaytx.wire import CallCancel, Envelope, StreamCredit, StreamItem


class Work(Server):
    """Methods that wait, count what ran, and stream."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.waiting: list[Deferred[Any]] = []
        self.cancelled = 0
        self.made = 0
        self.closed = 0
        self.ticks: list[Deferred[None]] = []

    @exposed
    def hold(self, name: str) -> Deferred[Any]:
        """Run, and wait until the test fires it (or it is cancelled)."""
        self.ran.append(name)

        def cancel(_: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.waiting.append(d)
        return d

    @exposed
    async def hold_async(self) -> str:
        """An async method that waits; it sees its cancellation as CancelledError."""
        self.ran.append("async")
        try:
            await self.hold("inner")
        except CancelledError:
            self.ran.append("saw CancelledError")
            raise
        return "done"

    @exposed
    async def give_up(self) -> str:
        """An async method that cancels what it waits on: its own CancelledError."""
        self.ran.append("give_up")
        inner = self.hold("inner")
        self.clock_call = inner.cancel
        return await inner

    @exposed
    async def count(self, n: int) -> Any:
        """Yield 0..n-1; record how many were made and whether its finally ran."""
        try:
            for i in range(n):
                self.made += 1
                yield i
        finally:
            self.closed += 1

    @exposed
    async def drip(self, n: int) -> Any:
        """Yield 0..n-1, each after the test fires C{self.ticks}' next Deferred."""
        try:
            for i in range(n):
                tick: Deferred[None] = Deferred()
                self.ticks.append(tick)
                await tick
                self.made += 1
                yield i
        finally:
            self.closed += 1

    @exposed
    async def stubborn(self) -> Any:
        """Yield for ever, each item after a tick, catching what its waits raise."""
        i = 0
        try:
            while True:
                tick: Deferred[None] = Deferred()
                self.ticks.append(tick)
                try:
                    await tick
                except Exception:  # Twisted's CancelledError is one
                    self.ran.append("swallowed")
                    self.ticks.remove(tick)
                    continue
                self.made += 1
                yield i
                i += 1
        finally:
            self.closed += 1

    def tick(self) -> None:
        """Let C{drip} make its next item."""
        self.ticks.pop(0).callback(None)

    @exposed
    async def big(self, n: int, size: int) -> Any:
        """Yield C{n} strings of C{size} characters."""
        for _ in range(n):
            yield "x" * size


class StreamsTestCase(SynchronousTestCase):
    """Three nodes in a line, a - b - c, with a L{Work} server on c."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network = MemoryMesh()
        self.a, self.b, self.c = (memory_node(n, self.clock) for n in "abc")
        line([self.a, self.b, self.c], self.network)
        self.network.settle()
        self.work = Work()
        self.c.expose("work", self.work)
        self.network.settle()

    def turn(self, times: int = 3) -> None:
        """Deliver everything, and run what is due now, a few times over."""
        for _ in range(times):
            self.network.pump()
            self.clock.advance(0)

    def consume(
        self, node: RelayNode, method: str, *args: Any, stop_at: int | None = None, **kw: Any
    ) -> tuple[list[Any], Deferred[Any]]:
        """Read a stream into a list in a coroutine; stop (break) after C{stop_at} items."""
        got: list[Any] = []

        async def read() -> int:
            async for item in node.stream("c", "work", method, *args, **kw):
                got.append(item)
                if stop_at is not None and len(got) >= stop_at:
                    break
            return len(got)

        return got, ensureDeferred(read())


class CancelTests(StreamsTestCase):
    """Cancelling a call's Deferred reaches its callee, two hops away."""

    def test_running_call_cancelled(self) -> None:
        """A running call's Deferred is cancelled at the callee; the caller fails at once."""
        d = self.a.call("c", "work", "hold", "first")
        self.turn()
        self.assertEqual(self.work.ran, ["first"])
        d.cancel()
        self.failureResultOf(d, CancelledError)  # at once, before any frame moves
        self.assertEqual(self.work.cancelled, 0)
        self.turn()
        self.assertEqual(self.work.cancelled, 1)
        [answer] = self.network.link_between("b", "c").sent_by("c", "server_response")
        self.assertEqual(answer.data["error_code"], Cancelled.code)
        # The server is free: the next call runs and answers.
        d2 = self.a.call("c", "work", "count", 2)
        self.turn()
        self.assertEqual(self.successResultOf(d2), [0, 1])

    def test_queued_call_never_runs(self) -> None:
        """A call queued behind another is cancelled before its turn and never runs."""
        first = self.a.call("c", "work", "hold", "first")
        second = self.a.call("c", "work", "hold", "second")
        self.turn()
        second.cancel()
        self.turn()
        self.work.waiting[0].callback("ok")
        self.turn()
        self.assertEqual(self.successResultOf(first), "ok")
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.work.ran, ["first"])

    def test_methods_own_cancellation_is_its_exception(self) -> None:
        """
        A method that cancels what it waits on fails with its own exception,
        -32000 of type CancelledError: called from afar and from its node
        alike, the call was not cancelled (-32800) and did not lose its
        caller (-32006).
        """
        for caller in (self.a, self.c):
            d = caller.call("c", "work", "give_up")
            self.turn()
            self.work.clock_call()
            self.turn()
            error = self.failureResultOf(d, RemoteCallError).value
            self.assertEqual((error.code, error.data["type"]), (-32000, "CancelledError"))
            self.assertEqual(error.data["node_id"], "c")
        self.assertEqual(self.work.ran, ["give_up", "inner"] * 2)
        self.assertEqual(len(self.flushLoggedErrors(CancelledError)), 2)  # as raised ones are

    def test_async_method_sees_cancelled_error(self) -> None:
        """An async def method waiting when its call is cancelled gets CancelledError."""
        d = self.a.call("c", "work", "hold_async")
        self.turn()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.turn()
        self.assertEqual(self.work.ran, ["async", "inner", "saw CancelledError"])

    def test_cancel_before_the_call_arrives(self) -> None:
        """A cancel that overtakes its call keeps the call from running (answered -32800)."""
        self.network.link_between("b", "c").pause()
        d = self.a.call("c", "work", "hold", "late")
        self.network.pump()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.network.pump()
        # Deliver the cancel to c before the call: it overtakes it.
        [call] = self.network.link_between("b", "c").sent_by("b", "server_call")
        [cancel] = self.network.link_between("b", "c").sent_by("b", "call_cancel")
        self.c.mesh.calls.streams.take_cancel(cancel, CallCancel.from_data(cancel.data))
        self.network.link_between("b", "c").resume()
        self.turn()
        self.assertEqual(self.work.ran, [])
        answers = self.network.link_between("b", "c").sent_by("c", "server_response")
        self.assertEqual([a.data["error_code"] for a in answers], [Cancelled.code])
        self.assertEqual(call.type, "server_call")

    def test_cancel_of_another_callers_call_is_dropped(self) -> None:
        """A cancel that names a caller other than its sender cancels nothing."""
        d = self.a.call("c", "work", "hold", "mine")
        self.turn()
        [call] = self.network.link_between("b", "c").sent_by("b", "server_call")
        forged = CallCancel(call.data["response_id"], "a")
        self.b.mesh.send("c", forged)  # b claims to cancel a's call
        self.turn()
        self.assertEqual(self.work.cancelled, 0)
        self.assertNoResult(d)

    def test_deadline_still_works(self) -> None:
        """A call whose deadline passes still fails with -32001, as before."""
        d = self.a.call("c", "work", "hold", "slow", timeout=1.0)
        self.turn()
        self.clock.advance(1.0)
        self.assertEqual(self.failureResultOf(d).value.code, -32001)


class StreamTests(StreamsTestCase):
    """Items stream two hops, in order, within the consumer's window."""

    def test_items_in_order_then_end(self) -> None:
        """Every item arrives, in order; the loop ends when the generator does."""
        got, done = self.consume(self.a, "count", 300, window=16)
        for _ in range(100):
            self.turn(1)
        self.assertEqual(got, list(range(300)))
        self.assertEqual(self.successResultOf(done), 300)
        self.assertEqual(self.work.closed, 1)

    def test_local_stream(self) -> None:
        """A stream from a server of the node itself works the same way."""
        got: list[Any] = []

        async def read() -> None:
            async for item in self.c.stream(None, "work", "count", 5):
                got.append(item)

        done = ensureDeferred(read())
        self.clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(got, [0, 1, 2, 3, 4])

    def test_credit_exhaustion_stops_the_generator(self) -> None:
        """A consumer that does not read stops the generator at its window, two hops away."""
        stream = self.a.stream("c", "work", "count", 10_000, window=8)
        for _ in range(20):
            self.turn(1)
        self.assertEqual(self.work.made, 8)  # the window: it waits for credit
        sent = self.network.link_between("b", "c").sent_by("c", "stream_item")
        self.assertEqual(len(sent), 8)
        self.assertEqual(len(self.network.link_between("a", "b").sent_by("b", "stream_item")), 8)
        # Reading half the window grants more: the generator resumes.
        got: list[Any] = []

        async def read(n: int) -> None:
            async for item in stream:
                got.append(item)
                if len(got) == n:
                    return

        ensureDeferred(read(4))
        for _ in range(10):
            self.turn(1)
        self.assertEqual(got, [0, 1, 2, 3])
        self.assertEqual(self.work.made, 12)  # consumed 4, and the window
        stream.cancel()

    def test_state_held_in_metrics(self) -> None:
        """
        /metrics shows what a call and a stream hold on the nodes on their
        way (remembered by the forwarder, running at the callee, producing
        there), and that nothing is left once they end.
        """

        def held(node: RelayNode) -> tuple[float | None, ...]:
            sample = node.metrics.registry.get_sample_value
            return tuple(
                sample(name)
                for name in (
                    "relaytx_forwarded_calls",
                    "relaytx_running_calls",
                    "relaytx_streams_producing",
                )
            )

        d = self.a.call("c", "work", "hold", "first")
        stream = self.a.stream("c", "work", "count", 10_000, window=8)
        self.turn()
        self.assertEqual((held(self.b)[0], held(self.c)[1]), (2, 2))  # (the stream queued)
        self.work.waiting[0].callback("done")
        for _ in range(10):
            self.turn(1)
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(held(self.c)[2], 1)  # the stream waits for credit
        stream.cancel()
        for _ in range(10):
            self.turn(1)
        for node in (self.a, self.b, self.c):
            self.assertEqual(held(node), (0, 0, 0), node.node_id)

    def test_break_cancels_the_generator(self) -> None:
        """Leaving the loop early runs the generator's finally at the callee."""
        got, done = self.consume(self.a, "count", 1_000_000, stop_at=20, window=8)
        for _ in range(30):
            self.turn(1)
        self.assertEqual(self.successResultOf(done), 20)
        self.assertEqual(got, list(range(20)))
        self.assertEqual(self.work.closed, 1)
        self.assertLessEqual(self.work.made, 20 + 8 + 1)
        # The server is free again.
        d = self.a.call("c", "work", "count", 1)
        self.turn()
        self.assertEqual(self.successResultOf(d), [0])

    def cancelled_after_one(self, method: str, *args: Any) -> list[Any]:
        """
        Read a stream of C{method} (which waits for a tick before each item),
        take its first item, then cancel the reader while the generator waits.

        :returns: the items read.
        """
        got, done = self.consume(self.a, method, *args, window=4)
        self.turn()
        self.work.tick()
        self.turn()
        self.assertEqual(got, [0])
        done.cancel()
        for _ in range(5):
            self.turn(1)
        self.failureResultOf(done, CancelledError)
        return got

    def test_cancelling_the_reader_cancels_the_stream(self) -> None:
        """Cancelling the Deferred of a coroutine waiting for an item cancels the stream."""
        self.cancelled_after_one("drip", 1_000_000)
        self.assertEqual(self.work.closed, 1)

    def test_generator_that_catches_its_cancel(self) -> None:
        """
        A generator that catches the cancel where it awaits and goes on is
        closed at its next item, its finally run: the server is free again.
        """
        got = self.cancelled_after_one("stubborn")
        self.assertEqual(self.work.ran, ["swallowed"])
        self.assertEqual(self.work.closed, 0)  # it waits again, as it chose to
        self.work.tick()
        self.turn()
        self.assertEqual(self.work.closed, 1)
        self.assertEqual(self.work.made, 2)  # the item it made then was not sent
        self.assertEqual(got, [0])
        d = self.a.call("c", "work", "count", 1)
        self.turn()
        self.assertEqual(self.successResultOf(d), [0])

    def test_collecting_generator_that_catches_its_cancel(self) -> None:
        """The same for a call that collects the items into a list."""
        d = self.a.call("c", "work", "stubborn")
        self.turn()
        self.work.tick()
        self.turn()
        d.cancel()
        self.turn()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.work.ran, ["swallowed"])
        self.work.tick()
        self.turn()
        self.assertEqual(self.work.closed, 1)
        d = self.a.call("c", "work", "count", 1)
        self.turn()
        self.assertEqual(self.successResultOf(d), [0])

    def test_plain_call_collects_a_list(self) -> None:
        """A call that asks for no stream gets the items as one list."""
        d = self.a.call("c", "work", "count", 4)
        self.turn()
        self.assertEqual(self.successResultOf(d), [0, 1, 2, 3])

    def test_collected_list_bounded(self) -> None:
        """Collected items past the message size limit fail with -32000 ResultTooLarge."""
        d = self.a.call("c", "work", "big", 2000, 1000)
        self.turn()
        error = self.failureResultOf(d).value
        self.assertIsInstance(error, RemoteCallError)
        self.assertEqual(error.data["type"], "ResultTooLarge")
        self.assertEqual(error.message, f"ResultTooLarge: {error.data['message']}")

    def test_stream_of_a_plain_method(self) -> None:
        """node.stream of a method that is not a generator fails with TypeError."""
        self.c.expose("other", _Plain())
        got: list[Any] = []

        async def read() -> None:
            async for item in self.a.stream("c", "other", "get"):
                got.append(item)

        done = ensureDeferred(read())
        self.network.settle()
        self.turn()
        self.failureResultOf(done, TypeError)

    def test_window_bounds(self) -> None:
        """A window out of 1..4096 is refused at once."""
        for bad in (0, -1, 4097):
            self.assertRaises(ValueError, self.a.stream, "c", "work", "count", 1, window=bad)


class _Plain(Server):
    @exposed
    def get(self) -> str:
        return "a result"


class PathLossTests(StreamsTestCase):
    """A stream whose path breaks fails its consumer at once, and stops its generator."""

    def test_items_dropped_on_the_way(self) -> None:
        """
        A node on the way that drops the last items (it may drop what it
        passes on) and passes the answer on: the answer counts more items
        than came, and the stream fails -32006, not a success.
        """
        forwarder = self.b.mesh.forwarder
        honest_receive = forwarder.receive

        def receive(envelope: Envelope, session: Any, unwrapped: bool = False) -> None:
            if envelope.type == StreamItem.TYPE and envelope.data["seq"] >= 2:
                return
            honest_receive(envelope, session, unwrapped)

        forwarder.receive = receive  # type: ignore[method-assign]
        got, done = self.consume(self.a, "count", 3)
        for _ in range(10):
            self.turn(1)
        self.assertEqual(got, [0, 1])
        error = self.failureResultOf(done, OutcomeUnknown).value
        self.assertEqual(error.message, "stream from c broken: it sent 3 items, 2 came")

    def test_far_link_lost(self) -> None:
        """The link b - c goes: a's waiting reader fails with -32006; c's generator is cancelled."""
        stream = self.a.stream("c", "work", "drip", 10_000, window=8)
        got: list[Any] = []
        failures: list[Any] = []

        async def read() -> None:
            async for item in stream:
                got.append(item)

        done = ensureDeferred(read())
        done.addErrback(failures.append)
        self.turn()
        self.work.tick()
        self.turn()
        self.assertEqual(got, [0])
        self.network.link_between("b", "c").cut()
        self.network.pump()  # b's -32006 reaches a, and nothing else is needed
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0].value, OutcomeUnknown)
        self.assertEqual(self.work.closed, 1)

    def test_near_link_lost(self) -> None:
        """The link a - b goes: a's stream fails at once; b tells c, whose generator stops."""
        stream = self.a.stream("c", "work", "drip", 10_000, window=8)
        failures: list[Any] = []

        async def read() -> None:
            async for _ in stream:
                pass

        done = ensureDeferred(read())
        done.addErrback(failures.append)
        self.turn()
        self.assertEqual(self.work.closed, 0)
        self.network.link_between("a", "b").cut()
        self.assertIsInstance(failures[0].value, OutcomeUnknown)
        self.turn()
        [cancel] = self.network.link_between("b", "c").sent_by("b", "call_cancel")
        self.assertTrue(cancel.data["lost"])
        self.assertEqual(self.work.closed, 1)

    def test_item_too_large_for_a_forwarder(self) -> None:
        """
        An item that b cannot pass on (b's message limit is lower than c's)
        fails a's stream at once with -32006 from b, and c's generator stops.
        """
        small = memory_node("b2", self.clock, limits={"max_message_size": 4096})
        self.network.link(self.a, small)
        self.network.link(small, self.c)
        self.network.link_between("b", "c").cut()
        self.network.settle()
        self.assertEqual(self.a.mesh.router.next_hop("c"), "b2")
        failures: list[Any] = []

        async def read() -> None:
            async for _ in self.a.stream("c", "work", "big", 3, 5000, window=1):
                pass

        ensureDeferred(read()).addErrback(failures.append)
        self.turn()
        [failure] = failures
        self.assertIsInstance(failure.value, OutcomeUnknown)
        self.assertEqual(failure.value.data["node_id"], "b2")
        self.assertIn("too large", failure.value.message)
        [cancel] = self.network.link_between("b2", "c").sent_by("b2", "call_cancel")
        self.assertTrue(cancel.data["lost"])
        self.assertEqual(len(self.a.mesh.pending), 0)

    def test_lost_cancel_from_off_the_path_is_ignored(self) -> None:
        """A 'lost' cancel from a node the call did not cross cancels nothing."""
        d = self.b.call("c", "work", "hold", "b's")  # route: b, c
        self.turn()
        [call] = self.network.link_between("b", "c").sent_by("b", "server_call")
        forged = CallCancel(call.data["response_id"], "b", lost=True)
        self.a.mesh.send("c", forged)  # a is not on the route b -> c
        self.turn()
        self.assertEqual(self.work.cancelled, 0)
        self.assertNoResult(d)


class LostCancelTests(SynchronousTestCase):
    """A cancel that says the caller was lost: from the call's path, by its link."""

    def test_only_by_the_link_the_call_came_by(self) -> None:
        """
        A 'lost' cancel naming a node of the call's route as its sender is
        taken only if it came by the link the call came by: a member off
        the path (PKI mode: linked to the target, and knowing the call's
        response id) cancelled other nodes' calls so.
        """
        from relaytx._streams import RunningCalls

        drops: list[str] = []
        running = RunningCalls(Clock(), SimpleNamespace(drop=drops.append))
        cancelled: list[str] = []
        call: Deferred[None] = Deferred(lambda _: cancelled.append("r1"))
        running.add(("c", "r1"), call, "e", None, ("c", "d", "e"))
        running.cancel_arrived("c", "r1", "e", lost=True, came_by="m")  # m forged it
        self.assertEqual((cancelled, drops), ([], ["forged_cancel"]))
        running.cancel_arrived("c", "r1", "e", lost=True, came_by="e")
        self.assertEqual(cancelled, ["r1"])
        call.addErrback(lambda _: None)


class EarlyCancelsTests(SynchronousTestCase):
    """Cancels that came before their calls: kept for a while, bounded."""

    def test_past_their_time_go_as_new_come(self) -> None:
        """A cancel kept past its time goes when the next one comes, and is no longer taken."""
        from relaytx._streams import _EarlyCancels

        clock = MemoryReactorClock()
        early = _EarlyCancels(clock)
        early.add(("a", "1"))
        early.add(("a", "2"))
        clock.advance(_EarlyCancels.TTL / 2)
        early.add(("a", "1"))  # again: kept from now on
        clock.advance(_EarlyCancels.TTL / 2 + 1)
        early.add(("a", "3"))
        self.assertEqual(len(early), 2)
        self.assertFalse(early.take(("a", "2")))
        self.assertTrue(early.take(("a", "1")))
        self.assertTrue(early.take(("a", "3")))
        self.assertFalse(early)

    def test_bounded(self) -> None:
        """Past its capacity, the oldest goes first."""
        from relaytx._streams import _EarlyCancels

        early = _EarlyCancels(MemoryReactorClock())
        for n in range(_EarlyCancels.CAPACITY + 5):
            early.add(("a", str(n)))
        self.assertEqual(len(early), _EarlyCancels.CAPACITY)
        self.assertFalse(early.take(("a", "4")))
        self.assertTrue(early.take(("a", "5")))


class WireTests(SynchronousTestCase):
    """The new frames, and who may see them."""

    def test_frames_round_trip(self) -> None:
        """Each frame's data reads back as it was written."""
        for payload in (
            StreamItem("r1", 3, {"x": [1]}),
            StreamCredit("r1", 40),
            CallCancel("r1", "n1"),
            CallCancel("r1", "n1", lost=True, mac="ab"),
        ):
            self.assertEqual(type(payload).from_data(payload.to_data()), payload)

    def test_never_sent_to_an_original_node(self) -> None:
        """A cancel for a neighbour of the original design is not sent to it."""
        clock = MemoryReactorClock()
        node = memory_node("n1", clock)
        transport = FakeLinkTransport()
        node.mesh.open_link("old", "inbound", "test", transport, original=True)
        transport.clear()
        node.mesh.calls.streams.send_cancel("old", "r1")
        node.mesh.calls.streams.send_credit("old", "r1", 10)
        self.assertEqual(transport.envelopes(), [])
        # A relaytx neighbour gets it.
        other = FakeLinkTransport()
        node.mesh.open_link("new", "inbound", "test", other)
        other.clear()
        node.mesh.calls.streams.send_cancel("new", "r1")
        self.assertEqual([e.type for e in other.envelopes()], ["call_cancel"])

    def test_late_item_dropped(self) -> None:
        """An item for no pending stream is dropped and counted."""
        node = memory_node("n1", MemoryReactorClock())
        item = StreamItem("nope", 0, 1)
        envelope = Envelope.create(item, "n2", "n1", 0.0)
        node.mesh.calls.streams.take_item(envelope, item)
        self.assertIn(b'reason="late_item"', node.metrics.exposition())


class DiamondTests(SynchronousTestCase):
    """a - b - c and a - d - c: a stream's generator stops when the link its call came by goes."""

    def test_stream_stops_though_caller_reachable(self) -> None:
        """c cancels a stream whose link went, though a is still reachable through d."""
        clock = MemoryReactorClock()
        network = MemoryMesh()
        a, b, c, d = (memory_node(n, clock) for n in "abcd")
        for x, y in ((a, b), (b, c), (a, d), (d, c)):
            network.link(x, y)
        network.settle()
        work = Work()
        c.expose("work", work)
        network.settle()
        stream = a.stream("c", "work", "drip", 100, window=4)
        network.pump()
        [call] = [
            e
            for link in (network.link_between("b", "c"), network.link_between("d", "c"))
            for e in link.sent_by(link.session_of(c).peer_id, "server_call")
        ]
        came_by = call.route[-1]
        network.link_between(came_by, "c").cut()
        network.pump()
        clock.advance(0)
        self.assertTrue(c.mesh.can_reach("a"))
        self.assertEqual(work.closed, 1)
        stream.cancel()


class ForgedItemTests(StreamsTestCase):
    """Items for a stream come only from its callee."""

    def test_item_from_another_node_dropped(self) -> None:
        """b sending an item for a's stream from c is dropped and counted."""
        stream = self.a.stream("c", "work", "drip", 10, window=4)
        self.turn()
        [call] = self.network.link_between("b", "c").sent_by("b", "server_call")
        self.b.mesh.send("a", StreamItem(call.data["response_id"], 0, "forged"))
        self.turn()
        self.assertEqual(stream.consumer.count, 0)
        self.assertIn(b'reason="forged_item"', self.a.metrics.exposition())
        stream.cancel()
        self.turn()


class EndToEndFrameTests(SynchronousTestCase):
    """In PKI mode, a node on the path can neither forge items nor cancel others' calls."""

    def setUp(self) -> None:
        from relaytx._calls import PendingCalls
        from relaytx._pki import EndToEnd, RecordBook
        from relaytx._streams import MeshStreams
        from tests.test_pki import identity

        ids = {n: identity(n) for n in ("nodeA", "nodeC", "mallory")}
        self.e2e = {}
        for name, me in ids.items():
            book = RecordBook(me)
            for other in ids.values():
                book.take(other.record(1, []))
            self.e2e[name] = EndToEnd(me, book)
        self.clock = MemoryReactorClock()
        self.pending = PendingCalls(self.clock)
        self.drops: list[str] = []
        self.cancels: list[tuple[str, str, str, bool]] = []
        self.sent: list[Any] = []

        def streams(name: str) -> MeshStreams:
            return MeshStreams(
                name,
                lambda to, payload, **kw: self.sent.append((to, payload)),
                {},  # no links: nobody is a neighbour, codes are needed
                self.pending,
                self.drops.append,
                lambda *args: self.cancels.append(args),
                self.e2e[name],
            )

        self.a, self.c = streams("nodeA"), streams("nodeC")
        self.items = _Collect()
        self.call = self.pending.expect("r1", "nodeC", "mallory", 30.0, stream=self.items)

    def envelope(self, payload: Any, sender: str) -> Envelope:
        """The frame as it reaches its destination through mallory."""
        envelope = Envelope.create(payload, sender, "x", 0.0)
        envelope.route = [sender, "mallory"]
        return envelope

    def test_items(self) -> None:
        """The callee's coded item is taken; one mallory makes or alters is dropped."""
        self.c.send_item("nodeA", "r1", 0, "real", None)
        [(_, item)] = self.sent
        self.a.take_item(self.envelope(item, "nodeC"), item)
        self.assertEqual(self.items.got, ["real"])
        altered = StreamItem("r1", 1, "fake", item.mac)
        self.a.take_item(self.envelope(altered, "nodeC"), altered)
        forged = StreamItem("r1", 1, "fake")
        forged.mac = self.e2e["mallory"].seal_frame("item", "nodeA", forged.to_data())
        self.a.take_item(self.envelope(forged, "nodeC"), forged)
        self.a.take_item(self.envelope(StreamItem("r1", 1, "x"), "nodeC"), StreamItem("r1", 1, "x"))
        self.assertEqual(self.items.got, ["real"])
        self.assertEqual(self.drops, ["forged_item"] * 3)

    def test_replayed_item(self) -> None:
        """An item replayed in place of the next one breaks the stream instead of counting twice."""
        self.c.send_item("nodeA", "r1", 0, "real", None)
        [(_, item)] = self.sent
        self.a.take_item(self.envelope(item, "nodeC"), item)
        self.a.take_item(self.envelope(item, "nodeC"), item)
        self.assertEqual(self.items.got, ["real"])
        self.failureResultOf(self.call, OutcomeUnknown)  # failed: out of order

    def test_cancels(self) -> None:
        """The caller's coded cancel is taken; mallory's, or an uncoded one, is dropped."""
        self.a.send_cancel("nodeC", "r1")
        [(_, cancel)] = self.sent
        self.c.take_cancel(self.envelope(cancel, "nodeA"), cancel)
        self.assertEqual(self.cancels, [("nodeA", "r1", "nodeA", False, "mallory")])
        forged = CallCancel("r1", "nodeA")
        self.c.take_cancel(self.envelope(forged, "nodeA"), forged)
        forged.mac = self.e2e["mallory"].seal_frame("cancel", "nodeC", forged.to_data())
        self.c.take_cancel(self.envelope(forged, "nodeA"), forged)
        self.assertEqual(len(self.cancels), 1)
        self.assertEqual(self.drops, ["forged_cancel"] * 2)


class _Collect:
    """A consumer that keeps what it is given."""

    window = granted = 8
    count = 0

    def __init__(self) -> None:
        self.got: list[Any] = []

    def item(self, value: Any) -> None:
        self.got.append(value)
        self.count += 1


class _Reader(Server):
    """A server whose method reads a stream and waits in its loop body (SPEC section 12)."""

    def __init__(self, node: RelayNode) -> None:
        self.node = node
        self.got: list[Any] = []
        self.pauses: list[Deferred[None]] = []
        self.streams: list[Any] = []

    @exposed
    async def read(self, detach: bool = False) -> int:
        """Read c's C{drip}, keeping the iterator in a local, waiting after each item."""
        it = self.node.stream("c", "work", "drip", 1_000_000, window=4)
        if detach:
            it.detach()
        self.streams.append(it)
        async for item in it:
            self.got.append(item)
            pause: Deferred[None] = Deferred()
            self.pauses.append(pause)
            await pause  # cancelled here: not inside the stream
        return len(self.got)


class StreamOwnerTests(StreamsTestCase):
    """A stream ends with the run that opened it, without the garbage collector."""

    def setUp(self) -> None:
        super().setUp()
        gc.disable()  # what is measured here must not depend on a collection
        self.addCleanup(gc.enable)
        self.reader = _Reader(self.a)
        self.a.expose("reader", self.reader)

    def start_reading(self, **kwargs: Any) -> Deferred[Any]:
        """Call C{reader.read} on a, and let it take c's first item."""
        d = self.a.call("a", "reader", "read", **kwargs)
        self.turn()
        self.work.tick()
        self.turn()
        self.assertEqual(self.reader.got, [0])
        return d

    def test_cancelled_in_the_loop_body(self) -> None:
        """A method cancelled while it waits in its loop body cancels its stream at once."""
        d = self.start_reading()
        failures: list[Any] = []
        d.addErrback(failures.append)  # held: its traceback's frames hold the iterator
        d.cancel()
        self.turn()
        self.assertEqual(len(failures), 1)
        self.assertEqual(self.work.closed, 1)  # the generator's finally ran
        # c's server is free again: the next call does not wait for the stream's timeout.
        d2 = self.a.call("c", "work", "count", 2)
        self.turn()
        self.assertEqual(self.successResultOf(d2), [0, 1])

    def test_method_returns_with_its_stream_open(self) -> None:
        """A method that ends (here: fails) leaving its stream open cancels it."""
        d = self.start_reading()
        self.reader.pauses[-1].errback(KeyError("boom"))
        self.turn()
        self.assertEqual(self.failureResultOf(d).value.code, -32000)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(self.work.closed, 1)

    def test_detached_stream_outlives_its_opener(self) -> None:
        """A detached stream is not cancelled when its opener ends; it still ends by aclose."""
        d = self.start_reading(detach=True)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.turn()
        self.assertEqual(self.work.closed, 0)
        self.reader.streams[-1].cancel()
        self.turn()
        self.assertEqual(self.work.closed, 1)

    def test_stream_handed_on_survives(self) -> None:
        """A stream opened in one coroutine and read in another it awaits works to its end."""
        got: list[Any] = []

        async def consume(it: Any) -> None:
            async for item in it:
                got.append(item)

        async def opener() -> None:
            await ensureDeferred(consume(self.a.stream("c", "work", "count", 5)))

        done = ensureDeferred(opener())
        for _ in range(10):
            self.turn(1)
        self.successResultOf(done)
        self.assertEqual(got, [0, 1, 2, 3, 4])
