"""
Tests for L{relaytx._aio}: how the coroutines of C{async def} methods run,
under Twisted alone and as asyncio tasks (on an event loop with a virtual
clock; the asyncio reactor itself runs in C{tests/integration}).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import relaytx._aio
import relaytx.server
from relaytx._aio import (
    AioDeferred,
    AsyncioReactorRequired,
    asyncio_runner,
    awaitable_by_tasks,
    coroutine_runner,
    is_deferred,
    run_on_twisted,
    twisted_runner,
)
from relaytx.server import Mailbox, Server, TurnSlice, exposed, exposed_methods
from relaytx.testing import MemoryMesh, memory_node
from tests.aiosupport import run, turns


class IsDeferredTests(SynchronousTestCase):
    def test_as_isinstance(self) -> None:
        """Deferreds and their subclasses are Deferreds; results of every other kind are not."""

        class Mine(Deferred[int]):
            pass

        deferreds = [Deferred(), succeed(1), DeferredList([]), Mine()]
        others = [None, 0, 1.5, "s", b"b", [1], (1,), {"a": 1}, {1}, object(), Deferred, asyncio]
        for value in deferreds + others:
            self.assertEqual(is_deferred(value), isinstance(value, Deferred), repr(value))
        self.assertTrue(all(map(is_deferred, deferreds)))
        self.assertFalse(any(map(is_deferred, others)))


class TwistedRunnerTests(SynchronousTestCase):
    """Coroutines run the Twisted way (any reactor but asyncio)."""

    def test_awaitsDeferreds(self) -> None:
        """A coroutine awaiting Deferreds gets their results and returns its own."""
        first: Deferred[int] = Deferred()

        async def method() -> int:
            return (await first) + (await succeed(2))

        d = run_on_twisted(method())
        self.assertNoResult(d)
        first.callback(40)
        self.assertEqual(self.successResultOf(d), 42)

    def test_failureRaisedInside(self) -> None:
        """A failed Deferred raises its exception where it is awaited."""
        failing: Deferred[None] = Deferred()

        async def method() -> str:
            try:
                await failing
            except KeyError as e:
                return f"caught {e}"
            return "no"

        d = run_on_twisted(method())
        failing.errback(KeyError("k"))
        self.assertEqual(self.successResultOf(d), "caught 'k'")

    def test_asyncioSleep(self) -> None:
        """Awaiting asyncio fails with AsyncioReactorRequired, saying how to start the node."""

        async def method() -> None:
            await asyncio.sleep(0.1)

        failure = self.failureResultOf(run_on_twisted(method()), AsyncioReactorRequired)
        message = str(failure.value)
        self.assertIn("relay node --reactor asyncio", message)
        self.assertIn("twistd -r asyncio -n relay", message)
        # The traceback shows the await, not only this module.
        self.assertIn("method", [frame[0] for frame in failure.frames])

    def test_asyncioFuture(self) -> None:
        """An asyncio future awaited outside asyncio fails the same way, not obscurely."""
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)

        async def method() -> None:
            await loop.create_future()

        self.failureResultOf(run_on_twisted(method()), AsyncioReactorRequired)

    def test_asyncioYield(self) -> None:
        """asyncio.sleep(0), which yields to asyncio's loop without asking for it, fails alike."""

        async def method() -> None:
            await asyncio.sleep(0)

        self.failureResultOf(run_on_twisted(method()), AsyncioReactorRequired)

    def test_otherRuntimeErrors(self) -> None:
        """A RuntimeError of the method's own stays what it is."""

        async def method() -> None:
            raise RuntimeError("mine")

        failure = self.failureResultOf(run_on_twisted(method()), RuntimeError)
        self.assertNotIsInstance(failure.value, AsyncioReactorRequired)

    def test_cancel(self) -> None:
        """Cancelling the call cancels what the coroutine awaits; its cleanup runs."""
        cancelled: list[bool] = []
        waiting: Deferred[None] = Deferred(lambda _: cancelled.append(True))
        cleaned: list[bool] = []

        async def method() -> None:
            try:
                await waiting
            finally:
                cleaned.append(True)

        d = run_on_twisted(method())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((cancelled, cleaned), ([True], [True]))

    def test_pickedByReactor(self) -> None:
        """coroutine_runner picks the Twisted way for other reactors, asyncio for asyncio's."""
        self.assertIs(coroutine_runner(MemoryReactorClock()), run_on_twisted)

        class AsyncioLike:
            _asyncioEventloop = asyncio.new_event_loop()

        self.addCleanup(AsyncioLike._asyncioEventloop.close)
        self.assertIsNot(coroutine_runner(AsyncioLike()), run_on_twisted)


