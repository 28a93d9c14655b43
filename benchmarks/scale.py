#!/usr/bin/env python
"""
How far one relaytx node and one relaytx mesh scale: many peer links on one
hub, and route convergence in a mesh of many nodes.

Usage (from the repository root, with the project's virtualenv)::

    python benchmarks/scale.py --links [N]     # default 10000
    python benchmarks/scale.py --mesh [N]      # default 50
    python benchmarks/scale.py --links 2000 --mesh 50 [--json]

With neither flag both scenarios run with their defaults. A progress line
goes to stderr while a scenario runs; the figures are printed as one table
per scenario at the end (or as one JSON object with C{--json}). Every wait
is bounded; every subprocess is stopped by its pid at the end, also on
Ctrl-C, SIGTERM or an error. All traffic stays on 127.0.0.0/8.

C{--links N}: peer links on one hub.

  - starts C{python -m relaytx.cli node --node-id hub --port P --app
    examples/counter.py --ping-interval S} as a subprocess, with
    RLIMIT_NOFILE raised to N plus headroom (here and, through a
    C{preexec_fn}, in the child; as root the hard limit is raised too);
  - starts C{--workers} load workers (C{benchmarks/_scale_client.py}), each
    bound to its own source address (127.0.0.2, .3, ... so no worker runs
    out of loopback ephemeral ports) and holding N/workers bare WebSocket
    peer links C{ws://127.0.0.1:P/ws/p2p?node_id=c<k>}. A bare link never
    sends C{registry_sync}; it answers the hub's pings with seed-shaped
    pongs, so the hub keeps it healthy;
  - reports: time to open every link (and the hub's CPU meanwhile), the
    hub's RSS before and after and per link, C{/registry/peers} and
    C{/health} peer counts (and how long those answers take), the
    ping/sync traffic per second at steady state over C{--window} seconds
    (default 3 ping intervals: frames and bytes received by the clients,
    pongs they sent), the hub's idle CPU, links the hub dropped, and the
    latency of C{--calls} sequential C{counter_server.increment} JSON-RPC
    calls over HTTP with every link open, and of one call every 50 ms for
    C{--probe} seconds (which catches the hub's stalls); then how long the
    hub takes to stop on SIGTERM. Targets: < 64 KiB RSS per link, every
    call answered.
  - C{--soak S} then samples the hub's RSS for S more seconds (it grows
    for a while after the links open: see the notes below).
  - C{--py-spy DIR} records the hub with py-spy while links open and during
    the steady window (raw collapsed stacks, C{DIR/hub-open.txt} and
    C{DIR/hub-idle.txt}, which C{flamegraph.pl} turns into SVGs) and prints
    where the busy samples were.

C{--mesh N}: route convergence in a mesh.

  - starts N L{RelayNode}s in this process's reactor, each on its own port
    of 127.0.0.1 (as C{tests/integration/helpers.py} does), on a random
    connected topology of average degree C{--degree} (default 3): a random
    spanning tree plus random extra edges, from C{--seed}. One end of each
    edge dials the other with C{node.add_peer};
  - reports the time until every link is open and until the routes have
    converged: every node's routing table covers the N-1 others, with hop
    counts equal to the BFS shortest path on the topology and paths that
    exist in it; the C{registry_sync} frames and bytes sent meanwhile
    (counted by a L{PeerSession} subclass given to C{node.use_session},
    which encodes each frame once, as the base class does);
  - then C{--cuts} times (default 3) cuts one link that lies on a cycle
    (C{remove_peer} on the dialling side; the dialled side sees the close)
    and reports the time until every table again equals BFS on the new
    graph, and the C{registry_sync} traffic the cut caused. Target:
    re-converged within 2 s of each cut.
  - every node shares this one process and its one core, so the times are
    the mesh's total work done in series: an upper bound of what separate
    processes would take.
  - then it reports the steady state (C{registry_sync} bytes per second
    and CPU over 10 s), the routing state each node keeps (its table, what
    its neighbours said, what it told them), and kills the node of highest
    degree whose loss leaves the mesh connected: the time until every
    other node has dropped its routes to it, and until the tables equal BFS
    again; last, a call across the mesh's diameter.

C{--mesh N --procs P} hosts the nodes in P worker processes
(C{benchmarks/_mesh_worker.py}, a slice each, driven over their stdin and
stdout), linked over loopback, so the figures are not bounded by one
reactor. From 100 nodes on this is the default, with one worker per core
(C{--procs 0} keeps every node in this process). C{--mesh N --processes}
runs one C{relay node} process per node, as users run them (node death
is then a SIGKILL). Both report the same figures, with times taken from
the nodes' own clocks (when each table last changed), RSS per node, and
the load average before and after: on a shared machine, say it with the
figures. C{--dial-batch} opens the links in waves. Nodes packed hundreds
to a reactor answer each other only as often as it turns: unless told
otherwise (C{--peer-timeout}), their C{peer_timeout} grows with the nodes
a reactor hosts (L{default_peer_timeout}).

Observed on the 2-core development machine (Python 3.11, Twisted 26.10):

  - C{--links 10000}: every link opens in 9-15 s (the hub CPU-bound
    meanwhile, about 1 ms of CPU per link); 17 KiB of RSS per link
    (19.5 KiB once the hub's duplicate-message memory is full: it records
    every pong, 100,000 entries of about 300 B, so RSS climbs by about
    30 MB in the first minute and is flat afterwards); 2,000 pings/s out
    and 2,000 pongs/s in cost about 30% of one core; calls are answered in
    0.3-1 ms (p50). The hub stalls for 0.25-0.5 s at each full garbage
    collection (about 700,000 tracked objects), which the C{/health}
    maximum shows.
  - C{--mesh 50}: routes equal BFS about 0.3-0.6 s after the first dial
    and 0.05-0.17 s after a cut. The work grows fast with N (full-table
    adverts, and ties between equal-length paths re-decided on RTTs that
    change at every pong): C{--mesh 200} misses the 2 s target by far.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import itertools
import json
import os
import queue
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
CLIENT = os.path.join(HERE, "_scale_client.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

RSS_PER_LINK_TARGET_KIB = 64.0
RECONVERGE_TARGET_S = 2.0


# --------------------------------------------------------------------------
# Small helpers.


class Progress:
    """One progress line on stderr, rewritten in place on a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.last = 0.0
        self.shown = False

    def __call__(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text)
            self.shown = True
        elif force or now - self.last >= 2.0:
            sys.stderr.write(text + "\n")
            self.last = now
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self.shown = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listen_ports(count: int, low: int = 20000, high: int = 32768) -> list[int]:
    """
    :returns: C{count} ports free a moment ago, below the kernel's
        ephemeral range (32768 and up on Linux), so that no outgoing
        connection takes one while the nodes start.
    :raises RuntimeError: if there are not that many.
    """
    ports: list[int] = []
    for port in random.sample(range(low, high), high - low):
        try:
            with socket.socket() as s:
                s.bind((HOST, port))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"only {len(ports)} free ports in {low}-{high - 1}")


def raise_nofile(want: int) -> None:
    """Raise this process's RLIMIT_NOFILE to C{want} (the hard limit too, if root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            raise SystemExit(
                f"scale.py: need {want} file descriptors but the hard limit is {hard}"
                " (ulimit -Hn); run as root or raise it"
            ) from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def rss_kib(pid: int) -> int | None:
    """:returns: VmRSS of C{pid} in KiB."""
    return _status_kib(pid, "VmRSS")


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """:returns: user + system CPU seconds of C{pid} so far."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """:returns: user and system CPU seconds of C{pid} so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def wakeups(pid: int) -> int | None:
    """:returns: C{pid}'s voluntary context switches (each is a sleep in epoll_wait)."""
    return _status_kib(pid, "voluntary_ctxt_switches")


def listen_overflows() -> int | None:
    """:returns: the host's TcpExt ListenOverflows (SYNs dropped on a full accept queue)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def http_json(port: int, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """One HTTP request on a fresh connection; :returns: (decoded body, seconds, bytes)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.monotonic()
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        raw = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {raw[:200]!r}")
        return json.loads(raw), time.monotonic() - started, len(raw)
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt(value: Any, spec: str = "", unit: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) + unit


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Rows of (figure, value, target/verdict)."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{title}")
    print("-" * (w0 + w1 + 20))
    for name, value, note in rows:
        print(f"{name:<{w0}}  {value:>{w1}}  {note}".rstrip())


class Children:
    """The subprocesses this script started; stopped by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=ROOT, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> float | None:
        """SIGTERM C{proc}, SIGKILL after C{timeout}; :returns: seconds it took to exit."""
        if proc.poll() is not None:
            return None
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return None

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.procs.clear()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------
# Scenario 1: many links on one hub.


class WorkerPool:
    """The load workers and their line-protocol (JSON lines on stdout)."""

    def __init__(self, children: Children, tmp: str) -> None:
        self.children = children
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()

    def start(self, port: int, shares: list[tuple[str, int, int]], concurrency: int) -> None:
        for k, (src, first, count) in enumerate(shares):
            log = open(os.path.join(self.tmp, f"worker-{k}.log"), "wb")
            argv = [
                sys.executable, CLIENT, "--port", str(port), "--src", src,
                "--first", str(first), "--count", str(count), "--concurrency", str(concurrency),
            ]  # fmt: skip
            proc = self.children.start(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            log.close()
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(k, proc), daemon=True).start()

    def _read(self, k: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put((k, json.loads(line)))
        self.events.put((k, {"event": "exit"}))

    def send(self, command: str) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(command.encode() + b"\n")
                    proc.stdin.flush()

    def log_tail(self, k: int) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.tmp, f"worker-{k}.log")) as f:
            return f.read()[-2000:]
        return ""

    def wait_event(
        self, kind: str, timeout: float, on_other: Any = None
    ) -> dict[int, dict[str, Any]]:
        """Wait until every worker has sent an event of C{kind}."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(len(self.procs))) - set(got))
                raise RuntimeError(f"workers {missing} sent no {kind!r} within {timeout:g}s")
            try:
                k, event = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if event.get("event") == kind:
                got[k] = event
            elif event.get("event") == "exit":
                raise RuntimeError(f"worker {k} exited:\n{self.log_tail(k)}")
            elif on_other is not None:
                on_other(k, event)
        return got

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """:returns: every worker's counters, summed."""
        self.send("stats")
        per = self.wait_event("stats", timeout)
        return sum_stats(list(per.values()))

    def quit(self, timeout: float = 10.0) -> None:
        self.send("quit")
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))


def sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, bool) or key in ("event", "t"):
                continue
            if isinstance(value, int | float):
                if key.endswith("_max_ms") or key.endswith("_p50_ms"):
                    total[key] = max(total.get(key) or 0, value)
                else:
                    total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
    return total


