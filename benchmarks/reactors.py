#!/usr/bin/env python
"""
The asyncio reactor against another one, A/B: which default C{relay node}
should have (SPEC section 14: asyncio, unless it costs more than 10% of
direct calls/s).

    python benchmarks/reactors.py [--reactors epoll,asyncio] [--rounds 5]
                                  [--duration 2] [--inflight 1,64]

For each reactor it starts a pair of C{relay node} processes, n0 (with
C{benchmarks/bench_app.py}) dialling n1 (the counter app), all at once,
and then measures in rounds, each reactor in turn (the order reversed every
other round, so the machine's drift falls on both alike): calls/s through
the Python API inside n0 (C{node.call}) to n1 (direct) and to n0 itself
(local), at each in-flight level. It prints every round's figures, then for
each cell the median, the spread and the median of the per-round ratios
to the first reactor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HOST, Processes, free_port, post, wait_routes


def start_pair(procs: Processes, reactor: str) -> int:
    """Start n0 (bench app) dialling n1 (counter) on C{reactor}; :returns: n0's port."""
    ports = [free_port(), free_port()]
    children = []
    for i, port in enumerate(ports):
        argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", f"n{i}"]
        argv += ["--port", str(port), "--reactor", reactor]
        argv += ["--app", "benchmarks/bench_app.py" if i == 0 else "examples/counter.py"]
        if i == 0:
            argv += ["--add-peer", f"ws://{HOST}:{ports[1]}"]
        children.append(procs.start(f"{reactor}-n{i}", argv))
    for child, port in zip(children, ports, strict=True):
        procs.wait_port(child, port)
    wait_routes(ports[0], ["n1"])
    return ports[0]


def measure(port: int, target: str | None, inflight: int, duration: float) -> float:
    """:returns: calls/s of C{counter_server.increment} from n0 to C{target}."""
    params = [target, "counter_server", "increment", inflight, duration, 0.3]
    stats: dict[str, Any] = post(
        port, {"jsonrpc": "2.0", "id": 1, "method": "bench.run", "params": params}
    )["result"]
    if stats["errors"]:
        raise RuntimeError(f"{stats['errors']} errors")
    rate: float = stats["calls_per_s"]
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reactors", default="epoll,asyncio")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--inflight", default="1,64")
    args = parser.parse_args()
    reactors = args.reactors.split(",")
    levels = [int(n) for n in args.inflight.split(",")]
    cells = [(target, n) for target in ("n1", None) for n in levels]
    figures: dict[tuple[str, str | None, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="relaytx-reactors-") as tmp:
        procs = Processes(Path(tmp))
        try:
            ports = {reactor: start_pair(procs, reactor) for reactor in reactors}
            for number in range(args.rounds):
                order = reactors if number % 2 == 0 else reactors[::-1]
                for target, n in cells:
                    for reactor in order:
                        rate = measure(ports[reactor], target, n, args.duration)
                        figures.setdefault((reactor, target, n), []).append(rate)
                        where = "direct" if target else "local"
                        sys.stderr.write(
                            f"  round {number + 1}: {reactor:8} {where:6} {n:3} in flight "
                            f"{rate:9.0f}/s\n"
                        )
        finally:
            procs.stop_all()
    base = reactors[0]
    print(f"{'reactor':8} {'target':6} {'in flight':>9} {'median/s':>9} {'min':>8} {'max':>8}"
          f"  {'ratio to ' + base:>14} (per-round min-max)")  # fmt: skip
    for target, n in cells:
        for reactor in reactors:
            rates = figures[(reactor, target, n)]
            ratios = [a / b for a, b in zip(rates, figures[(base, target, n)], strict=True)]
            print(
                f"{reactor:8} {'direct' if target else 'local':6} {n:9} "
                f"{statistics.median(rates):9.0f} {min(rates):8.0f} {max(rates):8.0f}"
                f"  {statistics.median(ratios):14.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
