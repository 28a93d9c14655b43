#!/usr/bin/env python
"""
The floods of issue 15 against one node, each bounded to seconds: the
node's peak RSS during each, and a legitimate caller's latency meanwhile.

    python benchmarks/floods.py [--seconds 8] [--root PATH] [--only NAME,...]

It starts C{relay node} processes on 127.0.0.1 (from the tree at
C{--root}, this one by default, so an older tree can be measured the same
way), with default limits, and for each flood:

  - C{half-open}: 1000 HTTP requests whose head never ends;
  - C{silent-ws}: 1000 C{/ws/rpc} sockets that say nothing and answer no ping;
  - C{no-reader}: one C{/ws/rpc} client sending calls and never reading;
  - C{fragments}: 300 C{/ws/rpc} messages begun (1 MiB each announced in
    fragments) and never finished;
  - C{member}: a raw peer sending calls with 400 KB ids, and calls with a
    10^9 s budget that the target never answers, through the node;
  - C{peers-add}: 3000 C{/registry/peers/add} of addresses that refuse.

Meanwhile a caller makes C{node.echo} calls over C{POST /rpc} one after
another (2 s timeout each). It prints one line per flood: peak RSS, the
caller's calls, p50/p99/max latency and timeouts. A script that prints
figures, not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
#: Where the floods come from: another loopback address than the caller's,
#: as an attacker's would be (one address holding its connection cap must
#: leave room for the others; the caller's own address would not).
ATTACKER = "127.0.0.2"


def attacker_socket(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=5, source_address=(ATTACKER, 0))


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_node(root: Path, node_id: str, port: int, *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", node_id]
    argv += ["--port", str(port), "--app", "examples/counter.py", *args]
    child = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return child
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise RuntimeError(f"{node_id} did not listen on {port}")


def post(
    port: int, body: bytes, path: str = "/rpc", timeout: float = 2.0, source: str = HOST
) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )
    return head + mask + masked


def ws_open(port: int, path: str) -> socket.socket:
    s = attacker_socket(port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("upgrade refused")
        data += chunk
    return s


class Caller(threading.Thread):
    """A legitimate client: one node.echo call after another."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.timeouts = 0

    def run(self) -> None:
        body = b'{"jsonrpc":"2.0","method":"node.echo","params":["legit"],"id":1}'
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = post(self.port, body)
                if b'"result"' not in answer:
                    raise OSError(answer[:100])
                self.latencies.append(time.monotonic() - started)
            except OSError:
                self.timeouts += 1
            time.sleep(0.01)


def hold(socks: list[socket.socket], seconds: float, stop: threading.Event) -> None:
    stop.wait(seconds)
    for s in socks:
        s.close()


def half_open(port: int, seconds: float, stop: threading.Event) -> None:
    socks = []
    for _ in range(1000):
        try:
            s = attacker_socket(port)
            s.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")
            socks.append(s)
        except OSError:
            pass
    hold(socks, seconds, stop)


def silent_ws(port: int, seconds: float, stop: threading.Event) -> None:
    socks = []
    for _ in range(1000):
        try:
            socks.append(ws_open(port, "/ws/rpc"))
        except (OSError, RuntimeError):
            pass
    hold(socks, seconds, stop)


