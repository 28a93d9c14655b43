#!/usr/bin/env python
"""
relaytx.client against its ceilings, and C{relay call}'s start-up time.

    python benchmarks/client.py [--rounds 3] [--duration 2] [--inflight 100]

It starts a C{relay node} (the counter app) and, in each round, measures
in turn:

  - C{echo-raw-client}: C{benchmarks/run.py}'s raw-client ceiling, the lean
    epoll client keeping C{--inflight} messages in flight on one WebSocket
    to a bare Autobahn echo server;
  - C{raw-client /ws/rpc}: the same client calling
    C{counter_server.increment} on the node's C{/ws/rpc} (what the node
    can answer);
  - C{asyncio client}: C{relaytx.client} from this process, C{--inflight}
    tasks each awaiting C{c.counter_server.increment()} in a loop on one
    connection (pipelined);
  - C{blocking client}: C{relaytx.client.connect_sync}, one call at a
    time, p50 and p99 of each call's round trip;
  - C{relay call}: the wall time of C{relay call URL node ping}, a new
    process each time.

It prints each figure's median over the rounds, its spread (min-max), and
the asyncio client's ratio to each ceiling, round by round. Everything
shares the machine's cores, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _loadgen import ws_load  # noqa: E402
from run import HOST, Processes, free_port  # noqa: E402

import relaytx.client  # noqa: E402

INCREMENT = b'{"jsonrpc":"2.0","method":"counter_server.increment","id":%d}'


async def pipelined(url: str, inflight: int, warmup: float, duration: float) -> tuple[float, float]:
    """:returns: calls/s of the asyncio client, and its CPU seconds per second."""
    async with relaytx.client.connect(url) as c:
        increment = c.counter_server.increment
        done = 0
        measuring = False

        async def worker(stop: float) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await increment()
                if measuring:
                    done += 1

        start = time.perf_counter()
        tasks = [asyncio.ensure_future(worker(start + warmup + duration)) for _ in range(inflight)]
        await asyncio.sleep(warmup)
        measuring, cpu = True, time.process_time()
        await asyncio.sleep(duration)
        measuring, cpu = False, time.process_time() - cpu
        await asyncio.gather(*tasks)
    return done / duration, cpu / duration


def one_at_a_time(url: str, calls: int) -> tuple[float, float]:
    """:returns: p50 and p99 in ms of the blocking client's calls, one at a time."""
    with relaytx.client.connect_sync(url) as c:
        increment = c.counter_server.increment
        for _ in range(200):  # warm up
            increment()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            increment()
            times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def relay_call(url: str, times: int) -> float:
    """:returns: the median wall time of C{relay call URL node ping}, in ms."""
    relay = Path(sys.executable).parent / "relay"
    command = [str(relay)] if relay.exists() else [sys.executable, "-m", "relaytx.cli"]
    walls = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run([*command, "call", url, "node", "ping"], check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls) * 1000


def summary(name: str, values: list[float]) -> str:
    spec = ".0f" if max(values) >= 100 else ".2f"
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{name:<28} {middle:>10{spec}}  ({low:{spec}}-{high:{spec}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3000, help="blocking calls per round")
    parser.add_argument("--reactor", help="the node's reactor (default: relay node's)")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)
        sys.stderr.write(f"  {name}: {value:.2f}\n")

    with tempfile.TemporaryDirectory(prefix="relaytx-client-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            echo_port, node_port = free_port(), free_port()
            echo = procs.start(
                "echo", [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--serve-echo",
                         str(echo_port)],
            )  # fmt: skip
            argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", "n0"]
            argv += ["--port", str(node_port), "--app", "examples/counter.py"]
            if args.reactor:
                argv += ["--reactor", args.reactor]
            node = procs.start("n0", argv)
            procs.wait_port(echo, echo_port)
            procs.wait_port(node, node_port)
            url = f"http://{HOST}:{node_port}"
            n, warmup, duration = args.inflight, args.warmup, args.duration
            for number in range(args.rounds):
                sys.stderr.write(f"round {number + 1} of {args.rounds}\n")
                echo_rate = ws_load(
                    echo_port, "/", n, warmup, duration, lambda k: INCREMENT % k, lambda a: True
                )["per_s"]
                note("echo-raw-client calls/s", echo_rate)
                raw = ws_load(
                    node_port,
                    "/ws/rpc",
                    n,
                    warmup,
                    duration,
                    lambda k: INCREMENT % k,
                    lambda a: b'"result"' in a,
                )["per_s"]
                note("raw-client /ws/rpc calls/s", raw)
                rate, cpu = asyncio.run(pipelined(url, n, warmup, duration))
                note("asyncio client calls/s", rate)
                note("asyncio client CPU us/call", cpu / rate * 1e6 if rate else 0)
                note("  ratio to echo-raw-client", rate / echo_rate)
                note("  ratio to raw /ws/rpc", rate / raw)
                p50, p99 = one_at_a_time(url, args.calls)
                note("blocking client p50 ms", p50)
                note("blocking client p99 ms", p99)
                note("relay call wall ms", relay_call(url, 5))
        finally:
            procs.stop_all()
    print(f"{args.rounds} rounds, {n} in flight, {os.cpu_count()} cores; median (min-max)")
    for name, values in figures.items():
        print(summary(name, values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
