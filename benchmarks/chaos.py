#!/usr/bin/env python
"""
The relaytx chaos run: six nodes in network namespaces, faults, one line per
fault. Not a test: a measurement of what faults cost the mesh, run as root
(it makes network namespaces) from the repository root::

    python benchmarks/chaos.py [--faults kill9,cable,partition,proxy,sigstop,rolling]
                               [--rate 40] [--before 10] [--hold 10] [--after 15]
                               [--timeout 5] [--json] [--keep]
    python benchmarks/chaos.py --soak 600 [--sample 30]

The mesh: six namespaces C{n0}..C{n5}, a ring plus the chord n0-n3, each
link a veth pair of its own /30; one C{relay node} process per namespace
(listening on 0.0.0.0:8080 there, C{--app} a sink that records every call
it runs), the lower-numbered end of each link dialling the other across
it. The link n1-n2 goes through a userspace TCP proxy in n1 (n1 dials the
proxy on its loopback) which can delay and stall what it carries.

The load: one agent per namespace, inside it, calling its own node on
127.0.0.1 (C{remote_call} to a random other node's C{sink.hit}, with a
unique call id and the C{--timeout} budget), C{--rate} calls per second
in all; each agent also polls its node's C{/registry/peers} (every 50 ms)
and C{/registry/routes} (every 100 ms). Each sink appends the id of every
call it runs to a file, with one write per call, so a node killed with
SIGKILL keeps its record. All traffic stays inside the namespaces this
script makes, sent from inside them; the script itself only starts
processes, changes links, sends signals and reads files.

Each fault is a phase of its own on a fresh mesh: C{--before} seconds of
load, the fault, C{--hold} seconds, the repair, C{--after} seconds. The
faults:

  - C{kill9}: SIGKILL n2, restarted after the hold;
  - C{cable}: the veth of link n2-n3 set down at n2 (no FIN, no RST: both
    ends lose carrier), up again after the hold;
  - C{partition}: every link between {n0,n1,n2} and {n3,n4,n5} down, then up;
  - C{proxy}: the proxy on n1-n2 delays what it carries by 200 +/- 100 ms
    each way, with a 0.6 s stall every 3 s, for the hold (a slow link: it
    must not be taken for a dead one);
  - C{sigstop}: SIGSTOP n4, SIGCONT after the hold;
  - C{rolling}: each node in turn stopped (SIGTERM) and started again, once
    it and its neighbours have their links back.

Per fault, one line: calls made (and apart, those whose own entry node
was down, frozen or restarting while they were out, and how many of those
ran: the mesh cannot answer for them), ok, errors by code, duplicates
(calls run twice), calls that ran but whose caller got anything other than
success or -32006, calls that failed only at their deadline, detection
(fault to the first and the last neighbour dropping the link(s)),
re-route (from the first detection until every live node's table has
converged on the graph without the failed part: every reachable node, on
paths that exist), heal (repair to the full graph's tables again),
spurious drops (links dropped that the fault did not touch), and the
machine's stalls the agents saw (a 50 ms sleep overrunning by more than a
quarter of a second: the nodes share the machine with them).

C{--soak S}: one mesh under steady load for S seconds and no faults; every
C{--sample} seconds the RSS and open fds of each node are sampled and
printed, then the series.

Every namespace, link and process is removed at the end, also on SIGINT,
SIGTERM or an error (C{--keep} keeps the logs, in a temporary directory it
names).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = 6
PORT = 8080
PROXY_PORT = 9001
EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5), (0, 3)]
PROXIED = (1, 2)
FAULTS = ["kill9", "cable", "partition", "proxy", "sigstop", "rolling"]

SINK_APP = """
import os
from twisted.internet import reactor
from twisted.internet.task import deferLater
from relaytx import Server, exposed


class Sink(Server):
    def __init__(self, path):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @exposed
    def hit(self, call_id, work_ms=0):
        os.write(self._fd, (call_id + "\\n").encode())  # one write: kept through SIGKILL
        if work_ms:
            return deferLater(reactor, work_ms / 1000.0, lambda: call_id)
        return call_id


