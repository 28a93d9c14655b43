#!/usr/bin/env python
"""
What choosing an instance costs per call, in one process:

    python benchmarks/balance_cost.py [--calls 100000] [--rounds 3]

Node a of an in-memory mesh (L{relaytx.testing}) links to b and c, both
hosting C{svc}. For each policy it times C{Balancer.call} to a remote stub
that answers at once, against what a location-transparent call did before
balancing (C{nearest_host}, then a changed copy of the target): the
difference is what the balancer adds to a call's CPU on the calling node.
The figures are the best of C{--rounds}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock

from relaytx import Server, exposed
from relaytx._calls import CallTarget
from relaytx.node import RelayNode
from relaytx.testing import MemoryMesh, memory_node


class Where(Server):
    @exposed
    def where(self) -> str:
        return ""


def mesh(policy: str) -> RelayNode:
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)
    network = MemoryMesh()
    a = memory_node("a", reactor, balance={"default": policy})
    for name in ("b", "c"):
        node = memory_node(name, reactor)
        node.expose("svc", Where())
        network.link(a, node)
    network.settle()
    return a


def remote(target: CallTarget) -> Deferred[Any]:
    return succeed(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.calls
    for policy in ("nearest", "least_loaded", "round_robin"):
        a = mesh(policy)
        target = CallTarget(None, "svc", "where")
        balancer, local, directory = a.balancer, a.dispatcher._run_implicit, a.mesh.registry
        new = old = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(n):
                balancer.call(target, remote, local)
            new = min(new, (time.perf_counter() - start) / n)
            start = time.perf_counter()
            for _ in range(n):
                remote(evolve(target, node_id=directory.nearest_host("svc")))
            old = min(old, (time.perf_counter() - start) / n)
        print(
            f"{policy:13} Balancer.call {new * 1e6:6.2f} us   before {old * 1e6:6.2f} us"
            f"   added {(new - old) * 1e6:5.2f} us a call"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
