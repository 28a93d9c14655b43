"""
Tests for L{relaytx.server}: the C{@exposed} table of L{Server} classes, the
argument check, and the L{Mailbox} that runs one call at a time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from relaytx.errors import InvalidParams
from relaytx.server import (
    ExposedMethod,
    Mailbox,
    OwnCancellation,
    Server,
    TurnSlice,
    exposed,
    exposed_methods,
    method_names,
)
from tests import support


class Counter(support.Counter):
    """The test counter (two exposed methods) with some that are not exposed."""

    def helper(self) -> None:
        """Not decorated: never callable remotely."""

    @exposed
    def _secret(self) -> str:
        """Decorated, but its name starts with _: never callable remotely."""
        return "secret"

    limit = 10


class Recorder(Server):
    """
    A server that logs what runs, with methods that finish at once, later
    (a Deferred the test fires), as a coroutine, or by raising.
    """

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.mailbox: Mailbox | None = None

    @exposed
    def record(self, item: Any) -> Any:
        self.log.append(item)
        return item

    @exposed
    def slow(self, item: Any) -> Deferred[Any]:
        self.log.append(("start", item))
        d: Deferred[Any] = Deferred()
        d.addCallback(lambda result: self.log.append(("end", item)) or result)
        self.pending.append(d)
        return d

    @exposed
    async def coroutine(self, item: Any) -> Any:
        self.log.append(("start", item))
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        result = await d
        self.log.append(("end", item))
        return result

    @exposed
    async def quick_coroutine(self, item: Any) -> Any:
        self.log.append(item)
        return item

    @exposed
    def boom(self, item: Any) -> None:
        self.log.append(item)
        raise ValueError(f"boom {item}")

    @exposed
    async def async_boom(self, item: Any) -> None:
        self.log.append(item)
        raise KeyError(item)

    @exposed
    def already(self, item: Any) -> Deferred[Any]:
        self.log.append(item)
        return succeed(item)

    @exposed
    def already_failed(self, item: Any) -> Deferred[Any]:
        self.log.append(item)
        return fail(ZeroDivisionError(item))

    @exposed
    def raise_cancelled(self) -> None:
        self.log.append("raise_cancelled")
        raise CancelledError()

    @exposed
    def already_cancelled(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.cancel()
        return d

    @exposed
    def spawn(self, item: Any) -> str:
        assert self.mailbox is not None
        self.mailbox.deliver(exposed_methods(Recorder)["record"], (("child", item),), {})
        self.log.append(("parent", item))
        return "spawned"


def call(mailbox: Mailbox, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Deliver a call of the exposed method C{name} to C{mailbox}.
    """
    return mailbox.deliver(exposed_methods(mailbox.server)[name], args, kwargs)


def recorder() -> tuple[Recorder, Mailbox]:
    """
    :returns: a new L{Recorder} and its mailbox.
    """
    server = Recorder()
    server.mailbox = Mailbox(server)
    return server, server.mailbox


