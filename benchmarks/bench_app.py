"""
A relaytx app for benchmarks: loaded with C{--app benchmarks/bench_app.py},
it exposes C{counter_server} (the example counter) and C{bench}, whose
C{run} method drives calls through the node's Python API (C{node.call})
from inside the node and reports what it measured.

    bench.run(node_id, server, method, inflight, duration, warmup)
      -> {"calls", "errors", "seconds", "calls_per_s", "p50_ms", "p99_ms"}

C{node_id} null means a call to this node's own server (a local call through
the same API).

For streams (C{benchmarks/streams.py}, SPEC section 12) it also exposes
C{source}, whose C{items} generator yields small items without end and
whose C{hold} waits until it is cancelled (noting when it saw that), and
C{bench.stream_run} (items/s read through C{node.stream}),
C{bench.cancel_run} (cancel round trips) and C{bench.slow_read} (a
consumer reading a few items a second).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater

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


class Source(Server):
    """A stream without end, and a call that waits to be cancelled."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.made = 0

    @exposed
    async def items(self) -> Any:
        while True:
            self.made += 1
            yield self.made

    @exposed
    async def hold(self) -> None:
        try:
            await Deferred()
        except CancelledError:
            self.seen.append(time.monotonic())  # system-wide on Linux: comparable
            raise

    @exposed
    def last_seen(self) -> float | None:
        return self.seen[-1] if self.seen else None

    @exposed
    def made_count(self) -> int:
        return self.made


class StreamBench(Server):
    """Drives streams and cancels through the node's Python API."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @exposed
    def stream_run(
        self, node_id: str | None, duration: float = 2.0, warmup: float = 0.5, window: int = 64
    ) -> Deferred[dict[str, Any]]:
        """Read C{source.items} on C{node_id}: items/s."""
        return ensureDeferred(self._stream(node_id, duration, warmup, window))

    async def _stream(
        self, node_id: str | None, duration: float, warmup: float, window: int
    ) -> dict[str, Any]:
        clock = time.perf_counter
        start = clock()
        measure_from, stop_at = start + warmup, start + warmup + duration
        counted = 0
        stream = self._node.stream(node_id, "source", "items", window=window, timeout=600)
        async for _ in stream:
            now = clock()
            if now >= stop_at:
                break
            if now >= measure_from:
                counted += 1
        await stream.aclose()
        return {"items": counted, "seconds": duration, "items_per_s": counted / duration}

    @exposed
    def cancel_run(self, node_id: str, samples: int = 200) -> Deferred[dict[str, Any]]:
        """Cancel C{samples} calls of C{source.hold} on C{node_id}: ms to the method seeing it."""
        return ensureDeferred(self._cancels(node_id, samples))

    async def _cancels(self, node_id: str, samples: int) -> dict[str, Any]:
        node = self._node
        times: list[float] = []
        for _ in range(samples):
            d = node.call(node_id, "source", "hold", timeout=30)
            d.addErrback(lambda f: None)
            await deferLater(reactor, 0.005, lambda: None)  # it is running there
            cancelled_at = time.monotonic()
            d.cancel()
            await deferLater(reactor, 0.01, lambda: None)
            seen = await node.call(node_id, "source", "last_seen")
            if seen is not None and seen >= cancelled_at:
                times.append((seen - cancelled_at) * 1000)
        times.sort()
        return {
            "samples": len(times),
            "p50_ms": _percentile(times, 0.5),
            "p99_ms": _percentile(times, 0.99),
        }

    @exposed
    def slow_read(
        self, node_id: str, seconds: float, per_s: float = 20.0
    ) -> Deferred[dict[str, Any]]:
        """Read C{source.items} on C{node_id} at C{per_s} items/s for C{seconds}."""
        return ensureDeferred(self._slow(node_id, seconds, per_s))

    async def _slow(self, node_id: str, seconds: float, per_s: float) -> dict[str, Any]:
        got = 0
        stop_at = time.monotonic() + seconds
        stream = self._node.stream(node_id, "source", "items", timeout=seconds + 60)
        async for _ in stream:
            got += 1
            if time.monotonic() >= stop_at:
                break
            await deferLater(reactor, 1.0 / per_s, lambda: None)
        await stream.aclose()
        return {"items": got}


def setup(node: Any) -> None:
    node.expose("counter_server", Counter())
    node.expose("bench", Bench(node))
    node.expose("source", Source())
    node.expose("streams", StreamBench(node))
