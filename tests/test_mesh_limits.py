"""
Tests for the mesh's defences: messages over the size limit, oversized
adverts, forged answers and call time budgets, on in-memory links.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaytx import Overloaded, RemoteCallError, Server, exposed
from relaytx.errors import CallTimeout, OutcomeUnknown
from relaytx.testing import MemoryMesh, line, memory_node
from relaytx.wire import Envelope, RegistrySync, RouteAdvert, ServerResponse


class Blob(Server):
    """Answers with as many bytes as asked for."""

    @exposed
    def blob(self, size: int) -> str:
        return "x" * size

    @exposed
    def size(self, data: str) -> int:
        return len(data)

    @exposed
    def fail(self, size: int) -> None:
        raise ValueError("m" * size)

    @exposed
    def text_error(self, text: str, count: int) -> None:
        raise ValueError(text * count)

    @exposed
    def cycle(self) -> Any:
        looped: list[Any] = []
        looped.append(looped)
        return looped

    @exposed
    def dated(self) -> Any:
        return datetime.date(2020, 1, 2)

    @exposed
    def never(self) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred()


def pair(**options: Any) -> tuple[Any, Any, MemoryMesh]:
    """Two nodes a - b on one clock, b hosting L{Blob}; links settled."""
    reactor = MemoryReactorClock()
    a = memory_node("a", reactor, **options)
    b = memory_node("b", reactor, **options)
    b.expose("blob", Blob())
    network = MemoryMesh()
    network.link(a, b)
    network.settle()
    return a, b, network


class SizeLimitTests(SynchronousTestCase):
    """Nothing over the message limit is sent; callers hear why at once."""

    LIMIT = {"limits": {"max_message_size": 4096}}

    def test_result_too_large(self) -> None:
        """A result over the limit fails the call with -32000 ResultTooLarge, not a timeout."""
        a, _, network = pair(**self.LIMIT)
        d = a.call("b", "blob", "blob", 10_000, timeout=30)
        network.pump()
        error = self.failureResultOf(d, RemoteCallError).value
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "ResultTooLarge")
        self.assertEqual(error.message, f"ResultTooLarge: {error.data['message']}")
        self.assertIn("4096", error.data["message"])

    def test_error_too_large(self) -> None:
        """
        An error over the limit (an exception's long message) is the same
        error, its words cut short: -32000 with the exception's type, as
        the caller would get it on the callee's own node.
        """
        a, _, network = pair(**self.LIMIT)
        d = a.call("b", "blob", "fail", 10_000, timeout=30)
        network.pump()
        error = self.failureResultOf(d, RemoteCallError).value
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "ValueError")
        self.assertEqual(error.data["node_id"], "b")
        self.assertTrue(error.data["message"].startswith("m" * 1000 + "... ("))
        self.assertIn("cut to cross the mesh", error.data["message"])
        self.assertEqual(len(a.mesh.pending), 0)
        self.flushLoggedErrors(ValueError)

    def test_error_too_large_in_wide_characters(self) -> None:
        """Cut short, an error's message of emoji or lone surrogates is kept in its data too."""
        a, _, network = pair(limits={"max_message_size": 64 * 1024})
        for text in ("\U0001f600", "\ud800"):
            with self.subTest(text=text):
                d = a.call("b", "blob", "text_error", text, 100_000, timeout=30)
                network.pump()
                error = self.failureResultOf(d, RemoteCallError).value
                self.assertEqual(error.data["type"], "ValueError")
                self.assertTrue(error.data["message"].startswith(text * 1000 + "... ("))
        self.flushLoggedErrors(ValueError)

    def test_results_json_has_no_value_for(self) -> None:
        """A cyclic result, or a date, is a TypeError across the mesh as at home."""
        a, _, network = pair()
        for method in ("cycle", "dated"):
            with self.subTest(method=method):
                d = a.call("b", "blob", method, timeout=30)
                network.pump()
                error = self.failureResultOf(d, RemoteCallError).value
                self.assertEqual((error.code, error.data["type"]), (-32000, "TypeError"))

    def test_arguments_too_large(self) -> None:
        """A call whose arguments exceed the limit fails with -32005 and leaves nothing pending."""
        a, _, _ = pair(**self.LIMIT)
        d = a.call("b", "blob", "size", "y" * 10_000)
        self.assertEqual(self.failureResultOf(d, Overloaded).value.code, -32005)
        self.assertEqual(len(a.mesh.pending), 0)

    def test_arguments_too_deep(self) -> None:
        """
        Arguments nested as deep as a request may be, which the envelope
        takes past what a peer reads (1024 levels), fail the call with
        -32005 instead of closing the link with a frame the peer refuses.
        """
        a, _, network = pair()
        deep: Any = []
        for _ in range(1020):
            deep = [deep]
        d = a.call("b", "node", "echo", deep)
        error = self.failureResultOf(d, Overloaded).value
        self.assertEqual(error.code, -32005)
        self.assertIn("1024 levels", error.message)
        shallow: Any = []
        for _ in range(900):  # past orjson's 254 levels, within a frame's
            shallow = [shallow]
        d = a.call("b", "node", "echo", shallow)
        network.pump()
        self.assertEqual(self.successResultOf(d), [shallow])
        self.assertEqual(set(a.mesh.links), {"b"})

    def test_answers_near_the_limit_through_a_forwarder(self) -> None:
        """
        An answer that fits the limit where it starts, but would not once
        the forwarder on its way added itself to its route, fails at once
        with ResultTooLarge at its start: it is never lost on the way.
        """
        reactor = MemoryReactorClock()
        a, b, c = (memory_node(n, reactor, **self.LIMIT) for n in "abc")
        c.expose("blob", Blob())
        network = line([a, b, c])
        network.settle()
        outcomes = set()
        for size in range(2800, 4000, 4):
            settled: list[Any] = []
            a.call("c", "blob", "blob", size, timeout=30).addBoth(settled.append)
            network.pump()
            self.assertEqual(len(settled), 1, f"a result of {size} bytes: no answer")
            [outcome] = settled
            if isinstance(outcome, Failure):
                self.assertEqual(outcome.value.data["type"], "ResultTooLarge", size)
                outcomes.add("too large")
            else:
                self.assertEqual(outcome, "x" * size)
                outcomes.add("result")
        self.assertEqual(outcomes, {"result", "too large"})
        self.assertEqual(len(a.mesh.pending), 0)

    def test_answer_lost_at_a_forwarder(self) -> None:
        """
        An answer a forwarder cannot pass on (its own limit is lower) fails
        the call at once with -32006 from that forwarder: the call ran.
        """
        reactor = MemoryReactorClock()
        a, c = (memory_node(n, reactor) for n in "ac")
        b = memory_node("b", reactor, **self.LIMIT)
        c.expose("blob", Blob())
        network = line([a, b, c])
        network.settle()
        d = a.call("c", "blob", "blob", 3000, timeout=30)
        network.pump()
        self.assertEqual(self.successResultOf(d), "x" * 3000)
        d = a.call("c", "blob", "blob", 5000, timeout=30)
        network.pump()
        error = self.failureResultOf(d, OutcomeUnknown).value
        self.assertEqual(error.code, -32006)
        self.assertEqual(error.data["node_id"], "b")
        self.assertIn("too large", error.message)
        self.assertEqual(len(a.mesh.pending), 0)

    def test_calls_refused_onto_a_backed_up_link(self) -> None:
        """
        While a link's unsent output is past what it may hold, a call that
        would leave by it is refused at once (-32005), here or on the way;
        answers still go, and calls go again once it drains.
        """
        reactor = MemoryReactorClock()
        a, b, c = (memory_node(n, reactor) for n in "abc")
        network = line([a, b, c])
        network.settle()
        to_c = b.mesh.links["c"]
        to_c.hold_calls(1000, lambda: 5000)  # (its output: past the bound)
        d = a.call("c", "node", "echo", 1, timeout=30)
        network.pump()
        error = self.failureResultOf(d, Overloaded).value
        self.assertEqual((error.code, error.data["node_id"]), (-32005, "b"))
        self.assertIn("backed up", error.message)
        d = b.call("c", "node", "echo", 2, timeout=30)
        self.assertEqual(self.failureResultOf(d, Overloaded).value.code, -32005)
        to_c.release_calls()
        d = a.call("c", "node", "echo", 3, timeout=30)
        network.pump()
        self.assertEqual(self.successResultOf(d), [3])
        self.assertEqual((len(a.mesh.pending), len(b.mesh.pending)), (0, 0))

    def test_small_calls_still_work(self) -> None:
        """Under the limit, calls go through as usual."""
        a, _, network = pair(**self.LIMIT)
        d = a.call("b", "blob", "blob", 100)
        network.pump()
        self.assertEqual(self.successResultOf(d), "x" * 100)


class AdvertLimitTests(SynchronousTestCase):
    """A neighbour cannot flood the table with routes, nor the table grow without bound."""

    def advertise(self, node: Any, peer: str, routes: dict[str, RouteAdvert]) -> None:
        """Give C{node} an advert of C{routes} from its neighbour C{peer}, numbered in turn."""
        session = node.mesh.links[peer]
        seq = node.mesh.adverts._state[peer].expect
        sync = RegistrySync(None, routes, seq=seq)
        node.mesh.receive(Envelope.create(sync, peer, node.node_id, 0.0), session)

    def test_too_many_routes_from_one_neighbour(self) -> None:
        """Past half of max_routes from one neighbour, the rest is ignored, counted, logged once."""
        a, _, _ = pair(limits={"max_routes": 10})
        self.advertise(a, "b", {f"n{i}": RouteAdvert((f"n{i}",)) for i in range(7)})
        self.advertise(a, "b", {f"m{i}": RouteAdvert((f"m{i}",)) for i in range(2)})
        self.assertEqual(len(a.mesh.router.routes()), 1 + 5)  # b, and five of its destinations
        dropped = a.metrics.registry.get_sample_value(
            "relaytx_messages_dropped_total", {"reason": "too_many_routes"}
        )
        self.assertEqual(dropped, 1)

    def test_routes_within_limit_taken(self) -> None:
        """An advert within the limit is used."""
        a, _, _ = pair(limits={"max_routes": 5})
        self.advertise(a, "b", {"far": RouteAdvert(("far",), {"svc": ("m",)})})
        self.assertEqual(a.views.routes()["far"]["hops"], 2)

    def test_table_bounded_in_total(self) -> None:
        """The table holds at most limits.max_routes destinations, whoever offers them."""
        reactor = MemoryReactorClock()
        a = memory_node("a", reactor, limits={"max_routes": 4})
        b, c = (memory_node(n, reactor) for n in "bc")
        network = MemoryMesh()
        network.link(a, b)
        network.link(a, c)
        network.settle()
        self.advertise(a, "b", {"n1": RouteAdvert(("n1",)), "n2": RouteAdvert(("n2",))})
        self.advertise(a, "c", {"n3": RouteAdvert(("n3",)), "n4": RouteAdvert(("n4",))})
        self.assertEqual(len(a.views.routes()), 4)
        self.assertEqual(a.mesh.router.refused, 2)

    def test_bounded_table_floods(self) -> None:
        """
        A node whose bound left out some of a neighbour's destinations
        reaches them still: its table is not all there is, so a call with
        no route is flooded (SPEC section 7), not refused -32002.
        """
        reactor = MemoryReactorClock()
        a = memory_node("a", reactor, limits={"max_routes": 4})
        hub = memory_node("hub", reactor)
        leaves = [memory_node(f"l{i}", reactor) for i in range(6)]
        network = MemoryMesh()
        for leaf in leaves:
            network.link(leaf, hub)
        network.link(a, hub)
        network.settle()
        missing = [leaf.node_id for leaf in leaves if a.mesh.router.route(leaf.node_id) is None]
        self.assertTrue(missing)
        for node_id in missing:
            d = a.call(node_id, "node", "ping", timeout=5)
            network.pump()
            self.assertEqual(self.successResultOf(d)["node_id"], node_id)


class ForgedAnswerTests(SynchronousTestCase):
    """Only the callee answers a call."""

    def test_answer_from_another_node_dropped(self) -> None:
        """A success answer sent by a node the call did not go to is dropped and counted."""
        reactor = MemoryReactorClock()
        a, b, evil = (memory_node(n, reactor) for n in ("a", "b", "evil"))
        b.expose("blob", Blob())
        network = MemoryMesh()
        network.link(a, b)
        network.link(evil, a)
        network.settle()
        d = a.call("b", "blob", "never", timeout=5)
        (response_id,) = list(a.mesh.pending._pending)
        forged = ServerResponse(response_id=response_id, success=True, node_id="b", result=1)
        a.mesh.receive(Envelope.create(forged, "evil", "a", 0.0), a.mesh.links["evil"])
        self.assertNoResult(d)
        dropped = a.metrics.registry.get_sample_value(
            "relaytx_messages_dropped_total", {"reason": "forged_answer"}
        )
        self.assertEqual(dropped, 1)
        d.cancel()
        self.failureResultOf(d)

    def test_path_node_may_report_loss(self) -> None:
        """
        A node on the path may fail a call with -32002 or -32006 (the path
        lost) or -32005 (its own limit); with any other code, or with a
        success, its answer is a forgery.
        """
        reactor = MemoryReactorClock()
        a, b, c = (memory_node(n, reactor) for n in ("a", "b", "c"))
        c.expose("blob", Blob())
        network = MemoryMesh()
        network.link(a, b)
        network.link(b, c)
        network.settle()
        session = a.mesh.links["b"]
        for code, accepted in [
            (-32003, False), (-32000, False), (-32006, True), (-32002, True), (-32005, True),
        ]:  # fmt: skip
            d = a.call("c", "blob", "never", timeout=5)
            network.pump()
            (response_id,) = list(a.mesh.pending._pending)
            report = ServerResponse(
                response_id=response_id, success=False, node_id="b", error="x", error_code=code
            )
            a.mesh.receive(Envelope.create(report, "b", "a", 0.0), session)
            if accepted:
                self.assertEqual(self.failureResultOf(d).value.code, code)
            else:
                self.assertNoResult(d)
                d.cancel()
                self.failureResultOf(d)
        dropped = a.metrics.registry.get_sample_value(
            "relaytx_messages_dropped_total", {"reason": "forged_answer"}
        )
        self.assertEqual(dropped, 2)


class HopLimitTests(SynchronousTestCase):
    """A node on the path that is over its limits says so at once."""

    def test_forwarder_overloaded(self) -> None:
        """
        A call a forwarder cannot remember (max_pending_calls) fails at once
        with its -32005, not at the caller's deadline.
        """
        reactor = MemoryReactorClock()
        a, c = memory_node("a", reactor), memory_node("c", reactor)
        b = memory_node("b", reactor, limits={"max_pending_calls": 1})
        c.expose("blob", Blob())
        network = line([a, b, c])
        network.settle()
        first = a.call("c", "blob", "never", timeout=10)
        second = a.call("c", "blob", "never", timeout=10)
        network.pump()
        error = self.failureResultOf(second, Overloaded).value
        self.assertEqual((error.code, error.data["node_id"]), (-32005, "b"))
        self.assertNoResult(first)
        first.cancel()
        self.failureResultOf(first)


class LocalTimeoutTests(SynchronousTestCase):
    """Local calls keep their timeout too."""

    def test_local_call_times_out(self) -> None:
        """A local method that never answers fails with -32001 at the call's timeout."""
        node = memory_node("solo")
        node.expose("blob", Blob())
        d = node.call(None, "blob", "never", timeout=2)
        node.clock.advance(1.9)
        self.assertNoResult(d)
        node.clock.advance(0.2)
        self.assertEqual(self.failureResultOf(d, CallTimeout).value.code, -32001)
        self.assertEqual(node.clock.getDelayedCalls(), [])


class AnswerWayBackTests(SynchronousTestCase):
    """An answer finds its way back even before routes to the caller are known."""

    def test_answer_follows_the_call_back(self) -> None:
        """With no route to the caller yet, the answer retraces the way its call came."""
        reactor = MemoryReactorClock()
        a, b, c = (memory_node(n, reactor) for n in ("a", "b", "c"))
        c.expose("blob", Blob())
        network = MemoryMesh()
        network.link(a, b)
        network.link(b, c)
        network.settle()
        # As if a's adverts had not yet reached c, nor b (b still links to a).
        c.mesh.router._routes.pop("a")
        d = a.call("c", "blob", "blob", 3, timeout=5)
        network.pump()
        self.assertEqual(self.successResultOf(d), "xxx")