class ExposedTableTests(SynchronousTestCase):
    """
    Only C{@exposed} methods without a leading C{_} are in a class's table.
    """

    def test_exposed_returns_function(self) -> None:
        """The decorator marks the function and returns it unchanged."""

        def f(self: Any) -> None:
            pass

        self.assertIs(exposed(f), f)
        self.assertTrue(f.__relaytx_exposed__)  # type: ignore[attr-defined]

    def test_only_exposed(self) -> None:
        """The table holds the decorated public methods only, as ExposedMethods."""
        self.assertEqual(set(exposed_methods(Counter)), {"increment", "get"})
        method = exposed_methods(Counter)["increment"]
        self.assertIsInstance(method, ExposedMethod)
        self.assertEqual(method.name, "increment")
        self.assertIs(method.function, Counter.increment)

    def test_private_never_exposed(self) -> None:
        """A decorated method whose name starts with _ is not exposed."""
        self.assertNotIn("_secret", exposed_methods(Counter))
        self.assertNotIn("helper", exposed_methods(Counter))
        self.assertNotIn("limit", exposed_methods(Counter))
        self.assertNotIn("__init__", exposed_methods(Counter))

    def test_method_names(self) -> None:
        """method_names lists the exposed names, sorted."""
        self.assertEqual(method_names(Counter()), ["get", "increment"])

    def test_base_empty(self) -> None:
        """The Server base class exposes nothing, not even its own helpers."""
        self.assertEqual(exposed_methods(Server), {})
        self.assertEqual(method_names(Server()), [])

    def test_subclass_merges(self) -> None:
        """A subclass keeps its parent's exposed methods and adds its own."""

        class Resettable(Counter):
            @exposed
            def reset(self) -> None:
                self.count = 0

        self.assertEqual(set(exposed_methods(Resettable)), {"increment", "get", "reset"})
        self.assertEqual(set(exposed_methods(Counter)), {"increment", "get"})

    def test_decorated_override(self) -> None:
        """A decorated override stays exposed and its new function is the one called."""

        class Doubling(Counter):
            @exposed
            def increment(self, by: int = 1) -> int:
                return super().increment(2 * by)

        self.assertIs(exposed_methods(Doubling)["increment"].function, Doubling.increment)
        server = Doubling()
        self.assertEqual(self.successResultOf(call(Mailbox(server), "increment", 3)), 6)

    def test_undecorated_override_hides(self) -> None:
        """An undecorated override, or a plain attribute, hides the parent's exposed method."""

        class Hiding(Counter):
            def get(self) -> int:
                return -1

            increment = None  # type: ignore[assignment]

        self.assertEqual(exposed_methods(Hiding), {})
        self.assertEqual(set(exposed_methods(Counter)), {"increment", "get"})

    def test_hidden_stays_hidden(self) -> None:
        """A grandchild does not bring back a method its parent hid, unless it decorates it."""

        class Hiding(Counter):
            def get(self) -> int:
                return -1

        class Grandchild(Hiding):
            pass

        class Again(Hiding):
            @exposed
            def get(self) -> int:
                return -2

        self.assertEqual(set(exposed_methods(Grandchild)), {"increment"})
        self.assertEqual(set(exposed_methods(Again)), {"increment", "get"})

    def test_several_bases(self) -> None:
        """A class with several Server bases exposes the methods of all of them."""

        class Greeter(Server):
            @exposed
            def greet(self, name: str) -> str:
                return f"hello {name}"

        class Both(Counter, Greeter):
            pass

        self.assertEqual(method_names(Both()), ["get", "greet", "increment"])
        self.assertEqual(self.successResultOf(call(Mailbox(Both()), "greet", "ann")), "hello ann")

    def test_several_bases_follow_mro(self) -> None:
        """With several bases, each name maps to what attribute lookup finds, exposed or not."""

        class Quiet(Server):
            def get(self) -> int:
                return -1

            @exposed
            def increment(self, by: int = 1) -> int:
                return -by

        class QuietFirst(Quiet, Counter):
            pass

        class CounterFirst(Counter, Quiet):
            pass

        self.assertEqual(exposed_methods(QuietFirst)["increment"].function, Quiet.increment)
        self.assertNotIn("get", exposed_methods(QuietFirst))
        self.assertEqual(exposed_methods(CounterFirst)["increment"].function, Counter.increment)
        self.assertIs(exposed_methods(CounterFirst)["get"].function, Counter.get)
        for cls in (QuietFirst, CounterFirst):
            for name, method in exposed_methods(cls).items():
                self.assertIs(method.function, getattr(cls, name))

    def test_any_public_name(self) -> None:
        """
        Every name that does not start with C{_} is the server's to expose,
        those of relaytx's own helpers included: the node lists and calls
        them as any other.
        """
        from relaytx.testing import memory_node

        class Collides(Server):
            @exposed
            def exposed_methods(self) -> str:
                return "mine"

            @exposed
            def method_names(self) -> str:
                return "mine too"

            @exposed(idempotent=True)
            def idempotent_names(self) -> str:
                return "and this"

            @exposed
            def owns_delivery_errors(self) -> str:
                return "this as well"

        names = ["exposed_methods", "idempotent_names", "method_names", "owns_delivery_errors"]
        self.assertEqual(method_names(Collides), names)
        node = memory_node("n1")
        node.expose("c", Collides())
        self.assertEqual(node.servers.local_servers()["c"], names)
        self.assertEqual(node.servers.idempotent_methods()["c"], ["idempotent_names"])
        for name, answer in [("method_names", "mine too"), ("exposed_methods", "mine")]:
            self.assertEqual(self.successResultOf(node.call("n1", "c", name)), answer)

    def test_plain_mixin(self) -> None:
        """Decorated methods of a mixin that is not a Server are exposed too."""

        class PingMixin:
            @exposed
            def ping(self) -> str:
                return "pong"

        class Pingable(PingMixin, Counter):
            pass

        self.assertEqual(method_names(Pingable()), ["get", "increment", "ping"])