def no_reader(port: int, seconds: float, stop: threading.Event) -> None:
    s = ws_open(port, "/ws/rpc")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    call = frame(0x1, json.dumps({"jsonrpc": "2.0", "method": "node.echo",
                                  "params": ["x" * 4000], "id": 1}).encode())  # fmt: skip
    s.settimeout(0.1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        try:
            s.sendall(call * 16)
        except TimeoutError:
            continue
        except OSError:
            break
    s.close()


def fragments(port: int, seconds: float, stop: threading.Event) -> None:
    socks = []
    piece = b"x" * (64 * 1024)
    for _ in range(300):
        try:
            s = ws_open(port, "/ws/rpc")
            s.sendall(frame(0x1, b'["' + piece, fin=False))
            socks.append(s)
        except (OSError, RuntimeError):
            pass
    # Then the rest of each megabyte, a piece at a time, never the last.
    for _ in range(15):
        for s in socks:
            try:
                s.sendall(frame(0x0, piece, fin=False))
            except OSError:
                pass
        if stop.wait(seconds / 20):
            break
    hold(socks, seconds / 4, stop)


def member(port: int, seconds: float, stop: threading.Event, target: str) -> None:
    s = ws_open(port, "/ws/p2p?node_id=evil")
    big = "x" * 400_000
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and not stop.is_set():
        n += 1
        frames = [
            {"type": "server_call", "id": big, "from": "evil", "to": target,
             "data": {"call": {"server_name": "counter_server", "method": "increment"},
                      "response_id": big + str(n)}, "route": ["evil"], "ttl": 9},
        ] + [
            {"type": "server_call", "id": f"m{n}-{k}", "from": "evil", "to": target,
             "data": {"call": {"server_name": "counter_server", "method": "get",
                               "timeout": 1e9},
                      "response_id": f"r{n}-{k}"}, "route": ["evil"], "ttl": 9}
            for k in range(200)
        ]  # fmt: skip
        try:
            s.sendall(b"".join(frame(0x1, json.dumps(f).encode()) for f in frames))
            while True:
                s.recv(1 << 20)  # read (and drop) what comes back
        except TimeoutError:
            continue
        except OSError:
            break
    s.close()


def peers_add(port: int, seconds: float, stop: threading.Event) -> None:
    refused = free_port()  # nothing listens there
    deadline = time.monotonic() + seconds
    for n in range(3000):
        if time.monotonic() > deadline or stop.is_set():
            break
        try:
            post(port, json.dumps({"address": f"ws://127.0.0.1:{refused}/p{n}"}).encode(),
                 path="/registry/peers/add", source=ATTACKER)  # fmt: skip
        except OSError:
            pass
    stop.wait(max(0.0, deadline - time.monotonic()))


FLOODS: dict[str, Callable[..., None]] = {
    "half-open": half_open,
    "silent-ws": silent_ws,
    "no-reader": no_reader,
    "fragments": fragments,
    "member": member,
    "peers-add": peers_add,
}


def measure(name: str, root: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    children = [start_node(root, "f0", port)]
    target = None
    try:
        if name == "member":
            target_port = free_port()
            children.append(
                start_node(root, "f1", target_port, "--add-peer", f"ws://{HOST}:{port}")
            )
            target = "f1"
            time.sleep(1.5)
            # The target is frozen: the calls the node forwards to it are
            # never answered (nor refused) while the flood lasts.
            os.kill(children[1].pid, signal.SIGSTOP)
        pid = children[0].pid
        baseline = rss_mib(pid)
        caller = Caller(port)
        caller.start()
        stop = threading.Event()
        args = (port, seconds, stop) + ((target,) if target else ())
        flood = threading.Thread(target=FLOODS[name], args=args, daemon=True)
        flood.start()
        peak = baseline
        deadline = time.monotonic() + seconds + 5
        while flood.is_alive() and time.monotonic() < deadline:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.1)
        stop.set()
        flood.join(10)
        time.sleep(0.5)
        peak = max(peak, rss_mib(pid))
        caller.stop.set()
        caller.join(5)
        lat = sorted(caller.latencies) or [float("nan")]
        return {
            "flood": name,
            "rss_before_mib": round(baseline, 1),
            "rss_peak_mib": round(peak, 1),
            "calls": len(caller.latencies),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2),
            "timeouts": caller.timeouts,
        }
    finally:
        for child in children:
            os.kill(child.pid, signal.SIGCONT)
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each flood")
    parser.add_argument("--root", default=str(ROOT), help="the relaytx tree to run")
    parser.add_argument("--only", default=",".join(FLOODS), help="comma-separated floods")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    for name in args.only.split(","):
        row = measure(name, Path(args.root), args.seconds)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{row['flood']:<10} rss {row['rss_before_mib']:6.1f} -> {row['rss_peak_mib']:6.1f}"
                f" MiB  caller: {row['calls']:5d} calls p50 {row['p50_ms']:7.2f} ms"
                f" p99 {row['p99_ms']:8.2f} ms max {row['max_ms']:8.2f} ms"
                f" timeouts {row['timeouts']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