async def outcome(d: Deferred[Any]) -> Any:
    """:returns: the result of C{d} (raising its failure), awaited on asyncio."""
    return await d.asFuture(asyncio.get_running_loop())


class AsyncioRunnerTests(SynchronousTestCase):
    """Coroutines run as asyncio tasks (the asyncio reactor)."""

    def test_asyncioAndDeferreds(self) -> None:
        """A coroutine may await asyncio code and Deferreds alike, inside a task."""

        async def scenario() -> Any:
            loop = asyncio.get_running_loop()
            fired: Deferred[str] = Deferred()
            loop.call_later(3, fired.callback, "deferred")

            async def method() -> list[Any]:
                started = loop.time()
                await asyncio.sleep(2)
                async with asyncio.timeout(10):  # needs a current task
                    value = await fired
                return [loop.time() - started, value, asyncio.current_task() is not None]

            return await outcome(asyncio_runner(loop)(method()))

        self.assertEqual(run(scenario()), [3.0, "deferred", True])

    def test_failedDeferred(self) -> None:
        """A failed Deferred raises inside; an exception out of the method fails the call."""

        async def scenario() -> Any:
            loop = asyncio.get_running_loop()
            failing: Deferred[None] = Deferred()
            loop.call_later(1, failing.errback, ValueError("inner"))

            async def method() -> None:
                try:
                    await failing
                except ValueError as e:
                    raise KeyError(str(e)) from e

            with self.assertRaises(KeyError):
                await outcome(asyncio_runner(loop)(method()))

        run(scenario())

    def test_cancel(self) -> None:
        """Cancelling the call cancels the task: the method gets CancelledError and cleans up."""

        async def scenario() -> list[str]:
            loop = asyncio.get_running_loop()
            seen: list[str] = []
            waiting: Deferred[None] = Deferred(lambda _: seen.append("deferred cancelled"))

            async def method() -> None:
                try:
                    await asyncio.sleep(1)
                    await waiting
                except asyncio.CancelledError:
                    seen.append("cancelled")
                    raise
                finally:
                    seen.append("cleaned")

            d = asyncio_runner(loop)(method())
            await asyncio.sleep(2)  # now waiting on the Deferred
            d.cancel()
            await turns()
            self.failureResultOf(d, CancelledError)
            return seen

        self.assertEqual(run(scenario()), ["deferred cancelled", "cancelled", "cleaned"])

    def test_mailbox(self) -> None:
        """A mailbox runs async methods awaiting asyncio one at a time, in arrival order."""

        class Slow(Server):
            def __init__(self) -> None:
                self.log: list[str] = []

            @exposed
            async def work(self, name: str, seconds: float) -> str:
                self.log.append(f"start {name}")
                await asyncio.sleep(seconds)
                self.log.append(f"end {name}")
                return name

        async def scenario() -> tuple[list[Any], list[str]]:
            server = Slow()
            box = Mailbox(server, asyncio_runner(asyncio.get_running_loop()))
            method = exposed_methods(Slow)["work"]
            calls = [box.call(method, (name, 3 - i), {}) for i, name in enumerate("abc")]
            results = [await outcome(d) for d in calls]
            return results, server.log

        results, log = run(scenario())
        self.assertEqual(results, ["a", "b", "c"])
        self.assertEqual(log, ["start a", "end a", "start b", "end b", "start c", "end c"])


class AioDeferredTests(SynchronousTestCase):
    """Deferreds that asyncio tasks of the code's own can await (SPEC section 14)."""

    def test_gather_and_tasks(self) -> None:
        """asyncio.gather and create_task await AioDeferreds that fire later."""

        async def scenario() -> list[Any]:
            loop = asyncio.get_running_loop()
            first: AioDeferred[int] = AioDeferred()
            second: AioDeferred[int] = AioDeferred()
            third: AioDeferred[int] = AioDeferred()
            loop.call_later(1, first.callback, 1)
            loop.call_later(2, second.callback, 2)
            loop.call_later(3, third.callback, 3)

            async def helper() -> int:
                return await third

            task = asyncio.create_task(helper())
            return [*(await asyncio.gather(first, second)), await task]

        self.assertEqual(run(scenario()), [1, 2, 3])

    def test_failure(self) -> None:
        """A failed AioDeferred raises its exception in the task."""

        async def scenario() -> None:
            failing: AioDeferred[None] = AioDeferred()
            asyncio.get_running_loop().call_later(1, failing.errback, KeyError("k"))
            with self.assertRaises(KeyError):
                await asyncio.gather(failing)

        run(scenario())

    def test_wait_for_cancels(self) -> None:
        """A task that gives up (wait_for's deadline) cancels the Deferred it awaits."""
        cancelled: list[bool] = []

        async def scenario() -> None:
            waiting: AioDeferred[None] = AioDeferred(lambda _: cancelled.append(True))
            with self.assertRaises(TimeoutError):
                await asyncio.wait_for(waiting, 1)

        run(scenario())
        self.assertEqual(cancelled, [True])

    def test_cancelled_before_the_future(self) -> None:
        """A task cancelled in the turn it first awaits still cancels the Deferred."""
        cancelled: list[bool] = []

        async def scenario() -> None:
            waiting: AioDeferred[None] = AioDeferred(lambda _: cancelled.append(True))
            task = asyncio.ensure_future(waiting)
            await asyncio.sleep(0)  # the task refused the Deferred: its next step is due
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task

        run(scenario())
        self.assertEqual(cancelled, [True])

    def test_plain_awaits_unchanged(self) -> None:
        """Twisted's driver and a method's own await see an ordinary Deferred."""
        waiting: AioDeferred[int] = AioDeferred()

        async def method() -> int:
            return await waiting

        d = run_on_twisted(method())
        waiting.callback(5)
        self.assertEqual(self.successResultOf(d), 5)
        self.assertIs(awaitable_by_tasks(succeed(1)).__class__, AioDeferred)


