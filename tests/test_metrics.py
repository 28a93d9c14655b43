"""
Tests for L{relaytx._metrics}: each node's own registry, and what it exposes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaytx._metrics import NodeMetrics


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
        self.assertIsNone(self.sample(two, "relaytx_messages_dropped_total", reason="spoofed"))
        self.assertEqual(self.sample(one, "relaytx_messages_routed_total"), 3)
        self.assertEqual(self.sample(two, "relaytx_messages_routed_total"), 0)

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