class CheckArgumentsTests(SynchronousTestCase):
    """
    L{ExposedMethod.check_arguments} refuses arguments that do not fit.
    """

    def method(self, function: Any, name: str = "m") -> ExposedMethod:
        """
        :returns: C{function} as an exposed method called C{name}.
        """
        return ExposedMethod(name, function)

    def assertInvalid(self, method: ExposedMethod, args: Any, kwargs: dict[str, Any]) -> None:
        """
        Assert that C{args}/C{kwargs} are refused with InvalidParams naming
        the method.
        """
        error = self.assertRaises(InvalidParams, method.check_arguments, args, kwargs)
        self.assertEqual(error.code, -32602)
        self.assertIn(method.name, str(error))

    def test_fitting(self) -> None:
        """Arguments that fit the signature, self aside, pass."""
        increment = exposed_methods(Counter)["increment"]
        increment.check_arguments((), {})
        increment.check_arguments((2,), {})
        increment.check_arguments([2], {})
        increment.check_arguments((), {"by": 2})

    def test_too_many(self) -> None:
        """Too many positional arguments are refused."""
        self.assertInvalid(exposed_methods(Counter)["increment"], (1, 2), {})
        self.assertInvalid(exposed_methods(Counter)["get"], (1,), {})

    def test_too_few(self) -> None:
        """A missing required argument is refused."""

        def add(self: Any, a: int, b: int) -> int:
            return a + b

        method = self.method(add, "add")
        method.check_arguments((1, 2), {})
        method.check_arguments((1,), {"b": 2})
        self.assertInvalid(method, (1,), {})
        self.assertInvalid(method, (), {"a": 1})

    def test_unknown_keyword(self) -> None:
        """A keyword the method does not take is refused."""
        self.assertInvalid(exposed_methods(Counter)["increment"], (), {"step": 1})

    def test_duplicate_argument(self) -> None:
        """An argument given by position and by name is refused."""
        self.assertInvalid(exposed_methods(Counter)["increment"], (1,), {"by": 2})

    def test_self_not_a_keyword(self) -> None:
        """The caller cannot pass self by name, even to a method that takes **kwargs."""
        self.assertInvalid(exposed_methods(Counter)["get"], (), {"self": 1})

        def kw(this: Any, a: int, **kwargs: Any) -> Any:
            return [a, kwargs]

        method = self.method(kw)
        method.check_arguments((1,), {"self": 2})  # (this method's instance is "this")
        self.assertInvalid(method, (), {"a": 1, "this": 2})

    def test_keyword_only(self) -> None:
        """A keyword-only argument is accepted by name only."""

        def f(self: Any, *, key: str) -> str:
            return key

        method = self.method(f)
        method.check_arguments((), {"key": "k"})
        self.assertInvalid(method, ("k",), {})
        self.assertInvalid(method, (), {})

    def test_variadic(self) -> None:
        """A method taking *args and **kwargs accepts anything."""

        def f(self: Any, *args: Any, **kwargs: Any) -> None:
            pass

        method = self.method(f)
        method.check_arguments((), {})
        method.check_arguments((1, "a", [2]), {"x": 1, "not-an-identifier": 2})

    def test_async(self) -> None:
        """The signature of an async def method is checked the same way."""
        method = exposed_methods(Recorder)["coroutine"]
        method.check_arguments((1,), {})
        self.assertInvalid(method, (), {})


