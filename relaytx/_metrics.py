# -*- test-case-name: tests.test_metrics -*-
"""
Per-node Prometheus metrics, on a registry of the node's own (never the
process-global one), so several nodes can share a process.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 100 us to 30 s: local calls take tens of microseconds,
# remote ones up to their timeout.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _Figures:
    """Calls by outcome, and their latency as bucket counts and a sum."""

    __slots__ = ("buckets", "outcomes", "total_seconds")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.total_seconds = 0.0

    def add(self, other: _Figures) -> None:
        """Count C{other}'s calls in these too."""
        outcomes = self.outcomes
        for outcome, count in other.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.total_seconds += other.total_seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """:returns: the buckets as a Prometheus histogram has them."""
        bounds = [*(repr(b) for b in _LATENCY_BUCKETS), "+Inf"]
        running, buckets = 0, []
        for bound, count in zip(bounds, self.buckets, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


class CallStats(_Figures, Collector):
    """
    Calls by outcome and their latency histogram, kept as plain numbers and
    turned into metric families only when scraped: counting a call is on
    every call's path, where prometheus_client's locked counters and
    histograms cost more than the rest of the bookkeeping. Everything runs
    in the reactor thread, so no lock is needed.

    The calls that ran on this node's servers are kept per method by a
    L{ServerCallStats}, and added in here when scraped (see C{include}):
    each call is counted once, in one place.
    """

    def __init__(self) -> None:
        super().__init__()
        self._included: list[Callable[[], Iterator[_Figures]]] = []

    def record(self, outcome: str, seconds: float) -> None:
        """Count one finished call."""
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        self.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def include(self, figures: Callable[[], Iterator[_Figures]]) -> None:
        """Add the calls C{figures()} yields to these whenever they are read."""
        self._included.append(figures)

    def summed(self) -> _Figures:
        """:returns: every call of the node: these and the included ones."""
        every = _Figures()
        every.add(self)
        for figures in self._included:
            for part in figures():
                every.add(part)
        return every

    def totals(self) -> tuple[int, int]:
        """:returns: how many calls succeeded and how many failed, so far."""
        outcomes = self.summed().outcomes
        ok = outcomes.get("ok", 0)
        return ok, sum(outcomes.values()) - ok

    def collect(self) -> Iterator[Metric]:
        every = self.summed()
        calls = CounterMetricFamily(
            "relaytx_calls", "Calls handled by this node, by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(every.outcomes.items()):
            calls.add_metric([outcome], count)
        yield calls
        yield HistogramMetricFamily(
            "relaytx_call_latency_seconds",
            "Time from receiving a call to its answer.",
            buckets=every.cumulative(),
            sum_value=every.total_seconds,
        )


class ServerCallStats(Collector):
    """
    Calls run by this node's servers, per server and method: by outcome
    (C{relaytx_server_calls_total{server,method,outcome}}) and their latency
    (C{relaytx_server_call_latency_seconds{server,method}}), kept as plain
    numbers as L{CallStats} keeps its own.

    The label sets are bounded: a series is made only for a method that a
    hosted server exposes (C{known(server, method)}), so a caller naming
    made-up methods makes none (its calls count in the node's totals
    alone); outcomes are C{"ok"} or the name of a relaytx error class (a
    method's own exceptions are all C{RemoteCallError}).

    The node's totals (C{totals}, its L{CallStats}) add the series up when
    scraped, rather than each call counting twice: a local Python-API
    call took about 4.2 us counted in both places, 4.0 us counted here
    alone, and as much with no per-method series at all.

    :param known: whether a hosted server exposes that method.
    """

    def __init__(
        self,
        totals: CallStats,
        known: Callable[[str, str], bool] = lambda server, method: False,
    ) -> None:
        self._totals = totals
        self.known = known
        self.series: dict[str, dict[str, _Figures]] = {}
        totals.include(self._every_series)

    def _every_series(self) -> Iterator[_Figures]:
        for methods in self.series.values():
            yield from methods.values()

    def record(self, server: str, method: str, outcome: str, seconds: float) -> None:
        """Count one finished call of C{server.method} (so in the node's totals too)."""
        methods = self.series.get(server)
        entry = None if methods is None else methods.get(method)
        if entry is None:
            if not self.known(server, method):
                self._totals.record(outcome, seconds)
                return
            entry = self.series.setdefault(server, {}).setdefault(method, _Figures())
        outcomes = entry.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        entry.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        entry.total_seconds += seconds

    def totals(self, skip: str = "node") -> tuple[int, int]:
        """
        :param skip: a server left out (by default the built-in C{node},
            whose calls are mostly the mesh looking at itself).
        :returns: how many calls of the other servers succeeded and failed.
        """
        ok = failed = 0
        for server, methods in self.series.items():
            if server == skip:
                continue
            for entry in methods.values():
                for outcome, count in entry.outcomes.items():
                    if outcome == "ok":
                        ok += count
                    else:
                        failed += count
        return ok, failed

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "relaytx_server_calls",
            "Calls run by this node's servers, by server, method and outcome.",
            labels=["server", "method", "outcome"],
        )
        latency = HistogramMetricFamily(
            "relaytx_server_call_latency_seconds",
            "Time from receiving a call for one of this node's servers to its answer.",
            labels=["server", "method"],
        )
        for server, methods in sorted(self.series.items()):
            for method, entry in sorted(methods.items()):
                for outcome, count in sorted(entry.outcomes.items()):
                    calls.add_metric([server, method, outcome], count)
                latency.add_metric([server, method], entry.cumulative(), entry.total_seconds)
        yield calls
        yield latency


class PlainCounter(Collector):
    """
    A counter without labels kept as a plain number, for a hot path (see
    L{CallStats}); it has C{inc} as prometheus_client's has.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)


#: What ends a link, as C{relaytx_links_lost_total} counts it (a bounded set).
LINK_LOSS_CAUSES = ("removed", "silent", "closed", "auth", "stopped")

#: The reasons C{relaytx_messages_dropped_total} shows from the start, at 0
#: (the common ones: malformed frames, loops, copies, no way on); the
#: others show once a message is dropped for them.
DROP_REASONS = (
    "not_json",
    "not_object",
    "missing_field",
    "bad_field",
    "bad_id",
    "spoofed",
    "loop",
    "duplicate",
    "ttl_exceeded",
    "no_route",
    "too_large",
    "overloaded",
)


class NodeMetrics:
    """
    The metrics of one node.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.call_stats = CallStats()
        r.register(self.call_stats)
        self.server_calls = ServerCallStats(self.call_stats)
        r.register(self.server_calls)
        self.pending_calls = Gauge(
            "relaytx_pending_calls", "Calls this node is waiting on.", registry=r
        )
        self.peers = Gauge("relaytx_peers", "Directly connected healthy peers.", registry=r)
        self.messages_routed = PlainCounter(
            "relaytx_messages_routed", "Messages forwarded towards another node."
        )
        r.register(self.messages_routed)
        self.messages_dropped = Counter(
            "relaytx_messages_dropped", "Messages dropped, by reason.", ["reason"], registry=r
        )
        for reason in DROP_REASONS:
            self.messages_dropped.labels(reason)
        self.sync_frames = PlainCounter(
            "relaytx_registry_sync_frames", "registry_sync frames sent to neighbours."
        )
        r.register(self.sync_frames)
        self.sync_bytes = PlainCounter(
            "relaytx_registry_sync_bytes", "Bytes of registry_sync frames sent to neighbours."
        )
        r.register(self.sync_bytes)
        self.routes = Gauge("relaytx_routes", "Destinations in the routing table.", registry=r)
        self.routes_changed = Gauge(
            "relaytx_routes_changed_timestamp_seconds",
            "When the routing table last changed (Unix time).",
            registry=r,
        )
        self.late_answers = Counter(
            "relaytx_late_answers", "Answers that arrived after their call ended.", registry=r
        )
        self.queue_depth = Gauge(
            "relaytx_mailbox_depth", "Calls waiting in server mailboxes.", registry=r
        )
        # What the node holds for calls that are not its own, read at each
        # scrape (so that "nothing left pending" can be seen from outside).
        self.forwarded_calls = Gauge(
            "relaytx_forwarded_calls",
            "Calls passing through this node, remembered until their answer passes back.",
            registry=r,
        )
        self.running_calls = Gauge(
            "relaytx_running_calls",
            "Calls from other nodes running or queued on this node's servers.",
            registry=r,
        )
        self.streams_producing = Gauge(
            "relaytx_streams_producing",
            "Streamed results this node's servers are producing for callers elsewhere.",
            registry=r,
        )
        self.auth_failures = Counter(
            "relaytx_auth_failures", "Peers that failed to prove the cluster secret.", registry=r
        )
        self.links_lost = Counter(
            "relaytx_links_lost",
            "Links to neighbours that ended, by cause (see relaytx._mesh.loss_cause).",
            ["cause"],
            registry=r,
        )
        for cause in LINK_LOSS_CAUSES:  # every series there from the start, at 0
            self.links_lost.labels(cause)
        self.count_call = self.call_stats.record
        """
        Record one finished call: C{count_call(outcome, seconds)} with
        C{outcome} C{"ok"} or the name of the error.
        """
        self.count_server_call = self.server_calls.record
        """
        Record one finished call that ran on a local server, in place of
        L{count_call} (it counts the call there too):
        C{count_server_call(server, method, outcome, seconds)}.
        """

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
