# -*- test-case-name: tests.test_metrics -*-
"""
Per-node Prometheus metrics, on a registry of the node's own (never the
process-global one), so several nodes can share a process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 100 us to 30 s: local calls take tens of microseconds,
# remote ones up to their timeout.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class NodeMetrics:
    """
    The metrics of one node. Label children that are hit on every call are
    resolved once and cached.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "relaytx_calls", "Calls handled by this node, by outcome.", ["outcome"], registry=r
        )
        self.call_latency = Histogram(
            "relaytx_call_latency_seconds",
            "Time from receiving a call to its answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_calls = Gauge(
            "relaytx_pending_calls", "Calls this node is waiting on.", registry=r
        )
        self.peers = Gauge("relaytx_peers", "Directly connected healthy peers.", registry=r)
        self.messages_routed = Counter(
            "relaytx_messages_routed", "Messages forwarded towards another node.", registry=r
        )
        self.messages_dropped = Counter(
            "relaytx_messages_dropped", "Messages dropped, by reason.", ["reason"], registry=r
        )
        self.late_answers = Counter(
            "relaytx_late_answers", "Answers that arrived after their call ended.", registry=r
        )
        self.queue_depth = Gauge(
            "relaytx_mailbox_depth", "Calls waiting in server mailboxes.", registry=r
        )
        self.http_requests = Counter(
            "relaytx_http_requests", "HTTP requests, by status class.", ["status"], registry=r
        )
        self.auth_failures = Counter(
            "relaytx_auth_failures", "Peers that failed to prove the cluster secret.", registry=r
        )
        self._outcomes: dict[str, Counter] = {}

    def count_call(self, outcome: str, seconds: float) -> None:
        """
        Record one finished call.

        :param outcome: C{"ok"} or the name of the error.
        """
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.calls.labels(outcome)
        child.inc()
        self.call_latency.observe(seconds)

    def drop(self, reason: str) -> None:
        """Count one dropped message."""
        self.messages_dropped.labels(reason).inc()

    def watch_queue_depth(self, depth: Callable[[], float]) -> None:
        """Report C{depth()} as the mailbox depth at each scrape."""
        self.queue_depth.set_function(depth)

    def exposition(self) -> bytes:
        """
        :returns: the Prometheus text exposition of every metric.
        """
        return generate_latest(self.registry)
