"""
Tests for L{relaytx._metrics}: each node's own registry, and what it exposes.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._metrics import NodeMetrics
from relaytx.server import Server, exposed
from relaytx.testing import MemoryMesh, memory_node


class NodeMetricsTests(SynchronousTestCase):
    """Counting, and the text a scrape gets."""

    def sample(self, metrics: NodeMetrics, name: str, **labels: str) -> float | None:
        value: float | None = metrics.registry.get_sample_value(name, labels)
        return value

    def test_calls_and_latency(self) -> None:
        """count_call feeds the outcome counter and the latency histogram."""
        metrics = NodeMetrics()
        metrics.count_call("ok", 0.0002)
        metrics.count_call("ok", 2.0)
        metrics.count_call("CallTimeout", 30.0)
        self.assertEqual(self.sample(metrics, "relaytx_calls_total", outcome="ok"), 2)
        self.assertEqual(self.sample(metrics, "relaytx_calls_total", outcome="CallTimeout"), 1)
        self.assertEqual(self.sample(metrics, "relaytx_call_latency_seconds_count"), 3)
        self.assertEqual(
            self.sample(metrics, "relaytx_call_latency_seconds_bucket", le="0.00025"), 1
        )
        self.assertEqual(self.sample(metrics, "relaytx_call_latency_seconds_bucket", le="+Inf"), 3)
        self.assertAlmostEqual(
            self.sample(metrics, "relaytx_call_latency_seconds_sum") or 0.0, 32.0002
        )

    def test_per_node(self) -> None:
        """Two nodes in one process keep separate figures."""
        one, two = NodeMetrics(), NodeMetrics()
        one.drop("spoofed")
        one.messages_routed.inc(3)
        self.assertEqual(self.sample(one, "relaytx_messages_dropped_total", reason="spoofed"), 1)
        self.assertEqual(self.sample(two, "relaytx_messages_dropped_total", reason="spoofed"), 0)
        self.assertEqual(self.sample(one, "relaytx_messages_routed_total"), 3)
        self.assertEqual(self.sample(two, "relaytx_messages_routed_total"), 0)

    def test_dropped_from_the_start(self) -> None:
        """The common reasons for dropping a message are there from the start, at 0."""
        metrics = NodeMetrics()
        for reason in ("not_json", "loop", "duplicate", "no_route"):
            self.assertEqual(
                self.sample(metrics, "relaytx_messages_dropped_total", reason=reason), 0
            )
        self.assertIsNone(
            self.sample(metrics, "relaytx_messages_dropped_total", reason="forged_answer")
        )

    def test_gauges_read_when_scraped(self) -> None:
        """The pending-calls and mailbox gauges read their functions at each scrape."""
        metrics = NodeMetrics()
        depth = [4]
        metrics.watch_queue_depth(lambda: depth[0])
        metrics.pending_calls.set_function(lambda: 7)
        self.assertEqual(self.sample(metrics, "relaytx_mailbox_depth"), 4)
        depth[0] = 1
        self.assertEqual(self.sample(metrics, "relaytx_mailbox_depth"), 1)
        text = metrics.exposition().decode()
        self.assertIn("relaytx_pending_calls 7.0", text)
        for name in ("relaytx_peers", "relaytx_late_answers_total", "relaytx_auth_failures_total"):
            self.assertIn(name, text)


class _Counter(Server):
    @exposed
    def increment(self, by: int = 1) -> int:
        return by

    @exposed
    def boom(self) -> None:
        raise RuntimeError("boom")

    @exposed
    def later(self) -> Deferred[int]:
        return succeed(1)


class ServerCallStatsTests(SynchronousTestCase):
    """Per-server, per-method series (SPEC section 13), bounded to exposed methods."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.node = memory_node("n1", self.clock)
        self.node.expose("counter", _Counter())

    def sample(self, name: str, **labels: str) -> float | None:
        value: float | None = self.node.metrics.registry.get_sample_value(name, labels)
        return value

    def test_outcomes_per_method(self) -> None:
        """Each call of a local server counts under its server, method and outcome."""
        self.node.call(None, "counter", "increment", 2)
        self.node.call("n1", "counter", "increment")
        self.node.call(None, "counter", "later")
        self.failureResultOf(self.node.call(None, "counter", "boom"))
        self.flushLoggedErrors(RuntimeError)
        self.failureResultOf(self.node.call(None, "counter", "increment", 1, 2, 3))
        calls = "relaytx_server_calls_total"
        self.assertEqual(self.sample(calls, server="counter", method="increment", outcome="ok"), 2)
        self.assertEqual(self.sample(calls, server="counter", method="later", outcome="ok"), 1)
        self.assertEqual(
            self.sample(calls, server="counter", method="boom", outcome="RemoteCallError"), 1
        )
        self.assertEqual(
            self.sample(calls, server="counter", method="increment", outcome="InvalidParams"), 1
        )
        self.assertEqual(
            self.sample(
                "relaytx_server_call_latency_seconds_count", server="counter", method="increment"
            ),
            3,
        )
        self.assertEqual(
            self.sample(
                "relaytx_server_call_latency_seconds_bucket",
                server="counter",
                method="later",
                le="+Inf",
            ),
            1,
        )

    def test_latency(self) -> None:
        """The histogram sums the time each call took, on the node's clock."""
        d: Deferred[int] = Deferred()

        class Slow(Server):
            @exposed
            def wait(self) -> Deferred[int]:
                return d

        self.node.expose("slow", Slow())
        result = self.node.call(None, "slow", "wait")
        self.clock.advance(0.3)
        d.callback(5)
        self.assertEqual(self.successResultOf(result), 5)
        self.assertAlmostEqual(
            self.sample("relaytx_server_call_latency_seconds_sum", server="slow", method="wait")
            or 0.0,
            0.3,
        )
        self.assertEqual(
            self.sample(
                "relaytx_server_call_latency_seconds_bucket",
                server="slow",
                method="wait",
                le="0.25",
            ),
            0,
        )

    def test_unknown_methods_make_no_series(self) -> None:
        """Calls of made-up servers and methods create no series (bounded labels)."""
        for i in range(20):
            self.failureResultOf(self.node.call(None, "counter", f"nope{i}"))
            self.failureResultOf(self.node.call("n1", f"ghost{i}", "increment"))
            self.failureResultOf(self.node.call(None, "counter", "_private"))
        text = self.node.metrics.exposition().decode()
        series = [line for line in text.splitlines() if line.startswith("relaytx_server_call")]
        self.assertEqual(series, [])
        # They still count among the node's calls.
        self.assertEqual(
            self.node.metrics.registry.get_sample_value(
                "relaytx_calls_total", {"outcome": "MethodNotFound"}
            ),
            40,
        )

    def test_remote_calls_count_where_they_run(self) -> None:
        """A call to another node's server counts there, not on the calling node."""
        other = memory_node("n2", self.clock)
        other.expose("counter", _Counter())
        network = MemoryMesh()
        network.link(self.node, other)
        network.settle()
        d = self.node.call("n2", "counter", "increment", 4)
        network.pump()
        self.assertEqual(self.successResultOf(d), 4)
        labels = {"server": "counter", "method": "increment", "outcome": "ok"}
        name = "relaytx_server_calls_total"
        self.assertEqual(other.metrics.registry.get_sample_value(name, labels), 1)
        self.assertIsNone(self.node.metrics.registry.get_sample_value(name, labels))

    def test_balanced_calls_count_where_they_run(self) -> None:
        """
        Under round_robin, the calls the balancer gives this node's own
        instance count in its series (once in the totals), the others
        where they run; a cancelled call counts as Cancelled.
        """
        node = memory_node("r1", self.clock, balance={"default": "round_robin"})
        node.expose("counter", _Counter())
        other = memory_node("r2", self.clock)
        other.expose("counter", _Counter())
        network = MemoryMesh()
        network.link(node, other)
        network.settle()
        for _ in range(4):
            d = node.call(None, "counter", "increment")
            network.pump()
            self.successResultOf(d)
        labels = {"server": "counter", "method": "increment", "outcome": "ok"}
        name = "relaytx_server_calls_total"
        here = node.metrics.registry.get_sample_value(name, labels)
        there = other.metrics.registry.get_sample_value(name, labels)
        self.assertEqual((here, there), (2, 2))
        self.assertEqual(
            node.metrics.registry.get_sample_value("relaytx_calls_total", {"outcome": "ok"}), 4
        )
        slow: Deferred[int] = Deferred()

        class Slow(Server):
            @exposed
            def wait(self) -> Deferred[int]:
                return slow

        self.node.expose("slow", Slow())
        self.node.call(None, "slow", "wait").addErrback(lambda _: None).cancel()
        cancelled = {"server": "slow", "method": "wait", "outcome": "Cancelled"}
        self.assertEqual(self.sample(name, **cancelled), 1)

    def test_node_totals_add_the_series(self) -> None:
        """
        The node's totals count every call once: those of its servers'
        methods (kept per method), those of made-up ones, and remote ones.
        """
        self.node.call(None, "counter", "increment")
        self.node.call(None, "counter", "later")
        self.failureResultOf(self.node.call(None, "counter", "nope"))
        self.failureResultOf(self.node.call(None, "counter", "increment", 1, 2, 3))
        self.node.metrics.count_call("ok", 0.5)  # as a call passing through would be
        self.assertEqual(self.sample("relaytx_calls_total", outcome="ok"), 3)
        self.assertEqual(self.sample("relaytx_calls_total", outcome="MethodNotFound"), 1)
        self.assertEqual(self.sample("relaytx_calls_total", outcome="InvalidParams"), 1)
        self.assertEqual(self.sample("relaytx_call_latency_seconds_count"), 5)
        self.assertEqual(self.sample("relaytx_call_latency_seconds_bucket", le="0.25"), 4)
        self.assertAlmostEqual(self.sample("relaytx_call_latency_seconds_sum") or 0.0, 0.5)
        self.assertEqual(self.node.metrics.call_stats.totals(), (3, 2))

    def test_totals(self) -> None:
        """totals() adds up every server's calls but the built-in node's."""
        self.node.call(None, "counter", "increment")
        self.failureResultOf(self.node.call(None, "counter", "boom"))
        self.flushLoggedErrors(RuntimeError)
        self.node.call(None, "node", "ping")
        self.assertEqual(self.node.metrics.server_calls.totals(), (1, 1))
