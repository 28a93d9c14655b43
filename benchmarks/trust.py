#!/usr/bin/env python
"""
What trust costs: calls/s and latency through the Python API on a line of
three nodes, n0 - n1 - n2, in an open mesh, with a cluster secret, and in
PKI mode (mutual TLS, certificates naming the nodes, end-to-end codes on
calls that cross a node); and what each cryptographic step costs per call.

    python benchmarks/trust.py [--duration 2] [--passes 5] [--inflight 1,64]

Each scenario (mode, target, in-flight level) is measured in C{--passes}
passes, the modes taken in turn within each pass (the machine's speed
drifts over minutes, so like is measured beside like). Calls/s and
latencies are the best pass's; errors are counted from every pass. A
ratio is taken to the open mesh of the same target and level in the same
pass, and the median of the passes' ratios is printed with their range:
best against best would pair one mode's lucky pass with another's
ordinary one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import HOST, Processes, free_port  # noqa: E402

from tests.support import Authority  # noqa: E402

MODES = ["open", "secret", "pki"]
TARGETS = {"direct": "n1", "two-hop": "n2"}


class Line:
    """Three nodes in a line, started in one mode."""

    def __init__(self, procs: Processes, mode: str, directory: Path, ca: Authority) -> None:
        self.mode = mode
        self.ports = [free_port() for _ in range(3)]
        self.context: ssl.SSLContext | None = None
        secret = directory / "secret"
        secret.write_bytes(b"benchmark cluster secret, 32 bytes")
        secret.chmod(0o600)
        (directory / "ca.pem").write_bytes(ca.pem)
        children = []
        for i, port in enumerate(self.ports):
            name = f"n{i}"
            argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", name]
            argv += ["--port", str(port)]
            argv += ["--app", "benchmarks/bench_app.py" if i == 0 else "examples/counter.py"]
            scheme = "wss" if mode == "pki" else "ws"
            if i:
                argv += ["--add-peer", f"{scheme}://{HOST}:{self.ports[i - 1]}"]
            if mode == "secret":
                argv += ["--secret-file", str(secret)]
            if mode == "pki":
                cert, key = ca.issue(name)
                (directory / f"{name}.pem").write_bytes(cert)
                (directory / f"{name}.key").write_bytes(key)
                (directory / f"{name}.key").chmod(0o600)
                config = directory / f"{name}.toml"
                config.write_text(
                    "[tls]\n"
                    f'cert = "{directory / name}.pem"\nkey = "{directory / name}.key"\n'
                    f'ca = "{directory / "ca.pem"}"\nrequire_client_cert = true\n'
                )
                argv += ["--config", str(config)]
            children.append(procs.start(f"{mode}-{name}", argv))
        if mode == "pki":
            cert, key = ca.issue("operator")
            (directory / "operator.pem").write_bytes(cert)
            (directory / "operator.key").write_bytes(key)
            self.context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
            self.context.load_cert_chain(directory / "operator.pem", directory / "operator.key")
        for child, port in zip(children, self.ports, strict=True):
            procs.wait_port(child, port)
        self.wait_routes(["n1", "n2"])

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        port = self.ports[0]
        if self.context is not None:
            return http.client.HTTPSConnection(HOST, port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(HOST, port, timeout=timeout)

    def get(self, path: str) -> Any:
        connection = self.connection(5)
        connection.request("GET", path)
        answer = json.loads(connection.getresponse().read())
        connection.close()
        return answer

    def wait_routes(self, destinations: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(d in self.get("/registry/routes") for d in destinations):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.mode}: routes to {destinations} missing after {timeout}s")

    def run(self, target: str, inflight: int, duration: float, warmup: float) -> dict[str, Any]:
        params = [target, "counter_server", "increment", inflight, duration, warmup]
        body = {"jsonrpc": "2.0", "id": 1, "method": "bench.run", "params": params}
        connection = self.connection(duration + warmup + 120)
        connection.request("POST", "/rpc", json.dumps(body), {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
        connection.close()
        return dict(answer["result"])


def crypto_costs() -> list[tuple[str, float]]:
    """Microseconds each step takes, in this process, for a typical call."""
    from relaytx._linkauth import FrameOpener, FrameSealer, link_keys
    from relaytx._pki import EndToEnd, NodeIdentity, RecordBook
    from relaytx.wire import CallSpec, ServerCall, ServerResponse, rfc3339

    frame = (
        b'{"type":"server_call","id":"4b2f61c0a1-1","from":"n0","to":"n1","data":{"call":'
        b'{"server_name":"counter_server","method":"increment","args":[],"timeout":30.0},'
        b'"response_id":"6f1c9b3e8a7d5c2b4e0f1a3c"},"timestamp":"2026-12-03T10:00:00.000000Z",'
        b'"route":["n0"],"ttl":10}'
    )
    keys = link_keys(b"x" * 32, "a" * 64, "b" * 64, "n0", "n1", True)
    sealer, opener = FrameSealer(keys.send), FrameOpener(keys.send)
    sealed = [sealer.seal(frame) for _ in range(400_000)]
    costs = []
    n = 200_000
    sealer2 = FrameSealer(keys.send)
    costs.append(
        ("seal a frame sent alone", timeit.timeit(lambda: sealer2.seal(frame), number=n) / n)
    )
    it = iter(sealed)
    costs.append(
        ("check a frame sent alone", timeit.timeit(lambda: opener.take(next(it)), number=n) / n)
    )
    # A batch of 8 (a busy link writes a dozen frames per read): per frame.
    sealer3, opener3 = FrameSealer(keys.send), FrameOpener(keys.send)
    batches = []
    for _ in range(n // 8):
        batch = [frame] * 8
        sealer3.seal_batch(batch)
        batches.append(batch)
    costs.append(
        (
            "seal a frame in a batch of 8",
            timeit.timeit(lambda: sealer2.seal_batch([frame] * 8), number=n // 8) / n,
        )
    )
    it3 = iter(batches)

    def check_batch() -> None:
        for sent in next(it3):
            opener3.take(sent)

    costs.append(("check a frame in a batch of 8", timeit.timeit(check_batch, number=n // 8) / n))
    ca = Authority("bench CA")
    ids = {}
    for name in ("n0", "n2"):
        cert, key = ca.issue(name)
        ids[name] = NodeIdentity(name, cert, key, ca.pem)
    ends = {}
    for name, me in ids.items():
        book = RecordBook(me)
        for other in ids.values():
            book.take(other.record(1, []))
        ends[name] = EndToEnd(me, book)
    call = ServerCall(CallSpec("counter_server", "increment", (), {}, 30.0), "6f1c9b3e8a7d5c2b")
    issued = rfc3339(time.time())
    n = 20_000
    costs.append(
        (
            "end-to-end code of a call",
            timeit.timeit(lambda: ends["n0"].seal_call("n2", call, issued), number=n) / n,
        )
    )
    call.mac = ends["n0"].seal_call("n2", call, issued)
    calls = [ServerCall(call.call, f"r{i}", None) for i in range(n)]
    for c in calls:
        c.mac = ends["n0"].seal_call("n2", c, issued)
    it2 = iter(calls)
    now = time.time()
    costs.append(
        (
            "check of a call's code",
            timeit.timeit(lambda: ends["n2"].check_call("n0", next(it2), issued, now), number=n)
            / n,
        )
    )
    answer = ServerResponse("6f1c9b3e8a7d5c2b", True, "n2", 42)
    costs.append(
        (
            "end-to-end code of an answer",
            timeit.timeit(lambda: ends["n2"].seal_answer("n0", answer), number=n) / n,
        )
    )
    answer.mac = ends["n2"].seal_answer("n0", answer)
    costs.append(
        (
            "check of an answer's code",
            timeit.timeit(lambda: ends["n0"].check_answer("n2", answer, answer.mac), number=n) / n,
        )
    )
    record = ids["n2"].record(2, ["n1"])
    book = RecordBook(ids["n0"])
    n = 200
    seqs = iter(range(3, 10_000))

    def take() -> None:
        book.take(ids["n2"].record(next(seqs), ["n1"]))

    costs.append(
        ("sign and check a node record (per link change)", timeit.timeit(take, number=n) / n)
    )
    del record
    return [(what, seconds * 1e6) for what, seconds in costs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--inflight", default="1,64")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    levels = [int(x) for x in args.inflight.split(",")]
    modes = args.modes.split(",")
    started = time.monotonic()
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    passes: dict[tuple[str, str, int], list[float]] = {}
    errors: dict[tuple[str, str, int], int] = {}
    ca = Authority("bench CA")
    with tempfile.TemporaryDirectory(prefix="relaytx-trust-") as tmp:
        procs = Processes(Path(tmp))
        try:
            lines = {}
            for mode in modes:
                directory = Path(tmp) / mode
                directory.mkdir()
                lines[mode] = Line(procs, mode, directory, ca)
            for number in range(args.passes):
                order = modes if number % 2 == 0 else modes[::-1]
                for n in levels:
                    for label, target in TARGETS.items():
                        for mode in order:
                            sys.stderr.write(f"  pass {number + 1}: {mode} {label} {n} in flight\n")
                            stats = lines[mode].run(target, n, args.duration, args.warmup)
                            key = (mode, label, n)
                            errors[key] = errors.get(key, 0) + stats["errors"]
                            passes.setdefault(key, []).append(stats["calls_per_s"])
                            if key not in best or stats["calls_per_s"] > best[key]["calls_per_s"]:
                                best[key] = stats
        finally:
            procs.stop_all()
    head = ("mode", "target", "in flight", "calls/s", "p50 ms", "p99 ms", "vs open", "range")
    print("{:<8} {:<8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>11} errors".format(*head))
    for n in levels:
        for label in TARGETS:
            for mode in modes:
                key = (mode, label, n)
                stats = best[key]
                base = passes.get(("open", label, n))
                ratio, spread = "-", "-"
                if base:
                    ratios = [ours / theirs for ours, theirs in zip(passes[key], base, strict=True)]
                    ratio = format(statistics.median(ratios), ".2f")
                    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
                print(
                    f"{mode:<8} {label:<8} {n:>9} {stats['calls_per_s']:>9.0f} "
                    f"{stats['p50_ms']:>8.3f} {stats['p99_ms']:>8.3f} "
                    f"{ratio:>8} {spread:>11} {errors[key]}"
                )
    print()
    print("cost of each step, in this process:")
    for what, micros in crypto_costs():
        print(f"  {what:<50} {micros:8.2f} us")
    print(f"({time.monotonic() - started:.0f} s, {os.cpu_count()} cores)")
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