class PySpy:
    """
    An optional py-spy recording of the hub (raw collapsed stacks, which
    C{inferno-flamegraph} or C{flamegraph.pl} turn into an SVG), stopped by
    its pid; L{summarise_profile} reads it back.
    """

    def __init__(self, children: Children, directory: str | None, pid: int) -> None:
        self.children = children
        self.directory = directory
        self.pid = pid
        self.exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: str | None = None

    def start(self, name: str) -> None:
        if self.directory is None:
            return
        if not os.path.exists(self.exe):
            raise SystemExit("scale.py: --py-spy needs py-spy (pip install py-spy)")
        os.makedirs(self.directory, exist_ok=True)
        self.out = os.path.join(self.directory, name)
        argv = [
            self.exe, "record", "--nonblocking", "-r", "200", "-f", "raw",
            "-o", self.out, "--pid", str(self.pid),
        ]  # fmt: skip
        self.proc = self.children.start(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, Any] | None:
        """Stop recording; :returns: the profile's summary."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        assert self.out is not None
        return summarise_profile(self.out)


#: Frames that every sample holds (the reactor loop): not worth listing.
_BORING = (
    "<frozen runpy>",
    "relaytx/cli.py",
    "internet/base.py:ReactorBase.run",
    "internet/base.py:ReactorBase.mainLoop",
    "python/log.py",
    "python/context.py",
)


def summarise_profile(path: str, top: int = 14) -> dict[str, Any] | None:
    """
    :returns: the busy samples of a raw py-spy profile: the functions where
        they were (self) and the functions they were under (inclusive),
        as C{file:function} and percent of busy samples. Samples waiting
        in C{epoll} are idle and left out.
    """
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        if frames and frames[-1].endswith(":untilConcludes"):  # epoll_wait
            idle += count
            continue
        busy += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not busy:
        return {"busy_samples": 0, "idle_samples": idle}

    def pct(counter: collections.Counter[str], keep: Any) -> list[tuple[str, float]]:
        rows = [(k, 100 * v / busy) for k, v in counter.most_common() if keep(k)]
        return [(k, round(v, 1)) for k, v in rows[:top]]

    return {
        "file": path,
        "busy_samples": busy,
        "idle_samples": idle,
        "self": pct(self_time, lambda k: True),
        "inclusive": pct(
            inclusive,
            lambda k: not k.startswith(_BORING),
        ),
    }


def _frame_name(frame: str) -> str:
    """C{'func (path/to/file.py:12)'} -> C{'to/file.py:func'}."""
    func, _, where = frame.partition(" (")
    filename = where.rstrip(")").rpartition(":")[0]
    parts = filename.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{short}:{func}"


def sleep_with_progress(seconds: float, progress: Progress, what: str, hub: Any) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if hub.poll() is not None:
            raise RuntimeError(f"the hub exited with {hub.returncode}")
        progress(f"{what}: {left:4.1f}s left, hub RSS {fmt(rss_kib(hub.pid), ',')} KiB")
        time.sleep(min(left, 0.5))


def run_links(args: argparse.Namespace, children: Children, progress: Progress) -> dict[str, Any]:
    n = args.links
    interval = args.ping_interval
    window = args.window or 3 * interval
    workers = max(1, min(args.workers, n))
    need = n + 1024
    raise_nofile(need + 64)  # the children inherit it; the hub sets its own too
    tmp = tempfile.mkdtemp(prefix="relaytx-scale-")
    result: dict[str, Any] = {"links": n, "ping_interval_s": interval, "logs": tmp}

    def hub_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard_now())))

    port = free_port()
    hub_log_path = os.path.join(tmp, "hub.log")
    with open(hub_log_path, "wb") as hub_log:
        argv = [
            sys.executable, "-m", "relaytx.cli", "node", "--node-id", "hub",
            "--port", str(port), "--app", "examples/counter.py",
            "--ping-interval", str(interval),
        ]  # fmt: skip
        hub = children.start(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=hub_log,
            preexec_fn=hub_limits,
        )
    result["hub_pid"] = hub.pid

    def hub_tail() -> str:
        with open(hub_log_path, errors="replace") as f:
            return f.read()[-3000:]

    deadline = time.monotonic() + 30
    while True:
        if hub.poll() is not None:
            raise RuntimeError(f"the hub exited with {hub.returncode}:\n{hub_tail()}")
        try:
            http_json(port, "GET", "/health", timeout=2)
            break
        except (OSError, RuntimeError, http.client.HTTPException, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the hub did not answer /health in 30 s:\n{hub_tail()}"
                ) from None
            progress("waiting for the hub to answer /health")
            time.sleep(0.1)
    with open(f"/proc/{hub.pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                result["hub_nofile_soft"] = int(line.split()[3])

    base_lat = rpc_latencies(port, 20)
    result["rpc_before"] = base_lat
    time.sleep(0.5)
    rss0 = rss_kib(hub.pid)
    result["hub_rss_before_kib"] = rss0

    base, extra = divmod(n, workers)
    shares = []
    first = 0
    sources = args.sources.split(",") if args.sources else []
    for k in range(workers):
        count = base + (1 if k < extra else 0)
        src = sources[k % len(sources)] if sources else f"127.0.0.{2 + k}"
        shares.append((src, first, count))
        first += count
    pool = WorkerPool(children, tmp)
    pool.start(port, shares, max(1, args.concurrency // workers))
    pool.wait_event("ready", 30)
    result["workers"] = [{"src": s, "links": c} for s, _, c in shares]

    spy = PySpy(children, args.py_spy, hub.pid)
    spy.start("hub-open.txt")
    cpu_start = cpu_seconds(hub.pid)
    overflows_start = listen_overflows()
    started = time.monotonic()
    pool.send("go")
    opened: dict[int, dict[str, Any]] = {}
    last_poll = 0.0
    peak_rss = rss0 or 0
    open_deadline = started + args.open_timeout
    while len(opened) < len(pool.procs):
        if time.monotonic() > open_deadline:
            raise RuntimeError(f"links not all open within {args.open_timeout:g}s")
        if hub.poll() is not None:
            raise RuntimeError(f"the hub exited with {hub.returncode}:\n{hub_tail()}")
        now = time.monotonic()
        if now - last_poll >= 1.0:
            last_poll = now
            pool.send("stats")
        try:
            k, event = pool.events.get(timeout=0.25)
        except queue.Empty:
            continue
        kind = event.get("event")
        if kind == "opened":
            opened[k] = event
            event["at"] = time.monotonic() - started
        elif kind == "exit":
            raise RuntimeError(f"worker {k} exited:\n{pool.log_tail(k)}")
        elif kind == "stats":
            rss = rss_kib(hub.pid) or 0
            peak_rss = max(peak_rss, rss)
            cpu = cpu_seconds(hub.pid) - cpu_start
            elapsed = time.monotonic() - started
            progress(
                f"opening {n} links: worker {k} {event['opened']}/{shares[k][2]}"
                f" ({event['failed']} failed, {event['retries']} retries);"
                f" {elapsed:.0f}s, hub RSS {rss:,} KiB, hub CPU {cpu:.1f}s"
                f" ({100 * cpu / max(elapsed, 1e-9):.0f}%)"
            )
    open_s = max(e["at"] for e in opened.values())
    hub_open_cpu = cpu_seconds(hub.pid) - cpu_start
    overflows_end = listen_overflows()
    if overflows_start is not None and overflows_end is not None:
        result["listen_overflows"] = overflows_end - overflows_start
    result["profile_open"] = spy.stop()
    n_open = sum(e["opened"] for e in opened.values())
    n_failed = sum(e["failed"] for e in opened.values())
    result.update(
        open_s=open_s,
        opened=n_open,
        open_failed=n_failed,
        links_per_s=n_open / open_s if open_s else None,
        hub_cpu_while_opening_s=hub_open_cpu,
    )
    stats = pool.stats()
    result["handshake_p50_ms_max_worker"] = stats.get("handshake_p50_ms")
    result["handshake_max_ms"] = stats.get("handshake_max_ms")
    result["open_retries"] = stats.get("retries", 0)
    result["open_errors"] = stats.get("errors", {})

    # The hub's own view catches up (it may still be handling the last ones).
    caught_up = time.monotonic()
    peer_count = None
    while time.monotonic() - caught_up < 60:
        try:
            health, _, _ = http_json(port, "GET", "/health", timeout=30)
            peer_count = health.get("peer_count")
        except (OSError, RuntimeError, http.client.HTTPException, ValueError):
            peer_count = None
        progress(f"waiting for /health peer_count {peer_count} to reach {n_open}")
        if peer_count == n_open:
            break
        time.sleep(0.5)
    result["hub_caught_up_s"] = time.monotonic() - started

    sleep_with_progress(interval, progress, "settling for one ping interval", hub)
    rss1 = rss_kib(hub.pid)
    result["hub_rss_after_open_kib"] = rss1
    result["hub_fds"] = fd_count(hub.pid)

    health_times = []
    for _ in range(7):
        health, seconds, _ = http_json(port, "GET", "/health", timeout=60)
        health_times.append(seconds)
        time.sleep(0.05)
    health_s = percentile(health_times, 0.5)
    peers, peers_s, peers_bytes = http_json(port, "GET", "/registry/peers", timeout=120)
    healthy = sum(1 for p in peers.values() if p.get("is_healthy"))
    with_rtt = sum(1 for p in peers.values() if p.get("rtt_ms") is not None)
    result.update(
        health_peer_count=health.get("peer_count"),
        health_s=health_s,
        health_max_s=max(health_times),
        registry_peers_count=len(peers),
        registry_peers_healthy=healthy,
        registry_peers_with_rtt=with_rtt,
        registry_peers_s=peers_s,
        registry_peers_bytes=peers_bytes,
    )

    # Steady state.
    spy.start("hub-idle.txt")
    s1 = pool.stats()
    (u1, k1), w1, t1 = cpu_split(hub.pid), wakeups(hub.pid), time.monotonic()
    sleep_with_progress(window, progress, "measuring steady state", hub)
    s2 = pool.stats()
    (u2, k2), w2, t2 = cpu_split(hub.pid), wakeups(hub.pid), time.monotonic()
    c1, c2 = u1 + k1, u2 + k2
    result["profile_idle"] = spy.stop()
    dt = t2 - t1

    def rate(key: str) -> float:
        return (s2.get(key, 0) - s1.get(key, 0)) / dt

    def rate_of(key: str, kind: str) -> float:
        return (s2.get(key, {}).get(kind, 0) - s1.get(key, {}).get(kind, 0)) / dt

    result.update(
        window_s=dt,
        frames_in_per_s=rate("frames_in"),
        bytes_in_per_s=rate("bytes_in"),
        wire_in_per_s=rate("wire_in"),
        pings_in_per_s=rate_of("by_type", "ping"),
        ws_pings_in_per_s=rate("ws_pings"),
        ping_bytes_in_per_s=rate_of("bytes_by_type", "ping"),
        syncs_in_per_s=rate_of("by_type", "registry_sync"),
        sync_bytes_in_per_s=rate_of("bytes_by_type", "registry_sync"),
        frames_out_per_s=rate("frames_out"),
        bytes_out_per_s=rate("bytes_out"),
        expected_pings_per_s=n_open / interval,
        hub_cpu_idle_pct=100 * (c2 - c1) / dt,
        hub_cpu_idle_user_pct=100 * (u2 - u1) / dt,
        hub_cpu_idle_system_pct=100 * (k2 - k1) / dt,
        hub_sleeps_per_s=(w2 - w1) / dt if w1 is not None and w2 is not None else None,
        clients_cpu_pct=100 * (s2.get("cpu_s", 0) - s1.get("cpu_s", 0)) / dt,
        syncs_received_total=s2.get("by_type", {}).get("registry_sync", 0),
        frames_in_by_type_total=s2.get("by_type", {}),
    )
    rss2 = rss_kib(hub.pid)
    result["hub_rss_after_window_kib"] = rss2

    # Calls with every link open.
    progress(f"{args.calls} sequential counter_server.increment calls", force=True)
    result["rpc_with_links"] = rpc_latencies(port, args.calls)
    if args.probe:
        # One call every 50 ms: catches the hub's stalls (a full garbage
        # collection of a big heap stops everything for a while).
        count = int(args.probe / 0.05)

        def probing(i: int, seconds: float) -> None:
            if i % 20 == 0:
                progress(f"stall probe: call {i}/{count}, last {seconds * 1000:.1f} ms")

        result["rpc_probe"] = rpc_latencies(port, count, gap=0.05, on_call=probing)
    rss3 = rss_kib(hub.pid)
    result["hub_rss_end_kib"] = rss3
    result["hub_rss_peak_kib"] = _status_kib(hub.pid, "VmHWM")
    per_link = None
    if rss0 is not None and rss2 is not None and n_open:
        per_link = (rss2 - rss0) / n_open
    result["rss_per_link_kib"] = per_link
    if args.soak:
        series = []
        c_soak, t_soak = cpu_seconds(hub.pid), time.monotonic()
        while (elapsed := time.monotonic() - t_soak) < args.soak:
            if hub.poll() is not None:
                raise RuntimeError(f"the hub exited with {hub.returncode}:\n{hub_tail()}")
            series.append((round(elapsed), rss_kib(hub.pid)))
            progress(f"soak: {args.soak - elapsed:.0f}s left, hub RSS {series[-1][1]:,} KiB")
            time.sleep(min(5.0, max(0.1, args.soak - elapsed)))
        rss_soak = rss_kib(hub.pid)
        series.append((round(time.monotonic() - t_soak), rss_soak))
        result["soak"] = {
            "seconds": time.monotonic() - t_soak,
            "rss_series_kib": series,
            "rss_end_kib": rss_soak,
            "rss_per_link_kib": (rss_soak - rss0) / n_open if rss0 and rss_soak else None,
            "hub_cpu_pct": 100 * (cpu_seconds(hub.pid) - c_soak) / (time.monotonic() - t_soak),
        }
    final = pool.stats()
    result["links_closed_by_hub"] = final.get("closed", 0)
    result["close_codes"] = final.get("close_codes", {})
    result["client_errors"] = final.get("errors", {})
    result["hub_alive"] = hub.poll() is None

    progress("stopping the hub (SIGTERM) with every link open", force=True)
    result["hub_stop_s"] = children.stop(hub, timeout=30)
    result["hub_exit_code"] = hub.returncode
    pool.quit()
    result["hub_log_warnings"] = _log_problems(hub_log_path)
    rpc = result["rpc_with_links"]
    result["targets"] = {
        "rss_per_link_below_64kib": per_link is not None and per_link < RSS_PER_LINK_TARGET_KIB,
        "answers_calls": rpc["ok"] == rpc["calls"]
        and all(p["ok"] == p["calls"] for p in [result.get("rpc_probe")] if p),
        "all_links_open": n_open == n and result["registry_peers_count"] == n,
        "no_link_dropped": result["links_closed_by_hub"] == 0,
    }
    return result


def hard_now() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 30 if hard == resource.RLIM_INFINITY else hard


def _log_problems(path: str) -> list[str]:
    lines = []
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            low = line.lower()
            if "traceback" in low or "error" in low or "[critical]" in low or "warn" in low:
                lines.append(line.rstrip()[:200])
    return lines[:20]


def rpc_latencies(port: int, calls: int, gap: float = 0.0, on_call: Any = None) -> dict[str, Any]:
    """
    C{calls} sequential C{counter_server.increment} calls on one keep-alive
    connection, C{gap} seconds apart.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    latencies: list[float] = []
    ok = 0
    errors: list[str] = []
    results = []
    try:
        for i in range(calls):
            body = json.dumps(
                {"jsonrpc": "2.0", "method": "counter_server.increment", "params": [1], "id": i}
            )
            started = time.monotonic()
            try:
                conn.request("POST", "/rpc", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                continue
            latencies.append(time.monotonic() - started)
            if on_call is not None:
                on_call(i, latencies[-1])
            if gap:
                time.sleep(gap)
            if response.status == 200 and isinstance(answer.get("result"), int):
                ok += 1
                results.append(answer["result"])
            else:
                errors.append(str(answer)[:200])
    finally:
        conn.close()
    consecutive = all(b == a + 1 for a, b in itertools.pairwise(results))
    return {
        "calls": calls,
        "ok": ok,
        "consecutive": consecutive,
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "mean_ms": _ms(sum(latencies) / len(latencies) if latencies else None),
        "over_100ms": sum(1 for x in latencies if x > 0.1),
        "errors": errors[:5],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def links_table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    n = r["links"]
    rpc, before = r["rpc_with_links"], r["rpc_before"]
    t = r["targets"]
    verdict = {True: "OK", False: "MISSED"}
    kib = 1024

    def lat(x: dict[str, Any], keys: tuple[str, ...]) -> str:
        return "/".join(fmt(x[k], ".2f") for k in keys) + " ms"

    overflows = r.get("listen_overflows")
    rows = [
        ("links asked / open / failed", f"{n} / {r['opened']} / {r['open_failed']}", ""),
        ("client workers", str(len(r["workers"])), f"from {r['workers'][0]['src']} ..."),
        ("hub RLIMIT_NOFILE / fds in use", f"{r.get('hub_nofile_soft')} / {r['hub_fds']}", ""),
        (
            "time to open all links",
            fmt(r["open_s"], ".1f", " s"),
            f"{r['links_per_s']:.0f} links/s",
        ),
        (
            "hub CPU while opening",
            fmt(r["hub_cpu_while_opening_s"], ".1f", " s"),
            f"{1000 * r['hub_cpu_while_opening_s'] / max(1, r['opened']):.2f} ms/link",
        ),
        (
            "handshake latency max",
            fmt(r["handshake_max_ms"], ".0f", " ms"),
            f"{r['open_retries']} retries, {fmt(overflows)} accept-queue overflows",
        ),
        ("hub sees all links after", fmt(r["hub_caught_up_s"], ".1f", " s"), ""),
        ("hub RSS before", fmt(r["hub_rss_before_kib"], ",", " KiB"), ""),
        ("hub RSS after open + 1 interval", fmt(r["hub_rss_after_open_kib"], ",", " KiB"), ""),
        ("hub RSS after steady window", fmt(r["hub_rss_after_window_kib"], ",", " KiB"), ""),
        ("hub RSS peak (VmHWM)", fmt(r["hub_rss_peak_kib"], ",", " KiB"), ""),
        (
            "RSS per link",
            fmt(r.get("rss_per_link_kib"), ".1f", " KiB"),
            f"target < {RSS_PER_LINK_TARGET_KIB:g} KiB: {verdict[t['rss_per_link_below_64kib']]}",
        ),
        (
            "/health peer_count",
            str(r["health_peer_count"]),
            f"answered in {r['health_s'] * 1000:.0f} ms (median of 7;"
            f" max {r['health_max_s'] * 1000:.0f} ms)",
        ),
        (
            "/registry/peers (healthy, with rtt)",
            f"{r['registry_peers_count']} ({r['registry_peers_healthy']},"
            f" {r['registry_peers_with_rtt']})",
            f"{r['registry_peers_bytes'] / kib:.0f} KiB in {r['registry_peers_s'] * 1000:.0f} ms",
        ),
        (
            "steady window",
            fmt(r["window_s"], ".1f", " s"),
            f"ping interval {r['ping_interval_s']:g} s",
        ),
        (
            "frames in (hub -> clients)",
            fmt(r["frames_in_per_s"], ".0f", " /s"),
            f"{r['bytes_in_per_s'] / kib:.0f} KiB/s payload,"
            f" {r['wire_in_per_s'] / kib:.0f} KiB/s on the wire",
        ),
        (
            "  of which pings",
            fmt(r["pings_in_per_s"], ".0f", " /s"),
            f"keepalives {r['expected_pings_per_s']:.0f}/s; the rest, nudges of idle links",
        ),
        (
            "  of which registry_sync",
            fmt(r["syncs_in_per_s"], ".1f", " /s"),
            f"{r['sync_bytes_in_per_s']:.0f} B/s; {r['syncs_received_total']} since open",
        ),
        (
            "WebSocket pings",
            fmt(r["ws_pings_in_per_s"], ".0f", " /s"),
            "nudges of relaytx peers (bare links, taken for original nodes, get pings)",
        ),
        (
            "frames out (pongs, clients -> hub)",
            fmt(r["frames_out_per_s"], ".0f", " /s"),
            f"{r['bytes_out_per_s'] / kib:.0f} KiB/s payload",
        ),
        (
            "hub CPU at idle",
            fmt(r["hub_cpu_idle_pct"], ".1f", " %"),
            f"user {r['hub_cpu_idle_user_pct']:.1f} %, system"
            f" {r['hub_cpu_idle_system_pct']:.1f} %; clients {r['clients_cpu_pct']:.1f} %",
        ),
        (
            "hub reactor sleeps (epoll_wait)",
            fmt(r["hub_sleeps_per_s"], ".0f", " /s"),
            "voluntary context switches",
        ),
        ("links dropped by the hub", str(r["links_closed_by_hub"]), str(r["close_codes"] or "")),
        ("RPC increment, no links p50/p99", lat(before, ("p50_ms", "p99_ms")), ""),
        (
            f"RPC increment x{rpc['calls']}, p50/p99/max",
            lat(rpc, ("p50_ms", "p99_ms", "max_ms")),
            f"{rpc['ok']}/{rpc['calls']} ok: {verdict[t['answers_calls']]}",
        ),
    ]
    probe = r.get("rpc_probe")
    if probe:
        rows.append(
            (
                f"RPC every 50 ms x{probe['calls']}, p50/p99/max",
                lat(probe, ("p50_ms", "p99_ms", "max_ms")),
                f"{probe['ok']}/{probe['calls']} ok; {probe['over_100ms']} over 100 ms",
            )
        )
    soak = r.get("soak")
    if soak:
        rows += [
            (
                f"hub RSS after a {soak['seconds']:.0f} s soak",
                fmt(soak["rss_end_kib"], ",", " KiB"),
                f"{fmt(soak['rss_per_link_kib'], '.1f')} KiB/link, CPU {soak['hub_cpu_pct']:.1f} %",
            )
        ]
    rows += [
        (
            "hub stop on SIGTERM",
            fmt(r["hub_stop_s"], ".2f", " s"),
            f"exit code {r['hub_exit_code']}",
        ),
    ]
    return rows


def print_profile(title: str, profile: dict[str, Any] | None) -> None:
    if not profile or not profile.get("busy_samples"):
        return
    print(f"\n{title}: {profile['busy_samples']} busy samples ({profile['file']})")
    print("  self:")
    for name, pct in profile["self"]:
        print(f"    {pct:5.1f}%  {name}")
    print("  inclusive:")
    for name, pct in profile["inclusive"]:
        print(f"    {pct:5.1f}%  {name}")


# --------------------------------------------------------------------------
# Scenario 2: route convergence in a mesh.


def topology(n: int, degree: float, rng: random.Random) -> list[tuple[int, int]]:
    """
    A random connected graph: a random spanning tree plus random extra
    edges up to an average degree of C{degree}.

    :returns: edges C{(dialler, dialled)}.
    """
    order = list(range(n))
    rng.shuffle(order)
    edges: set[frozenset[int]] = set()
    for i in range(1, n):
        edges.add(frozenset((order[i], order[rng.randrange(i)])))
    target = min(n * (n - 1) // 2, max(n - 1, round(n * degree / 2)))
    while len(edges) < target:
        a, b = rng.sample(range(n), 2)
        edges.add(frozenset((a, b)))
    result = []
    for edge in sorted(edges, key=sorted):
        a, b = sorted(edge)
        result.append((a, b) if rng.random() < 0.5 else (b, a))
    return result


def adjacency(n: int, edges: list[tuple[int, int]]) -> list[set[int]]:
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    return adj


def bfs(adj: list[set[int]], src: int) -> list[int]:
    dist = [-1] * len(adj)
    dist[src] = 0
    frontier = collections.deque([src])
    while frontier:
        u = frontier.popleft()
        for v in adj[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                frontier.append(v)
    return dist


def is_bridge(adj: list[set[int]], a: int, b: int) -> bool:
    adj[a].discard(b)
    adj[b].discard(a)
    try:
        return bfs(adj, a)[b] < 0
    finally:
        adj[a].add(b)
        adj[b].add(a)


class SyncCounter:
    """registry_sync frames and bytes sent by every node of the mesh."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.other_frames = 0
        self.last_at = 0.0

    def snapshot(self) -> tuple[int, int]:
        return self.frames, self.bytes


def run_mesh(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from relaytx.tap import tune_collector

    fd, log_path = tempfile.mkstemp(prefix="relaytx-scale-mesh-", suffix=".log")
    log_file = os.fdopen(fd, "w")
    observer = FilteringLogObserver(
        textFileLogObserver(log_file), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    nodes: list[Any] = []
    outcome: list[Any] = []

    def stop_nodes() -> Any:
        from twisted.internet.defer import DeferredList

        running = [node.stopService() for node in nodes if node.running]
        return DeferredList(running, consumeErrors=True).addTimeout(10, reactor)

    reactor.addSystemEventTrigger("before", "shutdown", stop_nodes)

    def start() -> None:
        d = ensureDeferred(_mesh(args, progress, reactor, nodes))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    tune_collector()  # as a relay node process does
    # Twisted takes SIGINT only from Python's default handler, and SIGTERM:
    # both stop the reactor, whose shutdown trigger stops the nodes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    log_file.close()
    if not outcome:
        raise KeyboardInterrupt
    value = outcome[0]
    from twisted.python.failure import Failure

    if isinstance(value, Failure):
        value.raiseException()
    # The nodes' log is kept (and named in the report) only if it has
    # something to say.
    value["log_warnings"] = _log_problems(log_path)
    value["log"] = log_path if value["log_warnings"] else None
    if value["log"] is None:
        os.remove(log_path)
    return dict(value)


async def _mesh(
    args: argparse.Namespace, progress: Progress, reactor: Any, nodes: list[Any]
) -> dict[str, Any]:
    from twisted.internet.task import deferLater

    from relaytx.config import build_config
    from relaytx.errors import CallError, StartupError
    from relaytx.node import RelayNode
    from relaytx.peer import PeerSession
    from relaytx.wire import RegistrySync, encode

    n = args.mesh
    rng = random.Random(args.seed)
    edges = topology(n, args.degree, rng)
    adj = adjacency(n, edges)
    ids = [f"n{i:03d}" for i in range(n)]
    index = {node_id: i for i, node_id in enumerate(ids)}
    counter = SyncCounter()
    sync_type = RegistrySync.TYPE

    class CountingSession(PeerSession):
        """Counts the registry_sync frames it sends (encoding once, as the base does)."""

        def send(self, envelope: Any, room: int = 0) -> None:
            if self.transport is not None and not self.closed:
                frame = encode(envelope)
                if len(frame) + room > self.host.max_message_size:
                    super().send(envelope, room)  # (raises as the base does)
                if envelope.type == sync_type:
                    counter.frames += 1
                    counter.bytes += len(frame)
                    counter.last_at = time.monotonic()
                else:
                    counter.other_frames += 1
                self.transport.send(frame)

    async def sleep(seconds: float) -> None:
        await deferLater(reactor, seconds, lambda: None)

    cpu0 = sum(os.times()[:2])
    ports = []
    for node_id in ids:
        for _attempt in range(5):
            port = free_port()
            config = build_config({"node_id": node_id, "port": port, **node_settings(args)})
            node = RelayNode(config, reactor)
            node.use_session(CountingSession)
            try:
                node.privilegedStartService()
            except StartupError:
                continue
            node.startService()
            break
        else:
            raise RuntimeError(f"could not start {node_id}")
        nodes.append(node)
        ports.append(port)
    diameter = max(max(bfs(adj, i)) for i in range(n))
    result: dict[str, Any] = {
        "nodes": n,
        "edges": len(edges),
        "avg_degree": 2 * len(edges) / n,
        "diameter": diameter,
        "seed": args.seed,
        "ping_interval_s": args.ping_interval,
        "peer_timeout_s": args.peer_timeout,
    }

    def links_ok() -> int:
        return sum(
            1
            for i, node in enumerate(nodes)
            if {index[p] for p in node.mesh.links} == adj[i]
            and all(s.healthy for s in node.mesh.links.values())
        )

    dead: set[int] = set()

    #: node -> (its table's change count, the distances) when its table was last right:
    #: a table that has not changed since is not walked again (the walk of 200
    #: full tables took the reactor longer than the poll interval)
    checked: dict[int, tuple[int, Any]] = {}

    def routes_ok() -> tuple[int, str]:
        good = len(dead)
        first_bad = ""
        for i, node in enumerate(nodes):
            if i in dead:
                continue
            changes = node.mesh.router.changes
            seen = checked.get(i)
            if seen is not None and seen[0] == changes and seen[1] is dists:
                good += 1
                continue
            dist = dists[i]
            table = node.mesh.router.routes()
            bad = ""
            reachable = sum(1 for d in dist if d > 0)
            if len(table) != reachable:
                bad = f"{ids[i]} knows {len(table)}/{reachable} nodes"
            else:
                for dest, route in table.items():
                    j = index.get(dest)
                    if j is None or route.hops != dist[j]:
                        want = dist[j] if j is not None else "?"
                        bad = f"{ids[i]}->{dest}: {route.hops} hops, BFS {want}"
                        break
                    prev = i
                    for hop in route.path:
                        k = index[hop]
                        if k not in adj[prev]:
                            bad = f"{ids[i]}->{dest} uses a missing link {ids[prev]}-{hop}"
                            break
                        prev = k
                    if bad:
                        break
            if bad:
                first_bad = first_bad or bad
            else:
                good += 1
                checked[i] = (changes, dists)
        return good, first_bad

    async def until(predicate: Any, what: str, timeout: float) -> float:
        started = time.monotonic()
        while True:
            value, detail = predicate()
            if value:
                return time.monotonic() - started
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise RuntimeError(f"{what}: not done after {timeout:g}s ({detail})")
            progress(f"{what}: {detail} ({elapsed:.2f}s)")
            await sleep(args.poll)

    async def quiet(since: float) -> float:
        """
        Wait until no registry_sync has been sent for C{args.quiet_time} s.

        :returns: when the last one went, in seconds after C{since}.
        """
        started = time.monotonic()
        while (calm := time.monotonic() - max(counter.last_at, since)) < args.quiet_time:
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                raise RuntimeError(f"registry_sync still flowing {args.timeout:g}s later")
            progress(f"waiting for registry_sync to stop: calm for {calm:.2f}s ({elapsed:.1f}s)")
            await sleep(0.05)
        return max(0.0, counter.last_at - since)

    dists = [bfs(adj, i) for i in range(n)]
    started = time.monotonic()
    for a, b in edges:
        nodes[a].add_peer(f"ws://{HOST}:{ports[b]}", node_id=ids[b])

    def all_links() -> tuple[bool, str]:
        k = links_ok()
        return k == n, f"{k}/{n} nodes have all their links"

    def all_routes() -> tuple[bool, str]:
        k, bad = routes_ok()
        return k == n, f"{k}/{n} nodes converged" + (f"; e.g. {bad}" if bad else "")

    links_s = await until(all_links, "opening links", args.timeout)
    conv_s = await until(all_routes, "initial convergence", args.timeout) + links_s
    last = await quiet(started)
    result.update(
        links_open_s=links_s,
        converged_s=conv_s,
        last_sync_after_start_s=last,
        start_sync_frames=counter.frames,
        start_sync_bytes=counter.bytes,
        start_sync_per_node=counter.frames / n,
        cpu_start_s=sum(os.times()[:2]) - cpu0,
    )
    table_check = nodes[0].views.routes()  # the public view agrees
    assert len(table_check) == n - 1, table_check

    cuts = []
    live = list(edges)
    for c in range(args.cuts):
        candidates = [e for e in live if not is_bridge(adj, *e)]
        if not candidates:
            break
        a, b = rng.choice(candidates)
        live.remove((a, b))
        adj[a].discard(b)
        adj[b].discard(a)
        dists = [bfs(adj, i) for i in range(n)]
        affected = sum(
            1
            for i, node in enumerate(nodes)
            for dest, route in node.mesh.router.routes().items()
            if any(
                {x, y} == {ids[a], ids[b]}
                for x, y in zip((ids[i], *route.path), route.path, strict=False)
            )
        )
        f0, b0 = counter.snapshot()
        cpu_cut = sum(os.times()[:2])
        cut_at = time.monotonic()
        nodes[a].remove_peer(ids[b])

        def link_gone(a: int = a, b: int = b) -> tuple[bool, str]:
            gone = ids[b] not in nodes[a].mesh.links and ids[a] not in nodes[b].mesh.links
            return gone, "the cut link is still open on one side"

        closed_s = await until(link_gone, f"cut {c + 1}: closing {ids[a]}-{ids[b]}", args.timeout)
        reconv_s = await until(
            all_routes, f"cut {c + 1}: re-convergence after {ids[a]}-{ids[b]}", args.timeout
        )
        reconv_s += closed_s
        last = await quiet(cut_at)
        f1, b1 = counter.snapshot()
        cuts.append(
            {
                "link": f"{ids[a]}->{ids[b]}",
                "routes_using_it": affected,
                "closed_s": closed_s,
                "reconverged_s": reconv_s,
                "last_sync_after_cut_s": last,
                "sync_frames": f1 - f0,
                "sync_bytes": b1 - b0,
                "cpu_s": sum(os.times()[:2]) - cpu_cut,
                "new_diameter": max(max(d) for d in dists),
                "ok": reconv_s < RECONVERGE_TARGET_S,
            }
        )
    result["cuts"] = cuts

    # Steady state, and what routing keeps per node.
    from _mesh_worker import routing_state

    f0, b0 = counter.snapshot()
    cpu0 = sum(os.times()[:2])
    t_steady = time.monotonic()
    await sleep(args.window_apart)
    window = time.monotonic() - t_steady
    f1, b1 = counter.snapshot()
    sizes = [routing_state(node) for node in nodes]
    result.update(
        steady_window_s=window,
        steady_sync_bytes_per_s=(b1 - b0) / window,
        steady_cpu_per_node_pct=100 * (sum(os.times()[:2]) - cpu0) / window / n,
        routing_state_per_node_kib=sum(sizes) / n / 1024,
        routing_state_max_kib=max(sizes) / 1024,
    )

    # A node dies (its connections drop, no close handshake): the best
    # connected one whose loss leaves the mesh in one piece.
    order = sorted(range(n), key=lambda i: -len(adj[i]))
    victim = next(i for i in order if connected_without(adj, {i}))
    dead.add(victim)
    degree = len(adj[victim])
    for j in list(adj[victim]):
        adj[j].discard(victim)
    adj[victim] = set()
    dists = [bfs(adj, i) for i in range(n)]
    f0, b0 = counter.snapshot()
    for session in list(nodes[victim].mesh.links.values()):
        if session.transport is not None:
            session.transport.abort()
    nodes[victim].stopService()
    holders = [node for i, node in enumerate(nodes) if i not in dead]

    def forgotten() -> tuple[bool, str]:
        left = sum(1 for node in holders if node.mesh.router.route(ids[victim]) is not None)
        return left == 0, f"{left} nodes still route to {ids[victim]}"

    dropped_s = await until(forgotten, f"{ids[victim]} killed", args.timeout)
    reconv_s = await until(all_routes, f"re-convergence after {ids[victim]} died", args.timeout)
    await quiet(time.monotonic())
    f1, b1 = counter.snapshot()
    result["death"] = {
        "node": ids[victim],
        "degree": degree,
        "dropped_everywhere_s": dropped_s,
        "reconverged_s": reconv_s + dropped_s,
        "sync_frames": f1 - f0,
        "sync_bytes": b1 - b0,
    }
    # The call below goes between nodes still alive.
    dists = [d if i not in dead else [0] * n for i, d in enumerate(dists)]

    # One call across the mesh, between the two ends of its diameter.
    far_src = max((i for i in range(n) if i not in dead), key=lambda i: max(dists[i]))
    far_dst = max(
        (j for j in range(n) if j not in dead and dists[far_src][j] >= 0),
        key=lambda j: dists[far_src][j],
    )
    call_started = time.monotonic()
    try:
        answer = await nodes[far_src].call(ids[far_dst], "node", "ping", timeout=10)
        error = None
    except CallError as e:
        answer, error = {}, f"{type(e).__name__}: {e}"
    result["far_call"] = {
        "from": ids[far_src],
        "to": ids[far_dst],
        "hops": dists[far_src][far_dst],
        "ms": 1000 * (time.monotonic() - call_started),
        "ok": bool(answer.get("pong")),
        "error": error,
    }
    result["targets"] = {
        "reconverge_within_2s": bool(cuts) and all(cut["ok"] for cut in cuts),
    }
    progress.done("mesh scenario done")
    return result


def _peer_timeout_note(r: dict[str, Any]) -> str:
    timeout = r.get("peer_timeout_s")
    return "" if timeout is None else f"; peer_timeout {timeout:g} s"


def mesh_table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    kib = 1024
    rows = [
        (
            "nodes / edges (avg degree)",
            f"{r['nodes']} / {r['edges']} ({r['avg_degree']:.2f})",
            f"seed {r['seed']}, diameter {r['diameter']}" + _peer_timeout_note(r),
        ),
        ("all links open after", fmt(r["links_open_s"], ".3f", " s"), "from the first dial"),
        ("routes converged (= BFS) after", fmt(r["converged_s"], ".3f", " s"), ""),
        ("last registry_sync after", fmt(r["last_sync_after_start_s"], ".3f", " s"), ""),
        (
            "registry_sync sent at start",
            f"{r['start_sync_frames']:,} frames",
            f"{r['start_sync_bytes'] / kib:,.0f} KiB, {r['start_sync_per_node']:.0f}/node",
        ),
        ("CPU of this process, start-up", fmt(r["cpu_start_s"], ".2f", " s"), "all nodes"),
    ]
    for k, cut in enumerate(r["cuts"], 1):
        verdict = "OK" if cut["ok"] else "MISSED"
        rows += [
            (
                f"cut {k}: {cut['link']}",
                f"{cut['routes_using_it']} routes used it",
                f"new diameter {cut['new_diameter']}",
            ),
            ("  closed on both sides after", fmt(cut["closed_s"], ".3f", " s"), ""),
            (
                "  re-converged (= BFS) after",
                fmt(cut["reconverged_s"], ".3f", " s"),
                f"target < {RECONVERGE_TARGET_S:g} s: {verdict}",
            ),
            ("  last registry_sync after", fmt(cut["last_sync_after_cut_s"], ".3f", " s"), ""),
            (
                "  registry_sync sent",
                f"{cut['sync_frames']:,} frames",
                f"{cut['sync_bytes'] / kib:,.0f} KiB; CPU {cut['cpu_s']:.2f} s",
            ),
        ]
    if "death" in r:
        death = r["death"]
        rows += [
            (
                "steady state: registry_sync",
                fmt(r["steady_sync_bytes_per_s"], ".1f", " B/s"),
                f"over {r['steady_window_s']:.0f} s; CPU {r['steady_cpu_per_node_pct']:.2f} %/node",
            ),
            (
                "routing state per node",
                fmt(r["routing_state_per_node_kib"], ",.0f", " KiB"),
                f"max {r['routing_state_max_kib']:,.0f} KiB",
            ),
            (
                f"{death['node']} (degree {death['degree']}) killed: dropped everywhere",
                fmt(death["dropped_everywhere_s"], ".3f", " s"),
                f"re-converged {death['reconverged_s']:.3f} s,"
                f" {death['sync_frames']:,} frames, {death['sync_bytes'] / kib:,.0f} KiB",
            ),
        ]
    rows.append(far_call_row(r["far_call"]))
    if r.get("log"):
        rows.append(("warnings in the nodes' log", f"{len(r['log_warnings'])}", r["log"]))
    return rows


def far_call_row(call: dict[str, Any]) -> tuple[str, str, str]:
    """:returns: the table row of the call across the mesh's diameter."""
    return (
        f"call {call['from']}->{call['to']} ({call['hops']} hops)",
        fmt(call["ms"], ".1f", " ms"),
        "ok" if call["ok"] else f"FAILED: {call['error']}",
    )


# --------------------------------------------------------------------------
# Scenario 3: the mesh across processes (worker slices, or one process a node).

WORKER = os.path.join(HERE, "_mesh_worker.py")


def connected_without(adj: list[set[int]], gone: set[int]) -> bool:
    """:returns: whether the nodes not in C{gone} still form one connected mesh."""
    alive = [i for i in range(len(adj)) if i not in gone]
    seen = {alive[0]}
    frontier = [alive[0]]
    while frontier:
        u = frontier.pop()
        for v in adj[u]:
            if v not in seen and v not in gone:
                seen.add(v)
                frontier.append(v)
    return len(seen) == len(alive)


def merge_dropped(parts: list[dict[str, Any]]) -> dict[str, float | None]:
    """:returns: the workers' C{dropped} as one: the latest time, or C{None} if any has none."""
    dropped: dict[str, float | None] = {}
    for part in parts:
        for target, at in part["dropped"].items():
            if target in dropped and (dropped[target] is None or at is None):
                dropped[target] = None
            else:
                dropped[target] = max(at, dropped.get(target) or 0.0) if at else None
    return dropped


class WorkerBackend:
    """The mesh's nodes in C{procs} worker processes (benchmarks/_mesh_worker.py)."""

    name = "worker processes"

    def __init__(self, args: argparse.Namespace, children: Children, ids: list[str]) -> None:
        self.args = args
        self.children = children
        self.ids = ids
        self.tmp = tempfile.mkdtemp(prefix="relaytx-scale-workers-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.events: list[queue.Queue[dict[str, Any]]] = []
        self.home: dict[str, int] = {}
        self.ports: dict[str, int] = {}

    def _spawn(self) -> None:
        for k in range(self.args.procs):
            proc = self.children.start(
                [sys.executable, WORKER, os.path.join(self.tmp, f"worker-{k}.log")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=open(os.path.join(self.tmp, f"worker-{k}.err"), "wb"),
            )
            events: queue.Queue[dict[str, Any]] = queue.Queue()
            threading.Thread(target=self._read, args=(proc, events), daemon=True).start()
            self.procs.append(proc)
            self.events.append(events)
        for k in range(len(self.procs)):
            self._wait(k, "ready", 30)

    def _read(self, proc: subprocess.Popen[bytes], events: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                events.put(json.loads(line))
        events.put({"event": "exit"})

    def _send(self, k: int, **msg: Any) -> None:
        proc = self.procs[k]
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(msg).encode() + b"\n")
        proc.stdin.flush()

    def _wait(self, k: int, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"worker {k} sent no {kind!r} within {timeout:g}s")
            try:
                event = self.events[k].get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == kind:
                return event
            if event.get("event") == "error":
                raise RuntimeError(f"worker {k}: {event['error']}")
            if event.get("event") == "exit":
                with open(os.path.join(self.tmp, f"worker-{k}.err"), errors="replace") as f:
                    raise RuntimeError(f"worker {k} exited: {f.read()[-2000:]}")

    def _all(self, kind: str, timeout: float = 60, **msg: Any) -> list[dict[str, Any]]:
        for k in range(len(self.procs)):
            self._send(k, **msg)
        return [self._wait(k, kind, timeout) for k in range(len(self.procs))]

    def start(self) -> None:
        self._spawn()
        slices: list[list[str]] = [[] for _ in self.procs]
        for i, node_id in enumerate(self.ids):
            k = i % len(self.procs)
            self.home[node_id] = k
            slices[k].append(node_id)
        for k, nodes in enumerate(slices):
            self._send(k, cmd="start", nodes=nodes, settings=node_settings(self.args))
        for k in range(len(self.procs)):
            self.ports.update(self._wait(k, "started", 120)["ports"])

    def dial(self, edges: list[tuple[str, str]], progress: Progress | None = None) -> float:
        """
        Dial C{edges} in waves of C{--dial-batch}, each wave once the one
        before is open (a thousand handshakes at once in one process miss
        Autobahn's opening timeout and are re-dialled over and over).

        :returns: when the last link opened (Unix time).
        """
        batch = self.args.dial_batch or len(edges)
        for start in range(0, len(edges), batch):
            per: list[list[list[Any]]] = [[] for _ in self.procs]
            for a, b in edges[start : start + batch]:
                per[self.home[a]].append([a, b, self.ports[b]])
            for k, wave in enumerate(per):
                self._send(k, cmd="dial", edges=wave)
            want = 2 * min(len(edges), start + batch)
            deadline = time.monotonic() + self.args.timeout
            while (links := sum(e["links"] for e in self._all("links", cmd="links"))) < want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"links: {links // 2}/{want // 2} open")
                if progress is not None:
                    progress(f"opening links: {links // 2}/{len(edges)}")
                time.sleep(0.1)
        return time.time()

    def graph(self, adj: dict[str, list[str]], dead: list[str]) -> None:
        self._all("graph", cmd="graph", adj=adj, dead=dead)

    def status(self) -> dict[str, Any]:
        parts = self._all("status", cmd="status")
        dropped = merge_dropped(parts)
        return {
            "links": sum(p["links"] for p in parts),
            "converged": sum(p["converged"] for p in parts),
            "nodes": sum(p["nodes"] for p in parts),
            "bad": next((p["bad"] for p in parts if p["bad"]), ""),
            "changed_at": max(p["changed_at"] for p in parts),
            "sync_frames": sum(p["sync_frames"] for p in parts),
            "sync_bytes": sum(p["sync_bytes"] for p in parts),
            "route_changes": sum(p["route_changes"] for p in parts),
            "cpu": sum(p["cpu"] for p in parts),
            "harness_cpu": sum(p["harness_cpu"] for p in parts),
            "dropped": dropped,
            "silent": sum(p["silent"] for p in parts),
        }

    def dropped(self) -> dict[str, float | None]:
        """
        :returns: when the last node let go of each watched node (C{None}
            while some node still holds it). Without a status's look at
            every table, which holds the workers while the mesh is at work.
        """
        return merge_dropped(self._all("dropped", cmd="dropped"))

    def turns(self) -> float | None:
        """
        :returns: the longest turn of a worker's reactor since the last
            call (its nodes' work, and the checks'), and a new count.
        """
        return max(p["longest"] for p in self._all("turns", cmd="turns"))

    def cut(self, a: str, b: str) -> None:
        self._send(self.home[a], cmd="cut", a=a, b=b)

    def watch(self, node: str) -> None:
        for k in range(len(self.procs)):
            self._send(k, cmd="watch", node=node)

    def kill(self, node: str) -> None:
        self._send(self.home[node], cmd="kill", node=node)

    def call(self, src: str, dst: str) -> dict[str, Any]:
        k = self.home[src]
        self._send(k, cmd="call", src=src, dst=dst)
        return self._wait(k, "call", 30)

    def memory(self) -> dict[str, Any]:
        parts = self._all("memory", 300, cmd="memory")
        sizes = [size for p in parts for size in p["sizes"]]
        return {
            "routing_state_per_node_kib": sum(sizes) / len(sizes) / 1024,
            "routing_state_max_kib": max(sizes) / 1024,
            "rss_per_node_kib": sum(p["max_rss_kib"] for p in parts) / len(self.ids),
        }

    def stop(self) -> None:
        """Stop the workers, at the end of a run that went through: their logs go too."""
        for k, proc in enumerate(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    self._send(k, cmd="quit")
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        shutil.rmtree(self.tmp, ignore_errors=True)


class ProcessBackend:
    """One C{relay node} process per node, as users run them; watched over HTTP."""

    name = "one relay node process each"

    def __init__(self, args: argparse.Namespace, children: Children, ids: list[str]) -> None:
        self.args = args
        self.children = children
        self.ids = ids
        self.tmp = tempfile.mkdtemp(prefix="relaytx-scale-nodes-")
        self.ports = dict(zip(ids, listen_ports(len(ids)), strict=True))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.adj: dict[str, list[str]] = {}
        self.dead: set[str] = set()
        self.dist: dict[str, dict[str, int]] = {}
        self.watched: dict[str, dict[str, float | None]] = {}
        self.edges: list[tuple[str, str]] = []
        self.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(16)

    def start(self) -> None:
        pass  # the nodes start with their peers (dial)

    def dial(self, edges: list[tuple[str, str]], progress: Progress | None = None) -> None:
        peers: dict[str, list[str]] = {node_id: [] for node_id in self.ids}
        for a, b in edges:
            peers[a].append(f"ws://{HOST}:{self.ports[b]}")
        for node_id in self.ids:
            argv = [
                sys.executable, "-m", "relaytx.cli", "node", "--node-id", node_id,
                "--port", str(self.ports[node_id]),
                "--ping-interval", str(self.args.ping_interval),
            ]  # fmt: skip
            if self.args.peer_timeout is not None:
                config = os.path.join(self.tmp, f"{node_id}.toml")
                with open(config, "w") as f:
                    f.write(f"peer_timeout = {self.args.peer_timeout!r}\n")
                argv += ["--config", config]
            for url in peers[node_id]:
                argv += ["--add-peer", url]
            log = open(os.path.join(self.tmp, f"{node_id}.log"), "wb")
            self.procs[node_id] = self.children.start(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
            log.close()

    def wait_up(self, progress: Progress, timeout: float) -> float:
        """:returns: the Unix time the last node answered /health."""
        waiting = set(self.ids)
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting)} nodes not up after {timeout:g}s")
            for node_id in list(waiting):
                if self.procs[node_id].poll() is not None:
                    raise RuntimeError(f"{node_id} exited with {self.procs[node_id].returncode}")
                health: Any = None
                with contextlib.suppress(
                    OSError, RuntimeError, ValueError, http.client.HTTPException
                ):
                    health, _, _ = http_json(self.ports[node_id], "GET", "/health", timeout=2)
                if health is None:
                    continue
                if not isinstance(health, dict) or health.get("node_id") != node_id:
                    raise RuntimeError(f"port {self.ports[node_id]} of {node_id} is another's")
                waiting.discard(node_id)
            progress(f"starting nodes: {len(self.ids) - len(waiting)}/{len(self.ids)} up")
            time.sleep(0.2)
        return time.time()

    def graph(self, adj: dict[str, list[str]], dead: list[str]) -> None:
        self.adj = adj
        self.dead = set(dead)
        from _mesh_worker import bfs as bfs_ids

        self.dist = {n: bfs_ids(adj, n) for n in self.ids if n not in self.dead}

    def _metrics(self, node_id: str) -> dict[str, float]:
        conn = http.client.HTTPConnection(HOST, self.ports[node_id], timeout=30)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        values = {}
        for line in text.splitlines():
            if line.startswith("relaytx_"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    def _check(self, node_id: str) -> str:
        table, _, _ = http_json(self.ports[node_id], "GET", "/registry/routes", timeout=30)
        dist = self.dist[node_id]
        if len(table) != len(dist) - 1:
            return f"{node_id} knows {len(table)}/{len(dist) - 1}"
        for dest, route in table.items():
            if dist.get(dest) != route["hops"]:
                return f"{node_id}->{dest}: {route['hops']} hops, BFS {dist.get(dest)}"
        return ""

    def status(self) -> dict[str, Any]:
        alive = [n for n in self.ids if n not in self.dead]
        metrics = dict(zip(alive, self.pool.map(self._metrics, alive), strict=True))
        now = time.time()
        counted = [n for n in alive if metrics[n].get("relaytx_routes") == len(self.dist[n]) - 1]
        checks = list(self.pool.map(self._check, alive)) if len(counted) == len(alive) else []
        for victim, seen in self.watched.items():
            if victim not in self.dead:
                continue  # (not killed yet: every table still holds it)
            for node_id in alive:
                if seen.get(node_id) is None:
                    table_size = metrics[node_id].get("relaytx_routes")
                    if table_size is not None and table_size <= len(self.dist[node_id]) - 1:
                        # When its table last changed, by its own clock.
                        changed = metrics[node_id].get("relaytx_routes_changed_timestamp_seconds")
                        seen[node_id] = min(now, changed) if changed else now
        bad = next((c for c in checks if c), "")
        converged = len(alive) if checks and not bad else len(counted) - (1 if bad else 0)
        return {
            "converged": converged,
            "nodes": len(alive),
            "bad": bad or ("" if len(counted) == len(alive) else "routes still arriving"),
            "changed_at": max(
                m.get("relaytx_routes_changed_timestamp_seconds", 0.0) for m in metrics.values()
            ),
            "sync_frames": sum(
                m.get("relaytx_registry_sync_frames_total", 0.0) for m in metrics.values()
            ),
            "sync_bytes": sum(
                m.get("relaytx_registry_sync_bytes_total", 0.0) for m in metrics.values()
            ),
            "cpu": sum(cpu_seconds(self.procs[n].pid) for n in alive),
            # (The checks run here, in scale.py; the nodes only answer scrapes.)
            "harness_cpu": 0.0,
            "silent": sum(m.get(SILENT_SAMPLE, 0.0) for m in metrics.values()),
            "dropped": {
                t: (None if None in seen.values() else max(seen.values(), default=0.0))  # type: ignore[type-var]
                for t, seen in self.watched.items()
            },
        }

    def cut(self, a: str, b: str) -> None:
        http_json(self.ports[a], "DELETE", "/registry/peers/remove", {"node_id": b})

    def watch(self, node: str) -> None:
        self.watched[node] = {n: None for n in self.ids if n != node and n not in self.dead}

    def dropped(self) -> dict[str, float | None]:
        """:returns: as L{WorkerBackend.dropped}, from a status (scraped)."""
        dropped: dict[str, float | None] = self.status()["dropped"]
        return dropped

    def turns(self) -> float | None:
        """:returns: C{None}: a node's own reactor is not watched from here."""
        return None

    def kill(self, node: str) -> None:
        os.kill(self.procs[node].pid, signal.SIGKILL)
        self.procs[node].wait(10)

    def call(self, src: str, dst: str) -> dict[str, Any]:
        started = time.monotonic()
        body = {
            "jsonrpc": "2.0", "method": "remote_call", "id": 1,
            "params": {"node_id": dst, "server_name": "node", "method": "ping", "timeout": 10},
        }  # fmt: skip
        answer, _, _ = http_json(self.ports[src], "POST", "/rpc", body, timeout=30)
        ok = bool((answer.get("result") or {}).get("pong"))
        ms = 1000 * (time.monotonic() - started)
        return {"ok": ok, "ms": ms, "error": None if ok else str(answer.get("error"))}

    def memory(self) -> dict[str, Any]:
        rss = [rss_kib(p.pid) or 0 for n, p in self.procs.items() if n not in self.dead]
        return {"rss_per_node_kib": sum(rss) / len(rss), "rss_max_kib": max(rss)}

    def stop(self) -> None:
        self.pool.shutdown(wait=False)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        shutil.rmtree(self.tmp, ignore_errors=True)  # (a run that failed keeps its logs)


def run_mesh_apart(
    args: argparse.Namespace, children: Children, progress: Progress
) -> dict[str, Any]:
    """
    The mesh scenario with nodes in other processes: start, convergence,
    steady state, cuts, a node's death, a call across the diameter.
    """
    n = args.mesh
    rng = random.Random(args.seed)
    edges = topology(n, args.degree, rng)
    adj = adjacency(n, edges)
    ids = [f"n{i:03d}" for i in range(n)]
    backend: Any = (ProcessBackend if args.processes else WorkerBackend)(args, children, ids)
    dead: set[int] = set()

    def publish() -> None:
        backend.graph(
            {ids[i]: [ids[j] for j in adj[i] if j not in dead] for i in range(n) if i not in dead},
            [ids[i] for i in dead],
        )

    def until_converged(what: str, since: float) -> tuple[float, dict[str, Any]]:
        """
        Poll until every table equals BFS. :returns: how long that took
        (by the nodes' clocks) and the last status; a wait longer than
        L{STALL_NOTED} seconds notes in it (C{stalled_on}) what the last
        poll found wrong, so that a report names what held it up.
        """
        started = time.monotonic()
        bad = ""
        while True:
            status = backend.status()
            if status["converged"] == status["nodes"]:
                if time.monotonic() - started > STALL_NOTED:
                    status["stalled_on"] = bad
                return max(0.0, status["changed_at"] - since), status
            bad = status["bad"]
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                raise RuntimeError(f"{what}: not done after {args.timeout:g}s ({status['bad']})")
            progress(
                f"{what}: {status['converged']}/{status['nodes']} converged"
                f" ({elapsed:.1f}s; e.g. {status['bad']}; links dropped as silent so far:"
                f" {status['silent']:.0f})"
            )
            time.sleep(args.poll_apart)

    def quiet(status: dict[str, Any]) -> dict[str, Any]:
        """Wait until no registry_sync went out for a while; :returns: the status then."""
        last = status["sync_frames"]
        calm_since = time.monotonic()
        deadline = calm_since + args.timeout
        while time.monotonic() - calm_since < max(args.quiet_time, 1.0):
            if time.monotonic() > deadline:
                raise RuntimeError("registry_sync still flowing")
            time.sleep(0.25)
            status = backend.status()
            if status["sync_frames"] != last:
                last = status["sync_frames"]
                calm_since = time.monotonic()
        return status

    result: dict[str, Any] = {
        "mode": backend.name,
        "procs": getattr(args, "procs", None),
        "nodes": n,
        "edges": len(edges),
        "avg_degree": 2 * len(edges) / n,
        "diameter": max(max(bfs(adj, i)) for i in range(n)),
        "seed": args.seed,
        "ping_interval_s": args.ping_interval,
        "peer_timeout_s": args.peer_timeout,
        "load_before": os.getloadavg(),
    }
    progress("starting nodes", force=True)
    backend.start()
    publish()
    named = [(ids[a], ids[b]) for a, b in edges]
    backend.turns()
    t0 = time.time()
    opened = backend.dial(named, progress)
    if opened:
        result["links_open_s"] = opened - t0
    if args.processes:
        spawned = t0
        t0 = backend.wait_up(progress, args.timeout * 4)
        result["all_up_after_s"] = t0 - spawned
    conv, status = until_converged("initial convergence", t0)
    status = quiet(status)
    result.update(
        converged_s=conv,
        start_sync_frames=status["sync_frames"],
        start_sync_bytes=status["sync_bytes"],
        start_route_changes=status.get("route_changes"),
        start_silent=status["silent"],
        cpu_start_s=status["cpu"] - status["harness_cpu"],
        harness_cpu_start_s=status["harness_cpu"],
        start_longest_turn_s=backend.turns(),
    )
    # Steady state.
    progress(f"steady state for {args.window_apart:g}s", force=True)
    s1 = backend.status()
    t1 = time.monotonic()
    time.sleep(args.window_apart)
    s2 = backend.status()
    window = time.monotonic() - t1
    result.update(
        steady_window_s=window,
        steady_sync_bytes_per_s=(s2["sync_bytes"] - s1["sync_bytes"]) / window,
        steady_cpu_per_node_pct=100
        * ((s2["cpu"] - s2["harness_cpu"]) - (s1["cpu"] - s1["harness_cpu"]))
        / window
        / n,
    )
    # Cuts.
    cuts = []
    live = list(edges)
    for c in range(args.cuts):
        candidates = [e for e in live if not is_bridge(adj, *e)]
        if not candidates:
            break
        a, b = rng.choice(candidates)
        live.remove((a, b))
        adj[a].discard(b)
        adj[b].discard(a)
        publish()
        before = backend.status()
        backend.turns()
        cut_at = time.time()
        backend.cut(ids[a], ids[b])
        took, status = until_converged(f"cut {c + 1} {ids[a]}-{ids[b]}", cut_at)
        longest_turn = backend.turns()
        stalled_on = status.get("stalled_on")
        status = quiet(status)
        cuts.append(
            {
                "link": f"{ids[a]}->{ids[b]}",
                "reconverged_s": took,
                "sync_frames": status["sync_frames"] - before["sync_frames"],
                "sync_bytes": status["sync_bytes"] - before["sync_bytes"],
                "silent": status["silent"] - before["silent"],
                "longest_turn_s": longest_turn,
                "ok": took <= 1.0,
                "stalled_on": stalled_on,
            }
        )
    result["cuts"] = cuts
    # A node dies: the best connected one whose loss leaves the mesh in one piece.
    order = sorted(range(n), key=lambda i: -len(adj[i]))
    victim = next(i for i in order if connected_without(adj, {i}))
    backend.watch(ids[victim])
    # The mesh without it is made known first: working it out (BFS from
    # every node) holds a worker's reactor for a while, not to be taken
    # for the mesh's own slowness once the node is dead.
    dead.add(victim)
    for j in list(adj[victim]):
        adj[j].discard(victim)
    adj[victim] = set()
    publish()
    before = backend.status()
    backend.turns()
    killed_at = time.time()
    backend.kill(ids[victim])
    dropped_s = None
    started = time.monotonic()
    while time.monotonic() - started < args.timeout:
        at = backend.dropped().get(ids[victim])
        if at is not None:
            dropped_s = at - killed_at
            break
        progress(f"waiting for every node to drop {ids[victim]}")
        time.sleep(0.05 if not args.processes else 0.1)
    took, status = until_converged(f"after {ids[victim]} died", killed_at)
    longest_turn = backend.turns()
    stalled_on = status.get("stalled_on")
    status = quiet(status)
    result["death"] = {
        "node": ids[victim],
        "degree": len([e for e in edges if victim in e]),
        "dropped_everywhere_s": dropped_s,
        "reconverged_s": took,
        "sync_frames": status["sync_frames"] - before["sync_frames"],
        "sync_bytes": status["sync_bytes"] - before["sync_bytes"],
        "silent": status["silent"] - before["silent"],
        "longest_turn_s": longest_turn,
        "stalled_on": stalled_on,
    }
    # A call across the diameter of what is left.
    alive = [i for i in range(n) if i not in dead]
    dists = {i: bfs(adj, i) for i in alive}
    far_src = max(alive, key=lambda i: max(dists[i][j] for j in alive))
    far_dst = max(alive, key=lambda j: dists[far_src][j])
    call = backend.call(ids[far_src], ids[far_dst])
    result["far_call"] = {
        "from": ids[far_src],
        "to": ids[far_dst],
        "hops": dists[far_src][far_dst],
        "ms": call["ms"],
        "ok": call["ok"],
        "error": call["error"],
    }
    # Last: walking every node's routing state holds each worker's reactor
    # for seconds at a thousand nodes, long enough to fail links' pings.
    progress("measuring routing memory", force=True)
    result["memory"] = backend.memory()
    result["load_after"] = os.getloadavg()
    result["targets"] = {"far_call": call["ok"]}
    backend.stop()
    progress.done("mesh scenario done")
    return result


def apart_table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    kib = 1024
    rows = [
        (
            "nodes / edges (avg degree)",
            f"{r['nodes']} / {r['edges']} ({r['avg_degree']:.2f})",
            f"seed {r['seed']}, diameter {r['diameter']}; {r['mode']}"
            + (f" x{r['procs']}" if r.get("procs") and r["mode"].startswith("worker") else "")
            + _peer_timeout_note(r),
        ),
        (
            "load average before / after",
            f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}",
            "2 cores",
        ),
    ]
    if "links_open_s" in r:
        rows.append(
            ("all links open after", fmt(r["links_open_s"], ".2f", " s"), "from the first dial")
        )
    if "all_up_after_s" in r:
        rows.append(
            ("last node up after", fmt(r["all_up_after_s"], ".1f", " s"), "from the first spawn")
        )
    rows += [
        (
            "routes converged (= BFS) after",
            fmt(r["converged_s"], ".2f", " s"),
            "after the last node was up" if "all_up_after_s" in r else "from the first dial",
        ),
        (
            "registry_sync at start",
            f"{r['start_sync_frames']:,.0f} frames",
            f"{r['start_sync_bytes'] / kib / kib:,.2f} MiB",
        ),
        (
            "CPU, all nodes, start-up",
            fmt(r["cpu_start_s"], ".1f", " s"),
            f"and {r.get('harness_cpu_start_s', 0.0):.1f} s of the checks",
        ),
        ("links dropped as silent, start-up", f"{r['start_silent']:,.0f}", "liveness"),
    ]
    if r.get("start_route_changes") is not None:
        floor = r["nodes"] * (r["nodes"] - 1)
        rows.append(
            (
                "route changes at start",
                f"{r['start_route_changes']:,}",
                f"{r['start_route_changes'] / floor:.2f} a destination a node (1.00: none redone)",
            )
        )
    if r.get("start_longest_turn_s") is not None:
        rows.append(
            (
                "longest reactor turn, start-up",
                fmt(r["start_longest_turn_s"], ".2f", " s"),
                "a worker's: its nodes' work, and the checks'",
            )
        )
    rows += [
        (
            "steady state: registry_sync",
            fmt(r["steady_sync_bytes_per_s"], ".1f", " B/s"),
            f"over {r['steady_window_s']:.0f} s",
        ),
        ("steady state: CPU per node", fmt(r["steady_cpu_per_node_pct"], ".2f", " %"), "of a core"),
    ]
    memory = r["memory"]
    if "routing_state_per_node_kib" in memory:
        rows.append(
            (
                "routing state per node",
                fmt(memory["routing_state_per_node_kib"], ",.0f", " KiB"),
                f"max {memory['routing_state_max_kib']:,.0f} KiB",
            )
        )
    rows.append(("RSS per node", fmt(memory["rss_per_node_kib"], ",.0f", " KiB"), ""))
    for k, cut in enumerate(r["cuts"], 1):
        rows += [
            (
                f"cut {k}: {cut['link']}: re-converged",
                fmt(cut["reconverged_s"], ".2f", " s"),
                f"{cut['sync_frames']:,.0f} frames, {cut['sync_bytes'] / kib:,.0f} KiB"
                + _phase_note(cut),
            )
        ]
    death = r["death"]
    rows += [
        (
            f"{death['node']} (degree {death['degree']}) killed: dropped everywhere",
            fmt(death["dropped_everywhere_s"], ".2f", " s"),
            f"re-converged {death['reconverged_s']:.2f} s, {death['sync_bytes'] / kib:,.0f} KiB"
            + _phase_note(death),
        )
    ]
    rows.append(far_call_row(r["far_call"]))
    return rows


def _phase_note(phase: dict[str, Any]) -> str:
    # Links dropped as silent during a phase, and what held up a long one.
    silent = phase.get("silent", 0)
    note = f", {silent:,.0f} links dropped as silent" if silent else ""
    if phase.get("longest_turn_s") is not None:
        note += f", turns up to {phase['longest_turn_s']:.2f} s"
    stalled_on = phase.get("stalled_on")
    return note + (f"; late: {stalled_on}" if stalled_on else "")


# --------------------------------------------------------------------------


#: A wait for convergence longer than this (seconds) notes what held it up.
STALL_NOTED = 5.0

#: The metric of the links a node dropped because their peer fell silent.
SILENT_SAMPLE = 'relaytx_links_lost_total{cause="silent"}'


def node_settings(args: argparse.Namespace) -> dict[str, Any]:
    """:returns: the settings every node of C{--mesh} gets, besides its id and port."""
    settings: dict[str, Any] = {"ping_interval": args.ping_interval}
    if args.peer_timeout is not None:
        settings["peer_timeout"] = args.peer_timeout
    return settings


#: From this many nodes on, C{--mesh} hosts them in worker processes by default.
APART_FROM = 100


def default_procs(nodes: int | None) -> int:
    """
    :returns: the worker processes C{--mesh nodes} uses when C{--procs} is
        not given: one per core this process may run on from L{APART_FROM}
        nodes on (one reactor would run the whole mesh's work in series,
        and what it measured would be that, not the mesh), else none (a
        small mesh's work is less than what the workers' coordination adds).
    """
    if nodes is None or nodes < APART_FROM:
        return 0
    return max(1, len(os.sched_getaffinity(0)))


#: Seconds of C{peer_timeout} per node a worker hosts, where that is more
#: than a node's default (L{default_peer_timeout}).
PACKED_TIMEOUT = 0.0125


def default_peer_timeout(nodes: int, procs: int) -> float | None:
    """
    :returns: the C{peer_timeout} of C{--mesh nodes} in C{procs} workers
        when C{--peer-timeout} is not given: L{PACKED_TIMEOUT} per node a
        worker hosts, where that is more than a node's own default (6.25 s
        for 500 nodes a worker), else C{None} (the default).

    Nodes that share a reactor wait for each other: at the height of a
    thousand-node start-up, one turn of a worker's reactor handled the
    adverts of all its 500 nodes in 1.4-2.4 s (3 s on a slower day), and
    the other worker's nodes, whose requests waited that long unanswered,
    took theirs for frozen (a node credits its peers only its own stalls)
    and dropped their links: four runs in six did not converge within 60 s.
    A node alone in its process turns in milliseconds. No figure of the
    report waits on a silent peer (a killed node's links are aborted, a cut
    is a removal), and links dropped as silent are still counted.
    """
    from relaytx._liveness import DEFAULT_PEER_TIMEOUT

    timeout = PACKED_TIMEOUT * -(-nodes // max(procs, 1))
    return timeout if timeout > DEFAULT_PEER_TIMEOUT else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--links", type=int, nargs="?", const=10000, help="links on one hub")
    parser.add_argument("--mesh", type=int, nargs="?", const=50, help="nodes in the mesh")
    parser.add_argument("--ping-interval", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    links = parser.add_argument_group("--links")
    links.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    links.add_argument(
        "--sources", help="comma-separated source addresses (default 127.0.0.2, .3, ...)"
    )
    links.add_argument(
        "--concurrency", type=int, default=128, help="handshakes in flight, all workers (128)"
    )
    links.add_argument("--window", type=float, help="steady-state seconds (3 ping intervals)")
    links.add_argument("--calls", type=int, default=100, help="sequential JSON-RPC calls (100)")
    links.add_argument("--open-timeout", type=float, default=900, help="seconds (900)")
    links.add_argument(
        "--probe", type=float, default=20, help="seconds of one call every 50 ms (20; 0: none)"
    )
    links.add_argument(
        "--soak", type=float, default=0, help="then watch the hub's RSS for this many seconds"
    )
    links.add_argument("--py-spy", metavar="DIR", help="record the hub with py-spy into DIR")
    mesh = parser.add_argument_group("--mesh")
    mesh.add_argument("--seed", type=int, default=1, help="topology seed (1)")
    mesh.add_argument("--degree", type=float, default=3.0, help="average degree (3)")
    mesh.add_argument("--cuts", type=int, default=3, help="links to cut, one by one (3)")
    mesh.add_argument("--timeout", type=float, default=60, help="bound of each wait, s (60)")
    mesh.add_argument("--poll", type=float, default=0.005, help="convergence poll, s (0.005)")
    mesh.add_argument(
        "--procs", type=int, default=None,
        help="host the nodes in this many worker processes (0: all in this process;"
        f" default: one per core from {APART_FROM} nodes on, else 0)",
    )  # fmt: skip
    mesh.add_argument("--processes", action="store_true", help="one relay node process per node")
    mesh.add_argument(
        "--peer-timeout", type=float,
        help="every node's peer_timeout, s (default: the node's, 1.25, see the README's"
        f" Liveness; {PACKED_TIMEOUT * 1000:g} ms per node a worker hosts where that is more:"
        " hundreds of nodes sharing a reactor stall each other for longer)",
    )  # fmt: skip
    mesh.add_argument(
        "--dial-batch", type=int, default=0,
        help="with --procs, open the links in waves of this many (0: all at once)",
    )  # fmt: skip
    mesh.add_argument(
        "--window-apart", type=float, default=10.0,
        help="steady-state window with --procs/--processes, s (10)",
    )  # fmt: skip
    mesh.add_argument(
        "--poll-apart", type=float, default=0.5,
        help="convergence poll with --procs/--processes, s (0.5; times come from"
        " the nodes' own clocks, not from the poll)",
    )  # fmt: skip
    mesh.add_argument(
        "--quiet-time", type=float, default=0.5,
        help="no registry_sync for this long ends a phase (0.5 s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.links is None and args.mesh is None:
        args.links, args.mesh = 10000, 50
    if args.mesh is not None and args.mesh < 3:
        parser.error("--mesh needs at least 3 nodes")
    if args.procs is None:
        args.procs = default_procs(args.mesh)
    elif args.procs < 0:
        parser.error("--procs takes 0 or more")
    if args.peer_timeout is not None and not 0 < args.peer_timeout <= 3600:
        parser.error("--peer-timeout takes seconds in (0, 3600]")
    if args.peer_timeout is None and args.mesh is not None and not args.processes:
        args.peer_timeout = default_peer_timeout(args.mesh, args.procs)
    progress = Progress(quiet=args.quiet)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    children = Children()
    report: dict[str, Any] = {}
    status = 0
    try:
        if args.links is not None:
            report["links"] = run_links(args, children, progress)
            progress.done("links scenario done")
        if args.mesh is not None and (args.procs or args.processes):
            raise_nofile(8 * args.mesh + 1024)
            report["mesh"] = run_mesh_apart(args, children, progress)
        elif args.mesh is not None:
            report["mesh"] = run_mesh(args, progress)
    except KeyboardInterrupt:
        progress.done("interrupted")
        status = 130
    except (RuntimeError, OSError) as e:
        # Said even with --quiet, and kept in the JSON: a failed run is a figure too.
        progress.quiet = False
        progress.done(f"scale.py: error: {e}")
        report["error"] = str(e)
        status = 1
    finally:
        children.stop_all()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        if "links" in report:
            links = report["links"]
            print_table(f"--links {args.links}: peer links on one hub", links_table(links))
            print_profile("hub profile while opening links", links.get("profile_open"))
            print_profile("hub profile at steady state", links.get("profile_idle"))
        if "mesh" in report and "mode" in report["mesh"]:
            print_table(f"--mesh {args.mesh}: route convergence", apart_table(report["mesh"]))
        elif "mesh" in report:
            print_table(f"--mesh {args.mesh}: route convergence", mesh_table(report["mesh"]))
    for part in report.values():
        if isinstance(part, dict) and not all(part.get("targets", {}).values()):
            status = status or 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
