"""
A relaytx app for benchmarks: loaded with C{--app benchmarks/bench_app.py},
it exposes C{counter_server} (the example counter) and C{bench}, whose
C{run} method drives calls through the node's Python API (C{node.call})
from inside the node and reports what it measured.

    bench.run(node_id, server, method, inflight, duration, warmup)
      -> {"calls", "errors", "seconds", "calls_per_s", "p50_ms", "p99_ms"}

C{node_id} null means a call to this node's own server (a local call through
the same API).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from relaytx import Server, exposed

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
)
from counter import Counter


def _percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class Bench(Server):
    """Drives the node's own Python API."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @exposed
    def run(
        self,
        node_id: str | None,
        server: str,
        method: str,
        inflight: int = 1,
        duration: float = 3.0,
        warmup: float = 0.5,
    ) -> Deferred[dict[str, Any]]:
        """Call C{server.method()} on C{node_id} with C{inflight} in flight."""
        return ensureDeferred(self._run(node_id, server, method, inflight, duration, warmup))

    async def _run(
        self,
        node_id: str | None,
        server: str,
        method: str,
        inflight: int,
        duration: float,
        warmup: float,
    ) -> dict[str, Any]:
        node = self._node
        clock = time.perf_counter
        start = clock()
        measure_from = start + warmup
        stop_at = measure_from + duration
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                sent = clock()
                if sent >= stop_at:
                    return
                try:
                    await node.call(node_id, server, method, timeout=30)
                except Exception:
                    if sent >= measure_from:
                        errors += 1
                    continue
                if sent >= measure_from:
                    latencies.append(clock() - sent)

        await gatherResults([ensureDeferred(worker()) for _ in range(inflight)])
        latencies.sort()
        seconds = duration
        p50 = _percentile(latencies, 0.50)
        p99 = _percentile(latencies, 0.99)
        return {
            "calls": len(latencies),
            "errors": errors,
            "seconds": seconds,
            "calls_per_s": len(latencies) / seconds,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
        }


def setup(node: Any) -> None:
    node.expose("counter_server", Counter())
    node.expose("bench", Bench(node))
