#!/usr/bin/env python
"""
Local JSON-RPC throughput of a relaytx node against a bare twisted.web baseline.

Usage (from the repository root, with the project's virtualenv)::

    python benchmarks/local_rpc.py [--duration 5] [--warmup 1] [--inflight 1,64]
                                   [--repeat 1] [--json] [--no-pin]
                                   [--bare-form-parsing mirror|on|off]

What it does:

  - starts a relaytx node (C{twistd -n relay --node-id bench --port P --app
    examples/counter.py}) and, in another process, a bare twisted.web server
    (C{BareRpc} in L{serve_bare}: one leaf resource whose C{render_POST}
    parses the same JSON-RPC request with orjson, bumps a counter and answers
    C{{"jsonrpc": "2.0", "result": n, "id": ...}}), both on 127.0.0.1 and on
    the same reactor (twistd's default one), with the same L{Site} settings
    as relaytx's C{NodeSite}: no access log, no tracebacks, not noisy, and
    the same C{parsePOSTFormSubmission} (read from C{NodeSite} itself, see
    L{_node_site_parses_forms}; C{--bare-form-parsing} overrides it);
  - for each in-flight level (default 1 and 64) and each target, runs the
    same load generator (L{run_loadgen}) in a process of its own: N
    keep-alive HTTP/1.1 connections with one outstanding request each,
    posting C{{"jsonrpc":"2.0","method":"counter_server.increment",
    "params":[1],"id":K}} for a warm-up and then for C{--duration} seconds,
    recording each request's latency and validating each answer
    (L{check_answer}: status 200, Content-Length body, a JSON-RPC 2.0 answer
    with an integer C{result} and the request's C{id});
  - prints one table: calls/s, p50 and p99 latency, the CPU used meanwhile
    by the server, by the load generator and by everything else on the
    machine, the server's CPU time per call, errors, and the relaytx/bare
    ratio of calls/s per in-flight level; or the same as JSON with
    C{--json}. A progress line per scenario goes to stderr. With
    C{--repeat N} every scenario runs N times, interleaved, and the median
    run is shown. Errors (also during the warm-up) are listed under the
    table and make the exit status 1; runs whose figure cannot be trusted
    (other processes busy, or the server not saturated at more than one
    call in flight) are flagged there too.

Every subprocess is started with Popen and stopped by its pid at the end,
also on Ctrl-C, SIGTERM or an error. With two CPUs or more, the servers are
pinned to the first and the load generator to the last (C{--no-pin} to
leave them free): it steadies the figures.

The load generator is a single-threaded epoll loop over non-blocking
sockets: the request bytes are built from pre-encoded parts (only the id
changes), and a response is parsed no further than its status line,
Content-Length and body. It reports its own CPU time and reads the server's
from /proc/PID/stat over the measured window, so each row shows whether the
client could be the bottleneck. C{wrk} is not used: it is not installed
here, and this generator needs only the standard library (plus orjson, which
the project depends on, to check bodies).

Observed on the 2-core development machine (Python 3.11, Twisted 26.10, a
shared VM): at 64 in flight the server runs at 95-100% of its core while the
load generator uses 6-17% of the other one (about 7-10 us of CPU per request,
against 50-140 us for the servers), so the servers are the bottleneck, by
an order of magnitude. At 1 in flight both sides are partly idle: that row
measures the round trip (latency), not capacity. When other processes run
on the machine, the figures swing by 30% or more; the "oth cpu" column and
the notes under the table show it, and the server's CPU per call ("srv
us/call") is the steadier figure then.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the venv has orjson
    _loads = json.loads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _loadgen import percentile_ms  # noqa: E402

METHOD = "counter_server.increment"
HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# The bare twisted.web baseline (run in its own process: --serve-bare PORT).


def _node_site_parses_forms() -> bool:
    """
    Whether relaytx's C{NodeSite} lets twisted.web parse form bodies of POSTs
    (C{Site(parsePOSTFormSubmission=...)}, default C{True}), so the baseline
    does the same: that parsing alone (the Content-Type header goes through
    the C{email} package) costs about a third of a small request's CPU.
    """
    try:
        from twisted.web.resource import Resource

        from relaytx._http import NodeSite

        return bool(NodeSite(Resource(), 1 << 20)._parsePOSTFormSubmission)
    except Exception:  # relaytx changed shape: fall back to twisted.web's default
        return True


def serve_bare(port: int, form_parsing: str = "mirror") -> None:
    """
    Serve C{POST /rpc} with a minimal JSON-RPC resource on C{HOST:port}
    until SIGTERM/SIGINT.

    :param form_parsing: C{"mirror"} (do as relaytx's C{NodeSite} does),
        C{"on"} or C{"off"}: the site's C{parsePOSTFormSubmission}.
    """
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    loads = _loads
    dumps = orjson.dumps

    class BareRpc(Resource):
        isLeaf = True

        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def render_POST(self, request: Any) -> bytes:
            call = loads(request.content.read())
            self.count += call["params"][0]
            request.setHeader(b"content-type", b"application/json")
            return dumps({"jsonrpc": "2.0", "result": self.count, "id": call["id"]})

    class QuietSite(Site):
        # Same defaults as relaytx._http.NodeSite.
        displayTracebacks = False
        noisy = False

        def log(self, request: Any) -> None:
            pass

    root = Resource()
    root.putChild(b"rpc", BareRpc())
    parse_forms = _node_site_parses_forms() if form_parsing == "mirror" else form_parsing == "on"
    site = QuietSite(root, parsePOSTFormSubmission=parse_forms)
    reactor.listenTCP(port, site, interface=HOST)
    print(
        f"bare twisted.web on {HOST}:{port} ({type(reactor).__name__}, "
        f"parsePOSTFormSubmission={site._parsePOSTFormSubmission})",
        flush=True,
    )
    reactor.run()


# --------------------------------------------------------------------------
# The load generator (run in its own process: --loadgen).


def _cpu_seconds_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14, stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def check_answer(header: bytes, body: bytes, request_id: int) -> str | None:
    """
    :returns: C{None} for a valid answer to request C{request_id} (status
        200, a JSON-RPC 2.0 answer with an integer result and that id), else
        what is wrong with it.
    """
    if not header.startswith(b"HTTP/1.1 200 "):
        return f"HTTP status {header[9:12].decode('latin-1')}"
    try:
        answer = _loads(body)
    except ValueError:
        return "body is not JSON"
    if type(answer) is not dict or answer.get("jsonrpc") != "2.0":
        return "not a JSON-RPC 2.0 answer"
    if "error" in answer:
        error = answer["error"]
        code = error.get("code") if type(error) is dict else None
        return f"JSON-RPC error {code}"
    if answer.get("id") != request_id:
        return "answer id does not match the request"
    if type(answer.get("result")) is not int:
        return "result is not an integer"
    return None


def run_loadgen(
    port: int, connections: int, warmup: float, duration: float, server_pid: int
) -> dict[str, Any]:
    """
    Drive C{HOST:port} with C{connections} keep-alive connections, one
    request outstanding on each, and measure the C{duration} seconds that
    follow C{warmup}.
    """
    head = (
        f"POST /rpc HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    body_prefix = b'{"jsonrpc":"2.0","method":"' + METHOD.encode() + b'","params":[1],"id":'

    def request_bytes(k: int) -> bytes:
        body = b"%s%d}" % (body_prefix, k)
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)

    perf = time.perf_counter
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    pending_id: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    buffers: dict[int, bytes] = {}
    next_id = 1
    errors: dict[str, int] = {}
    latencies: list[float] = []
    completed = 0

    samples: list[str] = []  # the first few bad answers, verbatim

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def send(fd: int) -> None:
        nonlocal next_id
        k = next_id
        next_id += 1
        pending_id[fd] = k
        data = request_bytes(k)
        sent_at[fd] = perf()
        sent = socks[fd].send(data)
        if sent != len(data):  # a few hundred bytes on an empty socket buffer
            socks[fd].sendall(data[sent:])

    def connect() -> int:
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        fd = s.fileno()
        socks[fd] = s
        buffers[fd] = b""
        ep.register(fd, select.EPOLLIN)
        return fd

    def drop(fd: int) -> None:
        ep.unregister(fd)
        socks.pop(fd).close()
        buffers.pop(fd, None)
        pending_id.pop(fd, None)
        sent_at.pop(fd, None)

    for _ in range(connections):
        send(connect())

    start = perf()
    measure_from = start + warmup
    end = measure_from + duration
    measuring = False
    cpu_self0 = cpu_server0 = 0.0
    host0: float | None = None
    recv = socket.socket.recv

    while True:
        now = perf()
        if not measuring and now >= measure_from:
            measuring = True
            completed = 0
            latencies.clear()
            cpu_self0 = time.process_time()
            cpu_server0 = _cpu_seconds_of(server_pid) or 0.0
            host0 = _host_busy_seconds()
            measure_from = now
        if now >= end:
            break
        for fd, _event in ep.poll(min(0.1, end - now)):
            s = socks.get(fd)
            if s is None:
                continue
            try:
                data = recv(s, 65536)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                data = b""
            if not data:
                error("connection closed")
                drop(fd)
                with contextlib.suppress(OSError):
                    send(connect())
                continue
            buf = buffers[fd] + data if buffers[fd] else data
            split = buf.find(b"\r\n\r\n")
            if split < 0:
                buffers[fd] = buf
                continue
            header = buf[:split]
            i = header.find(b"ontent-Length: ")
            if i < 0:
                i = header.lower().find(b"ontent-length: ")
            if i < 0:
                error("no content-length")
                drop(fd)
                with contextlib.suppress(OSError):
                    send(connect())
                continue
            j = header.find(b"\r", i)
            length = int(header[i + 15 : j if j >= 0 else len(header)])
            body_end = split + 4 + length
            if len(buf) < body_end:
                buffers[fd] = buf
                continue
            done = perf()
            body = buf[split + 4 : body_end]
            buffers[fd] = buf[body_end:]
            if buffers[fd]:
                error("unexpected extra bytes")
                buffers[fd] = b""
            problem = check_answer(header, body, pending_id[fd])
            if problem is None:
                if measuring:
                    completed += 1
                    latencies.append(done - sent_at[fd])
            else:
                error(problem if measuring else f"warm-up: {problem}")
                if len(samples) < 3:
                    samples.append(f"{header[:60]!r} {body[:200]!r}")
            if done < end:
                send(fd)

    elapsed = perf() - measure_from
    cpu_self = time.process_time() - cpu_self0
    server_now = _cpu_seconds_of(server_pid)
    cpu_server = None if server_now is None else server_now - cpu_server0
    host_now = _host_busy_seconds()
    # Whatever else ran on the machine meanwhile (other processes, the kernel's
    # own work not charged to a process), in share of one CPU.
    cpu_other = None
    if host0 is not None and host_now is not None and cpu_server is not None:
        cpu_other = max(0.0, host_now - host0 - cpu_server - cpu_self)
    # Requests still outstanding after the window ended that had waited far
    # too long: a stalled server, counted as errors.
    stalled = sum(1 for t in sent_at.values() if end - t > max(2.0, duration / 2))
    if stalled:
        errors["stalled requests"] = stalled
    for fd in list(socks):
        drop(fd)
    ep.close()
    latencies.sort()
    return {
        "connections": connections,
        "seconds": elapsed,
        "calls": completed,
        "calls_per_s": completed / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "max_ms": latencies[-1] * 1000 if latencies else None,
        # Server CPU per call: steadier than calls/s on a shared, noisy machine.
        "server_us_per_call": (
            1e6 * cpu_server / completed if cpu_server is not None and completed else None
        ),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_samples": samples,
        "loadgen_cpu_pct": 100 * cpu_self / elapsed if elapsed > 0 else None,
        "server_cpu_pct": (
            100 * cpu_server / elapsed if cpu_server is not None and elapsed > 0 else None
        ),
        "other_cpu_pct": (
            100 * cpu_other / elapsed if cpu_other is not None and elapsed > 0 else None
        ),
    }


# --------------------------------------------------------------------------
# The orchestrator.


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def probe(port: int) -> bool:
    """One JSON-RPC call; C{True} if it got a valid answer."""
    body = json.dumps({"jsonrpc": "2.0", "method": METHOD, "params": [0], "id": 0})
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("POST", "/rpc", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        return response.status == 200 and isinstance(answer.get("result"), int)
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Children:
    """The subprocesses this script started, stopped by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.procs.clear()


def wait_ready(name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if probe(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer on port {port} within 30 s")


def twistd_argv() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return [sys.executable, "-c", code]


def run_scenario(
    children: Children,
    port: int,
    server_pid: int,
    inflight: int,
    cpu: int | None,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--loadgen",
        "--port",
        str(port),
        "--connections",
        str(inflight),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--server-pid",
        str(server_pid),
    ]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    out = tmp / f"loadgen-{port}-{inflight}.out"
    proc = children.start(argv, out)
    try:
        proc.wait(args.warmup + args.duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        children.procs.remove(proc)
    text = out.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{text[-2000:]}")
    return dict(json.loads(text.strip().splitlines()[-1]))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pick_cpus(pin: bool) -> tuple[int | None, int | None]:
    """
    The CPUs for the servers and for the load generator: the first and the
    last this process may use, when pinning is asked for and there are two.
    """
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


def doubts(run: dict[str, Any]) -> list[str]:
    """Why C{run}'s figures cannot be trusted, if they cannot."""
    reasons = []
    other = run.get("other_cpu_pct")
    if other is not None and other > 25:
        reasons.append(f"other processes used {other:.0f}% of a CPU meanwhile")
    cpu = run["server_cpu_pct"]
    if run["inflight"] > 1 and cpu is not None and cpu < 90:
        reasons.append(f"server at {cpu:.0f}% CPU, not saturated (a busy host or a slow client)")
    return reasons


def median_run(runs: list[dict[str, Any]], trusted_only: bool) -> dict[str, Any]:
    """
    The run with the median calls/s (the lower middle one for an even
    count), among the trustworthy runs if C{trusted_only}.
    """
    pool = [r for r in runs if not r["doubts"]] if trusted_only else runs
    ordered = sorted(pool, key=lambda r: r["calls_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--inflight", default="1,64", help="comma-separated in-flight levels")
    parser.add_argument("--targets", default="bare,relaytx", help="bare, relaytx or both")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every scenario; the median run is shown"
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the servers and the load generator to separate CPUs",
    )
    parser.add_argument(
        "--bare-form-parsing",
        choices=["mirror", "on", "off"],
        default="mirror",
        help="the baseline site's parsePOSTFormSubmission: as relaytx's NodeSite (default), "
        "on (twisted.web's default) or off",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # Internal modes, used by the subprocesses this script starts.
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.bare_form_parsing)
        return 0
    if args.loadgen:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        result = run_loadgen(
            args.port, args.connections, args.warmup, args.duration, args.server_pid
        )
        print(json.dumps(result), flush=True)
        return 0

    levels = [int(x) for x in args.inflight.split(",") if x.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not levels or any(n < 1 for n in levels) or not set(targets) <= {"bare", "relaytx"}:
        parser.error("--inflight needs positive integers, --targets bare and/or relaytx")
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --repeat >= 1")
    server_cpu, loadgen_cpu = pick_cpus(args.pin)
    if args.bare_form_parsing == "mirror":
        bare_forms = _node_site_parses_forms()
    else:
        bare_forms = args.bare_form_parsing == "on"

    children = Children()
    tmpdir = tempfile.TemporaryDirectory(prefix="relaytx-bench-")
    tmp = Path(tmpdir.name)
    # SIGTERM from outside: unwind like Ctrl-C so the children are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    status = 0
    try:
        servers: dict[str, tuple[int, int]] = {}
        for target in targets:
            port = free_port()
            log = tmp / f"{target}.log"
            if target == "relaytx":
                cmd = [
                    *twistd_argv(),
                    "-n",
                    "relay",
                    "--node-id",
                    "bench",
                    "--port",
                    str(port),
                    "--app",
                    str(ROOT / "examples" / "counter.py"),
                ]
            else:
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-bare",
                    str(port),
                    "--bare-form-parsing",
                    args.bare_form_parsing,
                ]
            proc = children.start(cmd, log)
            if server_cpu is not None:
                os.sched_setaffinity(proc.pid, {server_cpu})
            wait_ready(target, proc, port, log)
            servers[target] = (port, proc.pid)
        for round_ in range(args.repeat):
            for inflight in levels:
                # Alternate the order between rounds so neither target always goes first.
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    port, pid = servers[target]
                    row = run_scenario(children, port, pid, inflight, loadgen_cpu, args, tmp)
                    row["target"] = target
                    row["inflight"] = inflight
                    row["round"] = round_ + 1
                    row["doubts"] = doubts(row)
                    runs.setdefault((target, inflight), []).append(row)
                    print(
                        f"[{target:>7} x{inflight:<3} round {round_ + 1}/{args.repeat}] "
                        f"{row['calls_per_s']:7.0f} calls/s  "
                        f"p50 {fmt(row['p50_ms'], '.3f')} ms  p99 {fmt(row['p99_ms'], '.3f')} ms  "
                        f"server cpu {fmt(row['server_cpu_pct'], '.0f')}%  "
                        f"loadgen cpu {fmt(row['loadgen_cpu_pct'], '.0f')}%  "
                        f"other cpu {fmt(row['other_cpu_pct'], '.0f')}%  "
                        f"errors {row['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
                    for proc in children.procs:
                        if proc.poll() is not None:
                            raise RuntimeError(f"a server exited early: {proc.args}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        children.stop_all()
        tmpdir.cleanup()
    if status:
        return status

    # Like with like: trustworthy runs only when every target has some at
    # that level, else all runs of every target.
    results = []
    for n in levels:
        trusted = all(any(not r["doubts"] for r in runs[(t, n)]) for t in targets)
        results += [median_run(runs[(t, n)], trusted) for t in targets]
    by_key = {(r["target"], r["inflight"]): r for r in results}
    ratios: dict[int, float] = {}
    cpu_ratios: dict[int, float] = {}
    for inflight in levels:
        bare, relay = by_key.get(("bare", inflight)), by_key.get(("relaytx", inflight))
        if not (bare and relay):
            continue
        if bare["calls_per_s"]:
            ratios[inflight] = relay["calls_per_s"] / bare["calls_per_s"]
        if bare["server_us_per_call"] and relay["server_us_per_call"]:
            cpu_ratios[inflight] = bare["server_us_per_call"] / relay["server_us_per_call"]
    notes: list[str] = []
    for (target, inflight), target_runs in runs.items():
        for r in target_runs:
            where = f"{target} x{inflight} round {r['round']}"
            if r["errors"]:
                status = 1
                notes.append(
                    f"!! {where}: {r['errors']} errors {r['error_kinds']}, "
                    f"e.g. {r['error_samples'][:1]}"
                )
            for reason in r["doubts"]:
                notes.append(f"!! {where}: {reason}: that run is unreliable")
    shown_doubtful = [r for r in results if r["doubts"]]

    if args.json:
        print(
            json.dumps(
                {
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "repeat": args.repeat,
                    "cpus": os.cpu_count(),
                    "pinned": {"servers": server_cpu, "loadgen": loadgen_cpu},
                    "bare_parse_post_form_submission": bare_forms,
                    "python": sys.version.split()[0],
                    "results": results,
                    "runs": [r for n in levels for t in targets for r in runs[(t, n)]],
                    "ratio_relaytx_over_bare": {str(k): v for k, v in ratios.items()},
                    "cpu_ratio_bare_us_over_relaytx_us": {str(k): v for k, v in cpu_ratios.items()},
                    "notes": notes,
                },
                indent=2,
            )
        )
        return status

    header = (
        f"{'target':<8} {'in-flight':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cpu':>7} {'gen cpu':>7} {'oth cpu':>7} {'srv us/call':>11} {'errors':>6} "
        f"{'relaytx/bare':>12} {'(by cpu)':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        relay = r["target"] == "relaytx"
        ratio = ratios.get(r["inflight"]) if relay else None
        cpu_ratio = cpu_ratios.get(r["inflight"]) if relay else None
        target = r["target"] + ("*" if r["doubts"] else "")
        print(
            f"{target:<8} {r['inflight']:>9} {r['calls_per_s']:>9.0f} "
            f"{fmt(r['p50_ms'], '.3f'):>8} {fmt(r['p99_ms'], '.3f'):>8} "
            f"{fmt(r['server_cpu_pct'], '.0f') + '%':>7} "
            f"{fmt(r['loadgen_cpu_pct'], '.0f') + '%':>7} "
            f"{fmt(r['other_cpu_pct'], '.0f') + '%':>7} "
            f"{fmt(r['server_us_per_call'], '.1f'):>11} "
            f"{r['errors']:>6} {fmt(ratio, '.1%'):>12} {fmt(cpu_ratio, '.1%'):>8}"
        )
    if args.repeat > 1:
        print(
            f"(median of {args.repeat} rounds by calls/s, of the trustworthy runs when "
            "every target has some; --json lists every run)"
        )
    print("(by cpu: bare's server CPU per call over relaytx's, steadier on a busy machine)")
    if shown_doubtful:
        print("(*: no trustworthy run of that scenario: see the notes below)")
    if "bare" in targets:
        print(
            f"(baseline parsePOSTFormSubmission={bare_forms}, "
            f"--bare-form-parsing {args.bare_form_parsing})"
        )
    for note in notes:
        print(note)
    return status


if __name__ == "__main__":
    sys.exit(main())
