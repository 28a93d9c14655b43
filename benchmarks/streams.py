#!/usr/bin/env python
"""
Streams and cancellation (SPEC section 12), measured on a line of three
C{relay node} processes n0 - n1 - n2 on 127.0.0.1, each with
C{benchmarks/bench_app.py}, driven from inside n0 through its Python API:

    python benchmarks/streams.py [--duration 2] [--passes 2] [--soak 0]

  - C{calls/s}: C{node.call} of C{counter_server.increment} on n1 with 64
    in flight (as C{run.py}'s python entry, direct);
  - C{items/s}: small items (ints) read through C{node.stream} from a
    generator without end on n1 (direct) and on n2 (two hops), window 64;
  - each pass measures the three one after the other (the second pass in
    reverse order) and each figure keeps its best pass, so the ratios
    compare figures of the same run;
  - the cancel round trip: from C{cancel()} of a call running on n2 to
    that call's method seeing C{CancelledError} (200 samples, p50 and p99;
    both ends read the system-wide monotonic clock);
  - with C{--soak SECONDS}: a consumer in n0 reading 20 items/s from n2's
    generator for that long, with the resident memory of each node every
    5 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HOST, Processes, free_port, post, wait_routes


def rss_kib(pid: int) -> int:
    """:returns: the resident memory of process C{pid}, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def call(port: int, method: str, *params: Any) -> Any:
    answer = post(port, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of the slow consumer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="relaytx-streams-") as tmp:
        procs = Processes(Path(tmp))
        try:
            ports = [free_port() for _ in range(3)]
            nodes = []
            for i, port in enumerate(ports):
                argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", f"n{i}"]
                argv += ["--port", str(port), "--app", "benchmarks/bench_app.py"]
                if i:
                    argv += ["--add-peer", f"ws://{HOST}:{ports[i - 1]}"]
                nodes.append(procs.start(f"n{i}", argv))
            for child, port in zip(nodes, ports, strict=True):
                procs.wait_port(child, port)
            wait_routes(ports[0], ["n1", "n2"])
            cells = ["calls", "direct", "two_hop"]
            best: dict[str, float] = {}
            d, w = args.duration, args.warmup
            for number in range(args.passes):
                for cell in cells if number % 2 == 0 else cells[::-1]:
                    if cell == "calls":
                        stats = call(
                            ports[0], "bench.run", "n1", "counter_server", "increment", 64, d, w
                        )
                        rate = stats["calls_per_s"]
                    else:
                        target = "n1" if cell == "direct" else "n2"
                        rate = call(ports[0], "streams.stream_run", target, d, w)["items_per_s"]
                    print(f"pass {number + 1}: {cell} {rate:,.0f}/s", file=sys.stderr)
                    best[cell] = max(best.get(cell, 0.0), rate)
            report.update(best)
            report["direct_over_calls"] = best["direct"] / best["calls"]
            report["two_hop_over_calls"] = best["two_hop"] / best["calls"]
            report["cancel_two_hops"] = call(ports[0], "streams.cancel_run", "n2", 200)
            if args.soak:
                samples: list[list[int]] = []
                stop = threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        samples.append([rss_kib(child.pid) for child in nodes])
                        stop.wait(5.0)

                sampler = threading.Thread(target=sample)
                sampler.start()
                started = time.monotonic()
                made_before = call(ports[2], "source.made_count")
                try:
                    body = {
                        "server_name": "streams",
                        "method": "slow_read",
                        "args": ["n2", args.soak, 20.0],
                        "timeout": args.soak + 60,
                    }
                    answer = post(
                        ports[0],
                        {"jsonrpc": "2.0", "id": 1, "method": "remote_call", "params": body},
                        timeout=args.soak + 90,
                    )
                    read = answer["result"]
                finally:
                    stop.set()
                    sampler.join()
                report["soak"] = {
                    "seconds": round(time.monotonic() - started, 1),
                    "items_read": read["items"],
                    "items_made": call(ports[2], "source.made_count") - made_before,
                    "rss_kib": {f"n{i}": [s[i] for s in samples] for i in range(3)},
                }
        finally:
            procs.stop_all()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"calls/s (python, direct, 64 in flight): {report['calls']:,.0f}")
    print(
        f"items/s direct: {report['direct']:,.0f} ({report['direct_over_calls']:.2f}x calls/s);"
        f" two hops: {report['two_hop']:,.0f} ({report['two_hop_over_calls']:.2f}x)"
    )
    cancel = report["cancel_two_hops"]
    print(
        f"cancel round trip, two hops: p50 {cancel['p50_ms']:.3f} ms,"
        f" p99 {cancel['p99_ms']:.3f} ms ({cancel['samples']} samples)"
    )
    if "soak" in report:
        soak = report["soak"]
        print(
            f"soak: {soak['seconds']} s, {soak['items_read']} items read,"
            f" {soak['items_made']} made at n2"
        )
        for name, series in soak["rss_kib"].items():
            print(f"  {name} RSS KiB every 5 s: {series}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