class _LoopClock:
    """The asyncio reactor's clock, as a node's slice uses it: timers of C{loop}."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def seconds(self) -> float:
        return self._loop.time()

    def callLater(self, delay: float, f: Callable[..., object], *args: Any) -> object:
        return self._loop.call_later(delay, f, *args)


class SharedSliceTests(SynchronousTestCase):
    """
    A coroutine's steps share the node's slice of the reactor's time with
    its methods: resumed together, coroutines that compute after an await
    run one slice at a time, the reactor turning between (four servers'
    methods computing 0.7 s after an await held the reactor 2.8 s, and the
    node's neighbours took it for dead).
    """

    def setUp(self) -> None:
        self.now = 0.0
        for module in (relaytx._aio, relaytx.server):
            self.patch(module, "perf_counter", lambda: self.now)
        #: (which coroutine, the slice spent when it began computing)
        self.ran: list[tuple[int, float]] = []

    async def compute(self, share: TurnSlice, wait: Any, n: int, seconds: float) -> int:
        await wait
        self.ran.append((n, share.spent))
        self.now += seconds
        return n

    def test_twisted_steps_wait_for_the_turn(self) -> None:
        """On Twisted, a step after an await waits for the turn once the slice is spent."""
        clock = Clock()
        share = TurnSlice(clock)
        run_coroutine = twisted_runner(share)
        gates: list[Deferred[None]] = [Deferred() for _ in range(3)]
        results = [run_coroutine(self.compute(share, g, n, 0.7)) for n, g in enumerate(gates)]
        for gate in gates:
            gate.callback(None)
        self.assertEqual(self.ran, [(0, 0.0)])
        clock.advance(0)  # (the turns: a Clock runs the timers set by timers too)
        self.assertEqual(self.ran, [(0, 0.0), (1, 0.0), (2, 0.0)])  # each in a new slice
        self.assertEqual([self.successResultOf(d) for d in results], [0, 1, 2])
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_twisted_cancelled_while_waiting(self) -> None:
        """A coroutine cancelled as it waits for the turn gets CancelledError where it awaited."""
        clock = Clock()
        share = TurnSlice(clock)
        run_coroutine = twisted_runner(share)
        seen: list[str] = []

        async def waiting(gate: Deferred[None]) -> None:
            try:
                await gate
            except CancelledError:
                seen.append("cancelled")
                raise
            seen.append("ran")

        share.spend(0.7)  # (another method spent the slice)
        gate: Deferred[None] = Deferred()
        d = run_coroutine(waiting(gate))
        gate.callback(None)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(0)
        self.assertEqual(seen, ["cancelled"])

    def test_short_steps_uncounted(self) -> None:
        """Steps under a millisecond never wait."""
        clock = Clock()
        share = TurnSlice(clock)
        run_coroutine = twisted_runner(share)
        for n in range(200):
            gate: Deferred[None] = Deferred()
            d = run_coroutine(self.compute(share, gate, n, 0.0009))
            gate.callback(None)
            self.assertEqual(self.successResultOf(d), n)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_asyncio_steps_wait_for_the_turn(self) -> None:
        """On the asyncio reactor every step is counted, and waits once the slice is spent."""

        async def scenario() -> list[int]:
            loop = asyncio.get_running_loop()
            share = TurnSlice(_LoopClock(loop))  # type: ignore[arg-type]  # (the loop's own timers)
            run_coroutine = asyncio_runner(loop, share)
            results = [
                run_coroutine(self.compute(share, asyncio.sleep(1), n, 0.7)) for n in range(3)
            ]
            return [await outcome(d) for d in results]

        self.assertEqual(run(scenario()), [0, 1, 2])
        self.assertEqual(self.ran, [(0, 0.0), (1, 0.0), (2, 0.0)])


class _LoopReactor(MemoryReactorClock):
    """A fake reactor whose nodes run coroutines as tasks of C{loop} (the asyncio reactor's way)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._asyncioEventloop = loop


class _Target(Server):
    def __init__(self) -> None:
        self.holds: list[Deferred[str]] = []
        self.cancelled = 0
        self.closed = 0

    @exposed
    def hold(self) -> Deferred[str]:
        d: Deferred[str] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        self.holds.append(d)
        return d

    @exposed
    async def ticks(self) -> Any:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            self.closed += 1


class _Fanout(Server):
    def __init__(self, node: Any) -> None:
        self.node = node
        self.got: list[Any] = []

    @exposed
    async def gather(self) -> list[Any]:
        return list(await asyncio.gather(self.node.call("b", "node", "echo", 1), self.held()))

    async def held(self) -> Any:
        return await self.node.call("b", "target", "hold")

    @exposed
    async def impatient(self) -> str:
        try:
            await asyncio.wait_for(self.node.call("b", "target", "hold"), 1)
        except TimeoutError:
            return "gave up"
        return "no"

    @exposed
    async def read(self) -> None:
        it = self.node.stream("b", "target", "ticks", window=4)
        async for item in it:
            self.got.append(item)
            await asyncio.sleep(3600)  # cancelled here, in the loop body

    @exposed
    async def handed(self) -> list[Any]:
        it = self.node.stream("b", "target", "ticks", window=4)

        async def consume() -> list[Any]:
            got = []
            async for item in it:
                got.append(item)
                if len(got) == 10:
                    break
            return got

        return await asyncio.create_task(consume())


class AsyncioNodeTests(SynchronousTestCase):
    """node.call and node.stream inside methods run as asyncio tasks (SPEC sections 12, 14)."""

    async def mesh(self) -> tuple[Any, _Target, _Fanout, Any]:
        reactor = _LoopReactor(asyncio.get_running_loop())
        a, b = memory_node("a", reactor), memory_node("b", reactor)
        network = MemoryMesh()
        network.link(a, b)
        target, fanout = _Target(), _Fanout(a)
        b.expose("target", target)
        a.expose("fanout", fanout)
        network.settle()

        async def turn(times: int = 10) -> None:
            for _ in range(times):
                network.pump()
                reactor.advance(0)
                await turns(2)

        return a, target, fanout, turn

    def test_gather_of_calls(self) -> None:
        """asyncio.gather of node.calls inside a method works, remote answers and all."""

        async def scenario() -> Any:
            a, target, _, turn = await self.mesh()
            d = a.call("a", "fanout", "gather")
            await turn()
            target.holds[0].callback("held")
            await turn()
            return self.successResultOf(d)

        self.assertEqual(run(scenario()), [[1], "held"])

    def test_wait_for_cancels_the_call(self) -> None:
        """asyncio.wait_for on node.call gives up at its deadline and cancels the call."""

        async def scenario() -> Any:
            a, target, _, turn = await self.mesh()
            d = a.call("a", "fanout", "impatient")
            await turn()
            await asyncio.sleep(1)
            await turn()
            return self.successResultOf(d), target.cancelled

        self.assertEqual(run(scenario()), ("gave up", 1))

    def test_cancelled_reader_cancels_its_stream(self) -> None:
        """A method's task cancelled in its loop body cancels its stream (no gc involved)."""

        async def scenario() -> Any:
            a, target, fanout, turn = await self.mesh()
            d = a.call("a", "fanout", "read")
            failures: list[Any] = []
            d.addErrback(failures.append)  # held, with its traceback
            await turn()
            self.assertEqual(fanout.got, [0])
            d.cancel()
            await turn()
            # b's server is free again.
            d2 = a.call("b", "target", "hold")
            await turn()
            return len(failures), target.closed, len(target.holds), d2

        gc.disable()
        self.addCleanup(gc.enable)
        failures, closed, holds, _ = run(scenario())
        self.assertEqual((failures, closed, holds), (1, 1, 1))

    def test_stream_handed_to_a_task(self) -> None:
        """A stream a method hands to a task it awaits is read there; leaving it ends it."""

        async def scenario() -> Any:
            a, target, _, turn = await self.mesh()
            d = a.call("a", "fanout", "handed")
            await turn(30)
            return self.successResultOf(d), target.closed

        self.assertEqual(run(scenario()), (list(range(10)), 1))