def setup(node):
    node.expose("sink", Sink(os.environ["CHAOS_SINK"]))
"""


# Inside a namespace: the agent (load and polling) and the proxy.


class EntryDown(Exception):
    """The node on this namespace's loopback took no connection."""


async def _http(method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, Any]:
    """
    One HTTP request to the node on this namespace's loopback.

    :raises EntryDown: if it takes no connection within 2 s.
    :raises TimeoutError: if its answer has not come within C{timeout}.
    """
    try:
        connecting = asyncio.open_connection("127.0.0.1", PORT)
        reader, writer = await asyncio.wait_for(connecting, 2.0)
    except (TimeoutError, OSError) as e:
        raise EntryDown(str(e)) from None
    try:
        # HTTP/1.0: the answer comes whole (never chunked), then the close.
        head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    return status, json.loads(payload) if payload else None


async def _agent(args: argparse.Namespace) -> None:
    out = open(args.out, "a", buffering=1)
    me = args.node
    others = [f"n{i}" for i in range(NODES) if f"n{i}" != me]
    stop_at = time.monotonic() + args.duration
    rng = random.Random(f"{me}-{args.seed}")
    tasks: set[asyncio.Task[None]] = set()
    done = asyncio.Event()  # SIGUSR1: the phase is over; finish the calls in flight

    def finish() -> None:
        nonlocal stop_at
        stop_at = time.monotonic()
        done.set()

    go = asyncio.Event()  # SIGUSR2: the mesh is up; start the load
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, finish)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, go.set)

    async def pause(seconds: float) -> None:
        try:
            await asyncio.wait_for(done.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    def record(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"k": kind, **fields}) + "\n")

    async def one_call(call_id: str, target: str) -> None:
        params = {
            "node_id": target,
            "server_name": "sink",
            "method": "hit",
            "args": [call_id, rng.randint(0, 20)],
            "timeout": args.timeout,
        }
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "remote_call", "params": params})
        sent = time.monotonic()
        try:
            _, answer = await _http("POST", "/rpc", body.encode(), args.timeout + 3)
        except EntryDown:
            outcome: Any = "entry_down"
        except TimeoutError:  # (an OSError too: caught first)
            outcome = "no_answer"
        except OSError:  # the entry node went away with the call
            outcome = "entry_lost"
        except (ValueError, IndexError):
            outcome = "bad_answer"
        else:
            if answer is None:
                outcome = "bad_answer"
            elif "error" in answer:
                outcome = answer["error"]["code"]
            else:
                outcome = "ok"
        record("call", id=call_id, src=me, dst=target, t0=sent, t1=time.monotonic(), out=outcome)

    async def load() -> None:
        await asyncio.wait([asyncio.ensure_future(go.wait()), asyncio.ensure_future(done.wait())],
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        interval = 1.0 / args.rate if args.rate > 0 else None
        seq = 0
        next_at = time.monotonic()
        while interval is not None and time.monotonic() < stop_at:
            seq += 1
            task = asyncio.ensure_future(one_call(f"{me}-{args.seed}-{seq}", rng.choice(others)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval * rng.uniform(0.5, 1.5)
            await pause(next_at - time.monotonic())

    async def poll(path: str, kind: str, every: float) -> None:
        last: Any = object()
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                _, answer = await _http("GET", path, None, 2.0)
                if kind == "peers":
                    view: Any = sorted(answer)
                else:
                    view = {dest: [me, *route.get("path", [route["next_hop"]])]
                            for dest, route in answer.items()}  # fmt: skip
            except (EntryDown, OSError, ValueError, IndexError):
                view = None
            if view != last:
                record(kind, t=started, view=view)
                last = view
            await pause(every - (time.monotonic() - started))

    async def stalls() -> None:
        # This process's own stalls (the machine's, as the nodes share it):
        # a 50 ms sleep that takes a quarter of a second longer is recorded.
        while time.monotonic() < stop_at:
            before = time.monotonic()
            await pause(0.05)
            late = time.monotonic() - before - 0.05
            if late > 0.25:
                record("stall", t=before, late=late)

    await asyncio.gather(
        load(),
        poll("/registry/peers", "peers", 0.05),
        poll("/registry/routes", "routes", 0.1),
        stalls(),
    )
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    out.close()


async def _proxy(args: argparse.Namespace) -> None:
    state = {"slow": False}
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: state.update(slow=True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: state.update(slow=False))
    rng = random.Random(args.seed)

    def stalled(now: float) -> bool:
        return state["slow"] and now % 3.0 < 0.6

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        more = asyncio.Event()
        released = 0.0

        async def deliver() -> None:
            while True:
                while not queue:
                    more.clear()
                    await more.wait()
                at, chunk = queue[0]
                now = time.monotonic()
                if at > now or stalled(now):
                    await asyncio.sleep(max(at - now, 0.01))
                    continue
                queue.popleft()
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                delay = 0.2 + rng.uniform(-0.1, 0.1) if state["slow"] else 0.0
                released = max(released, time.monotonic() + delay)  # order kept
                queue.append((released, chunk))
                more.set()
                if not chunk:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()
            writer.close()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(args.target, PORT)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(accepted, "127.0.0.1", PROXY_PORT)
    async with server:
        await server.serve_forever()


# The driver, in the root namespace.


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


class Mesh:
    """The namespaces, links and processes of one run; C{close} removes them all."""

    def __init__(self, tag: str, directory: str, subnet: int) -> None:
        self.tag = tag
        self.dir = directory
        self.subnet = subnet
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.node_argv: dict[int, list[str]] = {}
        self.veth: dict[tuple[int, int], tuple[str, str]] = {}
        self.address: dict[tuple[int, int], str] = {}
        self.app = os.path.join(directory, "chaos_sink.py")
        with open(self.app, "w") as f:
            f.write(SINK_APP)

    def ns(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def build(self) -> None:
        for i in range(NODES):
            name = self.ns(i)
            run("ip", "netns", "add", name)
            self.namespaces.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        for k, (i, j) in enumerate(EDGES):
            a, b = f"{self.tag}{i}{j}a", f"{self.tag}{i}{j}b"
            run("ip", "link", "add", a, "netns", self.ns(i),
                "type", "veth", "peer", "name", b, "netns", self.ns(j))  # fmt: skip
            base = f"10.{self.subnet}.{k}"
            for ns, dev, host in ((self.ns(i), a, 1), (self.ns(j), b, 2)):
                run("ip", "-n", ns, "addr", "add", f"{base}.{host}/30", "dev", dev)
                run("ip", "-n", ns, "link", "set", dev, "up")
            self.veth[(i, j)] = (a, b)
            self.address[(i, j)] = f"{base}.2"

    def set_link(self, edge: tuple[int, int], up: bool) -> None:
        i, _ = edge
        run("ip", "-n", self.ns(i), "link", "set", self.veth[edge][0], "up" if up else "down")

    def spawn(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
        log.close()

    def start_node(self, i: int) -> None:
        argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", f"n{i}"]
        argv += ["--port", str(PORT), "--interface", "0.0.0.0", "--app", self.app]
        for a, b in EDGES:
            if a == i:  # the lower end dials, across the link (or through the proxy)
                peer = (
                    f"127.0.0.1:{PROXY_PORT}"
                    if (a, b) == PROXIED
                    else f"{self.address[(a, b)]}:{PORT}"
                )
                argv += ["--add-peer", f"ws://{peer}"]
        sink = os.path.join(self.dir, f"sink-n{i}.txt")
        self.spawn(f"n{i}", self.ns(i), argv, {"CHAOS_SINK": sink})

    def start(self) -> None:
        i, j = PROXIED
        self.spawn("proxy", self.ns(i), [sys.executable, __file__, "--proxy",
                   "--target", self.address[(i, j)]])  # fmt: skip
        for i in range(NODES):
            self.start_node(i)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)  # a stopped process takes no SIGKILL late
                    proc.kill()
                    proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


def read_lines(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def neighbours(edges: Iterable[tuple[int, int]], i: int) -> set[int]:
    return {b if a == i else a for a, b in edges if i in (a, b)}


def distances(edges: set[tuple[int, int]], start: int, alive: set[int]) -> dict[str, int]:
    """:returns: the hop count from C{start} to each node it can reach over C{edges}."""
    seen = {start: 0}
    frontier = [start]
    while frontier:
        after = []
        for x in frontier:
            for y in neighbours(edges, x):
                if y in alive and y not in seen:
                    seen[y] = seen[x] + 1
                    after.append(y)
        frontier = after
    return {f"n{y}": d for y, d in seen.items() if y != start}


def table_ok(
    view: Any, me: int, edges: set[tuple[int, int]], alive: set[int], shortest: bool
) -> bool:
    """
    Whether a routing table covers exactly the nodes C{me} can reach over
    C{edges}, on paths that exist there (and, if C{shortest}, as short as
    they can be).
    """
    reach = distances(edges, me, alive)
    if view is None or set(view) != set(reach):
        return False
    links = {(f"n{a}", f"n{b}") for a, b in edges} | {(f"n{b}", f"n{a}") for a, b in edges}
    for dest, path in view.items():
        if not all(hop in links for hop in itertools.pairwise(path)):
            return False
        if shortest and len(path) - 1 != reach[dest]:
            return False
    return True


def converged_at(
    snapshots: dict[int, list[tuple[float, Any]]],
    since: float,
    edges: set[tuple[int, int]],
    alive: set[int],
    shortest: bool = False,
) -> float | None:
    """:returns: the first time after C{since} by which every live node's table fits."""
    worst = since
    for i in alive:
        history = snapshots.get(i, [])
        current = None
        for t, view in history:
            if t <= since:
                current = view
        when = since if table_ok(current, i, edges, alive, shortest) else None
        if when is None:
            for t, view in history:
                if t > since and table_ok(view, i, edges, alive, shortest):
                    when = t
                    break
        if when is None:
            return None
        worst = max(worst, when)
    return worst


def drops(peer_snapshots: dict[int, list[tuple[float, Any]]]) -> list[tuple[float, int, str]]:
    """:returns: every (time, node, peer) at which a node's peer list lost a peer."""
    lost = []
    for i, history in peer_snapshots.items():
        previous: set[str] | None = None
        for t, view in history:
            if view is None:
                continue  # the node itself was down or frozen
            now = set(view)
            if previous is not None:
                lost += [(t, i, p) for p in previous - now]
            previous = now
    return sorted(lost)


class Phase:
    """One fault's run: fresh mesh, load, the fault, the repair, the figures."""

    def __init__(self, args: argparse.Namespace, fault: str, number: int) -> None:
        self.args = args
        self.fault = fault
        self.dir = tempfile.mkdtemp(prefix=f"relaytx-chaos-{fault}-")
        self.mesh = Mesh(f"cx{os.getpid() % 1000}{number}", self.dir, 232)
        self.events: list[tuple[str, float, Any]] = []

    def agents(self, duration: float) -> None:
        per_node = self.args.rate / NODES
        for i in range(NODES):
            out = os.path.join(self.dir, f"agent-n{i}.jsonl")
            argv = [sys.executable, __file__, "--agent", "--node", f"n{i}", "--rate", str(per_node),
                    "--duration", str(duration), "--timeout", str(self.args.timeout),
                    "--seed", self.fault, "--out", out]  # fmt: skip
            self.mesh.spawn(f"agent-n{i}", self.mesh.ns(i), argv)

    def snapshots(self, kind: str) -> dict[int, list[tuple[float, Any]]]:
        out: dict[int, list[tuple[float, Any]]] = {}
        for i in range(NODES):
            for rec in read_lines(os.path.join(self.dir, f"agent-n{i}.jsonl")):
                if rec["k"] == kind:
                    out.setdefault(i, []).append((rec["t"], rec["view"]))
        return out

    def wait_linked(self, nodes: Iterable[int], limit: float) -> bool:
        """Wait until each of C{nodes} has all its links (seen by its agent)."""
        deadline = time.monotonic() + limit
        want = {i: {f"n{j}" for j in neighbours(EDGES, i)} for i in nodes}
        while time.monotonic() < deadline:
            peers = self.snapshots("peers")
            if all(peers.get(i) and set(peers[i][-1][1] or ()) == want[i] for i in want):
                return True
            time.sleep(0.2)
        return False

    def run(self) -> dict[str, Any]:
        a = self.args
        mesh = self.mesh
        mesh.build()
        mesh.start()
        hold = a.hold
        duration = a.before + hold + a.after
        if self.fault == "rolling":
            duration = a.before + NODES * 25 + a.after
        self.agents(duration + 5)
        if not self.wait_linked(range(NODES), 30):
            raise RuntimeError(f"the mesh did not link up (logs in {self.dir})")
        self.signal_agents(signal.SIGUSR2)
        started = time.monotonic()
        time.sleep(a.before)
        fault = self.fault
        failed_edges: set[tuple[int, int]] = set()
        dead: set[int] = set()
        at = time.monotonic()
        if fault == "kill9":
            dead = {2}
            mesh.stop("n2", signal.SIGKILL)
        elif fault == "cable":
            failed_edges = {(2, 3)}
            mesh.set_link((2, 3), up=False)
        elif fault == "partition":
            failed_edges = {(i, j) for i, j in EDGES if (i < 3) != (j < 3)}
            for edge in failed_edges:
                mesh.set_link(edge, up=False)
        elif fault == "proxy":
            os.kill(mesh.pid("proxy"), signal.SIGUSR1)
        elif fault == "sigstop":
            dead = {4}
            os.kill(mesh.pid("n4"), signal.SIGSTOP)
        self.events.append(("fault", at, None))
        if fault == "rolling":
            return self.rolling(started)
        time.sleep(hold)
        repaired = time.monotonic()
        if fault == "kill9":
            mesh.start_node(2)
        elif fault in ("cable", "partition"):
            for edge in failed_edges:
                mesh.set_link(edge, up=True)
        elif fault == "proxy":
            os.kill(mesh.pid("proxy"), signal.SIGUSR2)
        elif fault == "sigstop":
            os.kill(mesh.pid("n4"), signal.SIGCONT)
        time.sleep(a.after)
        self.wait_agents(time.monotonic())
        return self.figures(at, repaired, failed_edges, dead)

    def rolling(self, started: float) -> dict[str, Any]:
        mesh = self.mesh
        restarts = []
        for i in range(NODES):
            at = time.monotonic()
            mesh.stop(f"n{i}")
            mesh.start_node(i)
            linked = self.wait_linked([i, *neighbours(EDGES, i)], 20)
            restarts.append((i, at, time.monotonic(), linked))
            time.sleep(2)
        time.sleep(self.args.after)
        self.wait_agents(time.monotonic())
        return self.figures(restarts[0][1], restarts[-1][2], set(), set(), restarts)

    def signal_agents(self, sig: int) -> None:
        for i in range(NODES):
            proc = self.mesh.procs.get(f"agent-n{i}")
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def wait_agents(self, until: float) -> None:
        self.signal_agents(signal.SIGUSR1)
        for i in range(NODES):
            proc = self.mesh.procs.get(f"agent-n{i}")
            if proc is not None:
                try:
                    proc.wait(max(1.0, until - time.monotonic()) + self.args.timeout + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def figures(
        self,
        at: float,
        repaired: float,
        failed_edges: set[tuple[int, int]],
        dead: set[int],
        restarts: list[tuple[int, float, float, bool]] | None = None,
    ) -> dict[str, Any]:
        calls = []
        for i in range(NODES):
            calls += [r for r in read_lines(os.path.join(self.dir, f"agent-n{i}.jsonl"))
                      if r["k"] == "call"]  # fmt: skip
        executed: Counter[str] = Counter()
        for i in range(NODES):
            path = os.path.join(self.dir, f"sink-n{i}.txt")
            if os.path.exists(path):
                with open(path) as f:
                    executed.update(line.strip() for line in f if line.strip())
        # A call whose own entry node was down, frozen or restarting while it
        # was out is not the mesh's to answer for: counted apart.
        outages = [(x, at, repaired) for x in dead]
        outages += [(i, t0, t1) for i, t0, t1, _ in restarts or ()]

        def entry_out(c: dict[str, Any]) -> bool:
            if c["out"] in ("entry_down", "entry_lost"):
                return True
            src = int(c["src"][1:])
            return any(x == src and c["t0"] <= t1 and c["t1"] >= t0 for x, t0, t1 in outages)

        judged = [c for c in calls if not entry_out(c)]
        out_calls = [c for c in calls if entry_out(c)]
        outcomes = Counter(str(c["out"]) for c in judged)
        made = len(judged)
        duplicates = sum(n - 1 for n in executed.values() if n > 1)
        ran_but_failed = [
            c for c in judged if c["id"] in executed and c["out"] not in ("ok", -32006)
        ]
        ran_entry_lost = sum(1 for c in out_calls if c["id"] in executed)
        deadline = outcomes.get("-32001", 0) + outcomes.get("no_answer", 0)
        entry_down = len(out_calls)
        peers = self.snapshots("peers")
        routes = self.snapshots("routes")
        lost = drops(peers)
        # Which drops the fault explains: links to a dead node, failed links.
        affected: set[tuple[str, str]] = set()
        for x in dead:
            for y in neighbours(EDGES, x):
                affected |= {(f"n{y}", f"n{x}"), (f"n{x}", f"n{y}")}
        for i, j in failed_edges:
            affected |= {(f"n{i}", f"n{j}"), (f"n{j}", f"n{i}")}
        window_end = repaired
        # Noticed by a live node (a frozen one's own view, once it wakes, is no detection).
        detections = [
            t - at
            for t, i, p in lost
            if (f"n{i}", p) in affected and i not in dead and at <= t <= window_end
        ]
        if restarts:
            detections = []
            for i, t0, _t1, _ok in restarts:
                mine = {(f"n{y}", f"n{i}") for y in neighbours(EDGES, i)}
                hits = [t - t0 for t, x, p in lost if (f"n{x}", p) in mine and t0 <= t <= t0 + 10]
                if hits:
                    detections.append(min(hits))
        spurious = [
            (round(t - at, 2), f"n{i}", p) for t, i, p in lost
            if (f"n{i}", p) not in affected and not restarts
            and not any(f"n{x}" in (f"n{i}", p) for x in dead)
        ]  # fmt: skip
        all_edges = set(EDGES)
        faulted = all_edges - failed_edges
        alive = set(range(NODES)) - dead
        first_detect = at + min(detections) if detections else None
        reroute = None
        if first_detect is not None and (failed_edges or dead):
            done = converged_at(routes, first_detect, faulted, alive)
            reroute = None if done is None or done > repaired else done - first_detect
        healed = converged_at(routes, repaired, all_edges, set(range(NODES)), shortest=True)
        errors = {k: v for k, v in sorted(outcomes.items()) if k != "ok"}
        stalls = [
            (round(r["t"] - at, 2), f"n{i}", round(r["late"], 2))
            for i in range(NODES)
            for r in read_lines(os.path.join(self.dir, f"agent-n{i}.jsonl"))
            if r["k"] == "stall"
        ]
        return {
            "fault": self.fault,
            "calls": made,
            "entry_down": entry_down,
            "ok": outcomes.get("ok", 0),
            "errors": errors,
            "duplicates": duplicates,
            "ran_but_failed": len(ran_but_failed),
            "ran_but_failed_codes": dict(Counter(str(c["out"]) for c in ran_but_failed)),
            "ran_entry_lost": ran_entry_lost,
            "deadline": deadline,
            "deadline_pct": 100.0 * deadline / made if made else 0.0,
            "detect_first_s": min(detections) if detections else None,
            "detect_last_s": max(detections) if detections else None,
            "reroute_s": reroute,
            "heal_s": None if healed is None else healed - repaired,
            "spurious_drops": spurious,
            "stalls": sorted(stalls),
            "logs": self.dir,
        }

    def close(self) -> None:
        self.mesh.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def line(r: dict[str, Any]) -> str:
    def s(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    errors = " ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "none"
    return (
        f"{r['fault']:<9} calls {r['calls']:>5} (+{r['entry_down']} entry node out,"
        f" {r['ran_entry_lost']} of them ran)  ok {r['ok']:>5}"
        f"  errors {errors}  dup {r['duplicates']}  ran-but-failed {r['ran_but_failed']}"
        f"{' ' + str(r['ran_but_failed_codes']) if r['ran_but_failed'] else ''}"
        f"  deadline {r['deadline']} ({r['deadline_pct']:.2f}%)"
        f"  detect {s(r['detect_first_s'])}-{s(r['detect_last_s'])}s  reroute {s(r['reroute_s'])}s"
        f"  heal {s(r['heal_s'])}s  spurious {len(r['spurious_drops'])}"
        f"  stalls {len(r['stalls'])} (max {max((x[2] for x in r['stalls']), default=0):.2f}s)"
    )


def soak(args: argparse.Namespace) -> int:
    phase = Phase(args, "soak", 9)
    active.append(phase)
    mesh = phase.mesh
    mesh.build()
    mesh.start()
    phase.agents(args.soak + 5)
    if not phase.wait_linked(range(NODES), 30):
        raise RuntimeError(f"the mesh did not link up (logs in {phase.dir})")
    phase.signal_agents(signal.SIGUSR2)
    series: list[dict[str, Any]] = []
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        sample: dict[str, Any] = {"t": round(elapsed)}
        for i in range(NODES):
            pid = mesh.pid(f"n{i}")
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            sample[f"n{i}"] = (rss, len(os.listdir(f"/proc/{pid}/fd")))
        series.append(sample)
        print(
            f"t={sample['t']:>4}s  " + "  ".join(
                f"n{i} {sample[f'n{i}'][0] // 1024}MiB/{sample[f'n{i}'][1]}fd" for i in range(NODES)
            ), flush=True,
        )  # fmt: skip
        if elapsed >= args.soak:
            break
        time.sleep(min(args.sample, args.soak - elapsed) or 0.1)
    phase.wait_agents(time.monotonic())
    result = phase.figures(started + args.soak, started + args.soak, set(), set())
    result["fault"] = "soak"
    print(line(result))
    if args.json:
        print(json.dumps({"series": series, "summary": result}))
    return 0


active: list[Phase] = []


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--rate", type=float, default=40.0, help="calls per second in all")
    parser.add_argument("--before", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--after", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="each call's budget")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of steady load")
    parser.add_argument("--sample", type=float, default=30.0, help="soak sampling period")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        asyncio.run(_agent(args))
        return 0
    if args.proxy:
        asyncio.run(_proxy(args))
        return 0
    if os.geteuid() != 0:
        print("chaos: network namespaces need root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    try:
        if args.soak:
            return soak(args)
        results = []
        for number, fault in enumerate(args.faults.split(",")):
            if fault not in FAULTS:
                parser.error(f"unknown fault {fault!r}: choose among {', '.join(FAULTS)}")
            phase = Phase(args, fault, number)
            active.append(phase)
            try:
                print(f"{fault}: running ...", file=sys.stderr, flush=True)
                result = phase.run()
            finally:
                phase.close()
                active.remove(phase)
            results.append(result)
            print(line(result), flush=True)
        if args.json:
            print(json.dumps(results))
        return 0
    except KeyboardInterrupt as e:
        print(f"chaos: interrupted ({e}); cleaning up", file=sys.stderr)
        return 130
    finally:
        for phase in active:
            phase.close()


if __name__ == "__main__":
    sys.exit(main())
