#!/usr/bin/env python
"""
The relaytx benchmark: one command, one table.

    python benchmarks/run.py [--duration 2] [--passes 2] [--warmup 0.5]
                             [--inflight 1,50,64,100] [--reactor NAME] [--json]
                             [--targets local,direct,...] [--entries python,http,...]
                             [--no-ceilings] [--token TOKEN] [--trace]

C{--targets}, C{--entries} and C{--no-ceilings} restrict what it runs;
C{--token} gives the nodes an C{[http.tokens]} entry for TOKEN and has
every request carry it (the cost of the checks of SPEC section 10);
C{--trace} has every node trace every call into a C{jsonl} file of its own
(SPEC section 13; the files are removed at the end, after their spans are
counted).

It starts its own processes on 127.0.0.1 and measures, for each in-flight
level, calls/s with p50 and p99 latency:

  - the ceilings, in the same run (before and after the rest; the higher
    figure is kept, so a machine that runs faster for part of the run never
    flatters a ratio): a bare Autobahn WebSocket echo server
    driven by an Autobahn client (round trips on one connection, Autobahn at
    both ends as on a relaytx link) and by this script's lean raw client,
    and a bare twisted.web JSON-RPC resource (keep-alive HTTP, one request
    outstanding per connection);
  - relaytx on a line of four nodes n0 - n1 - n2 - n3 (C{relay node}
    subprocesses, counter app on each), calling C{counter_server.increment}
    from n0 on n0 (local), n1 (direct), n2 (two hops) and n3 (three hops):
      - C{python}: through C{node.call} inside n0 (C{benchmarks/bench_app.py}),
      - C{http}: one call per C{POST /rpc} (C{remote_call}),
      - C{http-batch}: batches of 50 calls per C{POST /rpc} (calls/s counts calls),
      - C{ws-rpc}: the persistent entry C{/ws/rpc}, pipelined on one connection.

The nodes run on C{relay node}'s default reactor, or on C{--reactor NAME}
(the names twistd's C{-r} takes: C{asyncio}, C{epoll}, ...).

Every figure is also given as a ratio to its ceiling: WebSocket-borne
entries (python, ws-rpc) to the echo round trips, HTTP ones to the bare
twisted.web rate at the same in-flight level. The C{step} column gives each
target's calls/s over those of the target a hop nearer, same entry and
level (direct over local, two-hop over direct, three-hop over two-hop):
those cells are measured one after the other, so that the machine's drift
in speed over a run falls between them as little as it can.

Every relaytx scenario is measured in C{--passes} passes (the second one
in reverse order) and keeps its best, as the ceilings do: a pass that a
burst of other work on the machine slowed down does not set a figure, and
the errors of every pass are counted. A progress line per scenario goes to
stderr. The load generators (L{benchmarks._loadgen}) run in this
process, which is otherwise idle while they do; the machine's two cores are
shared by everything, as they would be in production.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import _loadgen  # noqa: E402
from _loadgen import http_load, ws_load  # noqa: E402

HOST = "127.0.0.1"
BATCH = 50

#: Headers of the script's own requests to the nodes (a bearer token).
AUTH: dict[str, str] = {}


# The ceilings, each run in a process of its own.


def serve_echo(port: int) -> None:
    """A bare Autobahn WebSocket echo server."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(autoPingInterval=0)
    reactor.listenTCP(port, factory, backlog=1024, interface=HOST)
    reactor.run()