class MailboxTests(SynchronousTestCase):
    """
    A L{Mailbox} runs calls one at a time, in arrival order.
    """

    def test_plain_result(self) -> None:
        """A method returning a plain value runs at once and its Deferred has the value."""
        counter = Counter()
        mailbox = Mailbox(counter)
        self.assertIs(mailbox.server, counter)
        self.assertEqual(self.successResultOf(call(mailbox, "increment", 5)), 5)
        self.assertEqual(self.successResultOf(call(mailbox, "increment", by=2)), 7)
        self.assertEqual(self.successResultOf(call(mailbox, "get")), 7)
        self.assertEqual(counter.count, 7)
        self.assertEqual(len(mailbox), 0)

    def test_deferred_blocks_next(self) -> None:
        """A call whose Deferred has not fired keeps the next call waiting until it does."""
        server, mailbox = recorder()
        first = call(mailbox, "slow", 1)
        second = call(mailbox, "record", 2)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(server.log, [("start", 1)])
        self.assertEqual(len(mailbox), 1)
        server.pending[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(self.successResultOf(second), 2)
        self.assertEqual(server.log, [("start", 1), ("end", 1), 2])
        self.assertEqual(len(mailbox), 0)

    def test_coroutine_blocks_next(self) -> None:
        """An async def method keeps the next call waiting until the coroutine returns."""
        server, mailbox = recorder()
        first = call(mailbox, "coroutine", 1)
        second = call(mailbox, "coroutine", 2)
        third = call(mailbox, "record", 3)
        self.assertEqual(server.log, [("start", 1)])
        server.pending[0].callback("a")
        self.assertEqual(self.successResultOf(first), "a")
        self.assertNoResult(second)
        self.assertEqual(server.log, [("start", 1), ("end", 1), ("start", 2)])
        server.pending[1].callback("b")
        self.assertEqual(self.successResultOf(second), "b")
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(server.log, [("start", 1), ("end", 1), ("start", 2), ("end", 2), 3])

    def test_fifo(self) -> None:
        """Calls of every kind queued behind a pending one run in arrival order."""
        server, mailbox = recorder()
        ds = [
            call(mailbox, "slow", "a"),
            call(mailbox, "record", "b"),
            call(mailbox, "quick_coroutine", "c"),
            call(mailbox, "already", "d"),
            call(mailbox, "slow", "e"),
            call(mailbox, "record", "f"),
        ]
        server.pending[0].callback("A")
        self.assertEqual(server.log, [("start", "a"), ("end", "a"), "b", "c", "d", ("start", "e")])
        self.assertNoResult(ds[5])
        server.pending[1].callback("E")
        self.assertEqual([self.successResultOf(d) for d in ds], ["A", "b", "c", "d", "E", "f"])

    def test_concurrent_increments(self) -> None:
        """200 concurrent read-wait-write increments give exactly 200, each seeing the last."""
        clock = Clock()

        class SlowCounter(Server):
            def __init__(self) -> None:
                self.count = 0

            @exposed
            async def increment(self) -> int:
                value = self.count
                await deferLater(clock, 1, lambda: None)
                self.count = value + 1
                return self.count

        server = SlowCounter()
        mailbox = Mailbox(server)
        ds = [call(mailbox, "increment") for _ in range(200)]
        self.assertEqual(len(mailbox), 199)
        for _ in range(199):
            clock.advance(1)
        self.assertNoResult(ds[-1])
        self.assertEqual(server.count, 199)
        clock.advance(1)
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(1, 201)))
        self.assertEqual(server.count, 200)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_increments_race_without_mailbox(self) -> None:
        """The same increments run side by side without a mailbox lose updates (the control)."""
        clock = Clock()
        counter = {"count": 0}

        async def increment() -> None:
            value = counter["count"]
            await deferLater(clock, 1, lambda: None)
            counter["count"] = value + 1

        ds = [Deferred.fromCoroutine(increment()) for _ in range(200)]
        clock.advance(1)
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(counter["count"], 1)

    def test_deferred_counter(self) -> None:
        """Deferred-returning increments are serialised just like coroutines."""
        clock = Clock()

        class DeferredCounter(Server):
            def __init__(self) -> None:
                self.count = 0

            def _store(self, value: int) -> int:
                self.count = value
                return value

            @exposed
            def increment(self) -> Deferred[int]:
                return deferLater(clock, 1, self._store, self.count + 1)

        server = DeferredCounter()
        mailbox = Mailbox(server)
        ds = [call(mailbox, "increment") for _ in range(50)]
        for _ in range(49):
            clock.advance(1)
        self.assertNoResult(ds[-1])
        clock.advance(1)
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(1, 51)))
        self.assertEqual(server.count, 50)

    def test_exception_fails_one_call(self) -> None:
        """A method that raises fails its own call only; the calls around it succeed."""
        server, mailbox = recorder()
        before = call(mailbox, "record", 1)
        failing = call(mailbox, "boom", 2)
        after = call(mailbox, "record", 3)
        self.assertEqual(self.successResultOf(before), 1)
        self.assertEqual(str(self.failureResultOf(failing, ValueError).value), "boom 2")
        self.assertEqual(self.successResultOf(after), 3)
        self.assertEqual(server.log, [1, 2, 3])

    def test_exception_while_queued(self) -> None:
        """Raising, async raising and failing Deferreds queued behind a pending call fail alone."""
        server, mailbox = recorder()
        first = call(mailbox, "slow", 0)
        ds = [
            call(mailbox, "boom", 1),
            call(mailbox, "async_boom", 2),
            call(mailbox, "slow", 3),
            call(mailbox, "record", 4),
        ]
        server.pending[0].callback("zero")
        self.assertEqual(self.successResultOf(first), "zero")
        self.failureResultOf(ds[0], ValueError)
        self.failureResultOf(ds[1], KeyError)
        server.pending[1].errback(RuntimeError("late"))
        self.failureResultOf(ds[2], RuntimeError)
        self.assertEqual(self.successResultOf(ds[3]), 4)
        self.assertEqual(server.log, [("start", 0), ("end", 0), 1, 2, ("start", 3), 4])

    def test_failure_is_passed_unchanged(self) -> None:
        """The caller gets the very exception the method's Deferred failed with."""
        server, mailbox = recorder()
        d = call(mailbox, "slow", 1)
        error = LookupError("x")
        server.pending[0].errback(error)
        self.assertIs(self.failureResultOf(d, LookupError).value, error)

    def test_cancelled_queued_call_skipped(self) -> None:
        """A queued call cancelled by its caller never runs, and the next one does."""
        server, mailbox = recorder()
        first = call(mailbox, "slow", 1)
        cancelled = call(mailbox, "record", "cancelled")
        kept = call(mailbox, "record", "kept")
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(len(mailbox), 2)
        server.pending[0].callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.successResultOf(kept), "kept")
        self.assertNotIn("cancelled", server.log)
        self.assertEqual(server.log, [("start", 1), ("end", 1), "kept"])
        self.assertEqual(len(mailbox), 0)

    def test_cancelled_running_call(self) -> None:
        """Cancelling the running call cancels its method's Deferred; the next call then runs."""
        server, mailbox = recorder()
        running = call(mailbox, "slow", 1)
        waiting = call(mailbox, "record", 2)
        self.assertNoResult(waiting)
        running.cancel()
        self.failureResultOf(running, CancelledError)
        method_result = server.pending[0]
        # It was cancelled, and the mailbox consumed its CancelledError.
        self.assertIsNone(self.successResultOf(method_result))
        self.assertEqual(self.successResultOf(waiting), 2)
        self.assertEqual(server.log, [("start", 1), 2])

    def test_cancels_together_before_the_next(self) -> None:
        """
        With a clock, the call after a cancelled running one starts in the
        next reactor turn: a cancel of that call coming in the same turn
        (a client gone cancels all its calls, in any order) is taken first.
        """
        server = Recorder()
        clock = Clock()
        mailbox = server.mailbox = Mailbox(server, clock=clock)
        running = call(mailbox, "slow", 1)
        queued = call(mailbox, "record", 2)
        other = call(mailbox, "record", 3)
        running.cancel()
        queued.cancel()
        self.assertEqual(server.log, [("start", 1)])
        clock.advance(0)
        self.failureResultOf(running, CancelledError)
        self.failureResultOf(queued, CancelledError)
        self.assertEqual(self.successResultOf(other), 3)
        self.assertEqual(server.log, [("start", 1), 3])

    def test_own_cancellation(self) -> None:
        """
        A method whose own Deferred is cancelled by the method's side (not
        by the call's caller) fails the call with L{OwnCancellation},
        holding that failure: a method's exception, not a cancelled call.
        Raised, already failed or failing later, running or queued alike.
        """
        server, mailbox = recorder()
        running = call(mailbox, "slow", 1)
        queued = call(mailbox, "slow", 2)
        server.pending[0].cancel()
        own = self.failureResultOf(running, OwnCancellation).value
        self.assertIsInstance(own.failure.value, CancelledError)
        server.pending[1].cancel()
        self.failureResultOf(queued, OwnCancellation)
        first = call(mailbox, "slow", 3)
        raising = call(mailbox, "raise_cancelled")
        server.pending[2].callback(None)
        self.failureResultOf(raising, OwnCancellation)
        self.failureResultOf(call(mailbox, "already_cancelled"), OwnCancellation)
        self.assertIsNone(self.successResultOf(first))

    def test_synchronously_fired_deferreds(self) -> None:
        """Already-fired Deferreds and coroutines that never wait answer at once, in order."""
        server, mailbox = recorder()
        self.assertEqual(self.successResultOf(call(mailbox, "already", 1)), 1)
        self.failureResultOf(call(mailbox, "already_failed", 2), ZeroDivisionError)
        self.assertEqual(self.successResultOf(call(mailbox, "quick_coroutine", 3)), 3)
        self.failureResultOf(call(mailbox, "async_boom", 4), KeyError)
        self.assertEqual(self.successResultOf(call(mailbox, "record", 5)), 5)
        self.assertEqual(server.log, [1, 2, 3, 4, 5])

    def test_many_synchronous_deferreds_queued(self) -> None:
        """Thousands of already-fired results queued behind a pending call run without recursion."""
        server, mailbox = recorder()
        first = call(mailbox, "slow", "first")
        ds = [call(mailbox, "already", i) for i in range(5000)]
        last = call(mailbox, "quick_coroutine", "last")
        server.pending[0].callback("done")
        self.assertEqual(self.successResultOf(first), "done")
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(5000)))
        self.assertEqual(self.successResultOf(last), "last")
        self.assertEqual(server.log[-1], "last")

    def test_reentrant_from_callback(self) -> None:
        """A call delivered from a caller's callback queues behind calls that arrived before it."""
        server, mailbox = recorder()
        nested: list[Deferred[Any]] = []
        first = call(mailbox, "slow", 1)
        first.addCallback(lambda r: nested.append(call(mailbox, "record", "from callback")) or r)
        queued = call(mailbox, "record", "queued")
        queued.addCallback(lambda r: nested.append(call(mailbox, "slow", "from queued")) or r)
        server.pending[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(self.successResultOf(queued), "queued")
        self.assertEqual(self.successResultOf(nested[0]), "from callback")
        self.assertNoResult(nested[1])
        self.assertEqual(
            server.log,
            [("start", 1), ("end", 1), "queued", "from callback", ("start", "from queued")],
        )
        server.pending[1].callback("two")
        self.assertEqual(self.successResultOf(nested[1]), "two")

    def test_reentrant_from_idle_callback(self) -> None:
        """A long chain of calls each delivered from the previous one's callback all run."""
        server, mailbox = recorder()
        done: list[Deferred[Any]] = []

        def next_call(result: Any) -> Any:
            if result < 2000:
                d = call(mailbox, "record", result + 1)
                d.addCallback(next_call)
                done.append(d)
            return result

        call(mailbox, "slow", 0).addCallback(next_call)
        server.pending[0].callback(0)
        self.assertEqual(server.log[1:], [("end", 0), *range(1, 2001)])
        self.assertEqual(len(mailbox), 0)
        for d in done:
            self.successResultOf(d)

    def test_method_calls_own_mailbox(self) -> None:
        """A method that queues a call to its own server without waiting finishes first."""
        server, mailbox = recorder()
        self.assertEqual(self.successResultOf(call(mailbox, "spawn", 1)), "spawned")
        self.assertEqual(server.log, [("parent", 1), ("child", 1)])

    def test_idle_after_pending(self) -> None:
        """After the queue drains, a new call on the idle mailbox runs at once again."""
        server, mailbox = recorder()
        call(mailbox, "slow", 1)
        server.pending[0].callback(None)
        self.assertEqual(self.successResultOf(call(mailbox, "record", 2)), 2)
        d = call(mailbox, "slow", 3)
        self.assertEqual(server.log[-1], ("start", 3))
        server.pending[1].callback(3)
        self.assertEqual(self.successResultOf(d), 3)


class _Spinner(Server):
    """
    A method that takes the time it is told, on a fake perf_counter (its
    own, or C{timer}'s, shared with it).
    """

    def __init__(self, timer: _Spinner | None = None) -> None:
        self.now = 0.0
        self.ran: list[int] = []
        self._timer = self if timer is None else timer

    def perf_counter(self) -> float:
        return self._timer.now

    @exposed
    def spin(self, n: int, seconds: float) -> int:
        self._timer.now += seconds
        self.ran.append(n)
        return n


class SliceTests(SynchronousTestCase):
    """
    Calls that each block the reactor, arriving together, do not run back
    to back for longer than L{relaytx.server.SLICE}: the reactor turns
    between them (to answer pings and send the answers already made).
    """

    def setUp(self) -> None:
        import relaytx.server

        self.server = _Spinner()
        self.patch(relaytx.server, "perf_counter", self.server.perf_counter)
        self.clock = Clock()
        self.mailbox = Mailbox(self.server, clock=self.clock)
        self.spin = exposed_methods(self.server)["spin"]

    def test_reactor_turns_between_long_calls(self) -> None:
        """Past the slice, the next call waits for the next reactor turn."""
        results = [self.mailbox.call(self.spin, (n, 0.03), {}) for n in range(4)]
        self.assertEqual(self.server.ran, [0, 1])  # 0.06 s: the slice is spent
        self.assertEqual(results[:2], [0, 1])
        self.assertNoResult(results[2])
        self.clock.advance(0)
        self.assertEqual(self.server.ran, [0, 1, 2, 3])  # (a new slice)
        self.assertEqual(self.successResultOf(results[2]), 2)
        self.assertEqual(self.successResultOf(results[3]), 3)
        self.assertEqual(self.mailbox.call(self.spin, (4, 0.0), {}), 4)  # idle again

    def test_queued_calls_too(self) -> None:
        """Calls queued behind a Deferred's run in slices as well."""
        gate: Deferred[None] = Deferred()
        first = self.mailbox.deliver(ExposedMethod("wait", lambda server: gate), (), {})
        queued = [self.mailbox.deliver(self.spin, (n, 0.03), {}) for n in range(3)]
        gate.callback(None)
        self.successResultOf(first)
        self.assertEqual(self.server.ran, [0, 1])
        self.clock.advance(0)
        self.assertEqual([self.successResultOf(d) for d in queued], [0, 1, 2])

    def test_slice_shared_by_servers(self) -> None:
        """
        Mailboxes sharing a slice (a node's servers) wait for the reactor
        together: a long call to one server and then one to another, come
        together, do not run back to back (1.4 s with no ping answered: the
        node's neighbours took it for dead).
        """
        shared = TurnSlice(self.clock)
        other = _Spinner(timer=self.server)
        boxes = [Mailbox(s, clock=self.clock, turn_slice=shared) for s in (self.server, other)]
        first = boxes[0].call(self.spin, (0, 0.7), {})
        second = boxes[1].call(exposed_methods(other)["spin"], (1, 0.7), {})
        third = boxes[0].call(self.spin, (2, 0.01), {})
        self.assertEqual((first, self.server.ran, other.ran), (0, [0], []))
        self.clock.advance(0)
        self.assertEqual((self.successResultOf(second), self.successResultOf(third)), (1, 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slice_shared_fairly(self) -> None:
        """
        A server whose queue spends every slice does not keep another from
        running: after the reactor turns, the servers that waited go before
        the one that spent the slice (the other's call had waited for the
        whole backlog, or its timeout).
        """
        shared = TurnSlice(self.clock)
        other = _Spinner(timer=self.server)
        busy, idle = (Mailbox(s, clock=self.clock, turn_slice=shared) for s in (self.server, other))
        backlog = [busy.call(self.spin, (n, 0.06), {}) for n in range(5)]
        waiting = idle.call(exposed_methods(other)["spin"], (100, 0.01), {})
        self.assertEqual(self.server.ran, [0])
        ran: list[int] = []
        self.server.ran, other.ran = ran, ran  # (one record of both)
        self.clock.advance(0)
        self.assertEqual(ran, [100, 1, 2, 3, 4])
        self.assertEqual(self.successResultOf(waiting), 100)
        self.assertEqual([self.successResultOf(d) for d in backlog[1:]], [1, 2, 3, 4])

    def test_concurrent_calls_share_the_slice(self) -> None:
        """
        Calls of a concurrent method (beside the mailbox) count against the
        node's slice and wait for the reactor to turn once it is spent:
        three of 0.7 s come together had held the reactor 2.1 s.
        """
        results = [self.mailbox.beside(self.spin, (n, 0.7), {}) for n in range(3)]
        self.assertEqual((results[0], self.server.ran), (0, [0]))
        self.assertNoResult(results[1])
        self.assertNoResult(results[2])
        queued = self.mailbox.call(self.spin, (3, 0.0), {})  # (the mailbox waits too)
        self.assertNoResult(queued)
        self.clock.advance(0)
        self.assertEqual([self.successResultOf(d) for d in results[1:]], [1, 2])
        self.assertEqual(self.successResultOf(queued), 3)

    def test_concurrent_call_cancelled_after_its_turn(self) -> None:
        """
        A concurrent call that waited for the reactor to turn is cancelled
        as any: its method's Deferred, once it runs, gets the cancel.
        """
        self.mailbox.beside(self.spin, (0, 0.7), {})  # (the slice is spent)
        cancelled: list[bool] = []
        waiting: Deferred[None] = Deferred(lambda _: cancelled.append(True))
        wait = ExposedMethod("wait", lambda server: waiting)
        later = self.mailbox.beside(wait, (), {})
        self.clock.advance(0)
        self.assertNoResult(later)
        later.cancel()
        self.failureResultOf(later, CancelledError)
        self.assertEqual(cancelled, [True])  # the method's own Deferred
        ran = self.mailbox.beside(self.spin, (1, 0.7), {})
        skipped = self.mailbox.beside(self.spin, (2, 0.0), {})
        skipped.cancel()  # before its turn: it never runs
        self.failureResultOf(skipped, CancelledError)
        self.clock.advance(0)
        self.assertEqual((ran, self.server.ran), (1, [0, 1]))

    def test_short_calls_uncounted(self) -> None:
        """Calls under a millisecond never make the mailbox wait."""
        for n in range(200):
            self.assertEqual(self.mailbox.call(self.spin, (n, 0.0009), {}), n)
        self.assertEqual(self.clock.getDelayedCalls(), [])
