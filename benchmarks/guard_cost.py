#!/usr/bin/env python
"""
What the checks of SPEC section 10 cost per call, measured in one process
without sockets, so that other work on the machine moves the figures as
little as it can:

  - C{http}: one C{POST /rpc} (a local call) through a node's real site and
    HTTP channel, on a keep-alive connection (a C{StringTransport});
  - C{python}: one call through the Python API to a node linked in memory
    (C{relaytx.testing}): both nodes' work, frames encoded and decoded.

    python benchmarks/guard_cost.py [--tree PATH] [--token] [--rounds 7]

C{--tree} runs another relaytx tree (an older one: the A side of an A/B),
C{--token} configures a bearer token and sends it. It prints the best of
C{--rounds} rounds, in microseconds per call. A script that prints
figures, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import Any

TOKEN = b"bench-token-0123456789"


def http_cost(token: bool, calls: int) -> float:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from relaytx import Server, exposed
    from relaytx.testing import memory_node

    class Counter(Server):
        def __init__(self) -> None:
            self.count = 0

        @exposed
        def increment(self, by: int = 1) -> int:
            self.count += by
            return self.count

    options: dict[str, Any] = {}
    if token:
        options["http"] = {"tokens": {"bench": hashlib.sha256(TOKEN).hexdigest()}}
    node = memory_node("n0", MemoryReactorClock(), **options)
    node.expose("counter_server", Counter())
    client = IPv4Address("TCP", "127.0.0.1", 40000)
    site = node.site()
    protocol = site.buildProtocol(client)
    transport = StringTransport(peerAddress=client)
    protocol.makeConnection(transport)
    body = b'{"jsonrpc":"2.0","method":"counter_server.increment","id":1}'
    auth = b"Authorization: Bearer " + TOKEN + b"\r\n" if token else b""
    request = (
        b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    protocol.dataReceived(request)
    assert b'"result":1' in transport.value(), transport.value()
    transport.clear()
    started = time.perf_counter()
    for _ in range(calls):
        protocol.dataReceived(request)
        transport.clear()
    return (time.perf_counter() - started) / calls * 1e6


def python_cost(calls: int) -> float:
    from twisted.internet.testing import MemoryReactorClock

    from relaytx import Server, exposed
    from relaytx.testing import link_nodes, memory_node

    class Counter(Server):
        def __init__(self) -> None:
            self.count = 0

        @exposed
        def increment(self, by: int = 1) -> int:
            self.count += by
            return self.count

    clock = MemoryReactorClock()
    a, b = memory_node("n0", clock), memory_node("n1", clock)
    b.expose("counter_server", Counter())
    link = link_nodes(a, b)
    link.network.pump()
    batch = 64
    results: list[Any] = []
    started = time.perf_counter()
    for _ in range(calls // batch):
        for _ in range(batch):
            a.call("n1", "counter_server", "increment").addBoth(results.append)
        link.network.pump()
    spent = time.perf_counter() - started
    assert len(results) == calls // batch * batch and isinstance(results[-1], int), results[-1:]
    return spent / len(results) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", help="the relaytx tree to import (default: this one)")
    parser.add_argument("--token", action="store_true", help="configure and send a token")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    import relaytx

    http = min(http_cost(args.token, args.calls) for _ in range(args.rounds))
    python = min(python_cost(args.calls) for _ in range(args.rounds))
    print(json.dumps({"tree": relaytx.__file__, "token": args.token,
                      "http_us": round(http, 2), "python_us": round(python, 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