def echo_client(port: int, inflight: int, warmup: float, duration: float) -> None:
    """
    An Autobahn client keeping C{inflight} messages in flight to the echo
    server: Autobahn at both ends, as between two relaytx nodes. Prints the
    figures as one JSON line.
    """
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor

    perf = time.perf_counter
    message = b'{"jsonrpc":"2.0","method":"counter_server.increment","id":1}'
    latencies: list[float] = []
    sent: list[float] = []
    start = perf()
    measure_from, stop_at = start + warmup, start + warmup + duration

    class Client(WebSocketClientProtocol):
        def onOpen(self) -> None:
            for _ in range(inflight):
                sent.append(perf())
                self.sendMessage(message)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            now = perf()
            then = sent.pop(0)
            if then >= measure_from and now <= stop_at:
                latencies.append(now - then)
            if now < stop_at:
                sent.append(perf())
                self.sendMessage(message)
            elif not sent:
                reactor.stop()

    factory = WebSocketClientFactory(f"ws://{HOST}:{port}/")
    factory.protocol = Client
    factory.setProtocolOptions(autoPingInterval=0)
    reactor.connectTCP(HOST, port, factory)
    reactor.run()
    latencies.sort()
    count = len(latencies)
    print(
        json.dumps(
            {
                "requests": count,
                "errors": 0,
                "seconds": duration,
                "per_s": count / duration,
                "p50_ms": latencies[count // 2] * 1000 if count else None,
                "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else None,
            }
        )
    )


def serve_bare_web(port: int) -> None:
    """A bare twisted.web resource answering the same JSON-RPC request."""
    import orjson
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class BareRpc(Resource):
        isLeaf = True
        count = 0

        def render_POST(self, request: Any) -> bytes:
            call = orjson.loads(request.content.read())
            BareRpc.count += 1
            request.setHeader(b"content-type", b"application/json")
            return orjson.dumps({"jsonrpc": "2.0", "result": BareRpc.count, "id": call["id"]})

    class QuietSite(Site):
        def log(self, request: Any) -> None:  # relaytx keeps no access log either
            pass

    site = QuietSite(BareRpc())
    site.displayTracebacks = False
    reactor.listenTCP(port, site, backlog=1024, interface=HOST)  # as relaytx listens
    reactor.run()


# Process handling.


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Processes:
    """Children started by this script, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # closed with the process
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(child)
        return child

    def wait_port(self, child: subprocess.Popen[bytes], port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"child {child.args} exited with {child.returncode}")
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {port} after {timeout}s")

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()


def post(port: int, body: Any, timeout: float = 120) -> Any:
    import http.client

    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    connection.request(
        "POST", "/rpc", json.dumps(body), {"Content-Type": "application/json", **AUTH}
    )
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def wait_routes(port: int, destinations: list[str], timeout: float = 30) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(HOST, port, timeout=5)
        connection.request("GET", "/registry/routes", headers=AUTH)
        routes = json.loads(connection.getresponse().read())
        connection.close()
        if all(d in routes for d in destinations):
            return
        time.sleep(0.1)
    raise RuntimeError(f"routes to {destinations} did not appear in {timeout}s")


def wait_drained(port: int, timeout: float = 60) -> None:
    """
    Wait until the entry node waits on no call and its mailboxes are empty:
    a load generator stops at its deadline, but the calls it has sent go on
    being answered, and that work must not eat into the next scenario.
    """
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(HOST, port, timeout=5)
        connection.request("GET", "/metrics", headers=AUTH)
        text = connection.getresponse().read().decode()
        connection.close()
        busy = [
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("relaytx_pending_calls ", "relaytx_mailbox_depth "))
        ]
        if busy and not any(busy):
            return
        time.sleep(0.05)
    raise RuntimeError(f"calls still pending on port {port} after {timeout}s")


# Bodies and checks.


def single_call(target: str | None) -> Any:
    if target is None:
        return lambda k: b'{"jsonrpc":"2.0","method":"counter_server.increment","id":%d}' % k
    prefix = (
        b'{"jsonrpc":"2.0","method":"remote_call","params":{"node_id":"'
        + target.encode()
        + b'","server_name":"counter_server","method":"increment"},"id":'
    )
    return lambda k: b"%s%d}" % (prefix, k)


def batch_call(target: str | None) -> Any:
    one = single_call(target)
    return lambda k: b"[" + b",".join(one(k * BATCH + i) for i in range(BATCH)) + b"]"


def ok(answer: bytes) -> bool:
    return b'"result"' in answer and b'"error"' not in answer


# The run.


def progress(text: str) -> None:
    sys.stderr.write(f"  {text}\n")
    sys.stderr.flush()


def measure_ceilings(
    procs: Processes, levels: list[int], args: argparse.Namespace, when: str
) -> list[dict[str, Any]]:
    """
    The ceilings at each in-flight level. They are measured before and
    after the relaytx scenarios and the higher figure of the two is kept,
    so that a machine running faster for part of the run never flatters a
    ratio.
    """
    rows: list[dict[str, Any]] = []
    echo_port, web_port = free_port(), free_port()
    echo = procs.start("echo", [sys.executable, __file__, "--serve-echo", str(echo_port)])
    web = procs.start("web", [sys.executable, __file__, "--serve-web", str(web_port)])
    procs.wait_port(echo, echo_port)
    procs.wait_port(web, web_port)
    message = b'{"jsonrpc":"2.0","method":"counter_server.increment","id":1}'
    for n in levels:
        progress(f"ceiling ({when}): autobahn echo (Autobahn client), {n} in flight")
        client = subprocess.run(
            [sys.executable, __file__, "--echo-client", str(echo_port), str(n),
             str(args.warmup), str(args.duration)],
            capture_output=True, text=True, timeout=args.warmup + args.duration + 60,
        )  # fmt: skip
        result = json.loads(client.stdout.strip().splitlines()[-1])
        rows.append({"target": "ceiling", "entry": "autobahn-echo", "inflight": n, **result})
        progress(f"ceiling ({when}): autobahn echo (lean raw client), {n} in flight")
        result = ws_load(
            echo_port, "/", n, args.warmup, args.duration, lambda k: message, lambda a: True
        )
        rows.append({"target": "ceiling", "entry": "echo-raw-client", "inflight": n, **result})
        progress(f"ceiling ({when}): bare twisted.web, {n} in flight")
        result = http_load(web_port, n, args.warmup, args.duration, single_call(None), ok)
        rows.append({"target": "ceiling", "entry": "twisted.web", "inflight": n, **result})
    procs.stop_all()
    return rows


TARGETS = ["local", "direct", "two-hop", "three-hop"]
ENTRIES = ["python", "http", "http-batch", "ws-rpc"]


def measure_cell(
    port: int,
    label: str,
    target: str | None,
    entry: str,
    n: int,
    args: argparse.Namespace,
    pids: list[int] = [],  # noqa: B006  # read only
) -> dict[str, Any]:
    """
    Calls from the entry node (on C{port}) to C{target} (C{None}: itself)
    through C{entry}, with C{n} in flight: one row of the table, with the
    CPU the nodes C{pids} used per call.
    """
    row: dict[str, Any] = {"target": label, "entry": entry, "inflight": n}
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    measure_entry(row, port, label, target, entry, n, args)
    # The nodes' CPU per call (warm-up included, at the measured rate): a
    # figure that other work on the machine moves far less than calls/s.
    spent = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    calls = row["per_s"] * (args.duration + args.warmup)
    row["cpu_us"] = spent / calls * 1e6 if calls else None
    return row


def cpu_seconds(pid: int) -> float:
    """:returns: the CPU time (user and system) process C{pid} has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_entry(
    row: dict[str, Any],
    port: int,
    label: str,
    target: str | None,
    entry: str,
    n: int,
    args: argparse.Namespace,
) -> None:
    """Fill C{row} with the figures of one scenario."""
    if entry == "python":
        progress(f"{label}: python API, {n} in flight")
        params = [target, "counter_server", "increment", n, args.duration, args.warmup]
        stats = post(port, {"jsonrpc": "2.0", "id": 1, "method": "bench.run", "params": params})
        stats = stats["result"]
        row.update(
            requests=stats["calls"],
            errors=stats["errors"],
            seconds=stats["seconds"],
            per_s=stats["calls_per_s"],
            p50_ms=stats["p50_ms"],
            p99_ms=stats["p99_ms"],
        )
    elif entry == "http":
        progress(f"{label}: HTTP /rpc, {n} in flight")
        row.update(http_load(port, n, args.warmup, args.duration, single_call(target), ok))
    elif entry == "http-batch":
        progress(f"{label}: HTTP /rpc batches of {BATCH}, {n} in flight")
        row.update(http_load(port, n, args.warmup, args.duration, batch_call(target), ok))
        row["per_s"] *= BATCH  # calls, not requests
    else:
        progress(f"{label}: /ws/rpc, {n} in flight")
        row.update(ws_load(port, "/ws/rpc", n, args.warmup, args.duration, single_call(target), ok))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    levels = [int(x) for x in args.inflight.split(",")]
    with tempfile.TemporaryDirectory(prefix="relaytx-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            ceiling_rows = (
                [] if args.no_ceilings else measure_ceilings(procs, levels, args, "before")
            )
            ports = [free_port() for _ in range(4)]
            nodes = []
            for i, port in enumerate(ports):
                argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", f"n{i}"]
                argv += ["--port", str(port)]
                settings = ""
                if args.token:
                    digest = hashlib.sha256(args.token.encode()).hexdigest()
                    settings += f'[http.tokens]\nbench = "{digest}"\n'
                if args.trace:
                    spans = Path(tmp) / f"n{i}.jsonl"
                    settings += f'[tracing]\nexporter = "jsonl"\npath = "{spans}"\n'
                if settings:
                    config = Path(tmp) / f"n{i}.toml"
                    config.write_text(settings)
                    argv += ["--config", str(config)]
                if args.reactor:
                    argv += ["--reactor", args.reactor]
                app = "benchmarks/bench_app.py" if i == 0 else "examples/counter.py"
                argv += ["--app", app]
                if i:
                    argv += ["--add-peer", f"ws://{HOST}:{ports[i - 1]}"]
                nodes.append(procs.start(f"n{i}", argv))
            for child, port in zip(nodes, ports, strict=True):
                procs.wait_port(child, port)
            wait_routes(ports[0], ["n1", "n2", "n3"])
            # Cells that a ratio between targets compares (same entry, same
            # level) are measured one after the other, so that the machine's
            # drift in speed over a run falls between them as little as it
            # can. Each later pass goes the other way round; a cell keeps
            # its best pass (and every pass's errors), as the ceilings do.
            targets = args.targets.split(",")
            entries = args.entries.split(",")
            cells = [
                (n, entry, label)
                for n in levels
                for entry in ENTRIES
                for label in TARGETS
                if entry in entries and label in targets
            ]
            best: dict[tuple[int, str, str], dict[str, Any]] = {}
            for number in range(args.passes):
                progress(f"pass {number + 1} of {args.passes}")
                for cell in cells if number % 2 == 0 else cells[::-1]:
                    n, entry, label = cell
                    distance = TARGETS.index(label)
                    target = None if distance == 0 else f"n{distance}"
                    pids = [child.pid for child in nodes[: distance + 1]]
                    row = measure_cell(ports[0], label, target, entry, n, args, pids)
                    wait_drained(ports[0])
                    kept = best.setdefault(cell, row)
                    if kept is not row:
                        errors = kept["errors"] + row["errors"]
                        if row["per_s"] > kept["per_s"]:
                            best[cell] = kept = row
                        kept["errors"] = errors
            rows = list(best.values())
            rows.sort(
                key=lambda row: (
                    TARGETS.index(row["target"]),
                    levels.index(row["inflight"]),
                    ENTRIES.index(row["entry"]),
                )
            )
            procs.stop_all()
            if not args.no_ceilings:
                ceiling_rows = [
                    max(first, again, key=lambda row: row["per_s"])
                    for first, again in zip(
                        ceiling_rows, measure_ceilings(procs, levels, args, "after"), strict=True
                    )
                ]
        finally:
            procs.stop_all()
            if args.trace:
                counts = []
                for i in range(4):
                    spans = Path(tmp) / f"n{i}.jsonl"
                    lines = spans.read_bytes().count(b"\n") if spans.exists() else 0
                    counts.append(f"n{i} {lines}")
                print("spans written: " + ", ".join(counts), file=sys.stderr)
    rows[:0] = ceiling_rows
    ceilings = {
        (row["entry"], row["inflight"]): row["per_s"] for row in rows if row["target"] == "ceiling"
    }
    for row in rows:
        if row["target"] == "ceiling":
            continue
        # Like with like: HTTP entries against twisted.web; the Python API
        # (Autobahn at both ends of each hop) against an Autobahn client and
        # server; /ws/rpc (driven by the lean client) against the same client.
        bases = {"http": "twisted.web", "http-batch": "twisted.web", "python": "autobahn-echo"}
        basis = bases.get(row["entry"], "echo-raw-client")
        ceiling = ceilings.get((basis, row["inflight"]))
        row["ratio"] = row["per_s"] / ceiling if ceiling else None
        row["ratio_to"] = basis
    # Each target against the one a hop nearer, same entry and level.
    rates = {(row["target"], row["entry"], row["inflight"]): row["per_s"] for row in rows}
    for row in rows:
        if row["target"] in TARGETS[1:]:
            nearer = TARGETS[TARGETS.index(row["target"]) - 1]
            base = rates.get((nearer, row["entry"], row["inflight"]))
            row["step"] = row["per_s"] / base if base else None
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"{'target':<10} {'entry':<14} {'in flight':>9} {'calls/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'ratio':>6}  {'(to)':<15} {'step':>5} {'cpu us':>6} errors",
    ]
    for row in rows:
        lines.append(
            f"{row['target']:<10} {row['entry']:<14} {row['inflight']:>9} "
            f"{num(row['per_s'], '9.0f')} {num(row['p50_ms'], '8.3f')} "
            f"{num(row['p99_ms'], '8.3f')} {num(row.get('ratio'), '6.2f')}  "
            f"{row.get('ratio_to', ''):<15} {num(row.get('step'), '5.2f')} "
            f"{num(row.get('cpu_us'), '6.1f')} {row['errors']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per scenario")
    parser.add_argument(
        "--passes", type=int, default=2, help="measurements of each scenario; the best is kept"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument(
        "--inflight", default="1,50,64,100", help="comma-separated in-flight levels"
    )
    parser.add_argument(
        "--reactor", help="the nodes' reactor, as twistd's -r names it (default: relay node's)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated targets to measure"
    )
    parser.add_argument(
        "--entries", default=",".join(ENTRIES), help="comma-separated entries to measure"
    )
    parser.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    parser.add_argument(
        "--token", help="configure this bearer token on the nodes and send it with every request"
    )
    parser.add_argument(
        "--trace", action="store_true", help="have every node trace every call (jsonl files)"
    )
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-web", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo-client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_client:
        port, inflight, warmup, duration = args.echo_client
        echo_client(int(port), int(inflight), float(warmup), float(duration))
        return 0
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    if args.serve_web:
        serve_bare_web(args.serve_web)
        return 0
    if args.token:
        AUTH["Authorization"] = f"Bearer {args.token}"
        _loadgen.EXTRA_HEADERS = f"Authorization: Bearer {args.token}\r\n"
    unknown = set(args.targets.split(",")) - set(TARGETS) | set(args.entries.split(",")) - set(
        ENTRIES
    )
    if unknown:
        parser.error(f"unknown target or entry: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    rows = measure(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows))
        print(f"({time.monotonic() - started:.0f} s, {os.cpu_count()} cores)")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
