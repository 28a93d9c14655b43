"""
Tests for L{relaytx._aio}: how the coroutines of C{async def} methods run,
under Twisted alone and as asyncio tasks (on an event loop with a virtual
clock; the asyncio reactor itself runs in C{tests/integration}).
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._aio import (
    AsyncioReactorRequired,
    asyncio_runner,
    coroutine_runner,
    is_deferred,
    run_on_twisted,
)
from relaytx.server import Mailbox, Server, exposed
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
            method = Slow.exposed_methods["work"]
            calls = [box.call(method, (name, 3 - i), {}) for i, name in enumerate("abc")]
            results = [await outcome(d) for d in calls]
            return results, server.log

        results, log = run(scenario())
        self.assertEqual(results, ["a", "b", "c"])
        self.assertEqual(log, ["start a", "end a", "start b", "end b", "start c", "end c"])
